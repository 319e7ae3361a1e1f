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

struct cfs_layer {
    char *path;           /* file path or block device */
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
    bool not_responding;  /* set by the engine, not the backend: a libvirt
                             call on the domain has not returned for a
                             while (its QEMU is stuck); what is shown is
                             its last known state */
};

enum cfs_job_type {
    CFS_JOB_NONE,
    CFS_JOB_SNAPSHOT,       /* mkdir */
    CFS_JOB_COMMIT,         /* live commit of a lower layer */
    CFS_JOB_ACTIVE_COMMIT,  /* live commit of the active layer + pivot */
    CFS_JOB_OFFLINE_COMMIT, /* shut-off domain: merged with qemu-img */
    CFS_JOB_TYPE_MAX,
};

enum cfs_job_state {
    CFS_JOB_STATE_NONE,
    CFS_JOB_STATE_RUNNING,
    CFS_JOB_STATE_READY,
    CFS_JOB_STATE_PIVOTING,
    CFS_JOB_STATE_COMPLETED,
    CFS_JOB_STATE_FAILED,
    CFS_JOB_STATE_CANCELED,
    CFS_JOB_STATE_MAX,
};

/* A disk's current or last job, as chainfs follows it. */
struct cfs_job {
    enum cfs_job_type type;
    enum cfs_job_state state;
    char *snapshot;        /* display name of the snapshot being merged/made */
    char *meta_name;       /* libvirt snapshot metadata to drop at the end */
    char *top;             /* overlay being merged away */
    char *base;            /* layer it is merged into */
    uint64_t cur, end;     /* progress, bytes */
    uint64_t bandwidth;    /* bytes/s, 0 = unlimited */
    int64_t started;       /* unix seconds */
    int64_t finished;      /* unix seconds, 0 while in progress */
    char *error;           /* last error text (libvirt's message), or NULL */
    bool partial;          /* failed after the base was partly written */
    char *journal_id;      /* the journal entry that records it, or NULL */
    uint64_t id;           /* the engine's number for this job: events and
                              steps act only on the job they were meant for */
};

/* Progress as a backend reports it (virDomainGetBlockJobInfo). */
struct cfs_job_progress {
    bool present;          /* false: libvirt has no job on this disk */
    int type;              /* CFS_JOB_COMMIT / CFS_JOB_ACTIVE_COMMIT / other */
    uint64_t cur, end, bandwidth;
    bool ready;            /* active commit: cur == end and the live XML
                              shows <mirror ready='yes'> */
};

const char *cfs_dom_state_to_string(enum cfs_dom_state s);
const char *cfs_job_type_to_string(enum cfs_job_type t);   /* "active-commit", ... */
const char *cfs_job_state_to_string(enum cfs_job_state s); /* "running", ... */
const char *cfs_name_source_to_string(enum cfs_name_source s); /* "libvirt-metadata", "chainfs", "filename", "-" */
bool cfs_job_state_in_progress(enum cfs_job_state s); /* running/ready/pivoting */

/* Destructors take NULL and return NULL; *_clear frees members only. */
void cfs_layer_clear(struct cfs_layer *l);
void cfs_disk_clear(struct cfs_disk *d);
struct cfs_domain *cfs_domain_free(struct cfs_domain *d);
void cfs_job_clear(struct cfs_job *j);
struct cfs_job *cfs_job_free(struct cfs_job *j);
static inline void cfs_domain_freep(struct cfs_domain **d) { *d = cfs_domain_free(*d); }
#define _cleanup_domain_ __attribute__((cleanup(cfs_domain_freep)))

/* Deep copies. */
struct cfs_domain *cfs_domain_dup(const struct cfs_domain *d);
void cfs_job_copy(struct cfs_job *dst, const struct cfs_job *src); /* dst must be clear */

/* Lookups; NULL when absent. */
struct cfs_disk *cfs_domain_find_disk(const struct cfs_domain *d, const char *target);
/* index of the layer whose display name is NAME, -1 if none */
int cfs_disk_find_snapshot(const struct cfs_disk *disk, const char *name);
/* true if PATH is any layer of any disk of D */
bool cfs_domain_uses_path(const struct cfs_domain *d, const char *path);
