/* fuse_ops.c — the FUSE adapter (high-level API, paths).
 *
 * Only dispatch lives here: route the path to its host's engine (the
 * fleet, fleet.h: with several hosts /HOST/... is that host's, / and
 * /.chainfs the fleet's own; the FUSE thread logs under the host's name
 * for the call), look its kind up in the node table (nodes.h: mode, file or directory, blocks on read, takes writes),
 * ask the engine, map to errno. No operation here knows one kind of node
 * from another by name.
 * A file's content is rendered once at open() into the handle and served
 * by offset from there (so a reader sees one consistent version); a node
 * whose read blocks (`wait`) renders at its first read, after blocking
 * until the disk is idle. A node that takes writes (`ctl`) hands each
 * write() to its write function whole: the write's result is the answer.
 * Every file is opened direct_io: contents change with the world, and the
 * kernel must not serve yesterday's job progress from its page cache.
 * A node of a guest disk's content (disk.raw, issue 9) is not rendered:
 * open() gets an image reader from the engine, read() and lseek()
 * (SEEK_DATA/SEEK_HOLE, answered for every file: the kernel's first
 * ENOSYS would turn it off for the whole mount) go to it.
 * Every node's mtime (and atime, ctime) is when what it shows last
 * changed: each rendering and listing is handed to stamp.h, so `rsync -a`
 * and `make` see a file change exactly when its bytes do.
 *
 * Called on FUSE worker threads (several at once unless -s). */
#include "fuse_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chainfs/ctl.h"
#include "chainfs/log.h"
#include "chainfs/nodes.h"
#include "chainfs/path.h"

/* ---- what stat said -----------------------------------------------------
 * A file's size is its rendered length. tar, cp and rsync stat a file,
 * open it, read that many bytes and fstat it again; cat opens, fstats and
 * reads. So the content rendered for a stat() is kept for a moment and an
 * open() of the same path serves that very content if nothing changed in
 * the tree since (the generation check: `cat job` right after an rmdir
 * must show the new job), and an fstat() (which reaches us as a plain
 * getattr) shortly after an open() reports the size of what that open
 * reads. A change that lands between a stat and the read that follows is
 * a real change, and a tool that checks (tar) rightly reports it. */
#define RECENT_SLOTS 64
#define RECENT_STAT_MS 500
#define RECENT_OPEN_MS 100

struct recent {
    char *path;
    char *data;
    size_t len;
    unsigned long generation; /* tree generation the content was rendered at */
    struct timespec mtime;    /* the content's mtime (stamp.h) */
    int64_t stat_ms;          /* rendered for a stat() at */
    int64_t open_ms;          /* served to an open() at, or 0 */
};

static pthread_mutex_t recent_lock = PTHREAD_MUTEX_INITIALIZER;
static struct recent recent[RECENT_SLOTS];

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The slot of PATH, or the oldest one. Caller holds recent_lock. */
static struct recent *recent_slot(const char *path, bool *found)
{
    struct recent *slot = &recent[0];
    *found = false;
    for (size_t i = 0; i < RECENT_SLOTS; i++) {
        if (recent[i].path && strcmp(recent[i].path, path) == 0) {
            *found = true;
            return &recent[i];
        }
        int64_t ti = recent[i].stat_ms > recent[i].open_ms ? recent[i].stat_ms : recent[i].open_ms;
        int64_t ts = slot->stat_ms > slot->open_ms ? slot->stat_ms : slot->open_ms;
        if (ti < ts)
            slot = &recent[i];
    }
    return slot;
}

static void recent_put(const char *path, const struct cfs_buf *b,
                       struct timespec mtime, unsigned long generation,
                       bool for_open)
{
    int64_t now = mono_ms();
    bool found;
    pthread_mutex_lock(&recent_lock);
    struct recent *slot = recent_slot(path, &found);
    free(slot->path);
    free(slot->data);
    slot->path = cfs_xstrdup(path);
    slot->data = cfs_xmalloc(b->len + 1);
    memcpy(slot->data, b->data ? b->data : "", b->len);
    slot->data[b->len] = '\0';
    slot->len = b->len;
    slot->generation = generation;
    slot->mtime = mtime;
    slot->stat_ms = for_open ? 0 : now;
    slot->open_ms = for_open ? now : 0;
    pthread_mutex_unlock(&recent_lock);
}

