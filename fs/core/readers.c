/* readers.c — part of the engine (see engine_int.h):
 * snapshots/NAME/disk.raw, a snapshot's content as a raw disk image
 * (issue 9, docs/design/issue9.md §2, §3).
 *
 * disk.raw of snapshot NAME (layers[i]) is the frozen chain below it,
 * layers[i+1..n-1]; never the active layer. Its stat comes from the tree
 * (no server: `ls -l`, `find`, `du` stay fast); an open registers a
 * reader in the disk's state (tree lock) and gets the image server of
 * that chain, started at the first open and shared by every open of it,
 * stopped at the last release. While a reader is open no merge writes
 * or removes a file it reads: a direct rmdir is refused with EBUSY
 * naming the reader (actions.c), a queued one waits (dispatch), and a
 * merge already writing the chain makes the open EBUSY.
 *
 * Locks: the tree lock for the registry; srv_lock (a leaf) for the
 * servers list; a per-reader mutex around its stream (FUSE may send two
 * reads of one handle at once). The image server is called with none of
 * the engine's locks held. */
#include "engine_int.h"

#include <stdatomic.h>

#include "chainfs/nodes.h"

/* one image server, shared by every open of the same frozen chain */
struct served {
    struct served *next;
    char *key;                /* the chain: "fmt:path\n" per layer */
    struct cfs_img *img;      /* NULL while starting or after a failure */
    unsigned refs;
    bool starting;
    int err;                  /* the start's result, for those who waited */
};

struct cfs_image_reader {
    struct cfs_engine *e;
    char *dom, *disk, *snapshot;
    uint64_t id;              /* its cfs_reader in the disk's state */
    struct served *srv;
    struct cfs_img_stream *st;
    pthread_mutex_t lock;     /* the stream, the counters */
    uint64_t size;
    uint64_t bytes, requests;
    int64_t opened_ms;
    pid_t pid;
    char *comm;
    atomic_bool flushed;      /* the registry's copy is set (reader_mark) */
};

bool engine_images(struct cfs_engine *e)
{
    return e->imgserve && engine_files_local(e);
}

/* ---- data runs (pure) ------------------------------------------------------ */

int64_t cfs_extents_seek(const struct cfs_extent *runs, size_t n,
                         uint64_t size, uint64_t off, int whence)
{
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    if (off >= size)
        return -ENXIO;
    /* the first run that ends after OFF */
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (runs[mid].off + runs[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    bool inside = lo < n && runs[lo].off <= off;
    if (whence == SEEK_DATA) {
        if (inside)
            return (int64_t)off;
        if (lo < n && runs[lo].off < size)
            return (int64_t)runs[lo].off;
        return -ENXIO;
    }
    if (!inside)
        return (int64_t)off;
    /* the end of this run, and of those adjacent to it */
    uint64_t end = runs[lo].off + runs[lo].len;
    for (size_t k = lo + 1; k < n && runs[k].off <= end; k++)
        if (runs[k].off + runs[k].len > end)
            end = runs[k].off + runs[k].len;
    return (int64_t)(end < size ? end : size);
}

uint64_t cfs_extents_bytes(const struct cfs_extent *runs, size_t n,
                           uint64_t size)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (runs[i].off >= size)
            break;
        uint64_t end = runs[i].off + runs[i].len;
        sum += (end < size ? end : size) - runs[i].off;
    }
    return sum;
}

/* ---- the tree's side ------------------------------------------------------- */

int image_attr_locked(const struct cfs_node_view *v, struct cfs_image_attr *a)
{
    *a = (struct cfs_image_attr){0};
    if (!v->disk || v->layer < 0 || (size_t)v->layer + 1 >= v->disk->n_layers)
        return -ENOENT;
    const struct cfs_disk *dk = v->disk;
    const struct cfs_layer *frozen = &dk->layers[v->layer + 1];
    a->size = frozen->virtual_size;
    /* §2.2: an upper bound of the data (clusters written in several
     * layers count more than once), capped at the size */
    uint64_t alloc = 0;
    for (size_t i = (size_t)v->layer + 1; i < dk->n_layers; i++)
        alloc += dk->layers[i].is_block ? dk->layers[i].virtual_size
                                        : dk->layers[i].allocation;
    if (alloc > a->size)
        alloc = a->size;
    a->blocks = (alloc + 511) / 512;
    return 0;
}

