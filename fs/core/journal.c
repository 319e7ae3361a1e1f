/* journal.c — the durable journal of the chain changes chainfs has started.
 *
 * Owns STATE_DIR/journal, its transient STATE_DIR/journal.tmp, and the
 * in-memory list of open entries, which always equals what the file on
 * disk says: a change is first written in full to journal.tmp, fsynced,
 * renamed over journal and the directory fsynced; only then does the
 * in-memory list change. A failed write leaves both as they were.
 *
 * Format: JSON Lines, one object per open entry, each carrying
 * "version": 1. Loading skips (with a warning) any line that does not
 * parse, is not an object, lacks a required field, has an unknown type or
 * another version, has a malformed merge field (direction, snapshots,
 * leaving, written: issue 8), or repeats an id; it never fails because
 * of content. The issue-8 fields are written only when set, so an entry
 * of an earlier kind is written as before.
 *
 * Threads: any thread may call any function; j->lock (the only lock here,
 * never held while calling out of this module) serialises them.
 * cfs_journal_free must not race with other calls on the same journal. */

#include "chainfs/journal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "chainfs/util.h"

#define JOURNAL_FILE "journal"
#define JOURNAL_TMP "journal.tmp"
#define JOURNAL_VERSION 1
#define JOURNAL_LINE_MAX (1024 * 1024) /* a real record is < 8 KiB */

struct cfs_journal {
    pthread_mutex_t lock;
    int dirfd;                         /* STATE_DIR, O_DIRECTORY */
    unsigned counter;                  /* for cfs_journal_new_id() */
    struct cfs_journal_entry *entries; /* in file order */
    size_t n_entries;
};

/* ---- entries -------------------------------------------------------------- */

void cfs_journal_entry_clear(struct cfs_journal_entry *e)
{
    if (!e)
        return;
    free(e->id);
    free(e->domain);
    free(e->disk);
    free(e->snapshot);
    free(e->meta_name);
    free(e->top);
    free(e->base);
    free(e->phase);
    free(e->error);
    cfs_strv_free(e->disks);
    cfs_strv_free(e->snapshots);
    cfs_strv_free(e->meta_names);
    cfs_job_files_free(e->leaving, e->n_leaving);
    free(e->written);
    free(e->reason);
    free(e->survivor);
    free(e->dest);
    cfs_strv_free(e->layer_meta);
    cfs_job_files_free(e->made, e->n_made);
    cfs_job_files_free(e->old_files, e->n_old);
    free(e->group);
    cfs_strv_free(e->remaining);
    *e = (struct cfs_journal_entry){0};
}

/* DST is overwritten without being freed: pass a clear entry. */
void cfs_journal_entry_copy(struct cfs_journal_entry *dst,
                            const struct cfs_journal_entry *src)
{
    *dst = (struct cfs_journal_entry){
        .id = cfs_xstrdup(src->id),
        .domain = cfs_xstrdup(src->domain),
        .disk = cfs_xstrdup(src->disk),
        .snapshot = cfs_xstrdup(src->snapshot),
        .meta_name = cfs_xstrdup(src->meta_name),
        .top = cfs_xstrdup(src->top),
        .base = cfs_xstrdup(src->base),
        .type = src->type,
        .phase = cfs_xstrdup(src->phase),
        .created = src->created,
        .updated = src->updated,
        .error = cfs_xstrdup(src->error),
        .bandwidth = src->bandwidth,
        .direction = src->direction,
        .written = cfs_xstrdup(src->written),
        .bytes_commit = src->bytes_commit,
        .bytes_pull = src->bytes_pull,
        .bytes_copied = src->bytes_copied,
        .reason = cfs_xstrdup(src->reason),
        .survivor = cfs_xstrdup(src->survivor),
        .superseded = src->superseded,
        .dest = cfs_xstrdup(src->dest),
        .copy_mode = src->copy_mode,
        .manual = src->manual,
        .finish = src->finish,
        .n_copied = src->n_copied,
        .force = src->force,
        .group = cfs_xstrdup(src->group),
    };
    for (char **r = src->remaining; r && *r; r++)
        cfs_strv_push(&dst->remaining, cfs_xstrdup(*r));
    for (char **m = src->layer_meta; m && *m; m++)
        cfs_strv_push(&dst->layer_meta, cfs_xstrdup(*m));
    dst->made = cfs_job_files_dup(src->made, src->n_made);
    dst->n_made = dst->made ? src->n_made : 0;
    dst->old_files = cfs_job_files_dup(src->old_files, src->n_old);
    dst->n_old = dst->old_files ? src->n_old : 0;
    for (char **d = src->disks; d && *d; d++)
        cfs_strv_push(&dst->disks, cfs_xstrdup(*d));
    for (char **n = src->snapshots; n && *n; n++)
        cfs_strv_push(&dst->snapshots, cfs_xstrdup(*n));
    for (char **n = src->meta_names; n && *n; n++)
        cfs_strv_push(&dst->meta_names, cfs_xstrdup(*n));
    dst->leaving = cfs_job_files_dup(src->leaving, src->n_leaving);
    dst->n_leaving = dst->leaving ? src->n_leaving : 0;
}

