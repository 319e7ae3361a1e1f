/* errmap.c — libvirt errors as errno: the code first, text last. Which
 * code each situation produces was read in libvirt's qemu driver
 * (qemu_driver.c, qemu_domain.c, qemu_snapshot.c, rpc/, util/virerror.c). */
#include <errno.h>
#include <string.h>

#include "errmap.h"

static bool has(const char *msg, const char *needle)
{
    return msg && strcasestr(msg, needle);
}

bool cfs_lverr_msg_is_lock(const char *msg)
{
    /* 'Failed to get "write" lock', 'Failed to get shared "write" lock',
     * 'Failed to get shared "consistent read" lock' */
    return has(msg, "Failed to get") && has(msg, " lock");
}

/* virReportSystemError's errno (int1), within backend.h's table. */
static int from_errno(int e)
{
    switch (e) {
    case ENOSPC:
    case EDQUOT:
        return -ENOSPC;
    case EACCES:
    case EPERM:
        return -EACCES;
    case ENOENT:
        return -ENOENT;
    case EEXIST:
        return -EEXIST;
    case EROFS:
        return -EROFS;
    case EBUSY:
        return -EBUSY;
    default:
        return 0;
    }
}

/* Last resort: QEMU's own refusals, which libvirt passes on as text inside
 * VIR_ERR_INTERNAL_ERROR / VIR_ERR_OPERATION_FAILED (a QMP error has a
 * class, "GenericError", and a message; no code reaches us). */
static int from_qemu_text(const char *msg)
{
    /* 'Could not open ...: No space left on device', a failed write */
    if (has(msg, "No space left"))
        return -ENOSPC;
    /* "Could not open '...': Permission denied" */
    if (has(msg, "Permission denied"))
        return -EACCES;
    /* 'Failed to get "write" lock': another process holds the image */
    if (cfs_lverr_msg_is_lock(msg))
        return -EBUSY;
    /* "Device '...' is busy: block device is in use by block job: commit"
     * (a job libvirt did not know about, e.g. after a libvirtd restart) */
    if (has(msg, "in use by block job"))
        return -EBUSY;
    return 0;
}

