/* engine_int.h — what the parts of the engine share (engine.c: queue,
 * workers, reads of libvirt, life cycle; job.c: following a job to its
 * end; recover.c: taking up the journal; read.c: the read side;
 * actions.c: mkdir and rmdir). Never included outside fs/core. */
#pragma once
#include "chainfs/engine.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "chainfs/journal.h"
#include "chainfs/log.h"
#include "chainfs/metrics.h"
#include "chainfs/names.h"
#include "chainfs/render.h"
#include "chainfs/strmap.h"

/* Free space below which mkdir says ENOSPC before asking libvirt: a new
 * qcow2 overlay needs its header, L1 table and refcount blocks. */
#define OVERLAY_MIN_FREE (4u << 20)
/* How long a vanished job may leave TOP in the chain before it counts as
 * failed (libvirt updates the XML shortly after the pivot). */
#define VANISH_GRACE_MS 5000
#define PIVOT_MAX_FAILURES 5
/* A domain whose libvirt call has not returned after this long is shown
 * as not responding (a stopped QEMU: libvirt gives up after 30 s). */
#define NOT_RESPONDING_MS 10000
/* Start-up reads every domain without statistics first (that never waits
 * for a QEMU; at most STARTUP_LIGHT_WAIT_MS in all), then in full. It
 * waits for the full reads at most STARTUP_READ_WAIT_MS, and for the
 * slowest one at most STARTUP_SLOW_FACTOR times as long as the others
 * took (at least STARTUP_SLOW_MIN_MS); a domain not read in full by then
 * shows sizes from stat() until its read comes in. */
#define STARTUP_LIGHT_WAIT_MS 10000
#define STARTUP_READ_WAIT_MS 2000
#define STARTUP_SLOW_FACTOR 3
#define STARTUP_SLOW_MIN_MS 250
/* mkdir and rmdir ask libvirt first, and refuse with ENOTCONN if it does
 * not answer within this long: the kernel holds snapshots/ locked while
 * they run, and a stopped libvirtd is only noticed by the keepalive (15 s
 * and more). */
#define LIBVIRT_ANSWER_MS 2000
/* The engine thread looks at the workers at least this often. */
#define ENGINE_TICK_MS 500
/* How often the timer's re-reads of a running domain (every refresh_ms)
 * also ask libvirt about each disk's block job, looking for one chainfs
 * did not start (a pull sends no event until it ends): one job info call
 * per disk. A disk where one is shown is asked on every re-read (and
 * poll), and a re-read after a domain event always looks. Detection takes
 * at most this plus refresh_ms; external_job.sh waits 20 s for it. */
#define EXTERNAL_SCAN_MS 8000
/* A domain worker with nothing to do for this long ends. */
#define WORKER_IDLE_MS 30000
/* At shut-down, workers get this long to finish the call they are in;
 * one stuck in libvirt after that is left behind (the process exits). */
#define WORKER_STOP_WAIT_MS 300
/* At shut-down, how long the engine thread may take to end. */
#define ENGINE_JOIN_WAIT_S 2

enum work_kind {
    WORK_REFRESH_DOMAIN,
    WORK_REFRESH_ALL,
    WORK_JOB_EVENT,
    WORK_OFFLINE_DONE,
    WORK_CONNECTION,
    WORK_JOURNAL_CLOSE,  /* errmsg holds the entry id */
    WORK_POLL_JOB,       /* one poll of the live job of dom/disk */
    WORK_RECOVER,        /* the libvirt half of recovering job_id of dom/disk */
    WORK_READ_LIGHT,     /* a read without statistics (start-up) */
    WORK_REAPPLY,        /* set job_id's journaled bandwidth again (reconnect) */
    WORK_DISPATCH,       /* start the next run of dom/disk's queued rmdirs */
    WORK_THAW,           /* issue 10: one attempt at dom's owed thaw */
    WORK_EXTERNAL_SCAN,  /* issue 12: the timer's look for a block job
                            chainfs did not start, without a re-read */
};

