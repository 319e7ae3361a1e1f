/* model.h — what chainfs knows about libvirt's world: domains, their disks
 * and each disk's backing chain, plus the block jobs chainfs follows.
 *
 * These are plain values. A backend fills them in; the tree (tree.h) keeps
 * the current set; renderers read them. Nothing here is shared between
 * threads without the tree's lock. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Issue 12: the one limit on a chain's length anywhere in chainfs (qcow2
 * header walk, storage-pool walk, XML). A chain cut there is logged. */
#define CFS_CHAIN_MAX 4096u

enum cfs_dom_state {
    CFS_DOM_SHUTOFF,
    CFS_DOM_RUNNING,
    CFS_DOM_PAUSED,
    CFS_DOM_OTHER,
    CFS_DOM_STATE_MAX,
};

/* Where a layer's display name came from (SPEC "Which layer a snapshot is"). */
enum cfs_name_source {
    CFS_NAME_NONE,        /* base image: not a snapshot */
    CFS_NAME_METADATA,    /* libvirt snapshot metadata names this overlay */
    CFS_NAME_CHAINFS,     /* the overlay file name chainfs gave it */
    CFS_NAME_FILENAME,    /* the overlay file's name */
    CFS_NAME_SOURCE_MAX,
};

/* Which file a path names, however it is spelled (issue 6): chains that
 * reach one image through "../", "./", a symlinked directory, "//" or
 * "/./" share that image. Filled by cfs_file_identify() only (for every
 * layer: cfs_domain_identify()); compared by cfs_file_same() only. */
struct cfs_file_id {
    bool known;           /* dev and ino come from stat() */
    uint64_t dev;         /* st_dev (st_rdev for a block device) */
    uint64_t ino;         /* st_ino (0 for a block device) */
    char *canonical;      /* realpath(), or the path with "//", "/./" and
                             "x/.." folded where that fails; NULL: not
                             identified (compare the folded path) */
};

struct cfs_layer {
    char *path;           /* file path or block device, as libvirt's XML
                             (or the image header above) spells it */
    struct cfs_file_id id; /* which file it is (cfs_domain_identify) */
    unsigned index;       /* libvirt's index= of the layer in the live XML
                             (the N of "vda[N]"), 0 if it has none */
    char *format;         /* "qcow2", "raw", ... ("" if unknown) */
    bool is_block;        /* <disk type='block'> / block device source */
    uint64_t virtual_size; /* capacity, bytes */
    uint64_t allocation;   /* bytes allocated (as domstats reports it) */
    uint64_t physical;     /* bytes the file takes on the host */
    char *meta_name;      /* libvirt snapshot whose XML names this file as
                             this disk's overlay, or NULL (backend fills) */
    /* Filled by cfs_domain_resolve_names() (names.h), not by backends: */
    char *name;           /* display name in snapshots/, NULL for the base */
    enum cfs_name_source name_source;
};

struct cfs_disk {
    char *target;         /* "vda" */
    bool readonly;
    bool shareable;
    bool is_block;        /* the active source is a block device */
    size_t n_layers;
    struct cfs_layer *layers; /* [0] is the active layer, last is the base */
    /* Issue 12: the display names indexed (cfs_disk_index_names, run by
     * cfs_domain_resolve_names): an open-addressing table of layer
     * index + 1 (0: free), NAME_CAP slots, a power of two. Valid only
     * while layers and n_layers are what they were when it was built
     * (NAME_OF, NAME_N); else cfs_disk_find_snapshot scans. Freed by
     * cfs_disk_clear, copied by cfs_domain_dup. */
    size_t *name_slots;
    size_t name_cap;
    const struct cfs_layer *name_of;
    size_t name_n;
};

/* Issue 10: one disk of a libvirt snapshot, as its <disks> says. */
struct cfs_snap_disk {
    char *target;         /* "vda" */
    char *snapshot;       /* its snapshot= value: "external", "no", ... */
    char *source;         /* the overlay it names (external), or NULL */
};

/* Issue 10: one libvirt snapshot of a domain, as the backend read it. */
struct cfs_snap_info {
    char *name;
    char *parent;         /* parent snapshot's name, or NULL */
    char *description;    /* <description> text, or NULL (chainfs keeps
                             its quiesce line there: cfs_snapdesc_*) */
    int64_t created;      /* <creationTime>, unix seconds */
    bool current;         /* libvirt's current snapshot */
    size_t n_disks;
    struct cfs_snap_disk *disks;
};

