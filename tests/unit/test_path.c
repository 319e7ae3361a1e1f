/* test_path.c — path.c and the node table (nodes.c): every node kind,
 * what is not a node, the 255-byte component limit, and that every row
 * of the table is whole. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "chainfs/nodes.h"
#include "chainfs/path.h"
#include "chainfs/util.h"

static struct cfs_path parse_ok(const char *path, enum cfs_node_kind kind)
{
    struct cfs_path p;
    int r = cfs_path_parse(path, &p);

    if (r != 0)
        fail_msg("\"%s\": %d", path, r);
    if (p.kind != kind)
        fail_msg("\"%s\": kind %d, want %d", path, p.kind, kind);
    return p;
}

static void parse_err(const char *path, int err)
{
    struct cfs_path p = { .kind = CFS_NODE_ROOT };
    int r = cfs_path_parse(path, &p);

    if (r != err)
        fail_msg("\"%s\": %d, want %d", path, r, err);
}

static void test_root(void **state)
{
    (void)state;
    struct cfs_path p = parse_ok("/", CFS_NODE_ROOT);
    assert_string_equal(p.dom, "");
    assert_string_equal(p.disk, "");
    assert_string_equal(p.snap, "");
    parse_ok("//", CFS_NODE_ROOT);
}

static void test_every_kind(void **state)
{
    (void)state;
    struct cfs_path p;

    p = parse_ok("/web01", CFS_NODE_DOMAIN);
    assert_string_equal(p.dom, "web01");
    assert_string_equal(p.disk, "");

    p = parse_ok("/web01/vda", CFS_NODE_DISK);
    assert_string_equal(p.dom, "web01");
    assert_string_equal(p.disk, "vda");

    parse_ok("/web01/vda/chain", CFS_NODE_CHAIN);
    parse_ok("/web01/vda/chain.json", CFS_NODE_CHAIN_JSON);
    parse_ok("/web01/vda/job", CFS_NODE_JOB);
    parse_ok("/web01/vda/job.json", CFS_NODE_JOB_JSON);
    parse_ok("/web01/vda/wait", CFS_NODE_WAIT);
    parse_ok("/web01/vda/ctl", CFS_NODE_CTL);
    p = parse_ok("/web01/vda/snapshots", CFS_NODE_SNAPDIR);
    assert_string_equal(p.disk, "vda");
    assert_string_equal(p.snap, "");

    p = parse_ok("/web01/vda/snapshots/s1", CFS_NODE_SNAPSHOT);
    assert_string_equal(p.dom, "web01");
    assert_string_equal(p.disk, "vda");
    assert_string_equal(p.snap, "s1");

    p = parse_ok("/web01/vda/snapshots/s1/info", CFS_NODE_INFO);
    assert_string_equal(p.snap, "s1");
    p = parse_ok("/web01/vda/snapshots/s1/info.json", CFS_NODE_INFO_JSON);
    assert_string_equal(p.snap, "s1");

    /* issue 10: the domain's own nodes; no disk in them */
    p = parse_ok("/web01/job", CFS_NODE_DOM_JOB);
    assert_string_equal(p.dom, "web01");
    assert_string_equal(p.disk, "");
    parse_ok("/web01/job.json", CFS_NODE_DOM_JOB_JSON);
    parse_ok("/web01/wait", CFS_NODE_DOM_WAIT);
    parse_ok("/web01/ctl", CFS_NODE_DOM_CTL);
    p = parse_ok("/web01/snapshots", CFS_NODE_DOM_SNAPDIR);
    assert_string_equal(p.disk, "");
    assert_string_equal(p.snap, "");
    p = parse_ok("/web01/snapshots/s1", CFS_NODE_DOM_SNAPSHOT);
    assert_string_equal(p.dom, "web01");
    assert_string_equal(p.disk, "");
    assert_string_equal(p.snap, "s1");
    p = parse_ok("/web01/snapshots/s1/info", CFS_NODE_DOM_INFO);
    assert_string_equal(p.snap, "s1");
    assert_string_equal(p.disk, "");
    p = parse_ok("/web01/snapshots/s1/info.json", CFS_NODE_DOM_INFO_JSON);
    assert_string_equal(p.snap, "s1");

    /* issue 11: chainfs's own directory, no domain's */
    p = parse_ok("/.chainfs", CFS_NODE_OWN);
    assert_string_equal(p.dom, "");
    p = parse_ok("/.chainfs/metrics.prom", CFS_NODE_METRICS);
    assert_string_equal(p.dom, "");
    assert_string_equal(p.disk, "");
    parse_err("/.chainfs/x", -ENOENT);
    parse_err("/.chainfs/metrics.prom/x", -ENOENT);
    /* only at the root: elsewhere it is a disk's or a snapshot's name */
    parse_ok("/web01/.chainfs", CFS_NODE_DISK);
    parse_ok("/web01/vda/snapshots/.chainfs", CFS_NODE_SNAPSHOT);
    parse_ok("/.chainfsx", CFS_NODE_DOMAIN);
}

