/* test_journal.c — the journal: put/replace/remove/list, durability across
 * reopen, tolerant loading (truncation at every byte, garbage, bad
 * records), unusable state directories, failed writes, and threads.
 *
 * Each test works in its own mkdtemp() directory, removed afterwards. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "chainfs/journal.h"
#include "chainfs/util.h"

/* ---- helpers -------------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup_dir(void **state)
{
    char *dir = cfs_xstrdup("/tmp/chainfs-test-journal.XXXXXX");

    if (!mkdtemp(dir)) {
        free(dir);
        return -1;
    }
    *state = dir;
    return 0;
}

static int teardown_dir(void **state)
{
    char *dir = *state;

    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
    return 0;
}

static char *path_in(const char *dir, const char *name)
{
    return cfs_xasprintf("%s/%s", dir, name);
}

static void write_file(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static char *read_file(const char *path, size_t *len)
{
    struct cfs_buf b = {0};
    char chunk[4096];
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    assert_true(fd >= 0);
    while ((n = read(fd, chunk, sizeof(chunk))) > 0)
        cfs_buf_put(&b, chunk, (size_t)n);
    close(fd);
    *len = b.len;
    return cfs_buf_steal(&b);
}

/* Fill E with a valid entry; I varies every field. Strings are owned. */
static void make_entry(struct cfs_journal_entry *e, int i, enum cfs_job_type t)
{
    *e = (struct cfs_journal_entry){
        .id = cfs_xasprintf("1700000000-42-%d", i),
        .domain = cfs_xasprintf("dom%d", i),
        .disk = cfs_xstrdup("vda"),
        .snapshot = cfs_xasprintf("s%d", i),
        .meta_name = i % 2 ? cfs_xasprintf("meta%d", i) : NULL,
        .top = cfs_xasprintf("/var/lib/images/dom%d.vda.s%d.qcow2", i, i),
        .base = cfs_xasprintf("/var/lib/images/base%d.qcow2", i),
        .type = t,
        .phase = cfs_xstrdup("running"),
        .created = 1700000000 + i,
        .updated = 1700000100 + i,
        .error = i % 3 == 2 ? cfs_xstrdup("internal error: \"x\"\nline 2")
                            : NULL,
    };
}

static void assert_entry_equal(const struct cfs_journal_entry *a,
                               const struct cfs_journal_entry *b)
{
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->domain, b->domain);
    assert_string_equal(a->disk, b->disk);
    assert_true(cfs_streq(a->snapshot, b->snapshot));
    assert_true(cfs_streq(a->meta_name, b->meta_name));
    assert_string_equal(a->top, b->top);
    assert_string_equal(a->base, b->base);
    assert_int_equal(a->type, b->type);
    assert_string_equal(a->phase, b->phase);
    assert_int_equal(a->created, b->created);
    assert_int_equal(a->updated, b->updated);
    assert_true(cfs_streq(a->error, b->error));
}

static struct cfs_journal *open_ok(const char *dir, char ***warnings)
{
    struct cfs_journal *j = NULL;

    assert_int_equal(cfs_journal_open(dir, &j, warnings), 0);
    assert_non_null(j);
    return j;
}

static size_t count_entries(struct cfs_journal *j)
{
    struct cfs_journal_entry *v;
    size_t n;

    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    cfs_journal_entries_free(v, n);
    return n;
}

/* ---- put / replace / remove / list --------------------------------------- */

static void test_put_replace_remove(void **state)
{
    const char *dir = *state;
    char **warnings = (char **)1;
    struct cfs_journal *j = open_ok(dir, &warnings);
    struct cfs_journal_entry e[3], *v;
    size_t n;

    assert_null(warnings);
    assert_int_equal(count_entries(j), 0);

    make_entry(&e[0], 0, CFS_JOB_ACTIVE_COMMIT);
    make_entry(&e[1], 1, CFS_JOB_COMMIT);
    make_entry(&e[2], 2, CFS_JOB_OFFLINE_COMMIT);
    for (int i = 0; i < 3; i++)
        assert_int_equal(cfs_journal_put(j, &e[i]), 0);

    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++)
        assert_entry_equal(&v[i], &e[i]);
    cfs_journal_entries_free(v, n);

    /* Replace keeps the position. */
    free(e[1].phase);
    e[1].phase = cfs_xstrdup("failed");
    free(e[1].error);
    e[1].error = cfs_xstrdup("block commit failed");
    e[1].updated = 1800000000;
    assert_int_equal(cfs_journal_put(j, &e[1]), 0);
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 3);
    assert_entry_equal(&v[1], &e[1]);
    assert_string_equal(v[1].phase, "failed");
    cfs_journal_entries_free(v, n);

    assert_int_equal(cfs_journal_remove(j, e[0].id), 0);
    assert_int_equal(cfs_journal_remove(j, e[0].id), -ENOENT);
    assert_int_equal(cfs_journal_remove(j, "no-such-id"), -ENOENT);
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 2);
    assert_entry_equal(&v[0], &e[1]);
    assert_entry_equal(&v[1], &e[2]);
    cfs_journal_entries_free(v, n);

    /* A list is a snapshot: later changes don't touch it. */
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(cfs_journal_remove(j, e[1].id), 0);
    assert_int_equal(cfs_journal_remove(j, e[2].id), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].id, e[1].id);
    cfs_journal_entries_free(v, n);
    assert_int_equal(count_entries(j), 0);

    for (int i = 0; i < 3; i++)
        cfs_journal_entry_clear(&e[i]);
    cfs_journal_free(j);
}

static void test_put_invalid(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e;
    char *saved;

    make_entry(&e, 7, CFS_JOB_COMMIT);
    assert_int_equal(cfs_journal_put(j, NULL), -EINVAL);

    e.type = CFS_JOB_NONE;
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    e.type = CFS_JOB_TYPE_MAX;
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    e.type = CFS_JOB_SNAPSHOT;

    /* Every required string, NULL and empty. */
    char **fields[] = { &e.id, &e.domain, &e.disk, &e.top, &e.base, &e.phase };
    for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
        saved = *fields[i];
        *fields[i] = NULL;
        assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
        *fields[i] = (char *)"";
        assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
        *fields[i] = saved;
    }
    assert_int_equal(cfs_journal_remove(j, NULL), -EINVAL);
    assert_int_equal(count_entries(j), 0);

    /* Optional fields may all be NULL. */
    free(e.snapshot);
    free(e.meta_name);
    free(e.error);
    e.snapshot = e.meta_name = e.error = NULL;
    assert_int_equal(cfs_journal_put(j, &e), 0);
    assert_int_equal(count_entries(j), 1);

    cfs_journal_entry_clear(&e);
    cfs_journal_free(j);
}

static void test_new_id(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    char *ids[100];

    for (size_t i = 0; i < ELEMENTSOF(ids); i++) {
        long long secs;
        long pid;
        unsigned counter;
        int consumed = 0;

        ids[i] = cfs_journal_new_id(j);
        assert_non_null(ids[i]);
        assert_int_equal(sscanf(ids[i], "%lld-%ld-%u%n", &secs, &pid,
                                &counter, &consumed),
                         3);
        assert_int_equal((size_t)consumed, strlen(ids[i]));
        assert_int_equal(pid, (long)getpid());
        assert_true(secs > 1600000000);
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(ids[k], ids[i]);
    }
    for (size_t i = 0; i < ELEMENTSOF(ids); i++)
        free(ids[i]);
    cfs_journal_free(j);
}

