/* render.c — the bytes of every file in the tree (docs/FILES.md is the
 * contract; change both together).
 *
 * Text files are "key: value" blocks with the values aligned, or a table
 * with a header row and columns aligned by their widest cell. Control
 * characters in names, paths and messages are escaped (\n, \t, \xHH) so
 * one record is always one line. JSON files are built with json-c, pretty
 * printed, sizes in bytes, times in RFC 3339, absent values null.
 * Every output is a pure function of the inputs and ends with "\n".
 *
 * Pure; the caller holds whatever lock protects its inputs. */
#include <json-c/json.h>

#include "chainfs/render.h"
#include "chainfs/snapdesc.h"
#include "chainfs/tree.h"

#define BAR_WIDTH 20
#define KV_MAX 24

/* ---- text helpers ---------------------------------------------------------- */

/* S with control characters escaped; "-" for NULL or "". Caller frees. */
static char *text_value(const char *s)
{
    struct cfs_buf b = { 0 };

    if (!s || !*s)
        return cfs_xstrdup("-");
    cfs_buf_put_escaped(&b, s);
    return cfs_buf_steal(&b);
}

/* Display width: UTF-8 code points (continuation bytes do not count). */
static size_t text_width(const char *s)
{
    size_t w = 0;

    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

static void put_spaces(struct cfs_buf *b, size_t n)
{
    static const char spaces[] = "                                ";

    while (n > 0) {
        size_t k = n < sizeof(spaces) - 1 ? n : sizeof(spaces) - 1;
        cfs_buf_put(b, spaces, k);
        n -= k;
    }
}

static char *size_value(uint64_t bytes)
{
    char s[32];

    cfs_format_size(bytes, s, sizeof(s));
    return cfs_xstrdup(s);
}

static char *time_value(int64_t t)
{
    char s[64];

    cfs_format_time(t, s, sizeof(s));
    return cfs_xstrdup(s[0] ? s : "-");
}

/* A block of "key: value" lines, values aligned one space after the
 * longest "key:". */
struct kv_block {
    size_t n;
    const char *key[KV_MAX];
    char *val[KV_MAX];
};

static void kv_take(struct kv_block *kv, const char *key, char *val)
{
    if (kv->n >= KV_MAX)
        abort(); /* a programming error: raise KV_MAX */
    kv->key[kv->n] = key;
    kv->val[kv->n] = val;
    kv->n++;
}

static void kv_str(struct kv_block *kv, const char *key, const char *s)
{
    kv_take(kv, key, text_value(s));
}

static void kv_render(struct cfs_buf *b, struct kv_block *kv)
{
    size_t w = 0;

    for (size_t i = 0; i < kv->n; i++)
        if (strlen(kv->key[i]) > w)
            w = strlen(kv->key[i]);
    for (size_t i = 0; i < kv->n; i++) {
        cfs_buf_printf(b, "%s:", kv->key[i]);
        put_spaces(b, w - strlen(kv->key[i]) + 1);
        cfs_buf_printf(b, "%s\n", kv->val[i]);
        free(kv->val[i]);
        kv->val[i] = NULL;
    }
    kv->n = 0;
}

/* ---- JSON helpers -------------------------------------------------------- */

static void json_put_str(struct json_object *o, const char *key, const char *s)
{
    json_object_object_add(o, key, s ? json_object_new_string(s) : NULL);
}

/* Empty strings are "unknown": null, like absent ones. */
static void json_put_str_nonempty(struct json_object *o, const char *key,
                                  const char *s)
{
    json_put_str(o, key, s && *s ? s : NULL);
}

static void json_put_u64(struct json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key,
        json_object_new_int64(v > INT64_MAX ? INT64_MAX : (int64_t)v));
}

static void json_put_int(struct json_object *o, const char *key, int64_t v)
{
    json_object_object_add(o, key, json_object_new_int64(v));
}

static void json_put_bool(struct json_object *o, const char *key, bool v)
{
    json_object_object_add(o, key, json_object_new_boolean(v));
}

static void json_put_time(struct json_object *o, const char *key, int64_t t)
{
    char s[64];

    cfs_format_time(t, s, sizeof(s));
    json_put_str(o, key, s[0] ? s : NULL);
}

/* Serialise O into B followed by a newline, and drop O. */
static void json_emit(struct cfs_buf *b, struct json_object *o)
{
    const char *s = json_object_to_json_string_ext(
        o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
               JSON_C_TO_STRING_NOSLASHESCAPE);

    if (!s)
        abort(); /* json-c only fails on allocation failure */
    cfs_buf_put(b, s, strlen(s));
    cfs_buf_put(b, "\n", 1);
    json_object_put(o);
}

/* ---- shared facts -------------------------------------------------------- */

static size_t disk_n_layers(const struct cfs_disk *disk)
{
    return disk && disk->layers ? disk->n_layers : 0;
}

static const char *layer_role(size_t i, size_t n)
{
    if (i == 0)
        return "active";
    return i + 1 == n ? "base" : "backing";
}

/* floor(cur * 100 / end), at most 100. A completed job is 100%. A job
 * that does not know its size yet (end == 0) is 0%. */
static unsigned job_percent(const struct cfs_job *job)
{
    if (!job)
        return 0;
    if (job->phase == CFS_PHASE_COMPLETED)
        return 100;
    if (job->end == 0)
        return 0;
    if (job->cur >= job->end)
        return 100;
    return (unsigned)((unsigned __int128)job->cur * 100 / job->end);
}

static bool job_absent(const struct cfs_job *job)
{
    return !job || job->type == CFS_JOB_NONE;
}

/* ---- chain --------------------------------------------------------------- */

enum { COL_INDEX, COL_ROLE, COL_SNAPSHOT, COL_FORMAT, COL_VIRTUAL,
       COL_ALLOCATED, COL_FILE, COL_MAX };