void cfs_journal_entries_free(struct cfs_journal_entry *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        cfs_journal_entry_clear(&v[i]);
    free(v);
}

static bool entry_type_valid(enum cfs_job_type t)
{
    return t > CFS_JOB_NONE && t < CFS_JOB_TYPE_MAX;
}

/* The issue-8 fields as the loader takes them back. */
static bool merge_fields_valid(const struct cfs_journal_entry *e)
{
    if ((int)e->direction < 0 || e->direction >= CFS_DIRECTION_MAX)
        return false;
    for (char **n = e->snapshots; n && *n; n++)
        if (!**n)
            return false;
    if (e->n_leaving > 0 && !e->leaving)
        return false;
    for (size_t i = 0; i < e->n_leaving; i++)
        if (!e->leaving[i].path || !*e->leaving[i].path)
            return false;
    if (e->group && !*e->group)
        return false;
    for (char **r = e->remaining; r && *r; r++)
        if (!**r)
            return false;
    return !e->written || *e->written;
}

/* A revert names one new overlay and one old source per disk (issue 10
 * §4.3): recovery pairs them by index, so a count that does not match is
 * no revert entry it can act on. */
static bool revert_fields_valid(const struct cfs_journal_entry *e)
{
    if (e->type != CFS_JOB_REVERT)
        return true;
    size_t n = e->disks ? cfs_strv_len(e->disks) : 1;
    return n > 0 && e->n_made == n && e->n_old == n;
}

/* Only entries that would load back may be written. */
static bool entry_valid(const struct cfs_journal_entry *e)
{
    return e && e->id && *e->id && e->domain && *e->domain && e->disk &&
           *e->disk && e->top && *e->top && e->base && *e->base &&
           e->phase && *e->phase && entry_type_valid(e->type) &&
           merge_fields_valid(e) && revert_fields_valid(e);
}

static ssize_t find_entry(const struct cfs_journal *j, const char *id)
{
    for (size_t i = 0; i < j->n_entries; i++)
        if (cfs_streq(j->entries[i].id, id))
            return (ssize_t)i;
    return -1;
}

/* ---- serialisation -------------------------------------------------------- */

static void json_add_str(json_object *o, const char *key, const char *val)
{
    if (val)
        json_object_object_add(o, key, json_object_new_string(val));
}

/* KEY: [{"path", "dev", "ino"}...] of V[0..N), only when N > 0. */
static void json_add_files(json_object *o, const char *key,
                           const struct cfs_job_file *v, size_t n)
{
    if (n == 0)
        return;
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        const struct cfs_job_file *lf = &v[i];
        json_object *f = json_object_new_object();
        json_add_str(f, "path", lf->path);
        if (lf->id.known) {
            /* as int64: a value above INT64_MAX comes back the same */
            json_object_object_add(f, "dev", json_object_new_int64((int64_t)lf->id.dev));
            json_object_object_add(f, "ino", json_object_new_int64((int64_t)lf->id.ino));
        }
        json_object_array_add(arr, f);
    }
    json_object_object_add(o, key, arr);
}


