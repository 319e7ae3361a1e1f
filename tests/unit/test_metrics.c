/* test_metrics.c — issue 11's metrics: the strict text-format checker
 * (tests/tools/prom_check.c) refuses what the format or node_exporter's
 * textfile collector refuses; MOUNTPOINT/.chainfs/metrics.prom through
 * the engine with the fake backend: hidden from the root's listing,
 * found by lookup, valid, its counters moving with a mkdir/rmdir cycle,
 * a failed job, a refusal and an offline merge; a domain named .chainfs
 * is not shown. */
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
#include "chainfs/metrics.h"
#include "chainfs/nodes.h"
#include "fake.h"
#include "prom_check.h"

/* ---- the checker ------------------------------------------------------------ */

static void assert_valid(const char *text)
{
    char err[512];
    if (prom_check(text, strlen(text), err, sizeof(err)) != 0)
        fail_msg("refused: %s\n%s", err, text);
}

static void assert_refused(const char *text, const char *why)
{
    char err[512];
    if (prom_check(text, strlen(text), err, sizeof(err)) == 0)
        fail_msg("accepted (%s):\n%s", why, text);
    assert_true(err[0] != '\0');
}

#define HG(n, t) "# HELP " n " h\n# TYPE " n " " t "\n"

static void test_checker_accepts(void **state)
{
    (void)state;
    assert_valid(HG("a", "gauge") "a 1\n");
    assert_valid(HG("a_total", "counter") "a_total{x=\"1\"} 2\na_total{x=\"2\"} 3e3\n");
    /* labels in any order, escapes, a trailing comma, blanks */
    assert_valid(HG("a:b", "gauge") "a:b{x=\"q\\\"\\\\\\n\",y=\"\",} -1.5\n"
                 "a:b{y=\"1\", x=\"q\"}\t+Inf\n");
    assert_valid(HG("a", "gauge") "a NaN\n\n# a comment\n" HG("b", "untyped") "b -Inf\n");
    assert_valid("# HELP h with \\\\ and \\n escapes\n# TYPE h gauge\nh 0\n");
    assert_valid(HG("h", "histogram") "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
                 "h_sum 3\nh_count 2\n");
    assert_valid(HG("s", "summary") "s{quantile=\"0.5\"} 1\ns_sum 3\ns_count 2\n");
    /* TYPE before HELP is fine too */
    assert_valid("# TYPE a gauge\n# HELP a h\na 1\n");
}

static void test_checker_refuses(void **state)
{
    (void)state;
    assert_refused("", "empty");
    assert_refused(HG("a", "gauge") "a 1", "no final newline");
    assert_refused("a 1\n", "no HELP/TYPE");
    assert_refused("# HELP a h\na 1\n", "no TYPE");
    assert_refused("# TYPE a gauge\na 1\n", "no HELP");
    assert_refused("# HELP a h\n# TYPE a gauge\n# HELP a h\na 1\n", "two HELP");
    assert_refused(HG("a", "gauge") "# TYPE a gauge\na 1\n", "two TYPE");
    assert_refused("# HELP a h\na 1\n# TYPE a gauge\n", "TYPE after samples");
    assert_refused(HG("a", "gauge") "a 1\n" HG("b", "gauge") "b 1\na 2\n",
                   "family not together");
    assert_refused(HG("a", "gauge") "a 1\n" HG("b", "gauge") "b 1\n# HELP a h\n",
                   "family comes back in a comment");
    assert_refused(HG("a", "counter") "a 1\n", "counter not *_total");
    assert_refused(HG("a", "gauges") "a 1\n", "unknown type");
    assert_refused(HG("a", "gauge x") "a 1\n", "text after type");
    assert_refused(HG("1a", "gauge") "1a 1\n", "metric name starts with a digit");
    assert_refused(HG("a-b", "gauge") "a-b 1\n", "metric name with a dash");
    assert_refused(HG("a", "gauge") "a{1x=\"1\"} 1\n", "label name starts with a digit");
    assert_refused(HG("a", "gauge") "a{x:y=\"1\"} 1\n", "label name with a colon");
    assert_refused(HG("a", "gauge") "a{__x=\"1\"} 1\n", "reserved label name");
    assert_refused(HG("a", "gauge") "a{x=1} 1\n", "unquoted label value");
    assert_refused(HG("a", "gauge") "a{x=\"1} 1\n", "label value not closed");
    assert_refused(HG("a", "gauge") "a{x=\"\\t\"} 1\n", "invalid escape in a value");
    assert_refused(HG("a", "gauge") "a{x=\"1\" y=\"2\"} 1\n", "no comma");
    assert_refused(HG("a", "gauge") "a{x=\"1\"\n", "labels not closed");
    assert_refused(HG("a", "gauge") "a{x=\"1\",x=\"2\"} 1\n", "label twice");
    assert_refused(HG("a", "gauge") "a{x=\"1\"} 1\na{x=\"1\"} 2\n", "duplicate series");
    assert_refused(HG("a", "gauge") "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n",
                   "duplicate series, labels reordered");
    assert_refused(HG("a", "gauge") "a 1\na 2\n", "duplicate series, no labels");
    assert_refused(HG("a", "gauge") "a one\n", "value not a float");
    assert_refused(HG("a", "gauge") "a 0x10\n", "hex value");
    assert_refused(HG("a", "gauge") "a 1.2.3\n", "two points");
    assert_refused(HG("a", "gauge") "a \n", "no value");
    assert_refused(HG("a", "gauge") "a1\n", "name and value run together");
    assert_refused(HG("a", "gauge") "a 1 1700000000000\n", "timestamp");
    assert_refused(HG("a", "gauge") "b 1\n", "sample of another family");
    assert_refused(HG("h", "histogram") "h 1\n", "histogram sample without suffix");
    assert_refused(HG("a", "gauge") "a_sum 1\n", "gauge with a suffix");
    assert_refused("# HELP a bad \\t escape\n# TYPE a gauge\na 1\n", "bad HELP escape");
    assert_refused("# HELP\n", "HELP without a name");
    assert_refused(HG("a", "gauge") "a 1\n" "# HELP b h\n", "last family without TYPE");
    static const char nul[] = HG("a", "gauge") "a 1\nb\0 1\n";
    char err[512];
    assert_int_equal(prom_check(nul, sizeof(nul) - 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "NUL"));
}

