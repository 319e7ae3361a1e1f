/* nodes.c — the node table (nodes.h): one row per kind of node.
 *
 *   /                      root       dir   0555  lists the domains
 *   /DOM                   domain     dir   0555  lists its disks
 *   /DOM/DISK              disk       dir   0555  lists the rows below
 *     chain, chain.json    file  0444  the backing chain
 *     job, job.json        file  0444  the current or last job
 *     wait                 file  0444  as job, once no job is in progress
 *     ctl                  file  0644  settings; takes one command a write
 *     snapshots            dir   0755  lists the visible snapshots;
 *                                      mkdir/rmdir
 *       NAME               dir   0555  one snapshot
 *         info, info.json  file  0444  the snapshot
 *         disk.raw         file  0400  its content as a raw disk image
 *                                      (issue 9; served, not rendered)
 *   /DOM/job, job.json     file  0444  every disk's job (issue 10 §3.5)
 *   /DOM/wait              file  0444  as job, once no disk has one
 *   /DOM/ctl               file  0644  the domain's settings; commands
 *   /DOM/snapshots         dir   0755  every snapshot name with a layer
 *                                      in a disk; mkdir (all disks)
 *     NAME                 dir   0555  one domain-level snapshot
 *       info, info.json    file  0444  the snapshot, per disk
 *   /.chainfs              dir   0555  chainfs's own (issue 11): not
 *                                      listed by readdir of the root,
 *                                      never a domain's name
 *     metrics.prom         file  0444  Prometheus text format (metrics.h)
 * The 0644/0755 rows are writable by whoever may change snapshots (with
 * -o manage_group: 0664/0775, that group's).
 *
 * The render and list functions run under the tree lock (read.c takes
 * it) and only read memory. */
#include <errno.h>
#include <string.h>

#include "chainfs/ctl.h"
#include "chainfs/engine.h"
#include "chainfs/log.h"
#include "chainfs/model.h"
#include "chainfs/nodes.h"
#include "chainfs/render.h"
#include "engine_int.h"

/* ---- rendering files ------------------------------------------------------ */

static void render_chain(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_render_chain_text(out, v->dom, v->disk, v->tree->stale);
}

static void render_chain_json(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_render_chain_json(out, v->dom, v->disk, v->tree->stale);
}

static void render_job(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_render_job_queue_text(out, v->job, v->state, v->tree->stale);
}

static void render_job_json(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_render_job_queue_json(out, v->job, v->state, v->tree->stale);
}

/* a failed merge already wrote part of the snapshot into the layer below */
static bool view_partial(const struct cfs_node_view *v)
{
    return v->state && v->layer >= 0 &&
           cfs_strv_contains(v->state->partial_tops,
                             v->disk->layers[v->layer].path);
}

/* libvirt's snapshot the layer of view V is (its metadata, else its
 * name), or NULL */
static const struct cfs_snap_info *view_snap(const struct cfs_node_view *v)
{
    const struct cfs_layer *l = v->layer >= 0 ? &v->disk->layers[v->layer] : NULL;
    if (!l)
        return NULL;
    const struct cfs_snap_info *si = cfs_domain_find_snap(v->dom, l->meta_name);
    return si ? si : cfs_domain_find_snap(v->dom, l->name);
}

static void render_info(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_render_info_text(out, v->dom, v->disk, v->layer, view_partial(v),
                         view_snap(v));
}

static void render_info_json(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_render_info_json(out, v->dom, v->disk, v->layer, view_partial(v),
                         view_snap(v));
}

/* ---- the domain's own files (issue 10) ---- */

/* Where the view's snapshot is in each disk (caller frees). */
static struct cfs_snap_where *dom_where(const struct cfs_node_view *v)
{
    const struct cfs_domain *d = v->dom;
    struct cfs_snap_where *w = cfs_xcalloc(d->n_disks ? d->n_disks : 1, sizeof(*w));
    for (size_t i = 0; i < d->n_disks; i++) {
        const struct cfs_disk *dk = &d->disks[i];
        const struct cfs_disk_state *s =
            cfs_tree_find_disk_state(v->tree, d->name, dk->target);
        w[i].disk = dk;
        w[i].index = cfs_disk_find_snapshot(dk, v->snap);
        if (w[i].index >= 0 && !cfs_layer_visible(dk, s, (size_t)w[i].index))
            w[i].index = -1;
        w[i].partial = w[i].index >= 0 && s &&
                       cfs_strv_contains(s->partial_tops, dk->layers[w[i].index].path);
    }
    return w;
}

