/* test_names.c — names.c: name validation, overlay file names and the
 * display name of every layer (cfs_domain_resolve_names). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "chainfs/model.h"
#include "chainfs/names.h"
#include "chainfs/util.h"

static char *repeat(char c, size_t n)
{
    char *s = cfs_xmalloc(n + 1);

    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* ---- cfs_name_validate ------------------------------------------------------ */

static void test_validate_ok(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "a", "s1", "A", "0", "_x", "before-upgrade", "v1.2.3", "x.", "x-",
        "a_b.c-D9", "snap..shot", "9-9",
    };
    for (size_t i = 0; i < ELEMENTSOF(ok); i++)
        assert_int_equal(cfs_name_validate(ok[i]), 0);
}

static void test_validate_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", ".x", "-x", ".", "..", "a b", "a/b", "/", "a~1", "a:b", "a\tb",
        "a\nb", "snap*", "é", "x\xff", " a", "a ",
    };
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        assert_int_equal(cfs_name_validate(bad[i]), -EINVAL);
    assert_int_equal(cfs_name_validate(NULL), -EINVAL);
}

static void test_validate_lengths(void **state)
{
    (void)state;
    _cleanup_free_ char *n64 = repeat('a', 64);
    _cleanup_free_ char *n65 = repeat('a', 65);
    _cleanup_free_ char *n255 = repeat('a', 255);
    _cleanup_free_ char *n256 = repeat('a', 256);
    _cleanup_free_ char *n4096 = repeat('a', 4096);
    _cleanup_free_ char *bad256 = repeat(' ', 256);
    _cleanup_free_ char *dot256 = repeat('.', 256);

    assert_int_equal(cfs_name_validate(n64), 0);
    assert_int_equal(cfs_name_validate(n65), -EINVAL);
    assert_int_equal(cfs_name_validate(n255), -EINVAL);
    assert_int_equal(cfs_name_validate(n256), -ENAMETOOLONG);
    assert_int_equal(cfs_name_validate(n4096), -ENAMETOOLONG);
    /* length is checked before the characters */
    assert_int_equal(cfs_name_validate(bad256), -ENAMETOOLONG);
    assert_int_equal(cfs_name_validate(dot256), -ENAMETOOLONG);

    /* 64 characters means 64 bytes: 32 two-byte characters are invalid
     * anyway, so the byte limit never bites a valid name. */
    _cleanup_free_ char *n63 = repeat('b', 63);
    _cleanup_free_ char *n63dot = cfs_xasprintf("%s.", n63);
    assert_int_equal(cfs_name_validate(n63dot), 0);
}

/* ---- overlay file names -------------------------------------------------- */

static void test_overlay_filename(void **state)
{
    (void)state;
    _cleanup_free_ char *a = cfs_overlay_filename("web01", "vda", "s1");
    assert_string_equal(a, "web01.vda.s1.qcow2");

    _cleanup_free_ char *b = cfs_overlay_filename("my vm/x:y", "sdb", "before.up");
    assert_string_equal(b, "my_vm_x_y.sdb.before.up.qcow2");

    /* each unsafe byte becomes one '_' */
    _cleanup_free_ char *c = cfs_overlay_filename("d\xc3\xa9", "vda", "s");
    assert_string_equal(c, "d__.vda.s.qcow2");

    _cleanup_free_ char *d = cfs_overlay_filename("a.b-c_D", "hdc", "n");
    assert_string_equal(d, "a.b-c_D.hdc.n.qcow2");
}

