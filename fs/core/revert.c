/* revert.c — part of the engine (see engine_int.h): `revert NAME [force]`
 * in a disk's ctl (that disk) or the domain's (every disk with NAME's
 * layer), issue 10 §4 (docs/design/issue10.md).
 *
 * A shut-off persistent domain only. Per disk, NAME is layers[i]: its
 * frozen layer layers[i+1] gets a new empty qcow2 overlay O' (the first
 * free "<dom>.<disk>.<NAME>.<N>.qcow2"), and layers[0..i] are discarded
 * (layers[0..i-1] are later snapshots: only with `force`, else
 * ENOTEMPTY). Steps:
 *
 *   1. claim (lock_live: a fresh read): refusals, every disk concerned
 *      gets a job of type revert (phase starting)
 *   2. QEMU's "write" lock byte (201) on every disk's active layer, then
 *      the state read again: a `virsh start` racing the revert fails on
 *      the locks, one that won before them makes the revert EBUSY
 *   3. journal "prepare" (old sources, the new overlays' names, what
 *      leaves), the overlays made, journaled again with their dev/ino
 *   4. journal "switching"; ONE define of every disk's new source
 *      (persistent_sources_set): the commit point; journal "switched"
 *   5. metadata: NAME retargeted to the new overlays and made current,
 *      with force the later snapshots forgotten for the reverted disks
 *   6. journal "cleanup"; the discarded files deleted (still the file
 *      journaled, in no chain of any domain, read by no disk.raw); the
 *      locks dropped; the entry closed
 *
 * Recovery (revert_recover) rolls back before the define (the new
 * overlays deleted), forward after it, and decides "switching" from the
 * persistent definition itself.
 *
 * Fault stop points (tests/fault/revert_kill9.sh): with the environment
 * variable CHAINFS_FAULT=revert:POINT (POINT prepare, switching, defined,
 * switched or cleanup) the daemon logs a line and stops itself
 * (SIGSTOP) there, for the test to kill -9 it at exactly that point. */
#include <signal.h>

#include "engine_int.h"

/* One disk of a revert. */
struct rv_disk {
    char *target;
    char *active;                /* layers[0] when planned: locked, discarded */
    struct cfs_file_id active_id;
    char *like, *like_fmt;       /* layers[i], NAME's layer: the size */
    char *frozen, *frozen_fmt;   /* layers[i+1], NAME's frozen layer */
    char *meta;                  /* layers[i].meta_name, or NULL */
    char *made;                  /* O' */
    struct cfs_file_id made_id;
    char *old_source;            /* the definition's source before */
    struct cfs_file_id old_id;
    int lock_fd;
    uint64_t job_id;
};

struct rv_plan {
    char *dom, *name;
    bool force;
    bool domain_level;
    size_t n;
    struct rv_disk *disks;
    size_t n_leaving;
    struct cfs_job_file *leaving; /* every discarded file, once */
    char **later;                /* later snapshots' names, newest first */
    char **later_meta;           /* their metadata ("" none), same order */
    char *journal_id;
    int64_t created;
};

static void plan_clear(struct rv_plan *p)
{
    for (size_t k = 0; k < p->n; k++) {
        struct rv_disk *d = &p->disks[k];
        free(d->target);
        free(d->active);
        cfs_file_id_clear(&d->active_id);
        free(d->like);
        free(d->like_fmt);
        free(d->frozen);
        free(d->frozen_fmt);
        free(d->meta);
        free(d->made);
        cfs_file_id_clear(&d->made_id);
        free(d->old_source);
        cfs_file_id_clear(&d->old_id);
        if (d->lock_fd >= 0)
            close(d->lock_fd);
    }
    free(p->disks);
    cfs_job_files_free(p->leaving, p->n_leaving);
    cfs_strv_free(p->later);
    cfs_strv_free(p->later_meta);
    free(p->dom);
    free(p->name);
    free(p->journal_id);
    *p = (struct rv_plan){0};
}

/* "vm1" (domain level) or "vm1/vda", for logs. */
static char *where(const char *dom, const char *disk)
{
    return disk ? cfs_xasprintf("%s/%s", dom, disk) : cfs_xstrdup(dom);
}

/* ---- fault stop points ------------------------------------------------------ */

static void fault_point(const char *point)
{
    const char *f = getenv("CHAINFS_FAULT");
    if (!f || strncmp(f, "revert:", 7) != 0 || strcmp(f + 7, point) != 0)
        return;
    log_warn("fault stop point revert:%s reached (CHAINFS_FAULT): stopping "
             "the daemon", point);
    raise(SIGSTOP);
}

/* ---- the journal entry -------------------------------------------------------- */

/* The entry of plan P in PHASE (pointers into P and the arrays made
 * here: free with entry_arrays_free). */
