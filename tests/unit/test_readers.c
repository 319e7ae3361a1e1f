/* test_readers.c — snapshots/NAME/disk.raw (issue 9) against the fake
 * backend and the fake image server: the data-run helpers, stat from the
 * tree without a server, server sharing, and which merges an open reader
 * refuses, holds up or lets through. No libvirtd, no qemu-nbd. */
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
#include "chainfs/journal.h"
#include "fake.h"
#include "fake_img.h"

#define MiB (1024ull * 1024)

/* ---- data runs (pure) ------------------------------------------------------ */

static void test_extents_seek(void **state)
{
    (void)state;
    const struct cfs_extent runs[] = { { 0, 4096 }, { 8192, 4096 },
                                       { 12288, 4096 }, { 65536, 1024 } };
    const size_t n = 4;
    const uint64_t size = 1 << 20;
    /* SEEK_DATA */
    assert_int_equal(cfs_extents_seek(runs, n, size, 0, SEEK_DATA), 0);
    assert_int_equal(cfs_extents_seek(runs, n, size, 4095, SEEK_DATA), 4095);
    assert_int_equal(cfs_extents_seek(runs, n, size, 4096, SEEK_DATA), 8192);
    assert_int_equal(cfs_extents_seek(runs, n, size, 20000, SEEK_DATA), 65536);
    assert_int_equal(cfs_extents_seek(runs, n, size, 65536 + 1024, SEEK_DATA), -ENXIO);
    /* SEEK_HOLE: adjacent runs are one stretch of data */
    assert_int_equal(cfs_extents_seek(runs, n, size, 0, SEEK_HOLE), 4096);
    assert_int_equal(cfs_extents_seek(runs, n, size, 5000, SEEK_HOLE), 5000);
    assert_int_equal(cfs_extents_seek(runs, n, size, 8192, SEEK_HOLE), 16384);
    assert_int_equal(cfs_extents_seek(runs, n, size, 70000, SEEK_HOLE), 70000);
    /* past the end; other whence */
    assert_int_equal(cfs_extents_seek(runs, n, size, size, SEEK_DATA), -ENXIO);
    assert_int_equal(cfs_extents_seek(runs, n, size, size, SEEK_HOLE), -ENXIO);
    assert_int_equal(cfs_extents_seek(runs, n, size, 0, SEEK_SET), -EINVAL);
    /* no data at all; all data (the end is the hole) */
    assert_int_equal(cfs_extents_seek(NULL, 0, size, 0, SEEK_DATA), -ENXIO);
    assert_int_equal(cfs_extents_seek(NULL, 0, size, 10, SEEK_HOLE), 10);
    const struct cfs_extent all[] = { { 0, size } };
    assert_int_equal(cfs_extents_seek(all, 1, size, 123, SEEK_HOLE), (int64_t)size);
    /* a run reported past the size is cut at it */
    const struct cfs_extent over[] = { { 0, 2 * size } };
    assert_int_equal(cfs_extents_seek(over, 1, size, 0, SEEK_HOLE), (int64_t)size);
    assert_int_equal(cfs_extents_bytes(runs, n, size), 3 * 4096 + 1024);
    assert_int_equal(cfs_extents_bytes(over, 1, size), size);
    assert_int_equal(cfs_extents_bytes(runs, n, 10000), 4096 + (10000 - 8192));
}

/* ---- the engine ---------------------------------------------------------------- */

struct fx {
    char dir[64];
    char state[128];
    char paths[3][128];   /* s2 (active), s1, base */
    struct cfs_backend *be;
    struct cfs_imgserve *img;
    struct cfs_engine *e;
};

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

static bool exists(const char *p)
{
    return access(p, F_OK) == 0;
}

static void engine_up(struct fx *f, bool images)
{
    f->img = images ? cfs_fake_imgserve_new() : NULL;
    struct cfs_engine_config cfg = { .state_dir = f->state,
                                     .live_pull = CFS_LIVE_PULL_OFF,
                                     .imgserve = f->img };
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, &err), 0);
    assert_int_equal(cfs_engine_start(f->e, false, &err), 0);
}

