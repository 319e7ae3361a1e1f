/* test_groups.c — domain-level rmdir as a job group (docs/design/issue10.md
 * §3) against the fake backend: one merge per disk, the hold in ready
 * and the pivot pass, a member failing before ready or at its pivot, a
 * member queued behind its disk's merge, partially merged and rmdir
 * again, and recovery of a group. No libvirtd. */
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

#include "chainfs/ctl.h"
#include "chainfs/engine.h"
#include "chainfs/journal.h"
#include "fake.h"

/* vm1 with vda and vdb, each base <- s1 <- s2 (active): s1 and s2 are
 * multi-disk libvirt snapshots (the same metadata names a layer of
 * both disks). */
struct gx {
    char dir[64];
    char state[128];
    char a[3][160];   /* vda: s2 (active), s1, base */
    char b[3][160];   /* vdb */
    enum cfs_dom_state st;
    struct cfs_backend *be;
    struct cfs_engine *e;
};

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

static bool exists(const char *p) { return access(p, F_OK) == 0; }

static const char *const metas[3] = { "s2", "s1", NULL };

static void fill_disk(struct cfs_disk *dk, const char *target, char paths[3][160],
                      size_t skip)
{
    size_t n = 3 - skip;
    *dk = (struct cfs_disk){ .target = cfs_xstrdup(target), .n_layers = n };
    dk->layers = cfs_xcalloc(n, sizeof(*dk->layers));
    for (size_t i = 0; i < n; i++)
        dk->layers[i] = (struct cfs_layer){
            .path = cfs_xstrdup(paths[i + skip]),
            .format = cfs_xstrdup("qcow2"),
            .virtual_size = FAKE_VIRTUAL_SIZE,
            .meta_name = cfs_xstrdup(metas[i + skip]),
        };
}

/* vm1 as the fake has it; SKIP_A / SKIP_B top layers of vda / vdb merged
 * away already (their snapshot metadata no longer naming them). */
static void put_vm(struct gx *g, size_t skip_a, size_t skip_b)
{
    struct cfs_domain d = { .name = (char *)"vm1", .state = g->st,
                            .persistent = true, .n_disks = 2 };
    strcpy(d.uuid, "00000000-0000-0000-0000-00000000000a");
    d.disks = cfs_xcalloc(2, sizeof(*d.disks));
    fill_disk(&d.disks[0], "vda", g->a, skip_a);
    fill_disk(&d.disks[1], "vdb", g->b, skip_b);
    if (skip_a == 0 || skip_b == 0)
        cfs_strv_push(&d.snapshots, cfs_xstrdup("s2"));
    cfs_strv_push(&d.snapshots, cfs_xstrdup("s1"));
    cfs_fake_put_domain(g->be, &d);
    for (size_t i = 0; i < 2; i++)
        cfs_disk_clear(&d.disks[i]);
    free(d.disks);
    cfs_strv_free(d.snapshots);
}

static void engine_up(struct gx *g)
{
    struct cfs_engine_config cfg = { .state_dir = g->state };
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, g->be, &g->e, &err), 0);
    assert_int_equal(cfs_engine_start(g->e, false, &err), 0);
    cfs_engine_run_pending(g->e);
}

static int setup_st(void **state, enum cfs_dom_state st)
{
    struct gx *g = calloc(1, sizeof(*g));
    g->st = st;
    strcpy(g->dir, "/tmp/cfs-groups-XXXXXX");
    assert_non_null(mkdtemp(g->dir));
    snprintf(g->state, sizeof(g->state), "%s/state", g->dir);
    const char *names[3] = { "s2", "s1", "base" };
    for (int i = 0; i < 3; i++) {
        snprintf(g->a[i], sizeof(g->a[i]), "%s/a.%s.qcow2", g->dir, names[i]);
        snprintf(g->b[i], sizeof(g->b[i]), "%s/b.%s.qcow2", g->dir, names[i]);
        touch(g->a[i]);
        touch(g->b[i]);
    }
    g->be = cfs_fake_backend_new();
    put_vm(g, 0, 0);
    engine_up(g);
    *state = g;
    return 0;
}

static int setup_running(void **state) { return setup_st(state, CFS_DOM_RUNNING); }
static int setup_shutoff(void **state) { return setup_st(state, CFS_DOM_SHUTOFF); }

static int teardown(void **state)
{
    struct gx *g = *state;
    cfs_engine_free(g->e);
    test_tmpdir_remove(g->dir);
    free(g);
    return 0;
}

/* ---- looking ------------------------------------------------------------------ */

