/* test_merge_plan.c — merge_plan.c: runs of asked snapshots, commit or pull
 * by cost, overrides, kept and shared layers, shut-off domains (design
 * issue 8, §2.2 and §3.2). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chainfs/merge_plan.h"
#include "chainfs/util.h"

#define MiB (1024ull * 1024)

/* A snapshot layer (with libvirt metadata), asked or not. */
#define SNAP(nm, mib) \
    { .name = nm, .allocation = (mib) * MiB, .snapshot = true, \
      .has_metadata = true }
#define ASK(nm, mib) \
    { .name = nm, .allocation = (mib) * MiB, .snapshot = true, \
      .has_metadata = true, .asked = true }
#define ASK_MODE(nm, mib, m) \
    { .name = nm, .allocation = (mib) * MiB, .snapshot = true, \
      .has_metadata = true, .asked = true, .mode = (m) }
#define BASE(mib) { .name = NULL, .allocation = (mib) * MiB }

#define MAXL 8

struct exp_job {
    enum cfs_merge_kind kind;
    size_t first, last, top, base, written, leave_first, leave_last;
    uint64_t commit_mib, pull_mib;
    bool has_pull;
    const char *reason;    /* substring of the reason; "=..." the whole */
};

struct exp_ref {
    size_t index;
    int err;
    const char *reason;    /* substring */
};

struct plan_case {
    const char *what;
    bool shutoff;          /* default (false): the domain runs */
    size_t n;
    struct cfs_merge_layer layers[MAXL];
    size_t n_jobs;
    struct exp_job jobs[4];
    size_t n_ref;
    struct exp_ref refs[4];
};

#define LIVE_PULL(f, l, c, p, why) \
    { CFS_MERGE_KIND_PULL, f, l, 0, (l) + 2, 0, 1, (l) + 1, c, p, true, why }
#define ACTIVE_COMMIT(l, c, p, why) \
    { CFS_MERGE_KIND_ACTIVE_COMMIT, 0, l, 0, (l) + 1, (l) + 1, 0, l, c, p, \
      true, why }
#define MID_COMMIT(f, l, c, why) \
    { CFS_MERGE_KIND_COMMIT, f, l, f, (l) + 1, (l) + 1, f, l, c, 0, false, \
      why }

