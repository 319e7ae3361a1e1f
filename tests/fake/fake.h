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
 * "job_pivot", "read_domain", ...) fail with -ERR and MESSAGE. */
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
 * -ENOENT for any other. */
void cfs_fake_set_remote(struct cfs_backend *be, bool remote, const char *pool_dir);
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
