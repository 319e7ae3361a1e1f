/* test_log.c — log.c: one record is one line. Names reach the log from
 * FUSE paths (a mkdir of "a\nb" is refused, and its refusal is logged
 * with the name) and from libvirt's messages; a control character in
 * them must not start a line of its own that looks like the daemon's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "chainfs/log.h"
#include "chainfs/util.h"

/* Run FN with stderr sent to a temporary file; return what it wrote. */
static char *capture_stderr(void (*fn)(void))
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    fn();
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    struct cfs_buf b = {0};
    char chunk[512];
    size_t n;
    rewind(tmp);
    while ((n = fread(chunk, 1, sizeof(chunk), tmp)) > 0)
        cfs_buf_put(&b, chunk, n);
    fclose(tmp);
    return cfs_buf_steal(&b);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void log_forged_name(void)
{
    cfs_log_init(false, false);
    log_warn("mkdir %s refused (Invalid argument): bad name",
             "dom/vda/snapshots/x\n2026-11-29T16:00:00.000Z chainfs info: mkdir ok");
}

static void test_newline_in_name(void **state)
{
    (void)state;
    _cleanup_free_ char *out = capture_stderr(log_forged_name);
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, "snapshots/x\\n2026-11-29T16:00:00.000Z chainfs info: mkdir ok"
                                " refused (Invalid argument): bad name\n"));
    assert_non_null(strstr(out, " chainfs warning: mkdir dom/vda/"));
}

static void log_controls(void)
{
    cfs_log_init(false, false);
    log_err("libvirt said: %s", "a\rb\x1b[31mc\td\x7f" "e\x01" "f caf\xc3\xa9");
}

static void test_other_controls(void **state)
{
    (void)state;
    _cleanup_free_ char *out = capture_stderr(log_controls);
    assert_int_equal(count_lines(out), 1);
    /* CR, ESC, TAB, DEL and the rest escaped; UTF-8 kept as it is */
    assert_non_null(strstr(out, " chainfs error: libvirt said: "
                                "a\\x0db\\x1b[31mc\\td\\x7fe\\x01f caf\xc3\xa9\n"));
}

static void log_debug_off(void)
{
    cfs_log_init(false, false);
    log_debug("not shown\n");
}

static void test_debug_off(void **state)
{
    (void)state;
    _cleanup_free_ char *out = capture_stderr(log_debug_off);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_newline_in_name),
        cmocka_unit_test(test_other_controls),
        cmocka_unit_test(test_debug_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
