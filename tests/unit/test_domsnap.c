/* test_domsnap.c — issue 10 on the fake backend (docs/design/issue10.md
 * §2): the quiesce of every mkdir (each agent behaviour × -o quiesce
 * try|require|off, shut-off and paused domains, the thaw-owed retry,
 * recovery of a mkdir that died frozen) and the domain-level mkdir
 * (<dom>/snapshots/NAME: one snapshot of every disk that can have one,
 * all or none, its refusals and its recovery). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "chainfs/engine.h"
#include "chainfs/journal.h"
#include "chainfs/log.h"
#include "chainfs/snapdesc.h"
#include "fake.h"
#include "tmpdir.h"

struct fx {
    char dir[64];
    char state[128];
    struct cfs_backend *be;
    struct cfs_engine *e;
};

static char *path_in(struct fx *f, const char *name)
{
    return cfs_xasprintf("%s/%s", f->dir, name);
}

static void touch(const char *p)
{
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fclose(fp);
}

static struct cfs_layer layer(const char *path, const char *meta)
{
    return (struct cfs_layer){ .path = cfs_xstrdup(path), .format = cfs_xstrdup("qcow2"),
                               .virtual_size = FAKE_VIRTUAL_SIZE,
                               .meta_name = cfs_xstrdup(meta) };
}

/* vm1 in STATE: vda = s1 <- base-a (s1 named by metadata), vdb = b
 * alone, vdc read-only, and a cdrom hdc the backend leaves out of
 * disks[]. Every file real in the fixture's directory. */
static void put_vm1(struct fx *f, enum cfs_dom_state state)
{
    _cleanup_free_ char *a0 = path_in(f, "vm1.vda.s1.qcow2");
    _cleanup_free_ char *a1 = path_in(f, "base-a.qcow2");
    _cleanup_free_ char *b0 = path_in(f, "b.qcow2");
    _cleanup_free_ char *c0 = path_in(f, "c.qcow2");
    touch(a0);
    touch(a1);
    touch(b0);
    touch(c0);
    struct cfs_domain *d = cfs_xcalloc(1, sizeof(*d));
    d->name = cfs_xstrdup("vm1");
    d->state = state;
    d->n_disks = 3;
    d->disks = cfs_xcalloc(3, sizeof(*d->disks));
    d->disks[0] = (struct cfs_disk){ .target = cfs_xstrdup("vda"), .n_layers = 2 };
    d->disks[0].layers = cfs_xcalloc(2, sizeof(struct cfs_layer));
    d->disks[0].layers[0] = layer(a0, "s1");
    d->disks[0].layers[1] = layer(a1, NULL);
    d->disks[1] = (struct cfs_disk){ .target = cfs_xstrdup("vdb"), .n_layers = 1 };
    d->disks[1].layers = cfs_xcalloc(1, sizeof(struct cfs_layer));
    d->disks[1].layers[0] = layer(b0, NULL);
    d->disks[2] = (struct cfs_disk){ .target = cfs_xstrdup("vdc"), .n_layers = 1,
                                     .readonly = true };
    d->disks[2].layers = cfs_xcalloc(1, sizeof(struct cfs_layer));
    d->disks[2].layers[0] = layer(c0, NULL);
    cfs_fake_put_domain(f->be, d);
    cfs_domain_free(d);
    cfs_fake_add_unsnappable(f->be, "vm1", "hdc", "cdrom");
}

static void engine_start(struct fx *f, enum cfs_quiesce q)
{
    struct cfs_engine_config cfg = { .state_dir = f->state, .quiesce = q,
                                      .quiesce_timeout = 10 };
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, &err), 0);
    assert_int_equal(cfs_engine_start(f->e, false, &err), 0);
}

static struct fx *fx_new(enum cfs_quiesce q, enum cfs_dom_state state)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-domsnap-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    f->be = cfs_fake_backend_new();
    put_vm1(f, state);
    engine_start(f, q);
    return f;
}

static void fx_free(struct fx *f)
{
    cfs_engine_free(f->e);
    test_tmpdir_remove(f->dir);
    free(f);
}

static int setup_try(void **state)
{
    *state = fx_new(CFS_QUIESCE_TRY, CFS_DOM_RUNNING);
    return 0;
}

static int setup_require(void **state)
{
    *state = fx_new(CFS_QUIESCE_REQUIRE, CFS_DOM_RUNNING);
    return 0;
}

static int teardown(void **state)
{
    fx_free(*state);
    return 0;
}