/* Issue 10: a disk of the domain that cannot have a snapshot, and why. */
struct cfs_disk_note {
    char *target;         /* "hdc" */
    char *why;            /* the first that applies: "cdrom", "floppy",
                             "lun", "network", another <disk type=> than
                             file or block by its name ("volume",
                             "nvme", ...), "no source", "read-only",
                             "shareable" */
};

struct cfs_domain {
    char *name;
    char uuid[40];
    enum cfs_dom_state state;
    bool persistent;
    size_t n_disks;
    struct cfs_disk *disks;
    char **snapshots;     /* every libvirt snapshot name of the domain
                             (all disks), NULL-terminated, may be NULL */
    size_t n_snaps;
    struct cfs_snap_info *snaps; /* issue 10: the same snapshots with their
                             facts (order of snapshots[]); n_snaps 0 where
                             a backend does not read them */
    size_t n_unsnappable;
    struct cfs_disk_note *unsnappable; /* issue 10: every disk of the
                             domain a snapshot must list snapshot='no'
                             (the read-only, shareable and lun disks and
                             the cdroms and floppies of disks[], and the
                             disks read_domain leaves out), in the order
                             of the domain's XML */
    bool not_responding;  /* set by the engine, not the backend: a libvirt
                             call on the domain has not returned for a
                             while (its QEMU is stuck); what is shown is
                             its last known state */
};

/* What a job does. Every libvirt block job type maps to a distinct value
 * (a job chainfs did not start shows as what it is, with origin
 * external); cfs_job_kind() says which of them chainfs starts itself.
 * Stored by name (cfs_job_type_to_string), never by number. */
enum cfs_job_type {
    CFS_JOB_NONE,
    CFS_JOB_SNAPSHOT,       /* mkdir */
    CFS_JOB_COMMIT,         /* live commit of a lower layer */
    CFS_JOB_ACTIVE_COMMIT,  /* live commit of the active layer + pivot */
    CFS_JOB_OFFLINE_COMMIT, /* shut-off domain: merged with qemu-img */
    CFS_JOB_PULL,           /* libvirt VIR_DOMAIN_BLOCK_JOB_TYPE_PULL;
                               chainfs's forward merge (issue 8) */
    CFS_JOB_COPY,           /* VIR_DOMAIN_BLOCK_JOB_TYPE_COPY; chainfs's
                               `copy` in ctl (issue 8) */
    CFS_JOB_BACKUP,         /* VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP */
    CFS_JOB_UNKNOWN,        /* a libvirt job type this build does not know */
    CFS_JOB_OFFLINE_PULL,   /* shut-off domain: forward merge with
                               qemu-img rebase (never a libvirt job) */
    CFS_JOB_RMDIR,          /* issue 8 §3: an rmdir queued behind a merge
                               of its disk (journal and disk queue only;
                               never a disk's job, never a libvirt job) */
    CFS_JOB_REVERT,         /* issue 10: `revert NAME [force]` in ctl, a
                               shut-off domain (never a libvirt job) */
    CFS_JOB_GROUP,          /* issue 10: a domain-level rmdir tying one
                               merge per disk (journal only, like
                               CFS_JOB_RMDIR; never a disk's job) */
    CFS_JOB_TYPE_MAX,
};

/* Which way a merge copies (issue 8 §2.2): a commit writes the layer
 * below the run, a pull writes the active layer. */
enum cfs_merge_direction {
    CFS_DIRECTION_NONE,     /* not a merge, or an entry from before issue 8 */
    CFS_DIRECTION_COMMIT,
    CFS_DIRECTION_PULL,
    CFS_DIRECTION_MAX,
};

/* What `copy DEST MODE` copies (issue 8 §1.2). */
enum cfs_copy_mode {
    CFS_COPY_NONE,          /* not a copy */
    CFS_COPY_DEFAULT,       /* ctl: no mode word (flatten, refused when
                               the disk has snapshots); never stored */
    CFS_COPY_FLATTEN,       /* the whole chain into one flat DEST */
    CFS_COPY_SHALLOW,       /* the active layer; DEST backs onto layer 1 */
    CFS_COPY_CHAIN,         /* every layer to DEST's directory */
    CFS_COPY_MODE_MAX,
};
/* "flatten", "shallow", "chain"; "none", "default"; "unknown" out of
 * range. */