static void test_entry_copy_clear(void **state)
{
    struct cfs_journal_entry a, b;

    (void)state;
    make_entry(&a, 5, CFS_JOB_SNAPSHOT);
    cfs_journal_entry_copy(&b, &a);
    assert_entry_equal(&a, &b);
    assert_ptr_not_equal(a.id, b.id);
    cfs_journal_entry_clear(&a);
    assert_null(a.id);
    cfs_journal_entry_clear(&a); /* idempotent */
    cfs_journal_entry_clear(NULL);
    cfs_journal_entry_clear(&b);
    cfs_journal_entries_free(NULL, 0);
    assert_null(cfs_journal_free(NULL));
}

/* ---- durability ------------------------------------------------------------ */

static void test_durable_reopen(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e[4], *v;
    char **warnings = NULL;
    size_t n, len;

    make_entry(&e[0], 0, CFS_JOB_ACTIVE_COMMIT);
    make_entry(&e[1], 1, CFS_JOB_COMMIT);
    make_entry(&e[2], 2, CFS_JOB_OFFLINE_COMMIT);
    make_entry(&e[3], 3, CFS_JOB_SNAPSHOT);
    /* Awkward bytes survive: quotes, backslash, control, UTF-8, non-UTF-8. */
    free(e[3].top);
    e[3].top = cfs_xstrdup("/img/we\"ird\\ na\tme/\xc3\xa9t\xe9\x01.qcow2");
    for (int i = 0; i < 4; i++)
        assert_int_equal(cfs_journal_put(j, &e[i]), 0);
    assert_int_equal(cfs_journal_remove(j, e[1].id), 0);
    cfs_journal_free(j);

    /* The file: one line per entry, each carrying version and type name. */
    _cleanup_free_ char *file = path_in(dir, "journal");
    _cleanup_free_ char *tmp = path_in(dir, "journal.tmp");
    _cleanup_free_ char *data = read_file(file, &len);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += data[i] == '\n';
    assert_int_equal(lines, 3);
    assert_int_equal(data[len - 1], '\n');
    assert_non_null(strstr(data, "\"version\":1"));
    assert_non_null(strstr(data, "\"type\":\"active-commit\""));
    assert_non_null(strstr(data, "\"type\":\"offline-commit\""));
    assert_non_null(strstr(data, "\"type\":\"snapshot\""));
    assert_null(strstr(data, "\"type\":\"commit\""));
    assert_int_equal(access(tmp, F_OK), -1);

    j = open_ok(dir, &warnings);
    assert_null(warnings);
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 3);
    assert_entry_equal(&v[0], &e[0]);
    assert_entry_equal(&v[1], &e[2]);
    assert_entry_equal(&v[2], &e[3]);
    cfs_journal_entries_free(v, n);

    /* New ids never collide with loaded ones, and removal is durable. */
    char *id = cfs_journal_new_id(j);
    for (int i = 0; i < 4; i++)
        assert_string_not_equal(id, e[i].id);
    free(id);
    assert_int_equal(cfs_journal_remove(j, e[0].id), 0);
    cfs_journal_free(j);
    j = open_ok(dir, NULL);
    assert_int_equal(count_entries(j), 2);
    cfs_journal_free(j);

    for (int i = 0; i < 4; i++)
        cfs_journal_entry_clear(&e[i]);
}

static void test_creates_state_dir(void **state)
{
    const char *dir = *state;
    _cleanup_free_ char *sub = path_in(dir, "state");
    struct cfs_journal *j;
    struct stat st;

    assert_int_equal(stat(sub, &st), -1);
    j = open_ok(sub, NULL);
    assert_int_equal(stat(sub, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0700);
    cfs_journal_free(j);

    /* An existing directory is used as it is. */
    j = open_ok(sub, NULL);
    cfs_journal_free(j);

    /* The probe file is gone. */
    DIR *d = opendir(sub);
    struct dirent *de;
    assert_non_null(d);
    while ((de = readdir(d)))
        assert_true(strcmp(de->d_name, ".") == 0 ||
                    strcmp(de->d_name, "..") == 0);
    closedir(d);
}

/* ---- unusable state directories, failed writes ----------------------------- */

static void test_unusable_state_dir(void **state)
{
    const char *dir = *state;
    _cleanup_free_ char *file = path_in(dir, "file");
    _cleanup_free_ char *under = path_in(dir, "file/state");
    _cleanup_free_ char *deep = path_in(dir, "missing/state");
    _cleanup_free_ char *jdir = path_in(dir, "jdir");
    _cleanup_free_ char *jdir_journal = path_in(dir, "jdir/journal");
    struct cfs_journal *j = (struct cfs_journal *)1;
    char **warnings = (char **)1;

    write_file(file, "x", 1);
    assert_int_equal(cfs_journal_open(under, &j, &warnings), -ENOTDIR);
    assert_null(j);
    assert_null(warnings);
    assert_int_equal(cfs_journal_open(file, &j, NULL), -ENOTDIR);
    assert_null(j);
    /* Parents are not created. */
    assert_int_equal(cfs_journal_open(deep, &j, NULL), -ENOENT);
    assert_int_equal(cfs_journal_open("", &j, NULL), -EINVAL);
    assert_int_equal(cfs_journal_open(NULL, &j, NULL), -EINVAL);

    /* A journal that cannot be read is an error, not an empty journal. */
    assert_int_equal(mkdir(jdir, 0700), 0);
    assert_int_equal(mkdir(jdir_journal, 0700), 0);
    assert_int_equal(cfs_journal_open(jdir, &j, NULL), -EISDIR);
    assert_null(j);
}

static void test_failed_write_changes_nothing(void **state)
{
    const char *dir = *state;
    _cleanup_free_ char *tmp = path_in(dir, "journal.tmp");
    _cleanup_free_ char *file = path_in(dir, "journal");
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e[2], *v;
    size_t n, len_before, len_after;

    make_entry(&e[0], 0, CFS_JOB_COMMIT);
    make_entry(&e[1], 1, CFS_JOB_COMMIT);
    assert_int_equal(cfs_journal_put(j, &e[0]), 0);
    _cleanup_free_ char *before = read_file(file, &len_before);

    /* journal.tmp cannot be created: every change fails cleanly. */
    assert_int_equal(mkdir(tmp, 0700), 0);
    assert_int_equal(cfs_journal_put(j, &e[1]), -EISDIR);
    free(e[0].phase);
    e[0].phase = cfs_xstrdup("cleanup");
    assert_int_equal(cfs_journal_put(j, &e[0]), -EISDIR);
    assert_int_equal(cfs_journal_remove(j, e[0].id), -EISDIR);

    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].phase, "running");
    cfs_journal_entries_free(v, n);
    _cleanup_free_ char *after = read_file(file, &len_after);
    assert_int_equal(len_before, len_after);
    assert_memory_equal(before, after, len_after);

    /* Once it can be written again, it works. */
    assert_int_equal(rmdir(tmp), 0);
    assert_int_equal(cfs_journal_put(j, &e[0]), 0);
    assert_int_equal(cfs_journal_put(j, &e[1]), 0);
    cfs_journal_free(j);
    j = open_ok(dir, NULL);
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 2);
    assert_entry_equal(&v[0], &e[0]);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);

    cfs_journal_entry_clear(&e[0]);
    cfs_journal_entry_clear(&e[1]);
}

