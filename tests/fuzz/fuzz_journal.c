/* fuzz_journal.c — the journal loader on any file content.
 *
 * The input is written as STATE_DIR/journal (STATE_DIR in tmpfs, made
 * once) and opened with cfs_journal_open: it must load without a crash or
 * a leak, skip what it cannot take with a warning, and keep only entries
 * with every required field. Then the first entry is stored again
 * (cfs_journal_put rewrites the file) and the journal re-opened: what the
 * writer wrote the loader must take back unchanged, whatever the strings
 * hold. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chainfs/journal.h"
#include "chainfs/util.h"
#include "fuzz.h"

static char state_dir[256];

static void cleanup(void)
{
    char path[300];

    snprintf(path, sizeof(path), "%s/journal", state_dir);
    unlink(path);
    rmdir(state_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

    (void)argc;
    (void)argv;
    snprintf(state_dir, sizeof(state_dir), "%s/chainfs-fuzz-journal-%d",
             base, (int)getpid());
    if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
        abort();
    atexit(cleanup);
    return 0;
}

static void write_journal(const uint8_t *data, size_t size)
{
    char path[300];
    int fd;

    snprintf(path, sizeof(path), "%s/journal", state_dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        abort();
    while (size > 0) {
        ssize_t n = write(fd, data, size);

        if (n <= 0)
            abort();
        data += n;
        size -= (size_t)n;
    }
    close(fd);
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_entry(const struct cfs_journal_entry *e)
{
    FUZZ_ASSERT(e->id && *e->id);
    FUZZ_ASSERT(e->domain && *e->domain);
    FUZZ_ASSERT(e->disk && *e->disk);
    FUZZ_ASSERT(e->top && *e->top);
    FUZZ_ASSERT(e->base && *e->base);
    FUZZ_ASSERT(e->phase && *e->phase);
    FUZZ_ASSERT(e->type > CFS_JOB_NONE && e->type < CFS_JOB_TYPE_MAX);
    FUZZ_ASSERT(e->direction < CFS_DIRECTION_MAX);
    for (char **n = e->snapshots; n && *n; n++)
        FUZZ_ASSERT(**n);
    FUZZ_ASSERT((e->n_leaving == 0) == (e->leaving == NULL));
    for (size_t i = 0; i < e->n_leaving; i++)
        FUZZ_ASSERT(e->leaving[i].path && *e->leaving[i].path);
    FUZZ_ASSERT(!e->written || *e->written);
    /* copies */
    FUZZ_ASSERT(!e->dest || e->dest[0] == '/');
    FUZZ_ASSERT(e->copy_mode == CFS_COPY_NONE || e->copy_mode == CFS_COPY_FLATTEN ||
                e->copy_mode == CFS_COPY_SHALLOW || e->copy_mode == CFS_COPY_CHAIN);
    FUZZ_ASSERT((e->n_made == 0) == (e->made == NULL));
    for (size_t i = 0; i < e->n_made; i++)
        FUZZ_ASSERT(e->made[i].path && *e->made[i].path);
    FUZZ_ASSERT((e->n_old == 0) == (e->old_files == NULL));
    /* issue 10: job groups */
    FUZZ_ASSERT(!e->group || *e->group);
    for (char **r = e->remaining; r && *r; r++)
        FUZZ_ASSERT(**r);
}

static void check_files(const struct cfs_job_file *a, size_t na,
                        const struct cfs_job_file *b, size_t nb)
{
    FUZZ_ASSERT(na == nb);
    for (size_t i = 0; i < na; i++) {
        FUZZ_ASSERT(str_eq(a[i].path, b[i].path));
        FUZZ_ASSERT(a[i].id.known == b[i].id.known);
        FUZZ_ASSERT(a[i].id.dev == b[i].id.dev);
        FUZZ_ASSERT(a[i].id.ino == b[i].id.ino);
    }
}