static const struct plan_case cases[] = {
    /* ---- cost: the active run ------------------------------------------ */
    { "pull: the lower snapshot is small (design's forward merge)", false, 3,
      { ASK("s2", 200), SNAP("s1", 4), BASE(256) },
      1, { LIVE_PULL(0, 0, 200, 4, "=pull: 4.0MiB < 200.0MiB") }, 0, {} },
    { "commit: the active layer is small", false, 3,
      { ASK("s2", 4), SNAP("s1", 200), BASE(256) },
      1, { ACTIVE_COMMIT(0, 4, 200, "commit: 4.0MiB < 200.0MiB") }, 0, {} },
    { "tie commits", false, 3,
      { ASK("s2", 10), SNAP("s1", 10), BASE(256) },
      1, { ACTIVE_COMMIT(0, 10, 10, "=commit: 10.0MiB = 10.0MiB (a tie "
                                    "commits)") }, 0, {} },
    { "one byte less pulls", false, 3,
      { { .name = "s2", .allocation = 1001, .snapshot = true,
          .has_metadata = true, .asked = true },
        { .name = "s1", .allocation = 1000, .snapshot = true,
          .has_metadata = true },
        BASE(256) },
      1, { { CFS_MERGE_KIND_PULL, 0, 0, 0, 2, 0, 1, 1, 0, 0, true, "pull:" } },
      0, {} },
    { "costs saturate, never wrap", false, 4,
      { { .name = "s3", .allocation = UINT64_MAX, .snapshot = true,
          .has_metadata = true, .asked = true },
        { .name = "s2", .allocation = 2, .snapshot = true,
          .has_metadata = true, .asked = true },
        { .name = "s1", .allocation = 1, .snapshot = true,
          .has_metadata = true },
        BASE(1) },
      1, { { CFS_MERGE_KIND_PULL, 0, 1, 0, 3, 0, 1, 2, 0, 0, true, "pull:" } },
      0, {} },
    /* ---- the base image is never removed ------------------------------- */
    { "only snapshot above the base: commit even if pull is cheaper", false, 2,
      { ASK("s1", 100), BASE(1) },
      1, { ACTIVE_COMMIT(0, 100, 1,
                         "=commit: a pull would remove the base image") },
      0, {} },
    { "no metadata to carry the lower snapshot's name: commit", false, 3,
      { ASK("s2", 200),
        { .name = "s1", .allocation = 4 * MiB, .snapshot = true },
        BASE(256) },
      1, { ACTIVE_COMMIT(0, 200, 4,
                         "s1 has no libvirt metadata to carry its name") },
      0, {} },
    /* ---- intermediate runs always commit ------------------------------- */
    { "intermediate commits although a pull would be cheaper", false, 4,
      { SNAP("s3", 1), ASK("s2", 500), SNAP("s1", 1), BASE(256) },
      1, { MID_COMMIT(1, 1, 500, "s2 is not the active layer") }, 0, {} },
    /* ---- overrides ------------------------------------------------------ */
    { "merge s2 commit forces a commit pull would win", false, 3,
      { ASK_MODE("s2", 200, CFS_MERGE_COMMIT), SNAP("s1", 4), BASE(256) },
      1, { ACTIVE_COMMIT(0, 200, 4, "commit: asked by merge s2 commit") },
      0, {} },
    { "merge s2 pull forces a pull commit would win", false, 3,
      { ASK_MODE("s2", 4, CFS_MERGE_PULL), SNAP("s1", 200), BASE(256) },
      1, { LIVE_PULL(0, 0, 4, 200, "pull: asked by merge s2 pull") }, 0, {} },
    { "merge s2 auto is the cost rule", false, 3,
      { ASK_MODE("s2", 4, CFS_MERGE_AUTO), SNAP("s1", 200), BASE(256) },
      1, { ACTIVE_COMMIT(0, 4, 200, "commit: 4.0MiB < 200.0MiB") }, 0, {} },
    { "pull on an intermediate at dispatch: commits and says why", false, 4,
      { SNAP("s3", 1), ASK_MODE("s2", 1, CFS_MERGE_PULL), SNAP("s1", 500),
        BASE(256) },
      1, { MID_COMMIT(1, 1, 1, "merge s2 pull no longer applies: s2 is not "
                               "the active layer") },
      0, {} },
    { "pull above the base image at dispatch: commits and says why", false, 2,
      { ASK_MODE("s1", 100, CFS_MERGE_PULL), BASE(1) },
      1, { ACTIVE_COMMIT(0, 100, 1, "merge s1 pull no longer applies: a pull "
                                    "would remove the base image") },
      0, {} },
    { "commit and pull in one run: commit", false, 4,
      { ASK_MODE("s3", 100, CFS_MERGE_PULL),
        ASK_MODE("s2", 100, CFS_MERGE_COMMIT), SNAP("s1", 1), BASE(256) },
      1, { ACTIVE_COMMIT(1, 200, 101, "asked by merge s2 commit (merge s3 "
                                      "pull") },
      0, {} },
    { "an override on a snapshot not asked plays no part", false, 4,
      { ASK("s3", 4),
        { .name = "s2", .allocation = 200 * MiB, .snapshot = true,
          .has_metadata = true, .mode = CFS_MERGE_PULL },
        SNAP("s1", 1), BASE(256) },
      1, { ACTIVE_COMMIT(0, 4, 200, "=commit: 4.0MiB < 200.0MiB") }, 0, {} },
    /* ---- runs ------------------------------------------------------------ */
    { "adjacent asks are one job, costs summed", false, 5,
      { ASK("s4", 100), ASK("s3", 20), SNAP("s2", 30), SNAP("s1", 5),
        BASE(256) },
      1, { LIVE_PULL(0, 1, 120, 50, "pull: 50.0MiB < 120.0MiB") }, 0, {} },
    { "runs split by a layer not asked, topmost first", false, 5,
      { ASK("s4", 10), ASK("s3", 20), SNAP("s2", 30), ASK("s1", 5),
        BASE(256) },
      2, { ACTIVE_COMMIT(1, 30, 50, "commit: 30.0MiB < 50.0MiB"),
           MID_COMMIT(3, 3, 5, "not the active layer") },
      0, {} },
    { "two intermediate runs", false, 6,
      { SNAP("s5", 1), ASK("s4", 1), ASK("s3", 2), SNAP("s2", 1),
        ASK("s1", 3), BASE(256) },
      2, { MID_COMMIT(1, 2, 3, "s4 is not the active layer"),
           MID_COMMIT(4, 4, 3, "s1 is not the active layer") },
      0, {} },
    { "an asked layer shared with another domain splits and is refused",
      false, 4,
      { ASK("s3", 10),
        { .name = "s2", .allocation = 10 * MiB, .snapshot = true,
          .has_metadata = true, .asked = true,
          .shared_with = "domain web disk vda" },
        ASK("s1", 10), BASE(256) },
      1, { MID_COMMIT(2, 2, 10, "not the active layer") },
      2, { { 0, EBUSY, "the layer to merge into, s2, is also in the chain "
                       "of domain web disk vda" },
           { 1, EBUSY, "the snapshot's own layer, s2, is also in the chain "
                       "of domain web disk vda" } } },
    { "a shared kept layer below a run: its upper neighbour is refused",
      false, 4,
      { ASK("s3", 10), ASK("s2", 10),
        { .name = "s1", .allocation = 10 * MiB, .snapshot = true,
          .has_metadata = true, .shared_with = "domain db disk vdb" },
        BASE(256) },
      1, { ACTIVE_COMMIT(0, 10, 10, "a tie commits") },
      1, { { 1, EBUSY, "the layer to merge into, s1, is also in the chain "
                       "of domain db disk vdb" } } },
    { "a shared base image below the only asked snapshot", false, 2,
      { ASK("s1", 10),
        { .name = NULL, .allocation = MiB, .shared_with = "domain b disk vda" } },
      0, {},
      1, { { 0, EBUSY, "the layer to merge into, the base image" } } },
    { "nothing asked, nothing to do", false, 3,
      { SNAP("s2", 10), SNAP("s1", 10), BASE(256) }, 0, {}, 0, {} },
    /* ---- the whole chain ------------------------------------------------ */
    { "rmdir snapshots/*: one commit into the base image", false, 4,
      { ASK("s3", 10), ASK("s2", 20), ASK("s1", 30), BASE(100) },
      1, { ACTIVE_COMMIT(2, 60, 150,
                         "=commit: a pull would remove the base image") },
      0, {} },
    /* ---- what cannot be merged ------------------------------------------ */
    { "an asked layer that is no snapshot", false, 4,
      { ASK("s3", 10), { .name = "x", .allocation = MiB, .asked = true },
        ASK("s1", 10), BASE(256) },
      2, { ACTIVE_COMMIT(0, 10, 1, "a pull would remove x, which is not a "
                                 "snapshot"),
           MID_COMMIT(2, 2, 10, "not the active layer") },
      1, { { 1, ENOENT, "x is not a snapshot" } } },
    { "one-layer chain: the base image asked", false, 1,
      { { .name = NULL, .allocation = MiB, .asked = true } },
      0, {}, 1, { { 0, ENOENT, "the base image is not a snapshot" } } },
    { "the base image is never a snapshot, even if the caller says so",
      false, 2,
      { SNAP("s1", 1),
        { .name = "base", .allocation = MiB, .snapshot = true,
          .has_metadata = true, .asked = true } },
      0, {}, 1, { { 1, ENOENT, "base is not a snapshot" } } },
    { "one-layer chain, nothing asked", false, 1, { BASE(1) }, 0, {}, 0, {} },
    { "empty chain", false, 0, {}, 0, {}, 0, {} },
    /* ---- shut-off domain -------------------------------------------------- */
    { "shut off: offline pull", true, 3,
      { ASK("s2", 200), SNAP("s1", 4), BASE(256) },
      1, { { CFS_MERGE_KIND_OFFLINE_PULL, 0, 0, 0, 2, 0, 1, 1, 200, 4, true,
             "pull: 4.0MiB < 200.0MiB" } },
      0, {} },
    { "shut off: offline commit of the active run", true, 3,
      { ASK("s2", 4), SNAP("s1", 200), BASE(256) },
      1, { { CFS_MERGE_KIND_OFFLINE_COMMIT, 0, 0, 0, 1, 1, 0, 0, 4, 200, true,
             "commit: 4.0MiB < 200.0MiB" } },
      0, {} },
    { "shut off: an intermediate run commits offline", true, 4,
      { SNAP("s3", 1), ASK("s2", 500), SNAP("s1", 1), BASE(256) },
      1, { { CFS_MERGE_KIND_OFFLINE_COMMIT, 1, 1, 1, 2, 2, 1, 1, 500, 0, false,
             "s2 is not the active layer" } },
      0, {} },
};