static const char *const col_header[COL_MAX] = {
    "#", "ROLE", "SNAPSHOT", "FORMAT", "VIRTUAL", "ALLOCATED", "FILE",
};
static const bool col_right[COL_MAX] = {
    [COL_INDEX] = true, [COL_VIRTUAL] = true, [COL_ALLOCATED] = true,
};

void cfs_render_chain_text(struct cfs_buf *b, const struct cfs_domain *d,
                           const struct cfs_disk *disk, bool stale)
{
    struct kv_block kv = { 0 };
    size_t n = disk_n_layers(disk);

    kv_str(&kv, "domain", d ? d->name : NULL);
    kv_str(&kv, "disk", disk ? disk->target : NULL);
    if (d && d->not_responding)
        kv_take(&kv, "state", cfs_xasprintf("%s (not responding)",
                                            cfs_dom_state_to_string(d->state)));
    else
        kv_str(&kv, "state", d ? cfs_dom_state_to_string(d->state) : NULL);
    kv_take(&kv, "layers", cfs_xasprintf("%zu", n));
    if (stale)
        kv_str(&kv, "stale", "yes (libvirt unreachable; last known state)");
    kv_render(b, &kv);
    cfs_buf_put(b, "\n", 1);

    /* Row 0 is the header; row r > 0 is layer r - 1. */
    _cleanup_free_ char **cell = cfs_xcalloc((n + 1) * COL_MAX, sizeof(char *));
    size_t width[COL_MAX] = { 0 };

    for (size_t c = 0; c < COL_MAX; c++)
        cell[c] = cfs_xstrdup(col_header[c]);
    for (size_t i = 0; i < n; i++) {
        const struct cfs_layer *l = &disk->layers[i];
        char **row = &cell[(i + 1) * COL_MAX];

        row[COL_INDEX] = cfs_xasprintf("%zu", i);
        row[COL_ROLE] = cfs_xstrdup(layer_role(i, n));
        row[COL_SNAPSHOT] = text_value(l->name);
        row[COL_FORMAT] = text_value(l->format);
        row[COL_VIRTUAL] = size_value(l->virtual_size);
        row[COL_ALLOCATED] = size_value(l->allocation);
        row[COL_FILE] = text_value(cfs_file_display(&l->id, l->path));
    }
    for (size_t r = 0; r <= n; r++)
        for (size_t c = 0; c < COL_MAX; c++)
            if (text_width(cell[r * COL_MAX + c]) > width[c])
                width[c] = text_width(cell[r * COL_MAX + c]);

    for (size_t r = 0; r <= n; r++) {
        for (size_t c = 0; c < COL_MAX; c++) {
            char *s = cell[r * COL_MAX + c];
            size_t pad = width[c] - text_width(s);

            if (c > 0)
                put_spaces(b, 2);
            if (col_right[c])
                put_spaces(b, pad);
            cfs_buf_put(b, s, strlen(s));
            if (!col_right[c] && c + 1 < COL_MAX)
                put_spaces(b, pad);
            free(s);
        }
        cfs_buf_put(b, "\n", 1);
    }
}

static struct json_object *layer_json(const struct cfs_layer *l, size_t i,
                                      size_t n)
{
    struct json_object *o = json_object_new_object();

    json_put_int(o, "index", (int64_t)i);
    json_put_str(o, "role", layer_role(i, n));
    json_put_str(o, "snapshot", l->name);
    json_put_str(o, "name_source", l->name ? cfs_name_source_to_string(l->name_source) : NULL);
    json_put_str(o, "file", cfs_file_display(&l->id, l->path));
    json_put_str(o, "xml_path", l->path);
    json_put_str_nonempty(o, "format", l->format);
    json_put_u64(o, "virtual_size", l->virtual_size);
    json_put_u64(o, "allocation", l->allocation);
    json_put_u64(o, "physical", l->physical);
    json_put_bool(o, "block", l->is_block);
    return o;
}

void cfs_render_chain_json(struct cfs_buf *b, const struct cfs_domain *d,
                           const struct cfs_disk *disk, bool stale)
{
    struct json_object *o = json_object_new_object();
    struct json_object *layers = json_object_new_array();
    size_t n = disk_n_layers(disk);

    json_put_str(o, "domain", d ? d->name : NULL);
    json_put_str(o, "disk", disk ? disk->target : NULL);
    json_put_str(o, "state", d ? cfs_dom_state_to_string(d->state) : NULL);
    json_put_bool(o, "responding", !d || !d->not_responding);
    json_put_bool(o, "stale", stale);
    for (size_t i = 0; i < n; i++)
        json_object_array_add(layers, layer_json(&disk->layers[i], i, n));
    json_object_object_add(o, "layers", layers);
    json_emit(b, o);
}

/* ---- job ----------------------------------------------------------------- */

/* `queued: s2, s1 (since T)`; `waiting: s1 (WHY)`; `returned: s2, s1
 * (REASON)`, one group per reason in order; `readers: s2 (pid P COMM,
 * since T), ...`. */
