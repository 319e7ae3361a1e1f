/* test_fake.c — the in-memory backend: domains, snapshots, each job
 * stepping function and the events it fires, libvirt's refusals, error
 * injection, call counting, callbacks that call back into the ops,
 * concurrent callers, the light read, bandwidth, and jobs chainfs did not
 * start. */

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "chainfs/backend.h"
#include "fake.h"
#include "chainfs/util.h"

#define MiB (1024ULL * 1024)

/* ---- event recorder ---------------------------------------------------------- */

#define MAX_EVENTS 64

struct recorded {
    enum { R_DOMAIN, R_BLOCK_JOB, R_CONNECTION } kind;
    char dom[64];
    char disk[16];
    enum cfs_job_type type;
    enum cfs_job_event status;
    /* What the callback saw when it called back into the backend. */
    int reread;
    struct cfs_job_progress progress;
};

struct fixture {
    struct cfs_backend *be;
    pthread_mutex_t lock;
    struct recorded events[MAX_EVENTS];
    size_t n_events;
    size_t total_events; /* not capped at MAX_EVENTS */
    bool call_back; /* callbacks re-enter the backend */
};

static void on_domain_changed(void *opaque, const char *dom)
{
    struct fixture *fx = opaque;
    struct recorded r = { .kind = R_DOMAIN };

    snprintf(r.dom, sizeof(r.dom), "%s", dom);
    if (fx->call_back) {
        struct cfs_domain *d = NULL;

        r.reread = fx->be->ops->read_domain(fx->be, dom, &d);
        cfs_domain_free(d);
    }
    pthread_mutex_lock(&fx->lock);
    if (fx->n_events < MAX_EVENTS)
        fx->events[fx->n_events++] = r;
    fx->total_events++;
    pthread_mutex_unlock(&fx->lock);
}

static void on_block_job(void *opaque, const char *dom, const char *disk,
                         enum cfs_job_type type, enum cfs_job_event status)
{
    struct fixture *fx = opaque;
    struct recorded r = { .kind = R_BLOCK_JOB, .type = type, .status = status };

    snprintf(r.dom, sizeof(r.dom), "%s", dom);
    snprintf(r.disk, sizeof(r.disk), "%s", disk);
    if (fx->call_back)
        r.reread = fx->be->ops->job_get(fx->be, dom, disk, &r.progress);
    pthread_mutex_lock(&fx->lock);
    if (fx->n_events < MAX_EVENTS)
        fx->events[fx->n_events++] = r;
    fx->total_events++;
    pthread_mutex_unlock(&fx->lock);
}

static void on_connection(void *opaque, bool up)
{
    (void)opaque;
    (void)up;
}

static const struct cfs_backend_events recorder_events = {
    .domain_changed = on_domain_changed,
    .block_job = on_block_job,
    .connection = on_connection,
};

static size_t n_events(struct fixture *fx)
{
    size_t n;

    pthread_mutex_lock(&fx->lock);
    n = fx->n_events;
    pthread_mutex_unlock(&fx->lock);
    return n;
}

static void clear_events(struct fixture *fx)
{
    pthread_mutex_lock(&fx->lock);
    fx->n_events = 0;
    fx->total_events = 0;
    pthread_mutex_unlock(&fx->lock);
}

static void assert_block_event(struct fixture *fx, size_t i, const char *dom,
                               const char *disk, enum cfs_job_type type,
                               enum cfs_job_event status)
{
    assert_true(i < fx->n_events);
    assert_int_equal(fx->events[i].kind, R_BLOCK_JOB);
    assert_string_equal(fx->events[i].dom, dom);
    assert_string_equal(fx->events[i].disk, disk);
    assert_int_equal(fx->events[i].type, type);
    assert_int_equal(fx->events[i].status, status);
}

static const char *const chain3[] = {
    "/img/vm1.vda.s2.qcow2", "/img/vm1.vda.s1.qcow2", "/img/base.qcow2",
};
static const char *const meta3[] = { "s2", "s1", NULL };

static int setup(void **state)
{
    struct fixture *fx = cfs_xcalloc(1, sizeof(*fx));

    pthread_mutex_init(&fx->lock, NULL);
    fx->be = cfs_fake_backend_new();
    fx->call_back = true;
    assert_int_equal(fx->be->ops->connect(fx->be, &recorder_events, fx), 0);
    cfs_fake_add_simple(fx->be, "vm1", CFS_DOM_RUNNING, "vda", chain3, meta3,
                        3);
    clear_events(fx);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    fx->be->ops->destroy(fx->be);
    pthread_mutex_destroy(&fx->lock);
    free(fx);
    return 0;
}

static struct cfs_domain *read_ok(struct cfs_backend *be, const char *dom)
{
    struct cfs_domain *d = NULL;

    assert_int_equal(be->ops->read_domain(be, dom, &d), 0);
    assert_non_null(d);
    return d;
}

static void assert_chain(struct cfs_backend *be, const char *dom,
                         const char *disk, const char *const *paths, size_t n)
{
    struct cfs_domain *d = read_ok(be, dom);
    struct cfs_disk *dk = cfs_domain_find_disk(d, disk);

    assert_non_null(dk);
    assert_int_equal(dk->n_layers, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(dk->layers[i].path, paths[i]);
    cfs_domain_free(d);
}

static struct cfs_job_progress job_of(struct cfs_backend *be, const char *dom,
                                      const char *disk)
{
    struct cfs_job_progress p;

    assert_int_equal(be->ops->job_get(be, dom, disk, &p), 0);
    return p;
}

/* ---- domains -------------------------------------------------------------------- */

static void test_domains(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_domain *d = read_ok(be, "vm1");
    char **names = NULL;

    assert_string_equal(be->ops->name, "fake");
    assert_string_equal(d->name, "vm1");
    assert_int_equal(d->state, CFS_DOM_RUNNING);
    assert_true(d->persistent);
    assert_int_equal(strlen(d->uuid), 36);
    assert_int_equal(d->n_disks, 1);
    assert_string_equal(d->disks[0].target, "vda");
    assert_int_equal(d->disks[0].n_layers, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(d->disks[0].layers[i].path, chain3[i]);
        assert_string_equal(d->disks[0].layers[i].format, "qcow2");
        assert_int_equal(d->disks[0].layers[i].virtual_size, 64 * MiB);
        assert_true(cfs_streq(d->disks[0].layers[i].meta_name, meta3[i]));
    }
    assert_int_equal(cfs_strv_len(d->snapshots), 2);
    assert_true(cfs_strv_contains(d->snapshots, "s1"));
    assert_true(cfs_strv_contains(d->snapshots, "s2"));

    /* A copy: changing it changes nothing in the fake. */
    free(d->disks[0].layers[0].path);
    d->disks[0].layers[0].path = cfs_xstrdup("/elsewhere");
    cfs_domain_free(d);
    assert_chain(be, "vm1", "vda", chain3, 3);

    /* put_domain adds or replaces, and fires domain_changed. */
    const char *const one[] = { "/img/other.qcow2" };
    cfs_fake_add_simple(be, "vm2", CFS_DOM_SHUTOFF, "sda", one, NULL, 1);
    assert_int_equal(n_events(fx), 1);
    assert_int_equal(fx->events[0].kind, R_DOMAIN);
    assert_string_equal(fx->events[0].dom, "vm2");
    assert_int_equal(fx->events[0].reread, 0); /* callback re-entered */
    d = read_ok(be, "vm2");
    assert_null(d->snapshots);
    assert_int_equal(d->state, CFS_DOM_SHUTOFF);
    d->state = CFS_DOM_RUNNING;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    d = read_ok(be, "vm2");
    assert_int_equal(d->state, CFS_DOM_RUNNING);
    cfs_domain_free(d);

    assert_int_equal(be->ops->list_domains(be, &names), 0);
    assert_int_equal(cfs_strv_len(names), 2);
    assert_string_equal(names[0], "vm1");
    assert_string_equal(names[1], "vm2");
    cfs_strv_free(names);

    clear_events(fx);
    cfs_fake_remove_domain(be, "vm2");
    assert_int_equal(n_events(fx), 1);
    assert_string_equal(fx->events[0].dom, "vm2");
    assert_int_equal(fx->events[0].reread, -ENOENT);
    cfs_fake_remove_domain(be, "vm2"); /* absent: nothing */
    assert_int_equal(n_events(fx), 1);

    d = (struct cfs_domain *)1;
    assert_int_equal(be->ops->read_domain(be, "vm2", &d), -ENOENT);
    assert_null(d);
    assert_non_null(strstr(cfs_backend_errmsg(), "vm2"));

    cfs_fake_remove_domain(be, "vm1");
    assert_int_equal(be->ops->list_domains(be, &names), 0);
    assert_non_null(names);
    assert_null(names[0]);
    cfs_strv_free(names);
}

/* ---- snapshots ---------------------------------------------------------------- */

static void test_snapshot_create(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    const char *const other[] = { "/img/vm9.top.qcow2", "/img/vm9.qcow2" };
    struct cfs_domain *d;

    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "s3",
                                              "/img/vm1.vda.s3.qcow2"),
                     0);
    d = read_ok(be, "vm1");
    assert_int_equal(d->disks[0].n_layers, 4);
    assert_string_equal(d->disks[0].layers[0].path, "/img/vm1.vda.s3.qcow2");
    assert_string_equal(d->disks[0].layers[0].format, "qcow2");
    assert_string_equal(d->disks[0].layers[0].meta_name, "s3");
    assert_int_equal(d->disks[0].layers[0].virtual_size, 64 * MiB);
    assert_string_equal(d->disks[0].layers[1].path, chain3[0]);
    assert_true(cfs_strv_contains(d->snapshots, "s3"));
    cfs_domain_free(d);
    /* libvirt fires no event for a snapshot. */
    assert_int_equal(n_events(fx), 0);

    /* Refusals, each leaving a message and changing nothing. */
    assert_int_equal(be->ops->snapshot_create(be, "nope", "vda", "x", "/x"),
                     -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "nope"));
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vdz", "x", "/x"),
                     -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "vdz"));
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "s1", "/x"),
                     -EEXIST);
    assert_non_null(strstr(cfs_backend_errmsg(), "s1"));
    /* The overlay path is used by any chain of any domain. */
    cfs_fake_add_simple(be, "vm9", CFS_DOM_SHUTOFF, "vdb", other, NULL, 2);
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "new",
                                              "/img/vm9.qcow2"),
                     -EEXIST);
    assert_non_null(strstr(cfs_backend_errmsg(), "/img/vm9.qcow2"));
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "new",
                                              chain3[2]),
                     -EEXIST);
    /* Another disk's snapshot names count too (names are per domain). */
    d = read_ok(be, "vm1");
    assert_int_equal(d->disks[0].n_layers, 4);
    d->disks = cfs_xrealloc(d->disks, 2 * sizeof(*d->disks));
    d->disks[1] = (struct cfs_disk){
        .target = cfs_xstrdup("vdb"),
        .n_layers = 1,
        .layers = cfs_xcalloc(1, sizeof(struct cfs_layer)),
    };
    d->disks[1].layers[0].path = cfs_xstrdup("/img/data.raw");
    d->disks[1].layers[0].format = cfs_xstrdup("raw");
    d->disks[1].layers[0].virtual_size = 8 * MiB;
    d->n_disks = 2;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vdb", "s3",
                                              "/img/data.s3.qcow2"),
                     -EEXIST);
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vdb", "d1",
                                              "/img/data.d1.qcow2"),
                     0);
    d = read_ok(be, "vm1");
    assert_int_equal(d->disks[0].n_layers, 4); /* other disk untouched */
    assert_int_equal(d->disks[1].n_layers, 2);
    assert_int_equal(d->disks[1].layers[0].virtual_size, 8 * MiB);
    assert_string_equal(d->disks[1].layers[1].format, "raw");
    cfs_domain_free(d);

    /* A shut-off domain takes snapshots too. */
    assert_int_equal(be->ops->snapshot_create(be, "vm9", "vdb", "off1",
                                              "/img/vm9.off1.qcow2"),
                     0);
    const char *const after[] = { "/img/vm9.off1.qcow2", other[0], other[1] };
    assert_chain(be, "vm9", "vdb", after, 3);

    /* A read-only disk cannot be snapshotted. */
    d = read_ok(be, "vm9");
    d->disks[0].readonly = true;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    assert_int_equal(be->ops->snapshot_create(be, "vm9", "vdb", "ro",
                                              "/img/ro.qcow2"),
                     -EROFS);

    /* A disk with a block job is busy. */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda",
                                           "/img/vm1.vda.s3.qcow2", chain3[0],
                                           true, 0),
                     0);
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "busy",
                                              "/img/busy.qcow2"),
                     -EBUSY);
    assert_non_null(strstr(cfs_backend_errmsg(), "vda"));
    d = read_ok(be, "vm1");
    assert_false(cfs_strv_contains(d->snapshots, "busy"));
    cfs_domain_free(d);
}

