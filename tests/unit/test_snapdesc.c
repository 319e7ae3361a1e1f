/* test_snapdesc.c — chainfs's line in a snapshot's <description>
 * (snapdesc.c): format and parse round trip, escapes, the line among a
 * user's own text, what is malformed, and the `quiesce:` text. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "chainfs/snapdesc.h"
#include "chainfs/util.h"

static void test_format_quiesced(void **state)
{
    (void)state;
    char *disks[] = { "vda", "vdb", NULL };
    struct cfs_disk_note ex[] = { { "hdc", "cdrom" }, { "vdc", "read-only" } };
    struct cfs_snapdesc d = { .scope = CFS_SCOPE_DOMAIN, .quiesced = 1,
                              .filesystems = 2, .disks = disks,
                              .n_excluded = 2, .excluded = ex,
                              .reason = "ignored when quiesced" };
    _cleanup_free_ char *s = cfs_snapdesc_format(&d);
    assert_string_equal(s, "chainfs: scope=domain quiesced=yes filesystems=2 "
                           "disks=vda,vdb excluded=hdc:cdrom,vdc:read-only");

    struct cfs_snapdesc p;
    assert_int_equal(cfs_snapdesc_parse(s, &p), 0);
    assert_int_equal(p.scope, CFS_SCOPE_DOMAIN);
    assert_int_equal(p.quiesced, 1);
    assert_int_equal(p.filesystems, 2);
    assert_null(p.reason);
    assert_int_equal(cfs_strv_len(p.disks), 2);
    assert_string_equal(p.disks[1], "vdb");
    assert_int_equal(p.n_excluded, 2);
    assert_string_equal(p.excluded[1].target, "vdc");
    assert_string_equal(p.excluded[1].why, "read-only");
    _cleanup_free_ char *q = cfs_snapdesc_quiesce_text(&p);
    assert_string_equal(q, "2 filesystems frozen by the guest agent");
    cfs_snapdesc_clear(&p);
}

static void test_format_not_quiesced(void **state)
{
    (void)state;
    char *disks[] = { "vda", NULL };
    struct cfs_disk_note ex[] = { { "sda", "no source" } };
    struct cfs_snapdesc d = { .scope = CFS_SCOPE_DISK, .quiesced = 0,
                              .disks = disks, .n_excluded = 1, .excluded = ex,
                              .reason = "QEMU guest agent is not connected\n\\x" };
    _cleanup_free_ char *s = cfs_snapdesc_format(&d);
    assert_string_equal(s, "chainfs: scope=disk quiesced=no disks=vda "
                           "excluded=sda:no\\x20source "
                           "reason=QEMU guest agent is not connected\\n\\\\x");
    assert_null(strchr(s, '\n'));

    struct cfs_snapdesc p;
    assert_int_equal(cfs_snapdesc_parse(s, &p), 0);
    assert_int_equal(p.scope, CFS_SCOPE_DISK);
    assert_int_equal(p.quiesced, 0);
    assert_string_equal(p.reason, "QEMU guest agent is not connected\n\\x");
    assert_string_equal(p.excluded[0].why, "no source");
    _cleanup_free_ char *q = cfs_snapdesc_quiesce_text(&p);
    assert_string_equal(q, p.reason);
    cfs_snapdesc_clear(&p);

    /* one filesystem; a reason with '=' and spaces */
    struct cfs_snapdesc one = { .quiesced = 1, .filesystems = 1 };
    _cleanup_free_ char *s1 = cfs_snapdesc_format(&one);
    assert_string_equal(s1, "chainfs: quiesced=yes filesystems=1");
    assert_int_equal(cfs_snapdesc_parse(s1, &p), 0);
    _cleanup_free_ char *q1 = cfs_snapdesc_quiesce_text(&p);
    assert_string_equal(q1, "1 filesystem frozen by the guest agent");
    cfs_snapdesc_clear(&p);
    assert_int_equal(cfs_snapdesc_parse("chainfs: quiesced=no reason=a=b c d", &p), 0);
    assert_string_equal(p.reason, "a=b c d");
    cfs_snapdesc_clear(&p);
}

static void test_among_user_text(void **state)
{
    (void)state;
    struct cfs_snapdesc p;
    assert_int_equal(cfs_snapdesc_parse("before the upgrade\r\n"
                                        "chainfs: quiesced=no reason=domain shut off\r\n"
                                        "more words", &p), 0);
    assert_int_equal(p.quiesced, 0);
    assert_string_equal(p.reason, "domain shut off");
    cfs_snapdesc_clear(&p);
    /* a later version's key is skipped */
    assert_int_equal(cfs_snapdesc_parse("chainfs: v=3 quiesced=yes filesystems=0 x=y", &p), 0);
    assert_int_equal(p.quiesced, 1);
    assert_int_equal(p.filesystems, 0);
    cfs_snapdesc_clear(&p);
}

static void test_absent_and_malformed(void **state)
{
    (void)state;
    struct cfs_snapdesc p;
    assert_int_equal(cfs_snapdesc_parse(NULL, &p), -ENOENT);
    assert_int_equal(p.quiesced, -1);
    assert_null(cfs_snapdesc_quiesce_text(&p));
    assert_int_equal(cfs_snapdesc_parse("", &p), -ENOENT);
    assert_int_equal(cfs_snapdesc_parse("made by hand\nchainfs:quiesced=yes", &p), -ENOENT);
    static const char *const bad[] = {
        "chainfs: ",
        "chainfs: scope=domain",                     /* no quiesced */
        "chainfs: quiesced=maybe",
        "chainfs: quiesced=yes filesystems=x",
        "chainfs: quiesced=yes filesystems=",
        "chainfs: scope=vm quiesced=yes",
        "chainfs: quiesced=yes  disks=vda",           /* two spaces */
        "chainfs: quiesced=yes ",
        "chainfs: quiesced=yes disks=vda,",
        "chainfs: quiesced=yes disks=,vda",
        "chainfs: quiesced=yes excluded=hdc",
        "chainfs: quiesced=yes excluded=:cdrom",
        "chainfs: quiesced=no reason=bad\\q",
        "chainfs: quiesced=no reason=bad\\x0",
        "chainfs: quiesced=no reason=nul\\x00",
        "chainfs: quiesced",
        "chainfs: =yes quiesced=yes",
    };
    for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
        if (cfs_snapdesc_parse(bad[i], &p) != -EINVAL)
            fail_msg("\"%s\" parsed", bad[i]);
        assert_int_equal(p.quiesced, -1);
        assert_null(p.reason);
        assert_null(p.disks);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_quiesced),
        cmocka_unit_test(test_format_not_quiesced),
        cmocka_unit_test(test_among_user_text),
        cmocka_unit_test(test_absent_and_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
