/* test_util.c — util.c (allocation, strv, size/time formatting, text
 * buffer, backend error slot) and model.c (enum names, destructors, deep
 * copies, lookups). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include "tmpdir.h"

#include "chainfs/backend.h"
#include "chainfs/model.h"
#include "chainfs/util.h"

/* ---- util.c --------------------------------------------------------------- */

/* Issue 12: two hosts' engines trim the heap at the same moment at
 * start-up; under ASan glibc's allocator is set up by the first
 * malloc_trim, and a second one at the same time crashed in it. This
 * test runs first, so its calls are the process's first. */
static pthread_barrier_t trim_go;

static void *trim_thread(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&trim_go);
    for (int i = 0; i < 20; i++)
        cfs_malloc_trim();
    return NULL;
}

static void test_malloc_trim_concurrent(void **state)
{
    (void)state;
    pthread_t t[8];
    pthread_barrier_init(&trim_go, NULL, 8);
    for (int i = 0; i < 8; i++)
        assert_int_equal(0, pthread_create(&t[i], NULL, trim_thread, NULL));
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&trim_go);
}

static void test_xstrdup_and_asprintf(void **state)
{
    (void)state;
    assert_null(cfs_xstrdup(NULL));

    _cleanup_free_ char *s = cfs_xstrdup("abc");
    assert_string_equal(s, "abc");

    _cleanup_free_ char *f = cfs_xasprintf("%s-%d", "x", 42);
    assert_string_equal(f, "x-42");

    _cleanup_free_ char *z = cfs_xmalloc(0); /* never NULL */
    assert_non_null(z);
    _cleanup_free_ int *c = cfs_xcalloc(4, sizeof(int));
    for (int i = 0; i < 4; i++)
        assert_int_equal(c[i], 0);
    c = cfs_xrealloc(c, 64 * sizeof(int));
    assert_int_equal(c[3], 0);
}

static void test_xmalloc_aborts_on_oom(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* stderr is noise here: the message is the point of the test but
         * ASan may print its own report instead. Without /dev/null the
         * noise stays on stderr and the test still holds. */
        FILE *nul = freopen("/dev/null", "w", stderr);
        (void)nul;
        void *p = cfs_xmalloc((size_t)1 << 60); /* beyond any address space */
        (void)p;
        _exit(0); /* must not get here */
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) != 0));
}

static void test_streq(void **state)
{
    (void)state;
    assert_true(cfs_streq(NULL, NULL));
    assert_false(cfs_streq("a", NULL));
    assert_false(cfs_streq(NULL, "a"));
    assert_true(cfs_streq("a", "a"));
    assert_false(cfs_streq("a", "b"));
    assert_true(cfs_streq("", ""));
}

static void test_strv(void **state)
{
    (void)state;
    _cleanup_strv_ char **v = NULL;

    assert_int_equal(cfs_strv_len(v), 0);
    assert_false(cfs_strv_contains(v, "a"));
    cfs_strv_push(&v, cfs_xstrdup("a"));
    cfs_strv_push(&v, cfs_xstrdup("b"));
    cfs_strv_push(&v, cfs_xstrdup("c"));
    assert_int_equal(cfs_strv_len(v), 3);
    assert_null(v[3]);
    assert_string_equal(v[1], "b");
    assert_true(cfs_strv_contains(v, "c"));
    assert_false(cfs_strv_contains(v, "d"));
    assert_false(cfs_strv_contains(v, NULL));
    assert_null(cfs_strv_free(NULL));
}

static void check_size(uint64_t bytes, const char *want)
{
    char s[32];

    cfs_format_size(bytes, s, sizeof(s));
    assert_string_equal(s, want);
}

