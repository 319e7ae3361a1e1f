/* fleet.c — several libvirt hosts in one mount (fleet.h; design
 * docs/design/issue12.md §1.3, §1.4). The fleet owns one engine per host
 * and routes mount paths to them; nothing here is shared between hosts
 * but the mount's lock and its own nodes (/, /.chainfs). */
#include "engine_int.h"

#include "chainfs/fleet.h"
#include "chainfs/nodes.h"

#include <dirent.h>

struct member {
    struct cfs_fleet *f;
    char *name;               /* "" with one host */
    char *state_dir;
    struct cfs_engine *e;
};

struct cfs_fleet {
    size_t n;
    struct member *m;
    int lock_fd;              /* STATE_DIR/lock with several hosts, else -1 */
    void (*invalidate)(void *opaque, const char *path);
    void *invalidate_opaque;
};


/* ---- names ------------------------------------------------------------------- */

int cfs_fleet_name_validate(const char *name)
{
    if (!name || cfs_name_validate(name) < 0 || cfs_streq(name, ".chainfs"))
        return -EINVAL;
    return 0;
}

int cfs_fleet_parse_connect(const char *arg, char **name, char **uri)
{
    *name = NULL;
    *uri = NULL;
    if (!arg)
        return -EINVAL;
    size_t pre = strcspn(arg, ":/?=");
    if (arg[pre] == '=') {
        _cleanup_free_ char *n = cfs_xstrndup(arg, pre);
        if (cfs_fleet_name_validate(n) < 0 || !arg[pre + 1])
            return -EINVAL;
        *name = TAKE_PTR(n);
        *uri = cfs_xstrdup(arg + pre + 1);
        return 0;
    }
    if (!*arg)
        return -EINVAL;
    *uri = cfs_xstrdup(arg);
    return 0;
}

char *cfs_fleet_default_name(const char *uri)
{
    const char *sep = uri ? strstr(uri, "://") : NULL;
    if (!sep)
        return cfs_xstrdup("localhost");
    const char *h = sep + 3;
    size_t len = strcspn(h, "/?");
    /* user@ */
    const char *at = memchr(h, '@', len);
    if (at) {
        len -= (size_t)(at + 1 - h);
        h = at + 1;
    }
    if (len && h[0] == '[') {
        /* [v6]:port */
        const char *close = memchr(h, ']', len);
        len = close ? (size_t)(close - h - 1) : len - 1;
        h++;
    } else {
        const char *colon = memchr(h, ':', len);
        if (colon)
            len = (size_t)(colon - h);
    }
    if (!len)
        return cfs_xstrdup("localhost");
    char *n = cfs_xstrndup(h, len);
    for (char *c = n; *c; c++)
        if (*c == ':')
            *c = '_';
    return n;
}

char *cfs_fleet_state_dir(const char *state_dir, const char *name,
                          size_t n_hosts)
{
    if (n_hosts <= 1)
        return cfs_xstrdup(state_dir);
    return cfs_xasprintf("%s/hosts/%s", state_dir, name);
}

/* ---- life cycle -------------------------------------------------------------- */

/* mkdir DIR (0700) if missing; 0 or -errno. */
static int ensure_dir(const char *dir)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Open entries of the journal in DIR (0 if it has none or no journal),
 * or -errno. */