/* The same, with a live pull off for the reason "QEMU is old" (-o
 * live_pull, docs/design/issue8.md §7.4). */
static const struct plan_case live_off_cases[] = {

    { "live pull off: the cheaper pull commits and says why", false, 3,
      { ASK("s2", 200), SNAP("s1", 4), BASE(256) },
      1, { { CFS_MERGE_KIND_ACTIVE_COMMIT, 0, 0, 0, 1, 1, 0, 0, 200, 4, true,
             "=commit: a live pull is off (QEMU is old); pull 4.0MiB, "
             "commit 200.0MiB" } },
      0, {} },
    { "live pull off: merge pull commits and says why", false, 3,
      { ASK_MODE("s2", 200, CFS_MERGE_PULL), SNAP("s1", 4), BASE(256) },
      1, { { CFS_MERGE_KIND_ACTIVE_COMMIT, 0, 0, 0, 1, 1, 0, 0, 200, 4, true,
             "=commit: merge s2 pull cannot run: a live pull is off (QEMU "
             "is old)" } },
      0, {} },
    { "live pull off: the cheaper commit says nothing of it", false, 3,
      { ASK("s2", 4), SNAP("s1", 200), BASE(256) },
      1, { { CFS_MERGE_KIND_ACTIVE_COMMIT, 0, 0, 0, 1, 1, 0, 0, 4, 200, true,
             "=commit: 4.0MiB < 200.0MiB" } },
      0, {} },
    { "live pull off: a shut-off domain still pulls (qemu-img)", true, 3,
      { ASK("s2", 200), SNAP("s1", 4), BASE(256) },
      1, { { CFS_MERGE_KIND_OFFLINE_PULL, 0, 0, 0, 2, 0, 1, 1, 200, 4, true,
             "=pull: 4.0MiB < 200.0MiB" } },
      0, {} },
};