static char *read_node(struct fx *f, const char *path)
{
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(path, &p), 0);
    struct cfs_buf b = { 0 };
    if (cfs_engine_read(f->e, &p, &b) < 0) {
        cfs_buf_free(&b);
        return NULL;
    }
    return cfs_buf_steal(&b);
}

static char *list(struct fx *f, const char *path)
{
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(path, &p), 0);
    char **names = NULL;
    if (cfs_engine_readdir(f->e, &p, &names) < 0)
        return NULL;
    struct cfs_buf b = { 0 };
    for (char **n = names; n && *n; n++)
        cfs_buf_printf(&b, "%s%s", n == names ? "" : " ", *n);
    cfs_strv_free(names);
    return cfs_buf_steal(&b);
}

static void assert_list(struct fx *f, const char *path, const char *want)
{
    char *got = list(f, path);
    assert_non_null(got);
    if (strcmp(got, want) != 0)
        fail_msg("%s lists \"%s\", want \"%s\"", path, got, want);
    free(got);
}

static void assert_node_has(struct fx *f, const char *path, const char *needle)
{
    char *s = read_node(f, path);
    if (!s)
        fail_msg("%s cannot be read", path);
    if (!strstr(s, needle))
        fail_msg("%s lacks \"%s\":\n%s", path, needle, s);
    free(s);
}

static void assert_node_lacks(struct fx *f, const char *path, const char *needle)
{
    char *s = read_node(f, path);
    assert_non_null(s);
    if (strstr(s, needle))
        fail_msg("%s has \"%s\":\n%s", path, needle, s);
    free(s);
}

static size_t journal_open_entries(struct fx *f)
{
    struct cfs_journal *j;
    char **warnings = NULL;
    assert_int_equal(cfs_journal_open(f->state, &j, &warnings), 0);
    cfs_strv_free(warnings);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
    return n;
}

/* Whether an open journal entry is in PHASE. */
static bool journal_has_phase(struct fx *f, const char *phase)
{
    struct cfs_journal *j;
    char **warnings = NULL;
    assert_int_equal(cfs_journal_open(f->state, &j, &warnings), 0);
    cfs_strv_free(warnings);
    struct cfs_journal_entry *v;
    size_t n;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    bool has = false;
    for (size_t i = 0; i < n; i++)
        has = has || cfs_streq(v[i].phase, phase);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
    return has;
}

/* The description libvirt (the fake) keeps for snapshot NAME of vm1. */
static char *description(struct fx *f, const char *name)
{
    struct cfs_domain *d = NULL;
    assert_int_equal(f->be->ops->read_domain(f->be, "vm1", &d), 0);
    const struct cfs_snap_info *si = cfs_domain_find_snap(d, name);
    char *s = si ? cfs_xstrdup(si->description) : NULL;
    cfs_domain_free(d);
    return s;
}

/* ---- the quiesce of a disk-level mkdir ---------------------------------------- */

static void test_disk_mkdir_quiesced(void **state)
{
    struct fx *f = *state;
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "q1"), 0);
    struct cfs_fake_agent_state a = cfs_fake_agent_state(f->be, "vm1");
    assert_int_equal(a.freezes, 1);
    assert_int_equal(a.thaws, 1);
    assert_false(a.frozen);
    assert_int_equal(a.timeout, 10);
    /* right away, and after the re-read (libvirt's own description) */
    for (int round = 0; round < 2; round++) {
        assert_node_has(f, "/vm1/vda/snapshots/q1/info",
                        "quiesced:  yes\n"
                        "quiesce:   2 filesystems frozen by the guest agent\n"
                        "taken:     disk\n");
        assert_node_has(f, "/vm1/vda/snapshots/q1/info.json", "\"quiesced\": true");
        cfs_engine_run_pending(f->e);
    }
    _cleanup_free_ char *desc = description(f, "q1");
    assert_string_equal(desc, "chainfs: scope=disk quiesced=yes filesystems=2 disks=vda");
    assert_int_equal(journal_open_entries(f), 0);
}

enum agent_case { AC_NONE, AC_DISCONNECTED, AC_OK, AC_HUNG, AC_LATE, AC_FROZEN_BY_OTHER,
                  AC_MAX };

static const char *const ac_name[AC_MAX] = { "none", "disconnected", "ok", "hung",
                                             "late", "frozen by someone else" };

struct want {
    int r;                  /* the mkdir's answer */
    const char *quiesce;    /* in info's quiesce: line (r == 0) */
    bool owed;              /* a thaw owed after the mkdir */
    unsigned freeze_calls;
};

/* Every agent behaviour under each -o quiesce: the mkdir's errno, what
 * info says, a thaw owed or not; a refusal changes nothing (no
 * snapshot call, the snapshots as they were, no journal entry); a
 * guest frozen by someone else is never thawed by chainfs. */
