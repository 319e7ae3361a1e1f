/* test_errmap.c — backend/errmap.c: libvirt errors become errno by
 * libvirt's code first, text only where libvirt has no code. The messages
 * are the ones libvirt and QEMU print (virsh shows them after the code's
 * prefix, e.g. "block copy still active: ..."). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "errmap.h"

#define ANY CFS_LVERR_OP_ANY
#define JOB CFS_LVERR_OP_JOB
#define PIVOT CFS_LVERR_OP_PIVOT
#define AGENT CFS_LVERR_OP_AGENT
#define QEMU 10 /* VIR_FROM_QEMU */
#define RPC CFS_VERR_FROM_RPC
#define REMOTE CFS_VERR_FROM_REMOTE

/* One libvirt error, the op it came from, and the errno it must map to. */
struct errmap_case {
    const char *name;
    int code, domain, int1;
    const char *msg;
    enum cfs_lverr_op op;
    int want;  /* negative errno */
};

static const struct errmap_case cases[] = {
    /* issue 12: libvirt 9.0's 200-layer limit (a live snapshot on a
     * 200-layer chain; a start or re-probe of a deeper one) */
    {"chain too deep: snapshot", CFS_VERR_OPERATION_UNSUPPORTED, QEMU, 0,
     "Operation not supported: backing chains more than 200 layers deep are not "
     "supported for disk 'vda'", ANY, -EMLINK},
    {"chain too deep: start", CFS_VERR_INTERNAL_ERROR, 18 /* VIR_FROM_STORAGE */, 0,
     "internal error: backing store for /img/l0299.qcow2 is self-referential or too "
     "deeply nested", ANY, -EMLINK},
    /* the guest agent (design issue10 §2.4; texts as virsh prints them) */
    {"agent timed out", CFS_VERR_AGENT_UNRESPONSIVE, QEMU, 0,
     "Guest agent is not responding: Guest agent not available for now", AGENT, -ETIMEDOUT},
    {"agent not connected", CFS_VERR_AGENT_UNRESPONSIVE, QEMU, 0,
     "Guest agent is not responding: QEMU guest agent is not connected", AGENT, -EOPNOTSUPP},
    {"agent in error", CFS_VERR_AGENT_UNRESPONSIVE, QEMU, 0,
     "Guest agent is not responding: QEMU guest agent is not available due to an error",
     AGENT, -EOPNOTSUPP},
    {"agent disappeared", CFS_VERR_AGENT_UNRESPONSIVE, QEMU, 0,
     "Guest agent is not responding: Guest agent disappeared while executing command",
     AGENT, -EOPNOTSUPP},
    {"agent not configured", CFS_VERR_ARGUMENT_UNSUPPORTED, QEMU, 0,
     "argument unsupported: QEMU guest agent is not configured", AGENT, -EOPNOTSUPP},
    {"agent: not running", CFS_VERR_OPERATION_INVALID, QEMU, 0,
     "Requested operation is not valid: domain is not running", AGENT, -EINVAL},
    {"agent refused (frozen)", CFS_VERR_INTERNAL_ERROR, QEMU, 0,
     "internal error: unable to execute QEMU agent command 'guest-fsfreeze-freeze': "
     "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state",
     AGENT, -EOPNOTSUPP},
    {"agent job held", CFS_VERR_OPERATION_TIMEOUT, QEMU, 0,
     "Timed out during operation: cannot acquire state change lock "
     "(held by agent=remoteDispatchDomainFsfreeze)", AGENT, -ETIMEDOUT},
    {"agent: no domain", CFS_VERR_NO_DOMAIN, QEMU, 0,
     "Domain not found: no domain with matching name 'x'", AGENT, -ENOENT},
    {"agent: other internal error", CFS_VERR_INTERNAL_ERROR, QEMU, 0,
     "internal error: unexpected reply", AGENT, -EIO},
    {"agent: dead connection", CFS_VERR_INTERNAL_ERROR, RPC, 0,
     "client socket is closed", AGENT, -ENOTCONN},
    {"agent timeout, another op", CFS_VERR_AGENT_UNRESPONSIVE, QEMU, 0,
     "Guest agent is not responding: Guest agent not available for now", ANY, -ETIMEDOUT},
    {"not running, another op", CFS_VERR_OPERATION_INVALID, QEMU, 0,
     "Requested operation is not valid: domain is not running", ANY, -EIO},
    /* by libvirt's code */
    {"no domain", CFS_VERR_NO_DOMAIN, QEMU, 0,
     "Domain not found: no domain with matching name 'x'", ANY, -ENOENT},
    {"no domain snapshot", CFS_VERR_NO_DOMAIN_SNAPSHOT, QEMU, 0,
     "Domain snapshot not found", ANY, -ENOENT},
    {"no storage vol", CFS_VERR_NO_STORAGE_VOL, 0, 0, "no storage vol", ANY, -ENOENT},
    {"access denied", CFS_VERR_ACCESS_DENIED, 0, 0, "access denied", ANY, -EACCES},
    {"auth failed", CFS_VERR_AUTH_FAILED, 0, 0, "authentication failed", ANY, -EACCES},
    {"auth cancelled", CFS_VERR_AUTH_CANCELLED, 0, 0, "x", ANY, -EACCES},
    {"auth unavailable", CFS_VERR_AUTH_UNAVAILABLE, 0, 0, "x", ANY, -EACCES},
    {"operation denied", CFS_VERR_OPERATION_DENIED, 0, 0, "read-only connection", ANY, -EACCES},
    {"no support", CFS_VERR_NO_SUPPORT, 0, 0, "this function is not supported", ANY, -EOPNOTSUPP},
    {"argument unsupported", CFS_VERR_ARGUMENT_UNSUPPORTED, 0, 0, "unsupported flags", ANY, -EOPNOTSUPP},
    {"resource busy", CFS_VERR_RESOURCE_BUSY, 0, 0, "x", ANY, -EBUSY},
    {"storage vol exists", CFS_VERR_STORAGE_VOL_EXIST, 0, 0, "x", ANY, -EEXIST},
    /* an English word in a message of another code decides nothing */
    {"code beats English text", CFS_VERR_NO_DOMAIN, QEMU, 0, "Permission denied", ANY, -ENOENT},

    /* the connection */
    {"no connect", CFS_VERR_NO_CONNECT, 0, 0, "no connection driver", ANY, -ENOTCONN},
    {"invalid conn", CFS_VERR_INVALID_CONN, 0, 0, "invalid connection", ANY, -ENOTCONN},
    {"rpc error", CFS_VERR_RPC, RPC, 0, "x", JOB, -ENOTCONN},
    {"no server", CFS_VERR_NO_SERVER, 0, 0, "x", ANY, -ENOTCONN},
    {"rpc ECONNRESET", CFS_VERR_SYSTEM_ERROR, RPC, ECONNRESET,
     "End of file while reading data: Input/output error", ANY, -ENOTCONN},
    {"remote EPIPE", CFS_VERR_SYSTEM_ERROR, REMOTE, EPIPE,
     "Cannot write data: Broken pipe", ANY, -ENOTCONN},
    {"rpc socket closed", CFS_VERR_INTERNAL_ERROR, RPC, 0,
     "client socket is closed", ANY, -ENOTCONN},
    /* an internal error of the qemu driver is not the connection */
    {"qemu internal error", CFS_VERR_INTERNAL_ERROR, QEMU, 0,
     "unable to execute QEMU command 'x': y", ANY, -EIO},

    /* a system error carries its errno */
    {"system ENOSPC", CFS_VERR_SYSTEM_ERROR, QEMU, ENOSPC, "unable to create 'x'", ANY, -ENOSPC},
    {"system EDQUOT", CFS_VERR_SYSTEM_ERROR, QEMU, EDQUOT, "x", ANY, -ENOSPC},
    {"system EACCES", CFS_VERR_SYSTEM_ERROR, QEMU, EACCES, "x", ANY, -EACCES},
    {"system EPERM", CFS_VERR_SYSTEM_ERROR, QEMU, EPERM, "x", ANY, -EACCES},
    {"system ENOENT", CFS_VERR_SYSTEM_ERROR, QEMU, ENOENT, "x", ANY, -ENOENT},
    {"system EEXIST", CFS_VERR_SYSTEM_ERROR, QEMU, EEXIST, "x", ANY, -EEXIST},
    {"system EROFS", CFS_VERR_SYSTEM_ERROR, QEMU, EROFS, "x", ANY, -EROFS},
    {"system EINVAL", CFS_VERR_SYSTEM_ERROR, QEMU, EINVAL, "x", ANY, -EIO},
    {"system no errno", CFS_VERR_SYSTEM_ERROR, QEMU, 0, "x", ANY, -EIO},

    /* block jobs */
    /* qemuDomainBlockPivot before the mirror is ready */
    {"pivot not ready", CFS_VERR_BLOCK_COPY_ACTIVE, QEMU, 0,
     "block copy still active: block job 'commit-vda-libvirt-1-format' not ready for pivot yet",
     PIVOT, -EAGAIN},
    /* qemuDomainDiskBlockJobIsActive: a new job on a disk with a mirror */
    {"new job on a mirror", CFS_VERR_BLOCK_COPY_ACTIVE, QEMU, 0,
     "block copy still active: disk 'vda' already in active block job", ANY, -EBUSY},
    /* ... and with a job that is not a mirror */
    {"new job on a job", CFS_VERR_OPERATION_UNSUPPORTED, QEMU, 0,
     "Operation not supported: disk 'vda' already in active block job", ANY, -EBUSY},
    /* abort / set speed / pivot without a job */
    {"job call without a job", CFS_VERR_INVALID_ARG, QEMU, 0,
     "invalid argument: disk vda does not have an active block job", JOB, -ENOENT},
    {"pivot without a job", CFS_VERR_INVALID_ARG, QEMU, 0,
     "invalid argument: disk vda does not have an active block job", PIVOT, -ENOENT},
    /* a stopped domain has no job */
    {"job call, domain not running", CFS_VERR_OPERATION_INVALID, QEMU, 0,
     "Requested operation is not valid: domain is not running", JOB, -ENOENT},
    {"other call, domain not running", CFS_VERR_OPERATION_INVALID, QEMU, 0,
     "Requested operation is not valid: domain is not running", ANY, -EIO},
    /* a disk or layer that is not there */
    {"disk not found", CFS_VERR_INVALID_ARG, QEMU, 0,
     "invalid argument: disk 'vdz' not found in domain", ANY, -ENOENT},
    {"image not in chain", CFS_VERR_INVALID_ARG, QEMU, 0,
     "invalid argument: could not find image '/x' in chain for '/y'", ANY, -ENOENT},
    {"other invalid argument", CFS_VERR_INVALID_ARG, QEMU, 0, "invalid argument: flags", ANY, -EIO},

    /* the text, as a last resort */
    /* QEMU's own refusals arrive as text of an internal error */
    {"qemu write lock", CFS_VERR_INTERNAL_ERROR, QEMU, 0,
     "unable to execute QEMU command 'block-commit': Failed to get \"write\" lock", ANY, -EBUSY},
    {"qemu open ENOSPC", CFS_VERR_INTERNAL_ERROR, QEMU, 0,
     "Could not open '/x': No space left on device", ANY, -ENOSPC},
    {"qemu open EACCES", CFS_VERR_OPERATION_FAILED, QEMU, 0,
     "Could not open '/x': Permission denied", ANY, -EACCES},
    {"qemu device busy", CFS_VERR_INTERNAL_ERROR, QEMU, 0,
     "Device 'x' is busy: block device is in use by block job: commit", ANY, -EBUSY},
    /* codes shared by many situations: the text tells which */
    {"snapshot exists", CFS_VERR_OPERATION_FAILED, QEMU, 0,
     "operation failed: domain moment s1 already exists", ANY, -EEXIST},
    {"overlay file exists", CFS_VERR_CONFIG_UNSUPPORTED, QEMU, 0,
     "unsupported configuration: external snapshot file for disk vda already exists and is not a block device: /x",
     ANY, -EEXIST},
    {"shared disk", CFS_VERR_CONFIG_UNSUPPORTED, QEMU, 0,
     "unsupported configuration: shared access for disk 'vdd' requires use of supported storage format",
     ANY, -EROFS},
    {"snapshot of readonly disk", CFS_VERR_OPERATION_UNSUPPORTED, QEMU, 0,
     "Operation not supported: external snapshot for readonly disk vdb is not supported",
     ANY, -EROFS},
    {"commit of readonly disk", CFS_VERR_OPERATION_INVALID, QEMU, 0,
     "Requested operation is not valid: cannot commit read-only disk", ANY, -EROFS},
    {"config unsupported, other text", CFS_VERR_CONFIG_UNSUPPORTED, QEMU, 0, "other", ANY, -EIO},
    {"operation failed, no text", CFS_VERR_OPERATION_FAILED, QEMU, 0, NULL, ANY, -EIO},
    {"unknown code", 12345, QEMU, 0, NULL, ANY, -EIO},
};