static void entry_to_line(const struct cfs_journal_entry *e,
                          struct cfs_buf *out)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "version", json_object_new_int(JOURNAL_VERSION));
    json_add_str(o, "id", e->id);
    json_add_str(o, "domain", e->domain);
    json_add_str(o, "disk", e->disk);
    json_add_str(o, "snapshot", e->snapshot);
    json_add_str(o, "meta_name", e->meta_name);
    json_add_str(o, "top", e->top);
    json_add_str(o, "base", e->base);
    json_add_str(o, "type", cfs_job_type_to_string(e->type));
    json_add_str(o, "phase", e->phase);
    json_object_object_add(o, "created", json_object_new_int64(e->created));
    json_object_object_add(o, "updated", json_object_new_int64(e->updated));
    json_add_str(o, "error", e->error);
    json_object_object_add(o, "bandwidth", json_object_new_int64((int64_t)e->bandwidth));
    /* every disk the job touches (one today): a whole-VM job later */
    json_object *disks = json_object_new_array();
    if (e->disks)
        for (char **d = e->disks; *d; d++)
            json_object_array_add(disks, json_object_new_string(*d));
    else
        json_object_array_add(disks, json_object_new_string(e->disk));
    json_object_object_add(o, "disks", disks);

    /* issue 8: only when set, so that other entries read as before */
    if (e->direction != CFS_DIRECTION_NONE)
        json_add_str(o, "direction", cfs_merge_direction_to_string(e->direction));
    if (e->snapshots && *e->snapshots) { /* [] would read back as NULL */
        json_object *snaps = json_object_new_array();
        for (char **n = e->snapshots; *n; n++)
            json_object_array_add(snaps, json_object_new_string(*n));
        json_object_object_add(o, "snapshots", snaps);
    }
    if (e->meta_names && *e->meta_names) {
        json_object *metas = json_object_new_array();
        for (char **n = e->meta_names; *n; n++)
            json_object_array_add(metas, json_object_new_string(*n));
        json_object_object_add(o, "meta_names", metas);
    }
    json_add_files(o, "leaving", e->leaving, e->n_leaving);
    json_add_str(o, "written", e->written);
    if (e->bytes_commit)
        json_object_object_add(o, "bytes_commit", json_object_new_int64((int64_t)e->bytes_commit));
    if (e->bytes_pull)
        json_object_object_add(o, "bytes_pull", json_object_new_int64((int64_t)e->bytes_pull));
    if (e->bytes_copied)
        json_object_object_add(o, "bytes_copied", json_object_new_int64((int64_t)e->bytes_copied));
    json_add_str(o, "reason", e->reason);
    json_add_str(o, "survivor", e->survivor);
    if (e->superseded)
        json_object_object_add(o, "superseded", json_object_new_boolean(true));
    /* copies */
    json_add_str(o, "dest", e->dest);
    if (e->copy_mode != CFS_COPY_NONE)
        json_add_str(o, "mode", cfs_copy_mode_to_string(e->copy_mode));
    if (e->manual)
        json_object_object_add(o, "manual", json_object_new_boolean(1));
    if (e->finish)
        json_object_object_add(o, "finish", json_object_new_boolean(1));
    json_add_files(o, "made", e->made, e->n_made);
    if (e->n_copied)
        json_object_object_add(o, "copied", json_object_new_int64((int64_t)e->n_copied));
    if (e->layer_meta && *e->layer_meta) {
        json_object *lm = json_object_new_array();
        for (char **m = e->layer_meta; *m; m++)
            json_object_array_add(lm, json_object_new_string(*m));
        json_object_object_add(o, "layer_meta", lm);
    }
    json_add_files(o, "old_files", e->old_files, e->n_old);
    /* revert */
    if (e->force)
        json_object_object_add(o, "force", json_object_new_boolean(1));
    /* issue 10: job groups */
    json_add_str(o, "group", e->group);
    if (e->type == CFS_JOB_GROUP || e->remaining) { /* a group: [] is "none" */
        json_object *rem = json_object_new_array();
        for (char **r = e->remaining; r && *r; r++)
            json_object_array_add(rem, json_object_new_string(*r));
        json_object_object_add(o, "remaining", rem);
    }

    /* PLAIN never emits a raw newline: control characters are escaped. */
    cfs_buf_printf(out, "%s\n",
                   json_object_to_json_string_ext(
                       o, JSON_C_TO_STRING_PLAIN |
                              JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

/* A short, printable rendering of untrusted text for a warning. */
static void sanitize(const char *s, char *out, size_t outlen)
{
    size_t i = 0;

    for (; *s && i + 1 < outlen; s++, i++)
        out[i] = isprint((unsigned char)*s) ? *s : '?';
    out[i] = '\0';
}

/* NULL if KEY is absent or not a string. */
static const char *json_get_str(json_object *o, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int64_t json_get_int(json_object *o, const char *key)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_int))
        return 0;
    return json_object_get_int64(v);
}

/* A byte count written as int64 (see entry_to_line): negative numbers are
 * values above INT64_MAX. Absent or not a number: 0. */
static uint64_t json_get_u64(json_object *o, const char *key)
{
    return (uint64_t)json_get_int(o, key);
}

/* KEY as json_add_files writes it, into *VP and *NP (left NULL/0 when absent).
 * -EINVAL and *WHY for a malformed one. */
