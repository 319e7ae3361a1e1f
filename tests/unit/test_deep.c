/* test_deep.c — issue 12: a chain of 1,000 layers through what every
 * request or change runs (cfs_domain_resolve_names, cfs_disk_find_snapshot
 * for every snapshot, cfs_domain_dup, cfs_tree_put_domain, the merge plan),
 * with the work counted, not timed: strcmp() calls and allocations (the
 * test is linked with -Wl,--wrap for them; meson.build). Each count at
 * 1,000 layers must be at most ~10x (linear; the bound is 15x) the count at
 * 100: a loop over the chain per layer would make it ~100x. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "chainfs/merge_plan.h"
#include "chainfs/model.h"
#include "chainfs/names.h"
#include "chainfs/strmap.h"
#include "chainfs/tree.h"
#include "chainfs/util.h"

static unsigned long n_strcmp, n_alloc;

int __real_strcmp(const char *a, const char *b);
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);

int __wrap_strcmp(const char *a, const char *b);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

int __wrap_strcmp(const char *a, const char *b)
{
    n_strcmp++;
    return __real_strcmp(a, b);
}

void *__wrap_malloc(size_t n)
{
    n_alloc++;
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    n_alloc++;
    return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    n_alloc++;
    return __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    n_alloc++;
    return __real_strdup(s);
}

struct count {
    unsigned long cmp, alloc;
};

static struct count counted(void)
{
    return (struct count){ n_strcmp, n_alloc };
}

static struct count since(struct count c)
{
    return (struct count){ n_strcmp - c.cmp, n_alloc - c.alloc };
}

/* A domain "deep" with one disk of N layers: [0] active ... [N-1] base,
 * names from every source and many clashes: every 4th layer has libvirt
 * metadata "m<i>", every 4th+1 a chainfs file name, every 4th+2 the file
 * name "same.qcow2" (in its own directory: all clash), the others
 * "l<i>.qcow2". */
static struct cfs_domain *deep_domain(size_t n)
{
    struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));

    d->name = cfs_xstrdup("deep");
    d->n_disks = 1;
    d->disks = cfs_xcalloc(1, sizeof(*d->disks));
    struct cfs_disk *dk = &d->disks[0];
    dk->target = cfs_xstrdup("vda");
    dk->n_layers = n;
    dk->layers = cfs_xcalloc(n, sizeof(*dk->layers));
    for (size_t i = 0; i < n; i++) {
        struct cfs_layer *l = &dk->layers[i];

        switch (i % 4) {
        case 0:
            l->path = cfs_xasprintf("/img/l%zu.qcow2", i);
            l->meta_name = cfs_xasprintf("m%zu", i);
            break;
        case 1:
            l->path = cfs_xasprintf("/img/deep.vda.c%zu.qcow2", i);
            break;
        case 2:
            l->path = cfs_xasprintf("/img/d%zu/same.qcow2", i);
            break;
        default:
            l->path = cfs_xasprintf("/img/l%zu.qcow2", i);
        }
        l->format = cfs_xstrdup(i + 1 == n ? "raw" : "qcow2");
        l->index = (unsigned)(n - i);
        l->allocation = 65536;
        l->id.canonical = cfs_xstrdup(l->path);
    }
    return d;
}

struct deep_counts {
    struct count resolve, find, dup, put, plan;
};