static enum cfs_job_phase phase_of(struct gx *g, const char *disk)
{
    struct cfs_tree *t = cfs_engine_tree(g->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, "vm1", disk);
    enum cfs_job_phase p = s ? s->job.phase : CFS_PHASE_NONE;
    pthread_mutex_unlock(&t->lock);
    return p;
}

static enum cfs_job_type type_of(struct gx *g, const char *disk)
{
    struct cfs_tree *t = cfs_engine_tree(g->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, "vm1", disk);
    enum cfs_job_type ty = s ? s->job.type : CFS_JOB_NONE;
    pthread_mutex_unlock(&t->lock);
    return ty;
}

/* The group of vm1's snapshot NAME: its phase, and "vda:done vdb:failed". */
static enum cfs_group_phase group_of(struct gx *g, const char *name, char **members)
{
    struct cfs_tree *t = cfs_engine_tree(g->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_group *gr = cfs_tree_domain_group(t, "vm1", name);
    enum cfs_group_phase p = gr ? gr->phase : CFS_GROUP_PHASE_MAX;
    struct cfs_buf b = {0};
    for (size_t i = 0; gr && i < gr->n_members; i++)
        cfs_buf_printf(&b, "%s%s:%s", i ? " " : "", gr->members[i].disk,
                       cfs_member_state_to_string(gr->members[i].state));
    pthread_mutex_unlock(&t->lock);
    char *s = cfs_buf_steal(&b);
    if (members)
        *members = s ? s : cfs_xstrdup("");
    else
        free(s);
    return p;
}

static void assert_group(struct gx *g, const char *name, enum cfs_group_phase want,
                         const char *members)
{
    char *got = NULL;
    enum cfs_group_phase p = group_of(g, name, &got);
    if (p != want || strcmp(got, members) != 0)
        fail_msg("group %s: %s [%s], wanted %s [%s]", name,
                 cfs_group_phase_to_string(p), got,
                 cfs_group_phase_to_string(want), members);
    free(got);
}

/* The journal's entries, as "type:phase" joined by spaces (group entries
 * with their remaining[] as "group:partial[vdb]"). */
static char *journal_summary(struct gx *g)
{
    struct cfs_journal *j = NULL;
    assert_int_equal(cfs_journal_open(g->state, &j, NULL), 0);
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    struct cfs_buf b = {0};
    for (size_t i = 0; i < n; i++) {
        cfs_buf_printf(&b, "%s%s:%s", i ? " " : "", cfs_job_type_to_string(v[i].type),
                       v[i].phase);
        if (v[i].type == CFS_JOB_GROUP) {
            cfs_buf_printf(&b, "[");
            for (char **r = v[i].remaining; r && *r; r++)
                cfs_buf_printf(&b, "%s%s", r == v[i].remaining ? "" : " ", *r);
            cfs_buf_printf(&b, "]");
        }
    }
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
    char *s = cfs_buf_steal(&b);
    return s ? s : cfs_xstrdup("");
}

static void assert_journal(struct gx *g, const char *want)
{
    char *got = journal_summary(g);
    if (strcmp(got, want) != 0)
        fail_msg("journal: \"%s\", wanted \"%s\"", got, want);
    free(got);
}

static bool has_layer(struct gx *g, const char *disk, const char *name)
{
    struct cfs_tree *t = cfs_engine_tree(g->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_domain *d = cfs_tree_find_domain(t, "vm1");
    struct cfs_disk *dk = d ? cfs_domain_find_disk(d, disk) : NULL;
    bool r = cfs_disk_find_snapshot(dk, name) >= 0;
    pthread_mutex_unlock(&t->lock);
    return r;
}

static char *read_node(struct gx *g, const char *path)
{
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(path, &p), 0);
    struct cfs_buf b = {0};
    int r = cfs_engine_read(g->e, &p, &b);
    if (r < 0) {
        cfs_buf_free(&b);
        return NULL;
    }
    return cfs_buf_steal(&b);
}

/* S with every run of spaces made one (caller frees). */
static char *squeeze(const char *s)
{
    char *r = cfs_xstrdup(s), *w = r;
    for (const char *p = s; *p; p++)
        if (*p != ' ' || w == r || w[-1] != ' ')
            *w++ = *p;
    *w = '\0';
    return r;
}

static void assert_node_contains(struct gx *g, const char *path, const char *needle)
{
    char *got = read_node(g, path);
    if (!got)
        fail_msg("%s: cannot be read", path);
    char *sg = squeeze(got), *sn = squeeze(needle);
    if (!strstr(sg, sn))
        fail_msg("%s lacks '%s':\n%s", path, needle, got);
    free(sg);
    free(sn);
    free(got);
}

static bool never(void *arg) { (void)arg; return false; }

/* ---- the phase function ------------------------------------------------------- */

static void test_group_phase_function(void **state)
{
    (void)state;
    struct cfs_group_member m[3] = { { .disk = (char *)"vda" },
                                     { .disk = (char *)"vdb" },
                                     { .disk = (char *)"vdc" } };
    static const struct {
        enum cfs_member_state s[3];
        enum cfs_group_phase want;
    } cases[] = {
        { { CFS_MEMBER_QUEUED, CFS_MEMBER_RUNNING, CFS_MEMBER_READY }, CFS_GROUP_RUNNING },
        { { CFS_MEMBER_READY, CFS_MEMBER_PIVOTING, CFS_MEMBER_DONE }, CFS_GROUP_PIVOTING },
        { { CFS_MEMBER_DONE, CFS_MEMBER_DONE, CFS_MEMBER_DONE }, CFS_GROUP_COMPLETED },
        { { CFS_MEMBER_DONE, CFS_MEMBER_FAILED, CFS_MEMBER_DONE }, CFS_GROUP_PARTIAL },
        { { CFS_MEMBER_FAILED, CFS_MEMBER_FAILED, CFS_MEMBER_FAILED }, CFS_GROUP_FAILED },
        { { CFS_MEMBER_FAILED, CFS_MEMBER_RUNNING, CFS_MEMBER_DONE }, CFS_GROUP_RUNNING },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (size_t k = 0; k < 3; k++)
            m[k].state = cases[i].s[k];
        assert_int_equal(cfs_group_phase(m, 3), cases[i].want);
    }
    assert_int_equal(cfs_group_phase(m, 0), CFS_GROUP_COMPLETED);
    assert_string_equal(cfs_group_phase_to_string(CFS_GROUP_PARTIAL), "partial");
    assert_string_equal(cfs_member_state_to_string(CFS_MEMBER_READY), "ready");
    assert_int_equal(cfs_member_state_of_phase(CFS_PHASE_STARTING), CFS_MEMBER_RUNNING);
    assert_int_equal(cfs_member_state_of_phase(CFS_PHASE_CANCELED), CFS_MEMBER_FAILED);
}

/* ---- the hold and the pass ---------------------------------------------------- */

/* Both active commits start at once; the first ready holds until the
 * other is ready too; then both pivot in one pass. FIRST is the disk
 * that gets ready first. */
static void both_ready(struct gx *g, const char *first, const char *second)
{
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_int_equal(type_of(g, "vda"), CFS_JOB_ACTIVE_COMMIT);
    assert_int_equal(type_of(g, "vdb"), CFS_JOB_ACTIVE_COMMIT);
    assert_int_equal(cfs_fake_calls(g->be, "commit_start"), 2);
    assert_journal(g, "group:running[vda vdb] active-commit:running active-commit:running");

    cfs_fake_job_ready(g->be, "vm1", first);
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, first), CFS_PHASE_READY);
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 0);
    char *want = cfs_xasprintf("%s", strcmp(first, "vda") == 0
                                         ? "vda:ready vdb:running"
                                         : "vda:running vdb:ready");
    assert_group(g, "s2", CFS_GROUP_RUNNING, want);
    free(want);
    char *m = read_node(g, "/.chainfs/metrics.prom");
    assert_non_null(strstr(m, "\nchainfs_job_groups_running 1\n"));
    assert_non_null(strstr(m, "\nchainfs_jobs_running{type=\"active-commit\"} 2\n"));
    free(m);

    cfs_fake_job_ready(g->be, "vm1", second);
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 2);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_COMPLETED);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_COMPLETED);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_false(exists(g->a[0]));
    assert_false(exists(g->b[0]));
    assert_false(has_layer(g, "vda", "s2"));
    assert_false(has_layer(g, "vdb", "s2"));
    assert_true(has_layer(g, "vda", "s1"));
    /* the metadata named both disks: one forget each, the last drops it */
    assert_int_equal(cfs_fake_calls(g->be, "snapshot_forget"), 2);
    assert_null(cfs_fake_snapshot_source(g->be, "vm1", "s2", "vda"));
    /* issue 11: a group is no job of its own; each disk's merge counts */
    m = read_node(g, "/.chainfs/metrics.prom");
    assert_non_null(m);
    assert_non_null(strstr(m, "\nchainfs_jobs_completed_total{type=\"active-commit\"} 2\n"));
    assert_non_null(strstr(m, "\nchainfs_jobs_started_total{type=\"active-commit\"} 2\n"));
    assert_non_null(strstr(m, "\nchainfs_job_groups_running 0\n"));
    free(m);
}

