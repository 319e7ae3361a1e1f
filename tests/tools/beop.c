/* beop — test tool: the libvirt backend's forward-merge ops from the
 * command line, so tests/integration/backend_pull.sh checks them against
 * a real libvirtd. Prints "rc=N" (0 or the negative errno) and, on a
 * failure, the backend's message; exit 0 on success, 1 on failure, 2 on
 * bad usage.
 *
 *   beop URI pull DOM DISK TOP BASE BANDWIDTH
 *   beop URI drop DOM NAME
 *   beop URI retarget DOM NAME DISK NEW_SOURCE
 *   beop URI job DOM DISK          (prints "type cur end" or "none")
 *
 * Issue 10 (tests/integration/backend_multi.sh):
 *   beop URI multi DOM NAME DESCRIPTION DISK=OVERLAY...   ("-": none)
 *   beop URI read DOM      (reads twice, the second from the snapshot
 *                           cache; prints a "snap ..." line per snapshot
 *                           and an "unsnappable TARGET WHY" line per disk)
 *   beop URI read-again DOM FILE   (reads, waits until FILE exists, reads
 *                           again with the same backend and prints that)
 *   beop URI agent-timeout DOM SECONDS
 *   beop URI freeze DOM / beop URI thaw DOM   (prints "n=N")
 *   beop URI sources DOM DISK=PATH...          (qcow2 files)
 *   beop URI retarget-multi DOM NAME current|keep DISK=SOURCE...
 *   beop URI forget DOM DISK NAME
 *   beop URI forget-together DOM NAME DISK...  (one thread per disk, all
 *                           let go at once; an rc line per disk)
 *
 * Issue 12 (tests/integration/remote_tcp.sh):
 *   beop URI file-exists PATH      (rc=1 a file, rc=0 none, rc=-95 no
 *                           active pool over PATH's directory)
 *   beop URI list-stats DOM FILE   (list_stats as the engine calls it,
 *                           again and again until FILE exists; prints
 *                           "listed N missing M": calls, and calls that
 *                           left DOM out) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
                    "       beop URI job DOM DISK\n"
                    "       beop URI multi DOM NAME DESCRIPTION DISK=OVERLAY...\n"
                    "       beop URI read DOM\n"
                    "       beop URI read-again DOM FILE\n"
                    "       beop URI agent-timeout DOM SECONDS\n"
                    "       beop URI freeze|thaw DOM\n"
                    "       beop URI sources DOM DISK=PATH...\n"
                    "       beop URI retarget-multi DOM NAME current|keep DISK=SOURCE...\n"
                    "       beop URI forget DOM DISK NAME\n"
                    "       beop URI forget-together DOM NAME DISK...\n"
                    "       beop URI file-exists PATH\n");
    return 2;
}

/* Split each "A=B" of ARGV[0..N-1] into LEFT[i] and RIGHT[i] (in place);
 * false if one has no '='. */
static bool split_pairs(char **argv, size_t n, const char **left, const char **right)
{
    for (size_t i = 0; i < n; i++) {
        char *eq = strchr(argv[i], '=');

        if (!eq)
            return false;
        *eq = '\0';
        left[i] = argv[i];
        right[i] = eq + 1;
    }
    return true;
}

static void print_domain(const struct cfs_domain *d)
{
    for (size_t i = 0; i < d->n_snaps; i++) {
        const struct cfs_snap_info *si = &d->snaps[i];

        printf("snap %s parent=%s current=%d created=%lld disks=", si->name,
               si->parent ? si->parent : "-", si->current, (long long)si->created);
        for (size_t k = 0; k < si->n_disks; k++)
            printf("%s%s:%s:%s", k ? "," : "", si->disks[k].target,
                   si->disks[k].snapshot, si->disks[k].source ? si->disks[k].source : "-");
        printf(" description=%s\n", si->description ? si->description : "-");
    }
    for (size_t i = 0; i < d->n_unsnappable; i++)
        printf("unsnappable %s %s\n", d->unsnappable[i].target, d->unsnappable[i].why);
}

struct forget_arg {
    struct cfs_backend *be;
    const char *dom, *disk, *name;
    pthread_barrier_t *go;
    int r;
    char msg[512];
};

static void *forget_thread(void *opaque)
{
    struct forget_arg *a = opaque;

    pthread_barrier_wait(a->go);
    a->r = a->be->ops->snapshot_forget(a->be, a->dom, a->disk, a->name);
    snprintf(a->msg, sizeof(a->msg), "%s", a->r < 0 ? cfs_backend_errmsg() : "");
    return NULL;
}

