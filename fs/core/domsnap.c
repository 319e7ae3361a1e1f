/* domsnap.c — part of the engine (see engine_int.h): the domain level of
 * issue 10 (docs/design/issue10.md §2): mkdir in <dom>/snapshots/, the
 * domain's ctl; and the quiesce every mkdir goes through. */
#include "engine_int.h"
#include "chainfs/snapdesc.h"

/* ---- <dom>/ctl (FUSE threads) ------------------------------------------------ */

int dom_ctl(struct cfs_engine *e, const char *dom, const struct cfs_ctl_cmd *cmd)
{
    pthread_mutex_lock(&e->tree->lock);
    bool have = cfs_tree_find_domain(e->tree, dom) != NULL;
    pthread_mutex_unlock(&e->tree->lock);
    /* pivot and abort act on the domain's job group (group.c) */
    int r = have ? group_ctl(e, dom, cmd) : -ENOSYS;
    if (r != -ENOSYS)
        return r;
    const char *why;
    if (!have) {
        r = -ENOENT;
        why = "no such domain";
    } else {
        /* every command parsed today is a disk's: its job, its settings */
        r = -EINVAL;
        why = "not a command of a domain's ctl (it acts on one disk: write "
              "it to <dom>/<disk>/ctl)";
    }
    log_warn("ctl %s: %s refused (%s): %s", dom, cfs_ctl_op_to_string(cmd->op),
             strerror(-r), why);
    return r;
}

/* ---- rmdir <dom>/snapshots/NAME ------------------------------------------------ */

int dom_rmdir(struct cfs_engine *e, const char *dom, const char *name)
{
    /* a job group: one merge per disk (group.c, design §3) */
    return cfs_engine_rmdir_domain(e, dom, name);
}

/* ---- quiesce (every mkdir, design §2.3, §2.4) ---------------------------------- */

/* How long the thaw-owed retry waits between attempts: every 5 s for the
 * first 10 minutes, then every minute, while the domain runs. */
#define THAW_RETRY_FAST_MS 5000
#define THAW_RETRY_SLOW_MS 60000
#define THAW_FAST_FOR_S 600

/* Set libvirt's agent response timeout of DOM (-o quiesce_timeout; 0:
 * leave it). A failure is logged only: the freeze still runs, bounded by
 * whatever libvirt has. */
static void agent_bound(struct cfs_engine *e, const char *dom)
{
    if (!e->quiesce_timeout)
        return;
    int r = e->be->ops->agent_set_timeout
                ? e->be->ops->agent_set_timeout(e->be, dom, (int)e->quiesce_timeout)
                : -EOPNOTSUPP;
    if (r < 0)
        log_warn("%s: cannot bound the guest agent's answer to %u s (%s): %s; "
                 "the freeze waits as long as libvirt lets it", dom,
                 e->quiesce_timeout, strerror(-r), errmsg_or(strerror(-r)));
}

static int agent_call(struct cfs_engine *e, const char *dom, bool thaw,
                      unsigned *n, char **msg)
{
    *n = 0;
    if (!e->be->ops->agent_fs) {
        *msg = cfs_xstrdup("this libvirt connection has no guest agent calls");
        return -EOPNOTSUPP;
    }
    int r = e->be->ops->agent_fs(e->be, dom, thaw, n);
    if (r < 0)
        *msg = cfs_xstrdup(errmsg_or(strerror(-r)));
    return r;
}

/* DOM owes a thaw since now (ERROR: why the last attempt failed, or why
 * none was made); the next attempt in THAW_RETRY_FAST_MS. JOURNAL_ID (may
 * be NULL): a snapshot entry in phase frozen, kept open until the thaw
 * (the owed thaw closes it). */
static void owe_thaw(struct cfs_engine *e, const char *dom, const char *error,
                     const char *journal_id)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_thaw_owed *o = cfs_tree_owe_thaw(e->tree, dom, now_s(), error);
    o->next_ms = now_ms() + THAW_RETRY_FAST_MS;
    if (journal_id && !cfs_strv_contains(o->journal_ids, journal_id))
        cfs_strv_push(&o->journal_ids, cfs_xstrdup(journal_id));
    pthread_cond_broadcast(&e->tree->changed);
    pthread_mutex_unlock(&e->tree->lock);
}

