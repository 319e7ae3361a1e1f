/* test_fleet.c — several hosts in one mount (issue 12, fleet.h): two
 * engines on two fake backends behind one fleet. Routing of mount paths,
 * host names from -c arguments (good and bad), per-host state
 * directories, a host down at start (stale, ENOTCONN for its changes,
 * the other host unaffected, then connected and read), metrics with host
 * labels, log lines carrying the host. No libvirtd, no /dev/fuse. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include "tmpdir.h"

#include "chainfs/engine.h"
#include "chainfs/fleet.h"
#include "chainfs/journal.h"
#include "chainfs/log.h"
#include "chainfs/metrics.h"
#include "fake.h"

struct fx {
    char dir[64];
    char paths[2][128];
    struct cfs_backend *be[2];  /* not owned: the fleet's */
    struct cfs_fleet *fleet;
};

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

/* Hosts "alpha" (vm1) and "beta" (vm2), each a fake backend; BETA_DOWN:
 * beta cannot be reached at start. */
static struct fx *fleet_up(bool beta_down)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-fleet-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    const char *doms[2] = {"vm1", "vm2"};
    struct cfs_fleet_host hosts[2] = {
        {.name = "alpha", .uri = "test:///alpha"},
        {.name = "beta", .uri = "test:///beta"},
    };
    for (int i = 0; i < 2; i++) {
        snprintf(f->paths[i], sizeof(f->paths[i]), "%s/%s.qcow2", f->dir, doms[i]);
        touch(f->paths[i]);
        f->be[i] = cfs_fake_backend_new();
        const char *chain[] = {f->paths[i]};
        cfs_fake_add_simple(f->be[i], doms[i], CFS_DOM_RUNNING, "vda", chain,
                            NULL, 1);
        hosts[i].be = f->be[i];
    }
    if (beta_down)
        cfs_fake_set_reachable(f->be[1], false);
    char state[128];
    snprintf(state, sizeof(state), "%s/state", f->dir);
    struct cfs_engine_config cfg = {.state_dir = state};
    char *err = NULL;
    assert_int_equal(cfs_fleet_new(&cfg, hosts, 2, &f->fleet, &err), 0);
    assert_int_equal(cfs_fleet_start(f->fleet, false, &err), 0);
    assert_null(err);
    return f;
}

static void fleet_down(struct fx *f)
{
    cfs_fleet_free(f->fleet);
    test_tmpdir_remove(f->dir);
    free(f);
}

static char *read_path(struct cfs_fleet *fl, const char *path, int *rc)
{
    struct cfs_engine *e;
    struct cfs_path p;
    struct cfs_buf b = {0};
    *rc = cfs_fleet_resolve(fl, path, &e, &p);
    if (*rc == 0)
        *rc = cfs_fleet_read(fl, e, &p, &b);
    if (*rc < 0) {
        cfs_buf_free(&b);
        return NULL;
    }
    return b.data ? cfs_buf_steal(&b) : cfs_xstrdup("");
}

static char **list_path(struct cfs_fleet *fl, const char *path, int *rc)
{
    struct cfs_engine *e;
    struct cfs_path p;
    char **names = NULL;
    *rc = cfs_fleet_resolve(fl, path, &e, &p);
    if (*rc == 0)
        *rc = cfs_fleet_readdir(fl, e, &p, &names);
    return names;
}

/* ---- names ------------------------------------------------------------------ */