static void kv_queue(struct kv_block *kv, const struct cfs_disk_state *s)
{
    size_t n_queue = s ? s->n_queue : 0;
    size_t n_returned = s ? s->n_returned : 0;
    const struct cfs_queued *queue = s ? s->queue : NULL;
    const struct cfs_returned *returned = s ? s->returned : NULL;
    if (n_queue > 0) {
        struct cfs_buf q = { 0 };
        char since[64];

        for (size_t i = 0; i < n_queue; i++) {
            if (i)
                cfs_buf_printf(&q, "%s", ", ");
            cfs_buf_put_escaped(&q, queue[i].snapshot ? queue[i].snapshot : "-");
        }
        cfs_format_time(queue[0].queued, since, sizeof(since));
        cfs_buf_printf(&q, " (since %s)", since[0] ? since : "-");
        kv_take(kv, "queued", cfs_buf_steal(&q));

        struct cfs_buf w = { 0 };
        for (size_t i = 0; i < n_queue; i++) {
            if (!queue[i].waiting)
                continue;
            if (w.len)
                cfs_buf_printf(&w, "%s", "; ");
            cfs_buf_put_escaped(&w, queue[i].snapshot ? queue[i].snapshot : "-");
            cfs_buf_printf(&w, "%s", " (");
            cfs_buf_put_escaped(&w, queue[i].waiting);
            cfs_buf_printf(&w, "%s", ")");
        }
        if (w.len)
            kv_take(kv, "waiting", cfs_buf_steal(&w));
        cfs_buf_free(&w);
    }
    if (n_returned > 0) {
        struct cfs_buf r = { 0 };

        for (size_t i = 0; i < n_returned; i++) {
            const char *why = returned[i].reason ? returned[i].reason : "-";
            bool same_next = i + 1 < n_returned &&
                             cfs_streq(returned[i + 1].reason, returned[i].reason);

            cfs_buf_put_escaped(&r, returned[i].snapshot ? returned[i].snapshot : "-");
            if (same_next) {
                cfs_buf_printf(&r, "%s", ", ");
                continue;
            }
            cfs_buf_printf(&r, "%s", " (");
            cfs_buf_put_escaped(&r, why);
            cfs_buf_printf(&r, "%s", i + 1 < n_returned ? "); " : ")");
        }
        kv_take(kv, "returned", cfs_buf_steal(&r));
    }
    if (s && s->n_readers > 0) {
        struct cfs_buf r = { 0 };
        for (size_t i = 0; i < s->n_readers; i++) {
            const struct cfs_reader *rd = &s->readers[i];
            char since[64];
            cfs_format_time(rd->since, since, sizeof(since));
            if (r.len)
                cfs_buf_printf(&r, "%s", ", ");
            cfs_buf_put_escaped(&r, rd->snapshot ? rd->snapshot : "-");
            cfs_buf_printf(&r, " (pid %ld", (long)rd->pid);
            if (rd->comm) {
                cfs_buf_printf(&r, "%s", " ");
                cfs_buf_put_escaped(&r, rd->comm);
            }
            cfs_buf_printf(&r, ", since %s)", since[0] ? since : "-");
        }
        if (r.len)
            kv_take(kv, "readers", cfs_buf_steal(&r));
        cfs_buf_free(&r);
    }
}

void cfs_render_job_text(struct cfs_buf *b, const struct cfs_job *job,
                         bool stale)
{
    cfs_render_job_queue_text(b, job, NULL, stale);
}

void cfs_render_job_queue_text(struct cfs_buf *b, const struct cfs_job *job,
                               const struct cfs_disk_state *s, bool stale)
{
    struct kv_block kv = { 0 };

    if (job_absent(job)) {
        kv_str(&kv, "type", "none");
        kv_str(&kv, "state", "none");
    } else {
        unsigned pct = job_percent(job);
        unsigned fill = pct * BAR_WIDTH / 100;
        char bar[BAR_WIDTH + 1];
        char cur[32], end[32];

        memset(bar, '#', fill);
        memset(bar + fill, '-', BAR_WIDTH - fill);
        bar[BAR_WIDTH] = '\0';
        cfs_format_size(job->cur, cur, sizeof(cur));
        cfs_format_size(job->end, end, sizeof(end));

        kv_str(&kv, "type", cfs_job_type_to_string(job->type));
        if (job->group && !job->external && job->phase == CFS_PHASE_READY)
            /* issue 10 §3.3: a member of a job group waits for the others */
            kv_str(&kv, "state", "ready (held: group)");
        else
            kv_str(&kv, "state", cfs_job_phase_to_string(job->phase));
        bool copy = job->type == CFS_JOB_COPY && !job->external;
        if (copy) {
            /* issue 8 §1.8 */
            kv_str(&kv, "source", job->top);
            kv_str(&kv, "destination", job->dest);
            kv_str(&kv, "mode", cfs_copy_mode_to_string(job->copy_mode));
            if (job->copy_mode == CFS_COPY_CHAIN && job->n_made > 1)
                kv_take(&kv, "layers", cfs_xasprintf("%zu/%zu copied", job->n_copied,
                                                     job->n_made - 1));
        } else {
            kv_str(&kv, "snapshot", job->snapshot);
            if (cfs_strv_len(job->snapshots) > 1) {
                /* a run of the queue (issue 8 §3.2): every snapshot it removes */
                struct cfs_buf sb = { 0 };
                for (char **n = job->snapshots; *n; n++) {
                    if (n != job->snapshots)
                        cfs_buf_printf(&sb, ", ");
                    cfs_buf_put_escaped(&sb, *n);
                }
                kv_take(&kv, "snapshots", cfs_buf_steal(&sb));
            }
            kv_str(&kv, "top", job->top);
            kv_str(&kv, "base", job->base);
        }
        kv_take(&kv, "progress", cfs_xasprintf("%u%% [%s]", pct, bar));
        kv_take(&kv, "bytes", cfs_xasprintf("%s / %s", cur, end));
        if (job->bandwidth == 0) {
            kv_str(&kv, "bandwidth", "unlimited");
        } else {
            char bw[32];
            cfs_format_size(job->bandwidth, bw, sizeof(bw));
            kv_take(&kv, "bandwidth", cfs_xasprintf("%s/s", bw));
        }
        kv_str(&kv, "origin", job->external ? "external" : "chainfs");
        if (!job->external)
            kv_str(&kv, "pivot", (copy ? job->manual : job->pivot_manual)
                                     ? "manual" : "auto");
        if (copy && job->n_old > 0 && job->phase == CFS_PHASE_COMPLETED && !job->finish) {
            struct cfs_buf ob = {0};
            for (size_t i = 0; i < job->n_old; i++)
                cfs_buf_printf(&ob, "%s%s", i ? " " : "", job->old_files[i].path);
            kv_take(&kv, "old files kept", cfs_buf_steal(&ob));
        }
        if (copy && job->phase == CFS_PHASE_COMPLETED)
            kv_str(&kv, "result", job->reason);
        if (job->direction != CFS_DIRECTION_NONE) {
            /* issue 8: a merge chosen by cost says which way and why */
            kv_str(&kv, "direction", cfs_merge_direction_to_string(job->direction));
            kv_take(&kv, "bytes_commit", size_value(job->bytes_commit));
            kv_take(&kv, "bytes_pull", size_value(job->bytes_pull));
            kv_str(&kv, "reason", job->reason);
            if (job->phase == CFS_PHASE_COMPLETED)
                kv_take(&kv, "bytes_copied", size_value(job->bytes_copied));
        }
        kv_take(&kv, "started", time_value(job->started));
        kv_take(&kv, "finished", time_value(job->finished));
        kv_str(&kv, "error", job->error);
        if (job->partial)
            kv_str(&kv, "partial", "yes");
        if (job->leftover)
            kv_str(&kv, "leftover", job->leftover);
    }
    kv_queue(&kv, s);
    if (stale)
        kv_str(&kv, "stale", "yes");
    kv_render(b, &kv);
}