/* open(): copy what a stat() of PATH rendered into OUT if that was less
 * than RECENT_STAT_MS ago and the tree has not changed since. */
static bool recent_for_open(const char *path, unsigned long generation,
                            struct cfs_buf *out, struct timespec *mtime)
{
    bool found, hit = false;
    int64_t now = mono_ms();
    pthread_mutex_lock(&recent_lock);
    struct recent *r = recent_slot(path, &found);
    if (found && r->stat_ms && now - r->stat_ms <= RECENT_STAT_MS &&
        r->generation == generation) {
        cfs_buf_put(out, r->data, r->len);
        *mtime = r->mtime;
        r->open_ms = now;
        hit = true;
    }
    pthread_mutex_unlock(&recent_lock);
    return hit;
}

/* getattr(): the size and time of what an open() of PATH served less
 * than RECENT_OPEN_MS ago (an fstat() of the open file), if any. */
static bool recent_for_fstat(const char *path, size_t *len,
                             struct timespec *mtime)
{
    bool found, hit = false;
    int64_t now = mono_ms();
    pthread_mutex_lock(&recent_lock);
    struct recent *r = recent_slot(path, &found);
    if (found && r->open_ms && now - r->open_ms <= RECENT_OPEN_MS) {
        *len = r->len;
        *mtime = r->mtime;
        hit = true;
    }
    pthread_mutex_unlock(&recent_lock);
    return hit;
}

void cfs_fs_forget_recent(void)
{
    pthread_mutex_lock(&recent_lock);
    for (size_t i = 0; i < RECENT_SLOTS; i++) {
        free(recent[i].path);
        free(recent[i].data);
        recent[i] = (struct recent){0};
    }
    pthread_mutex_unlock(&recent_lock);
}

struct handle {
    struct cfs_engine *e;         /* the host's engine, NULL: the fleet's */
    struct cfs_path path;
    struct cfs_image_reader *img; /* disk.raw: its reader, else NULL */
    struct cfs_buf content;
    struct timespec mtime; /* of CONTENT, once rendered */
    bool rendered;
    struct handle *prev, *next; /* in open_handles */
};

/* Every handle open()ed and not yet released: when the connection ends
 * first (unmount while `cat wait` reads), the kernel never sends the
 * release, and these are freed at exit instead (cfs_fs_free_handles). */
static pthread_mutex_t open_handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct handle *open_handles;

static void handle_free(struct handle *h)
{
    cfs_buf_free(&h->content);
    free(h);
}

static void handle_link(struct handle *h)
{
    pthread_mutex_lock(&open_handles_lock);
    h->prev = NULL;
    h->next = open_handles;
    if (open_handles)
        open_handles->prev = h;
    open_handles = h;
    pthread_mutex_unlock(&open_handles_lock);
}

static void handle_unlink(struct handle *h)
{
    pthread_mutex_lock(&open_handles_lock);
    if (h->prev)
        h->prev->next = h->next;
    else
        open_handles = h->next;
    if (h->next)
        h->next->prev = h->prev;
    pthread_mutex_unlock(&open_handles_lock);
}

void cfs_fs_release_images(void)
{
    /* taken out under the leaf lock, released outside it (a release
     * takes the engine's locks and stops a server) */
    size_t n = 0;
    struct cfs_image_reader **imgs = NULL;
    pthread_mutex_lock(&open_handles_lock);
    for (struct handle *h = open_handles; h; h = h->next) {
        if (!h->img)
            continue;
        imgs = cfs_xrealloc(imgs, (n + 1) * sizeof(*imgs));
        imgs[n++] = TAKE_PTR(h->img);
    }
    pthread_mutex_unlock(&open_handles_lock);
    for (size_t i = 0; i < n; i++)
        cfs_engine_image_release(imgs[i]);
    free(imgs);
}

