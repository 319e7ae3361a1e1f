/* tree.h — the in-memory state every read is served from: the domains
 * (with resolved snapshot names) and, per disk, the current or last job.
 *
 * One mutex guards it all; readers and writers take it for a few
 * microseconds, never across a libvirt call. The condition variable is
 * broadcast whenever a job changes state, for `wait`.
 * Lock order: engine queue lock and tree lock are never held together;
 * the journal's own lock may be taken inside the tree lock. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "chainfs/model.h"
#include "chainfs/strmap.h"

/* A disk's settings, given through its ctl file; journaled
 * (STATE_DIR), so they outlive a daemon restart. */
struct cfs_disk_settings {
    bool pivot_manual;       /* active commits wait in ready for `pivot` */
    /* `merge NAME commit|pull`: snapshots whose next merge goes that way
     * (NULL-terminated names; a name is in at most one; `auto` in
     * neither). The merge that starts takes its snapshot's out. */
    char **merge_commit;
    char **merge_pull;
};

/* An rmdir queued behind a merge of its disk (issue 8 §3.1). */
struct cfs_queued {
    char *snapshot;          /* display name asked */
    char *meta_name;         /* its libvirt metadata when queued, or NULL */
    char *top;               /* its own layer when queued */
    struct cfs_file_id top_id;
    char *base;              /* the layer below it when queued */
    char *journal_id;        /* its journal entry (type rmdir, queued) */
    int64_t queued;          /* unix seconds */
    bool requeued;           /* a snapshot of a regrouped merge (§3.3):
                                found again by its name only (its file
                                may have become another snapshot's) */
    char *group;             /* issue 10: the job group it is a member of
                                (its journal id), or NULL */
    char *waiting;           /* issue 9 §3.2: why its run is not started
                                (a disk.raw reader uses a file of it), or
                                NULL */
};

/* A queued deletion that came back to snapshots/ (§3.4). */
struct cfs_returned {
    char *snapshot;
    char *reason;
};

/* An open snapshots/NAME/disk.raw (issue 9 §3.1): the files it reads,
 * which no merge may write or remove while it is open. */
struct cfs_reader {
    uint64_t id;             /* unique in the process */
    char *snapshot;          /* display name opened */
    size_t n_files;          /* the frozen chain, top first */
    struct cfs_file_id *ids;
    char **paths;
    pid_t pid;               /* the opener */
    char *comm;              /* its /proc/PID/comm, or NULL */
    int64_t since;           /* unix seconds */
    /* close(2) was called on it (FUSE flush) and it has not been read
     * since: its release is on its way (the kernel sends it after the
     * close returned). An rmdir waits a moment for it to go rather than
     * fail (a dup of the descriptor may keep it open, as bash's `exec
     * 3<FILE` does: then it stays, and the rmdir is refused as before). */
    bool flushed;
};

void cfs_queued_clear(struct cfs_queued *q);
void cfs_reader_clear(struct cfs_reader *r);
void cfs_returned_clear(struct cfs_returned *r);

/* Per-disk bookkeeping that outlives the domain's re-reads. */
struct cfs_disk_state {
    char *dom;
    char *disk;
    struct cfs_job job;      /* current or last job */
    struct cfs_disk_settings settings;
    char **partial_tops;     /* overlays a failed merge partly wrote below */
    /* Facts about the current job (never a state: that is job.phase): */
    int64_t gone_since_ms;   /* libvirt has no job but TOP is still in the chain */
    int pivot_failures;      /* pivots refused for another reason than "not ready" */
    uint64_t base_bytes;     /* BASE's allocated bytes when the merge
                                started (0: unknown), to tell a partial one */
    bool abort_requested;    /* ctl abort asked libvirt to cancel the job */
    /* A libvirt block job on the disk that chainfs did not start
     * (origin external): type NONE when there is none. Shown by `job`
     * while chainfs has no job of its own in progress. */
    struct cfs_job external;
    /* Issue 8 §3: rmdirs queued behind the disk's merge, oldest first
     * (hidden from snapshots/; dispatched when the merge ends), and those
     * that came back since the last rmdir (a failed or aborted merge). */
    size_t n_queue;
    struct cfs_queued *queue;
    size_t n_returned;
    struct cfs_returned *returned;
    /* Issue 9: the disk's snapshots/NAME/disk.raw open now, oldest first.
     * A queue that waits for one of them is not dispatched by the
     * engine's poll (queue_waits_reader); the last release asks. */
    size_t n_readers;
    struct cfs_reader *readers;
    bool queue_waits_reader;
};