/* The servers' key of the chain LAYERS[0..N): "fmt:path\n" per layer,
 * by canonical path. Caller frees. */
static char *chain_key(const struct cfs_layer *layers, size_t n)
{
    struct cfs_buf key = {0};
    for (size_t i = 0; i < n; i++)
        cfs_buf_printf(&key, "%s:%s%s\n", layers[i].format ? layers[i].format : "",
                       layers[i].is_block ? "block:" : "",
                       layers[i].id.canonical ? layers[i].id.canonical
                                              : layers[i].path);
    return cfs_buf_steal(&key);
}

/* A reference to the running server of KEY, or NULL (none, or still
 * starting). */
static struct served *served_find(struct cfs_engine *e, const char *key)
{
    pthread_mutex_lock(&e->srv_lock);
    struct served *sv = e->served;
    while (sv && strcmp(sv->key, key) != 0)
        sv = sv->next;
    if (sv && (sv->starting || !sv->img))
        sv = NULL;
    if (sv)
        sv->refs++;
    pthread_mutex_unlock(&e->srv_lock);
    return sv;
}

static void served_put(struct cfs_engine *e, struct served *sv);

int cfs_engine_image_stat(struct cfs_engine *e, const struct cfs_path *p,
                          struct cfs_image_attr *out)
{
    *out = (struct cfs_image_attr){0};
    if (!cfs_node_type(p->kind)->image)
        return -EINVAL;
    _cleanup_free_ char *key = NULL;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_node_view v;
    int r = view_resolve(e, p, &v);
    if (r == 0)
        r = image_attr_locked(&v, out);
    if (r == 0)
        key = chain_key(&v.disk->layers[v.layer + 1],
                        v.disk->n_layers - (size_t)v.layer - 1);
    pthread_mutex_unlock(&e->tree->lock);
    /* while it is open (an fstat reaches us as a stat by path: Linux
     * sends no file handle with it), the exact data of the chain's map */
    struct served *sv = r == 0 ? served_find(e, key) : NULL;
    if (sv) {
        const struct cfs_extent *runs;
        size_t n;
        if (e->imgserve->ops->extents(sv->img, &runs, &n) == 0)
            out->blocks = (cfs_extents_bytes(runs, n, out->size) + 511) / 512;
        served_put(e, sv);
    }
    return r;
}

static char *reader_text(const struct cfs_disk_state *s,
                         const struct cfs_reader *rd)
{
    char since[64];
    cfs_format_time(rd->since, since, sizeof(since));
    return cfs_xasprintf("snapshots/%s/disk.raw of %s/%s is open (pid %ld%s%s, "
                         "since %s)", rd->snapshot, s->dom, s->disk,
                         (long)rd->pid, rd->comm ? " " : "",
                         rd->comm ? rd->comm : "", since);
}

bool reader_uses(struct cfs_tree *t, const struct cfs_file_id *id,
                 const char *path, char **why)
{
    for (size_t i = 0; i < t->n_states; i++) {
        const struct cfs_disk_state *s = t->states[i];
        for (size_t r = 0; r < s->n_readers; r++) {
            const struct cfs_reader *rd = &s->readers[r];
            for (size_t f = 0; f < rd->n_files; f++) {
                if (!cfs_file_same(&rd->ids[f], rd->paths[f], id, path))
                    continue;
                if (why)
                    *why = reader_text(s, rd);
                return true;
            }
        }
    }
    return false;
}

/* A merge of S's disk in progress writes or removes one of the N files
 * FILES (top first): *WHY says which. Caller holds the tree lock. */