static void render_dom_info(const struct cfs_node_view *v, struct cfs_buf *out)
{
    _cleanup_free_ struct cfs_snap_where *w = dom_where(v);
    cfs_render_dom_info_text(out, v->dom, v->snap,
                             cfs_domain_find_snap(v->dom, v->snap), w,
                             v->dom->n_disks,
                             cfs_tree_domain_group(v->tree, v->dom->name, v->snap));
}

static void render_dom_info_json(const struct cfs_node_view *v, struct cfs_buf *out)
{
    _cleanup_free_ struct cfs_snap_where *w = dom_where(v);
    cfs_render_dom_info_json(out, v->dom, v->snap,
                             cfs_domain_find_snap(v->dom, v->snap), w,
                             v->dom->n_disks,
                             cfs_tree_domain_group(v->tree, v->dom->name, v->snap));
}

/* Each disk's part of <dom>/job: what its own `job` shows (caller
 * frees). */
static struct cfs_dom_disk_job *dom_jobs(const struct cfs_node_view *v)
{
    const struct cfs_domain *d = v->dom;
    struct cfs_dom_disk_job *j = cfs_xcalloc(d->n_disks ? d->n_disks : 1, sizeof(*j));
    for (size_t i = 0; i < d->n_disks; i++) {
        const struct cfs_disk_state *s =
            cfs_tree_find_disk_state(v->tree, d->name, d->disks[i].target);
        j[i].disk = d->disks[i].target;
        j[i].state = s;
        j[i].job = s ? disk_shown_job(s) : NULL;
    }
    return j;
}

static void render_dom_job(const struct cfs_node_view *v, struct cfs_buf *out)
{
    _cleanup_free_ struct cfs_dom_disk_job *j = dom_jobs(v);
    cfs_render_dom_job_text(out, v->dom, j, v->dom->n_disks,
                            cfs_tree_domain_group(v->tree, v->dom->name, NULL),
                            cfs_tree_find_thaw(v->tree, v->dom->name),
                            v->tree->stale);
}

static void render_dom_job_json(const struct cfs_node_view *v, struct cfs_buf *out)
{
    _cleanup_free_ struct cfs_dom_disk_job *j = dom_jobs(v);
    cfs_render_dom_job_json(out, v->dom, j, v->dom->n_disks,
                            cfs_tree_domain_group(v->tree, v->dom->name, NULL),
                            cfs_tree_find_thaw(v->tree, v->dom->name),
                            v->tree->stale);
}

/* <dom>/ctl: the settings a domain-level operation goes by (the mount's:
 * -o quiesce, -o quiesce_timeout) */
static void render_dom_ctl(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_buf_printf(out, "quiesce:         %s\n", cfs_quiesce_to_string(v->quiesce));
    if (v->quiesce_timeout)
        cfs_buf_printf(out, "quiesce_timeout: %u s\n", v->quiesce_timeout);
    else
        cfs_buf_printf(out, "quiesce_timeout: libvirt's own\n");
}

void cfs_render_ctl(struct cfs_buf *b, const struct cfs_disk_state *s,
                    uint64_t default_bandwidth)
{
    /* the running job's limit while one is in progress, else the one the
     * next merge starts with */
    uint64_t bw = default_bandwidth;
    if (s && cfs_job_phase_in_progress(s->job.phase))
        bw = s->job.bandwidth;
    cfs_buf_printf(b, "pivot:     %s\n",
                   s && s->settings.pivot_manual ? "manual" : "auto");
    if (bw == 0) {
        cfs_buf_printf(b, "bandwidth: unlimited\n");
    } else {
        char h[32];
        cfs_format_size(bw, h, sizeof(h));
        cfs_buf_printf(b, "bandwidth: %s/s\n", h);
    }
    for (char **p = s ? s->settings.merge_commit : NULL; p && *p; p++)
        cfs_buf_printf(b, "merge:     %s commit\n", *p);
    for (char **p = s ? s->settings.merge_pull : NULL; p && *p; p++)
        cfs_buf_printf(b, "merge:     %s pull\n", *p);
    cfs_buf_printf(b, "\n%s", cfs_ctl_usage);
}