/* ---- apply: several changes, one rewrite ----------------------------------- */

static void assert_ids(struct cfs_journal *j, const char *const *want, size_t n_want)
{
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, n_want);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(v[i].id, want[i]);
    cfs_journal_entries_free(v, n);
}

static void test_apply(void **state)
{
    const char *dir = *state;
    _cleanup_free_ char *file = path_in(dir, "journal");
    _cleanup_free_ char *tmp = path_in(dir, "journal.tmp");
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e[5];
    for (int i = 0; i < 5; i++)
        make_entry(&e[i], i, CFS_JOB_COMMIT);
    /* three queued deletions, then one job replaces two of them and one
     * is rewritten in place */
    assert_int_equal(cfs_journal_apply(j, e, 3, NULL, 0), 0);
    const char *ids3[] = {e[0].id, e[1].id, e[2].id};
    assert_ids(j, ids3, 3);

    free(e[2].phase);
    e[2].phase = cfs_xstrdup("cleanup");
    struct cfs_journal_entry puts[2] = {e[3], e[2]}; /* shallow: e owns */
    const char *removes[] = {e[0].id, e[1].id};
    size_t len_before;
    _cleanup_free_ char *before = read_file(file, &len_before);

    /* refusals change nothing, in memory or on disk */
    const char *gone[] = {"no-such-id"};
    assert_int_equal(cfs_journal_apply(j, puts, 2, gone, 1), -ENOENT);
    struct cfs_journal_entry twice[2] = {e[3], e[3]};
    assert_int_equal(cfs_journal_apply(j, twice, 2, NULL, 0), -EINVAL);
    const char *both[] = {e[3].id};
    assert_int_equal(cfs_journal_apply(j, puts, 2, both, 1), -EINVAL);
    struct cfs_journal_entry bad = e[4];
    bad.top = NULL;
    assert_int_equal(cfs_journal_apply(j, &bad, 1, removes, 2), -EINVAL);
    assert_int_equal(cfs_journal_apply(j, NULL, 1, NULL, 0), -EINVAL);
    const char *null_id[] = {NULL};
    assert_int_equal(cfs_journal_apply(j, NULL, 0, null_id, 1), -EINVAL);
    assert_int_equal(mkdir(tmp, 0700), 0); /* the write itself fails */
    assert_int_equal(cfs_journal_apply(j, puts, 2, removes, 2), -EISDIR);
    assert_int_equal(rmdir(tmp), 0);
    assert_ids(j, ids3, 3);
    size_t len_after;
    _cleanup_free_ char *after = read_file(file, &len_after);
    assert_int_equal(len_before, len_after);
    assert_memory_equal(before, after, len_after);

    /* all at once: e[2] replaced in place, e[3] appended, e[0], e[1] gone */
    assert_int_equal(cfs_journal_apply(j, puts, 2, removes, 2), 0);
    const char *ids2[] = {e[2].id, e[3].id};
    assert_ids(j, ids2, 2);
    cfs_journal_free(j);
    j = open_ok(dir, NULL);
    assert_ids(j, ids2, 2);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_entry_equal(&v[0], &e[2]);
    assert_string_equal(v[0].phase, "cleanup");
    assert_entry_equal(&v[1], &e[3]);
    cfs_journal_entries_free(v, n);
    /* nothing to do is a rewrite of the same list */
    assert_int_equal(cfs_journal_apply(j, NULL, 0, NULL, 0), 0);
    assert_ids(j, ids2, 2);
    cfs_journal_free(j);
    for (int i = 0; i < 5; i++)
        cfs_journal_entry_clear(&e[i]);
}

/* ---- tolerant loading ------------------------------------------------------ */

/* Write DATA as the journal, open, and return the entries and warnings. */
static struct cfs_journal *load_raw(const char *dir, const char *data,
                                    size_t len, char ***warnings)
{
    _cleanup_free_ char *file = path_in(dir, "journal");

    write_file(file, data, len);
    return open_ok(dir, warnings);
}

static void test_truncation_every_offset(void **state)
{
    const char *dir = *state;
    _cleanup_free_ char *file = path_in(dir, "journal");
    struct cfs_journal_entry e[3];
    struct cfs_journal *j = open_ok(dir, NULL);
    size_t len, line_end[3], k = 0;

    make_entry(&e[0], 0, CFS_JOB_ACTIVE_COMMIT);
    make_entry(&e[1], 1, CFS_JOB_COMMIT);
    make_entry(&e[2], 2, CFS_JOB_OFFLINE_COMMIT);
    for (int i = 0; i < 3; i++)
        assert_int_equal(cfs_journal_put(j, &e[i]), 0);
    cfs_journal_free(j);

    _cleanup_free_ char *data = read_file(file, &len);
    for (size_t i = 0; i < len; i++)
        if (data[i] == '\n')
            line_end[k++] = i; /* index of the newline */
    assert_int_equal(k, 3);

    for (size_t cut = 0; cut <= len; cut++) {
        char **warnings = NULL;
        struct cfs_journal_entry *v;
        size_t n, complete = 0, line_start = 0;

        /* A line is whole once its closing brace is in: cut > end - 1. */
        for (size_t i = 0; i < 3; i++) {
            if (cut >= line_end[i]) {
                complete++;
                line_start = line_end[i] + 1;
            }
        }
        bool partial = cut > line_start && complete < 3;

        j = load_raw(dir, data, cut, &warnings);
        assert_int_equal(cfs_journal_list(j, &v, &n), 0);
        assert_int_equal(n, complete);
        for (size_t i = 0; i < n; i++)
            assert_entry_equal(&v[i], &e[i]);
        cfs_journal_entries_free(v, n);
        if (partial) {
            assert_non_null(warnings);
            assert_int_equal(cfs_strv_len(warnings), 1);
            _cleanup_free_ char *prefix =
                cfs_xasprintf("journal line %zu: ", complete + 1);
            assert_memory_equal(warnings[0], prefix, strlen(prefix));
            assert_non_null(strstr(warnings[0], "incomplete record, skipped"));
        } else {
            assert_null(warnings);
        }
        cfs_strv_free(warnings);

        /* A journal loaded from a damaged file is fully usable. */
        if (cut % 97 == 0) {
            struct cfs_journal_entry extra;

            make_entry(&extra, 9, CFS_JOB_SNAPSHOT);
            assert_int_equal(cfs_journal_put(j, &extra), 0);
            assert_int_equal(count_entries(j), complete + 1);
            cfs_journal_entry_clear(&extra);
        }
        cfs_journal_free(j);
    }

    for (int i = 0; i < 3; i++)
        cfs_journal_entry_clear(&e[i]);
}