static void test_parse_connect(void **state)
{
    (void)state;
    static const struct {
        const char *arg, *name, *uri;
    } good[] = {
        {"qemu:///system", NULL, "qemu:///system"},
        {"local=qemu:///system", "local", "qemu:///system"},
        {"h2=qemu+tcp://10.0.0.2/system", "h2", "qemu+tcp://10.0.0.2/system"},
        /* an '=' of the URI's own is not a name */
        {"qemu+ssh://root@h/system?keyfile=/k&no_verify=1", NULL,
         "qemu+ssh://root@h/system?keyfile=/k&no_verify=1"},
        {"r=qemu+ssh://h/system?keyfile=/k", "r", "qemu+ssh://h/system?keyfile=/k"},
        {"none", NULL, "none"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char *name = NULL, *uri = NULL;
        assert_int_equal(cfs_fleet_parse_connect(good[i].arg, &name, &uri), 0);
        if (good[i].name)
            assert_string_equal(name, good[i].name);
        else
            assert_null(name);
        assert_string_equal(uri, good[i].uri);
        free(name);
        free(uri);
    }
    static const char *const bad[] = {
        ".chainfs=qemu:///system", "-x=qemu:///system", ".h=qemu:///system",
        "a b=qemu:///system", "=qemu:///system", "x=", "",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=qemu:///system",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *name = NULL, *uri = NULL;
        assert_int_equal(cfs_fleet_parse_connect(bad[i], &name, &uri), -EINVAL);
        assert_null(name);
        assert_null(uri);
    }
}

static void test_default_name(void **state)
{
    (void)state;
    static const struct {
        const char *uri, *name;
    } cases[] = {
        {NULL, "localhost"},
        {"qemu:///system", "localhost"},
        {"qemu+tcp://10.0.0.2/system", "10.0.0.2"},
        {"qemu+ssh://root@kvm1.example.org:2222/system?keyfile=/k", "kvm1.example.org"},
        {"qemu+tls://[fe80::1]:16514/system", "fe80__1"},
        {"qemu+tcp://h2?x=1", "h2"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *n = cfs_fleet_default_name(cases[i].uri);
        assert_string_equal(n, cases[i].name);
        free(n);
    }
    assert_int_equal(cfs_fleet_name_validate(".chainfs"), -EINVAL);
    assert_int_equal(cfs_fleet_name_validate("kvm1.example.org"), 0);
}

/* A clash, a bad derived name: refused before anything starts, and the
 * backends are the fleet's either way (ASan: nothing leaks). */
static void test_names_refused(void **state)
{
    (void)state;
    char dir[64] = "/tmp/cfs-fleet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct cfs_engine_config cfg = {.state_dir = dir};
    struct cfs_fleet_host clash[2] = {
        {.uri = "qemu:///system", .be = cfs_fake_backend_new()},
        {.uri = "qemu:///session", .be = cfs_fake_backend_new()},
    };
    struct cfs_fleet *fl = NULL;
    char *err = NULL;
    assert_int_equal(cfs_fleet_new(&cfg, clash, 2, &fl, &err), -EINVAL);
    assert_null(fl);
    assert_non_null(strstr(err, "two hosts named 'localhost'"));
    free(err);
    err = NULL;
    struct cfs_fleet_host dotted[2] = {
        {.name = "a", .uri = "qemu:///system", .be = cfs_fake_backend_new()},
        {.name = ".chainfs", .uri = "qemu:///system", .be = cfs_fake_backend_new()},
    };
    assert_int_equal(cfs_fleet_new(&cfg, dotted, 2, &fl, &err), -EINVAL);
    assert_non_null(strstr(err, ".chainfs"));
    free(err);
    test_tmpdir_remove(dir);
}

/* ---- the tree ---------------------------------------------------------------- */

static void test_routing(void **state)
{
    (void)state;
    struct fx *f = fleet_up(false);
    assert_int_equal(cfs_fleet_n_hosts(f->fleet), 2);
    int rc;
    char **root = list_path(f->fleet, "/", &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(cfs_strv_len(root), 2);
    assert_string_equal(root[0], "alpha");
    assert_string_equal(root[1], "beta");
    cfs_strv_free(root);
    char **a = list_path(f->fleet, "/alpha", &rc);
    assert_int_equal(rc, 0);
    assert_true(cfs_strv_contains(a, "vm1"));
    assert_false(cfs_strv_contains(a, "vm2"));
    cfs_strv_free(a);
    char **b = list_path(f->fleet, "/beta/", &rc);
    assert_int_equal(rc, 0);
    assert_true(cfs_strv_contains(b, "vm2"));
    assert_false(cfs_strv_contains(b, "vm1"));
    cfs_strv_free(b);

    struct cfs_engine *e;
    struct cfs_path p;
    assert_int_equal(cfs_fleet_resolve(f->fleet, "/beta/vm2/vda/chain", &e, &p), 0);
    assert_ptr_equal(e, cfs_fleet_engine(f->fleet, 1));
    assert_int_equal(p.kind, CFS_NODE_CHAIN);
    assert_string_equal(p.dom, "vm2");
    assert_string_equal(cfs_fleet_engine_host(f->fleet, e), "beta");
    assert_int_equal(cfs_fleet_resolve(f->fleet, "/alpha", &e, &p), 0);
    assert_int_equal(p.kind, CFS_NODE_ROOT);
    assert_ptr_equal(e, cfs_fleet_engine(f->fleet, 0));
    /* no such host; chainfs's own directory is the mount's only */
    assert_int_equal(cfs_fleet_resolve(f->fleet, "/gamma/vm1", &e, &p), -ENOENT);
    assert_int_equal(cfs_fleet_resolve(f->fleet, "/alpha/.chainfs/metrics.prom", &e, &p),
                     -ENOENT);
    assert_int_equal(cfs_fleet_resolve(f->fleet, "/.chainfs/metrics.prom", &e, &p), 0);
    assert_null(e);
    assert_int_equal(p.kind, CFS_NODE_METRICS);
    struct cfs_node_attr at;
    assert_int_equal(cfs_fleet_resolve(f->fleet, "/", &e, &p), 0);
    assert_null(e);
    assert_int_equal(cfs_fleet_getattr(f->fleet, e, &p, &at), 0);
    assert_true(at.is_dir);
    assert_int_equal(at.nlink, 4);

    /* a chain is its host's: vm1's file on alpha only */
    char *chain = read_path(f->fleet, "/alpha/vm1/vda/chain", &rc);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(chain, f->paths[0]));
    free(chain);
    assert_null(read_path(f->fleet, "/beta/vm1/vda/chain", &rc));
    assert_int_equal(rc, -ENOENT);

    /* a change on one host moves the generation */
    unsigned long g = cfs_fleet_generation(f->fleet);
    assert_int_equal(cfs_engine_mkdir(cfs_fleet_engine(f->fleet, 1), "vm2", "vda", "s1"), 0);
    assert_true(cfs_fleet_generation(f->fleet) > g);
    fleet_down(f);
}

/* One host: no host level, the engine's own tree; state in STATE_DIR. */
static void test_one_host(void **state)
{
    (void)state;
    char dir[64] = "/tmp/cfs-fleet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char img[128];
    snprintf(img, sizeof(img), "%s/vm1.qcow2", dir);
    touch(img);
    struct cfs_backend *be = cfs_fake_backend_new();
    const char *chain[] = {img};
    cfs_fake_add_simple(be, "vm1", CFS_DOM_RUNNING, "vda", chain, NULL, 1);
    struct cfs_fleet_host h = {.uri = "qemu:///system", .be = be};
    struct cfs_engine_config cfg = {.state_dir = dir};
    struct cfs_fleet *fl;
    char *err = NULL;
    assert_int_equal(cfs_fleet_new(&cfg, &h, 1, &fl, &err), 0);
    assert_int_equal(cfs_fleet_start(fl, false, &err), 0);
    assert_string_equal(cfs_fleet_host_name(fl, 0), "");
    int rc;
    char **root = list_path(fl, "/", &rc);
    assert_int_equal(rc, 0);
    assert_true(cfs_strv_contains(root, "vm1"));
    cfs_strv_free(root);
    struct cfs_engine *e;
    struct cfs_path p;
    assert_int_equal(cfs_fleet_resolve(fl, "/.chainfs/metrics.prom", &e, &p), 0);
    assert_non_null(e); /* the engine's own, as before */
    char *m = read_path(fl, "/.chainfs/metrics.prom", &rc);
    assert_int_equal(rc, 0);
    assert_null(strstr(m, "host=\""));
    assert_non_null(strstr(m, "chainfs_libvirt_up 1\n"));
    free(m);
    char lock[128];
    snprintf(lock, sizeof(lock), "%s/lock", dir);
    assert_int_equal(access(lock, F_OK), 0);
    cfs_fleet_free(fl);
    test_tmpdir_remove(dir);
}

/* ---- state --------------------------------------------------------------- */

static void test_state_dirs(void **state)
{
    (void)state;
    struct fx *f = fleet_up(false);
    char p[256];
    snprintf(p, sizeof(p), "%s/state/lock", f->dir);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof(p), "%s/state/hosts/alpha", f->dir);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof(p), "%s/state/hosts/beta", f->dir);
    assert_int_equal(access(p, F_OK), 0);
    /* one mount per state directory */
    struct cfs_fleet_host again[2] = {
        {.name = "alpha", .be = cfs_fake_backend_new()},
        {.name = "beta", .be = cfs_fake_backend_new()},
    };
    snprintf(p, sizeof(p), "%s/state", f->dir);
    struct cfs_engine_config cfg = {.state_dir = p};
    struct cfs_fleet *fl = NULL;
    char *err = NULL;
    assert_int_equal(cfs_fleet_new(&cfg, again, 2, &fl, &err), -EBUSY);
    assert_non_null(strstr(err, "in use"));
    free(err);
    fleet_down(f);
}

