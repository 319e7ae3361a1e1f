/* test_render.c — render.c: the exact text of chain/job/info (golden
 * strings, the same examples docs/FILES.md shows), column alignment,
 * escaping, progress bars, and JSON that parses back with the right
 * values. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "chainfs/model.h"
#include "chainfs/names.h"
#include "chainfs/tree.h"
#include "chainfs/render.h"
#include "chainfs/tree.h"
#include "chainfs/util.h"

#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)

/* ---- fixtures ---------------------------------------------------------------- */

struct fx_layer {
    const char *path, *meta;
    uint64_t virt, alloc, phys;
};

static struct cfs_domain *make_domain(const char *dom, enum cfs_dom_state st,
                                      const struct fx_layer *fl, size_t n)
{
    struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));

    d->name = cfs_xstrdup(dom);
    d->state = st;
    d->n_disks = 1;
    d->disks = cfs_xcalloc(1, sizeof(struct cfs_disk));
    d->disks[0].target = cfs_xstrdup("vda");
    d->disks[0].n_layers = n;
    d->disks[0].layers = cfs_xcalloc(n ? n : 1, sizeof(struct cfs_layer));
    for (size_t i = 0; i < n; i++) {
        struct cfs_layer *l = &d->disks[0].layers[i];
        l->path = cfs_xstrdup(fl[i].path);
        l->format = cfs_xstrdup("qcow2");
        l->meta_name = cfs_xstrdup(fl[i].meta);
        l->virtual_size = fl[i].virt;
        l->allocation = fl[i].alloc;
        l->physical = fl[i].phys;
    }
    cfs_domain_resolve_names(d);
    return d;
}

/* The example chain of docs/FILES.md. */
static struct cfs_domain *web01(void)
{
    static const struct fx_layer fl[] = {
        { "/var/lib/libvirt/images/web01.vda.s2.qcow2", NULL, 10 * GiB, 1258291, 1310720 },
        { "/var/lib/libvirt/images/web01.vda.s1.qcow2", "before-upgrade", 10 * GiB, 500 * MiB, 525336576 },
        { "/var/lib/libvirt/images/web01.qcow2", NULL, 10 * GiB, 2254857830ull, 2255421440ull },
    };
    return make_domain("web01", CFS_DOM_RUNNING, fl, ELEMENTSOF(fl));
}

static char *render_chain_text(const struct cfs_domain *d, bool stale)
{
    struct cfs_buf b = { 0 };

    cfs_render_chain_text(&b, d, &d->disks[0], stale);
    return cfs_buf_steal(&b);
}

static struct json_object *parse_json(const char *s)
{
    size_t len = strlen(s);

    assert_true(len > 0);
    assert_int_equal(s[len - 1], '\n');
    struct json_object *o = json_tokener_parse(s);
    assert_non_null(o);
    assert_true(json_object_is_type(o, json_type_object));
    return o;
}

static struct json_object *get(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;

    if (!json_object_object_get_ex(o, key, &v))
        fail_msg("JSON has no key \"%s\"", key);
    return v;
}

static void assert_json_str(struct json_object *o, const char *key, const char *want)
{
    struct json_object *v = get(o, key);

    if (!want) {
        assert_null(v);
        return;
    }
    assert_true(json_object_is_type(v, json_type_string));
    assert_string_equal(json_object_get_string(v), want);
}

static void assert_json_int(struct json_object *o, const char *key, int64_t want)
{
    struct json_object *v = get(o, key);

    assert_true(json_object_is_type(v, json_type_int));
    assert_int_equal(json_object_get_int64(v), want);
}

static void assert_json_bool(struct json_object *o, const char *key, bool want)
{
    struct json_object *v = get(o, key);

    assert_true(json_object_is_type(v, json_type_boolean));
    assert_int_equal(json_object_get_boolean(v), want);
}

static void assert_json_keys(struct json_object *o, const char *const *keys, size_t n)
{
    size_t i = 0;

    json_object_object_foreach(o, k, v) {
        (void)v;
        assert_true(i < n);
        assert_string_equal(k, keys[i]);
        i++;
    }
    assert_int_equal(i, n);
}

/* Width in code points of the first N bytes of S. */
static size_t cp_width(const char *s, size_t n)
{
    size_t w = 0;

    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            w++;
    return w;
}

/* ---- chain ---------------------------------------------------------------------- */

static const char chain_golden[] =
    "domain: web01\n"
    "disk:   vda\n"
    "state:  running\n"
    "layers: 3\n"
    "\n"
    "#  ROLE     SNAPSHOT        FORMAT  VIRTUAL  ALLOCATED  FILE\n"
    "0  active   s2              qcow2   10.0GiB     1.2MiB  /var/lib/libvirt/images/web01.vda.s2.qcow2\n"
    "1  backing  before-upgrade  qcow2   10.0GiB   500.0MiB  /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
    "2  base     -               qcow2   10.0GiB     2.1GiB  /var/lib/libvirt/images/web01.qcow2\n";

static void test_chain_text_golden(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    _cleanup_free_ char *s = render_chain_text(d, false);
    _cleanup_free_ char *again = render_chain_text(d, false);

    assert_string_equal(s, chain_golden);
    assert_string_equal(s, again); /* deterministic */
    assert_null(strstr(s, "stale"));
}

static void test_chain_text_stale(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    _cleanup_free_ char *s = render_chain_text(d, true);

    assert_non_null(strstr(s, "layers: 3\n"
                              "stale:  yes (libvirt unreachable; last known state)\n"
                              "\n#  ROLE"));
    /* the table is unchanged */
    assert_non_null(strstr(s, strstr(chain_golden, "#  ROLE")));
}

/* A domain whose QEMU does not answer: the state line says so, the
 * table is the last known one; JSON keeps "state" and says
 * "responding": false. */
static void test_chain_not_responding(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    d->not_responding = true;
    _cleanup_free_ char *s = render_chain_text(d, false);
    assert_non_null(strstr(s, "state:  running (not responding)\n"));
    assert_non_null(strstr(s, strstr(chain_golden, "#  ROLE")));

    struct cfs_buf b = { 0 };
    cfs_render_chain_json(&b, d, &d->disks[0], false);
    _cleanup_free_ char *js = cfs_buf_steal(&b);
    struct json_object *o = parse_json(js);
    assert_json_str(o, "state", "running");
    assert_json_bool(o, "responding", false);
    json_object_put(o);
}

static void test_chain_text_single_layer(void **state)
{
    (void)state;
    static const struct fx_layer fl[] = { { "/img/solo.qcow2", "solo-meta", 64 * MiB, 0, 0 } };
    _cleanup_domain_ struct cfs_domain *d = make_domain("solo", CFS_DOM_SHUTOFF, fl, 1);
    _cleanup_free_ char *s = render_chain_text(d, false);

    assert_string_equal(s,
        "domain: solo\n"
        "disk:   vda\n"
        "state:  shutoff\n"
        "layers: 1\n"
        "\n"
        "#  ROLE    SNAPSHOT  FORMAT  VIRTUAL  ALLOCATED  FILE\n"
        "0  active  -         qcow2   64.0MiB         0B  /img/solo.qcow2\n");
}

