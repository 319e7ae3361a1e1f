/* mountid.h — how chainfs names its mount: the source `mount` and
 * /proc/mounts show (fsname, the libvirt URI) and the type
 * (fuse.chainfs, from subtype). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* S with every ',' and '\' preceded by a '\': one value inside a FUSE
 * -o option list, which libfuse's option parser splits at unescaped
 * commas and unescapes. Caller frees. */
char *cfs_fuse_opt_escape(const char *s);

/* The -o argument that gives the mount its identity: "-ofsname=URI,
 * subtype=chainfs" (URI escaped; "chainfs" when NULL), leaving out what
 * the user already gave (HAVE_FSNAME, HAVE_SUBTYPE: theirs wins). NULL
 * when there is nothing to add. Caller frees. */
char *cfs_mount_identity_opt(const char *uri, bool have_fsname,
                             bool have_subtype);

/* Issue 12: the source of a mount of several hosts, "chainfs:NAME1,NAME2"
 * (the host directories, in the order given; cfs_mount_identity_opt
 * escapes the commas). Caller frees. */
char *cfs_mount_fleet_source(const char *const *names, size_t n);