static void test_ready_vda_first(void **state) { both_ready(*state, "vda", "vdb"); }
static void test_ready_vdb_first(void **state) { both_ready(*state, "vdb", "vda"); }

/* An intermediate snapshot: two plain commits, no ready, no pivot. */
static void test_intermediate(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s1"), 0);
    assert_int_equal(type_of(g, "vda"), CFS_JOB_COMMIT);
    assert_int_equal(type_of(g, "vdb"), CFS_JOB_COMMIT);
    cfs_fake_job_complete(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s1", CFS_GROUP_RUNNING, "vda:running vdb:done");
    assert_journal(g, "group:running[vda vdb] commit:running");
    cfs_fake_job_complete(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s1", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 0);
    assert_false(exists(g->a[1]) || exists(g->b[1]));
    assert_true(has_layer(g, "vda", "s2") && has_layer(g, "vdb", "s2"));
    /* the next group of the domain replaces the completed one */
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_int_equal(group_of(g, "s1", NULL), CFS_GROUP_PHASE_MAX);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:running vdb:running");
}

/* Shut off: one offline merge per disk (qemu-img, in threads). */
static void test_shutoff(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    /* (the group's entry closes just after its phase shows the end) */
    for (int i = 0; i < 100; i++) {
        char *j = journal_summary(g);
        bool open = *j;
        free(j);
        if (!open && group_of(g, "s2", NULL) != CFS_GROUP_RUNNING)
            break;
        usleep(20000);
        cfs_engine_run_pending(g->e);
    }
    assert_int_equal(cfs_fake_calls(g->be, "offline_commit"), 2);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_false(has_layer(g, "vda", "s2") || has_layer(g, "vdb", "s2"));
}

/* ---- failures ----------------------------------------------------------------- */

/* vdb fails before ready: vda, held in ready, pivots once vdb has ended;
 * s2 stays partially merged, naming vdb; rmdir again merges vdb only. */
static void test_fail_before_ready_then_again(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_READY);
    cfs_fake_job_progress(g->be, "vm1", "vdb", 1 << 20, 64 << 20);
    cfs_engine_run_pending(g->e);
    cfs_fake_job_fail(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_FAILED);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_COMPLETED);
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 1);
    assert_group(g, "s2", CFS_GROUP_PARTIAL, "vda:done vdb:failed");
    assert_journal(g, "group:partial[vdb]");
    assert_false(has_layer(g, "vda", "s2"));
    assert_true(has_layer(g, "vdb", "s2"));
    assert_true(exists(g->b[0]));

    /* again: vdb only; vda stays a member, done */
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_int_equal(cfs_fake_calls(g->be, "commit_start"), 3);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:done vdb:running");
    assert_journal(g, "group:running[vdb] active-commit:running");
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_COMPLETED);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_false(has_layer(g, "vdb", "s2"));
    /* no such snapshot at the domain level any more */
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), -ENOENT);
}

