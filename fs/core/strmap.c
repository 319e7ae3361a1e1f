/* strmap.c — see strmap.h. */
#include "chainfs/strmap.h"
#include "chainfs/model.h"
#include "chainfs/util.h"

struct cfs_strmap {
    size_t cap;     /* a power of two */
    size_t used;
    char **key;     /* NULL: free */
    size_t *val;
};

struct cfs_strmap *cfs_strmap_new(void)
{
    struct cfs_strmap *m = cfs_xcalloc(1, sizeof(*m));

    m->cap = 16;
    m->key = cfs_xcalloc(m->cap, sizeof(*m->key));
    m->val = cfs_xcalloc(m->cap, sizeof(*m->val));
    return m;
}

void cfs_strmap_free(struct cfs_strmap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->cap; i++)
        free(m->key[i]);
    free(m->key);
    free(m->val);
    free(m);
}

static size_t slot(const struct cfs_strmap *m, const char *key)
{
    size_t k = cfs_str_hash(key) & (m->cap - 1);

    while (m->key[k] && strcmp(m->key[k], key) != 0)
        k = (k + 1) & (m->cap - 1);
    return k;
}

static void grow(struct cfs_strmap *m)
{
    struct cfs_strmap n = { .cap = m->cap * 2 };

    n.key = cfs_xcalloc(n.cap, sizeof(*n.key));
    n.val = cfs_xcalloc(n.cap, sizeof(*n.val));
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i]) {
            size_t k = slot(&n, m->key[i]);
            n.key[k] = m->key[i];
            n.val[k] = m->val[i];
        }
    n.used = m->used;
    free(m->key);
    free(m->val);
    *m = n;
}

bool cfs_strmap_add(struct cfs_strmap *m, const char *key, size_t v)
{
    if (!key)
        return false;
    if (2 * (m->used + 1) > m->cap)
        grow(m);
    size_t k = slot(m, key);
    if (m->key[k])
        return false;
    m->key[k] = cfs_xstrdup(key);
    m->val[k] = v;
    m->used++;
    return true;
}

bool cfs_strmap_get(const struct cfs_strmap *m, const char *key, size_t *v)
{
    if (!m || !key)
        return false;
    size_t k = slot(m, key);
    if (!m->key[k])
        return false;
    if (v)
        *v = m->val[k];
    return true;
}

void cfs_strmap_set(struct cfs_strmap *m, const char *key, size_t v)
{
    if (!key)
        return;
    if (!cfs_strmap_add(m, key, v))
        m->val[slot(m, key)] = v;
}

size_t cfs_strmap_size(const struct cfs_strmap *m)
{
    return m ? m->used : 0;
}
