/* test_joblog.c — the job lines (issue 11, fs/core/events.c): every job's
 * start, end and failure is one line carrying the job type, domain,
 * disk, snapshot and, for a failure, the error with libvirt's message,
 * at the priority a sysadmin filters on. The engine runs against the
 * fake backend; the log is captured through cfs_log_set_sink(). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include "tmpdir.h"

#include "chainfs/engine.h"
#include "chainfs/log.h"
#include "fake.h"

/* ---- the captured log ---------------------------------------------------------- */

struct captured {
    pthread_mutex_t lock;
    size_t n;
    int prio[512];
    char *line[512];
};

static struct captured cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void sink(int prio, const char *line, void *opaque)
{
    struct captured *c = opaque;
    pthread_mutex_lock(&c->lock);
    if (c->n < ELEMENTSOF(c->line)) {
        c->prio[c->n] = prio;
        c->line[c->n] = cfs_xstrdup(line);
        c->n++;
    }
    pthread_mutex_unlock(&c->lock);
}

static void cap_clear(void)
{
    pthread_mutex_lock(&cap.lock);
    for (size_t i = 0; i < cap.n; i++)
        free(cap.line[i]);
    cap.n = 0;
    pthread_mutex_unlock(&cap.lock);
}

/* The one captured line that starts with PREFIX (fails if none, or more
 * than one: one line per event); its priority in *PRIO. */
static const char *line_starting(const char *prefix, int *prio)
{
    const char *found = NULL;
    size_t count = 0;
    pthread_mutex_lock(&cap.lock);
    for (size_t i = 0; i < cap.n; i++)
        if (strncmp(cap.line[i], prefix, strlen(prefix)) == 0) {
            found = cap.line[i];
            *prio = cap.prio[i];
            count++;
        }
    pthread_mutex_unlock(&cap.lock);
    if (count != 1) {
        for (size_t i = 0; i < cap.n; i++)
            fprintf(stderr, "  captured <%d> %s\n", cap.prio[i], cap.line[i]);
        fail_msg("%zu lines start with '%s', expected 1", count, prefix);
    }
    return found;
}

/* How many captured lines contain NEEDLE. */
static size_t lines_containing(const char *needle)
{
    size_t count = 0;
    pthread_mutex_lock(&cap.lock);
    for (size_t i = 0; i < cap.n; i++)
        count += strstr(cap.line[i], needle) != NULL;
    pthread_mutex_unlock(&cap.lock);
    return count;
}

/* ---- the engine ------------------------------------------------------------------ */

struct fx {
    char dir[64];
    char state[128];
    char paths[3][128];
    struct cfs_backend *be;
    struct cfs_engine *e;
};

/* vm1/vda: base <- s1 <- s2 (active), running; s1, s2 libvirt's. */
static struct cfs_backend *new_backend(struct fx *f)
{
    struct cfs_backend *be = cfs_fake_backend_new();
    const char *chain[] = {f->paths[0], f->paths[1], f->paths[2]};
    const char *meta[] = {"s2", "s1", NULL};
    cfs_fake_add_simple(be, "vm1", CFS_DOM_RUNNING, "vda", chain, meta, 3);
    return be;
}

static void start_engine(struct fx *f)
{
    struct cfs_engine_config cfg = {.state_dir = f->state};
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, &err), 0);
    assert_int_equal(cfs_engine_start(f->e, false, &err), 0);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-joblog-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    const char *files[] = {"s2.qcow2", "s1.qcow2", "base.qcow2"};
    for (int i = 0; i < 3; i++) {
        snprintf(f->paths[i], sizeof(f->paths[i]), "%s/%s", f->dir, files[i]);
        FILE *fp = fopen(f->paths[i], "w");
        assert_non_null(fp);
        fclose(fp);
    }
    /* debug on: the refusal's job line is a debug line */
    cfs_log_init(false, true);
    cfs_log_set_sink(sink, &cap);
    f->be = new_backend(f);
    start_engine(f);
    cap_clear(); /* start-up's lines */
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cfs_engine_free(f->e);
    cfs_log_set_sink(NULL, NULL);
    cap_clear();
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

static enum cfs_job_phase job_phase(struct fx *f)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, "vm1", "vda");
    enum cfs_job_phase st = s ? s->job.phase : CFS_PHASE_NONE;
    pthread_mutex_unlock(&t->lock);
    return st;
}

/* ---- tests -------------------------------------------------------------------------- */

/* rmdir s1 (a commit of s1 into base) that completes: a start line and
 * an end line, both naming type, domain/disk, snapshot and the files. */