/* vm1/vda: base <- s1 <- s2 (active), s1 and s2 named by metadata;
 * running. Every layer 64 MiB, 1 MiB allocated. */
static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-readers-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    const char *files[] = { "s2.qcow2", "s1.qcow2", "base.raw" };
    for (int i = 0; i < 3; i++) {
        snprintf(f->paths[i], sizeof(f->paths[i]), "%s/%s", f->dir, files[i]);
        touch(f->paths[i]);
    }
    f->be = cfs_fake_backend_new();
    const char *chain[] = { f->paths[0], f->paths[1], f->paths[2] };
    const char *meta[] = { "s2", "s1", NULL };
    cfs_fake_add_simple(f->be, "vm1", CFS_DOM_RUNNING, "vda", chain, meta, 3);
    engine_up(f, true);
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

static struct cfs_path P(const char *s)
{
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(s, &p), 0);
    return p;
}

static char *list(struct fx *f, const char *path)
{
    struct cfs_path p = P(path);
    char **names = NULL;
    if (cfs_engine_readdir(f->e, &p, &names) < 0)
        return NULL;
    struct cfs_buf b = { 0 };
    for (char **n = names; n && *n; n++)
        cfs_buf_printf(&b, "%s%s", n == names ? "" : " ", *n);
    cfs_strv_free(names);
    return cfs_buf_steal(&b);
}

static char *read_file(struct fx *f, const char *path)
{
    struct cfs_path p = P(path);
    struct cfs_buf b = { 0 };
    if (cfs_engine_read(f->e, &p, &b) < 0) {
        cfs_buf_free(&b);
        return NULL;
    }
    return cfs_buf_steal(&b);
}

static struct cfs_image_reader *open_raw(struct fx *f, const char *snap, int want)
{
    char path[128];
    snprintf(path, sizeof(path), "/vm1/vda/snapshots/%s/disk.raw", snap);
    struct cfs_path p = P(path);
    struct cfs_image_reader *r = NULL;
    assert_int_equal(cfs_engine_image_open(f->e, &p, getpid(), &r), want);
    if (want == 0)
        assert_non_null(r);
    else
        assert_null(r);
    return r;
}

static size_t journal_entries(struct fx *f)
{
    struct cfs_journal *j = NULL;
    assert_int_equal(cfs_journal_open(f->state, &j, NULL), 0);
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    for (size_t i = 0; i < n; i++)
        cfs_journal_entry_clear(&v[i]);
    free(v);
    cfs_journal_free(j);
    return n;
}

static size_t n_readers(struct fx *f)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, "vm1", "vda");
    size_t n = s ? s->n_readers : 0;
    pthread_mutex_unlock(&t->lock);
    return n;
}

static void *release_later(void *arg)
{
    usleep(200 * 1000);
    cfs_engine_image_release(arg);
    return NULL;
}

static unsigned merges_started(struct fx *f)
{
    return cfs_fake_calls(f->be, "commit_start") + cfs_fake_calls(f->be, "pull_start");
}

/* ls -l, find, du: the tree alone, never a server */
static void test_stat_and_listing_start_nothing(void **state)
{
    struct fx *f = *state;
    char *l = list(f, "/vm1/vda/snapshots/s1");
    assert_string_equal(l, "info info.json disk.raw");
    free(l);
    struct cfs_path p = P("/vm1/vda/snapshots/s2/disk.raw");
    struct cfs_image_attr a;
    assert_int_equal(cfs_engine_image_stat(f->e, &p, &a), 0);
    assert_int_equal(a.size, FAKE_VIRTUAL_SIZE);
    struct cfs_node_attr na;
    assert_int_equal(cfs_engine_getattr(f->e, &p, &na), 0);
    assert_false(na.is_dir);
    assert_int_equal(na.size, FAKE_VIRTUAL_SIZE);
    /* not rendered */
    assert_null(read_file(f, "/vm1/vda/snapshots/s2/disk.raw"));
    /* the base has no snapshot, so no disk.raw; a name that is none */
    p = P("/vm1/vda/snapshots/nope/disk.raw");
    assert_int_equal(cfs_engine_image_stat(f->e, &p, &a), -ENOENT);
    assert_int_equal(cfs_fake_img_count(f->img, "start"), 0);
    assert_int_equal(cfs_fake_img_count(f->img, "sweep"), 1);
}