static void render_ctl(const struct cfs_node_view *v, struct cfs_buf *out)
{
    cfs_render_ctl(out, v->state, v->default_bandwidth);
}

/* .chainfs/metrics.prom (issue 11) */
static void render_metrics(const struct cfs_node_view *v, struct cfs_buf *out)
{
    static const struct cfs_metrics none;
    cfs_metrics_render(out, v->metrics ? v->metrics : &none, v->tree, v->conn_up);
}

/* ---- listing directories ---------------------------------------------------- */

static void list_fixed(const struct cfs_node_view *v, enum cfs_node_kind k,
                       char ***names);

/* the root's own rows (none listed: .chainfs is hidden), then the
 * domains */
static void list_domains(const struct cfs_node_view *v, char ***names)
{
    list_fixed(v, CFS_NODE_ROOT, names);
    for (size_t i = 0; i < v->tree->n_doms; i++)
        cfs_strv_push(names, cfs_xstrdup(v->tree->doms[i]->name));
}

/* the domain's own files first, then its disks */
static void list_disks(const struct cfs_node_view *v, char ***names)
{
    list_fixed(v, CFS_NODE_DOMAIN, names);
    for (size_t i = 0; i < v->dom->n_disks; i++)
        cfs_strv_push(names, cfs_xstrdup(v->dom->disks[i].target));
}

bool cfs_layer_visible(const struct cfs_disk *disk,
                       const struct cfs_disk_state *s, size_t i)
{
    if (i + 1 >= disk->n_layers)
        return false; /* the base */
    if (!s)
        return true;
    const struct cfs_layer *l = &disk->layers[i];
    bool merging = cfs_job_phase_in_progress(s->job.phase) &&
                   s->job.type != CFS_JOB_SNAPSHOT;
    if (merging && cfs_file_same(&s->job.top_id, s->job.top, &l->id, l->path))
        return false;
    /* issue 8 §3: every snapshot of a run being merged, and every one
     * queued behind the disk's merge, is gone from snapshots/ */
    if (merging && l->name && cfs_strv_contains(s->job.snapshots, l->name))
        return false;
    for (size_t q = 0; l->name && q < s->n_queue; q++)
        if (cfs_streq(s->queue[q].snapshot, l->name))
            return false;
    return true;
}

static void list_snapshots(const struct cfs_node_view *v, char ***names)
{
    const struct cfs_disk *disk = v->disk;
    /* oldest first, as they were taken; a name is listed where it
     * resolves to (the first layer of that name) */
    for (size_t i = disk->n_layers; i-- > 0;) {
        const char *n = disk->layers[i].name;
        if (n && cfs_disk_find_snapshot(disk, n) == (int)i &&
            cfs_layer_visible(disk, v->state, i))
            cfs_strv_push(names, cfs_xstrdup(n));
    }
}

bool cfs_dom_snapshot_visible(struct cfs_tree *t, const struct cfs_domain *d,
                              const char *name)
{
    for (size_t i = 0; d && name && i < d->n_disks; i++) {
        const struct cfs_disk *dk = &d->disks[i];
        int li = cfs_disk_find_snapshot(dk, name);
        if (li >= 0 && cfs_layer_visible(dk, cfs_tree_find_disk_state(t, d->name, dk->target),
                                         (size_t)li))
            return true;
    }
    return false;
}

/* every name listed in a disk's snapshots/, once, in the disks' order
 * (each disk's oldest first) */
static void list_dom_snapshots(const struct cfs_node_view *v, char ***names)
{
    const struct cfs_domain *d = v->dom;
    for (size_t k = 0; k < d->n_disks; k++) {
        const struct cfs_disk *disk = &d->disks[k];
        const struct cfs_disk_state *s =
            cfs_tree_find_disk_state(v->tree, d->name, disk->target);
        for (size_t i = disk->n_layers; i-- > 0;) {
            const char *n = disk->layers[i].name;
            if (n && !cfs_strv_contains(*names, n) &&
                cfs_disk_find_snapshot(disk, n) == (int)i &&
                cfs_layer_visible(disk, s, i))
                cfs_strv_push(names, cfs_xstrdup(n));
        }
    }
}

