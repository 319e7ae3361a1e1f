/* test_stamp.c — stamp.c: every node's mtime is when what it shows last
 * changed. On its own (first sight, change, change back, the bound), then
 * over the engine and the fake backend: a mkdir re-dates exactly the
 * files and directories of that disk whose bytes or entries changed, and
 * nothing of the other disks and domains. */
#include <errno.h>
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
#include "fake.h"
#include "chainfs/stamp.h"

static struct timespec TS(long s) { return (struct timespec){.tv_sec = s, .tv_nsec = 0}; }

/* ---- the table on its own ----------------------------------------------------- */

static void test_file_times(void **state)
{
    (void)state;
    struct cfs_stamps *s = cfs_stamps_new(TS(100), 0);
    /* first sight: the mount's time, whatever the clock says now */
    assert_int_equal(cfs_stamps_see(s, "/a", "x1", 2, TS(200)).tv_sec, 100);
    assert_int_equal(cfs_stamps_see(s, "/b", "x1", 2, TS(210)).tv_sec, 100);
    /* unchanged: unchanged time */
    assert_int_equal(cfs_stamps_see(s, "/a", "x1", 2, TS(300)).tv_sec, 100);
    /* same length, other bytes: the time it was seen changed */
    assert_int_equal(cfs_stamps_see(s, "/a", "x2", 2, TS(400)).tv_sec, 400);
    assert_int_equal(cfs_stamps_see(s, "/a", "x2", 2, TS(500)).tv_sec, 400);
    /* longer, and back to the old bytes: both are changes */
    assert_int_equal(cfs_stamps_see(s, "/a", "x2 ", 3, TS(600)).tv_sec, 600);
    assert_int_equal(cfs_stamps_see(s, "/a", "x1", 2, TS(700)).tv_sec, 700);
    /* nanoseconds kept */
    struct timespec t = cfs_stamps_see(s, "/a", "", 0, (struct timespec){800, 123456789});
    assert_int_equal(t.tv_sec, 800);
    assert_int_equal(t.tv_nsec, 123456789);
    /* another path was not touched by any of it */
    assert_int_equal(cfs_stamps_see(s, "/b", "x1", 2, TS(900)).tv_sec, 100);
    assert_int_equal(cfs_stamps_count(s), 2);
    cfs_stamps_free(s);
}

static void test_dir_times(void **state)
{
    (void)state;
    struct cfs_stamps *s = cfs_stamps_new(TS(100), 0);
    char *ab[] = {"ab", "c", NULL};
    char *a_bc[] = {"a", "bc", NULL};
    char *ab_d[] = {"ab", "c", "d", NULL};
    assert_int_equal(cfs_stamps_see_names(s, "/d", ab, TS(200)).tv_sec, 100);
    assert_int_equal(cfs_stamps_see_names(s, "/d", ab, TS(300)).tv_sec, 100);
    /* the same characters split otherwise are other entries */
    assert_int_equal(cfs_stamps_see_names(s, "/d", a_bc, TS(400)).tv_sec, 400);
    assert_int_equal(cfs_stamps_see_names(s, "/d", ab_d, TS(500)).tv_sec, 500);
    assert_int_equal(cfs_stamps_see_names(s, "/d", NULL, TS(600)).tv_sec, 600);
    assert_int_equal(cfs_stamps_see_names(s, "/d", NULL, TS(700)).tv_sec, 600);
    cfs_stamps_free(s);
}

static void test_bounded(void **state)
{
    (void)state;
    struct cfs_stamps *s = cfs_stamps_new(TS(100), 3);
    assert_int_equal(cfs_stamps_see(s, "/1", "a", 1, TS(200)).tv_sec, 100);
    assert_int_equal(cfs_stamps_see(s, "/2", "a", 1, TS(200)).tv_sec, 100);
    assert_int_equal(cfs_stamps_see(s, "/3", "a", 1, TS(200)).tv_sec, 100);
    assert_int_equal(cfs_stamps_count(s), 3);
    /* a fourth path: the table is emptied; what was forgotten may have
     * changed, so from now on a path seen anew is dated now */
    assert_int_equal(cfs_stamps_see(s, "/4", "a", 1, TS(300)).tv_sec, 300);
    assert_int_equal(cfs_stamps_count(s), 1);
    assert_int_equal(cfs_stamps_see(s, "/1", "a", 1, TS(400)).tv_sec, 400);
    assert_int_equal(cfs_stamps_see(s, "/1", "a", 1, TS(500)).tv_sec, 400);
    assert_int_equal(cfs_stamps_see(s, "/4", "a", 1, TS(600)).tv_sec, 300);
    cfs_stamps_free(s);
    assert_null(cfs_stamps_free(NULL));
}

/* ---- over the engine and the fake backend -------------------------------------- */

struct fx {
    char dir[64];
    char state[128];
    char paths[4][128];
    struct cfs_backend *be;
    struct cfs_engine *e;
    struct cfs_stamps *stamps;
};

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