static void test_random_garbage(void **state)
{
    const char *dir = *state;
    unsigned seed = 12345;
    static const char alphabet[] = "{}[]\":,0123456789.-+eEtrufalsn \\/ux\n\t";

    for (int round = 0; round < 400; round++) {
        size_t len = (size_t)(rand_r(&seed) % 600);
        char *data = cfs_xmalloc(len + 1);
        char **warnings = NULL;
        struct cfs_journal *j;

        for (size_t i = 0; i < len; i++) {
            /* Half the rounds JSON-ish characters, half any byte. */
            if (round % 2)
                data[i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
            else
                data[i] = (char)(rand_r(&seed) & 0xff);
        }
        j = load_raw(dir, data, len, &warnings);
        /* Whatever loaded is well-formed. */
        struct cfs_journal_entry *v;
        size_t n;
        assert_int_equal(cfs_journal_list(j, &v, &n), 0);
        for (size_t i = 0; i < n; i++) {
            assert_non_null(v[i].id);
            assert_non_null(v[i].top);
        }
        cfs_journal_entries_free(v, n);
        for (char **w = warnings; w && *w; w++)
            assert_memory_equal(*w, "journal line ", 13);
        cfs_strv_free(warnings);
        cfs_journal_free(j);
        free(data);
    }
}

static const char good_line[] =
    "{\"version\":1,\"id\":\"1-2-3\",\"domain\":\"d\",\"disk\":\"vda\","
    "\"top\":\"/t.qcow2\",\"base\":\"/b.qcow2\",\"type\":\"commit\","
    "\"phase\":\"running\",\"created\":5,\"updated\":6}";

static void test_bad_records(void **state)
{
    const char *dir = *state;
    static const struct {
        const char *line;
        const char *why; /* substring of the warning */
    } bad[] = {
        { "[1,2,3]", "not a JSON object" },
        { "42", "not a JSON object" },
        { "\"just a string\"", "not a JSON object" },
        { "null", "not a JSON object" },
        { "{\"id\":", "incomplete record" },
        { "{not json at all", "" },
        { "\x01\x02\x03\xff", "" },
        { "{\"version\":1,\"domain\":\"d\",\"disk\":\"vda\",\"top\":\"/t\","
          "\"base\":\"/b\",\"type\":\"commit\",\"phase\":\"running\"}",
          "\"id\"" },
        { "{\"version\":1,\"id\":\"x1\",\"disk\":\"vda\",\"top\":\"/t\","
          "\"base\":\"/b\",\"type\":\"commit\",\"phase\":\"running\"}",
          "\"domain\"" },
        { "{\"version\":1,\"id\":\"x2\",\"domain\":\"d\",\"top\":\"/t\","
          "\"base\":\"/b\",\"type\":\"commit\",\"phase\":\"running\"}",
          "\"disk\"" },
        { "{\"version\":1,\"id\":\"x3\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"base\":\"/b\",\"type\":\"commit\",\"phase\":\"running\"}",
          "\"top\"" },
        { "{\"version\":1,\"id\":\"x4\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"type\":\"commit\",\"phase\":\"running\"}",
          "\"base\"" },
        { "{\"version\":1,\"id\":\"x5\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"phase\":\"running\"}",
          "\"type\"" },
        { "{\"version\":1,\"id\":\"x6\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\"}",
          "\"phase\"" },
        { "{\"version\":1,\"id\":7,\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\"}",
          "\"id\"" },
        { "{\"version\":1,\"id\":\"\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\"}",
          "\"id\"" },
        { "{\"version\":1,\"id\":\"x8\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"stream\","
          "\"phase\":\"running\"}",
          "unknown type \"stream\"" },
        { "{\"version\":1,\"id\":\"x9\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"none\","
          "\"phase\":\"running\"}",
          "unknown type" },
        { "{\"version\":2,\"id\":\"x10\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\"}",
          "version" },
        { "{\"version\":\"1\",\"id\":\"x11\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\"}",
          "version" },
        { "{\"version\":1,\"id\":\"x12\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\"} trailing",
          "trailing" },
        { "{\"version\":1,\"id\":\"x13\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\"}{}",
          "trailing" },
        { "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{\"i\":{"
          "\"j\":{\"k\":{\"l\":{\"m\":{\"n\":{\"o\":{\"p\":{\"q\":{\"r\":{"
          "\"s\":{\"t\":{\"u\":{\"v\":{\"w\":{\"x\":{\"y\":{\"z\":{\"A\":{"
          "\"B\":{\"C\":{\"D\":{\"E\":{\"F\":{\"G\":{}}}}}}}}}}}}}}}}}}}}}}}"
          "}}}}}}}}}}",
          "" },
        /* issue 8's merge fields, present but malformed */
        { "{\"version\":1,\"id\":\"y1\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"direction\":\"sideways\"}",
          "\"direction\"" },
        { "{\"version\":1,\"id\":\"y2\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"direction\":1}",
          "\"direction\"" },
        { "{\"version\":1,\"id\":\"y3\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"direction\":\"none\"}",
          "\"direction\"" },
        { "{\"version\":1,\"id\":\"y4\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\",\"snapshots\":\"s1\"}",
          "\"snapshots\"" },
        { "{\"version\":1,\"id\":\"y5\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\",\"snapshots\":[\"s2\",\"\"]}",
          "\"snapshots\"" },
        { "{\"version\":1,\"id\":\"y6\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"commit\","
          "\"phase\":\"running\",\"snapshots\":[\"s2\",3]}",
          "\"snapshots\"" },
        { "{\"version\":1,\"id\":\"y7\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"leaving\":{\"path\":\"/x\"}}",
          "\"leaving\"" },
        { "{\"version\":1,\"id\":\"y8\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"leaving\":[{\"dev\":1,\"ino\":2}]}",
          "\"leaving\" file 1" },
        { "{\"version\":1,\"id\":\"y9\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"leaving\":[{\"path\":\"/x\"},{\"path\":\"/y\",\"dev\":1}]}",
          "\"leaving\" file 2" },
        { "{\"version\":1,\"id\":\"y10\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"leaving\":[{\"path\":\"/x\",\"dev\":\"1\",\"ino\":2}]}",
          "\"leaving\" file 1" },
        { "{\"version\":1,\"id\":\"y11\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"leaving\":[\"/x\"]}",
          "\"leaving\" file 1" },
        { "{\"version\":1,\"id\":\"y12\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"leaving\":[{\"path\":\"\"}]}",
          "\"leaving\" file 1" },
        { "{\"version\":1,\"id\":\"y13\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"written\":\"\"}",
          "\"written\"" },
        { "{\"version\":1,\"id\":\"y14\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"pull\","
          "\"phase\":\"running\",\"written\":5}",
          "\"written\"" },
        { "{\"version\":1,\"id\":\"y15\",\"domain\":\"d\",\"disk\":\"vda\","
          "\"top\":\"/t\",\"base\":\"/b\",\"type\":\"defrag\","
          "\"phase\":\"running\",\"phase\":\"queued\"}",
          "unknown type \"defrag\"" },
        { good_line, "duplicate id" },
    };
    struct cfs_buf b = {0};
    char **warnings = NULL;
    struct cfs_journal_entry *v;
    size_t n, lineno = 1;

    /* good, blank, bad..., blank with spaces, NUL line, good (CRLF) */
    cfs_buf_printf(&b, "%s\n\n", good_line);
    lineno = 3;
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        cfs_buf_printf(&b, "%s\n", bad[i].line);
    cfs_buf_printf(&b, "   \t \n");
    cfs_buf_put(&b, "{\"id\":\"a\0b\"}\n", 13);
    cfs_buf_printf(&b, "%s\r\n",
                   "{\"version\":1,\"id\":\"last\",\"domain\":\"d\","
                   "\"disk\":\"vdb\",\"top\":\"/t2\",\"base\":\"/b2\","
                   "\"type\":\"active-commit\",\"phase\":\"pivoting\","
                   "\"snapshot\":\"s\",\"meta_name\":null,\"error\":5,"
                   "\"created\":\"x\",\"extra\":[1,2]}");

    struct cfs_journal *j = load_raw(dir, b.data, b.len, &warnings);
    cfs_buf_free(&b);

    assert_non_null(warnings);
    assert_int_equal(cfs_strv_len(warnings), ELEMENTSOF(bad) + 1);
    for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
        _cleanup_free_ char *prefix =
            cfs_xasprintf("journal line %zu: ", lineno + i);
        assert_memory_equal(warnings[i], prefix, strlen(prefix));
        if (!strstr(warnings[i], bad[i].why))
            print_message("bad[%zu]: %s\n", i, warnings[i]);
        assert_non_null(strstr(warnings[i], bad[i].why));
        assert_non_null(strstr(warnings[i], ", skipped"));
        for (const char *p = warnings[i]; *p; p++)
            assert_true(*p >= 0x20 && *p < 0x7f);
    }
    _cleanup_free_ char *nul_prefix =
        cfs_xasprintf("journal line %zu: ", lineno + ELEMENTSOF(bad) + 1);
    assert_memory_equal(warnings[ELEMENTSOF(bad)], nul_prefix,
                        strlen(nul_prefix));
    cfs_strv_free(warnings);

    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].id, "1-2-3");
    assert_int_equal(v[0].type, CFS_JOB_COMMIT);
    assert_int_equal(v[0].created, 5);
    assert_int_equal(v[0].updated, 6);
    assert_null(v[0].snapshot);
    /* Optional fields of the wrong type are ignored, not fatal. */
    assert_string_equal(v[1].id, "last");
    assert_int_equal(v[1].type, CFS_JOB_ACTIVE_COMMIT);
    assert_string_equal(v[1].phase, "pivoting");
    assert_string_equal(v[1].snapshot, "s");
    assert_null(v[1].meta_name);
    assert_null(v[1].error);
    assert_int_equal(v[1].created, 0);
    cfs_journal_entries_free(v, n);

    /* The next write drops the damage for good. */
    struct cfs_journal_entry e;
    make_entry(&e, 1, CFS_JOB_COMMIT);
    assert_int_equal(cfs_journal_put(j, &e), 0);
    cfs_journal_entry_clear(&e);
    cfs_journal_free(j);
    warnings = NULL;
    j = open_ok(dir, &warnings);
    assert_null(warnings);
    assert_int_equal(count_entries(j), 3);
    cfs_journal_free(j);
}