/* A one-host journal with open entries: several hosts refuse to start. */
static void test_single_journal_refused(void **state)
{
    (void)state;
    char dir[64] = "/tmp/cfs-fleet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct cfs_journal *j;
    char **warn = NULL;
    assert_int_equal(cfs_journal_open(dir, &j, &warn), 0);
    struct cfs_journal_entry en = {
        .id = "1700000000-42-1", .type = CFS_JOB_COMMIT, .domain = "vm1",
        .disk = "vda", .snapshot = "s1", .top = "/x/top.qcow2",
        .base = "/x/base.qcow2", .phase = "running", .created = 1700000000,
        .updated = 1700000001,
    };
    assert_int_equal(cfs_journal_put(j, &en), 0);
    cfs_journal_free(j);
    struct cfs_fleet_host hosts[2] = {
        {.name = "a", .be = cfs_fake_backend_new()},
        {.name = "b", .be = cfs_fake_backend_new()},
    };
    struct cfs_engine_config cfg = {.state_dir = dir};
    struct cfs_fleet *fl = NULL;
    char *err = NULL;
    assert_int_equal(cfs_fleet_new(&cfg, hosts, 2, &fl, &err), -EINVAL);
    char want[128];
    snprintf(want, sizeof(want), "%s/journal", dir);
    assert_non_null(strstr(err, want));
    free(err);
    test_tmpdir_remove(dir);
}