const char *cfs_copy_mode_to_string(enum cfs_copy_mode m);
/* The inverse for "flatten", "shallow", "chain"; CFS_COPY_MODE_MAX for
 * anything else (NULL included). */
enum cfs_copy_mode cfs_copy_mode_from_string(const char *s);

/* A job's one state (docs/DESIGN.md draws the allowed edges). */
enum cfs_job_phase {
    CFS_PHASE_NONE,
    CFS_PHASE_STARTING,     /* claimed; libvirt has not accepted it yet */
    CFS_PHASE_RUNNING,
    CFS_PHASE_READY,
    CFS_PHASE_PIVOTING,
    CFS_PHASE_FINISHING,    /* copy: `finish` asked (journaled before the
                               abort call that ends the mirror without a
                               pivot) */
    CFS_PHASE_CLEANUP,      /* libvirt is done; deleting, forgetting */
    CFS_PHASE_COMPLETED,
    CFS_PHASE_FAILED,
    CFS_PHASE_CANCELED,
    CFS_PHASE_MAX,
};

/* A file a job names, with which file it is (the path alone does not say:
 * issue 6). */
struct cfs_job_file {
    char *path;
    struct cfs_file_id id;
};

/* A disk's current or last job, as chainfs follows it. */
struct cfs_job {
    enum cfs_job_type type;
    enum cfs_job_phase phase;
    char *snapshot;        /* display name of the snapshot being merged/made */
    char *meta_name;       /* libvirt snapshot metadata to drop at the end */
    char *top;             /* overlay being merged away */
    struct cfs_file_id top_id; /* which file TOP is */
    char *base;            /* layer it is merged into */
    uint64_t cur, end;     /* progress, bytes */
    uint64_t bandwidth;    /* bytes/s, 0 = unlimited */
    int64_t started;       /* unix seconds */
    int64_t finished;      /* unix seconds, 0 while in progress */
    char *error;           /* last error text (libvirt's message), or NULL */
    bool partial;          /* failed after the base was partly written */
    char *leftover;        /* merged file left in place because it is not on
                              this machine (a remote connection), or NULL */
    char *journal_id;      /* the journal entry that records it, or NULL */
    uint64_t id;           /* the engine's number for this job: events and
                              steps act only on the job they were meant for */
    char **disks;          /* every disk the job touches, NULL-terminated
                              (one today: the disk whose state holds it;
                              several once whole-VM jobs arrive) */
    bool pivot_manual;     /* the disk's `pivot manual` setting, mirrored
                              here by the engine for `job` */
    bool external;         /* origin external: a libvirt job chainfs did
                              not start (never pivoted, aborted or cleaned
                              up by chainfs) */
    /* Merges (issue 8 §2.2, §2.3): a run of snapshots removed at once, in
     * either direction. Empty/zero for jobs of earlier versions: then the
     * merge is TOP into BASE (snapshot, top, base above). */
    enum cfs_merge_direction direction;
    char **snapshots;      /* display names of every snapshot the job
                              removes, top first, NULL-terminated; NULL:
                              just `snapshot` */
    char **meta_names;     /* the libvirt snapshot metadata of each of
                              snapshots[] ("" for none), same order; NULL:
                              just `meta_name` (a run of the queue drops
                              or forgets every one at clean-up) */
    size_t n_leaving;
    struct cfs_job_file *leaving; /* files that leave the chain (commit:
                              the run's overlays; pull: the layers below
                              the active one down to the new backing);
                              finished = every one is out of the live
                              chain; deleted at clean-up by the usual rules */
    char *written;         /* the file the job writes: BASE for a commit,
                              the active layer for a pull; NULL: BASE */
    uint64_t bytes_commit; /* what a commit would copy (C) */
    uint64_t bytes_pull;   /* what a pull would copy (P); 0: no pull */
    uint64_t bytes_copied; /* growth of WRITTEN's allocation, at the end */
    char *reason;          /* why this direction (merge_plan's text) */
    /* Copies (issue 8 §1.4): type CFS_JOB_COPY. TOP is the source (the
     * active layer at start), BASE unused. */
    char *dest;            /* the destination image */
    enum cfs_copy_mode copy_mode;
    bool manual;           /* waits in ready for `pivot` or `finish` */
    bool finish;           /* `finish` asked: end without a pivot */
    size_t n_made;
    struct cfs_job_file *made; /* every file chainfs made, DEST first,
                              with the dev/ino it had when made: the only
                              files a failed copy may delete (§1.7) */
    char **layer_meta;     /* chain: the libvirt snapshot naming each
                              layer of the source chain, top first, ""
                              for none (NULL-terminated; n_old entries):
                              remapped to the copies at the pivot */
    size_t n_copied;       /* chain: frozen layers already copied into
                              their made[] files, counted from the bottom
                              (made[n_made - 1] first); the mirror pivots
                              only when every one is (n_copied + 1 ==
                              n_made) */
    bool cleaning;         /* in memory only: a thread is running this
                              copy's clean-up (an event and the ctl thread
                              of `finish` may both find it over) */
    size_t n_old;
    struct cfs_job_file *old_files; /* the source chain's files that leave
                              the chain at the pivot: never deleted,
                              named by `job` */
    char *survivor;        /* pull: libvirt snapshot whose layer left and
                              whose identity WRITTEN takes (§2.4 step 2:
                              retargeted at clean-up), or NULL */
    bool superseded;       /* issue 8 §3.3: aborted to be merged again
                              together with the deletions queued next to
                              it (its snapshots are queued again); its
                              cancel dispatches the union instead of
                              returning the queue */
    char *group;           /* issue 10 §3.2: the journal id of the job group
                              (a domain-level rmdir) this merge is a member
                              of, or NULL. A member commits (never a live
                              pull) and holds in ready until every other
                              member is ready or has ended. */
};