static void test_missing_version_accepted(void **state)
{
    const char *dir = *state;
    const char line[] =
        "{\"id\":\"old\",\"domain\":\"d\",\"disk\":\"vda\",\"top\":\"/t\","
        "\"base\":\"/b\",\"type\":\"snapshot\",\"phase\":\"starting\"}";
    char **warnings = NULL;
    struct cfs_journal *j = load_raw(dir, line, sizeof(line) - 1, &warnings);

    assert_null(warnings);
    assert_int_equal(count_entries(j), 1);
    cfs_journal_free(j);
}

/* Entries written by the previous version (no bandwidth, no disks; the
 * phases it wrote) load, each with its phase verbatim; the new fields
 * round-trip. */
static void test_previous_version_and_new_fields(void **state)
{
    const char *dir = *state;
    static const char *const phases[] = {"starting", "running", "pivoting",
                                         "cleanup", "failed"};
    struct cfs_buf b = {0};
    for (size_t i = 0; i < 5; i++)
        cfs_buf_printf(&b, "{\"version\":1,\"id\":\"e%zu\",\"domain\":\"d\","
                       "\"disk\":\"vda\",\"snapshot\":\"s\",\"top\":\"/t\","
                       "\"base\":\"/b\",\"type\":\"active-commit\",\"phase\":\"%s\","
                       "\"created\":1,\"updated\":2}\n", i, phases[i]);
    char **warnings = NULL;
    _cleanup_free_ char *text = cfs_buf_steal(&b);
    struct cfs_journal *j = load_raw(dir, text, strlen(text), &warnings);
    assert_null(warnings);
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(v[i].phase, phases[i]);
        assert_int_equal(v[i].bandwidth, 0);
        assert_null(v[i].disks);
    }
    /* bandwidth and disks are written and read back */
    v[0].bandwidth = 10 << 20;
    cfs_strv_push(&v[0].disks, cfs_xstrdup("vda"));
    free(v[0].phase);
    v[0].phase = cfs_xstrdup("ready");
    assert_int_equal(cfs_journal_put(j, &v[0]), 0);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
    assert_int_equal(cfs_journal_open(dir, &j, &warnings), 0);
    assert_null(warnings);
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    bool seen = false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].id, "e0") == 0) {
            seen = true;
            assert_int_equal(v[i].bandwidth, 10 << 20);
            assert_string_equal(v[i].phase, "ready");
            assert_non_null(v[i].disks);
            assert_string_equal(v[i].disks[0], "vda");
            assert_null(v[i].disks[1]);
        }
    assert_true(seen);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
}

/* Issue 8: every merge field is written and read back; an identity is
 * dev/ino (any 64-bit value) or none; the new types and the phase
 * finishing are stored by name. */
