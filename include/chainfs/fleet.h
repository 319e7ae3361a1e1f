/* fleet.h — several libvirt hosts in one mount (issue 12,
 * docs/design/issue12.md §1.3): one struct cfs_engine per host (its own
 * connection, events, reconnect, journal, stale marking, workers) and a
 * router from mount paths to (engine, engine-relative path).
 *
 * One host: no host level, the tree is the engine's own (as before
 * issue 12), its state in STATE_DIR. Several: MOUNT/<host>/<domain>/...,
 * `/` lists the host names, /.chainfs/metrics.prom is the fleet's (every
 * series labelled host="NAME"), /HOST/.chainfs does not exist; the mount
 * holds STATE_DIR/lock and each host's journal is in
 * STATE_DIR/hosts/NAME/. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "chainfs/backend.h"
#include "chainfs/engine.h"
#include "chainfs/path.h"
#include "chainfs/util.h"

struct cfs_fleet;

struct cfs_fleet_host {
    const char *name;      /* directory name (cfs_fleet_parse_connect's
                              rule); NULL: cfs_fleet_default_name(uri).
                              Ignored with one host (no host level). */
    const char *uri;       /* as given (NULL: libvirt's default) */
    struct cfs_backend *be;          /* the fleet's once cfs_fleet_new is
                                        called (destroyed on failure too) */
    struct cfs_imgserve *imgserve;   /* likewise; NULL: no disk.raw. Its
                                        state directory is
                                        cfs_fleet_state_dir's. */
};

/* The state directory of host NAME when the mount has N_HOSTS hosts:
 * STATE_DIR itself for one, STATE_DIR/hosts/NAME for several. Caller
 * frees. */
char *cfs_fleet_state_dir(const char *state_dir, const char *name,
                          size_t n_hosts);

/* One engine per host (cfs_engine_new for each, COMMON's settings with
 * the host's state_dir, host name and, with several hosts,
 * start_disconnected). COMMON->imgserve is not used (each host's is in
 * HOSTS). Refuses (-EINVAL, *ERRMSG says why) a bad or repeated name,
 * and with several hosts a STATE_DIR/journal with open entries (they
 * belong to a one-host mount: finish them with it). A hosts/NAME journal
 * with open entries whose NAME is not given is logged and left alone.
 * -EBUSY: the state directory is another chainfs's. */
int cfs_fleet_new(const struct cfs_engine_config *common,
                  const struct cfs_fleet_host *hosts, size_t n,
                  struct cfs_fleet **out, char **errmsg);
/* cfs_engine_start of every engine (at once, each in a thread of its
 * own, with several hosts). With several, a host that cannot be reached
 * starts stale and connects in the background; any other failure fails
 * the whole ("host NAME: ..." in *ERRMSG). */
int cfs_fleet_start(struct cfs_fleet *f, bool thread, char **errmsg);
struct cfs_fleet *cfs_fleet_free(struct cfs_fleet *f);

/* Split a mount path: which engine (NULL: the fleet's own node: "/" with
 * several hosts, or "/.chainfs/..."), and the engine-relative path
 * parsed (cfs_path_parse of what follows "/HOST"; "/HOST" itself is the
 * engine's CFS_NODE_ROOT). -ENOENT for an unknown host or a path that
 * cannot exist, -ENAMETOOLONG as cfs_path_parse. */
int cfs_fleet_resolve(struct cfs_fleet *f, const char *path,
                      struct cfs_engine **e, struct cfs_path *p);
size_t cfs_fleet_n_hosts(const struct cfs_fleet *f);
/* "" with one host. */
const char *cfs_fleet_host_name(const struct cfs_fleet *f, size_t i);
struct cfs_engine *cfs_fleet_engine(struct cfs_fleet *f, size_t i);
/* The host name of engine E (for cfs_log_set_context), "" with one host
 * or E NULL. */
const char *cfs_fleet_engine_host(const struct cfs_fleet *f,
                                  const struct cfs_engine *e);

/* The read side of a resolved path: E non-NULL goes to the engine
 * (cfs_engine_getattr/readdir/read); E NULL is the fleet's own node. */
int cfs_fleet_getattr(struct cfs_fleet *f, struct cfs_engine *e,
                      const struct cfs_path *p, struct cfs_node_attr *out);
int cfs_fleet_readdir(struct cfs_fleet *f, struct cfs_engine *e,
                      const struct cfs_path *p, char ***names);
int cfs_fleet_read(struct cfs_fleet *f, struct cfs_engine *e,
                   const struct cfs_path *p, struct cfs_buf *out);

/* Sum of the engines' generations (monotonic): fuse_ops.c's caches. */
unsigned long cfs_fleet_generation(struct cfs_fleet *f);
/* The engines' invalidations ("/dom/vda/job") reach FN as mount paths
 * ("/HOST/dom/vda/job" with several hosts). FN NULL: none. */
void cfs_fleet_set_invalidate(struct cfs_fleet *f,
                              void (*fn)(void *opaque, const char *path),
                              void *opaque);

/* "NAME=URI" or "URI": an '=' is NAME's only if everything before it is
 * free of ':', '/' and '?' (so "qemu+ssh://h/system?keyfile=/k" is one
 * URI). 0 and *NAME (NULL: derive it) and *URI set (caller frees);
 * -EINVAL for a bad NAME (cfs_fleet_name_validate) or an empty URI. */
int cfs_fleet_parse_connect(const char *arg, char **name, char **uri);
/* 0 if NAME may name a host's directory: the rule of snapshot names
 * (cfs_name_validate: 1..64 of [A-Za-z0-9._-], not starting with '.' or
 * '-'), so never ".chainfs"; -EINVAL otherwise. */
int cfs_fleet_name_validate(const char *name);
/* The name of a host given without one: the URI's host part
 * ("qemu+tcp://10.0.0.2/system" -> "10.0.0.2", user and port left out,
 * an IPv6 address without its brackets and ':' made '_'), "localhost"
 * for a URI without host or NULL. Caller frees. */
char *cfs_fleet_default_name(const char *uri);
