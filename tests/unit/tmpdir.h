/* tmpdir.h — removing a unit test's own mkdtemp() directory, with all in
 * it. Include after <cmocka.h>. */
#ifndef CHAINFS_TEST_TMPDIR_H
#define CHAINFS_TEST_TMPDIR_H

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

static inline void test_tmpdir_remove(const char *dir)
{
    char cmd[PATH_MAX + 16];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

#endif