struct work {
    enum work_kind kind;
    char *dom;
    char *disk;
    enum cfs_job_type type;
    enum cfs_job_event status;
    int err;
    char *errmsg;
    bool up;
    uint64_t job_id;
    bool periodic;            /* REFRESH_DOMAIN: the timer's re-read, not
                                 an event's (external_scan throttles it) */
    struct work *next;
};

/* The work queue of one domain (issue 12 §2.2: a bounded pool of
 * threads serves them, not one thread per domain). Every call that may
 * wait for the domain's QEMU (statistics, job info, pivot, clean-up)
 * runs from here, one at a time per domain (in order), so a stuck QEMU
 * holds up its own domain and one pool thread; the pool grows by one
 * for each thread held that long (up to POOL_MAX). Exists while it has
 * work or a thread is on it. Fields under e->qlock. */
struct dom_worker {
    char *dom;
    struct work *head;         /* events' and jobs' work before the timer's */
    bool running;              /* a pool thread is on its head item */
    int ready;                 /* 0: in no ready list; 1: urgent; 2: periodic */
    struct dom_worker *rprev, *rnext; /* in its ready list */
};

/* A thread of the pool. Fields under e->qlock. */
struct pool_thread {
    pthread_t thread;
    struct cfs_engine *e;
    struct dom_worker *on;     /* the domain it works for, or NULL */
    int64_t busy_since_ms;     /* in a work item since; 0: idle */
    bool exited;               /* the thread has returned (join it) */
    struct pool_thread *next;
};

/* The pool: POOL_MIN threads, one more for each held by one call for
 * POOL_STUCK_MS (a stuck QEMU), at most POOL_MAX; a thread beyond
 * POOL_MIN idle for WORKER_IDLE_MS ends. */
#define POOL_MIN 8
#define POOL_MAX 32
#define POOL_STUCK_MS 1000

/* An offline merge's thread: joined by the engine thread once done, or
 * at free. Fields under e->qlock. */
struct offline_thread {
    pthread_t thread;
    bool done;                /* the thread is about to return */
    /* a `copy DEST chain` filling its frozen copies (copy.c): which job,
     * and its stop flag (job_fail, abort, shut-down) */
    char *dom, *disk;
    uint64_t job_id;
    volatile int cancel;
    struct offline_thread *next;
};

struct cfs_engine {
    char *host;               /* issue 12: cfg.host ("" with one host); every
                                 thread of the engine logs under it */
    bool start_disconnected;  /* cfg.start_disconnected */
    char *overlay_dir;
    char *state_dir;
    bool keep_merged;
    uint64_t commit_bandwidth; /* bytes/s every merge starts with, 0 = unlimited */
    enum cfs_live_pull live_pull;
    enum cfs_quiesce quiesce;  /* -o quiesce (issue 10) */
    unsigned quiesce_timeout;  /* -o quiesce_timeout, s; 0: libvirt's own */
    /* Why a running domain's merge may not pull (-o live_pull and the
     * QEMU version, decided at start), NULL if it may. */
    char *no_live_pull;
    /* Domains the journal has a live pull of, read at start: quiet (no
     * block statistics) from the first read on, before recovery puts
     * their jobs in the tree (design §7.4). Freed once recovered. */
    char **startup_pull_doms;
    unsigned refresh_ms;
    unsigned poll_ms;

    struct cfs_backend *be;
    struct cfs_journal *journal;
    int lock_fd;              /* flock on STATE_DIR/lock: one daemon per state_dir */
    struct cfs_tree *tree;
    /* Per domain name, a struct dom_info (below); tree lock. Dropped
     * when libvirt no longer lists the domain and the tree keeps nothing
     * of it (issue 12 §2.4). */
    struct cfs_strmap *dom_info;
    unsigned long seq_fresh;  /* the counter a new dom_info starts at */
    unsigned audit_ms;        /* -o audit (issue 12 §2.2) */
    size_t last_listed;       /* domains of the last bulk listing */
    unsigned rounds_since_trim; /* refreshes since the last malloc_trim */
    uint64_t last_job_id;     /* tree lock */
    /* What `stale` stands for (tree lock): the backend said the connection
     * is down, or a call found libvirt not answering / the connection
     * dead before the backend noticed; cleared by the connection coming
     * back and by a listing that worked. */
    bool conn_down;
    bool conn_suspect;
    bool recovered;           /* the journal was taken up at start: a job
                                 libvirt has now may count as external */
    /* issue 11: the jobs counted for .chainfs/metrics.prom (tree lock;
     * job_edge_locked counts) */
    struct cfs_metrics metrics;

