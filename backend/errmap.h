/* errmap.h — libvirt's errors as errno (backend.h's table), decided by
 * libvirt's error code first and by the text only where libvirt has no
 * code of its own for the situation.
 *
 * A pure function over numbers and a string, so that it is unit-tested
 * without libvirt: the codes below mirror libvirt's virErrorNumber and
 * virErrorDomain (their values are libvirt's stable ABI; libvirt.c checks
 * each against <libvirt/virterror.h> at compile time). */
#pragma once

#include <stdbool.h>

enum {
    CFS_VERR_INTERNAL_ERROR = 1,
    CFS_VERR_NO_SUPPORT = 3,
    CFS_VERR_NO_CONNECT = 5,
    CFS_VERR_INVALID_CONN = 6,
    CFS_VERR_INVALID_ARG = 8,
    CFS_VERR_OPERATION_FAILED = 9,
    CFS_VERR_OPERATION_DENIED = 29,
    CFS_VERR_SYSTEM_ERROR = 38,
    CFS_VERR_RPC = 39,
    CFS_VERR_NO_DOMAIN = 42,
    CFS_VERR_AUTH_FAILED = 45,
    CFS_VERR_NO_STORAGE_VOL = 50,
    CFS_VERR_OPERATION_INVALID = 55,
    CFS_VERR_CONFIG_UNSUPPORTED = 67,
    CFS_VERR_OPERATION_TIMEOUT = 68,
    CFS_VERR_NO_DOMAIN_SNAPSHOT = 72,
    CFS_VERR_ARGUMENT_UNSUPPORTED = 74,
    CFS_VERR_AUTH_CANCELLED = 79,
    CFS_VERR_BLOCK_COPY_ACTIVE = 83,
    CFS_VERR_OPERATION_UNSUPPORTED = 84,
    CFS_VERR_AGENT_UNRESPONSIVE = 86,
    CFS_VERR_RESOURCE_BUSY = 87,
    CFS_VERR_ACCESS_DENIED = 88,
    CFS_VERR_STORAGE_VOL_EXIST = 90,
    CFS_VERR_AUTH_UNAVAILABLE = 94,
    CFS_VERR_NO_SERVER = 95,
};

enum {
    CFS_VERR_FROM_RPC = 7,
    CFS_VERR_FROM_REMOTE = 13,
};

/* What the failed call was: some codes mean different things per call. */
enum cfs_lverr_op {
    CFS_LVERR_OP_ANY,    /* anything not below */
    CFS_LVERR_OP_JOB,    /* abort, set speed, job info of a disk's job */
    CFS_LVERR_OP_PIVOT,  /* pivot a disk's job */
    CFS_LVERR_OP_AGENT,  /* a guest agent call (freeze, thaw) */
};

/* libvirt's virError, the fields that decide. */
struct cfs_lverr {
    int code;            /* virErrorNumber */
    int domain;          /* virErrorDomain */
    int int1;            /* VIR_ERR_SYSTEM_ERROR: the errno */
    const char *message; /* may be NULL */
    bool conn_dead;      /* the connection was found closed afterwards */
};

/* The negative errno for E after a call of kind OP. */
int cfs_lverr_errno(const struct cfs_lverr *e, enum cfs_lverr_op op);
/* QEMU's image locking refused (its text only: it has no code). */
bool cfs_lverr_msg_is_lock(const char *msg);