/* The owed thaw of DOM is over: close the journal entries it kept. */
static void thaw_dropped(struct cfs_engine *e, char **journal_ids)
{
    for (char **id = journal_ids; id && *id; id++)
        journal_close(e, *id);
    cfs_strv_free(journal_ids);
}

void owe_thaw_now(struct cfs_engine *e, const char *dom, const char *why,
                  const char *journal_id)
{
    owe_thaw(e, dom, why, journal_id);
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_thaw_owed *o = cfs_tree_find_thaw(e->tree, dom);
    if (o)
        o->next_ms = now_ms();
    pthread_mutex_unlock(&e->tree->lock);
}

void quiesce_clear(struct quiesce *q)
{
    free(q->reason);
    *q = (struct quiesce){ 0 };
}

int quiesce_freeze(struct cfs_engine *e, const char *dom,
                   enum cfs_dom_state state, const char *what,
                   const char *disk, struct cfs_job *intent,
                   struct quiesce *q, char **why)
{
    *q = (struct quiesce){ 0 };
    *why = NULL;
    if (e->quiesce == CFS_QUIESCE_OFF) {
        q->reason = cfs_xstrdup("-o quiesce=off");
        return 0;
    }
    if (state == CFS_DOM_SHUTOFF) {
        /* nothing runs: the disks are as consistent as they get */
        q->reason = cfs_xstrdup("domain shut off");
        return 0;
    }
    if (state != CFS_DOM_RUNNING) {
        /* a paused guest cannot answer: not asked (no wait for nothing) */
        q->reason = cfs_xasprintf("domain %s", state == CFS_DOM_PAUSED
                                                   ? "paused" : "not running");
        if (e->quiesce == CFS_QUIESCE_REQUIRE) {
            *why = cfs_xasprintf("-o quiesce=require: the %s cannot freeze its "
                                 "filesystems", q->reason);
            return -EOPNOTSUPP;
        }
        log_warn("%s: not quiesced (crash-consistent): %s", what, q->reason);
        return 0;
    }

    agent_bound(e, dom);
    /* the journal says so before the call: a daemon that dies between
     * freeze and thaw leaves a guest frozen, and recovery thaws it */
    if (intent && journal_record(e, dom, disk, intent, "frozen") < 0) {
        q->reason = cfs_xstrdup("the journal could not be written before the freeze");
        if (e->quiesce == CFS_QUIESCE_REQUIRE) {
            *why = cfs_xasprintf("-o quiesce=require: %s", q->reason);
            return -EIO;
        }
        log_warn("%s: not quiesced (crash-consistent): %s", what, q->reason);
        return 0;
    }
    int64_t t0 = now_ms();
    _cleanup_free_ char *msg = NULL;
    unsigned n;
    int r = agent_call(e, dom, false, &n, &msg);
    if (r >= 0) {
        q->quiesced = true;
        q->frozen = true;
        q->filesystems = n;
        log_info("%s: guest agent froze %u filesystem%s (%lld ms)", what, n,
                 n == 1 ? "" : "s", (long long)(now_ms() - t0));
        return 0;
    }
    if (r == -ETIMEDOUT) {
        /* the guest may still freeze later (qemu-ga is serial): thaw it
         * then, in the background; no thaw now (it would wait as long) */
        if (e->quiesce_timeout)
            q->reason = cfs_xasprintf("the guest agent did not answer within %u s (%s)",
                                      e->quiesce_timeout, msg);
        else
            q->reason = cfs_xasprintf("the guest agent did not answer (%s)", msg);
        q->owed = true;
    } else if (r == -EOPNOTSUPP && strstr(msg, "not configured")) {
        q->reason = cfs_xasprintf("no guest agent channel (%s)", msg);
    } else {
        q->reason = cfs_xstrdup(msg);
    }
    if (q->owed)
        owe_thaw(e, dom, q->reason, intent ? intent->journal_id : NULL);
    else if (intent)
        /* nothing frozen, nothing to thaw after a crash */
        journal_record(e, dom, disk, intent, "starting");
    if (e->quiesce == CFS_QUIESCE_REQUIRE) {
        *why = cfs_xasprintf("-o quiesce=require: %s", q->reason);
        return r == -ETIMEDOUT || r == -EOPNOTSUPP ? r
               : r == -EINVAL ? -EOPNOTSUPP : -EIO;
    }
    log_warn("%s: not quiesced (crash-consistent): %s", what, q->reason);
    return 0;
}

