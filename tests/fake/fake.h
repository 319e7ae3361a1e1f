/* fake.h — in-memory backend for unit tests: domains are built by the test,
 * jobs advance only when the test steps them, and any op can be told to
 * fail once with a chosen errno and message.
 *
 * Event callbacks fire synchronously from the fake_* stepping calls, on
 * the test's thread. */
#pragma once

#include "chainfs/backend.h"

/* Every layer's virtual size (cfs_fake_add_simple). */
#define FAKE_VIRTUAL_SIZE (64ULL * 1024 * 1024)

struct cfs_backend *cfs_fake_backend_new(void);

/* Add or replace a domain (deep-copied). Fires domain_changed. */
void cfs_fake_put_domain(struct cfs_backend *be, const struct cfs_domain *d);
/* Issue 12: from now on, fire no domain_changed (MUTED true) — as a
 * change libvirt sends no event for (snapshot metadata, an image edited
 * by hand) — or fire them again. */
void cfs_fake_mute_domain_events(struct cfs_backend *be, bool muted);
/* Issue 12: every read_domain sleeps MS after answering (a round trip
 * to libvirt; 0: none). */
void cfs_fake_set_read_delay(struct cfs_backend *be, unsigned ms);
/* The position, in the order of all read_domain calls, of the first one
 * of DOM at or after FROM (SIZE_MAX: none yet); DOM NULL: how many there
 * were. */
size_t cfs_fake_read_log(struct cfs_backend *be, const char *dom, size_t from);
/* Remove a domain. Fires domain_changed. */
void cfs_fake_remove_domain(struct cfs_backend *be, const char *dom);
/* Convenience: a domain with one qcow2 disk TARGET whose chain is
 * PATHS[0] (active) ... PATHS[n-1] (base); each layer's meta_name is
 * META[i] if META is non-NULL. Virtual size 64 MiB. */
void cfs_fake_add_simple(struct cfs_backend *be, const char *dom,
                         enum cfs_dom_state state, const char *target,
                         const char *const *paths, const char *const *meta,
                         size_t n);

/* Make the next call of op OP ("snapshot_create", "commit_start",
 * "job_pivot", "read_domain", ...) fail with -ERR and MESSAGE. The op
 * agent_fs has two names here: "agent_freeze" and "agent_thaw" (for
 * cfs_fake_calls too). */
void cfs_fake_fail_next(struct cfs_backend *be, const char *op, int err,
                        const char *message);

/* Job stepping. A commit started by commit_start stays at cur=0 until: */
void cfs_fake_job_progress(struct cfs_backend *be, const char *dom,
                           const char *disk, uint64_t cur, uint64_t end);
/* Active commit: mark ready (cur=end) and fire READY. */
void cfs_fake_job_ready(struct cfs_backend *be, const char *dom,
                        const char *disk);
/* Finish: for an intermediate commit, TOP leaves the chain; fires
 * COMPLETED. (An active commit completes by job_pivot, which fires
 * COMPLETED itself and makes BASE the active layer.) */
void cfs_fake_job_complete(struct cfs_backend *be, const char *dom,
                           const char *disk);
/* A pull started by pull_start (type CFS_JOB_PULL, end = the active
 * layer's virtual size) is stepped the same way: no ready, no pivot
 * (job_pivot refuses it); cfs_fake_job_complete takes the layers between
 * the active one and its base out of the chain (files untouched, the
 * snapshots' metadata unchanged, see cfs_fake_snapshot_source). */
/* Fail: fires FAILED, chain unchanged, job gone. */
void cfs_fake_job_fail(struct cfs_backend *be, const char *dom,
                       const char *disk);
/* The job disappears without an event (as after a missed event). If
 * COMPLETED is true the chain changes as if it had completed. */
void cfs_fake_job_vanish(struct cfs_backend *be, const char *dom,
                         const char *disk, bool completed);
/* The next job_abort meets a job that completed just before: the chain
 * changes as on completion, COMPLETED fires, and the abort returns 0
 * (libvirt's abort racing QEMU's completion). */
void cfs_fake_abort_completes(struct cfs_backend *be);
/* Make job_pivot of DISK (any domain; a ready job) fail with -ERR the
 * next N times (libvirt refusing the pivot), other disks unaffected. */