static void test_format_size(void **state)
{
    (void)state;
    check_size(0, "0B");
    check_size(1, "1B");
    check_size(512, "512B");
    check_size(1023, "1023B");
    check_size(1024, "1.0KiB");
    check_size(1536, "1.5KiB");
    check_size(1075, "1.0KiB");     /* 1.0498 rounds down */
    check_size(1076, "1.1KiB");     /* 1.0508 rounds up */
    check_size(10 * 1024 - 1, "10.0KiB");
    check_size(1024 * 1024 - 1, "1.0MiB"); /* never "1024.0KiB" */
    check_size(1024 * 1024, "1.0MiB");
    check_size(27 * 1024 * 1024, "27.0MiB");
    check_size(64ull << 20, "64.0MiB");
    check_size(1ull << 30, "1.0GiB");
    check_size(10ull << 30, "10.0GiB");
    check_size((1ull << 30) - 1, "1.0GiB");
    check_size(1ull << 40, "1.0TiB");
    check_size(1ull << 50, "1.0PiB");
    check_size(1ull << 60, "1.0EiB");
    check_size(UINT64_MAX, "16.0EiB");

    char small[4];
    cfs_format_size(64ull << 20, small, sizeof(small));
    assert_string_equal(small, "64.");
    cfs_format_size(1, NULL, 0); /* no crash */
}

static void test_format_time(void **state)
{
    (void)state;
    char s[64];

    cfs_format_time(0, s, sizeof(s));
    assert_string_equal(s, "");
    cfs_format_time(1, s, sizeof(s));
    assert_string_equal(s, "1970-01-01T00:00:01Z");
    cfs_format_time(1790000000, s, sizeof(s));
    assert_string_equal(s, "2026-09-21T14:13:20Z");
    cfs_format_time(-1, s, sizeof(s));
    assert_string_equal(s, "1969-12-31T23:59:59Z");

    char small[8] = "junk";
    cfs_format_time(1790000000, small, sizeof(small));
    assert_string_equal(small, ""); /* never a truncated timestamp */
}

static void test_buf(void **state)
{
    (void)state;
    _cleanup_buf_ struct cfs_buf b = { 0 };

    _cleanup_free_ char *empty = cfs_buf_steal(&b);
    assert_string_equal(empty, "");

    cfs_buf_put(&b, "", 0);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");

    cfs_buf_printf(&b, "%d:%s", 7, "x");
    assert_string_equal(b.data, "7:x");
    cfs_buf_put(&b, "yz!", 2);
    assert_string_equal(b.data, "7:xyz");
    assert_int_equal(b.len, 5);

    /* Grow well past the initial capacity in one printf. */
    char big[5000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cfs_buf_printf(&b, "[%s]", big);
    assert_int_equal(b.len, 5 + 1 + 4999 + 1);
    assert_int_equal(strlen(b.data), b.len);
    assert_int_equal(b.data[b.len - 1], ']');
    assert_int_equal(b.data[6], 'q');

    _cleanup_free_ char *s = cfs_buf_steal(&b);
    assert_int_equal(strlen(s), 5006);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);

    for (int i = 0; i < 1000; i++)
        cfs_buf_printf(&b, "%d,", i % 10);
    assert_int_equal(b.len, 2000);
    cfs_buf_free(&b);
    cfs_buf_free(&b); /* idempotent */
    assert_null(b.data);
}

static void *errmsg_thread(void *arg)
{
    (void)arg;
    /* A fresh thread sees its own empty slot. */
    bool empty = cfs_backend_errmsg()[0] == '\0';
    cfs_backend_set_errmsg("thread %d", 2);
    return (void *)(uintptr_t)empty;
}