static void test_snapshot_forget(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_domain *d;

    assert_int_equal(be->ops->snapshot_forget(be, "vm1", "vda", "s1"), 0);
    d = read_ok(be, "vm1");
    assert_int_equal(cfs_strv_len(d->snapshots), 1);
    assert_string_equal(d->snapshots[0], "s2");
    assert_null(d->disks[0].layers[1].meta_name);
    assert_string_equal(d->disks[0].layers[0].meta_name, "s2");
    assert_int_equal(d->disks[0].n_layers, 3); /* no data touched */
    cfs_domain_free(d);

    assert_int_equal(be->ops->snapshot_forget(be, "vm1", "vda", "s1"), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "s1"));
    assert_int_equal(be->ops->snapshot_forget(be, "nope", "vda", "s2"), -ENOENT);
    assert_int_equal(be->ops->snapshot_forget(be, "vm1", "vda", "s2"), 0);
    d = read_ok(be, "vm1");
    assert_int_equal(cfs_strv_len(d->snapshots), 0);
    cfs_domain_free(d);
    assert_int_equal(n_events(fx), 0);
}

/* ---- live commits --------------------------------------------------------------- */

static void test_commit_refusals(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;

    assert_int_equal(be->ops->commit_start(be, "nope", "vda", chain3[0],
                                           chain3[1], true, 0),
                     -ENOENT);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vdz", chain3[0],
                                           chain3[1], true, 0),
                     -ENOENT);
    /* Base is top, unknown layers, base above top (a base several layers
     * below is a run: test_commit_run). */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[0], true, 0),
                     -EINVAL);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", "/nope",
                                           chain3[1], true, 0),
                     -EINVAL);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[0], false, 0),
                     -EINVAL);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[2], NULL,
                                           false, 0),
                     -EINVAL);
    /* ACTIVE must match whether top is layer 0. */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[1], false, 0),
                     -EINVAL);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[2], true, 0),
                     -EINVAL);
    assert_non_null(strstr(cfs_backend_errmsg(), "not active"));

    /* One job per disk. */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[2], false, 0),
                     0);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[1], true, 0),
                     -EBUSY);

    /* A live commit needs a running domain. */
    cfs_fake_add_simple(be, "off", CFS_DOM_SHUTOFF, "vda", chain3, NULL, 3);
    assert_int_equal(be->ops->commit_start(be, "off", "vda", chain3[0],
                                           chain3[1], true, 0),
                     -EINVAL);
    assert_non_null(strstr(cfs_backend_errmsg(), "domain is not running"));
    /* Paused is still active in libvirt's sense. */
    cfs_fake_add_simple(be, "paused", CFS_DOM_PAUSED, "vda", chain3, NULL, 3);
    assert_int_equal(be->ops->commit_start(be, "paused", "vda", chain3[0],
                                           chain3[1], true, 0),
                     0);

    /* No job: pivot and abort are refused (libvirt's INVALID_ARG "does
     * not have an active block job", -ENOENT as the real backend maps it). */
    assert_int_equal(be->ops->job_pivot(be, "off", "vda"), -ENOENT);
    assert_int_equal(be->ops->job_abort(be, "off", "vda"), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "does not have an active block job"));
    assert_int_equal(be->ops->job_pivot(be, "nope", "vda"), -ENOENT);
    assert_int_equal(be->ops->job_abort(be, "vm1", "vdz"), -ENOENT);
    /* An intermediate commit has no pivot (OPERATION_INVALID: -ENOENT,
     * no job that can pivot). */
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "does not support pivot"));

    struct cfs_job_progress p;
    assert_int_equal(be->ops->job_get(be, "nope", "vda", &p), -ENOENT);
    assert_false(p.present);
    assert_int_equal(be->ops->job_get(be, "vm1", "vdz", &p), -ENOENT);
    p = job_of(be, "off", "vda");
    assert_false(p.present);
    assert_int_equal(n_events(fx), 2); /* the two add_simple calls */
}

static void test_active_commit_pivot(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_job_progress p;

    p = job_of(be, "vm1", "vda");
    assert_false(p.present);

    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[1], true, 0),
                     0);
    assert_int_equal(n_events(fx), 0);
    p = job_of(be, "vm1", "vda");
    assert_true(p.present);
    assert_int_equal(p.type, CFS_JOB_ACTIVE_COMMIT);
    assert_int_equal(p.cur, 0);
    assert_int_equal(p.end, 64 * MiB);
    assert_false(p.ready);

    cfs_fake_job_progress(be, "vm1", "vda", 10 * MiB, 64 * MiB);
    p = job_of(be, "vm1", "vda");
    assert_int_equal(p.cur, 10 * MiB);
    assert_false(p.ready);
    assert_int_equal(n_events(fx), 0);

    /* Not ready: pivot refused with EAGAIN, nothing changes. */
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -EAGAIN);
    assert_non_null(strstr(cfs_backend_errmsg(), "not ready"));
    assert_chain(be, "vm1", "vda", chain3, 3);

    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(n_events(fx), 1);
    assert_block_event(fx, 0, "vm1", "vda", CFS_JOB_ACTIVE_COMMIT,
                       CFS_JOB_EVENT_READY);
    /* The callback could read the job (no lock held) and saw it ready. */
    assert_int_equal(fx->events[0].reread, 0);
    assert_true(fx->events[0].progress.present);
    assert_true(fx->events[0].progress.ready);
    p = job_of(be, "vm1", "vda");
    assert_true(p.ready);
    assert_int_equal(p.cur, p.end);

    /* libvirt may still say "not ready" after READY. */
    cfs_fake_pivot_not_ready(be, 2);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -EAGAIN);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -EAGAIN);
    assert_chain(be, "vm1", "vda", chain3, 3);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), 0);

    assert_int_equal(n_events(fx), 2);
    assert_block_event(fx, 1, "vm1", "vda", CFS_JOB_ACTIVE_COMMIT,
                       CFS_JOB_EVENT_COMPLETED);
    assert_false(fx->events[1].progress.present); /* job gone before event */
    assert_chain(be, "vm1", "vda", chain3 + 1, 2);
    p = job_of(be, "vm1", "vda");
    assert_false(p.present);
    /* The metadata stays until snapshot_forget, as in libvirt. */
    struct cfs_domain *d = read_ok(be, "vm1");
    assert_true(cfs_strv_contains(d->snapshots, "s2"));
    cfs_domain_free(d);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -ENOENT);
    assert_int_equal(cfs_fake_calls(be, "job_pivot"), 5);
}

static void test_pivot_not_ready_counts_only_ready_pivots(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;

    cfs_fake_pivot_not_ready(be, 1);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[1], true, 0),
                     0);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -EAGAIN);
    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -EAGAIN);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), 0);
}