static void test_overlay_parse(void **state)
{
    (void)state;
    _cleanup_free_ char *a = cfs_overlay_parse_filename("web01", "vda", "web01.vda.s1.qcow2");
    assert_string_equal(a, "s1");

    /* names with dots survive */
    _cleanup_free_ char *b = cfs_overlay_parse_filename("web01", "vda", "web01.vda.v1.2.qcow2");
    assert_string_equal(b, "v1.2");

    /* the sanitised domain name is what is in the file name */
    _cleanup_free_ char *c = cfs_overlay_parse_filename("my vm", "vda", "my_vm.vda.s1.qcow2");
    assert_string_equal(c, "s1");

    static const char *const no[] = {
        "web01.vdb.s1.qcow2",     /* other disk */
        "web02.vda.s1.qcow2",     /* other domain */
        "web01.vda.s1.qcow",      /* wrong extension */
        "web01.vda.s1",           /* no extension */
        "web01.vda..qcow2",       /* empty name */
        "web01.vda.qcow2",        /* no name at all */
        "web01.vda..x.qcow2",     /* name starts with '.' */
        "web01.vda.-x.qcow2",     /* name starts with '-' */
        "web01.vda.a b.qcow2",    /* invalid character */
        "xweb01.vda.s1.qcow2",
        "web01.qcow2",
        "",
    };
    for (size_t i = 0; i < ELEMENTSOF(no); i++) {
        char *r = cfs_overlay_parse_filename("web01", "vda", no[i]);
        if (r)
            fail_msg("\"%s\" parsed as \"%s\"", no[i], r);
    }
    assert_null(cfs_overlay_parse_filename("web01", "vda", NULL));

    _cleanup_free_ char *n65 = repeat('z', 65);
    _cleanup_free_ char *f65 = cfs_overlay_filename("web01", "vda", n65);
    assert_null(cfs_overlay_parse_filename("web01", "vda", f65));
}

static void test_overlay_roundtrip(void **state)
{
    (void)state;
    static const char *const doms[] = { "web01", "a b", "x.y", "ü", "-d" };
    static const char *const names[] = { "s1", "a.b", "Z_9-", "x" };

    for (size_t i = 0; i < ELEMENTSOF(doms); i++)
        for (size_t j = 0; j < ELEMENTSOF(names); j++) {
            _cleanup_free_ char *f = cfs_overlay_filename(doms[i], "vda", names[j]);
            _cleanup_free_ char *n = cfs_overlay_parse_filename(doms[i], "vda", f);
            assert_non_null(n);
            assert_string_equal(n, names[j]);
        }
}

/* ---- cfs_domain_resolve_names ---------------------------------------------- */

/* A domain with one disk "vda" whose chain is PATHS (active first); META
 * may be NULL or hold NULLs. */
static struct cfs_domain *make_domain(const char *dom, const char *const *paths,
                                      const char *const *meta, size_t n)
{
    struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));

    d->name = cfs_xstrdup(dom);
    d->n_disks = 1;
    d->disks = cfs_xcalloc(1, sizeof(struct cfs_disk));
    d->disks[0].target = cfs_xstrdup("vda");
    d->disks[0].n_layers = n;
    d->disks[0].layers = cfs_xcalloc(n ? n : 1, sizeof(struct cfs_layer));
    for (size_t i = 0; i < n; i++) {
        d->disks[0].layers[i].path = cfs_xstrdup(paths[i]);
        d->disks[0].layers[i].format = cfs_xstrdup("qcow2");
        d->disks[0].layers[i].meta_name = meta ? cfs_xstrdup(meta[i]) : NULL;
    }
    return d;
}

static void assert_layer(const struct cfs_domain *d, size_t i, const char *name,
                         enum cfs_name_source src)
{
    const struct cfs_layer *l = &d->disks[0].layers[i];

    if (!name) {
        assert_null(l->name);
    } else {
        assert_non_null(l->name);
        assert_string_equal(l->name, name);
    }
    assert_int_equal(l->name_source, src);
}

static void assert_unique(const struct cfs_disk *disk)
{
    for (size_t i = 0; i < disk->n_layers; i++)
        for (size_t j = i + 1; j < disk->n_layers; j++)
            if (disk->layers[i].name && disk->layers[j].name)
                assert_string_not_equal(disk->layers[i].name, disk->layers[j].name);
}

static void test_resolve_single_layer(void **state)
{
    (void)state;
    const char *const paths[] = { "/img/web01.vda.s1.qcow2" };
    const char *const meta[] = { "s1" };
    _cleanup_domain_ struct cfs_domain *d = make_domain("web01", paths, meta, 1);

    cfs_domain_resolve_names(d);
    /* a one-layer chain is only a base: no snapshots */
    assert_layer(d, 0, NULL, CFS_NAME_NONE);
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "s1"), -1);
}