static void test_disk_mkdir_agent_matrix(void **state)
{
    (void)state;
    static const struct want table[3][AC_MAX] = {
        [CFS_QUIESCE_TRY] = {
            [AC_NONE] = { 0, "quiesce:   no guest agent channel (argument unsupported: "
                             "QEMU guest agent is not configured)\n", false, 1 },
            [AC_DISCONNECTED] = { 0, "QEMU guest agent is not connected\n", false, 1 },
            [AC_OK] = { 0, "quiesce:   2 filesystems frozen by the guest agent\n", false, 1 },
            [AC_HUNG] = { 0, "quiesce:   the guest agent did not answer within 10 s "
                             "(Guest agent is not responding: Guest agent not available "
                             "for now)\n", true, 1 },
            [AC_LATE] = { 0, "did not answer within 10 s", true, 1 },
            [AC_FROZEN_BY_OTHER] = { 0, "the agent is in frozen state", false, 1 },
        },
        [CFS_QUIESCE_REQUIRE] = {
            [AC_NONE] = { -EOPNOTSUPP, NULL, false, 1 },
            [AC_DISCONNECTED] = { -EOPNOTSUPP, NULL, false, 1 },
            [AC_OK] = { 0, "quiesce:   2 filesystems frozen by the guest agent\n", false, 1 },
            [AC_HUNG] = { -ETIMEDOUT, NULL, true, 1 },
            [AC_LATE] = { -ETIMEDOUT, NULL, true, 1 },
            [AC_FROZEN_BY_OTHER] = { -EOPNOTSUPP, NULL, false, 1 },
        },
        [CFS_QUIESCE_OFF] = {
            [AC_NONE] = { 0, "quiesce:   -o quiesce=off\n", false, 0 },
            [AC_DISCONNECTED] = { 0, "quiesce:   -o quiesce=off\n", false, 0 },
            [AC_OK] = { 0, "quiesce:   -o quiesce=off\n", false, 0 },
            [AC_HUNG] = { 0, "quiesce:   -o quiesce=off\n", false, 0 },
            [AC_LATE] = { 0, "quiesce:   -o quiesce=off\n", false, 0 },
            [AC_FROZEN_BY_OTHER] = { 0, "quiesce:   -o quiesce=off\n", false, 0 },
        },
    };
    for (int q = 0; q < 3; q++) {
        for (int ac = 0; ac < AC_MAX; ac++) {
            const struct want *w = &table[q][ac];
            struct fx *f = fx_new((enum cfs_quiesce)q, CFS_DOM_RUNNING);
            static const enum cfs_fake_agent_mode mode[AC_MAX] = {
                CFS_FAKE_AGENT_NONE, CFS_FAKE_AGENT_DISCONNECTED, CFS_FAKE_AGENT_OK,
                CFS_FAKE_AGENT_HUNG, CFS_FAKE_AGENT_LATE, CFS_FAKE_AGENT_OK,
            };
            cfs_fake_agent_set(f->be, "vm1", mode[ac]);
            if (ac == AC_FROZEN_BY_OTHER)
                cfs_fake_agent_set_frozen(f->be, "vm1", true);
            int r = cfs_engine_mkdir(f->e, "vm1", "vda", "q1");
            if (r != w->r)
                fail_msg("quiesce=%s agent %s: mkdir %d, want %d",
                         cfs_quiesce_to_string(q), ac_name[ac], r, w->r);
            assert_int_equal(cfs_fake_calls(f->be, "agent_freeze"), w->freeze_calls);
            if (r == 0) {
                assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), 1);
                assert_node_has(f, "/vm1/vda/snapshots/q1/info", w->quiesce);
                assert_node_has(f, "/vm1/vda/snapshots/q1/info",
                                ac == AC_OK && q != CFS_QUIESCE_OFF ? "quiesced:  yes\n"
                                                                    : "quiesced:  no\n");
            } else {
                /* nothing changed */
                assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), 0);
                assert_list(f, "/vm1/vda/snapshots", "s1");
                assert_list(f, "/vm1/snapshots", "s1");
                assert_node_has(f, "/vm1/vda/job", "state:     failed");
                assert_node_has(f, "/vm1/vda/job", "-o quiesce=require");
            }
            if (w->owed)
                assert_node_has(f, "/vm1/job", "thaw:   owed since");
            else
                assert_node_lacks(f, "/vm1/job", "thaw:");
            struct cfs_fake_agent_state a = cfs_fake_agent_state(f->be, "vm1");
            if (ac == AC_FROZEN_BY_OTHER) {
                assert_true(a.frozen);       /* not chainfs's to end */
                assert_int_equal(a.thaws, 0);
            } else if (ac == AC_LATE && q != CFS_QUIESCE_OFF) {
                assert_true(a.frozen);       /* froze after the timeout */
                cfs_engine_run_pending(f->e); /* the owed thaw */
                a = cfs_fake_agent_state(f->be, "vm1");
                assert_false(a.frozen);
                assert_node_lacks(f, "/vm1/job", "thaw:");
            } else {
                assert_false(a.frozen);
            }
            cfs_engine_run_pending(f->e);
            /* a thaw still owed keeps its entry open (phase frozen): a
             * restart thaws */
            bool owed_now = ac == AC_HUNG && q != CFS_QUIESCE_OFF;
            assert_int_equal(journal_open_entries(f), owed_now ? 1 : 0);
            fx_free(f);
        }
    }
}