static void test_backend_errmsg(void **state)
{
    (void)state;
    cfs_backend_set_errmsg("%s: %d", "boom", -5);
    assert_string_equal(cfs_backend_errmsg(), "boom: -5");

    pthread_t t;
    void *ret;
    assert_int_equal(pthread_create(&t, NULL, errmsg_thread, NULL), 0);
    assert_int_equal(pthread_join(t, &ret), 0);
    assert_true((uintptr_t)ret);
    assert_string_equal(cfs_backend_errmsg(), "boom: -5");

    char big[3000];
    memset(big, 'm', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cfs_backend_set_errmsg("%s", big);
    assert_true(strlen(cfs_backend_errmsg()) >= 1000);
    assert_true(strlen(cfs_backend_errmsg()) < sizeof(big) - 1);
}

/* ---- model.c -------------------------------------------------------------- */

static void test_to_string(void **state)
{
    (void)state;
    assert_string_equal(cfs_dom_state_to_string(CFS_DOM_SHUTOFF), "shutoff");
    assert_string_equal(cfs_dom_state_to_string(CFS_DOM_RUNNING), "running");
    assert_string_equal(cfs_dom_state_to_string(CFS_DOM_PAUSED), "paused");
    assert_string_equal(cfs_dom_state_to_string(CFS_DOM_OTHER), "other");
    assert_string_equal(cfs_dom_state_to_string(CFS_DOM_STATE_MAX), "unknown");
    assert_string_equal(cfs_dom_state_to_string((enum cfs_dom_state)-1), "unknown");

    assert_string_equal(cfs_job_type_to_string(CFS_JOB_NONE), "none");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_SNAPSHOT), "snapshot");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_COMMIT), "commit");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_ACTIVE_COMMIT), "active-commit");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_OFFLINE_COMMIT), "offline-commit");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_PULL), "pull");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_COPY), "copy");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_OFFLINE_PULL), "offline-pull");
    assert_string_equal(cfs_job_type_to_string(CFS_JOB_TYPE_MAX), "unknown");
    for (int t = CFS_JOB_NONE + 1; t < CFS_JOB_TYPE_MAX; t++)
        assert_int_equal(cfs_job_type_from_string(cfs_job_type_to_string(t)), t);
    assert_int_equal(cfs_job_type_from_string("none"), CFS_JOB_TYPE_MAX);
    assert_int_equal(cfs_job_type_from_string("stream"), CFS_JOB_TYPE_MAX);
    assert_int_equal(cfs_job_type_from_string(NULL), CFS_JOB_TYPE_MAX);

    assert_string_equal(cfs_merge_direction_to_string(CFS_DIRECTION_NONE), "none");
    assert_string_equal(cfs_merge_direction_to_string(CFS_DIRECTION_COMMIT), "commit");
    assert_string_equal(cfs_merge_direction_to_string(CFS_DIRECTION_PULL), "pull");
    assert_string_equal(cfs_merge_direction_to_string(CFS_DIRECTION_MAX), "unknown");
    assert_int_equal(cfs_merge_direction_from_string("commit"), CFS_DIRECTION_COMMIT);
    assert_int_equal(cfs_merge_direction_from_string("pull"), CFS_DIRECTION_PULL);
    assert_int_equal(cfs_merge_direction_from_string("none"), CFS_DIRECTION_MAX);
    assert_int_equal(cfs_merge_direction_from_string("Pull"), CFS_DIRECTION_MAX);
    assert_int_equal(cfs_merge_direction_from_string(NULL), CFS_DIRECTION_MAX);

    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_NONE), "none");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_RUNNING), "running");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_READY), "ready");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_PIVOTING), "pivoting");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_STARTING), "starting");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_FINISHING), "finishing");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_CLEANUP), "cleanup");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_COMPLETED), "completed");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_FAILED), "failed");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_CANCELED), "canceled");
    assert_string_equal(cfs_job_phase_to_string(CFS_PHASE_MAX), "unknown");

    assert_string_equal(cfs_name_source_to_string(CFS_NAME_NONE), "-");
    assert_string_equal(cfs_name_source_to_string(CFS_NAME_METADATA), "libvirt-metadata");
    assert_string_equal(cfs_name_source_to_string(CFS_NAME_CHAINFS), "chainfs");
    assert_string_equal(cfs_name_source_to_string(CFS_NAME_FILENAME), "filename");
    assert_string_equal(cfs_name_source_to_string(CFS_NAME_SOURCE_MAX), "unknown");

    for (int s = 0; s < CFS_PHASE_MAX; s++)
        assert_int_equal(cfs_job_phase_in_progress(s),
                         s == CFS_PHASE_STARTING || s == CFS_PHASE_RUNNING ||
                         s == CFS_PHASE_READY || s == CFS_PHASE_PIVOTING ||
                         s == CFS_PHASE_FINISHING || s == CFS_PHASE_CLEANUP);
}