/* Progress as a backend reports it (virDomainGetBlockJobInfo). */
struct cfs_job_progress {
    bool present;          /* false: libvirt has no job on this disk */
    int type;              /* enum cfs_job_type: every libvirt block job
                              type distinct, CFS_JOB_UNKNOWN for others */
    uint64_t cur, end, bandwidth; /* bandwidth in bytes/s */
    bool ready;            /* active commit or copy: the live XML shows
                              <mirror ready='yes'> (cur may be short of
                              end while a fresh guest write is copied) */
};

const char *cfs_dom_state_to_string(enum cfs_dom_state s);
const char *cfs_job_type_to_string(enum cfs_job_type t);   /* "active-commit", ... */
const char *cfs_job_phase_to_string(enum cfs_job_phase s); /* "running", ... */
const char *cfs_name_source_to_string(enum cfs_name_source s); /* "libvirt-metadata", "chainfs", "filename", "-" */
/* "commit", "pull"; "none" for CFS_DIRECTION_NONE, "unknown" out of range. */
const char *cfs_merge_direction_to_string(enum cfs_merge_direction d);
/* "commit" -> CFS_DIRECTION_COMMIT, "pull" -> CFS_DIRECTION_PULL;
 * CFS_DIRECTION_MAX for anything else (NULL, "none" included). */
enum cfs_merge_direction cfs_merge_direction_from_string(const char *s);
/* "pull" -> CFS_JOB_PULL, ...; CFS_JOB_TYPE_MAX if S names no type
 * ("none" and NULL included). */
enum cfs_job_type cfs_job_type_from_string(const char *s);
bool cfs_job_phase_in_progress(enum cfs_job_phase s); /* starting .. cleanup */
/* "running" -> CFS_PHASE_RUNNING; CFS_PHASE_MAX if S names no phase. */
enum cfs_job_phase cfs_job_phase_from_string(const char *s);
/* Whether a job may go from phase FROM to phase TO (the one table of
 * allowed edges; fs/core/job.c draws it). */
bool cfs_job_phase_edge_allowed(enum cfs_job_phase from, enum cfs_job_phase to);

/* What differs per kind of job: one row per enum cfs_job_type. */
struct cfs_job_kind {
    enum cfs_job_type type;
    bool chainfs;       /* chainfs starts jobs of this kind (mkdir, rmdir);
                           the others are only ever seen as external */
    bool block_job;     /* a libvirt block job: followed by events and polls */
    bool merge;         /* removes snapshots from the chain: finished means
                           every leaving file (TOP before issue 8) left the
                           chain; clean-up deletes them and drops their
                           snapshot metadata; partial when a commit's BASE
                           was written */
    bool has_ready;     /* reaches ready (mirroring) and needs a pivot (or,
                           a copy, `finish`) */
    bool abortable;     /* ctl abort can cancel it safely */
    const char *starts; /* how chainfs starts it (for logs and docs) */
};
const struct cfs_job_kind *cfs_job_kind(enum cfs_job_type t);