/* A shut-off domain needs no freeze (require accepts it); a paused one
 * is not asked (try: crash-consistent at once; require: EOPNOTSUPP). */
static void test_shutoff_and_paused(void **state)
{
    (void)state;
    struct fx *f = fx_new(CFS_QUIESCE_REQUIRE, CFS_DOM_SHUTOFF);
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "off1"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "agent_freeze"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "agent_set_timeout"), 0);
    assert_node_has(f, "/vm1/vda/snapshots/off1/info",
                    "quiesced:  no\nquiesce:   domain shut off\n");
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "off2"), 0);
    assert_node_has(f, "/vm1/snapshots/off2/info", "quiesce:  domain shut off\n");
    fx_free(f);

    f = fx_new(CFS_QUIESCE_TRY, CFS_DOM_PAUSED);
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "p1"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "agent_freeze"), 0);
    assert_node_has(f, "/vm1/vda/snapshots/p1/info", "quiesce:   domain paused\n");
    fx_free(f);

    f = fx_new(CFS_QUIESCE_REQUIRE, CFS_DOM_PAUSED);
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "p1"), -EOPNOTSUPP);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "", "p1"), -EOPNOTSUPP);
    assert_int_equal(cfs_fake_calls(f->be, "agent_freeze"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), 0);
    assert_list(f, "/vm1/snapshots", "s1");
    fx_free(f);
}

/* A hung agent: the mkdir returns crash-consistent, the thaw is owed and
 * retried on every poll (shown in <dom>/job, attempts counted) until the
 * agent answers; a domain that stops ends it. */
static void test_thaw_owed_retry(void **state)
{
    struct fx *f = *state;
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_HUNG);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "h1"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "agent_thaw"), 0); /* not at once */
    assert_node_has(f, "/vm1/job", "thaw:   owed since");
    assert_node_has(f, "/vm1/job.json", "\"attempts\": 0");
    /* the mkdir's entry stays open, phase frozen, until the thaw */
    cfs_engine_run_pending(f->e);
    assert_int_equal(journal_open_entries(f), 1);
    assert_true(journal_has_phase(f, "frozen"));
    assert_int_equal(cfs_fake_calls(f->be, "agent_thaw"), 1);
    assert_node_has(f, "/vm1/job", "(1 failed attempt), last error: Guest agent is "
                                   "not responding: Guest agent not available for now");
    cfs_engine_run_pending(f->e);
    assert_node_has(f, "/vm1/job", "(2 failed attempts)");
    /* the freeze did happen in the guest, late; the agent answers again */
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    cfs_fake_agent_set_frozen(f->be, "vm1", true);
    cfs_engine_run_pending(f->e);
    struct cfs_fake_agent_state a = cfs_fake_agent_state(f->be, "vm1");
    assert_false(a.frozen);
    assert_int_equal(a.thaws, 1);
    assert_node_lacks(f, "/vm1/job", "thaw:");
    assert_node_has(f, "/vm1/job.json", "\"thaw\": null");
    assert_int_equal(journal_open_entries(f), 0);
    cfs_engine_run_pending(f->e);
    assert_int_equal(cfs_fake_calls(f->be, "agent_thaw"), 3); /* no more tries */

    /* owed again; the domain stops: no longer owed, no call */
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_HUNG);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vda", "h2"), 0);
    assert_node_has(f, "/vm1/job", "thaw:");
    struct cfs_domain *d = NULL;
    assert_int_equal(f->be->ops->read_domain(f->be, "vm1", &d), 0);
    d->state = CFS_DOM_SHUTOFF;
    cfs_fake_put_domain(f->be, d);
    cfs_domain_free(d);
    cfs_engine_run_pending(f->e);
    cfs_engine_run_pending(f->e);
    assert_node_lacks(f, "/vm1/job", "thaw:");
    assert_int_equal(cfs_fake_calls(f->be, "agent_thaw"), 3);
    assert_int_equal(journal_open_entries(f), 0);
}

