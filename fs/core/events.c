/* events.c — every phase edge of every job, once (issue 11): the log
 * line a sysadmin reads for a job's start, end and failure, and the
 * metrics' job counters (metrics.c: which edges count as what).
 *
 * One format for every job, so that `grep 'job [0-9]* failed:'` finds
 * every failure, `grep ' vm1/vda '` every job of a disk:
 *
 *   job ID EVENT: TYPE DOM/DISK WHAT[ (FILES)][ in|after N s][: ERROR]
 *
 *   EVENT  started (none -> starting), resumed (a job the journal had,
 *          taken up again at start), refused (a refusal recorded as a
 *          failed job; its own line says why, at warning), completed,
 *          failed, canceled; any other edge: the phase reached
 *          (running, ready, pivoting, finishing, cleanup), "(was FROM)"
 *          added
 *   TYPE   the job file's type: snapshot, commit, active-commit,
 *          offline-commit, pull, offline-pull, copy, revert
 *   WHAT   "snapshot NAME" ("snapshots A, B" for a run of the queue);
 *          a copy names no snapshot
 *   FILES  "top T, base B" as the job file says them; a copy: "source S,
 *          destination D"; start and end lines only
 *   ERROR  the job's error, libvirt's message in it (failed, canceled)
 *
 * Priorities: started, resumed, completed LOG_NOTICE; failed LOG_ERR;
 * canceled LOG_WARNING (LOG_NOTICE when chainfs itself regrouped it);
 * refused LOG_DEBUG (the refusal's line is the warning); the other edges
 * LOG_INFO. Every field is in S->job by the time its edge is taken:
 * job_end() sets the error, partial and finish time before the terminal
 * step (job.c, phase_change). */
#include "engine_int.h"

#include "chainfs/log.h"
#include "chainfs/metrics.h"

static bool edge_terminal(enum cfs_job_phase p)
{
    return p == CFS_PHASE_COMPLETED || p == CFS_PHASE_FAILED ||
           p == CFS_PHASE_CANCELED;
}

/* What the line says happened, and at which priority. */
static const char *edge_event(const struct cfs_job *j, enum cfs_job_phase from,
                              enum cfs_job_phase to, int *prio)
{
    *prio = LOG_INFO;
    if (from == CFS_PHASE_NONE) {
        if (to == CFS_PHASE_FAILED) {
            *prio = LOG_DEBUG;
            return "refused";
        }
        *prio = LOG_NOTICE;
        return to == CFS_PHASE_STARTING ? "started" : "resumed";
    }
    switch (to) {
    case CFS_PHASE_COMPLETED:
        *prio = LOG_NOTICE;
        break;
    case CFS_PHASE_FAILED:
        *prio = LOG_ERR;
        break;
    case CFS_PHASE_CANCELED:
        *prio = j->superseded ? LOG_NOTICE : LOG_WARNING;
        break;
    default:
        break;
    }
    return cfs_job_phase_to_string(to);
}

static void job_log_line(struct cfs_buf *b, const struct cfs_job *j,
                         const char *dom, const char *disk,
                         enum cfs_job_phase from, enum cfs_job_phase to,
                         int64_t now, int *prio)
{
    const char *event = edge_event(j, from, to, prio);
    cfs_buf_printf(b, "job %llu %s", (unsigned long long)j->id, event);
    if (from == CFS_PHASE_NONE && to != CFS_PHASE_STARTING &&
        to != CFS_PHASE_FAILED)
        cfs_buf_printf(b, " (%s)", cfs_job_phase_to_string(to));
    cfs_buf_printf(b, ": %s %s/%s", cfs_job_type_to_string(j->type), dom, disk);

    bool copy = j->type == CFS_JOB_COPY;
    if (!copy && cfs_strv_len(j->snapshots) > 1 && j->type != CFS_JOB_REVERT) {
        cfs_buf_printf(b, " snapshots ");
        for (char **n = j->snapshots; *n; n++)
            cfs_buf_printf(b, "%s%s", n == j->snapshots ? "" : ", ", *n);
    } else if (j->snapshot) {
        cfs_buf_printf(b, " snapshot %s", j->snapshot);
    }

    bool ends = edge_terminal(to);
    bool edge_only = from != CFS_PHASE_NONE && !ends;
    if (edge_only) {
        cfs_buf_printf(b, " (was %s)", cfs_job_phase_to_string(from));
        return;
    }
    const char *k1 = copy ? "source" : "top", *k2 = copy ? "destination" : "base";
    const char *v1 = j->top, *v2 = copy ? j->dest : j->base;
    if (v1 && v2)
        cfs_buf_printf(b, " (%s %s, %s %s)", k1, v1, k2, v2);
    else if (v1 || v2)
        cfs_buf_printf(b, " (%s %s)", v1 ? k1 : k2, v1 ? v1 : v2);
    if (ends && from != CFS_PHASE_NONE && j->started > 0 && now >= j->started)
        cfs_buf_printf(b, " %s %lld s", to == CFS_PHASE_COMPLETED ? "in" : "after",
                       (long long)(now - j->started));
    if (to == CFS_PHASE_FAILED || to == CFS_PHASE_CANCELED) {
        cfs_buf_printf(b, ": %s", j->error && *j->error ? j->error : "no reason given");
        if (j->partial)
            cfs_buf_printf(b, " (the base was partly written)");
    }
}

void job_edge_locked(struct cfs_engine *e, const struct cfs_disk_state *s,
                     enum cfs_job_phase from, enum cfs_job_phase to)
{
    /* one clock read: the metrics' duration and the line's agree */
    int64_t now = now_s();
    cfs_metrics_job_edge(&e->metrics, &s->job, from, to, now);
    _cleanup_buf_ struct cfs_buf b = {0};
    int prio;
    job_log_line(&b, &s->job, s->dom, s->disk, from, to, now, &prio);
    cfs_log(prio, "%s", b.data ? b.data : "");
}