/* A member whose pivot keeps failing fails (after the retries); the other
 * has pivoted in the same pass: partial. */
static void test_fail_at_pivot(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    /* the pass: vda first (disk order), refused; vdb pivots; vda is
     * retried by the polls until the limit, then fails */
    cfs_fake_pivot_fail(g->be, "vda", 100, EIO);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_COMPLETED);
    for (int i = 0; i < 8 && phase_of(g, "vda") == CFS_PHASE_READY; i++)
        cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_FAILED);
    assert_group(g, "s2", CFS_GROUP_PARTIAL, "vda:failed vdb:done");
    assert_journal(g, "group:partial[vda]");
    assert_true(has_layer(g, "vda", "s2"));
}

/* Every member refused at start (commit_start fails): nothing merged,
 * the group failed and closed. */
static void test_start_refused(void **state)
{
    struct gx *g = *state;
    cfs_fake_fail_next(g->be, "commit_start", EIO, "internal error: no");
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s1"), 0);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_FAILED);
    assert_group(g, "s1", CFS_GROUP_RUNNING, "vda:failed vdb:running");
    cfs_fake_job_complete(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s1", CFS_GROUP_PARTIAL, "vda:failed vdb:done");
    assert_journal(g, "group:partial[vda]");
}

/* A member refused in the first pass (a job chainfs did not start on
 * vdb) refuses the whole rmdir: nothing started, nothing journaled. */
static void test_refusal_changes_nothing(void **state)
{
    struct gx *g = *state;
    cfs_fake_start_external_job(g->be, "vm1", "vdb", CFS_JOB_COPY);
    cfs_fake_touch_domain(g->be, "vm1");
    cfs_engine_run_pending(g->e);
    /* the external job is seen by the scan; a live check refuses too */
    int r = cfs_engine_rmdir_domain(g->e, "vm1", "s2");
    assert_true(r == -EBUSY);
    assert_int_equal(cfs_fake_calls(g->be, "commit_start"), 0);
    assert_journal(g, "");
    assert_int_equal(group_of(g, "s2", NULL), CFS_GROUP_PHASE_MAX);
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "nope"), -ENOENT);
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "nope", "s2"), -ENOENT);
}

