/* test_ctl.c — ctl.c: every command as a shell writes it (echo, printf,
 * blanks), everything that is refused (and that a refusal leaves the
 * output alone), the size parser's suffixes and limits; what reading ctl
 * shows (nodes.c), rendered alone and read through the engine. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include "tmpdir.h"

#include "chainfs/ctl.h"
#include "chainfs/engine.h"
#include "chainfs/nodes.h"
#include "chainfs/util.h"
#include "fake.h"

static struct cfs_ctl_cmd parse_ok_n(const char *buf, size_t len,
                                     enum cfs_ctl_op op)
{
    struct cfs_ctl_cmd c = { .op = CFS_CTL_OP_MAX, .bandwidth = 12345 };
    const char *why = "untouched";
    int r = cfs_ctl_parse(buf, len, &c, &why);
    if (r != 0)
        fail_msg("\"%.*s\": %d (%s)", (int)len, buf, r, why ? why : "-");
    if (c.op != op)
        fail_msg("\"%.*s\": op %d, want %d", (int)len, buf, c.op, op);
    assert_null(why);
    return c;
}

static struct cfs_ctl_cmd parse_ok(const char *s, enum cfs_ctl_op op)
{
    return parse_ok_n(s, strlen(s), op);
}

/* A refusal: ERR, a reason, and *out left as it was. */
static void parse_err_n(const char *buf, size_t len, int err)
{
    struct cfs_ctl_cmd c = { .op = CFS_CTL_PIVOT_AUTO, .bandwidth = 777 };
    const char *why = NULL;
    int r = cfs_ctl_parse(buf, len, &c, &why);
    if (r != err)
        fail_msg("\"%.*s\" (%zu bytes): %d, want %d", (int)(len > 80 ? 80 : len),
                 buf ? buf : "(null)", len, r, err);
    if (!why || !*why)
        fail_msg("\"%.*s\": no reason given", (int)(len > 80 ? 80 : len), buf);
    assert_int_equal(c.op, CFS_CTL_PIVOT_AUTO);
    assert_int_equal(c.bandwidth, 777);
}

static void parse_err(const char *s, int err)
{
    parse_err_n(s, strlen(s), err);
}

static void test_every_command(void **state)
{
    (void)state;
    struct cfs_ctl_cmd c;
    c = parse_ok("abort", CFS_CTL_ABORT);
    assert_int_equal(c.bandwidth, 0);
    parse_ok("pivot", CFS_CTL_PIVOT);
    parse_ok("pivot manual", CFS_CTL_PIVOT_MANUAL);
    parse_ok("pivot auto", CFS_CTL_PIVOT_AUTO);
    c = parse_ok("bandwidth 10M", CFS_CTL_BANDWIDTH);
    assert_int_equal(c.bandwidth, 10u << 20);
    c = parse_ok("bandwidth 0", CFS_CTL_BANDWIDTH);
    assert_int_equal(c.bandwidth, 0);
    c = parse_ok("bandwidth 1048576", CFS_CTL_BANDWIDTH);
    assert_int_equal(c.bandwidth, 1048576);
}

/* `merge NAME commit|pull|auto` (issue 8 §2): the direction of one
 * snapshot's next merge. NAME is a snapshots/ entry: any word without '/'
 * of at most 255 bytes. */
static void test_merge_override(void **state)
{
    (void)state;
    struct cfs_ctl_cmd c;
    c = parse_ok("merge s2 pull\n", CFS_CTL_MERGE);
    assert_string_equal(c.name, "s2");
    assert_int_equal(c.merge_mode, CFS_MERGE_PULL);
    c = parse_ok("merge  before-upgrade\tcommit", CFS_CTL_MERGE);
    assert_string_equal(c.name, "before-upgrade");
    assert_int_equal(c.merge_mode, CFS_MERGE_COMMIT);
    c = parse_ok("merge s1~2 auto", CFS_CTL_MERGE);
    assert_string_equal(c.name, "s1~2");
    assert_int_equal(c.merge_mode, CFS_MERGE_AUTO);
    char longname[300] = "merge ";
    memset(longname + 6, 'a', 255);
    strcpy(longname + 6 + 255, " pull");
    c = parse_ok(longname, CFS_CTL_MERGE);
    assert_int_equal(strlen(c.name), 255);

    parse_err("merge", -EINVAL);
    parse_err("merge s2", -EINVAL);
    parse_err("merge s2 sideways", -EINVAL);
    parse_err("merge s2 pull now", -EINVAL);
    parse_err("merge a/b pull", -EINVAL);
    parse_err("merge . pull", -EINVAL);
    parse_err("merge .. pull", -EINVAL);
    memset(longname + 6, 'a', 256);
    strcpy(longname + 6 + 256, " pull");
    parse_err(longname, -EINVAL);
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_MERGE), "merge");
}