static struct cfs_domain *make_domain(void)
{
    struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));

    d->name = cfs_xstrdup("web01");
    strcpy(d->uuid, "6f1d2c3e-0000-4000-8000-000000000001");
    d->state = CFS_DOM_RUNNING;
    d->persistent = true;
    d->n_disks = 2;
    d->disks = cfs_xcalloc(2, sizeof(struct cfs_disk));

    d->disks[0].target = cfs_xstrdup("vda");
    d->disks[0].n_layers = 2;
    d->disks[0].layers = cfs_xcalloc(2, sizeof(struct cfs_layer));
    d->disks[0].layers[0] = (struct cfs_layer){
        .path = cfs_xstrdup("/img/web01.vda.s1.qcow2"), .format = cfs_xstrdup("qcow2"),
        .virtual_size = 1, .allocation = 2, .physical = 3,
        .meta_name = cfs_xstrdup("s1"), .name = cfs_xstrdup("s1"),
        .name_source = CFS_NAME_METADATA,
    };
    d->disks[0].layers[1] = (struct cfs_layer){
        .path = cfs_xstrdup("/img/web01.qcow2"), .format = cfs_xstrdup("qcow2"),
    };

    d->disks[1].target = cfs_xstrdup("vdb");
    d->disks[1].is_block = true;
    d->disks[1].n_layers = 1;
    d->disks[1].layers = cfs_xcalloc(1, sizeof(struct cfs_layer));
    d->disks[1].layers[0] = (struct cfs_layer){
        .path = cfs_xstrdup("/dev/sdb"), .format = cfs_xstrdup("raw"), .is_block = true,
    };

    cfs_strv_push(&d->snapshots, cfs_xstrdup("s1"));
    cfs_strv_push(&d->snapshots, cfs_xstrdup("other-disk-snap"));
    return d;
}

static void test_domain_free_null(void **state)
{
    (void)state;
    assert_null(cfs_domain_free(NULL));
    assert_null(cfs_job_free(NULL));
    assert_null(cfs_domain_dup(NULL));
    cfs_layer_clear(NULL);
    cfs_disk_clear(NULL);
    cfs_job_clear(NULL);

    _cleanup_domain_ struct cfs_domain *empty = cfs_xcalloc(1, sizeof(*empty));
    _cleanup_domain_ struct cfs_domain *dup = cfs_domain_dup(empty);
    assert_non_null(dup);
    assert_null(dup->name);
    assert_null(dup->disks);
    assert_null(dup->snapshots);
}

static void test_domain_dup_is_deep(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = make_domain();
    _cleanup_domain_ struct cfs_domain *c = cfs_domain_dup(d);

    assert_ptr_not_equal(c->name, d->name);
    assert_string_equal(c->name, "web01");
    assert_string_equal(c->uuid, d->uuid);
    assert_int_equal(c->state, CFS_DOM_RUNNING);
    assert_true(c->persistent);
    assert_int_equal(c->n_disks, 2);
    assert_ptr_not_equal(c->disks, d->disks);
    assert_string_equal(c->disks[0].target, "vda");
    assert_int_equal(c->disks[0].n_layers, 2);
    assert_ptr_not_equal(c->disks[0].layers, d->disks[0].layers);
    const struct cfs_layer *l = &c->disks[0].layers[0];
    assert_ptr_not_equal(l->path, d->disks[0].layers[0].path);
    assert_string_equal(l->path, "/img/web01.vda.s1.qcow2");
    assert_string_equal(l->format, "qcow2");
    assert_string_equal(l->meta_name, "s1");
    assert_string_equal(l->name, "s1");
    assert_int_equal(l->name_source, CFS_NAME_METADATA);
    assert_int_equal(l->virtual_size, 1);
    assert_int_equal(l->allocation, 2);
    assert_int_equal(l->physical, 3);
    assert_null(c->disks[0].layers[1].name);
    assert_true(c->disks[1].is_block);
    assert_true(c->disks[1].layers[0].is_block);
    assert_ptr_not_equal(c->snapshots, d->snapshots);
    assert_int_equal(cfs_strv_len(c->snapshots), 2);
    assert_string_equal(c->snapshots[1], "other-disk-snap");

    /* Freeing the original leaves the copy intact (ASan would complain). */
    d = cfs_domain_free(d);
    assert_string_equal(c->disks[1].layers[0].path, "/dev/sdb");
}