/* Destructors take NULL and return NULL; *_clear frees members only. */
void cfs_layer_clear(struct cfs_layer *l);
void cfs_snap_info_clear(struct cfs_snap_info *s);
void cfs_snap_info_copy(struct cfs_snap_info *dst, const struct cfs_snap_info *src);
/* The facts of snapshot NAME in D, NULL if the backend gave none. */
const struct cfs_snap_info *cfs_domain_find_snap(const struct cfs_domain *d,
                                                 const char *name);
void cfs_disk_clear(struct cfs_disk *d);
struct cfs_domain *cfs_domain_free(struct cfs_domain *d);
void cfs_job_clear(struct cfs_job *j);
void cfs_job_file_clear(struct cfs_job_file *f);
/* Deep copy of V[0..N) (NULL for N == 0); free with cfs_job_files_free. */
struct cfs_job_file *cfs_job_files_dup(const struct cfs_job_file *v, size_t n);
void cfs_job_files_free(struct cfs_job_file *v, size_t n);
struct cfs_job *cfs_job_free(struct cfs_job *j);
static inline void cfs_domain_freep(struct cfs_domain **d) { *d = cfs_domain_free(*d); }
#define _cleanup_domain_ __attribute__((cleanup(cfs_domain_freep)))

/* Deep copies. */
struct cfs_domain *cfs_domain_dup(const struct cfs_domain *d);
void cfs_job_copy(struct cfs_job *dst, const struct cfs_job *src); /* dst must be clear */

/* Lookups; NULL when absent. */
struct cfs_disk *cfs_domain_find_disk(const struct cfs_domain *d, const char *target);
/* index of the layer whose display name is NAME, -1 if none: O(1) with
 * the disk's name index, a scan without it */
int cfs_disk_find_snapshot(const struct cfs_disk *disk, const char *name);
/* (Re)build DISK's name index from its layers' display names (names.c
 * does, after naming them); O(n). */
void cfs_disk_index_names(struct cfs_disk *disk);
/* Drop DISK's name index (lookups scan until it is built again). */
void cfs_disk_unindex_names(struct cfs_disk *disk);
/* ---- file identity -------------------------------------------------------
 * The one place that decides whether two paths are one file: by device
 * and inode when both are known, else by canonical path. */

/* PATH with "//" and "/./" folded and "x/.." dropped, lexically (no file
 * system access). Caller frees. */
char *cfs_path_fold(const char *path);
/* Fill id of every layer of D from the local file system (stat,
 * realpath). Backends call it once per domain read, where the files are
 * local. */
void cfs_domain_identify(struct cfs_domain *d, bool local);
/* Fill ID for the file PATH (the same stat and realpath, one path; NULL or
 * relative PATH, or LOCAL false: only its folded spelling). Clear with
 * cfs_file_id_clear(). */
void cfs_file_identify(struct cfs_file_id *id, const char *path, bool local);
/* Whether A (spelled PATH_A) and B (spelled PATH_B) are the same file.
 * Either id may be NULL or not known: then canonical paths decide. */
bool cfs_file_same(const struct cfs_file_id *a, const char *path_a,
                   const struct cfs_file_id *b, const char *path_b);
static inline bool cfs_layer_same(const struct cfs_layer *a,
                                  const struct cfs_layer *b)
{
    return cfs_file_same(&a->id, a->path, &b->id, b->path);
}
/* The path to show for a file: canonical if known, else as spelled. */
const char *cfs_file_display(const struct cfs_file_id *id, const char *path);
void cfs_file_id_clear(struct cfs_file_id *id);
void cfs_file_id_copy(struct cfs_file_id *dst, const struct cfs_file_id *src);

/* Index of the layer of DISK that is file ID/PATH, -1 if none. */
int cfs_disk_find_file(const struct cfs_disk *disk,
                       const struct cfs_file_id *id, const char *path);
/* The first disk of D other than EXCEPT_DISK (NULL: none excepted) that
 * has file ID/PATH anywhere in its chain; NULL if none. */
const struct cfs_disk *cfs_domain_file_user(const struct cfs_domain *d,
                                            const struct cfs_file_id *id,
                                            const char *path,
                                            const char *except_disk);
/* true if PATH is any layer of any disk of D (cfs_file_same, no id) */
bool cfs_domain_uses_path(const struct cfs_domain *d, const char *path);