/* `revert NAME [force]` (issue 10 §4.1): NAME as merge takes it, then
 * nothing or the word force; the same parse for a disk's and a domain's
 * ctl. */
static void test_revert(void **state)
{
    (void)state;
    struct cfs_ctl_cmd c;
    c = parse_ok("revert s2\n", CFS_CTL_REVERT);
    assert_string_equal(c.name, "s2");
    assert_false(c.force);
    c = parse_ok("revert\tbefore-upgrade  force\n", CFS_CTL_REVERT);
    assert_string_equal(c.name, "before-upgrade");
    assert_true(c.force);
    c = parse_ok("  revert s1~2 ", CFS_CTL_REVERT);
    assert_string_equal(c.name, "s1~2");
    assert_false(c.force);
    /* a snapshot called "force" is a name when it is the only word */
    c = parse_ok("revert force", CFS_CTL_REVERT);
    assert_string_equal(c.name, "force");
    assert_false(c.force);
    c = parse_ok("revert force force", CFS_CTL_REVERT);
    assert_string_equal(c.name, "force");
    assert_true(c.force);
    char longname[300] = "revert ";
    memset(longname + 7, 'a', 255);
    longname[7 + 255] = '\0';
    c = parse_ok(longname, CFS_CTL_REVERT);
    assert_int_equal(strlen(c.name), 255);

    parse_err("revert", -EINVAL);
    parse_err("revert\n", -EINVAL);
    parse_err("revert s2 now", -EINVAL);
    parse_err("revert s2 FORCE", -EINVAL);
    parse_err("revert s2 force force", -EINVAL);
    parse_err("revert s2 forced", -EINVAL);
    parse_err("revert a/b", -EINVAL);
    parse_err("revert .", -EINVAL);
    parse_err("revert .. force", -EINVAL);
    parse_err("revert s2\nrevert s1", -EINVAL);
    parse_err("Revert s2", -EINVAL);
    memset(longname + 7, 'a', 256);
    longname[7 + 256] = '\0';
    parse_err(longname, -EINVAL);
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_REVERT), "revert");
}

static void test_as_shells_write(void **state)
{
    (void)state;
    struct cfs_ctl_cmd c;
    /* echo abort > ctl; printf pivot > ctl; echo "bandwidth 10M" >> ctl */
    parse_ok("abort\n", CFS_CTL_ABORT);
    parse_ok("pivot", CFS_CTL_PIVOT);
    c = parse_ok("bandwidth 10M\n", CFS_CTL_BANDWIDTH);
    assert_int_equal(c.bandwidth, 10u << 20);
    parse_ok("pivot manual\n", CFS_CTL_PIVOT_MANUAL);
    /* blanks around and between words */
    parse_ok("  abort  ", CFS_CTL_ABORT);
    parse_ok("\tpivot\t auto \n", CFS_CTL_PIVOT_AUTO);
    c = parse_ok("bandwidth\t\t2G\n", CFS_CTL_BANDWIDTH);
    assert_int_equal(c.bandwidth, 2ull << 30);
    /* LEN counts, not a NUL: the bytes after LEN are not read */
    parse_ok_n("abortXYZ", 5, CFS_CTL_ABORT);
    parse_ok_n("pivot manual\nabort\n", 13, CFS_CTL_PIVOT_MANUAL);
}

