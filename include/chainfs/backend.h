/* backend.h — the one narrow boundary between chainfs and libvirt.
 *
 * A backend is a small table of functions (struct cfs_backend_ops) plus its
 * private state. Two exist: the real one over libvirt (backend/libvirt.c)
 * and an in-memory fake with error injection and manual job stepping
 * (tests/fake/fake.c, see fake.h). Nothing outside backend/ includes
 * the libvirt headers.
 *
 * Errors: every function returns 0 or a negative errno, and on failure
 * stores the underlying message (libvirt's own text) in a thread-local
 * slot read with cfs_backend_errmsg(). errno mapping, as SPEC.md's table:
 *   no such domain / disk / snapshot      -> -ENOENT
 *   snapshot name or file already exists  -> -EEXIST
 *   block job already active on the disk  -> -EBUSY
 *   no space left                         -> -ENOSPC
 *   access denied / auth failed           -> -EACCES
 *   disk read-only / not snapshottable    -> -EROFS
 *   connection lost or unreachable        -> -ENOTCONN
 *   pivot asked before the mirror is ready-> -EAGAIN
 *   not supported by this libvirt/QEMU    -> -EOPNOTSUPP
 *   chain deeper than libvirt allows      -> -EMLINK (libvirt 9.0: 200)
 *   anything else                         -> -EIO
 * decided by libvirt's error code first (backend/errmap.c).
 *
 * Threads: every op may be called from any thread except the backend's own
 * event thread; ops are safe to call concurrently. Event callbacks are
 * invoked on the backend's event thread; they must only queue work and
 * return (never call back into the backend). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "chainfs/model.h"

struct cfs_backend;

/* Block job status, as libvirt's VIR_DOMAIN_BLOCK_JOB_* event statuses. */
enum cfs_job_event {
    CFS_JOB_EVENT_COMPLETED,
    CFS_JOB_EVENT_FAILED,
    CFS_JOB_EVENT_CANCELED,
    CFS_JOB_EVENT_READY,
    CFS_JOB_EVENT_MAX,
};

struct cfs_backend_events {
    /* Something about DOM changed (defined, undefined, started, stopped,
     * device added/removed, ...): re-read it with read_domain(). */
    void (*domain_changed)(void *opaque, const char *dom);
    /* VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, keyed by disk target. */
    void (*block_job)(void *opaque, const char *dom, const char *disk,
                      enum cfs_job_type type, enum cfs_job_event status);
    /* The connection went down (up=false) or came back (up=true). After
     * up=true the caller re-reads everything. */
    void (*connection)(void *opaque, bool up);
};

/* Issue 10: one disk of a whole-VM snapshot (snapshot_create_multi). */
struct cfs_snapshot_disk {
    const char *disk;      /* target, "vda" */
    const char *overlay;   /* its new overlay (qcow2, never an existing
                              file) */
};

/* Issue 12 §2.2: one domain as the bulk statistics give it
 * (virConnectGetAllDomainStats, STATE | BLOCK with BACKING, NOWAIT). */
struct cfs_stats_layer {
    char *path;
    unsigned index;          /* libvirt's backingIndex (0: the active layer
                                or none given) */
    uint64_t capacity, allocation, physical;
};
struct cfs_stats_disk {
    char *target;            /* "vda" */
    size_t n_layers;
    struct cfs_stats_layer *layers; /* active first */
};
struct cfs_dom_summary {
    char *name;
    char uuid[40];
    enum cfs_dom_state state;
    /* NOWAIT: libvirt skipped the job-guarded statistics of this one (a
     * job held it), or they were not asked (no_running_blocks): its
     * disks are not all known; re-read it with read_domain when due. */
    bool partial;
    size_t n_disks;
    struct cfs_stats_disk *disks;
    /* cfs_dom_summary_fingerprint(): of the state, the targets, the
     * paths and indexes, never of sizes: equal means no need to re-read */
    uint64_t fingerprint;
};
void cfs_dom_summaries_free(struct cfs_dom_summary *v, size_t n);
/* The fingerprint of S (backends set it with this, so all agree). */
uint64_t cfs_dom_summary_fingerprint(const struct cfs_dom_summary *s);

struct cfs_backend_ops {
    const char *name;