/* Issue 10 §3.2: a domain-level rmdir of snapshot NAME, one merge per
 * disk that had NAME's layer (its members). A member's state follows its
 * disk's job (the job's `group` names the group); a member queued behind
 * another merge of its disk is `queued` until the queue dispatches it. */
enum cfs_member_state {
    CFS_MEMBER_QUEUED,       /* not started: behind its disk's merge, or
                                not yet claimed */
    CFS_MEMBER_RUNNING,      /* its merge is starting or running */
    CFS_MEMBER_READY,        /* an active commit in ready (held: group) */
    CFS_MEMBER_PIVOTING,
    CFS_MEMBER_DONE,         /* NAME's layer left the disk's chain */
    CFS_MEMBER_FAILED,       /* its merge failed or was canceled: NAME's
                                layer remains on the disk */
    CFS_MEMBER_STATE_MAX,
};

enum cfs_group_phase {
    CFS_GROUP_RUNNING,
    CFS_GROUP_PIVOTING,      /* a member is pivoting */
    CFS_GROUP_COMPLETED,     /* every member done */
    CFS_GROUP_PARTIAL,       /* none in progress, some done, some failed:
                                the snapshot is partially merged */
    CFS_GROUP_FAILED,        /* none in progress, every member failed */
    CFS_GROUP_PHASE_MAX,
};

struct cfs_group_member {
    char *disk;              /* "vda" */
    enum cfs_member_state state;
    uint64_t job_id;         /* its disk's cfs_job.id, 0 while queued */
    char *error;             /* why it failed, or NULL */
    bool partial;            /* failed after its base was partly written */
};

struct cfs_group {
    char *id;                /* its journal entry's id (cfs_job.group) */
    char *dom;
    char *snapshot;          /* NAME */
    char *meta_name;         /* NAME's libvirt metadata, or NULL */
    size_t n_members;
    struct cfs_group_member *members; /* in the domain's disk order */
    enum cfs_group_phase phase; /* cfs_group_phase() of the members */
    int64_t started;         /* unix seconds */
    int64_t finished;        /* unix seconds, 0 while in progress */
    bool end_recorded;       /* the engine journaled its end */
};

/* "queued", "running", "ready", "pivoting", "done", "failed". */
const char *cfs_member_state_to_string(enum cfs_member_state s);
/* "running", "pivoting", "completed", "partial", "failed". */
const char *cfs_group_phase_to_string(enum cfs_group_phase p);
/* The group's phase from its members alone (design §3.2): every member
 * done: completed; none in progress and every one failed: failed; none
 * in progress, some failed: partial; else running (pivoting while one
 * pivots). No members: completed. */
enum cfs_group_phase cfs_group_phase(const struct cfs_group_member *m, size_t n);
static inline bool cfs_group_phase_ended(enum cfs_group_phase p)
{
    return p == CFS_GROUP_COMPLETED || p == CFS_GROUP_PARTIAL ||
           p == CFS_GROUP_FAILED;
}
/* The member state a job phase stands for. */
enum cfs_member_state cfs_member_state_of_phase(enum cfs_job_phase p);
struct cfs_group *cfs_group_free(struct cfs_group *g);
struct cfs_group_member *cfs_group_find_member(struct cfs_group *g,
                                               const char *disk);

/* Issue 10 §2.4: a domain chainfs froze (or may have: a freeze that
 * timed out can complete in the guest later) and could not thaw yet. The
 * engine retries the thaw in the background until it answers or the
 * domain stops; `<dom>/job` shows it. */
struct cfs_thaw_owed {
    char *dom;
    int64_t since;           /* unix seconds: owed since */
    char *error;             /* the last failed attempt's message */
    unsigned attempts;       /* failed attempts so far */
    int64_t next_ms;         /* monotonic ms of the next attempt */
    bool queued;             /* an attempt is queued on the domain's worker */
    /* The journal entries (type snapshot, phase frozen) kept open until
     * the thaw is done, so that a daemon stopped meanwhile leaves the
     * next one a thaw to make (recovery); closed when it is dropped. */
    char **journal_ids;
};