/* A disk-level rmdir merges that disk only: NAME stays on the other. */
static void test_disk_level_one_disk(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", "vda", "s2"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_COMPLETED);
    assert_false(has_layer(g, "vda", "s2"));
    assert_true(has_layer(g, "vdb", "s2"));
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_NONE);
    assert_int_equal(group_of(g, "s2", NULL), CFS_GROUP_PHASE_MAX);
    /* the domain-level rmdir then merges what is left: vdb */
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vdb:running");
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vdb:done");
}

/* Partially merged, then a disk-level rmdir of the remaining disk: the
 * snapshot is merged everywhere, the group's entry closes. */
static void test_partial_then_disk_level(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s1"), 0);
    cfs_fake_job_complete(g->be, "vm1", "vda");
    cfs_fake_job_fail(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s1", CFS_GROUP_PARTIAL, "vda:done vdb:failed");
    assert_journal(g, "group:partial[vdb]");
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", "vdb", "s1"), 0);
    cfs_fake_job_complete(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s1", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
}

/* Partially merged, shut off: a domain-level revert of NAME is EINVAL
 * (its point in time is gone on the disk merged already) and changes
 * nothing; a disk-level revert of the remaining disk is allowed. */
static void test_partial_no_domain_revert(void **state)
{
    struct gx *g = *state;
    cfs_fake_fail_next(g->be, "offline_commit", EIO, "No space left on device");
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    /* the offline merges end in worker threads of their own: the group's
     * phase changes in memory first, its journal entry is rewritten just
     * after (group_after_change), so wait for both */
    for (int i = 0; i < 100; i++) {
        if (group_of(g, "s2", NULL) != CFS_GROUP_RUNNING) {
            char *got = journal_summary(g);
            bool written = strncmp(got, "group:partial", 13) == 0;
            free(got);
            if (written)
                break;
        }
        usleep(20000);
        cfs_engine_run_pending(g->e);
    }
    assert_int_equal(group_of(g, "s2", NULL), CFS_GROUP_PARTIAL);
    bool a_left = has_layer(g, "vda", "s2"), b_left = has_layer(g, "vdb", "s2");
    assert_true(a_left != b_left);
    const char *left = a_left ? "vda" : "vdb";
    char want[64];
    snprintf(want, sizeof(want), "group:partial[%s]", left);
    assert_journal(g, want);

    struct cfs_ctl_cmd c;
    const char *why = NULL;
    assert_int_equal(cfs_ctl_parse("revert s2", 9, &c, &why), 0);
    unsigned creates = cfs_fake_calls(g->be, "image_create");
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &c), -EINVAL);
    /* nothing changed */
    assert_int_equal(cfs_fake_calls(g->be, "image_create"), creates);
    assert_int_equal(cfs_fake_calls(g->be, "persistent_sources_set"), 0);
    assert_journal(g, want);
    assert_int_equal(has_layer(g, "vda", "s2"), a_left);
    assert_int_equal(has_layer(g, "vdb", "s2"), b_left);
    assert_int_equal(phase_of(g, left), CFS_PHASE_FAILED);

    /* the remaining disk's own revert goes */
    assert_int_equal(cfs_ctl_parse("revert s2", 9, &c, &why), 0);
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", left, &c), 0);
    assert_int_equal(cfs_fake_calls(g->be, "persistent_sources_set"), 1);
    assert_int_equal(type_of(g, left), CFS_JOB_REVERT);
    /* a revert keeps NAME on the disk (it is NAME's point in time again):
     * not a merge, so NAME stays partially merged, and the domain-level
     * revert stays refused */
    assert_true(has_layer(g, left, "s2"));
    assert_int_equal(group_of(g, "s2", NULL), CFS_GROUP_PARTIAL);
    assert_journal(g, want);
    assert_int_equal(cfs_ctl_parse("revert s2", 9, &c, &why), 0);
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &c), -EINVAL);
    assert_int_equal(cfs_fake_calls(g->be, "persistent_sources_set"), 1);
}