static void test_merge_fields_round_trip(void **state)
{
    const char *dir = *state;
    static const enum cfs_job_type types[] = {
        CFS_JOB_PULL, CFS_JOB_OFFLINE_PULL, CFS_JOB_COPY, CFS_JOB_COMMIT,
    };
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e[ELEMENTSOF(types)];

    for (size_t i = 0; i < ELEMENTSOF(types); i++) {
        make_entry(&e[i], (int)i, types[i]);
        e[i].direction = i % 2 ? CFS_DIRECTION_COMMIT : CFS_DIRECTION_PULL;
        cfs_strv_push(&e[i].snapshots, cfs_xasprintf("s%zu", i + 2));
        cfs_strv_push(&e[i].snapshots, cfs_xstrdup("s1 \"quoted\"\n"));
        e[i].n_leaving = 3;
        e[i].leaving = cfs_xcalloc(3, sizeof(*e[i].leaving));
        e[i].leaving[0].path = cfs_xstrdup("/img/vm.vda.s1.qcow2");
        e[i].leaving[0].id = (struct cfs_file_id){
            .known = true, .dev = 2049, .ino = 1234567 + i,
            .canonical = cfs_xstrdup("/real/vm.vda.s1.qcow2")};
        e[i].leaving[1].path = cfs_xstrdup("nbd:host:10809"); /* no identity */
        e[i].leaving[2].path = cfs_xstrdup("/img/big");
        e[i].leaving[2].id = (struct cfs_file_id){
            .known = true, .dev = UINT64_MAX, .ino = (uint64_t)INT64_MAX + 1};
        e[i].written = cfs_xasprintf("/img/written%zu.qcow2", i);
        e[i].bytes_commit = (uint64_t)200 << 20;
        e[i].bytes_pull = 4 << 20;
        e[i].bytes_copied = UINT64_MAX - i;
        e[i].reason = cfs_xstrdup("pull: 4.0MiB < 200.0MiB");
        e[i].survivor = cfs_xasprintf("s1 \"%zu\"", i);
        free(e[i].phase);
        e[i].phase = cfs_xstrdup(i == 2 ? "finishing" : "running");
        assert_int_equal(cfs_journal_put(j, &e[i]), 0);
    }
    cfs_journal_free(j);

    char **warnings = NULL;
    j = open_ok(dir, &warnings);
    assert_null(warnings);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, ELEMENTSOF(types));
    for (size_t i = 0; i < n; i++) {
        assert_entry_equal(&v[i], &e[i]);
        assert_int_equal(v[i].direction, e[i].direction);
        assert_int_equal(cfs_strv_len(v[i].snapshots), 2);
        assert_string_equal(v[i].snapshots[0], e[i].snapshots[0]);
        assert_string_equal(v[i].snapshots[1], "s1 \"quoted\"\n");
        assert_int_equal(v[i].n_leaving, 3);
        for (size_t k = 0; k < 3; k++) {
            assert_string_equal(v[i].leaving[k].path, e[i].leaving[k].path);
            assert_int_equal(v[i].leaving[k].id.known, e[i].leaving[k].id.known);
            assert_true(v[i].leaving[k].id.dev == e[i].leaving[k].id.dev);
            assert_true(v[i].leaving[k].id.ino == e[i].leaving[k].id.ino);
            /* the canonical path is not stored: found again from the chain */
            assert_null(v[i].leaving[k].id.canonical);
        }
        assert_string_equal(v[i].written, e[i].written);
        assert_true(v[i].bytes_commit == e[i].bytes_commit);
        assert_true(v[i].bytes_pull == e[i].bytes_pull);
        assert_true(v[i].bytes_copied == e[i].bytes_copied);
        assert_string_equal(v[i].reason, e[i].reason);
        assert_string_equal(v[i].survivor, e[i].survivor);
    }
    assert_int_equal(v[0].type, CFS_JOB_PULL);
    assert_int_equal(v[1].type, CFS_JOB_OFFLINE_PULL);
    assert_string_equal(v[2].phase, "finishing");

    /* a deep copy of a loaded entry owns its merge fields */
    struct cfs_journal_entry c;
    cfs_journal_entry_copy(&c, &v[1]);
    cfs_journal_entries_free(v, n);
    assert_string_equal(c.leaving[0].path, "/img/vm.vda.s1.qcow2");
    assert_string_equal(c.snapshots[0], "s3");
    cfs_journal_entry_clear(&c);
    assert_null(c.leaving);

    /* the file names them as job.json will */
    _cleanup_free_ char *path = path_in(dir, "journal");
    size_t len;
    _cleanup_free_ char *data = read_file(path, &len);
    assert_non_null(strstr(data, "\"type\":\"offline-pull\""));
    assert_non_null(strstr(data, "\"direction\":\"pull\""));
    assert_non_null(strstr(data, "\"phase\":\"finishing\""));
    assert_non_null(strstr(data, "{\"path\":\"nbd:host:10809\"}"));
    for (size_t i = 0; i < ELEMENTSOF(types); i++)
        cfs_journal_entry_clear(&e[i]);
    cfs_journal_free(j);
}

/* Issue 8 §3: a queued rmdir (type rmdir) and a run's job (meta_names,
 * superseded) come back as written; an entry without them loads with
 * meta_names NULL and superseded false. */
static void test_queue_fields_round_trip(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e[3];

    make_entry(&e[0], 0, CFS_JOB_RMDIR);
    free(e[0].phase);
    e[0].phase = cfs_xstrdup("queued");
    e[0].n_leaving = 1;
    e[0].leaving = cfs_xcalloc(1, sizeof(*e[0].leaving));
    e[0].leaving[0].path = cfs_xstrdup(e[0].top);
    e[0].leaving[0].id = (struct cfs_file_id){ .known = true, .dev = 2049, .ino = 77 };
    make_entry(&e[1], 1, CFS_JOB_ACTIVE_COMMIT);
    cfs_strv_push(&e[1].snapshots, cfs_xstrdup("s2"));
    cfs_strv_push(&e[1].snapshots, cfs_xstrdup("s1"));
    cfs_strv_push(&e[1].meta_names, cfs_xstrdup("s2"));
    cfs_strv_push(&e[1].meta_names, cfs_xstrdup("")); /* no metadata */
    e[1].direction = CFS_DIRECTION_COMMIT;
    e[1].superseded = true;
    make_entry(&e[2], 2, CFS_JOB_COMMIT);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(cfs_journal_put(j, &e[i]), 0);
    cfs_journal_free(j);

    char **warnings = NULL;
    j = open_ok(dir, &warnings);
    assert_null(warnings);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 3);
    assert_entry_equal(&v[0], &e[0]);
    assert_int_equal(v[0].type, CFS_JOB_RMDIR);
    assert_string_equal(v[0].phase, "queued");
    assert_int_equal(v[0].n_leaving, 1);
    assert_true(v[0].leaving[0].id.known && v[0].leaving[0].id.ino == 77);
    assert_false(v[0].superseded);
    assert_int_equal(cfs_strv_len(v[1].meta_names), 2);
    assert_string_equal(v[1].meta_names[0], "s2");
    assert_string_equal(v[1].meta_names[1], "");
    assert_true(v[1].superseded);
    assert_null(v[2].meta_names);
    assert_false(v[2].superseded);
    struct cfs_journal_entry c;
    cfs_journal_entry_copy(&c, &v[1]);
    cfs_journal_entries_free(v, n);
    assert_string_equal(c.meta_names[1], "");
    assert_true(c.superseded);
    cfs_journal_entry_clear(&c);

    _cleanup_free_ char *path = path_in(dir, "journal");
    size_t len;
    _cleanup_free_ char *data = read_file(path, &len);
    assert_non_null(strstr(data, "\"type\":\"rmdir\""));
    assert_non_null(strstr(data, "\"meta_names\":[\"s2\",\"\"]"));
    assert_non_null(strstr(data, "\"superseded\":true"));
    for (size_t i = 0; i < 3; i++)
        cfs_journal_entry_clear(&e[i]);
    cfs_journal_free(j);
}

/* Issue 10 §4.3: a revert entry (two disks, force) loads back with every
 * field; one whose made[]/old_files[] do not pair with disks[] is neither
 * written nor loaded. */
static struct cfs_job_file *files2(const char *a, const char *b, bool ids)
{
    struct cfs_job_file *v = cfs_xcalloc(2, sizeof(*v));
    v[0].path = cfs_xstrdup(a);
    v[1].path = cfs_xstrdup(b);
    if (ids) {
        v[0].id = (struct cfs_file_id){ .known = true, .dev = 2049, .ino = 11 };
        v[1].id = (struct cfs_file_id){ .known = true, .dev = 2049, .ino = 12 };
    }
    return v;
}

