/* fake.c — the in-memory backend (fake.h): domains the test builds, block
 * jobs that advance only when the test steps them, one-shot error
 * injection per op, and a call counter per op.
 *
 * It models what real libvirt does, errors included (same checks, same
 * errno mapping as backend.h, libvirt-like messages in
 * cfs_backend_errmsg()): snapshots fire no event; a live commit needs a
 * running domain and adjacent layers; an active commit becomes READY and
 * completes by pivot; an intermediate one completes by itself. A domain
 * put back shut off loses its jobs without an event, as a destroyed QEMU
 * does.
 *
 * Threads: ops and fake_* calls may come from any thread. f->lock guards
 * all state; event callbacks are always called after it is released, on
 * the caller's thread, so they may call back into the ops. */

#include "fake.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "chainfs/util.h"

enum fake_op {
    OP_CONNECT,
    OP_DESTROY,
    OP_LIST_DOMAINS,
    OP_READ_DOMAIN,
    OP_READ_DOMAIN_LIGHT,
    OP_SNAPSHOT_CREATE,
    OP_SNAPSHOT_FORGET,
    OP_COMMIT_START,
    OP_PULL_START,
    OP_SNAPSHOT_DROP,
    OP_SNAPSHOT_RETARGET,
    OP_JOB_SET_BANDWIDTH,
    OP_JOB_GET,
    OP_JOB_PIVOT,
    OP_JOB_ABORT,
    OP_OFFLINE_COMMIT,
    OP_OFFLINE_PULL,
    OP_VOLUME_DELETE,
    OP_IMAGE_CREATE,
    OP_COPY_START,
    OP_IMAGE_CHECK,
    OP_PERSISTENT_SOURCE_GET,
    OP_PERSISTENT_SOURCE_SET,
    OP_IMAGE_COPY_DATA,
    OP_SNAPSHOT_DOMAIN_SOURCE,
    OP_SNAPSHOT_CREATE_MULTI,
    OP_AGENT_SET_TIMEOUT,
    OP_AGENT_FREEZE,            /* agent_fs(thaw = false) */
    OP_AGENT_THAW,              /* agent_fs(thaw = true) */
    OP_PERSISTENT_SOURCES_SET,
    OP_SNAPSHOT_RETARGET_MULTI,
    OP_FILE_EXISTS,
    OP_LIST_STATS,
    OP_MAX,
};

static const char *const op_names[OP_MAX] = {
    [OP_CONNECT] = "connect",
    [OP_DESTROY] = "destroy",
    [OP_LIST_DOMAINS] = "list_domains",
    [OP_READ_DOMAIN] = "read_domain",
    [OP_READ_DOMAIN_LIGHT] = "read_domain_light",
    [OP_SNAPSHOT_CREATE] = "snapshot_create",
    [OP_SNAPSHOT_FORGET] = "snapshot_forget",
    [OP_COMMIT_START] = "commit_start",
    [OP_PULL_START] = "pull_start",
    [OP_SNAPSHOT_DROP] = "snapshot_drop",
    [OP_SNAPSHOT_RETARGET] = "snapshot_retarget",
    [OP_JOB_SET_BANDWIDTH] = "job_set_bandwidth",
    [OP_JOB_GET] = "job_get",
    [OP_JOB_PIVOT] = "job_pivot",
    [OP_JOB_ABORT] = "job_abort",
    [OP_OFFLINE_COMMIT] = "offline_commit",
    [OP_OFFLINE_PULL] = "offline_pull",
    [OP_VOLUME_DELETE] = "volume_delete",
    [OP_IMAGE_CREATE] = "image_create",
    [OP_COPY_START] = "copy_start",
    [OP_IMAGE_CHECK] = "image_check",
    [OP_PERSISTENT_SOURCE_GET] = "persistent_source_get",
    [OP_PERSISTENT_SOURCE_SET] = "persistent_source_set",
    [OP_IMAGE_COPY_DATA] = "image_copy_data",
    [OP_SNAPSHOT_DOMAIN_SOURCE] = "snapshot_domain_source",
    [OP_SNAPSHOT_CREATE_MULTI] = "snapshot_create_multi",
    [OP_AGENT_SET_TIMEOUT] = "agent_set_timeout",
    [OP_AGENT_FREEZE] = "agent_freeze",
    [OP_AGENT_THAW] = "agent_thaw",
    [OP_PERSISTENT_SOURCES_SET] = "persistent_sources_set",
    [OP_SNAPSHOT_RETARGET_MULTI] = "snapshot_retarget_multi",
    [OP_FILE_EXISTS] = "file_exists",
    [OP_LIST_STATS] = "list_stats",
};


struct fake_job {
    char *dom;
    char *disk;
    char *top;              /* commits: the layer merged away; pulls: the
                               active layer written */
    char *base;             /* pulls: NULL for an external pull (all of
                               the chain below the active layer leaves) */
    enum cfs_job_type type; /* any libvirt block job type */
    uint64_t cur, end;
    uint64_t bandwidth;     /* bytes/s, 0 = unlimited */
    bool ready;
    bool external;          /* started by cfs_fake_start_external */
    bool shallow;           /* copy: only the active layer (DEST backs
                               onto layer 1) */
};

/* A persistent definition whose disk source differs from the live
 * chain's active layer (cfs_fake_set_persistent_source, or a redefine);
 * without one, the persistent source is the live active layer (libvirt
 * rewrote it at each pivot). */
struct fake_persist {
    char *dom;
    char *disk;
    char *source;
};

/* What a snapshot's metadata names for one disk (its <disks> entry),
 * kept apart from the layers' meta_name: after a pull the layer is gone
 * from the chain, and libvirt's metadata still names its file. */
struct fake_snapdisk {
    char *dom;
    char *name;
    char *disk;
    char *source;
};

/* The facts of one libvirt snapshot besides its disks (read_domain's
 * snaps[]): made by snapshot_create(_multi), by a test's put_domain
 * (d->snaps[], or a name in d->snapshots: a snapshot made elsewhere). */
struct fake_snapmeta {
    char *dom;
    char *name;
    char *parent;
    char *description;
    int64_t created;
    bool current;
};

/* The guest agent of one domain (cfs_fake_agent_*). */
struct fake_agent {
    char *dom;
    enum cfs_fake_agent_mode mode;
    bool frozen;            /* the guest's filesystems are frozen */
    unsigned freezes;       /* freezes that happened in the guest */
    unsigned thaws;         /* thaw calls that succeeded */
    unsigned filesystems;   /* what a freeze/thaw counts */
    int timeout;            /* last agent_set_timeout, 0 never */
};

/* cfs_fake_fail_snapshot_disk: the next snapshot of DISK fails. */
struct fake_diskfail {
    char *disk;
    int err;
    char *message;
};

struct fake_failure {
    enum fake_op op;
    int err;  /* negative errno */
    char *message;
};

/* An event to deliver once the lock is released. */
struct fake_event {
    enum { EV_NONE, EV_DOMAIN, EV_BLOCK_JOB } kind;
    char *dom;
    char *disk;
    enum cfs_job_type type;
    enum cfs_job_event status;
    struct cfs_backend_events ev;
    void *opaque;
};

struct fake {
    pthread_mutex_t lock;           /* guards everything below */
    struct cfs_domain **doms;
    size_t n_doms;
    struct fake_job *jobs;
    size_t n_jobs;
    struct fake_snapdisk *snapdisks;
    size_t n_snapdisks;
    struct fake_persist *persists;
    size_t n_persists;
    struct fake_snapmeta *snapmetas;
    size_t n_snapmetas;
    struct fake_agent *agents;
    size_t n_agents;
    struct fake_diskfail *diskfails;
    size_t n_diskfails;
    int64_t clock;                  /* creation times given out */
    int copy_hold;                  /* image_copy_data waits while set */
    char **made_paths;              /* image_create's files and their */
    char **made_backings;           /* backing ("" for none), in step */
    struct fake_failure *failures;  /* in the order they were asked for */
    size_t n_failures;
    unsigned calls[OP_MAX];
    int pivot_not_ready;
    /* cfs_fake_pivot_fail: job_pivot of this disk refused N more times */
    char *pivot_fail_disk;
    int pivot_fail_n, pivot_fail_err;
    bool abort_completes; /* cfs_fake_abort_completes */
    unsigned next_index;            /* last layer index given out */
    bool connected;
    bool unreachable;               /* cfs_fake_set_reachable(false) */
    bool armed;                     /* connect failed while unreachable:
                                       connection(up) when reachable */
    bool domain_events_muted;       /* cfs_fake_mute_domain_events */
    unsigned read_delay_ms;         /* cfs_fake_set_read_delay */
    char **read_log;                /* read_domain's domains, in order */
    size_t n_read_log;
    bool remote;                    /* files_local() says false */
    char *pool_dir;                 /* volume_delete's pool, or NULL */
    unsigned long long hv_version;  /* hypervisor_version; 0: unknown */
    char *uri;                      /* what uri() answers once connected */
    char *last_volume_deleted;
    struct cfs_backend_events ev;
    void *opaque;
};

static struct fake *fake_of(struct cfs_backend *be)
{
    return be->priv;
}

/* A misspelt op name in a test must not pass silently: abort. */
static enum fake_op op_lookup(const char *name)
{
    for (enum fake_op op = 0; op < OP_MAX; op++)
        if (cfs_streq(op_names[op], name))
            return op;
    fprintf(stderr, "fake backend: unknown op \"%s\"\n", name ? name : "(null)");
    abort();
}

/* ---- events ------------------------------------------------------------------ */

static void event_domain(struct fake *f, struct fake_event *out,
                         const char *dom)
{
    if (!f->connected || f->domain_events_muted)
        return;
    *out = (struct fake_event){
        .kind = EV_DOMAIN,
        .dom = cfs_xstrdup(dom),
        .ev = f->ev,
        .opaque = f->opaque,
    };
}

static void event_block_job(struct fake *f, struct fake_event *out,
                            const struct fake_job *job,
                            enum cfs_job_event status)
{
    if (!f->connected)
        return;
    *out = (struct fake_event){
        .kind = EV_BLOCK_JOB,
        .dom = cfs_xstrdup(job->dom),
        .disk = cfs_xstrdup(job->disk),
        .type = job->type,
        .status = status,
        .ev = f->ev,
        .opaque = f->opaque,
    };
}

/* Deliver and free E. Must be called without f->lock. */
static void event_fire(struct fake_event *e)
{
    if (e->kind == EV_DOMAIN && e->ev.domain_changed)
        e->ev.domain_changed(e->opaque, e->dom);
    else if (e->kind == EV_BLOCK_JOB && e->ev.block_job)
        e->ev.block_job(e->opaque, e->dom, e->disk, e->type, e->status);
    free(e->dom);
    free(e->disk);
    *e = (struct fake_event){0};
}

/* ---- lookups (f->lock held) --------------------------------------------------- */

static ssize_t dom_index(struct fake *f, const char *name)
{
    for (size_t i = 0; i < f->n_doms; i++)
        if (cfs_streq(f->doms[i]->name, name))
            return (ssize_t)i;
    return -1;
}

static struct cfs_domain *dom_find(struct fake *f, const char *name)
{
    ssize_t i = dom_index(f, name);

    return i < 0 ? NULL : f->doms[i];
}

static struct fake_job *job_find(struct fake *f, const char *dom,
                                 const char *disk)
{
    for (size_t i = 0; i < f->n_jobs; i++)
        if (cfs_streq(f->jobs[i].dom, dom) && cfs_streq(f->jobs[i].disk, disk))
            return &f->jobs[i];
    return NULL;
}

static void job_remove(struct fake *f, struct fake_job *job)
{
    size_t i = (size_t)(job - f->jobs);

    free(job->dom);
    free(job->disk);
    free(job->top);
    free(job->base);
    memmove(&f->jobs[i], &f->jobs[i + 1], (f->n_jobs - i - 1) * sizeof(*job));
    f->n_jobs--;
}

static bool dom_active(const struct cfs_domain *d)
{
    return d->state == CFS_DOM_RUNNING || d->state == CFS_DOM_PAUSED;
}

/* The layer PATH names: its path, or "vda[N]" by its index as libvirt
 * takes it. */
static ssize_t layer_index(const struct cfs_disk *disk, const char *path)
{
    size_t tlen = disk->target ? strlen(disk->target) : 0;
    unsigned idx = 0;

    if (path && tlen && strncmp(path, disk->target, tlen) == 0 &&
        path[tlen] == '[') {
        char *end = NULL;
        idx = (unsigned)strtoul(path + tlen + 1, &end, 10);
        if (!end || strcmp(end, "]") != 0)
            idx = 0;
    }
    for (size_t i = 0; i < disk->n_layers; i++)
        if (idx ? disk->layers[i].index == idx
                : cfs_streq(disk->layers[i].path, path))
            return (ssize_t)i;
    return -1;
}

