/* metrics.c — the engine's job counters and MOUNTPOINT/.chainfs/
 * metrics.prom (metrics.h; docs/FILES.md lists every metric).
 *
 * The file is Prometheus text exposition format 0.0.4 as node_exporter's
 * textfile collector reads it where it stands: no timestamps, HELP and
 * TYPE before every family's samples, a family's samples together,
 * counters named *_total, label values escaped. A family with no sample
 * (no job of any type completed yet: no last duration) is left out
 * whole. */
#include "chainfs/metrics.h"

#include <string.h>

#ifndef CHAINFS_VERSION
#define CHAINFS_VERSION "unknown"
#endif

const enum cfs_job_type cfs_metrics_types[CFS_METRICS_N_TYPES] = {
    CFS_JOB_SNAPSHOT,       CFS_JOB_COMMIT,       CFS_JOB_ACTIVE_COMMIT,
    CFS_JOB_OFFLINE_COMMIT, CFS_JOB_PULL,         CFS_JOB_OFFLINE_PULL,
    CFS_JOB_COPY,           CFS_JOB_REVERT,
};

static bool counted_type(enum cfs_job_type t)
{
    for (size_t i = 0; i < CFS_METRICS_N_TYPES; i++)
        if (cfs_metrics_types[i] == t)
            return true;
    return false;
}

bool cfs_metrics_is_merge(enum cfs_job_type t)
{
    return t == CFS_JOB_COMMIT || t == CFS_JOB_ACTIVE_COMMIT ||
           t == CFS_JOB_OFFLINE_COMMIT || t == CFS_JOB_PULL ||
           t == CFS_JOB_OFFLINE_PULL;
}

uint64_t cfs_metrics_merged_bytes(const struct cfs_job *job)
{
    if (job->direction == CFS_DIRECTION_PULL && job->bytes_copied)
        return job->bytes_copied;
    /* completed: all of it was copied (job_end sets cur to end just
     * after this edge) */
    return job->end > job->cur ? job->end : job->cur;
}

void cfs_metrics_job_edge(struct cfs_metrics *m, const struct cfs_job *job,
                          enum cfs_job_phase from, enum cfs_job_phase to,
                          int64_t now)
{
    enum cfs_job_type t = job->type;
    if (job->external || (unsigned)t >= CFS_JOB_TYPE_MAX || !counted_type(t))
        return;
    switch (to) {
    case CFS_PHASE_STARTING:
        if (from == CFS_PHASE_NONE)
            m->started[t]++;
        break;
    case CFS_PHASE_COMPLETED:
        m->completed[t]++;
        m->last_duration[t] = job->started > 0 && now >= job->started
                                  ? (double)(now - job->started) : 0;
        m->has_last[t] = true;
        if (cfs_metrics_is_merge(t))
            m->merged_bytes[t] += cfs_metrics_merged_bytes(job);
        break;
    case CFS_PHASE_FAILED:
        if (from == CFS_PHASE_NONE)
            m->refused[t]++;
        else
            m->failed[t]++;
        break;
    case CFS_PHASE_CANCELED:
        m->canceled[t]++;
        break;
    default:
        break;
    }
}

/* ---- the text format ------------------------------------------------------ */

