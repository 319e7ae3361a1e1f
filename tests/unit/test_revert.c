/* test_revert.c — `revert NAME [force]` (issue 10 §4) against the fake
 * backend: the newest-snapshot and force rules, every refusal (and that
 * it changes nothing: files, definition, metadata, journal), what is
 * deleted and what stays, and recovery of every journal phase. No
 * libvirtd, no /dev/fuse. */
#include <errno.h>
#include <fcntl.h>
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

#include "chainfs/ctl.h"
#include "chainfs/engine.h"
#include "chainfs/journal.h"
#include "chainfs/util.h"
#include "fake.h"

/* vm1 (shut off, persistent): vda base <- s1 <- s2 (active), vdb the
 * same with its own files; s1 and s2 are domain-level snapshots (libvirt
 * metadata on both disks). vm2 (running): one disk, other.qcow2. */
struct fx {
    char dir[64];
    char state[128];
    char a[3][160];   /* vda: s2 (active), s1, base */
    char b[3][160];   /* vdb */
    char other[160];
    struct cfs_backend *be;
    struct cfs_engine *e;
};

static void touch(const char *p)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("QFI\xfb test image\n", f);
    fclose(f);
}

static bool exists(const char *p)
{
    return access(p, F_OK) == 0;
}

static void put_vm1(struct fx *f, enum cfs_dom_state st, bool persistent)
{
    struct cfs_layer la[3], lb[3];
    const char *meta[3] = { "s2", "s1", NULL };
    for (int i = 0; i < 3; i++) {
        la[i] = (struct cfs_layer){ .path = f->a[i], .format = (char *)"qcow2",
                                    .virtual_size = FAKE_VIRTUAL_SIZE,
                                    .meta_name = (char *)meta[i] };
        lb[i] = la[i];
        lb[i].path = f->b[i];
    }
    struct cfs_disk disks[2] = {
        { .target = (char *)"vda", .n_layers = 3, .layers = la },
        { .target = (char *)"vdb", .n_layers = 3, .layers = lb },
    };
    char *snaps[] = { (char *)"s1", (char *)"s2", NULL };
    struct cfs_domain d = { .name = (char *)"vm1", .state = st,
                            .persistent = persistent, .n_disks = 2,
                            .disks = disks, .snapshots = snaps };
    strcpy(d.uuid, "00000000-0000-4000-8000-000000000001");
    cfs_fake_put_domain(f->be, &d);
}

/* The fake with vm1 and vm2, files made; no engine. */
static struct fx *fx_new(enum cfs_dom_state st)
{
    struct fx *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/cfs-revert-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    const char *names[3] = { "s2", "s1", "base" };
    for (int i = 0; i < 3; i++) {
        snprintf(f->a[i], sizeof(f->a[i]), "%s/vda.%s.qcow2", f->dir, names[i]);
        snprintf(f->b[i], sizeof(f->b[i]), "%s/vdb.%s.qcow2", f->dir, names[i]);
        touch(f->a[i]);
        touch(f->b[i]);
    }
    snprintf(f->other, sizeof(f->other), "%s/other.qcow2", f->dir);
    touch(f->other);
    f->be = cfs_fake_backend_new();
    put_vm1(f, st, true);
    const char *chain2[] = { f->other };
    cfs_fake_add_simple(f->be, "vm2", CFS_DOM_RUNNING, "vda", chain2, NULL, 1);
    return f;
}

static void fx_start(struct fx *f)
{
    struct cfs_engine_config cfg = { .state_dir = f->state };
    char *err = NULL;
    assert_int_equal(cfs_engine_new(&cfg, f->be, &f->e, &err), 0);
    assert_int_equal(cfs_engine_start(f->e, false, &err), 0);
}