void quiesce_thaw(struct cfs_engine *e, const char *dom, const char *what,
                  const char *journal_id, struct quiesce *q)
{
    if (!q->frozen)
        return;
    q->frozen = false;
    _cleanup_free_ char *msg = NULL;
    unsigned n;
    int64_t t0 = now_ms();
    int r = agent_call(e, dom, true, &n, &msg);
    if (r >= 0) {
        log_info("%s: guest agent thawed %u filesystem%s (%lld ms)", what, n,
                 n == 1 ? "" : "s", (long long)(now_ms() - t0));
        return;
    }
    log_warn("%s: the thaw failed (%s): %s; chainfs retries it in the "
             "background (see %s/job)", what, strerror(-r), msg, dom);
    q->owed = true;
    owe_thaw(e, dom, msg, journal_id);
}

/* ---- the thaw-owed retry (engine thread asks, the domain's worker calls) ----- */

void thaw_poll(struct cfs_engine *e, bool now)
{
    _cleanup_strv_ char **due = NULL;
    int64_t t = now_ms();
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < e->tree->n_thaws; i++) {
        struct cfs_thaw_owed *o = &e->tree->thaws[i];
        if (o->queued || (!now && o->next_ms > t))
            continue;
        o->queued = true;
        cfs_strv_push(&due, cfs_xstrdup(o->dom));
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (char **d = due; d && *d; d++)
        route(e, work_new(WORK_THAW, *d, NULL));
}

void thaw_retry(struct cfs_engine *e, const char *dom)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_thaw_owed *o = cfs_tree_find_thaw(e->tree, dom);
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    bool stopped = !d || d->state == CFS_DOM_SHUTOFF;
    char **ids = NULL;
    if (o && stopped)
        cfs_tree_drop_thaw(e->tree, dom, &ids);
    if (o && !stopped)
        o->queued = false;
    pthread_mutex_unlock(&e->tree->lock);
    if (!o)
        return;
    if (stopped) {
        log_info("%s: the domain stopped: its owed thaw is void", dom);
        thaw_dropped(e, ids);
        return;
    }
    agent_bound(e, dom);
    _cleanup_free_ char *msg = NULL;
    unsigned n;
    int r = agent_call(e, dom, true, &n, &msg);
    pthread_mutex_lock(&e->tree->lock);
    o = cfs_tree_find_thaw(e->tree, dom);
    if (!o) {
        pthread_mutex_unlock(&e->tree->lock);
        return;
    }
    /* done; or void: the domain is not running or gone, or it has no
     * agent channel at all (nothing can have frozen it through one) */
    bool no_channel = r == -EOPNOTSUPP && msg && strstr(msg, "not configured");
    if (r >= 0 || r == -EINVAL || r == -ENOENT || no_channel) {
        unsigned attempts = o->attempts + 1;
        cfs_tree_drop_thaw(e->tree, dom, &ids);
        pthread_cond_broadcast(&e->tree->changed);
        pthread_mutex_unlock(&e->tree->lock);
        thaw_dropped(e, ids);
        if (r >= 0)
            log_info("%s: owed thaw done: the guest agent thawed %u filesystem%s "
                     "(attempt %u)", dom, n, n == 1 ? "" : "s", attempts);
        else
            log_info("%s: owed thaw dropped: %s", dom, msg);
        return;
    }
    bool same = cfs_streq(o->error, msg);
    o->attempts++;
    free(o->error);
    o->error = cfs_xstrdup(msg);
    bool slow = now_s() - o->since >= THAW_FAST_FOR_S;
    o->next_ms = now_ms() + (slow ? THAW_RETRY_SLOW_MS : THAW_RETRY_FAST_MS);
    unsigned attempts = o->attempts;
    e->tree->generation++;
    pthread_mutex_unlock(&e->tree->lock);
    /* one line per kind of failure, not one every 5 s */
    if (!same || attempts == 1)
        log_warn("%s: owed thaw failed (%s): %s; retrying every %d s", dom,
                 strerror(-r), msg, (slow ? THAW_RETRY_SLOW_MS : THAW_RETRY_FAST_MS) / 1000);
}