    /* Open the connection, start the event thread, subscribe to events.
     * Called once, before the daemon detaches. -ENOTCONN (libvirtd
     * unreachable) comes back with the reconnect armed (issue 12): the
     * caller keeps the backend, and connection(up=true) follows once
     * libvirtd answers (its back-off as after a lost connection), or
     * destroys it. */
    int (*connect)(struct cfs_backend *be, const struct cfs_backend_events *ev,
                   void *opaque);
    /* Stop the event thread, close the connection, free everything. */
    void (*destroy)(struct cfs_backend *be);

    /* Names of every domain, running or shut off (NULL-terminated). */
    int (*list_domains)(struct cfs_backend *be, char ***names);
    /* Optional (NULL: list_domains + read_domain per domain). Every
     * domain in one call (issue 12 §2.2): its state, and the sizes of a
     * running domain's every layer, of a shut-off one's active layer
     * only (libvirt reports no more for it). NO_RUNNING_BLOCKS: ask no
     * block statistics of running domains (a pull runs on one: QEMU 7.2
     * crashes when its block nodes are queried as the pull ends, design
     * §7.4); their summaries are then partial. *OUT is freed with
     * cfs_dom_summaries_free. */
    int (*list_stats)(struct cfs_backend *be, bool no_running_blocks,
                      struct cfs_dom_summary **out, size_t *n);
    /* Everything about one domain: state, disks with a file or block
     * source (cdroms/floppies without media and network disks left out),
     * each disk's chain active-first with sizes, meta_name per layer, and
     * the list of the domain's snapshot names. Issue 10: also snaps[]
     * (each snapshot's facts) and unsnappable[] (disks a snapshot lists
     * snapshot='no', and why). -ENOENT if it is gone. */
    int (*read_domain)(struct cfs_backend *be, const char *dom,
                       struct cfs_domain **out);

    /* Optional (may be NULL): read_domain without asking libvirt for the
     * block statistics, sizes from stat() only (virtual_size may be 0).
     * For a quick look at a chain just changed; the caller re-reads in
     * full afterwards. */
    int (*read_domain_light)(struct cfs_backend *be, const char *dom,
                             struct cfs_domain **out);

    /* External disk-only snapshot NAME of disk DISK only, new overlay at
     * OVERLAY (qcow2, never overwriting an existing file), recorded in
     * libvirt's snapshot metadata. Running or shut-off domain. Returns when
     * the overlay is the active layer. */
    int (*snapshot_create)(struct cfs_backend *be, const char *dom,
                           const char *disk, const char *name,
                           const char *overlay);
    /* Issue 10: one snapshot NAME of N disks at one instant: one
     * virDomainSnapshotCreateXML(DISK_ONLY | ATOMIC [| REUSE_EXT]) naming
     * each DISKS[i] external with its overlay and every other disk of the
     * domain snapshot='no' (domain.unsnappable and any disk not listed).
     * All or nothing: on failure no disk changed and every overlay the
     * backend made is removed again (never a file a chain uses). A
     * running domain's snapshot is one QMP transaction. DESCRIPTION (may
     * be NULL) is stored as the snapshot's <description>. No freeze here
     * (the caller freezes through agent_fs). Errors as snapshot_create:
     * -EROFS for a disk of domain.unsnappable (read-only, shareable, lun,
     * cdrom, ...), -ENOENT for one the domain lacks, -EEXIST for an
     * existing overlay file or snapshot name, -EINVAL for a disk or an
     * overlay named twice; the message names the disk that failed (where
     * libvirt's text names its overlay: "disk vdb: ..."). The new
     * snapshot becomes libvirt's current one, its parent the previous
     * current one. snapshot_create(dom, disk, name, overlay) is the same
     * as this with N = 1 and no description. */
    int (*snapshot_create_multi)(struct cfs_backend *be, const char *dom,
                                 const char *name, size_t n,
                                 const struct cfs_snapshot_disk *disks,
                                 const char *description);
    /* Issue 10, the guest agent. Bound libvirt's wait for DOM's agent to
     * SECONDS (> 0, else -EINVAL) for every later agent call
     * (virDomainAgentSetResponseTimeout; returns at once even while an
     * agent call is waiting). Accepted for any domain, with or without
     * an agent channel, running or not (libvirt keeps the value for the
     * agent's next connection). -EOPNOTSUPP where libvirt lacks it. */
    int (*agent_set_timeout)(struct cfs_backend *be, const char *dom,
                             int seconds);
    /* Freeze (THAW false) or thaw (THAW true) every filesystem of the
     * guest (virDomainFSFreeze/virDomainFSThaw with no mount points); *N
     * gets how many the agent froze/thawed. Errors: -EOPNOTSUPP no agent
     * configured, not connected, or it refused (the agent is in frozen
     * state, unsupported); -ETIMEDOUT it did not answer in time
     * (libvirt's "not available for now"), or another agent command
     * held libvirt's agent job past libvirt's job wait; -EINVAL the
     * domain is not running (shut off, and also paused: libvirt asks the
     * agent of a running domain only); -ENOENT no such domain; else
     * -EIO. libvirt's text in the errmsg. */
    int (*agent_fs)(struct cfs_backend *be, const char *dom, bool thaw,
                    unsigned *n);
    /* Issue 10, revert: persistent_source_set for N disks in ONE define
     * (before it the definition names the old sources only, after it the
     * new ones only), under the backend's definition lock of DOM.
     * -ENOENT if DOM is transient or lacks a disk; -EBUSY if DOM is
     * running or paused (the definition would apply at its next start,
     * which is not what a revert means); -EINVAL for a disk named
     * twice. */
    int (*persistent_sources_set)(struct cfs_backend *be, const char *dom,
                                  size_t n, const char *const *disks,
                                  const char *const *paths,
                                  const char *const *formats);
    /* Issue 10, revert: redefine snapshot NAME with DISKS[i]'s external
     * source NEW_SOURCES[i] (each disk must be external in it: else
     * -ENOENT), everything else as libvirt dumps it; with MAKE_CURRENT
     * it becomes libvirt's current snapshot
     * (VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | _CURRENT). Metadata only. */
    int (*snapshot_retarget_multi)(struct cfs_backend *be, const char *dom,
                                   const char *name, size_t n,
                                   const char *const *disks,
                                   const char *const *new_sources,
                                   bool make_current);