static void test_intermediate_commit_complete(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_job_progress p;

    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[2], false, 0),
                     0);
    p = job_of(be, "vm1", "vda");
    assert_true(p.present);
    assert_int_equal(p.type, CFS_JOB_COMMIT);
    assert_int_equal(p.end, 64 * MiB);

    /* READY is for active commits only. */
    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(n_events(fx), 0);
    p = job_of(be, "vm1", "vda");
    assert_false(p.ready);

    cfs_fake_job_progress(be, "vm1", "vda", 32 * MiB, 64 * MiB);
    p = job_of(be, "vm1", "vda");
    assert_int_equal(p.cur, 32 * MiB);

    cfs_fake_job_complete(be, "vm1", "vda");
    assert_int_equal(n_events(fx), 1);
    assert_block_event(fx, 0, "vm1", "vda", CFS_JOB_COMMIT,
                       CFS_JOB_EVENT_COMPLETED);
    const char *const after[] = { chain3[0], chain3[2] };
    assert_chain(be, "vm1", "vda", after, 2);
    p = job_of(be, "vm1", "vda");
    assert_false(p.present);

    /* Stepping a disk without a job does nothing. */
    cfs_fake_job_complete(be, "vm1", "vda");
    cfs_fake_job_fail(be, "vm1", "vda");
    cfs_fake_job_ready(be, "vm1", "vda");
    cfs_fake_job_progress(be, "vm1", "vda", 1, 2);
    cfs_fake_job_vanish(be, "vm1", "vda", true);
    assert_int_equal(n_events(fx), 1);
    assert_chain(be, "vm1", "vda", after, 2);
}

/* A run (issue 8 §3.2): libvirt accepts a base several layers below TOP;
 * every layer from TOP down to the one above BASE leaves the chain. */
static void test_commit_run(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;

    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[2], true, 0),
                     0);
    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), 0);
    const char *const after[] = { chain3[2] };
    assert_chain(be, "vm1", "vda", after, 1);
    /* the offline merge still takes the layer right below only */
    cfs_fake_add_simple(be, "off", CFS_DOM_SHUTOFF, "vda", chain3, meta3, 3);
    assert_int_equal(be->ops->offline_commit(be, "off", "vda", chain3[0],
                                             chain3[2], true),
                     -EINVAL);
}

/* Layers of a running domain carry indices, as in libvirt's live XML,
 * and commit_start takes "vda[N]" for TOP and BASE as libvirt does; a
 * new overlay gets a new index, the others keep theirs. */
static void test_commit_by_index(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_domain *d = NULL;

    assert_int_equal(be->ops->read_domain(be, "vm1", &d), 0);
    const struct cfs_disk *dk = &d->disks[0];
    unsigned idx[3];
    for (size_t i = 0; i < 3; i++) {
        idx[i] = dk->layers[i].index;
        assert_int_not_equal(idx[i], 0);
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(idx[i], idx[j]);
    }
    cfs_domain_free(d);

    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "s3",
                                              "/img/vm1.vda.s3.qcow2"), 0);
    assert_int_equal(be->ops->read_domain(be, "vm1", &d), 0);
    assert_int_equal(d->disks[0].layers[1].index, idx[0]);
    unsigned s3 = d->disks[0].layers[0].index;
    assert_int_not_equal(s3, 0);
    cfs_domain_free(d);

    /* an index no layer has, and a BASE that is not right below TOP */
    char top[32], base[32], bad[32];
    snprintf(top, sizeof(top), "vda[%u]", idx[1]);
    snprintf(base, sizeof(base), "vda[%u]", idx[2]);
    snprintf(bad, sizeof(bad), "vda[%u]", s3 + 100);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", bad, base, false, 0), -EINVAL);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", top, top, false, 0), -EINVAL);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", top, base, false, 0), 0);
    cfs_fake_job_complete(be, "vm1", "vda");
    const char *const after[] = { "/img/vm1.vda.s3.qcow2", chain3[0], chain3[2] };
    assert_chain(be, "vm1", "vda", after, 3);
}

/* ---- forward merge: pull and the snapshot metadata after it ----------------------- */

static char *source_of(struct cfs_backend *be, const char *name)
{
    return cfs_fake_snapshot_source(be, "vm1", name, "vda");
}

/* Design issue8 §2.1 and §2.4 on the fake: rmdir of s2 (active) pulls s1
 * into it (base kept), then s2's metadata goes and s1 names s2's file. */
static void test_pull_complete_and_repair(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_job_progress p;
    struct cfs_domain *d;
    char *src;

    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", chain3[0], chain3[2],
                                         1 * MiB), 0);
    p = job_of(be, "vm1", "vda");
    assert_true(p.present);
    assert_int_equal(p.type, CFS_JOB_PULL);
    assert_int_equal(p.cur, 0);
    assert_int_equal(p.end, 64 * MiB); /* the whole disk (§0.6) */
    assert_int_equal(p.bandwidth, 1 * MiB);
    assert_false(p.ready);
    assert_int_equal(cfs_fake_job_bandwidth(be, "vm1", "vda"), 1 * MiB);

    /* no ready phase, no pivot */
    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(n_events(fx), 0);
    assert_false(job_of(be, "vm1", "vda").ready);
    /* as a job call on a job that cannot pivot (no such job to pivot) */
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -ENOENT);
    assert_true(job_of(be, "vm1", "vda").present);
    /* a second job on the disk */
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", chain3[0], chain3[2], 0),
                     -EBUSY);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1], chain3[2],
                                           false, 0), -EBUSY);

    cfs_fake_job_progress(be, "vm1", "vda", 16 * MiB, 64 * MiB);
    assert_int_equal(job_of(be, "vm1", "vda").cur, 16 * MiB);
    const char *const whole[] = { chain3[0], chain3[1], chain3[2] };
    assert_chain(be, "vm1", "vda", whole, 3);

    cfs_fake_job_complete(be, "vm1", "vda");
    assert_int_equal(n_events(fx), 1);
    assert_block_event(fx, 0, "vm1", "vda", CFS_JOB_PULL, CFS_JOB_EVENT_COMPLETED);
    assert_false(job_of(be, "vm1", "vda").present);
    const char *const after[] = { chain3[0], chain3[2] };
    assert_chain(be, "vm1", "vda", after, 2);

    /* libvirt's pull touches no snapshot: s1 still names the file that
     * left the chain, s2 its (surviving) overlay */
    d = read_ok(be, "vm1");
    assert_int_equal(cfs_strv_len(d->snapshots), 2);
    assert_string_equal(d->disks[0].layers[0].meta_name, "s2");
    assert_null(d->disks[0].layers[1].meta_name);
    cfs_domain_free(d);
    src = source_of(be, "s1");
    assert_string_equal(src, chain3[1]);
    free(src);

    /* §2.4 step 1: drop s2 (metadata only) */
    assert_int_equal(be->ops->snapshot_drop(be, "vm1", "s2"), 0);
    d = read_ok(be, "vm1");
    assert_int_equal(cfs_strv_len(d->snapshots), 1);
    assert_string_equal(d->snapshots[0], "s1");
    assert_null(d->disks[0].layers[0].meta_name);
    assert_int_equal(d->disks[0].n_layers, 2); /* no file, no layer touched */
    cfs_domain_free(d);
    assert_null(source_of(be, "s2"));

    /* step 2: s1 now names the active layer, which carries its name */
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s1", "vda", chain3[0]), 0);
    d = read_ok(be, "vm1");
    assert_string_equal(d->disks[0].layers[0].meta_name, "s1");
    assert_null(d->disks[0].layers[1].meta_name);
    assert_int_equal(cfs_strv_len(d->snapshots), 1);
    cfs_domain_free(d);
    src = source_of(be, "s1");
    assert_string_equal(src, chain3[0]);
    free(src);
    /* idempotent (recovery may repeat it) */
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s1", "vda", chain3[0]), 0);
    assert_chain(be, "vm1", "vda", after, 2);
    assert_int_equal(n_events(fx), 1);
}

/* A pull by libvirt's index notation, with BASE the layer right below
 * the active one (nothing leaves), and with a four-layer chain (two
 * leave); a failed or aborted pull changes no chain. */
static void test_pull_by_index_and_ends(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_domain *d = read_ok(be, "vm1");
    char top[32], base[32], next[32];

    snprintf(top, sizeof(top), "vda[%u]", d->disks[0].layers[0].index);
    snprintf(next, sizeof(next), "vda[%u]", d->disks[0].layers[1].index);
    snprintf(base, sizeof(base), "vda[%u]", d->disks[0].layers[2].index);
    cfs_domain_free(d);
    const char *const whole[] = { chain3[0], chain3[1], chain3[2] };

    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", top, base, 0), 0);
    assert_int_equal(cfs_fake_job_bandwidth(be, "vm1", "vda"), 0);
    cfs_fake_job_fail(be, "vm1", "vda");
    assert_block_event(fx, 0, "vm1", "vda", CFS_JOB_PULL, CFS_JOB_EVENT_FAILED);
    assert_chain(be, "vm1", "vda", whole, 3);

    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", top, base, 0), 0);
    assert_int_equal(be->ops->job_abort(be, "vm1", "vda"), 0);
    assert_block_event(fx, 1, "vm1", "vda", CFS_JOB_PULL, CFS_JOB_EVENT_CANCELED);
    assert_chain(be, "vm1", "vda", whole, 3);

    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", top, next, 0), 0);
    cfs_fake_job_complete(be, "vm1", "vda");
    assert_chain(be, "vm1", "vda", whole, 3);

    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "s3",
                                              "/img/vm1.vda.s3.qcow2"), 0);
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", "/img/vm1.vda.s3.qcow2",
                                         base, 0), 0);
    cfs_fake_job_vanish(be, "vm1", "vda", true);
    const char *const two_left[] = { "/img/vm1.vda.s3.qcow2", chain3[2] };
    assert_chain(be, "vm1", "vda", two_left, 2);
    /* the snapshots of the layers that left still name their files */
    char *src = source_of(be, "s2");
    assert_string_equal(src, chain3[0]);
    free(src);
    src = source_of(be, "s3");
    assert_string_equal(src, "/img/vm1.vda.s3.qcow2");
    free(src);
}

