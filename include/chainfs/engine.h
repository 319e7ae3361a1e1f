/* engine.h — chainfs's brain: keeps the tree current from backend events,
 * carries out mkdir and rmdir, and follows every merge to its end
 * (progress, pivot, clean-up, journal).
 *
 * Threads:
 *  - FUSE threads call cfs_engine_getattr/readdir/read/mkdir/rmdir/wait.
 *    Reads only take the tree lock and render from memory.
 *  - The backend's event thread only queues work (never blocks).
 *  - The engine thread drains that queue, schedules a poll of every
 *    running job (a fallback for missed events) and a re-read of every
 *    domain every refresh interval as a safety net, and marks domains
 *    whose calls do not return as not responding.
 *  - One worker thread per domain (while it has work) makes the calls
 *    that can wait for that domain's QEMU: re-reads, polls, pivots,
 *    clean-up, recovery. A stopped QEMU holds up its own domain only.
 *  - An offline merge (shut-off domain) runs in a worker thread of its own.
 * Unit tests run without the engine thread and drive the queue with
 * cfs_engine_run_pending(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "chainfs/backend.h"
#include "chainfs/ctl.h"
#include "chainfs/imgserve.h"
#include "chainfs/path.h"
#include "chainfs/tree.h"
#include "chainfs/util.h"

/* -o live_pull: may a running domain's merge pull (block-stream)? QEMU
 * 7.2 crashes when block nodes are queried as a block-stream job ends
 * (docs/design/issue8.md §7.4). */
enum cfs_live_pull {
    CFS_LIVE_PULL_AUTO = 0,  /* on where QEMU is known not to crash */
    CFS_LIVE_PULL_ON,        /* on: chainfs keeps its own queries away */
    CFS_LIVE_PULL_OFF,       /* running domains always commit */
};

/* "auto", "on", "off"; 0 and *OUT, or -EINVAL. */
int cfs_live_pull_from_string(const char *s, enum cfs_live_pull *out);
const char *cfs_live_pull_to_string(enum cfs_live_pull v);

/* -o quiesce (issue 10 §2.4): does a mkdir freeze the guest's
 * filesystems through its agent first? */
enum cfs_quiesce {
    CFS_QUIESCE_TRY = 0,     /* yes where an agent answers, else
                                crash-consistent (logged, in info) */
    CFS_QUIESCE_REQUIRE,     /* yes, or the mkdir fails (EOPNOTSUPP,
                                ETIMEDOUT) and nothing changes */
    CFS_QUIESCE_OFF,         /* never asked */
};

/* "try", "require", "off"; 0 and *OUT, or -EINVAL. */
int cfs_quiesce_from_string(const char *s, enum cfs_quiesce *out);
const char *cfs_quiesce_to_string(enum cfs_quiesce v);

/* -o quiesce_timeout=S: the default, and the largest S taken (0 leaves
 * libvirt's agent timeout alone). */
#define CFS_QUIESCE_TIMEOUT_DEFAULT 10
#define CFS_QUIESCE_TIMEOUT_MAX 300

struct cfs_engine_config {
    const char *overlay_dir;   /* NULL: beside the disk's active image */
    const char *state_dir;     /* journal directory */
    bool keep_merged;          /* keep overlay files after a merge */
    unsigned refresh_ms;       /* full re-read interval; 0: 3000 */
    unsigned poll_ms;          /* job progress poll while a job runs; 0: 250 */
    /* Issue 12 §2.2, -o audit=SECONDS: every domain is read in full at
     * least this often (what has no libvirt event: snapshot metadata,
     * images edited by hand); between audits a domain is read in full
     * only when the bulk statistics show it changed, or on an event.
     * 0: 60000. */
    unsigned audit_ms;
    uint64_t bandwidth;        /* bytes/s every merge starts with (-o
                                  bandwidth=N), 0 = unlimited */
    enum cfs_live_pull live_pull; /* -o live_pull */
    enum cfs_quiesce quiesce;  /* -o quiesce (issue 10) */
    /* -o quiesce_timeout: seconds libvirt waits for the guest agent,
     * set before every freeze; 0 = leave libvirt's setting alone (what a
     * zeroed config means; the mount's default is
     * CFS_QUIESCE_TIMEOUT_DEFAULT). */
    unsigned quiesce_timeout;
    /* Serves snapshots/NAME/disk.raw (issue 9); NULL: no disk.raw. The
     * engine owns it once cfs_engine_new succeeded. */
    struct cfs_imgserve *imgserve;
    /* Issue 12. The host's directory name with several hosts in one
     * mount, for log lines (cfs_log_set_context) and metrics labels;
     * NULL or "" with one host. Must outlive the engine. */
    const char *host;
    /* Issue 12, several hosts: a backend connect that fails with
     * -ENOTCONN does not end cfs_engine_start; the engine starts empty
     * and stale, refuses changes with ENOTCONN, and connects with its
     * usual back-off (then reads and recovers as after a reconnect).
     * false (one host): start-up fails as before. */
    bool start_disconnected;
};