/* the estimate: the frozen layers' allocation, capped at the size */
static void test_stat_estimate(void **state)
{
    struct fx *f = *state;
    struct cfs_domain *d = NULL;
    assert_int_equal(f->be->ops->read_domain(f->be, "vm1", &d), 0);
    struct cfs_disk *dk = cfs_domain_find_disk(d, "vda");
    dk->layers[0].allocation = 50 * MiB;   /* active: not counted */
    dk->layers[1].allocation = 3 * MiB;
    dk->layers[2].allocation = 5 * MiB + 1;
    cfs_fake_put_domain(f->be, d);
    cfs_domain_free(d);
    cfs_fake_touch_domain(f->be, "vm1");
    cfs_engine_run_pending(f->e);
    struct cfs_image_attr a;
    struct cfs_path p = P("/vm1/vda/snapshots/s2/disk.raw");
    assert_int_equal(cfs_engine_image_stat(f->e, &p, &a), 0);
    assert_int_equal(a.blocks, (8 * MiB + 1 + 511) / 512);
    p = P("/vm1/vda/snapshots/s1/disk.raw");
    assert_int_equal(cfs_engine_image_stat(f->e, &p, &a), 0);
    assert_int_equal(a.blocks, (5 * MiB + 1 + 511) / 512);
}

/* without an image server (or with files elsewhere) there is no disk.raw */
static void test_no_images_no_file(void **state)
{
    struct fx *f = *state;
    cfs_engine_free(f->e);
    f->be = cfs_fake_backend_new();
    const char *chain[] = { f->paths[0], f->paths[1], f->paths[2] };
    const char *meta[] = { "s2", "s1", NULL };
    cfs_fake_add_simple(f->be, "vm1", CFS_DOM_RUNNING, "vda", chain, meta, 3);
    engine_up(f, false);
    char *l = list(f, "/vm1/vda/snapshots/s1");
    assert_string_equal(l, "info info.json");
    free(l);
    struct cfs_path p = P("/vm1/vda/snapshots/s1/disk.raw");
    struct cfs_image_attr a;
    assert_int_equal(cfs_engine_image_stat(f->e, &p, &a), -ENOENT);
    struct cfs_image_reader *r = NULL;
    assert_int_equal(cfs_engine_image_open(f->e, &p, getpid(), &r), -ENOENT);

    /* a remote connection: the files are on another host */
    cfs_engine_free(f->e);
    f->be = cfs_fake_backend_new();
    cfs_fake_add_simple(f->be, "vm1", CFS_DOM_RUNNING, "vda", chain, meta, 3);
    cfs_fake_set_remote(f->be, true, f->dir);
    engine_up(f, true);
    l = list(f, "/vm1/vda/snapshots/s1");
    assert_string_equal(l, "info info.json");
    free(l);
    assert_int_equal(cfs_engine_image_open(f->e, &p, getpid(), &r), -ENOENT);
    assert_int_equal(cfs_fake_img_count(f->img, "start"), 0);
}

/* one server per frozen chain, shared, stopped at the last release; the
 * chain is the layers below the snapshot, never the active one */
