/* strmap.h — a map from strings (copied) to size_t: open addressing,
 * FNV-1a (cfs_str_hash), at most half full. For lookups that must not
 * grow with a chain's depth (issue 12): which layer a snapshot's source
 * names, which names a domain's snapshots have.
 * Not thread-safe: one owner. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct cfs_strmap;

struct cfs_strmap *cfs_strmap_new(void);
void cfs_strmap_free(struct cfs_strmap *m);
static inline void cfs_strmap_freep(struct cfs_strmap **m) { cfs_strmap_free(*m); }
#define _cleanup_strmap_ __attribute__((cleanup(cfs_strmap_freep)))

/* Add KEY (copied) with V; false, and the value left as it was, if KEY
 * is there already. A NULL KEY is not added (false). */
bool cfs_strmap_add(struct cfs_strmap *m, const char *key, size_t v);
/* true and *V (may be NULL) if KEY is there. */
bool cfs_strmap_get(const struct cfs_strmap *m, const char *key, size_t *v);
/* Set KEY's value, adding it if absent. */
void cfs_strmap_set(struct cfs_strmap *m, const char *key, size_t v);
size_t cfs_strmap_size(const struct cfs_strmap *m);
