/* stamp.c — see stamp.h. A chained hash table of paths; each entry keeps
 * the FNV-1a hash and length of what the path showed last, and since
 * when. */
#include "chainfs/stamp.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "chainfs/util.h"

#define STAMP_BUCKETS 4096
#define STAMP_MAX_DEFAULT 65536

struct stamp {
    struct stamp *next;
    char *path;
    uint64_t hash;
    size_t len;
    struct timespec mtime;
};

struct cfs_stamps {
    pthread_mutex_t lock;
    struct stamp *buckets[STAMP_BUCKETS];
    size_t n;
    size_t max;
    struct timespec start;
    bool forgot; /* the table was emptied once: new paths are dated now */
};

struct cfs_stamps *cfs_stamps_new(struct timespec start, size_t max)
{
    struct cfs_stamps *s = cfs_xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->start = start;
    s->max = max ? max : STAMP_MAX_DEFAULT;
    return s;
}

/* Caller holds the lock. */
static void stamps_clear(struct cfs_stamps *s)
{
    for (size_t b = 0; b < STAMP_BUCKETS; b++) {
        struct stamp *e = s->buckets[b];
        while (e) {
            struct stamp *next = e->next;
            free(e->path);
            free(e);
            e = next;
        }
        s->buckets[b] = NULL;
    }
    s->n = 0;
}

struct cfs_stamps *cfs_stamps_free(struct cfs_stamps *s)
{
    if (!s)
        return NULL;
    stamps_clear(s);
    pthread_mutex_destroy(&s->lock);
    free(s);
    return NULL;
}

/* The time of PATH, whose content now hashes to HASH over LEN bytes. */
static struct timespec stamps_note(struct cfs_stamps *s, const char *path,
                                   uint64_t hash, size_t len,
                                   struct timespec now)
{
    uint64_t b = cfs_fnv1a(CFS_FNV_OFFSET, path, strlen(path)) % STAMP_BUCKETS;
    pthread_mutex_lock(&s->lock);
    struct stamp *e = s->buckets[b];
    while (e && strcmp(e->path, path) != 0)
        e = e->next;
    if (!e) {
        if (s->n >= s->max) {
            stamps_clear(s);
            s->forgot = true;
            b = cfs_fnv1a(CFS_FNV_OFFSET, path, strlen(path)) % STAMP_BUCKETS;
        }
        e = cfs_xcalloc(1, sizeof(*e));
        e->path = cfs_xstrdup(path);
        e->hash = hash;
        e->len = len;
        e->mtime = s->forgot ? now : s->start;
        e->next = s->buckets[b];
        s->buckets[b] = e;
        s->n++;
    } else if (e->hash != hash || e->len != len) {
        e->hash = hash;
        e->len = len;
        e->mtime = now;
    }
    struct timespec t = e->mtime;
    pthread_mutex_unlock(&s->lock);
    return t;
}

struct timespec cfs_stamps_see(struct cfs_stamps *s, const char *path,
                               const void *data, size_t len,
                               struct timespec now)
{
    return stamps_note(s, path, cfs_fnv1a(CFS_FNV_OFFSET, data, len), len, now);
}

struct timespec cfs_stamps_see_names(struct cfs_stamps *s, const char *path,
                                     char *const *names, struct timespec now)
{
    uint64_t h = CFS_FNV_OFFSET;
    size_t len = 0;
    for (char *const *n = names; n && *n; n++) {
        size_t l = strlen(*n) + 1; /* with its NUL: "ab","c" != "a","bc" */
        h = cfs_fnv1a(h, *n, l);
        len += l;
    }
    return stamps_note(s, path, h, len, now);
}

size_t cfs_stamps_count(struct cfs_stamps *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->n;
    pthread_mutex_unlock(&s->lock);
    return n;
}