static void test_resolve_sources(void **state)
{
    (void)state;
    const char *const paths[] = {
        "/img/web01.vda.s3.qcow2",   /* chainfs name */
        "/img/web01.vda.s2.qcow2",   /* chainfs name, but metadata wins */
        "/other/overlay-1.qcow2",    /* plain file */
        "/img/web01.qcow2",          /* base */
    };
    const char *const meta[] = { NULL, "before-upgrade", NULL, "base-meta" };
    _cleanup_domain_ struct cfs_domain *d = make_domain("web01", paths, meta, 4);

    cfs_domain_resolve_names(d);
    assert_layer(d, 0, "s3", CFS_NAME_CHAINFS);
    assert_layer(d, 1, "before-upgrade", CFS_NAME_METADATA);
    assert_layer(d, 2, "overlay-1", CFS_NAME_FILENAME);
    assert_layer(d, 3, NULL, CFS_NAME_NONE);

    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "s3"), 0);
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "before-upgrade"), 1);
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "s2"), -1);
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "overlay-1"), 2);
}

static void test_resolve_chainfs_name_needs_own_domain(void **state)
{
    (void)state;
    /* A file chainfs made for another domain/disk is just a file name. */
    const char *const paths[] = {
        "/img/web02.vda.s1.qcow2", "/img/web01.vdb.s2.qcow2", "/img/base.img",
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("web01", paths, NULL, 3);

    cfs_domain_resolve_names(d);
    assert_layer(d, 0, "web02.vda.s1", CFS_NAME_FILENAME);
    assert_layer(d, 1, "web01.vdb.s2", CFS_NAME_FILENAME);
    assert_layer(d, 2, NULL, CFS_NAME_NONE);
}

static void test_resolve_extensions(void **state)
{
    (void)state;
    const char *const paths[] = {
        "/i/a.qcow2", "/i/b.qcow", "/i/c.img", "/i/d.raw", "/i/e.qcow2.qcow2",
        "/i/.qcow2", "/dev/mapper/vg-snap", "relative.img", "/i/f.QCOW2", "/i/base",
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", paths, NULL, 10);

    cfs_domain_resolve_names(d);
    assert_layer(d, 0, "a", CFS_NAME_FILENAME);
    assert_layer(d, 1, "b", CFS_NAME_FILENAME);
    assert_layer(d, 2, "c", CFS_NAME_FILENAME);
    assert_layer(d, 3, "d.raw", CFS_NAME_FILENAME);
    assert_layer(d, 4, "e.qcow2", CFS_NAME_FILENAME);
    assert_layer(d, 5, ".qcow2", CFS_NAME_FILENAME); /* nothing left to strip to */
    assert_layer(d, 6, "vg-snap", CFS_NAME_FILENAME);
    assert_layer(d, 7, "relative", CFS_NAME_FILENAME);
    assert_layer(d, 8, "f.QCOW2", CFS_NAME_FILENAME);
    assert_layer(d, 9, NULL, CFS_NAME_NONE);
}

static void test_resolve_unusable_meta_and_paths(void **state)
{
    (void)state;
    _cleanup_free_ char *long_meta = repeat('m', 256);
    const char *const paths[] = {
        "/i/one.qcow2", "/i/two.qcow2", "/i/three.qcow2", "/i/four.qcow2",
        "/i/dir/", "", "/i/base.qcow2",
    };
    const char *const meta[] = { "a/b", "", "..", long_meta, NULL, NULL, NULL };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", paths, meta, 7);

    cfs_domain_resolve_names(d);
    /* metadata names that cannot be a directory entry fall through */
    assert_layer(d, 0, "one", CFS_NAME_FILENAME);
    assert_layer(d, 1, "two", CFS_NAME_FILENAME);
    assert_layer(d, 2, "three", CFS_NAME_FILENAME);
    assert_layer(d, 3, "four", CFS_NAME_FILENAME);
    /* no basename at all: "layer", made unique like any other clash */
    assert_layer(d, 5, "layer", CFS_NAME_FILENAME);
    assert_layer(d, 4, "layer~4", CFS_NAME_FILENAME);
    assert_layer(d, 6, NULL, CFS_NAME_NONE);

    /* metadata names need not be valid mkdir names to be shown */
    const char *const p2[] = { "/i/x.qcow2", "/i/base.qcow2" };
    const char *const m2[] = { "nightly 2026-01-01", NULL };
    _cleanup_domain_ struct cfs_domain *d2 = make_domain("vm", p2, m2, 2);
    cfs_domain_resolve_names(d2);
    assert_layer(d2, 0, "nightly 2026-01-01", CFS_NAME_METADATA);
}

static void test_resolve_clash_same_source(void **state)
{
    (void)state;
    /* The same basename in different directories (e.g. per-day dirs). */
    const char *const paths[] = {
        "/d3/overlay.qcow2", "/d2/overlay.qcow2", "/d1/overlay.qcow2", "/base.qcow2",
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", paths, NULL, 4);

    cfs_domain_resolve_names(d);
    /* the deepest (oldest) keeps the plain name */
    assert_layer(d, 2, "overlay", CFS_NAME_FILENAME);
    assert_layer(d, 1, "overlay~1", CFS_NAME_FILENAME);
    assert_layer(d, 0, "overlay~0", CFS_NAME_FILENAME);
    assert_unique(&d->disks[0]);
    assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], "overlay~1"), 1);
}