int cfs_lverr_errno(const struct cfs_lverr *e, enum cfs_lverr_op op)
{
    const char *msg = e->message;
    int r;

    if (e->conn_dead)
        return -ENOTCONN;

    /* Issue 12: libvirt's own limit on a chain's depth (200 layers in
     * libvirt 9.0), which no code tells apart: a snapshot that would make
     * the chain deeper (qemuDomainStorageSourceValidateDepth,
     * VIR_ERR_OPERATION_UNSUPPORTED: "backing chains more than 200 layers
     * deep are not supported for disk 'vda'") and a start or re-probe of
     * a chain deeper than that (virStorageSourceGetMetadataRecurse,
     * VIR_ERR_INTERNAL_ERROR: "backing store for X is self-referential or
     * too deeply nested"): too many links, EMLINK. */
    if (has(msg, "layers deep are not supported") || has(msg, "too deeply nested"))
        return -EMLINK;

    /* the guest agent (design issue10 §2.4, libvirt's
     * qemuDomainAgentAvailable and qemuAgentSend) */
    if (op == CFS_LVERR_OP_AGENT) {
        switch (e->code) {
        case CFS_VERR_AGENT_UNRESPONSIVE:
            /* "Guest agent not available for now": no answer within the
             * response timeout; else "QEMU guest agent is not connected",
             * "... is not available due to an error", "Guest agent
             * disappeared while executing command" */
            return has(msg, "not available for now") ? -ETIMEDOUT : -EOPNOTSUPP;
        case CFS_VERR_OPERATION_TIMEOUT:
            /* "cannot acquire state change lock (held by agent=...)":
             * someone else's agent command holds the agent job */
            return -ETIMEDOUT;
        case CFS_VERR_OPERATION_INVALID:
            /* "domain is not running" (shut off, paused, ...) */
            return -EINVAL;
        case CFS_VERR_INTERNAL_ERROR:
            /* "unable to execute QEMU agent command 'guest-fsfreeze-
             * freeze': ... the agent is in frozen state": the agent
             * answered, and refused */
            if (has(msg, "agent command") || has(msg, "guest agent"))
                return -EOPNOTSUPP;
            break;
        default:
            break;
        }
    }

    switch (e->code) {
    case CFS_VERR_NO_DOMAIN:
    case CFS_VERR_NO_DOMAIN_SNAPSHOT:
    case CFS_VERR_NO_STORAGE_VOL:
        return -ENOENT;
    case CFS_VERR_ACCESS_DENIED:
    case CFS_VERR_AUTH_FAILED:
    case CFS_VERR_AUTH_CANCELLED:
    case CFS_VERR_AUTH_UNAVAILABLE:
    case CFS_VERR_OPERATION_DENIED:   /* a read-only connection */
        return -EACCES;
    case CFS_VERR_NO_CONNECT:
    case CFS_VERR_INVALID_CONN:
    case CFS_VERR_RPC:
    case CFS_VERR_NO_SERVER:
        return -ENOTCONN;
    case CFS_VERR_NO_SUPPORT:
    case CFS_VERR_ARGUMENT_UNSUPPORTED:
        /* also the agent's "QEMU guest agent is not configured" */
        return -EOPNOTSUPP;
    case CFS_VERR_AGENT_UNRESPONSIVE:
        /* an agent call made without OP_AGENT: the same decision */
        return has(msg, "not available for now") ? -ETIMEDOUT : -EOPNOTSUPP;
    case CFS_VERR_RESOURCE_BUSY:
        return -EBUSY;
    case CFS_VERR_STORAGE_VOL_EXIST:
        return -EEXIST;

    case CFS_VERR_SYSTEM_ERROR:
        /* the socket to libvirtd: "End of file while reading data",
         * "Cannot write data: Broken pipe", "Failed to connect socket" */
        if (e->domain == CFS_VERR_FROM_RPC || e->domain == CFS_VERR_FROM_REMOTE)
            return -ENOTCONN;
        /* virReportSystemError: int1 is the errno (creating an overlay
         * on a full disk gives ENOSPC here) */
        if ((r = from_errno(e->int1)) < 0)
            return r;
        return (r = from_qemu_text(msg)) < 0 ? r : -EIO;

    case CFS_VERR_INTERNAL_ERROR:
        /* "client socket is closed", "connection closed due to
         * keepalive timeout" come from the RPC layer as internal errors */
        if (e->domain == CFS_VERR_FROM_RPC || e->domain == CFS_VERR_FROM_REMOTE)
            return -ENOTCONN;
        return (r = from_qemu_text(msg)) < 0 ? r : -EIO;

    case CFS_VERR_BLOCK_COPY_ACTIVE:
        /* qemuDomainBlockPivot: "block job '...' not ready for pivot
         * yet"; elsewhere (qemuDomainDiskBlockJobIsActive) the disk has a
         * mirror job already: "disk 'vda' already in active block job" */
        return op == CFS_LVERR_OP_PIVOT ? -EAGAIN : -EBUSY;

    case CFS_VERR_INVALID_ARG:
        /* qemuDomainBlockJobAbort / SetSpeed / GetBlockJobInfo: "disk vda
         * does not have an active block job"; any call: "disk 'vdz' not
         * found in domain", "could not find image '...' in chain for
         * '...'". INVALID_ARG is also a malformed call of ours, hence the
         * text for the calls that are not about a job. */
        if (op != CFS_LVERR_OP_ANY)
            return -ENOENT;
        if (has(msg, "not found") || has(msg, "could not find"))
            return -ENOENT;
        return -EIO;

    case CFS_VERR_OPERATION_INVALID:
        /* "domain is not running": a stopped domain has no block job */
        if (op != CFS_LVERR_OP_ANY)
            return -ENOENT;
        /* virDomainObjCheckActive for a snapshot or commit on a domain
         * that just stopped stays EIO; a read-only disk is refused with
         * this code too, and only the text tells: "... readonly disk" */
        if (has(msg, "read-only") || has(msg, "readonly"))
            return -EROFS;
        return -EIO;

    case CFS_VERR_OPERATION_UNSUPPORTED:
        /* one code for many things: qemuDomainDiskBlockJobIsActive's
         * "disk 'vda' already in active block job" (a job that is not a
         * mirror), "job type '...' does not support pivot", shareable or
         * read-only disks ("external snapshot for readonly disk ...") */
        if (has(msg, "block job"))
            return -EBUSY;
        if (has(msg, "read-only") || has(msg, "readonly") ||
            has(msg, "shareable") || has(msg, "shared"))
            return -EROFS;
        return -EIO;

    case CFS_VERR_CONFIG_UNSUPPORTED:
        /* qemuSnapshotPrepareDiskExternal: "external snapshot file for
         * disk vda already exists and is not a block device: ..."; "shared
         * access for disk 'vdd' requires use of supported storage format"
         * — one code for every unsupported configuration */
        if (has(msg, "already exists"))
            return -EEXIST;
        if (has(msg, "read-only") || has(msg, "readonly") ||
            has(msg, "shareable") || has(msg, "shared"))
            return -EROFS;
        return -EIO;

    case CFS_VERR_OPERATION_FAILED:
        /* virDomainMomentAssignDef: "domain moment s1 already exists" —
         * no code of its own; QEMU's refusals may come this way too */
        if (has(msg, "already exists"))
            return -EEXIST;
        return (r = from_qemu_text(msg)) < 0 ? r : -EIO;

    default:
        return (r = from_qemu_text(msg)) < 0 ? r : -EIO;
    }
}