static void test_open_read_share_release(void **state)
{
    struct fx *f = *state;
    struct cfs_image_reader *a = open_raw(f, "s2", 0);
    struct cfs_image_reader *b = open_raw(f, "s2", 0);
    assert_int_equal(cfs_fake_img_count(f->img, "start"), 1);
    assert_int_equal(cfs_fake_img_count(f->img, "stream_open"), 2);
    uint64_t size = 0;
    char *chain = cfs_fake_img_last_chain(f->img, &size);
    char *want = cfs_xasprintf("qcow2:%s\nqcow2:%s\n", f->paths[1], f->paths[2]);
    assert_string_equal(chain, want);
    assert_int_equal(size, FAKE_VIRTUAL_SIZE);
    free(chain);
    free(want);
    assert_int_equal(n_readers(f), 2);
    char *job = read_file(f, "/vm1/vda/job");
    assert_non_null(strstr(job, "readers:"));
    assert_non_null(strstr(job, "s2 (pid "));
    free(job);
    job = read_file(f, "/vm1/vda/job.json");
    assert_non_null(strstr(job, "\"readers\""));
    free(job);

    /* data, holes, and the end */
    unsigned char buf[4096];
    assert_int_equal(cfs_engine_image_read(a, buf, sizeof(buf), 1024), sizeof(buf));
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], cfs_fake_img_byte(1024 + i));
    assert_int_equal(cfs_engine_image_read(b, buf, sizeof(buf), FAKE_VIRTUAL_SIZE / 2),
                     sizeof(buf));
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0);
    assert_int_equal(cfs_engine_image_read(a, buf, sizeof(buf), FAKE_VIRTUAL_SIZE - 100), 100);
    assert_int_equal(cfs_engine_image_read(a, buf, sizeof(buf), FAKE_VIRTUAL_SIZE), 0);

    /* lseek and fstat from the map (fetched once) */
    assert_int_equal(cfs_engine_image_seek(a, 0, SEEK_HOLE), FAKE_VIRTUAL_SIZE / 2);
    assert_int_equal(cfs_engine_image_seek(b, FAKE_VIRTUAL_SIZE / 2, SEEK_DATA), -ENXIO);
    struct cfs_image_attr at;
    assert_int_equal(cfs_engine_image_fstat(a, &at), 0);
    assert_int_equal(at.size, FAKE_VIRTUAL_SIZE);
    assert_int_equal(at.blocks, FAKE_VIRTUAL_SIZE / 2 / 512);
    assert_int_equal(cfs_fake_img_count(f->img, "extents"), 1);
    /* while it is open a stat by path (how Linux sends fstat) is exact */
    struct cfs_path sp = P("/vm1/vda/snapshots/s2/disk.raw");
    assert_int_equal(cfs_engine_image_stat(f->e, &sp, &at), 0);
    assert_int_equal(at.blocks, FAKE_VIRTUAL_SIZE / 2 / 512);

    /* another snapshot: another chain, another server */
    struct cfs_image_reader *c = open_raw(f, "s1", 0);
    assert_int_equal(cfs_fake_img_count(f->img, "start"), 2);
    chain = cfs_fake_img_last_chain(f->img, NULL);
    want = cfs_xasprintf("qcow2:%s\n", f->paths[2]);
    assert_string_equal(chain, want);
    free(chain);
    free(want);

    cfs_engine_image_release(a);
    assert_int_equal(cfs_fake_img_count(f->img, "stop"), 0);
    cfs_engine_image_release(b);
    assert_int_equal(cfs_fake_img_count(f->img, "stop"), 1);
    cfs_engine_image_release(c);
    assert_int_equal(cfs_fake_img_count(f->img, "running"), 0);
    assert_int_equal(n_readers(f), 0);
    job = read_file(f, "/vm1/vda/job");
    assert_null(strstr(job, "readers:"));
    free(job);
}

/* base <- s1 <- s2 (active): a reader of s2 reads s1 and base, so both
 * rmdirs would write or remove one of them: EBUSY, naming the reader,
 * nothing changed; after the release they go */
static void test_rmdir_refused_while_open(void **state)
{
    struct fx *f = *state;
    struct cfs_image_reader *r = open_raw(f, "s2", 0);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s2"), -EBUSY);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), -EBUSY);
    assert_int_equal(merges_started(f), 0);
    assert_int_equal(journal_entries(f), 0);
    char *l = list(f, "/vm1/vda/snapshots");
    assert_string_equal(l, "s1 s2");
    free(l);
    /* mkdir is never blocked */
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "s3"), 0);
    cfs_engine_run_pending(f->e);
    cfs_engine_image_release(r);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    assert_int_equal(merges_started(f), 1);
}

/* a reader of s1 reads the base only: rmdir s2 (the active layer into
 * s1) does not touch it; rmdir s1 (into the base) does */