static void test_job_copy(void **state)
{
    (void)state;
    struct cfs_job src = {
        .type = CFS_JOB_ACTIVE_COMMIT, .phase = CFS_PHASE_READY,
        .snapshot = "s2", .meta_name = "s2", .top = "/a", .base = "/b",
        .cur = 5, .end = 10, .bandwidth = 7, .started = 100, .finished = 0,
        .error = NULL, .partial = true, .journal_id = "1-2-3",
    };
    struct cfs_job dst = { 0 };

    cfs_job_copy(&dst, &src);
    assert_int_equal(dst.type, CFS_JOB_ACTIVE_COMMIT);
    assert_int_equal(dst.phase, CFS_PHASE_READY);
    assert_ptr_not_equal(dst.snapshot, src.snapshot);
    assert_string_equal(dst.snapshot, "s2");
    assert_string_equal(dst.meta_name, "s2");
    assert_string_equal(dst.top, "/a");
    assert_string_equal(dst.base, "/b");
    assert_null(dst.error);
    assert_string_equal(dst.journal_id, "1-2-3");
    assert_int_equal(dst.cur, 5);
    assert_int_equal(dst.end, 10);
    assert_int_equal(dst.bandwidth, 7);
    assert_int_equal(dst.started, 100);
    assert_true(dst.partial);
    cfs_job_clear(&dst);
    assert_null(dst.top);
    assert_int_equal(dst.type, CFS_JOB_NONE);

    struct cfs_job *heap = cfs_xcalloc(1, sizeof(*heap));
    cfs_job_copy(heap, &src);
    assert_null(cfs_job_free(heap));
}

/* Issue 8's merge fields: deep copies, freed by cfs_job_clear (ASan). */
static void test_job_copy_merge_fields(void **state)
{
    (void)state;
    struct cfs_job src = {
        .type = CFS_JOB_PULL, .phase = CFS_PHASE_RUNNING,
        .direction = CFS_DIRECTION_PULL,
        .bytes_commit = 200, .bytes_pull = 4, .bytes_copied = 3,
    };
    src.written = cfs_xstrdup("/img/s2.qcow2");
    src.reason = cfs_xstrdup("pull: 4B < 200B");
    cfs_strv_push(&src.snapshots, cfs_xstrdup("s2"));
    cfs_strv_push(&src.snapshots, cfs_xstrdup("s1"));
    src.n_leaving = 2;
    src.leaving = cfs_xcalloc(2, sizeof(*src.leaving));
    src.leaving[0].path = cfs_xstrdup("/img/s1.qcow2");
    src.leaving[0].id = (struct cfs_file_id){ .known = true, .dev = 8, .ino = 42,
                                              .canonical = cfs_xstrdup("/img/s1.qcow2") };
    src.leaving[1].path = cfs_xstrdup("/img/s0.qcow2"); /* not identified */

    struct cfs_job dst = { 0 };
    cfs_job_copy(&dst, &src);
    cfs_job_clear(&src); /* the copy owns its own */
    assert_int_equal(dst.direction, CFS_DIRECTION_PULL);
    assert_int_equal(dst.bytes_commit, 200);
    assert_int_equal(dst.bytes_pull, 4);
    assert_int_equal(dst.bytes_copied, 3);
    assert_string_equal(dst.written, "/img/s2.qcow2");
    assert_string_equal(dst.reason, "pull: 4B < 200B");
    assert_int_equal(cfs_strv_len(dst.snapshots), 2);
    assert_string_equal(dst.snapshots[1], "s1");
    assert_int_equal(dst.n_leaving, 2);
    assert_string_equal(dst.leaving[0].path, "/img/s1.qcow2");
    assert_true(dst.leaving[0].id.known);
    assert_int_equal(dst.leaving[0].id.dev, 8);
    assert_int_equal(dst.leaving[0].id.ino, 42);
    assert_string_equal(dst.leaving[0].id.canonical, "/img/s1.qcow2");
    assert_false(dst.leaving[1].id.known);
    assert_null(dst.leaving[1].id.canonical);
    cfs_job_clear(&dst);
    assert_null(dst.leaving);
    assert_int_equal(dst.n_leaving, 0);
    assert_null(cfs_job_files_dup(NULL, 3));
    cfs_job_files_free(NULL, 3);
}

