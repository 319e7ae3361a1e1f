/* fuzz_path.c — cfs_path_parse on any string: no crash, and what it
 * accepts is a path of the tree with components that fit a directory
 * entry. */
#include <errno.h>
#include <stdbool.h>

#include "chainfs/path.h"
#include "fuzz.h"

static void check_component(const char *c)
{
    size_t len = strnlen(c, 256);

    FUZZ_ASSERT(len < 256);
    FUZZ_ASSERT(!strchr(c, '/'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    struct cfs_path p;
    int r;

    memset(&p, 0xa5, sizeof(p)); /* garbage, as a caller's stack holds */
    r = cfs_path_parse(s, &p);
    FUZZ_ASSERT(r == 0 || r == -ENOENT || r == -ENAMETOOLONG ||
                r == -EINVAL);
    if (r == 0) {
        FUZZ_ASSERT(p.kind > CFS_NODE_INVALID && p.kind < CFS_NODE_KIND_MAX);
        /* chainfs's own nodes (issue 11: /.chainfs) name no domain */
        bool own = p.kind >= CFS_NODE_OWN;
        if (own)
            FUZZ_ASSERT(p.dom[0] == '\0' && p.disk[0] == '\0' && p.snap[0] == '\0');
        if (p.kind >= CFS_NODE_DOMAIN && !own) {
            check_component(p.dom);
            FUZZ_ASSERT(p.dom[0] != '\0');
        }
        /* a disk's nodes name the disk; the domain's own (issue 10:
         * CFS_NODE_DOM_*) name none */
        bool dom_own = p.kind >= CFS_NODE_DOM_JOB && !own;
        if (p.kind >= CFS_NODE_DISK && !dom_own && !own) {
            check_component(p.disk);
            FUZZ_ASSERT(p.disk[0] != '\0');
        }
        if (dom_own)
            FUZZ_ASSERT(p.disk[0] == '\0');
        if ((p.kind >= CFS_NODE_SNAPSHOT && p.kind <= CFS_NODE_DISK_RAW) ||
            (p.kind >= CFS_NODE_DOM_SNAPSHOT && !own)) {
            check_component(p.snap);
            FUZZ_ASSERT(p.snap[0] != '\0');
        }
        (void)cfs_node_is_file(p.kind);
    }
    free(s);
    return 0;
}