/* ---- a queued member ---------------------------------------------------------- */

/* vda merges s1 (a disk-level rmdir) when the domain-level rmdir of s2
 * comes: vda's member queues behind it, vdb's starts and holds in ready;
 * vda's merge ends, the queue dispatches s2 (a commit: a member never
 * pulls), and both pivot together. */
static void test_queued_member(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", "vda", "s1"), 0);
    assert_int_equal(type_of(g, "vda"), CFS_JOB_COMMIT);
    /* more than half done: not regrouped (issue 8 §3.3) */
    cfs_fake_job_progress(g->be, "vm1", "vda", 40 << 20, 64 << 20);
    cfs_engine_run_pending(g->e);
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:queued vdb:running");
    assert_journal(g, "commit:running group:running[vda vdb] rmdir:queued "
                      "active-commit:running");
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_READY); /* held: vda queued */
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 0);

    cfs_fake_job_complete(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(type_of(g, "vda"), CFS_JOB_ACTIVE_COMMIT);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:running vdb:ready");
    assert_int_equal(cfs_fake_calls(g->be, "pull_start"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 2);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_false(has_layer(g, "vda", "s2") || has_layer(g, "vdb", "s2"));
}

/* The same, vda's merge of s1 just begun: it is regrouped (aborted and
 * merged again with s2 as one run, issue 8 §3.3); that run is the
 * member, and it holds too. */
static void test_queued_member_regrouped(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", "vda", "s1"), 0);
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(type_of(g, "vda"), CFS_JOB_ACTIVE_COMMIT);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:running vdb:running");
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_READY);
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_false(has_layer(g, "vda", "s1") || has_layer(g, "vda", "s2"));
    assert_true(has_layer(g, "vdb", "s1"));
}

/* Two domain-level rmdirs: s1's commits run (just begun), s2's members
 * queue behind them on both disks and are regrouped with them (issue 8
 * §3.3): one run s2+s1 per disk, s1's group's members; both pivot
 * together, and s2's group ends with them. */
static void test_two_groups_regrouped(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s1"), 0);
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:queued vdb:queued");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(type_of(g, "vda"), CFS_JOB_ACTIVE_COMMIT);
    assert_int_equal(type_of(g, "vdb"), CFS_JOB_ACTIVE_COMMIT);
    assert_group(g, "s1", CFS_GROUP_RUNNING, "vda:running vdb:running");
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_READY); /* held */
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_group(g, "s1", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_false(has_layer(g, "vda", "s1") || has_layer(g, "vda", "s2"));
    assert_false(has_layer(g, "vdb", "s1") || has_layer(g, "vdb", "s2"));
    struct cfs_buf b = {0};
    assert_int_equal(cfs_engine_wait(g->e, "vm1", NULL, never, NULL, &b), 0);
    cfs_buf_free(&b);
}

/* A queued member whose disk's merge fails comes back: failed; the other
 * pivots; partial. */
