/* imgserve.h — reading a frozen image chain's content as one raw disk
 * (snapshots/NAME/disk.raw, issue 9; docs/design/issue9.md).
 *
 * An image server serves one frozen chain: a snapshot's content, i.e. the
 * layer below the snapshot's overlay over its whole backing chain. Two
 * implementations exist: the real one (backend/nbd.c: one `qemu-nbd
 * --read-only` per server, read through libnbd over a private socket)
 * and an in-memory twin for unit tests (tests/fake/fake_img.c).
 *
 * The core (fs/core/readers.c) decides when a server starts and stops
 * (shared by every open of the same disk.raw, stopped at the last
 * release) and which merges it blocks; this interface only serves bytes.
 *
 * Errors: 0 or a negative errno; the message (qemu-nbd's own text where
 * there is one) in the thread-local slot of cfs_backend_errmsg().
 *   a file of the chain is missing                    -> -ENOENT
 *   an image lock refused (another process writes it) -> -EBUSY
 *   qemu-nbd not installed / not executable           -> -EIO
 *   format unknown or not servable (encryption)       -> -EIO / -EOPNOTSUPP
 *   the server died or a read failed                  -> -EIO
 *
 * Threads: every call may come from any thread, concurrently, except that
 * one stream is used by one thread at a time (FUSE serialises nothing, so
 * the core holds a per-handle mutex around stream_read). stop and
 * stream_close are never called while a stream_read of the same server
 * runs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One file of the chain, top first. */
struct cfs_img_layer {
    const char *path;      /* absolute, canonical (cfs_file_id.canonical) */
    const char *format;    /* "qcow2", "raw", ... never "" (never probed) */
    bool is_block;         /* a block device (QEMU's host_device) */
};

struct cfs_img_spec {
    const struct cfs_img_layer *layers; /* [0] the frozen image served */
    size_t n_layers;                    /* >= 1 */
    uint64_t virtual_size;              /* expected; -EIO if the server
                                           reports another */
    const char *label;                  /* for log lines: "web01/vda s2" */
};

/* A run of data (allocated somewhere in the chain, not a zero cluster):
 * what SEEK_DATA finds. Everything between runs is a hole. */
struct cfs_extent {
    uint64_t off;
    uint64_t len;
};

struct cfs_imgserve;
struct cfs_img;          /* one running server */
struct cfs_img_stream;   /* one open handle's reading state (read-ahead) */

struct cfs_imgserve_ops {
    const char *name;
    /* Before the mount: stop and remove what a previous daemon left
     * behind (servers it recorded and that still run, socket files, pid
     * records), one log line per thing removed. 0 or -errno. */
    int (*sweep)(struct cfs_imgserve *s);
    /* Start a server for SPEC and return once it answers (the image is
     * open, its size checked). Blocking (tens of ms). */
    int (*start)(struct cfs_imgserve *s, const struct cfs_img_spec *spec,
                 struct cfs_img **out);
    /* A reading state for one open handle: sequential reads are read
     * ahead, random reads are not. */
    int (*stream_open)(struct cfs_img *img, struct cfs_img_stream **out);
    /* Read LEN bytes at OFF (OFF + LEN <= the virtual size; the caller
     * clamps). Returns LEN, or -errno (-EIO once the server is dead). */
    ssize_t (*stream_read)(struct cfs_img_stream *st, void *buf, size_t len,
                           uint64_t off);
    void (*stream_close)(struct cfs_img_stream *st);
    /* The data runs of the whole image, sorted, non-overlapping, merged
     * where adjacent; fetched at the first call and kept until stop
     * (*RUNS stays valid until then; concurrent first calls are the
     * server's to serialise). 0 or -errno. */
    int (*extents)(struct cfs_img *img, const struct cfs_extent **runs,
                   size_t *n);
    /* Stop the server (its process ends; only the pid this server
     * started is ever signalled) and free IMG. */
    void (*stop)(struct cfs_img *img);
    /* Stop every server still running, free S. */
    void (*destroy)(struct cfs_imgserve *s);
};

struct cfs_imgserve {
    const struct cfs_imgserve_ops *ops;
    void *priv;
};

/* The real one: qemu-nbd (QEMU_NBD, NULL: "qemu-nbd" from PATH) with its
 * sockets and pid records in STATE_DIR/nbd (created 0700). NULL on
 * allocation failure only; a missing qemu-nbd shows at start. */
struct cfs_imgserve *cfs_nbd_imgserve_new(const char *state_dir,
                                          const char *qemu_nbd);

/* Pure helpers over data runs (fs/core/readers.c). */
/* lseek(2)'s SEEK_DATA / SEEK_HOLE over RUNS[0..N) of an image of SIZE
 * bytes: the offset, or -ENXIO (OFF >= SIZE; SEEK_DATA with no data at
 * or after OFF), -EINVAL for another WHENCE. The end is a hole. */
int64_t cfs_extents_seek(const struct cfs_extent *runs, size_t n,
                         uint64_t size, uint64_t off, int whence);
/* Bytes of data in RUNS, counted below SIZE. */
uint64_t cfs_extents_bytes(const struct cfs_extent *runs, size_t n,
                           uint64_t size);

/* The `json:` filename that gives qemu-nbd exactly SPEC's chain (each
 * layer's driver and absolute path; the bottom layer without a "backing"
 * key; a block device as host_device). Pure. NULL and *ERR (static text)
 * for a layer without a format. Caller frees. (backend/nbd_json.c) */
char *cfs_imgserve_chain_json(const struct cfs_img_spec *spec,
                              const char **err);