static int setup_shutoff(void **state)
{
    struct fx *f = fx_new(CFS_DOM_SHUTOFF);
    fx_start(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cfs_engine_free(f->e);
    test_tmpdir_remove(f->dir);
    free(f);
    return 0;
}

static int revert(struct fx *f, const char *disk, const char *cmd)
{
    struct cfs_ctl_cmd c;
    const char *why = NULL;
    assert_int_equal(cfs_ctl_parse(cmd, strlen(cmd), &c, &why), 0);
    assert_int_equal(c.op, CFS_CTL_REVERT);
    return cfs_engine_ctl(f->e, "vm1", disk, &c);
}

static char *psource(struct fx *f, const char *disk)
{
    char *p = NULL;
    assert_int_equal(f->be->ops->persistent_source_get(f->be, "vm1", disk, &p), 0);
    return p;
}

static void assert_psource(struct fx *f, const char *disk, const char *want)
{
    char *p = psource(f, disk);
    assert_non_null(p);
    assert_string_equal(p, want);
    free(p);
}

static size_t journal_entries(struct fx *f)
{
    struct cfs_journal *j = NULL;
    assert_int_equal(cfs_journal_open(f->state, &j, NULL), 0);
    struct cfs_journal_entry *v = NULL;
    size_t n = 0;
    assert_int_equal(cfs_journal_list(j, &v, &n), 0);
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
    return n;
}

static size_t files_in_dir(struct fx *f)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "ls '%s' | grep -c qcow2", f->dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    unsigned n = 0;
    assert_int_equal(fscanf(p, "%u", &n), 1);
    pclose(p);
    return n;
}

/* Nothing of vm1 changed: every file there, no new one, the definition
 * and the metadata as before, no journal entry. */
static void assert_unchanged(struct fx *f)
{
    for (int i = 0; i < 3; i++) {
        assert_true(exists(f->a[i]));
        assert_true(exists(f->b[i]));
    }
    assert_int_equal(files_in_dir(f), 7);
    assert_psource(f, "vda", f->a[0]);
    assert_psource(f, "vdb", f->b[0]);
    char *src = cfs_fake_snapshot_source(f->be, "vm1", "s2", "vda");
    assert_non_null(src);
    assert_string_equal(src, f->a[0]);
    free(src);
    assert_int_equal(journal_entries(f), 0);
    assert_int_equal(cfs_fake_calls(f->be, "persistent_sources_set"), 0);
    assert_int_equal(cfs_fake_calls(f->be, "image_create"), 0);
}

static char *new_overlay(struct fx *f, const char *disk, const char *name)
{
    return cfs_xasprintf("%s/vm1.%s.%s.qcow2", f->dir, disk, name);
}

/* `ls snapshots/` of DISK (NULL: the domain's own... not here: a disk's). */
static char *snapshots_of(struct fx *f, const char *disk)
{
    _cleanup_free_ char *path = cfs_xasprintf("/vm1/%s/snapshots", disk);
    struct cfs_path p;
    assert_int_equal(cfs_path_parse(path, &p), 0);
    char **names = NULL;
    assert_int_equal(cfs_engine_readdir(f->e, &p, &names), 0);
    struct cfs_buf b = {0};
    for (char **n = names; n && *n; n++)
        cfs_buf_printf(&b, "%s%s", n == names ? "" : " ", *n);
    cfs_strv_free(names);
    return cfs_buf_steal(&b);
}

static void assert_snapshots(struct fx *f, const char *disk, const char *want)
{
    cfs_engine_run_pending(f->e);
    char *got = snapshots_of(f, disk);
    assert_string_equal(got, want);
    free(got);
}

/* libvirt's current snapshot of vm1 is NAME. */
static void assert_current(struct fx *f, const char *name)
{
    struct cfs_domain *d = NULL;
    assert_int_equal(f->be->ops->read_domain(f->be, "vm1", &d), 0);
    const struct cfs_snap_info *si = cfs_domain_find_snap(d, name);
    assert_non_null(si);
    assert_true(si->current);
    for (size_t i = 0; i < d->n_snaps; i++)
        assert_true(d->snaps[i].current == cfs_streq(d->snaps[i].name, name));
    cfs_domain_free(d);
}

