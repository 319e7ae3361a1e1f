/* fake.h — in-memory backend for unit tests: domains are built by the test,
 * jobs advance only when the test steps them, and any op can be told to
 * fail once with a chosen errno and message.
 *
 * Event callbacks fire synchronously from the fake_* stepping calls, on
 * the test's thread. */
#pragma once

#include "chainfs/backend.h"

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
/* Fail: fires FAILED, chain unchanged, job gone. */
void cfs_fake_job_fail(struct cfs_backend *be, const char *dom,
                       const char *disk);
/* The job disappears without an event (as after a missed event). If
 * COMPLETED is true the chain changes as if it had completed. */
void cfs_fake_job_vanish(struct cfs_backend *be, const char *dom,
                         const char *disk, bool completed);
/* Make job_pivot return -EAGAIN the next N times. */
void cfs_fake_pivot_not_ready(struct cfs_backend *be, int n);
/* Act as a connection whose image files are not on this machine
 * (files_local() false; offline_commit refused with -EOPNOTSUPP), or as
 * a local one again. POOL_DIR (may be NULL): volume_delete "deletes"
 * files directly in it (records the path, touches nothing) and answers
 * -ENOENT for any other. */
void cfs_fake_set_remote(struct cfs_backend *be, bool remote, const char *pool_dir);
/* The last path volume_delete accepted, or NULL. Caller frees. */
char *cfs_fake_last_volume_deleted(struct cfs_backend *be);
/* How many times OP was called (for "no libvirt call on reads" tests). */
unsigned cfs_fake_calls(struct cfs_backend *be, const char *op);

/* A block job chainfs did not start (a user's virsh blockcopy or
 * blockpull) of TYPE on DOM/DISK; no event. cfs_fake_job_vanish ends it. */
void cfs_fake_start_external_job(struct cfs_backend *be, const char *dom,
                                 const char *disk, enum cfs_job_type type);
/* The bandwidth of DOM/DISK's job (job_set_bandwidth), 0 if none. */
uint64_t cfs_fake_job_bandwidth(struct cfs_backend *be, const char *dom,
                                const char *disk);