static void check_same(const struct cfs_journal_entry *a,
                       const struct cfs_journal_entry *b)
{
    FUZZ_ASSERT(str_eq(a->id, b->id));
    FUZZ_ASSERT(str_eq(a->domain, b->domain));
    FUZZ_ASSERT(str_eq(a->disk, b->disk));
    FUZZ_ASSERT(str_eq(a->snapshot, b->snapshot));
    FUZZ_ASSERT(str_eq(a->meta_name, b->meta_name));
    FUZZ_ASSERT(str_eq(a->top, b->top));
    FUZZ_ASSERT(str_eq(a->base, b->base));
    FUZZ_ASSERT(a->type == b->type);
    FUZZ_ASSERT(str_eq(a->phase, b->phase));
    FUZZ_ASSERT(a->created == b->created);
    FUZZ_ASSERT(a->updated == b->updated);
    FUZZ_ASSERT(str_eq(a->error, b->error));
    FUZZ_ASSERT(a->bandwidth == b->bandwidth);
    /* issue 8's merge fields */
    FUZZ_ASSERT(a->direction == b->direction);
    FUZZ_ASSERT(cfs_strv_len(a->snapshots) == cfs_strv_len(b->snapshots));
    for (size_t i = 0; a->snapshots && a->snapshots[i]; i++)
        FUZZ_ASSERT(str_eq(a->snapshots[i], b->snapshots[i]));
    FUZZ_ASSERT(a->n_leaving == b->n_leaving);
    for (size_t i = 0; i < a->n_leaving; i++) {
        FUZZ_ASSERT(str_eq(a->leaving[i].path, b->leaving[i].path));
        FUZZ_ASSERT(a->leaving[i].id.known == b->leaving[i].id.known);
        FUZZ_ASSERT(a->leaving[i].id.dev == b->leaving[i].id.dev);
        FUZZ_ASSERT(a->leaving[i].id.ino == b->leaving[i].id.ino);
    }
    FUZZ_ASSERT(str_eq(a->written, b->written));
    FUZZ_ASSERT(a->bytes_commit == b->bytes_commit);
    FUZZ_ASSERT(a->bytes_pull == b->bytes_pull);
    FUZZ_ASSERT(a->bytes_copied == b->bytes_copied);
    FUZZ_ASSERT(str_eq(a->reason, b->reason));
    FUZZ_ASSERT(str_eq(a->survivor, b->survivor));
    /* issue 8's copy fields */
    FUZZ_ASSERT(str_eq(a->dest, b->dest));
    FUZZ_ASSERT(a->copy_mode == b->copy_mode);
    FUZZ_ASSERT(a->manual == b->manual);
    FUZZ_ASSERT(a->finish == b->finish);
    FUZZ_ASSERT(a->n_copied == b->n_copied);
    FUZZ_ASSERT(cfs_strv_len(a->layer_meta) == cfs_strv_len(b->layer_meta));
    for (size_t i = 0; a->layer_meta && a->layer_meta[i]; i++)
        FUZZ_ASSERT(str_eq(a->layer_meta[i], b->layer_meta[i]));
    check_files(a->made, a->n_made, b->made, b->n_made);
    check_files(a->old_files, a->n_old, b->old_files, b->n_old);
    /* issue 10's group fields */
    FUZZ_ASSERT(str_eq(a->group, b->group));
    FUZZ_ASSERT(cfs_strv_len(a->remaining) == cfs_strv_len(b->remaining));
    for (size_t i = 0; a->remaining && a->remaining[i]; i++)
        FUZZ_ASSERT(str_eq(a->remaining[i], b->remaining[i]));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cfs_journal *j = NULL;
    struct cfs_journal_entry *v = NULL, *w = NULL;
    size_t n = 0, m = 0;
    char **warnings = NULL;
    int r;

    write_journal(data, size);
    r = cfs_journal_open(state_dir, &j, &warnings);
    FUZZ_ASSERT(r == 0);
    for (char **p = warnings; p && *p; p++)
        FUZZ_ASSERT(!strchr(*p, '\n'));
    cfs_strv_free(warnings);

    FUZZ_ASSERT(cfs_journal_list(j, &v, &n) == 0);
    for (size_t i = 0; i < n; i++) {
        check_entry(&v[i]);
        for (size_t k = 0; k < i; k++)
            FUZZ_ASSERT(strcmp(v[k].id, v[i].id) != 0);
    }

    if (n > 0) {
        /* Rewrite the file from memory, then load it again. */
        FUZZ_ASSERT(cfs_journal_put(j, &v[0]) == 0);
        j = cfs_journal_free(j);
        warnings = NULL;
        FUZZ_ASSERT(cfs_journal_open(state_dir, &j, &warnings) == 0);
        FUZZ_ASSERT(warnings == NULL);
        FUZZ_ASSERT(cfs_journal_list(j, &w, &m) == 0);
        FUZZ_ASSERT(m == n);
        for (size_t i = 0; i < n; i++) {
            size_t k = 0;

            while (k < m && strcmp(w[k].id, v[i].id) != 0)
                k++;
            FUZZ_ASSERT(k < m);
            check_same(&v[i], &w[k]);
        }
        cfs_journal_entries_free(w, m);
    }
    cfs_journal_entries_free(v, n);
    cfs_journal_free(j);
    return 0;
}