static enum cfs_job_phase phase_of(struct fx *f, const char *disk,
                                   enum cfs_job_type *type)
{
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_find_disk_state(t, "vm1", disk);
    enum cfs_job_phase ph = s ? s->job.phase : CFS_PHASE_NONE;
    if (type)
        *type = s ? s->job.type : CFS_JOB_NONE;
    pthread_mutex_unlock(&t->lock);
    return ph;
}

/* ---- the newest snapshot ---------------------------------------------------- */

/* Disk level, NAME the newest (layers[0]): a new overlay on NAME's frozen
 * layer is the definition's source, NAME's old overlay is deleted, NAME
 * stays (its metadata names the new overlay, current); the other disk is
 * untouched. */
static void test_newest_disk(void **state)
{
    struct fx *f = *state;
    assert_int_equal(revert(f, "vda", "revert s2\n"), 0);
    _cleanup_free_ char *o = new_overlay(f, "vda", "s2");
    assert_true(exists(o));
    assert_psource(f, "vda", o);
    assert_false(exists(f->a[0]));       /* the writes since s2 are gone */
    assert_true(exists(f->a[1]) && exists(f->a[2]));
    assert_psource(f, "vdb", f->b[0]);   /* vdb: not reverted */
    assert_true(exists(f->b[0]));
    char *src = cfs_fake_snapshot_source(f->be, "vm1", "s2", "vda");
    assert_non_null(src);
    assert_string_equal(src, o);
    free(src);
    src = cfs_fake_snapshot_source(f->be, "vm1", "s2", "vdb");
    assert_non_null(src);
    assert_string_equal(src, f->b[0]);
    free(src);
    assert_int_equal(cfs_fake_calls(f->be, "persistent_sources_set"), 1);
    assert_int_equal(journal_entries(f), 0);
    enum cfs_job_type type;
    assert_int_equal(phase_of(f, "vda", &type), CFS_PHASE_COMPLETED);
    assert_int_equal(type, CFS_JOB_REVERT);
    assert_int_equal(phase_of(f, "vdb", NULL), CFS_PHASE_NONE);
    /* NAME stays: the new overlay is s2 */
    assert_snapshots(f, "vda", "s1 s2");
    assert_snapshots(f, "vdb", "s1 s2");
    assert_current(f, "s2");
}

/* Domain level: every disk with NAME's layer, in ONE define. */
static void test_newest_domain(void **state)
{
    struct fx *f = *state;
    assert_int_equal(revert(f, NULL, "revert s2"), 0);
    _cleanup_free_ char *oa = new_overlay(f, "vda", "s2");
    _cleanup_free_ char *ob = new_overlay(f, "vdb", "s2");
    assert_psource(f, "vda", oa);
    assert_psource(f, "vdb", ob);
    assert_int_equal(cfs_fake_calls(f->be, "persistent_sources_set"), 1);
    assert_false(exists(f->a[0]));
    assert_false(exists(f->b[0]));
    assert_true(exists(f->a[1]) && exists(f->b[1]));
    char *src = cfs_fake_snapshot_source(f->be, "vm1", "s2", "vdb");
    assert_non_null(src);
    assert_string_equal(src, ob);
    free(src);
    assert_int_equal(phase_of(f, "vda", NULL), CFS_PHASE_COMPLETED);
    assert_int_equal(phase_of(f, "vdb", NULL), CFS_PHASE_COMPLETED);
    assert_int_equal(journal_entries(f), 0);
    /* issue 11: one revert job per disk, counted in metrics.prom */
    struct cfs_path mp;
    assert_int_equal(cfs_path_parse("/.chainfs/metrics.prom", &mp), 0);
    struct cfs_buf mb = {0};
    assert_int_equal(cfs_engine_read(f->e, &mp, &mb), 0);
    assert_non_null(strstr(mb.data, "\nchainfs_jobs_started_total{type=\"revert\"} 2\n"));
    assert_non_null(strstr(mb.data, "\nchainfs_jobs_completed_total{type=\"revert\"} 2\n"));
    assert_non_null(strstr(mb.data, "\nchainfs_jobs_running{type=\"revert\"} 0\n"));
    cfs_buf_free(&mb);
    /* again: s2 is still the newest snapshot, its own overlay the active
     * layer; the next overlay takes the next free name */
    assert_int_equal(revert(f, NULL, "revert s2"), 0);
    _cleanup_free_ char *oa2 = cfs_xasprintf("%s/vm1.vda.s2.2.qcow2", f->dir);
    assert_psource(f, "vda", oa2);
    assert_false(exists(oa));
}