static void plan_entry(const struct rv_plan *p, const char *phase,
                       struct cfs_journal_entry *en)
{
    *en = (struct cfs_journal_entry){
        .id = p->journal_id,
        .domain = p->dom,
        .disk = p->disks[0].target,
        .snapshot = p->name,
        .meta_name = p->disks[0].meta,
        .top = p->disks[0].active,
        .base = p->disks[0].frozen,
        .type = CFS_JOB_REVERT,
        .phase = (char *)phase,
        .created = p->created,
        .updated = now_s(),
        .force = p->force,
        .snapshots = p->later,
        .meta_names = p->later_meta,
        .n_leaving = p->n_leaving,
        .leaving = p->leaving,
        .n_made = p->n,
        .n_old = p->n,
    };
    en->disks = cfs_xcalloc(p->n + 1, sizeof(char *));
    en->layer_meta = cfs_xcalloc(p->n + 1, sizeof(char *));
    en->made = cfs_xcalloc(p->n, sizeof(*en->made));
    en->old_files = cfs_xcalloc(p->n, sizeof(*en->old_files));
    for (size_t k = 0; k < p->n; k++) {
        const struct rv_disk *d = &p->disks[k];
        en->disks[k] = d->target;
        en->layer_meta[k] = d->meta ? d->meta : (char *)"";
        en->made[k] = (struct cfs_job_file){ d->made, d->made_id };
        en->old_files[k] = (struct cfs_job_file){ d->old_source, d->old_id };
    }
}

static void entry_arrays_free(struct cfs_journal_entry *en)
{
    free(en->disks);
    free(en->layer_meta);
    free(en->made);
    free(en->old_files);
}

static int plan_journal(struct cfs_engine *e, const struct rv_plan *p,
                        const char *phase)
{
    struct cfs_journal_entry en;
    plan_entry(p, phase, &en);
    int r = cfs_journal_put(e->journal, &en);
    entry_arrays_free(&en);
    if (r < 0)
        log_err("journal: recording revert %s of %s (%s): %s", p->name, p->dom,
                phase, strerror(-r));
    return r;
}

/* ---- deleting: only the file journaled, in no chain, read by no one ---------- */

/* ---- what the definition names --------------------------------------------- */

enum def_state {
    DEF_OLD,      /* every disk names its old source */
    DEF_NEW,      /* every disk names its new overlay */
    DEF_MIXED,    /* anything else: a human decides */
    DEF_UNKNOWN,  /* it could not be read */
};

/* The persistent definition of DOM against the N disks' MADE and OLD
 * files. *WHY (caller frees) says what was found when not all old or all
 * new. */
static enum def_state definition_state(struct cfs_engine *e, const char *dom,
                                       size_t n, char *const *disks,
                                       const struct cfs_job_file *made,
                                       const struct cfs_job_file *old,
                                       char **why)
{
    size_t n_new = 0, n_old = 0;
    struct cfs_buf b = {0};
    bool local = engine_files_local(e);
    for (size_t k = 0; k < n; k++) {
        _cleanup_free_ char *src = NULL;
        int r = e->be->ops->persistent_source_get
                    ? e->be->ops->persistent_source_get(e->be, dom, disks[k], &src)
                    : -EOPNOTSUPP;
        if (r < 0) {
            cfs_buf_free(&b);
            *why = cfs_xasprintf("cannot read the persistent definition's source "
                                 "of %s: %s", disks[k], errmsg_or(strerror(-r)));
            return DEF_UNKNOWN;
        }
        _cleanup_(cfs_file_id_clear) struct cfs_file_id id = {0};
        if (src)
            cfs_file_identify(&id, src, local);
        if (src && cfs_file_same(&id, src, &made[k].id, made[k].path)) {
            n_new++;
            cfs_buf_printf(&b, "%s%s: %s (reverted)", k ? ", " : "", disks[k], src);
        } else if (src && cfs_file_same(&id, src, &old[k].id, old[k].path)) {
            n_old++;
            cfs_buf_printf(&b, "%s%s: %s (before the revert)", k ? ", " : "",
                           disks[k], src);
        } else {
            cfs_buf_printf(&b, "%s%s: %s (neither)", k ? ", " : "", disks[k],
                           src ? src : "no file source");
        }
    }
    *why = cfs_buf_steal(&b);
    return n_new == n ? DEF_NEW : n_old == n ? DEF_OLD : DEF_MIXED;
}

/* ---- the steps after the define (also recovery's) ---------------------------- */

/* Metadata (idempotent: recovery repeats it): NAME's metadata on each
 * reverted disk names its new overlay and NAME becomes current; with
 * force the later snapshots are forgotten for the reverted disks (a
 * later snapshot that also covers other disks keeps them). */