static long journal_open_entries(const char *dir)
{
    _cleanup_free_ char *path = cfs_xasprintf("%s/journal", dir);
    struct stat st;
    if (stat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    struct cfs_journal *j = NULL;
    char **warnings = NULL;
    int r = cfs_journal_open(dir, &j, &warnings);
    cfs_strv_free(warnings);
    if (r < 0)
        return r;
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    r = cfs_journal_list(j, &v, &n);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
    return r < 0 ? r : (long)n;
}

static void warn_other_journals(struct cfs_fleet *f, const char *state_dir);

/* Several hosts: STATE_DIR/lock, STATE_DIR/journal empty, the journals
 * of hosts not given noted. 0 or -errno with *ERRMSG. */
static int fleet_state(struct cfs_fleet *f, const char *state_dir,
                       char **errmsg)
{
    int r = ensure_dir(state_dir);
    _cleanup_free_ char *hosts = cfs_xasprintf("%s/hosts", state_dir);
    if (r == 0)
        r = ensure_dir(hosts);
    if (r < 0) {
        *errmsg = cfs_xasprintf("state directory %s: %s", state_dir, strerror(-r));
        return r;
    }
    r = cfs_state_dir_lock(state_dir, &f->lock_fd, errmsg);
    if (r < 0)
        return r;
    long open_n = journal_open_entries(state_dir);
    if (open_n > 0) {
        *errmsg = cfs_xasprintf(
            "%s/journal has %ld open entr%s of a one-host mount: which host "
            "they are for cannot be told; finish them with the one-host mount "
            "first (chainfs -c URI with state_dir=%s)", state_dir, open_n,
            open_n == 1 ? "y" : "ies", state_dir);
        return -EINVAL;
    }
    if (open_n < 0) {
        *errmsg = cfs_xasprintf("%s/journal: %s", state_dir, strerror((int)-open_n));
        return (int)open_n;
    }
    warn_other_journals(f, state_dir);
    return 0;
}

/* The journals with open entries in STATE_DIR/hosts/NAME of a NAME this
 * mount does not have (with one host: every one) are logged and left
 * alone. */
static void warn_other_journals(struct cfs_fleet *f, const char *state_dir)
{
    _cleanup_free_ char *hosts = cfs_xasprintf("%s/hosts", state_dir);
    DIR *d = opendir(hosts);
    for (struct dirent *de; d && (de = readdir(d));) {
        if (de->d_name[0] == '.')
            continue;
        bool given = false;
        for (size_t i = 0; f->n > 1 && i < f->n && !given; i++)
            given = cfs_streq(f->m[i].name, de->d_name);
        if (given)
            continue;
        _cleanup_free_ char *dir = cfs_xasprintf("%s/%s", hosts, de->d_name);
        long k = journal_open_entries(dir);
        if (k > 0)
            log_warn("%s/journal has %ld open entr%s of host %s, which this "
                     "mount does not have: left alone (mount with -c %s=URI "
                     "to finish them)", dir, k, k == 1 ? "y" : "ies",
                     de->d_name, de->d_name);
    }
    if (d)
        closedir(d);
}

int cfs_fleet_new(const struct cfs_engine_config *common,
                  const struct cfs_fleet_host *hosts, size_t n,
                  struct cfs_fleet **out, char **errmsg)
{
    *out = NULL;
    char *msg = NULL;
    int r = 0;
    struct cfs_fleet *f = cfs_xcalloc(1, sizeof(*f));
    f->lock_fd = -1;
    f->m = cfs_xcalloc(n ? n : 1, sizeof(*f->m));
    f->n = n;
    if (n == 0) {
        msg = cfs_xstrdup("no libvirt host given");
        r = -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        f->m[i].f = f;
        if (n == 1)
            f->m[i].name = cfs_xstrdup("");
        else
            f->m[i].name = hosts[i].name ? cfs_xstrdup(hosts[i].name)
                                         : cfs_fleet_default_name(hosts[i].uri);
    }
    for (size_t i = 0; n > 1 && i < n && r == 0; i++) {
        if (cfs_fleet_name_validate(f->m[i].name) < 0) {
            msg = cfs_xasprintf(
                "host name '%s' (of %s) cannot be a directory name: 1 to 64 "
                "characters of [A-Za-z0-9._-], not starting with '.' or '-'%s",
                f->m[i].name, hosts[i].uri ? hosts[i].uri : "the default URI",
                hosts[i].name ? "" : "; give one with -c NAME=URI");
            r = -EINVAL;
        }
        for (size_t k = 0; k < i && r == 0; k++)
            if (cfs_streq(f->m[k].name, f->m[i].name)) {
                msg = cfs_xasprintf(
                    "two hosts named '%s' (%s and %s): give each its own "
                    "name with -c NAME=URI", f->m[i].name,
                    hosts[k].uri ? hosts[k].uri : "the default URI",
                    hosts[i].uri ? hosts[i].uri : "the default URI");
                r = -EINVAL;
            }
    }
    if (r == 0 && n > 1)
        r = fleet_state(f, common->state_dir, &msg);
    else if (r == 0)
        warn_other_journals(f, common->state_dir);
    for (size_t i = 0; i < n; i++) {
        struct member *m = &f->m[i];
        struct cfs_backend *be = hosts[i].be;
        struct cfs_imgserve *srv = hosts[i].imgserve;
        if (r < 0) {
            if (srv)
                srv->ops->destroy(srv);
            if (be)
                be->ops->destroy(be);
            continue;
        }
        m->state_dir = cfs_fleet_state_dir(common->state_dir, m->name, n);
        struct cfs_engine_config cfg = *common;
        cfg.state_dir = m->state_dir;
        cfg.host = m->name;
        cfg.start_disconnected = n > 1;
        cfg.imgserve = srv;
        char *err = NULL;
        r = cfs_engine_new(&cfg, be, &m->e, &err);
        if (r < 0) {
            if (srv)
                srv->ops->destroy(srv);
            be->ops->destroy(be);
            msg = n > 1 ? cfs_xasprintf("host %s: %s", m->name,
                                        err ? err : strerror(-r))
                        : cfs_xstrdup(err ? err : strerror(-r));
            free(err);
        }
    }
    if (r < 0) {
        if (errmsg)
            *errmsg = msg;
        else
            free(msg);
        cfs_fleet_free(f);
        return r;
    }
    *out = f;
    return 0;
}

struct start_arg {
    struct member *m;
    bool thread;
    int r;
    char *err;
    pthread_t tid;
};

static void *start_main(void *arg)
{
    struct start_arg *a = arg;
    cfs_log_set_context(a->m->name);
    a->r = cfs_engine_start(a->m->e, a->thread, &a->err);
    return NULL;
}

int cfs_fleet_start(struct cfs_fleet *f, bool thread, char **errmsg)
{
    struct start_arg *a = cfs_xcalloc(f->n, sizeof(*a));
    bool *joined = cfs_xcalloc(f->n, sizeof(*joined));
    for (size_t i = 0; i < f->n; i++) {
        a[i].m = &f->m[i];
        a[i].thread = thread;
        /* each host at once: one slow to answer delays not the others */
        if (!(thread && f->n > 1 &&
              pthread_create(&a[i].tid, NULL, start_main, &a[i]) == 0)) {
            const char *caller = cfs_log_context();
            start_main(&a[i]);
            cfs_log_set_context(caller);
            joined[i] = true;
        }
    }
    int r = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (!joined[i])
            pthread_join(a[i].tid, NULL);
        if (a[i].r < 0 && r == 0) {
            r = a[i].r;
            if (errmsg)
                *errmsg = f->n > 1
                    ? cfs_xasprintf("host %s: %s", f->m[i].name,
                                    a[i].err ? a[i].err : strerror(-r))
                    : cfs_xstrdup(a[i].err ? a[i].err : strerror(-r));
        }
        free(a[i].err);
    }
    free(a);
    free(joined);
    return r;
}

