/* journal.h — the durable record of what chainfs is about to do to a chain.
 *
 * One file, STATE_DIR/journal, one JSON object per line (JSON Lines), each
 * an open entry. Every change rewrites the whole file atomically: write a
 * temporary file, fsync it, rename it over the old one, fsync the
 * directory. Loading is tolerant: a line that does not parse or lacks a
 * required field is reported (in *warnings) and skipped, never a crash.
 *
 * Thread-safe: an internal mutex serialises every call. */
#pragma once

#include <stdint.h>

#include "chainfs/model.h"

struct cfs_journal_entry {
    char *id;          /* unique, chosen by cfs_journal_new_id() */
    char *domain;
    char *disk;
    char *snapshot;    /* display name of the snapshot */
    char *meta_name;   /* libvirt snapshot metadata to drop, or NULL */
    char *top;         /* overlay merged away */
    char *base;        /* layer it is merged into */
    enum cfs_job_type type;
    char *phase;       /* the job's phase, by name (cfs_job_phase_to_string:
                          "starting", "running", "pivoting", "cleanup", ...;
                          fs/core/job.c) */
    uint64_t bandwidth; /* the job's limit, bytes/s; 0 = unlimited (absent
                           in entries of earlier versions) */
    char **disks;      /* every disk the job touches (NULL-terminated; one
                          today, == disk); NULL: just disk */
    int64_t created;   /* unix seconds */
    int64_t updated;
    char *error;       /* or NULL */
    /* Issue 8's merges (all optional: absent in entries of earlier
     * versions, which load with these empty and recover as before). A
     * present but malformed direction, snapshots, leaving or written
     * makes the line skipped, as a missing required field does: they
     * decide what recovery deletes. */
    enum cfs_merge_direction direction; /* CFS_DIRECTION_NONE: not stored */
    char **snapshots;  /* every snapshot the job removes, top first
                          (NULL-terminated; NULL: just snapshot) */
    char **meta_names; /* the libvirt metadata of each of snapshots[]
                          ("" for none), same order; NULL: just meta_name
                          (a run of the queue) */
    size_t n_leaving;
    struct cfs_job_file *leaving; /* files that leave the chain; each id
                          is stored as dev/ino when known (canonical is
                          not stored: it loads NULL) */
    char *written;     /* the file the job writes, or NULL (BASE) */
    uint64_t bytes_commit, bytes_pull, bytes_copied; /* 0: not stored */
    char *reason;      /* why this direction, or NULL */
    char *survivor;    /* pull: the snapshot retargeted to WRITTEN, or NULL */
    bool superseded;   /* §3.3: regrouped (written only when true) */
    /* Issue 8's copies (type copy; all optional, as above: a present but
     * malformed mode or made[] makes the line skipped, made[]
     * decides what a failed copy deletes). TOP is the source, BASE the
     * destination (the required fields), DEST the destination again. */
    char *dest;
    enum cfs_copy_mode copy_mode; /* CFS_COPY_NONE: not stored */
    bool manual;
    bool finish;       /* `finish` asked (written before the abort call) */
    size_t n_made;
    struct cfs_job_file *made; /* files chainfs made, with dev/ino */
    size_t n_copied;   /* chain: frozen layers copied, from the bottom */
    char **layer_meta; /* chain: each source layer's snapshot, "" none */
    size_t n_old;
    struct cfs_job_file *old_files; /* the source's files (never deleted) */
    /* Issue 10's revert (type revert, below) */
    bool force;        /* `revert NAME force` (written only when true) */
    /* Issue 10 §3.7 (optional, as above): */
    char *group;       /* a member's group: the group entry's id, or NULL */
    char **remaining;  /* type group: the disks that still have the
                          snapshot's layer (NULL-terminated; NULL: none) */
};

/* A job group (issue 10 §3.7): type CFS_JOB_GROUP, phase "running" or
 * "partial", snapshot NAME, meta_name, disk = the first member (the
 * loader requires it), top = base = "-", disks[] every member,
 * remaining[] the members whose layer of NAME remains, error. Each
 * member's own entry (a merge, or a queued rmdir) carries `group`. */

/* A queued rmdir (issue 8 §3.1): type CFS_JOB_RMDIR, phase "queued",
 * snapshot, meta_name, top (the snapshot's own layer), base (the layer
 * below it when it was queued) and leaving[0] = TOP with its dev/ino
 * (which file it is, for dispatch when the name no longer resolves).
 * Phase "requeued": a snapshot of a merge aborted to be regrouped
 * (§3.3), found again by its name only. */

/* A revert (issue 10 §4.3): type CFS_JOB_REVERT, phase "prepare",
 * "switching", "switched" or "cleanup"; snapshot NAME and meta_name its
 * libvirt metadata (or none); disks[] every disk reverted (disk the
 * first); top and base the first disk's active layer and NAME's frozen
 * layer (for the log). Per disk, in the order of disks[]: old_files[k]
 * the persistent definition's source before the revert, made[k] the new
 * overlay (its dev/ino once made). leaving[] every file the revert
 * discards (dev/ino: deleted only if still that file and in no chain);
 * snapshots[]/meta_names[] the later snapshots discarded with force
 * (newest first; "" no metadata), force. */

struct cfs_journal;

/* Open (creating STATE_DIR with mode 0700 if missing) and load. Fails with
 * -errno if STATE_DIR cannot be created or is not writable (a test file is
 * created and removed). *warnings (NULL-terminated, caller frees with
 * cfs_strv_free) gets one line per skipped record, or NULL if none. */
int cfs_journal_open(const char *state_dir, struct cfs_journal **out,
                     char ***warnings);
struct cfs_journal *cfs_journal_free(struct cfs_journal *j);

/* "<unix seconds>-<pid>-<counter>"; caller frees. */
char *cfs_journal_new_id(struct cfs_journal *j);

/* Add E, or replace the entry with E's id; durable before returning. */
int cfs_journal_put(struct cfs_journal *j, const struct cfs_journal_entry *e);
/* Remove the entry ID; durable before returning. -ENOENT if absent. */
int cfs_journal_remove(struct cfs_journal *j, const char *id);

/* Several changes in one durable rewrite, all or none (issue 8: the
 * queue's dispatch replaces a run's queued entries by its job's entry).
 * Each of PUTS[0..N_PUTS) is added or replaces the entry with its id;
 * each of REMOVES[0..N_REMOVES) is removed. -EINVAL (nothing changed) if
 * a put is invalid, two puts share an id, or an id is both put and
 * removed; -ENOENT (nothing changed) if a removed id is not open; else
 * as cfs_journal_put. */
int cfs_journal_apply(struct cfs_journal *j,
                      const struct cfs_journal_entry *puts, size_t n_puts,
                      const char *const *removes, size_t n_removes);

/* Snapshot of the open entries (deep copies); caller frees with
 * cfs_journal_entries_free. */
int cfs_journal_list(struct cfs_journal *j, struct cfs_journal_entry **out,
                     size_t *n);
void cfs_journal_entries_free(struct cfs_journal_entry *v, size_t n);
void cfs_journal_entry_clear(struct cfs_journal_entry *e);
void cfs_journal_entry_copy(struct cfs_journal_entry *dst,
                            const struct cfs_journal_entry *src);