static void test_revert_fields_round_trip(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e;

    make_entry(&e, 1, CFS_JOB_REVERT);
    free(e.phase);
    e.phase = cfs_xstrdup("switching");
    cfs_strv_push(&e.disks, cfs_xstrdup("vda"));
    cfs_strv_push(&e.disks, cfs_xstrdup("vdb"));
    e.force = true;
    e.made = files2("/img/vm.vda.s1.2.qcow2", "/img/vm.vdb.s1.2.qcow2", true);
    e.n_made = 2;
    e.old_files = files2("/img/vm.vda.s2.qcow2", "/img/vm.vdb.s2.qcow2", false);
    e.n_old = 2;
    e.leaving = files2("/img/vm.vda.s2.qcow2", "/img/vm.vda.s1.qcow2", true);
    e.n_leaving = 2;
    cfs_strv_push(&e.snapshots, cfs_xstrdup("s2"));
    cfs_strv_push(&e.meta_names, cfs_xstrdup("s2"));
    assert_int_equal(cfs_journal_put(j, &e), 0);

    /* made[] and old_files[] pair with disks[]: not one short */
    struct cfs_journal_entry bad;
    make_entry(&bad, 2, CFS_JOB_REVERT);
    assert_int_equal(cfs_journal_put(j, &bad), -EINVAL);
    bad.made = files2("/img/a", "/img/b", false);
    bad.n_made = 1;
    bad.old_files = files2("/img/c", "/img/d", false);
    bad.n_old = 1;
    assert_int_equal(cfs_journal_put(j, &bad), 0); /* one disk: disk */
    cfs_strv_push(&bad.disks, cfs_xstrdup("vda"));
    cfs_strv_push(&bad.disks, cfs_xstrdup("vdb"));
    assert_int_equal(cfs_journal_put(j, &bad), -EINVAL);
    cfs_journal_free(j);

    char **warnings = NULL;
    j = open_ok(dir, &warnings);
    assert_null(warnings);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 2);
    assert_entry_equal(&v[0], &e);
    assert_int_equal(v[0].type, CFS_JOB_REVERT);
    assert_true(v[0].force);
    assert_int_equal(cfs_strv_len(v[0].disks), 2);
    assert_string_equal(v[0].disks[1], "vdb");
    assert_int_equal(v[0].n_made, 2);
    assert_string_equal(v[0].made[1].path, "/img/vm.vdb.s1.2.qcow2");
    assert_true(v[0].made[1].id.known && v[0].made[1].id.ino == 12);
    assert_int_equal(v[0].n_old, 2);
    assert_false(v[0].old_files[0].id.known);
    assert_int_equal(v[0].n_leaving, 2);
    assert_string_equal(v[0].snapshots[0], "s2");
    assert_false(v[1].force);
    struct cfs_journal_entry c;
    cfs_journal_entry_copy(&c, &v[0]);
    cfs_journal_entries_free(v, n);
    assert_true(c.force);
    assert_int_equal(c.n_made, 2);
    cfs_journal_entry_clear(&c);
    cfs_journal_free(j);

    _cleanup_free_ char *path = path_in(dir, "journal");
    size_t len;
    _cleanup_free_ char *data = read_file(path, &len);
    assert_non_null(strstr(data, "\"type\":\"revert\""));
    assert_non_null(strstr(data, "\"force\":true"));
    assert_non_null(strstr(data, "\"phase\":\"switching\""));
    /* a revert line whose made[] lost a disk is skipped on load */
    const char *cut = strstr(data, "{\"path\":\"/img/vm.vdb.s1.2.qcow2\"");
    assert_non_null(cut);
    struct cfs_buf b = {0};
    const char *line_end = strchr(data, '\n');
    assert_non_null(line_end);
    /* drop ",{...vdb made...}" from the first line */
    const char *obj_end = strchr(cut, '}');
    cfs_buf_put(&b, data, (size_t)(cut - 1 - data));
    cfs_buf_put(&b, obj_end + 1, strlen(obj_end + 1));
    _cleanup_free_ char *mangled = cfs_buf_steal(&b);
    write_file(path, mangled, strlen(mangled));
    j = open_ok(dir, &warnings);
    assert_non_null(warnings);
    assert_non_null(strstr(warnings[0], "per disk"));
    cfs_strv_free(warnings);
    assert_int_equal(count_entries(j), 1);
    cfs_journal_free(j);
    cfs_journal_entry_clear(&e);
    bad.n_made = bad.n_old = 2; /* what files2 allocated */
    cfs_journal_entry_clear(&bad);
}

/* Issue 10 §3.7: a group entry (disks[], remaining[]) and its members'
 * entries (group) come back as written; a group without remaining[]
 * writes []; an empty group id or remaining disk cannot be written. */
static void test_group_fields_round_trip(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e[3];

    make_entry(&e[0], 0, CFS_JOB_GROUP);
    free(e[0].phase);
    e[0].phase = cfs_xstrdup("partial");
    free(e[0].top);
    free(e[0].base);
    e[0].top = cfs_xstrdup("-");
    e[0].base = cfs_xstrdup("-");
    cfs_strv_push(&e[0].disks, cfs_xstrdup("vda"));
    cfs_strv_push(&e[0].disks, cfs_xstrdup("vdb"));
    cfs_strv_push(&e[0].remaining, cfs_xstrdup("vdb"));
    make_entry(&e[1], 1, CFS_JOB_ACTIVE_COMMIT);
    e[1].group = cfs_xstrdup(e[0].id);
    make_entry(&e[2], 2, CFS_JOB_RMDIR);
    e[2].group = cfs_xstrdup(e[0].id);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(cfs_journal_put(j, &e[i]), 0);
    cfs_journal_free(j);

    char **warnings = NULL;
    j = open_ok(dir, &warnings);
    assert_null(warnings);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_entry_equal(&v[i], &e[i]);
    assert_int_equal(v[0].type, CFS_JOB_GROUP);
    assert_int_equal(cfs_strv_len(v[0].disks), 2);
    assert_string_equal(v[0].disks[1], "vdb");
    assert_int_equal(cfs_strv_len(v[0].remaining), 1);
    assert_string_equal(v[0].remaining[0], "vdb");
    assert_null(v[0].group);
    assert_string_equal(v[1].group, e[0].id);
    assert_null(v[1].remaining);
    assert_string_equal(v[2].group, e[0].id);
    struct cfs_journal_entry c;
    cfs_journal_entry_copy(&c, &v[0]);
    assert_string_equal(c.remaining[0], "vdb");
    cfs_journal_entry_clear(&c);
    cfs_journal_entry_copy(&c, &v[1]);
    assert_string_equal(c.group, e[0].id);
    cfs_journal_entry_clear(&c);
    cfs_journal_entries_free(v, n);

    _cleanup_free_ char *path = path_in(dir, "journal");
    size_t len;
    _cleanup_free_ char *data = read_file(path, &len);
    assert_non_null(strstr(data, "\"type\":\"group\""));
    assert_non_null(strstr(data, "\"remaining\":[\"vdb\"]"));

    /* every member ended: remaining [] */
    cfs_strv_free(e[0].remaining);
    e[0].remaining = NULL;
    assert_int_equal(cfs_journal_put(j, &e[0]), 0);
    free(data);
    data = read_file(path, &len);
    assert_non_null(strstr(data, "\"remaining\":[]"));

    /* what cannot load back is not written */
    free(e[1].group);
    e[1].group = cfs_xstrdup("");
    assert_int_equal(cfs_journal_put(j, &e[1]), -EINVAL);
    cfs_strv_push(&e[0].remaining, cfs_xstrdup(""));
    assert_int_equal(cfs_journal_put(j, &e[0]), -EINVAL);
    for (size_t i = 0; i < 3; i++)
        cfs_journal_entry_clear(&e[i]);
    cfs_journal_free(j);
}

/* What cannot load back is not written: a bad merge field is -EINVAL and
 * changes nothing. */