void cfs_fs_free_handles(void)
{
    pthread_mutex_lock(&open_handles_lock);
    struct handle *h = TAKE_PTR(open_handles);
    pthread_mutex_unlock(&open_handles_lock);
    while (h) {
        struct handle *next = h->next;
        handle_free(h);
        h = next;
    }
}

static struct cfs_fs *fs_get(void)
{
    return fuse_get_context()->private_data;
}

/* PATH of the mount: which host's engine (NULL: the fleet's own node)
 * and the path below it. The thread's log lines carry that host's name
 * until the operation ends (issue 12). */
static int resolve(struct cfs_fs *fs, const char *path, struct cfs_engine **e,
                   struct cfs_path *p)
{
    int r = cfs_fleet_resolve(fs->fleet, path, e, p);
    cfs_log_set_context(cfs_fleet_engine_host(fs->fleet, *e));
    return r;
}

/* An operation on an open file: its host's log context. */
static void handle_context(struct cfs_fs *fs, const struct handle *h)
{
    cfs_log_set_context(h ? cfs_fleet_engine_host(fs->fleet, h->e) : NULL);
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    /* Names can come and go at any time: don't let the kernel remember
     * that a name does not exist, and re-check attributes (sizes change
     * with every job step) on every stat. Positive entries are kept for a
     * second; the engine invalidates those that disappear. */
    cfg->entry_timeout = 1.0;
    cfg->negative_timeout = 0;
    cfg->attr_timeout = 0;
    cfg->use_ino = 0;
    cfg->hard_remove = 1;
    return fuse_get_context()->private_data;
}

static bool may_change(const struct cfs_fs *fs)
{
    struct fuse_context *ctx = fuse_get_context();
    if (ctx->uid == 0)
        return true;
    if (!fs->have_manage_group)
        return false;
    if (ctx->gid == fs->manage_group)
        return true;
    gid_t groups[256];
    int n = fuse_getgroups((int)(sizeof(groups) / sizeof(groups[0])), groups);
    for (int i = 0; i < n && i < 256; i++)
        if (groups[i] == fs->manage_group)
            return true;
    return false;
}

/* 0 if the caller may change snapshots (mkdir/rmdir in snapshots/, write
 * ctl), else -EACCES and a log line: "OP PATH refused". */
static int check_may_change(const struct cfs_fs *fs, const char *op,
                            const char *path)
{
    if (may_change(fs))
        return 0;
    log_warn("%s %s refused (%s): uid %u may not change snapshots", op, path,
             strerror(EACCES), (unsigned)fuse_get_context()->uid);
    return -EACCES;
}

static struct timespec now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts;
}

/* The mtime of file PATH whose content is B (stamp.h). */
static struct timespec file_mtime(struct cfs_fs *fs, const char *path,
                                  const struct cfs_buf *b)
{
    return cfs_stamps_see(fs->stamps, path, b->data ? b->data : "", b->len,
                          now_real());
}

/* The mtime of directory PATH (P) from its entries; 0 or -errno. */
static int dir_mtime(struct cfs_fs *fs, const char *path, struct cfs_engine *e,
                     const struct cfs_path *p, struct timespec *mtime)
{
    _cleanup_strv_ char **names = NULL;
    int r = cfs_fleet_readdir(fs->fleet, e, p, &names);
    if (r < 0)
        return r;
    *mtime = cfs_stamps_see_names(fs->stamps, path, names, now_real());
    return 0;
}

/* disk.raw is readable by whoever may change snapshots: root, or a
 * member of -o manage_group (a guest's disk is as private as its image
 * files). Mounts without allow_other have no default_permissions, so
 * open() checks it too. */
static mode_t image_mode(const struct cfs_fs *fs, const struct cfs_node_type *nt,
                         gid_t *gid)
{
    *gid = 0;
    if (!fs->have_manage_group)
        return nt->mode;
    *gid = fs->manage_group;
    return nt->mode | S_IRGRP;
}

/* stat of disk.raw: from the tree (an estimate of its data, no server);
 * while it is open, exact, from the chain's map (cp decides on it
 * whether to look for holes). Linux sends fstat as a getattr by path
 * (no handle H), so the engine looks for a running server itself. */
