/* mountid.c — the mount's source and type, see mountid.h. */
#include "mountid.h"

#include <string.h>

#include "chainfs/util.h"

char *cfs_fuse_opt_escape(const char *s)
{
    char *out = cfs_xmalloc(2 * strlen(s) + 1), *o = out;
    for (; *s; s++) {
        if (*s == ',' || *s == '\\')
            *o++ = '\\';
        *o++ = *s;
    }
    *o = '\0';
    return out;
}

char *cfs_mount_identity_opt(const char *uri, bool have_fsname,
                             bool have_subtype)
{
    if (have_fsname && have_subtype)
        return NULL;
    _cleanup_free_ char *name = cfs_fuse_opt_escape(uri ? uri : "chainfs");
    if (have_fsname)
        return cfs_xstrdup("-osubtype=chainfs");
    if (have_subtype)
        return cfs_xasprintf("-ofsname=%s", name);
    return cfs_xasprintf("-ofsname=%s,subtype=chainfs", name);
}

char *cfs_mount_fleet_source(const char *const *names, size_t n)
{
    struct cfs_buf b = {0};
    cfs_buf_printf(&b, "chainfs:");
    for (size_t i = 0; i < n; i++)
        cfs_buf_printf(&b, "%s%s", i ? "," : "", names[i]);
    return cfs_buf_steal(&b);
}