static void test_pull_refusals(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    const char *const two[] = { "/img/off.top.qcow2", "/img/off.base.qcow2" };
    const char *const whole[] = { chain3[0], chain3[1], chain3[2] };

    /* TOP must be the active layer: the caller's plan no longer holds */
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", chain3[1], chain3[2], 0),
                     -EINVAL);
    assert_non_null(strstr(cfs_backend_errmsg(), "not the active layer"));
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", "vda[999]", chain3[2], 0),
                     -EINVAL);
    /* BASE must be below the active layer */
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", chain3[0], chain3[0], 0),
                     -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "could not find"));
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", chain3[0], "/img/other.qcow2", 0),
                     -ENOENT);
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", chain3[0], NULL, 0), -EINVAL);
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", NULL, chain3[2], 0), -EINVAL);
    assert_int_equal(be->ops->pull_start(be, "nope", "vda", chain3[0], chain3[2], 0),
                     -ENOENT);
    assert_int_equal(be->ops->pull_start(be, "vm1", "vdz", chain3[0], chain3[2], 0),
                     -ENOENT);
    cfs_fake_add_simple(be, "off", CFS_DOM_SHUTOFF, "vda", two, NULL, 2);
    assert_int_equal(be->ops->pull_start(be, "off", "vda", two[0], two[1], 0), -EINVAL);
    assert_non_null(strstr(cfs_backend_errmsg(), "not running"));
    cfs_fake_fail_next(be, "pull_start", ENOSPC, "No space left on device");
    assert_int_equal(be->ops->pull_start(be, "vm1", "vda", chain3[0], chain3[2], 0),
                     -ENOSPC);
    assert_string_equal(cfs_backend_errmsg(), "No space left on device");
    assert_int_equal(cfs_fake_calls(be, "pull_start"), 10);
    assert_false(cfs_fake_has_job(be, "vm1", "vda"));
    assert_chain(be, "vm1", "vda", whole, 3);
}

static void test_snapshot_drop_retarget_refusals(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    const char *const whole[] = { chain3[0], chain3[1], chain3[2] };
    struct cfs_domain *d;
    char *src;

    assert_int_equal(be->ops->snapshot_drop(be, "vm1", "s9"), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "s9"));
    assert_int_equal(be->ops->snapshot_drop(be, "nope", "s1"), -ENOENT);
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s9", "vda", chain3[0]), -ENOENT);
    assert_int_equal(be->ops->snapshot_retarget(be, "nope", "s1", "vda", chain3[0]), -ENOENT);
    /* s1 names no file for vdb */
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s1", "vdb", chain3[0]), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "vdb"));
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s1", "vda", ""), -EINVAL);
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s1", "vda", NULL), -EINVAL);
    cfs_fake_fail_next(be, "snapshot_retarget", EIO, "internal error: boom");
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s1", "vda", chain3[0]), -EIO);
    cfs_fake_fail_next(be, "snapshot_drop", ENOTCONN, "End of file while reading data");
    assert_int_equal(be->ops->snapshot_drop(be, "vm1", "s1"), -ENOTCONN);
    d = read_ok(be, "vm1");
    assert_int_equal(cfs_strv_len(d->snapshots), 2);
    assert_string_equal(d->disks[0].layers[1].meta_name, "s1");
    cfs_domain_free(d);

    /* a source outside the chain is recorded (libvirt does not check it);
     * no layer carries s1 any more */
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s1", "vda", "/elsewhere.qcow2"), 0);
    src = source_of(be, "s1");
    assert_string_equal(src, "/elsewhere.qcow2");
    free(src);
    d = read_ok(be, "vm1");
    assert_null(d->disks[0].layers[1].meta_name);
    cfs_domain_free(d);

    /* after snapshot_forget the snapshot names nothing for vda */
    assert_int_equal(be->ops->snapshot_forget(be, "vm1", "vda", "s2"), 0);
    assert_int_equal(be->ops->snapshot_retarget(be, "vm1", "s2", "vda", chain3[0]), -ENOENT);
    assert_chain(be, "vm1", "vda", whole, 3);
    assert_int_equal(n_events(fx), 0);
}

static void test_abort_fail_vanish(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;

    /* Abort: CANCELED, chain unchanged. */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[1], true, 0),
                     0);
    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(be->ops->job_abort(be, "vm1", "vda"), 0);
    assert_int_equal(n_events(fx), 2);
    assert_block_event(fx, 1, "vm1", "vda", CFS_JOB_ACTIVE_COMMIT,
                       CFS_JOB_EVENT_CANCELED);
    assert_false(job_of(be, "vm1", "vda").present);
    assert_chain(be, "vm1", "vda", chain3, 3);

    /* Fail: FAILED, chain unchanged. */
    clear_events(fx);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[2], false, 0),
                     0);
    cfs_fake_job_fail(be, "vm1", "vda");
    assert_int_equal(n_events(fx), 1);
    assert_block_event(fx, 0, "vm1", "vda", CFS_JOB_COMMIT,
                       CFS_JOB_EVENT_FAILED);
    assert_false(job_of(be, "vm1", "vda").present);
    assert_chain(be, "vm1", "vda", chain3, 3);

    /* Vanish without completing: no event, chain unchanged. */
    clear_events(fx);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[2], false, 0),
                     0);
    cfs_fake_job_vanish(be, "vm1", "vda", false);
    assert_int_equal(n_events(fx), 0);
    assert_false(job_of(be, "vm1", "vda").present);
    assert_chain(be, "vm1", "vda", chain3, 3);

    /* Vanish after completing: no event, chain merged. */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[1], true, 0),
                     0);
    cfs_fake_job_vanish(be, "vm1", "vda", true);
    assert_int_equal(n_events(fx), 0);
    assert_false(job_of(be, "vm1", "vda").present);
    assert_chain(be, "vm1", "vda", chain3 + 1, 2);
}

static void test_domain_stop_drops_jobs(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_domain *d;

    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[2], false, 0),
                     0);
    /* virsh destroy: the domain is shut off; the job is gone. */
    d = read_ok(be, "vm1");
    d->state = CFS_DOM_SHUTOFF;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    assert_false(job_of(be, "vm1", "vda").present);
    assert_chain(be, "vm1", "vda", chain3, 3);
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "s3",
                                              "/img/s3.qcow2"),
                     0);
    /* Removing a domain drops its jobs as well. */
    d = read_ok(be, "vm1");
    d->state = CFS_DOM_RUNNING;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", "/img/s3.qcow2",
                                           chain3[0], true, 0),
                     0);
    cfs_fake_remove_domain(be, "vm1");
    cfs_fake_add_simple(be, "vm1", CFS_DOM_RUNNING, "vda", chain3, meta3, 3);
    assert_false(job_of(be, "vm1", "vda").present);
}

/* ---- offline commits --------------------------------------------------------------- */

static void test_offline_commit(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;

    /* Running: refused. */
    assert_int_equal(be->ops->offline_commit(be, "vm1", "vda", chain3[1],
                                             chain3[2], false),
                     -EINVAL);
    assert_chain(be, "vm1", "vda", chain3, 3);

    cfs_fake_add_simple(be, "off", CFS_DOM_SHUTOFF, "vda", chain3, meta3, 3);
    clear_events(fx);
    assert_int_equal(be->ops->offline_commit(be, "nope", "vda", chain3[1],
                                             chain3[2], false),
                     -ENOENT);
    assert_int_equal(be->ops->offline_commit(be, "off", "vdz", chain3[1],
                                             chain3[2], false),
                     -ENOENT);
    assert_int_equal(be->ops->offline_commit(be, "off", "vda", chain3[0],
                                             chain3[2], true),
                     -EINVAL);
    assert_int_equal(be->ops->offline_commit(be, "off", "vda", chain3[0],
                                             chain3[1], false),
                     -EINVAL);

    /* Intermediate: done at once, no event. */
    assert_int_equal(be->ops->offline_commit(be, "off", "vda", chain3[1],
                                             chain3[2], false),
                     0);
    const char *const after[] = { chain3[0], chain3[2] };
    assert_chain(be, "off", "vda", after, 2);
    assert_int_equal(n_events(fx), 0);

    /* Active: the domain's source becomes BASE, a definition change. */
    assert_int_equal(be->ops->offline_commit(be, "off", "vda", chain3[0],
                                             chain3[2], true),
                     0);
    assert_chain(be, "off", "vda", chain3 + 2, 1);
    assert_int_equal(n_events(fx), 1);
    assert_int_equal(fx->events[0].kind, R_DOMAIN);
    assert_string_equal(fx->events[0].dom, "off");
    assert_false(job_of(be, "off", "vda").present);
}

/* ---- error injection and counting ---------------------------------------------------- */

static void test_fail_next(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_domain *d = NULL;
    struct cfs_job_progress p;
    char **names = NULL;

    cfs_fake_fail_next(be, "read_domain", ENOTCONN, "End of file while reading data");
    assert_int_equal(be->ops->read_domain(be, "vm1", &d), -ENOTCONN);
    assert_null(d);
    assert_string_equal(cfs_backend_errmsg(), "End of file while reading data");
    d = read_ok(be, "vm1"); /* only once */
    cfs_domain_free(d);

    /* Queued failures are consumed in order, per op. */
    cfs_fake_fail_next(be, "snapshot_create", ENOSPC, "No space left on device");
    cfs_fake_fail_next(be, "job_get", EIO, "internal error");
    cfs_fake_fail_next(be, "snapshot_create", EACCES, "Permission denied");
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "x", "/img/x"),
                     -ENOSPC);
    assert_string_equal(cfs_backend_errmsg(), "No space left on device");
    assert_int_equal(be->ops->job_get(be, "vm1", "vda", &p), -EIO);
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "x", "/img/x"),
                     -EACCES);
    assert_string_equal(cfs_backend_errmsg(), "Permission denied");
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "x", "/img/x"),
                     0);
    d = read_ok(be, "vm1");
    assert_int_equal(d->disks[0].n_layers, 4); /* failures changed nothing */
    cfs_domain_free(d);

    /* Every op can be made to fail. */
    static const char *const ops[] = {
        "list_domains", "read_domain", "snapshot_create", "snapshot_forget",
        "commit_start", "job_get", "job_pivot", "job_abort", "offline_commit",
    };
    for (size_t i = 0; i < ELEMENTSOF(ops); i++)
        cfs_fake_fail_next(be, ops[i], EPERM, ops[i]);
    assert_int_equal(be->ops->list_domains(be, &names), -EPERM);
    assert_null(names);
    assert_string_equal(cfs_backend_errmsg(), "list_domains");
    assert_int_equal(be->ops->read_domain(be, "vm1", &d), -EPERM);
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "y", "/y"),
                     -EPERM);
    assert_int_equal(be->ops->snapshot_forget(be, "vm1", "vda", "x"), -EPERM);
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", "/img/x",
                                           chain3[0], true, 0),
                     -EPERM);
    assert_int_equal(be->ops->job_get(be, "vm1", "vda", &p), -EPERM);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -EPERM);
    assert_int_equal(be->ops->job_abort(be, "vm1", "vda"), -EPERM);
    assert_int_equal(be->ops->offline_commit(be, "vm1", "vda", "/img/x",
                                             chain3[0], true),
                     -EPERM);
    assert_string_equal(cfs_backend_errmsg(), "offline_commit");
    /* ... and the failures were one-shot. */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", "/img/x",
                                           chain3[0], true, 0),
                     0);
    assert_int_equal(be->ops->job_abort(be, "vm1", "vda"), 0);

    /* A negative errno is taken as it is. */
    cfs_fake_fail_next(be, "job_get", -ENOTCONN, "gone");
    assert_int_equal(be->ops->job_get(be, "vm1", "vda", &p), -ENOTCONN);

    size_t before = n_events(fx);
    struct cfs_backend *be2 = cfs_fake_backend_new();
    cfs_fake_fail_next(be2, "connect", ENOTCONN, "Failed to connect socket");
    assert_int_equal(be2->ops->connect(be2, &recorder_events, fx), -ENOTCONN);
    assert_string_equal(cfs_backend_errmsg(), "Failed to connect socket");
    /* Not connected: no events. */
    cfs_fake_add_simple(be2, "x", CFS_DOM_RUNNING, "vda", chain3, NULL, 3);
    assert_int_equal(be2->ops->connect(be2, &recorder_events, fx), 0);
    be2->ops->destroy(be2);
    assert_int_equal(n_events(fx), before);
}