/* ---- the engine ------------------------------------------------------------------- */

struct fx {
    char dir[64];
    char state[128];
    char paths[3][128];
    struct cfs_backend *be;
    struct cfs_engine *e;
};

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

/* vm1/vda: base <- s1 <- s2 (active), ST; and a running domain named
 * .chainfs that must not be shown. */
static int setup_st(void **state, enum cfs_dom_state st)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-metrics-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    const char *files[] = {"s2.qcow2", "s1.qcow2", "base.qcow2"};
    for (int i = 0; i < 3; i++) {
        snprintf(f->paths[i], sizeof(f->paths[i]), "%s/%s", f->dir, files[i]);
        touch(f->paths[i]);
    }
    f->be = cfs_fake_backend_new();
    const char *chain[] = {f->paths[0], f->paths[1], f->paths[2]};
    const char *meta[] = {"s2", "s1", NULL};
    cfs_fake_add_simple(f->be, "vm1", st, "vda", chain, meta, 3);
    const char *own[] = {"/nonexistent/own.qcow2"};
    cfs_fake_add_simple(f->be, CFS_OWN_DIR, CFS_DOM_RUNNING, "vda", own, NULL, 1);
    struct cfs_engine_config cfg = {.state_dir = f->state};
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, &err), 0);
    assert_int_equal(cfs_engine_start(f->e, false, &err), 0);
    *state = f;
    return 0;
}

static int setup_running(void **state) { return setup_st(state, CFS_DOM_RUNNING); }
static int setup_shutoff(void **state) { return setup_st(state, CFS_DOM_SHUTOFF); }

static int teardown(void **state)
{
    struct fx *f = *state;
    cfs_engine_free(f->e);
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

static struct cfs_path P(const char *s)
{
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(s, &p), 0);
    return p;
}

/* metrics.prom, checked (caller frees) */
static char *metrics(struct fx *f)
{
    struct cfs_path p = P("/.chainfs/metrics.prom");
    struct cfs_buf b = {0};
    assert_int_equal(cfs_engine_read(f->e, &p, &b), 0);
    char *text = cfs_buf_steal(&b);
    assert_valid(text);
    return text;
}

/* The value of series SERIES ("name" or "name{labels}") in metrics.prom;
 * fails if it is not there. */
static double value(struct fx *f, const char *series)
{
    char *text = metrics(f);
    size_t n = strlen(series);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, series, n) == 0 && l[n] == ' ') {
            double v = strtod(l + n + 1, NULL);
            free(text);
            return v;
        }
    }
    fail_msg("no series %s in:\n%s", series, text);
    free(text);
    return -1;
}