/* The issue 10 ops; -1000 for bad usage. */
static int op10(struct cfs_backend *be, const char *op, int argc, char **argv)
{
    const char *left[64], *right[64];
    size_t n;
    int r;

    if (strcmp(op, "file-exists") == 0 && argc == 4)
        return be->ops->file_exists(be, argv[3]);
    if (strcmp(op, "list-stats") == 0 && argc == 5) {
        unsigned long listed = 0, missing = 0;

        while (access(argv[4], F_OK) != 0) {
            struct cfs_dom_summary *v = NULL;
            size_t nv = 0;
            bool seen = false;

            r = be->ops->list_stats(be, true, &v, &nv);
            if (r < 0)
                return r;
            for (size_t i = 0; i < nv; i++)
                seen = seen || strcmp(v[i].name, argv[3]) == 0;
            cfs_dom_summaries_free(v, nv);
            listed++;
            missing += !seen;
        }
        printf("listed %lu missing %lu\n", listed, missing);
        return 0;
    }
    if (strcmp(op, "multi") == 0 && argc >= 7) {
        struct cfs_snapshot_disk sd[64];

        n = (size_t)argc - 6;
        if (n > 64 || !split_pairs(argv + 6, n, left, right))
            return -1000;
        for (size_t i = 0; i < n; i++)
            sd[i] = (struct cfs_snapshot_disk){ .disk = left[i], .overlay = right[i] };
        return be->ops->snapshot_create_multi(be, argv[3], argv[4], n, sd,
                                              strcmp(argv[5], "-") ? argv[5] : NULL);
    }
    if (strcmp(op, "read") == 0 && argc == 4) {
        struct cfs_domain *d = NULL;

        /* twice: the first read fills the backend's snapshot cache, the
         * second (printed) is served from it */
        r = be->ops->read_domain(be, argv[3], &d);
        cfs_domain_free(d);
        d = NULL;
        if (r == 0)
            r = be->ops->read_domain(be, argv[3], &d);
        if (r == 0)
            print_domain(d);
        cfs_domain_free(d);
        return r;
    }
    if (strcmp(op, "read-again") == 0 && argc == 5) {
        struct cfs_domain *d = NULL;
        struct stat st;

        r = be->ops->read_domain(be, argv[3], &d);
        cfs_domain_free(d);
        d = NULL;
        printf("first read rc=%d\n", r);
        fflush(stdout);
        while (r == 0 && stat(argv[4], &st) < 0)
            usleep(20 * 1000);
        if (r == 0)
            r = be->ops->read_domain(be, argv[3], &d);
        if (r == 0)
            print_domain(d);
        cfs_domain_free(d);
        return r;
    }
    if (strcmp(op, "agent-timeout") == 0 && argc == 5)
        return be->ops->agent_set_timeout(be, argv[3], atoi(argv[4]));
    if ((strcmp(op, "freeze") == 0 || strcmp(op, "thaw") == 0) && argc == 4) {
        unsigned count = 0;

        r = be->ops->agent_fs(be, argv[3], strcmp(op, "thaw") == 0, &count);
        if (r == 0)
            printf("n=%u\n", count);
        return r;
    }
    if (strcmp(op, "sources") == 0 && argc >= 5) {
        const char *formats[64];

        n = (size_t)argc - 4;
        if (n > 64 || !split_pairs(argv + 4, n, left, right))
            return -1000;
        for (size_t i = 0; i < n; i++)
            formats[i] = "qcow2";
        return be->ops->persistent_sources_set(be, argv[3], n, left, right, formats);
    }
    if (strcmp(op, "retarget-multi") == 0 && argc >= 7) {
        n = (size_t)argc - 6;
        if (n > 64 || !split_pairs(argv + 6, n, left, right))
            return -1000;
        return be->ops->snapshot_retarget_multi(be, argv[3], argv[4], n, left, right,
                                                strcmp(argv[5], "current") == 0);
    }
    if (strcmp(op, "forget") == 0 && argc == 6)
        return be->ops->snapshot_forget(be, argv[3], argv[4], argv[5]);
    if (strcmp(op, "forget-together") == 0 && argc >= 6) {
        struct forget_arg args[16];
        pthread_t th[16];
        pthread_barrier_t go;

        n = (size_t)argc - 5;
        if (n > 16)
            return -1000;
        pthread_barrier_init(&go, NULL, (unsigned)n);
        for (size_t i = 0; i < n; i++) {
            args[i] = (struct forget_arg){ .be = be, .dom = argv[3], .name = argv[4],
                                           .disk = argv[5 + i], .go = &go };
            pthread_create(&th[i], NULL, forget_thread, &args[i]);
        }
        r = 0;
        for (size_t i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
            printf("%s rc=%d%s%s\n", args[i].disk, args[i].r, args[i].r ? " " : "",
                   args[i].msg);
            if (args[i].r < 0 && r == 0)
                r = args[i].r;
        }
        pthread_barrier_destroy(&go);
        return r;
    }
    return -1000;
}

int main(int argc, char **argv)
{
    struct cfs_backend *be;
    const char *op;
    int r;

    if (argc < 4)
        return usage();
    op = argv[2];
    bool old = (strcmp(op, "pull") == 0 && argc == 8) ||
               (strcmp(op, "drop") == 0 && argc == 5) ||
               (strcmp(op, "retarget") == 0 && argc == 7) ||
               (strcmp(op, "job") == 0 && argc == 5);
    be = cfs_libvirt_backend_new(argv[1]);
    r = be->ops->connect(be, &events, NULL);
    if (r == 0 && !old) {
        r = op10(be, op, argc, argv);
        if (r == -1000) {
            be->ops->destroy(be);
            return usage();
        }
    } else if (r == 0) {
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