static void test_calls(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_job_progress p;
    struct cfs_domain *d;
    char **names;

    assert_int_equal(cfs_fake_calls(be, "connect"), 1);
    /* The domain_changed callback of setup re-read the domain once. */
    unsigned reads = cfs_fake_calls(be, "read_domain");
    assert_int_equal(cfs_fake_calls(be, "list_domains"), 0);

    assert_int_equal(be->ops->list_domains(be, &names), 0);
    cfs_strv_free(names);
    d = read_ok(be, "vm1");
    cfs_domain_free(d);
    assert_int_equal(be->ops->read_domain(be, "nope", &d), -ENOENT);
    (void)be->ops->job_get(be, "vm1", "vda", &p);
    (void)be->ops->job_pivot(be, "vm1", "vda");
    (void)be->ops->job_abort(be, "vm1", "vda");
    (void)be->ops->snapshot_forget(be, "vm1", "vda", "nope");
    (void)be->ops->snapshot_create(be, "vm1", "vda", "s1", "/x");
    (void)be->ops->commit_start(be, "vm1", "vda", "/x", "/y", true, 0);
    (void)be->ops->offline_commit(be, "vm1", "vda", "/x", "/y", true);

    assert_int_equal(cfs_fake_calls(be, "list_domains"), 1);
    assert_int_equal(cfs_fake_calls(be, "read_domain"), reads + 2);
    assert_int_equal(cfs_fake_calls(be, "job_get"), 1);
    assert_int_equal(cfs_fake_calls(be, "job_pivot"), 1);
    assert_int_equal(cfs_fake_calls(be, "job_abort"), 1);
    assert_int_equal(cfs_fake_calls(be, "snapshot_forget"), 1);
    assert_int_equal(cfs_fake_calls(be, "snapshot_create"), 1);
    assert_int_equal(cfs_fake_calls(be, "commit_start"), 1);
    assert_int_equal(cfs_fake_calls(be, "offline_commit"), 1);
    /* Stepping calls are the test's, not the engine's: not counted. */
    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(cfs_fake_calls(be, "job_get"), 1);
}

/* ---- threads ------------------------------------------------------------------------ */

#define N_THREADS 6
#define N_ROUNDS 50

struct worker {
    struct fixture *fx;
    int index;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct cfs_backend *be = w->fx->be;
    char dom[32], path[64], base[64];

    snprintf(dom, sizeof(dom), "t%d", w->index);
    snprintf(base, sizeof(base), "/img/t%d.base.qcow2", w->index);
    const char *const chain[] = { base };
    cfs_fake_add_simple(be, dom, CFS_DOM_RUNNING, "vda", chain, NULL, 1);

    for (int r = 0; r < N_ROUNDS; r++) {
        struct cfs_domain *d = NULL;
        struct cfs_job_progress p;
        char name[16];

        snprintf(name, sizeof(name), "s%d", r);
        snprintf(path, sizeof(path), "/img/t%d.s%d.qcow2", w->index, r);
        if (be->ops->snapshot_create(be, dom, "vda", name, path) != 0)
            abort();
        if (be->ops->read_domain(be, "vm1", &d) != 0)
            abort();
        cfs_domain_free(d);
        if (r % 2) {
            /* Merge the new overlay straight back. */
            if (be->ops->read_domain(be, dom, &d) != 0)
                abort();
            char *below = cfs_xstrdup(d->disks[0].layers[1].path);
            cfs_domain_free(d);
            if (be->ops->commit_start(be, dom, "vda", path, below, true, 0) != 0)
                abort();
            cfs_fake_job_ready(be, dom, "vda");
            if (be->ops->job_get(be, dom, "vda", &p) != 0 || !p.ready)
                abort();
            if (be->ops->job_pivot(be, dom, "vda") != 0)
                abort();
            free(below);
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    struct fixture *fx = *state;
    pthread_t t[N_THREADS];
    struct worker w[N_THREADS];

    for (int i = 0; i < N_THREADS; i++) {
        w[i] = (struct worker){ .fx = fx, .index = i };
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);

    for (int i = 0; i < N_THREADS; i++) {
        char dom[32];
        struct cfs_domain *d;

        snprintf(dom, sizeof(dom), "t%d", i);
        d = read_ok(fx->be, dom);
        assert_int_equal(d->disks[0].n_layers, 1 + N_ROUNDS / 2);
        assert_int_equal(cfs_strv_len(d->snapshots), N_ROUNDS);
        cfs_domain_free(d);
    }
    /* Per thread: add_simple, then READY + COMPLETED per merged round. */
    assert_int_equal(fx->total_events, N_THREADS * (1 + N_ROUNDS));
}

/* ---- light read, bandwidth, jobs chainfs did not start -------------------------- */

static void test_read_domain_light(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_domain *d = NULL;
    unsigned full = cfs_fake_calls(be, "read_domain");

    assert_non_null(be->ops->read_domain_light);
    assert_int_equal(be->ops->read_domain_light(be, "vm1", &d), 0);
    assert_non_null(d);
    assert_int_equal(d->n_disks, 1);
    assert_int_equal(d->disks[0].n_layers, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(d->disks[0].layers[i].path, chain3[i]);
        assert_int_equal(d->disks[0].layers[i].virtual_size, 0);
    }
    assert_true(cfs_strv_contains(d->snapshots, "s1"));
    cfs_domain_free(d);
    /* counted apart from the full read, and fails on its own */
    assert_int_equal(cfs_fake_calls(be, "read_domain_light"), 1);
    assert_int_equal(cfs_fake_calls(be, "read_domain"), full);
    assert_int_equal(be->ops->read_domain_light(be, "nope", &d), -ENOENT);
    assert_null(d);
    cfs_fake_fail_next(be, "read_domain_light", EIO, "internal error: busy");
    assert_int_equal(be->ops->read_domain_light(be, "vm1", &d), -EIO);
    assert_null(d);
    assert_string_equal(cfs_backend_errmsg(), "internal error: busy");
    d = read_ok(be, "vm1"); /* the full read was not told to fail */
    assert_int_equal(d->disks[0].layers[0].virtual_size, 64 * MiB);
    cfs_domain_free(d);
}

static void test_job_set_bandwidth(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_job_progress p;

    /* no job */
    assert_false(cfs_fake_has_job(be, "vm1", "vda"));
    assert_int_equal(cfs_fake_job_bandwidth(be, "vm1", "vda"), 0);
    assert_int_equal(be->ops->job_set_bandwidth(be, "vm1", "vda", MiB), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "does not have an active block job"));
    assert_int_equal(be->ops->job_set_bandwidth(be, "nope", "vda", MiB), -ENOENT);
    assert_int_equal(be->ops->job_set_bandwidth(be, "vm1", "vdz", MiB), -ENOENT);

    /* commit_start's bandwidth applies from the first byte */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[0],
                                           chain3[1], true, 3 * MiB),
                     0);
    assert_true(cfs_fake_has_job(be, "vm1", "vda"));
    assert_int_equal(cfs_fake_job_bandwidth(be, "vm1", "vda"), 3 * MiB);
    p = job_of(be, "vm1", "vda");
    assert_int_equal(p.bandwidth, 3 * MiB);

    assert_int_equal(be->ops->job_set_bandwidth(be, "vm1", "vda", MiB), 0);
    assert_int_equal(cfs_fake_job_bandwidth(be, "vm1", "vda"), MiB);
    p = job_of(be, "vm1", "vda");
    assert_int_equal(p.bandwidth, MiB);
    assert_int_equal(be->ops->job_set_bandwidth(be, "vm1", "vda", 0), 0);
    assert_int_equal(cfs_fake_job_bandwidth(be, "vm1", "vda"), 0);

    cfs_fake_fail_next(be, "job_set_bandwidth", ENOTCONN, "client socket is closed");
    assert_int_equal(be->ops->job_set_bandwidth(be, "vm1", "vda", 5), -ENOTCONN);
    assert_int_equal(cfs_fake_job_bandwidth(be, "vm1", "vda"), 0);
    assert_int_equal(cfs_fake_calls(be, "job_set_bandwidth"), 6);
    assert_int_equal(n_events(fx), 0);
}