/* vm1: vda base <- s1 (active) and vdb: one layer; vm2/vda: one layer. */
static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-stamp-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    const char *files[] = {"s1.qcow2", "base.qcow2", "vdb.qcow2", "vm2.qcow2"};
    for (int i = 0; i < 4; i++) {
        snprintf(f->paths[i], sizeof(f->paths[i]), "%s/%s", f->dir, files[i]);
        touch(f->paths[i]);
    }
    f->be = cfs_fake_backend_new();
    const char *chain[] = {f->paths[0], f->paths[1]};
    const char *meta[] = {"s1", NULL};
    cfs_fake_add_simple(f->be, "vm1", CFS_DOM_RUNNING, "vda", chain, meta, 2);
    const char *chain2[] = {f->paths[3]};
    cfs_fake_add_simple(f->be, "vm2", CFS_DOM_RUNNING, "vda", chain2, NULL, 1);

    struct cfs_engine_config cfg = {.state_dir = f->state};
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, &err), 0);
    assert_int_equal(cfs_engine_start(f->e, false, &err), 0);
    f->stamps = cfs_stamps_new(TS(1000), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cfs_stamps_free(f->stamps);
    cfs_engine_free(f->e);
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

/* Look at every node under PATH at time NOW, as `rsync -a` of the mount
 * would (readdir of directories, whole reads of files); append one
 * "PATH SECONDS" line per node to OUT. */
static void walk(struct fx *f, const char *path, long now, struct cfs_buf *out)
{
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(path, &p), 0);
    struct timespec t;
    if (cfs_node_is_file(p.kind)) {
        struct cfs_buf b = {0};
        assert_int_equal(cfs_engine_read(f->e, &p, &b), 0);
        t = cfs_stamps_see(f->stamps, path, b.data, b.len, TS(now));
        cfs_buf_free(&b);
        cfs_buf_printf(out, "%s %ld\n", path, (long)t.tv_sec);
        return;
    }
    char **names = NULL;
    assert_int_equal(cfs_engine_readdir(f->e, &p, &names), 0);
    t = cfs_stamps_see_names(f->stamps, path, names, TS(now));
    cfs_buf_printf(out, "%s %ld\n", path, (long)t.tv_sec);
    for (char **n = names; n && *n; n++) {
        char *child = cfs_xasprintf("%s/%s", strcmp(path, "/") == 0 ? "" : path, *n);
        walk(f, child, now, out);
        free(child);
    }
    cfs_strv_free(names);
}

static char *walk_all(struct fx *f, long now)
{
    struct cfs_buf b = {0};
    walk(f, "/", now, &b);
    return cfs_buf_steal(&b);
}

/* true if TEXT has a line that starts with PREFIX */
static bool has_line(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        if (strncmp(l, prefix, n) == 0)
            return true;
    return false;
}

/* The paths of BEFORE that AFTER shows with another time, one a line. */
static char *redated(const char *before, const char *after)
{
    struct cfs_buf out = {0};
    char *copy = cfs_xstrdup(after), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char *sp = strrchr(line, ' ');
        char *path_sp = cfs_xasprintf("%.*s ", (int)(sp - line), line);
        char *whole = cfs_xasprintf("%s\n", line);
        if (has_line(before, path_sp) && !has_line(before, whole))
            cfs_buf_printf(&out, "%.*s\n", (int)(sp - line), line);
        free(path_sp);
        free(whole);
    }
    free(copy);
    return cfs_buf_steal(&out);
}

static void test_mkdir_redates_its_disk_only(void **state)
{
    struct fx *f = *state;
    char *t0 = walk_all(f, 2000);
    /* first sight: everything is dated at the mount */
    assert_null(strstr(t0, " 2000\n"));
    assert_non_null(strstr(t0, "/vm1/vda/chain 1000\n"));
    char *again = walk_all(f, 2500);
    assert_string_equal(again, t0);

    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "s2"), 0);
    cfs_engine_run_pending(f->e);
    char *t1 = walk_all(f, 3000);
    char *changed = redated(t0, t1);
    /* vm1/vda's chain, its job, the new snapshot's listing, and s1's info
     * (it is no longer the active layer); the domain's job (vda's part),
     * its snapshots/ listing and s1's info.json there (vda's depth);
     * not vm1's other disk, not vm2, not the root or vm1's own directory
     * (their entries stayed) */
    assert_string_equal(changed,
                        "/vm1/job\n"
                        "/vm1/job.json\n"
                        "/vm1/wait\n"
                        "/vm1/snapshots\n"
                        "/vm1/snapshots/s1/info.json\n"
                        "/vm1/vda/chain\n"
                        "/vm1/vda/chain.json\n"
                        "/vm1/vda/job\n"
                        "/vm1/vda/job.json\n"
                        "/vm1/vda/wait\n"
                        "/vm1/vda/snapshots\n"
                        "/vm1/vda/snapshots/s1/info\n"
                        "/vm1/vda/snapshots/s1/info.json\n");
    /* the new snapshot's directory and files: first seen now, dated at
     * the mount like every other node seen for the first time */
    assert_non_null(strstr(t1, "/vm1/vda/snapshots/s2/info 1000\n"));
    assert_non_null(strstr(t1, "/vm1/vda/snapshots 3000\n"));

    /* nothing changed since: nothing re-dated */
    char *t2 = walk_all(f, 4000);
    assert_string_equal(t2, t1);

    /* a domain defined: the root's entries changed, not the rest */
    const char *chain3[] = {f->paths[2]};
    cfs_fake_add_simple(f->be, "vm3", CFS_DOM_SHUTOFF, "vda", chain3, NULL, 1);
    cfs_engine_run_pending(f->e);
    char *t3 = walk_all(f, 5000);
    char *changed3 = redated(t2, t3);
    assert_string_equal(changed3, "/\n");
    free(t0);
    free(again);
    free(t1);
    free(changed);
    free(t2);
    free(t3);
    free(changed3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_times),
        cmocka_unit_test(test_dir_times),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test_setup_teardown(test_mkdir_redates_its_disk_only, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