#define T(name, type) name "{type=\"" type "\"}"

static void test_hidden_and_found(void **state)
{
    struct fx *f = *state;
    /* the root lists the domains only: not .chainfs, nor the domain
     * called so */
    struct cfs_path root = P("/");
    char **names = NULL;
    assert_int_equal(cfs_engine_readdir(f->e, &root, &names), 0);
    assert_non_null(names);
    assert_string_equal(names[0], "vm1");
    assert_null(names[1]);
    cfs_strv_free(names);
    /* found by lookup: a directory listing metrics.prom, a file */
    struct cfs_node_attr a;
    struct cfs_path own = P("/.chainfs");
    assert_int_equal(cfs_engine_getattr(f->e, &own, &a), 0);
    assert_true(a.is_dir);
    assert_int_equal(cfs_engine_readdir(f->e, &own, &names), 0);
    assert_string_equal(names[0], "metrics.prom");
    assert_null(names[1]);
    cfs_strv_free(names);
    struct cfs_path m = P("/.chainfs/metrics.prom");
    assert_int_equal(cfs_engine_getattr(f->e, &m, &a), 0);
    assert_false(a.is_dir);
    assert_true(a.size > 0);
    assert_int_equal(cfs_node_type(m.kind)->mode, 0444);
    /* the domain of that name is nowhere: not a job's, not counted */
    assert_int_equal(cfs_engine_mkdir(f->e, CFS_OWN_DIR, "vda", "x"), -ENOENT);
    assert_true(cfs_tree_find_domain(cfs_engine_tree(f->e), CFS_OWN_DIR) == NULL);
    assert_true(value(f, "chainfs_domains") == 1);
    assert_true(value(f, "chainfs_disks") == 1);
    assert_true(value(f, "chainfs_layers") == 3);
    assert_true(value(f, "chainfs_chain_depth_max") == 3);
    assert_true(value(f, "chainfs_libvirt_up") == 1);
    assert_true(value(f, "chainfs_build_info{version=\"" CHAINFS_VERSION "\"}") == 1);
}

/* mkdir then rmdir of the active layer (an active commit): started,
 * completed, running while it runs, bytes merged, last duration; a
 * refusal and a failed commit are counted apart. */
static void test_counters_move(void **state)
{
    struct fx *f = *state;
    char *before = metrics(f);
    /* nothing yet: every type shown at 0, no duration yet */
    assert_null(strstr(before, "chainfs_job_last_duration_seconds"));
    assert_true(value(f, T("chainfs_jobs_completed_total", "snapshot")) == 0);
    free(before);

    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "n1"), 0);
    assert_true(value(f, T("chainfs_jobs_started_total", "snapshot")) == 1);
    assert_true(value(f, T("chainfs_jobs_completed_total", "snapshot")) == 1);
    assert_true(value(f, T("chainfs_jobs_running", "snapshot")) == 0);
    assert_true(value(f, T("chainfs_job_last_duration_seconds", "snapshot")) >= 0);
    assert_true(value(f, "chainfs_layers") == 4);
    assert_true(value(f, "chainfs_chain_depth_max") == 4);

    /* a refusal: the name exists */
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "n1"), -EEXIST);
    assert_true(value(f, T("chainfs_jobs_refused_total", "snapshot")) == 1);
    assert_true(value(f, T("chainfs_jobs_failed_total", "snapshot")) == 0);
    assert_true(value(f, T("chainfs_jobs_started_total", "snapshot")) == 1);

    /* rmdir of the active layer: an active commit, running */
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "n1"), 0);
    assert_true(value(f, T("chainfs_jobs_running", "active-commit")) == 1);
    assert_true(value(f, T("chainfs_jobs_started_total", "active-commit")) == 1);
    assert_true(value(f, T("chainfs_merged_bytes_total", "active-commit")) == 0);
    cfs_fake_job_progress(f->be, "vm1", "vda", 16 << 20, 64 << 20);
    cfs_engine_run_pending(f->e);
    cfs_fake_job_ready(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    assert_true(value(f, T("chainfs_jobs_running", "active-commit")) == 0);
    assert_true(value(f, T("chainfs_jobs_completed_total", "active-commit")) == 1);
    assert_true(value(f, T("chainfs_merged_bytes_total", "active-commit")) == 64 << 20);
    assert_true(value(f, T("chainfs_job_last_duration_seconds", "active-commit")) >= 0);
    assert_true(value(f, "chainfs_layers") == 3);

    /* a commit of s1 that fails */
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    assert_true(value(f, T("chainfs_jobs_running", "commit")) == 1);
    cfs_fake_job_progress(f->be, "vm1", "vda", 1 << 20, 8 << 20);
    cfs_engine_run_pending(f->e);
    cfs_fake_job_fail(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    assert_true(value(f, T("chainfs_jobs_running", "commit")) == 0);
    assert_true(value(f, T("chainfs_jobs_failed_total", "commit")) == 1);
    assert_true(value(f, T("chainfs_jobs_completed_total", "commit")) == 0);
    assert_true(value(f, T("chainfs_merged_bytes_total", "commit")) == 0);
    /* what ended before did not move */
    assert_true(value(f, T("chainfs_jobs_completed_total", "active-commit")) == 1);
    assert_true(value(f, T("chainfs_merged_bytes_total", "active-commit")) == 64 << 20);
    assert_true(value(f, T("chainfs_jobs_completed_total", "snapshot")) == 1);
}

/* the connection down: libvirt_up 0 */
static void test_conn_down(void **state)
{
    struct fx *f = *state;
    cfs_fake_fail_next(f->be, "snapshot_create_multi", ENOTCONN, "connection closed");
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "x"), -ENOTCONN);
    assert_true(value(f, "chainfs_libvirt_up") == 0);
    assert_true(value(f, T("chainfs_jobs_failed_total", "snapshot")) == 1);
}