static void run(size_t n, struct deep_counts *out)
{
    struct cfs_domain *d = deep_domain(n);
    struct cfs_disk *dk = &d->disks[0];
    struct count c;

    c = counted();
    cfs_domain_resolve_names(d);
    out->resolve = since(c);

    /* every layer above the base is named, uniquely */
    for (size_t i = 0; i + 1 < n; i++)
        assert_non_null(dk->layers[i].name);
    assert_null(dk->layers[n - 1].name);
    assert_string_equal(dk->layers[0].name, "m0");
    assert_string_equal(dk->layers[1].name, "c1");
    assert_string_equal(dk->layers[3].name, "l3");
    /* the deepest "same" keeps the plain name, the others get ~N */
    size_t deepest = (n - 2) / 4 * 4 + 2;
    if (deepest + 1 >= n)
        deepest -= 4;
    assert_string_equal(dk->layers[deepest].name, "same");
    assert_string_equal(dk->layers[2].name, "same~2");

    /* `stat` of every snapshot directory: one lookup each */
    c = counted();
    for (size_t i = 0; i + 1 < n; i++)
        assert_int_equal(cfs_disk_find_snapshot(dk, dk->layers[i].name), (int)i);
    assert_int_equal(cfs_disk_find_snapshot(dk, "absent"), -1);
    out->find = since(c);

    c = counted();
    struct cfs_domain *copy = cfs_domain_dup(d);
    out->dup = since(c);
    /* the copy's index is its own */
    assert_int_equal(cfs_disk_find_snapshot(&copy->disks[0], "same"), (int)deepest);
    cfs_domain_free(copy);

    /* the install of a re-read (a changed domain, then the same again) */
    struct cfs_tree *t = cfs_tree_new();
    c = counted();
    assert_true(cfs_tree_put_domain(t, cfs_domain_dup(d)));
    assert_false(cfs_tree_put_domain(t, cfs_domain_dup(d)));
    out->put = since(c);
    cfs_tree_free(t);

    /* rmdir of a run in the middle: the plan */
    struct cfs_merge_layer *ml = cfs_xcalloc(n, sizeof(*ml));
    for (size_t i = 0; i < n; i++)
        ml[i] = (struct cfs_merge_layer){
            .name = dk->layers[i].name,
            .allocation = dk->layers[i].allocation,
            .snapshot = dk->layers[i].name && i + 1 < n,
            .has_metadata = dk->layers[i].meta_name != NULL,
            .asked = i == n / 2 || i == n / 2 + 1,
        };
    struct cfs_merge_plan plan;
    c = counted();
    assert_int_equal(cfs_merge_plan(ml, n, false, &plan), 0);
    out->plan = since(c);
    assert_int_equal(plan.n_jobs, 1);
    assert_int_equal(plan.jobs[0].first, n / 2);
    assert_int_equal(plan.jobs[0].last, n / 2 + 1);
    cfs_merge_plan_clear(&plan);
    free(ml);
    cfs_domain_free(d);
}

static void assert_linear(const char *what, struct count small, struct count big)
{
    print_message("%-8s strcmp %7lu -> %7lu   allocations %7lu -> %7lu\n", what,
                  small.cmp, big.cmp, small.alloc, big.alloc);
    /* +20: a constant part (a few calls whatever the depth) */
    assert_true(big.cmp <= 15 * small.cmp + 20);
    assert_true(big.alloc <= 15 * small.alloc + 20);
}

static void test_deep_linear(void **state)
{
    struct deep_counts a, b;
    (void)state;

    run(100, &a);
    run(1000, &b);
    assert_linear("resolve", a.resolve, b.resolve);
    assert_linear("find", a.find, b.find);
    assert_linear("dup", a.dup, b.dup);
    assert_linear("put", a.put, b.put);
    assert_linear("plan", a.plan, b.plan);
    /* and absolutely: a few compares per layer, not one per pair */
    assert_true(b.resolve.cmp < 20 * 1000);
    assert_true(b.find.cmp < 4 * 1000);
}

/* The index is not trusted once the layers changed under it (a layer
 * dropped or pushed before the re-resolve): lookups scan, and are right. */
static void test_stale_index(void **state)
{
    struct cfs_domain *d = deep_domain(40);
    struct cfs_disk *dk = &d->disks[0];
    (void)state;

    cfs_domain_resolve_names(d);
    assert_int_equal(cfs_disk_find_snapshot(dk, "l7"), 7);
    /* drop layer 3 in place (job.c's tree_drop_layer does so) */
    cfs_layer_clear(&dk->layers[3]);
    memmove(&dk->layers[3], &dk->layers[4], (dk->n_layers - 4) * sizeof(*dk->layers));
    dk->n_layers--;
    assert_int_equal(cfs_disk_find_snapshot(dk, "l7"), 6);
    assert_int_equal(cfs_disk_find_snapshot(dk, "l3"), -1);
    cfs_domain_resolve_names(d);
    assert_int_equal(cfs_disk_find_snapshot(dk, "l7"), 6);
    /* without an index at all */
    cfs_disk_unindex_names(dk);
    assert_int_equal(cfs_disk_find_snapshot(dk, "m0"), 0);
    cfs_domain_free(d);
}