static int image_getattr(struct cfs_fs *fs, const char *path,
                         struct cfs_engine *e, const struct cfs_path *p,
                         struct handle *h, struct stat *st)
{
    struct cfs_image_attr a;
    if (!e)
        return -ENOENT;
    int r = h && h->img ? cfs_engine_image_fstat(h->img, &a)
                        : cfs_engine_image_stat(e, p, &a);
    if (r < 0 && h && h->img)
        r = cfs_engine_image_stat(e, p, &a); /* map failed: logged */
    if (r < 0)
        return r;
    const struct cfs_node_type *nt = cfs_node_type(p->kind);
    /* its time: when chainfs first showed this image (constant while
     * the snapshot lives) */
    char key[64];
    int kl = snprintf(key, sizeof(key), "%llu", (unsigned long long)a.size);
    struct timespec mtime = cfs_stamps_see(fs->stamps, path, key, (size_t)kl,
                                           now_real());
    memset(st, 0, sizeof(*st));
    gid_t gid;
    st->st_mode = S_IFREG | image_mode(fs, nt, &gid);
    st->st_gid = gid;
    st->st_nlink = 1;
    st->st_size = (off_t)a.size;
    st->st_blocks = (blkcnt_t)a.blocks;
    st->st_blksize = 4 << 20; /* cat and cp read this much a call */
    st->st_atim = st->st_mtim = st->st_ctim = mtime;
    return 0;
}

/* Every time of a node is its mtime: when what it shows last changed. */
static int fs_getattr(const char *path, struct stat *st,
                      struct fuse_file_info *fi)
{
    struct cfs_fs *fs = fs_get();
    struct cfs_path p;
    struct cfs_engine *e;
    int r = resolve(fs, path, &e, &p);
    if (r < 0)
        return r;
    const struct cfs_node_type *nt = cfs_node_type(p.kind);
    struct cfs_node_attr a = {.nlink = 1};
    struct timespec mtime;
    struct handle *h = fi ? (struct handle *)(uintptr_t)fi->fh : NULL;
    if (nt->image)
        return image_getattr(fs, path, e, &p, h, st);
    if (h && h->rendered) {
        /* fstat() of an open file: the size of what it reads */
        a.size = h->content.len;
        mtime = h->mtime;
    } else if (!nt->dir && !nt->blocks &&
               recent_for_fstat(path, &a.size, &mtime)) {
        /* fstat() of a file just opened: the size of what it reads */
    } else if (!nt->dir) {
        _cleanup_buf_ struct cfs_buf b = {0};
        unsigned long gen = cfs_fleet_generation(fs->fleet);
        r = cfs_fleet_read(fs->fleet, e, &p, &b);
        if (r < 0)
            return r;
        a.size = b.len;
        mtime = file_mtime(fs, path, &b);
        /* an open() of a blocking file renders later: nothing to keep */
        if (!nt->blocks)
            recent_put(path, &b, mtime, gen, false);
    } else {
        r = cfs_fleet_getattr(fs->fleet, e, &p, &a);
        if (r == 0)
            r = dir_mtime(fs, path, e, &p, &mtime);
        if (r < 0)
            return r;
    }
    memset(st, 0, sizeof(*st));
    st->st_uid = 0;
    st->st_gid = 0;
    st->st_nlink = a.nlink;
    st->st_atim = st->st_mtim = st->st_ctim = mtime;
    st->st_mode = (nt->dir ? S_IFDIR : S_IFREG) | nt->mode;
    if (nt->managed && fs->have_manage_group) {
        /* the group may change snapshots too: its node */
        st->st_mode |= S_IWGRP;
        st->st_gid = fs->manage_group;
    }
    if (!nt->dir) {
        st->st_size = (off_t)a.size;
        st->st_blocks = (blkcnt_t)((a.size + 511) / 512);
    }
    return 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t filler,
                      off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags)
{
    (void)off;
    (void)fi;
    (void)flags;
    struct cfs_path p;
    struct cfs_engine *e;
    struct cfs_fs *fs = fs_get();
    int r = resolve(fs, path, &e, &p);
    if (r < 0)
        return r;
    _cleanup_strv_ char **names = NULL;
    r = cfs_fleet_readdir(fs->fleet, e, &p, &names);
    if (r < 0)
        return r;
    /* whoever lists the new entries has seen the directory change */
    cfs_stamps_see_names(fs->stamps, path, names, now_real());
    filler(buf, ".", NULL, 0, 0);
    filler(buf, "..", NULL, 0, 0);
    for (char **n = names; n && *n; n++)
        if (filler(buf, *n, NULL, 0, 0))
            break;
    return 0;
}

