/* ctl.h — the commands a disk's `ctl` file takes (Plan 9 style: one
 * command per write; the write's result is the answer). Pure: parsing
 * only; the engine carries them out (cfs_engine_ctl).
 *
 *   abort               cancel the disk's running job
 *   pivot               pivot a ready active commit now
 *   pivot manual|auto   whether active commits wait in `ready` for `pivot`
 *   bandwidth N         the running job's limit, bytes/s; K/M/G/T suffixes
 *                       (powers of 1024), 0 = unlimited
 *   merge NAME commit|pull|auto
 *                       the direction of snapshot NAME's next merge
 *   copy DEST [flatten|shallow|chain] [manual]
 *                       mirror the running disk to DEST (a new qcow2 file,
 *                       absolute path, no blanks) and pivot to it (issue 8)
 *   finish              end a ready manual copy without a pivot: DEST is a
 *                       point-in-time copy
 *   revert NAME [force] (issue 10) a shut-off domain's disk goes back to
 *                       snapshot NAME: a new empty overlay on NAME's frozen
 *                       layer becomes the active image; only the newest
 *                       snapshot unless `force` (the later ones are
 *                       discarded too). Also taken by the domain's ctl
 *                       (<dom>/ctl: every disk with NAME's layer).
 *
 * One command per write: words separated by blanks, one trailing "\n"
 * allowed (echo), nothing else after it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chainfs/merge_plan.h"
#include "chainfs/model.h"

/* Longest write the ctl file takes; longer ones are -E2BIG. */
#define CFS_CTL_MAX_WRITE 4096

enum cfs_ctl_op {
    CFS_CTL_ABORT,
    CFS_CTL_PIVOT,
    CFS_CTL_PIVOT_MANUAL,
    CFS_CTL_PIVOT_AUTO,
    CFS_CTL_BANDWIDTH,
    CFS_CTL_MERGE,
    CFS_CTL_COPY,
    CFS_CTL_FINISH,
    CFS_CTL_REVERT,
    CFS_CTL_OP_MAX,
};

struct cfs_ctl_cmd {
    enum cfs_ctl_op op;
    uint64_t bandwidth;   /* CFS_CTL_BANDWIDTH: bytes/s, 0 = unlimited */
    char name[256];       /* CFS_CTL_MERGE, CFS_CTL_REVERT: the snapshot (a
                             snapshots/ entry) */
    enum cfs_merge_mode merge_mode; /* CFS_CTL_MERGE */
    /* CFS_CTL_COPY: DEST (absolute, shorter than PATH_MAX), the mode word
     * (CFS_COPY_DEFAULT when none was given) and `manual` */
    char dest[CFS_CTL_MAX_WRITE];
    enum cfs_copy_mode copy_mode;
    bool manual;
    bool force;           /* CFS_CTL_REVERT: `force` (later snapshots go) */
};

/* Parse one write of LEN bytes (not NUL-terminated). 0 and *OUT filled;
 * -EINVAL for an unknown or malformed command (*WHY, static text, says
 * what is wrong); -E2BIG for more than CFS_CTL_MAX_WRITE bytes. */
int cfs_ctl_parse(const char *buf, size_t len, struct cfs_ctl_cmd *out,
                  const char **why);

/* "10M" -> 10485760: a decimal number with an optional K, M, G or T
 * suffix (powers of 1024; a trailing "B", "iB" or "/s" is not taken).
 * -EINVAL if malformed, negative or over UINT64_MAX. Also used for
 * -o bandwidth=N. */
int cfs_size_parse(const char *s, uint64_t *out);

/* "abort" ... (for logs). */
const char *cfs_ctl_op_to_string(enum cfs_ctl_op op);

/* The commands, one per line, as reading ctl lists them. */
extern const char cfs_ctl_usage[];
