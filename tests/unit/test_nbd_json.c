/* test_nbd_json.c — backend/nbd_json.c: the `json:` filename qemu-nbd
 * gets for a frozen chain (docs/design/issue9.md §1.2): driver per layer
 * from its format, "file" or "host_device", nested "backing", the bottom
 * layer without any "backing" key, strings escaped, a layer without a
 * format refused (never probed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "chainfs/imgserve.h"

static struct cfs_img_spec spec_of(const struct cfs_img_layer *l, size_t n)
{
    struct cfs_img_spec s = {.layers = l, .n_layers = n, .virtual_size = 1 << 20,
                             .label = "t"};
    return s;
}

/* Parse OUT (which must start with "json:") */
static struct json_object *parse(const char *out)
{
    assert_non_null(out);
    assert_int_equal(strncmp(out, "json:", 5), 0);
    struct json_object *o = json_tokener_parse(out + 5);
    assert_non_null(o);
    return o;
}

static const char *str_of(struct json_object *o, const char *key)
{
    struct json_object *v;
    assert_true(json_object_object_get_ex(o, key, &v));
    assert_true(json_object_is_type(v, json_type_string));
    return json_object_get_string(v);
}

static struct json_object *obj_of(struct json_object *o, const char *key)
{
    struct json_object *v;
    assert_true(json_object_object_get_ex(o, key, &v));
    assert_true(json_object_is_type(v, json_type_object));
    return v;
}

static void test_single_layer_exact(void **state)
{
    (void)state;
    struct cfs_img_layer l[] = {{"/v/s1.qcow2", "qcow2", false}};
    struct cfs_img_spec s = spec_of(l, 1);
    const char *err = "x";
    char *out = cfs_imgserve_chain_json(&s, &err);
    assert_null(err);
    assert_string_equal(out, "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
                             "\"filename\":\"/v/s1.qcow2\"}}");
    free(out);
}

static void test_chain_nesting(void **state)
{
    (void)state;
    struct cfs_img_layer l[] = {
        {"/v/s2.qcow2", "qcow2", false},
        {"/v/s1.qcow2", "qcow2", false},
        {"/dev/vg/base", "raw", true},
    };
    struct cfs_img_spec s = spec_of(l, 3);
    const char *err = NULL;
    char *out = cfs_imgserve_chain_json(&s, &err);
    assert_null(err);
    struct json_object *o = parse(out);
    struct json_object *n = o;
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(str_of(n, "driver"), l[i].format);
        struct json_object *f = obj_of(n, "file");
        assert_string_equal(str_of(f, "driver"), l[i].is_block ? "host_device" : "file");
        assert_string_equal(str_of(f, "filename"), l[i].path);
        struct json_object *b;
        bool has = json_object_object_get_ex(n, "backing", &b);
        if (i < 2) {
            assert_true(has);
            assert_true(json_object_is_type(b, json_type_object));
            n = b;
        } else {
            /* the bottom: no key at all, not null */
            assert_false(has);
            assert_null(strstr(out, "null"));
        }
    }
    json_object_put(o);
    free(out);
}

static void test_other_format_passed_through(void **state)
{
    (void)state;
    struct cfs_img_layer l[] = {{"/v/a.qcow2", "qcow2", false}, {"/v/b.vmdk", "vmdk", false}};
    struct cfs_img_spec s = spec_of(l, 2);
    char *out = cfs_imgserve_chain_json(&s, NULL);
    struct json_object *o = parse(out);
    assert_string_equal(str_of(obj_of(o, "backing"), "driver"), "vmdk");
    json_object_put(o);
    free(out);
}

static void test_escaping(void **state)
{
    (void)state;
    const char *nasty = "/v/a \"q\" \\b\n\t\x01,c/d.qcow2";
    struct cfs_img_layer l[] = {{nasty, "qcow2", false}};
    struct cfs_img_spec s = spec_of(l, 1);
    char *out = cfs_imgserve_chain_json(&s, NULL);
    /* no raw control character, quote or backslash unescaped */
    for (const char *p = out; *p; p++)
        assert_true((unsigned char)*p >= 0x20);
    assert_non_null(strstr(out, "\\\"q\\\""));
    assert_non_null(strstr(out, "\\\\b"));
    assert_non_null(strstr(out, "\\n"));
    assert_non_null(strstr(out, "\\u0001"));
    assert_non_null(strstr(out, ",c/d.qcow2")); /* a comma is not doubled */
    struct json_object *o = parse(out);
    assert_string_equal(str_of(obj_of(o, "file"), "filename"), nasty);
    json_object_put(o);
    free(out);
}

static void test_unknown_format(void **state)
{
    (void)state;
    struct cfs_img_layer empty[] = {{"/v/a.qcow2", "qcow2", false}, {"/v/b", "", false}};
    struct cfs_img_layer null[] = {{"/v/a.qcow2", NULL, false}};
    const char *err = NULL;
    struct cfs_img_spec s = spec_of(empty, 2);
    assert_null(cfs_imgserve_chain_json(&s, &err));
    assert_non_null(err);
    assert_non_null(strstr(err, "format"));
    err = NULL;
    s = spec_of(null, 1);
    assert_null(cfs_imgserve_chain_json(&s, &err));
    assert_non_null(err);
}

static void test_bad_spec(void **state)
{
    (void)state;
    const char *err = NULL;
    struct cfs_img_spec s = spec_of(NULL, 0);
    assert_null(cfs_imgserve_chain_json(&s, &err));
    assert_non_null(err);
    struct cfs_img_layer rel[] = {{"rel/a.qcow2", "qcow2", false}};
    err = NULL;
    s = spec_of(rel, 1);
    assert_null(cfs_imgserve_chain_json(&s, &err));
    assert_non_null(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_layer_exact),
        cmocka_unit_test(test_chain_nesting),
        cmocka_unit_test(test_other_format_passed_through),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_unknown_format),
        cmocka_unit_test(test_bad_spec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
