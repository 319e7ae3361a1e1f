/* fuse_ops.h — the FUSE adapter: the operations table that turns kernel
 * requests into engine calls. Only fuse_ops.c and main.c see <fuse.h>. */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse.h>
#include <stdbool.h>
#include <sys/types.h>

#include "chainfs/engine.h"
#include "chainfs/fleet.h"
#include "chainfs/stamp.h"

struct cfs_fs {
    struct cfs_fleet *fleet;   /* every host's engine, and the router */
    struct fuse *fuse;         /* set once mounted, for invalidations */
    bool have_manage_group;
    gid_t manage_group;
    struct cfs_stamps *stamps; /* every node's mtime (stamp.h) */
};

extern const struct fuse_operations cfs_fuse_ops;

/* Free the contents kept for recent stat()s (at exit). */
void cfs_fs_forget_recent(void);
/* Free the handles of files still open when the connection ended (at
 * exit, once no FUSE thread runs). */
void cfs_fs_free_handles(void);
/* Close the disk.raw readers of those handles (at exit, before the
 * engine is freed: their image servers stop). */
void cfs_fs_release_images(void);

/* Engine callback: drop the kernel's cached entry for PATH. */
void cfs_fs_invalidate(void *opaque, const char *path);