/* ---- refusals ------------------------------------------------------------
 * Only mkdir and rmdir of a snapshot and writes to a file that takes them
 * (ctl) change anything. The rest is refused with one of two errnos,
 * never ENOSYS:
 *  - EROFS: the content of any other file (open for writing, truncate,
 *    write) — files show state, they do not take input;
 *  - EPERM: names and attributes (create, mknod/mkfifo, symlink, link,
 *    rename, unlink, chmod, chown, utimes; mkdir and rmdir elsewhere than
 *    a snapshot) — the tree is chainfs's to shape.
 * `touch FILE` opens FILE for writing first, so it reports EROFS; `touch
 * NEWNAME` reports EPERM. */
static int refuse_content(void)
{
    return -EROFS;
}

static int refuse_name(void)
{
    return -EPERM;
}

/* The end of every open: R < 0 frees H, else H is the open file's. */
static int open_done(struct handle *h, struct fuse_file_info *fi, int r)
{
    if (r < 0) {
        handle_free(h);
        return r;
    }
    handle_link(h);
    fi->fh = (uint64_t)(uintptr_t)h;
    fi->direct_io = 1;
    fi->keep_cache = 0;
    fi->nonseekable = 0;
    return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
    struct handle *h = cfs_xcalloc(1, sizeof(*h));
    struct cfs_fs *fs = fs_get();
    int r = resolve(fs, path, &h->e, &h->path);
    const struct cfs_node_type *nt = cfs_node_type(h->path.kind);
    if (r == 0 && nt->dir)
        r = -EISDIR;
    if (r == 0 && nt->image) {
        r = (fi->flags & O_ACCMODE) != O_RDONLY ? refuse_content()
            : may_change(fs) ? 0 : -EACCES;
        if (r == -EACCES)
            log_warn("open %s refused (%s): uid %u may not read guest disks "
                     "(root or -o manage_group)", path, strerror(EACCES),
                     (unsigned)fuse_get_context()->uid);
        if (r == 0)
            r = !h->e ? -ENOENT
                      : cfs_engine_image_open(h->e, &h->path,
                                      fuse_get_context()->pid, &h->img);
        return open_done(h, fi, r);
    }
    if (r == 0 && (fi->flags & O_ACCMODE) != O_RDONLY) {
        /* O_TRUNC and O_APPEND (`>` and `>>`) mean nothing to a file that
         * takes commands: each write() is one */
        if (!nt->write)
            r = refuse_content();
        else
            r = check_may_change(fs, "open for writing", path);
    }
    if (r == 0 && !nt->blocks) {
        unsigned long gen = cfs_fleet_generation(fs->fleet);
        if (!recent_for_open(path, gen, &h->content, &h->mtime)) {
            r = cfs_fleet_read(fs->fleet, h->e, &h->path, &h->content);
            if (r == 0) {
                h->mtime = file_mtime(fs, path, &h->content);
                recent_put(path, &h->content, h->mtime, gen, true);
            }
        }
        h->rendered = true;
    }
    return open_done(h, fi, r);
}

static bool req_interrupted(void *arg)
{
    (void)arg;
    return fuse_interrupted() != 0;
}

/* A blocking node (wait) renders at its first read: once the disk is
 * idle. */