/* The freeze worked, the thaw right after the snapshot failed: owed,
 * and the next poll thaws. */
static void test_thaw_fails_after_freeze(void **state)
{
    struct fx *f = *state;
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    cfs_fake_fail_next(f->be, "agent_thaw", ETIMEDOUT,
                       "Guest agent is not responding: Guest agent not available for now");
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "t1"), 0);
    assert_true(cfs_fake_agent_state(f->be, "vm1").frozen);
    assert_node_has(f, "/vm1/snapshots/t1/info", "quiesced: yes\n");
    assert_node_has(f, "/vm1/job", "thaw:   owed since");
    cfs_engine_run_pending(f->e);
    assert_false(cfs_fake_agent_state(f->be, "vm1").frozen);
    assert_node_lacks(f, "/vm1/job", "thaw:");
}

/* A daemon that died between freeze and thaw (journal phase frozen): the
 * next one thaws the guest, and takes up the mkdir as any other. */
static void recover_frozen(enum cfs_fake_agent_mode mode)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-domsnap-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    f->be = cfs_fake_backend_new();
    put_vm1(f, CFS_DOM_RUNNING);
    cfs_fake_agent_set(f->be, "vm1", mode);
    cfs_fake_agent_set_frozen(f->be, "vm1", mode == CFS_FAKE_AGENT_OK);

    struct cfs_journal *j;
    char **warnings = NULL;
    assert_int_equal(cfs_journal_open(f->state, &j, &warnings), 0);
    _cleanup_free_ char *ova = path_in(f, "vm1.vda.d1.qcow2");
    _cleanup_free_ char *ovb = path_in(f, "vm1.vdb.d1.qcow2");
    _cleanup_free_ char *a0 = path_in(f, "vm1.vda.s1.qcow2");
    char *disks[] = { "vda", "vdb", NULL };
    struct cfs_job_file made[] = { { .path = ova }, { .path = ovb } };
    struct cfs_journal_entry en = {
        .id = cfs_journal_new_id(j), .domain = "vm1", .disk = "vda", .snapshot = "d1",
        .top = ova, .base = a0, .type = CFS_JOB_SNAPSHOT, .phase = "frozen",
        .disks = disks, .n_made = 2, .made = made, .created = 1, .updated = 1,
    };
    assert_int_equal(cfs_journal_put(j, &en), 0);
    free(en.id);
    cfs_journal_free(j);

    engine_start(f, CFS_QUIESCE_TRY);
    cfs_engine_run_pending(f->e);
    struct cfs_fake_agent_state a = cfs_fake_agent_state(f->be, "vm1");
    assert_false(a.frozen);
    assert_int_equal(a.thaws, mode == CFS_FAKE_AGENT_OK ? 1 : 0);
    assert_int_equal(cfs_fake_calls(f->be, "agent_thaw"), 1);
    assert_node_lacks(f, "/vm1/job", "thaw:");
    assert_int_equal(journal_open_entries(f), 0);
    /* not taken: the chains are as they were */
    assert_list(f, "/vm1/snapshots", "s1");
    fx_free(f);
}

static void test_recover_frozen(void **state)
{
    (void)state;
    recover_frozen(CFS_FAKE_AGENT_OK);
    /* a domain without an agent channel: nothing can have frozen it
     * through one; one attempt, and the owed thaw is void */
    recover_frozen(CFS_FAKE_AGENT_NONE);
}

/* ---- the domain-level mkdir --------------------------------------------------- */