void cfs_render_job_json(struct cfs_buf *b, const struct cfs_job *job,
                         bool stale)
{
    cfs_render_job_queue_json(b, job, NULL, stale);
}

/* A disk's job.json object; DISK (may be NULL) first as "disk". */
static struct json_object *job_queue_object(const char *disk,
                                            const struct cfs_job *job,
                                            const struct cfs_disk_state *s,
                                            bool stale)
{
    size_t n_queue = s ? s->n_queue : 0;
    size_t n_returned = s ? s->n_returned : 0;
    const struct cfs_queued *queue = s ? s->queue : NULL;
    const struct cfs_returned *returned = s ? s->returned : NULL;
    const struct cfs_disk_settings *settings = s ? &s->settings : NULL;
    struct json_object *o = json_object_new_object();
    bool none = job_absent(job);

    if (disk)
        json_put_str(o, "disk", disk);
    json_put_str(o, "type", none ? "none" : cfs_job_type_to_string(job->type));
    json_put_str(o, "state", none ? "none" : cfs_job_phase_to_string(job->phase));
    json_put_str(o, "snapshot", none ? NULL : job->snapshot);
    struct json_object *sa = json_object_new_array();
    if (!none && job->snapshots)
        for (char **n = job->snapshots; *n; n++)
            json_object_array_add(sa, json_object_new_string(*n));
    else if (!none && job->snapshot)
        json_object_array_add(sa, json_object_new_string(job->snapshot));
    json_object_object_add(o, "snapshots", sa);
    json_put_str(o, "top", none ? NULL : job->top);
    json_put_str(o, "base", none ? NULL : job->base);
    json_put_int(o, "progress_percent", none ? 0 : job_percent(job));
    json_put_u64(o, "cur", none ? 0 : job->cur);
    json_put_u64(o, "end", none ? 0 : job->end);
    json_put_u64(o, "bandwidth", none ? 0 : job->bandwidth);
    json_put_str(o, "origin", none ? NULL : job->external ? "external" : "chainfs");
    json_put_str(o, "pivot", none || job->external ? NULL
                             : (job->type == CFS_JOB_COPY ? job->manual
                                                          : job->pivot_manual)
                                 ? "manual" : "auto");
    bool merge = !none && job->direction != CFS_DIRECTION_NONE;
    json_put_str(o, "direction",
                 merge ? cfs_merge_direction_to_string(job->direction) : NULL);
    json_put_u64(o, "bytes_commit", merge ? job->bytes_commit : 0);
    json_put_u64(o, "bytes_pull", merge ? job->bytes_pull : 0);
    json_put_str(o, "reason", merge ? job->reason : NULL);
    json_put_u64(o, "bytes_copied", merge ? job->bytes_copied : 0);
    /* issue 10: the job group (a domain-level rmdir) it is a member of */
    json_put_str(o, "group", none || job->external ? NULL : job->group);
    /* copies (issue 8 §1.8) */
    bool copy = !none && job->type == CFS_JOB_COPY && !job->external;
    json_put_str(o, "source", copy ? job->top : NULL);
    json_put_str(o, "destination", copy ? job->dest : NULL);
    json_put_str(o, "mode", copy ? cfs_copy_mode_to_string(job->copy_mode) : NULL);
    bool chain = copy && job->copy_mode == CFS_COPY_CHAIN && job->n_made > 1;
    json_put_u64(o, "layers_copied", chain ? job->n_copied : 0);
    json_put_u64(o, "layers_total", chain ? job->n_made - 1 : 0);
    struct json_object *old = json_object_new_array();
    for (size_t i = 0; copy && !job->finish && job->phase == CFS_PHASE_COMPLETED &&
                       i < job->n_old; i++)
        json_object_array_add(old, json_object_new_string(job->old_files[i].path));
    json_object_object_add(o, "old_files", old);
    json_put_str(o, "result", copy && job->phase == CFS_PHASE_COMPLETED ? job->reason : NULL);
    json_put_time(o, "started", none ? 0 : job->started);
    json_put_time(o, "finished", none ? 0 : job->finished);
    json_put_str(o, "error", none ? NULL : job->error);
    json_put_bool(o, "partial", none ? false : job->partial);
    json_put_str(o, "leftover", none ? NULL : job->leftover);
    struct json_object *qa = json_object_new_array();
    for (size_t i = 0; i < n_queue; i++) {
        struct json_object *q = json_object_new_object();
        json_put_str(q, "snapshot", queue[i].snapshot);
        json_put_time(q, "queued", queue[i].queued);
        /* `merge NAME commit|pull` applies when the entry is dispatched */
        const char *merge = "auto";
        if (settings && cfs_strv_contains(settings->merge_commit, queue[i].snapshot))
            merge = "commit";
        else if (settings && cfs_strv_contains(settings->merge_pull, queue[i].snapshot))
            merge = "pull";
        json_put_str(q, "merge", merge);
        json_put_str(q, "waiting", queue[i].waiting);
        json_object_array_add(qa, q);
    }
    json_object_object_add(o, "queue", qa);
    struct json_object *ra = json_object_new_array();
    for (size_t i = 0; i < n_returned; i++) {
        struct json_object *r = json_object_new_object();
        json_put_str(r, "snapshot", returned[i].snapshot);
        json_put_str(r, "reason", returned[i].reason);
        json_object_array_add(ra, r);
    }
    json_object_object_add(o, "returned", ra);
    struct json_object *rda = json_object_new_array();
    for (size_t i = 0; s && i < s->n_readers; i++) {
        struct json_object *r = json_object_new_object();
        json_put_str(r, "snapshot", s->readers[i].snapshot);
        json_object_object_add(r, "pid", json_object_new_int64(s->readers[i].pid));
        json_put_str(r, "comm", s->readers[i].comm);
        json_put_time(r, "since", s->readers[i].since);
        json_object_array_add(rda, r);
    }
    json_object_object_add(o, "readers", rda);
    json_put_bool(o, "stale", stale);
    return o;
}

