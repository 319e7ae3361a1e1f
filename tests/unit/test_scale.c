/* test_scale.c — issue 12 §2: a thousand domains. One bulk call per
 * refresh (list_stats); a domain is read in full only when its
 * fingerprint changed, on an event, or in the audit (the K longest not
 * read, every domain once per audit period); an undefined domain leaves
 * nothing behind; the tree's file index answers as a walk over every
 * domain would. Nothing grows faster than the number of domains: the
 * assertions count the backend's calls, never time. The engine runs
 * without its thread (re-reads inline), against the fake backend. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include "tmpdir.h"

#include "chainfs/engine.h"
#include "chainfs/log.h"
#include "chainfs/tree.h"
#include "fake.h"

#define N 1000

struct fx {
    char dir[64];
    struct cfs_backend *be;
    struct cfs_engine *e;
};

static size_t n_running; /* the first n_running domains of fx_new run */

static void add_dom(struct fx *f, const char *name, size_t i, size_t layers)
{
    char p[3][160];
    const char *chain[3];
    for (size_t l = 0; l < layers; l++) {
        snprintf(p[l], sizeof(p[l]), "%s/%s-%zu-%zu.qcow2", f->dir, name, i, l);
        chain[l] = p[l];
    }
    cfs_fake_add_simple(f->be, name, i < n_running ? CFS_DOM_RUNNING : CFS_DOM_SHUTOFF,
                        "vda", chain, NULL, layers);
}

static struct fx *fx_new(unsigned refresh_ms, unsigned audit_ms, size_t running)
{
    n_running = running;
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/cfs-scale-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->be = cfs_fake_backend_new();
    for (size_t i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof(name), "vm%04zu", i);
        add_dom(f, name, i, 3);
    }
    char state_dir[128];
    snprintf(state_dir, sizeof(state_dir), "%s/state", f->dir);
    struct cfs_engine_config cfg = {.state_dir = state_dir,
                                    .refresh_ms = refresh_ms,
                                    .audit_ms = audit_ms};
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, NULL), 0);
    assert_int_equal(cfs_engine_start(f->e, false, NULL), 0);
    return f;
}

static void fx_free(struct fx *f)
{
    cfs_engine_free(f->e);
    test_tmpdir_remove(f->dir);
    free(f);
}

static size_t n_layers(struct fx *f, const char *dom)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    const struct cfs_domain *d = cfs_tree_find_domain(t, dom);
    size_t n = d && d->n_disks ? d->disks[0].n_layers : 0;
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* Start-up: one bulk call, each domain read once. A refresh after it:
 * one bulk call, no re-read. A chain changed behind chainfs's back
 * (no event): its fingerprint moves, that one domain is re-read. */
static void test_fingerprint(void **state)
{
    (void)state;
    struct fx *f = fx_new(3000, 60000, 0);
    assert_int_equal(cfs_fake_calls(f->be, "list_stats"), 1);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), N);
    assert_int_equal(cfs_fake_calls(f->be, "list_domains"), 0);
    assert_int_equal(n_layers(f, "vm0005"), 3);

    cfs_engine_refresh(f->e);
    cfs_engine_refresh(f->e);
    assert_int_equal(cfs_fake_calls(f->be, "list_stats"), 3);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), N);

    cfs_fake_mute_domain_events(f->be, true);
    char p[4][160];
    const char *chain[4];
    for (size_t l = 0; l < 4; l++) {
        snprintf(p[l], sizeof(p[l]), "%s/vm0005-new-%zu.qcow2", f->dir, l);
        chain[l] = p[l];
    }
    cfs_fake_add_simple(f->be, "vm0005", CFS_DOM_SHUTOFF, "vda", chain, NULL, 4);
    cfs_engine_run_pending(f->e);
    assert_int_equal(n_layers(f, "vm0005"), 3); /* no event: not seen yet */
    cfs_engine_refresh(f->e);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), N + 1);
    assert_int_equal(n_layers(f, "vm0005"), 4);

    /* an event: that domain re-read at once, without a listing */
    cfs_fake_mute_domain_events(f->be, false);
    unsigned lists = cfs_fake_calls(f->be, "list_stats");
    cfs_fake_touch_domain(f->be, "vm0007");
    cfs_engine_run_pending(f->e);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), N + 2);
    assert_int_equal(cfs_fake_calls(f->be, "list_stats"), lists);
    fx_free(f);
}

/* A running domain's block statistics need its QEMU (a stopped one
 * would hold up the bulk call): the listing does not ask them, and each
 * running domain is read on its own every refresh, as before. */
