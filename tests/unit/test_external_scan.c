/* test_external_scan.c — the timer's re-reads of a running domain look
 * for block jobs chainfs did not start at most every EXTERNAL_SCAN_MS
 * (fs/core/engine_int.h, 8 s) per domain; a domain event's re-read looks
 * at once, and a disk where one is shown is asked on every re-read. The
 * engine runs with its own thread here (as mounted), refreshing every
 * 20 ms, against the fake backend, which counts its calls. Issue 12: a
 * refresh is one bulk call (list_stats); a domain whose statistics did
 * not change is not re-read, but its look for an external job still
 * comes with the timer. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include "tmpdir.h"

#include "chainfs/engine.h"
#include "chainfs/log.h"
#include "chainfs/tree.h"
#include "fake.h"

/* EXTERNAL_SCAN_MS of fs/core/engine_int.h (private to the core) */
#define SCAN_MS 8000
#define REFRESH_MS 20

struct fx {
    char dir[64];
    char path[128];
    struct cfs_backend *be;
    struct cfs_engine *e;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/cfs-scan-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/base.qcow2", f->dir);
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fclose(fp);
    f->be = cfs_fake_backend_new();
    const char *chain[] = {f->path};
    cfs_fake_add_simple(f->be, "vm1", CFS_DOM_RUNNING, "vda", chain, NULL, 1);
    char state_dir[128];
    snprintf(state_dir, sizeof(state_dir), "%s/state", f->dir);
    struct cfs_engine_config cfg = {.state_dir = state_dir,
                                    .refresh_ms = REFRESH_MS};
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, NULL), 0);
    assert_int_equal(cfs_engine_start(f->e, true, NULL), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cfs_engine_free(f->e);
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

/* Wait (at most 20 s) until the fake has answered N more OP calls
 * than BEFORE: N re-reads of vm1 by the timer. */
static void wait_op(struct fx *f, const char *op, unsigned before, unsigned n)
{
    int64_t end = mono_ms() + 20000;
    while (cfs_fake_calls(f->be, op) - before < n) {
        assert_true(mono_ms() < end);
        usleep(5000);
    }
}

/* N refreshes by the timer (bulk calls) */
static void wait_rereads(struct fx *f, unsigned before, unsigned n)
{
    int64_t end = mono_ms() + 20000;
    while (cfs_fake_calls(f->be, "list_stats") - before < n) {
        assert_true(mono_ms() < end);
        usleep(5000);
    }
}

static enum cfs_job_type shown(struct fx *f)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, "vm1", "vda");
    enum cfs_job_type type = s ? s->external.type : CFS_JOB_NONE;
    pthread_mutex_unlock(&t->lock);
    return type;
}

static void test_timer_rereads_throttled(void **state)
{
    struct fx *f = *state;
    int64_t t0 = mono_ms();
    unsigned gets = cfs_fake_calls(f->be, "job_get");
    unsigned reads = cfs_fake_calls(f->be, "list_stats");
    /* 20 refreshes: before, 20 job info calls; now the first one after
     * start looks, then one per SCAN_MS */
    wait_rereads(f, reads, 20);
    int64_t elapsed = mono_ms() - t0;
    unsigned asked = cfs_fake_calls(f->be, "job_get") - gets;
    print_message("20 re-reads in %lld ms, %u job info calls\n",
                  (long long)elapsed, asked);
    assert_true(asked >= 1);
    assert_true(asked <= 1 + (unsigned)(elapsed / SCAN_MS));
}

static void test_event_looks_and_shown_followed(void **state)
{
    struct fx *f = *state;
    unsigned reads = cfs_fake_calls(f->be, "list_stats");
    wait_rereads(f, reads, 3); /* the first look after start is done */
    /* a pull started by hand: no event, the timer's re-reads find it
     * within SCAN_MS (and a refresh) */
    cfs_fake_start_external_job(f->be, "vm1", "vda", CFS_JOB_PULL);
    int64_t start = mono_ms();
    while (shown(f) == CFS_JOB_NONE) {
        assert_true(mono_ms() - start < SCAN_MS + 5000);
        usleep(10000);
    }
    assert_int_equal(shown(f), CFS_JOB_PULL);
    /* shown: asked on every re-read (and poll) from now on; and the
     * re-reads ask no block statistics while the pull runs (QEMU 7.2
     * crashes when block nodes are queried as a pull ends, design §7.4) */
    unsigned gets = cfs_fake_calls(f->be, "job_get");
    reads = cfs_fake_calls(f->be, "read_domain");
    unsigned light = cfs_fake_calls(f->be, "read_domain_light");
    wait_op(f, "read_domain_light", light, 5);
    assert_true(cfs_fake_calls(f->be, "job_get") - gets >= 5);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), reads);
}

static void test_domain_event_looks_at_once(void **state)
{
    struct fx *f = *state;
    unsigned reads = cfs_fake_calls(f->be, "list_stats");
    wait_rereads(f, reads, 3); /* the first look after start is done */
    cfs_fake_start_external_job(f->be, "vm1", "vda", CFS_JOB_COPY);
    /* a domain event (the same domain put again): its re-read looks */
    struct cfs_domain *d = NULL;
    assert_int_equal(f->be->ops->read_domain(f->be, "vm1", &d), 0);
    cfs_fake_put_domain(f->be, d);
    cfs_domain_free(d);
    int64_t start = mono_ms();
    while (shown(f) == CFS_JOB_NONE) {
        assert_true(mono_ms() - start < SCAN_MS / 2);
        usleep(10000);
    }
    assert_int_equal(shown(f), CFS_JOB_COPY);
}

int main(void)
{
    cfs_log_init(false, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_timer_rereads_throttled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_looks_and_shown_followed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_domain_event_looks_at_once, setup, teardown),
    };
    return cmocka_run_group_tests_name("external_scan", tests, NULL, NULL);
}