static void test_merge_fields_put_invalid(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    struct cfs_journal_entry e;

    make_entry(&e, 1, CFS_JOB_PULL);
    e.direction = CFS_DIRECTION_MAX;
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    e.direction = CFS_DIRECTION_PULL;
    cfs_strv_push(&e.snapshots, cfs_xstrdup(""));
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    cfs_strv_free(e.snapshots);
    e.snapshots = NULL;
    e.n_leaving = 1; /* no array */
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    e.leaving = cfs_xcalloc(1, sizeof(*e.leaving)); /* no path */
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    e.leaving[0].path = cfs_xstrdup("");
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    free(e.leaving[0].path);
    e.leaving[0].path = cfs_xstrdup("/img/s1.qcow2");
    e.written = cfs_xstrdup("");
    assert_int_equal(cfs_journal_put(j, &e), -EINVAL);
    assert_int_equal(count_entries(j), 0);
    free(e.written);
    e.written = NULL;
    assert_int_equal(cfs_journal_put(j, &e), 0);
    assert_int_equal(count_entries(j), 1);
    cfs_journal_entry_clear(&e);
    cfs_journal_free(j);
}

/* A line exactly as the daemon before issue 8 wrote it (every key it
 * wrote, in its order) loads with the merge fields empty, and written
 * back it is the same bytes: nothing is added to an entry of an older
 * kind. */
static const char old_line[] =
    "{\"version\":1,\"id\":\"1764000000-4242-1\",\"domain\":\"vm1\","
    "\"disk\":\"vda\",\"snapshot\":\"s2\",\"meta_name\":\"s2\","
    "\"top\":\"/var/lib/libvirt/images/vm1.vda.s2.qcow2\","
    "\"base\":\"/var/lib/libvirt/images/vm1.vda.s1.qcow2\","
    "\"type\":\"active-commit\",\"phase\":\"pivoting\","
    "\"created\":1764000000,\"updated\":1764000042,"
    "\"error\":\"internal error: \\\"x\\\"\",\"bandwidth\":2097152,"
    "\"disks\":[\"vda\"]}\n";

static void test_verbatim_old_entry(void **state)
{
    const char *dir = *state;
    char **warnings = NULL;
    struct cfs_journal *j = load_raw(dir, old_line, strlen(old_line), &warnings);
    assert_null(warnings);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(v[0].type, CFS_JOB_ACTIVE_COMMIT);
    assert_string_equal(v[0].phase, "pivoting");
    assert_string_equal(v[0].top, "/var/lib/libvirt/images/vm1.vda.s2.qcow2");
    assert_int_equal(v[0].bandwidth, 2097152);
    assert_string_equal(v[0].error, "internal error: \"x\"");
    assert_int_equal(v[0].direction, CFS_DIRECTION_NONE);
    assert_null(v[0].snapshots);
    assert_int_equal(v[0].n_leaving, 0);
    assert_null(v[0].leaving);
    assert_null(v[0].written);
    assert_int_equal(v[0].bytes_commit, 0);
    assert_int_equal(v[0].bytes_pull, 0);
    assert_int_equal(v[0].bytes_copied, 0);
    assert_null(v[0].reason);
    assert_null(v[0].survivor);

    /* rewritten (as a phase change rewrites the file): the same bytes */
    assert_int_equal(cfs_journal_put(j, &v[0]), 0);
    cfs_journal_entries_free(v, n);
    _cleanup_free_ char *path = path_in(dir, "journal");
    size_t len;
    _cleanup_free_ char *data = read_file(path, &len);
    assert_int_equal(len, strlen(old_line));
    assert_memory_equal(data, old_line, len);
    cfs_journal_free(j);
}

static void test_long_line(void **state)
{
    const char *dir = *state;
    size_t big = 2 * 1024 * 1024;
    struct cfs_buf b = {0};
    char **warnings = NULL;

    cfs_buf_printf(&b, "{\"id\":\"");
    for (size_t i = 0; i < big; i++)
        cfs_buf_put(&b, "a", 1);
    cfs_buf_printf(&b, "\"}\n%s\n", good_line);
    struct cfs_journal *j = load_raw(dir, b.data, b.len, &warnings);
    cfs_buf_free(&b);
    assert_int_equal(cfs_strv_len(warnings), 1);
    assert_string_equal(warnings[0], "journal line 1: record too long, skipped");
    assert_int_equal(count_entries(j), 1);
    cfs_strv_free(warnings);
    cfs_journal_free(j);
}

/* ---- threads ---------------------------------------------------------------- */

#define N_THREADS 8
#define N_ROUNDS 40

struct worker {
    struct cfs_journal *j;
    int index;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    for (int r = 0; r < N_ROUNDS; r++) {
        struct cfs_journal_entry e, *v;
        size_t n;

        make_entry(&e, w->index * 1000 + r, CFS_JOB_COMMIT);
        free(e.id);
        e.id = cfs_journal_new_id(w->j);
        if (cfs_journal_put(w->j, &e) != 0)
            abort();
        free(e.phase);
        e.phase = cfs_xstrdup("cleanup");
        if (cfs_journal_put(w->j, &e) != 0)
            abort();
        if (cfs_journal_list(w->j, &v, &n) != 0)
            abort();
        cfs_journal_entries_free(v, n);
        /* Keep every other entry. */
        if (r % 2 && cfs_journal_remove(w->j, e.id) != 0)
            abort();
        cfs_journal_entry_clear(&e);
    }
    return NULL;
}

static void test_threads(void **state)
{
    const char *dir = *state;
    struct cfs_journal *j = open_ok(dir, NULL);
    pthread_t t[N_THREADS];
    struct worker w[N_THREADS];
    struct cfs_journal_entry *v;
    size_t n;

    for (int i = 0; i < N_THREADS; i++) {
        w[i] = (struct worker){ .j = j, .index = i };
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);

    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    assert_int_equal(n, N_THREADS * N_ROUNDS / 2);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(v[i].phase, "cleanup");
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(v[i].id, v[k].id);
    }
    cfs_journal_free(j);

    char **warnings = NULL;
    struct cfs_journal_entry *v2;
    size_t n2;
    j = open_ok(dir, &warnings);
    assert_null(warnings);
    assert_int_equal(cfs_journal_list(j, &v2, &n2), 0);
    assert_int_equal(n2, n);
    for (size_t i = 0; i < n; i++)
        assert_entry_equal(&v[i], &v2[i]);
    cfs_journal_entries_free(v, n);
    cfs_journal_entries_free(v2, n2);
    cfs_journal_free(j);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)
    const struct CMUnitTest tests[] = {
        T(test_put_replace_remove),
        T(test_put_invalid),
        T(test_new_id),
        T(test_entry_copy_clear),
        T(test_durable_reopen),
        T(test_creates_state_dir),
        T(test_unusable_state_dir),
        T(test_failed_write_changes_nothing),
        T(test_truncation_every_offset),
        T(test_random_garbage),
        T(test_bad_records),
        T(test_missing_version_accepted),
        T(test_previous_version_and_new_fields),
        T(test_merge_fields_round_trip),
        T(test_queue_fields_round_trip),
        T(test_group_fields_round_trip),
        T(test_merge_fields_put_invalid),
        T(test_revert_fields_round_trip),
        T(test_verbatim_old_entry),
        T(test_apply),
        T(test_long_line),
        T(test_threads),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