static bool job_touches(const struct cfs_disk_state *s,
                        const struct cfs_layer *files, size_t n, char **why)
{
    const struct cfs_job *j = &s->job;
    if (!cfs_job_phase_in_progress(j->phase) || j->type == CFS_JOB_SNAPSHOT ||
        j->type == CFS_JOB_COPY || j->type == CFS_JOB_NONE)
        return false;
    for (size_t f = 0; f < n; f++) {
        const struct cfs_layer *l = &files[f];
        bool hit = cfs_file_same(&j->top_id, j->top, &l->id, l->path) ||
                   (j->written && cfs_file_same(NULL, j->written, &l->id, l->path)) ||
                   (j->base && cfs_file_same(NULL, j->base, &l->id, l->path));
        for (size_t k = 0; !hit && k < j->n_leaving; k++)
            hit = cfs_file_same(&j->leaving[k].id, j->leaving[k].path, &l->id,
                                l->path);
        if (hit) {
            *why = cfs_xasprintf("%s %s is being merged (%s of %s into %s), "
                                 "which writes or removes %s",
                                 s->dom, s->disk, cfs_job_type_to_string(j->type),
                                 j->top, j->base ? j->base : "-", l->path);
            return true;
        }
    }
    return false;
}

/* /proc/PID/comm, or NULL */
static char *proc_comm(pid_t pid)
{
    if (pid <= 0)
        return NULL;
    char path[64], buf[64];
    snprintf(path, sizeof(path), "/proc/%ld/comm", (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return cfs_xstrdup(buf);
}

/* Take reader ID out of DOM/DISK's state. Caller holds the tree lock. */
static void reader_unregister_locked(struct cfs_tree *t, const char *dom,
                                     const char *disk, uint64_t id)
{
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, dom, disk);
    for (size_t i = 0; s && i < s->n_readers; i++) {
        if (s->readers[i].id != id)
            continue;
        cfs_reader_clear(&s->readers[i]);
        memmove(&s->readers[i], &s->readers[i + 1],
                (s->n_readers - i - 1) * sizeof(*s->readers));
        if (--s->n_readers == 0) {
            free(s->readers);
            s->readers = NULL;
        }
        return;
    }
}

/* ---- servers ------------------------------------------------------------------ */

/* Drop a reference to SV; true if it was the last (SV is then out of
 * the list, the caller stops and frees it). Caller holds srv_lock. */
static bool served_unref_locked(struct cfs_engine *e, struct served *sv)
{
    if (--sv->refs > 0)
        return false;
    struct served **pp = &e->served;
    while (*pp != sv)
        pp = &(*pp)->next;
    *pp = sv->next;
    return true;
}

static void served_free(struct cfs_engine *e, struct served *sv)
{
    if (sv->img)
        e->imgserve->ops->stop(sv->img);
    free(sv->key);
    free(sv);
}

/* The server of SPEC's chain (KEY), started if none runs: 0 and *OUT with
 * a reference, or -errno (logged by the caller). One start at a time per
 * chain: an open that finds it starting waits for its result. */
static int served_get(struct cfs_engine *e, const char *key,
                      const struct cfs_img_spec *spec, struct served **out)
{
    pthread_mutex_lock(&e->srv_lock);
    struct served *sv = e->served;
    while (sv && strcmp(sv->key, key) != 0)
        sv = sv->next;
    bool starter = !sv;
    if (starter) {
        sv = cfs_xcalloc(1, sizeof(*sv));
        sv->key = cfs_xstrdup(key);
        sv->starting = true;
        sv->next = e->served;
        e->served = sv;
    }
    sv->refs++;
    if (starter) {
        pthread_mutex_unlock(&e->srv_lock);
        struct cfs_img *img = NULL;
        int r = e->imgserve->ops->start(e->imgserve, spec, &img);
        pthread_mutex_lock(&e->srv_lock);
        sv->starting = false;
        sv->img = r == 0 ? img : NULL;
        sv->err = r;
        pthread_cond_broadcast(&e->srv_cond);
    }
    while (sv->starting)
        pthread_cond_wait(&e->srv_cond, &e->srv_lock);
    int err = sv->img ? 0 : sv->err;
    bool last = err < 0 && served_unref_locked(e, sv);
    pthread_mutex_unlock(&e->srv_lock);
    if (err < 0) {
        if (last)
            served_free(e, sv);
        if (!starter)
            cfs_backend_set_errmsg("the image server did not start: %s",
                                   strerror(-err));
        return err;
    }
    *out = sv;
    return 0;
}

/* Drop a reference; the last one stops the server (synchronously: its
 * process and its image locks are gone when this returns). */
static void served_put(struct cfs_engine *e, struct served *sv)
{
    pthread_mutex_lock(&e->srv_lock);
    bool last = served_unref_locked(e, sv);
    pthread_mutex_unlock(&e->srv_lock);
    if (last)
        served_free(e, sv);
}

void images_stop_all(struct cfs_engine *e)
{
    if (!e->imgserve)
        return;
    pthread_mutex_lock(&e->srv_lock);
    struct served *list = TAKE_PTR(e->served);
    pthread_mutex_unlock(&e->srv_lock);
    while (list) {
        struct served *next = list->next;
        served_free(e, list);
        list = next;
    }
}

/* ---- open, read, seek, release --------------------------------------------- */

int cfs_engine_image_open(struct cfs_engine *e, const struct cfs_path *p,
                          pid_t pid, struct cfs_image_reader **out)
{
    *out = NULL;
    if (!cfs_node_type(p->kind)->image)
        return -EINVAL;
    _cleanup_free_ char *why = NULL;
    _cleanup_free_ char *comm = proc_comm(pid);
    struct cfs_layer *files = NULL;
    size_t n = 0;
    uint64_t size = 0, id = 0;
    const char *label_dom = p->dom, *label_disk = p->disk;

    pthread_mutex_lock(&e->tree->lock);
    struct cfs_node_view v;
    int r = view_resolve(e, p, &v);
    if (r == 0 && (v.layer < 0 || (size_t)v.layer + 1 >= v.disk->n_layers))
        r = -ENOENT;
    if (r == 0) {
        const struct cfs_disk *dk = v.disk;
        n = dk->n_layers - (size_t)v.layer - 1;
        files = cfs_xcalloc(n, sizeof(*files));
        for (size_t i = 0; i < n; i++) {
            const struct cfs_layer *l = &dk->layers[v.layer + 1 + i];
            files[i].path = cfs_xstrdup(l->path);
            cfs_file_id_copy(&files[i].id, &l->id);
            files[i].format = cfs_xstrdup(l->format);
            files[i].is_block = l->is_block;
            files[i].virtual_size = l->virtual_size;
        }
        size = files[0].virtual_size;
        for (size_t i = 0; r == 0 && i < n; i++) {
            if (!files[i].format || !files[i].format[0]) {
                r = -EIO;
                why = cfs_xasprintf("the format of %s is not known (chainfs "
                                    "never probes it); set it with qemu-img "
                                    "rebase -u -F FMT -b BACKING on the layer "
                                    "above", files[i].path);
            }
        }
        if (r == 0 && size == 0) {
            r = -EAGAIN;
            why = cfs_xstrdup("the image's size is not known yet (the "
                              "domain is being read); try again");
        }
        /* §3.2: a merge in progress writing this chain */
        for (size_t i = 0; r == 0 && i < e->tree->n_states; i++)
            if (job_touches(e->tree->states[i], files, n, &why))
                r = -EBUSY;
    }
    if (r == 0) {
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, p->dom, p->disk);
        id = ++e->last_reader_id;
        struct cfs_reader rd = {
            .id = id,
            .snapshot = cfs_xstrdup(p->snap),
            .n_files = n,
            .ids = cfs_xcalloc(n, sizeof(struct cfs_file_id)),
            .paths = cfs_xcalloc(n, sizeof(char *)),
            .pid = pid,
            .comm = cfs_xstrdup(comm),
            .since = now_s(),
        };
        for (size_t i = 0; i < n; i++) {
            cfs_file_id_copy(&rd.ids[i], &files[i].id);
            rd.paths[i] = cfs_xstrdup(files[i].path);
        }
        s->readers = cfs_xrealloc(s->readers, (s->n_readers + 1) * sizeof(*s->readers));
        s->readers[s->n_readers++] = rd;
        tree_changed(e);
    }
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0) {
        if (why)
            log_warn("open %s/%s/snapshots/%s/disk.raw refused (%s): %s",
                     label_dom, label_disk, p->snap, strerror(-r), why);
        for (size_t i = 0; i < n; i++)
            cfs_layer_clear(&files[i]);
        free(files);
        return r;
    }

    /* the chain, top first, by canonical path (§1.2) */
    struct cfs_img_layer *il = cfs_xcalloc(n, sizeof(*il));
    for (size_t i = 0; i < n; i++)
        il[i] = (struct cfs_img_layer){
            .path = files[i].id.canonical ? files[i].id.canonical : files[i].path,
            .format = files[i].format, .is_block = files[i].is_block };
    _cleanup_free_ char *key = chain_key(files, n);
    _cleanup_free_ char *label = cfs_xasprintf("%s/%s %s", p->dom, p->disk, p->snap);
    struct cfs_img_spec spec = { .layers = il, .n_layers = n,
                                 .virtual_size = size, .label = label };
    struct served *sv = NULL;
    struct cfs_img_stream *st = NULL;
    r = served_get(e, key, &spec, &sv);
    if (r == 0) {
        r = e->imgserve->ops->stream_open(sv->img, &st);
        if (r < 0)
            served_put(e, sv);
    }
    _cleanup_free_ char *msg = r < 0 ? cfs_xstrdup(errmsg_or(strerror(-r))) : NULL;
    free(il);
    for (size_t i = 0; i < n; i++)
        cfs_layer_clear(&files[i]);
    free(files);
    if (r < 0) {
        log_warn("open %s/%s/snapshots/%s/disk.raw failed (%s): %s", p->dom,
                 p->disk, p->snap, strerror(-r), msg);
        pthread_mutex_lock(&e->tree->lock);
        reader_unregister_locked(e->tree, p->dom, p->disk, id);
        tree_changed(e);
        pthread_mutex_unlock(&e->tree->lock);
        images_reader_gone(e);
        return r;
    }
    struct cfs_image_reader *rd = cfs_xcalloc(1, sizeof(*rd));
    *rd = (struct cfs_image_reader){
        .e = e, .dom = cfs_xstrdup(p->dom), .disk = cfs_xstrdup(p->disk),
        .snapshot = cfs_xstrdup(p->snap), .id = id, .srv = sv, .st = st,
        .size = size, .opened_ms = now_ms(), .pid = pid,
        .comm = TAKE_PTR(comm),
    };
    pthread_mutex_init(&rd->lock, NULL);
    log_info("disk.raw of %s/%s %s opened by pid %ld%s%s", p->dom, p->disk,
             p->snap, (long)pid, rd->comm ? " " : "", rd->comm ? rd->comm : "");
    *out = rd;
    return 0;
}