/* ---- one snapshot of N disks, quiesced --------------------------------------- */

/* Record in the tree (until the next re-read brings libvirt's own) that
 * DOM has snapshot NAME of DISKS[0..N) with DESCRIPTION: `info` shows
 * how it was taken from the moment mkdir returns. Caller holds the lock. */
static void tree_note_snap(struct cfs_tree *t, const char *dom, const char *name,
                           const char *description,
                           const struct cfs_snapshot_disk *disks, size_t n)
{
    struct cfs_domain *d = cfs_tree_find_domain(t, dom);
    if (!d || cfs_domain_find_snap(d, name))
        return;
    /* libvirt makes a new snapshot its current one */
    for (size_t i = 0; i < d->n_snaps; i++)
        d->snaps[i].current = false;
    d->snaps = cfs_xrealloc(d->snaps, (d->n_snaps + 1) * sizeof(*d->snaps));
    struct cfs_snap_info *si = &d->snaps[d->n_snaps++];
    *si = (struct cfs_snap_info){ .name = cfs_xstrdup(name),
                                  .description = cfs_xstrdup(description),
                                  .created = now_s(), .current = true };
    si->disks = cfs_xcalloc(n ? n : 1, sizeof(*si->disks));
    si->n_disks = n;
    for (size_t i = 0; i < n; i++) {
        si->disks[i].target = cfs_xstrdup(disks[i].disk);
        si->disks[i].snapshot = cfs_xstrdup("external");
        si->disks[i].source = cfs_xstrdup(disks[i].overlay);
    }
    if (!cfs_strv_contains(d->snapshots, name))
        cfs_strv_push(&d->snapshots, cfs_xstrdup(name));
    t->generation++;
}

int snapshot_quiesced(struct cfs_engine *e, const struct snap_take *tk,
                      struct cfs_job *intent, char **msg)
{
    *msg = NULL;
    struct quiesce q;
    _cleanup_free_ char *why = NULL;
    int r = quiesce_freeze(e, tk->dom, tk->state, tk->what, tk->disks[0].disk,
                           intent, &q, &why);
    if (r < 0) {
        *msg = TAKE_PTR(why);
        if (q.owed && intent) {
            /* the entry (phase frozen) is the owed thaw's now */
            free(intent->journal_id);
            intent->journal_id = NULL;
        }
        quiesce_clear(&q);
        return r;
    }

    /* the line in libvirt's <description>: how it was taken */
    _cleanup_strv_ char **taken = NULL;
    for (size_t i = 0; i < tk->n; i++)
        cfs_strv_push(&taken, cfs_xstrdup(tk->disks[i].disk));
    struct cfs_snapdesc desc = {
        .scope = tk->scope, .quiesced = q.quiesced ? 1 : 0,
        .filesystems = q.filesystems, .reason = q.reason, .disks = taken,
        .n_excluded = tk->n_excluded, .excluded = tk->excluded,
    };
    _cleanup_free_ char *line = cfs_snapdesc_format(&desc);

    int64_t t0 = now_ms();
    if (e->be->ops->snapshot_create_multi)
        r = e->be->ops->snapshot_create_multi(e->be, tk->dom, tk->name, tk->n,
                                              tk->disks, line);
    else if (tk->n == 1)
        r = e->be->ops->snapshot_create(e->be, tk->dom, tk->disks[0].disk,
                                        tk->name, tk->disks[0].overlay);
    else
        r = -EOPNOTSUPP;
    if (r < 0)
        *msg = cfs_xstrdup(e->be->ops->snapshot_create_multi || tk->n == 1
                               ? errmsg_or(strerror(-r))
                               : "this backend takes no snapshot of several disks at once");
    int64_t took = now_ms() - t0;