struct cfs_fleet *cfs_fleet_free(struct cfs_fleet *f)
{
    if (!f)
        return NULL;
    for (size_t i = 0; i < f->n; i++) {
        struct member *m = &f->m[i];
        if (m->e) {
            const char *caller = cfs_log_context();
            cfs_log_set_context(m->name);
            cfs_engine_set_invalidate(m->e, NULL, NULL);
            cfs_engine_free(m->e);
            cfs_log_set_context(caller);
        }
        free(m->name);
        free(m->state_dir);
    }
    free(f->m);
    if (f->lock_fd >= 0)
        close(f->lock_fd);
    free(f);
    return NULL;
}

/* ---- routing ----------------------------------------------------------------- */

size_t cfs_fleet_n_hosts(const struct cfs_fleet *f) { return f->n; }

const char *cfs_fleet_host_name(const struct cfs_fleet *f, size_t i)
{
    return i < f->n ? f->m[i].name : NULL;
}

struct cfs_engine *cfs_fleet_engine(struct cfs_fleet *f, size_t i)
{
    return i < f->n ? f->m[i].e : NULL;
}

const char *cfs_fleet_engine_host(const struct cfs_fleet *f,
                                  const struct cfs_engine *e)
{
    (void)f;
    return e ? e->host : ""; /* cfg.host: "" with one host */
}

int cfs_fleet_resolve(struct cfs_fleet *f, const char *path,
                      struct cfs_engine **e, struct cfs_path *p)
{
    *e = NULL;
    if (f->n == 1) {
        *e = f->m[0].e;
        return cfs_path_parse(path, p);
    }
    while (*path == '/')
        path++;
    size_t len = strcspn(path, "/");
    if (len == 0 || (len == 8 && strncmp(path, ".chainfs", 8) == 0)) {
        /* the fleet's own: "/" and /.chainfs/... */
        _cleanup_free_ char *own = cfs_xasprintf("/%s", path);
        int r = cfs_path_parse(own, p);
        if (r == 0 && p->kind != CFS_NODE_ROOT && p->kind != CFS_NODE_OWN &&
            p->kind != CFS_NODE_METRICS)
            r = -ENOENT;
        return r;
    }
    if (len > 255)
        return -ENAMETOOLONG;
    for (size_t i = 0; i < f->n; i++) {
        if (strlen(f->m[i].name) != len || strncmp(f->m[i].name, path, len) != 0)
            continue;
        const char *rest = path + len;
        int r = cfs_path_parse(*rest ? rest : "/", p);
        if (r < 0)
            return r;
        /* chainfs's own directory is the mount's, not a host's */
        if (p->kind == CFS_NODE_OWN || p->kind == CFS_NODE_METRICS)
            return -ENOENT;
        *e = f->m[i].e;
        return 0;
    }
    return -ENOENT;
}

