/* snapdesc.h — the line chainfs keeps in a libvirt snapshot's
 * <description> (issue 10, design §2.4, §2.6): how the snapshot was
 * taken, machine-readable, so that it survives a lost state directory,
 * shows in `virsh snapshot-info` and travels with the metadata.
 *
 *   chainfs: scope=domain quiesced=yes filesystems=2 disks=vda,vdb excluded=hdc:cdrom,vdc:read-only
 *   chainfs: scope=disk quiesced=no disks=vda reason=domain shut off
 *
 * One line starting "chainfs: ", then KEY=VALUE words separated by one
 * space; `reason` comes last and takes the rest of the line. In list
 * items (disks, excluded) a backslash, a control character, a space, a
 * comma and a colon are written \xHH; in the reason a backslash and a
 * control character are (\n and \t as such). Unknown keys are skipped
 * (a later version may add some). Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "chainfs/model.h"

enum cfs_snap_scope {
    CFS_SCOPE_UNKNOWN,
    CFS_SCOPE_DISK,      /* a mkdir in <dom>/<disk>/snapshots/ */
    CFS_SCOPE_DOMAIN,    /* a mkdir in <dom>/snapshots/ */
};

struct cfs_snapdesc {
    enum cfs_snap_scope scope;
    int quiesced;            /* 1 yes, 0 no, -1 unknown */
    unsigned filesystems;    /* quiesced: how many the guest agent froze */
    char *reason;            /* not quiesced: why; NULL if not said */
    char **disks;            /* the disks taken (NULL-terminated), or NULL */
    size_t n_excluded;       /* the domain's disks that could not be */
    struct cfs_disk_note *excluded;
};

void cfs_snapdesc_clear(struct cfs_snapdesc *d);

/* Find chainfs's line in DESCRIPTION (any line of it; NULL is none) and
 * fill *OUT. 0; -ENOENT if there is no such line (*OUT: quiesced -1,
 * scope unknown, the rest empty); -EINVAL if the line is malformed (no
 * quiesced=, a bad value, a bad escape: *OUT as for -ENOENT). */
int cfs_snapdesc_parse(const char *description, struct cfs_snapdesc *out);

/* The line for D, without a newline (caller frees). quiesced -1 is
 * written as no. */
char *cfs_snapdesc_format(const struct cfs_snapdesc *d);

/* `quiesce:` of info: "2 filesystems frozen by the guest agent", the
 * reason, or NULL when unknown (caller frees). */
char *cfs_snapdesc_quiesce_text(const struct cfs_snapdesc *d);