/* A running domain's layers have indices in libvirt's live XML: give
 * every layer without one the next number, as libvirt does. */
static void dom_number_layers(struct fake *f, struct cfs_domain *d)
{
    if (!dom_active(d))
        return;
    for (size_t i = 0; i < d->n_disks; i++)
        for (size_t l = d->disks[i].n_layers; l-- > 0;)
            if (!d->disks[i].layers[l].index)
                d->disks[i].layers[l].index = ++f->next_index;
}

static void layer_remove(struct cfs_disk *disk, size_t i)
{
    cfs_layer_clear(&disk->layers[i]);
    memmove(&disk->layers[i], &disk->layers[i + 1],
            (disk->n_layers - i - 1) * sizeof(*disk->layers));
    disk->n_layers--;
    if (disk->n_layers > 0)
        disk->is_block = disk->layers[0].is_block;
}

/* The merge of a finished commit: TOP leaves the chain. */
static void chain_merge(struct fake *f, const char *dom, const char *disk,
                        const char *top)
{
    struct cfs_disk *dk = cfs_domain_find_disk(dom_find(f, dom), disk);
    ssize_t i = dk ? layer_index(dk, top) : -1;

    if (i >= 0)
        layer_remove(dk, (size_t)i);
}

static bool path_in_any_chain(struct fake *f, const char *path)
{
    for (size_t i = 0; i < f->n_doms; i++)
        if (cfs_domain_uses_path(f->doms[i], path))
            return true;
    return false;
}

/* ---- snapshot metadata per disk ------------------------------------------------ */

static struct fake_snapdisk *snapdisk_find(struct fake *f, const char *dom,
                                           const char *name, const char *disk)
{
    for (size_t i = 0; i < f->n_snapdisks; i++) {
        struct fake_snapdisk *sd = &f->snapdisks[i];

        if (cfs_streq(sd->dom, dom) && cfs_streq(sd->name, name) &&
            cfs_streq(sd->disk, disk))
            return sd;
    }
    return NULL;
}

static void snapdisk_set(struct fake *f, const char *dom, const char *name,
                         const char *disk, const char *source)
{
    struct fake_snapdisk *sd = snapdisk_find(f, dom, name, disk);

    if (!sd) {
        f->snapdisks = cfs_xrealloc(f->snapdisks,
                                    (f->n_snapdisks + 1) * sizeof(*f->snapdisks));
        sd = &f->snapdisks[f->n_snapdisks++];
        *sd = (struct fake_snapdisk){
            .dom = cfs_xstrdup(dom),
            .name = cfs_xstrdup(name),
            .disk = cfs_xstrdup(disk),
        };
    }
    free(sd->source);
    sd->source = cfs_xstrdup(source);
}

/* Remove the entries of DOM, of snapshot NAME (NULL: any) and DISK
 * (NULL: any). */
static void snapdisk_remove(struct fake *f, const char *dom, const char *name,
                            const char *disk)
{
    size_t k = 0;

    for (size_t i = 0; i < f->n_snapdisks; i++) {
        struct fake_snapdisk *sd = &f->snapdisks[i];

        if (cfs_streq(sd->dom, dom) && (!name || cfs_streq(sd->name, name)) &&
            (!disk || cfs_streq(sd->disk, disk))) {
            free(sd->dom);
            free(sd->name);
            free(sd->disk);
            free(sd->source);
        } else {
            f->snapdisks[k++] = *sd;
        }
    }
    f->n_snapdisks = k;
}

/* ---- snapshot facts (snaps[]) -------------------------------------------------- */

static struct fake_snapmeta *snapmeta_find(struct fake *f, const char *dom,
                                           const char *name)
{
    for (size_t i = 0; i < f->n_snapmetas; i++)
        if (cfs_streq(f->snapmetas[i].dom, dom) &&
            cfs_streq(f->snapmetas[i].name, name))
            return &f->snapmetas[i];
    return NULL;
}

/* NAME's facts, made (no parent, no description, the next creation time,
 * not current) if it has none yet. */
static struct fake_snapmeta *snapmeta_get(struct fake *f, const char *dom,
                                          const char *name)
{
    struct fake_snapmeta *m = snapmeta_find(f, dom, name);

    if (m)
        return m;
    f->snapmetas = cfs_xrealloc(f->snapmetas,
                                (f->n_snapmetas + 1) * sizeof(*f->snapmetas));
    m = &f->snapmetas[f->n_snapmetas++];
    *m = (struct fake_snapmeta){
        .dom = cfs_xstrdup(dom),
        .name = cfs_xstrdup(name),
        .created = ++f->clock,
    };
    return m;
}

/* NAME (NULL: none) becomes DOM's only current snapshot. */
static void snapmeta_set_current(struct fake *f, const char *dom,
                                 const char *name)
{
    for (size_t i = 0; i < f->n_snapmetas; i++)
        if (cfs_streq(f->snapmetas[i].dom, dom))
            f->snapmetas[i].current = name && cfs_streq(f->snapmetas[i].name, name);
}

static const char *snapmeta_current(struct fake *f, const char *dom)
{
    for (size_t i = 0; i < f->n_snapmetas; i++)
        if (cfs_streq(f->snapmetas[i].dom, dom) && f->snapmetas[i].current)
            return f->snapmetas[i].name;
    return NULL;
}

/* NAME's facts go as libvirt's metadata delete does it: its children
 * take its parent, and its parent becomes current if it was. NAME NULL:
 * every snapshot of DOM. */
static void snapmeta_remove(struct fake *f, const char *dom, const char *name_in)
{
    char *name = cfs_xstrdup(name_in); /* NAME_IN may be one of ours */
    struct fake_snapmeta *gone = name ? snapmeta_find(f, dom, name) : NULL;
    size_t k = 0;

    if (gone) {
        for (size_t i = 0; i < f->n_snapmetas; i++) {
            struct fake_snapmeta *m = &f->snapmetas[i];

            if (m != gone && cfs_streq(m->dom, dom) && cfs_streq(m->parent, name)) {
                free(m->parent);
                m->parent = cfs_xstrdup(gone->parent);
            }
        }
        if (gone->current && gone->parent) {
            struct fake_snapmeta *p = snapmeta_find(f, dom, gone->parent);
            if (p)
                p->current = true;
        }
    }
    for (size_t i = 0; i < f->n_snapmetas; i++) {
        struct fake_snapmeta m = f->snapmetas[i];

        if (cfs_streq(m.dom, dom) && (!name || cfs_streq(m.name, name))) {
            free(m.dom);
            free(m.name);
            free(m.parent);
            free(m.description);
        } else {
            f->snapmetas[k++] = m;
        }
    }
    f->n_snapmetas = k;
    free(name);
}

/* A domain the test put: its snapshots not listed any more go, and every
 * layer carrying a snapshot's name is what that snapshot names. The
 * facts D->snaps[] gives are taken (a read_domain result put back gives
 * the same facts again). */
static void snapdisk_sync(struct fake *f, const struct cfs_domain *d)
{
    size_t k = 0;

    for (size_t i = f->n_snapmetas; i-- > 0;)
        if (cfs_streq(f->snapmetas[i].dom, d->name) &&
            !cfs_strv_contains(d->snapshots, f->snapmetas[i].name))
            snapmeta_remove(f, d->name, f->snapmetas[i].name);
    for (size_t i = 0; i < d->n_snaps; i++) {
        const struct cfs_snap_info *si = &d->snaps[i];
        struct fake_snapmeta *m;

        if (!si->name || !cfs_strv_contains(d->snapshots, si->name))
            continue;
        m = snapmeta_get(f, d->name, si->name);
        free(m->parent);
        m->parent = cfs_xstrdup(si->parent);
        free(m->description);
        m->description = cfs_xstrdup(si->description);
        if (si->created)
            m->created = si->created;
        if (si->current)
            snapmeta_set_current(f, d->name, si->name);
        for (size_t j = 0; j < si->n_disks; j++)
            if (cfs_streq(si->disks[j].snapshot, "external") && si->disks[j].source &&
                !snapdisk_find(f, d->name, si->name, si->disks[j].target))
                snapdisk_set(f, d->name, si->name, si->disks[j].target,
                             si->disks[j].source);
    }
    for (size_t i = 0; d->snapshots && d->snapshots[i]; i++)
        snapmeta_get(f, d->name, d->snapshots[i]);

    for (size_t i = 0; i < f->n_snapdisks; i++) {
        struct fake_snapdisk *sd = &f->snapdisks[i];

        if (cfs_streq(sd->dom, d->name) && !cfs_strv_contains(d->snapshots, sd->name)) {
            free(sd->dom);
            free(sd->name);
            free(sd->disk);
            free(sd->source);
        } else {
            f->snapdisks[k++] = *sd;
        }
    }
    f->n_snapdisks = k;
    for (size_t i = 0; i < d->n_disks; i++)
        for (size_t l = 0; l < d->disks[i].n_layers; l++)
            if (d->disks[i].layers[l].meta_name)
                snapdisk_set(f, d->name, d->disks[i].layers[l].meta_name,
                             d->disks[i].target, d->disks[i].layers[l].path);
}

/* ---- op prologue: counting, injected failures, common lookups ----------------- */

/* Count the call; if a failure was injected for OP, consume it, set the
 * message and return its error. Called with f->lock held. */
static int op_enter(struct fake *f, enum fake_op op)
{
    f->calls[op]++;
    if (f->unreachable) {
        cfs_backend_set_errmsg("unable to connect to server: Connection refused");
        return -ENOTCONN;
    }
    for (size_t i = 0; i < f->n_failures; i++) {
        struct fake_failure *fl = &f->failures[i];
        int err;

        if (fl->op != op)
            continue;
        err = fl->err;
        cfs_backend_set_errmsg("%s", fl->message ? fl->message : "");
        free(fl->message);
        memmove(fl, fl + 1, (f->n_failures - i - 1) * sizeof(*fl));
        f->n_failures--;
        return err;
    }
    return 0;
}

static int no_domain(const char *dom)
{
    cfs_backend_set_errmsg("Domain not found: no domain with matching name '%s'",
                           dom ? dom : "");
    return -ENOENT;
}

static int no_disk(const char *disk)
{
    cfs_backend_set_errmsg("invalid argument: disk '%s' not found in domain",
                           disk ? disk : "");
    return -ENOENT;
}

static int not_running(void)
{
    cfs_backend_set_errmsg("Requested operation is not valid: domain is not running");
    return -EINVAL;
}

static int busy(const char *disk)
{
    cfs_backend_set_errmsg("block copy still active: disk '%s' already in active block job",
                           disk);
    return -EBUSY;
}

/* libvirt: VIR_ERR_INVALID_ARG, which the real backend maps to -ENOENT
 * for a job call */
static int no_job(const char *disk)
{
    cfs_backend_set_errmsg("invalid argument: disk %s does not have an active block job",
                           disk);
    return -ENOENT;
}

/* What an op needs of the domain's state before it looks at the disk
 * (libvirt checks the domain's state first). */
enum dom_want { WANT_ANY, WANT_ACTIVE, WANT_INACTIVE };

/* Find DOM, check its state against WANT, then find DISK unless it is
 * NULL, in the order libvirt checks them. Returns 0, or the negative errno
 * (and the message) libvirt gives for what is missing. f->lock held. */
static int find_dom_disk(struct fake *f, const char *dom, enum dom_want want,
                         const char *disk, struct cfs_domain **d_out,
                         struct cfs_disk **disk_out)
{
    struct cfs_domain *d = dom_find(f, dom);
    struct cfs_disk *dk = NULL;

    if (!d)
        return no_domain(dom);
    if (want == WANT_ACTIVE && !dom_active(d))
        return not_running();
    if (want == WANT_INACTIVE && dom_active(d)) {
        cfs_backend_set_errmsg("Requested operation is not valid: domain is already running");
        return -EINVAL;
    }
    if (disk) {
        dk = cfs_domain_find_disk(d, disk);
        if (!dk)
            return no_disk(disk);
    }
    if (d_out)
        *d_out = d;
    if (disk_out)
        *disk_out = dk;
    return 0;
}

/* Take f->lock and enter OP (count it, take an injected failure).
 * Returns 0 or the injected negative errno; f->lock is held either way,
 * the op releases it. */
