/* test_mountid.c — fs/fuse/mountid.c: the fsname and subtype options
 * that make `mount` show "qemu:///system on /vms type fuse.chainfs". The
 * escaped URI goes through libfuse's own option parser, as fuse_new()
 * parses it, and must come out unchanged. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define FUSE_USE_VERSION 312
#include <fuse_opt.h>

#include "../../fs/fuse/mountid.h"
#include "chainfs/util.h"

struct parsed {
    char *fsname;
    char *subtype;
    int others;
};

static int count_others(void *data, const char *arg, int key,
                        struct fuse_args *outargs)
{
    (void)arg, (void)key, (void)outargs;
    ((struct parsed *)data)->others++;
    return 0;
}

/* What libfuse makes of OPT ("-o..."), as one more argument of a
 * command line. */
static struct parsed parse(const char *opt)
{
    static const struct fuse_opt table[] = {
        {"fsname=%s", offsetof(struct parsed, fsname), 0},
        {"subtype=%s", offsetof(struct parsed, subtype), 0},
        FUSE_OPT_END,
    };
    char *argv[] = {"chainfs", (char *)opt, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(2, argv);
    struct parsed p = {0};
    assert_int_equal(fuse_opt_parse(&args, &p, table, count_others), 0);
    fuse_opt_free_args(&args);
    return p;
}

static void parsed_free(struct parsed *p)
{
    free(p->fsname);
    free(p->subtype);
}

static void test_escape(void **state)
{
    (void)state;
    const struct { const char *in, *out; } cases[] = {
        {"qemu:///system", "qemu:///system"},
        {"", ""},
        {"a,b", "a\\,b"},
        {"a\\b", "a\\\\b"},
        {",\\,", "\\,\\\\\\,"},
        {"\\012", "\\\\012"}, /* not read as an octal escape */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        _cleanup_free_ char *e = cfs_fuse_opt_escape(cases[i].in);
        assert_string_equal(e, cases[i].out);
    }
}

/* Every URI comes back from libfuse's parser as it went in, with
 * subtype chainfs and nothing else. */
static void test_roundtrip_through_libfuse(void **state)
{
    (void)state;
    const char *uris[] = {
        "qemu:///system",
        "qemu+ssh://root@host/system?keyfile=/root/.ssh/k,x&no_tty=1",
        "test:///a\\b,c\\,d",
        "qemu:///system?socket=/run/a\\012b",
        "x,,y\\\\",
    };
    for (size_t i = 0; i < sizeof(uris) / sizeof(uris[0]); i++) {
        _cleanup_free_ char *opt = cfs_mount_identity_opt(uris[i], false, false);
        struct parsed p = parse(opt);
        assert_non_null(p.fsname);
        assert_string_equal(p.fsname, uris[i]);
        assert_string_equal(p.subtype, "chainfs");
        assert_int_equal(p.others, 0);
        parsed_free(&p);
    }
}

/* The user's own fsname or subtype win: ours is left out. */
static void test_user_options_win(void **state)
{
    (void)state;
    assert_null(cfs_mount_identity_opt("qemu:///system", true, true));

    _cleanup_free_ char *a = cfs_mount_identity_opt("qemu:///system", true, false);
    assert_string_equal(a, "-osubtype=chainfs");
    _cleanup_free_ char *b = cfs_mount_identity_opt("qemu:///system", false, true);
    assert_string_equal(b, "-ofsname=qemu:///system");
    _cleanup_free_ char *c = cfs_mount_identity_opt(NULL, false, false);
    assert_string_equal(c, "-ofsname=chainfs,subtype=chainfs");
}

/* Issue 12: several hosts are named "chainfs:NAME1,NAME2", and the comma
 * survives libfuse's option parser as one fsname. */
static void test_fleet_source(void **state)
{
    (void)state;
    const char *names[] = {"local", "h2"};
    char *src = cfs_mount_fleet_source(names, 2);
    assert_string_equal(src, "chainfs:local,h2");
    char *opt = cfs_mount_identity_opt(src, false, false);
    struct parsed p = parse(opt);
    assert_string_equal(p.fsname, "chainfs:local,h2");
    assert_string_equal(p.subtype, "chainfs");
    assert_int_equal(p.others, 0);
    parsed_free(&p);
    free(opt);
    free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_roundtrip_through_libfuse),
        cmocka_unit_test(test_user_options_win),
        cmocka_unit_test(test_fleet_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