static char *warned;

static void warn_sink(int prio, const char *line, void *opaque)
{
    (void)opaque;
    if (prio > LOG_WARNING)
        return;
    char *n = cfs_xasprintf("%s%s\n", warned ? warned : "", line);
    free(warned);
    warned = n;
}

/* The journal of a host not given (several hosts, or one) is logged and
 * left alone. */
static void test_other_host_journal_warned(void **state)
{
    (void)state;
    char dir[64] = "/tmp/cfs-fleet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char gamma[128];
    snprintf(gamma, sizeof(gamma), "%s/hosts/gamma", dir);
    char hosts[128];
    snprintf(hosts, sizeof(hosts), "%s/hosts", dir);
    assert_int_equal(mkdir(hosts, 0700), 0);
    struct cfs_journal *j;
    char **warn = NULL;
    assert_int_equal(cfs_journal_open(gamma, &j, &warn), 0);
    struct cfs_journal_entry en = {
        .id = "1700000000-42-1", .type = CFS_JOB_COMMIT, .domain = "vm1",
        .disk = "vda", .snapshot = "s1", .top = "/x/top.qcow2",
        .base = "/x/base.qcow2", .phase = "running", .created = 1700000000,
        .updated = 1700000001,
    };
    assert_int_equal(cfs_journal_put(j, &en), 0);
    cfs_journal_free(j);
    cfs_log_set_sink(warn_sink, NULL);
    for (size_t n = 1; n <= 2; n++) {
        struct cfs_fleet_host h[2] = {
            {.name = "a", .be = cfs_fake_backend_new()},
            {.name = "b", .be = cfs_fake_backend_new()},
        };
        struct cfs_engine_config cfg = {.state_dir = dir};
        struct cfs_fleet *fl = NULL;
        char *err = NULL;
        if (n == 1)
            h[1].be->ops->destroy(h[1].be); /* not given */
        assert_int_equal(cfs_fleet_new(&cfg, h, n, &fl, &err), 0);
        assert_non_null(warned);
        assert_non_null(strstr(warned, "hosts/gamma/journal has 1 open entry of host gamma"));
        free(warned);
        warned = NULL;
        cfs_fleet_free(fl);
    }
    cfs_log_set_sink(NULL, NULL);
    /* left alone */
    assert_int_equal(cfs_journal_open(gamma, &j, &warn), 0);
    struct cfs_journal_entry *v;
    size_t nv;
    assert_int_equal(cfs_journal_list(j, &v, &nv), 0);
    assert_int_equal(nv, 1);
    cfs_journal_entries_free(v, nv);
    cfs_journal_free(j);
    test_tmpdir_remove(dir);
}

/* ---- a host down at start ------------------------------------------------- */