static void test_unknown_and_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "bogus", "bogus\n", "ABORT", "Abort", "abor", "aborts", "abort now",
        "abort\n\n", "pivot now", "pivot Manual", "pivot manual auto",
        "pivot auto\n\n", "pivot-manual", "bandwidth", "bandwidth\n",
        "bandwidth ", "bandwidth -5", "bandwidth +5", "bandwidth 1Q",
        "bandwidth 10MB", "bandwidth 10M/s", "bandwidth 10 M", "bandwidth M",
        "bandwidth 1.5M", "bandwidth 0x10", "bandwidth 1e6", "bandwidth 10MiB",
        "bandwidth 1KK", "bandwidth 1 2", "bandwidth 10M extra",
        "bandwidth 18446744073709551616",     /* UINT64_MAX + 1 */
        "bandwidth 99999999999999999999999",
        "bandwidth 16777216T",                /* 2^64 */
        "bandwidth 17179869184G",
        "bandwidth 1234567890123456789012345678901234567890",
        "", "\n", " ", "\t\n", "\r\n", "abort\r\n", "abort\r",
        "\nabort", "abort\npivot\n", "abort\npivot", "pivot\nabort",
        "abort;pivot", "abort\x7f", "\x1b[Aabort", "pivot\vmanual",
        "pivot\fmanual",
    };
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        parse_err(bad[i], -EINVAL);
}

static void test_nul_bytes(void **state)
{
    (void)state;
    parse_err_n("abort\0", 6, -EINVAL);
    parse_err_n("\0abort", 6, -EINVAL);
    parse_err_n("pivot\0manual", 12, -EINVAL);
    parse_err_n("bandwidth 1\0""0M", 14, -EINVAL);
    parse_err_n("\0", 1, -EINVAL);
    parse_err_n("abort\n\0", 7, -EINVAL);
    parse_err_n("", 0, -EINVAL);
}

static void test_sizes_of_writes(void **state)
{
    (void)state;
    char *big = malloc(1u << 20);
    assert_non_null(big);

    /* the most a write may be: a command padded with blanks */
    memset(big, ' ', CFS_CTL_MAX_WRITE);
    memcpy(big, "abort", 5);
    big[CFS_CTL_MAX_WRITE - 1] = '\n';
    parse_ok_n(big, CFS_CTL_MAX_WRITE, CFS_CTL_ABORT);
    /* one byte more is too big, whatever it holds */
    memset(big, ' ', CFS_CTL_MAX_WRITE + 1);
    memcpy(big, "abort", 5);
    parse_err_n(big, CFS_CTL_MAX_WRITE + 1, -E2BIG);
    /* 1 MiB of a valid command repeated, or of zeros */
    for (size_t i = 0; i + 6 <= (1u << 20); i += 6)
        memcpy(big + i, "abort\n", 6);
    parse_err_n(big, 1u << 20, -E2BIG);
    memset(big, 0, 1u << 20);
    parse_err_n(big, 1u << 20, -E2BIG);
    /* E2BIG is decided before the bytes are looked at */
    parse_err_n(NULL, CFS_CTL_MAX_WRITE + 1, -E2BIG);
    free(big);
}

static void test_null_arguments(void **state)
{
    (void)state;
    struct cfs_ctl_cmd c;
    assert_int_equal(cfs_ctl_parse(NULL, 0, &c, NULL), -EINVAL);
    assert_int_equal(cfs_ctl_parse("abort", 5, NULL, NULL), -EINVAL);
    /* WHY is optional */
    assert_int_equal(cfs_ctl_parse("abort", 5, &c, NULL), 0);
    assert_int_equal(c.op, CFS_CTL_ABORT);
    assert_int_equal(cfs_ctl_parse("bogus", 5, &c, NULL), -EINVAL);
}

static void test_reasons(void **state)
{
    (void)state;
    struct cfs_ctl_cmd c;
    const char *why = NULL;
    assert_int_equal(cfs_ctl_parse("abort\npivot\n", 12, &c, &why), -EINVAL);
    assert_string_equal(why, "one command per write");
    assert_int_equal(cfs_ctl_parse("bogus", 5, &c, &why), -EINVAL);
    assert_string_equal(why, "unknown command");
    assert_int_equal(cfs_ctl_parse("bandwidth", 9, &c, &why), -EINVAL);
    assert_non_null(strstr(why, "bandwidth needs"));
    assert_int_equal(cfs_ctl_parse("bandwidth -5", 12, &c, &why), -EINVAL);
    assert_non_null(strstr(why, "not a number"));
    assert_int_equal(cfs_ctl_parse("", 0, &c, &why), -EINVAL);
    assert_string_equal(why, "empty command");
    /* a success clears WHY */
    assert_int_equal(cfs_ctl_parse("abort", 5, &c, &why), 0);
    assert_null(why);
}

