/* strmap.c — see strmap.h. Separate chaining, FNV-1a, the table doubled
 * when the entries outnumber the buckets and halved when they fall
 * below a quarter of them (a define/undefine loop leaves no big table
 * behind). */
#include "chainfs/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chainfs/util.h"

struct entry {
    struct entry *next;
    uint64_t hash;
    void *value;
    char key[];
};

struct cfs_strmap {
    struct entry **buckets;
    size_t n_buckets;        /* a power of two */
    size_t n;
};

#define MIN_BUCKETS 16

struct cfs_strmap *cfs_strmap_new(void)
{
    struct cfs_strmap *m = cfs_xcalloc(1, sizeof(*m));
    m->n_buckets = MIN_BUCKETS;
    m->buckets = cfs_xcalloc(m->n_buckets, sizeof(*m->buckets));
    return m;
}

void cfs_strmap_free(struct cfs_strmap *m, void (*free_value)(void *))
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_buckets; i++)
        for (struct entry *e = m->buckets[i]; e;) {
            struct entry *next = e->next;
            if (free_value)
                free_value(e->value);
            free(e);
            e = next;
        }
    free(m->buckets);
    free(m);
}

static void resize(struct cfs_strmap *m, size_t n_buckets)
{
    struct entry **b = cfs_xcalloc(n_buckets, sizeof(*b));
    for (size_t i = 0; i < m->n_buckets; i++)
        for (struct entry *e = m->buckets[i]; e;) {
            struct entry *next = e->next;
            size_t k = e->hash & (n_buckets - 1);
            e->next = b[k];
            b[k] = e;
            e = next;
        }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = n_buckets;
}

static struct entry **find(const struct cfs_strmap *m, const char *key,
                           uint64_t h)
{
    struct entry **pp = &m->buckets[h & (m->n_buckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
            return pp;
    return pp;
}

void *cfs_strmap_get(const struct cfs_strmap *m, const char *key)
{
    if (!m || !key)
        return NULL;
    struct entry **pp = find(m, key, cfs_str_hash(key));
    return *pp ? (*pp)->value : NULL;
}

void *cfs_strmap_put(struct cfs_strmap *m, const char *key, void *value)
{
    uint64_t h = cfs_str_hash(key);
    struct entry **pp = find(m, key, h);
    if (*pp) {
        void *old = (*pp)->value;
        (*pp)->value = value;
        return old;
    }
    size_t len = strlen(key);
    struct entry *e = cfs_xmalloc(sizeof(*e) + len + 1);
    memcpy(e->key, key, len + 1);
    e->hash = h;
    e->value = value;
    e->next = NULL;
    *pp = e;
    if (++m->n > m->n_buckets)
        resize(m, m->n_buckets * 2);
    return NULL;
}

void *cfs_strmap_del(struct cfs_strmap *m, const char *key)
{
    if (!m || !key)
        return NULL;
    struct entry **pp = find(m, key, cfs_str_hash(key));
    struct entry *e = *pp;
    if (!e)
        return NULL;
    void *v = e->value;
    *pp = e->next;
    free(e);
    m->n--;
    if (m->n_buckets > MIN_BUCKETS && m->n < m->n_buckets / 4)
        resize(m, m->n_buckets / 2);
    return v;
}

size_t cfs_strmap_size(const struct cfs_strmap *m)
{
    return m ? m->n : 0;
}

void cfs_strmap_each(const struct cfs_strmap *m,
                     void (*fn)(void *opaque, const char *key, void *value),
                     void *opaque)
{
    for (size_t i = 0; m && i < m->n_buckets; i++)
        for (struct entry *e = m->buckets[i]; e; e = e->next)
            fn(opaque, e->key, e->value);
}