struct cfs_engine;

/* Opens the journal (state_dir must be writable). Does not connect. */
int cfs_engine_new(const struct cfs_engine_config *cfg,
                   struct cfs_backend *be, struct cfs_engine **out,
                   char **errmsg);
/* Connect the backend, read every domain, recover journal entries, and
 * (if THREAD) start the engine thread. */
int cfs_engine_start(struct cfs_engine *e, bool thread, char **errmsg);
/* Stop the threads, destroy the backend, free everything. A domain
 * worker still inside a libvirt call after a short grace is left behind:
 * then the backend and the engine are not freed (the process is about to
 * exit), and a line per domain is logged. */
struct cfs_engine *cfs_engine_free(struct cfs_engine *e);

/* Called (from the engine thread) with a path whose kernel cache entry
 * should be dropped, e.g. "/dom" after the domain disappeared. */
void cfs_engine_set_invalidate(struct cfs_engine *e,
                               void (*cb)(void *opaque, const char *path),
                               void *opaque);

struct cfs_node_attr {
    bool is_dir;
    size_t size;      /* files: exact length of the rendered content */
    unsigned nlink;
};

int cfs_engine_getattr(struct cfs_engine *e, const struct cfs_path *p,
                       struct cfs_node_attr *out);
/* Entry names of a directory (no "." / ".."); caller frees the strv. */
int cfs_engine_readdir(struct cfs_engine *e, const struct cfs_path *p,
                       char ***names);
/* Render a file's whole content into OUT. */
int cfs_engine_read(struct cfs_engine *e, const struct cfs_path *p,
                    struct cfs_buf *out);
/* Block until the disk has no job in progress (or INTERRUPTED(ARG) says
 * stop: -EINTR), then render `job` into OUT. DISK NULL or "": the
 * domain's `wait` (the domain's last job group has ended and no disk of
 * DOM has a job in progress, then the domain's `job`). */
int cfs_engine_wait(struct cfs_engine *e, const char *dom, const char *disk,
                    bool (*interrupted)(void *arg), void *arg,
                    struct cfs_buf *out);

/* DISK NULL or "": the domain level, <dom>/snapshots/NAME (issue 10:
 * mkdir takes one snapshot of every disk that can have one; rmdir is
 * cfs_engine_rmdir_domain). */
int cfs_engine_mkdir(struct cfs_engine *e, const char *dom, const char *disk,
                     const char *name);
int cfs_engine_rmdir(struct cfs_engine *e, const char *dom, const char *disk,
                     const char *name);
/* Issue 10 §3: rmdir of DOM/snapshots/NAME, one merge per disk whose
 * chain shows NAME's layer, tied by a job group: every member commits,
 * active commits pivot only once every member is ready or has ended, a
 * member that fails leaves NAME partially merged (the others finish),
 * and rmdir again merges only the disks that remain. Every member is
 * checked first: one refused (its reason logged and in its disk's job)
 * refuses it all, nothing changed. 0 once every member started or
 * queued (or at least one did: the others failed, see their jobs);
 * -ENOENT no such domain or no disk with NAME; -ENOTCONN; -EBUSY a
 * domain-level rmdir of NAME runs; -EIO the journal; else a member's
 * refusal. */