static void size_ok(const char *s, uint64_t want)
{
    uint64_t v = 42;
    int r = cfs_size_parse(s, &v);
    if (r != 0)
        fail_msg("\"%s\": %d", s, r);
    if (v != want)
        fail_msg("\"%s\": %llu, want %llu", s, (unsigned long long)v,
                 (unsigned long long)want);
}

static void size_err(const char *s)
{
    uint64_t v = 42;
    int r = cfs_size_parse(s, &v);
    if (r != -EINVAL)
        fail_msg("\"%s\": %d, want -EINVAL", s ? s : "(null)", r);
    assert_int_equal(v, 42);
}

static void test_size_parse(void **state)
{
    (void)state;
    size_ok("0", 0);
    size_ok("000", 0);
    size_ok("1", 1);
    size_ok("007", 7);
    size_ok("1K", 1024);
    size_ok("1k", 1024);
    size_ok("10M", 10ull << 20);
    size_ok("10m", 10ull << 20);
    size_ok("3G", 3ull << 30);
    size_ok("2T", 2ull << 40);
    size_ok("0K", 0);
    size_ok("18446744073709551615", UINT64_MAX);
    size_ok("16777215T", 16777215ull << 40);
    size_ok("17179869183G", 17179869183ull << 30);

    static const char *const bad[] = {
        "", " 1", "1 ", "-1", "+1", "-0", "K", "1Q", "1KB", "1KiB", "1K/s",
        "1B", "1.0", "1,000", "0x10", "1e3", "1KK", "1 K", "1\n", "inf",
        "nan", "18446744073709551616", "99999999999999999999",
        "16777216T", "17179869184G", "17592186044416M", "18014398509481984K",
    };
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        size_err(bad[i]);
    size_err(NULL);
    assert_int_equal(cfs_size_parse("1", NULL), -EINVAL);
}

/* copy DEST [flatten|shallow|chain] [manual], finish (issue 8 §1.1) */
static void test_copy(void **state)
{
    (void)state;
    struct cfs_ctl_cmd c = parse_ok("copy /srv/new/vm.qcow2\n", CFS_CTL_COPY);
    assert_string_equal(c.dest, "/srv/new/vm.qcow2");
    assert_int_equal(c.copy_mode, CFS_COPY_DEFAULT);
    assert_false(c.manual);
    c = parse_ok("copy /d/x flatten", CFS_CTL_COPY);
    assert_int_equal(c.copy_mode, CFS_COPY_FLATTEN);
    c = parse_ok("  copy\t/d/x  shallow manual\n", CFS_CTL_COPY);
    assert_string_equal(c.dest, "/d/x");
    assert_int_equal(c.copy_mode, CFS_COPY_SHALLOW);
    assert_true(c.manual);
    c = parse_ok("copy /d/x chain", CFS_CTL_COPY);
    assert_int_equal(c.copy_mode, CFS_COPY_CHAIN);
    c = parse_ok("copy /d/x manual", CFS_CTL_COPY);
    assert_int_equal(c.copy_mode, CFS_COPY_DEFAULT);
    assert_true(c.manual);
    parse_ok("finish\n", CFS_CTL_FINISH);

    parse_err("copy", -EINVAL);
    parse_err("copy\n", -EINVAL);
    parse_err("copy relative.qcow2", -EINVAL);
    parse_err("copy ./x.qcow2", -EINVAL);
    parse_err("copy /d/", -EINVAL);
    parse_err("copy /d/x deep", -EINVAL);
    parse_err("copy /d/x manual shallow", -EINVAL);
    parse_err("copy /d/x shallow shallow", -EINVAL);
    parse_err("copy /d/x manual manual", -EINVAL);
    parse_err("copy /d/x shallow manual extra", -EINVAL);
    parse_err("copy /d/x\n/e/y", -EINVAL);
    parse_err("finish now", -EINVAL);
    /* a path as long as PATH_MAX is refused, one shorter taken */
    char buf[CFS_CTL_MAX_WRITE + 1];
    strcpy(buf, "copy /");
    size_t off = strlen(buf);
    memset(buf + off, 'a', 4096 - off);
    buf[4096] = '\0';
    /* "copy " + 4091-byte path = 4096 bytes in all: the path is short of
     * PATH_MAX, taken */
    c = parse_ok_n(buf, 4096, CFS_CTL_COPY);
    assert_int_equal(strlen(c.dest), 4091);
}