static int json_get_files(json_object *o, const char *key,
                          struct cfs_job_file **vp, size_t *np, char **why)
{
    json_object *v;

    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_array)) {
        *why = cfs_xasprintf("invalid \"%s\"", key);
        return -EINVAL;
    }
    size_t n = json_object_array_length(v);
    if (n > 0)
        *vp = cfs_xcalloc(n, sizeof(**vp));
    for (size_t i = 0; i < n; i++) {
        json_object *f = json_object_array_get_idx(v, i), *dev, *ino;
        const char *path = json_object_is_type(f, json_type_object)
                               ? json_get_str(f, "path") : NULL;
        bool has_dev = path && json_object_object_get_ex(f, "dev", &dev);
        bool has_ino = path && json_object_object_get_ex(f, "ino", &ino);
        /* an identity is both numbers or neither */
        if (!path || !*path || has_dev != has_ino ||
            (has_dev && (!json_object_is_type(dev, json_type_int) ||
                         !json_object_is_type(ino, json_type_int)))) {
            *why = cfs_xasprintf("invalid \"%s\" file %zu", key, i + 1);
            return -EINVAL;
        }
        struct cfs_job_file *lf = &(*vp)[(*np)++];
        lf->path = cfs_xstrdup(path);
        if (has_dev) {
            lf->id.known = true;
            lf->id.dev = (uint64_t)json_object_get_int64(dev);
            lf->id.ino = (uint64_t)json_object_get_int64(ino);
        }
    }
    return 0;
}


/* The issue-8 fields of O into OUT (whose other fields are set). 0, or
 * -EINVAL with *WHY when one is present but malformed. */
static int json_merge_fields(json_object *o, struct cfs_journal_entry *out,
                             char **why)
{
    json_object *v;
    int r;

    if (json_object_object_get_ex(o, "direction", &v)) {
        const char *d = json_object_is_type(v, json_type_string)
                            ? json_object_get_string(v) : NULL;
        out->direction = cfs_merge_direction_from_string(d);
        if (out->direction == CFS_DIRECTION_MAX) {
            out->direction = CFS_DIRECTION_NONE;
            *why = cfs_xstrdup("invalid \"direction\"");
            return -EINVAL;
        }
    }
    if (json_object_object_get_ex(o, "snapshots", &v)) {
        if (!json_object_is_type(v, json_type_array)) {
            *why = cfs_xstrdup("invalid \"snapshots\"");
            return -EINVAL;
        }
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            json_object *s = json_object_array_get_idx(v, i);
            if (!json_object_is_type(s, json_type_string) ||
                !*json_object_get_string(s)) {
                *why = cfs_xstrdup("invalid \"snapshots\"");
                return -EINVAL;
            }
            cfs_strv_push(&out->snapshots, cfs_xstrdup(json_object_get_string(s)));
        }
    }
    if (json_object_object_get_ex(o, "meta_names", &v)) {
        /* "" stands for a snapshot without metadata */
        if (!json_object_is_type(v, json_type_array)) {
            *why = cfs_xstrdup("invalid \"meta_names\"");
            return -EINVAL;
        }
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            json_object *s = json_object_array_get_idx(v, i);
            if (!json_object_is_type(s, json_type_string)) {
                *why = cfs_xstrdup("invalid \"meta_names\"");
                return -EINVAL;
            }
            cfs_strv_push(&out->meta_names, cfs_xstrdup(json_object_get_string(s)));
        }
    }
    r = json_get_files(o, "leaving", &out->leaving, &out->n_leaving, why);
    if (r < 0)
        return r;
    if (json_object_object_get_ex(o, "written", &v)) {
        if (!json_object_is_type(v, json_type_string) ||
            !*json_object_get_string(v)) {
            *why = cfs_xstrdup("invalid \"written\"");
            return -EINVAL;
        }
        out->written = cfs_xstrdup(json_object_get_string(v));
    }
    /* what job / job.json show; a bad value is not worth the entry */
    out->bytes_commit = json_get_u64(o, "bytes_commit");
    out->bytes_pull = json_get_u64(o, "bytes_pull");
    out->bytes_copied = json_get_u64(o, "bytes_copied");
    out->reason = cfs_xstrdup(json_get_str(o, "reason"));
    out->survivor = cfs_xstrdup(json_get_str(o, "survivor"));
    if (json_object_object_get_ex(o, "superseded", &v) &&
        json_object_is_type(v, json_type_boolean))
        out->superseded = json_object_get_boolean(v);
    /* copies */
    if (json_object_object_get_ex(o, "dest", &v)) {
        if (!json_object_is_type(v, json_type_string) ||
            json_object_get_string(v)[0] != '/') {
            *why = cfs_xstrdup("invalid \"dest\"");
            return -EINVAL;
        }
        out->dest = cfs_xstrdup(json_object_get_string(v));
    }
    if (json_object_object_get_ex(o, "mode", &v)) {
        const char *m = json_object_is_type(v, json_type_string)
                            ? json_object_get_string(v) : NULL;
        out->copy_mode = cfs_copy_mode_from_string(m);
        if (out->copy_mode == CFS_COPY_MODE_MAX) {
            out->copy_mode = CFS_COPY_NONE;
            *why = cfs_xstrdup("invalid \"mode\"");
            return -EINVAL;
        }
    }
    out->manual = json_object_object_get_ex(o, "manual", &v) &&
                  json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
    out->finish = json_object_object_get_ex(o, "finish", &v) &&
                  json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
    r = json_get_files(o, "made", &out->made, &out->n_made, why);
    if (r < 0)
        return r;
    out->n_copied = (size_t)json_get_u64(o, "copied");
    if (json_object_object_get_ex(o, "layer_meta", &v)) {
        if (!json_object_is_type(v, json_type_array)) {
            *why = cfs_xstrdup("invalid \"layer_meta\"");
            return -EINVAL;
        }
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            json_object *m = json_object_array_get_idx(v, i);
            if (!json_object_is_type(m, json_type_string)) {
                *why = cfs_xstrdup("invalid \"layer_meta\"");
                return -EINVAL;
            }
            cfs_strv_push(&out->layer_meta, cfs_xstrdup(json_object_get_string(m)));
        }
    }
    r = json_get_files(o, "old_files", &out->old_files, &out->n_old, why);
    if (r < 0)
        return r;
    out->force = json_object_object_get_ex(o, "force", &v) &&
                 json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
    /* issue 10: a member's group decides what recovery holds together;
     * a group's remaining[] what is still to merge */
    if (json_object_object_get_ex(o, "group", &v)) {
        if (!json_object_is_type(v, json_type_string) ||
            !*json_object_get_string(v)) {
            *why = cfs_xstrdup("invalid \"group\"");
            return -EINVAL;
        }
        out->group = cfs_xstrdup(json_object_get_string(v));
    }
    if (json_object_object_get_ex(o, "remaining", &v)) {
        if (!json_object_is_type(v, json_type_array)) {
            *why = cfs_xstrdup("invalid \"remaining\"");
            return -EINVAL;
        }
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            json_object *d = json_object_array_get_idx(v, i);
            if (!json_object_is_type(d, json_type_string) ||
                !*json_object_get_string(d)) {
                *why = cfs_xstrdup("invalid \"remaining\"");
                return -EINVAL;
            }
            cfs_strv_push(&out->remaining, cfs_xstrdup(json_object_get_string(d)));
        }
    }
    return 0;
}