static void test_running_read_each_refresh(void **state)
{
    (void)state;
    struct fx *f = fx_new(3000, 60000, 10);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), N);
    cfs_engine_refresh(f->e);
    cfs_engine_refresh(f->e);
    assert_int_equal(cfs_fake_calls(f->be, "list_stats"), 3);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), N + 2 * 10);
    fx_free(f);
}

/* The audit: with every domain due, each refresh reads in full exactly
 * K = N x refresh / audit of them, the longest unread first, so N / K
 * refreshes read every domain once; what has no event and no
 * fingerprint (a snapshot's metadata) is seen within that period. */
static void test_audit(void **state)
{
    (void)state;
    const unsigned refresh = 100, audit = 2000;
    const unsigned k = N * refresh / audit; /* 50 */
    struct fx *f = fx_new(refresh, audit, 0);
    cfs_fake_mute_domain_events(f->be, true);
    /* a change the statistics do not show: a layer's snapshot name */
    char p[3][160];
    const char *chain[3];
    const char *meta[3] = {"s2", "s1", NULL};
    for (size_t l = 0; l < 3; l++) {
        snprintf(p[l], sizeof(p[l]), "%s/vm0999-999-%zu.qcow2", f->dir, l);
        chain[l] = p[l];
    }
    cfs_fake_add_simple(f->be, "vm0999", CFS_DOM_SHUTOFF, "vda", chain, meta, 3);
    cfs_engine_refresh(f->e);
    unsigned reads = cfs_fake_calls(f->be, "read_domain");
    assert_int_equal(reads, N); /* not due yet: nothing re-read */
    usleep((audit + 50) * 1000);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned r = 0; r < N / k; r++) {
        unsigned before = cfs_fake_calls(f->be, "read_domain");
        cfs_engine_refresh(f->e);
        assert_int_equal(cfs_fake_calls(f->be, "read_domain") - before, k);
    }
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), 2 * N);
    /* every one read within the period: none due now (unless the
     * rounds themselves took a period, as under a sanitizer) */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long took = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    cfs_engine_refresh(f->e);
    if (took < (long)audit)
        assert_int_equal(cfs_fake_calls(f->be, "read_domain"), 2 * N);
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    const struct cfs_domain *d = cfs_tree_find_domain(t, "vm0999");
    assert_non_null(d);
    assert_string_equal(d->disks[0].layers[0].meta_name, "s2");
    pthread_mutex_unlock(&t->lock);
    fx_free(f);
}

static size_t n_states(struct fx *f)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    size_t n = t->n_states;
    pthread_mutex_unlock(&t->lock);
    return n;
}

static size_t n_doms(struct fx *f)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    size_t n = t->n_doms;
    pthread_mutex_unlock(&t->lock);
    return n;
}

static void give_states(struct fx *f)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < t->n_doms; i++)
        cfs_tree_disk_state(t, t->doms[i]->name, "vda");
    pthread_mutex_unlock(&t->lock);
}

/* Undefined without an event: the next refresh drops them, and nothing
 * of their names stays (tree, engine). With events: the same. */
static void test_forget(void **state)
{
    (void)state;
    struct fx *f = fx_new(3000, 60000, 0);
    give_states(f);
    assert_int_equal(n_states(f), N);
    assert_int_equal(cfs_engine_names_kept(f->e), N);
    cfs_fake_mute_domain_events(f->be, true);
    for (size_t i = 0; i < N / 2; i++) {
        char name[32];
        snprintf(name, sizeof(name), "vm%04zu", i);
        cfs_fake_remove_domain(f->be, name);
    }
    unsigned reads = cfs_fake_calls(f->be, "read_domain");
    cfs_engine_refresh(f->e);
    assert_int_equal(cfs_fake_calls(f->be, "read_domain"), reads);
    assert_int_equal(n_doms(f), N / 2);
    assert_int_equal(n_states(f), N / 2);
    assert_int_equal(cfs_engine_names_kept(f->e), N / 2);

    cfs_fake_mute_domain_events(f->be, false);
    for (size_t i = N / 2; i < N; i++) {
        char name[32];
        snprintf(name, sizeof(name), "vm%04zu", i);
        cfs_fake_remove_domain(f->be, name);
    }
    cfs_engine_run_pending(f->e);
    assert_int_equal(n_doms(f), 0);
    assert_int_equal(n_states(f), 0);
    assert_int_equal(cfs_engine_names_kept(f->e), 0);
    fx_free(f);
}

/* A disk the user set something on (`pivot manual`, `merge NAME pull`)
 * keeps its state when its domain leaves the listing: a transient domain
 * started again, or a domain defined again, finds the settings as the
 * user left them (and the saved settings are written from the states). */