/* The map behind the backend's per-disk layer index. */
static void test_strmap(void **state)
{
    struct cfs_strmap *m = cfs_strmap_new();
    size_t v;
    (void)state;

    for (size_t i = 0; i < 1000; i++) {
        _cleanup_free_ char *k = cfs_xasprintf("/img/l%zu.qcow2", i);
        assert_true(cfs_strmap_add_index(m, k, i));
    }
    assert_int_equal(cfs_strmap_size(m), 1000);
    assert_false(cfs_strmap_add_index(m, "/img/l7.qcow2", 99));
    assert_true(cfs_strmap_get_index(m, "/img/l7.qcow2", &v));
    assert_int_equal(v, 7);
    cfs_strmap_set_index(m, "/img/l7.qcow2", 70);
    assert_true(cfs_strmap_get_index(m, "/img/l7.qcow2", &v));
    assert_int_equal(v, 70);
    cfs_strmap_set_index(m, "new", 1);
    assert_true(cfs_strmap_get_index(m, "new", NULL));
    assert_false(cfs_strmap_get_index(m, "/img/l1000.qcow2", &v));
    assert_false(cfs_strmap_add_index(m, NULL, 1));
    assert_false(cfs_strmap_get_index(m, NULL, &v));
    assert_int_equal(cfs_strmap_size(m), 1001);
    unsigned long before = n_strcmp;
    for (size_t i = 0; i < 1000; i++) {
        _cleanup_free_ char *k = cfs_xasprintf("/img/l%zu.qcow2", i);
        assert_true(cfs_strmap_get_index(m, k, NULL));
    }
    assert_true(n_strcmp - before < 3000); /* a probe or so each */
    cfs_strmap_free(m, NULL);
}

/* cfs_domain_identify's shortcut (the directory's real path, kept from
 * one layer to the next) gives what realpath() gives: through a
 * symlinked directory, for a symlinked file, a ".." spelling, a missing
 * file. */
static void test_identify_dir_cache(void **state)
{
    char tmpl[] = "/tmp/cfs-deep-XXXXXX";
    (void)state;

    assert_non_null(mkdtemp(tmpl));
    _cleanup_free_ char *real = realpath(tmpl, NULL);
    _cleanup_free_ char *dir = cfs_xasprintf("%s/d", real);
    _cleanup_free_ char *link = cfs_xasprintf("%s/ld", real);
    _cleanup_free_ char *a = cfs_xasprintf("%s/a.qcow2", dir);
    _cleanup_free_ char *b = cfs_xasprintf("%s/b.qcow2", dir);
    _cleanup_free_ char *fl = cfs_xasprintf("%s/fl.qcow2", dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(symlink(dir, link), 0);
    FILE *f = fopen(a, "w");
    fclose(f);
    f = fopen(b, "w");
    fclose(f);
    assert_int_equal(symlink(a, fl), 0);

    const char *spell[] = { "%s/ld/a.qcow2", "%s/ld/b.qcow2", "%s/d/fl.qcow2",
                            "%s/d/../d/b.qcow2", "%s/d/gone.qcow2", "%s/d/a.qcow2" };
    const size_t n = sizeof(spell) / sizeof(spell[0]);
    struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));
    d->name = cfs_xstrdup("x");
    d->n_disks = 1;
    d->disks = cfs_xcalloc(1, sizeof(*d->disks));
    d->disks[0].n_layers = n;
    d->disks[0].layers = cfs_xcalloc(n, sizeof(struct cfs_layer));
    for (size_t i = 0; i < n; i++)
        d->disks[0].layers[i].path = cfs_xasprintf(spell[i], real);
    cfs_domain_identify(d, true);
    for (size_t i = 0; i < n; i++) {
        struct cfs_file_id want = {0};
        cfs_file_identify(&want, d->disks[0].layers[i].path, true);
        const struct cfs_file_id *got = &d->disks[0].layers[i].id;
        assert_string_equal(got->canonical, want.canonical);
        assert_int_equal(got->known, want.known);
        assert_int_equal(got->dev, want.dev);
        assert_int_equal(got->ino, want.ino);
        cfs_file_id_clear(&want);
    }
    assert_string_equal(d->disks[0].layers[0].id.canonical, a);
    assert_string_equal(d->disks[0].layers[2].id.canonical, a);
    cfs_domain_free(d);
    unlink(fl);
    unlink(a);
    unlink(b);
    unlink(link);
    rmdir(dir);
    rmdir(real);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deep_linear),
        cmocka_unit_test(test_stale_index),
        cmocka_unit_test(test_strmap),
        cmocka_unit_test(test_identify_dir_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