    /* STATE_DIR/settings: held while settings_save() builds the file
     * (taking t->lock inside) and writes it, so one writer at a time uses
     * .settings.tmp and the last rename carries the latest settings.
     * Taken before t->lock, never with it held. */
    pthread_mutex_t settings_lock;

    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    struct work *qhead, *qtail;
    bool stopping;
    bool thread_started;
    bool threaded;            /* per-domain work goes to domain workers */
    pthread_t thread;
    struct offline_thread *offline; /* offline merge threads not yet
                                       joined; guarded by qlock */
    /* issue 12: the domain queues (name -> struct dom_worker), the
     * ready ones (urgent: an event's or job's work at the head; then
     * the timer's), the pool threads; all under qlock */
    struct cfs_strmap *workers;
    struct dom_worker *ready_head[2], *ready_tail[2];
    size_t n_ready;            /* domains in the ready lists */
    struct pool_thread *pool;
    size_t n_pool, n_idle;
    pthread_cond_t pool_cond;  /* work is ready, or stopping */

    /* issue 9: disk.raw (readers.c). srv_lock is a leaf lock (never
     * held while taking the tree lock or calling the image server); the
     * servers list and each server's refs and state are under it. */
    struct cfs_imgserve *imgserve;
    pthread_mutex_t srv_lock;
    pthread_cond_t srv_cond;
    struct served *served;
    uint64_t last_reader_id;  /* tree lock */

    void (*invalidate)(void *opaque, const char *path);
    void *invalidate_opaque;
    int64_t last_refresh_ms;
    int64_t last_poll_ms;
};


/* What the engine keeps per domain name (e->dom_info). */
struct dom_info {
    /* Change counter. A read of a domain is installed only if it did not
     * move while the read was under way. A new entry starts where no
     * entry ever was (seq_fresh), so a read begun before the domain was
     * forgotten never matches. */
    unsigned long seq;
    int64_t external_scan_ms; /* external_scan's last full look */
    /* Issue 12 §2.2: the bulk statistics' fingerprint when last looked
     * at (valid: have_fp), and when the domain was last read in full. */
    uint64_t fingerprint;
    bool have_fp;
    int64_t last_full_ms;
};
struct dom_info *dom_info_get(struct cfs_engine *e, const char *name);
/* DOM left libvirt's listing and the tree (caller holds the tree lock):
 * drop what the engine and the tree keep of it, unless a job of
 * chainfs still holds some. */
void forget_domain(struct cfs_engine *e, const char *name);

static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t now_s(void) { return (int64_t)time(NULL); }

static inline const char *errmsg_or(const char *fallback)
{
    const char *m = cfs_backend_errmsg();
    return m && *m ? m : fallback;
}

/* A file as a job or a layer names it. */
struct file_ref {
    const struct cfs_file_id *id;
    const char *path;
};

enum finish_result {
    FINISH_DONE,         /* cleaned up, or not (any more) this job's to do */
    FINISH_TOP_IN_CHAIN, /* TOP is still in libvirt's chain */
    FINISH_CANNOT_TELL,  /* libvirt could not be read: ask again later */
};


/* engine.c */
void work_free(struct work *w);
void queue_push(struct cfs_engine *e, struct work *w);
struct work *work_new(enum work_kind kind, const char *dom, const char *disk);
struct timespec deadline_in(int64_t ms);
void route(struct cfs_engine *e, struct work *w);
void on_domain_changed(void *opaque, const char *dom);
unsigned long *dom_seq_slot(struct cfs_engine *e, const char *name);
bool install_read(struct cfs_engine *e, const char *name, unsigned long before, struct cfs_domain *d, bool *removed);
int refresh_domain(struct cfs_engine *e, const char *name);
/* A disk of DOM other than EXCEPT (may be NULL) with a chainfs job in
 * progress (PULL_ONLY: a pull), or a job chainfs did not start (not with
 * PULL_ONLY); NULL if none. Caller holds the tree lock. */