void cfs_fake_pivot_fail(struct cfs_backend *be, const char *disk, int n, int err);
/* Make job_pivot return -EAGAIN the next N times. */
void cfs_fake_pivot_not_ready(struct cfs_backend *be, int n);
/* A job chainfs did not start (a user's virsh blockcopy, blockpull,
 * blockcommit, backup) on DISK of running DOM, at cur=0 of the active
 * layer's virtual size. No event fires (libvirt sends none when a job
 * starts); cfs_fake_touch_domain() fires domain_changed if a test wants
 * one. Stepped like chainfs's own: cfs_fake_job_progress, _ready (copy and
 * active commit), _complete, _fail, _vanish, and job_pivot/job_abort. What
 * the chain becomes when it ends well: COMMIT merges layer 1 into layer 2,
 * ACTIVE_COMMIT (on pivot) layer 0 into layer 1, PULL leaves the active
 * layer alone in the chain, COPY (on pivot) leaves one layer, the copy
 * (cfs_fake_job_copy_dest), BACKUP and UNKNOWN change nothing. Returns 0,
 * -ENOENT (no such domain or disk), -EINVAL (not running, not a block job
 * type, too short a chain) or -EBUSY (the disk has a job). */
int cfs_fake_start_external(struct cfs_backend *be, const char *dom,
                            const char *disk, enum cfs_job_type type);
/* image_copy_data (a `copy DEST chain` filling its frozen copies) waits
 * while HOLD is set (until released, or canceled). */
void cfs_fake_copy_hold(struct cfs_backend *be, bool hold);
/* The persistent definition's source of DOM/DISK becomes PATH (as a
 * redefine outside chainfs would make it; NULL: the live active layer
 * again). A copy's pivot rewrites it only when it named the live active
 * layer, as libvirt 9.0 does. */
void cfs_fake_set_persistent_source(struct cfs_backend *be, const char *dom,
                                    const char *disk, const char *path);
/* The destination path of DISK's running copy job, or NULL. Caller frees. */
char *cfs_fake_job_copy_dest(struct cfs_backend *be, const char *dom,
                             const char *disk);
/* cfs_fake_start_external for tests that know it succeeds: aborts the
 * test program if it does not. */
void cfs_fake_start_external_job(struct cfs_backend *be, const char *dom,
                                 const char *disk, enum cfs_job_type type);
/* The bandwidth (bytes/s, 0 = unlimited) of DISK's job as commit_start or
 * job_set_bandwidth last set it; 0 if the disk has no job either (tell
 * them apart with cfs_fake_has_job). */
uint64_t cfs_fake_job_bandwidth(struct cfs_backend *be, const char *dom,
                                const char *disk);
/* Whether DISK has a block job (chainfs's own or external). */
bool cfs_fake_has_job(struct cfs_backend *be, const char *dom, const char *disk);
/* Fire domain_changed for DOM (as libvirt does on a device or disk change). */
void cfs_fake_touch_domain(struct cfs_backend *be, const char *dom);
/* Act as a connection whose image files are not on this machine
 * (files_local() false; offline_commit refused with -EOPNOTSUPP), or as
 * a local one again. POOL_DIR (may be NULL): volume_delete "deletes"
 * files directly in it (records the path, touches nothing) and answers
 * -ENOENT for any other; file_exists answers for a path directly in it
 * from the test's files there (lstat), -EOPNOTSUPP for any other. */
void cfs_fake_set_remote(struct cfs_backend *be, bool remote, const char *pool_dir);
/* Issue 12: act as a libvirtd that cannot be reached (false: every op,
 * connect included, fails with -ENOTCONN "Connection refused"; a connect
 * that failed so is armed as libvirt.c's, and connected once reachable)
 * or that is back (true). The change fires connection(up) or
 * connection(down) on a connected (or armed) backend. */
void cfs_fake_set_reachable(struct cfs_backend *be, bool reachable);
/* What uri() answers once connected (default "test:///default"; NULL:
 * libvirt did not say). Call before connect. */
void cfs_fake_set_uri(struct cfs_backend *be, const char *uri);
/* What hypervisor_version answers (major * 1000000 + minor * 1000 +
 * micro); 0 (the default): -EOPNOTSUPP, the version is unknown. */
void cfs_fake_set_hypervisor_version(struct cfs_backend *be,
                                     unsigned long long ver);
/* The last path volume_delete accepted, or NULL. Caller frees. */
char *cfs_fake_last_volume_deleted(struct cfs_backend *be);
/* What libvirt snapshot NAME's metadata names for DISK (its <disks>
 * source, as snapshot_create, snapshot_retarget or the layers put by the
 * test set it; kept when a pull takes the layer out of the chain), or
 * NULL if it names nothing for DISK. Caller frees. */
char *cfs_fake_snapshot_source(struct cfs_backend *be, const char *dom,
                               const char *name, const char *disk);
/* How many times OP was called (for "no libvirt call on reads" tests). */
unsigned cfs_fake_calls(struct cfs_backend *be, const char *op);

/* A block job chainfs did not start (a user's virsh blockcopy or
 * blockpull) of TYPE on DOM/DISK; no event. cfs_fake_job_vanish ends it. */
void cfs_fake_start_external_job(struct cfs_backend *be, const char *dom,
                                 const char *disk, enum cfs_job_type type);