/* Set the registry's flushed mark of R. */
static void reader_mark(struct cfs_image_reader *r, bool flushed)
{
    struct cfs_engine *e = r->e;
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, r->dom, r->disk);
    for (size_t i = 0; s && i < s->n_readers; i++)
        if (s->readers[i].id == r->id && s->readers[i].flushed != flushed) {
            s->readers[i].flushed = flushed;
            tree_changed(e);
        }
    pthread_mutex_unlock(&e->tree->lock);
}

void cfs_engine_image_flush(struct cfs_image_reader *r)
{
    if (!atomic_exchange(&r->flushed, true))
        reader_mark(r, true);
}

void readers_settle(struct cfs_engine *e, unsigned max_ms)
{
    int64_t deadline = now_ms() + max_ms;
    pthread_mutex_lock(&e->tree->lock);
    for (;;) {
        bool pending = false;
        for (size_t i = 0; i < e->tree->n_states && !pending; i++) {
            const struct cfs_disk_state *s = e->tree->states[i];
            for (size_t r = 0; r < s->n_readers && !pending; r++)
                pending = s->readers[r].flushed;
        }
        int64_t left = deadline - now_ms();
        if (!pending || left <= 0)
            break;
        struct timespec ts = deadline_in(left < 50 ? left : 50);
        pthread_cond_timedwait(&e->tree->changed, &e->tree->lock, &ts);
    }
    pthread_mutex_unlock(&e->tree->lock);
}

