/* stamp.h — the modification time of every node of the tree: when what
 * it shows last changed.
 *
 * A file's content is rendered from memory whenever it is looked at; a
 * directory's entries are listed the same way. Each time, the caller
 * hands the result here with the path: if it differs from what was last
 * seen at that path (a 64-bit hash and the length are kept, not the
 * content), the node's time becomes NOW; otherwise it keeps the time it
 * had. A path seen for the first time is dated START (the mount): nothing
 * was shown there before. So `rsync -a` and `make`, which compare mtimes,
 * see a file change exactly when its bytes changed, and the mtime is
 * never later than the first read of the new bytes.
 *
 * The table is bounded (MAX paths). When it is full it is emptied, and
 * from then on a path seen for the first time is dated NOW, not START:
 * what it showed before was forgotten, so it may have changed.
 *
 * Thread-safe (one mutex, held for a hash-table lookup). No fuse, no
 * libvirt: unit-tested on its own and with the engine over the fake
 * backend. */
#pragma once

#include <stddef.h>
#include <time.h>

struct cfs_stamps;

/* START: the time a node first seen is dated; MAX: paths kept (0: 65536). */
struct cfs_stamps *cfs_stamps_new(struct timespec start, size_t max);
struct cfs_stamps *cfs_stamps_free(struct cfs_stamps *s); /* returns NULL */

/* The mtime of file PATH whose content is DATA (LEN bytes) at NOW. */
struct timespec cfs_stamps_see(struct cfs_stamps *s, const char *path,
                               const void *data, size_t len,
                               struct timespec now);
/* The mtime of directory PATH whose entries are NAMES (NULL-terminated,
 * in listing order) at NOW. */
struct timespec cfs_stamps_see_names(struct cfs_stamps *s, const char *path,
                                     char *const *names, struct timespec now);
/* Paths currently kept (tests). */
size_t cfs_stamps_count(struct cfs_stamps *s);