/* The bandwidth of DOM/DISK's job (job_set_bandwidth), 0 if none. */
uint64_t cfs_fake_job_bandwidth(struct cfs_backend *be, const char *dom,
                                const char *disk);

/* ---- issue 10 -----------------------------------------------------------------
 *
 * Snapshots. snapshot_create and snapshot_create_multi check every disk
 * (exists, listed once, overlay in no chain of any domain and given
 * once, no block job, not read-only, not shareable, no unsnappable note)
 * and the name, then take all disks or none. A new snapshot's parent is
 * the current one, and it becomes current; its description is kept.
 * read_domain (and read_domain_light) fill snaps[] (order of
 * snapshots[]; per disk of the domain "external" + the overlay where
 * the metadata names one, else "no"; creation times count up from 1)
 * and unsnappable[] (disks[] in order: read-only, shareable, or a note
 * cfs_fake_add_unsnappable gave, e.g. "lun"; then the noted disks not in
 * disks[]). A domain put with snaps[] / unsnappable[] (e.g. a read
 * result put back) sets those facts and notes; "read-only" and
 * "shareable" notes are always worked out from disks[] again.
 * snapshot_drop and the last snapshot_forget remove a snapshot as
 * libvirt does: its children take its parent, which becomes current if
 * it was. */

/* The next snapshot (single or multi) that includes DISK fails on it
 * with -ERR and MESSAGE (NULL: a QEMU-like text naming DISK); nothing
 * changes on any disk. */
void cfs_fake_fail_snapshot_disk(struct cfs_backend *be, const char *disk,
                                 int err, const char *message);
/* DOM gets a disk TARGET that cannot have a snapshot, and WHY ("cdrom",
 * "network", "lun", ...): listed in unsnappable[] (and snapshot='no' in
 * later snapshots); a TARGET that is also in disks[] is refused by
 * snapshots (-EROFS). Fires domain_changed. */
void cfs_fake_add_unsnappable(struct cfs_backend *be, const char *dom,
                              const char *target, const char *why);

/* The guest agent of a domain (kept by name: put_domain and remove_domain
 * leave it). Default: NONE, 2 filesystems. On a domain that is not
 * running (shut off or paused) agent_fs answers -EINVAL "domain is not
 * running" whatever the mode. */
enum cfs_fake_agent_mode {
    CFS_FAKE_AGENT_NONE,         /* no channel: -EOPNOTSUPP "QEMU guest
                                    agent is not configured" */
    CFS_FAKE_AGENT_DISCONNECTED, /* channel, no agent listening:
                                    -EOPNOTSUPP "... is not connected" */
    CFS_FAKE_AGENT_OK,           /* answers: freeze freezes (refused with
                                    -EOPNOTSUPP "the agent is in frozen
                                    state" when already frozen), thaw
                                    thaws (0 filesystems if not frozen) */
    CFS_FAKE_AGENT_HUNG,         /* freeze and thaw: -ETIMEDOUT "Guest
                                    agent not available for now", nothing
                                    changes (until the test sets OK) */
    CFS_FAKE_AGENT_LATE,         /* the next freeze: -ETIMEDOUT, yet the
                                    guest ends up frozen (counted) and the
                                    agent is OK again: a later thaw
                                    succeeds and counts */
};
void cfs_fake_agent_set(struct cfs_backend *be, const char *dom,
                        enum cfs_fake_agent_mode mode);
/* The guest's filesystems are frozen (by someone else: not counted). */
void cfs_fake_agent_set_frozen(struct cfs_backend *be, const char *dom,
                               bool frozen);
/* How many filesystems a freeze or thaw reports. */
void cfs_fake_agent_set_filesystems(struct cfs_backend *be, const char *dom,
                                    unsigned n);
struct cfs_fake_agent_state {
    enum cfs_fake_agent_mode mode;
    bool frozen;
    unsigned freezes;     /* freezes that happened in the guest */
    unsigned thaws;       /* agent_fs(thaw) calls that succeeded */
    unsigned filesystems;
    int timeout;          /* the last agent_set_timeout, 0 if never */
};
struct cfs_fake_agent_state cfs_fake_agent_state(struct cfs_backend *be,
                                                 const char *dom);

/* persistent_sources_set: shut-off persistent domains only (-EBUSY
 * running or paused, -ENOENT transient or a missing disk), all disks
 * checked then all defined (cfs_fake_calls("persistent_sources_set")
 * counts defines); fires domain_changed. A disk defined on a layer of
 * its chain, or on a file image_create made over one, gets the chain
 * from there (as libvirt probes it at the next start), and
 * persistent_source_get answers that; any other file is only recorded
 * as the persistent source.
 * snapshot_retarget_multi: all disks checked (each must have a source in
 * NAME: else -ENOENT), then as snapshot_retarget per disk; MAKE_CURRENT
 * makes NAME current (snaps[].current). */