static void test_names_are_not_keywords(void **state)
{
    (void)state;
    struct cfs_path p;

    /* domains, disks and snapshots may be called anything */
    p = parse_ok("/snapshots/chain", CFS_NODE_DISK);
    assert_string_equal(p.dom, "snapshots");
    assert_string_equal(p.disk, "chain");
    p = parse_ok("/a b/vda/snapshots/chain", CFS_NODE_SNAPSHOT);
    assert_string_equal(p.dom, "a b");
    assert_string_equal(p.snap, "chain");
    p = parse_ok("/d/vda/snapshots/x~3", CFS_NODE_SNAPSHOT);
    assert_string_equal(p.snap, "x~3");
    p = parse_ok("/d/vda/snapshots/nightly 2026-01-01/info", CFS_NODE_INFO);
    assert_string_equal(p.snap, "nightly 2026-01-01");
}

static void test_not_a_node(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "web01",                               /* relative */
        "/web01/vda/bogus",
        "/web01/vda/Chain",                    /* case matters */
        "/web01/vda/chain.JSON",
        "/web01/vda/info",                     /* info lives per snapshot */
        "/web01/vda/chain/x",                  /* under a file */
        "/web01/vda/wait/x",
        "/web01/vda/ctl/x",
        "/web01/vda/CTL",
        "/web01/ctl/x/y",                      /* a disk "ctl": no such file */
        "/web01/vda/snapshots/s1/ctl",
        "/web01/vda/snapshots/s1/other",
        "/web01/vda/snapshots/s1/chain",
        "/web01/vda/snapshots/s1/info/x",      /* too deep */
        "/web01/vda/snapshots/s1/info.json/x/y",
        "/.",
        "/..",
        "/web01/./vda",
        "/web01/vda/snapshots/..",
        "/web01/vda/snapshots/.",
        "/web01/snapshots/s1/disk.raw",        /* one per disk, not here */
        "/web01/snapshots/s1/chain",
        "/web01/snapshots/s1/info/x",
        "/web01/job/x",
    };
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        parse_err(bad[i], -ENOENT);
    parse_err(NULL, -ENOENT);
}

static void test_slashes(void **state)
{
    (void)state;
    struct cfs_path p;

    p = parse_ok("/web01/", CFS_NODE_DOMAIN);
    assert_string_equal(p.dom, "web01");
    p = parse_ok("//web01//vda//", CFS_NODE_DISK);
    assert_string_equal(p.disk, "vda");
    p = parse_ok("/web01/vda/snapshots/s1/", CFS_NODE_SNAPSHOT);
    assert_string_equal(p.snap, "s1");
}

static void test_component_lengths(void **state)
{
    (void)state;
    char c255[256], c256[257];
    memset(c255, 'x', 255);
    c255[255] = '\0';
    memset(c256, 'x', 256);
    c256[256] = '\0';

    struct cfs_path p;
    _cleanup_free_ char *d255 = cfs_xasprintf("/%s", c255);
    p = parse_ok(d255, CFS_NODE_DOMAIN);
    assert_int_equal(strlen(p.dom), 255);

    _cleanup_free_ char *all255 = cfs_xasprintf("/%s/%s/snapshots/%s/info", c255, c255, c255);
    p = parse_ok(all255, CFS_NODE_INFO);
    assert_string_equal(p.dom, c255);
    assert_string_equal(p.disk, c255);
    assert_string_equal(p.snap, c255);

    _cleanup_free_ char *d256 = cfs_xasprintf("/%s", c256);
    parse_err(d256, -ENAMETOOLONG);
    _cleanup_free_ char *k256 = cfs_xasprintf("/d/%s", c256);
    parse_err(k256, -ENAMETOOLONG);
    _cleanup_free_ char *f256 = cfs_xasprintf("/d/vda/%s", c256);
    parse_err(f256, -ENAMETOOLONG);
    _cleanup_free_ char *s256 = cfs_xasprintf("/d/vda/snapshots/%s", c256);
    parse_err(s256, -ENAMETOOLONG);
    _cleanup_free_ char *i256 = cfs_xasprintf("/d/vda/snapshots/%s/info", c256);
    parse_err(i256, -ENAMETOOLONG);
    _cleanup_free_ char *long1k = cfs_xasprintf("/d/vda/snapshots/%s%s%s%s", c256, c256, c256, c256);
    parse_err(long1k, -ENAMETOOLONG);
}