static void check_case(const struct plan_case *c, const char *no_live_pull)
{
    struct cfs_merge_plan p;

    memset(&p, 0xa5, sizeof(p));  /* every field must be set */
    print_message("case: %s\n", c->what);
    const struct cfs_merge_env env = { .running = !c->shutoff,
                                       .no_live_pull = no_live_pull };
    assert_int_equal(cfs_merge_plan_env(c->n ? c->layers : NULL, c->n, &env,
                                        &p), 0);
    assert_int_equal(p.n_jobs, c->n_jobs);
    for (size_t i = 0; i < c->n_jobs; i++) {
        const struct exp_job *e = &c->jobs[i];
        const struct cfs_merge_job *j = &p.jobs[i];
        print_message("  job %zu: %s %zu..%zu: %s\n", i,
                      cfs_merge_kind_to_string(j->kind), j->first, j->last,
                      j->reason);
        assert_int_equal(j->kind, e->kind);
        assert_int_equal(j->pull, e->kind == CFS_MERGE_KIND_PULL ||
                                  e->kind == CFS_MERGE_KIND_OFFLINE_PULL);
        assert_int_equal(j->first, e->first);
        assert_int_equal(j->last, e->last);
        assert_int_equal(j->top, e->top);
        assert_int_equal(j->base, e->base);
        assert_int_equal(j->written, e->written);
        assert_int_equal(j->leave_first, e->leave_first);
        assert_int_equal(j->leave_last, e->leave_last);
        assert_int_equal(j->has_bytes_pull, e->has_pull);
        /* the byte-sized cases give 0 and check the direction only */
        if (e->commit_mib || e->pull_mib) {
            assert_true(j->bytes_commit == e->commit_mib * MiB);
            assert_true(j->bytes_pull == e->pull_mib * MiB);
        }
        if (!e->has_pull)
            assert_true(j->bytes_pull == 0);
        assert_non_null(j->reason);
        if (e->reason[0] == '=' ? strcmp(j->reason, e->reason + 1) != 0
                                : !strstr(j->reason, e->reason))
            fail_msg("%s: reason \"%s\" lacks \"%s\"", c->what, j->reason,
                     e->reason);
    }
    assert_int_equal(p.n_refused, c->n_ref);
    for (size_t i = 0; i < c->n_ref; i++) {
        const struct exp_ref *e = &c->refs[i];
        const struct cfs_merge_refusal *r = &p.refused[i];
        print_message("  refused %zu: %s\n", r->index, r->reason);
        assert_int_equal(r->index, e->index);
        assert_int_equal(r->err, e->err);
        assert_non_null(r->reason);
        if (!strstr(r->reason, e->reason))
            fail_msg("%s: refusal \"%s\" lacks \"%s\"", c->what, r->reason,
                     e->reason);
    }
    cfs_merge_plan_clear(&p);
    assert_int_equal(p.n_jobs, 0);
    assert_null(p.jobs);
}