static int ensure_rendered(struct handle *h, const char *path)
{
    if (h->rendered)
        return 0;
    struct cfs_fs *fs = fs_get();
    if (!h->e)
        return -EINVAL;
    int r = cfs_engine_wait(h->e, h->path.dom, h->path.disk,
                            req_interrupted, NULL, &h->content);
    if (r < 0)
        return r;
    /* (no path without nullpath_ok, which we do not set) */
    h->mtime = path ? file_mtime(fs, path, &h->content) : now_real();
    h->rendered = true;
    return 0;
}

/* SEEK_DATA / SEEK_HOLE (the kernel keeps SEEK_SET/CUR/END): disk.raw
 * from its chain's map, a rendered file is data up to its end. */
static off_t fs_lseek(const char *path, off_t off, int whence,
                      struct fuse_file_info *fi)
{
    struct handle *h = fi ? (struct handle *)(uintptr_t)fi->fh : NULL;
    if (!h)
        return -EBADF;
    handle_context(fs_get(), h);
    if (off < 0)
        return -ENXIO;
    if (h->img)
        return (off_t)cfs_engine_image_seek(h->img, (uint64_t)off, whence);
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    int r = ensure_rendered(h, path);
    if (r < 0)
        return r;
    if ((size_t)off >= h->content.len)
        return -ENXIO;
    return whence == SEEK_DATA ? off : (off_t)h->content.len;
}

static int fs_read(const char *path, char *buf, size_t size, off_t off,
                   struct fuse_file_info *fi)
{
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    handle_context(fs_get(), h);
    if (h->img) {
        if (off < 0)
            return -EINVAL;
        ssize_t n = cfs_engine_image_read(h->img, buf, size, (uint64_t)off);
        return (int)n;
    }
    int r = ensure_rendered(h, path);
    if (r < 0)
        return r;
    if (off < 0 || (size_t)off >= h->content.len)
        return 0;
    size_t n = h->content.len - (size_t)off;
    if (n > size)
        n = size;
    memcpy(buf, h->content.data + off, n);
    return (int)n;
}

/* poll (epoll, select): every file is ready at once — a rendered one
 * is in its handle, disk.raw answers each read when it comes — so the
 * answer is what the kernel assumes of a file system without poll
 * (readable, writable). Go's runtime registers every file it opens with
 * epoll (node_exporter reading .chainfs/metrics.prom); without this
 * operation libfuse answers ENOSYS and leaks the poll handle it made for
 * the request. No notification ever follows: the handle is freed here. */
static int fs_poll(const char *path, struct fuse_file_info *fi,
                   struct fuse_pollhandle *ph, unsigned *reventsp)
{
    (void)path;
    (void)fi;
    if (ph)
        fuse_pollhandle_destroy(ph);
    *reventsp = POLLIN | POLLRDNORM | POLLOUT | POLLWRNORM;
    return 0;
}

/* Every close(2): disk.raw notes it (its release follows a moment
 * later, see cfs_engine_image_flush); nothing else to do. */
static int fs_flush(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    struct handle *h = fi ? (struct handle *)(uintptr_t)fi->fh : NULL;
    handle_context(fs_get(), h);
    if (h && h->img)
        cfs_engine_image_flush(h->img);
    return 0;
}

static int fs_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    handle_context(fs_get(), h);
    if (h) {
        handle_unlink(h);
        cfs_engine_image_release(h->img);
        handle_free(h);
    }
    return 0;
}

/* Whether a node of kind K is made by mkdir and removed by rmdir (its
 * directory says so: snapshots/). */
static bool made_by_mkdir(enum cfs_node_kind k)
{
    return cfs_node_type(cfs_node_type(k)->parent)->mkdir_rmdir;
}

static int fs_mkdir(const char *path, mode_t mode)
{
    (void)mode;
    struct cfs_fs *fs = fs_get();
    struct cfs_path p;
    struct cfs_engine *e;
    int r = resolve(fs, path, &e, &p);
    if (r == -ENAMETOOLONG)
        return r;
    if (r < 0 || !e || !made_by_mkdir(p.kind))
        return -EPERM;
    r = check_may_change(fs, "mkdir", path);
    if (r < 0)
        return r;
    return cfs_engine_mkdir(e, p.dom, p.disk, p.snap);
}