static void test_host_down_at_start(void **state)
{
    (void)state;
    struct fx *f = fleet_up(true);
    struct cfs_engine *alpha = cfs_fleet_engine(f->fleet, 0);
    struct cfs_engine *beta = cfs_fleet_engine(f->fleet, 1);
    int rc;
    /* beta: empty and stale; its changes ENOTCONN */
    char **b = list_path(f->fleet, "/beta", &rc);
    assert_int_equal(rc, 0);
    assert_null(b);
    assert_true(cfs_engine_tree(beta)->stale);
    assert_int_equal(cfs_engine_mkdir(beta, "vm2", "vda", "s1"), -ENOTCONN);
    /* alpha works */
    assert_false(cfs_engine_tree(alpha)->stale);
    assert_int_equal(cfs_engine_mkdir(alpha, "vm1", "vda", "s1"), 0);
    char *m = read_path(f->fleet, "/.chainfs/metrics.prom", &rc);
    assert_non_null(strstr(m, "chainfs_libvirt_up{host=\"alpha\"} 1\n"));
    assert_non_null(strstr(m, "chainfs_libvirt_up{host=\"beta\"} 0\n"));
    free(m);

    /* beta answers: connected, read, not stale, changes work */
    cfs_fake_set_reachable(f->be[1], true);
    cfs_engine_run_pending(beta);
    assert_false(cfs_engine_tree(beta)->stale);
    b = list_path(f->fleet, "/beta", &rc);
    assert_true(cfs_strv_contains(b, "vm2"));
    cfs_strv_free(b);
    assert_int_equal(cfs_engine_mkdir(beta, "vm2", "vda", "s1"), 0);

    /* and goes away again: stale, ENOTCONN, alpha untouched */
    cfs_fake_set_reachable(f->be[1], false);
    cfs_engine_run_pending(beta);
    assert_true(cfs_engine_tree(beta)->stale);
    assert_int_equal(cfs_engine_mkdir(beta, "vm2", "vda", "s2"), -ENOTCONN);
    char *chain = read_path(f->fleet, "/beta/vm2/vda/chain", &rc);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(chain, "stale:"));
    free(chain);
    chain = read_path(f->fleet, "/alpha/vm1/vda/chain", &rc);
    assert_null(strstr(chain, "stale:"));
    free(chain);
    assert_int_equal(cfs_engine_mkdir(alpha, "vm1", "vda", "s2"), 0);
    fleet_down(f);
}

/* The journal of a host down at start is taken up once it answers. */
static void test_down_host_recovers_journal(void **state)
{
    (void)state;
    struct fx *f = fleet_up(false);
    struct cfs_engine *beta = cfs_fleet_engine(f->fleet, 1);
    assert_int_equal(cfs_engine_mkdir(beta, "vm2", "vda", "s1"), 0);
    cfs_engine_run_pending(beta);
    assert_int_equal(cfs_engine_mkdir(beta, "vm2", "vda", "s2"), 0);
    assert_int_equal(cfs_engine_rmdir(beta, "vm2", "vda", "s1"), 0);
    cfs_engine_run_pending(beta);
    assert_true(cfs_fake_has_job(f->be[1], "vm2", "vda"));
    /* "chainfs restarts" with beta unreachable: keep beta's fake */
    char dir[64];
    strcpy(dir, f->dir);
    cfs_fleet_free(f->fleet);
    f->fleet = NULL;
    /* (the fake backend was destroyed with its engine: a new one that
     * still has the job, as libvirtd would) */
    struct cfs_backend *nb = cfs_fake_backend_new();
    const char *chain[] = {f->paths[1]};
    cfs_fake_add_simple(nb, "vm2", CFS_DOM_RUNNING, "vda", chain, NULL, 1);
    cfs_fake_set_reachable(nb, false);
    struct cfs_fleet_host hosts[2] = {
        {.name = "alpha", .be = cfs_fake_backend_new()},
        {.name = "beta", .be = nb},
    };
    char state_dir[128];
    snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
    struct cfs_engine_config cfg = {.state_dir = state_dir};
    char *err = NULL;
    assert_int_equal(cfs_fleet_new(&cfg, hosts, 2, &f->fleet, &err), 0);
    assert_int_equal(cfs_fleet_start(f->fleet, false, &err), 0);
    beta = cfs_fleet_engine(f->fleet, 1);
    int rc;
    /* not read yet: nothing shown */
    assert_null(read_path(f->fleet, "/beta/vm2/vda/job", &rc));
    cfs_fake_set_reachable(nb, true);
    cfs_engine_run_pending(beta);
    char *job = read_path(f->fleet, "/beta/vm2/vda/job", &rc);
    assert_int_equal(rc, 0);
    /* the journal's merge was taken up on beta once it answered (the
     * new fake has no such job: it ended while chainfs was away) */
    assert_non_null(strstr(job, "type:      commit"));
    assert_non_null(strstr(job, "snapshot:  s1"));
    assert_null(strstr(job, "stale:"));
    free(job);
    fleet_down(f);
}

