/* qcow2.h — reading image headers to walk a backing chain that no QEMU has
 * open: the chain of a shut-off domain, which libvirt's inactive XML does
 * not describe.
 *
 * Only headers are read (never guest data), and only for images whose
 * format is qcow2/qcow or unknown; a file declared raw is never probed.
 * Owns nothing; thread-safe (no shared state). Called from whatever thread
 * runs a backend op. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "chainfs/model.h"

/* What an image's header says. */
struct cfs_image_info {
    char *format;          /* "qcow2", "qcow" or "raw" */
    uint64_t virtual_size; /* bytes (raw: the file or device size) */
    char *backing;         /* backing file name as stored, NULL if none */
    char *backing_format;  /* backing format header extension, NULL if absent */
};

void cfs_image_info_clear(struct cfs_image_info *info);

/* Read PATH's header. FORMAT is what the domain XML or the overlay's
 * backing-format extension declares ("qcow2", "raw", ...); NULL or "" means
 * unknown and the header magic decides. A declared "raw" is not opened for
 * probing (only sized). -errno on failure (-EINVAL for a corrupt header). */
int cfs_image_probe(const char *path, const char *format,
                    struct cfs_image_info *out);

/* Resolve a backing name the way QEMU does: a relative name is relative to
 * the directory of IMAGE (as spelled, symlinks not followed). Names that
 * are protocols ("nbd://...", "json:{...}") are returned unchanged.
 * Caller frees. */
char *cfs_image_resolve_backing(const char *image, const char *backing);

/* true if NAME is a protocol or json: pseudo-path, not a local file. */
bool cfs_image_name_is_protocol(const char *name);

/* Fill allocation (st_blocks*512) and physical (st_size, or the device
 * size for a block device) of L from stat(); virtual_size too if it is 0
 * and PROBE is true (header read). Missing files leave the sizes at 0. */
void cfs_image_fill_sizes(struct cfs_layer *l, bool probe);

/* Extend DISK's chain below its last layer by reading headers, until an
 * image without a backing file, a protocol backing, a missing file or a
 * loop. Each new layer gets path, format, is_block and sizes as
 * cfs_image_fill_sizes() gives them. 0; 1 if the chain was cut at
 * CFS_CHAIN_MAX layers with more below (the caller logs it); or -errno if
 * the last layer's header is unreadable (the chain is then left as it
 * was). Linear in the chain's length (a hash set finds loops). */
int cfs_image_extend_chain(struct cfs_disk *disk);

/* The image `qemu-img commit` is given to merge TOP into BASE (TOP's
 * backing file) opening those two files only: a json: pseudo-filename
 * whose "backing" is BASE with "backing": null, each with its format and
 * protocol ("file", or "host_device" for a block device). QEMU otherwise
 * opens the whole chain below TOP: O(depth), ~1 s at depth 250 against
 * ~40 ms this way (docs/design/issue12.md §3.4). The data lands in BASE as
 * with TOP's file name (only what TOP allocates is copied; a BASE smaller
 * than TOP is grown); BASE's header, its backing file included, stays.
 * NULL when either has no absolute local path or no known format (the
 * caller then gives TOP's path). Caller frees. */
char *cfs_image_commit_json(const struct cfs_layer *top, const struct cfs_layer *base);

/* Create PATH as an empty qcow2 overlay of BACKING (an absolute path whose
 * format, "qcow2" or "raw", is BACKING_FORMAT) with virtual size SIZE:
 * byte for byte what `qemu-img create -f qcow2 -F FMT -b BACKING` writes
 * with default options. Never replaces a file (-EEXIST); the file is
 * fsynced, and its directory, before this returns. -EINVAL for what it
 * does not make (another backing format, SIZE 0 or not a multiple of 512,
 * a relative or overlong backing name, a disk over 64 TiB): the caller
 * then leaves the creation to libvirt. Other -errno: nothing is left. */
int cfs_image_create_overlay(const char *path, const char *backing,
                             const char *backing_format, uint64_t size);

/* The same, BACKING NULL for an image without a backing file (issue 8
 * `copy`: a flat destination); *ST_OUT (may be NULL) gets the new file's
 * stat, taken on the descriptor that created it (dev/ino recorded by the
 * caller: the one file it may later delete). */
struct stat;
int cfs_image_create(const char *path, const char *backing,
                     const char *backing_format, uint64_t size,
                     struct stat *st_out);