/* ---- the fleet's own nodes --------------------------------------------------- */

static void fleet_metrics(struct cfs_fleet *f, struct cfs_buf *out)
{
    struct cfs_metrics_sample *s = cfs_xcalloc(f->n, sizeof(*s));
    const char **names = cfs_xcalloc(f->n, sizeof(*names));
    for (size_t i = 0; i < f->n; i++) {
        struct cfs_engine *e = f->m[i].e;
        pthread_mutex_lock(&e->tree->lock);
        cfs_metrics_sample(&s[i], &e->metrics, e->tree, !e->tree->stale);
        pthread_mutex_unlock(&e->tree->lock);
        names[i] = f->m[i].name;
    }
    cfs_metrics_render_hosts(out, s, names, f->n);
    free(names);
    free(s);
}

int cfs_fleet_getattr(struct cfs_fleet *f, struct cfs_engine *e,
                      const struct cfs_path *p, struct cfs_node_attr *out)
{
    if (e)
        return cfs_engine_getattr(e, p, out);
    *out = (struct cfs_node_attr){ .nlink = 1 };
    switch (p->kind) {
    case CFS_NODE_ROOT:
        out->is_dir = true;
        out->nlink = 2 + (unsigned)f->n;
        return 0;
    case CFS_NODE_OWN:
        out->is_dir = true;
        out->nlink = 2;
        return 0;
    case CFS_NODE_METRICS: {
        _cleanup_buf_ struct cfs_buf b = {0};
        fleet_metrics(f, &b);
        out->size = b.len;
        return 0;
    }
    default:
        return -ENOENT;
    }
}

int cfs_fleet_readdir(struct cfs_fleet *f, struct cfs_engine *e,
                      const struct cfs_path *p, char ***names)
{
    if (e)
        return cfs_engine_readdir(e, p, names);
    *names = NULL;
    if (p->kind == CFS_NODE_ROOT) {
        /* the hosts; .chainfs is not listed (as at a one-host root) */
        for (size_t i = 0; i < f->n; i++)
            cfs_strv_push(names, cfs_xstrdup(f->m[i].name));
        return 0;
    }
    if (p->kind == CFS_NODE_OWN) {
        cfs_strv_push(names, cfs_xstrdup(cfs_node_type(CFS_NODE_METRICS)->name));
        return 0;
    }
    return cfs_node_type(p->kind)->dir ? -ENOENT : -ENOTDIR;
}

int cfs_fleet_read(struct cfs_fleet *f, struct cfs_engine *e,
                   const struct cfs_path *p, struct cfs_buf *out)
{
    if (e)
        return cfs_engine_read(e, p, out);
    if (p->kind == CFS_NODE_METRICS) {
        fleet_metrics(f, out);
        return 0;
    }
    return p->kind == CFS_NODE_ROOT || p->kind == CFS_NODE_OWN ? -EISDIR
                                                               : -ENOENT;
}

unsigned long cfs_fleet_generation(struct cfs_fleet *f)
{
    unsigned long g = 0;
    for (size_t i = 0; i < f->n; i++)
        g += cfs_engine_generation(f->m[i].e);
    return g;
}

/* An engine's invalidation, as a mount path. */
static void member_invalidate(void *opaque, const char *path)
{
    struct member *m = opaque;
    struct cfs_fleet *f = m->f;
    if (!f->invalidate)
        return;
    if (f->n == 1) {
        f->invalidate(f->invalidate_opaque, path);
        return;
    }
    _cleanup_free_ char *full = cfs_xasprintf("/%s%s", m->name,
                                              cfs_streq(path, "/") ? "" : path);
    f->invalidate(f->invalidate_opaque, full);
}

void cfs_fleet_set_invalidate(struct cfs_fleet *f,
                              void (*fn)(void *opaque, const char *path),
                              void *opaque)
{
    f->invalidate = fn;
    f->invalidate_opaque = opaque;
    for (size_t i = 0; i < f->n; i++)
        cfs_engine_set_invalidate(f->m[i].e, fn ? member_invalidate : NULL,
                                  fn ? &f->m[i] : NULL);
}