struct cfs_tree {
    pthread_mutex_t lock;
    pthread_cond_t changed;   /* broadcast on every job state change */
    struct cfs_domain **doms;
    size_t n_doms;
    struct cfs_disk_state **states;
    size_t n_states;
    bool stale;               /* libvirt unreachable: last known state */
    struct cfs_group **groups; /* issue 10: job groups, oldest first; at
                                  most one per domain and snapshot name */
    size_t n_groups;
    unsigned long generation; /* bumped on every change */
    struct cfs_thaw_owed *thaws; /* issue 10: domains owed a thaw */
    size_t n_thaws;
    bool own_name_logged;     /* issue 11: a domain named .chainfs was
                                 hidden (logged once) */
    /* Issue 12 §2.5: the indexes that make the lookups O(1) on average
     * (tree.c; kept in step with doms and states by the functions below,
     * so doms and states are changed through them only). */
    struct cfs_strmap *dom_index;   /* name -> position in doms, + 1 */
    struct cfs_strmap *state_index; /* dom "\x1f" disk -> position in states, + 1 */
    struct cfs_strmap *file_index;  /* a layer's file key -> its users */
};

struct cfs_tree *cfs_tree_new(void);
struct cfs_tree *cfs_tree_free(struct cfs_tree *t);

/* All below: caller holds t->lock. */
struct cfs_domain *cfs_tree_find_domain(struct cfs_tree *t, const char *name);
/* Install D (takes ownership; names are resolved here). Returns true if
 * anything visible changed. A domain named as chainfs's own directory
 * (".chainfs", nodes.h) is not installed (logged once): false. */
bool cfs_tree_put_domain(struct cfs_tree *t, struct cfs_domain *d);
/* Whether NAME is chainfs's own directory's (".chainfs"): a domain of
 * that name is not shown; the first time, logged. */
bool cfs_tree_own_name(struct cfs_tree *t, const char *name);
/* Remove domain NAME; true if it was there. The order of doms is not
 * kept (the last one takes its place). */
bool cfs_tree_remove_domain(struct cfs_tree *t, const char *name);
/* Issue 12 §2.4: domain NAME is no longer defined: drop what the tree
 * keeps per name for it — its disk states with no job in progress, no
 * queued rmdir and no disk.raw reader, and its job groups that ended
 * (owed thaws stay: the engine drops them). Returns true if nothing of
 * NAME is left. Call it only once NAME is gone from doms. */
bool cfs_tree_forget_domain(struct cfs_tree *t, const char *name);
/* The disk's state, created on first use. */
struct cfs_disk_state *cfs_tree_disk_state(struct cfs_tree *t, const char *dom,
                                           const char *disk);
struct cfs_disk_state *cfs_tree_find_disk_state(struct cfs_tree *t,
                                                const char *dom,
                                                const char *disk);
/* Issue 10 job groups. Add G (takes ownership), replacing a group of
 * the same domain and snapshot name (freed; its id is returned in *OLD_ID
 * if OLD_ID, caller frees); the domain's groups that completed or failed
 * go too (G is the one <dom>/job shows now). */
void cfs_tree_add_group(struct cfs_tree *t, struct cfs_group *g, char **old_id);
/* The group with journal id ID, or NULL. */
struct cfs_group *cfs_tree_find_group(struct cfs_tree *t, const char *id);
/* The newest group of DOM (for snapshot NAME if NAME), or NULL. */
struct cfs_group *cfs_tree_domain_group(struct cfs_tree *t, const char *dom,
                                        const char *name);
/* Remove and free the group with id ID (no-op if absent). */
void cfs_tree_remove_group(struct cfs_tree *t, const char *id);

/* Issue 10: DOM's owed thaw, or NULL. */
struct cfs_thaw_owed *cfs_tree_find_thaw(struct cfs_tree *t, const char *dom);
/* DOM owes a thaw (created with SINCE if it did not; ERROR replaces the
 * last one, may be NULL). */
struct cfs_thaw_owed *cfs_tree_owe_thaw(struct cfs_tree *t, const char *dom,
                                        int64_t since, const char *error);
/* DOM's thaw is no longer owed; true if it was. *JOURNAL_IDS (if not
 * NULL) gets its journal entries to close (caller frees). */
bool cfs_tree_drop_thaw(struct cfs_tree *t, const char *dom,
                        char ***journal_ids);
/* The first disk (in doms order) of any domain whose chain has file
 * ID/PATH (same file by cfs_file_same; answered from the file index, no
 * walk over every domain), leaving out disk EXCEPT_DISK of domain EXCEPT_DOM
 * (the whole of EXCEPT_DOM if EXCEPT_DISK is NULL); *DOM_OUT is its
 * domain. NULL if there is none. */
const struct cfs_disk *cfs_tree_file_user(struct cfs_tree *t,
                                          const struct cfs_file_id *id,
                                          const char *path,
                                          const char *except_dom,
                                          const char *except_disk,
                                          const struct cfs_domain **dom_out);