static int json_object_to_entry(json_object *o, struct cfs_journal_entry *out,
                                char **why)
{
    static const char *const required[] = {
        "id", "domain", "disk", "top", "base", "type", "phase",
    };
    json_object *v;
    const char *type;
    enum cfs_job_type t;

    if (json_object_object_get_ex(o, "version", &v) &&
        (!json_object_is_type(v, json_type_int) ||
         json_object_get_int64(v) != JOURNAL_VERSION)) {
        *why = cfs_xstrdup("unsupported version");
        return -EINVAL;
    }
    for (size_t i = 0; i < ELEMENTSOF(required); i++) {
        const char *s = json_get_str(o, required[i]);

        if (!s || !*s) {
            *why = cfs_xasprintf("missing or invalid \"%s\"", required[i]);
            return -EINVAL;
        }
    }

    type = json_get_str(o, "type");
    for (t = CFS_JOB_NONE + 1; t < CFS_JOB_TYPE_MAX; t++)
        if (cfs_streq(cfs_job_type_to_string(t), type))
            break;
    if (t == CFS_JOB_TYPE_MAX) {
        char shown[40];

        sanitize(type, shown, sizeof(shown));
        *why = cfs_xasprintf("unknown type \"%s\"", shown);
        return -EINVAL;
    }

    *out = (struct cfs_journal_entry){
        .id = cfs_xstrdup(json_get_str(o, "id")),
        .domain = cfs_xstrdup(json_get_str(o, "domain")),
        .disk = cfs_xstrdup(json_get_str(o, "disk")),
        .snapshot = cfs_xstrdup(json_get_str(o, "snapshot")),
        .meta_name = cfs_xstrdup(json_get_str(o, "meta_name")),
        .top = cfs_xstrdup(json_get_str(o, "top")),
        .base = cfs_xstrdup(json_get_str(o, "base")),
        .type = t,
        .phase = cfs_xstrdup(json_get_str(o, "phase")),
        .created = json_get_int(o, "created"),
        .updated = json_get_int(o, "updated"),
        .error = cfs_xstrdup(json_get_str(o, "error")),
    };
    /* absent in entries of earlier versions: unlimited, just disk */
    int64_t bw = json_get_int(o, "bandwidth");
    out->bandwidth = bw > 0 ? (uint64_t)bw : 0;
    if (json_object_object_get_ex(o, "disks", &v) &&
        json_object_is_type(v, json_type_array)) {
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            json_object *d = json_object_array_get_idx(v, i);
            if (json_object_is_type(d, json_type_string) &&
                *json_object_get_string(d))
                cfs_strv_push(&out->disks,
                              cfs_xstrdup(json_object_get_string(d)));
        }
    }
    int r = json_merge_fields(o, out, why);
    if (r == 0 && !revert_fields_valid(out)) {
        *why = cfs_xstrdup("a revert without one \"made\" and one \"old_files\" "
                           "per disk");
        r = -EINVAL;
    }
    if (r < 0)
        cfs_journal_entry_clear(out);
    return r;
}