void cfs_render_job_queue_json(struct cfs_buf *b, const struct cfs_job *job,
                               const struct cfs_disk_state *s, bool stale)
{
    json_emit(b, job_queue_object(NULL, job, s, stale));
}

/* ---- info ---------------------------------------------------------------- */

static const struct cfs_layer *info_layer(const struct cfs_disk *disk,
                                          int index)
{
    if (index < 0 || (size_t)index >= disk_n_layers(disk))
        return NULL;
    return &disk->layers[index];
}

/* ---- how a snapshot was taken (issue 10 §2.6) ---- */

/* The disks SNAP took: its description's list, else the disks libvirt's
 * metadata names external (NULL-terminated; caller frees). */
static char **taken_disks(const struct cfs_snap_info *snap,
                          const struct cfs_snapdesc *desc)
{
    char **v = NULL;
    if (desc->disks) {
        for (char **p = desc->disks; *p; p++)
            cfs_strv_push(&v, cfs_xstrdup(*p));
        return v;
    }
    for (size_t i = 0; snap && i < snap->n_disks; i++)
        if (cfs_streq(snap->disks[i].snapshot, "external") && snap->disks[i].target)
            cfs_strv_push(&v, cfs_xstrdup(snap->disks[i].target));
    return v;
}

/* `taken:` — "disk", "domain (vda, vdb; not: hdc cdrom, vdc read-only)",
 * or NULL when not known. */
static char *taken_text(const struct cfs_snap_info *snap,
                        const struct cfs_snapdesc *desc)
{
    if (desc->scope == CFS_SCOPE_UNKNOWN)
        return NULL;
    if (desc->scope == CFS_SCOPE_DISK)
        return cfs_xstrdup("disk");
    struct cfs_buf t = { 0 };
    _cleanup_strv_ char **disks = taken_disks(snap, desc);
    cfs_buf_printf(&t, "domain (");
    for (char **p = disks; p && *p; p++) {
        if (p != disks)
            cfs_buf_printf(&t, ", ");
        cfs_buf_put_escaped(&t, *p);
    }
    for (size_t i = 0; i < desc->n_excluded; i++) {
        cfs_buf_printf(&t, "%s", i == 0 ? (disks ? "; not: " : "not: ") : ", ");
        cfs_buf_put_escaped(&t, desc->excluded[i].target);
        cfs_buf_put(&t, " ", 1);
        cfs_buf_put_escaped(&t, desc->excluded[i].why);
    }
    cfs_buf_printf(&t, ")");
    return cfs_buf_steal(&t);
}

/* quiesced, quiesce, taken */
static void kv_taken(struct kv_block *kv, const struct cfs_snap_info *snap)
{
    struct cfs_snapdesc desc;
    cfs_snapdesc_parse(snap ? snap->description : NULL, &desc);
    kv_str(kv, "quiesced", desc.quiesced == 1 ? "yes" : desc.quiesced == 0 ? "no" : NULL);
    char *q = cfs_snapdesc_quiesce_text(&desc);
    kv_take(kv, "quiesce", text_value(q));
    free(q);
    char *t = taken_text(snap, &desc);
    if (t)
        kv_take(kv, "taken", t);
    else
        kv_str(kv, "taken", NULL);
    cfs_snapdesc_clear(&desc);
}

static void json_taken(struct json_object *o, const struct cfs_snap_info *snap)
{
    struct cfs_snapdesc desc;
    cfs_snapdesc_parse(snap ? snap->description : NULL, &desc);
    json_object_object_add(o, "quiesced", desc.quiesced < 0 ? NULL
                               : json_object_new_boolean(desc.quiesced == 1));
    json_put_str(o, "quiesce_reason", desc.quiesced == 0 ? desc.reason : NULL);
    if (desc.quiesced == 1)
        json_put_int(o, "filesystems", desc.filesystems);
    else
        json_put_str(o, "filesystems", NULL);
    json_put_str(o, "scope", desc.scope == CFS_SCOPE_DOMAIN ? "domain"
                             : desc.scope == CFS_SCOPE_DISK ? "disk" : NULL);
    _cleanup_strv_ char **disks = taken_disks(snap, &desc);
    struct json_object *da = json_object_new_array();
    for (char **p = disks; p && *p; p++)
        json_object_array_add(da, json_object_new_string(*p));
    json_object_object_add(o, "disks", da);
    struct json_object *ea = json_object_new_array();
    for (size_t i = 0; i < desc.n_excluded; i++) {
        struct json_object *x = json_object_new_object();
        json_put_str(x, "disk", desc.excluded[i].target);
        json_put_str(x, "why", desc.excluded[i].why);
        json_object_array_add(ea, x);
    }
    json_object_object_add(o, "excluded", ea);
    cfs_snapdesc_clear(&desc);
}