static void test_lookups(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = make_domain();

    assert_ptr_equal(cfs_domain_find_disk(d, "vda"), &d->disks[0]);
    assert_ptr_equal(cfs_domain_find_disk(d, "vdb"), &d->disks[1]);
    assert_null(cfs_domain_find_disk(d, "vdc"));
    assert_null(cfs_domain_find_disk(d, NULL));
    assert_null(cfs_domain_find_disk(NULL, "vda"));

    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "s1"), 0);
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "s2"), -1);
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], NULL), -1);
    assert_int_equal(cfs_disk_find_snapshot(NULL, "s1"), -1);
    /* the base has no display name and is never found */
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[1], "sdb"), -1);

    assert_true(cfs_domain_uses_path(d, "/img/web01.qcow2"));
    assert_true(cfs_domain_uses_path(d, "/dev/sdb"));
    assert_false(cfs_domain_uses_path(d, "/img/other.qcow2"));
    assert_false(cfs_domain_uses_path(d, NULL));
    assert_false(cfs_domain_uses_path(NULL, "/dev/sdb"));
}

/* ---- file identity ------------------------------------------------------------ */

static void assert_fold(const char *in, const char *want)
{
    _cleanup_free_ char *got = cfs_path_fold(in);
    assert_string_equal(got, want);
}

static void test_path_fold(void **state)
{
    (void)state;
    assert_fold("/img/base.qcow2", "/img/base.qcow2");
    assert_fold("/img//base.qcow2", "/img/base.qcow2");
    assert_fold("//img///base.qcow2", "/img/base.qcow2");
    assert_fold("/img/./base.qcow2", "/img/base.qcow2");
    assert_fold("/img/a/../base.qcow2", "/img/base.qcow2");
    assert_fold("/img/a/b/../../base.qcow2", "/img/base.qcow2");
    assert_fold("/../img/base.qcow2", "/img/base.qcow2");
    assert_fold("/img/dir/", "/img/dir");
    assert_fold("/", "/");
    assert_fold("/..", "/");
    /* not file paths: as they are */
    assert_fold("nbd://host/export", "nbd://host/export");
    assert_fold("rbd:pool/img", "rbd:pool/img");
    assert_null(cfs_path_fold(NULL));
}

static void test_file_same(void **state)
{
    (void)state;
    struct cfs_file_id a = { .known = true, .dev = 8, .ino = 100 };
    struct cfs_file_id b = { .known = true, .dev = 8, .ino = 100 };
    struct cfs_file_id c = { .known = true, .dev = 9, .ino = 100 };
    struct cfs_file_id unknown = { 0 };

    /* by identity, whatever the spelling */
    assert_true(cfs_file_same(&a, "/img/base.qcow2", &b, "/lnk/base.qcow2"));
    /* one inode number on two devices is two files */
    assert_false(cfs_file_same(&a, "/img/base.qcow2", &c, "/img/base.qcow2"));
    /* no identity: the folded spellings decide */
    assert_true(cfs_file_same(&unknown, "/img/a/../base.qcow2", NULL, "/img//base.qcow2"));
    assert_true(cfs_file_same(NULL, "/img/./base.qcow2", &a, "/img/base.qcow2"));
    assert_false(cfs_file_same(NULL, "/img/base.qcow2", NULL, "/img/other.qcow2"));
    assert_false(cfs_file_same(NULL, NULL, NULL, "/img/base.qcow2"));
    /* a canonical path (symlinks resolved) against a spelling */
    struct cfs_file_id canon = { .canonical = (char *)"/srv/img/base.qcow2" };
    assert_true(cfs_file_same(&canon, "/lnk/base.qcow2", NULL, "/srv/img//base.qcow2"));
    assert_true(cfs_file_same(&canon, "/lnk/base.qcow2", NULL, "/lnk/./base.qcow2"));
    assert_false(cfs_file_same(&canon, "/lnk/base.qcow2", NULL, "/srv/img/other.qcow2"));

    assert_string_equal(cfs_file_display(&canon, "/lnk/base.qcow2"), "/srv/img/base.qcow2");
    assert_string_equal(cfs_file_display(&unknown, "/lnk/base.qcow2"), "/lnk/base.qcow2");
    assert_string_equal(cfs_file_display(NULL, "/lnk/base.qcow2"), "/lnk/base.qcow2");
}