static void test_plan_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(cases); i++)
        check_case(&cases[i], NULL);
    for (size_t i = 0; i < ELEMENTSOF(live_off_cases); i++)
        check_case(&live_off_cases[i], "QEMU is old");
}

/* The plan depends on nothing but its input: called twice, equal. */
static void test_plan_is_pure(void **state)
{
    (void)state;
    const struct cfs_merge_layer l[] = { ASK("s4", 100), ASK("s3", 20),
                                         SNAP("s2", 30), ASK("s1", 5),
                                         BASE(256) };
    struct cfs_merge_plan a, b;
    assert_int_equal(cfs_merge_plan(l, ELEMENTSOF(l), true, &a), 0);
    assert_int_equal(cfs_merge_plan(l, ELEMENTSOF(l), true, &b), 0);
    assert_int_equal(a.n_jobs, b.n_jobs);
    for (size_t i = 0; i < a.n_jobs; i++) {
        assert_int_equal(a.jobs[i].kind, b.jobs[i].kind);
        assert_int_equal(a.jobs[i].first, b.jobs[i].first);
        assert_int_equal(a.jobs[i].last, b.jobs[i].last);
        assert_string_equal(a.jobs[i].reason, b.jobs[i].reason);
    }
    cfs_merge_plan_clear(&a);
    cfs_merge_plan_clear(&b);
    cfs_merge_plan_clear(NULL);
}