/* Parse one line (without its newline). On failure *why says why. */
static int line_to_entry(const char *line, size_t len,
                         struct cfs_journal_entry *out, char **why)
{
    struct json_tokener *tok;
    json_object *o;
    enum json_tokener_error jerr;
    size_t end;
    int r;

    if (len > JOURNAL_LINE_MAX) {
        *why = cfs_xstrdup("record too long");
        return -EINVAL;
    }
    if (memchr(line, '\0', len)) {
        *why = cfs_xstrdup("contains a NUL byte");
        return -EINVAL;
    }

    tok = json_tokener_new();
    if (!tok)
        abort();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT |
                                    JSON_TOKENER_ALLOW_TRAILING_CHARS);
    o = json_tokener_parse_ex(tok, line, (int)len);
    jerr = json_tokener_get_error(tok);
    end = json_tokener_get_parse_end(tok);
    if (jerr == json_tokener_continue) {
        /* End of input: a bare number or literal is complete only now. */
        o = json_tokener_parse_ex(tok, "", 1);
        jerr = json_tokener_get_error(tok);
        if (jerr == json_tokener_success)
            end = len;
    }
    json_tokener_free(tok);

    if (jerr == json_tokener_continue || jerr == json_tokener_error_parse_eof) {
        *why = cfs_xstrdup("incomplete record");
        r = -EINVAL;
        goto out;
    }
    if (jerr != json_tokener_success) {
        *why = cfs_xasprintf("invalid JSON (%s)", json_tokener_error_desc(jerr));
        r = -EINVAL;
        goto out;
    }
    for (; end < len; end++)
        if (!isspace((unsigned char)line[end])) {
            *why = cfs_xstrdup("trailing data after the record");
            r = -EINVAL;
            goto out;
        }
    if (!o || !json_object_is_type(o, json_type_object)) { /* NULL: null */
        *why = cfs_xstrdup("not a JSON object");
        r = -EINVAL;
        goto out;
    }
    r = json_object_to_entry(o, out, why);
out:
    json_object_put(o);
    return r;
}

static bool line_blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!isspace((unsigned char)line[i]))
            return false;
    return true;
}

static void entries_append(struct cfs_journal *j,
                           const struct cfs_journal_entry *e)
{
    j->entries = cfs_xrealloc(j->entries,
                              (j->n_entries + 1) * sizeof(*j->entries));
    j->entries[j->n_entries++] = *e; /* takes ownership */
}

static void load_warn(char ***warnings, size_t lineno, const char *why)
{
    cfs_strv_push(warnings,
                  cfs_xasprintf("journal line %zu: %s, skipped", lineno, why));
}

static void fclosep(FILE **f)
{
    if (*f)
        fclose(*f);
}

static int journal_load(struct cfs_journal *j, char ***warnings)
{
    _cleanup_(fclosep) FILE *f = NULL;
    _cleanup_free_ char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    int fd;

    fd = openat(j->dirfd, JOURNAL_FILE, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    f = fdopen(fd, "r");
    if (!f) {
        int r = -errno;

        close(fd);
        return r;
    }

    errno = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        struct cfs_journal_entry e;
        _cleanup_free_ char *why = NULL;

        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (line_blank(line, (size_t)len))
            continue;
        if (line_to_entry(line, (size_t)len, &e, &why) < 0) {
            load_warn(warnings, lineno, why);
            continue;
        }
        if (find_entry(j, e.id) >= 0) {
            load_warn(warnings, lineno, "duplicate id");
            cfs_journal_entry_clear(&e);
            continue;
        }
        entries_append(j, &e);
    }
    if (ferror(f))
        return errno ? -errno : -EIO;
    return 0;
}

/* ---- writing -------------------------------------------------------------- */

/* Replace the journal file with V[0..N), durably. Called with j->lock.
 * *RENAMED says whether the new file replaced the old one (even if the
 * directory fsync then failed): the caller's in-memory list must follow. */