static void test_rmdir_newer_allowed(void **state)
{
    struct fx *f = *state;
    struct cfs_image_reader *r = open_raw(f, "s1", 0);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), -EBUSY);
    assert_int_equal(merges_started(f), 0);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s2"), 0);
    assert_int_equal(merges_started(f), 1);
    cfs_engine_image_release(r);
}

/* an open while a merge writes the chain: EBUSY; the merge's own
 * snapshot is hidden (ENOENT); a chain the merge does not touch opens */
static void test_open_refused_while_merge_writes(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0); /* s1 -> base */
    open_raw(f, "s1", -ENOENT);
    open_raw(f, "s2", -EBUSY);  /* reads s1 and base */
    assert_int_equal(n_readers(f), 0);
    assert_int_equal(cfs_fake_img_count(f->img, "start"), 0);
}

/* a start that fails: the errno, no reader left behind */
static void test_start_failure(void **state)
{
    struct fx *f = *state;
    cfs_fake_img_fail_next_start(f->img, -EBUSY,
                                 "Failed to get shared \"write\" lock");
    open_raw(f, "s2", -EBUSY);
    assert_int_equal(n_readers(f), 0);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
}

/* queued deletions wait for the reader instead of coming back: the run
 * is not started while the reader is open, `job` says why, and the
 * release dispatches it */
static void test_queued_waits_for_reader(void **state)
{
    struct fx *f = *state;
    /* s2 (active) merges into s1: the disk is busy */
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s2"), 0);
    /* a reader of s1 reads the base: the active commit does not touch it */
    struct cfs_image_reader *r = open_raw(f, "s1", 0);
    /* rmdir s1 queues behind the merge (it would write the base) */
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    assert_int_equal(merges_started(f), 1);
    cfs_fake_job_ready(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    cfs_engine_run_pending(f->e);
    /* s2's merge is done; s1's run waits for the reader */
    assert_false(exists(f->paths[0]));
    assert_int_equal(merges_started(f), 1);
    char *job = read_file(f, "/vm1/vda/job");
    assert_non_null(strstr(job, "queued:"));
    assert_non_null(strstr(job, "waiting:"));
    assert_non_null(strstr(job, "disk.raw of vm1/vda is open"));
    free(job);
    /* the engine's own polls do not dispatch it meanwhile */
    unsigned reads = cfs_fake_calls(f->be, "read_domain");
    cfs_engine_run_pending(f->e);
    cfs_engine_run_pending(f->e);
    assert_int_equal(merges_started(f), 1);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), reads);

    cfs_engine_image_release(r);
    cfs_engine_run_pending(f->e);
    assert_int_equal(merges_started(f), 2);
    job = read_file(f, "/vm1/vda/job");
    assert_null(strstr(job, "waiting:"));
    free(job);
}

/* close(2) (flush) of a reader whose release has not come: an rmdir
 * waits a moment for the release; without one (a dup still open) it is
 * refused; a read after the flush undoes it */
static void test_flush_then_release(void **state)
{
    struct fx *f = *state;
    struct cfs_image_reader *r = open_raw(f, "s1", 0);
    cfs_engine_image_flush(r);
    unsigned char b[16];
    assert_int_equal(cfs_engine_image_read(r, b, sizeof(b), 0), sizeof(b));
    char *job = read_file(f, "/vm1/vda/job");
    assert_non_null(strstr(job, "readers:"));
    free(job);
    /* flushed, never released (a dup open): the rmdir waits, then EBUSY */
    cfs_engine_image_flush(r);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), -EBUSY);
    assert_int_equal(merges_started(f), 0);
    /* released from another thread while the rmdir waits: it goes */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_later, r), 0);
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    pthread_join(t, NULL);
    assert_int_equal(merges_started(f), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_extents_seek),
        cmocka_unit_test_setup_teardown(test_stat_and_listing_start_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stat_estimate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_images_no_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_read_share_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rmdir_refused_while_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rmdir_newer_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refused_while_merge_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queued_waits_for_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_then_release, setup, teardown),
    };
    return cmocka_run_group_tests_name("readers", tests, NULL, NULL);
}