static void test_plan_bad_args(void **state)
{
    (void)state;
    const struct cfs_merge_layer l[] = { ASK("s1", 1), BASE(1) };
    struct cfs_merge_plan p = { .n_jobs = 7 };
    assert_int_equal(cfs_merge_plan(NULL, 2, true, &p), -EINVAL);
    assert_int_equal(p.n_jobs, 7);   /* untouched */
    assert_int_equal(cfs_merge_plan(l, 2, true, NULL), -EINVAL);
    assert_int_equal(cfs_merge_plan(NULL, 0, false, &p), 0);
    assert_int_equal(p.n_jobs, 0);
    assert_int_equal(p.n_refused, 0);
    cfs_merge_plan_clear(&p);
}

/* ---- ctl `merge NAME MODE` -------------------------------------------- */

static void expect_mode(const struct cfs_merge_layer *l, size_t n, size_t idx,
                         enum cfs_merge_mode m, int want, const char *why)
{
    char *w = (char *)"untouched";
    int r = cfs_merge_mode_check(l, n, idx, m, &w);
    assert_int_equal(r, want);
    if (want == 0) {
        assert_null(w);
        return;
    }
    assert_non_null(w);
    if (!strstr(w, why))
        fail_msg("reason \"%s\" lacks \"%s\"", w, why);
    free(w);
}

static void test_mode_check(void **state)
{
    (void)state;
    const struct cfs_merge_layer l[] = {
        SNAP("s3", 1), SNAP("s2", 1),
        { .name = "s1", .allocation = MiB, .snapshot = true }, BASE(1) };
    const size_t n = ELEMENTSOF(l);

    /* commit and auto: any snapshot */
    for (size_t i = 0; i + 1 < n; i++) {
        expect_mode(l, n, i, CFS_MERGE_COMMIT, 0, NULL);
        expect_mode(l, n, i, CFS_MERGE_AUTO, 0, NULL);
    }
    /* pull: only the active one, lower layer not the base image, with
     * metadata to carry the lower snapshot's name */
    expect_mode(l, n, 0, CFS_MERGE_PULL, 0, NULL);
    expect_mode(l, n, 1, CFS_MERGE_PULL, -EINVAL,
                 "cannot pull s2: s2 is not the active layer and libvirt "
                 "pulls only into the active layer");
    expect_mode(l, n, 2, CFS_MERGE_PULL, -EINVAL, "not the active layer");
    expect_mode(l, n, 3, CFS_MERGE_COMMIT, -ENOENT,
                 "the base image is not a snapshot");

    const struct cfs_merge_layer two[] = { SNAP("s1", 1), BASE(1) };
    expect_mode(two, 2, 0, CFS_MERGE_PULL, -EINVAL,
                 "a pull would remove the base image");
    expect_mode(two, 2, 0, CFS_MERGE_COMMIT, 0, NULL);

    const struct cfs_merge_layer nometa[] = {
        SNAP("s2", 1), { .name = "s1", .allocation = MiB, .snapshot = true },
        BASE(1) };
    expect_mode(nometa, 3, 0, CFS_MERGE_PULL, -EINVAL,
                 "s1 has no libvirt metadata to carry its name");

    const struct cfs_merge_layer hidden[] = {
        { .name = "x", .allocation = MiB }, SNAP("s1", 1), BASE(1) };
    expect_mode(hidden, 3, 0, CFS_MERGE_PULL, -ENOENT, "x is not a snapshot");
    expect_mode(l, n, 0, (enum cfs_merge_mode)42, -EINVAL,
                 "unknown merge mode");

    char *w = NULL;
    assert_int_equal(cfs_merge_mode_check(l, n, n, CFS_MERGE_AUTO, &w),
                     -EINVAL);
    assert_int_equal(cfs_merge_mode_check(NULL, n, 0, CFS_MERGE_AUTO, &w),
                     -EINVAL);
}