void cfs_render_info_text(struct cfs_buf *b, const struct cfs_domain *d,
                          const struct cfs_disk *disk, int index,
                          bool partial, const struct cfs_snap_info *snap)
{
    struct kv_block kv = { 0 };
    const struct cfs_layer *l = info_layer(disk, index);
    const struct cfs_layer *below = l ? info_layer(disk, index + 1) : NULL;

    kv_str(&kv, "name", l ? l->name : NULL);
    kv_str(&kv, "domain", d ? d->name : NULL);
    kv_str(&kv, "disk", disk ? disk->target : NULL);
    kv_str(&kv, "state", partial ? "partial" : "ok");
    kv_str(&kv, "file", l ? cfs_file_display(&l->id, l->path) : NULL);
    kv_str(&kv, "format", l ? l->format : NULL);
    kv_take(&kv, "virtual", l ? size_value(l->virtual_size) : cfs_xstrdup("-"));
    kv_take(&kv, "allocated", l ? size_value(l->allocation) : cfs_xstrdup("-"));
    kv_str(&kv, "frozen", below ? cfs_file_display(&below->id, below->path) : NULL);
    kv_take(&kv, "depth", l ? cfs_xasprintf("%d", index) : cfs_xstrdup("-"));
    kv_str(&kv, "active", l && index == 0 ? "yes" : "no");
    kv_str(&kv, "source", l && l->name ? cfs_name_source_to_string(l->name_source) : NULL);
    kv_taken(&kv, snap);
    kv_render(b, &kv);
}

void cfs_render_info_json(struct cfs_buf *b, const struct cfs_domain *d,
                          const struct cfs_disk *disk, int index,
                          bool partial, const struct cfs_snap_info *snap)
{
    struct json_object *o = json_object_new_object();
    const struct cfs_layer *l = info_layer(disk, index);
    const struct cfs_layer *below = l ? info_layer(disk, index + 1) : NULL;

    json_put_str(o, "name", l ? l->name : NULL);
    json_put_str(o, "domain", d ? d->name : NULL);
    json_put_str(o, "disk", disk ? disk->target : NULL);
    json_put_str(o, "state", partial ? "partial" : "ok");
    json_put_str(o, "file", l ? cfs_file_display(&l->id, l->path) : NULL);
    json_put_str_nonempty(o, "format", l ? l->format : NULL);
    json_put_u64(o, "virtual_size", l ? l->virtual_size : 0);
    json_put_u64(o, "allocation", l ? l->allocation : 0);
    json_put_u64(o, "physical", l ? l->physical : 0);
    json_put_bool(o, "block", l ? l->is_block : false);
    json_put_str(o, "frozen", below ? cfs_file_display(&below->id, below->path) : NULL);
    if (l)
        json_put_int(o, "depth", index);
    else
        json_put_str(o, "depth", NULL);
    json_put_bool(o, "active", l && index == 0);
    json_put_str(o, "name_source", l && l->name ? cfs_name_source_to_string(l->name_source) : NULL);
    json_taken(o, snap);
    json_emit(b, o);
}

/* ---- the domain's own files (issue 10) ------------------------------------ */

/* A row of <dom>/snapshots/NAME/info: W's disk and its state there, or
 * false for a disk the snapshot is not in. */
static bool dom_row(const struct cfs_snap_info *snap, char **taken,
                    const struct cfs_group *g,
                    const struct cfs_snap_where *w, const char **state,
                    const struct cfs_layer **layer)
{
    *layer = NULL;
    if (!w->disk)
        return false;
    if (w->index >= 0 && (size_t)w->index < disk_n_layers(w->disk)) {
        *layer = &w->disk->layers[w->index];
        *state = w->partial ? "partial" : "ok";
        return true;
    }
    /* its layer left the disk's chain: merged by an rmdir in the disk's
     * snapshots/ (libvirt's metadata or chainfs's line still names it) */
    bool named = cfs_strv_contains(taken, w->disk->target);
    /* or a domain-level rmdir merged it there (issue 10 §3.4) */
    for (size_t i = 0; !named && g && i < g->n_members; i++)
        named = cfs_streq(g->members[i].disk, w->disk->target) &&
                g->members[i].state == CFS_MEMBER_DONE;
    for (size_t i = 0; !named && snap && i < snap->n_disks; i++)
        named = cfs_streq(snap->disks[i].target, w->disk->target) &&
                cfs_streq(snap->disks[i].snapshot, "external");
    *state = "merged";
    return named;
}

/* The disks a group of snapshot NAME left it on, space-separated ("-"
 * for none); caller frees. */
static char *group_remaining(const struct cfs_group *g)
{
    struct cfs_buf rb = { 0 };
    for (size_t i = 0; g && i < g->n_members; i++)
        if (g->members[i].state != CFS_MEMBER_DONE) {
            if (rb.len)
                cfs_buf_put(&rb, " ", 1);
            cfs_buf_put_escaped(&rb, g->members[i].disk);
        }
    if (!rb.len) {
        cfs_buf_free(&rb);
        return cfs_xstrdup("-");
    }
    return cfs_buf_steal(&rb);
}

static bool group_partial(const struct cfs_group *g)
{
    return g && g->phase == CFS_GROUP_PARTIAL;
}