const char *domain_busy_disk(struct cfs_engine *e, const char *dom,
                             const char *except, bool pull_only);
void carry_sizes(const struct cfs_domain *old, struct cfs_domain *new);
bool engine_files_local(struct cfs_engine *e);
bool tree_push_overlay(struct cfs_tree *t, const char *dom, const char *disk, const struct cfs_layer *active, const char *overlay, const char *name, bool files_local);
void refresh_after_change(struct cfs_engine *e, const char *dom);
int lock_live(struct cfs_engine *e, const char *dom);
void tree_changed(struct cfs_engine *e);
void conn_suspect(struct cfs_engine *e, bool suspect);
int check_reachable(struct cfs_engine *e, const char *dom, const char **why);
void process_work(struct cfs_engine *e, struct work *w);
void reap_offline(struct cfs_engine *e, bool all);

/* job.c */
/* The journal entry of JOB in PHASE (pointers into JOB: not to be freed). */
void job_journal_entry(const char *dom, const char *disk,
                       const struct cfs_job *job, const char *phase,
                       struct cfs_journal_entry *out);
int journal_record(struct cfs_engine *e, const char *dom, const char *disk, const struct cfs_job *job, const char *phase);
void journal_close(struct cfs_engine *e, const char *id);
bool job_snapshot(struct cfs_engine *e, const char *dom, const char *disk, struct cfs_job *out);
void job_number(struct cfs_engine *e, struct cfs_disk_state *s);
bool disk_has_layer(struct cfs_engine *e, const char *dom, const char *disk, const struct cfs_file_id *id, const char *path);
bool job_snapshot_mine(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id, struct cfs_job *out);
struct cfs_disk_state *job_mine(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id);
bool job_set_phase(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id, enum cfs_job_phase to);
bool job_set_phase_from(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id, enum cfs_job_phase from, enum cfs_job_phase to);
bool phase_step_locked(struct cfs_engine *e, struct cfs_disk_state *s, enum cfs_job_phase to);
/* events.c: every phase edge of every job passes here once, under the
 * tree lock, after S->job.phase became TO (issue 11: the one place a
 * job's start, end and failure are logged and counted). A terminal edge
 * finds the job's error, partial and finished set (job_end); a job
 * recovery takes up from the journal passes once as none -> its stored
 * phase (not starting: it was counted as started by the daemon before). */
void job_edge_locked(struct cfs_engine *e, const struct cfs_disk_state *s,
                     enum cfs_job_phase from, enum cfs_job_phase to);
int step_ready(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id, bool asked);
void job_new_locked(struct cfs_engine *e, struct cfs_disk_state *s, enum cfs_job_type type);
void job_end(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id, enum cfs_job_phase st, const char *error, bool partial);
int file_user_live(struct cfs_engine *e, const struct file_ref *files, size_t n, const char *except_dom, const char *except_disk, char **user, size_t *which);
enum finish_result job_finish(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id);
void job_fail(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id, enum cfs_job_phase st, const char *why);
void handle_job_event(struct cfs_engine *e, const struct work *w);
void handle_offline_done(struct cfs_engine *e, const struct work *w);
void poll_job(struct cfs_engine *e, const char *dom, const char *disk);
void external_check(struct cfs_engine *e, const char *dom, const char *disk);
bool any_live_job(struct cfs_engine *e, char ***doms, char ***disks);
void poll_jobs(struct cfs_engine *e);

/* queue.c: rmdirs queued behind a disk's merge (issue 8 §3) */
/* Job of DOM/DISK (snapshot WHAT) ended in ST with ERROR: a failed or
 * canceled one returns every queued deletion of the disk to snapshots/
 * (closing their journal entries), except a SUPERSEDED one canceled
 * (§3.3: its snapshots are queued again); then the next run is
 * dispatched. */
void queue_after_end(struct cfs_engine *e, const char *dom, const char *disk,
                     enum cfs_job_phase st, const char *what, const char *error,
                     bool superseded);
