/* path.h — parse a path inside the mount into what it names. Pure. */
#pragma once

#include <stdbool.h>

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
    CFS_NODE_SNAPDIR,    /* /dom/vda/snapshots        */
    CFS_NODE_SNAPSHOT,   /* /dom/vda/snapshots/NAME   */
    CFS_NODE_INFO,       /* /dom/vda/snapshots/NAME/info      */
    CFS_NODE_INFO_JSON,  /* /dom/vda/snapshots/NAME/info.json */
    CFS_NODE_KIND_MAX,
};

struct cfs_path {
    enum cfs_node_kind kind;
    char dom[256];
    char disk[256];
    char snap[256];
};

/* 0 and *out filled; -ENOENT for a path that cannot exist (too deep,
 * unknown file name), -ENAMETOOLONG for a component over 255 bytes. Does
 * not check that the domain/disk/snapshot exist. */
int cfs_path_parse(const char *path, struct cfs_path *out);

/* Names of the files in a disk directory, in listing order. */
extern const char *const cfs_disk_entries[];    /* NULL-terminated */
extern const char *const cfs_snapshot_entries[]; /* "info", "info.json", NULL */

/* true for the regular-file kinds */
bool cfs_node_is_file(enum cfs_node_kind k);
