/* domsnap.c — part of the engine (see engine_int.h): the domain level of
 * issue 10 (docs/design/issue10.md §2): mkdir in <dom>/snapshots/, the
 * domain's ctl; and the quiesce every mkdir goes through. */
#include "engine_int.h"

/* ---- <dom>/ctl (FUSE threads) ------------------------------------------------ */

int dom_ctl(struct cfs_engine *e, const char *dom, const struct cfs_ctl_cmd *cmd)
{
    pthread_mutex_lock(&e->tree->lock);
    bool have = cfs_tree_find_domain(e->tree, dom) != NULL;
    pthread_mutex_unlock(&e->tree->lock);
    int r;
    const char *why;
    if (!have) {
        r = -ENOENT;
        why = "no such domain";
    } else {
        /* every command parsed today is a disk's: its job, its settings */
        r = -EINVAL;
        why = "not a command of a domain's ctl (it acts on one disk: write "
              "it to <dom>/<disk>/ctl)";
    }
    log_warn("ctl %s: %s refused (%s): %s", dom, cfs_ctl_op_to_string(cmd->op),
             strerror(-r), why);
    return r;
}

/* ---- rmdir <dom>/snapshots/NAME ------------------------------------------------ */

int dom_rmdir(struct cfs_engine *e, const char *dom, const char *name)
{
    /* a job group: one merge per disk (group.c, design §3) */
    return cfs_engine_rmdir_domain(e, dom, name);
}

/* ---- mkdir <dom>/snapshots/NAME ------------------------------------------------ */

int dom_mkdir(struct cfs_engine *e, const char *dom, const char *name)
{
    (void)e;
    log_warn("mkdir %s/snapshots/%s refused (%s): not built yet", dom, name,
             strerror(EOPNOTSUPP));
    return -EOPNOTSUPP;
}