static void revert_metadata(struct cfs_engine *e, const char *dom,
                            const char *name, size_t n, char *const *disks,
                            char *const *metas, const struct cfs_job_file *made,
                            char *const *later_meta)
{
    /* per distinct metadata of NAME (one, but for odd naming) */
    for (size_t k = 0; k < n; k++) {
        if (!metas[k] || !*metas[k])
            continue;
        bool seen = false;
        for (size_t j = 0; j < k; j++)
            seen = seen || cfs_streq(metas[j], metas[k]);
        if (seen)
            continue;
        const char **ds = cfs_xcalloc(n, sizeof(*ds));
        const char **srcs = cfs_xcalloc(n, sizeof(*srcs));
        size_t m = 0;
        for (size_t j = k; j < n; j++) {
            if (!cfs_streq(metas[j], metas[k]))
                continue;
            ds[m] = disks[j];
            srcs[m++] = made[j].path;
        }
        int r = e->be->ops->snapshot_retarget_multi
                    ? e->be->ops->snapshot_retarget_multi(e->be, dom, metas[k], m,
                                                          ds, srcs, true)
                    : -EOPNOTSUPP;
        if (r < 0)
            log_warn("%s: revert %s: snapshot metadata %s not retargeted to the "
                     "new overlays (virsh snapshot-list may be wrong): %s", dom,
                     name, metas[k], errmsg_or(strerror(-r)));
        free(ds);
        free(srcs);
    }
    for (char *const *lm = later_meta; lm && *lm; lm++) {
        if (!**lm)
            continue;
        for (size_t k = 0; k < n; k++) {
            int r = e->be->ops->snapshot_forget(e->be, dom, disks[k], *lm);
            if (r < 0 && r != -ENOENT)
                log_warn("%s/%s: revert %s: forgetting the discarded snapshot %s "
                         "in libvirt's metadata: %s", dom, disks[k], name, *lm,
                         errmsg_or(strerror(-r)));
        }
    }
}

static void delete_leaving(struct cfs_engine *e, const char *dom,
                           const char *name, const struct cfs_job_file *v,
                           size_t n)
{
    _cleanup_free_ char *what = cfs_xasprintf("discarded by revert %s", name);
    for (size_t i = 0; i < n; i++)
        delete_recorded_file(e, dom, &v[i], what);
}

/* The new overlays go (a revert undone): only files that are still the
 * ones made and that no chain names. */
static void delete_made(struct cfs_engine *e, const char *dom,
                        const char *name, const struct cfs_job_file *v, size_t n)
{
    _cleanup_free_ char *what = cfs_xasprintf("made by revert %s, which was "
                                              "undone", name);
    for (size_t i = 0; i < n; i++)
        if (v[i].path)
            delete_recorded_file(e, dom, &v[i], what);
}

/* ---- recovery ----------------------------------------------------------------- */

/* Whether a revert of this daemon holds one of EN's disks now (a
 * reconnect runs recovery again while a revert may be under way). */
static bool revert_running(struct cfs_engine *e, const struct cfs_journal_entry *en)
{
    bool busy = false;
    pthread_mutex_lock(&e->tree->lock);
    char *one[2] = { en->disk, NULL };
    for (char **d = en->disks ? en->disks : one; *d && !busy; d++) {
        struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, en->domain, *d);
        busy = s && s->job.type == CFS_JOB_REVERT &&
               cfs_job_phase_in_progress(s->job.phase);
    }
    pthread_mutex_unlock(&e->tree->lock);
    return busy;
}

/* EN's later metadata, NAME's per disk: as journaled. */
static void recover_forward(struct cfs_engine *e, const struct cfs_journal_entry *en,
                            bool metadata)
{
    char *one[2] = { en->disk, NULL };
    char **disks = en->disks ? en->disks : one;
    size_t n = cfs_strv_len(disks);
    if (metadata) {
        char **metas = cfs_xcalloc(n + 1, sizeof(char *));
        for (size_t k = 0; k < n; k++)
            metas[k] = en->layer_meta && k < cfs_strv_len(en->layer_meta)
                           ? en->layer_meta[k]
                           : en->meta_name;
        revert_metadata(e, en->domain, en->snapshot, n, disks, metas, en->made,
                        en->meta_names);
        free(metas);
        struct cfs_journal_entry c;
        cfs_journal_entry_copy(&c, en);
        free(c.phase);
        c.phase = cfs_xstrdup("cleanup");
        c.updated = now_s();
        cfs_journal_put(e->journal, &c);
        cfs_journal_entry_clear(&c);
    }
    delete_leaving(e, en->domain, en->snapshot, en->leaving, en->n_leaving);
}