static void test_chain_text_two_layers(void **state)
{
    (void)state;
    static const struct fx_layer fl[] = {
        { "/img/vm.vda.s1.qcow2", NULL, 512, 512, 512 },
        { "/img/base.raw", NULL, 512, 512, 512 },
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", CFS_DOM_PAUSED, fl, 2);
    _cleanup_free_ char *s = render_chain_text(d, false);

    assert_non_null(strstr(s, "state:  paused\n"));
    assert_non_null(strstr(s, "0  active  s1 "));
    assert_non_null(strstr(s, "1  base    -  "));
}

/* Every row's cells start where the header's do. */
static void check_alignment(const char *text, size_t n_rows)
{
    static const char *const cols[] = {
        "ROLE", "SNAPSHOT", "FORMAT", "VIRTUAL", "ALLOCATED", "FILE",
    };
    const char *hdr = strstr(text, "\n\n");
    assert_non_null(hdr);
    hdr += 2;
    const char *hdr_end = strchr(hdr, '\n');

    /* FILE starts at the same display column on every row, after two spaces */
    size_t file_col = cp_width(hdr, (size_t)(strstr(hdr, "FILE") - hdr));
    size_t rows = 0;
    for (const char *line = hdr_end + 1; *line; line = strchr(line, '\n') + 1) {
        const char *end = strchr(line, '\n');
        assert_non_null(end);
        size_t col = 0, i = 0;
        while (line + i < end && col < file_col) {
            if (((unsigned char)line[i] & 0xC0) != 0x80)
                col++;
            i++;
        }
        while (((unsigned char)line[i] & 0xC0) == 0x80)
            i++;
        assert_int_equal(col, file_col);
        assert_int_equal(line[i - 1], ' ');
        assert_int_equal(line[i - 2], ' ');
        assert_true(line[i] != ' ');
        rows++;
    }
    assert_int_equal(rows, n_rows);

    /* the header names are separated by at least two spaces */
    for (size_t c = 0; c < ELEMENTSOF(cols); c++) {
        const char *h = strstr(hdr, cols[c]);
        assert_non_null(h);
        assert_true(h < hdr_end);
        assert_int_equal(h[-1], ' ');
        assert_int_equal(h[-2], ' ');
    }
}

static void test_chain_text_alignment(void **state)
{
    (void)state;
    static const struct fx_layer fl[] = {
        { "/img/a very long overlay file name with spaces.qcow2", NULL, 1, 1, 1 },
        { "/img/x.qcow2", "m\xc3\xbcnchen-\xe2\x82\xac", 10 * GiB, 9 * GiB, 1 },
        { "/img/y.qcow2", NULL, 1023, 1024, 1 },
        { "/img/z.qcow2", NULL, 1ull << 60, 5ull << 40, 1 },
        { "/img/b.qcow2", NULL, 1, 1, 1 },
        { "/img/c.qcow2", NULL, 1, 1, 1 },
        { "/img/d.qcow2", NULL, 1, 1, 1 },
        { "/img/e.qcow2", NULL, 1, 1, 1 },
        { "/img/f.qcow2", NULL, 1, 1, 1 },
        { "/img/g.qcow2", NULL, 1, 1, 1 },
        { "/img/h.qcow2", NULL, 1, 1, 1 },
        { "/img/base.qcow2", NULL, 1, 1, 1 },
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", CFS_DOM_RUNNING, fl, ELEMENTSOF(fl));
    _cleanup_free_ char *s = render_chain_text(d, false);

    check_alignment(s, ELEMENTSOF(fl));
    /* ten or more layers: the index column is right-aligned */
    assert_non_null(strstr(s, "\n #  ROLE "));
    assert_non_null(strstr(s, "\n 9  backing "));
    assert_non_null(strstr(s, "\n11  base "));
    assert_non_null(strstr(s, "a very long overlay file name with spaces  "));
    assert_non_null(strstr(s, "  1.0EiB  "));

    _cleanup_domain_ struct cfs_domain *w = web01();
    _cleanup_free_ char *g = render_chain_text(w, true);
    check_alignment(g, 3);
}

static void test_chain_text_escapes(void **state)
{
    (void)state;
    static const struct fx_layer fl[] = {
        { "/img/evil\nname.qcow2", "tab\there", 1, 1, 1 },
        { "/img/bell\a.qcow2", NULL, 1, 1, 1 },
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", CFS_DOM_RUNNING, fl, 2);
    _cleanup_free_ char *s = render_chain_text(d, false);

    size_t lines = 0;
    for (const char *p = s; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 4 + 1 + 1 + 2); /* header block, blank, header, rows */
    assert_non_null(strstr(s, "tab\\there"));
    assert_non_null(strstr(s, "/img/evil\\nname.qcow2\n"));
    assert_non_null(strstr(s, "/img/bell\\x07.qcow2\n"));
    check_alignment(s, 2);
}

static void test_chain_text_unknown_format(void **state)
{
    (void)state;
    static const struct fx_layer fl[] = { { "/dev/vg/lv", NULL, 1, 1, 1 } };
    _cleanup_domain_ struct cfs_domain *d = make_domain("vm", CFS_DOM_OTHER, fl, 1);
    free(d->disks[0].layers[0].format);
    d->disks[0].layers[0].format = cfs_xstrdup("");
    _cleanup_free_ char *s = render_chain_text(d, false);

    assert_non_null(strstr(s, "state:  other\n"));
    assert_non_null(strstr(s, "0  active  -         -       "));
}

static void test_chain_json(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    d->disks[0].layers[2].is_block = true;
    struct cfs_buf b = { 0 };
    cfs_render_chain_json(&b, d, &d->disks[0], false);
    _cleanup_free_ char *s = cfs_buf_steal(&b);

    /* pretty, slashes not escaped */
    assert_non_null(strstr(s, "\n  \"domain\": \"web01\",\n"));
    assert_null(strstr(s, "\\/"));

    struct json_object *o = parse_json(s);
    static const char *const keys[] = { "domain", "disk", "state", "responding",
                                        "stale", "layers" };
    assert_json_keys(o, keys, ELEMENTSOF(keys));
    assert_json_str(o, "domain", "web01");
    assert_json_str(o, "disk", "vda");
    assert_json_str(o, "state", "running");
    assert_json_bool(o, "responding", true);
    assert_json_bool(o, "stale", false);

    struct json_object *layers = get(o, "layers");
    assert_true(json_object_is_type(layers, json_type_array));
    assert_int_equal(json_object_array_length(layers), 3);

    static const char *const lkeys[] = {
        "index", "role", "snapshot", "name_source", "file", "xml_path",
        "format", "virtual_size", "allocation", "physical", "block",
    };
    struct json_object *l0 = json_object_array_get_idx(layers, 0);
    assert_json_keys(l0, lkeys, ELEMENTSOF(lkeys));
    assert_json_int(l0, "index", 0);
    assert_json_str(l0, "role", "active");
    assert_json_str(l0, "snapshot", "s2");
    assert_json_str(l0, "name_source", "chainfs");
    assert_json_str(l0, "file", "/var/lib/libvirt/images/web01.vda.s2.qcow2");
    assert_json_str(l0, "format", "qcow2");
    assert_json_int(l0, "virtual_size", (int64_t)(10 * GiB));
    assert_json_int(l0, "allocation", 1258291);
    assert_json_int(l0, "physical", 1310720);
    assert_json_bool(l0, "block", false);

    struct json_object *l1 = json_object_array_get_idx(layers, 1);
    assert_json_str(l1, "role", "backing");
    assert_json_str(l1, "snapshot", "before-upgrade");
    assert_json_str(l1, "name_source", "libvirt-metadata");

    struct json_object *l2 = json_object_array_get_idx(layers, 2);
    assert_json_int(l2, "index", 2);
    assert_json_str(l2, "role", "base");
    assert_json_str(l2, "snapshot", NULL);
    assert_json_str(l2, "name_source", NULL);
    assert_json_int(l2, "allocation", 2254857830ll);
    assert_json_bool(l2, "block", true);
    json_object_put(o);

    /* stale, and JSON carries control characters exactly */
    free(d->disks[0].layers[0].path);
    d->disks[0].layers[0].path = cfs_xstrdup("/img/a\nb \"q\"");
    d->disks[0].layers[0].virtual_size = UINT64_MAX; /* clamped, never negative */
    cfs_render_chain_json(&b, d, &d->disks[0], true);
    _cleanup_free_ char *s2 = cfs_buf_steal(&b);
    o = parse_json(s2);
    assert_json_bool(o, "stale", true);
    l0 = json_object_array_get_idx(get(o, "layers"), 0);
    assert_json_str(l0, "file", "/img/a\nb \"q\"");
    assert_json_int(l0, "virtual_size", INT64_MAX);
    json_object_put(o);
}

/* A layer reached through another spelling: chain and info show the
 * canonical path, chain.json keeps the XML's spelling as xml_path. */
static void test_chain_canonical_path(void **state)
{
    (void)state;
    static const struct fx_layer fl[] = {
        { "/img/top.qcow2", "s1", 1, 1, 1 },
        { "/img/a/../b//base.qcow2", NULL, 1, 1, 1 },
    };
    _cleanup_domain_ struct cfs_domain *d = make_domain("canon", CFS_DOM_RUNNING, fl, 2);
    d->disks[0].layers[1].id.canonical = cfs_xstrdup("/srv/b/base.qcow2");
    struct cfs_buf b = { 0 };
    cfs_render_chain_text(&b, d, &d->disks[0], false);
    _cleanup_free_ char *text = cfs_buf_steal(&b);
    assert_non_null(strstr(text, "  /srv/b/base.qcow2\n"));
    assert_null(strstr(text, "/img/a/../b//base.qcow2"));

    cfs_render_chain_json(&b, d, &d->disks[0], false);
    _cleanup_free_ char *js = cfs_buf_steal(&b);
    struct json_object *o = parse_json(js);
    struct json_object *l1 = json_object_array_get_idx(get(o, "layers"), 1);
    assert_json_str(l1, "file", "/srv/b/base.qcow2");
    assert_json_str(l1, "xml_path", "/img/a/../b//base.qcow2");
    struct json_object *l0 = json_object_array_get_idx(get(o, "layers"), 0);
    assert_json_str(l0, "file", "/img/top.qcow2"); /* not identified: as spelled */
    assert_json_str(l0, "xml_path", "/img/top.qcow2");
    json_object_put(o);

    cfs_render_info_text(&b, d, &d->disks[0], 0, false, NULL);
    _cleanup_free_ char *info = cfs_buf_steal(&b);
    assert_non_null(strstr(info, "frozen:    /srv/b/base.qcow2\n"));
}

static void test_chain_json_single_and_empty(void **state)
{
    (void)state;
    static const struct fx_layer fl[] = { { "/img/solo.qcow2", NULL, 1, 1, 1 } };
    _cleanup_domain_ struct cfs_domain *d = make_domain("solo", CFS_DOM_SHUTOFF, fl, 1);
    struct cfs_buf b = { 0 };

    cfs_render_chain_json(&b, d, &d->disks[0], false);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    struct json_object *o = parse_json(s);
    assert_json_str(o, "state", "shutoff");
    struct json_object *l0 = json_object_array_get_idx(get(o, "layers"), 0);
    assert_json_str(l0, "role", "active");
    assert_json_str(l0, "snapshot", NULL);
    json_object_put(o);

    d->disks[0].n_layers = 0;
    cfs_render_chain_json(&b, d, &d->disks[0], false);
    _cleanup_free_ char *e = cfs_buf_steal(&b);
    o = parse_json(e);
    assert_int_equal(json_object_array_length(get(o, "layers")), 0);
    json_object_put(o);
    cfs_render_chain_text(&b, d, &d->disks[0], false);
    _cleanup_free_ char *t = cfs_buf_steal(&b);
    assert_non_null(strstr(t, "layers: 0\n\n#  ROLE  SNAPSHOT  FORMAT  VIRTUAL  ALLOCATED  FILE\n"));
    d->disks[0].n_layers = 1;
}

/* ---- job ------------------------------------------------------------------------- */

static struct cfs_job running_job(void)
{
    return (struct cfs_job){
        .type = CFS_JOB_ACTIVE_COMMIT,
        .phase = CFS_PHASE_RUNNING,
        .snapshot = "s2",
        .top = "/var/lib/libvirt/images/web01.vda.s2.qcow2",
        .base = "/var/lib/libvirt/images/web01.vda.s1.qcow2",
        .cur = 27 * MiB,
        .end = 64 * MiB,
        .started = 1790000000,
    };
}

static char *render_job_text(const struct cfs_job *j, bool stale)
{
    struct cfs_buf b = { 0 };

    cfs_render_job_text(&b, j, stale);
    return cfs_buf_steal(&b);
}

static char *progress_line(const struct cfs_job *j)
{
    _cleanup_free_ char *s = render_job_text(j, false);
    const char *p = strstr(s, "progress:  ");

    assert_non_null(p);
    p += strlen("progress:  ");
    return strndup(p, strcspn(p, "\n"));
}

static void test_job_text_golden(void **state)
{
    (void)state;
    struct cfs_job j = running_job();
    _cleanup_free_ char *s = render_job_text(&j, false);

    assert_string_equal(s,
        "type:      active-commit\n"
        "state:     running\n"
        "snapshot:  s2\n"
        "top:       /var/lib/libvirt/images/web01.vda.s2.qcow2\n"
        "base:      /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "progress:  42% [########------------]\n"
        "bytes:     27.0MiB / 64.0MiB\n"
        "bandwidth: unlimited\n"
        "origin:    chainfs\n"
        "pivot:     auto\n"
        "started:   2026-09-21T14:13:20Z\n"
        "finished:  -\n"
        "error:     -\n");
}

static void test_job_text_failed(void **state)
{
    (void)state;
    struct cfs_job j = running_job();
    j.type = CFS_JOB_COMMIT;
    j.phase = CFS_PHASE_FAILED;
    j.bandwidth = MiB;
    j.finished = 1790000600;
    j.error = "internal error: unable to execute QEMU command 'block-commit': Could not reopen file";
    j.partial = true;
    _cleanup_free_ char *s = render_job_text(&j, true);

    assert_string_equal(s,
        "type:      commit\n"
        "state:     failed\n"
        "snapshot:  s2\n"
        "top:       /var/lib/libvirt/images/web01.vda.s2.qcow2\n"
        "base:      /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "progress:  42% [########------------]\n"
        "bytes:     27.0MiB / 64.0MiB\n"
        "bandwidth: 1.0MiB/s\n"
        "origin:    chainfs\n"
        "pivot:     auto\n"
        "started:   2026-09-21T14:13:20Z\n"
        "finished:  2026-09-21T14:23:20Z\n"
        "error:     internal error: unable to execute QEMU command 'block-commit': Could not reopen file\n"
        "partial:   yes\n"
        "stale:     yes\n");
}

/* A merge on a remote connection whose file stayed where it was. */
static void test_job_text_leftover(void **state)
{
    (void)state;
    struct cfs_job j = running_job();
    j.phase = CFS_PHASE_COMPLETED;
    j.cur = j.end;
    j.finished = 1790000600;
    j.leftover = "/var/lib/libvirt/images/web01.vda.s2.qcow2";
    _cleanup_free_ char *s = render_job_text(&j, false);

    assert_string_equal(s,
        "type:      active-commit\n"
        "state:     completed\n"
        "snapshot:  s2\n"
        "top:       /var/lib/libvirt/images/web01.vda.s2.qcow2\n"
        "base:      /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "progress:  100% [####################]\n"
        "bytes:     64.0MiB / 64.0MiB\n"
        "bandwidth: unlimited\n"
        "origin:    chainfs\n"
        "pivot:     auto\n"
        "started:   2026-09-21T14:13:20Z\n"
        "finished:  2026-09-21T14:23:20Z\n"
        "error:     -\n"
        "leftover:  /var/lib/libvirt/images/web01.vda.s2.qcow2\n");
}

static void test_job_text_none(void **state)
{
    (void)state;
    _cleanup_free_ char *a = render_job_text(NULL, false);
    assert_string_equal(a, "type:  none\nstate: none\n");

    struct cfs_job j = running_job();
    j.type = CFS_JOB_NONE; /* type NONE means no job, whatever else is set */
    _cleanup_free_ char *b = render_job_text(&j, false);
    assert_string_equal(b, "type:  none\nstate: none\n");

    _cleanup_free_ char *c = render_job_text(NULL, true);
    assert_string_equal(c, "type:  none\nstate: none\nstale: yes\n");
}

static void test_job_progress(void **state)
{
    (void)state;
    struct cfs_job j = running_job();
    struct { uint64_t cur, end; enum cfs_job_phase st; const char *want; } cases[] = {
        { 0, 64 * MiB, CFS_PHASE_RUNNING, "0% [--------------------]" },
        { 27 * MiB, 64 * MiB, CFS_PHASE_RUNNING, "42% [########------------]" },
        { 64 * MiB, 64 * MiB, CFS_PHASE_READY, "100% [####################]" },
        { 1, 3, CFS_PHASE_RUNNING, "33% [######--------------]" },
        { 2, 3, CFS_PHASE_RUNNING, "66% [#############-------]" },
        { 99, 100, CFS_PHASE_RUNNING, "99% [###################-]" },
        { 5, 100, CFS_PHASE_RUNNING, "5% [#-------------------]" },
        { 4, 100, CFS_PHASE_RUNNING, "4% [--------------------]" },
        { 0, 0, CFS_PHASE_RUNNING, "0% [--------------------]" },
        { 0, 0, CFS_PHASE_COMPLETED, "100% [####################]" },
        { 0, 0, CFS_PHASE_FAILED, "0% [--------------------]" },
        { 10, 5, CFS_PHASE_RUNNING, "100% [####################]" },
        { 27 * MiB, 64 * MiB, CFS_PHASE_COMPLETED, "100% [####################]" },
        { UINT64_MAX / 2, UINT64_MAX, CFS_PHASE_RUNNING, "49% [#########-----------]" },
        { UINT64_MAX - 1, UINT64_MAX, CFS_PHASE_RUNNING, "99% [###################-]" },
    };

    for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
        j.cur = cases[i].cur;
        j.end = cases[i].end;
        j.phase = cases[i].st;
        _cleanup_free_ char *line = progress_line(&j);
        if (strcmp(line, cases[i].want) != 0)
            fail_msg("cur=%" PRIu64 " end=%" PRIu64 ": \"%s\", want \"%s\"",
                     cases[i].cur, cases[i].end, line, cases[i].want);

        /* JSON agrees with the text */
        struct cfs_buf b = { 0 };
        cfs_render_job_json(&b, &j, false);
        _cleanup_free_ char *s = cfs_buf_steal(&b);
        struct json_object *o = parse_json(s);
        assert_json_int(o, "progress_percent", atoi(cases[i].want));
        json_object_put(o);
    }
}

static void test_job_json(void **state)
{
    (void)state;
    static const char *const keys[] = {
        "type", "state", "snapshot", "snapshots", "top", "base", "progress_percent", "cur",
        "end", "bandwidth", "origin", "pivot", "direction", "bytes_commit", "bytes_pull", "reason",
        "bytes_copied", "group", "source", "destination", "mode", "layers_copied", "layers_total", "old_files", "result",
        "started", "finished", "error", "partial", "leftover", "queue", "returned", "readers", "stale",
    };
    struct cfs_job j = running_job();
    j.bandwidth = 3 * MiB;
    struct cfs_buf b = { 0 };

    cfs_render_job_json(&b, &j, false);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    struct json_object *o = parse_json(s);
    assert_json_keys(o, keys, ELEMENTSOF(keys));
    assert_json_str(o, "type", "active-commit");
    assert_json_str(o, "state", "running");
    assert_json_str(o, "snapshot", "s2");
    assert_json_str(o, "top", "/var/lib/libvirt/images/web01.vda.s2.qcow2");
    assert_json_str(o, "base", "/var/lib/libvirt/images/web01.vda.s1.qcow2");
    assert_json_int(o, "progress_percent", 42);
    assert_json_int(o, "cur", (int64_t)(27 * MiB));
    assert_json_int(o, "end", (int64_t)(64 * MiB));
    assert_json_int(o, "bandwidth", (int64_t)(3 * MiB));
    assert_json_str(o, "origin", "chainfs");
    assert_json_str(o, "pivot", "auto");
    assert_json_str(o, "started", "2026-09-21T14:13:20Z");
    assert_json_str(o, "finished", NULL);
    assert_json_str(o, "error", NULL);
    assert_json_bool(o, "partial", false);
    assert_json_str(o, "leftover", NULL);
    assert_json_bool(o, "stale", false);
    json_object_put(o);

    j.phase = CFS_PHASE_FAILED;
    j.finished = 1790000600;
    j.error = "boom \"quoted\" /path";
    j.partial = true;
    cfs_render_job_json(&b, &j, true);
    _cleanup_free_ char *s2 = cfs_buf_steal(&b);
    o = parse_json(s2);
    assert_json_str(o, "state", "failed");
    assert_json_str(o, "finished", "2026-09-21T14:23:20Z");
    assert_json_str(o, "error", "boom \"quoted\" /path");
    assert_json_bool(o, "partial", true);
    assert_json_bool(o, "stale", true);
    json_object_put(o);

    j.phase = CFS_PHASE_COMPLETED;
    j.error = NULL;
    j.partial = false;
    j.leftover = "/var/lib/libvirt/images/web01.vda.s2.qcow2";
    cfs_render_job_json(&b, &j, false);
    _cleanup_free_ char *s3 = cfs_buf_steal(&b);
    o = parse_json(s3);
    assert_json_str(o, "leftover", "/var/lib/libvirt/images/web01.vda.s2.qcow2");
    json_object_put(o);
}

/* Issue 8 §3.5: the queue and the returned deletions, text and JSON; a
 * run of several snapshots lists them all. */
static void test_job_queue_and_returned(void **state)
{
    (void)state;
    struct cfs_job j = running_job();
    char *snaps[] = { "s3", "s2", NULL };
    j.snapshots = snaps;
    struct cfs_queued q[2] = {
        { .snapshot = "s1", .queued = 1758464001 },
        { .snapshot = "s0", .queued = 1758464002 },
    };
    struct cfs_returned r[3] = {
        { .snapshot = "a", .reason = "the merge of x failed: boom" },
        { .snapshot = "b", .reason = "the merge of x failed: boom" },
        { .snapshot = "c", .reason = "aborted through ctl" },
    };
    struct cfs_buf b = { 0 };

    struct cfs_disk_state st = { .queue = q, .n_queue = 2, .returned = r,
                                 .n_returned = 3 };
    cfs_render_job_queue_text(&b, &j, &st, false);
    _cleanup_free_ char *t = cfs_buf_steal(&b);
    assert_non_null(strstr(t, "\nsnapshots: s3, s2\n"));
    assert_non_null(strstr(t, "\nqueued:    s1, s0 (since 2025-09-21T14:13:21Z)\n"));
    assert_non_null(strstr(t, "\nreturned:  a, b (the merge of x failed: boom); c (aborted through ctl)\n"));

    char *pulls[] = { "s0", NULL };
    st.settings = (struct cfs_disk_settings){ .merge_pull = pulls };
    cfs_render_job_queue_json(&b, &j, &st, false);
    _cleanup_free_ char *js = cfs_buf_steal(&b);
    struct json_object *o = parse_json(js);
    struct json_object *a;
    assert_true(json_object_object_get_ex(o, "queue", &a));
    assert_int_equal(json_object_array_length(a), 2);
    struct json_object *q0 = json_object_array_get_idx(a, 0);
    assert_json_str(q0, "snapshot", "s1");
    assert_json_str(q0, "queued", "2025-09-21T14:13:21Z");
    assert_json_str(q0, "merge", "auto");
    assert_json_str(json_object_array_get_idx(a, 1), "merge", "pull");
    assert_true(json_object_object_get_ex(o, "returned", &a));
    assert_int_equal(json_object_array_length(a), 3);
    assert_json_str(json_object_array_get_idx(a, 2), "reason", "aborted through ctl");
    assert_true(json_object_object_get_ex(o, "snapshots", &a));
    assert_int_equal(json_object_array_length(a), 2);
    json_object_put(o);

    /* nothing queued, nothing returned: no lines, empty arrays */
    j.snapshots = NULL;
    cfs_render_job_text(&b, &j, false);
    _cleanup_free_ char *t2 = cfs_buf_steal(&b);
    assert_null(strstr(t2, "queued:"));
    assert_null(strstr(t2, "returned:"));
    assert_null(strstr(t2, "snapshots:"));
    cfs_render_job_json(&b, NULL, false);
    _cleanup_free_ char *js2 = cfs_buf_steal(&b);
    o = parse_json(js2);
    assert_true(json_object_object_get_ex(o, "queue", &a));
    assert_int_equal(json_object_array_length(a), 0);
    assert_true(json_object_object_get_ex(o, "snapshots", &a));
    assert_int_equal(json_object_array_length(a), 0);
    json_object_put(o);
}

/* A job chainfs did not start shows as what it is, origin external, and
 * no pivot setting (chainfs never pivots it); a held one shows manual. */
static void test_job_origin_and_pivot(void **state)
{
    (void)state;
    struct cfs_job j = running_job();
    struct cfs_buf b = { 0 };

    j.pivot_manual = true;
    cfs_render_job_text(&b, &j, false);
    _cleanup_free_ char *t1 = cfs_buf_steal(&b);
    assert_non_null(strstr(t1, "\norigin:    chainfs\npivot:     manual\n"));

    j.type = CFS_JOB_COPY;
    j.external = true;
    j.snapshot = j.top = j.base = NULL;
    cfs_render_job_text(&b, &j, false);
    _cleanup_free_ char *t2 = cfs_buf_steal(&b);
    assert_non_null(strstr(t2, "type:      copy\n"));
    assert_non_null(strstr(t2, "\norigin:    external\n"));
    assert_null(strstr(t2, "pivot:"));

    cfs_render_job_json(&b, &j, false);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    struct json_object *o = parse_json(s);
    assert_json_str(o, "type", "copy");
    assert_json_str(o, "origin", "external");
    assert_json_str(o, "pivot", NULL);
    assert_json_int(o, "progress_percent", 42);
    json_object_put(o);
}

static void test_job_json_none(void **state)
{
    (void)state;
    static const char *const keys[] = {
        "type", "state", "snapshot", "snapshots", "top", "base", "progress_percent", "cur",
        "end", "bandwidth", "origin", "pivot", "direction", "bytes_commit", "bytes_pull", "reason",
        "bytes_copied", "group", "source", "destination", "mode", "layers_copied", "layers_total", "old_files", "result",
        "started", "finished", "error", "partial", "leftover", "queue", "returned", "readers", "stale",
    };
    struct cfs_buf b = { 0 };

    cfs_render_job_json(&b, NULL, true);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    struct json_object *o = parse_json(s);
    assert_json_keys(o, keys, ELEMENTSOF(keys));
    assert_json_str(o, "type", "none");
    assert_json_str(o, "state", "none");
    assert_json_str(o, "snapshot", NULL);
    assert_json_str(o, "top", NULL);
    assert_json_str(o, "base", NULL);
    assert_json_int(o, "progress_percent", 0);
    assert_json_int(o, "cur", 0);
    assert_json_int(o, "end", 0);
    assert_json_int(o, "bandwidth", 0);
    assert_json_str(o, "origin", NULL);
    assert_json_str(o, "pivot", NULL);
    assert_json_str(o, "started", NULL);
    assert_json_str(o, "finished", NULL);
    assert_json_str(o, "error", NULL);
    assert_json_bool(o, "partial", false);
    assert_json_bool(o, "stale", true);
    json_object_put(o);
}

/* ---- info -------------------------------------------------------------------------- */

static char *render_info_text(const struct cfs_domain *d, int index, bool partial)
{
    struct cfs_buf b = { 0 };

    cfs_render_info_text(&b, d, &d->disks[0], index, partial, NULL);
    return cfs_buf_steal(&b);
}

static void test_info_text_golden(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    _cleanup_free_ char *s = render_info_text(d, 1, false);

    assert_string_equal(s,
        "name:      before-upgrade\n"
        "domain:    web01\n"
        "disk:      vda\n"
        "state:     ok\n"
        "file:      /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "format:    qcow2\n"
        "virtual:   10.0GiB\n"
        "allocated: 500.0MiB\n"
        "frozen:    /var/lib/libvirt/images/web01.qcow2\n"
        "depth:     1\n"
        "active:    no\n"
        "source:    libvirt-metadata\n"
        "quiesced:  -\n"
        "quiesce:   -\n"
        "taken:     -\n");
}

static void test_info_text_active_partial(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    _cleanup_free_ char *s = render_info_text(d, 0, true);

    assert_string_equal(s,
        "name:      s2\n"
        "domain:    web01\n"
        "disk:      vda\n"
        "state:     partial\n"
        "file:      /var/lib/libvirt/images/web01.vda.s2.qcow2\n"
        "format:    qcow2\n"
        "virtual:   10.0GiB\n"
        "allocated: 1.2MiB\n"
        "frozen:    /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "depth:     0\n"
        "active:    yes\n"
        "source:    chainfs\n"
        "quiesced:  -\n"
        "quiesce:   -\n"
        "taken:     -\n");
}

static void test_info_out_of_range(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    const int idx[] = { -1, 3, 1000 };

    for (size_t i = 0; i < ELEMENTSOF(idx); i++) {
        _cleanup_free_ char *s = render_info_text(d, idx[i], false);
        assert_non_null(strstr(s, "name:      -\n"));
        assert_non_null(strstr(s, "file:      -\n"));
        assert_non_null(strstr(s, "frozen:    -\n"));
        assert_int_equal(s[strlen(s) - 1], '\n');

        struct cfs_buf b = { 0 };
        cfs_render_info_json(&b, d, &d->disks[0], idx[i], false, NULL);
        _cleanup_free_ char *j = cfs_buf_steal(&b);
        struct json_object *o = parse_json(j);
        assert_json_str(o, "name", NULL);
        assert_json_str(o, "depth", NULL);
        json_object_put(o);
    }
}

static void test_info_json(void **state)
{
    (void)state;
    static const char *const keys[] = {
        "name", "domain", "disk", "state", "file", "format", "virtual_size",
        "allocation", "physical", "block", "frozen", "depth", "active",
        "name_source", "quiesced", "quiesce_reason", "filesystems", "scope",
        "disks", "excluded",
    };
    _cleanup_domain_ struct cfs_domain *d = web01();
    struct cfs_buf b = { 0 };

    cfs_render_info_json(&b, d, &d->disks[0], 1, false, NULL);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    struct json_object *o = parse_json(s);
    assert_json_keys(o, keys, ELEMENTSOF(keys));
    assert_json_str(o, "name", "before-upgrade");
    assert_json_str(o, "domain", "web01");
    assert_json_str(o, "disk", "vda");
    assert_json_str(o, "state", "ok");
    assert_json_str(o, "file", "/var/lib/libvirt/images/web01.vda.s1.qcow2");
    assert_json_str(o, "format", "qcow2");
    assert_json_int(o, "virtual_size", (int64_t)(10 * GiB));
    assert_json_int(o, "allocation", (int64_t)(500 * MiB));
    assert_json_int(o, "physical", 525336576);
    assert_json_bool(o, "block", false);
    assert_json_str(o, "frozen", "/var/lib/libvirt/images/web01.qcow2");
    assert_json_int(o, "depth", 1);
    assert_json_bool(o, "active", false);
    assert_json_str(o, "name_source", "libvirt-metadata");
    assert_null(get(o, "quiesced"));
    assert_json_str(o, "quiesce_reason", NULL);
    assert_json_str(o, "scope", NULL);
    assert_int_equal(json_object_array_length(get(o, "disks")), 0);
    assert_int_equal(json_object_array_length(get(o, "excluded")), 0);
    json_object_put(o);

    cfs_render_info_json(&b, d, &d->disks[0], 0, true, NULL);
    _cleanup_free_ char *s0 = cfs_buf_steal(&b);
    o = parse_json(s0);
    assert_json_str(o, "state", "partial");
    assert_json_int(o, "depth", 0);
    assert_json_bool(o, "active", true);
    assert_json_str(o, "frozen", "/var/lib/libvirt/images/web01.vda.s1.qcow2");
    assert_json_str(o, "name_source", "chainfs");
    json_object_put(o);
}

/* ---- issue 10: how a snapshot was taken; the domain's files ---------------------- */

/* web01 with a second disk vdb holding before-upgrade too, and libvirt's
 * snapshot before-upgrade of both, taken quiesced at domain level */
static struct cfs_domain *web01_two(const char *description)
{
    struct cfs_domain *d = web01();
    d->disks = cfs_xrealloc(d->disks, 2 * sizeof(struct cfs_disk));
    d->n_disks = 2;
    struct cfs_disk *k = &d->disks[1];
    *k = (struct cfs_disk){ .target = cfs_xstrdup("vdb"), .n_layers = 2 };
    k->layers = cfs_xcalloc(2, sizeof(struct cfs_layer));
    k->layers[0].path = cfs_xstrdup("/var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2");
    k->layers[0].meta_name = cfs_xstrdup("before-upgrade");
    k->layers[0].format = cfs_xstrdup("qcow2");
    k->layers[1].path = cfs_xstrdup("/var/lib/libvirt/images/web01-data.qcow2");
    k->layers[1].format = cfs_xstrdup("qcow2");
    cfs_domain_resolve_names(d);
    d->n_snaps = 1;
    d->snaps = cfs_xcalloc(1, sizeof(*d->snaps));
    struct cfs_snap_info *si = &d->snaps[0];
    si->name = cfs_xstrdup("before-upgrade");
    si->description = cfs_xstrdup(description);
    si->created = 1795276800; /* 2026-11-21T16:00:00Z */
    si->n_disks = 3;
    si->disks = cfs_xcalloc(3, sizeof(*si->disks));
    static const char *const t[] = { "vda", "vdb", "hdc" };
    static const char *const sn[] = { "external", "external", "no" };
    for (size_t i = 0; i < 3; i++) {
        si->disks[i].target = cfs_xstrdup(t[i]);
        si->disks[i].snapshot = cfs_xstrdup(sn[i]);
    }
    return d;
}

#define QUIESCED_LINE "user text\nchainfs: scope=domain quiesced=yes filesystems=2 " \
                      "disks=vda,vdb excluded=hdc:cdrom"

static void test_info_taken(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01_two(QUIESCED_LINE);
    struct cfs_buf b = { 0 };
    cfs_render_info_text(&b, d, &d->disks[1], 0, false, &d->snaps[0]);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    assert_string_equal(s,
        "name:      before-upgrade\n"
        "domain:    web01\n"
        "disk:      vdb\n"
        "state:     ok\n"
        "file:      /var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2\n"
        "format:    qcow2\n"
        "virtual:   0B\n"
        "allocated: 0B\n"
        "frozen:    /var/lib/libvirt/images/web01-data.qcow2\n"
        "depth:     0\n"
        "active:    yes\n"
        "source:    libvirt-metadata\n"
        "quiesced:  yes\n"
        "quiesce:   2 filesystems frozen by the guest agent\n"
        "taken:     domain (vda, vdb; not: hdc cdrom)\n");

    cfs_render_info_json(&b, d, &d->disks[1], 0, false, &d->snaps[0]);
    _cleanup_free_ char *j = cfs_buf_steal(&b);
    struct json_object *o = parse_json(j);
    assert_json_bool(o, "quiesced", true);
    assert_json_str(o, "quiesce_reason", NULL);
    assert_json_int(o, "filesystems", 2);
    assert_json_str(o, "scope", "domain");
    struct json_object *da = get(o, "disks");
    assert_int_equal(json_object_array_length(da), 2);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(da, 1)), "vdb");
    struct json_object *ex = json_object_array_get_idx(get(o, "excluded"), 0);
    assert_json_str(ex, "disk", "hdc");
    assert_json_str(ex, "why", "cdrom");
    json_object_put(o);

    /* not quiesced, disk level: the reason */
    free(d->snaps[0].description);
    d->snaps[0].description = cfs_xstrdup("chainfs: scope=disk quiesced=no disks=vdb "
                                          "reason=QEMU guest agent is not connected");
    cfs_render_info_text(&b, d, &d->disks[1], 0, false, &d->snaps[0]);
    _cleanup_free_ char *s2 = cfs_buf_steal(&b);
    assert_non_null(strstr(s2, "quiesced:  no\n"
                               "quiesce:   QEMU guest agent is not connected\n"
                               "taken:     disk\n"));
    cfs_render_info_json(&b, d, &d->disks[1], 0, false, &d->snaps[0]);
    _cleanup_free_ char *j2 = cfs_buf_steal(&b);
    o = parse_json(j2);
    assert_json_bool(o, "quiesced", false);
    assert_json_str(o, "quiesce_reason", "QEMU guest agent is not connected");
    assert_json_str(o, "filesystems", NULL);
    assert_json_str(o, "scope", "disk");
    json_object_put(o);
}

static void test_dom_info(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01_two(QUIESCED_LINE);
    struct cfs_snap_where w[2] = {
        { &d->disks[0], 1, false },
        { &d->disks[1], 0, true },
    };
    struct cfs_buf b = { 0 };
    cfs_render_dom_info_text(&b, d, "before-upgrade", &d->snaps[0], w, 2, NULL);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    assert_string_equal(s,
        "name:     before-upgrade\n"
        "domain:   web01\n"
        "state:    ok\n"
        "created:  2026-11-21T16:00:00Z\n"
        "quiesced: yes\n"
        "quiesce:  2 filesystems frozen by the guest agent\n"
        "taken:    domain (vda, vdb; not: hdc cdrom)\n"
        "\n"
        "DISK  STATE    FILE\n"
        "vda   ok       /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "vdb   partial  /var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2\n");

    /* vda's layer merged away by a disk-level rmdir: a row "merged" */
    w[0].index = -1;
    cfs_render_dom_info_text(&b, d, "before-upgrade", &d->snaps[0], w, 2, NULL);
    _cleanup_free_ char *s2 = cfs_buf_steal(&b);
    assert_non_null(strstr(s2, "\n"
        "DISK  STATE    FILE\n"
        "vda   merged   -\n"
        "vdb   partial  /var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2\n"));

    cfs_render_dom_info_json(&b, d, "before-upgrade", &d->snaps[0], w, 2, NULL);
    _cleanup_free_ char *j = cfs_buf_steal(&b);
    static const char *const keys[] = {
        "name", "domain", "state", "remaining", "created", "quiesced",
        "quiesce_reason", "filesystems", "scope", "disks", "excluded", "layers",
    };
    struct json_object *o = parse_json(j);
    assert_json_keys(o, keys, ELEMENTSOF(keys));
    assert_json_str(o, "created", "2026-11-21T16:00:00Z");
    assert_json_bool(o, "quiesced", true);
    struct json_object *la = get(o, "layers");
    assert_int_equal(json_object_array_length(la), 2);
    struct json_object *l0 = json_object_array_get_idx(la, 0);
    assert_json_str(l0, "disk", "vda");
    assert_json_str(l0, "state", "merged");
    assert_json_str(l0, "file", NULL);
    assert_json_str(l0, "depth", NULL);
    struct json_object *l1 = json_object_array_get_idx(la, 1);
    assert_json_str(l1, "state", "partial");
    assert_json_str(l1, "frozen", "/var/lib/libvirt/images/web01-data.qcow2");
    assert_json_int(l1, "depth", 0);
    json_object_put(o);

    /* a snapshot chainfs knows nothing of (no metadata): unknown, and a
     * disk without the layer is no row */
    cfs_render_dom_info_text(&b, d, "before-upgrade", NULL, w, 2, NULL);
    _cleanup_free_ char *s3 = cfs_buf_steal(&b);
    assert_string_equal(s3,
        "name:     before-upgrade\n"
        "domain:   web01\n"
        "state:    ok\n"
        "created:  -\n"
        "quiesced: -\n"
        "quiesce:  -\n"
        "taken:    -\n"
        "\n"
        "DISK  STATE    FILE\n"
        "vdb   partial  /var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2\n");
}

static void test_dom_job(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01_two(NULL);
    struct cfs_job j = running_job();
    struct cfs_dom_disk_job dj[2] = {
        { "vda", &j, NULL },
        { "vdb", NULL, NULL },
    };
    struct cfs_buf b = { 0 };
    cfs_render_dom_job_text(&b, d, dj, 2, NULL, NULL, false);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    assert_string_equal(s,
        "domain: web01\n"
        "state:  none\n"
        "\n"
        "disk: vda\n"
        "  type:      active-commit\n"
        "  state:     running\n"
        "  snapshot:  s2\n"
        "  top:       /var/lib/libvirt/images/web01.vda.s2.qcow2\n"
        "  base:      /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "  progress:  42% [########------------]\n"
        "  bytes:     27.0MiB / 64.0MiB\n"
        "  bandwidth: unlimited\n"
        "  origin:    chainfs\n"
        "  pivot:     auto\n"
        "  started:   2026-09-21T14:13:20Z\n"
        "  finished:  -\n"
        "  error:     -\n"
        "\n"
        "disk: vdb\n"
        "  type:  none\n"
        "  state: none\n");

    struct cfs_thaw_owed thaw = { .dom = "web01", .since = 1795276800,
                                  .error = "Guest agent is not responding",
                                  .attempts = 3 };
    cfs_render_dom_job_text(&b, d, dj + 1, 1, NULL, &thaw, true);
    _cleanup_free_ char *s2 = cfs_buf_steal(&b);
    assert_string_equal(s2,
        "domain: web01\n"
        "state:  none\n"
        "thaw:   owed since 2026-11-21T16:00:00Z (3 failed attempts), last "
        "error: Guest agent is not responding\n"
        "stale:  yes\n"
        "\n"
        "disk: vdb\n"
        "  type:  none\n"
        "  state: none\n");

    cfs_render_dom_job_json(&b, d, dj, 2, NULL, &thaw, false);
    _cleanup_free_ char *js = cfs_buf_steal(&b);
    static const char *const keys[] = { "domain", "state", "group", "thaw",
                                        "disks", "stale" };
    struct json_object *o = parse_json(js);
    assert_json_keys(o, keys, ELEMENTSOF(keys));
    assert_json_str(o, "group", NULL);
    struct json_object *t = get(o, "thaw");
    assert_json_int(t, "attempts", 3);
    assert_json_str(t, "since", "2026-11-21T16:00:00Z");
    struct json_object *da = get(o, "disks");
    assert_int_equal(json_object_array_length(da), 2);
    struct json_object *d0 = json_object_array_get_idx(da, 0);
    assert_json_str(d0, "disk", "vda");
    assert_json_str(d0, "type", "active-commit");
    assert_json_int(d0, "progress_percent", 42);
    struct json_object *d1 = json_object_array_get_idx(da, 1);
    assert_json_str(d1, "disk", "vdb");
    assert_json_str(d1, "type", "none");
    json_object_put(o);

    cfs_render_dom_job_json(&b, d, dj, 0, NULL, NULL, false);
    _cleanup_free_ char *js2 = cfs_buf_steal(&b);
    o = parse_json(js2);
    assert_json_str(o, "thaw", NULL);
    assert_int_equal(json_object_array_length(get(o, "disks")), 0);
    json_object_put(o);
}

/* Issue 10 §3.5: <dom>/job with a job group: the group block (members
 * with their state, a running one with its progress, what remains, the
 * first failure), then each disk's job; a member held in ready says so. */
static void test_dom_job_group(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01_two(NULL);
    struct cfs_group_member m[2] = {
        { .disk = "vda", .state = CFS_MEMBER_READY, .job_id = 7 },
        { .disk = "vdb", .state = CFS_MEMBER_RUNNING, .job_id = 8 },
    };
    struct cfs_group g = {
        .id = "1795276800-42-3", .dom = "web01", .snapshot = "before-upgrade",
        .n_members = 2, .members = m, .phase = CFS_GROUP_RUNNING,
        .started = 1795276800,
    };
    struct cfs_job ja = running_job();
    ja.phase = CFS_PHASE_READY;
    ja.cur = ja.end;
    ja.snapshot = "before-upgrade";
    ja.group = g.id;
    struct cfs_job jb = running_job();
    jb.snapshot = "before-upgrade";
    jb.top = "/var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2";
    jb.base = "/var/lib/libvirt/images/web01-data.qcow2";
    jb.group = g.id;
    struct cfs_dom_disk_job dj[2] = { { "vda", &ja, NULL }, { "vdb", &jb, NULL } };
    struct cfs_buf b = { 0 };
    cfs_render_dom_job_text(&b, d, dj, 2, &g, NULL, false);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    assert_string_equal(s,
        "domain:    web01\n"
        "group:     rmdir before-upgrade\n"
        "state:     running\n"
        "members:   vda ready, vdb running 42%\n"
        "remaining: vda vdb\n"
        "started:   2026-11-21T16:00:00Z\n"
        "finished:  -\n"
        "error:     -\n"
        "\n"
        "disk: vda\n"
        "  type:      active-commit\n"
        "  state:     ready (held: group)\n"
        "  snapshot:  before-upgrade\n"
        "  top:       /var/lib/libvirt/images/web01.vda.s2.qcow2\n"
        "  base:      /var/lib/libvirt/images/web01.vda.s1.qcow2\n"
        "  progress:  100% [####################]\n"
        "  bytes:     64.0MiB / 64.0MiB\n"
        "  bandwidth: unlimited\n"
        "  origin:    chainfs\n"
        "  pivot:     auto\n"
        "  started:   2026-09-21T14:13:20Z\n"
        "  finished:  -\n"
        "  error:     -\n"
        "\n"
        "disk: vdb\n"
        "  type:      active-commit\n"
        "  state:     running\n"
        "  snapshot:  before-upgrade\n"
        "  top:       /var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2\n"
        "  base:      /var/lib/libvirt/images/web01-data.qcow2\n"
        "  progress:  42% [########------------]\n"
        "  bytes:     27.0MiB / 64.0MiB\n"
        "  bandwidth: unlimited\n"
        "  origin:    chainfs\n"
        "  pivot:     auto\n"
        "  started:   2026-09-21T14:13:20Z\n"
        "  finished:  -\n"
        "  error:     -\n");

    /* ended partial: vdb failed (its base written), vda done */
    m[0].state = CFS_MEMBER_DONE;
    m[1].state = CFS_MEMBER_FAILED;
    m[1].error = "rmdir before-upgrade: No space left on device";
    m[1].partial = true;
    g.phase = CFS_GROUP_PARTIAL;
    g.finished = 1795276860;
    cfs_render_dom_job_text(&b, d, dj, 0, &g, NULL, true);
    _cleanup_free_ char *s2 = cfs_buf_steal(&b);
    assert_string_equal(s2,
        "domain:    web01\n"
        "group:     rmdir before-upgrade\n"
        "state:     partial\n"
        "members:   vda done, vdb failed (partial)\n"
        "remaining: vdb\n"
        "started:   2026-11-21T16:00:00Z\n"
        "finished:  2026-11-21T16:01:00Z\n"
        "error:     vdb: rmdir before-upgrade: No space left on device\n"
        "stale:     yes\n");

    /* completed: nothing remains */
    m[1].state = CFS_MEMBER_DONE;
    g.phase = CFS_GROUP_COMPLETED;
    cfs_render_dom_job_text(&b, d, dj, 0, &g, NULL, false);
    _cleanup_free_ char *s3 = cfs_buf_steal(&b);
    assert_string_equal(s3,
        "domain:    web01\n"
        "group:     rmdir before-upgrade\n"
        "state:     completed\n"
        "members:   vda done, vdb done\n"
        "remaining: -\n"
        "started:   2026-11-21T16:00:00Z\n"
        "finished:  2026-11-21T16:01:00Z\n"
        "error:     -\n");
    m[1].state = CFS_MEMBER_FAILED;
    g.phase = CFS_GROUP_PARTIAL;

    cfs_render_dom_job_json(&b, d, dj, 2, &g, NULL, false);
    _cleanup_free_ char *js = cfs_buf_steal(&b);
    struct json_object *o = parse_json(js);
    assert_json_str(o, "state", "partial");
    struct json_object *go = get(o, "group");
    static const char *const gkeys[] = { "id", "operation", "snapshot", "state",
                                         "members", "remaining", "started",
                                         "finished" };
    assert_json_keys(go, gkeys, ELEMENTSOF(gkeys));
    assert_json_str(go, "id", "1795276800-42-3");
    assert_json_str(go, "operation", "rmdir");
    assert_json_str(go, "snapshot", "before-upgrade");
    assert_json_str(go, "finished", "2026-11-21T16:01:00Z");
    struct json_object *ma = get(go, "members");
    assert_int_equal(json_object_array_length(ma), 2);
    struct json_object *m0 = json_object_array_get_idx(ma, 0);
    static const char *const mkeys[] = { "disk", "state", "progress_percent",
                                         "error", "partial" };
    assert_json_keys(m0, mkeys, ELEMENTSOF(mkeys));
    assert_json_str(m0, "state", "done");
    assert_json_int(m0, "progress_percent", 100);
    struct json_object *m1 = json_object_array_get_idx(ma, 1);
    assert_json_str(m1, "disk", "vdb");
    assert_json_str(m1, "state", "failed");
    assert_json_str(m1, "error", "rmdir before-upgrade: No space left on device");
    assert_json_bool(m1, "partial", true);
    struct json_object *ra = get(go, "remaining");
    assert_int_equal(json_object_array_length(ra), 1);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(ra, 0)), "vdb");
    struct json_object *d0 = json_object_array_get_idx(get(o, "disks"), 0);
    assert_json_str(d0, "group", "1795276800-42-3");
    json_object_put(o);
}

/* Issue 10 §3.4: a snapshot a group left partially merged: its state and
 * the disks it remains on; the disk merged by the group is a row. */
static void test_dom_info_partial(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01_two(QUIESCED_LINE);
    struct cfs_group_member m[2] = {
        { .disk = "vda", .state = CFS_MEMBER_DONE },
        { .disk = "vdb", .state = CFS_MEMBER_FAILED, .error = "No space left on device" },
    };
    struct cfs_group g = { .id = "x", .dom = "web01", .snapshot = "before-upgrade",
                           .n_members = 2, .members = m,
                           .phase = CFS_GROUP_PARTIAL };
    /* the merged disk's metadata no longer names it (snapshot_forget) */
    free(d->snaps[0].disks[0].snapshot);
    d->snaps[0].disks[0].snapshot = cfs_xstrdup("no");
    free(d->snaps[0].description);
    d->snaps[0].description = NULL;
    struct cfs_snap_where w[2] = {
        { &d->disks[0], -1, false },
        { &d->disks[1], 0, true },
    };
    struct cfs_buf b = { 0 };
    cfs_render_dom_info_text(&b, d, "before-upgrade", &d->snaps[0], w, 2, &g);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    assert_string_equal(s,
        "name:      before-upgrade\n"
        "domain:    web01\n"
        "state:     partially-merged\n"
        "remaining: vdb\n"
        "created:   2026-11-21T16:00:00Z\n"
        "quiesced:  -\n"
        "quiesce:   -\n"
        "taken:     -\n"
        "\n"
        "DISK  STATE    FILE\n"
        "vda   merged   -\n"
        "vdb   partial  /var/lib/libvirt/images/web01.vdb.before-upgrade.qcow2\n");

    cfs_render_dom_info_json(&b, d, "before-upgrade", &d->snaps[0], w, 2, &g);
    _cleanup_free_ char *j = cfs_buf_steal(&b);
    struct json_object *o = parse_json(j);
    assert_json_str(o, "state", "partially-merged");
    struct json_object *ra = get(o, "remaining");
    assert_int_equal(json_object_array_length(ra), 1);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(ra, 0)), "vdb");
    assert_int_equal(json_object_array_length(get(o, "layers")), 2);
    json_object_put(o);

    /* a group that completed or is still running: ok, no remaining */
    g.phase = CFS_GROUP_COMPLETED;
    cfs_render_dom_info_text(&b, d, "before-upgrade", &d->snaps[0], w, 2, &g);
    _cleanup_free_ char *s2 = cfs_buf_steal(&b);
    assert_non_null(strstr(s2, "state:    ok\n"));
    assert_null(strstr(s2, "remaining"));
    cfs_render_dom_info_json(&b, d, "before-upgrade", &d->snaps[0], w, 2, &g);
    _cleanup_free_ char *j2 = cfs_buf_steal(&b);
    o = parse_json(j2);
    assert_json_str(o, "state", "ok");
    assert_int_equal(json_object_array_length(get(o, "remaining")), 0);
    json_object_put(o);
}

/* Every renderer ends with exactly one newline, and is deterministic. */
static void test_all_end_with_newline(void **state)
{
    (void)state;
    _cleanup_domain_ struct cfs_domain *d = web01();
    struct cfs_job j = running_job();

    for (int k = 0; k < 6; k++) {
        for (int pass = 0; pass < 2; pass++) {
            struct cfs_buf a = { 0 }, b = { 0 };
            struct cfs_buf *bufs[2] = { &a, &b };
            for (int x = 0; x < 2; x++) {
                switch (k) {
                case 0: cfs_render_chain_text(bufs[x], d, &d->disks[0], pass); break;
                case 1: cfs_render_chain_json(bufs[x], d, &d->disks[0], pass); break;
                case 2: cfs_render_job_text(bufs[x], pass ? NULL : &j, pass); break;
                case 3: cfs_render_job_json(bufs[x], pass ? NULL : &j, pass); break;
                case 4: cfs_render_info_text(bufs[x], d, &d->disks[0], pass, pass, NULL); break;
                case 5: cfs_render_info_json(bufs[x], d, &d->disks[0], pass, pass, NULL); break;
                }
            }
            assert_true(a.len > 1);
            assert_int_equal(a.data[a.len - 1], '\n');
            assert_true(a.data[a.len - 2] != '\n');
            assert_int_equal(strlen(a.data), a.len);
            assert_string_equal(a.data, b.data);
            cfs_buf_free(&a);
            cfs_buf_free(&b);
        }
    }
}

/* Renderers append: the caller may build one buffer from several. */
static void test_renderers_append(void **state)
{
    (void)state;
    struct cfs_buf b = { 0 };

    cfs_buf_printf(&b, "prefix\n");
    cfs_render_job_text(&b, NULL, false);
    _cleanup_free_ char *s = cfs_buf_steal(&b);
    assert_string_equal(s, "prefix\ntype:  none\nstate: none\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_text_golden),
        cmocka_unit_test(test_chain_text_stale),
        cmocka_unit_test(test_chain_not_responding),
        cmocka_unit_test(test_chain_text_single_layer),
        cmocka_unit_test(test_chain_text_two_layers),
        cmocka_unit_test(test_chain_text_alignment),
        cmocka_unit_test(test_chain_text_escapes),
        cmocka_unit_test(test_chain_text_unknown_format),
        cmocka_unit_test(test_chain_json),
        cmocka_unit_test(test_chain_canonical_path),
        cmocka_unit_test(test_chain_json_single_and_empty),
        cmocka_unit_test(test_job_text_golden),
        cmocka_unit_test(test_job_text_failed),
        cmocka_unit_test(test_job_queue_and_returned),
        cmocka_unit_test(test_job_text_leftover),
        cmocka_unit_test(test_job_text_none),
        cmocka_unit_test(test_job_progress),
        cmocka_unit_test(test_job_json),
        cmocka_unit_test(test_job_json_none),
        cmocka_unit_test(test_job_origin_and_pivot),
        cmocka_unit_test(test_info_text_golden),
        cmocka_unit_test(test_info_text_active_partial),
        cmocka_unit_test(test_info_out_of_range),
        cmocka_unit_test(test_info_json),
        cmocka_unit_test(test_info_taken),
        cmocka_unit_test(test_dom_info),
        cmocka_unit_test(test_dom_job),
        cmocka_unit_test(test_dom_job_group),
        cmocka_unit_test(test_dom_info_partial),
        cmocka_unit_test(test_all_end_with_newline),
        cmocka_unit_test(test_renderers_append),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
