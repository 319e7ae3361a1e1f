/* events.c — every phase edge of every job, once (issue 11): the log
 * line a sysadmin reads for a job's start, end and failure, and the
 * metrics' job counters (metrics.c). */
#include "engine_int.h"

#include "chainfs/log.h"
#include "chainfs/metrics.h"

void job_edge_locked(struct cfs_engine *e, const struct cfs_disk_state *s,
                     enum cfs_job_phase from, enum cfs_job_phase to)
{
    cfs_metrics_job_edge(&e->metrics, &s->job, from, to, now_s());
    log_info("job %llu %s/%s: %s -> %s", (unsigned long long)s->job.id,
             s->dom, s->disk, cfs_job_phase_to_string(from),
             cfs_job_phase_to_string(to));
}