static const struct cfs_node_type table[CFS_NODE_KIND_MAX];

/* the rows with a fixed name in a directory of kind K, in table order
 * (disk.raw only where V has images) */
static void list_fixed(const struct cfs_node_view *v, enum cfs_node_kind k,
                       char ***names)
{
    for (size_t i = 0; i < CFS_NODE_KIND_MAX; i++)
        if (table[i].parent == k && table[i].name && !table[i].hidden &&
            (!table[i].image || v->images))
            cfs_strv_push(names, cfs_xstrdup(table[i].name));
}

static void list_disk(const struct cfs_node_view *v, char ***names)
{
    list_fixed(v, CFS_NODE_DISK, names);
}

static void list_snapshot(const struct cfs_node_view *v, char ***names)
{
    list_fixed(v, CFS_NODE_SNAPSHOT, names);
}

static void list_dom_snapshot(const struct cfs_node_view *v, char ***names)
{
    list_fixed(v, CFS_NODE_DOM_SNAPSHOT, names);
}

static void list_own(const struct cfs_node_view *v, char ***names)
{
    list_fixed(v, CFS_NODE_OWN, names);
}

/* ---- writes -------------------------------------------------------------- */

/* ctl: one command per write (ctl.h); the answer is the write's result. */
static ssize_t write_ctl(struct cfs_engine *e, const struct cfs_path *p,
                         const char *buf, size_t len)
{
    struct cfs_ctl_cmd cmd;
    const char *why = NULL;
    int r = cfs_ctl_parse(buf, len, &cmd, &why);
    if (r < 0) {
        /* the first 64 bytes, a NUL shown as \0 (the log escapes the
         * other control characters) */
        char shown[64 * 2 + 4];
        size_t n = 0;
        for (size_t i = 0; i < len && i < 64; i++) {
            if (buf[i] == '\0') {
                shown[n++] = '\\';
                shown[n++] = '0';
            } else {
                shown[n++] = buf[i];
            }
        }
        if (len > 64) {
            memcpy(shown + n, "...", 3);
            n += 3;
        }
        shown[n] = '\0';
        log_warn("ctl %s%s%s: \"%s\" refused (%s): %s", p->dom,
                 p->disk[0] ? "/" : "", p->disk, shown, strerror(-r),
                 why ? why : "malformed");
        return r;
    }
    r = cfs_engine_ctl(e, p->dom, p->disk[0] ? p->disk : NULL, &cmd);
    if (r < 0)
        return r; /* the engine logged why */
    /* the engine logged the command done (one line, with dom/disk) */
    return (ssize_t)len;
}

/* ---- the table ------------------------------------------------------------ */

