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
 * part of it into the layer below. SNAP (may be NULL: not known) is
 * libvirt's snapshot of that name: its description carries how it was
 * taken (snapdesc.h: `quiesced`, `quiesce`, `taken`, issue 10 §2.6). */
void cfs_render_info_text(struct cfs_buf *b, const struct cfs_domain *d,
                          const struct cfs_disk *disk, int index,
                          bool partial, const struct cfs_snap_info *snap);
void cfs_render_info_json(struct cfs_buf *b, const struct cfs_domain *d,
                          const struct cfs_disk *disk, int index,
                          bool partial, const struct cfs_snap_info *snap);

/* ---- the domain's own files (issue 10) ---- */

/* Where snapshot NAME is in one disk of the domain: layer INDEX of DISK
 * (-1: the disk has no layer of that name), PARTIAL as above. */
struct cfs_snap_where {
    const struct cfs_disk *disk;
    int index;
    bool partial;
};

/* <dom>/snapshots/NAME/info(.json): the facts of `info` that are the
 * snapshot's, then one row per disk of D: WHERE[0..N) in the domain's
 * disk order; a disk without the layer is `merged` when SNAP or its
 * description names it as taken, else left out. */
/* G (may be NULL) is the domain's last job group of NAME (tree.h): in
 * phase partial, `state: partially-merged` and `remaining:` the disks it
 * left NAME on (issue 10 §3.4); its done members are `merged` rows. */
struct cfs_group;
void cfs_render_dom_info_text(struct cfs_buf *b, const struct cfs_domain *d,
                              const char *name, const struct cfs_snap_info *snap,
                              const struct cfs_snap_where *where, size_t n,
                              const struct cfs_group *g);
void cfs_render_dom_info_json(struct cfs_buf *b, const struct cfs_domain *d,
                              const char *name, const struct cfs_snap_info *snap,
                              const struct cfs_snap_where *where, size_t n,
                              const struct cfs_group *g);

/* One disk's part of <dom>/job: what the disk's own `job` shows. */
struct cfs_dom_disk_job {
    const char *disk;
    const struct cfs_job *job;          /* may be NULL: none */
    const struct cfs_disk_state *state; /* may be NULL */
};

/* <dom>/job(.json): the domain's block (its last job group G, issue 10
 * §3.5: `group`, `state`, `members`, `remaining`, `started`, `finished`,
 * `error`, or `state: none` when G is NULL; a thaw owed: THAW may be
 * NULL), then each disk's job as its `job` shows it, indented under
 * `disk: NAME`. */
struct cfs_thaw_owed;
void cfs_render_dom_job_text(struct cfs_buf *b, const struct cfs_domain *d,
                             const struct cfs_dom_disk_job *disks, size_t n,
                             const struct cfs_group *g,
                             const struct cfs_thaw_owed *thaw, bool stale);
void cfs_render_dom_job_json(struct cfs_buf *b, const struct cfs_domain *d,
                             const struct cfs_dom_disk_job *disks, size_t n,
                             const struct cfs_group *g,
                             const struct cfs_thaw_owed *thaw, bool stale);