static void test_queued_member_returned(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", "vda", "s1"), 0);
    cfs_fake_job_progress(g->be, "vm1", "vda", 40 << 20, 64 << 20);
    cfs_engine_run_pending(g->e);
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    cfs_fake_job_fail(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_group(g, "s2", CFS_GROUP_PARTIAL, "vda:failed vdb:done");
    assert_journal(g, "group:partial[vda]");
    assert_true(has_layer(g, "vda", "s2"));
}

/* ---- recovery ----------------------------------------------------------------- */

/* A new engine over a new fake: vm1 with SKIP_A/SKIP_B layers merged away,
 * and an active commit of s2 on each disk listed in JOBS (ready if in
 * READY). */
static void restart(struct gx *g, size_t skip_a, size_t skip_b,
                    const char *jobs, const char *ready)
{
    cfs_engine_free(g->e);
    g->be = cfs_fake_backend_new();
    put_vm(g, skip_a, skip_b);
    const char *disks[2] = { "vda", "vdb" };
    char (*paths[2])[160] = { g->a, g->b };
    for (size_t i = 0; i < 2; i++) {
        if (!strstr(jobs, disks[i]))
            continue;
        assert_int_equal(g->be->ops->commit_start(g->be, "vm1", disks[i],
                                                  paths[i][0], paths[i][1],
                                                  true, 0), 0);
        if (strstr(ready, disks[i]))
            cfs_fake_job_ready(g->be, "vm1", disks[i]);
    }
    engine_up(g);
}

/* Remove the journal entries of TYPE on DISK (a member whose entry was
 * closed before the crash). */
static void journal_drop(struct gx *g, enum cfs_job_type type, const char *disk)
{
    struct cfs_journal *j = NULL;
    assert_int_equal(cfs_journal_open(g->state, &j, NULL), 0);
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (v[i].type == type && strcmp(v[i].disk, disk) == 0)
            assert_int_equal(cfs_journal_remove(j, v[i].id), 0);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
}

/* A restart while both run: the group is rebuilt and holds again. */
static void test_recover_holds(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    restart(g, 0, 0, "vda vdb", "");
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:running vdb:running");
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_READY);
    assert_int_equal(cfs_fake_calls(g->be, "job_pivot"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
}

/* A crash between the two pivots (§8.6): vda pivoted (its entry still
 * open, or closed already), vdb ready: recovery finishes vda and pivots
 * vdb. */
static void test_recover_between_pivots(void **state)
{
    struct gx *g = *state;
    for (int closed = 0; closed < 2; closed++) {
        if (closed) {
            for (int i = 0; i < 3; i++) {
                touch(g->a[i]);
                touch(g->b[i]);
            }
            restart(g, 0, 0, "", "");
        }
        assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
        if (closed)
            journal_drop(g, CFS_JOB_ACTIVE_COMMIT, "vda");
        restart(g, 1, 0, "vdb", "vdb");
        cfs_engine_run_pending(g->e);
        cfs_engine_run_pending(g->e);
        assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_COMPLETED);
        assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
        assert_journal(g, "");
        assert_false(has_layer(g, "vdb", "s2"));
    }
}

/* A partial group survives a restart (info shows it), and rmdir again
 * works from there. */
static void test_recover_partial(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    cfs_fake_job_fail(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    assert_group(g, "s2", CFS_GROUP_PARTIAL, "vda:done vdb:failed");
    restart(g, 1, 0, "", "");
    assert_group(g, "s2", CFS_GROUP_PARTIAL, "vda:done vdb:failed");
    assert_journal(g, "group:partial[vdb]");
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
}

/* A member that never started (the daemon died right after journaling
 * the group) fails at recovery; the other goes on. */
static void test_recover_member_never_started(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s1"), 0);
    journal_drop(g, CFS_JOB_COMMIT, "vdb");
    /* libvirt: vda's commit runs, vdb none */
    cfs_engine_free(g->e);
    g->be = cfs_fake_backend_new();
    put_vm(g, 0, 0);
    assert_int_equal(g->be->ops->commit_start(g->be, "vm1", "vda", g->a[1],
                                              g->a[2], false, 0), 0);
    engine_up(g);
    assert_group(g, "s1", CFS_GROUP_RUNNING, "vda:running vdb:failed");
    cfs_fake_job_complete(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s1", CFS_GROUP_PARTIAL, "vda:done vdb:failed");
    assert_journal(g, "group:partial[vdb]");
}

/* Through the domain's nodes: rmdir of <dom>/snapshots/NAME (disk NULL),
 * <dom>/job shows the group and each member, info of a partially merged
 * snapshot says so, <dom>/wait returns once the group has ended. */
static void test_nodes(void **state)
{
    struct gx *g = *state;
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", NULL, "s2"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_node_contains(g, "/vm1/job", "group: rmdir s2\nstate: running\n"
                                        "members: vda ready, vdb running 0%\n"
                                        "remaining: vda vdb\n");
    assert_node_contains(g, "/vm1/job", "disk: vda\n type: active-commit\n"
                                        " state: ready (held: group)\n");
    assert_node_contains(g, "/vm1/vda/job", "state: ready (held: group)");
    assert_node_contains(g, "/vm1/job.json", "\"operation\": \"rmdir\"");
    cfs_fake_job_fail(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    cfs_engine_run_pending(g->e);
    struct cfs_buf b = {0};
    assert_int_equal(cfs_engine_wait(g->e, "vm1", NULL, never, NULL, &b), 0);
    char *w = cfs_buf_steal(&b);
    assert_non_null(strstr(w, "state:     partial\n"));
    free(w);
    assert_node_contains(g, "/vm1/job", "members: vda done, vdb failed\n"
                                        "remaining: vdb\n");
    assert_node_contains(g, "/vm1/snapshots/s2/info",
                         "state: partially-merged\nremaining: vdb\n");
    assert_node_contains(g, "/vm1/snapshots/s2/info", "vda merged -\n");
    assert_node_contains(g, "/vm1/snapshots/s2/info.json",
                         "\"state\": \"partially-merged\",\n \"remaining\": [\n \"vdb\"\n ]");
    /* the disk's own snapshots/ shows it where it remains only */
    assert_null(read_node(g, "/vm1/vda/snapshots/s2/info"));
    assert_node_contains(g, "/vm1/vdb/snapshots/s2/info", "state: ok");
    /* again, through the node */
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", "", "s2"), 0);
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_int_equal(cfs_engine_wait(g->e, "vm1", NULL, never, NULL, &b), 0);
    w = cfs_buf_steal(&b);
    assert_non_null(strstr(w, "state:     completed\n"));
    free(w);
    assert_null(read_node(g, "/vm1/snapshots/s2/info"));
}

/* <dom>/ctl: `pivot` pivots every member in ready now (the hold
 * notwithstanding); `abort` aborts the members in progress and returns
 * the queued ones; without a group in progress: ENOENT. */
static void test_dom_ctl(void **state)
{
    struct gx *g = *state;
    const struct cfs_ctl_cmd pivot = { .op = CFS_CTL_PIVOT };
    const struct cfs_ctl_cmd abort_cmd = { .op = CFS_CTL_ABORT };
    const struct cfs_ctl_cmd manual = { .op = CFS_CTL_PIVOT_MANUAL };
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &pivot), -ENOENT);
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &abort_cmd), -ENOENT);
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &manual), -EINVAL);

    /* abort: vdb's running commit canceled, vda's queued deletion (behind
     * vda's own merge of s1) back */
    assert_int_equal(cfs_engine_rmdir(g->e, "vm1", "vda", "s1"), 0);
    cfs_fake_job_progress(g->be, "vm1", "vda", 40 << 20, 64 << 20);
    cfs_engine_run_pending(g->e);
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:queued vdb:running");
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &abort_cmd), 0);
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vdb"), CFS_PHASE_CANCELED);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_RUNNING); /* its own s1 */
    assert_group(g, "s2", CFS_GROUP_FAILED, "vda:failed vdb:failed");
    assert_journal(g, "commit:running");
    assert_true(has_layer(g, "vdb", "s2") && has_layer(g, "vda", "s2"));
    assert_node_contains(g, "/vm1/vda/job", "returned: s2 (the rmdir of s2 was "
                                            "aborted through vm1/ctl)");
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &abort_cmd), -ENOENT);
    cfs_fake_job_complete(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_COMPLETED);

    /* pivot: vda ready and held; pivoted on demand; vdb after */
    assert_int_equal(cfs_engine_rmdir_domain(g->e, "vm1", "s2"), 0);
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", "", &pivot), -EAGAIN);
    cfs_fake_job_ready(g->be, "vm1", "vda");
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_READY); /* held */
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &pivot), 0);
    cfs_engine_run_pending(g->e);
    assert_int_equal(phase_of(g, "vda"), CFS_PHASE_COMPLETED);
    assert_group(g, "s2", CFS_GROUP_RUNNING, "vda:done vdb:running");
    cfs_fake_job_ready(g->be, "vm1", "vdb");
    cfs_engine_run_pending(g->e);
    assert_group(g, "s2", CFS_GROUP_COMPLETED, "vda:done vdb:done");
    assert_journal(g, "");
    assert_int_equal(cfs_engine_ctl(g->e, "vm1", NULL, &abort_cmd), -ENOENT);
}

int main(void)
{
#define R(f) cmocka_unit_test_setup_teardown(f, setup_running, teardown)
#define S(f) cmocka_unit_test_setup_teardown(f, setup_shutoff, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_phase_function),
        R(test_ready_vda_first),
        R(test_ready_vdb_first),
        R(test_intermediate),
        S(test_shutoff),
        R(test_fail_before_ready_then_again),
        R(test_fail_at_pivot),
        R(test_start_refused),
        R(test_refusal_changes_nothing),
        R(test_disk_level_one_disk),
        R(test_partial_then_disk_level),
        S(test_partial_no_domain_revert),
        R(test_queued_member),
        R(test_queued_member_regrouped),
        R(test_queued_member_returned),
        R(test_two_groups_regrouped),
        R(test_recover_holds),
        R(test_recover_between_pivots),
        R(test_recover_partial),
        R(test_recover_member_never_started),
        R(test_nodes),
        R(test_dom_ctl),
    };
#undef R
#undef S
    return cmocka_run_group_tests(tests, NULL, NULL);
}