static void test_dom_mkdir_atomic(void **state)
{
    struct fx *f = *state;
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d1"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), 1);
    struct cfs_fake_agent_state a = cfs_fake_agent_state(f->be, "vm1");
    assert_int_equal(a.freezes, 1);
    assert_int_equal(a.thaws, 1);
    for (int round = 0; round < 2; round++) {
        assert_list(f, "/vm1/vda/snapshots", "s1 d1");
        assert_list(f, "/vm1/vdb/snapshots", "d1");
        assert_list(f, "/vm1/vdc/snapshots", "");
        assert_list(f, "/vm1/snapshots", "s1 d1");
        assert_node_has(f, "/vm1/snapshots/d1/info",
                        "quiesced: yes\n"
                        "quiesce:  2 filesystems frozen by the guest agent\n"
                        "taken:    domain (vda, vdb; not: vdc read-only, hdc cdrom)\n");
        assert_node_has(f, "/vm1/snapshots/d1/info", "\nDISK  STATE  FILE\nvda   ok     ");
        assert_node_has(f, "/vm1/snapshots/d1/info", "vm1.vdb.d1.qcow2\n");
        assert_node_has(f, "/vm1/vdb/snapshots/d1/info",
                        "taken:     domain (vda, vdb; not: vdc read-only, hdc cdrom)\n");
        assert_node_has(f, "/vm1/snapshots/d1/info.json", "\"quiesced\": true");
        assert_node_has(f, "/vm1/vda/job", "state:     completed");
        assert_node_has(f, "/vm1/vdb/job", "state:     completed");
        cfs_engine_run_pending(f->e); /* and after libvirt's own read */
    }
    _cleanup_free_ char *desc = description(f, "d1");
    assert_string_equal(desc, "chainfs: scope=domain quiesced=yes filesystems=2 "
                              "disks=vda,vdb excluded=vdc:read-only,hdc:cdrom");
    _cleanup_free_ char *src = cfs_fake_snapshot_source(f->be, "vm1", "d1", "vdb");
    _cleanup_free_ char *want = path_in(f, "vm1.vdb.d1.qcow2");
    assert_string_equal(src, want);
    assert_int_equal(journal_open_entries(f), 0);
}

/* Files not local, a storage pool over the overlays' directory: a file
 * at one disk's overlay name (empty: libvirt would format it) is left
 * alone, that disk's overlay takes the next name; a probe that fails
 * refuses the whole snapshot, nothing taken. */
static void test_dom_mkdir_remote_pool_names(void **state)
{
    struct fx *f = *state;
    cfs_fake_set_remote(f->be, true, f->dir);
    _cleanup_free_ char *empty = path_in(f, "vm1.vdb.d1.qcow2");
    touch(empty);
    struct stat st0, st;
    assert_int_equal(stat(empty, &st0), 0);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d1"), 0);
    assert_list(f, "/vm1/snapshots", "s1 d1");
    _cleanup_free_ char *a = cfs_fake_snapshot_source(f->be, "vm1", "d1", "vda");
    _cleanup_free_ char *b = cfs_fake_snapshot_source(f->be, "vm1", "d1", "vdb");
    _cleanup_free_ char *wa = path_in(f, "vm1.vda.d1.qcow2");
    _cleanup_free_ char *wb = path_in(f, "vm1.vdb.d1.2.qcow2");
    assert_string_equal(a, wa);
    assert_string_equal(b, wb);
    assert_int_equal(stat(empty, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_int_equal(st.st_ino, st0.st_ino);

    cfs_engine_run_pending(f->e); /* d1's journal entry closed */
    assert_int_equal(journal_open_entries(f), 0);
    unsigned calls = cfs_fake_calls(f->be, "snapshot_create_multi");
    cfs_fake_fail_next(f->be, "file_exists", ENOTCONN,
                       "unable to connect to server: Connection refused");
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d2"), -ENOTCONN);
    assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), calls);
    assert_list(f, "/vm1/snapshots", "s1 d1");
    assert_int_equal(journal_open_entries(f), 0);
}

/* rmdir of a domain snapshot in one disk's snapshots/ merges that disk
 * only: the name stays at domain level for the other. */
static void test_dom_then_disk_rmdir(void **state)
{
    struct fx *f = *state;
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d1"), 0);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d2"), 0);
    cfs_engine_run_pending(f->e);
    assert_list(f, "/vm1/snapshots", "s1 d1 d2");
    /* vdb's d1 is an intermediate layer: a commit of vdb alone */
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vdb", "d1"), 0);
    cfs_fake_job_complete(f->be, "vm1", "vdb");
    cfs_engine_run_pending(f->e);
    cfs_engine_run_pending(f->e);
    assert_list(f, "/vm1/vdb/snapshots", "d2");
    assert_list(f, "/vm1/vda/snapshots", "s1 d1 d2");
    assert_list(f, "/vm1/snapshots", "s1 d1 d2");
    assert_node_has(f, "/vm1/snapshots/d1/info", "\nvda   ok      ");
    assert_node_has(f, "/vm1/snapshots/d1/info", "\nvdb   merged  -\n");
    /* the domain-level rmdir merges what is left: vda (a job group of
     * one member; test_groups.c has the rest) */
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", NULL, "d1"), 0);
    assert_node_has(f, "/vm1/job", "members:   vda running");
    cfs_fake_job_complete(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    cfs_engine_run_pending(f->e);
    assert_node_has(f, "/vm1/job", "state:     completed\n");
    assert_list(f, "/vm1/vda/snapshots", "s1 d2");
    assert_list(f, "/vm1/snapshots", "s1 d2");
}