static int journal_write(struct cfs_journal *j,
                         const struct cfs_journal_entry *const *v, size_t n,
                         bool *renamed)
{
    _cleanup_buf_ struct cfs_buf b = {0};
    int fd, r;

    *renamed = false;
    for (size_t i = 0; i < n; i++)
        entry_to_line(v[i], &b);

    fd = openat(j->dirfd, JOURNAL_TMP,
                O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    r = cfs_write_all(fd, b.data, b.len);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && renameat(j->dirfd, JOURNAL_TMP, j->dirfd, JOURNAL_FILE) < 0)
        r = -errno;
    if (r < 0) {
        unlinkat(j->dirfd, JOURNAL_TMP, 0);
        return r;
    }
    *renamed = true;
    return cfs_fsync_dir(j->dirfd);
}

/* Write the current list with entry SKIP left out (-1: none), entry
 * REPLACE_AT replaced by E (-1: none) or E appended (E non-NULL,
 * REPLACE_AT -1). */
static int journal_write_change(struct cfs_journal *j, ssize_t skip,
                                ssize_t replace_at,
                                const struct cfs_journal_entry *e,
                                bool *renamed)
{
    _cleanup_free_ const struct cfs_journal_entry **v =
        cfs_xcalloc(j->n_entries + 1, sizeof(*v));
    size_t n = 0;

    for (size_t i = 0; i < j->n_entries; i++) {
        if ((ssize_t)i == skip)
            continue;
        v[n++] = (ssize_t)i == replace_at ? e : &j->entries[i];
    }
    if (e && replace_at < 0)
        v[n++] = e;
    return journal_write(j, v, n, renamed);
}

/* ---- the journal ---------------------------------------------------------- */

static int state_dir_probe(int dirfd)
{
    _cleanup_free_ char *name =
        cfs_xasprintf(".chainfs-probe.%ld", (long)getpid());
    int fd;

    fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) { /* left over by a crash of this pid */
        unlinkat(dirfd, name, 0);
        fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                    0600);
    }
    if (fd < 0)
        return -errno;
    close(fd);
    if (unlinkat(dirfd, name, 0) < 0)
        return -errno;
    return 0;
}

int cfs_journal_open(const char *state_dir, struct cfs_journal **out,
                     char ***warnings)
{
    struct cfs_journal *j;
    char **warn_v = NULL;
    int r;

    if (warnings)
        *warnings = NULL;
    *out = NULL;
    if (!state_dir || !*state_dir)
        return -EINVAL;

    if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
        return -errno;

    j = cfs_xcalloc(1, sizeof(*j));
    pthread_mutex_init(&j->lock, NULL);
    j->dirfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dirfd < 0) {
        r = -errno;
        goto fail;
    }
    r = state_dir_probe(j->dirfd);
    if (r < 0)
        goto fail;
    r = journal_load(j, &warn_v);
    if (r < 0)
        goto fail;

    if (warnings)
        *warnings = warn_v;
    else
        cfs_strv_free(warn_v);
    *out = j;
    return 0;

fail:
    cfs_strv_free(warn_v);
    cfs_journal_free(j);
    return r;
}

struct cfs_journal *cfs_journal_free(struct cfs_journal *j)
{
    if (!j)
        return NULL;
    cfs_journal_entries_free(j->entries, j->n_entries);
    if (j->dirfd >= 0)
        close(j->dirfd);
    pthread_mutex_destroy(&j->lock);
    free(j);
    return NULL;
}

char *cfs_journal_new_id(struct cfs_journal *j)
{
    char *id = NULL;

    pthread_mutex_lock(&j->lock);
    do {
        free(id);
        id = cfs_xasprintf("%lld-%ld-%u", (long long)time(NULL),
                           (long)getpid(), ++j->counter);
    } while (find_entry(j, id) >= 0);
    pthread_mutex_unlock(&j->lock);
    return id;
}

int cfs_journal_put(struct cfs_journal *j, const struct cfs_journal_entry *e)
{
    bool renamed;
    ssize_t at;
    int r;

    if (!entry_valid(e))
        return -EINVAL;

    pthread_mutex_lock(&j->lock);
    at = find_entry(j, e->id);
    r = journal_write_change(j, -1, at, e, &renamed);
    if (renamed) {
        struct cfs_journal_entry copy;

        cfs_journal_entry_copy(&copy, e);
        if (at >= 0) {
            cfs_journal_entry_clear(&j->entries[at]);
            j->entries[at] = copy;
        } else {
            entries_append(j, &copy);
        }
    }
    pthread_mutex_unlock(&j->lock);
    return r;
}