/* Take up a revert entry a previous daemon left (issue 10 §4.3). */
void revert_recover(struct cfs_engine *e, const struct cfs_journal_entry *en)
{
    if (revert_running(e, en))
        return; /* this daemon's own, under way (a reconnect) */
    char *one[2] = { en->disk, NULL };
    char **disks = en->disks ? en->disks : one;
    size_t n = cfs_strv_len(disks);
    const char *ph = en->phase;
    if (strcmp(ph, "switching") == 0) {
        _cleanup_free_ char *seen = NULL;
        enum def_state st = definition_state(e, en->domain, n, disks, en->made,
                                             en->old_files, &seen);
        if (st == DEF_UNKNOWN) {
            log_warn("recovery: %s: revert %s was switching and %s; the entry is "
                     "kept, tried again at the next start or reconnect",
                     en->domain, en->snapshot, seen);
            return;
        }
        if (st == DEF_MIXED) {
            log_err("recovery: %s: revert %s was switching, and the persistent "
                    "definition names neither the old chain on every disk nor the "
                    "reverted one (%s): nothing changed, the entry %s is kept for "
                    "a human to decide", en->domain, en->snapshot, seen, en->id);
            return;
        }
        ph = st == DEF_NEW ? "switched" : "prepare";
        log_info("recovery: %s: revert %s was switching; the definition names %s",
                 en->domain, en->snapshot,
                 st == DEF_NEW ? "the reverted chain: finishing it"
                               : "the old chain: undoing it");
    }
    if (strcmp(ph, "prepare") == 0) {
        delete_made(e, en->domain, en->snapshot, en->made, en->n_made);
        log_info("recovery: %s: revert %s undone (the domain's chain is as before "
                 "it)", en->domain, en->snapshot);
    } else if (strcmp(ph, "switched") == 0 || strcmp(ph, "cleanup") == 0) {
        recover_forward(e, en, strcmp(ph, "switched") == 0);
        log_info("recovery: %s: revert %s finished (the domain is at %s)",
                 en->domain, en->snapshot, en->snapshot);
    } else {
        log_err("recovery: %s: revert %s has phase \"%s\", which this version "
                "does not know; the entry %s is kept", en->domain, en->snapshot,
                en->phase, en->id);
        return;
    }
    journal_close(e, en->id);
    refresh_domain(e, en->domain);
}

/* ---- the command --------------------------------------------------------------- */

static int rv_refuse(struct cfs_engine *e, const char *dom, const char *disk,
                     const char *name, int err, const char *why)
{
    _cleanup_free_ char *w = where(dom, disk);
    log_warn("ctl %s: revert %s refused (%s): %s", w, name, strerror(-err), why);
    if (err == -ENOTCONN)
        conn_suspect(e, true);
    return err;
}

/* Whether the journal has a domain-level rmdir of NAME left partly
 * merged (issue 10 §3.4: an entry of type group in phase "partial"). */
static bool partially_merged(struct cfs_engine *e, const char *dom,
                             const char *name)
{
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    if (cfs_journal_list(e->journal, &v, &n) < 0)
        return false;
    bool partial = false;
    for (size_t i = 0; i < n && !partial; i++)
        partial = v[i].type == CFS_JOB_GROUP && cfs_streq(v[i].domain, dom) &&
                  cfs_streq(v[i].snapshot, name) && cfs_streq(v[i].phase, "partial");
    cfs_journal_entries_free(v, n);
    return partial;
}

static const char *state_words(enum cfs_dom_state s)
{
    switch (s) {
    case CFS_DOM_RUNNING: return "running";
    case CFS_DOM_PAUSED:  return "paused";
    case CFS_DOM_SHUTOFF: return "shut off";
    default:              return "neither running nor shut off";
    }
}

/* Step 1 under the tree lock (lock_live held): refusals, the plan, the
 * claim. 0, or a negative errno and *WHY. */