static void test_forget_keeps_settings(void **state)
{
    (void)state;
    struct fx *f = fx_new(3000, 60000, 0);
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    cfs_tree_disk_state(t, "vm0000", "vda")->settings.pivot_manual = true;
    cfs_strv_push(&cfs_tree_disk_state(t, "vm0001", "vda")->settings.merge_pull,
                  cfs_xstrdup("s1"));
    cfs_tree_disk_state(t, "vm0002", "vda");
    pthread_mutex_unlock(&t->lock);
    assert_int_equal(n_states(f), 3);
    for (size_t i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof(name), "vm%04zu", i);
        cfs_fake_remove_domain(f->be, name);
    }
    cfs_engine_run_pending(f->e);
    assert_int_equal(n_doms(f), N - 3);
    assert_int_equal(n_states(f), 2); /* vm0002's had nothing to keep */
    pthread_mutex_lock(&t->lock);
    assert_true(cfs_tree_find_disk_state(t, "vm0000", "vda")->settings.pivot_manual);
    assert_true(cfs_strv_contains(cfs_tree_find_disk_state(t, "vm0001", "vda")->settings.merge_pull, "s1"));
    assert_null(cfs_tree_find_disk_state(t, "vm0002", "vda"));
    pthread_mutex_unlock(&t->lock);
    fx_free(f);
}

/* N names defined and undefined in turn, each seen by its event: one
 * read per event (linear), and nothing left at the end. */
static void test_define_undefine_loop(void **state)
{
    (void)state;
    struct fx *f = fx_new(3000, 60000, 0);
    size_t kept = cfs_engine_names_kept(f->e);
    unsigned reads = cfs_fake_calls(f->be, "read_domain");
    for (size_t i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof(name), "loop%04zu", i);
        add_dom(f, name, i, 3);
        cfs_engine_run_pending(f->e);
        assert_int_equal(n_layers(f, name), 3);
        struct cfs_tree *t = cfs_engine_tree(f->e);
        pthread_mutex_lock(&t->lock);
        cfs_tree_disk_state(t, name, "vda");
        pthread_mutex_unlock(&t->lock);
        cfs_fake_remove_domain(f->be, name);
        cfs_engine_run_pending(f->e);
        assert_int_equal(n_layers(f, name), 0);
    }
    assert_int_equal(cfs_fake_calls(f->be, "read_domain") - reads, 2 * N);
    assert_int_equal(n_doms(f), N);
    assert_int_equal(n_states(f), 0);
    assert_int_equal(cfs_engine_names_kept(f->e), kept);
    cfs_engine_refresh(f->e);
    assert_int_equal(cfs_engine_names_kept(f->e), kept);
    fx_free(f);
}

/* Events before the timer's work, across domains: with the pool busy
 * re-reading 200 running domains (each read a 5 ms round trip), a
 * domain event's re-read comes after at most the reads already under
 * way and about as many again, not after the backlog. Counted in reads,
 * not time. */
static void test_events_first(void **state)
{
    (void)state;
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/cfs-scale-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->be = cfs_fake_backend_new();
    n_running = 200;
    for (size_t i = 0; i < 200; i++) {
        char name[32];
        snprintf(name, sizeof(name), "vm%04zu", i);
        add_dom(f, name, i, 3);
    }
    char state_dir[128];
    snprintf(state_dir, sizeof(state_dir), "%s/state", f->dir);
    /* the timer's refresh every 60 s: the one below is the only one */
    struct cfs_engine_config cfg = {.state_dir = state_dir,
                                    .refresh_ms = 60000};
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, NULL), 0);
    assert_int_equal(cfs_engine_start(f->e, true, NULL), 0);
    cfs_fake_set_read_delay(f->be, 5);
    /* the backlog: every running domain re-read (partial in the listing) */
    cfs_engine_refresh(f->e);
    size_t start = cfs_fake_read_log(f->be, NULL, 0);
    cfs_fake_touch_domain(f->be, "vm0199"); /* queued last by the refresh */
    size_t at = SIZE_MAX;
    for (int i = 0; i < 4000 && at == SIZE_MAX; i++) {
        usleep(1000);
        at = cfs_fake_read_log(f->be, "vm0199", start);
    }
    assert_true(at != SIZE_MAX);
    print_message("the event's read came %zu reads after it, of a backlog of 200\n",
                  at - start);
    /* the POOL_MIN (8) reads under way, and the engine thread's tick */
    assert_true(at - start <= 40);
    cfs_fake_set_read_delay(f->be, 0);
    fx_free(f);
}

/* ---- the tree's file index against a walk over every domain ----------- */