/* Refusals: nothing changes on any disk, no snapshot call. */
static void test_dom_mkdir_refusals(void **state)
{
    struct fx *f = *state;
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    /* the name exists in one disk only (a disk-level snapshot) */
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", "vdb", "only-b"), 0);
    unsigned calls = cfs_fake_calls(f->be, "snapshot_create_multi");
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "only-b"), -EEXIST);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "s1"), -EEXIST);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "bad name"), -EINVAL);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "-x"), -EINVAL);
    assert_int_equal(cfs_engine_mkdir(f->e, "nope", NULL, "x"), -ENOENT);
    /* a disk with a merge in progress: EBUSY, as the disk-level mkdir */
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "x"), -EBUSY);
    assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), calls);
    assert_int_equal(cfs_fake_calls(f->be, "agent_freeze"), 1);
    assert_list(f, "/vm1/vdb/snapshots", "only-b");
    assert_node_has(f, "/vm1/vdb/job", "state:     completed");
    cfs_engine_run_pending(f->e);
    assert_int_equal(journal_open_entries(f), 1); /* the merge's own */
}

/* No disk can have a snapshot: EROFS. */
static void test_dom_mkdir_no_disk(void **state)
{
    struct fx *f = *state;
    _cleanup_free_ char *p = path_in(f, "ro.qcow2");
    touch(p);
    const char *const chain[] = { p };
    cfs_fake_add_simple(f->be, "vm2", CFS_DOM_RUNNING, "vda", chain, NULL, 1);
    struct cfs_domain *d = NULL;
    assert_int_equal(f->be->ops->read_domain(f->be, "vm2", &d), 0);
    d->disks[0].readonly = true;
    cfs_fake_put_domain(f->be, d);
    cfs_domain_free(d);
    cfs_engine_run_pending(f->e);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm2", NULL, "x"), -EROFS);
    assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "agent_freeze"), 0);
}

/* libvirt fails on one disk: no disk changed, the guest thawed, both
 * disks' jobs say why; the overlays chainfs named are not in any chain. */
static void test_dom_mkdir_one_disk_fails(void **state)
{
    struct fx *f = *state;
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_OK);
    cfs_fake_fail_snapshot_disk(f->be, "vdb", EIO, NULL);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d1"), -EIO);
    struct cfs_fake_agent_state a = cfs_fake_agent_state(f->be, "vm1");
    assert_int_equal(a.freezes, 1);
    assert_false(a.frozen);
    assert_list(f, "/vm1/snapshots", "s1");
    assert_list(f, "/vm1/vda/snapshots", "s1");
    assert_list(f, "/vm1/vdb/snapshots", "");
    assert_node_has(f, "/vm1/vda/job", "state:     failed");
    assert_node_has(f, "/vm1/vdb/job", "state:     failed");
    assert_node_has(f, "/vm1/vdb/job", "mkdir d1 (domain): ");
    cfs_engine_run_pending(f->e);
    assert_int_equal(journal_open_entries(f), 0);
    /* the disks are free again */
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d1"), 0);
}

/* -o quiesce=require with no agent: EOPNOTSUPP, nothing changed. */
static void test_dom_mkdir_require(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d1"), -EOPNOTSUPP);
    assert_int_equal(cfs_fake_calls(f->be, "snapshot_create_multi"), 0);
    assert_list(f, "/vm1/snapshots", "s1");
    assert_node_has(f, "/vm1/vda/job", "-o quiesce=require: no guest agent channel");
    cfs_engine_run_pending(f->e);
    assert_int_equal(journal_open_entries(f), 0);
    cfs_fake_agent_set(f->be, "vm1", CFS_FAKE_AGENT_HUNG);
    assert_int_equal(cfs_engine_mkdir(f->e, "vm1", NULL, "d1"), -ETIMEDOUT);
    assert_list(f, "/vm1/snapshots", "s1");
    assert_node_has(f, "/vm1/job", "thaw:");
}

/* A domain-level mkdir that a crash interrupted after libvirt took it:
 * recovery sees every disk taken, closes the entry, deletes nothing. */
