/* TEMPORARY: cfs_engine_ctl is the engine branch's (issue 7); this stub
 * only lets the ctl file link and be tested before that branch lands.
 * The lead drops this commit at merge. */
#include <errno.h>

#include "chainfs/engine.h"
#include "chainfs/log.h"

int cfs_engine_ctl(struct cfs_engine *e, const char *dom, const char *disk,
                   const struct cfs_ctl_cmd *cmd)
{
    (void)e;
    (void)cmd;
    log_warn("ctl %s/%s refused (%s): not implemented yet (temporary stub)",
             dom, disk, "Function not implemented");
    return -ENOSYS;
}