static void test_external_copy(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_job_progress p;

    assert_int_equal(cfs_fake_start_external(be, "vm1", "vda", CFS_JOB_COPY), 0);
    assert_int_equal(n_events(fx), 0); /* libvirt sends none at start */
    p = job_of(be, "vm1", "vda");
    assert_true(p.present);
    assert_int_equal(p.type, CFS_JOB_COPY);
    assert_int_equal(p.cur, 0);
    assert_int_equal(p.end, 64 * MiB);
    assert_false(p.ready);
    /* the disk is busy for chainfs's own jobs */
    assert_int_equal(be->ops->commit_start(be, "vm1", "vda", chain3[1],
                                           chain3[2], false, 0),
                     -EBUSY);
    assert_int_equal(cfs_fake_start_external(be, "vm1", "vda", CFS_JOB_PULL), -EBUSY);

    cfs_fake_job_progress(be, "vm1", "vda", 10 * MiB, 64 * MiB);
    assert_int_equal(be->ops->job_set_bandwidth(be, "vm1", "vda", 2 * MiB), 0);
    p = job_of(be, "vm1", "vda");
    assert_int_equal(p.cur, 10 * MiB);
    assert_int_equal(p.bandwidth, 2 * MiB);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -EAGAIN);

    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(n_events(fx), 1);
    assert_block_event(fx, 0, "vm1", "vda", CFS_JOB_COPY, CFS_JOB_EVENT_READY);
    assert_true(job_of(be, "vm1", "vda").ready);
    /* it stays ready, mirroring, until its owner pivots or aborts */
    assert_chain(be, "vm1", "vda", chain3, 3);

    char *dest = cfs_fake_job_copy_dest(be, "vm1", "vda");
    assert_string_equal(dest, "/img/vm1.vda.s2.qcow2.copy");
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), 0);
    assert_int_equal(n_events(fx), 2);
    assert_block_event(fx, 1, "vm1", "vda", CFS_JOB_COPY, CFS_JOB_EVENT_COMPLETED);
    const char *after[] = { dest };
    assert_chain(be, "vm1", "vda", after, 1);
    assert_false(job_of(be, "vm1", "vda").present);
    free(dest);
}

static void test_external_copy_abort(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;

    cfs_fake_start_external_job(be, "vm1", "vda", CFS_JOB_COPY);
    cfs_fake_job_ready(be, "vm1", "vda");
    assert_int_equal(be->ops->job_abort(be, "vm1", "vda"), 0);
    assert_false(cfs_fake_has_job(be, "vm1", "vda"));
    assert_block_event(fx, 1, "vm1", "vda", CFS_JOB_COPY, CFS_JOB_EVENT_CANCELED);
    assert_chain(be, "vm1", "vda", chain3, 3);
    assert_null(cfs_fake_job_copy_dest(be, "vm1", "vda"));
}

static void test_external_pull_and_others(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    struct cfs_job_progress p;

    /* a pull leaves the active layer alone in the chain */
    assert_int_equal(cfs_fake_start_external(be, "vm1", "vda", CFS_JOB_PULL), 0);
    p = job_of(be, "vm1", "vda");
    assert_int_equal(p.type, CFS_JOB_PULL);
    cfs_fake_job_ready(be, "vm1", "vda"); /* no ready phase: nothing */
    assert_int_equal(n_events(fx), 0);
    assert_int_equal(be->ops->job_pivot(be, "vm1", "vda"), -ENOENT);
    cfs_fake_job_progress(be, "vm1", "vda", 32 * MiB, 64 * MiB);
    assert_int_equal(job_of(be, "vm1", "vda").cur, 32 * MiB);
    cfs_fake_job_complete(be, "vm1", "vda");
    assert_block_event(fx, 0, "vm1", "vda", CFS_JOB_PULL, CFS_JOB_EVENT_COMPLETED);
    assert_chain(be, "vm1", "vda", chain3, 1);

    /* an intermediate commit chainfs did not start */
    cfs_fake_add_simple(be, "vm2", CFS_DOM_RUNNING, "vda", chain3, meta3, 3);
    clear_events(fx);
    assert_int_equal(cfs_fake_start_external(be, "vm2", "vda", CFS_JOB_COMMIT), 0);
    assert_int_equal(job_of(be, "vm2", "vda").type, CFS_JOB_COMMIT);
    cfs_fake_job_complete(be, "vm2", "vda");
    assert_block_event(fx, 0, "vm2", "vda", CFS_JOB_COMMIT, CFS_JOB_EVENT_COMPLETED);
    const char *after[] = { chain3[0], chain3[2] };
    assert_chain(be, "vm2", "vda", after, 2);

    /* a backup fails: chain unchanged, FAILED with its type */
    assert_int_equal(cfs_fake_start_external(be, "vm2", "vda", CFS_JOB_BACKUP), 0);
    assert_int_equal(job_of(be, "vm2", "vda").type, CFS_JOB_BACKUP);
    cfs_fake_job_fail(be, "vm2", "vda");
    assert_block_event(fx, 1, "vm2", "vda", CFS_JOB_BACKUP, CFS_JOB_EVENT_FAILED);
    assert_chain(be, "vm2", "vda", after, 2);

    /* an unknown type, gone without an event */
    assert_int_equal(cfs_fake_start_external(be, "vm2", "vda", CFS_JOB_UNKNOWN), 0);
    assert_int_equal(job_of(be, "vm2", "vda").type, CFS_JOB_UNKNOWN);
    cfs_fake_job_vanish(be, "vm2", "vda", true);
    assert_false(job_of(be, "vm2", "vda").present);
    assert_chain(be, "vm2", "vda", after, 2);
    assert_int_equal(n_events(fx), 2);

    /* an external active commit pivots like chainfs's own */
    assert_int_equal(cfs_fake_start_external(be, "vm2", "vda", CFS_JOB_ACTIVE_COMMIT), 0);
    cfs_fake_job_ready(be, "vm2", "vda");
    assert_int_equal(be->ops->job_pivot(be, "vm2", "vda"), 0);
    assert_block_event(fx, 3, "vm2", "vda", CFS_JOB_ACTIVE_COMMIT, CFS_JOB_EVENT_COMPLETED);
    assert_chain(be, "vm2", "vda", chain3 + 2, 1);

    /* refusals */
    assert_int_equal(cfs_fake_start_external(be, "nope", "vda", CFS_JOB_COPY), -ENOENT);
    assert_int_equal(cfs_fake_start_external(be, "vm2", "vdz", CFS_JOB_COPY), -ENOENT);
    assert_int_equal(cfs_fake_start_external(be, "vm2", "vda", CFS_JOB_COMMIT), -EINVAL);
    assert_int_equal(cfs_fake_start_external(be, "vm2", "vda", CFS_JOB_SNAPSHOT), -EINVAL);
    cfs_fake_add_simple(be, "off", CFS_DOM_SHUTOFF, "vda", chain3, NULL, 3);
    assert_int_equal(cfs_fake_start_external(be, "off", "vda", CFS_JOB_COPY), -EINVAL);
    assert_false(job_of(be, "off", "vda").present);
}

static void test_touch_domain(void **state)
{
    struct fixture *fx = *state;

    cfs_fake_touch_domain(fx->be, "vm1");
    cfs_fake_touch_domain(fx->be, "nope");
    assert_int_equal(n_events(fx), 1);
    assert_int_equal(fx->events[0].kind, R_DOMAIN);
    assert_string_equal(fx->events[0].dom, "vm1");
}


/* ---- issue 10: whole-VM snapshots, the agent, multi-disk define ------------------ */

/* vm1 gains vdb (raw, snapshottable), vdc (read-only) and, outside
 * disks[], hdc (an empty cdrom). */
static void add_disks_10(struct cfs_backend *be)
{
    struct cfs_domain *d = read_ok(be, "vm1");
    const char *const targets[] = { "vdb", "vdc" };
    const char *const paths[] = { "/img/data.raw", "/img/ro.raw" };

    d->disks = cfs_xrealloc(d->disks, 3 * sizeof(*d->disks));
    for (size_t i = 0; i < 2; i++) {
        d->disks[1 + i] = (struct cfs_disk){
            .target = cfs_xstrdup(targets[i]),
            .readonly = i == 1,
            .n_layers = 1,
            .layers = cfs_xcalloc(1, sizeof(struct cfs_layer)),
        };
        d->disks[1 + i].layers[0].path = cfs_xstrdup(paths[i]);
        d->disks[1 + i].layers[0].format = cfs_xstrdup("raw");
        d->disks[1 + i].layers[0].virtual_size = 8 * MiB;
    }
    d->n_disks = 3;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    cfs_fake_add_unsnappable(be, "vm1", "hdc", "cdrom");
}

static const struct cfs_snap_disk *snap_disk(const struct cfs_snap_info *si,
                                             const char *target)
{
    for (size_t i = 0; si && i < si->n_disks; i++)
        if (cfs_streq(si->disks[i].target, target))
            return &si->disks[i];
    return NULL;
}