/* ---- metrics and logs ------------------------------------------------------ */

static void test_metrics_labels(void **state)
{
    (void)state;
    struct fx *f = fleet_up(false);
    int rc;
    char *m = read_path(f->fleet, "/.chainfs/metrics.prom", &rc);
    assert_int_equal(rc, 0);
    /* one HELP and TYPE per family, every series labelled */
    const char *fam = "# TYPE chainfs_domains gauge\n";
    char *first = strstr(m, fam);
    assert_non_null(first);
    assert_null(strstr(first + 1, fam));
    assert_non_null(strstr(m, "chainfs_domains{host=\"alpha\"} 1\n"));
    assert_non_null(strstr(m, "chainfs_domains{host=\"beta\"} 1\n"));
    assert_non_null(strstr(m, "chainfs_jobs_started_total{host=\"beta\",type=\"snapshot\"} 0\n"));
    assert_null(strstr(m, "\nchainfs_domains "));
    free(m);
    fleet_down(f);
}

static __thread char *captured;
static pthread_mutex_t cap_lock = PTHREAD_MUTEX_INITIALIZER;
static char *cap_all;

static void sink(int prio, const char *line, void *opaque)
{
    (void)prio;
    (void)opaque;
    pthread_mutex_lock(&cap_lock);
    char *n = cfs_xasprintf("%s%s\n", cap_all ? cap_all : "", line);
    free(cap_all);
    cap_all = n;
    pthread_mutex_unlock(&cap_lock);
}

static void test_log_prefix(void **state)
{
    (void)state;
    (void)captured;
    cfs_log_set_sink(sink, NULL);
    struct fx *f = fleet_up(true);
    /* the start-up of beta said so under its name, and the caller's
     * thread is back to no host */
    assert_null(cfs_log_context());
    assert_non_null(strstr(cap_all, "host beta: cannot connect to libvirt"));
    cfs_log_set_context("alpha");
    log_warn("a line");
    cfs_log_set_context(NULL);
    log_warn("no host");
    assert_non_null(strstr(cap_all, "host alpha: a line\n"));
    assert_non_null(strstr(cap_all, "\nno host\n"));
    cfs_log_set_sink(NULL, NULL);
    free(cap_all);
    cap_all = NULL;
    fleet_down(f);
}

/* Threads: both engines started at once, each with its threads. */
static void test_threaded_start(void **state)
{
    (void)state;
    char dir[64] = "/tmp/cfs-fleet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct cfs_fleet_host hosts[2] = {
        {.name = "a", .be = cfs_fake_backend_new()},
        {.name = "b", .be = cfs_fake_backend_new()},
    };
    cfs_fake_set_reachable(hosts[1].be, false);
    struct cfs_engine_config cfg = {.state_dir = dir, .refresh_ms = 100};
    struct cfs_fleet *fl;
    char *err = NULL;
    assert_int_equal(cfs_fleet_new(&cfg, hosts, 2, &fl, &err), 0);
    assert_int_equal(cfs_fleet_start(fl, true, &err), 0);
    assert_true(cfs_engine_tree(cfs_fleet_engine(fl, 1))->stale);
    cfs_fake_set_reachable(hosts[1].be, true);
    bool up = false;
    struct cfs_tree *t = cfs_engine_tree(cfs_fleet_engine(fl, 1));
    for (int i = 0; i < 100 && !up; i++) {
        usleep(20000);
        pthread_mutex_lock(&t->lock);
        up = !t->stale;
        pthread_mutex_unlock(&t->lock);
    }
    assert_true(up);
    cfs_fleet_free(fl);
    test_tmpdir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_connect),
        cmocka_unit_test(test_default_name),
        cmocka_unit_test(test_names_refused),
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_one_host),
        cmocka_unit_test(test_state_dirs),
        cmocka_unit_test(test_single_journal_refused),
        cmocka_unit_test(test_other_host_journal_warned),
        cmocka_unit_test(test_host_down_at_start),
        cmocka_unit_test(test_down_host_recovers_journal),
        cmocka_unit_test(test_metrics_labels),
        cmocka_unit_test(test_log_prefix),
        cmocka_unit_test(test_threaded_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