void cfs_render_dom_info_text(struct cfs_buf *b, const struct cfs_domain *d,
                              const char *name, const struct cfs_snap_info *snap,
                              const struct cfs_snap_where *where, size_t n,
                              const struct cfs_group *g)
{
    struct kv_block kv = { 0 };
    struct cfs_snapdesc desc;
    cfs_snapdesc_parse(snap ? snap->description : NULL, &desc);
    _cleanup_strv_ char **taken = taken_disks(snap, &desc);

    kv_str(&kv, "name", name);
    kv_str(&kv, "domain", d ? d->name : NULL);
    kv_str(&kv, "state", group_partial(g) ? "partially-merged" : "ok");
    if (group_partial(g))
        kv_take(&kv, "remaining", group_remaining(g));
    kv_take(&kv, "created", time_value(snap ? snap->created : 0));
    kv_taken(&kv, snap);
    kv_render(b, &kv);
    cfs_snapdesc_clear(&desc);

    /* DISK  STATE  FILE, columns aligned by their widest cell */
    enum { C_DISK, C_STATE, C_FILE, C_MAX };
    static const char *const head[C_MAX] = { "DISK", "STATE", "FILE" };
    _cleanup_free_ char **cell = cfs_xcalloc((n + 1) * C_MAX, sizeof(char *));
    size_t rows = 1, width[C_MAX] = { 0 };
    for (size_t c = 0; c < C_MAX; c++)
        cell[c] = cfs_xstrdup(head[c]);
    for (size_t i = 0; i < n; i++) {
        const char *state;
        const struct cfs_layer *l;
        if (!dom_row(snap, taken, g, &where[i], &state, &l))
            continue;
        char **row = &cell[rows++ * C_MAX];
        row[C_DISK] = text_value(where[i].disk->target);
        row[C_STATE] = cfs_xstrdup(state);
        row[C_FILE] = text_value(l ? cfs_file_display(&l->id, l->path) : NULL);
    }
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < C_MAX; c++)
            if (text_width(cell[r * C_MAX + c]) > width[c])
                width[c] = text_width(cell[r * C_MAX + c]);
    cfs_buf_put(b, "\n", 1);
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < C_MAX; c++) {
            char *s = cell[r * C_MAX + c];
            if (c > 0)
                put_spaces(b, 2);
            cfs_buf_put(b, s, strlen(s));
            if (c + 1 < C_MAX)
                put_spaces(b, width[c] - text_width(s));
            free(s);
        }
        cfs_buf_put(b, "\n", 1);
    }
}

void cfs_render_dom_info_json(struct cfs_buf *b, const struct cfs_domain *d,
                              const char *name, const struct cfs_snap_info *snap,
                              const struct cfs_snap_where *where, size_t n,
                              const struct cfs_group *g)
{
    struct json_object *o = json_object_new_object();
    struct cfs_snapdesc desc;
    cfs_snapdesc_parse(snap ? snap->description : NULL, &desc);
    _cleanup_strv_ char **taken = taken_disks(snap, &desc);
    cfs_snapdesc_clear(&desc);

    json_put_str(o, "name", name);
    json_put_str(o, "domain", d ? d->name : NULL);
    json_put_str(o, "state", group_partial(g) ? "partially-merged" : "ok");
    struct json_object *rem = json_object_new_array();
    for (size_t i = 0; group_partial(g) && i < g->n_members; i++)
        if (g->members[i].state != CFS_MEMBER_DONE)
            json_object_array_add(rem, json_object_new_string(g->members[i].disk));
    json_object_object_add(o, "remaining", rem);
    json_put_time(o, "created", snap ? snap->created : 0);
    json_taken(o, snap);
    struct json_object *la = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        const char *state;
        const struct cfs_layer *l;
        if (!dom_row(snap, taken, g, &where[i], &state, &l))
            continue;
        struct json_object *x = json_object_new_object();
        json_put_str(x, "disk", where[i].disk->target);
        json_put_str(x, "state", state);
        json_put_str(x, "file", l ? cfs_file_display(&l->id, l->path) : NULL);
        const struct cfs_layer *below = l ? info_layer(where[i].disk, where[i].index + 1) : NULL;
        json_put_str(x, "frozen", below ? cfs_file_display(&below->id, below->path) : NULL);
        if (l)
            json_put_int(x, "depth", where[i].index);
        else
            json_put_str(x, "depth", NULL);
        json_object_array_add(la, x);
    }
    json_object_object_add(o, "layers", la);
    json_emit(b, o);
}

/* The job of member M of group G among DISKS[0..N) (its disk's job,
 * while that is the member's), or NULL. */
static const struct cfs_job *member_job(const struct cfs_group *g,
                                        const struct cfs_group_member *m,
                                        const struct cfs_dom_disk_job *disks,
                                        size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (cfs_streq(disks[i].disk, m->disk) && disks[i].job &&
            cfs_streq(disks[i].job->group, g->id))
            return disks[i].job;
    return NULL;
}

/* "vda ready, vdb running 41%, vdc failed" */
static char *group_members_text(const struct cfs_group *g,
                                const struct cfs_dom_disk_job *disks, size_t n)
{
    struct cfs_buf mb = { 0 };
    for (size_t i = 0; i < g->n_members; i++) {
        const struct cfs_group_member *m = &g->members[i];
        if (i)
            cfs_buf_printf(&mb, ", ");
        cfs_buf_put_escaped(&mb, m->disk);
        cfs_buf_printf(&mb, " %s", cfs_member_state_to_string(m->state));
        const struct cfs_job *j = member_job(g, m, disks, n);
        if (m->state == CFS_MEMBER_RUNNING && j && j->end)
            cfs_buf_printf(&mb, " %u%%", job_percent(j));
        if (m->state == CFS_MEMBER_FAILED && m->partial)
            cfs_buf_printf(&mb, " (partial)");
    }
    if (!mb.len) {
        cfs_buf_free(&mb);
        return cfs_xstrdup("-");
    }
    return cfs_buf_steal(&mb);
}