/* Every case is checked and every failing one named, then the test
 * fails if any did. */
static void test_errno_table(void **state)
{
    size_t n = sizeof(cases) / sizeof(cases[0]);
    size_t bad = 0;

    (void)state;
    for (size_t i = 0; i < n; i++) {
        const struct errmap_case *c = &cases[i];
        struct cfs_lverr e = { c->code, c->domain, c->int1, c->msg, false };
        int got = cfs_lverr_errno(&e, c->op);

        if (got != c->want) {
            print_error("case \"%s\": got %d (%s), want %d (%s)\n", c->name,
                        got, strerror(-got), c->want, strerror(-c->want));
            bad++;
        }
    }
    if (bad)
        fail_msg("%zu of %zu errmap cases failed", bad, n);
}

/* Whatever the error, a connection found closed afterwards is the
 * connection. */
static void test_connection_dead(void **state)
{
    struct cfs_lverr dead = { CFS_VERR_NO_DOMAIN, QEMU, 0, "whatever", true };

    (void)state;
    assert_int_equal(cfs_lverr_errno(&dead, ANY), -ENOTCONN);
}

static void test_msg_is_lock(void **state)
{
    (void)state;
    assert_true(cfs_lverr_msg_is_lock("Failed to get shared \"write\" lock"));
    assert_true(cfs_lverr_msg_is_lock("Failed to get shared \"consistent read\" lock"));
    assert_false(cfs_lverr_msg_is_lock("Failed to get something"));
    assert_false(cfs_lverr_msg_is_lock(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errno_table),
        cmocka_unit_test(test_connection_dead),
        cmocka_unit_test(test_msg_is_lock),
    };

    return cmocka_run_group_tests_name("errmap", tests, NULL, NULL) ? 1 : 0;
}