    /* DISK's layer of libvirt's snapshot NAME was merged away: the
     * snapshot's metadata stops naming it (DISK becomes snapshot='no'),
     * and once no disk of NAME names a layer still in its disk's chain
     * the metadata is removed altogether. No data touched; the other
     * disks of a multi-disk snapshot keep their layers' name. -ENOENT if
     * there is no such snapshot. Atomic per snapshot: two disks of one
     * snapshot forgotten at the same time both take effect (issue 10). */
    int (*snapshot_forget)(struct cfs_backend *be, const char *dom,
                           const char *disk, const char *name);

    /* Remove libvirt's metadata of snapshot NAME, all its disks
     * (VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY); no image file is
     * touched. libvirt makes its parent current if it was, and rewrites
     * its children's <domain> copies to its own disk sources. The caller
     * decides it may (snapshot_forget is the per-disk op). -ENOENT if
     * there is no such snapshot. */
    int (*snapshot_drop)(struct cfs_backend *be, const char *dom,
                         const char *name);
    /* Redefine snapshot NAME (VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE) with
     * its <disks> entry for DISK naming NEW_SOURCE; everything else as
     * libvirt dumps it (name, parent, creation time, state, the <domain>
     * copies, the other disks, whether it is current). For a pull: the
     * active layer takes the pulled snapshot's identity. Metadata only,
     * no file touched or checked. -ENOENT if there is no such snapshot or
     * it names no file for DISK (absent or snapshot='no'). */
    int (*snapshot_retarget)(struct cfs_backend *be, const char *dom,
                             const char *name, const char *disk,
                             const char *new_source);

    /* Redefine snapshot NAME with DISK's file source in its <domain> and
     * <inactiveDomain> copies NEW_SOURCE, their <backingStore> dropped
     * (after `copy DEST chain` moved the files: libvirt's own
     * snapshot-delete compares that source with the live chain).
     * Metadata only. -ENOENT if there is no such snapshot or its copies
     * have no file disk DISK. */
    int (*snapshot_domain_source)(struct cfs_backend *be, const char *dom,
                                  const char *name, const char *disk,
                                  const char *new_source);

