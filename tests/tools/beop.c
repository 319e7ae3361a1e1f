/* beop — test tool: the libvirt backend's forward-merge ops from the
 * command line, so tests/integration/backend_pull.sh checks them against
 * a real libvirtd. Prints "rc=N" (0 or the negative errno) and, on a
 * failure, the backend's message; exit 0 on success, 1 on failure, 2 on
 * bad usage.
 *
 *   beop URI pull DOM DISK TOP BASE BANDWIDTH
 *   beop URI drop DOM NAME
 *   beop URI retarget DOM NAME DISK NEW_SOURCE
 *   beop URI job DOM DISK          (prints "type cur end" or "none") */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chainfs/backend.h"

static void on_domain(void *opaque, const char *dom)
{
    (void)opaque;
    (void)dom;
}

static void on_job(void *opaque, const char *dom, const char *disk,
                   enum cfs_job_type type, enum cfs_job_event status)
{
    (void)opaque;
    (void)dom;
    (void)disk;
    (void)type;
    (void)status;
}

static void on_connection(void *opaque, bool up)
{
    (void)opaque;
    (void)up;
}

static const struct cfs_backend_events events = {
    .domain_changed = on_domain,
    .block_job = on_job,
    .connection = on_connection,
};

static int usage(void)
{
    fprintf(stderr, "usage: beop URI pull DOM DISK TOP BASE BANDWIDTH\n"
                    "       beop URI drop DOM NAME\n"
                    "       beop URI retarget DOM NAME DISK NEW_SOURCE\n"
                    "       beop URI job DOM DISK\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct cfs_backend *be;
    const char *op;
    int r;

    if (argc < 4)
        return usage();
    op = argv[2];
    if (!((strcmp(op, "pull") == 0 && argc == 8) ||
          (strcmp(op, "drop") == 0 && argc == 5) ||
          (strcmp(op, "retarget") == 0 && argc == 7) ||
          (strcmp(op, "job") == 0 && argc == 5)))
        return usage();
    be = cfs_libvirt_backend_new(argv[1]);
    r = be->ops->connect(be, &events, NULL);
    if (r == 0) {
        if (strcmp(op, "pull") == 0) {
            r = be->ops->pull_start(be, argv[3], argv[4], argv[5], argv[6],
                                    strtoull(argv[7], NULL, 10));
        } else if (strcmp(op, "drop") == 0) {
            r = be->ops->snapshot_drop(be, argv[3], argv[4]);
        } else if (strcmp(op, "retarget") == 0) {
            r = be->ops->snapshot_retarget(be, argv[3], argv[4], argv[5], argv[6]);
        } else {
            struct cfs_job_progress p;

            r = be->ops->job_get(be, argv[3], argv[4], &p);
            if (r == 0 && p.present)
                printf("%s %llu %llu\n", cfs_job_type_to_string(p.type),
                       (unsigned long long)p.cur, (unsigned long long)p.end);
            else if (r == 0)
                printf("none\n");
        }
    }
    printf("rc=%d\n", r);
    if (r < 0)
        printf("%s\n", cfs_backend_errmsg());
    be->ops->destroy(be);
    return r < 0 ? 1 : 0;
}