static void test_out_untouched_on_error(void **state)
{
    (void)state;
    struct cfs_path p = { .kind = CFS_NODE_CHAIN, .dom = "keep" };

    assert_int_equal(cfs_path_parse("/d/vda/nope", &p), -ENOENT);
    assert_int_equal(p.kind, CFS_NODE_CHAIN);
    assert_string_equal(p.dom, "keep");
}

/* The names a directory of kind PARENT has, as the node table lists them. */
static char *fixed_names(enum cfs_node_kind parent)
{
    struct cfs_buf b = {0};
    for (int k = 0; k < CFS_NODE_KIND_MAX; k++) {
        const struct cfs_node_type *t = cfs_node_type(k);
        if (t->parent == parent && t->name)
            cfs_buf_printf(&b, "%s%s", b.len ? " " : "", t->name);
    }
    return cfs_buf_steal(&b);
}

static void test_entries(void **state)
{
    (void)state;
    _cleanup_free_ char *disk = fixed_names(CFS_NODE_DISK);
    assert_string_equal(disk, "chain chain.json job job.json wait ctl snapshots");
    _cleanup_free_ char *snap = fixed_names(CFS_NODE_SNAPSHOT);
    assert_string_equal(snap, "info info.json disk.raw");
    _cleanup_free_ char *dom = fixed_names(CFS_NODE_DOMAIN);
    assert_string_equal(dom, "job job.json wait ctl snapshots");
    _cleanup_free_ char *dsnap = fixed_names(CFS_NODE_DOM_SNAPSHOT);
    assert_string_equal(dsnap, "info info.json");
    _cleanup_free_ char *root = fixed_names(CFS_NODE_ROOT);
    assert_string_equal(root, ".chainfs");
    _cleanup_free_ char *own = fixed_names(CFS_NODE_OWN);
    assert_string_equal(own, "metrics.prom");
    for (enum cfs_node_kind k = CFS_NODE_CHAIN; k < CFS_NODE_KIND_MAX; k++) {
        const struct cfs_node_type *t = cfs_node_type(k);
        if (!t->name)
            continue;
        /* every fixed name parses to its kind, under its parent */
        const char *fmt = t->parent == CFS_NODE_DISK       ? "/d/vda/%s"
                          : t->parent == CFS_NODE_SNAPSHOT ? "/d/vda/snapshots/s/%s"
                          : t->parent == CFS_NODE_DOMAIN   ? "/d/%s"
                          : t->parent == CFS_NODE_ROOT     ? "/%s"
                          : t->parent == CFS_NODE_OWN      ? "/.chainfs/%s"
                                                           : "/d/snapshots/s/%s";
        _cleanup_free_ char *path = cfs_xasprintf(fmt, t->name);
        parse_ok(path, k);
        assert_int_equal(cfs_node_child(t->parent, t->name, strlen(t->name)), k);
    }
    /* names by the world where any name goes, nothing elsewhere */
    assert_int_equal(cfs_node_child(CFS_NODE_ROOT, "ctl", 3), CFS_NODE_DOMAIN);
    assert_int_equal(cfs_node_child(CFS_NODE_DOMAIN, "ctl", 3), CFS_NODE_DOM_CTL);
    assert_int_equal(cfs_node_child(CFS_NODE_DOMAIN, "vda", 3), CFS_NODE_DISK);
    assert_int_equal(cfs_node_child(CFS_NODE_DOM_SNAPDIR, "ctl", 3), CFS_NODE_DOM_SNAPSHOT);
    assert_int_equal(cfs_node_child(CFS_NODE_DOM_SNAPSHOT, "disk.raw", 8), CFS_NODE_INVALID);
    assert_int_equal(cfs_node_child(CFS_NODE_SNAPDIR, "ctl", 3), CFS_NODE_SNAPSHOT);
    assert_int_equal(cfs_node_child(CFS_NODE_DISK, "ctlx", 4), CFS_NODE_INVALID);
    assert_int_equal(cfs_node_child(CFS_NODE_DISK, "ctl", 2), CFS_NODE_INVALID);
    assert_int_equal(cfs_node_child(CFS_NODE_SNAPSHOT, "ctl", 3), CFS_NODE_INVALID);
    assert_int_equal(cfs_node_child(CFS_NODE_CTL, "x", 1), CFS_NODE_INVALID);
    assert_int_equal(cfs_node_child(CFS_NODE_INVALID, "x", 1), CFS_NODE_INVALID);
    assert_int_equal(cfs_node_child(CFS_NODE_KIND_MAX, "x", 1), CFS_NODE_INVALID);
}