/* A shut-off domain's rmdir is an offline merge (a thread, no libvirt
 * job): counted all the same, through the same edges. */
static void test_offline_counted(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s2"), 0);
    struct cfs_buf b = {0};
    assert_int_equal(cfs_engine_wait(f->e, "vm1", "vda", NULL, NULL, &b), 0);
    assert_non_null(strstr(b.data, "completed"));
    cfs_buf_free(&b);
    assert_true(value(f, T("chainfs_jobs_started_total", "offline-commit")) == 1);
    assert_true(value(f, T("chainfs_jobs_completed_total", "offline-commit")) == 1);
    assert_true(value(f, T("chainfs_jobs_running", "offline-commit")) == 0);
}

/* the render alone: an empty tree is a valid file, every family once */
static void test_render_empty(void **state)
{
    (void)state;
    struct cfs_tree *t = cfs_tree_new();
    struct cfs_metrics m = {0};
    struct cfs_buf b = {0};
    cfs_metrics_render(&b, &m, t, false);
    assert_valid(b.data);
    assert_non_null(strstr(b.data, "\nchainfs_libvirt_up 0\n"));
    assert_non_null(strstr(b.data, "\nchainfs_chain_depth_max 0\n"));
    cfs_buf_free(&b);
    /* an external job is not counted as chainfs's */
    struct cfs_job ext = {.type = CFS_JOB_COMMIT, .external = true, .end = 5};
    cfs_metrics_job_edge(&m, &ext, CFS_PHASE_RUNNING, CFS_PHASE_COMPLETED, 10);
    assert_int_equal(m.completed[CFS_JOB_COMMIT], 0);
    /* a pull counts what it measured it copied */
    struct cfs_job pull = {.type = CFS_JOB_PULL, .direction = CFS_DIRECTION_PULL,
                           .end = 100, .bytes_copied = 40, .started = 4};
    cfs_metrics_job_edge(&m, &pull, CFS_PHASE_CLEANUP, CFS_PHASE_COMPLETED, 10);
    assert_int_equal(m.merged_bytes[CFS_JOB_PULL], 40);
    assert_true(m.last_duration[CFS_JOB_PULL] == 6);
    cfs_metrics_render(&b, &m, t, true);
    assert_valid(b.data);
    assert_non_null(strstr(b.data, "\nchainfs_job_last_duration_seconds{type=\"pull\"} 6\n"));
    cfs_buf_free(&b);
    cfs_tree_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_accepts),
        cmocka_unit_test(test_checker_refuses),
        cmocka_unit_test(test_render_empty),
        cmocka_unit_test_setup_teardown(test_hidden_and_found, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_counters_move, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_conn_down, setup_running, teardown),
        cmocka_unit_test_setup_teardown(test_offline_counted, setup_shutoff, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
