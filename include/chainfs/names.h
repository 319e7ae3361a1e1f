/* names.h — snapshot naming policy: which names are valid, what file a new
 * overlay gets, and which display name each layer of a chain carries.
 * Pure functions; thread-safe. */
#pragma once

#include <stdbool.h>

#include "chainfs/model.h"

#define CFS_NAME_MAX 64

/* 0 if NAME may be a snapshot name: 1..64 characters of [A-Za-z0-9._-],
 * not starting with '.' or '-'. -ENAMETOOLONG if longer than 255 bytes,
 * -EINVAL otherwise. */
int cfs_name_validate(const char *name);

/* The file name (no directory) chainfs gives the overlay of snapshot NAME
 * on DOM's DISK: "<dom>.<disk>.<name>.qcow2" — characters of DOM outside
 * [A-Za-z0-9._-] are replaced by '_'. Caller frees. */
char *cfs_overlay_filename(const char *dom, const char *disk,
                           const char *name);
/* The same with a number: "<dom>.<disk>.<name>.<N>.qcow2" for N >= 2
 * (mkdir's choice when the plain name's file exists: after a pull the
 * active file keeps a merged snapshot's file name); N < 2 is the plain
 * name. Caller frees. */
char *cfs_overlay_filename_n(const char *dom, const char *disk,
                             const char *name, unsigned n);

/* If BASENAME (no directory) is a name chainfs gave for DOM/DISK, return
 * the snapshot NAME in it (caller frees); else NULL. */
char *cfs_overlay_parse_filename(const char *dom, const char *disk,
                                 const char *basename);

/* Fill layer->name and layer->name_source for every layer of every disk:
 * the base (last layer) gets no name; others take meta_name, else the
 * chainfs file name, else the file's basename with a trailing ".qcow2" /
 * ".qcow" / ".img" removed. Names that would clash within one disk's
 * snapshots/ are made unique by appending "~N" (N = layer index). */
void cfs_domain_resolve_names(struct cfs_domain *d);