/* Every row is complete: a file renders (disk.raw is served instead), a
 * directory lists, only ctl takes writes, only wait blocks, only
 * snapshots/ and ctl are for those who may change snapshots, and
 * disk.raw is readable by its owner only. */
static void test_table(void **state)
{
    (void)state;
    for (int k = CFS_NODE_ROOT; k < CFS_NODE_KIND_MAX; k++) {
        const struct cfs_node_type *t = cfs_node_type(k);
        assert_int_equal(t->dir, !cfs_node_is_file(k));
        assert_int_equal(t->image, k == CFS_NODE_DISK_RAW);
        assert_true(t->dir      ? t->list && !t->render
                    : t->image ? !t->render && !t->list
                               : t->render && !t->list);
        assert_int_equal(t->write != NULL, k == CFS_NODE_CTL || k == CFS_NODE_DOM_CTL);
        assert_int_equal(t->blocks, k == CFS_NODE_WAIT || k == CFS_NODE_DOM_WAIT);
        assert_int_equal(t->managed, k == CFS_NODE_CTL || k == CFS_NODE_SNAPDIR ||
                                     k == CFS_NODE_DOM_CTL || k == CFS_NODE_DOM_SNAPDIR);
        assert_int_equal(t->mkdir_rmdir, k == CFS_NODE_SNAPDIR || k == CFS_NODE_DOM_SNAPDIR);
        unsigned want = t->dir     ? (t->managed ? 0755 : 0555)
                        : t->image ? 0400
                                   : (t->managed ? 0644 : 0444);
        assert_int_equal(t->mode, want);
        assert_int_equal(t->parent == CFS_NODE_INVALID, k == CFS_NODE_ROOT);
        /* only chainfs's own directory is left out of its listing */
        assert_int_equal(t->hidden, k == CFS_NODE_OWN);
    }
    assert_false(cfs_node_is_file(CFS_NODE_INVALID));
    assert_false(cfs_node_is_file(CFS_NODE_KIND_MAX));
    assert_null(cfs_node_type(CFS_NODE_KIND_MAX)->render);
    assert_null(cfs_node_type(-1)->list);
}

static void test_is_file(void **state)
{
    (void)state;
    for (int k = 0; k < CFS_NODE_KIND_MAX; k++) {
        bool want = k == CFS_NODE_CHAIN || k == CFS_NODE_CHAIN_JSON ||
                    k == CFS_NODE_JOB || k == CFS_NODE_JOB_JSON ||
                    k == CFS_NODE_WAIT || k == CFS_NODE_CTL ||
                    k == CFS_NODE_INFO || k == CFS_NODE_INFO_JSON ||
                    k == CFS_NODE_DISK_RAW || k == CFS_NODE_DOM_JOB ||
                    k == CFS_NODE_DOM_JOB_JSON || k == CFS_NODE_DOM_WAIT ||
                    k == CFS_NODE_DOM_CTL || k == CFS_NODE_DOM_INFO ||
                    k == CFS_NODE_DOM_INFO_JSON || k == CFS_NODE_METRICS;
        assert_int_equal(cfs_node_is_file(k), want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_root),
        cmocka_unit_test(test_every_kind),
        cmocka_unit_test(test_names_are_not_keywords),
        cmocka_unit_test(test_not_a_node),
        cmocka_unit_test(test_slashes),
        cmocka_unit_test(test_component_lengths),
        cmocka_unit_test(test_out_untouched_on_error),
        cmocka_unit_test(test_entries),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_is_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