    /* Start a live commit of TOP into BASE on a running domain. ACTIVE:
     * TOP is the active layer (active commit; pivot later). BANDWIDTH:
     * bytes/s from the job's first byte, 0 = unlimited. Returns once
     * libvirt accepted the job. */
    int (*commit_start)(struct cfs_backend *be, const char *dom,
                        const char *disk, const char *top, const char *base,
                        bool active, uint64_t bandwidth);
    /* Start a live pull (virDomainBlockRebase without _COPY, libvirt's
     * blockpull with a base) on a running domain: the data of the layers
     * between the active layer and BASE is copied into the active layer,
     * which then backs onto BASE (absolute backing string); the layers in
     * between leave the chain, their files untouched. TOP names the
     * active layer (path or libvirt's "vda[N]"): libvirt has no top for a
     * pull, so the op checks the caller's plan still holds (-EINVAL if
     * TOP is not the active layer, e.g. a snapshot was made since). BASE
     * (path or "vda[N]", required) is a layer below it (-ENOENT if it is
     * not in the chain). BANDWIDTH: bytes/s, 0 = unlimited. Job type
     * CFS_JOB_PULL: no READY, it ends with COMPLETED, FAILED or
     * CANCELED; progress spans the whole disk. Returns once libvirt
     * accepted the job; -EBUSY if the disk has a job. */
    int (*pull_start)(struct cfs_backend *be, const char *dom,
                      const char *disk, const char *top, const char *base,
                      uint64_t bandwidth);
    /* Issue 8 `copy` (design issue8 §1.2). Create PATH, a new empty
     * qcow2 image, never replacing a file (O_EXCL: -EEXIST), fsynced with
     * its directory: virtual size that of image LIKE (format LIKE_FORMAT,
     * the disk's active layer: QEMU mirrors only between equal sizes);
     * backing BACKING (absolute path, format BACKING_FORMAT "qcow2" or
     * "raw") or none (BACKING NULL). *ID gets the new file's dev/ino and
     * path (the one file the caller may later delete). -EOPNOTSUPP where
     * the files are not local; -ENOENT if the directory is missing. */
    int (*image_create)(struct cfs_backend *be, const char *path,
                        const char *like, const char *like_format,
                        const char *backing, const char *backing_format,
                        struct cfs_file_id *id);
    /* Start a live block copy of DISK of running DOM into DEST, an image
     * image_create made (virDomainBlockCopy with REUSE_EXT and
     * TRANSIENT_JOB, so persistent domains are accepted; SHALLOW: only the
     * active layer is copied, DEST backs onto the layer below it; else
     * the whole chain into DEST). BANDWIDTH: bytes/s, 0 = unlimited. Job
     * type CFS_JOB_COPY: READY, then job_pivot (the disk runs on DEST) or
     * job_abort (on a ready copy, `finish`: DEST keeps the point in time
     * of the abort; libvirt reports CANCELED either way). Returns once
     * libvirt accepted the job; -EBUSY if the disk has a job. */
    int (*copy_start)(struct cfs_backend *be, const char *dom,
                      const char *disk, const char *dest, bool shallow,
                      uint64_t bandwidth);
    /* `copy DEST chain`: copy the data of frozen layer SRC (FORMAT,
     * "qcow2" or "raw") into DST, an image image_create made
     * (qemu-img convert -n; with BACKING, DST's backing file of format
     * BACKING_FORMAT, -B BACKING: only SRC's own clusters are copied),
     * limited to BANDWIDTH bytes/s (0 = unlimited); DST fsynced before
     * this returns 0. Blocking (called from a thread of its own); the
     * qemu-img child dies with the process. When *CANCEL becomes non-zero
     * the child is killed and this returns -ECANCELED. */
    int (*image_copy_data)(struct cfs_backend *be, const char *src,
                           const char *dst, const char *format,
                           const char *backing, const char *backing_format,
                           uint64_t bandwidth, const volatile int *cancel);
    /* `qemu-img check -f FORMAT PATH` of an image no process has open:
     * 0 clean; -EIO with qemu-img's text when it reports corruption or
     * leaks, or cannot open it. */
    int (*image_check)(struct cfs_backend *be, const char *path,
                       const char *format);
    /* The persistent definition's source of DISK (inactive XML): *PATH
     * (caller frees), NULL for a transient domain or a disk without a
     * file source there. -ENOENT if no such domain or disk. */
    int (*persistent_source_get)(struct cfs_backend *be, const char *dom,
                                 const char *disk, char **path);
    /* Redefine the persistent definition with DISK's source PATH (a file
     * of FORMAT) and its <backingStore> dropped (libvirt probes the chain
     * from the headers at the next start). -ENOENT if DOM is transient
     * or has no such disk. */
    int (*persistent_source_set)(struct cfs_backend *be, const char *dom,
                                 const char *disk, const char *path,
                                 const char *format);
    /* Limit the disk's running block job to BANDWIDTH bytes/s now
     * (0 = unlimited). -ENOENT if the disk has no job. */
    int (*job_set_bandwidth)(struct cfs_backend *be, const char *dom,
                             const char *disk, uint64_t bandwidth);
    /* Current job on the disk; out->present=false if none. */
    int (*job_get)(struct cfs_backend *be, const char *dom, const char *disk,
                   struct cfs_job_progress *out);
    /* Pivot a ready active commit. -EAGAIN if libvirt says not ready. */
    int (*job_pivot)(struct cfs_backend *be, const char *dom,
                     const char *disk);
    /* Cancel the job (no pivot). On a ready copy this is `finish`: QEMU
     * completes a last sync and DEST stays a consistent copy (libvirt 9.0
     * waits for it: the call can take as long as the guest writes). */
    int (*job_abort)(struct cfs_backend *be, const char *dom,
                     const char *disk);
    /* Shut-off domain: merge TOP into BASE now (blocking; called from a
     * worker thread). ACTIVE: TOP is the active layer, and the domain's
     * disk source becomes BASE. Otherwise the layer above TOP is
     * re-pointed to BASE. Image locks are held while it runs. */
    int (*offline_commit)(struct cfs_backend *be, const char *dom,
                          const char *disk, const char *top,
                          const char *base, bool active);
    /* Shut-off domain: pull every layer between TOP, the active layer,
     * and BASE (at least two below it) into TOP and make BASE its backing
     * file (qemu-img rebase, safe mode: TOP gets what the layers between
     * held; blocking, from a worker thread). The definition's cached
     * chain is dropped (libvirt probes the new one). Optional (NULL: a
     * shut-off domain's merges commit). */
    int (*offline_pull)(struct cfs_backend *be, const char *dom,
                        const char *disk, const char *top, const char *base);