static int fake_enter(struct fake *f, enum fake_op op)
{
    pthread_mutex_lock(&f->lock);
    return op_enter(f, op);
}

/* The preamble of an op on a domain's disk: take f->lock, enter OP
 * (count it, take an injected failure), then find_dom_disk(). Returns 0
 * or the op's negative errno; f->lock is held either way, the op releases
 * it. */
static int fake_enter_disk(struct fake *f, enum fake_op op, const char *dom,
                           enum dom_want want, const char *disk,
                           struct cfs_domain **d_out,
                           struct cfs_disk **disk_out)
{
    int r = fake_enter(f, op);

    if (r < 0)
        return r;
    return find_dom_disk(f, dom, want, disk, d_out, disk_out);
}

/* fake_enter_disk() for an op on a whole domain. */
static int fake_enter_dom(struct fake *f, enum fake_op op, const char *dom,
                          struct cfs_domain **d_out)
{
    return fake_enter_disk(f, op, dom, WANT_ANY, NULL, d_out, NULL);
}

/* fake_enter_disk() for an op on the disk's block job: the job must
 * exist (libvirt: VIR_ERR_INVALID_ARG, -ENOENT for a job call). */
static int fake_enter_job(struct fake *f, enum fake_op op, const char *dom,
                          const char *disk, struct fake_job **job_out)
{
    int r = fake_enter_disk(f, op, dom, WANT_ANY, disk, NULL, NULL);

    if (r < 0)
        return r;
    *job_out = job_find(f, dom, disk);
    return *job_out ? 0 : no_job(disk);
}

/* Whether JOB's type has a ready phase and a pivot (libvirt: the mirror
 * jobs, active commit and copy). */
static bool job_mirrors(const struct fake_job *job)
{
    return job->type == CFS_JOB_ACTIVE_COMMIT || job->type == CFS_JOB_COPY;
}

static struct fake_persist *persist_find(struct fake *f, const char *dom,
                                         const char *disk)
{
    for (size_t i = 0; i < f->n_persists; i++)
        if (cfs_streq(f->persists[i].dom, dom) && cfs_streq(f->persists[i].disk, disk))
            return &f->persists[i];
    return NULL;
}

static void persist_remove(struct fake *f, struct fake_persist *p)
{
    size_t i = (size_t)(p - f->persists);

    free(p->dom);
    free(p->disk);
    free(p->source);
    memmove(&f->persists[i], &f->persists[i + 1],
            (f->n_persists - i - 1) * sizeof(*p));
    f->n_persists--;
}

/* SOURCE NULL: no override (the live active layer). */
static void persist_set(struct fake *f, const char *dom, const char *disk,
                        const char *source)
{
    struct fake_persist *p = persist_find(f, dom, disk);

    if (!source) {
        if (p)
            persist_remove(f, p);
        return;
    }
    if (!p) {
        f->persists = cfs_xrealloc(f->persists, (f->n_persists + 1) * sizeof(*p));
        p = &f->persists[f->n_persists++];
        *p = (struct fake_persist){ cfs_xstrdup(dom), cfs_xstrdup(disk), NULL };
    }
    free(p->source);
    p->source = cfs_xstrdup(source);
}

/* The backing image_create gave PATH ("" none), NULL if it made no
 * such file. */
static const char *made_backing(struct fake *f, const char *path)
{
    for (size_t i = 0; f->made_paths && f->made_paths[i]; i++)
        if (cfs_streq(f->made_paths[i], path))
            return f->made_backings[i];
    return NULL;
}

/* The chain after JOB ended well (completed, or pivoted). */
static void job_apply(struct fake *f, const struct fake_job *job)
{
    struct cfs_disk *dk = cfs_domain_find_disk(dom_find(f, job->dom), job->disk);

    if (!dk)
        return;
    switch (job->type) {
    case CFS_JOB_COMMIT:
    case CFS_JOB_ACTIVE_COMMIT: {
        /* TOP and every layer down to BASE leave (a commit of a run) */
        ssize_t t = layer_index(dk, job->top);
        ssize_t b = job->base ? layer_index(dk, job->base) : -1;
        if (t >= 0 && b > t + 1) {
            for (ssize_t k = t; k < b; k++)
                layer_remove(dk, (size_t)t);
            break;
        }
        chain_merge(f, job->dom, job->disk, job->top);
        break;
    }
    case CFS_JOB_PULL: {
        /* the layers between the active one and BASE were pulled into it
         * (all of them below it for an external pull without a base) */
        ssize_t b = job->base ? layer_index(dk, job->base)
                              : (ssize_t)dk->n_layers;

        for (; b > 1; b--)
            layer_remove(dk, 1);
        break;
    }
    case CFS_JOB_COPY: {
        /* the persistent definition follows when it named the live top
         * (libvirt 9.0's qemuBlockJobRewriteConfigDiskSource) */
        struct fake_persist *fp = persist_find(f, job->dom, job->disk);
        if (fp && cfs_streq(fp->source, dk->layers[0].path))
            persist_remove(f, fp);
        else if (!fp)
            persist_set(f, job->dom, job->disk, NULL);
        /* a shallow copy: DEST replaces the active layer, and the layers
         * below follow DEST's backing chain as image_create made it (a
         * `copy DEST chain`: the copies) down to a layer the chain has;
         * a full copy: the disk runs on the copy, a single layer */
        while (!job->shallow && dk->n_layers > 1)
            layer_remove(dk, dk->n_layers - 1);
        for (size_t i = 1; job->shallow && i < dk->n_layers; i++) {
            const char *b = made_backing(f, i == 1 ? job->base : dk->layers[i - 1].path);
            if (!b || !*b || cfs_streq(b, dk->layers[i].path))
                break;
            free(dk->layers[i].path);
            dk->layers[i].path = cfs_xstrdup(b);
            cfs_file_id_clear(&dk->layers[i].id);
            free(dk->layers[i].meta_name);
            dk->layers[i].meta_name = NULL;
        }
        free(dk->layers[0].path);
        dk->layers[0].path = cfs_xstrdup(job->base);
        cfs_file_id_clear(&dk->layers[0].id);
        free(dk->layers[0].meta_name);
        dk->layers[0].meta_name = NULL;
        break;
    }
    default:
        /* a backup leaves the chain as it was */
        break;
    }
}

/* TOP must be a layer of DISK with BASE below it (libvirt accepts a base
 * several layers down: the layers in between leave with TOP; ADJACENT:
 * directly below, as the offline merge wants), and ACTIVE
 * must say whether TOP is layer 0. Returns TOP's index or -EINVAL. */
static ssize_t check_commit_layers(const struct cfs_disk *disk,
                                   const char *top, const char *base,
                                   bool active, bool adjacent)
{
    ssize_t t = layer_index(disk, top);
    ssize_t b = layer_index(disk, base);

    if (t < 0) {
        cfs_backend_set_errmsg("invalid argument: could not find image '%s' in chain for '%s'",
                               top ? top : "", disk->target);
        return -EINVAL;
    }
    if ((size_t)t + 1 >= disk->n_layers || b <= t || (adjacent && b != t + 1)) {
        cfs_backend_set_errmsg("invalid argument: could not find base image '%s' %sbeneath '%s' in chain for '%s'",
                               base ? base : "", adjacent ? "directly " : "",
                               top, disk->target);
        return -EINVAL;
    }
    if (active && t != 0) {
        cfs_backend_set_errmsg("invalid argument: active commit requested but '%s' is not active",
                               top);
        return -EINVAL;
    }
    if (!active && t == 0) {
        cfs_backend_set_errmsg("invalid argument: commit of '%s' active layer requires active flag",
                               disk->target);
        return -EINVAL;
    }
    return t;
}

/* ---- ops ------------------------------------------------------------------------ */