static void test_op_names_and_usage(void **state)
{
    (void)state;
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_ABORT), "abort");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_PIVOT), "pivot");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_PIVOT_MANUAL), "pivot manual");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_PIVOT_AUTO), "pivot auto");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_BANDWIDTH), "bandwidth");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_COPY), "copy");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_FINISH), "finish");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_REVERT), "revert");
    assert_string_equal(cfs_ctl_op_to_string(CFS_CTL_OP_MAX), "?");

    /* every command's name parses back to it, and the usage lists it at
     * the start of a line */
    for (int op = 0; op < CFS_CTL_OP_MAX; op++) {
        const char *name = cfs_ctl_op_to_string(op);
        _cleanup_free_ char *cmd = cfs_xasprintf(
            "%s%s\n", name, op == CFS_CTL_BANDWIDTH ? " 1M"
                            : op == CFS_CTL_MERGE   ? " s1 pull"
                            : op == CFS_CTL_COPY    ? " /tmp/x.qcow2"
                            : op == CFS_CTL_REVERT  ? " s1" : "");
        struct cfs_ctl_cmd c;
        assert_int_equal(cfs_ctl_parse(cmd, strlen(cmd), &c, NULL), 0);
        assert_int_equal(c.op, op);
        _cleanup_free_ char *line = cfs_xasprintf("\n%s ", name);
        _cleanup_free_ char *usage = cfs_xasprintf("\n%s", cfs_ctl_usage);
        if (!strstr(usage, line))
            fail_msg("usage lacks \"%s\":\n%s", name, cfs_ctl_usage);
    }
    /* one newline at the end, no empty line */
    size_t n = strlen(cfs_ctl_usage);
    assert_true(n > 0 && cfs_ctl_usage[n - 1] == '\n');
    assert_null(strstr(cfs_ctl_usage, "\n\n"));
}

/* ---- what reading ctl shows ------------------------------------------------ */

static char *render(const struct cfs_disk_state *s, uint64_t def)
{
    struct cfs_buf b = {0};
    cfs_render_ctl(&b, s, def);
    return cfs_buf_steal(&b);
}

static void test_render(void **state)
{
    (void)state;
    /* a disk that never had a job or a setting */
    _cleanup_free_ char *plain = render(NULL, 0);
    _cleanup_free_ char *want = cfs_xasprintf(
        "pivot:     auto\nbandwidth: unlimited\n\n%s", cfs_ctl_usage);
    assert_string_equal(plain, want);

    /* the -o bandwidth default while no job runs */
    struct cfs_disk_state s = {0};
    _cleanup_free_ char *def = render(&s, 10ull << 20);
    assert_non_null(strstr(def, "pivot:     auto\nbandwidth: 10.0MiB/s\n\n"));

    /* pivot manual; a running job's own limit wins over the default,
     * even when it is unlimited */
    s.settings.pivot_manual = true;
    s.job.phase = CFS_PHASE_RUNNING;
    s.job.bandwidth = 1ull << 20;
    _cleanup_free_ char *run = render(&s, 10ull << 20);
    assert_non_null(strstr(run, "pivot:     manual\nbandwidth: 1.0MiB/s\n\n"));
    for (enum cfs_job_phase ph = CFS_PHASE_STARTING; ph <= CFS_PHASE_CLEANUP; ph++) {
        s.job.phase = ph;
        s.job.bandwidth = 0;
        _cleanup_free_ char *r = render(&s, 10ull << 20);
        if (!strstr(r, "bandwidth: unlimited\n"))
            fail_msg("phase %s: %s", cfs_job_phase_to_string(ph), r);
    }
    /* a job that ended: the default again */
    s.job.phase = CFS_PHASE_COMPLETED;
    s.job.bandwidth = 1ull << 20;
    _cleanup_free_ char *done = render(&s, 0);
    assert_non_null(strstr(done, "bandwidth: unlimited\n"));
    /* the same state, the same bytes */
    _cleanup_free_ char *again = render(&s, 0);
    assert_string_equal(done, again);
}