static void family(struct cfs_buf *b, const char *name, const char *type,
                   const char *help)
{
    cfs_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the format wants it: \ " and newline escaped. */
static void label_value(struct cfs_buf *b, const char *v)
{
    for (const char *c = v; *c; c++) {
        if (*c == '\\')
            cfs_buf_printf(b, "\\\\");
        else if (*c == '"')
            cfs_buf_printf(b, "\\\"");
        else if (*c == '\n')
            cfs_buf_printf(b, "\\n");
        else
            cfs_buf_printf(b, "%c", *c);
    }
}

/* The labels of one sample: host="H" (several hosts) and type="T"
 * (a family by type), either may be absent. */
static void labels(struct cfs_buf *b, const char *host, const char *type)
{
    if (!host && !type)
        return;
    cfs_buf_printf(b, "{");
    if (host) {
        cfs_buf_printf(b, "host=\"");
        label_value(b, host);
        cfs_buf_printf(b, "\"%s", type ? "," : "");
    }
    if (type)
        cfs_buf_printf(b, "type=\"%s\"", type);
    cfs_buf_printf(b, "}");
}

static void sample_u(struct cfs_buf *b, const char *name, const char *host,
                     uint64_t v)
{
    cfs_buf_printf(b, "%s", name);
    labels(b, host, NULL);
    cfs_buf_printf(b, " %llu\n", (unsigned long long)v);
}

static void sample_type_u(struct cfs_buf *b, const char *name, const char *host,
                          enum cfs_job_type t, uint64_t v)
{
    cfs_buf_printf(b, "%s", name);
    labels(b, host, cfs_job_type_to_string(t));
    cfs_buf_printf(b, " %llu\n", (unsigned long long)v);
}

void cfs_metrics_sample(struct cfs_metrics_sample *s, const struct cfs_metrics *m,
                        const struct cfs_tree *t, bool conn_up)
{
    *s = (struct cfs_metrics_sample){ .m = *m, .conn_up = conn_up,
                                      .domains = t->n_doms,
                                      .thaws = t->n_thaws };
    for (size_t i = 0; i < t->n_doms; i++) {
        const struct cfs_domain *d = t->doms[i];
        s->not_responding += d->not_responding;
        s->disks += d->n_disks;
        for (size_t k = 0; k < d->n_disks; k++) {
            s->layers += d->disks[k].n_layers;
            if (d->disks[k].n_layers > s->deepest)
                s->deepest = d->disks[k].n_layers;
        }
    }
    for (size_t i = 0; i < t->n_states; i++) {
        const struct cfs_disk_state *st = t->states[i];
        if (cfs_job_phase_in_progress(st->job.phase) &&
            (unsigned)st->job.type < CFS_JOB_TYPE_MAX)
            s->running[st->job.type]++;
        if (st->external.type != CFS_JOB_NONE)
            s->external++;
        s->queued += st->n_queue;
        s->readers += st->n_readers;
    }
    for (size_t i = 0; i < t->n_groups; i++)
        s->groups += !cfs_group_phase_ended(t->groups[i]->phase);
}

/* HOST of sample I: NULL (no label) without host names. */
#define HOST(i) (hosts ? hosts[i] : NULL)

/* A gauge or counter family with one sample per host, FIELD of each. */
#define FAMILY_U(name, type, help, field)                                     \
    do {                                                                      \
        family(out, name, type, help);                                        \
        for (size_t i = 0; i < n; i++)                                        \
            sample_u(out, name, HOST(i), s[i].field);                         \
    } while (0)

/* A family by type (every type chainfs runs), FIELD[type] of each host. */
#define FAMILY_BY_TYPE(name, type, help, field)                               \
    do {                                                                      \
        family(out, name, type, help);                                        \
        for (size_t i = 0; i < n; i++)                                        \
            for (size_t k = 0; k < CFS_METRICS_N_TYPES; k++)                  \
                sample_type_u(out, name, HOST(i), cfs_metrics_types[k],       \
                              s[i].field[cfs_metrics_types[k]]);              \
    } while (0)

void cfs_metrics_render_hosts(struct cfs_buf *out,
                              const struct cfs_metrics_sample *s,
                              const char *const *hosts, size_t n)
{
    /* the process's own: no host label */
    family(out, "chainfs_build_info", "gauge",
           "Always 1; the label version is chainfs's version.");
    cfs_buf_printf(out, "chainfs_build_info{version=\"");
    label_value(out, CHAINFS_VERSION);
    cfs_buf_printf(out, "\"} 1\n");

    FAMILY_U("chainfs_libvirt_up", "gauge",
             "1 if the connection to libvirt is up, 0 if what the mount shows "
             "is the last known state (stale).", conn_up);
    FAMILY_U("chainfs_domains", "gauge", "Domains shown at the mount's root.",
             domains);
    FAMILY_U("chainfs_domains_not_responding", "gauge",
             "Domains whose libvirt call has not returned for 10 s or more.",
             not_responding);
    FAMILY_U("chainfs_disks", "gauge", "Disks shown, of every domain.", disks);
    FAMILY_U("chainfs_layers", "gauge",
             "Image files in the backing chains of every disk shown (active "
             "layer and base included).", layers);
    FAMILY_U("chainfs_chain_depth_max", "gauge",
             "Layers in the deepest backing chain of any disk (0: no disk).",
             deepest);

    FAMILY_BY_TYPE("chainfs_jobs_running", "gauge",
                   "chainfs's jobs in progress (starting to cleanup), by type.",
                   running);
    FAMILY_BY_TYPE("chainfs_jobs_started_total", "counter",
                   "Jobs chainfs started, by type.", m.started);
    FAMILY_BY_TYPE("chainfs_jobs_completed_total", "counter",
                   "Jobs that completed, by type.", m.completed);
    FAMILY_BY_TYPE("chainfs_jobs_failed_total", "counter",
                   "Jobs that failed after they started, by type.", m.failed);
    FAMILY_BY_TYPE("chainfs_jobs_canceled_total", "counter",
                   "Jobs that were canceled (abort in ctl, a merge regrouped), "
                   "by type.", m.canceled);
    FAMILY_BY_TYPE("chainfs_jobs_refused_total", "counter",
                   "mkdir, rmdir and ctl commands refused before a job started "
                   "(shown as a failed job in the disk's job file), by type.",
                   m.refused);

    bool any_last = false;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < CFS_METRICS_N_TYPES; k++)
            any_last |= s[i].m.has_last[cfs_metrics_types[k]];
    if (any_last) {
        family(out, "chainfs_job_last_duration_seconds", "gauge",
               "How long the last completed job of the type took, start to "
               "end.");
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < CFS_METRICS_N_TYPES; k++) {
                enum cfs_job_type ty = cfs_metrics_types[k];
                if (!s[i].m.has_last[ty])
                    continue;
                cfs_buf_printf(out, "chainfs_job_last_duration_seconds");
                labels(out, HOST(i), cfs_job_type_to_string(ty));
                cfs_buf_printf(out, " %.0f\n", s[i].m.last_duration[ty]);
            }
    }

    family(out, "chainfs_merged_bytes_total", "counter",
           "Bytes copied by the merges that completed (an rmdir's commit or "
           "pull), by type.");
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < CFS_METRICS_N_TYPES; k++)
            if (cfs_metrics_is_merge(cfs_metrics_types[k]))
                sample_type_u(out, "chainfs_merged_bytes_total", HOST(i),
                              cfs_metrics_types[k],
                              s[i].m.merged_bytes[cfs_metrics_types[k]]);

    FAMILY_U("chainfs_rmdirs_queued", "gauge",
             "rmdirs queued behind a merge of their disk.", queued);
    FAMILY_U("chainfs_job_groups_running", "gauge",
             "Domain-level rmdirs (job groups) not ended.", groups);
    FAMILY_U("chainfs_disk_raw_readers", "gauge",
             "snapshots/NAME/disk.raw files open now.", readers);
    FAMILY_U("chainfs_external_jobs_running", "gauge",
             "libvirt block jobs chainfs did not start, running on a disk "
             "shown.", external);
    FAMILY_U("chainfs_thaws_owed", "gauge",
             "Domains whose guest filesystems chainfs froze and could not thaw "
             "yet (retried).", thaws);
}

void cfs_metrics_render(struct cfs_buf *out, const struct cfs_metrics *m,
                        const struct cfs_tree *t, bool conn_up)
{
    struct cfs_metrics_sample s;
    cfs_metrics_sample(&s, m, t, conn_up);
    cfs_metrics_render_hosts(out, &s, NULL, 1);
}