static void test_resolve_clash_better_source_wins(void **state)
{
    (void)state;
    /* metadata "s1" on the deeper layer vs a file named s1 above it */
    const char *const p1[] = { "/i/s1.qcow2", "/i/x.qcow2", "/i/base.qcow2" };
    const char *const m1[] = { NULL, "s1", NULL };
    _cleanup_domain_ struct cfs_domain *d1 = make_domain("vm", p1, m1, 3);
    cfs_domain_resolve_names(d1);
    assert_layer(d1, 1, "s1", CFS_NAME_METADATA);
    assert_layer(d1, 0, "s1~0", CFS_NAME_FILENAME);

    /* metadata on the upper layer still beats a deeper file name */
    const char *const p2[] = { "/i/x.qcow2", "/i/s1.qcow2", "/i/base.qcow2" };
    const char *const m2[] = { "s1", NULL, NULL };
    _cleanup_domain_ struct cfs_domain *d2 = make_domain("vm", p2, m2, 3);
    cfs_domain_resolve_names(d2);
    assert_layer(d2, 0, "s1", CFS_NAME_METADATA);
    assert_layer(d2, 1, "s1~1", CFS_NAME_FILENAME);

    /* chainfs name beats a plain file name */
    const char *const p3[] = { "/i/vm.vda.s1.qcow2", "/i/s1.img", "/i/base.qcow2" };
    _cleanup_domain_ struct cfs_domain *d3 = make_domain("vm", p3, NULL, 3);
    cfs_domain_resolve_names(d3);
    assert_layer(d3, 0, "s1", CFS_NAME_CHAINFS);
    assert_layer(d3, 1, "s1~1", CFS_NAME_FILENAME);
}