static const struct cfs_disk *walk_file_user(struct cfs_tree *t,
                                             const struct cfs_file_id *id,
                                             const char *path,
                                             const char *except_dom,
                                             const char *except_disk,
                                             const struct cfs_domain **dom_out)
{
    for (size_t i = 0; i < t->n_doms; i++) {
        bool self = except_dom && strcmp(t->doms[i]->name, except_dom) == 0;
        const struct cfs_disk *dk = cfs_domain_file_user(
            t->doms[i], id, path, self ? except_disk : NULL);
        if (dk && !(self && !except_disk)) {
            *dom_out = t->doms[i];
            return dk;
        }
    }
    return NULL;
}

static struct cfs_domain *rand_dom(unsigned *seed, size_t i)
{
    struct cfs_domain *d = calloc(1, sizeof(*d));
    d->name = cfs_xasprintf("d%zu", i);
    snprintf(d->uuid, sizeof(d->uuid), "u%zu", i);
    d->n_disks = 1 + rand_r(seed) % 2;
    d->disks = calloc(d->n_disks, sizeof(*d->disks));
    for (size_t k = 0; k < d->n_disks; k++) {
        struct cfs_disk *dk = &d->disks[k];
        dk->target = cfs_xasprintf("vd%c", (char)('a' + k));
        dk->n_layers = 1 + rand_r(seed) % 3;
        dk->layers = calloc(dk->n_layers, sizeof(*dk->layers));
        for (size_t l = 0; l < dk->n_layers; l++) {
            struct cfs_layer *ly = &dk->layers[l];
            unsigned f = rand_r(seed) % 40; /* few files: many shared */
            static const char *const spell[] = {"/img/f%u", "/img//f%u", "/img/./f%u", "/x/../img/f%u"};
            ly->path = cfs_xasprintf(spell[rand_r(seed) % 4], f);
            ly->format = cfs_xstrdup("qcow2");
            switch (rand_r(seed) % 3) {
            case 0: /* identified by stat() */
                ly->id.known = true;
                ly->id.dev = 1;
                ly->id.ino = f;
                ly->id.canonical = cfs_xasprintf("/img/f%u", f);
                break;
            case 1: /* canonical only */
                ly->id.canonical = cfs_xasprintf("/img/f%u", f);
                break;
            default: /* not identified */
                break;
            }
        }
    }
    return d;
}

static void test_file_index(void **state)
{
    (void)state;
    unsigned seed = 12;
    size_t found = 0, missed = 0;
    struct cfs_tree *t = cfs_tree_new();
    for (size_t i = 0; i < 200; i++)
        cfs_tree_put_domain(t, rand_dom(&seed, i));
    for (int round = 0; round < 3; round++) {
        for (unsigned fno = 0; fno < 45; fno++) {
            for (int kind = 0; kind < 3; kind++) {
                struct cfs_file_id id = {0};
                char path[64];
                snprintf(path, sizeof(path), kind == 2 ? "/img//f%u" : "/img/f%u", fno);
                if (kind == 0) {
                    id.known = true;
                    id.dev = 1;
                    id.ino = fno;
                    id.canonical = path;
                } else if (kind == 1) {
                    id.canonical = path;
                }
                for (int ex = 0; ex < 3; ex++) {
                    const char *edom = ex ? "d3" : NULL;
                    const char *edisk = ex == 2 ? "vda" : NULL;
                    const struct cfs_domain *a = NULL, *b = NULL;
                    const struct cfs_disk *x = cfs_tree_file_user(t, &id, path, edom, edisk, &a);
                    const struct cfs_disk *y = walk_file_user(t, &id, path, edom, edisk, &b);
                    assert_ptr_equal(x, y);
                    if (x)
                        assert_ptr_equal(a, b);
                    if (x)
                        found++;
                    else
                        missed++;
                }
            }
        }
        /* replace some, remove some: the index follows */
        for (size_t i = 0; i < 60; i++) {
            size_t j = (size_t)rand_r(&seed) % 200;
            if (i % 2) {
                cfs_tree_put_domain(t, rand_dom(&seed, j));
            } else {
                char name[16];
                snprintf(name, sizeof(name), "d%zu", j);
                cfs_tree_remove_domain(t, name);
            }
        }
    }
    /* both answers were exercised */
    assert_true(found > 100);
    assert_true(missed > 10);
    cfs_tree_free(t);
}

int main(void)
{
    cfs_log_init(false, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_running_read_each_refresh),
        cmocka_unit_test(test_audit),
        cmocka_unit_test(test_forget),
        cmocka_unit_test(test_forget_keeps_settings),
        cmocka_unit_test(test_define_undefine_loop),
        cmocka_unit_test(test_events_first),
        cmocka_unit_test(test_file_index),
    };
    return cmocka_run_group_tests_name("scale", tests, NULL, NULL);
}