static int plan_locked(struct cfs_engine *e, const char *dom, const char *disk,
                       const struct cfs_ctl_cmd *cmd, bool partial,
                       struct rv_plan *p, const char **why, char **why_buf)
{
    const char *name = cmd->name;
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    if (e->tree->stale) {
        *why = "libvirt is unreachable (chainfs keeps reconnecting)";
        return -ENOTCONN;
    }
    if (!d) {
        *why = "no such domain";
        return -ENOENT;
    }
    if (disk && !cfs_domain_find_disk(d, disk)) {
        *why = "no such disk";
        return -ENOENT;
    }
    if (d->state != CFS_DOM_SHUTOFF) {
        *why = *why_buf = cfs_xasprintf(
            "the domain is %s; a revert needs it shut off (virsh shutdown, "
            "then revert)", state_words(d->state));
        return -EBUSY;
    }
    if (!d->persistent) {
        *why = "the domain is transient: it has no persistent definition to "
               "point at the reverted chain";
        return -EOPNOTSUPP;
    }
    if (!engine_files_local(e)) {
        *why = "the image files are not on this machine, and a revert creates "
               "and deletes files";
        return -EOPNOTSUPP;
    }
    /* the disks concerned: DISK, or every disk with NAME's layer */
    size_t cap = d->n_disks;
    p->disks = cfs_xcalloc(cap ? cap : 1, sizeof(*p->disks));
    for (size_t k = 0; k < cap; k++)
        p->disks[k].lock_fd = -1;
    struct cfs_buf later_buf = {0};
    int r = 0;
    for (size_t x = 0; x < d->n_disks && r == 0; x++) {
        struct cfs_disk *dk = &d->disks[x];
        if (disk && strcmp(dk->target, disk) != 0)
            continue;
        int i = cfs_disk_find_snapshot(dk, name);
        if (i < 0 || (size_t)i + 1 >= dk->n_layers)
            continue;
        struct cfs_disk_state *s = cfs_tree_find_disk_state(e->tree, dom, dk->target);
        if (dk->readonly || dk->shareable) {
            *why = *why_buf = cfs_xasprintf("disk %s is %s", dk->target,
                                            dk->readonly ? "read-only" : "shareable");
            r = -EROFS;
        } else if (s && cfs_job_phase_in_progress(s->job.phase)) {
            *why = *why_buf = cfs_xasprintf("disk %s has a job in progress (%s); "
                                            "wait for it", dk->target,
                                            cfs_job_type_to_string(s->job.type));
            r = -EBUSY;
        } else if (s && s->external.type != CFS_JOB_NONE) {
            *why = *why_buf = cfs_xasprintf("disk %s has a %s job chainfs did not "
                                            "start (external)", dk->target,
                                            cfs_job_type_to_string(s->external.type));
            r = -EBUSY;
        } else if (s && s->n_queue > 0) {
            *why = *why_buf = cfs_xasprintf("deletions are queued on disk %s (see "
                                            "its job); wait for them", dk->target);
            r = -EBUSY;
        } else if (!e->overlay_dir &&
                   (dk->layers[0].is_block ||
                    (dk->layers[0].path && strncmp(dk->layers[0].path, "/dev/", 5) == 0))) {
            *why = *why_buf = cfs_xasprintf(
                "disk %s's active layer is a block device (or in /dev), beside "
                "which no overlay is created; start chainfs with "
                "-o overlay_dir=DIR", dk->target);
            r = -EROFS;
        }
        if (r < 0)
            break;
        for (int l = 0; l < i && !cmd->force; l++)
            cfs_buf_printf(&later_buf, "%s%s/%s", later_buf.len ? ", " : "",
                           dk->target, dk->layers[l].name ? dk->layers[l].name
                                                          : dk->layers[l].path);
        /* readers of a file that goes */
        for (int l = 0; l <= i && r == 0; l++) {
            char *rw = NULL;
            if (reader_uses(e->tree, &dk->layers[l].id, dk->layers[l].path, &rw)) {
                *why = *why_buf = cfs_xasprintf("%s, which the revert discards, is "
                                                "read: %s", dk->layers[l].path, rw);
                free(rw);
                r = -EBUSY;
            }
        }
        if (r < 0)
            break;
        struct rv_disk *rd = &p->disks[p->n++];
        const struct cfs_layer *nl = &dk->layers[i], *fl = &dk->layers[i + 1];
        rd->target = cfs_xstrdup(dk->target);
        rd->active = cfs_xstrdup(dk->layers[0].path);
        cfs_file_id_copy(&rd->active_id, &dk->layers[0].id);
        rd->like = cfs_xstrdup(nl->path);
        rd->like_fmt = cfs_xstrdup(nl->format && *nl->format ? nl->format : "qcow2");
        /* the new overlay backs onto the frozen layer by an absolute name */
        rd->frozen = cfs_xstrdup(fl->path && fl->path[0] != '/' && fl->id.canonical
                                     ? fl->id.canonical : fl->path);
        rd->frozen_fmt = cfs_xstrdup(fl->format && *fl->format ? fl->format : "raw");
        rd->meta = cfs_xstrdup(nl->meta_name);
        for (int l = 0; l <= i; l++) {
            bool dup = false;
            for (size_t q = 0; q < p->n_leaving; q++)
                dup = dup || cfs_file_same(&p->leaving[q].id, p->leaving[q].path,
                                           &dk->layers[l].id, dk->layers[l].path);
            if (!dup) {
                p->leaving = cfs_xrealloc(p->leaving, (p->n_leaving + 1) * sizeof(*p->leaving));
                struct cfs_job_file *lf = &p->leaving[p->n_leaving++];
                *lf = (struct cfs_job_file){ cfs_xstrdup(dk->layers[l].path), {0} };
                cfs_file_id_copy(&lf->id, &dk->layers[l].id);
            }
            if (l < i && dk->layers[l].name &&
                !cfs_strv_contains(p->later, dk->layers[l].name)) {
                cfs_strv_push(&p->later, cfs_xstrdup(dk->layers[l].name));
                cfs_strv_push(&p->later_meta, cfs_xstrdup(dk->layers[l].meta_name
                                                              ? dk->layers[l].meta_name : ""));
            }
        }
    }
    _cleanup_free_ char *later = cfs_buf_steal(&later_buf);
    if (r < 0)
        return r;
    if (p->n == 0) {
        *why = *why_buf = disk ? cfs_xasprintf("disk %s has no snapshot %s", disk, name)
                               : cfs_xasprintf("no disk of the domain has a snapshot %s",
                                               name);
        return -ENOENT;
    }
    if (!disk && partial) {
        *why = *why_buf = cfs_xasprintf(
            "snapshot %s is partially merged: its point in time is gone on the "
            "disks merged already; revert a disk's snapshot in its own ctl", name);
        return -EINVAL;
    }
    if (*later) {
        *why = *why_buf = cfs_xasprintf(
            "%s is not the newest snapshot: later ones exist (%s); "
            "`revert %s force` discards them too", name, later, name);
        return -ENOTEMPTY;
    }
    /* the claim: a job of type revert on every disk concerned */
    char **targets = NULL;
    for (size_t k = 0; k < p->n; k++)
        cfs_strv_push(&targets, cfs_xstrdup(p->disks[k].target));
    for (size_t k = 0; k < p->n; k++) {
        struct rv_disk *rd = &p->disks[k];
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, rd->target);
        job_new_locked(e, s, CFS_JOB_REVERT);
        struct cfs_job *j = &s->job;
        cfs_strv_free(j->disks);
        j->disks = NULL;
        for (char **t = targets; *t; t++)
            cfs_strv_push(&j->disks, cfs_xstrdup(*t));
        j->snapshot = cfs_xstrdup(name);
        j->meta_name = cfs_xstrdup(rd->meta);
        j->top = cfs_xstrdup(rd->active);
        cfs_file_id_copy(&j->top_id, &rd->active_id);
        j->base = cfs_xstrdup(rd->frozen);
        j->started = now_s();
        for (char **l = p->later; l && *l; l++)
            cfs_strv_push(&j->snapshots, cfs_xstrdup(*l));
        rd->job_id = j->id;
        phase_step_locked(e, s, CFS_PHASE_STARTING);
    }
    cfs_strv_free(targets);
    return 0;
}