static void test_resolve_clash_with_suffixed_literal(void **state)
{
    (void)state;
    /* Layer 0 would become "x~0", which layer 1 already is literally. */
    const char *const paths[] = {
        "/a/x.qcow2", "/a/x~0.qcow2", "/b/x.qcow2", "/a/base.qcow2",
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", paths, NULL, 4);

    cfs_domain_resolve_names(d);
    assert_layer(d, 2, "x", CFS_NAME_FILENAME);
    assert_layer(d, 1, "x~0", CFS_NAME_FILENAME);
    assert_layer(d, 0, "x~0~1", CFS_NAME_FILENAME);
    assert_unique(&d->disks[0]);
}

static void test_resolve_long_clash_fits(void **state)
{
    (void)state;
    _cleanup_free_ char *base = repeat('n', 250);
    _cleanup_free_ char *p0 = cfs_xasprintf("/a/%s", base);
    _cleanup_free_ char *p1 = cfs_xasprintf("/b/%s", base);
    const char *const paths[] = { p0, p1, "/base.qcow2" };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", paths, NULL, 3);

    cfs_domain_resolve_names(d);
    assert_string_equal(d->disks[0].layers[1].name, base);
    const char *n0 = d->disks[0].layers[0].name;
    assert_true(strlen(n0) <= 255);
    assert_string_equal(n0 + strlen(n0) - 2, "~0");
    assert_unique(&d->disks[0]);
}

static void test_resolve_many_clashes_unique(void **state)
{
    (void)state;
    /* Every overlay has the same file name, plus literal "~N" traps. */
    const char *paths[12];
    _cleanup_strv_ char **keep = NULL;
    for (size_t i = 0; i < 11; i++) {
        char *p = i % 3 == 0 ? cfs_xasprintf("/d%zu/s~%zu.qcow2", i, i + 1)
                             : cfs_xasprintf("/d%zu/s.qcow2", i);
        cfs_strv_push(&keep, p);
        paths[i] = p;
    }
    paths[11] = "/base.qcow2";
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", paths, NULL, 12);

    cfs_domain_resolve_names(d);
    assert_unique(&d->disks[0]);
    for (size_t i = 0; i < 11; i++) {
        assert_non_null(d->disks[0].layers[i].name);
        assert_int_equal(cfs_disk_find_snapshot(&d->disks[0], d->disks[0].layers[i].name),
                         (int)i);
    }
    assert_null(d->disks[0].layers[11].name);
}

static void test_resolve_is_idempotent(void **state)
{
    (void)state;
    const char *const paths[] = { "/i/x.qcow2", "/j/x.qcow2", "/base.qcow2" };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", paths, NULL, 3);

    cfs_domain_resolve_names(d);
    cfs_domain_resolve_names(d); /* frees the old names (ASan checks) */
    assert_layer(d, 1, "x", CFS_NAME_FILENAME);
    assert_layer(d, 0, "x~0", CFS_NAME_FILENAME);

    /* after the chain shrinks to the base, nothing is named any more */
    cfs_layer_clear(&d->disks[0].layers[0]);
    cfs_layer_clear(&d->disks[0].layers[1]);
    d->disks[0].layers[0] = d->disks[0].layers[2];
    d->disks[0].layers[2] = (struct cfs_layer){ 0 };
    d->disks[0].n_layers = 1;
    cfs_domain_resolve_names(d);
    assert_layer(d, 0, NULL, CFS_NAME_NONE);
}

static void test_resolve_per_disk(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));
    d->name = cfs_xstrdup("db");
    d->n_disks = 3;
    d->disks = cfs_xcalloc(3, sizeof(struct cfs_disk));
    const char *targets[] = { "vda", "vdb", "vdc" };
    for (size_t k = 0; k < 3; k++) {
        d->disks[k].target = cfs_xstrdup(targets[k]);
        d->disks[k].n_layers = 2;
        d->disks[k].layers = cfs_xcalloc(2, sizeof(struct cfs_layer));
        d->disks[k].layers[0].path = cfs_overlay_filename("db", targets[k], "nightly");
        d->disks[k].layers[1].path = cfs_xasprintf("/base-%s.qcow2", targets[k]);
    }
    d->disks[2].n_layers = 0; /* a disk with no chain is left alone */

    cfs_domain_resolve_names(d);
    for (size_t k = 0; k < 2; k++) {
        assert_string_equal(d->disks[k].layers[0].name, "nightly");
        assert_int_equal(d->disks[k].layers[0].name_source, CFS_NAME_CHAINFS);
        assert_null(d->disks[k].layers[1].name);
    }
    d->disks[2].n_layers = 2; /* so the destructor frees both */
    cfs_domain_resolve_names(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate_ok),
        cmocka_unit_test(test_validate_invalid),
        cmocka_unit_test(test_validate_lengths),
        cmocka_unit_test(test_overlay_filename),
        cmocka_unit_test(test_overlay_parse),
        cmocka_unit_test(test_overlay_roundtrip),
        cmocka_unit_test(test_resolve_single_layer),
        cmocka_unit_test(test_resolve_sources),
        cmocka_unit_test(test_resolve_chainfs_name_needs_own_domain),
        cmocka_unit_test(test_resolve_extensions),
        cmocka_unit_test(test_resolve_unusable_meta_and_paths),
        cmocka_unit_test(test_resolve_clash_same_source),
        cmocka_unit_test(test_resolve_clash_better_source_wins),
        cmocka_unit_test(test_resolve_clash_with_suffixed_literal),
        cmocka_unit_test(test_resolve_long_clash_fits),
        cmocka_unit_test(test_resolve_many_clashes_unique),
        cmocka_unit_test(test_resolve_is_idempotent),
        cmocka_unit_test(test_resolve_per_disk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