static void test_snapshot_multi(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    const struct cfs_snapshot_disk two[] = {
        { "vda", "/img/vm1.vda.s3.qcow2" },
        { "vdb", "/img/vm1.vdb.s3.qcow2" },
    };
    const struct cfs_snap_info *si;
    struct cfs_domain *d;

    add_disks_10(be);
    d = read_ok(be, "vm1");
    assert_int_equal(d->n_unsnappable, 2);
    assert_string_equal(d->unsnappable[0].target, "vdc");
    assert_string_equal(d->unsnappable[0].why, "read-only");
    assert_string_equal(d->unsnappable[1].target, "hdc");
    assert_string_equal(d->unsnappable[1].why, "cdrom");
    /* the test's own snapshots have facts too */
    assert_int_equal(d->n_snaps, 2);
    assert_string_equal(d->snaps[0].name, "s2");
    assert_string_equal(d->snaps[1].name, "s1");
    assert_false(d->snaps[0].current);
    assert_null(d->snaps[0].description);
    si = cfs_domain_find_snap(d, "s1");
    assert_string_equal(snap_disk(si, "vda")->snapshot, "external");
    assert_string_equal(snap_disk(si, "vda")->source, chain3[1]);
    assert_string_equal(snap_disk(si, "vdb")->snapshot, "no");
    assert_null(snap_disk(si, "vdb")->source);
    assert_string_equal(snap_disk(si, "hdc")->snapshot, "no");
    /* put back as read: nothing changes (the notes are not doubled) */
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    d = read_ok(be, "vm1");
    assert_int_equal(d->n_unsnappable, 2);
    assert_int_equal(d->n_snaps, 2);
    cfs_domain_free(d);
    clear_events(fx);

    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "s3", 2, two,
                                                    "chainfs: quiesced=yes filesystems=2"),
                     0);
    assert_int_equal(n_events(fx), 0); /* libvirt fires none */
    d = read_ok(be, "vm1");
    assert_int_equal(d->disks[0].n_layers, 4);
    assert_string_equal(d->disks[0].layers[0].path, two[0].overlay);
    assert_string_equal(d->disks[0].layers[0].meta_name, "s3");
    assert_int_equal(d->disks[1].n_layers, 2);
    assert_string_equal(d->disks[1].layers[0].path, two[1].overlay);
    assert_string_equal(d->disks[1].layers[0].meta_name, "s3");
    assert_int_equal(d->disks[1].layers[0].virtual_size, 8 * MiB);
    assert_int_equal(d->disks[2].n_layers, 1);
    si = cfs_domain_find_snap(d, "s3");
    assert_non_null(si);
    assert_string_equal(si->description, "chainfs: quiesced=yes filesystems=2");
    assert_true(si->current);
    assert_null(si->parent);
    assert_true(si->created > 0);
    assert_int_equal(si->n_disks, 4);
    assert_string_equal(snap_disk(si, "vda")->source, two[0].overlay);
    assert_string_equal(snap_disk(si, "vdb")->snapshot, "external");
    assert_string_equal(snap_disk(si, "vdb")->source, two[1].overlay);
    assert_string_equal(snap_disk(si, "vdc")->snapshot, "no");
    assert_string_equal(snap_disk(si, "hdc")->snapshot, "no");
    int64_t s3_created = si->created;
    cfs_domain_free(d);

    /* the single-disk op: parent the current one, which it replaces */
    assert_int_equal(be->ops->snapshot_create(be, "vm1", "vda", "s4",
                                              "/img/vm1.vda.s4.qcow2"), 0);
    d = read_ok(be, "vm1");
    si = cfs_domain_find_snap(d, "s4");
    assert_string_equal(si->parent, "s3");
    assert_true(si->current);
    assert_null(si->description);
    assert_true(si->created > s3_created);
    assert_false(cfs_domain_find_snap(d, "s3")->current);
    assert_string_equal(snap_disk(si, "vdb")->snapshot, "no");
    cfs_domain_free(d);

    /* refusals: nothing changes on any disk */
    const struct cfs_snapshot_disk ro[] = { { "vda", "/img/a.qcow2" }, { "vdc", "/img/c.qcow2" } };
    const struct cfs_snapshot_disk cd[] = { { "vda", "/img/a.qcow2" }, { "hdc", "/img/c.qcow2" } };
    const struct cfs_snapshot_disk twice[] = { { "vda", "/img/a.qcow2" }, { "vda", "/img/b.qcow2" } };
    const struct cfs_snapshot_disk same[] = { { "vda", "/img/a.qcow2" }, { "vdb", "/img/a.qcow2" } };
    const struct cfs_snapshot_disk used[] = { { "vda", "/img/a.qcow2" }, { "vdb", chain3[2] } };
    const struct cfs_snapshot_disk ok[] = { { "vda", "/img/a.qcow2" }, { "vdb", "/img/b.qcow2" } };
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, ro, NULL), -EROFS);
    assert_non_null(strstr(cfs_backend_errmsg(), "vdc"));
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, cd, NULL), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "hdc"));
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, twice, NULL), -EINVAL);
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, same, NULL), -EINVAL);
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, used, NULL), -EEXIST);
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "s3", 2, ok, NULL), -EEXIST);
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 0, ok, NULL), -EINVAL);
    assert_int_equal(be->ops->snapshot_create_multi(be, "nope", "x", 2, ok, NULL), -ENOENT);
    cfs_fake_fail_next(be, "snapshot_create_multi", ENOSPC, "No space left on device");
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, ok, NULL), -ENOSPC);
    /* disk K fails: all or none */
    cfs_fake_fail_snapshot_disk(be, "vdb", EIO, NULL);
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, ok, NULL), -EIO);
    assert_non_null(strstr(cfs_backend_errmsg(), "vdb"));
    cfs_fake_fail_snapshot_disk(be, "vdb", EACCES, "Permission denied: /img/b.qcow2");
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, ok, NULL), -EACCES);
    assert_string_equal(cfs_backend_errmsg(), "Permission denied: /img/b.qcow2");
    /* a job on one disk */
    cfs_fake_start_external_job(be, "vm1", "vdb", CFS_JOB_BACKUP);
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, ok, NULL), -EBUSY);
    cfs_fake_job_vanish(be, "vm1", "vdb", false);
    /* a lun disk in disks[] noted by the test */
    cfs_fake_add_unsnappable(be, "vm1", "vdb", "lun");
    d = read_ok(be, "vm1");
    assert_int_equal(d->n_unsnappable, 3);
    assert_string_equal(d->unsnappable[0].target, "vdb");
    assert_string_equal(d->unsnappable[0].why, "lun");
    assert_false(cfs_strv_contains(d->snapshots, "x"));
    assert_int_equal(d->disks[0].n_layers, 5);
    assert_int_equal(d->disks[1].n_layers, 2);
    assert_true(cfs_domain_find_snap(d, "s4")->current);
    cfs_domain_free(d);
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, ok, NULL), -EROFS);
    assert_non_null(strstr(cfs_backend_errmsg(), "lun"));
    /* the test takes the notes away: put without unsnappable[] */
    d = read_ok(be, "vm1");
    for (size_t i = 0; i < d->n_unsnappable; i++) {
        free(d->unsnappable[i].target);
        free(d->unsnappable[i].why);
    }
    free(d->unsnappable);
    d->unsnappable = NULL;
    d->n_unsnappable = 0;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    d = read_ok(be, "vm1");
    /* read-only is worked out again; hdc and vdb's notes went with the put */
    assert_int_equal(d->n_unsnappable, 1);
    assert_string_equal(d->unsnappable[0].target, "vdc");
    cfs_domain_free(d);
    /* the injected disk failure was used up */
    assert_int_equal(be->ops->snapshot_create_multi(be, "vm1", "x", 2, ok, NULL), 0);

    /* forget disk by disk: snapshot='no', then gone; current goes to
     * its parent */
    assert_int_equal(be->ops->snapshot_forget(be, "vm1", "vda", "x"), 0);
    d = read_ok(be, "vm1");
    si = cfs_domain_find_snap(d, "x");
    assert_string_equal(snap_disk(si, "vda")->snapshot, "no");
    assert_string_equal(snap_disk(si, "vdb")->snapshot, "external");
    assert_string_equal(si->parent, "s4");
    assert_true(si->current);
    cfs_domain_free(d);
    assert_int_equal(be->ops->snapshot_forget(be, "vm1", "vdb", "x"), 0);
    d = read_ok(be, "vm1");
    assert_null(cfs_domain_find_snap(d, "x"));
    assert_true(cfs_domain_find_snap(d, "s4")->current);
    cfs_domain_free(d);
    /* drop of s3: s4's parent becomes s3's (none) */
    assert_int_equal(be->ops->snapshot_drop(be, "vm1", "s3"), 0);
    d = read_ok(be, "vm1");
    assert_null(cfs_domain_find_snap(d, "s4")->parent);
    assert_int_equal(d->n_snaps, 3);
    cfs_domain_free(d);
    assert_int_equal(cfs_fake_calls(be, "snapshot_create_multi"), 15);
}

static void test_agent(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    const char *const one[] = { "/img/off.qcow2" };
    struct cfs_fake_agent_state st;
    unsigned n = 99;

    /* no channel by default */
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), -EOPNOTSUPP);
    assert_int_equal(n, 0);
    assert_non_null(strstr(cfs_backend_errmsg(), "not configured"));
    assert_int_equal(be->ops->agent_fs(be, "nope", false, &n), -ENOENT);
    /* the timeout is recorded, agent or not */
    st = cfs_fake_agent_state(be, "vm1");
    assert_int_equal(st.timeout, 0);
    assert_int_equal(be->ops->agent_set_timeout(be, "vm1", 3), 0);
    assert_int_equal(cfs_fake_agent_state(be, "vm1").timeout, 3);
    assert_int_equal(be->ops->agent_set_timeout(be, "vm1", 0), -EINVAL);
    assert_int_equal(be->ops->agent_set_timeout(be, "nope", 3), -ENOENT);
    assert_int_equal(cfs_fake_calls(be, "agent_set_timeout"), 3);

    cfs_fake_agent_set(be, "vm1", CFS_FAKE_AGENT_DISCONNECTED);
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), -EOPNOTSUPP);
    assert_non_null(strstr(cfs_backend_errmsg(), "not connected"));

    cfs_fake_agent_set(be, "vm1", CFS_FAKE_AGENT_OK);
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), 0);
    assert_int_equal(n, 2);
    st = cfs_fake_agent_state(be, "vm1");
    assert_true(st.frozen);
    assert_int_equal(st.freezes, 1);
    /* frozen: qemu-ga refuses another freeze */
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), -EOPNOTSUPP);
    assert_non_null(strstr(cfs_backend_errmsg(), "the agent is in frozen state"));
    assert_int_equal(cfs_fake_agent_state(be, "vm1").freezes, 1);
    assert_int_equal(be->ops->agent_fs(be, "vm1", true, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(be->ops->agent_fs(be, "vm1", true, &n), 0);
    assert_int_equal(n, 0);
    st = cfs_fake_agent_state(be, "vm1");
    assert_false(st.frozen);
    assert_int_equal(st.thaws, 2);

    /* hung: both time out, nothing happens */
    cfs_fake_agent_set(be, "vm1", CFS_FAKE_AGENT_HUNG);
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), -ETIMEDOUT);
    assert_non_null(strstr(cfs_backend_errmsg(), "not available for now"));
    assert_int_equal(be->ops->agent_fs(be, "vm1", true, &n), -ETIMEDOUT);
    st = cfs_fake_agent_state(be, "vm1");
    assert_false(st.frozen);
    assert_int_equal(st.freezes, 1);
    assert_int_equal(st.thaws, 2);

    /* completes late: timed out, yet frozen; a later thaw ends it */
    cfs_fake_agent_set(be, "vm1", CFS_FAKE_AGENT_LATE);
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), -ETIMEDOUT);
    st = cfs_fake_agent_state(be, "vm1");
    assert_true(st.frozen);
    assert_int_equal(st.freezes, 2);
    assert_int_equal(st.mode, CFS_FAKE_AGENT_OK);
    cfs_fake_fail_next(be, "agent_thaw", ETIMEDOUT,
                       "Guest agent is not responding: Guest agent not available for now");
    assert_int_equal(be->ops->agent_fs(be, "vm1", true, &n), -ETIMEDOUT);
    assert_true(cfs_fake_agent_state(be, "vm1").frozen);
    assert_int_equal(be->ops->agent_fs(be, "vm1", true, &n), 0);
    assert_int_equal(n, 2);
    st = cfs_fake_agent_state(be, "vm1");
    assert_false(st.frozen);
    assert_int_equal(st.thaws, 3);

    /* someone else froze it */
    cfs_fake_agent_set_frozen(be, "vm1", true);
    cfs_fake_agent_set_filesystems(be, "vm1", 5);
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), -EOPNOTSUPP);
    assert_int_equal(cfs_fake_agent_state(be, "vm1").freezes, 2);
    cfs_fake_agent_set_frozen(be, "vm1", false);
    assert_int_equal(be->ops->agent_fs(be, "vm1", false, &n), 0);
    assert_int_equal(n, 5);

    /* shut off or paused: not running, whatever the agent */
    cfs_fake_add_simple(be, "off", CFS_DOM_SHUTOFF, "vda", one, NULL, 1);
    cfs_fake_agent_set(be, "off", CFS_FAKE_AGENT_OK);
    assert_int_equal(be->ops->agent_fs(be, "off", false, &n), -EINVAL);
    assert_non_null(strstr(cfs_backend_errmsg(), "not running"));
    assert_int_equal(be->ops->agent_fs(be, "off", true, &n), -EINVAL);
    assert_int_equal(be->ops->agent_set_timeout(be, "off", 10), 0);
    assert_int_equal(cfs_fake_agent_state(be, "off").timeout, 10);
    cfs_fake_add_simple(be, "paused", CFS_DOM_PAUSED, "vda", one, NULL, 1);
    cfs_fake_agent_set(be, "paused", CFS_FAKE_AGENT_OK);
    assert_int_equal(be->ops->agent_fs(be, "paused", false, &n), -EINVAL);
    assert_int_equal(cfs_fake_agent_state(be, "paused").freezes, 0);

    assert_int_equal(cfs_fake_calls(be, "agent_freeze"), 11);
    assert_int_equal(cfs_fake_calls(be, "agent_thaw"), 6);
}