/* ---- older snapshots: ENOTEMPTY, or force ---------------------------------- */

static void test_older_needs_force(void **state)
{
    struct fx *f = *state;
    assert_int_equal(revert(f, "vda", "revert s1"), -ENOTEMPTY);
    assert_int_equal(revert(f, NULL, "revert s1"), -ENOTEMPTY);
    assert_unchanged(f);
}

static void test_older_force(void **state)
{
    struct fx *f = *state;
    assert_int_equal(revert(f, NULL, "revert s1 force"), 0);
    _cleanup_free_ char *oa = new_overlay(f, "vda", "s1");
    _cleanup_free_ char *ob = new_overlay(f, "vdb", "s1");
    assert_psource(f, "vda", oa);
    assert_psource(f, "vdb", ob);
    /* s2 and s1's old overlays are gone, the base stays */
    assert_false(exists(f->a[0]) || exists(f->a[1]) || exists(f->b[0]) ||
                 exists(f->b[1]));
    assert_true(exists(f->a[2]) && exists(f->b[2]));
    assert_snapshots(f, "vda", "s1");
    assert_snapshots(f, "vdb", "s1");
    assert_current(f, "s1");
    /* s2's metadata is gone, s1's names the new overlays */
    char *src = cfs_fake_snapshot_source(f->be, "vm1", "s2", "vda");
    assert_null(src);
    src = cfs_fake_snapshot_source(f->be, "vm1", "s1", "vdb");
    assert_non_null(src);
    assert_string_equal(src, ob);
    free(src);
    assert_int_equal(journal_entries(f), 0);
}

/* ---- refusals: nothing changes -------------------------------------------- */

static void test_running_busy(void **state)
{
    struct fx *f = *state;
    put_vm1(f, CFS_DOM_RUNNING, true);
    assert_int_equal(revert(f, "vda", "revert s2"), -EBUSY);
    assert_int_equal(revert(f, NULL, "revert s2 force"), -EBUSY);
    put_vm1(f, CFS_DOM_PAUSED, true);
    assert_int_equal(revert(f, NULL, "revert s2"), -EBUSY);
    /* running comes first, even for a name that does not exist */
    assert_int_equal(revert(f, NULL, "revert nope"), -EBUSY);
    assert_unchanged(f);
}

static void test_transient_refused(void **state)
{
    struct fx *f = *state;
    put_vm1(f, CFS_DOM_SHUTOFF, false);
    assert_int_equal(revert(f, NULL, "revert s2"), -EOPNOTSUPP);
    assert_unchanged(f);
}

static void test_no_such(void **state)
{
    struct fx *f = *state;
    assert_int_equal(revert(f, NULL, "revert nope"), -ENOENT);
    assert_int_equal(revert(f, "vda", "revert nope"), -ENOENT);
    assert_int_equal(revert(f, "vdz", "revert s2"), -ENOENT);
    struct cfs_ctl_cmd c;
    assert_int_equal(cfs_ctl_parse("revert s2", 9, &c, NULL), 0);
    assert_int_equal(cfs_engine_ctl(f->e, "vm9", NULL, &c), -ENOENT);
    /* the base is not a snapshot */
    assert_int_equal(revert(f, "vda", "revert vda.base.qcow2 force"), -ENOENT);
    assert_unchanged(f);
}

/* A job in progress, queued deletions or a reader of a file the revert
 * would discard: EBUSY. */
