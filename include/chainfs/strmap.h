/* strmap.h — a string-keyed hash map (issue 12 §2.5): the tree's and the
 * engine's per-name lookups in O(1) on average instead of a walk over
 * every domain. Keys are copied; values are the caller's. Not
 * thread-safe: the caller's lock guards it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cfs_strmap;

struct cfs_strmap *cfs_strmap_new(void);
/* Frees the map and its keys (FREE_VALUE, if not NULL, on every value). */
void cfs_strmap_free(struct cfs_strmap *m, void (*free_value)(void *));
/* The value of KEY, or NULL. */
void *cfs_strmap_get(const struct cfs_strmap *m, const char *key);
/* Set KEY to VALUE (not NULL); returns the value it replaces, or NULL. */
void *cfs_strmap_put(struct cfs_strmap *m, const char *key, void *value);
/* Remove KEY; returns its value, or NULL if there was none. */
void *cfs_strmap_del(struct cfs_strmap *m, const char *key);
size_t cfs_strmap_size(const struct cfs_strmap *m);
/* Call FN on every entry (FN must not change the map). */
void cfs_strmap_each(const struct cfs_strmap *m,
                     void (*fn)(void *opaque, const char *key, void *value),
                     void *opaque);
static inline void cfs_strmap_freep(struct cfs_strmap **m)
{
    cfs_strmap_free(*m, NULL);
}
#define _cleanup_strmap_ __attribute__((cleanup(cfs_strmap_freep)))

/* Index maps: a size_t per key (a position in the caller's array), kept
 * as V + 1 so that position 0 is not NULL. A NULL KEY is never there. */
/* true and *V (V may be NULL) if KEY is there. */
static inline bool cfs_strmap_get_index(const struct cfs_strmap *m,
                                        const char *key, size_t *v)
{
    void *p = cfs_strmap_get(m, key);
    if (!p)
        return false;
    if (v)
        *v = (size_t)((uintptr_t)p - 1);
    return true;
}
/* Add KEY with V; false, and the value left as it was, if KEY is there
 * already or is NULL. */
static inline bool cfs_strmap_add_index(struct cfs_strmap *m,
                                        const char *key, size_t v)
{
    if (!key || cfs_strmap_get(m, key))
        return false;
    (void)cfs_strmap_put(m, key, (void *)((uintptr_t)v + 1));
    return true;
}
/* Set KEY's value, adding it if absent (KEY not NULL). */
static inline void cfs_strmap_set_index(struct cfs_strmap *m,
                                        const char *key, size_t v)
{
    (void)cfs_strmap_put(m, key, (void *)((uintptr_t)v + 1));
}