/* What a regrouped job (§3.3) ends with: canceled, this error. */
#define REGROUP_REASON \
    "regrouped: merged again together with the deletions queued next to it"
/* Return every queued deletion of DOM/DISK with REASON. */
void queue_return_all(struct cfs_engine *e, const char *dom, const char *disk,
                      const char *reason);
/* Return DOM/DISK's queued deletions of job group GROUP with REASON (the
 * member fails); true if there were any. */
bool queue_return_group(struct cfs_engine *e, const char *dom, const char *disk,
                        const char *group, const char *reason);
/* Take the queued entry EN (type rmdir) up into its disk's queue (recovery;
 * a no-op if it is there). */
void queue_load_entry(struct cfs_engine *e, const struct cfs_journal_entry *en);
/* Ask for a dispatch of every disk with a queue and no job in progress. */
void queue_poll(struct cfs_engine *e);
/* Remove the entries IDS[0..N) from DOM/DISK's queue in memory. Caller
 * holds the tree lock. */
void queue_drop_locked(struct cfs_disk_state *s, char *const *ids, size_t n);
/* §3.3: if a queued deletion is next to the run of DOM/DISK's running
 * merge and that merge has done less than half, abort it to merge the
 * union: its snapshots are queued again (by name) and the job ends
 * canceled (superseded), which dispatches. true if it was aborted. */
bool queue_regroup(struct cfs_engine *e, const char *dom, const char *disk);
/* actions.c: the domain worker's dispatch of DOM/DISK's queue */
void queue_dispatch(struct cfs_engine *e, const char *dom, const char *disk);
/* group.c: job groups, the domain-level rmdir (issue 10 §3) */
/* Bring the group member of S's disk up to S's job (its `group`). With
 * TOUCHED (job_end, once the job's end is applied) also the part of S's
 * disk in the domain's other groups of a snapshot the job merged (a
 * disk-level rmdir of a partially merged one, a run of the queue that
 * took a queued member in), and the ids of every group touched are added
 * to *TOUCHED. Caller holds the tree lock. */
void group_member_sync_locked(struct cfs_engine *e, struct cfs_disk_state *s,
                              char ***touched);
/* Member DISK of GROUP (not started, or queued) is now ST (ERROR). No
 * lock held; calls group_after_change. */
void group_member_set(struct cfs_engine *e, const char *group, const char *disk,
                      enum cfs_member_state st, const char *error);
/* After a member changed: journal the group's end (completed, failed:
 * entry closed; partial: remaining[]), or poll the members held in
 * ready. No lock held. */
void group_after_change(struct cfs_engine *e, const char *group);
/* Write G's journal entry in PHASE, in one rewrite with the removal of
 * the entry REPLACES (may be NULL). No tree lock needed (G is a copy or
 * not yet in the tree). */
int group_journal_put(struct cfs_engine *e, const struct cfs_group *g,
                      const char *phase, const char *replaces);
/* <dom>/ctl `pivot` (every member of the domain's running group in
 * ready, now) and `abort` (every member in progress aborted as `abort`
 * in its disk's ctl does; queued ones come back to snapshots/). 0, or
 * -ENOENT no group in progress, -EAGAIN (pivot) no member ready, the
 * first member's error (abort: none could be aborted); -ENOSYS for any
 * other command (not a group's). Logged. */
int group_ctl(struct cfs_engine *e, const char *dom, const struct cfs_ctl_cmd *cmd);
/* Whether a member of GROUP other than DISK is queued or running (then
 * DISK's ready commit holds). If not, *READY / *READY_IDS (caller frees)
 * get every member in ready, in member order (READY may be NULL). */
bool group_holds(struct cfs_engine *e, const char *group, const char *disk,
                 char ***ready, uint64_t **ready_ids);

/* copy.c */
enum finish_result copy_finish(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id, const struct cfs_job *job);
/* copy.c: delete a file chainfs recorded as its own, if it still is that
 * file and no chain or disk.raw reader uses it (else logged, kept). */
void delete_recorded_file(struct cfs_engine *e, const char *label,
                          const struct cfs_job_file *f, const char *what);