static void test_busy_disk(void **state)
{
    struct fx *f = *state;
    struct cfs_tree *t = cfs_engine_tree(f->e);
    pthread_mutex_lock(&t->lock);
    struct cfs_disk_state *s = cfs_tree_disk_state(t, "vm1", "vdb");
    s->job.type = CFS_JOB_OFFLINE_COMMIT;
    s->job.phase = CFS_PHASE_RUNNING;
    pthread_mutex_unlock(&t->lock);
    assert_int_equal(revert(f, NULL, "revert s2"), -EBUSY);
    assert_int_equal(revert(f, "vda", "revert s2"), 0); /* vda is free */
    pthread_mutex_lock(&t->lock);
    s->job.phase = CFS_PHASE_COMPLETED;
    s->n_queue = 1;
    s->queue = cfs_xcalloc(1, sizeof(*s->queue));
    s->queue[0].snapshot = cfs_xstrdup("s1");
    pthread_mutex_unlock(&t->lock);
    assert_int_equal(revert(f, "vdb", "revert s2"), -EBUSY);
    pthread_mutex_lock(&t->lock);
    cfs_queued_clear(&s->queue[0]);
    free(s->queue);
    s->queue = NULL;
    s->n_queue = 0;
    /* a disk.raw of s2 on vdb reads vdb's s1 and base only: no
     * refusal; one that reads vdb.s2 (a later snapshot's view) is */
    s->n_readers = 1;
    s->readers = cfs_xcalloc(1, sizeof(*s->readers));
    s->readers[0].id = 1;
    s->readers[0].snapshot = cfs_xstrdup("s2");
    s->readers[0].n_files = 1;
    s->readers[0].ids = cfs_xcalloc(1, sizeof(struct cfs_file_id));
    s->readers[0].paths = cfs_xcalloc(2, sizeof(char *));
    s->readers[0].paths[0] = cfs_xstrdup(f->b[0]);
    s->readers[0].pid = 4242;
    pthread_mutex_unlock(&t->lock);
    assert_int_equal(revert(f, "vdb", "revert s2"), -EBUSY);
    pthread_mutex_lock(&t->lock);
    free(s->readers[0].paths[0]);
    s->readers[0].paths[0] = cfs_xstrdup(f->b[1]);
    pthread_mutex_unlock(&t->lock);
    assert_int_equal(revert(f, "vdb", "revert s2"), 0);
    pthread_mutex_lock(&t->lock);
    cfs_reader_clear(&s->readers[0]);
    free(s->readers);
    s->readers = NULL;
    s->n_readers = 0;
    pthread_mutex_unlock(&t->lock);
}

/* A process writes vdb's active image (a QEMU holding QEMU's byte-101
 * lock: the domain was started behind chainfs's back): the revert's lock
 * step refuses, EBUSY, nothing changed, the jobs failed with why. */
static void test_image_in_use(void **state)
{
    struct fx *f = *state;
    int w = open(f->b[0], O_RDWR | O_CLOEXEC);
    assert_true(w >= 0);
    struct flock perm = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
                          .l_start = CFS_QEMU_LOCK_PERM_WRITE, .l_len = 1 };
    assert_int_equal(fcntl(w, F_OFD_SETLK, &perm), 0);
    assert_int_equal(revert(f, NULL, "revert s2"), -EBUSY);
    close(w);
    assert_unchanged(f);
    assert_int_equal(phase_of(f, "vda", NULL), CFS_PHASE_FAILED);
    assert_int_equal(phase_of(f, "vdb", NULL), CFS_PHASE_FAILED);
    /* the claim is gone: the revert works now */
    assert_int_equal(revert(f, NULL, "revert s2"), 0);
}

/* Files that are not this machine's: EOPNOTSUPP (a revert creates and
 * deletes files); a read-only disk: EROFS; nothing changed. */
