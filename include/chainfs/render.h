/* render.h — the contents of every file in the tree, rendered from model
 * values into a buffer. Exact formats are in docs/FILES.md. Pure; the
 * caller holds whatever lock protects its inputs. */
#pragma once

#include <stdbool.h>

#include "chainfs/model.h"
#include "chainfs/util.h"

/* STALE: libvirt is unreachable; the text says so. */
void cfs_render_chain_text(struct cfs_buf *b, const struct cfs_domain *d,
                           const struct cfs_disk *disk, bool stale);
void cfs_render_chain_json(struct cfs_buf *b, const struct cfs_domain *d,
                           const struct cfs_disk *disk, bool stale);
/* JOB may be NULL or of type NONE: "state: none". */
void cfs_render_job_text(struct cfs_buf *b, const struct cfs_job *job,
                         bool stale);
void cfs_render_job_json(struct cfs_buf *b, const struct cfs_job *job,
                         bool stale);
/* The same with the disk's queue (issue 8 §3.5): `queued:` and
 * `returned:` lines, "queue" and "returned" keys; with its open disk.raw
 * readers (issue 9 §3.1): `waiting:` (queued runs a reader holds up) and
 * `readers:` lines, each queue entry's "waiting" and a "readers" key.
 * S (may be NULL: none of them) is the disk's state: its queue oldest
 * first, its returns, its settings (each queued snapshot's `merge`
 * override), its readers. */
struct cfs_disk_state;
void cfs_render_job_queue_text(struct cfs_buf *b, const struct cfs_job *job,
                               const struct cfs_disk_state *s, bool stale);
void cfs_render_job_queue_json(struct cfs_buf *b, const struct cfs_job *job,
                               const struct cfs_disk_state *s, bool stale);
/* Snapshot at layer INDEX of DISK. PARTIAL: a failed merge already wrote
 * part of it into the layer below. */
void cfs_render_info_text(struct cfs_buf *b, const struct cfs_domain *d,
                          const struct cfs_disk *disk, int index,
                          bool partial);
void cfs_render_info_json(struct cfs_buf *b, const struct cfs_domain *d,
                          const struct cfs_disk *disk, int index,
                          bool partial);