static void test_dom_mkdir_recover_taken(void **state)
{
    (void)state;
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-domsnap-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    f->be = cfs_fake_backend_new();
    put_vm1(f, CFS_DOM_RUNNING);
    _cleanup_free_ char *ova = path_in(f, "vm1.vda.d1.qcow2");
    _cleanup_free_ char *ovb = path_in(f, "vm1.vdb.d1.qcow2");
    _cleanup_free_ char *a0 = path_in(f, "vm1.vda.s1.qcow2");
    /* libvirt took it; the daemon died before closing its entry */
    const struct cfs_snapshot_disk sd[] = { { "vda", ova }, { "vdb", ovb } };
    assert_int_equal(f->be->ops->snapshot_create_multi(f->be, "vm1", "d1", 2, sd, NULL), 0);
    touch(ova);
    struct cfs_journal *j;
    char **warnings = NULL;
    assert_int_equal(cfs_journal_open(f->state, &j, &warnings), 0);
    char *disks[] = { "vda", "vdb", NULL };
    struct cfs_job_file made[] = { { .path = ova }, { .path = ovb } };
    struct cfs_journal_entry en = {
        .id = cfs_journal_new_id(j), .domain = "vm1", .disk = "vda", .snapshot = "d1",
        .top = ova, .base = a0, .type = CFS_JOB_SNAPSHOT, .phase = "starting",
        .disks = disks, .n_made = 2, .made = made, .created = 1, .updated = 1,
    };
    assert_int_equal(cfs_journal_put(j, &en), 0);
    free(en.id);
    cfs_journal_free(j);
    engine_start(f, CFS_QUIESCE_OFF);
    cfs_engine_run_pending(f->e);
    assert_int_equal(journal_open_entries(f), 0);
    assert_list(f, "/vm1/snapshots", "s1 d1");
    struct stat st;
    assert_int_equal(stat(ova, &st), 0); /* nothing deleted */
    assert_int_equal(cfs_fake_calls(f->be, "agent_thaw"), 0); /* not frozen */
    fx_free(f);
}

static bool stop_second_time(void *arg)
{
    return ++*(int *)arg > 1;
}

/* <dom>/wait blocks while any disk has a job in progress (here vda's
 * merge), then shows <dom>/job; <dom>/job shows each disk's job. */
static void test_dom_wait_and_job(void **state)
{
    struct fx *f = *state;
    assert_int_equal(cfs_engine_rmdir(f->e, "vm1", "vda", "s1"), 0);
    assert_node_has(f, "/vm1/job", "disk: vda\n  type:         active-commit\n");
    assert_node_has(f, "/vm1/job", "disk: vdb\n  type:  none\n");
    assert_node_has(f, "/vm1/job.json", "\"disk\": \"vda\"");
    int calls = 0;
    struct cfs_buf b = { 0 };
    assert_int_equal(cfs_engine_wait(f->e, "vm1", NULL, stop_second_time, &calls, &b), -EINTR);
    assert_true(calls >= 2);
    cfs_fake_job_ready(f->be, "vm1", "vda");
    cfs_engine_run_pending(f->e);
    cfs_engine_run_pending(f->e);
    calls = 0;
    assert_int_equal(cfs_engine_wait(f->e, "vm1", "", stop_second_time, &calls, &b), 0);
    assert_non_null(strstr(b.data, "disk: vda\n"));
    assert_non_null(strstr(b.data, "  state:        completed\n"));
    cfs_buf_free(&b);
}

int main(void)
{
    cfs_log_init(false, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_disk_mkdir_quiesced, setup_try, teardown),
        cmocka_unit_test(test_disk_mkdir_agent_matrix),
        cmocka_unit_test(test_shutoff_and_paused),
        cmocka_unit_test_setup_teardown(test_thaw_owed_retry, setup_try, teardown),
        cmocka_unit_test_setup_teardown(test_thaw_fails_after_freeze, setup_try, teardown),
        cmocka_unit_test(test_recover_frozen),
        cmocka_unit_test_setup_teardown(test_dom_mkdir_atomic, setup_try, teardown),
        cmocka_unit_test_setup_teardown(test_dom_mkdir_remote_pool_names, setup_try, teardown),
        cmocka_unit_test_setup_teardown(test_dom_then_disk_rmdir, setup_try, teardown),
        cmocka_unit_test_setup_teardown(test_dom_mkdir_refusals, setup_try, teardown),
        cmocka_unit_test_setup_teardown(test_dom_mkdir_no_disk, setup_try, teardown),
        cmocka_unit_test_setup_teardown(test_dom_mkdir_one_disk_fails, setup_try, teardown),
        cmocka_unit_test_setup_teardown(test_dom_mkdir_require, setup_require, teardown),
        cmocka_unit_test(test_dom_mkdir_recover_taken),
        cmocka_unit_test_setup_teardown(test_dom_wait_and_job, setup_try, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
