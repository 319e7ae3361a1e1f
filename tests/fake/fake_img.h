/* fake_img.h — an in-memory image server (imgserve.h) for unit tests of
 * disk.raw: no qemu-nbd. Every server reports the same data runs (set
 * with cfs_fake_img_set_runs; by default one run over the first half of
 * the image); a byte in a run reads as cfs_fake_img_byte(off), a hole as
 * 0. Counters say how many servers started, stopped, run now. */
#pragma once

#include "chainfs/imgserve.h"

struct cfs_imgserve *cfs_fake_imgserve_new(void);
/* The data runs every server started from now on reports (copied);
 * N == 0: all holes. */
void cfs_fake_img_set_runs(struct cfs_imgserve *s, const struct cfs_extent *runs,
                           size_t n);
/* The next start fails with ERR (negative errno) and MSG. */
void cfs_fake_img_fail_next_start(struct cfs_imgserve *s, int err,
                                  const char *msg);
/* "start", "stop", "running", "sweep", "stream_open", "stream_close",
 * "extents" (calls that fetched the map). */
unsigned cfs_fake_img_count(struct cfs_imgserve *s, const char *what);
/* The chain of the last start: "fmt:path\n" per layer, top first
 * (caller frees); NULL if none started. Its virtual size in *SIZE. */
char *cfs_fake_img_last_chain(struct cfs_imgserve *s, uint64_t *size);
/* What a data byte at OFF reads as. */
static inline unsigned char cfs_fake_img_byte(uint64_t off)
{
    return (unsigned char)(0xa0 + ((off >> 9) & 0x1f));
}