void copy_delete_made(struct cfs_engine *e, const char *dom, const char *disk, const struct cfs_job *job);
int copy_ctl_finish(struct cfs_engine *e, const char *dom, const char *disk, const struct cfs_job *job, char **why);
int copy_chain_start(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id);
void copy_chain_stop(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id);
/* Whether a copy's frozen layers are all copied (always, but for chain). */
static inline bool copy_layers_done(const struct cfs_job *j)
{
    return j->type != CFS_JOB_COPY || j->copy_mode != CFS_COPY_CHAIN ||
           j->n_copied + 1 >= j->n_made;
}

/* revert.c (issue 10 §4): `revert NAME [force]` in ctl; DISK NULL: the
 * domain's ctl (every disk with NAME's layer) */
int revert_ctl(struct cfs_engine *e, const char *dom, const char *disk,
               const struct cfs_ctl_cmd *cmd);
/* Take up a journal entry of type revert (recover_journal) */
void revert_recover(struct cfs_engine *e, const struct cfs_journal_entry *en);

/* actions.c, for the domain-level mkdir: the new overlay's path for
 * DOM/DISK's snapshot NAME above ACTIVE (0 and *OVERLAY, or -errno and
 * *MSG); and a disk-level mkdir's refusals of DOM/DISK (claims its state;
 * caller holds the tree lock; 0 or -errno and *WHY). */
int overlay_pick(struct cfs_engine *e, const char *dom, const char *disk,
                 const char *name, const char *active, char **overlay,
                 char **msg);
int mkdir_disk_refusal(struct cfs_engine *e, const char *dom, const char *disk,
                       const char **why, char **why_buf);

/* domsnap.c (issue 10): the domain level, and the quiesce of every mkdir */
struct quiesce {
    bool quiesced;           /* the guest's filesystems were frozen */
    unsigned filesystems;    /* how many */
    char *reason;            /* not quiesced: why */
    bool frozen;             /* chainfs froze them: quiesce_thaw() thaws */
    bool owed;               /* the freeze timed out: a thaw is owed */
};
void quiesce_clear(struct quiesce *q);
/* Freeze DOM's filesystems as -o quiesce says, DOM being in STATE (as
 * last read). WHAT names the mkdir in log lines. With INTENT (its
 * journal entry, of disk DISK), phase `frozen` is written before the
 * freeze call. 0 and *Q (quiesced or why not; under `try` a failure is
 * logged); or, under `require`, -EOPNOTSUPP / -ETIMEDOUT / -EIO and *WHY
 * (caller frees): nothing is frozen (a freeze that timed out is owed a
 * thaw all the same). */
int quiesce_freeze(struct cfs_engine *e, const char *dom,
                   enum cfs_dom_state state, const char *what,
                   const char *disk, struct cfs_job *intent,
                   struct quiesce *q, char **why);
/* Thaw if Q->frozen; a thaw that fails is owed (retried by the engine;
 * Q->owed set), keeping JOURNAL_ID's entry open until it is done. */
void quiesce_thaw(struct cfs_engine *e, const char *dom, const char *what,
                  const char *journal_id, struct quiesce *q);
/* DOM owes a thaw, attempted at the next poll (recovery of a mkdir that
 * died frozen: its entry JOURNAL_ID is closed once the thaw is done). */
void owe_thaw_now(struct cfs_engine *e, const char *dom, const char *why,
                  const char *journal_id);
/* Whether DOM's owed thaw keeps entry JOURNAL_ID (a reconnect's recovery
 * finds it open: it is being taken care of). */
bool thaw_keeps(struct cfs_engine *e, const char *dom, const char *journal_id);
/* Engine thread: ask the domains' workers for the owed thaws that are
 * due (NOW: all of them, whatever their time: tests). */
void thaw_poll(struct cfs_engine *e, bool now);
/* Domain worker: one attempt at DOM's owed thaw. */
void thaw_retry(struct cfs_engine *e, const char *dom);