static void test_remote_and_readonly(void **state)
{
    struct fx *f = *state;
    cfs_fake_set_remote(f->be, true, NULL);
    assert_int_equal(revert(f, NULL, "revert s2"), -EOPNOTSUPP);
    assert_int_equal(revert(f, "vda", "revert s2"), -EOPNOTSUPP);
    cfs_fake_set_remote(f->be, false, NULL);
    assert_unchanged(f);

    struct cfs_domain *d = NULL;
    assert_int_equal(f->be->ops->read_domain(f->be, "vm1", &d), 0);
    d->disks[1].readonly = true;
    cfs_fake_put_domain(f->be, d);
    cfs_domain_free(d);
    assert_int_equal(revert(f, "vdb", "revert s2"), -EROFS);
    assert_int_equal(revert(f, NULL, "revert s2"), -EROFS);
    assert_unchanged(f);
}

/* The define fails: the new overlays go again, nothing else changed. */
static void test_define_fails(void **state)
{
    struct fx *f = *state;
    cfs_fake_fail_next(f->be, "persistent_sources_set", EIO,
                       "internal error: cannot save the definition");
    assert_int_equal(revert(f, NULL, "revert s2"), -EIO);
    _cleanup_free_ char *oa = new_overlay(f, "vda", "s2");
    assert_false(exists(oa));
    assert_int_equal(files_in_dir(f), 7);
    assert_psource(f, "vda", f->a[0]);
    assert_psource(f, "vdb", f->b[0]);
    assert_int_equal(journal_entries(f), 0);
    assert_int_equal(phase_of(f, "vda", NULL), CFS_PHASE_FAILED);
}

/* A file the revert discards that another domain's chain uses stays. */
static void test_shared_file_stays(void **state)
{
    struct fx *f = *state;
    const char *chain2[] = { f->other, f->a[0] };
    cfs_fake_add_simple(f->be, "vm2", CFS_DOM_RUNNING, "vda", chain2, NULL, 2);
    assert_int_equal(revert(f, "vda", "revert s2"), 0);
    _cleanup_free_ char *oa = new_overlay(f, "vda", "s2");
    assert_psource(f, "vda", oa);
    assert_true(exists(f->a[0]));   /* used by vm2: left in place */
}

/* ---- recovery ------------------------------------------------------------ */

/* Journal a revert of s1 force on both disks of vm1 in PHASE (what
 * revert.c writes), the new overlays made (their dev/ino recorded). */
static void journal_revert(struct fx *f, const char *phase, char **made)
{
    struct cfs_journal *j = NULL;
    assert_int_equal(cfs_journal_open(f->state, &j, NULL), 0);
    struct cfs_journal_entry en = {
        .id = cfs_xstrdup("1764000000-1-1"),
        .domain = cfs_xstrdup("vm1"),
        .disk = cfs_xstrdup("vda"),
        .snapshot = cfs_xstrdup("s1"),
        .meta_name = cfs_xstrdup("s1"),
        .top = cfs_xstrdup(f->a[0]),
        .base = cfs_xstrdup(f->a[2]),
        .type = CFS_JOB_REVERT,
        .phase = cfs_xstrdup(phase),
        .created = 1764000000,
        .updated = 1764000001,
        .force = true,
        .n_made = 2,
        .n_old = 2,
        .n_leaving = 4,
    };
    cfs_strv_push(&en.disks, cfs_xstrdup("vda"));
    cfs_strv_push(&en.disks, cfs_xstrdup("vdb"));
    cfs_strv_push(&en.layer_meta, cfs_xstrdup("s1"));
    cfs_strv_push(&en.layer_meta, cfs_xstrdup("s1"));
    cfs_strv_push(&en.snapshots, cfs_xstrdup("s2"));
    cfs_strv_push(&en.meta_names, cfs_xstrdup("s2"));
    en.made = cfs_xcalloc(2, sizeof(*en.made));
    en.old_files = cfs_xcalloc(2, sizeof(*en.old_files));
    en.leaving = cfs_xcalloc(4, sizeof(*en.leaving));
    const char *old[2] = { f->a[0], f->b[0] };
    const char *leave[4] = { f->a[0], f->a[1], f->b[0], f->b[1] };
    for (int k = 0; k < 2; k++) {
        en.made[k].path = cfs_xstrdup(made[k]);
        struct stat st;
        assert_int_equal(stat(made[k], &st), 0);
        en.made[k].id = (struct cfs_file_id){ .known = true, .dev = st.st_dev,
                                              .ino = st.st_ino };
        en.old_files[k].path = cfs_xstrdup(old[k]);
    }
    for (int k = 0; k < 4; k++) {
        struct stat st;
        assert_int_equal(stat(leave[k], &st), 0);
        en.leaving[k].path = cfs_xstrdup(leave[k]);
        en.leaving[k].id = (struct cfs_file_id){ .known = true, .dev = st.st_dev,
                                                 .ino = st.st_ino };
    }
    assert_int_equal(cfs_journal_put(j, &en), 0);
    cfs_journal_entry_clear(&en);
    cfs_journal_free(j);
}