/* End every disk's job of P in ST (ERROR: why it failed). */
static void plan_end(struct cfs_engine *e, const struct rv_plan *p,
                     enum cfs_job_phase st, const char *error)
{
    for (size_t k = 0; k < p->n; k++)
        job_end(e, p->dom, p->disks[k].target, p->disks[k].job_id, st, error, false);
}

static void plan_phase(struct cfs_engine *e, const struct rv_plan *p,
                       enum cfs_job_phase to)
{
    for (size_t k = 0; k < p->n; k++)
        job_set_phase(e, p->dom, p->disks[k].target, p->disks[k].job_id, to);
}

/* The first free "<dom>.<disk>.<NAME>[.<N>].qcow2" in the directory of the
 * disk's overlays. NULL (and *WHY) if none of them is free. */
static char *new_overlay_path(struct cfs_engine *e, const char *dom,
                              const struct rv_disk *rd, const char *name,
                              char **why)
{
    _cleanup_free_ char *dir = NULL;
    if (e->overlay_dir) {
        dir = cfs_xstrdup(e->overlay_dir);
    } else {
        _cleanup_free_ char *tmp = cfs_xstrdup(rd->active);
        dir = cfs_xstrdup(dirname(tmp));
    }
    struct stat st;
    for (unsigned n = 1; n <= 100; n++) {
        _cleanup_free_ char *file = n == 1 ? cfs_overlay_filename(dom, rd->target, name)
                                           : cfs_overlay_filename_n(dom, rd->target, name, n);
        char *path = cfs_xasprintf("%s/%s", dir, file);
        if (lstat(path, &st) < 0 && errno == ENOENT)
            return path;
        free(path);
    }
    *why = cfs_xasprintf("no free overlay file name for %s in %s", rd->target, dir);
    return NULL;
}