static int fake_connect(struct cfs_backend *be,
                        const struct cfs_backend_events *ev, void *opaque)
{
    struct fake *f = fake_of(be);
    int r;

    r = fake_enter(f, OP_CONNECT);
    if (r == -ENOTCONN && f->unreachable) {
        /* as libvirt.c: the reconnect is armed, connection(up) follows */
        f->ev = ev ? *ev : (struct cfs_backend_events){0};
        f->opaque = opaque;
        f->armed = true;
    }
    if (r == 0) {
        f->ev = ev ? *ev : (struct cfs_backend_events){0};
        f->opaque = opaque;
        f->connected = true;
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

static void fake_destroy(struct cfs_backend *be)
{
    struct fake *f;

    if (!be)
        return;
    f = fake_of(be);
    for (size_t i = 0; i < f->n_doms; i++)
        cfs_domain_free(f->doms[i]);
    free(f->doms);
    while (f->n_jobs > 0)
        job_remove(f, &f->jobs[f->n_jobs - 1]);
    free(f->jobs);
    for (size_t i = 0; i < f->n_snapdisks; i++) {
        free(f->snapdisks[i].dom);
        free(f->snapdisks[i].name);
        free(f->snapdisks[i].disk);
        free(f->snapdisks[i].source);
    }
    free(f->snapdisks);
    for (size_t i = 0; i < f->n_persists; i++) {
        free(f->persists[i].dom);
        free(f->persists[i].disk);
        free(f->persists[i].source);
    }
    free(f->persists);
    for (size_t i = 0; i < f->n_snapmetas; i++) {
        free(f->snapmetas[i].dom);
        free(f->snapmetas[i].name);
        free(f->snapmetas[i].parent);
        free(f->snapmetas[i].description);
    }
    free(f->snapmetas);
    for (size_t i = 0; i < f->n_agents; i++)
        free(f->agents[i].dom);
    free(f->agents);
    for (size_t i = 0; i < f->n_diskfails; i++) {
        free(f->diskfails[i].disk);
        free(f->diskfails[i].message);
    }
    free(f->diskfails);
    cfs_strv_free(f->made_paths);
    cfs_strv_free(f->made_backings);
    for (size_t i = 0; i < f->n_failures; i++)
        free(f->failures[i].message);
    free(f->failures);
    for (size_t i = 0; i < f->n_read_log; i++)
        free(f->read_log[i]);
    free(f->read_log);
    free(f->pool_dir);
    free(f->uri);
    free(f->pivot_fail_disk);
    free(f->last_volume_deleted);
    pthread_mutex_destroy(&f->lock);
    free(f);
    free(be);
}

static int fake_list_domains(struct cfs_backend *be, char ***names)
{
    struct fake *f = fake_of(be);
    int r;

    *names = NULL;
    r = fake_enter(f, OP_LIST_DOMAINS);
    if (r == 0) {
        char **v = cfs_xcalloc(f->n_doms + 1, sizeof(*v));

        for (size_t i = 0; i < f->n_doms; i++)
            v[i] = cfs_xstrdup(f->doms[i]->name);
        *names = v;
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* As libvirt's bulk statistics (issue 12 §2.2): every layer of a
 * running domain's disks, the active layer only of a shut-off one's. */
static int fake_list_stats(struct cfs_backend *be, bool no_running_blocks,
                           struct cfs_dom_summary **out, size_t *n)
{
    struct fake *f = fake_of(be);
    *out = NULL;
    *n = 0;
    int r = fake_enter(f, OP_LIST_STATS);
    if (r == 0 && f->n_doms) {
        struct cfs_dom_summary *v = cfs_xcalloc(f->n_doms, sizeof(*v));
        for (size_t i = 0; i < f->n_doms; i++) {
            const struct cfs_domain *d = f->doms[i];
            struct cfs_dom_summary *s = &v[i];
            s->name = cfs_xstrdup(d->name);
            snprintf(s->uuid, sizeof(s->uuid), "%s", d->uuid);
            s->state = d->state;
            bool running = d->state != CFS_DOM_SHUTOFF;
            if (running && no_running_blocks) {
                s->partial = true;
            } else {
                s->n_disks = d->n_disks;
                s->disks = cfs_xcalloc(d->n_disks ? d->n_disks : 1, sizeof(*s->disks));
                for (size_t k = 0; k < d->n_disks; k++) {
                    const struct cfs_disk *dk = &d->disks[k];
                    struct cfs_stats_disk *sd = &s->disks[k];
                    sd->target = cfs_xstrdup(dk->target);
                    sd->n_layers = running ? dk->n_layers : (dk->n_layers ? 1 : 0);
                    sd->layers = cfs_xcalloc(sd->n_layers ? sd->n_layers : 1,
                                             sizeof(*sd->layers));
                    for (size_t l = 0; l < sd->n_layers; l++)
                        sd->layers[l] = (struct cfs_stats_layer){
                            .path = cfs_xstrdup(dk->layers[l].path),
                            .index = dk->layers[l].index,
                            .capacity = dk->layers[l].virtual_size,
                            .allocation = dk->layers[l].allocation,
                            .physical = dk->layers[l].physical,
                        };
                }
            }
            s->fingerprint = cfs_dom_summary_fingerprint(s);
        }
        *out = v;
        *n = f->n_doms;
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

static void note_push(struct cfs_domain *d, const char *target, const char *why)
{
    d->unsnappable = cfs_xrealloc(d->unsnappable,
                                  (d->n_unsnappable + 1) * sizeof(*d->unsnappable));
    d->unsnappable[d->n_unsnappable++] = (struct cfs_disk_note){
        .target = cfs_xstrdup(target),
        .why = cfs_xstrdup(why),
    };
}

static const struct cfs_disk_note *note_find(const struct cfs_domain *d,
                                             const char *target)
{
    for (size_t i = 0; i < d->n_unsnappable; i++)
        if (cfs_streq(d->unsnappable[i].target, target))
            return &d->unsnappable[i];
    return NULL;
}

static void notes_clear(struct cfs_domain *d)
{
    for (size_t i = 0; i < d->n_unsnappable; i++) {
        free(d->unsnappable[i].target);
        free(d->unsnappable[i].why);
    }
    free(d->unsnappable);
    d->unsnappable = NULL;
    d->n_unsnappable = 0;
}

static void snaps_clear(struct cfs_domain *d)
{
    for (size_t i = 0; i < d->n_snaps; i++)
        cfs_snap_info_clear(&d->snaps[i]);
    free(d->snaps);
    d->snaps = NULL;
    d->n_snaps = 0;
}

/* The stored copy of a domain the test put keeps of unsnappable[] only
 * what read_domain cannot work out from disks[]: notes of disks it does
 * not list (cdrom, network, ...) and of listed ones for another reason
 * than read-only or shareable (lun). snaps[] are kept apart. */
static void stored_notes(struct cfs_domain *d)
{
    struct cfs_domain tmp = { 0 };

    for (size_t i = 0; i < d->n_unsnappable; i++) {
        const struct cfs_disk_note *n = &d->unsnappable[i];

        if (cfs_streq(n->why, "read-only") || cfs_streq(n->why, "shareable") ||
            note_find(&tmp, n->target))
            continue;
        note_push(&tmp, n->target, n->why);
    }
    notes_clear(d);
    d->unsnappable = tmp.unsnappable;
    d->n_unsnappable = tmp.n_unsnappable;
    snaps_clear(d);
}

/* What read_domain adds to the copy OUT of the stored domain D: every
 * unsnappable disk (disks[] in order: read-only, shareable, or a stored
 * note such as lun; then the stored notes of disks it leaves out) and
 * the facts of every snapshot (order of snapshots[]; per disk external
 * with its overlay where the metadata names one, else "no"). f->lock
 * held. */
static void fill_facts(struct fake *f, const struct cfs_domain *d,
                       struct cfs_domain *out)
{
    size_t n = cfs_strv_len(d->snapshots);

    notes_clear(out);
    snaps_clear(out);
    for (size_t i = 0; i < d->n_disks; i++) {
        const struct cfs_disk *dk = &d->disks[i];
        const struct cfs_disk_note *note = note_find(d, dk->target);

        if (dk->readonly)
            note_push(out, dk->target, "read-only");
        else if (dk->shareable)
            note_push(out, dk->target, "shareable");
        else if (note)
            note_push(out, dk->target, note->why);
    }
    for (size_t i = 0; i < d->n_unsnappable; i++)
        if (!cfs_domain_find_disk(d, d->unsnappable[i].target))
            note_push(out, d->unsnappable[i].target, d->unsnappable[i].why);

    if (!n)
        return;
    out->snaps = cfs_xcalloc(n, sizeof(*out->snaps));
    out->n_snaps = n;
    for (size_t i = 0; i < n; i++) {
        const struct fake_snapmeta *m = snapmeta_get(f, d->name, d->snapshots[i]);
        struct cfs_snap_info *si = &out->snaps[i];
        size_t max = d->n_disks + out->n_unsnappable + f->n_snapdisks;

        si->name = cfs_xstrdup(m->name);
        si->parent = cfs_xstrdup(m->parent);
        si->description = cfs_xstrdup(m->description);
        si->created = m->created;
        si->current = m->current;
        si->disks = cfs_xcalloc(max ? max : 1, sizeof(*si->disks));
        for (size_t j = 0; j < d->n_disks; j++) {
            const struct fake_snapdisk *sd =
                snapdisk_find(f, d->name, m->name, d->disks[j].target);
            si->disks[si->n_disks++] = (struct cfs_snap_disk){
                .target = cfs_xstrdup(d->disks[j].target),
                .snapshot = cfs_xstrdup(sd ? "external" : "no"),
                .source = cfs_xstrdup(sd ? sd->source : NULL),
            };
        }
        for (size_t j = 0; j < out->n_unsnappable; j++)
            if (!cfs_domain_find_disk(d, out->unsnappable[j].target))
                si->disks[si->n_disks++] = (struct cfs_snap_disk){
                    .target = cfs_xstrdup(out->unsnappable[j].target),
                    .snapshot = cfs_xstrdup("no"),
                };
        for (size_t j = 0; j < f->n_snapdisks; j++) {
            const struct fake_snapdisk *sd = &f->snapdisks[j];
            if (cfs_streq(sd->dom, d->name) && cfs_streq(sd->name, m->name) &&
                !cfs_domain_find_disk(d, sd->disk))
                si->disks[si->n_disks++] = (struct cfs_snap_disk){
                    .target = cfs_xstrdup(sd->disk),
                    .snapshot = cfs_xstrdup("external"),
                    .source = cfs_xstrdup(sd->source),
                };
        }
    }
}

static int fake_read_domain(struct cfs_backend *be, const char *dom,
                            struct cfs_domain **out)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    int r;

    *out = NULL;
    r = fake_enter_dom(f, OP_READ_DOMAIN, dom, &d);
    if (r == 0) {
        *out = cfs_domain_dup(d);
        fill_facts(f, d, *out);
    }
    unsigned delay = f->read_delay_ms;
    f->read_log = cfs_xrealloc(f->read_log, (f->n_read_log + 1) * sizeof(*f->read_log));
    f->read_log[f->n_read_log++] = cfs_xstrdup(dom);
    pthread_mutex_unlock(&f->lock);
    if (delay)
        usleep(delay * 1000); /* a libvirt round trip, outside the lock */
    return r;
}

void cfs_fake_set_read_delay(struct cfs_backend *be, unsigned ms)
{
    struct fake *f = fake_of(be);
    pthread_mutex_lock(&f->lock);
    f->read_delay_ms = ms;
    pthread_mutex_unlock(&f->lock);
}

size_t cfs_fake_read_log(struct cfs_backend *be, const char *dom, size_t from)
{
    struct fake *f = fake_of(be);
    size_t at = SIZE_MAX;
    pthread_mutex_lock(&f->lock);
    for (size_t i = from; i < f->n_read_log && at == SIZE_MAX; i++)
        if (cfs_streq(f->read_log[i], dom))
            at = i;
    if (!dom)
        at = f->n_read_log;
    pthread_mutex_unlock(&f->lock);
    return at;
}

/* As read_domain, without what libvirt's block statistics give: the
 * virtual size and the allocation are 0 (the light read's contract). */
static int fake_read_domain_light(struct cfs_backend *be, const char *dom,
                                  struct cfs_domain **out)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    int r;

    *out = NULL;
    r = fake_enter_dom(f, OP_READ_DOMAIN_LIGHT, dom, &d);
    if (r < 0)
        goto out;
    *out = cfs_domain_dup(d);
    fill_facts(f, d, *out);
    for (size_t i = 0; i < (*out)->n_disks; i++)
        for (size_t l = 0; l < (*out)->disks[i].n_layers; l++) {
            (*out)->disks[i].layers[l].virtual_size = 0;
            (*out)->disks[i].layers[l].allocation = 0;
        }
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* The failure cfs_fake_fail_snapshot_disk() asked for on DISK, taken
 * (message set); 0 if none. f->lock held. */
static int diskfail_take(struct fake *f, const char *disk)
{
    for (size_t i = 0; i < f->n_diskfails; i++) {
        struct fake_diskfail *df = &f->diskfails[i];
        int err = df->err;

        if (!cfs_streq(df->disk, disk))
            continue;
        if (df->message)
            cfs_backend_set_errmsg("%s", df->message);
        else
            cfs_backend_set_errmsg("internal error: unable to execute QEMU command 'transaction': "
                                   "Could not open overlay of disk '%s'", disk);
        free(df->disk);
        free(df->message);
        memmove(df, df + 1, (f->n_diskfails - i - 1) * sizeof(*df));
        f->n_diskfails--;
        return err;
    }
    return 0;
}

/* snapshot_create and snapshot_create_multi: every check on every disk
 * first, then all disks at once (libvirt's transaction), or nothing. */
static int snapshot_take(struct fake *f, enum fake_op op, const char *dom,
                         const char *name, size_t n,
                         const struct cfs_snapshot_disk *disks,
                         const char *description)
{
    struct cfs_domain *d;
    struct fake_snapmeta *m;
    char *parent;
    int r;

    r = fake_enter_dom(f, op, dom, &d);
    if (r < 0)
        return r;
    if (!name || !*name || n == 0 || !disks) {
        cfs_backend_set_errmsg("invalid argument: a snapshot name and at least one disk are required");
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        struct cfs_disk *dk = cfs_domain_find_disk(d, disks[i].disk);

        if (!dk)
            return no_disk(disks[i].disk);
        if (!disks[i].overlay || !*disks[i].overlay) {
            cfs_backend_set_errmsg("invalid argument: snapshot name and overlay path are required");
            return -EINVAL;
        }
        for (size_t j = 0; j < i; j++) {
            if (cfs_streq(disks[j].disk, disks[i].disk)) {
                cfs_backend_set_errmsg("invalid argument: disk '%s' specified twice",
                                       disks[i].disk);
                return -EINVAL;
            }
            if (cfs_streq(disks[j].overlay, disks[i].overlay)) {
                cfs_backend_set_errmsg("unsupported configuration: cannot snapshot two disks with destination path '%s'",
                                       disks[i].overlay);
                return -EINVAL;
            }
        }
    }
    if (cfs_strv_contains(d->snapshots, name)) {
        cfs_backend_set_errmsg("operation failed: domain snapshot '%s' already exists",
                               name);
        return -EEXIST;
    }
    for (size_t i = 0; i < n; i++) {
        struct cfs_disk *dk = cfs_domain_find_disk(d, disks[i].disk);
        const struct cfs_disk_note *note = note_find(d, dk->target);

        if (path_in_any_chain(f, disks[i].overlay)) {
            cfs_backend_set_errmsg("operation unsupported: external snapshot file for disk %s already exists and is not a block device: %s",
                                   disks[i].disk, disks[i].overlay);
            return -EEXIST;
        }
        if (job_find(f, dom, disks[i].disk))
            return busy(disks[i].disk);
        if (dk->readonly) {
            cfs_backend_set_errmsg("unsupported configuration: external snapshot for readonly disk %s is not supported",
                                   disks[i].disk);
            return -EROFS;
        }
        if (dk->shareable || note) {
            cfs_backend_set_errmsg("unsupported configuration: external snapshot of disk %s is not supported (%s)",
                                   disks[i].disk, dk->shareable ? "shareable" : note->why);
            return -EROFS;
        }
    }
    for (size_t i = 0; i < n; i++) {
        r = diskfail_take(f, disks[i].disk);
        if (r < 0)
            return r;
    }

    for (size_t i = 0; i < n; i++) {
        struct cfs_disk *dk = cfs_domain_find_disk(d, disks[i].disk);
        struct cfs_layer layer = {
            .path = cfs_xstrdup(disks[i].overlay),
            .format = cfs_xstrdup("qcow2"),
            .virtual_size = dk->n_layers > 0 ? dk->layers[0].virtual_size : 0,
            .meta_name = cfs_xstrdup(name),
        };

        dk->layers = cfs_xrealloc(dk->layers,
                                  (dk->n_layers + 1) * sizeof(*dk->layers));
        memmove(&dk->layers[1], &dk->layers[0], dk->n_layers * sizeof(*dk->layers));
        dk->layers[0] = layer;
        dk->n_layers++;
        dk->is_block = false;
        snapdisk_set(f, dom, name, disks[i].disk, disks[i].overlay);
    }
    dom_number_layers(f, d);
    cfs_strv_push(&d->snapshots, cfs_xstrdup(name));
    /* libvirt: the new snapshot's parent is the current one, and it
     * becomes current */
    parent = cfs_xstrdup(snapmeta_current(f, dom));
    m = snapmeta_get(f, dom, name);
    m->parent = parent;
    m->description = cfs_xstrdup(description);
    snapmeta_set_current(f, dom, name);
    return 0;
}

static int fake_snapshot_create(struct cfs_backend *be, const char *dom,
                                const char *disk, const char *name,
                                const char *overlay)
{
    struct fake *f = fake_of(be);
    struct cfs_snapshot_disk one = { .disk = disk, .overlay = overlay };
    int r = snapshot_take(f, OP_SNAPSHOT_CREATE, dom, name, 1, &one, NULL);

    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_snapshot_create_multi(struct cfs_backend *be, const char *dom,
                                      const char *name, size_t n,
                                      const struct cfs_snapshot_disk *disks,
                                      const char *description)
{
    struct fake *f = fake_of(be);
    int r = snapshot_take(f, OP_SNAPSHOT_CREATE_MULTI, dom, name, n, disks,
                          description);

    pthread_mutex_unlock(&f->lock);
    return r;
}

/* As the libvirt backend: DISK's layers stop carrying NAME; the snapshot
 * itself goes once no layer of any disk carries it. */
static int fake_snapshot_forget(struct cfs_backend *be, const char *dom,
                                const char *disk, const char *name)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    size_t n, k = 0;
    bool named = false;
    int r;

    r = fake_enter_dom(f, OP_SNAPSHOT_FORGET, dom, &d);
    if (r < 0)
        goto out;
    if (!cfs_strv_contains(d->snapshots, name)) {
        cfs_backend_set_errmsg("Domain snapshot not found: no domain snapshot with matching name '%s'",
                               name ? name : "");
        r = -ENOENT;
        goto out;
    }
    for (size_t i = 0; i < d->n_disks; i++)
        for (size_t l = 0; l < d->disks[i].n_layers; l++) {
            struct cfs_layer *layer = &d->disks[i].layers[l];

            if (!cfs_streq(layer->meta_name, name))
                continue;
            if (cfs_streq(d->disks[i].target, disk)) {
                free(layer->meta_name);
                layer->meta_name = NULL;
            } else {
                named = true;
            }
        }
    snapdisk_remove(f, dom, name, disk);
    if (named)
        goto out;
    snapdisk_remove(f, dom, name, NULL);
    snapmeta_remove(f, dom, name);
    n = cfs_strv_len(d->snapshots);
    for (size_t i = 0; i < n; i++) {
        if (cfs_streq(d->snapshots[i], name))
            free(d->snapshots[i]);
        else
            d->snapshots[k++] = d->snapshots[i];
    }
    d->snapshots[k] = NULL;
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_commit_start(struct cfs_backend *be, const char *dom,
                             const char *disk, const char *top,
                             const char *base, bool active,
                             uint64_t bandwidth)
{
    struct fake *f = fake_of(be);
    struct cfs_disk *dk;
    ssize_t t;
    int r;

    r = fake_enter_disk(f, OP_COMMIT_START, dom, WANT_ACTIVE, disk, NULL, &dk);
    if (r < 0)
        goto out;
    if (job_find(f, dom, disk)) {
        r = busy(disk);
        goto out;
    }
    t = check_commit_layers(dk, top, base, active, false);
    if (t < 0) {
        r = (int)t;
        goto out;
    }

    f->jobs = cfs_xrealloc(f->jobs, (f->n_jobs + 1) * sizeof(*f->jobs));
    f->jobs[f->n_jobs++] = (struct fake_job){
        .dom = cfs_xstrdup(dom),
        .disk = cfs_xstrdup(disk),
        .top = cfs_xstrdup(dk->layers[t].path),
        .base = cfs_xstrdup(dk->layers[layer_index(dk, base)].path),
        .type = active ? CFS_JOB_ACTIVE_COMMIT : CFS_JOB_COMMIT,
        .end = dk->layers[t].virtual_size,
        .bandwidth = bandwidth,
    };
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* As libvirt's blockpull with a base: TOP must be the active layer (the
 * libvirt backend's own check), BASE a layer below it. */
static int fake_pull_start(struct cfs_backend *be, const char *dom,
                           const char *disk, const char *top,
                           const char *base, uint64_t bandwidth)
{
    struct fake *f = fake_of(be);
    struct cfs_disk *dk;
    ssize_t b;
    int r;

    r = fake_enter_disk(f, OP_PULL_START, dom, WANT_ACTIVE, disk, NULL, &dk);
    if (r < 0)
        goto out;
    if (!top || !*top || !base || !*base) {
        cfs_backend_set_errmsg("a pull needs the active layer and a base");
        r = -EINVAL;
        goto out;
    }
    if (layer_index(dk, top) != 0) {
        cfs_backend_set_errmsg("%s is not the active layer of disk %s of domain %s: a pull writes only into the active layer",
                               top, disk, dom);
        r = -EINVAL;
        goto out;
    }
    if (job_find(f, dom, disk)) {
        r = busy(disk);
        goto out;
    }
    b = layer_index(dk, base);
    if (b < 1) {
        /* libvirt: virStorageSourceChainLookup below the active layer,
         * VIR_ERR_INVALID_ARG "could not find ..." (-ENOENT) */
        cfs_backend_set_errmsg("invalid argument: could not find image '%s' beneath '%s' in chain for '%s'",
                               base, dk->layers[0].path, disk);
        r = -ENOENT;
        goto out;
    }

    f->jobs = cfs_xrealloc(f->jobs, (f->n_jobs + 1) * sizeof(*f->jobs));
    f->jobs[f->n_jobs++] = (struct fake_job){
        .dom = cfs_xstrdup(dom),
        .disk = cfs_xstrdup(disk),
        .top = cfs_xstrdup(dk->layers[0].path),
        .base = cfs_xstrdup(dk->layers[b].path),
        .type = CFS_JOB_PULL,
        /* a pull's progress spans the whole disk (design issue8 §0.6) */
        .end = dk->layers[0].virtual_size,
        .bandwidth = bandwidth,
    };
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* A real file, as the real backend makes it (the engine deletes it by
 * dev/ino): a few bytes, O_EXCL. */
static int fake_image_create(struct cfs_backend *be, const char *path,
                             const char *like, const char *like_format,
                             const char *backing, const char *backing_format,
                             struct cfs_file_id *id)
{
    struct fake *f = fake_of(be);
    struct stat st;
    int r = fake_enter(f, OP_IMAGE_CREATE);

    (void)like_format;
    (void)backing_format;
    if (r < 0)
        goto out;
    if (f->remote) {
        cfs_backend_set_errmsg("the image files are not on this machine");
        r = -EOPNOTSUPP;
        goto out;
    }
    if (!path || path[0] != '/' || !like) {
        cfs_backend_set_errmsg("the destination must be an absolute path");
        r = -EINVAL;
        goto out;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        r = -errno;
        cfs_backend_set_errmsg("cannot create '%s': %s", path, strerror(errno));
        goto out;
    }
    const char hdr[] = "QFI\xfb fake copy destination\n";
    if (write(fd, hdr, sizeof(hdr) - 1) < 0 || (backing && write(fd, backing, strlen(backing)) < 0) ||
        fstat(fd, &st) < 0) {
        r = -errno;
        close(fd);
        unlink(path);
        goto out;
    }
    close(fd);
    cfs_strv_push(&f->made_paths, cfs_xstrdup(path));
    cfs_strv_push(&f->made_backings, cfs_xstrdup(backing ? backing : ""));
    if (id) {
        cfs_file_identify(id, path, true);
        id->known = true;
        id->dev = (uint64_t)st.st_dev;
        id->ino = (uint64_t)st.st_ino;
    }
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_copy_start(struct cfs_backend *be, const char *dom,
                           const char *disk, const char *dest, bool shallow,
                           uint64_t bandwidth)
{
    struct fake *f = fake_of(be);
    struct cfs_disk *dk;
    int r;

    r = fake_enter_disk(f, OP_COPY_START, dom, WANT_ACTIVE, disk, NULL, &dk);
    if (r < 0)
        goto out;
    if (!dest || dest[0] != '/') {
        cfs_backend_set_errmsg("invalid argument: absolute path must be used as block copy target");
        r = -EINVAL;
        goto out;
    }
    if (job_find(f, dom, disk)) {
        r = busy(disk);
        goto out;
    }
    f->jobs = cfs_xrealloc(f->jobs, (f->n_jobs + 1) * sizeof(*f->jobs));
    f->jobs[f->n_jobs++] = (struct fake_job){
        .dom = cfs_xstrdup(dom),
        .disk = cfs_xstrdup(disk),
        .top = cfs_xstrdup(dk->layers[0].path),
        .base = cfs_xstrdup(dest),
        .type = CFS_JOB_COPY,
        .end = dk->layers[0].virtual_size,
        .bandwidth = bandwidth,
        .shallow = shallow && dk->n_layers > 1,
    };
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* Appends a line naming SRC to DST (so a test sees what was copied
 * where); waits while cfs_fake_copy_hold() holds it, or until *CANCEL. */
static int fake_image_copy_data(struct cfs_backend *be, const char *src,
                                const char *dst, const char *format,
                                const char *backing, const char *backing_format,
                                uint64_t bandwidth, const volatile int *cancel)
{
    struct fake *f = fake_of(be);
    int r = fake_enter(f, OP_IMAGE_COPY_DATA);

    (void)format;
    (void)backing;
    (void)backing_format;
    (void)bandwidth;
    pthread_mutex_unlock(&f->lock);
    if (r < 0)
        return r;
    for (;;) {
        pthread_mutex_lock(&f->lock);
        int hold = f->copy_hold;
        pthread_mutex_unlock(&f->lock);
        if (cancel && *cancel) {
            cfs_backend_set_errmsg("qemu-img convert into %s canceled", dst);
            return -ECANCELED;
        }
        if (!hold)
            break;
        struct timespec ts = { 0, 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    struct stat st;
    if (stat(src, &st) < 0) {
        cfs_backend_set_errmsg("qemu-img: Could not open '%s': %s", src, strerror(errno));
        return -EIO;
    }
    int fd = open(dst, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
        cfs_backend_set_errmsg("qemu-img: Could not open '%s': %s", dst, strerror(errno));
        return -EIO;
    }
    char line[4200];
    int n = snprintf(line, sizeof(line), "data of %s\n", src);
    r = write(fd, line, (size_t)n) < 0 ? -errno : 0;
    close(fd);
    return r;
}

static int fake_image_check(struct cfs_backend *be, const char *path,
                            const char *format)
{
    struct fake *f = fake_of(be);
    struct stat st;
    int r = fake_enter(f, OP_IMAGE_CHECK);

    (void)format;
    if (r == 0 && stat(path, &st) < 0) {
        cfs_backend_set_errmsg("qemu-img: Could not open '%s': %s", path, strerror(errno));
        r = -EIO;
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_persistent_source_get(struct cfs_backend *be, const char *dom,
                                      const char *disk, char **path)
{
    struct fake *f = fake_of(be);
    struct cfs_disk *dk;
    int r;

    *path = NULL;
    r = fake_enter_disk(f, OP_PERSISTENT_SOURCE_GET, dom, WANT_ANY, disk, NULL, &dk);
    if (r == 0) {
        struct fake_persist *p = persist_find(f, dom, disk);
        *path = cfs_xstrdup(p ? p->source : dk->n_layers ? dk->layers[0].path : NULL);
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_persistent_source_set(struct cfs_backend *be, const char *dom,
                                      const char *disk, const char *path,
                                      const char *format)
{
    struct fake *f = fake_of(be);
    struct cfs_disk *dk;
    int r;

    (void)format;
    r = fake_enter_disk(f, OP_PERSISTENT_SOURCE_SET, dom, WANT_ANY, disk, NULL, &dk);
    if (r == 0)
        persist_set(f, dom, disk,
                    dk->n_layers && cfs_streq(dk->layers[0].path, path) ? NULL : path);
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int no_snapshot(const char *name)
{
    cfs_backend_set_errmsg("Domain snapshot not found: no domain snapshot with matching name '%s'",
                           name ? name : "");
    return -ENOENT;
}

/* As libvirt's METADATA_ONLY delete: the snapshot goes, for every disk;
 * no layer carries its name any more. */
static int fake_snapshot_drop(struct cfs_backend *be, const char *dom,
                              const char *name)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    size_t n, k = 0;
    int r;

    r = fake_enter_dom(f, OP_SNAPSHOT_DROP, dom, &d);
    if (r < 0)
        goto out;
    if (!name || !cfs_strv_contains(d->snapshots, name)) {
        r = no_snapshot(name);
        goto out;
    }
    for (size_t i = 0; i < d->n_disks; i++)
        for (size_t l = 0; l < d->disks[i].n_layers; l++) {
            struct cfs_layer *layer = &d->disks[i].layers[l];

            if (cfs_streq(layer->meta_name, name)) {
                free(layer->meta_name);
                layer->meta_name = NULL;
            }
        }
    n = cfs_strv_len(d->snapshots);
    for (size_t i = 0; i < n; i++) {
        if (cfs_streq(d->snapshots[i], name))
            free(d->snapshots[i]);
        else
            d->snapshots[k++] = d->snapshots[i];
    }
    d->snapshots[k] = NULL;
    snapdisk_remove(f, dom, name, NULL);
    snapmeta_remove(f, dom, name);
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* As the libvirt backend's redefine: what NAME names for DISK becomes
 * NEW_SOURCE; the layer at NEW_SOURCE, if DISK's chain has it, now
 * carries NAME (as read_domain would find it), no other layer of DISK. */
static int fake_snapshot_retarget(struct cfs_backend *be, const char *dom,
                                  const char *name, const char *disk,
                                  const char *new_source)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    struct cfs_disk *dk;
    struct fake_snapdisk *sd;
    ssize_t l;
    int r;

    r = fake_enter_dom(f, OP_SNAPSHOT_RETARGET, dom, &d);
    if (r < 0)
        goto out;
    if (!new_source || !*new_source) {
        cfs_backend_set_errmsg("a snapshot needs a source to name");
        r = -EINVAL;
        goto out;
    }
    if (!name || !cfs_strv_contains(d->snapshots, name)) {
        r = no_snapshot(name);
        goto out;
    }
    sd = snapdisk_find(f, dom, name, disk);
    if (!sd) {
        cfs_backend_set_errmsg("snapshot %s of domain %s names no file for disk %s",
                               name, dom, disk ? disk : "");
        r = -ENOENT;
        goto out;
    }
    free(sd->source);
    sd->source = cfs_xstrdup(new_source);
    dk = cfs_domain_find_disk(d, disk);
    for (size_t i = 0; dk && i < dk->n_layers; i++)
        if (cfs_streq(dk->layers[i].meta_name, name)) {
            free(dk->layers[i].meta_name);
            dk->layers[i].meta_name = NULL;
        }
    l = dk ? layer_index(dk, new_source) : -1;
    if (l >= 0) {
        free(dk->layers[l].meta_name);
        dk->layers[l].meta_name = cfs_xstrdup(name);
    }
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* The fake keeps no <domain> copy: a snapshot with a <disks> entry for
 * DISK is taken as having one. */
static int fake_snapshot_domain_source(struct cfs_backend *be, const char *dom,
                                       const char *name, const char *disk,
                                       const char *new_source)
{
    struct fake *f = fake_of(be);
    int r = fake_enter_dom(f, OP_SNAPSHOT_DOMAIN_SOURCE, dom, NULL);

    if (r == 0 && (!new_source || !*new_source)) {
        cfs_backend_set_errmsg("a snapshot needs a source to name");
        r = -EINVAL;
    } else if (r == 0 && !snapdisk_find(f, dom, name, disk)) {
        r = no_snapshot(name);
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_job_set_bandwidth(struct cfs_backend *be, const char *dom,
                                  const char *disk, uint64_t bandwidth)
{
    struct fake *f = fake_of(be);
    struct fake_job *job;
    int r;

    r = fake_enter_job(f, OP_JOB_SET_BANDWIDTH, dom, disk, &job);
    if (r == 0)
        job->bandwidth = bandwidth;
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_job_get(struct cfs_backend *be, const char *dom,
                        const char *disk, struct cfs_job_progress *out)
{
    struct fake *f = fake_of(be);
    struct fake_job *job;
    int r;

    *out = (struct cfs_job_progress){0};
    r = fake_enter_disk(f, OP_JOB_GET, dom, WANT_ANY, disk, NULL, NULL);
    if (r < 0)
        goto out;
    job = job_find(f, dom, disk);
    if (job)
        *out = (struct cfs_job_progress){
            .present = true,
            .type = job->type,
            .cur = job->cur,
            .end = job->end,
            .bandwidth = job->bandwidth,
            .ready = job->ready,
        };
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_job_pivot(struct cfs_backend *be, const char *dom,
                          const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct fake_job *job;
    int r;

    r = fake_enter_job(f, OP_JOB_PIVOT, dom, disk, &job);
    if (r < 0)
        goto out;
    if (!job_mirrors(job)) {
        /* VIR_ERR_OPERATION_INVALID: the real backend's -ENOENT for a
         * job call (no job that can pivot) */
        cfs_backend_set_errmsg("Requested operation is not valid: job type '%s' does not support pivot",
                               cfs_job_type_to_string(job->type));
        r = -ENOENT;
        goto out;
    }
    if (job->ready && f->pivot_fail_n > 0 && cfs_streq(f->pivot_fail_disk, disk)) {
        f->pivot_fail_n--;
        cfs_backend_set_errmsg("internal error: unable to execute QEMU command "
                               "'job-complete': pivot of disk '%s' refused", disk);
        r = f->pivot_fail_err;
        goto out;
    }
    if (!job->ready || f->pivot_not_ready > 0) {
        if (job->ready)
            f->pivot_not_ready--;
        cfs_backend_set_errmsg("block copy still active: disk '%s' not ready for pivot yet",
                               disk);
        r = -EAGAIN;
        goto out;
    }
    job_apply(f, job);
    event_block_job(f, &e, job, CFS_JOB_EVENT_COMPLETED);
    job_remove(f, job);
out:
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
    return r;
}

static int fake_job_abort(struct cfs_backend *be, const char *dom,
                          const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct fake_job *job;
    int r;

    r = fake_enter_job(f, OP_JOB_ABORT, dom, disk, &job);
    if (r == 0 && f->abort_completes) {
        /* QEMU completed the job just before the cancel reached it */
        f->abort_completes = false;
        job->cur = job->end;
        job_apply(f, job);
        event_block_job(f, &e, job, CFS_JOB_EVENT_COMPLETED);
        job_remove(f, job);
    } else if (r == 0) {
        event_block_job(f, &e, job, CFS_JOB_EVENT_CANCELED);
        job_remove(f, job);
    }
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
    return r;
}

static int fake_offline_commit(struct cfs_backend *be, const char *dom,
                               const char *disk, const char *top,
                               const char *base, bool active)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct cfs_disk *dk;
    ssize_t t;
    int r;

    /* the files are checked before the domain: fake_enter_disk() in two */
    r = fake_enter(f, OP_OFFLINE_COMMIT);
    if (r < 0)
        goto out;
    if (f->remote) {
        cfs_backend_set_errmsg("an offline merge runs qemu-img on the image files, "
                               "and they are not on this machine");
        r = -EOPNOTSUPP;
        goto out;
    }
    r = find_dom_disk(f, dom, WANT_INACTIVE, disk, NULL, &dk);
    if (r < 0)
        goto out;
    t = check_commit_layers(dk, top, base, active, true);
    if (t < 0) {
        r = (int)t;
        goto out;
    }
    layer_remove(dk, (size_t)t);
    /* An active merge redefines the domain (its source becomes BASE):
     * libvirt reports that as a definition change. */
    if (active)
        event_domain(f, &e, dom);
out:
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
    return r;
}

static int fake_offline_pull(struct cfs_backend *be, const char *dom,
                             const char *disk, const char *top,
                             const char *base)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct cfs_disk *dk;
    ssize_t b;
    int r;

    r = fake_enter(f, OP_OFFLINE_PULL);
    if (r < 0)
        goto out;
    if (f->remote) {
        cfs_backend_set_errmsg("an offline merge runs qemu-img on the image files, "
                               "and they are not on this machine");
        r = -EOPNOTSUPP;
        goto out;
    }
    r = find_dom_disk(f, dom, WANT_INACTIVE, disk, NULL, &dk);
    if (r < 0)
        goto out;
    if (!top || !base || layer_index(dk, top) != 0) {
        cfs_backend_set_errmsg("'%s' is not the active layer of disk '%s'",
                               top ? top : "(null)", disk);
        r = -EINVAL;
        goto out;
    }
    b = layer_index(dk, base);
    if (b < 2) {
        cfs_backend_set_errmsg("'%s' is not at least two layers below '%s'",
                               base, top);
        r = -EINVAL;
        goto out;
    }
    for (ssize_t i = 1; i < b; i++)
        layer_remove(dk, 1);
    /* the definition's cached chain is dropped: libvirt reports that as a
     * definition change */
    event_domain(f, &e, dom);
out:
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
    return r;
}

/* ---- the guest agent ------------------------------------------------------------ */

static struct fake_agent *agent_find(struct fake *f, const char *dom)
{
    for (size_t i = 0; i < f->n_agents; i++)
        if (cfs_streq(f->agents[i].dom, dom))
            return &f->agents[i];
    return NULL;
}

/* DOM's agent, made (none configured, 2 filesystems) if the test has not
 * named one. f->lock held. */
static struct fake_agent *agent_get(struct fake *f, const char *dom)
{
    struct fake_agent *a = agent_find(f, dom);

    if (a)
        return a;
    f->agents = cfs_xrealloc(f->agents, (f->n_agents + 1) * sizeof(*f->agents));
    a = &f->agents[f->n_agents++];
    *a = (struct fake_agent){
        .dom = cfs_xstrdup(dom),
        .mode = CFS_FAKE_AGENT_NONE,
        .filesystems = 2,
    };
    return a;
}

/* As libvirt's qemuDomainAgentSetResponseTimeout: any domain, with or
 * without an agent, running or not; the value is recorded. */
static int fake_agent_set_timeout(struct cfs_backend *be, const char *dom,
                                  int seconds)
{
    struct fake *f = fake_of(be);
    int r = fake_enter_dom(f, OP_AGENT_SET_TIMEOUT, dom, NULL);

    if (r == 0 && seconds <= 0) {
        cfs_backend_set_errmsg("invalid argument: guest agent timeout '%d' is not a number of seconds",
                               seconds);
        r = -EINVAL;
    }
    if (r == 0)
        agent_get(f, dom)->timeout = seconds;
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* As libvirt's checks (qemuDomainAgentAvailable) and qemu-ga: see
 * enum cfs_fake_agent_mode. */
static int fake_agent_fs(struct cfs_backend *be, const char *dom, bool thaw,
                         unsigned *n)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    struct fake_agent *a;
    int r;

    if (n)
        *n = 0;
    r = fake_enter_dom(f, thaw ? OP_AGENT_THAW : OP_AGENT_FREEZE, dom, &d);
    if (r < 0)
        goto out;
    if (d->state != CFS_DOM_RUNNING) {
        r = not_running();
        goto out;
    }
    a = agent_get(f, dom);
    switch (a->mode) {
    case CFS_FAKE_AGENT_NONE:
        cfs_backend_set_errmsg("argument unsupported: QEMU guest agent is not configured");
        r = -EOPNOTSUPP;
        goto out;
    case CFS_FAKE_AGENT_DISCONNECTED:
        cfs_backend_set_errmsg("Guest agent is not responding: QEMU guest agent is not connected");
        r = -EOPNOTSUPP;
        goto out;
    case CFS_FAKE_AGENT_HUNG:
        cfs_backend_set_errmsg("Guest agent is not responding: Guest agent not available for now");
        r = -ETIMEDOUT;
        goto out;
    case CFS_FAKE_AGENT_LATE:
        if (thaw)
            break;
        /* the freeze times out, then happens in the guest; the agent
         * answers again afterwards */
        a->mode = CFS_FAKE_AGENT_OK;
        if (!a->frozen) {
            a->frozen = true;
            a->freezes++;
        }
        cfs_backend_set_errmsg("Guest agent is not responding: Guest agent not available for now");
        r = -ETIMEDOUT;
        goto out;
    case CFS_FAKE_AGENT_OK:
        break;
    }
    if (thaw) {
        if (n)
            *n = a->frozen ? a->filesystems : 0;
        a->frozen = false;
        a->thaws++;
    } else if (a->frozen) {
        cfs_backend_set_errmsg("internal error: unable to execute QEMU agent command 'guest-fsfreeze-freeze': "
                               "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state");
        r = -EOPNOTSUPP;
    } else {
        a->frozen = true;
        a->freezes++;
        if (n)
            *n = a->filesystems;
    }
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* ---- issue 10: multi-disk define, retarget ----------------------------------------- */

/* DISK of shut-off D is defined on PATH: the chain read_domain gives is
 * what the headers say. PATH a layer of the chain: the chain from it;
 * PATH a file image_create made over a layer of the chain: PATH, then
 * the chain from that layer; else (a file the fake knows nothing of) the
 * chain is left and only the persistent source recorded. f->lock held. */
static void define_source(struct fake *f, struct cfs_domain *d,
                          struct cfs_disk *dk, const char *path)
{
    ssize_t at = layer_index(dk, path);
    const char *backing = at < 0 ? made_backing(f, path) : NULL;
    ssize_t below = backing && *backing ? layer_index(dk, backing) : -1;

    if (at < 0 && below < 0) {
        persist_set(f, d->name, dk->target, path);
        return;
    }
    if (at < 0) {
        struct cfs_layer layer = {
            .path = cfs_xstrdup(path),
            .format = cfs_xstrdup("qcow2"),
            .virtual_size = dk->layers[below].virtual_size,
        };
        while (below-- > 0)
            layer_remove(dk, 0);
        dk->layers = cfs_xrealloc(dk->layers,
                                  (dk->n_layers + 1) * sizeof(*dk->layers));
        memmove(&dk->layers[1], &dk->layers[0], dk->n_layers * sizeof(*dk->layers));
        dk->layers[0] = layer;
        dk->n_layers++;
        dk->is_block = false;
    } else {
        while (at-- > 0)
            layer_remove(dk, 0);
    }
    persist_set(f, d->name, dk->target, NULL);
}

static int fake_persistent_sources_set(struct cfs_backend *be, const char *dom,
                                       size_t n, const char *const *disks,
                                       const char *const *paths,
                                       const char *const *formats)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct cfs_domain *d;
    int r;

    (void)formats;
    r = fake_enter_dom(f, OP_PERSISTENT_SOURCES_SET, dom, &d);
    if (r < 0)
        goto out;
    if (!d->persistent) {
        cfs_backend_set_errmsg("Requested operation is not valid: cannot change the persistent definition of transient domain '%s'",
                               dom);
        r = -ENOENT;
        goto out;
    }
    if (d->state != CFS_DOM_SHUTOFF) {
        cfs_backend_set_errmsg("domain %s is running: its new definition would only apply at its next start",
                               dom);
        r = -EBUSY;
        goto out;
    }
    if (n == 0 || !disks || !paths) {
        cfs_backend_set_errmsg("invalid argument: no disk to define");
        r = -EINVAL;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (!cfs_domain_find_disk(d, disks[i])) {
            r = no_disk(disks[i]);
            goto out;
        }
        if (!paths[i] || paths[i][0] != '/') {
            cfs_backend_set_errmsg("invalid argument: disk %s needs an absolute source path",
                                   disks[i]);
            r = -EINVAL;
            goto out;
        }
        for (size_t j = 0; j < i; j++)
            if (cfs_streq(disks[i], disks[j])) {
                cfs_backend_set_errmsg("invalid argument: disk '%s' specified twice",
                                       disks[i]);
                r = -EINVAL;
                goto out;
            }
    }
    for (size_t i = 0; i < n; i++)
        define_source(f, d, cfs_domain_find_disk(d, disks[i]), paths[i]);
    /* a define: libvirt reports it as a definition change */
    event_domain(f, &e, dom);
out:
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
    return r;
}

static int fake_snapshot_retarget_multi(struct cfs_backend *be, const char *dom,
                                        const char *name, size_t n,
                                        const char *const *disks,
                                        const char *const *new_sources,
                                        bool make_current)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    int r;

    r = fake_enter_dom(f, OP_SNAPSHOT_RETARGET_MULTI, dom, &d);
    if (r < 0)
        goto out;
    if (!name || !cfs_strv_contains(d->snapshots, name)) {
        r = no_snapshot(name);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (!new_sources || !new_sources[i] || !*new_sources[i]) {
            cfs_backend_set_errmsg("a snapshot needs a source to name");
            r = -EINVAL;
            goto out;
        }
        if (!snapdisk_find(f, dom, name, disks[i])) {
            cfs_backend_set_errmsg("snapshot %s of domain %s names no file for disk %s",
                                   name, dom, disks[i] ? disks[i] : "");
            r = -ENOENT;
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct cfs_disk *dk = cfs_domain_find_disk(d, disks[i]);
        ssize_t l;

        snapdisk_set(f, dom, name, disks[i], new_sources[i]);
        for (size_t k = 0; dk && k < dk->n_layers; k++)
            if (cfs_streq(dk->layers[k].meta_name, name)) {
                free(dk->layers[k].meta_name);
                dk->layers[k].meta_name = NULL;
            }
        l = dk ? layer_index(dk, new_sources[i]) : -1;
        if (l >= 0) {
            free(dk->layers[l].meta_name);
            dk->layers[l].meta_name = cfs_xstrdup(name);
        }
    }
    if (make_current)
        snapmeta_set_current(f, dom, name);
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

static bool fake_files_local(struct cfs_backend *be, const char **why)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    bool local = !f->remote;
    pthread_mutex_unlock(&f->lock);
    if (why)
        *why = local ? "fake backend" : "fake backend set remote";
    return local;
}

/* Models libvirt: a file in the pool directory is "deleted" (recorded,
 * not touched: the test's files stand for the remote host's); anything
 * else is in no pool. */
static int fake_volume_delete(struct cfs_backend *be, const char *path)
{
    struct fake *f = fake_of(be);
    size_t n;
    int r;

    r = fake_enter(f, OP_VOLUME_DELETE);
    if (r == 0) {
        n = f->pool_dir ? strlen(f->pool_dir) : 0;
        if (n && strncmp(path, f->pool_dir, n) == 0 && path[n] == '/' &&
            !strchr(path + n + 1, '/')) {
            free(f->last_volume_deleted);
            f->last_volume_deleted = cfs_xstrdup(path);
        } else {
            cfs_backend_set_errmsg("Storage volume not found: no storage vol with matching path '%s'", path);
            r = -ENOENT;
        }
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

/* Models libvirt's pool probe: a path directly in the pool directory is
 * looked up among the test's files there (they stand for the remote
 * host's: lstat, nothing opened); any other directory has no pool. */
static int fake_file_exists(struct cfs_backend *be, const char *path)
{
    struct fake *f = fake_of(be);
    struct stat st;
    size_t n;
    int r;

    r = fake_enter(f, OP_FILE_EXISTS);
    if (r == 0) {
        n = f->pool_dir ? strlen(f->pool_dir) : 0;
        if (!(n && strncmp(path, f->pool_dir, n) == 0 && path[n] == '/' &&
              !strchr(path + n + 1, '/'))) {
            cfs_backend_set_errmsg("Storage pool not found: no storage pool with "
                                   "matching target path '%s'", path);
            r = -EOPNOTSUPP;
        } else if (lstat(path, &st) == 0) {
            r = 1;
        } else if (errno != ENOENT) {
            r = -errno;
            cfs_backend_set_errmsg("cannot stat file '%s': %s", path, strerror(errno));
        }
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

static int fake_hypervisor_version(struct cfs_backend *be, unsigned long long *ver)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    unsigned long long v = f->hv_version;
    pthread_mutex_unlock(&f->lock);
    if (!v) {
        cfs_backend_set_errmsg("the fake backend has no hypervisor version");
        return -EOPNOTSUPP;
    }
    *ver = v;
    return 0;
}

/* As libvirt's: no URI before the connection is open. */
static const char *fake_uri(struct cfs_backend *be)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    const char *uri = f->connected ? f->uri : NULL;
    pthread_mutex_unlock(&f->lock);
    return uri;
}

static const struct cfs_backend_ops fake_ops = {
    .name = "fake",
    .connect = fake_connect,
    .destroy = fake_destroy,
    .list_domains = fake_list_domains,
    .list_stats = fake_list_stats,
    .read_domain = fake_read_domain,
    .read_domain_light = fake_read_domain_light,
    .snapshot_create = fake_snapshot_create,
    .snapshot_create_multi = fake_snapshot_create_multi,
    .agent_set_timeout = fake_agent_set_timeout,
    .agent_fs = fake_agent_fs,
    .persistent_sources_set = fake_persistent_sources_set,
    .snapshot_retarget_multi = fake_snapshot_retarget_multi,
    .snapshot_forget = fake_snapshot_forget,
    .snapshot_drop = fake_snapshot_drop,
    .snapshot_retarget = fake_snapshot_retarget,
    .snapshot_domain_source = fake_snapshot_domain_source,
    .commit_start = fake_commit_start,
    .pull_start = fake_pull_start,
    .image_create = fake_image_create,
    .copy_start = fake_copy_start,
    .image_check = fake_image_check,
    .image_copy_data = fake_image_copy_data,
    .persistent_source_get = fake_persistent_source_get,
    .persistent_source_set = fake_persistent_source_set,
    .job_set_bandwidth = fake_job_set_bandwidth,
    .job_get = fake_job_get,
    .job_pivot = fake_job_pivot,
    .job_abort = fake_job_abort,
    .offline_commit = fake_offline_commit,
    .offline_pull = fake_offline_pull,
    .files_local = fake_files_local,
    .volume_delete = fake_volume_delete,
    .file_exists = fake_file_exists,
    .hypervisor_version = fake_hypervisor_version,
    .uri = fake_uri,
};

void cfs_fake_set_remote(struct cfs_backend *be, bool remote, const char *pool_dir)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    f->remote = remote;
    free(f->pool_dir);
    f->pool_dir = cfs_xstrdup(pool_dir);
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_set_reachable(struct cfs_backend *be, bool reachable)
{
    struct fake *f = fake_of(be);
    bool fire = false;

    pthread_mutex_lock(&f->lock);
    if (reachable && f->unreachable && (f->armed || f->connected)) {
        f->connected = true;
        f->armed = false;
        fire = true;
    } else if (!reachable && !f->unreachable && f->connected) {
        fire = true;
    }
    f->unreachable = !reachable;
    struct cfs_backend_events ev = f->ev;
    void *opaque = f->opaque;
    pthread_mutex_unlock(&f->lock);
    if (fire && ev.connection)
        ev.connection(opaque, reachable);
}

void cfs_fake_set_uri(struct cfs_backend *be, const char *uri)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    free(f->uri);
    f->uri = cfs_xstrdup(uri);
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_set_hypervisor_version(struct cfs_backend *be,
                                     unsigned long long ver)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    f->hv_version = ver;
    pthread_mutex_unlock(&f->lock);
}

char *cfs_fake_last_volume_deleted(struct cfs_backend *be)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    char *p = cfs_xstrdup(f->last_volume_deleted);
    pthread_mutex_unlock(&f->lock);
    return p;
}

/* ---- the test's controls ---------------------------------------------------------- */

struct cfs_backend *cfs_fake_backend_new(void)
{
    struct cfs_backend *be = cfs_xcalloc(1, sizeof(*be));
    struct fake *f = cfs_xcalloc(1, sizeof(*f));

    pthread_mutex_init(&f->lock, NULL);
    f->uri = cfs_xstrdup("test:///default");
    be->ops = &fake_ops;
    be->priv = f;
    return be;
}

/* Jobs on DOM that cannot exist any more: all of them once the domain is
 * not active, else those whose disk is gone. No event, as in libvirt. */
static void jobs_prune(struct fake *f, const char *dom)
{
    const struct cfs_domain *d = dom_find(f, dom);

    for (size_t i = f->n_jobs; i-- > 0;) {
        struct fake_job *job = &f->jobs[i];

        if (!cfs_streq(job->dom, dom))
            continue;
        if (!d || !dom_active(d) || !cfs_domain_find_disk(d, job->disk))
            job_remove(f, job);
    }
}

void cfs_fake_mute_domain_events(struct cfs_backend *be, bool muted)
{
    struct fake *f = fake_of(be);
    pthread_mutex_lock(&f->lock);
    f->domain_events_muted = muted;
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_put_domain(struct cfs_backend *be, const struct cfs_domain *d)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct cfs_domain *copy = cfs_domain_dup(d);
    ssize_t i;

    pthread_mutex_lock(&f->lock);
    dom_number_layers(f, copy);
    i = dom_index(f, d->name);
    if (i >= 0) {
        cfs_domain_free(f->doms[i]);
        f->doms[i] = copy;
    } else {
        f->doms = cfs_xrealloc(f->doms, (f->n_doms + 1) * sizeof(*f->doms));
        f->doms[f->n_doms++] = copy;
    }
    jobs_prune(f, d->name);
    snapdisk_sync(f, copy);
    stored_notes(copy);
    event_domain(f, &e, d->name);
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
}

void cfs_fake_remove_domain(struct cfs_backend *be, const char *dom)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    ssize_t i;

    pthread_mutex_lock(&f->lock);
    i = dom_index(f, dom);
    if (i >= 0) {
        cfs_domain_free(f->doms[i]);
        memmove(&f->doms[i], &f->doms[i + 1],
                (f->n_doms - (size_t)i - 1) * sizeof(*f->doms));
        f->n_doms--;
        jobs_prune(f, dom);
        snapdisk_remove(f, dom, NULL, NULL);
        snapmeta_remove(f, dom, NULL);
        event_domain(f, &e, dom);
    }
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
}

void cfs_fake_add_simple(struct cfs_backend *be, const char *dom,
                         enum cfs_dom_state state, const char *target,
                         const char *const *paths, const char *const *meta,
                         size_t n)
{
    struct cfs_domain d = {
        .name = (char *)dom,
        .state = state,
        .persistent = true,
    };
    struct cfs_disk disk = {
        .target = (char *)target,
        .n_layers = n,
        .layers = cfs_xcalloc(n ? n : 1, sizeof(struct cfs_layer)),
    };
    unsigned hash = 5381;
    char **snapshots = NULL;

    for (const char *p = dom; *p; p++)
        hash = hash * 33 + (unsigned char)*p;
    snprintf(d.uuid, sizeof(d.uuid), "00000000-0000-4000-8000-%012x", hash);

    for (size_t i = 0; i < n; i++) {
        disk.layers[i] = (struct cfs_layer){
            .path = (char *)paths[i],
            .format = (char *)"qcow2",
            .virtual_size = FAKE_VIRTUAL_SIZE,
            .meta_name = meta ? (char *)meta[i] : NULL,
        };
        if (meta && meta[i])
            cfs_strv_push(&snapshots, cfs_xstrdup(meta[i]));
    }
    d.n_disks = 1;
    d.disks = &disk;
    d.snapshots = snapshots;

    cfs_fake_put_domain(be, &d);

    free(disk.layers);
    cfs_strv_free(snapshots);
}

void cfs_fake_fail_next(struct cfs_backend *be, const char *op, int err,
                        const char *message)
{
    struct fake *f = fake_of(be);
    enum fake_op o = op_lookup(op);

    pthread_mutex_lock(&f->lock);
    f->failures = cfs_xrealloc(f->failures,
                               (f->n_failures + 1) * sizeof(*f->failures));
    f->failures[f->n_failures++] = (struct fake_failure){
        .op = o,
        .err = err > 0 ? -err : (err < 0 ? err : -EIO),
        .message = cfs_xstrdup(message),
    };
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_job_progress(struct cfs_backend *be, const char *dom,
                           const char *disk, uint64_t cur, uint64_t end)
{
    struct fake *f = fake_of(be);
    struct fake_job *job;

    pthread_mutex_lock(&f->lock);
    job = job_find(f, dom, disk);
    if (job) {
        job->cur = cur;
        job->end = end;
    }
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_job_ready(struct cfs_backend *be, const char *dom,
                        const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct fake_job *job;

    pthread_mutex_lock(&f->lock);
    job = job_find(f, dom, disk);
    if (job && job_mirrors(job)) {
        job->cur = job->end;
        job->ready = true;
        event_block_job(f, &e, job, CFS_JOB_EVENT_READY);
    }
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
}

void cfs_fake_job_complete(struct cfs_backend *be, const char *dom,
                           const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct fake_job *job;

    pthread_mutex_lock(&f->lock);
    job = job_find(f, dom, disk);
    if (job) {
        job->cur = job->end;
        job_apply(f, job);
        event_block_job(f, &e, job, CFS_JOB_EVENT_COMPLETED);
        job_remove(f, job);
    }
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
}

void cfs_fake_job_fail(struct cfs_backend *be, const char *dom,
                       const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};
    struct fake_job *job;

    pthread_mutex_lock(&f->lock);
    job = job_find(f, dom, disk);
    if (job) {
        event_block_job(f, &e, job, CFS_JOB_EVENT_FAILED);
        job_remove(f, job);
    }
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
}

void cfs_fake_job_vanish(struct cfs_backend *be, const char *dom,
                         const char *disk, bool completed)
{
    struct fake *f = fake_of(be);
    struct fake_job *job;

    pthread_mutex_lock(&f->lock);
    job = job_find(f, dom, disk);
    if (job) {
        if (completed)
            job_apply(f, job);
        job_remove(f, job);
    }
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_abort_completes(struct cfs_backend *be)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    f->abort_completes = true;
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_pivot_fail(struct cfs_backend *be, const char *disk, int n, int err)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    free(f->pivot_fail_disk);
    f->pivot_fail_disk = cfs_xstrdup(disk);
    f->pivot_fail_n = n > 0 ? n : 0;
    f->pivot_fail_err = err > 0 ? -err : (err < 0 ? err : -EIO);
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_pivot_not_ready(struct cfs_backend *be, int n)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    f->pivot_not_ready = n > 0 ? n : 0;
    pthread_mutex_unlock(&f->lock);
}

unsigned cfs_fake_calls(struct cfs_backend *be, const char *op)
{
    struct fake *f = fake_of(be);
    enum fake_op o = op_lookup(op);
    unsigned n;

    pthread_mutex_lock(&f->lock);
    n = f->calls[o];
    pthread_mutex_unlock(&f->lock);
    return n;
}

int cfs_fake_start_external(struct cfs_backend *be, const char *dom,
                            const char *disk, enum cfs_job_type type)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    struct cfs_disk *dk;
    struct fake_job job = {
        .type = type,
        .external = true,
    };
    int r = 0;

    pthread_mutex_lock(&f->lock);
    d = dom_find(f, dom);
    dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    if (!dk || !dom_active(d)) {
        r = !d || !dk ? -ENOENT : -EINVAL;
        goto out;
    }
    if (job_find(f, dom, disk)) {
        r = -EBUSY;
        goto out;
    }
    switch (type) {
    case CFS_JOB_COMMIT:
        if (dk->n_layers < 3) {
            r = -EINVAL;
            goto out;
        }
        job.top = cfs_xstrdup(dk->layers[1].path);
        job.base = cfs_xstrdup(dk->layers[2].path);
        break;
    case CFS_JOB_ACTIVE_COMMIT:
        if (dk->n_layers < 2) {
            r = -EINVAL;
            goto out;
        }
        job.top = cfs_xstrdup(dk->layers[0].path);
        job.base = cfs_xstrdup(dk->layers[1].path);
        break;
    case CFS_JOB_COPY:
        job.base = cfs_xasprintf("%s.copy", dk->layers[0].path);
        break;
    case CFS_JOB_PULL:
    case CFS_JOB_BACKUP:
    case CFS_JOB_UNKNOWN:
        break;
    default:
        /* not a libvirt block job type */
        r = -EINVAL;
        goto out;
    }
    job.dom = cfs_xstrdup(dom);
    job.disk = cfs_xstrdup(disk);
    job.end = dk->layers[0].virtual_size;
    f->jobs = cfs_xrealloc(f->jobs, (f->n_jobs + 1) * sizeof(*f->jobs));
    f->jobs[f->n_jobs++] = job;
out:
    pthread_mutex_unlock(&f->lock);
    return r;
}

void cfs_fake_copy_hold(struct cfs_backend *be, bool hold)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    f->copy_hold = hold;
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_set_persistent_source(struct cfs_backend *be, const char *dom,
                                    const char *disk, const char *path)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    persist_set(f, dom, disk, path);
    pthread_mutex_unlock(&f->lock);
}

char *cfs_fake_job_copy_dest(struct cfs_backend *be, const char *dom,
                             const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_job *job;
    char *dest = NULL;

    pthread_mutex_lock(&f->lock);
    job = job_find(f, dom, disk);
    if (job && job->type == CFS_JOB_COPY)
        dest = cfs_xstrdup(job->base);
    pthread_mutex_unlock(&f->lock);
    return dest;
}

uint64_t cfs_fake_job_bandwidth(struct cfs_backend *be, const char *dom,
                                const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_job *job;
    uint64_t bw = 0;

    pthread_mutex_lock(&f->lock);
    job = job_find(f, dom, disk);
    if (job)
        bw = job->bandwidth;
    pthread_mutex_unlock(&f->lock);
    return bw;
}

bool cfs_fake_has_job(struct cfs_backend *be, const char *dom, const char *disk)
{
    struct fake *f = fake_of(be);
    bool has;

    pthread_mutex_lock(&f->lock);
    has = job_find(f, dom, disk) != NULL;
    pthread_mutex_unlock(&f->lock);
    return has;
}

void cfs_fake_start_external_job(struct cfs_backend *be, const char *dom,
                                 const char *disk, enum cfs_job_type type)
{
    int r = cfs_fake_start_external(be, dom, disk, type);

    if (r < 0) {
        fprintf(stderr, "fake backend: cannot start a %s job on %s/%s: %s\n",
                cfs_job_type_to_string(type), dom, disk, strerror(-r));
        abort();
    }
}

void cfs_fake_touch_domain(struct cfs_backend *be, const char *dom)
{
    struct fake *f = fake_of(be);
    struct fake_event e = {0};

    pthread_mutex_lock(&f->lock);
    if (dom_find(f, dom))
        event_domain(f, &e, dom);
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
}

char *cfs_fake_snapshot_source(struct cfs_backend *be, const char *dom,
                               const char *name, const char *disk)
{
    struct fake *f = fake_of(be);
    struct fake_snapdisk *sd;
    char *src = NULL;

    pthread_mutex_lock(&f->lock);
    sd = snapdisk_find(f, dom, name, disk);
    if (sd)
        src = cfs_xstrdup(sd->source);
    pthread_mutex_unlock(&f->lock);
    return src;
}

/* ---- issue 10 controls -------------------------------------------------------------- */

void cfs_fake_fail_snapshot_disk(struct cfs_backend *be, const char *disk,
                                 int err, const char *message)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    f->diskfails = cfs_xrealloc(f->diskfails,
                                (f->n_diskfails + 1) * sizeof(*f->diskfails));
    f->diskfails[f->n_diskfails++] = (struct fake_diskfail){
        .disk = cfs_xstrdup(disk),
        .err = err > 0 ? -err : (err < 0 ? err : -EIO),
        .message = cfs_xstrdup(message),
    };
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_add_unsnappable(struct cfs_backend *be, const char *dom,
                              const char *target, const char *why)
{
    struct fake *f = fake_of(be);
    struct cfs_domain *d;
    struct fake_event e = {0};

    pthread_mutex_lock(&f->lock);
    d = dom_find(f, dom);
    if (d && !note_find(d, target)) {
        note_push(d, target, why);
        event_domain(f, &e, dom);
    }
    pthread_mutex_unlock(&f->lock);
    event_fire(&e);
}

void cfs_fake_agent_set(struct cfs_backend *be, const char *dom,
                        enum cfs_fake_agent_mode mode)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    agent_get(f, dom)->mode = mode;
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_agent_set_frozen(struct cfs_backend *be, const char *dom,
                               bool frozen)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    agent_get(f, dom)->frozen = frozen;
    pthread_mutex_unlock(&f->lock);
}

void cfs_fake_agent_set_filesystems(struct cfs_backend *be, const char *dom,
                                    unsigned n)
{
    struct fake *f = fake_of(be);

    pthread_mutex_lock(&f->lock);
    agent_get(f, dom)->filesystems = n;
    pthread_mutex_unlock(&f->lock);
}

struct cfs_fake_agent_state cfs_fake_agent_state(struct cfs_backend *be,
                                                 const char *dom)
{
    struct fake *f = fake_of(be);
    struct fake_agent *a;
    struct cfs_fake_agent_state st;

    pthread_mutex_lock(&f->lock);
    a = agent_get(f, dom);
    st = (struct cfs_fake_agent_state){
        .mode = a->mode,
        .frozen = a->frozen,
        .freezes = a->freezes,
        .thaws = a->thaws,
        .filesystems = a->filesystems,
        .timeout = a->timeout,
    };
    pthread_mutex_unlock(&f->lock);
    return st;
}