static int fs_rmdir(const char *path)
{
    struct cfs_fs *fs = fs_get();
    struct cfs_path p;
    struct cfs_engine *e;
    int r = resolve(fs, path, &e, &p);
    if (r < 0)
        return r;
    if (!e || !made_by_mkdir(p.kind))
        return -EPERM;
    r = check_may_change(fs, "rmdir", path);
    if (r < 0)
        return r;
    return cfs_engine_rmdir(e, p.dom, p.disk, p.snap);
}

static int fs_statfs(const char *path, struct statvfs *sv)
{
    (void)path;
    memset(sv, 0, sizeof(*sv));
    sv->f_bsize = 4096;
    sv->f_frsize = 4096;
    sv->f_namemax = 255;
    return 0;
}

static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)path;
    (void)mode;
    (void)fi;
    return refuse_name();
}

static int fs_mknod(const char *path, mode_t mode, dev_t dev)
{
    (void)path;
    (void)mode;
    (void)dev;
    return refuse_name();
}

static int fs_symlink(const char *target, const char *path)
{
    (void)target;
    (void)path;
    return refuse_name();
}

static int fs_link(const char *from, const char *to)
{
    (void)from;
    (void)to;
    return refuse_name();
}

static int fs_unlink(const char *path)
{
    (void)path;
    return refuse_name();
}

static int fs_rename(const char *from, const char *to, unsigned int flags)
{
    (void)from;
    (void)to;
    (void)flags;
    return refuse_name();
}

static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)path;
    (void)mode;
    (void)fi;
    return refuse_name();
}

static int fs_chown(const char *path, uid_t uid, gid_t gid,
                    struct fuse_file_info *fi)
{
    (void)path;
    (void)uid;
    (void)gid;
    (void)fi;
    return refuse_name();
}

static int fs_utimens(const char *path, const struct timespec tv[2],
                      struct fuse_file_info *fi)
{
    (void)path;
    (void)tv;
    (void)fi;
    return refuse_name();
}

/* truncate to 0 of a file that takes writes is what a shell's `>` does
 * before it writes (without atomic O_TRUNC): harmless, nothing to cut. */
static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    (void)fi;
    struct cfs_path p;
    struct cfs_engine *e;
    int r = resolve(fs_get(), path, &e, &p);
    if (r < 0)
        return r;
    const struct cfs_node_type *nt = cfs_node_type(p.kind);
    if (!nt->write || !e)
        return refuse_content();
    r = check_may_change(fs_get(), "truncate", path);
    if (r < 0)
        return r;
    if (size != 0) {
        log_warn("truncate %s to %lld refused (%s): it takes commands, not "
                 "content", path, (long long)size, strerror(EINVAL));
        return -EINVAL;
    }
    return 0;
}

/* Whether the caller is in group GID (primary or supplementary). */
static bool caller_in_group(gid_t gid)
{
    struct fuse_context *ctx = fuse_get_context();
    if (ctx->gid == gid)
        return true;
    gid_t groups[256];
    int n = fuse_getgroups((int)(sizeof(groups) / sizeof(groups[0])), groups);
    for (int i = 0; i < n && i < 256; i++)
        if (groups[i] == gid)
            return true;
    return false;
}

/* `copy DEST` makes chainfs (root) create DEST and, for `chain`, files
 * beside it: a caller who is not root (a manage_group member) must be
 * allowed to create files in DEST's directory, by its mode bits (ACLs are
 * not consulted: refused when they alone would allow it). Other commands,
 * and a directory that does not exist (the engine says ENOENT), pass. */
static int check_copy_dest(const char *path, const char *buf, size_t size)
{
    struct fuse_context *ctx = fuse_get_context();
    if (ctx->uid == 0)
        return 0;
    struct cfs_ctl_cmd cmd;
    if (cfs_ctl_parse(buf, size, &cmd, NULL) < 0 || cmd.op != CFS_CTL_COPY)
        return 0;
    char *slash = strrchr(cmd.dest, '/');
    if (slash == cmd.dest)
        slash[1] = '\0'; /* "/x" -> "/" */
    else if (slash)
        *slash = '\0';
    struct stat st;
    if (stat(cmd.dest, &st) < 0)
        return 0;
    mode_t need = st.st_uid == ctx->uid      ? (S_IWUSR | S_IXUSR)
                  : caller_in_group(st.st_gid) ? (S_IWGRP | S_IXGRP)
                                                : (S_IWOTH | S_IXOTH);
    if ((st.st_mode & need) == need)
        return 0;
    log_warn("write %s: copy refused (%s): uid %u may not create files in %s",
             path, strerror(EACCES), (unsigned)ctx->uid, cmd.dest);
    return -EACCES;
}