/* cfs_domain_identify() on real files: one file under five spellings, a
 * file that is not there (yet), and a protocol name. */
static void test_domain_identify(void **state)
{
    (void)state;
    char dir[] = "/tmp/cfs-ident-XXXXXX";
    assert_non_null(mkdtemp(dir));
    _cleanup_free_ char *img = cfs_xasprintf("%s/img", dir);
    _cleanup_free_ char *sub = cfs_xasprintf("%s/img/sub", dir);
    _cleanup_free_ char *lnk = cfs_xasprintf("%s/lnk", dir);
    _cleanup_free_ char *base = cfs_xasprintf("%s/img/base.qcow2", dir);
    assert_int_equal(mkdir(img, 0755), 0);
    assert_int_equal(mkdir(sub, 0755), 0);
    assert_int_equal(symlink("img", lnk), 0);
    FILE *fp = fopen(base, "w");
    assert_non_null(fp);
    fclose(fp);
    _cleanup_free_ char *real_dir = realpath(dir, NULL);
    _cleanup_free_ char *real_base = cfs_xasprintf("%s/img/base.qcow2", real_dir);

    char *spell[] = {
        cfs_xasprintf("%s/img/base.qcow2", dir),
        cfs_xasprintf("%s/img/sub/../base.qcow2", dir),
        cfs_xasprintf("%s/img/./base.qcow2", dir),
        cfs_xasprintf("%s/img//base.qcow2", dir),
        cfs_xasprintf("%s/lnk/base.qcow2", dir),
        cfs_xasprintf("%s/lnk/missing.qcow2", dir),
        cfs_xstrdup("nbd://host/export"),
    };
    size_t n = ELEMENTSOF(spell);
    struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));
    d->name = cfs_xstrdup("id");
    d->n_disks = 1;
    d->disks = cfs_xcalloc(1, sizeof(*d->disks));
    d->disks[0].target = cfs_xstrdup("vda");
    d->disks[0].n_layers = n;
    d->disks[0].layers = cfs_xcalloc(n, sizeof(struct cfs_layer));
    for (size_t i = 0; i < n; i++)
        d->disks[0].layers[i].path = spell[i];
    cfs_domain_identify(d, true);

    const struct cfs_layer *l = d->disks[0].layers;
    for (size_t i = 0; i < 5; i++) {
        assert_true(l[i].id.known);
        assert_string_equal(l[i].id.canonical, real_base);
        assert_true(cfs_layer_same(&l[0], &l[i]));
        assert_int_equal(cfs_disk_find_file(&d->disks[0], &l[i].id, l[i].path), 0);
    }
    /* not there: no identity, named by its directory's real path */
    assert_false(l[5].id.known);
    _cleanup_free_ char *real_missing = cfs_xasprintf("%s/img/missing.qcow2", real_dir);
    assert_string_equal(l[5].id.canonical, real_missing);
    assert_false(cfs_layer_same(&l[0], &l[5]));
    assert_false(l[6].id.known);
    assert_string_equal(l[6].id.canonical, "nbd://host/export");

    /* identity survives a copy */
    _cleanup_domain_ struct cfs_domain *copy = cfs_domain_dup(d);
    assert_true(copy->disks[0].layers[4].id.known);
    assert_string_equal(copy->disks[0].layers[4].id.canonical, real_base);
    assert_ptr_not_equal(copy->disks[0].layers[4].id.canonical, l[4].id.canonical);
    cfs_domain_free(d);

    test_tmpdir_remove(dir);
}

