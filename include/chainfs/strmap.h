/* strmap.h — a string-keyed hash map (issue 12 §2.5): the tree's and the
 * engine's per-name lookups in O(1) on average instead of a walk over
 * every domain. Keys are copied; values are the caller's. Not
 * thread-safe: the caller's lock guards it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

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