    /* thaw in every path where chainfs froze */
    quiesce_thaw(e, tk->dom, tk->what, intent ? intent->journal_id : NULL, &q);
    if (q.owed && intent) {
        /* a thaw is owed: its entry (phase frozen) stays open until it is
         * done, so a restart meanwhile thaws (the caller closes nothing) */
        free(intent->journal_id);
        intent->journal_id = NULL;
    }
    if (r == 0) {
        log_info("%s: %s (%s; snapshot call %lld ms)", tk->what, line,
                 q.quiesced ? "quiesced" : "crash-consistent", (long long)took);
        pthread_mutex_lock(&e->tree->lock);
        tree_note_snap(e->tree, tk->dom, tk->name, line, tk->disks, tk->n);
        pthread_mutex_unlock(&e->tree->lock);
    }
    quiesce_clear(&q);
    return r;
}

/* ---- mkdir <dom>/snapshots/NAME (design §2.3) -------------------------------- */

/* Log a refused or failed domain-level mkdir; 0-free: returns ERR. */
static int dom_refuse(struct cfs_engine *e, const char *dom, const char *name,
                      const char *verb, int err, const char *why)
{
    log_warn("mkdir %s/snapshots/%s %s (%s): %s", dom, name, verb, strerror(-err),
             why);
    if (err == -ENOTCONN)
        conn_suspect(e, true);
    return err;
}

/* Why disk DK of the domain can have no snapshot, or NULL if it can:
 * read-only, shareable, no source, or a note of the backend (a lun). */
static const char *unsnappable_why(const struct cfs_domain *d,
                                   const struct cfs_disk *dk)
{
    for (size_t i = 0; i < d->n_unsnappable; i++)
        if (cfs_streq(d->unsnappable[i].target, dk->target))
            return d->unsnappable[i].why ? d->unsnappable[i].why : "unsnappable";
    if (dk->readonly)
        return "read-only";
    if (dk->shareable)
        return "shareable";
    if (dk->n_layers == 0)
        return "no source";
    return NULL;
}

struct picked {
    char *disk;
    uint64_t id;                 /* its claim: the disk's job */
    struct cfs_layer active;     /* the layer the overlay goes above */
    char *overlay;
};

static void excluded_free(struct cfs_disk_note *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(x[i].target);
        free(x[i].why);
    }
    free(x);
}