/* Two disks of one domain on one file: each is the other's user. */
static void test_domain_file_user(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));
    d->name = cfs_xstrdup("two");
    d->n_disks = 2;
    d->disks = cfs_xcalloc(2, sizeof(*d->disks));
    const char *tops[] = { "/img/a.qcow2", "/img/b.qcow2" };
    const char *bases[] = { "/img/base.qcow2", "/img/x/../base.qcow2" };
    for (size_t i = 0; i < 2; i++) {
        d->disks[i].target = cfs_xasprintf("vd%c", (char)('a' + i));
        d->disks[i].n_layers = 2;
        d->disks[i].layers = cfs_xcalloc(2, sizeof(struct cfs_layer));
        d->disks[i].layers[0].path = cfs_xstrdup(tops[i]);
        d->disks[i].layers[1].path = cfs_xstrdup(bases[i]);
    }
    assert_ptr_equal(cfs_domain_file_user(d, NULL, "/img/base.qcow2", "vda"), &d->disks[1]);
    assert_ptr_equal(cfs_domain_file_user(d, NULL, "/img/base.qcow2", "vdb"), &d->disks[0]);
    assert_ptr_equal(cfs_domain_file_user(d, NULL, "/img/base.qcow2", NULL), &d->disks[0]);
    assert_null(cfs_domain_file_user(d, NULL, "/img/a.qcow2", "vda"));
    assert_ptr_equal(cfs_domain_file_user(d, NULL, "/img/./a.qcow2", "vdb"), &d->disks[0]);
    assert_true(cfs_domain_uses_path(d, "/img//b.qcow2"));
}

/* cfs_image_hold_writers (issue 9's disk.raw, issue 10's revert): while
 * held, a writer taking QEMU's "write" locks is refused (another open
 * file description: as a QEMU starting on the image); a holder of byte
 * 101 (a QEMU writing the image) makes it -EBUSY; closing lets writers
 * in again. */
static bool writer_locks(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    /* QEMU with write permission: holds 101, refuses to share nothing
     * else; it checks that nobody holds 201 (unshare write) */
    struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                       .l_start = CFS_QEMU_LOCK_SHARED_WRITE, .l_len = 1 };
    bool ok = fcntl(fd, F_OFD_GETLK, &q) == 0 && q.l_type == F_UNLCK;
    close(fd);
    return ok;
}

static void test_image_hold_writers(void **state)
{
    (void)state;
    char dir[] = "/tmp/cfs-util-lock-XXXXXX";
    assert_non_null(mkdtemp(dir));
    _cleanup_free_ char *path = cfs_xasprintf("%s/img.qcow2", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);

    assert_true(writer_locks(path));
    int fd = -1;
    char *why = NULL;
    assert_int_equal(cfs_image_hold_writers(path, &fd, &why), 0);
    assert_true(fd >= 0);
    assert_null(why);
    assert_false(writer_locks(path));
    /* a second holder (another revert, a disk.raw) is fine: read locks */
    int fd2 = -1;
    assert_int_equal(cfs_image_hold_writers(path, &fd2, &why), 0);
    close(fd2);
    close(fd);
    assert_true(writer_locks(path));

    /* someone writes it (holds byte 101): refused, nothing held */
    int w = open(path, O_RDWR | O_CLOEXEC);
    assert_true(w >= 0);
    struct flock perm = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
                          .l_start = CFS_QEMU_LOCK_PERM_WRITE, .l_len = 1 };
    assert_int_equal(fcntl(w, F_OFD_SETLK, &perm), 0);
    assert_int_equal(cfs_image_hold_writers(path, &fd, &why), -EBUSY);
    assert_int_equal(fd, -1);
    assert_non_null(why);
    assert_non_null(strstr(why, "open for writing"));
    free(why);
    why = NULL;
    close(w);

    /* no such file */
    _cleanup_free_ char *gone = cfs_xasprintf("%s/gone.qcow2", dir);
    assert_int_equal(cfs_image_hold_writers(gone, &fd, &why), -ENOENT);
    assert_non_null(why);
    free(why);
    test_tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malloc_trim_concurrent),
        cmocka_unit_test(test_xstrdup_and_asprintf),
        cmocka_unit_test(test_xmalloc_aborts_on_oom),
        cmocka_unit_test(test_streq),
        cmocka_unit_test(test_strv),
        cmocka_unit_test(test_format_size),
        cmocka_unit_test(test_format_time),
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_backend_errmsg),
        cmocka_unit_test(test_to_string),
        cmocka_unit_test(test_domain_free_null),
        cmocka_unit_test(test_domain_dup_is_deep),
        cmocka_unit_test(test_job_copy),
        cmocka_unit_test(test_job_copy_merge_fields),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_path_fold),
        cmocka_unit_test(test_file_same),
        cmocka_unit_test(test_domain_identify),
        cmocka_unit_test(test_domain_file_user),
        cmocka_unit_test(test_image_hold_writers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
