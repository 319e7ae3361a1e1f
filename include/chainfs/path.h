/* path.h — parse a path inside the mount into what it names. Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

enum cfs_node_kind {
    CFS_NODE_INVALID,    /* not a path of the tree */
    CFS_NODE_ROOT,       /* /                         */
    CFS_NODE_DOMAIN,     /* /dom                      */
    CFS_NODE_DISK,       /* /dom/vda                  */
    CFS_NODE_CHAIN,      /* /dom/vda/chain            */
    CFS_NODE_CHAIN_JSON, /* /dom/vda/chain.json       */
    CFS_NODE_JOB,        /* /dom/vda/job              */
    CFS_NODE_JOB_JSON,   /* /dom/vda/job.json         */
    CFS_NODE_WAIT,       /* /dom/vda/wait             */
    CFS_NODE_CTL,        /* /dom/vda/ctl              */
    CFS_NODE_SNAPDIR,    /* /dom/vda/snapshots        */
    CFS_NODE_SNAPSHOT,   /* /dom/vda/snapshots/NAME   */
    CFS_NODE_INFO,       /* /dom/vda/snapshots/NAME/info      */
    CFS_NODE_INFO_JSON,  /* /dom/vda/snapshots/NAME/info.json */
    CFS_NODE_DISK_RAW,   /* /dom/vda/snapshots/NAME/disk.raw  */
    /* issue 10: the domain's own files (design issue10 §2, §3.5) */
    CFS_NODE_DOM_JOB,    /* /dom/job                  */
    CFS_NODE_DOM_JOB_JSON, /* /dom/job.json           */
    CFS_NODE_DOM_WAIT,   /* /dom/wait                 */
    CFS_NODE_DOM_CTL,    /* /dom/ctl                  */
    CFS_NODE_DOM_SNAPDIR, /* /dom/snapshots           */
    CFS_NODE_DOM_SNAPSHOT, /* /dom/snapshots/NAME     */
    CFS_NODE_DOM_INFO,   /* /dom/snapshots/NAME/info      */
    CFS_NODE_DOM_INFO_JSON, /* /dom/snapshots/NAME/info.json */
    /* issue 11: chainfs's own directory (never a domain, not listed) */
    CFS_NODE_OWN,        /* /.chainfs                 */
    CFS_NODE_METRICS,    /* /.chainfs/metrics.prom    */
    CFS_NODE_KIND_MAX,
};

struct cfs_path {
    enum cfs_node_kind kind;
    char dom[256];        /* "" for the root and chainfs's own nodes */
    char disk[256];       /* "" for the domain's own nodes (CFS_NODE_DOM_*) */
    char snap[256];
};

/* 0 and *out filled; -ENOENT for a path that cannot exist (too deep,
 * unknown file name), -ENAMETOOLONG for a component over 255 bytes. Does
 * not check that the domain/disk/snapshot exist. */
int cfs_path_parse(const char *path, struct cfs_path *out);

/* The kind of the entry NAME (LEN bytes, no NUL needed) in a directory
 * of kind PARENT: a fixed name of that directory (nodes.h), else what
 * any name there is (a domain in /, a disk in a domain, a snapshot in
 * snapshots/); CFS_NODE_INVALID if neither. Pure. */
enum cfs_node_kind cfs_node_child(enum cfs_node_kind parent, const char *name,
                                  size_t len);

/* true for the regular-file kinds */
bool cfs_node_is_file(enum cfs_node_kind k);