/* One snapshot NAME of DISKS[0..N) of DOM, at one instant. */
struct snap_take {
    const char *dom;
    const char *name;
    const char *what;                   /* "mkdir web01/snapshots/s1" */
    enum cfs_dom_state state;           /* the domain's, at the claim */
    int scope;                          /* enum cfs_snap_scope */
    size_t n;
    const struct cfs_snapshot_disk *disks;
    size_t n_excluded;                  /* the domain's disks left out, */
    struct cfs_disk_note *excluded;     /* and why (domain level) */
};
/* Quiesce (journal INTENT: phase `frozen` before the freeze), take the
 * snapshot with chainfs's line in its description, thaw. 0; or -errno
 * and *MSG (caller frees): the quiesce refused (require) or libvirt's
 * error; no disk changed. When a thaw is owed, INTENT's entry stays open
 * (the owed thaw closes it) and INTENT->journal_id comes back NULL. */
int snapshot_quiesced(struct cfs_engine *e, const struct snap_take *tk,
                      struct cfs_job *intent, char **msg);

int dom_mkdir(struct cfs_engine *e, const char *dom, const char *name);
int dom_rmdir(struct cfs_engine *e, const char *dom, const char *name);
int dom_ctl(struct cfs_engine *e, const char *dom, const struct cfs_ctl_cmd *cmd);

/* recover.c */
void recover_journal(struct cfs_engine *e);
/* group.c: rebuild the groups of the journal's group entries V[0..N)
 * (before the members are loaded); the ids of those taken up now (not in
 * the tree already: a reconnect) are added to *LOADED. */
void recover_groups_load(struct cfs_engine *e, const struct cfs_journal_entry *v,
                         size_t n, char ***loaded);
/* After the members were loaded, for the groups LOADED: a member with no
 * open entry of its own ended while no daemon ran (done if its layer left
 * the chain, failed if not); groups that ended are journaled. */
void recover_groups_settle(struct cfs_engine *e, char **loaded);
void recover_merge(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id);
void recover_bandwidth(struct cfs_engine *e, const char *dom, const char *disk, uint64_t id);

/* settings.c-like part of actions.c: the disks' ctl settings */
int settings_save(struct cfs_engine *e);
void settings_load(struct cfs_engine *e);

/* What `job` shows for disk state S: chainfs's own job while one is in
 * progress; else a job chainfs did not start, while one runs; else
 * chainfs's last job. Caller holds the tree lock. */
static inline const struct cfs_job *disk_shown_job(const struct cfs_disk_state *s)
{
    if (!cfs_job_phase_in_progress(s->job.phase) &&
        s->external.type != CFS_JOB_NONE)
        return &s->external;
    return &s->job;
}

/* read.c */
/* Resolve P into the view its node renders from; caller holds the tree
 * lock. 0, or -ENOENT if a domain, disk or snapshot of the path is not
 * there (or P is disk.raw where there are no images). */
struct cfs_node_view;
int view_resolve(struct cfs_engine *e, const struct cfs_path *p,
                 struct cfs_node_view *v);

/* readers.c (issue 9): snapshots/NAME/disk.raw */
/* Whether disk.raw is served: an image server, and local files. */
bool engine_images(struct cfs_engine *e);
/* The stat of the disk.raw of view V's snapshot (estimate); 0 or -ENOENT.
 * Caller holds the tree lock. */
int image_attr_locked(const struct cfs_node_view *v, struct cfs_image_attr *a);
/* An open disk.raw (of any disk) reads file ID/PATH: *WHY (caller frees)
 * names it ("snapshots/s2/disk.raw of web01/vda is open (pid 4242 cp,
 * since T)"). Caller holds the tree lock. */
bool reader_uses(struct cfs_tree *t, const struct cfs_file_id *id,
                 const char *path, char **why);
/* A reader closed (or failed to open): queued deletions that waited for
 * one are dispatched again. No lock held. */
void images_reader_gone(struct cfs_engine *e);
/* Wait (at most MAX_MS) until no reader is closed-but-not-released
 * (cfs_reader.flushed): `cp disk.raw x; rmdir NAME` must not meet the
 * release still on its way. No lock held. */
void readers_settle(struct cfs_engine *e, unsigned max_ms);
/* Stop every server (engine shut-down). */
void images_stop_all(struct cfs_engine *e);
int visible_snapshot(struct cfs_tree *t, const struct cfs_domain *d, const struct cfs_disk *disk, const char *name);