static void test_strings(void **state)
{
    (void)state;
    static const char *const words[] = { "auto", "commit", "pull" };
    for (size_t i = 0; i < ELEMENTSOF(words); i++) {
        enum cfs_merge_mode m = CFS_MERGE_AUTO;
        assert_int_equal(cfs_merge_mode_from_string(words[i], &m), 0);
        assert_string_equal(cfs_merge_mode_to_string(m), words[i]);
    }
    enum cfs_merge_mode m = CFS_MERGE_PULL;
    assert_int_equal(cfs_merge_mode_from_string("Pull", &m), -EINVAL);
    assert_int_equal(cfs_merge_mode_from_string("", &m), -EINVAL);
    assert_int_equal(cfs_merge_mode_from_string(NULL, &m), -EINVAL);
    assert_int_equal(m, CFS_MERGE_PULL);
    assert_null(cfs_merge_mode_to_string((enum cfs_merge_mode)3));

    assert_string_equal(cfs_merge_kind_to_string(CFS_MERGE_KIND_COMMIT),
                        "commit");
    assert_string_equal(
        cfs_merge_kind_to_string(CFS_MERGE_KIND_ACTIVE_COMMIT), "active-commit");
    assert_string_equal(
        cfs_merge_kind_to_string(CFS_MERGE_KIND_OFFLINE_COMMIT),
        "offline-commit");
    assert_string_equal(cfs_merge_kind_to_string(CFS_MERGE_KIND_PULL), "pull");
    assert_string_equal(cfs_merge_kind_to_string(CFS_MERGE_KIND_OFFLINE_PULL),
                        "offline-pull");
    assert_null(cfs_merge_kind_to_string((enum cfs_merge_kind)5));
}

/* The one mapping of a plan's kind onto the engine's job type: the names
 * agree (job / job.json show either), and the direction follows. */
static void test_kind_job_type(void **state)
{
    (void)state;
    static const struct {
        enum cfs_merge_kind kind;
        enum cfs_job_type type;
        enum cfs_merge_direction dir;
    } rows[] = {
        {CFS_MERGE_KIND_COMMIT, CFS_JOB_COMMIT, CFS_DIRECTION_COMMIT},
        {CFS_MERGE_KIND_ACTIVE_COMMIT, CFS_JOB_ACTIVE_COMMIT, CFS_DIRECTION_COMMIT},
        {CFS_MERGE_KIND_OFFLINE_COMMIT, CFS_JOB_OFFLINE_COMMIT, CFS_DIRECTION_COMMIT},
        {CFS_MERGE_KIND_PULL, CFS_JOB_PULL, CFS_DIRECTION_PULL},
        {CFS_MERGE_KIND_OFFLINE_PULL, CFS_JOB_OFFLINE_PULL, CFS_DIRECTION_PULL},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        enum cfs_job_type t = cfs_merge_kind_job_type(rows[i].kind);
        assert_int_equal(t, rows[i].type);
        assert_string_equal(cfs_job_type_to_string(t),
                            cfs_merge_kind_to_string(rows[i].kind));
        assert_int_equal(cfs_merge_kind_direction(rows[i].kind), rows[i].dir);
        /* every job a plan makes is a merge chainfs starts */
        assert_true(cfs_job_kind(t)->chainfs);
        assert_true(cfs_job_kind(t)->merge);
        assert_int_equal(cfs_job_kind(t)->block_job,
                         rows[i].kind != CFS_MERGE_KIND_OFFLINE_COMMIT &&
                         rows[i].kind != CFS_MERGE_KIND_OFFLINE_PULL);
    }
    assert_null(cfs_merge_kind_to_string((enum cfs_merge_kind)5));
    assert_int_equal(cfs_merge_kind_job_type((enum cfs_merge_kind)5), CFS_JOB_NONE);
    assert_int_equal(cfs_merge_kind_job_type((enum cfs_merge_kind)-1), CFS_JOB_NONE);
    assert_int_equal(cfs_merge_kind_direction((enum cfs_merge_kind)5),
                     CFS_DIRECTION_NONE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_table),
        cmocka_unit_test(test_plan_is_pure),
        cmocka_unit_test(test_plan_bad_args),
        cmocka_unit_test(test_mode_check),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_kind_job_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