/* A daemon killed in PHASE; DEFINED: the define had happened. Then a new
 * daemon starts on the state directory. */
static struct fx *crashed_in(const char *phase, bool defined, char ***made_out)
{
    struct fx *f = fx_new(CFS_DOM_SHUTOFF);
    char **made = NULL;
    cfs_strv_push(&made, cfs_xasprintf("%s/vm1.vda.s1.qcow2", f->dir));
    cfs_strv_push(&made, cfs_xasprintf("%s/vm1.vdb.s1.qcow2", f->dir));
    const char *back[2] = { f->a[2], f->b[2] };
    for (int k = 0; k < 2; k++) {
        struct cfs_file_id id = {0};
        assert_int_equal(f->be->ops->image_create(f->be, made[k], f->a[1], "qcow2",
                                                  back[k], "qcow2", &id), 0);
        cfs_file_id_clear(&id);
    }
    if (defined) {
        const char *ds[2] = { "vda", "vdb" };
        const char *paths[2] = { made[0], made[1] };
        const char *fmts[2] = { "qcow2", "qcow2" };
        assert_int_equal(f->be->ops->persistent_sources_set(f->be, "vm1", 2, ds,
                                                            paths, fmts), 0);
    }
    journal_revert(f, phase, made);
    fx_start(f);   /* recovery runs here */
    cfs_engine_run_pending(f->e);
    *made_out = made;
    return f;
}

static void assert_rolled_back(struct fx *f, char **made)
{
    assert_false(exists(made[0]));
    assert_false(exists(made[1]));
    for (int i = 0; i < 3; i++)
        assert_true(exists(f->a[i]) && exists(f->b[i]));
    assert_psource(f, "vda", f->a[0]);
    assert_psource(f, "vdb", f->b[0]);
    assert_int_equal(journal_entries(f), 0);
}

static void assert_rolled_forward(struct fx *f, char **made, bool metadata)
{
    assert_true(exists(made[0]) && exists(made[1]));
    assert_psource(f, "vda", made[0]);
    assert_psource(f, "vdb", made[1]);
    assert_false(exists(f->a[0]) || exists(f->a[1]) || exists(f->b[0]) ||
                 exists(f->b[1]));
    assert_true(exists(f->a[2]) && exists(f->b[2]));
    if (metadata) {
        char *src = cfs_fake_snapshot_source(f->be, "vm1", "s1", "vdb");
        assert_non_null(src);
        assert_string_equal(src, made[1]);
        free(src);
        assert_null(cfs_fake_snapshot_source(f->be, "vm1", "s2", "vda"));
        assert_current(f, "s1");
    }
    assert_int_equal(journal_entries(f), 0);
}

static void test_recover_prepare(void **state)
{
    char **made = NULL;
    struct fx *f = crashed_in("prepare", false, &made);
    *state = f;
    assert_rolled_back(f, made);
    cfs_strv_free(made);
}

static void test_recover_switching_old(void **state)
{
    char **made = NULL;
    struct fx *f = crashed_in("switching", false, &made);
    *state = f;
    assert_rolled_back(f, made);
    cfs_strv_free(made);
}

