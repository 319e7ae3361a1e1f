/* nodes.h — every kind of node of the tree (path.h's cfs_node_kind),
 * described once: its name and where it lives, file or directory, its
 * mode, how it renders or lists, whether a read blocks, whether it takes
 * writes. The path parser (path.c), the read side (read.c) and the FUSE
 * adapter (fuse_ops.c, which only dispatches) all go by this table. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "chainfs/engine.h"
#include "chainfs/metrics.h"
#include "chainfs/path.h"
#include "chainfs/tree.h"
#include "chainfs/util.h"

struct cfs_engine;

/* What a node's render or list function sees. The caller holds the tree
 * lock and resolved the path: DOM is set below the root, DISK below a
 * domain (NULL for the domain's own nodes), LAYER (a visible snapshot's
 * index in DISK) for a snapshot and its files, else -1; SNAP the
 * snapshot's name for a domain-level snapshot and its files. */
struct cfs_node_view {
    struct cfs_tree *tree;
    const struct cfs_domain *dom;
    const struct cfs_disk *disk;
    const struct cfs_disk_state *state; /* DISK's; NULL if it never had one */
    const struct cfs_job *job;          /* what `job` shows for DISK; NULL: none */
    int layer;
    uint64_t default_bandwidth;         /* -o bandwidth: merges start with it */
    bool images;                        /* disk.raw is served (an image
                                           server, local files) */
    const char *snap;                   /* <dom>/snapshots/NAME: NAME */
    enum cfs_quiesce quiesce;           /* -o quiesce (<dom>/ctl shows it) */
    unsigned quiesce_timeout;           /* -o quiesce_timeout */
    const struct cfs_metrics *metrics;  /* the engine's job counters */
    bool conn_up;                       /* the libvirt connection is up */
};

/* chainfs's own directory at the mount's root (issue 11): its name is
 * no domain's (a domain of that name is not shown). */
#define CFS_OWN_DIR ".chainfs"

struct cfs_node_type {
    /* The entry's name in its parent directory; NULL for a node named by
     * the world (a domain, a disk, a snapshot): any name there is one. */
    const char *name;
    enum cfs_node_kind parent;          /* CFS_NODE_INVALID for the root */
    bool dir;
    mode_t mode;                        /* permission bits, owner root */
    /* Whoever may change snapshots (root, -o manage_group) may change
     * it: snapshots/ takes mkdir and rmdir, ctl takes writes. With a
     * manage_group the node is that group's and group-writable. */
    bool managed;
    /* Its children are made by mkdir and removed by rmdir (snapshots/). */
    bool mkdir_rmdir;
    /* A read blocks until the disk's job has ended (wait): the content is
     * rendered at the first read, not at open() or stat(). */
    bool blocks;
    /* A guest disk's content (disk.raw): not rendered, read through the
     * engine's image reader (cfs_engine_image_*); readable by whoever may
     * change snapshots only (with -o manage_group: 0440, that group's).
     * Listed only where the view has images. */
    bool image;
    /* Not listed by its directory (readdir), found by lookup and stat:
     * chainfs's own directory at the root, so that `ls -a` of the mount
     * shows domains only. */
    bool hidden;
    /* Files: the whole content. */
    void (*render)(const struct cfs_node_view *v, struct cfs_buf *out);
    /* Directories: the entry names (no "." or ".."), in listing order. */
    void (*list)(const struct cfs_node_view *v, char ***names);
    /* Files that take writes (ctl): carry out one write of LEN bytes;
     * LEN if it was taken, else -errno (the write's answer). NULL: the
     * content is read-only (EROFS). */
    ssize_t (*write)(struct cfs_engine *e, const struct cfs_path *p,
                     const char *buf, size_t len);
};

/* The row of kind K (never NULL; CFS_NODE_INVALID's is an empty row). */
const struct cfs_node_type *cfs_node_type(enum cfs_node_kind k);

/* Whether layer I of DISK shows in snapshots/: not the base, and not the
 * one being merged away right now (S: the disk's state, may be NULL).
 * Caller holds the tree lock. */
bool cfs_layer_visible(const struct cfs_disk *disk,
                       const struct cfs_disk_state *s, size_t i);

/* Whether snapshot NAME shows in <dom>/snapshots/: a visible layer of
 * that name in at least one disk of D (issue 10). Caller holds the tree
 * lock. */
bool cfs_dom_snapshot_visible(struct cfs_tree *t, const struct cfs_domain *d,
                              const char *name);

/* What reading a disk's ctl shows (docs/FILES.md); caller holds the
 * tree lock. */
void cfs_render_ctl(struct cfs_buf *b, const struct cfs_disk_state *s,
                    uint64_t default_bandwidth);