/* The first failed member's error, "vdb: TEXT" (caller frees), or NULL. */
static char *group_error(const struct cfs_group *g)
{
    for (size_t i = 0; i < g->n_members; i++)
        if (g->members[i].state == CFS_MEMBER_FAILED) {
            struct cfs_buf eb = { 0 };
            cfs_buf_put_escaped(&eb, g->members[i].disk);
            cfs_buf_printf(&eb, ": ");
            cfs_buf_put_escaped(&eb, g->members[i].error ? g->members[i].error
                                                          : "failed");
            return cfs_buf_steal(&eb);
        }
    return NULL;
}

/* The domain block of <dom>/job: the domain's last job group (issue 10
 * §3.5; `state: none` without one) and a thaw owed. */
static void kv_dom_block(struct kv_block *kv, const struct cfs_domain *d,
                         const struct cfs_group *g,
                         const struct cfs_dom_disk_job *disks, size_t n,
                         const struct cfs_thaw_owed *thaw, bool stale)
{
    kv_str(kv, "domain", d ? d->name : NULL);
    if (!g) {
        kv_str(kv, "state", "none");
    } else {
        struct cfs_buf gb = { 0 };
        cfs_buf_printf(&gb, "rmdir ");
        cfs_buf_put_escaped(&gb, g->snapshot);
        kv_take(kv, "group", cfs_buf_steal(&gb));
        kv_str(kv, "state", cfs_group_phase_to_string(g->phase));
        kv_take(kv, "members", group_members_text(g, disks, n));
        kv_take(kv, "remaining", group_remaining(g));
        kv_take(kv, "started", time_value(g->started));
        kv_take(kv, "finished", time_value(g->finished));
        char *err = group_error(g);
        kv_take(kv, "error", err ? err : cfs_xstrdup("-"));
    }
    if (thaw) {
        char since[64];
        cfs_format_time(thaw->since, since, sizeof(since));
        struct cfs_buf t = { 0 };
        cfs_buf_printf(&t, "owed since %s (%u failed attempt%s)",
                       since[0] ? since : "-", thaw->attempts,
                       thaw->attempts == 1 ? "" : "s");
        if (thaw->error) {
            cfs_buf_printf(&t, ", last error: ");
            cfs_buf_put_escaped(&t, thaw->error);
        }
        kv_take(kv, "thaw", cfs_buf_steal(&t));
    }
    if (stale)
        kv_str(kv, "stale", "yes");
}

void cfs_render_dom_job_text(struct cfs_buf *b, const struct cfs_domain *d,
                             const struct cfs_dom_disk_job *disks, size_t n,
                             const struct cfs_group *g,
                             const struct cfs_thaw_owed *thaw, bool stale)
{
    struct kv_block kv = { 0 };
    kv_dom_block(&kv, d, g, disks, n, thaw, stale);
    kv_render(b, &kv);
    for (size_t i = 0; i < n; i++) {
        cfs_buf_printf(b, "\ndisk: ");
        cfs_buf_put_escaped(b, disks[i].disk);
        cfs_buf_put(b, "\n", 1);
        /* the disk's own `job`, each line indented by two (stale is said
         * once, above) */
        _cleanup_buf_ struct cfs_buf j = { 0 };
        cfs_render_job_queue_text(&j, disks[i].job, disks[i].state, false);
        for (const char *l = j.data; l && *l;) {
            size_t len = strcspn(l, "\n");
            cfs_buf_put(b, "  ", 2);
            cfs_buf_put(b, l, len);
            cfs_buf_put(b, "\n", 1);
            l += len;
            if (*l == '\n')
                l++;
        }
    }
}

void cfs_render_dom_job_json(struct cfs_buf *b, const struct cfs_domain *d,
                             const struct cfs_dom_disk_job *disks, size_t n,
                             const struct cfs_group *g,
                             const struct cfs_thaw_owed *thaw, bool stale)
{
    struct json_object *o = json_object_new_object();
    json_put_str(o, "domain", d ? d->name : NULL);
    json_put_str(o, "state", g ? cfs_group_phase_to_string(g->phase) : "none");
    if (g) {
        struct json_object *go = json_object_new_object();
        json_put_str(go, "id", g->id);
        json_put_str(go, "operation", "rmdir");
        json_put_str(go, "snapshot", g->snapshot);
        json_put_str(go, "state", cfs_group_phase_to_string(g->phase));
        struct json_object *ma = json_object_new_array();
        struct json_object *ra = json_object_new_array();
        for (size_t i = 0; i < g->n_members; i++) {
            const struct cfs_group_member *m = &g->members[i];
            struct json_object *mo = json_object_new_object();
            json_put_str(mo, "disk", m->disk);
            json_put_str(mo, "state", cfs_member_state_to_string(m->state));
            const struct cfs_job *j = member_job(g, m, disks, n);
            json_put_int(mo, "progress_percent",
                         m->state == CFS_MEMBER_DONE ? 100 : j ? job_percent(j) : 0);
            json_put_str(mo, "error", m->error);
            json_put_bool(mo, "partial", m->partial);
            json_object_array_add(ma, mo);
            if (m->state != CFS_MEMBER_DONE)
                json_object_array_add(ra, json_object_new_string(m->disk));
        }
        json_object_object_add(go, "members", ma);
        json_object_object_add(go, "remaining", ra);
        json_put_time(go, "started", g->started);
        json_put_time(go, "finished", g->finished);
        json_object_object_add(o, "group", go);
    } else {
        json_object_object_add(o, "group", NULL);
    }
    if (thaw) {
        struct json_object *t = json_object_new_object();
        json_put_time(t, "since", thaw->since);
        json_put_int(t, "attempts", thaw->attempts);
        json_put_str(t, "error", thaw->error);
        json_object_object_add(o, "thaw", t);
    } else {
        json_object_object_add(o, "thaw", NULL);
    }
    struct json_object *da = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(da, job_queue_object(disks[i].disk, disks[i].job,
                                                   disks[i].state, stale));
    json_object_object_add(o, "disks", da);
    json_put_bool(o, "stale", stale);
    json_emit(b, o);
}