static void test_persistent_sources_set(void **state)
{
    struct fixture *fx = *state;
    struct cfs_backend *be = fx->be;
    char dir[] = "/tmp/test_fake.XXXXXX";
    const char *const va[] = { "/img/off.vda.s2.qcow2", "/img/off.vda.s1.qcow2", "/img/off.vda.qcow2" };
    const char *const ma[] = { "s2", "s1", NULL };
    struct cfs_domain *d;
    char *over, *src = NULL;

    assert_non_null(mkdtemp(dir));
    over = cfs_xasprintf("%s/off.vda.s1.1.qcow2", dir);
    cfs_fake_add_simple(be, "off", CFS_DOM_SHUTOFF, "vda", va, ma, 3);
    d = read_ok(be, "off");
    d->disks = cfs_xrealloc(d->disks, 2 * sizeof(*d->disks));
    d->disks[1] = (struct cfs_disk){
        .target = cfs_xstrdup("vdb"),
        .n_layers = 2,
        .layers = cfs_xcalloc(2, sizeof(struct cfs_layer)),
    };
    d->disks[1].layers[0] = (struct cfs_layer){ .path = cfs_xstrdup("/img/off.vdb.s2.qcow2"),
        .format = cfs_xstrdup("qcow2"), .virtual_size = 8 * MiB, .meta_name = cfs_xstrdup("s2") };
    d->disks[1].layers[1] = (struct cfs_layer){ .path = cfs_xstrdup("/img/off.vdb.qcow2"),
        .format = cfs_xstrdup("qcow2"), .virtual_size = 8 * MiB };
    d->n_disks = 2;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);

    /* a revert to s1 on vda (a new overlay over s1's frozen layer, the
     * base: s1's overlay va[1] leaves with s2's) and to
     * the base on vdb (a layer of the chain), in one define */
    assert_int_equal(be->ops->image_create(be, over, va[1], "qcow2", va[2], "qcow2", NULL), 0);
    const char *const disks[] = { "vda", "vdb" };
    const char *const paths[] = { over, "/img/off.vdb.qcow2" };
    const char *const fmts[] = { "qcow2", "qcow2" };
    const char *const bad_disks[] = { "vda", "vdz" };
    /* refusals first: nothing changes */
    assert_int_equal(be->ops->persistent_sources_set(be, "off", 2, bad_disks, paths, fmts), -ENOENT);
    assert_non_null(strstr(cfs_backend_errmsg(), "vdz"));
    assert_int_equal(be->ops->persistent_sources_set(be, "vm1", 1, disks, paths, fmts), -EBUSY);
    assert_int_equal(be->ops->persistent_sources_set(be, "nope", 1, disks, paths, fmts), -ENOENT);
    cfs_fake_fail_next(be, "persistent_sources_set", EIO, "internal error: boom");
    assert_int_equal(be->ops->persistent_sources_set(be, "off", 2, disks, paths, fmts), -EIO);
    assert_chain(be, "off", "vda", va, 3);
    clear_events(fx);

    assert_int_equal(be->ops->persistent_sources_set(be, "off", 2, disks, paths, fmts), 0);
    assert_int_equal(cfs_fake_calls(be, "persistent_sources_set"), 5);
    assert_int_equal(cfs_fake_calls(be, "persistent_source_set"), 0);
    assert_int_equal(n_events(fx), 1);
    assert_int_equal(fx->events[0].kind, R_DOMAIN);
    const char *const va2[] = { over, va[2] };
    assert_chain(be, "off", "vda", va2, 2);
    const char *const vb2[] = { "/img/off.vdb.qcow2" };
    assert_chain(be, "off", "vdb", vb2, 1);
    assert_int_equal(be->ops->persistent_source_get(be, "off", "vda", &src), 0);
    assert_string_equal(src, over);
    free(src);
    d = read_ok(be, "off");
    assert_null(d->disks[0].layers[0].meta_name);
    assert_int_equal(d->disks[0].layers[0].virtual_size, 64 * MiB);
    assert_null(d->disks[0].layers[1].meta_name);
    /* s1's and s2's layers left the chains; their metadata still names
     * them */
    assert_string_equal(snap_disk(cfs_domain_find_snap(d, "s1"), "vda")->source, va[1]);
    assert_string_equal(snap_disk(cfs_domain_find_snap(d, "s2"), "vda")->source, va[0]);
    cfs_domain_free(d);

    /* retarget s1 to the new overlay and make it current; s2 names no
     * file for vdb? it does: retarget checks every disk first */
    const char *const rdisks[] = { "vda", "vdb" };
    const char *const rsrc[] = { over, "/img/x.qcow2" };
    assert_int_equal(be->ops->snapshot_retarget_multi(be, "off", "s1", 2, rdisks, rsrc, true),
                     -ENOENT); /* s1 names nothing for vdb */
    assert_non_null(strstr(cfs_backend_errmsg(), "vdb"));
    d = read_ok(be, "off");
    assert_false(cfs_domain_find_snap(d, "s1")->current);
    cfs_domain_free(d);
    assert_int_equal(be->ops->snapshot_retarget_multi(be, "off", "s9", 1, rdisks, rsrc, true),
                     -ENOENT);
    assert_int_equal(be->ops->snapshot_retarget_multi(be, "off", "s1", 1, rdisks, rsrc, true), 0);
    d = read_ok(be, "off");
    const struct cfs_snap_info *si = cfs_domain_find_snap(d, "s1");
    assert_true(si->current);
    assert_string_equal(snap_disk(si, "vda")->source, over);
    assert_false(cfs_domain_find_snap(d, "s2")->current);
    assert_string_equal(d->disks[0].layers[0].meta_name, "s1");
    assert_null(d->disks[0].layers[1].meta_name);
    cfs_domain_free(d);
    /* without make_current the current one stays */
    const char *const rsrc2[] = { "/img/off.vdb.s2.qcow2" };
    const char *const rdisk2[] = { "vdb" };
    assert_int_equal(be->ops->snapshot_retarget_multi(be, "off", "s2", 1, rdisk2, rsrc2, false), 0);
    d = read_ok(be, "off");
    assert_true(cfs_domain_find_snap(d, "s1")->current);
    cfs_domain_free(d);

    /* a file the fake knows nothing of: only recorded */
    const char *const p3[] = { "/img/unknown.qcow2" };
    assert_int_equal(be->ops->persistent_sources_set(be, "off", 1, disks, p3, fmts), 0);
    assert_chain(be, "off", "vda", va2, 2);
    assert_int_equal(be->ops->persistent_source_get(be, "off", "vda", &src), 0);
    assert_string_equal(src, "/img/unknown.qcow2");
    free(src);
    /* a transient domain */
    d = read_ok(be, "off");
    d->persistent = false;
    cfs_fake_put_domain(be, d);
    cfs_domain_free(d);
    assert_int_equal(be->ops->persistent_sources_set(be, "off", 1, disks, paths, fmts), -ENOENT);

    unlink(over);
    rmdir(dir);
    free(over);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_domains),
        T(test_snapshot_create),
        T(test_snapshot_forget),
        T(test_commit_refusals),
        T(test_active_commit_pivot),
        T(test_pivot_not_ready_counts_only_ready_pivots),
        T(test_intermediate_commit_complete),
        T(test_commit_run),
        T(test_commit_by_index),
        T(test_pull_complete_and_repair),
        T(test_pull_by_index_and_ends),
        T(test_pull_refusals),
        T(test_snapshot_drop_retarget_refusals),
        T(test_abort_fail_vanish),
        T(test_domain_stop_drops_jobs),
        T(test_offline_commit),
        T(test_fail_next),
        T(test_calls),
        T(test_threads),
        T(test_read_domain_light),
        T(test_job_set_bandwidth),
        T(test_external_copy),
        T(test_external_copy_abort),
        T(test_external_pull_and_others),
        T(test_touch_domain),
        T(test_snapshot_multi),
        T(test_agent),
        T(test_persistent_sources_set),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