/* One write() is one command; its result is the answer (nodes.h). The
 * offset means nothing (`>>` appends, `>` truncates first). */
static int fs_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)off;
    struct handle *h = (struct handle *)(uintptr_t)fi->fh;
    const struct cfs_node_type *nt = cfs_node_type(h ? h->path.kind : CFS_NODE_INVALID);
    if (!nt->write || !h->e)
        return refuse_content();
    handle_context(fs_get(), h);
    int c = check_copy_dest(path, buf, size);
    if (c < 0)
        return c;
    ssize_t r = nt->write(h->e, &h->path, buf, size);
    return r < 0 ? (int)r : (int)size;
}

/* Each operation that may log under a host's name gives the FUSE
 * thread back without it. */
#define UNTIL_DONE(ret, name, params, args)                                   \
    static ret name##_ctx params                                              \
    {                                                                         \
        ret r = name args;                                                    \
        cfs_log_set_context(NULL);                                            \
        return r;                                                             \
    }
UNTIL_DONE(int, fs_getattr, (const char *a, struct stat *b, struct fuse_file_info *c), (a, b, c))
UNTIL_DONE(int, fs_readdir, (const char *a, void *b, fuse_fill_dir_t c, off_t d,
                             struct fuse_file_info *e, enum fuse_readdir_flags f),
           (a, b, c, d, e, f))
UNTIL_DONE(int, fs_open, (const char *a, struct fuse_file_info *b), (a, b))
UNTIL_DONE(int, fs_read, (const char *a, char *b, size_t c, off_t d,
                          struct fuse_file_info *e), (a, b, c, d, e))
UNTIL_DONE(int, fs_release, (const char *a, struct fuse_file_info *b), (a, b))
UNTIL_DONE(int, fs_flush, (const char *a, struct fuse_file_info *b), (a, b))
UNTIL_DONE(off_t, fs_lseek, (const char *a, off_t b, int c, struct fuse_file_info *d),
           (a, b, c, d))
UNTIL_DONE(int, fs_mkdir, (const char *a, mode_t b), (a, b))
UNTIL_DONE(int, fs_rmdir, (const char *a), (a))
UNTIL_DONE(int, fs_truncate, (const char *a, off_t b, struct fuse_file_info *c), (a, b, c))
UNTIL_DONE(int, fs_write, (const char *a, const char *b, size_t c, off_t d,
                           struct fuse_file_info *e), (a, b, c, d, e))

const struct fuse_operations cfs_fuse_ops = {
    .init = fs_init,
    .getattr = fs_getattr_ctx,
    .readdir = fs_readdir_ctx,
    .open = fs_open_ctx,
    .read = fs_read_ctx,
    .release = fs_release_ctx,
    .flush = fs_flush_ctx,
    .lseek = fs_lseek_ctx,
    .poll = fs_poll,
    .mkdir = fs_mkdir_ctx,
    .rmdir = fs_rmdir_ctx,
    .statfs = fs_statfs,
    .create = fs_create,
    .mknod = fs_mknod,
    .symlink = fs_symlink,
    .link = fs_link,
    .unlink = fs_unlink,
    .rename = fs_rename,
    .chmod = fs_chmod,
    .chown = fs_chown,
    .utimens = fs_utimens,
    .truncate = fs_truncate_ctx,
    .write = fs_write_ctx,
};

void cfs_fs_invalidate(void *opaque, const char *path)
{
    struct cfs_fs *fs = opaque;
    if (fs->fuse)
        fuse_invalidate_path(fs->fuse, path);
}