ssize_t cfs_engine_image_read(struct cfs_image_reader *r, void *buf,
                              size_t len, uint64_t off)
{
    /* (a load first: the hot path writes nothing) */
    if (atomic_load(&r->flushed) && atomic_exchange(&r->flushed, false))
        reader_mark(r, false);
    if (off >= r->size || len == 0)
        return 0;
    if (len > r->size - off)
        len = (size_t)(r->size - off);
    pthread_mutex_lock(&r->lock);
    ssize_t n = r->e->imgserve->ops->stream_read(r->st, buf, len, off);
    if (n > 0) {
        r->bytes += (uint64_t)n;
        r->requests++;
    }
    pthread_mutex_unlock(&r->lock);
    if (n < 0)
        log_warn("disk.raw of %s/%s %s: read of %zu bytes at %llu failed "
                 "(%s): %s", r->dom, r->disk, r->snapshot, len,
                 (unsigned long long)off, strerror((int)-n),
                 errmsg_or(strerror((int)-n)));
    return n;
}

static int reader_runs(struct cfs_image_reader *r, const struct cfs_extent **runs,
                       size_t *n)
{
    int rc = r->e->imgserve->ops->extents(r->srv->img, runs, n);
    if (rc < 0)
        log_warn("disk.raw of %s/%s %s: the map of its data failed (%s): %s",
                 r->dom, r->disk, r->snapshot, strerror(-rc),
                 errmsg_or(strerror(-rc)));
    return rc;
}