    /* Optional (NULL: the files are local). Whether the paths libvirt
     * reports name the files this process sees at those paths: decided
     * once, at connect (a URI with a host or a network transport, a
     * daemon in another mount namespace, or a daemon that cannot be
     * found, is not local). When false, nothing in chainfs opens,
     * creates, stats or deletes a file by such a path; libvirt does it
     * or it is not done. *WHY (may be NULL) gets a static explanation
     * for the log. */
    bool (*files_local)(struct cfs_backend *be, const char **why);
    /* Optional (may be NULL): delete the file PATH through libvirt's
     * storage-volume API (for files that are not local). -ENOENT if no
     * active storage pool holds it: the file is then left in place. */
    int (*volume_delete)(struct cfs_backend *be, const char *path);
    /* Optional (may be NULL; asked only when the files are not local):
     * is there a file at PATH on libvirt's host, as the active storage
     * pool whose target directory is PATH's directory knows it (the pool
     * refreshed first, so that a file put there behind libvirt's back is
     * seen)? 1 if so, 0 if the pool holds none; -EOPNOTSUPP if no active
     * pool covers the directory (cannot tell); another negative errno
     * (and the message) if libvirt failed to answer, which is never to
     * be read as "no file". */
    int (*file_exists)(struct cfs_backend *be, const char *path);
    /* Optional (may be NULL): does libvirt answer a trivial call within
     * TIMEOUT_MS? 0 if so, -ENOTCONN if not or not connected (the call
     * that did not answer is left to end on its own). */
    int (*ping)(struct cfs_backend *be, unsigned timeout_ms);
    /* Optional (may be NULL): the hypervisor's version, major * 1000000 +
     * minor * 1000 + micro (virConnectGetVersion: QEMU's, for qemu://).
     * 0, or a negative errno. */
    int (*hypervisor_version)(struct cfs_backend *be, unsigned long long *ver);
    /* Optional (may be NULL): the URI of the connection as libvirt reports
     * it (virConnectGetURI: what the default or an alias resolved to,
     * "qemu:///system"), read once at connect and unchanged until
     * destroy; NULL before connect or when libvirt did not say. The
     * string is the backend's. (`mount` shows it as the source of the
     * mount.) */
    const char *(*uri)(struct cfs_backend *be);
};

struct cfs_backend {
    const struct cfs_backend_ops *ops;
    void *priv;
};

/* The real backend. URI may be NULL (libvirt's default). */
struct cfs_backend *cfs_libvirt_backend_new(const char *uri);
/* Keepalive of its connections (default 5 s, 3 missed): before connect.
 * Tests shorten it to see a lost libvirtd in seconds. */
void cfs_libvirt_backend_set_keepalive(struct cfs_backend *be, int interval,
                                       int count);

/* Thread-local message of the last failed backend op on this thread. */
const char *cfs_backend_errmsg(void);
/* Set it (backends only); printf-style. */
void cfs_backend_set_errmsg(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