static const struct cfs_node_type table[CFS_NODE_KIND_MAX] = {
    [CFS_NODE_INVALID] = { .parent = CFS_NODE_INVALID },
    [CFS_NODE_ROOT] = {
        .parent = CFS_NODE_INVALID, .dir = true, .mode = 0555,
        .list = list_domains },
    [CFS_NODE_DOMAIN] = {
        .parent = CFS_NODE_ROOT, .dir = true, .mode = 0555,
        .list = list_disks },
    [CFS_NODE_DISK] = {
        .parent = CFS_NODE_DOMAIN, .dir = true, .mode = 0555,
        .list = list_disk },
    [CFS_NODE_CHAIN] = {
        .name = "chain", .parent = CFS_NODE_DISK, .mode = 0444,
        .render = render_chain },
    [CFS_NODE_CHAIN_JSON] = {
        .name = "chain.json", .parent = CFS_NODE_DISK, .mode = 0444,
        .render = render_chain_json },
    [CFS_NODE_JOB] = {
        .name = "job", .parent = CFS_NODE_DISK, .mode = 0444,
        .render = render_job },
    [CFS_NODE_JOB_JSON] = {
        .name = "job.json", .parent = CFS_NODE_DISK, .mode = 0444,
        .render = render_job_json },
    [CFS_NODE_WAIT] = {
        .name = "wait", .parent = CFS_NODE_DISK, .mode = 0444,
        .blocks = true, .render = render_job },
    [CFS_NODE_CTL] = {
        .name = "ctl", .parent = CFS_NODE_DISK, .mode = 0644,
        .managed = true, .render = render_ctl, .write = write_ctl },
    [CFS_NODE_SNAPDIR] = {
        .name = "snapshots", .parent = CFS_NODE_DISK, .dir = true,
        .mode = 0755, .managed = true, .mkdir_rmdir = true,
        .list = list_snapshots },
    [CFS_NODE_SNAPSHOT] = {
        .parent = CFS_NODE_SNAPDIR, .dir = true, .mode = 0555,
        .list = list_snapshot },
    [CFS_NODE_INFO] = {
        .name = "info", .parent = CFS_NODE_SNAPSHOT, .mode = 0444,
        .render = render_info },
    [CFS_NODE_INFO_JSON] = {
        .name = "info.json", .parent = CFS_NODE_SNAPSHOT, .mode = 0444,
        .render = render_info_json },
    [CFS_NODE_DISK_RAW] = {
        .name = "disk.raw", .parent = CFS_NODE_SNAPSHOT, .mode = 0400,
        .image = true },
    [CFS_NODE_DOM_JOB] = {
        .name = "job", .parent = CFS_NODE_DOMAIN, .mode = 0444,
        .render = render_dom_job },
    [CFS_NODE_DOM_JOB_JSON] = {
        .name = "job.json", .parent = CFS_NODE_DOMAIN, .mode = 0444,
        .render = render_dom_job_json },
    [CFS_NODE_DOM_WAIT] = {
        .name = "wait", .parent = CFS_NODE_DOMAIN, .mode = 0444,
        .blocks = true, .render = render_dom_job },
    [CFS_NODE_DOM_CTL] = {
        .name = "ctl", .parent = CFS_NODE_DOMAIN, .mode = 0644,
        .managed = true, .render = render_dom_ctl, .write = write_ctl },
    [CFS_NODE_DOM_SNAPDIR] = {
        .name = "snapshots", .parent = CFS_NODE_DOMAIN, .dir = true,
        .mode = 0755, .managed = true, .mkdir_rmdir = true,
        .list = list_dom_snapshots },
    [CFS_NODE_DOM_SNAPSHOT] = {
        .parent = CFS_NODE_DOM_SNAPDIR, .dir = true, .mode = 0555,
        .list = list_dom_snapshot },
    [CFS_NODE_DOM_INFO] = {
        .name = "info", .parent = CFS_NODE_DOM_SNAPSHOT, .mode = 0444,
        .render = render_dom_info },
    [CFS_NODE_DOM_INFO_JSON] = {
        .name = "info.json", .parent = CFS_NODE_DOM_SNAPSHOT, .mode = 0444,
        .render = render_dom_info_json },
    [CFS_NODE_OWN] = {
        .name = CFS_OWN_DIR, .parent = CFS_NODE_ROOT, .dir = true,
        .mode = 0555, .hidden = true, .list = list_own },
    [CFS_NODE_METRICS] = {
        .name = "metrics.prom", .parent = CFS_NODE_OWN, .mode = 0444,
        .render = render_metrics },
};

const struct cfs_node_type *cfs_node_type(enum cfs_node_kind k)
{
    if ((unsigned)k >= CFS_NODE_KIND_MAX)
        k = CFS_NODE_INVALID;
    return &table[k];
}

enum cfs_node_kind cfs_node_child(enum cfs_node_kind parent, const char *name,
                                  size_t len)
{
    enum cfs_node_kind any = CFS_NODE_INVALID;
    if (parent == CFS_NODE_INVALID || (unsigned)parent >= CFS_NODE_KIND_MAX ||
        !table[parent].dir)
        return CFS_NODE_INVALID;
    for (size_t i = CFS_NODE_ROOT; i < CFS_NODE_KIND_MAX; i++) {
        if (table[i].parent != parent)
            continue;
        if (!table[i].name)
            any = (enum cfs_node_kind)i;
        else if (strlen(table[i].name) == len &&
                 memcmp(table[i].name, name, len) == 0)
            return (enum cfs_node_kind)i;
    }
    return any;
}

bool cfs_node_is_file(enum cfs_node_kind k)
{
    return k != CFS_NODE_INVALID && (unsigned)k < CFS_NODE_KIND_MAX &&
           !table[k].dir;
}