static void test_recover_switching_new(void **state)
{
    char **made = NULL;
    struct fx *f = crashed_in("switching", true, &made);
    *state = f;
    assert_rolled_forward(f, made, true);
    cfs_strv_free(made);
}

/* One disk names the new overlay, the other the old source: not from one
 * define. Nothing is touched; the entry stays. */
static void test_recover_switching_mixed(void **state)
{
    struct fx *f = fx_new(CFS_DOM_SHUTOFF);
    *state = f;
    char **made = NULL;
    cfs_strv_push(&made, cfs_xasprintf("%s/vm1.vda.s1.qcow2", f->dir));
    cfs_strv_push(&made, cfs_xasprintf("%s/vm1.vdb.s1.qcow2", f->dir));
    for (int k = 0; k < 2; k++) {
        struct cfs_file_id id = {0};
        assert_int_equal(f->be->ops->image_create(f->be, made[k], f->a[1], "qcow2",
                                                  f->a[2], "qcow2", &id), 0);
        cfs_file_id_clear(&id);
    }
    const char *ds[1] = { "vda" };
    const char *paths[1] = { made[0] };
    const char *fmts[1] = { "qcow2" };
    assert_int_equal(f->be->ops->persistent_sources_set(f->be, "vm1", 1, ds, paths,
                                                        fmts), 0);
    journal_revert(f, "switching", made);
    fx_start(f);
    assert_true(exists(made[0]) && exists(made[1]));
    for (int i = 0; i < 3; i++)
        assert_true(exists(f->a[i]) && exists(f->b[i]));
    assert_int_equal(journal_entries(f), 1);
    cfs_strv_free(made);
}

static void test_recover_switched(void **state)
{
    char **made = NULL;
    struct fx *f = crashed_in("switched", true, &made);
    *state = f;
    assert_rolled_forward(f, made, true);
    cfs_strv_free(made);
}

static void test_recover_cleanup(void **state)
{
    char **made = NULL;
    struct fx *f = crashed_in("cleanup", true, &made);
    *state = f;
    assert_rolled_forward(f, made, false);
    cfs_strv_free(made);
}

/* Recovery deletes only the files journaled: a made[] path that is now
 * another file (not the dev/ino recorded) stays. */
static void test_recover_prepare_other_file_stays(void **state)
{
    struct fx *f = fx_new(CFS_DOM_SHUTOFF);
    *state = f;
    char **made = NULL;
    cfs_strv_push(&made, cfs_xasprintf("%s/vm1.vda.s1.qcow2", f->dir));
    cfs_strv_push(&made, cfs_xasprintf("%s/vm1.vdb.s1.qcow2", f->dir));
    touch(made[0]);
    touch(made[1]);
    journal_revert(f, "prepare", made);
    /* vdb's is replaced by another file under the same name (renamed
     * over it: another inode) */
    char other[200];
    snprintf(other, sizeof(other), "%s/replacement", f->dir);
    touch(other);
    assert_int_equal(rename(other, made[1]), 0);
    fx_start(f);
    assert_false(exists(made[0]));
    assert_true(exists(made[1]));
    assert_int_equal(journal_entries(f), 0);
    cfs_strv_free(made);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_shutoff, teardown)
#define R(fn) cmocka_unit_test_teardown(fn, teardown)
    const struct CMUnitTest tests[] = {
        T(test_newest_disk),
        T(test_newest_domain),
        T(test_older_needs_force),
        T(test_older_force),
        T(test_running_busy),
        T(test_transient_refused),
        T(test_no_such),
        T(test_busy_disk),
        T(test_image_in_use),
        T(test_remote_and_readonly),
        T(test_define_fails),
        T(test_shared_file_stays),
        R(test_recover_prepare),
        R(test_recover_switching_old),
        R(test_recover_switching_new),
        R(test_recover_switching_mixed),
        R(test_recover_switched),
        R(test_recover_cleanup),
        R(test_recover_prepare_other_file_stays),
    };
#undef T
#undef R
    return cmocka_run_group_tests(tests, NULL, NULL);
}