int dom_mkdir(struct cfs_engine *e, const char *dom, const char *name)
{
    int r = cfs_name_validate(name);
    if (r < 0)
        return dom_refuse(e, dom, name, "refused", r,
                          r == -ENAMETOOLONG
                              ? "name longer than 255 bytes"
                              : "a snapshot name is 1 to 64 characters of "
                                "[A-Za-z0-9._-] and does not start with '.' or '-'");
    const char *unreachable = NULL;
    r = check_reachable(e, dom, &unreachable);
    if (r < 0)
        return dom_refuse(e, dom, name, "refused", r, unreachable);

    _cleanup_free_ char *what = cfs_xasprintf("mkdir %s/snapshots/%s", dom, name);
    _cleanup_free_ char *why_buf = NULL;
    const char *why = NULL;
    r = lock_live(e, dom);
    if (r < 0) {
        why_buf = r == -ENOENT ? cfs_xstrdup("no such domain")
                  : cfs_xasprintf("cannot read the domain from libvirt: %s",
                                  errmsg_or(strerror(-r)));
        return dom_refuse(e, dom, name, "refused", r, why_buf);
    }

    /* on this read of the live domain: pick the disks, check them all,
     * then claim them all (a concurrent mkdir or rmdir on any of them
     * gets EBUSY), or none */
    struct cfs_domain *d = cfs_tree_find_domain(e->tree, dom);
    size_t n = 0, n_excluded = 0;
    struct picked *pk = cfs_xcalloc(d->n_disks + 1, sizeof(*pk));
    struct cfs_disk_note *excluded =
        cfs_xcalloc(d->n_disks + d->n_unsnappable + 1, sizeof(*excluded));
    enum cfs_dom_state state = d->state;
    if (e->tree->stale) {
        r = -ENOTCONN;
        why = "libvirt is unreachable (chainfs keeps reconnecting)";
    } else if (cfs_strv_contains(d->snapshots, name)) {
        r = -EEXIST;
        why = "the domain already has a snapshot of that name (libvirt's metadata)";
    }
    for (size_t i = 0; r == 0 && i < d->n_disks; i++) {
        const struct cfs_disk *dk = &d->disks[i];
        if (cfs_disk_find_snapshot(dk, name) >= 0) {
            r = -EEXIST;
            why = why_buf = cfs_xasprintf("disk %s already has a snapshot of that name",
                                          dk->target);
            break;
        }
        const char *no = unsnappable_why(d, dk);
        if (no) {
            excluded[n_excluded].target = cfs_xstrdup(dk->target);
            excluded[n_excluded++].why = cfs_xstrdup(no);
            continue;
        }
        pk[n++].disk = cfs_xstrdup(dk->target);
    }
    /* the disks the backend leaves out of disks[] (cdroms, network) */
    for (size_t i = 0; r == 0 && i < d->n_unsnappable; i++) {
        if (cfs_domain_find_disk(d, d->unsnappable[i].target))
            continue;
        excluded[n_excluded].target = cfs_xstrdup(d->unsnappable[i].target);
        excluded[n_excluded++].why = cfs_xstrdup(d->unsnappable[i].why);
    }
    if (r == 0 && n == 0) {
        r = -EROFS;
        why = why_buf = cfs_xasprintf("no disk of %s can have a snapshot", dom);
    }
    /* every disk as a disk-level mkdir checks it; any refusal refuses
     * the whole mkdir */
    for (size_t i = 0; r == 0 && i < n; i++) {
        _cleanup_free_ char *dwhy_buf = NULL;
        const char *dwhy = NULL;
        r = mkdir_disk_refusal(e, dom, pk[i].disk, &dwhy, &dwhy_buf);
        if (r < 0) {
            free(why_buf);
            why = why_buf = cfs_xasprintf("disk %s: %s", pk[i].disk, dwhy);
        }
    }
    for (size_t i = 0; r == 0 && i < n; i++) {
        struct cfs_disk *dk = cfs_domain_find_disk(d, pk[i].disk);
        struct cfs_disk_state *s = cfs_tree_disk_state(e->tree, dom, pk[i].disk);
        job_new_locked(e, s, CFS_JOB_SNAPSHOT);
        s->job.snapshot = cfs_xstrdup(name);
        s->job.base = cfs_xstrdup(dk->layers[0].path);
        s->job.started = now_s();
        pk[i].id = s->job.id;
        pk[i].active.path = cfs_xstrdup(dk->layers[0].path);
        cfs_file_id_copy(&pk[i].active.id, &dk->layers[0].id);
        phase_step_locked(e, s, CFS_PHASE_STARTING);
    }
    pthread_mutex_unlock(&e->tree->lock);

    /* (every variable with a clean-up is declared before the first goto) */
    _cleanup_free_ char *msg = NULL;
    _cleanup_buf_ struct cfs_buf list = { 0 };
    if (r < 0) {
        dom_refuse(e, dom, name, "refused", r, why);
        goto out;
    }

    /* the overlays, then the intent, durably, before any chain changes */
    struct cfs_snapshot_disk *sd = cfs_xcalloc(n, sizeof(*sd));
    struct cfs_job intent = { .type = CFS_JOB_SNAPSHOT, .snapshot = (char *)name,
                              .started = now_s() };
    for (size_t i = 0; r == 0 && i < n; i++) {
        r = overlay_pick(e, dom, pk[i].disk, name, pk[i].active.path,
                         &pk[i].overlay, &msg);
        if (r < 0) {
            char *m = cfs_xasprintf("disk %s: %s", pk[i].disk, msg);
            free(msg);
            msg = m;
        }
        sd[i] = (struct cfs_snapshot_disk){ .disk = pk[i].disk, .overlay = pk[i].overlay };
    }
    if (r == 0) {
        intent.top = pk[0].overlay;
        intent.base = pk[0].active.path;
        intent.made = cfs_xcalloc(n, sizeof(*intent.made));
        intent.n_made = n;
        for (size_t i = 0; i < n; i++) {
            cfs_strv_push(&intent.disks, cfs_xstrdup(pk[i].disk));
            intent.made[i].path = pk[i].overlay; /* borrowed */
        }
        intent.journal_id = cfs_journal_new_id(e->journal);
        r = journal_record(e, dom, pk[0].disk, &intent, "starting");
        if (r < 0) {
            msg = cfs_xasprintf("cannot write the journal in %s: %s", e->state_dir,
                                strerror(-r));
            r = -EIO;
        } else {
            const struct snap_take tk = {
                .dom = dom, .name = name, .what = what, .state = state,
                .scope = CFS_SCOPE_DOMAIN, .n = n, .disks = sd,
                .n_excluded = n_excluded, .excluded = excluded,
            };
            r = snapshot_quiesced(e, &tk, &intent, &msg);
            /* the entry is closed on the engine thread (a crash before
             * then is harmless: recovery looks at the chains) */
            struct work *w = cfs_xcalloc(1, sizeof(*w));
            w->kind = WORK_JOURNAL_CLOSE;
            w->errmsg = TAKE_PTR(intent.journal_id);
            queue_push(e, w);
        }
        free(intent.journal_id);
        cfs_strv_free(intent.disks);
        free(intent.made);
    }
    free(sd);

    if (r < 0) {
        if (r == -ENOTCONN)
            conn_suspect(e, true);
        dom_refuse(e, dom, name, "failed", r, msg);
        _cleanup_free_ char *text = cfs_xasprintf("mkdir %s (domain): %s", name, msg);
        for (size_t i = 0; i < n; i++)
            job_end(e, dom, pk[i].disk, pk[i].id, CFS_PHASE_FAILED, text, false);
        goto out;
    }

    /* every overlay is its disk's active layer: show them now, the full
     * re-read follows in the background (as a disk-level mkdir) */
    bool local = engine_files_local(e);
    bool all = true;
    pthread_mutex_lock(&e->tree->lock);
    (*dom_seq_slot(e, dom))++;
    for (size_t i = 0; i < n; i++)
        all = tree_push_overlay(e->tree, dom, pk[i].disk, &pk[i].active,
                                pk[i].overlay, name, local) && all;
    pthread_mutex_unlock(&e->tree->lock);
    if (all)
        on_domain_changed(e, dom);
    else
        refresh_after_change(e, dom);
    pthread_mutex_lock(&e->tree->lock);
    for (size_t i = 0; i < n; i++) {
        struct cfs_disk_state *s = job_mine(e, dom, pk[i].disk, pk[i].id);
        if (s) {
            free(s->job.top);
            s->job.top = cfs_xstrdup(pk[i].overlay);
            s->job.finished = now_s();
            phase_step_locked(e, s, CFS_PHASE_COMPLETED);
        }
    }
    pthread_mutex_unlock(&e->tree->lock);
    for (size_t i = 0; i < n; i++)
        cfs_buf_printf(&list, "%s%s %s", i ? ", " : "", pk[i].disk, pk[i].overlay);
    log_info("%s: new active layers %s", what, list.data ? list.data : "-");
out:
    for (size_t i = 0; i < n; i++) {
        free(pk[i].disk);
        cfs_layer_clear(&pk[i].active);
        free(pk[i].overlay);
    }
    free(pk);
    excluded_free(excluded, n_excluded);
    return r;
}

bool thaw_keeps(struct cfs_engine *e, const char *dom, const char *journal_id)
{
    pthread_mutex_lock(&e->tree->lock);
    struct cfs_thaw_owed *o = cfs_tree_find_thaw(e->tree, dom);
    bool kept = o && cfs_strv_contains(o->journal_ids, journal_id);
    pthread_mutex_unlock(&e->tree->lock);
    return kept;
}
