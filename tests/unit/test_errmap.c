/* test_errmap.c — backend/errmap.c: libvirt errors become errno by
 * libvirt's code first, text only where libvirt has no code. The messages
 * are the ones libvirt and QEMU print (virsh shows them after the code's
 * prefix, e.g. "block copy still active: ..."). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "errmap.h"

static int map(int code, int domain, int int1, const char *msg,
               enum cfs_lverr_op op)
{
    struct cfs_lverr e = { code, domain, int1, msg, false };

    return cfs_lverr_errno(&e, op);
}

#define ANY CFS_LVERR_OP_ANY
#define JOB CFS_LVERR_OP_JOB
#define PIVOT CFS_LVERR_OP_PIVOT
#define QEMU 10 /* VIR_FROM_QEMU */

static void test_codes(void **state)
{
    (void)state;
    assert_int_equal(map(CFS_VERR_NO_DOMAIN, QEMU, 0,
                         "Domain not found: no domain with matching name 'x'", ANY), -ENOENT);
    assert_int_equal(map(CFS_VERR_NO_DOMAIN_SNAPSHOT, QEMU, 0,
                         "Domain snapshot not found", ANY), -ENOENT);
    assert_int_equal(map(CFS_VERR_NO_STORAGE_VOL, 0, 0, "no storage vol", ANY), -ENOENT);
    assert_int_equal(map(CFS_VERR_ACCESS_DENIED, 0, 0, "access denied", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_AUTH_FAILED, 0, 0, "authentication failed", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_AUTH_CANCELLED, 0, 0, "x", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_AUTH_UNAVAILABLE, 0, 0, "x", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_OPERATION_DENIED, 0, 0, "read-only connection", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_NO_SUPPORT, 0, 0, "this function is not supported", ANY), -EOPNOTSUPP);
    assert_int_equal(map(CFS_VERR_ARGUMENT_UNSUPPORTED, 0, 0, "unsupported flags", ANY), -EOPNOTSUPP);
    assert_int_equal(map(CFS_VERR_RESOURCE_BUSY, 0, 0, "x", ANY), -EBUSY);
    assert_int_equal(map(CFS_VERR_STORAGE_VOL_EXIST, 0, 0, "x", ANY), -EEXIST);
    /* an English word in a message of another code decides nothing */
    assert_int_equal(map(CFS_VERR_NO_DOMAIN, QEMU, 0, "Permission denied", ANY), -ENOENT);
}

static void test_connection(void **state)
{
    struct cfs_lverr dead = { CFS_VERR_NO_DOMAIN, QEMU, 0, "whatever", true };

    (void)state;
    assert_int_equal(cfs_lverr_errno(&dead, ANY), -ENOTCONN);
    assert_int_equal(map(CFS_VERR_NO_CONNECT, 0, 0, "no connection driver", ANY), -ENOTCONN);
    assert_int_equal(map(CFS_VERR_INVALID_CONN, 0, 0, "invalid connection", ANY), -ENOTCONN);
    assert_int_equal(map(CFS_VERR_RPC, CFS_VERR_FROM_RPC, 0, "x", JOB), -ENOTCONN);
    assert_int_equal(map(CFS_VERR_NO_SERVER, 0, 0, "x", ANY), -ENOTCONN);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, CFS_VERR_FROM_RPC, ECONNRESET,
                         "End of file while reading data: Input/output error", ANY), -ENOTCONN);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, CFS_VERR_FROM_REMOTE, EPIPE,
                         "Cannot write data: Broken pipe", ANY), -ENOTCONN);
    assert_int_equal(map(CFS_VERR_INTERNAL_ERROR, CFS_VERR_FROM_RPC, 0,
                         "client socket is closed", ANY), -ENOTCONN);
    /* an internal error of the qemu driver is not the connection */
    assert_int_equal(map(CFS_VERR_INTERNAL_ERROR, QEMU, 0,
                         "unable to execute QEMU command 'x': y", ANY), -EIO);
}

static void test_system_errno(void **state)
{
    (void)state;
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, ENOSPC,
                         "unable to create 'x'", ANY), -ENOSPC);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, EDQUOT, "x", ANY), -ENOSPC);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, EACCES, "x", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, EPERM, "x", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, ENOENT, "x", ANY), -ENOENT);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, EEXIST, "x", ANY), -EEXIST);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, EROFS, "x", ANY), -EROFS);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, EINVAL, "x", ANY), -EIO);
    assert_int_equal(map(CFS_VERR_SYSTEM_ERROR, QEMU, 0, "x", ANY), -EIO);
}