struct fx {
    char dir[64];
    struct cfs_backend *be;
    struct cfs_engine *e;
};

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

static struct cfs_path P(const char *s)
{
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(s, &p), 0);
    return p;
}

/* ctl through the engine's read side: listed, sized, rendered from the
 * tree (the -o bandwidth default, the disk's settings, a running job). */
static void test_engine_reads_ctl(void **state)
{
    (void)state;
    struct fx f = {0};
    strcpy(f.dir, "/tmp/cfs-ctl-XXXXXX");
    assert_non_null(mkdtemp(f.dir));
    _cleanup_free_ char *base = cfs_xasprintf("%s/base.qcow2", f.dir);
    _cleanup_free_ char *top = cfs_xasprintf("%s/s1.qcow2", f.dir);
    _cleanup_free_ char *st = cfs_xasprintf("%s/state", f.dir);
    touch(base);
    touch(top);
    f.be = cfs_fake_backend_new();
    const char *chain[] = {top, base};
    const char *meta[] = {"s1", NULL};
    cfs_fake_add_simple(f.be, "vm1", CFS_DOM_RUNNING, "vda", chain, meta, 2);
    struct cfs_engine_config cfg = {.state_dir = st, .bandwidth = 10ull << 20};
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, f.be, &f.e, &err), 0);
    assert_int_equal(cfs_engine_start(f.e, false, &err), 0);

    char **names = NULL;
    struct cfs_path disk = P("/vm1/vda");
    assert_int_equal(cfs_engine_readdir(f.e, &disk, &names), 0);
    assert_true(cfs_strv_contains(names, "ctl"));
    cfs_strv_free(names);

    struct cfs_path p = P("/vm1/vda/ctl");
    struct cfs_buf b = {0};
    assert_int_equal(cfs_engine_read(f.e, &p, &b), 0);
    _cleanup_free_ char *want = cfs_xasprintf(
        "pivot:     auto\nbandwidth: 10.0MiB/s\n\n%s", cfs_ctl_usage);
    assert_string_equal(b.data, want);
    struct cfs_node_attr a;
    assert_int_equal(cfs_engine_getattr(f.e, &p, &a), 0);
    assert_false(a.is_dir);
    assert_int_equal(a.size, b.len);
    assert_int_equal(a.nlink, 1);
    cfs_buf_free(&b);
    assert_int_equal(cfs_engine_readdir(f.e, &p, &names), -ENOTDIR);

    /* the disk's settings and its running job, as the engine keeps them */
    struct cfs_tree *t = cfs_engine_tree(f.e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(t, "vm1", "vda");
    s->settings.pivot_manual = true;
    s->job.phase = CFS_PHASE_RUNNING;
    s->job.type = CFS_JOB_SNAPSHOT; /* (keeps s1 listed) */
    s->job.bandwidth = 3ull << 20;
    pthread_mutex_unlock(&t->lock);
    assert_int_equal(cfs_engine_read(f.e, &p, &b), 0);
    assert_non_null(strstr(b.data, "pivot:     manual\nbandwidth: 3.0MiB/s\n"));
    cfs_buf_free(&b);

    /* no ctl where there is no disk */
    struct cfs_path nop = P("/vm1/vdz/ctl");
    assert_int_equal(cfs_engine_read(f.e, &nop, &b), -ENOENT);
    nop = P("/vm9/vda/ctl");
    assert_int_equal(cfs_engine_getattr(f.e, &nop, &a), -ENOENT);

    pthread_mutex_lock(&t->lock);
    s->job.phase = CFS_PHASE_NONE;
    pthread_mutex_unlock(&t->lock);
    cfs_engine_free(f.e);
    test_tmpdir_remove(f.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_command),
        cmocka_unit_test(test_merge_override),
        cmocka_unit_test(test_revert),
        cmocka_unit_test(test_as_shells_write),
        cmocka_unit_test(test_unknown_and_malformed),
        cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_sizes_of_writes),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_size_parse),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_op_names_and_usage),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_engine_reads_ctl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