int64_t cfs_engine_image_seek(struct cfs_image_reader *r, uint64_t off,
                              int whence)
{
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    const struct cfs_extent *runs;
    size_t n;
    int rc = reader_runs(r, &runs, &n);
    if (rc < 0)
        return rc;
    return cfs_extents_seek(runs, n, r->size, off, whence);
}

int cfs_engine_image_fstat(struct cfs_image_reader *r,
                           struct cfs_image_attr *out)
{
    const struct cfs_extent *runs;
    size_t n;
    *out = (struct cfs_image_attr){ .size = r->size };
    int rc = reader_runs(r, &runs, &n);
    if (rc < 0)
        return rc;
    out->blocks = (cfs_extents_bytes(runs, n, r->size) + 511) / 512;
    return 0;
}

void images_reader_gone(struct cfs_engine *e)
{
    /* queued deletions that waited for a reader: dispatch looks again */
    _cleanup_strv_ char **doms = NULL;
    _cleanup_strv_ char **disks = NULL;
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < e->tree->n_states; i++) {
        struct cfs_disk_state *s = e->tree->states[i];
        if (s->queue_waits_reader) {
            s->queue_waits_reader = false;
            cfs_strv_push(&doms, cfs_xstrdup(s->dom));
            cfs_strv_push(&disks, cfs_xstrdup(s->disk));
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (size_t i = 0; doms && doms[i]; i++)
        route(e, work_new(WORK_DISPATCH, doms[i], disks[i]));
}

void cfs_engine_image_release(struct cfs_image_reader *r)
{
    if (!r)
        return;
    struct cfs_engine *e = r->e;
    e->imgserve->ops->stream_close(r->st);
    served_put(e, r->srv);
    char got[32];
    cfs_format_size(r->bytes, got, sizeof(got));
    int64_t ms = now_ms() - r->opened_ms;
    log_info("disk.raw of %s/%s %s closed: %s read (%llu bytes) in %llu "
             "requests, %lld.%03lld s, by pid %ld%s%s", r->dom, r->disk,
             r->snapshot, got, (unsigned long long)r->bytes,
             (unsigned long long)r->requests, (long long)(ms / 1000),
             (long long)(ms % 1000), (long)r->pid, r->comm ? " " : "",
             r->comm ? r->comm : "");
    pthread_mutex_lock(&e->tree->lock);
    reader_unregister_locked(e->tree, r->dom, r->disk, r->id);
    tree_changed(e);
    pthread_mutex_unlock(&e->tree->lock);
    images_reader_gone(e);
    pthread_mutex_destroy(&r->lock);
    free(r->dom);
    free(r->disk);
    free(r->snapshot);
    free(r->comm);
    free(r);
}
