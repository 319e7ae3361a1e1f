/* util.h — small helpers used everywhere: cleanup attributes, TAKE_PTR,
 * string helpers and a growable text buffer.
 *
 * Owns nothing; every function here is thread-safe (no shared state). */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))

static inline void cfs_freep(void *p) { free(*(void **)p); }
#define _cleanup_free_ _cleanup_(cfs_freep)

/* Hand ownership out of a _cleanup_ variable. */
#define TAKE_PTR(p)                                                            \
    ({                                                                         \
        __typeof__(p) _tp = (p);                                               \
        (p) = NULL;                                                            \
        _tp;                                                                   \
    })

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation failure is fatal: a daemon that cannot allocate a few bytes
 * cannot do anything useful, and half-handled ENOMEM paths hide bugs. */
void *cfs_xmalloc(size_t n);
void *cfs_xcalloc(size_t n, size_t size);
void *cfs_xrealloc(void *p, size_t n);
char *cfs_xstrdup(const char *s);          /* NULL in, NULL out */
char *cfs_xstrndup(const char *s, size_t n); /* the first N bytes of S */
/* Take DIR/lock (created 0600) with an exclusive flock, not waiting:
 * one chainfs per state directory. 0 and *FD (the caller closes it to
 * let go); else -EBUSY (another holds it) or -errno, and *ERRMSG if
 * ERRMSG. */
int cfs_state_dir_lock(const char *dir, int *fd, char **errmsg);
char *cfs_xasprintf(const char *fmt, ...) _printf_(1, 2);

bool cfs_streq(const char *a, const char *b); /* NULL-safe */
/* malloc_trim(0), one call at a time in the process: glibc's first
 * malloc_trim initializes its allocator, and under AddressSanitizer
 * (which replaces malloc, so nothing did before) two first calls at
 * once let one trim an arena not yet set up (SEGV). */
void cfs_malloc_trim(void);
/* FNV-1a: LEN bytes at P mixed into H (start with CFS_FNV_OFFSET). */
#define CFS_FNV_OFFSET 14695981039346656037ULL
uint64_t cfs_fnv1a(uint64_t h, const void *p, size_t len);
/* FNV-1a of S (NULL: of ""): the hash of chainfs's string tables. */
uint64_t cfs_str_hash(const char *s);

/* NULL-terminated string vectors. */
size_t cfs_strv_len(char *const *v);
char **cfs_strv_free(char **v);            /* returns NULL */
bool cfs_strv_contains(char *const *v, const char *s);
void cfs_strv_push(char ***v, char *s);    /* takes ownership of s */
static inline void cfs_strv_freep(char ***v) { *v = cfs_strv_free(*v); }
#define _cleanup_strv_ _cleanup_(cfs_strv_freep)

/* Write all N bytes of P to FD (retrying short writes and EINTR).
 * 0 or -errno. */
int cfs_write_all(int fd, const void *p, size_t n);

/* fsync the directory DIRFD, so a name created or renamed in it lasts.
 * Filesystems that cannot fsync a directory (EINVAL, ENOTSUP) count as
 * done. 0 or -errno. */
int cfs_fsync_dir(int dirfd);

/* QEMU's image locks (its file-posix driver, raw or qcow2 alike: they are
 * taken at the protocol layer): OFD locks on single bytes of the image
 * file. A process that holds a read lock on byte 100 + P holds
 * permission P; one on byte 200 + P refuses to share P. P = 1 is
 * BLK_PERM_WRITE. */
#define CFS_QEMU_LOCK_PERM_WRITE 101    /* "I write it" */
#define CFS_QEMU_LOCK_SHARED_WRITE 201  /* "nobody else may write it" */

/* Keep writers out of image PATH: open it O_RDONLY|O_CLOEXEC and take an
 * OFD read lock on byte 201, as QEMU does for an image it does not share
 * for writing. While the descriptor *FD is open, a QEMU opening PATH
 * writable fails ("Failed to get "write" lock"): a `virsh start` of a
 * domain whose chain names it fails. Refused (-EBUSY) if another process
 * holds byte 101, i.e. has it open for writing (a running QEMU), or the
 * lock is refused; -errno if it cannot be opened. *WHY (caller frees)
 * says what happened. Close *FD to let writers in again (issue 9 disk.raw
 * of raw files, issue 10 revert). */
int cfs_image_hold_writers(const char *path, int *fd, char **why);

/* Human-readable size, 1024-based: "0B", "512B", "1.5KiB", "64.0MiB". */
void cfs_format_size(uint64_t bytes, char *out, size_t outlen);

/* RFC 3339 UTC timestamp, "2026-11-22T03:40:00Z"; "" for t == 0. */
void cfs_format_time(int64_t t, char *out, size_t outlen);

/* Growable NUL-terminated text buffer. */
struct cfs_buf {
    char *data;
    size_t len;
    size_t cap;
};
void cfs_buf_printf(struct cfs_buf *b, const char *fmt, ...) _printf_(2, 3);
void cfs_buf_put(struct cfs_buf *b, const char *s, size_t n);
/* Append S (NULL: nothing) with control characters (< 0x20, 0x7f) written
 * as \n, \t or \xHH, so it stays on one line. Other bytes as they are. */
void cfs_buf_put_escaped(struct cfs_buf *b, const char *s);
char *cfs_buf_steal(struct cfs_buf *b);    /* returns data ("" if empty), resets b */
void cfs_buf_free(struct cfs_buf *b);
static inline void cfs_buf_freep(struct cfs_buf *b) { cfs_buf_free(b); }
#define _cleanup_buf_ _cleanup_(cfs_buf_freep)

/* A deadline on clock CLK, MS milliseconds from now (MS < 0 counts as 0),
 * for pthread_cond_timedwait. */
struct timespec cfs_deadline_after(clockid_t clk, int64_t ms);
