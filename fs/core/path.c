/* path.c — turn a path inside the mount into the node it names.
 *
 * The tree has a fixed shape, so a path is classified by its depth and
 * its fixed file names alone:
 *   depth 0  /                         root
 *   depth 1  /DOM                      domain
 *            /.chainfs                 chainfs's own (issue 11; no domain)
 *   depth 2  /DOM/DISK                 disk
 *            /.chainfs/metrics.prom    metrics
 *            /DOM/FILE                 job, job.json, wait, ctl, snapshots
 *                                      (the domain's own, issue 10)
 *   depth 3  /DOM/DISK/FILE            chain, chain.json, job, job.json,
 *                                      wait, ctl, snapshots
 *            /DOM/snapshots/NAME       a domain-level snapshot
 *   depth 4  /DOM/DISK/snapshots/NAME  snapshot
 *            /DOM/snapshots/NAME/FILE  info, info.json
 *   depth 5  .../NAME/FILE             info, info.json, disk.raw
 * Empty components ("//", a trailing "/") are ignored; "." and ".." name
 * nothing (FUSE resolves them before we see a path). Which name is what
 * in which directory is the node table's (nodes.c, cfs_node_child).
 *
 * Pure; thread-safe. */
#include <errno.h>

#include "chainfs/path.h"
#include "chainfs/util.h"

#define COMPONENT_MAX 255

int cfs_path_parse(const char *path, struct cfs_path *out)
{
    struct cfs_path p = { .kind = CFS_NODE_ROOT };

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
        if ((len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
            return -ENOENT;

        /* what the name is in its directory (nodes.c describes each kind
         * once: its fixed name and where it lives) */
        p.kind = cfs_node_child(p.kind, c, len);
        switch (p.kind) {
        case CFS_NODE_INVALID:
            return -ENOENT;
        case CFS_NODE_DOMAIN:
            memcpy(p.dom, c, len);
            break;
        case CFS_NODE_DISK:
            memcpy(p.disk, c, len);
            break;
        case CFS_NODE_SNAPSHOT:
        case CFS_NODE_DOM_SNAPSHOT:
            memcpy(p.snap, c, len);
            break;
        default:
            break;
        }
        c += len;
    }

    *out = p;
    return 0;
}