int revert_ctl(struct cfs_engine *e, const char *dom, const char *disk,
               const struct cfs_ctl_cmd *cmd)
{
    const char *name = cmd->name;
    const char *why = NULL;
    _cleanup_free_ char *why_buf = NULL;
    _cleanup_free_ char *w = where(dom, disk);
    int r = check_reachable(e, dom, &why);
    if (r < 0)
        return rv_refuse(e, dom, disk, name, r, why);
    bool partial = !disk && partially_merged(e, dom, name);

    /* 1. the claim, on a fresh read */
    struct rv_plan p = { .dom = cfs_xstrdup(dom), .name = cfs_xstrdup(name),
                         .force = cmd->force, .domain_level = !disk };
    r = lock_live(e, dom);
    if (r < 0) {
        why = why_buf = cfs_xstrdup(r == -ENOENT ? "no such domain"
                                    : errmsg_or(strerror(-r)));
        plan_clear(&p);
        return rv_refuse(e, dom, disk, name, r, why);
    }
    r = plan_locked(e, dom, disk, cmd, partial, &p, &why, &why_buf);
    pthread_mutex_unlock(&e->tree->lock);
    if (r < 0) {
        plan_clear(&p);
        return rv_refuse(e, dom, disk, name, r, why);
    }
    p.created = now_s();

    /* 2. the locks, then the state again */
    _cleanup_free_ char *fail = NULL;
    for (size_t k = 0; k < p.n && !fail; k++) {
        char *lw = NULL;
        r = cfs_image_hold_writers(p.disks[k].active, &p.disks[k].lock_fd, &lw);
        if (r < 0) {
            fail = cfs_xasprintf("cannot keep QEMU out of %s: %s", p.disks[k].active,
                                 lw ? lw : strerror(-r));
            if (r == -EBUSY || r == -EAGAIN)
                r = -EBUSY;
        }
        free(lw);
    }
    if (!fail) {
        _cleanup_domain_ struct cfs_domain *now = NULL;
        r = e->be->ops->read_domain_light ? e->be->ops->read_domain_light(e->be, dom, &now)
                                          : e->be->ops->read_domain(e->be, dom, &now);
        if (r < 0) {
            fail = cfs_xasprintf("cannot read the domain again: %s", errmsg_or(strerror(-r)));
        } else if (now->state != CFS_DOM_SHUTOFF) {
            r = -EBUSY;
            fail = cfs_xasprintf("the domain is %s (it was started meanwhile); a "
                                 "revert needs it shut off", state_words(now->state));
        } else {
            for (size_t k = 0; k < p.n && !fail; k++) {
                const struct cfs_disk *dk = cfs_domain_find_disk(now, p.disks[k].target);
                if (!dk || dk->n_layers == 0 ||
                    !cfs_file_same(&dk->layers[0].id, dk->layers[0].path,
                                   &p.disks[k].active_id, p.disks[k].active)) {
                    r = -EBUSY;
                    fail = cfs_xasprintf("disk %s's chain changed meanwhile; try again",
                                         p.disks[k].target);
                }
            }
        }
    }
    /* which files leave, as they are now (the tree's read may not have
     * identified them): only these may be deleted */
    for (size_t q = 0; q < p.n_leaving && !fail; q++) {
        struct cfs_job_file *lf = &p.leaving[q];
        struct cfs_file_id now = {0};
        cfs_file_identify(&now, lf->path, true);
        if (lf->id.known && now.known &&
            (lf->id.dev != now.dev || lf->id.ino != now.ino)) {
            r = -EBUSY;
            fail = cfs_xasprintf("%s changed meanwhile; try again", lf->path);
        }
        cfs_file_id_clear(&lf->id);
        lf->id = now;
    }
    /* the definition's sources before, and the new overlays' names */
    for (size_t k = 0; k < p.n && !fail; k++) {
        struct rv_disk *rd = &p.disks[k];
        r = e->be->ops->persistent_source_get
                ? e->be->ops->persistent_source_get(e->be, dom, rd->target, &rd->old_source)
                : -EOPNOTSUPP;
        if (r < 0) {
            fail = cfs_xasprintf("cannot read the persistent definition of %s: %s",
                                 rd->target, errmsg_or(strerror(-r)));
        } else if (!rd->old_source) {
            r = -EOPNOTSUPP;
            fail = cfs_xasprintf("the persistent definition has no file source for "
                                 "%s (a transient domain?)", rd->target);
        } else {
            cfs_file_identify(&rd->old_id, rd->old_source, true);
            char *nw = NULL;
            rd->made = new_overlay_path(e, dom, rd, name, &nw);
            if (!rd->made) {
                r = -EEXIST;
                fail = nw;
            }
        }
    }
    if (fail) {
        _cleanup_free_ char *text = cfs_xasprintf("revert %s: %s", name, fail);
        log_warn("ctl %s: revert %s refused (%s): %s", w, name, strerror(-r), fail);
        plan_end(e, &p, CFS_PHASE_FAILED, text);
        plan_clear(&p);
        return r;
    }

    /* 3. the intent, the overlays, their identity */
    p.journal_id = cfs_journal_new_id(e->journal);
    if (plan_journal(e, &p, "prepare") < 0) {
        plan_end(e, &p, CFS_PHASE_FAILED, "revert: cannot write the journal");
        plan_clear(&p);
        return -EIO;
    }
    plan_phase(e, &p, CFS_PHASE_RUNNING);
    for (size_t k = 0; k < p.n && !fail; k++) {
        struct rv_disk *rd = &p.disks[k];
        r = e->be->ops->image_create
                ? e->be->ops->image_create(e->be, rd->made, rd->like, rd->like_fmt,
                                           rd->frozen, rd->frozen_fmt, &rd->made_id)
                : -EOPNOTSUPP;
        if (r < 0)
            fail = cfs_xasprintf("creating %s: %s", rd->made, errmsg_or(strerror(-r)));
    }
    if (!fail && plan_journal(e, &p, "prepare") < 0) {
        r = -EIO;
        fail = cfs_xstrdup("cannot write the journal");
    }
    if (!fail) {
        fault_point("prepare");
        /* 4. the commit point */
        if (plan_journal(e, &p, "switching") < 0) {
            r = -EIO;
            fail = cfs_xstrdup("cannot write the journal");
        }
    }
    if (!fail) {
        fault_point("switching");
        const char **ds = cfs_xcalloc(p.n, sizeof(*ds));
        const char **paths = cfs_xcalloc(p.n, sizeof(*paths));
        const char **fmts = cfs_xcalloc(p.n, sizeof(*fmts));
        for (size_t k = 0; k < p.n; k++) {
            ds[k] = p.disks[k].target;
            paths[k] = p.disks[k].made;
            fmts[k] = "qcow2";
        }
        r = e->be->ops->persistent_sources_set
                ? e->be->ops->persistent_sources_set(e->be, dom, p.n, ds, paths, fmts)
                : -EOPNOTSUPP;
        free(ds);
        free(paths);
        free(fmts);
        if (r < 0) {
            _cleanup_free_ char *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
            if (r == -ENOTCONN)
                conn_suspect(e, true);
            /* did it happen all the same (a lost answer)? the definition says */
            struct cfs_journal_entry en;
            plan_entry(&p, "switching", &en);
            _cleanup_free_ char *seen = NULL;
            enum def_state st = definition_state(e, dom, p.n, en.disks, en.made,
                                                 en.old_files, &seen);
            entry_arrays_free(&en);
            if (st == DEF_NEW) {
                log_warn("ctl %s: revert %s: the define reported an error (%s) but "
                         "the definition names the reverted chain; going on", w,
                         name, msg);
                r = 0;
            } else if (st == DEF_OLD) {
                fail = cfs_xasprintf("redefining the domain: %s", msg);
            } else {
                /* left to recovery, which decides from the definition */
                _cleanup_free_ char *text = cfs_xasprintf(
                    "revert %s: redefining the domain: %s; the definition could "
                    "not be told (%s): the journal entry is kept for recovery",
                    name, msg, seen);
                log_err("ctl %s: %s", w, text);
                plan_end(e, &p, CFS_PHASE_FAILED, text);
                plan_clear(&p);
                return r;
            }
        }
    }
    if (fail) {
        /* before the define: nothing of it in the definition; undo */
        _cleanup_free_ char *text = cfs_xasprintf("revert %s: %s", name, fail);
        log_warn("ctl %s: revert %s failed (%s): %s", w, name, strerror(-r), fail);
        struct cfs_journal_entry en;
        plan_entry(&p, "prepare", &en);
        delete_made(e, dom, name, en.made, en.n_made);
        entry_arrays_free(&en);
        journal_close(e, p.journal_id);
        plan_end(e, &p, CFS_PHASE_FAILED, text);
        plan_clear(&p);
        refresh_after_change(e, dom);
        return r;
    }
    fault_point("defined");
    plan_journal(e, &p, "switched");
    log_info("ctl %s: revert %s: the definition names the new overlays", w, name);
    fault_point("switched");

    /* 5. metadata */
    {
        struct cfs_journal_entry en;
        plan_entry(&p, "switched", &en);
        revert_metadata(e, dom, name, p.n, en.disks, en.layer_meta, en.made,
                        p.later_meta);
        entry_arrays_free(&en);
    }
    /* 6. clean-up */
    plan_phase(e, &p, CFS_PHASE_CLEANUP);
    plan_journal(e, &p, "cleanup");
    fault_point("cleanup");
    delete_leaving(e, dom, name, p.leaving, p.n_leaving);
    for (size_t k = 0; k < p.n; k++) {
        if (p.disks[k].lock_fd >= 0)
            close(p.disks[k].lock_fd);
        p.disks[k].lock_fd = -1;
    }
    journal_close(e, p.journal_id);
    plan_end(e, &p, CFS_PHASE_COMPLETED, NULL);
    refresh_after_change(e, dom);
    for (size_t k = 0; k < p.n; k++)
        log_info("ctl %s: revert %s done: %s now runs on %s (backing %s)%s", w, name,
                 p.disks[k].target, p.disks[k].made, p.disks[k].frozen,
                 p.later ? "; later snapshots discarded" : "");
    plan_clear(&p);
    return 0;
}