int cfs_engine_rmdir_domain(struct cfs_engine *e, const char *dom,
                            const char *name);

/* Carry out one ctl command on DOM/DISK (the caller checked that the
 * user may change snapshots). 0, or: -ENOENT no such disk or no job to
 * act on, -EAGAIN not ready (pivot), -EBUSY the job is not chainfs's
 * (origin external), -EINVAL the command does not apply to this job,
 * -ENOTCONN libvirt unreachable; the reason is logged and shown in `job`.
 * Settings (pivot manual/auto, a job's bandwidth) are journaled. */
int cfs_engine_ctl(struct cfs_engine *e, const char *dom, const char *disk,
                   const struct cfs_ctl_cmd *cmd);
/* DISK NULL or "" is the domain's ctl (<dom>/ctl, issue 10): -EINVAL for
 * a command that is not one of a domain's (logged). */

/* Bumped on every change of what any file shows (tree lock inside). */
unsigned long cfs_engine_generation(struct cfs_engine *e);

/* ---- snapshots/NAME/disk.raw (issue 9, docs/design/issue9.md) ----
 * P is a path of kind CFS_NODE_DISK_RAW. -ENOENT where the tree has no
 * such file (no image server, files not local, no such snapshot). */

struct cfs_image_attr {
    uint64_t size;           /* the frozen image's virtual size */
    uint64_t blocks;         /* 512-byte blocks of data: an estimate from
                                the layers' allocation by stat, exact by
                                fstat (the chain's map) */
};

/* From the tree alone: never starts a server. */
int cfs_engine_image_stat(struct cfs_engine *e, const struct cfs_path *p,
                          struct cfs_image_attr *out);

struct cfs_image_reader;
/* Open for reading by process PID: registers a reader (merges that would
 * write or remove a file it reads are refused or wait), starts or shares
 * the image server. -EBUSY if a merge in progress writes its chain or an
 * image lock refused, -EIO if it cannot be served (logged with the
 * reason). */
int cfs_engine_image_open(struct cfs_engine *e, const struct cfs_path *p,
                          pid_t pid, struct cfs_image_reader **out);
/* Up to LEN bytes at OFF (short at the end of the image, 0 past it). */
ssize_t cfs_engine_image_read(struct cfs_image_reader *r, void *buf,
                              size_t len, uint64_t off);
/* SEEK_DATA / SEEK_HOLE from the chain's map: the offset, or -ENXIO past
 * the end / no data after OFF; -EINVAL for another WHENCE. */
int64_t cfs_engine_image_seek(struct cfs_image_reader *r, uint64_t off,
                              int whence);
/* The exact attributes of the open image (fstat). */
int cfs_engine_image_fstat(struct cfs_image_reader *r,
                           struct cfs_image_attr *out);
/* close(2) of a descriptor of it (FUSE flush): its release is likely on
 * its way (see cfs_reader.flushed). A read after it undoes it. */
void cfs_engine_image_flush(struct cfs_image_reader *r);
/* Close: logs what was read, stops the server at its last reader,
 * unregisters the reader and lets merges waiting for it go. */
void cfs_engine_image_release(struct cfs_image_reader *r);

/* The URI libvirt says the engine's connection is to (the backend's uri
 * op), or NULL if it did not say; valid until cfs_engine_free. */
const char *cfs_engine_uri(struct cfs_engine *e);

/* Tests: process everything queued, then one poll round. */
void cfs_engine_run_pending(struct cfs_engine *e);
/* One refresh of every domain now, as the timer's (issue 12: the bulk
 * call, then the re-reads it decides); without the engine thread the
 * re-reads run inline. For tests. */
void cfs_engine_refresh(struct cfs_engine *e);
/* How many domain names the engine keeps state for (issue 12 §2.4: an
 * undefined domain leaves none behind). For tests. */
size_t cfs_engine_names_kept(struct cfs_engine *e);
/* Tests: the tree (lock it before looking). */
struct cfs_tree *cfs_engine_tree(struct cfs_engine *e);