static void test_commit_completed(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    cfs_fake_job_complete(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    assert_int_equal(job_phase(f), CFS_PHASE_COMPLETED);

    int prio;
    char want[512];
    snprintf(want, sizeof(want),
             "job 1 started: commit vm1/vda snapshot s1 (top %s, base %s)",
             f->paths[1], f->paths[2]);
    assert_string_equal(line_starting("job 1 started:", &prio), want);
    assert_int_equal(prio, LOG_NOTICE);

    const char *end = line_starting("job 1 completed:", &prio);
    assert_int_equal(prio, LOG_NOTICE);
    snprintf(want, sizeof(want),
             "job 1 completed: commit vm1/vda snapshot s1 (top %s, base %s) in ",
             f->paths[1], f->paths[2]);
    assert_memory_equal(end, want, strlen(want));
    assert_non_null(strstr(end, " s"));
    /* the edge in between, at info */
    assert_string_equal(line_starting("job 1 running:", &prio),
                        "job 1 running: commit vm1/vda snapshot s1 (was starting)");
    assert_int_equal(prio, LOG_INFO);
    /* no second failure/end line of the same job */
    assert_int_equal(lines_containing("failed"), 0);
}

/* libvirt refuses the commit: the failure line carries libvirt's
 * message, at LOG_ERR, once. */
static void test_commit_refused_by_libvirt(void **state)
{
    struct fx *f = *state;
    cfs_fake_fail_next(f->be, "commit_start", EIO,
                       "internal error: unable to execute QEMU command 'block-commit': qemu said no");
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), -EIO);
    assert_int_equal(job_phase(f), CFS_PHASE_FAILED);

    int prio;
    const char *l = line_starting("job 1 failed:", &prio);
    assert_int_equal(prio, LOG_ERR);
    char want[512];
    snprintf(want, sizeof(want),
             "job 1 failed: commit vm1/vda snapshot s1 (top %s, base %s) after ",
             f->paths[1], f->paths[2]);
    assert_memory_equal(l, want, strlen(want));
    assert_non_null(strstr(l, " s: rmdir s1: internal error: unable to execute QEMU "
                              "command 'block-commit': qemu said no"));
    assert_int_equal(lines_containing("qemu said no"), 2); /* + the rmdir's warning */
}

/* A commit that fails while it runs (libvirt's block-job event says
 * failed after part of it was copied): the line says so, with the
 * partly written base. */
static void test_commit_failed_midway(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    cfs_fake_job_progress(f->be, "vm1", "vda", 1 << 20, 64 << 20);
    cfs_engine_run_pending(f->e);
    cfs_fake_job_fail(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    assert_int_equal(job_phase(f), CFS_PHASE_FAILED);

    int prio;
    const char *l = line_starting("job 1 failed:", &prio);
    assert_int_equal(prio, LOG_ERR);
    assert_non_null(strstr(l, "commit vm1/vda snapshot s1 (top "));
    assert_non_null(strstr(l, ": libvirt reported the block job as failed"));
    assert_non_null(strstr(l, "(the base was partly written)"));
}

/* Aborted from outside: canceled, at LOG_WARNING. */
static void test_commit_canceled(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s2"), 0);
    f->be->ops->job_abort(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    assert_int_equal(job_phase(f), CFS_PHASE_CANCELED);
    int prio;
    const char *l = line_starting("job 1 canceled:", &prio);
    assert_int_equal(prio, LOG_WARNING);
    assert_non_null(strstr(l, "active-commit vm1/vda snapshot s2 (top "));
    assert_non_null(strstr(l, ": the block job was canceled outside chainfs"));
}

/* mkdir: the snapshot job's lines name the new overlay at the end; a
 * snapshot libvirt refuses fails with libvirt's message. */
static void test_snapshot_lines(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "n1"), 0);
    int prio;
    char want[512];
    snprintf(want, sizeof(want), "job 1 started: snapshot vm1/vda snapshot n1 (base %s)",
             f->paths[0]);
    assert_string_equal(line_starting("job 1 started:", &prio), want);
    assert_int_equal(prio, LOG_NOTICE);
    const char *l = line_starting("job 1 completed:", &prio);
    assert_int_equal(prio, LOG_NOTICE);
    assert_non_null(strstr(l, "snapshot vm1/vda snapshot n1 (top "));
    assert_non_null(strstr(l, "vm1.vda.n1.qcow2, base "));

    cfs_fake_fail_next(f->be, "snapshot_create_multi", EACCES, "access denied by policy");
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "n2"), -EACCES);
    l = line_starting("job 2 failed:", &prio);
    assert_int_equal(prio, LOG_ERR);
    assert_non_null(strstr(l, "snapshot vm1/vda snapshot n2 "));
    assert_non_null(strstr(l, ": mkdir n2: access denied by policy"));
}

/* A refusal is logged by its own warning; the failed job it records
 * says "refused" at debug only (one warning per refusal). */
static void test_refusal_is_debug(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "s1"), -EEXIST);
    int prio;
    const char *l = line_starting("job 1 refused:", &prio);
    assert_int_equal(prio, LOG_DEBUG);
    assert_non_null(strstr(l, "snapshot vm1/vda snapshot s1: mkdir s1: "));
    line_starting("mkdir vm1/vda/snapshots/s1 refused", &prio);
    assert_int_equal(prio, LOG_WARNING);
}

/* A job the journal had is taken up by the next daemon: "resumed", and
 * its end is a line like any other. */
static void test_recovered_job_resumed(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    /* the daemon dies; the next one finds the chain as it was and no job
     * in libvirt: the merge did not finish */
    cfs_engine_free(f->e);
    f->be = new_backend(f);
    cap_clear();
    start_engine(f);
    assert_int_equal(job_phase(f), CFS_PHASE_FAILED);
    int prio;
    const char *l = line_starting("job 1 resumed (running):", &prio);
    assert_int_equal(prio, LOG_NOTICE);
    assert_non_null(strstr(l, "commit vm1/vda snapshot s1 (top "));
    l = line_starting("job 1 failed:", &prio);
    assert_int_equal(prio, LOG_ERR);
    assert_non_null(strstr(l, "commit vm1/vda snapshot s1 (top "));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_completed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_refused_by_libvirt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_failed_midway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_canceled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_is_debug, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovered_job_resumed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