static void test_jobs(void **state)
{
    (void)state;
    /* qemuDomainBlockPivot before the mirror is ready */
    assert_int_equal(map(CFS_VERR_BLOCK_COPY_ACTIVE, QEMU, 0,
                         "block copy still active: block job 'commit-vda-libvirt-1-format' not ready for pivot yet",
                         PIVOT), -EAGAIN);
    /* qemuDomainDiskBlockJobIsActive: a new job on a disk with a mirror */
    assert_int_equal(map(CFS_VERR_BLOCK_COPY_ACTIVE, QEMU, 0,
                         "block copy still active: disk 'vda' already in active block job",
                         ANY), -EBUSY);
    /* ... and with a job that is not a mirror */
    assert_int_equal(map(CFS_VERR_OPERATION_UNSUPPORTED, QEMU, 0,
                         "Operation not supported: disk 'vda' already in active block job",
                         ANY), -EBUSY);
    /* abort / set speed / pivot without a job */
    assert_int_equal(map(CFS_VERR_INVALID_ARG, QEMU, 0,
                         "invalid argument: disk vda does not have an active block job",
                         JOB), -ENOENT);
    assert_int_equal(map(CFS_VERR_INVALID_ARG, QEMU, 0,
                         "invalid argument: disk vda does not have an active block job",
                         PIVOT), -ENOENT);
    /* a stopped domain has no job */
    assert_int_equal(map(CFS_VERR_OPERATION_INVALID, QEMU, 0,
                         "Requested operation is not valid: domain is not running",
                         JOB), -ENOENT);
    assert_int_equal(map(CFS_VERR_OPERATION_INVALID, QEMU, 0,
                         "Requested operation is not valid: domain is not running",
                         ANY), -EIO);
    /* a disk or layer that is not there */
    assert_int_equal(map(CFS_VERR_INVALID_ARG, QEMU, 0,
                         "invalid argument: disk 'vdz' not found in domain", ANY), -ENOENT);
    assert_int_equal(map(CFS_VERR_INVALID_ARG, QEMU, 0,
                         "invalid argument: could not find image '/x' in chain for '/y'",
                         ANY), -ENOENT);
    assert_int_equal(map(CFS_VERR_INVALID_ARG, QEMU, 0, "invalid argument: flags", ANY), -EIO);
}

static void test_text_last_resort(void **state)
{
    (void)state;
    /* QEMU's own refusals arrive as text of an internal error */
    assert_int_equal(map(CFS_VERR_INTERNAL_ERROR, QEMU, 0,
                         "unable to execute QEMU command 'block-commit': Failed to get \"write\" lock",
                         ANY), -EBUSY);
    assert_true(cfs_lverr_msg_is_lock("Failed to get shared \"write\" lock"));
    assert_true(cfs_lverr_msg_is_lock("Failed to get shared \"consistent read\" lock"));
    assert_false(cfs_lverr_msg_is_lock("Failed to get something"));
    assert_false(cfs_lverr_msg_is_lock(NULL));
    assert_int_equal(map(CFS_VERR_INTERNAL_ERROR, QEMU, 0,
                         "Could not open '/x': No space left on device", ANY), -ENOSPC);
    assert_int_equal(map(CFS_VERR_OPERATION_FAILED, QEMU, 0,
                         "Could not open '/x': Permission denied", ANY), -EACCES);
    assert_int_equal(map(CFS_VERR_INTERNAL_ERROR, QEMU, 0,
                         "Device 'x' is busy: block device is in use by block job: commit",
                         ANY), -EBUSY);
    /* codes shared by many situations: the text tells which */
    assert_int_equal(map(CFS_VERR_OPERATION_FAILED, QEMU, 0,
                         "operation failed: domain moment s1 already exists", ANY), -EEXIST);
    assert_int_equal(map(CFS_VERR_CONFIG_UNSUPPORTED, QEMU, 0,
                         "unsupported configuration: external snapshot file for disk vda already exists and is not a block device: /x",
                         ANY), -EEXIST);
    assert_int_equal(map(CFS_VERR_CONFIG_UNSUPPORTED, QEMU, 0,
                         "unsupported configuration: shared access for disk 'vdd' requires use of supported storage format",
                         ANY), -EROFS);
    assert_int_equal(map(CFS_VERR_OPERATION_UNSUPPORTED, QEMU, 0,
                         "Operation not supported: external snapshot for readonly disk vdb is not supported",
                         ANY), -EROFS);
    assert_int_equal(map(CFS_VERR_OPERATION_INVALID, QEMU, 0,
                         "Requested operation is not valid: cannot commit read-only disk",
                         ANY), -EROFS);
    assert_int_equal(map(CFS_VERR_CONFIG_UNSUPPORTED, QEMU, 0, "other", ANY), -EIO);
    assert_int_equal(map(CFS_VERR_OPERATION_FAILED, QEMU, 0, NULL, ANY), -EIO);
    assert_int_equal(map(12345, QEMU, 0, NULL, ANY), -EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codes),
        cmocka_unit_test(test_connection),
        cmocka_unit_test(test_system_errno),
        cmocka_unit_test(test_jobs),
        cmocka_unit_test(test_text_last_resort),
    };

    return cmocka_run_group_tests_name("errmap", tests, NULL, NULL) ? 1 : 0;
}