int cfs_journal_remove(struct cfs_journal *j, const char *id)
{
    bool renamed;
    ssize_t at;
    int r;

    if (!id)
        return -EINVAL;

    pthread_mutex_lock(&j->lock);
    at = find_entry(j, id);
    if (at < 0) {
        r = -ENOENT;
        goto out;
    }
    r = journal_write_change(j, at, -1, NULL, &renamed);
    if (renamed) {
        cfs_journal_entry_clear(&j->entries[at]);
        memmove(&j->entries[at], &j->entries[at + 1],
                (j->n_entries - (size_t)at - 1) * sizeof(*j->entries));
        j->n_entries--;
    }
out:
    pthread_mutex_unlock(&j->lock);
    return r;
}

static bool id_in(const char *id, const char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (cfs_streq(ids[i], id))
            return true;
    return false;
}

int cfs_journal_apply(struct cfs_journal *j,
                      const struct cfs_journal_entry *puts, size_t n_puts,
                      const char *const *removes, size_t n_removes)
{
    if ((n_puts && !puts) || (n_removes && !removes))
        return -EINVAL;
    for (size_t i = 0; i < n_puts; i++) {
        if (!entry_valid(&puts[i]) ||
            id_in(puts[i].id, removes, n_removes))
            return -EINVAL;
        for (size_t k = 0; k < i; k++)
            if (cfs_streq(puts[k].id, puts[i].id))
                return -EINVAL;
    }
    for (size_t i = 0; i < n_removes; i++)
        if (!removes[i])
            return -EINVAL;

    pthread_mutex_lock(&j->lock);
    int r = 0;
    for (size_t i = 0; i < n_removes; i++)
        if (find_entry(j, removes[i]) < 0) {
            r = -ENOENT;
            goto out;
        }
    {
        /* the new list: kept entries in file order (a put replacing one
         * takes its place), then the new puts */
        size_t cap = j->n_entries + n_puts;
        _cleanup_free_ const struct cfs_journal_entry **v =
            cfs_xcalloc(cap + 1, sizeof(*v));
        _cleanup_free_ ssize_t *from = cfs_xcalloc(cap + 1, sizeof(*from));
        _cleanup_free_ bool *placed = cfs_xcalloc(n_puts + 1, sizeof(*placed));
        size_t n = 0;
        for (size_t i = 0; i < j->n_entries; i++) {
            if (id_in(j->entries[i].id, removes, n_removes))
                continue;
            ssize_t put = -1;
            for (size_t k = 0; k < n_puts && put < 0; k++)
                if (cfs_streq(puts[k].id, j->entries[i].id))
                    put = (ssize_t)k;
            if (put >= 0) {
                placed[put] = true;
                v[n] = &puts[put];
                from[n++] = -1 - put; /* a put: -1 - its index */
            } else {
                v[n] = &j->entries[i];
                from[n++] = (ssize_t)i;
            }
        }
        for (size_t k = 0; k < n_puts; k++)
            if (!placed[k]) {
                v[n] = &puts[k];
                from[n++] = -1 - (ssize_t)k;
            }
        bool renamed;
        r = journal_write(j, v, n, &renamed);
        if (!renamed)
            goto out;
        /* the file changed: memory follows (kept entries moved, puts
         * copied, replaced and removed ones freed) */
        struct cfs_journal_entry *ne = cfs_xcalloc(n + 1, sizeof(*ne));
        _cleanup_free_ bool *moved = cfs_xcalloc(j->n_entries + 1, sizeof(*moved));
        for (size_t i = 0; i < n; i++) {
            if (from[i] >= 0) {
                ne[i] = j->entries[from[i]];
                moved[from[i]] = true;
            } else {
                cfs_journal_entry_copy(&ne[i], &puts[-1 - from[i]]);
            }
        }
        for (size_t i = 0; i < j->n_entries; i++)
            if (!moved[i])
                cfs_journal_entry_clear(&j->entries[i]);
        free(j->entries);
        j->entries = ne;
        j->n_entries = n;
    }
out:
    pthread_mutex_unlock(&j->lock);
    return r;
}

int cfs_journal_list(struct cfs_journal *j, struct cfs_journal_entry **out,
                     size_t *n)
{
    struct cfs_journal_entry *v;

    pthread_mutex_lock(&j->lock);
    v = cfs_xcalloc(j->n_entries + 1, sizeof(*v));
    for (size_t i = 0; i < j->n_entries; i++)
        cfs_journal_entry_copy(&v[i], &j->entries[i]);
    *n = j->n_entries;
    pthread_mutex_unlock(&j->lock);
    *out = v;
    return 0;
}
