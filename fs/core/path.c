/* path.c — turn a path inside the mount into the node it names.
 *
 * The tree has a fixed shape, so a path is classified by its depth and
 * its fixed file names alone:
 *   depth 0  /                         root
 *   depth 1  /DOM                      domain
 *   depth 2  /DOM/DISK                 disk
 *   depth 3  /DOM/DISK/FILE            chain, chain.json, job, job.json,
 *                                      wait, snapshots
 *   depth 4  /DOM/DISK/snapshots/NAME  snapshot
 *   depth 5  .../NAME/FILE             info, info.json
 * Empty components ("//", a trailing "/") are ignored; "." and ".." name
 * nothing (FUSE resolves them before we see a path).
 *
 * Pure; thread-safe. */
#include <errno.h>

#include "chainfs/path.h"
#include "chainfs/util.h"

#define COMPONENT_MAX 255

const char *const cfs_disk_entries[] = {
    "chain", "chain.json", "job", "job.json", "wait", "snapshots", NULL,
};

const char *const cfs_snapshot_entries[] = { "info", "info.json", NULL };

static const struct {
    const char *name;
    enum cfs_node_kind kind;
} disk_files[] = {
    { "chain", CFS_NODE_CHAIN },
    { "chain.json", CFS_NODE_CHAIN_JSON },
    { "job", CFS_NODE_JOB },
    { "job.json", CFS_NODE_JOB_JSON },
    { "wait", CFS_NODE_WAIT },
    { "snapshots", CFS_NODE_SNAPDIR },
};

static bool component_eq(const char *c, size_t len, const char *s)
{
    return strlen(s) == len && memcmp(c, s, len) == 0;
}

int cfs_path_parse(const char *path, struct cfs_path *out)
{
    struct cfs_path p = { .kind = CFS_NODE_ROOT };
    unsigned depth = 0;

    if (!path || path[0] != '/' || !out)
        return -ENOENT;

    for (const char *c = path; *c;) {
        while (*c == '/')
            c++;
        if (!*c)
            break;
        size_t len = strcspn(c, "/");
        if (len > COMPONENT_MAX)
            return -ENAMETOOLONG;
        if (component_eq(c, len, ".") || component_eq(c, len, ".."))
            return -ENOENT;

        depth++;
        switch (depth) {
        case 1:
            memcpy(p.dom, c, len);
            p.kind = CFS_NODE_DOMAIN;
            break;
        case 2:
            memcpy(p.disk, c, len);
            p.kind = CFS_NODE_DISK;
            break;
        case 3:
            p.kind = CFS_NODE_INVALID;
            for (size_t i = 0; i < ELEMENTSOF(disk_files); i++)
                if (component_eq(c, len, disk_files[i].name))
                    p.kind = disk_files[i].kind;
            if (p.kind == CFS_NODE_INVALID)
                return -ENOENT;
            break;
        case 4:
            if (p.kind != CFS_NODE_SNAPDIR)
                return -ENOENT;
            memcpy(p.snap, c, len);
            p.kind = CFS_NODE_SNAPSHOT;
            break;
        case 5:
            if (component_eq(c, len, "info"))
                p.kind = CFS_NODE_INFO;
            else if (component_eq(c, len, "info.json"))
                p.kind = CFS_NODE_INFO_JSON;
            else
                return -ENOENT;
            break;
        default:
            return -ENOENT;
        }
        c += len;
    }

    *out = p;
    return 0;
}

bool cfs_node_is_file(enum cfs_node_kind k)
{
    switch (k) {
    case CFS_NODE_CHAIN:
    case CFS_NODE_CHAIN_JSON:
    case CFS_NODE_JOB:
    case CFS_NODE_JOB_JSON:
    case CFS_NODE_WAIT:
    case CFS_NODE_INFO:
    case CFS_NODE_INFO_JSON:
        return true;
    default:
        return false;
    }
}
