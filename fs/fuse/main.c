/* main.c — the chainfs command: options, start-up, daemonising, the FUSE
 * loop, shut-down.
 *
 * Start-up errors must reach the terminal, yet threads do not survive
 * fork(). So the daemon forks first and does all the work (journal,
 * libvirt connection, engine thread, mount) in the child, which reports
 * success or the error text back to the waiting parent through a pipe;
 * the parent prints it and exits with the child's verdict. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fuse_ops.h"
#include "mountid.h"

#include <fuse_log.h>
#include <fuse_lowlevel.h>

#include "chainfs/ctl.h"
#include "chainfs/log.h"

struct options {
    char **connects;   /* -c, --connect, -o connect=, in order (issue 12) */
    char *overlay_dir;
    char *state_dir;
    char *manage_group;
    char *bandwidth;
    char *keepalive;
    char *live_pull;
    char *quiesce;
    char *quiesce_timeout;
    char *audit;
    int keep_merged;
    int help;
    int version;
    int foreground;
    int debug;
    int single;
    int allow_other;
    int have_fsname;   /* the user's -o fsname= / subtype= win over ours */
    int have_subtype;
    char *nonopt[3];
    int n_nonopt;
};

enum {
    KEY_HELP,
    KEY_VERSION,
    KEY_FOREGROUND,
    KEY_DEBUG,
    KEY_SINGLE,
    KEY_CONNECT,
};

/* One -c/--connect/-o connect= value: "[NAME=]URI". */
static const char *const connect_prefixes[] = {
    "--connect=", "--connect", "connect=", "-c",
};

#define OPT(t, field, v) {t, offsetof(struct options, field), v}
static const struct fuse_opt option_table[] = {
    FUSE_OPT_KEY("-c ", KEY_CONNECT),
    FUSE_OPT_KEY("--connect=", KEY_CONNECT),
    FUSE_OPT_KEY("--connect ", KEY_CONNECT),
    FUSE_OPT_KEY("connect=", KEY_CONNECT),
    OPT("overlay_dir=%s", overlay_dir, 0),
    OPT("state_dir=%s", state_dir, 0),
    OPT("manage_group=%s", manage_group, 0),
    OPT("bandwidth=%s", bandwidth, 0),
    OPT("keepalive=%s", keepalive, 0),
    OPT("live_pull=%s", live_pull, 0),
    OPT("quiesce=%s", quiesce, 0),
    OPT("quiesce_timeout=%s", quiesce_timeout, 0),
    OPT("audit=%s", audit, 0),
    OPT("keep_merged", keep_merged, 1),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_KEY("--version", KEY_VERSION),
    FUSE_OPT_KEY("-f", KEY_FOREGROUND),
    FUSE_OPT_KEY("-d", KEY_DEBUG),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    FUSE_OPT_KEY("-s", KEY_SINGLE),
    FUSE_OPT_END,
};

static int opt_proc(void *data, const char *arg, int key,
                    struct fuse_args *outargs)
{
    (void)outargs;
    struct options *o = data;
    switch (key) {
    case KEY_HELP:
        o->help = 1;
        return 0;
    case KEY_VERSION:
        o->version = 1;
        return 0;
    case KEY_FOREGROUND:
        o->foreground = 1;
        return 0;
    case KEY_DEBUG:
        o->debug = 1;
        o->foreground = 1;
        return 0;
    case KEY_SINGLE:
        o->single = 1;
        return 0;
    case KEY_CONNECT:
        for (size_t i = 0; i < ELEMENTSOF(connect_prefixes); i++)
            if (strncmp(arg, connect_prefixes[i], strlen(connect_prefixes[i])) == 0) {
                arg += strlen(connect_prefixes[i]);
                break;
            }
        cfs_strv_push(&o->connects, cfs_xstrdup(arg));
        return 0;
    case FUSE_OPT_KEY_NONOPT:
        if (o->n_nonopt >= 2) {
            fprintf(stderr, "chainfs: unexpected argument '%s'\n", arg);
            return -1;
        }
        o->nonopt[o->n_nonopt++] = strdup(arg);
        return 0;
    case FUSE_OPT_KEY_OPT:
        if (strcmp(arg, "allow_other") == 0)
            o->allow_other = 1;
        else if (strncmp(arg, "fsname=", 7) == 0)
            o->have_fsname = 1;
        else if (strncmp(arg, "subtype=", 8) == 0)
            o->have_subtype = 1;
        return 1; /* a standard FUSE option: fuse_new takes it */
    default:
        return 1;
    }
}

static void usage(FILE *out)
{
    fprintf(out,
"usage: chainfs [-c [NAME=]URI]... [-o OPT[,OPT...]] [-f] [-d] [-s] MOUNTPOINT\n"
"       chainfs URI MOUNTPOINT [-o OPT...]      (mount.fuse3 form)\n"
"       mount -t fuse.chainfs URI MOUNTPOINT [-o OPT...]  (chainfs installed)\n"
"       fusermount3 -u MOUNTPOINT, umount MOUNTPOINT  (the daemon exits 0)\n"
"\n"
"Mounts the disk backing chains of libvirt domains as a directory tree:\n"
"  MOUNTPOINT/<domain>/<disk>/{chain,chain.json,job,job.json,wait,ctl,snapshots/}\n"
"  mkdir snapshots/NAME   take a live external disk-only snapshot of the disk\n"
"  rmdir snapshots/NAME   merge it away: commit (pivot if active) or pull,\n"
"                         whichever copies less; queued while a merge runs\n"
"  cat wait               block until the disk's job and queue have ended\n"
"  snapshots/NAME/disk.raw  the disk as it was at NAME, a sparse raw image\n"
"                         (root or manage_group): cp --sparse=always it;\n"
"                         rmdir NAME is EBUSY while it is open\n"
"  echo CMD > ctl         steer the disk: abort, pivot, pivot manual|auto,\n"
"                         bandwidth N, merge NAME commit|pull|auto,\n"
"                         copy DEST [flatten|shallow|chain] [manual], finish,\n"
"                         revert NAME [force] (cat ctl lists them and the\n"
"                         settings)\n"
"  MOUNTPOINT/.chainfs/metrics.prom  Prometheus metrics, for node_exporter's\n"
"                         textfile collector (not listed by ls -a)\n"
"  Several hosts (-c given more than once): MOUNTPOINT/<host>/<domain>/...\n"
"\n"
"options:\n"
"  -c [NAME=]URI, --connect=[NAME=]URI\n"
"                         libvirt connection URI (default: libvirt's own,\n"
"                         LIBVIRT_DEFAULT_URI, else qemu:///system as root);\n"
"                         given more than once, one mount shows several\n"
"                         hosts, each in MOUNTPOINT/NAME (default NAME: the\n"
"                         URI's host, localhost for none); with one host\n"
"                         there is no host directory and NAME is not used\n"
"  -o connect=[NAME=]URI  the same as -c, for fstab and the systemd unit\n"
"                         (repeatable)\n"
"  -o overlay_dir=DIR     create new overlays in DIR (default: beside the\n"
"                         disk's active image; required for a disk on a block\n"
"                         device, else mkdir fails with EROFS); QEMU's user\n"
"                         must be able to search it, else mkdir fails with\n"
"                         EACCES\n"
"  -o state_dir=DIR       job journal directory (default /var/lib/chainfs as\n"
"                         root, ~/.local/state/chainfs otherwise)\n"
"  -o keep_merged         keep overlay files after they were merged away\n"
"  -o manage_group=GROUP  members of GROUP may mkdir, rmdir and write ctl too\n"
"                         (needs allow_other: without it only you enter the\n"
"                         mount)\n"
"  -o bandwidth=N         every merge chainfs starts is limited to N bytes/s\n"
"                         (K, M, G, T suffixes: powers of 1024; default 0 =\n"
"                         unlimited); `echo \"bandwidth N\" > ctl` changes a\n"
"                         running one\n"
"  -o live_pull=auto|on|off  may rmdir of a running domain's newest\n"
"                         snapshot pull the small layer below up instead of\n"
"                         committing (auto: only on a QEMU known not to crash\n"
"                         in it; QEMU 7.2 may crash when block nodes are\n"
"                         queried as a pull ends. on: pull, and query nothing\n"
"                         of the domain meanwhile; off: always commit)\n"
"  -o quiesce=try|require|off  whether every mkdir (domain or disk level)\n"
"                         freezes the guest's filesystems through its guest\n"
"                         agent first (try, the default: when no agent\n"
"                         answers, a crash-consistent snapshot, logged and\n"
"                         shown in info; require: the mkdir fails instead,\n"
"                         EOPNOTSUPP or ETIMEDOUT, nothing changed; off)\n"
"  -o quiesce_timeout=S   bound libvirt's wait for the guest agent to S\n"
"                         seconds (1..300, default 10), set before every\n"
"                         freeze (libvirt's own wait is unbounded; its\n"
"                         setting cannot be read back, so an administrator's\n"
"                         value is overwritten); 0 leaves it alone\n"
"  -o audit=S             read every domain from libvirt in full at least\n"
"                         every S seconds (1..86400, default 60); between,\n"
"                         one bulk call every 3 s finds what changed and\n"
"                         libvirt's events show changes at once; what sends\n"
"                         no event (snapshot metadata made by hand, an image\n"
"                         edited by qemu-img) shows within S seconds\n"
"  -o keepalive=I:C       libvirt keepalive: a probe every I seconds, the\n"
"                         connection given up after C unanswered (default\n"
"                         5:3); shorter notices a lost libvirtd sooner\n"
"  -f                     stay in the foreground, log to stderr (detached,\n"
"                         chainfs logs to syslog: ident chainfs, facility\n"
"                         daemon)\n"
"  -d                     debug: foreground, log every step and request\n"
"  -s                     single-threaded\n"
"  -h, --help             this help\n"
"  -V, --version          version\n"
"  and the standard FUSE mount options: allow_other (implies\n"
"  default_permissions), auto_unmount, ...\n"
"\n"
"With several hosts a host that cannot be reached at start is shown empty\n"
"and stale and connected to in the background; state is kept per host in\n"
"STATE_DIR/hosts/NAME, and `mount` shows chainfs:NAME1,NAME2.\n"
"Errors of mkdir, rmdir and ctl writes are the call's errno, e.g. EBUSY (a\n"
"job in progress, a file another disk uses), EAGAIN (the domain is not\n"
"responding; ctl: not ready to pivot), ENOTCONN (libvirt unreachable), EMLINK\n"
"(mkdir: libvirt's limit on a running chain's depth), EROFS, EACCES; the log\n"
"and the disk's job file say why. Over a remote URI (qemu+ssh://host/system)\n"
"chainfs opens no image file itself, and rmdir on a shut-off domain is\n"
"EOPNOTSUPP.\n"
"Exit status: 0 after an unmount or a SIGTERM, SIGINT or SIGHUP (which\n"
"unmount), 1 if start-up failed (a FUSE option FUSE does not know\n"
"included), 2 if chainfs cannot use its command line (no\n"
"MOUNTPOINT, a malformed -o bandwidth, live_pull, quiesce, quiesce_timeout,\n"
"audit or keepalive, an unknown manage_group, a bad or repeated host name).\n"
"\n"
"Docs: man chainfs, and man chainfs-files for every file of the tree and\n"
"every ctl command. Backups: examples/backup.sh (a live backup of every\n"
"disk of a domain) and examples/restore.md (restoring from one), in\n"
"/usr/share/doc/chainfs/examples/ or the source tree.\n");
}

static char *default_state_dir(void)
{
    if (geteuid() == 0)
        return strdup("/var/lib/chainfs");
    const char *xdg = getenv("XDG_STATE_HOME");
    if (xdg && *xdg)
        return cfs_xasprintf("%s/chainfs", xdg);
    const char *home = getenv("HOME");
    return cfs_xasprintf("%s/.local/state/chainfs", home ? home : "/tmp");
}

/* mkdir -p PATH: create each missing directory on the way with MODE
 * (0700: a user's state is their own). 0 or -errno. */
static int mkdir_parents(const char *path, mode_t mode)
{
    _cleanup_free_ char *p = cfs_xstrdup(path);
    for (char *slash = strchr(p + 1, '/');; slash = strchr(slash + 1, '/')) {
        if (slash)
            *slash = '\0';
        if (*p && mkdir(p, mode) < 0 && errno != EEXIST)
            return -errno;
        if (!slash)
            return 0;
        *slash = '/';
        while (slash[1] == '/')
            slash++;
    }
}

/* Tell the waiting parent how start-up went (and close FD). */
static void report(int fd, int status, const char *msg)
{
    if (fd < 0) {
        if (msg && *msg)
            fprintf(stderr, "chainfs: %s\n", msg);
        return;
    }
    char c = (char)status;
    /* a failed write leaves the parent a short message, or "the daemon
     * died during start-up": nothing better to do here */
    bool ok = write(fd, &c, 1) == 1;
    if (ok && msg)
        ok = write(fd, msg, strlen(msg)) >= 0;
    (void)ok;
    close(fd);
}

static int parent_wait(int fd, pid_t child)
{
    char c;
    ssize_t n = read(fd, &c, 1);
    if (n != 1) {
        int status;
        waitpid(child, &status, 0);
        fprintf(stderr, "chainfs: the daemon died during start-up\n");
        return 1;
    }
    char msg[4096];
    size_t len = 0;
    while (len < sizeof(msg) - 1 && (n = read(fd, msg + len, sizeof(msg) - 1 - len)) > 0)
        len += (size_t)n;
    msg[len] = '\0';
    if (c != 0) {
        fprintf(stderr, "chainfs: %s\n", msg);
        return 1;
    }
    return 0;
}

/* Is MNT (a directory, ST its stat) the root of a mount? statx says so
 * directly (any filesystem, bind mounts included); where it cannot, a
 * directory on another device than its parent is one. */
static bool is_mount_point(const char *mnt, const struct stat *st)
{
    struct statx stx;
    if (statx(AT_FDCWD, mnt, AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &stx) == 0 &&
        (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
        return stx.stx_attributes & STATX_ATTR_MOUNT_ROOT;
    char parent[PATH_MAX];
    struct stat pst;
    if (snprintf(parent, sizeof(parent), "%s/..", mnt) >= (int)sizeof(parent) ||
        stat(parent, &pst) < 0)
        return false;
    return pst.st_dev != st->st_dev ||
           (pst.st_ino == st->st_ino); /* "/" */
}

static int check_mountpoint(const char *mnt)
{
    struct stat st;
    if (stat(mnt, &st) < 0) {
        if (errno == ENOTCONN) {
            fprintf(stderr,
                    "chainfs: %s is a stale FUSE mount (its daemon is gone); "
                    "run 'fusermount3 -u %s' and start chainfs again\n",
                    mnt, mnt);
        } else {
            fprintf(stderr, "chainfs: mountpoint %s: %s\n", mnt,
                    strerror(errno));
        }
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "chainfs: mountpoint %s is not a directory\n", mnt);
        return -1;
    }
    if (is_mount_point(mnt, &st)) {
        fprintf(stderr,
                "chainfs: %s is already a mount point; refusing to stack "
                "another mount on it (unmount it first: umount %s)\n",
                mnt, mnt);
        return -1;
    }
    return 0;
}


/* ---- noticing our own unmount --------------------------------------------
 * libvirt starts every QEMU in a mount namespace of its own, copied from
 * the host's. Where the host's mounts are private (no systemd), the copy of
 * our mount in a QEMU started after we mounted does not go away with
 * `fusermount3 -u`, so the kernel keeps the FUSE connection open and the
 * loop never sees ENODEV. So we watch /proc/self/mountinfo ourselves: when
 * our mount is gone from our namespace, we end the loop and exit 0. */

struct mount_watch {
    int mount_id;          /* our mount, from /proc/self/mountinfo */
    struct fuse_session *se;
    pthread_t main_thread;
    int wake[2];           /* written to at shut-down */
    bool gone;             /* the mount left our namespace */
};

/* Mount ID of the newest FUSE mount on MNT (absolute), or -1. */
static int find_mount_id(const char *mnt, bool *present, int want_id)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    int found = -1;
    *present = false;
    while (getline(&line, &cap, f) > 0) {
        int id, parent;
        char devno[32], root[PATH_MAX], point[PATH_MAX];
        if (sscanf(line, "%d %d %31s %4095s %4095s", &id, &parent, devno, root,
                   point) != 5)
            continue;
        if (want_id >= 0) {
            if (id == want_id)
                *present = true;
            continue;
        }
        /* mountinfo escapes space, tab, newline and backslash as \ooo */
        char un[PATH_MAX];
        size_t j = 0;
        for (size_t i = 0; point[i] && j + 1 < sizeof(un); i++) {
            if (point[i] == '\\' && point[i + 1] && point[i + 2] && point[i + 3]) {
                un[j++] = (char)strtol((char[]){point[i + 1], point[i + 2], point[i + 3], 0}, NULL, 8);
                i += 3;
            } else {
                un[j++] = point[i];
            }
        }
        un[j] = 0;
        const char *dash = strstr(line, " - ");
        if (strcmp(un, mnt) == 0 && dash && strncmp(dash + 3, "fuse", 4) == 0)
            found = id;
    }
    free(line);
    fclose(f);
    return found;
}

static void *mount_watch_thread(void *arg)
{
    struct mount_watch *w = arg;
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLPRI},
                              {.fd = w->wake[0], .events = POLLIN}};
        /* mountinfo reports every change in our namespace as POLLPRI (poll
         * skips a negative fd: then the 1 s timeout alone drives the check) */
        int n = poll(p, 2, 1000);
        if (n > 0 && (p[1].revents & POLLIN))
            break;
        bool present;
        find_mount_id(NULL, &present, w->mount_id);
        if (!present) {
            log_info("our mount is gone; exiting");
            w->gone = true;
            fuse_session_exit(w->se);
            /* the main thread sleeps in the loop: a signal wakes it */
            pthread_kill(w->main_thread, SIGTERM);
            break;
        }
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

static void options_free(struct options *o)
{
    cfs_strv_free(o->connects);
    free(o->overlay_dir);
    free(o->state_dir);
    free(o->manage_group);
    free(o->bandwidth);
    free(o->live_pull);
    free(o->quiesce);
    free(o->quiesce_timeout);
    free(o->keepalive);
    free(o->audit);
    for (int i = 0; i < o->n_nonopt; i++)
        free(o->nonopt[i]);
}

/* Exit statuses: 0 after an unmount or a stop by signal, 1 start-up
 * failed, 2 chainfs cannot use its command line (checked before anything
 * starts). */
#define EXIT_START_FAILED 1
#define EXIT_USAGE 2

/* What run() has set up so far; tear_down() undoes exactly that, in
 * reverse order, whatever step failed. */
struct daemon {
    struct fuse_args *args;
    struct options *o;
    const char *mountpoint;
    char abs_mnt[PATH_MAX];
    char *group_warning;
    struct cfs_engine_config cfg;
    int keepalive_interval;   /* -o keepalive=I:C; 0: libvirt's default */
    int keepalive_count;
    int report_fd;            /* to the waiting parent, or -1 */
    char *error;              /* start-up failed: reported at tear-down */
    /* issue 12: the hosts from -c/-o connect= (or the positional URI),
     * each name NULL with one host; URIs NULL for libvirt's default */
    char **host_names;
    char **host_uris;
    size_t n_hosts;
    struct cfs_fleet *fleet;
    struct cfs_fs fs;
    struct fuse *fuse;
    bool mounted;
    struct fuse_session *se;  /* signal handlers installed */
    struct mount_watch watch;
    pthread_t watcher;
    bool watching;
    bool served;              /* the loop ran */
};

/* d->host_names/uris from -c, --connect and -o connect= ("[NAME=]URI";
 * "none": libvirt's default URI). With several, every name is valid and
 * unique (a name not given is the URI's host). false: a message printed. */
static bool hosts_from_options(struct daemon *d)
{
    size_t n = cfs_strv_len(d->o->connects);
    d->n_hosts = n ? n : 1;
    d->host_names = cfs_xcalloc(d->n_hosts + 1, sizeof(char *));
    d->host_uris = cfs_xcalloc(d->n_hosts + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const char *arg = d->o->connects[i];
        if (cfs_fleet_parse_connect(arg, &d->host_names[i], &d->host_uris[i]) < 0) {
            fprintf(stderr,
                    "chainfs: -c %s: give URI or NAME=URI, NAME 1 to 64 "
                    "characters of [A-Za-z0-9._-], not starting with '.' or "
                    "'-'\n", arg);
            return false;
        }
        if (cfs_streq(d->host_uris[i], "none")) {
            free(d->host_uris[i]);
            d->host_uris[i] = NULL;
        }
    }
    if (d->n_hosts == 1)
        return true;
    for (size_t i = 0; i < n; i++) {
        if (!d->host_names[i]) {
            d->host_names[i] = cfs_fleet_default_name(d->host_uris[i]);
            if (cfs_fleet_name_validate(d->host_names[i]) < 0) {
                fprintf(stderr,
                        "chainfs: -c %s: the host name '%s' cannot be a "
                        "directory name; give one: -c NAME=URI\n",
                        d->o->connects[i], d->host_names[i]);
                return false;
            }
        }
        for (size_t k = 0; k < i; k++)
            if (cfs_streq(d->host_names[k], d->host_names[i])) {
                fprintf(stderr,
                        "chainfs: two hosts named '%s' (-c %s and -c %s): give "
                        "each its own name, -c NAME=URI\n", d->host_names[i],
                        d->o->connects[k], d->o->connects[i]);
                return false;
            }
    }
    return true;
}

/* The command line: options, MOUNTPOINT, values that must make sense.
 * false: exit with *STATUS (help, version, or a message printed). */
static bool command_line(struct daemon *d, int *status)
{
    struct options *o = d->o;
    *status = EXIT_USAGE;
    if (fuse_opt_parse(d->args, o, option_table, opt_proc) < 0)
        return false;
    if (o->help) {
        usage(stdout);
        *status = 0;
        return false;
    }
    if (o->version) {
        printf("chainfs %s (libfuse %s)\n", CHAINFS_VERSION, fuse_pkgversion());
        *status = 0;
        return false;
    }
    if (o->n_nonopt == 2) { /* mount.fuse3: chainfs URI MOUNTPOINT */
        /* the source is the host unless -c / -o connect= name hosts
         * (then it is a label: fstab's first field) */
        if (!o->connects)
            cfs_strv_push(&o->connects, cfs_xstrdup(o->nonopt[0]));
        d->mountpoint = o->nonopt[1];
    } else if (o->n_nonopt == 1) {
        d->mountpoint = o->nonopt[0];
    }
    if (!d->mountpoint) {
        usage(stderr);
        return false;
    }
    if (!hosts_from_options(d))
        return false;
    if (o->bandwidth && cfs_size_parse(o->bandwidth, &d->cfg.bandwidth) < 0) {
        fprintf(stderr,
                "chainfs: -o bandwidth=%s: not a number of bytes/s (digits "
                "with an optional K, M, G or T suffix, powers of 1024; 0 = "
                "unlimited)\n", o->bandwidth);
        return false;
    }
    if (o->live_pull &&
        cfs_live_pull_from_string(o->live_pull, &d->cfg.live_pull) < 0) {
        fprintf(stderr, "chainfs: -o live_pull=%s: give auto, on or off\n",
                o->live_pull);
        return false;
    }
    d->cfg.quiesce_timeout = CFS_QUIESCE_TIMEOUT_DEFAULT;
    if (o->quiesce && cfs_quiesce_from_string(o->quiesce, &d->cfg.quiesce) < 0) {
        fprintf(stderr, "chainfs: -o quiesce=%s: give try, require or off\n",
                o->quiesce);
        return false;
    }
    if (o->quiesce_timeout) {
        char extra;
        unsigned t;
        if (sscanf(o->quiesce_timeout, "%u%c", &t, &extra) != 1 ||
            o->quiesce_timeout[0] == '-' || t > CFS_QUIESCE_TIMEOUT_MAX) {
            fprintf(stderr, "chainfs: -o quiesce_timeout=%s: give whole seconds, "
                    "1 to %d (0 leaves libvirt's agent timeout alone)\n",
                    o->quiesce_timeout, CFS_QUIESCE_TIMEOUT_MAX);
            return false;
        }
        d->cfg.quiesce_timeout = t;
    }
    if (o->audit) {
        char extra;
        unsigned t;
        if (sscanf(o->audit, "%u%c", &t, &extra) != 1 || o->audit[0] == '-' ||
            t < 1 || t > 86400) {
            fprintf(stderr, "chainfs: -o audit=%s: give whole seconds, 1 to "
                    "86400 (every domain is read in full at least that often)\n",
                    o->audit);
            return false;
        }
        d->cfg.audit_ms = t * 1000;
    }
    if (o->keepalive) {
        char extra;
        if (sscanf(o->keepalive, "%d:%d%c", &d->keepalive_interval,
                   &d->keepalive_count, &extra) != 2 ||
            d->keepalive_interval < 1 || d->keepalive_count < 1) {
            fprintf(stderr,
                    "chainfs: -o keepalive=%s: give INTERVAL:COUNT, two whole "
                    "numbers of at least 1 (seconds between probes, probes "
                    "missed before the connection is given up)\n",
                    o->keepalive);
            return false;
        }
    }
    if (o->manage_group) {
        struct group *g = getgrnam(o->manage_group);
        if (!g) {
            fprintf(stderr, "chainfs: manage_group: no group named '%s'\n",
                    o->manage_group);
            return false;
        }
        d->fs.have_manage_group = true;
        d->fs.manage_group = g->gr_gid;
    }
    return true;
}

/* Everything that can still be said on the terminal: the mountpoint,
 * the state directory, warnings. false: exit with *STATUS. */
static bool prepare(struct daemon *d, int *status)
{
    struct options *o = d->o;
    *status = EXIT_START_FAILED;
    if (check_mountpoint(d->mountpoint) < 0)
        return false;
    /* Without allow_other the kernel lets no one but the mounting user
     * into the mount, so the group's members could not even look. */
    if (o->manage_group && !o->allow_other) {
        d->group_warning = cfs_xasprintf(
            "manage_group=%s has no effect without allow_other: only the user "
            "who mounted can enter the mount (add -o allow_other)",
            o->manage_group);
        if (!o->foreground) /* the log goes to syslog: say it here too */
            fprintf(stderr, "chainfs: warning: %s\n", d->group_warning);
    }
    if (o->allow_other)
        fuse_opt_add_arg(d->args, "-odefault_permissions");
    if (o->debug)
        fuse_opt_add_arg(d->args, "-odebug");
    if (!o->state_dir) {
        /* ~/.local/state may not exist yet: create it as mkdir -p would
         * (an explicit state_dir is taken as given) */
        o->state_dir = default_state_dir();
        int r = mkdir_parents(o->state_dir, 0700);
        if (r < 0) {
            fprintf(stderr, "chainfs: state directory %s: %s\n", o->state_dir,
                    strerror(-r));
            return false;
        }
    }
    return true;
}

/* Fork unless -f: the parent waits for the child's verdict (false, with
 * it in *STATUS); the child goes on (true) and reports through
 * d->report_fd. */
static bool detach(struct daemon *d, int *status)
{
    *status = EXIT_START_FAILED;
    if (!d->o->foreground) {
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC) < 0) {
            perror("chainfs: pipe");
            return false;
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("chainfs: fork");
            close(pfd[0]);
            close(pfd[1]);
            return false;
        }
        if (pid > 0) {
            close(pfd[1]);
            *status = parent_wait(pfd[0], pid);
            close(pfd[0]);
            return false;
        }
        close(pfd[0]);
        d->report_fd = pfd[1];
        setsid();
    }
    cfs_log_init(!d->o->foreground, d->o->debug);
    if (d->group_warning)
        log_warn("%s", d->group_warning);
    if (!realpath(d->mountpoint, d->abs_mnt))
        snprintf(d->abs_mnt, sizeof(d->abs_mnt), "%s", d->mountpoint);
    return true;
}

/* The journals, libvirt, the engine threads: one engine per host.
 * false: d->error says why. */
static bool start_engine(struct daemon *d)
{
    d->cfg.overlay_dir = d->o->overlay_dir;
    d->cfg.state_dir = d->o->state_dir;
    d->cfg.keep_merged = d->o->keep_merged;
    struct cfs_fleet_host *hosts = cfs_xcalloc(d->n_hosts, sizeof(*hosts));
    for (size_t i = 0; i < d->n_hosts; i++) {
        hosts[i].name = d->host_names[i];
        hosts[i].uri = d->host_uris[i];
        hosts[i].be = cfs_libvirt_backend_new(d->host_uris[i]);
        if (d->keepalive_interval)
            cfs_libvirt_backend_set_keepalive(hosts[i].be, d->keepalive_interval,
                                              d->keepalive_count);
        /* snapshots/NAME/disk.raw: a qemu-nbd per open snapshot, its
         * sockets in the host's STATE_DIR/nbd (issue 9) */
        _cleanup_free_ char *dir = cfs_fleet_state_dir(
            d->o->state_dir, d->host_names[i] ? d->host_names[i] : "", d->n_hosts);
        hosts[i].imgserve = cfs_nbd_imgserve_new(dir, NULL);
    }
    int r = cfs_fleet_new(&d->cfg, hosts, d->n_hosts, &d->fleet, &d->error);
    free(hosts);
    if (r < 0)
        return false;
    if (cfs_fleet_start(d->fleet, true, &d->error) < 0)
        return false;
    d->fs.fleet = d->fleet;
    /* every node is dated at the mount until what it shows changes */
    struct timespec mounted_at;
    clock_gettime(CLOCK_REALTIME, &mounted_at);
    d->fs.stamps = cfs_stamps_new(mounted_at, 0);
    return true;
}

/* What `mount` shows as the source: the URI libvirt resolved (else as
 * given) with one host, "chainfs:NAME1,NAME2" with several. Caller
 * frees. */
static char *mount_source(struct daemon *d)
{
    if (d->n_hosts > 1)
        return cfs_mount_fleet_source((const char *const *)d->host_names,
                                      d->n_hosts);
    const char *uri = cfs_engine_uri(cfs_fleet_engine(d->fleet, 0));
    if (!uri)
        uri = d->host_uris[0];
    return uri ? cfs_xstrdup(uri) : NULL;
}

/* fuse_new, mount, signal handlers, the mount watcher. false: d->error. */
static bool mount_fs(struct daemon *d)
{
    /* `mount` and /proc/mounts: "qemu:///system on /vms type
     * fuse.chainfs", the URI as libvirt resolved it (the default, an
     * alias), else as given */
    _cleanup_free_ char *uri = mount_source(d);
    _cleanup_free_ char *id = cfs_mount_identity_opt(uri, d->o->have_fsname,
                                                     d->o->have_subtype);
    if (id)
        fuse_opt_add_arg(d->args, id);
    d->fuse = fuse_new(d->args, &cfs_fuse_ops, sizeof(cfs_fuse_ops), &d->fs);
    if (!d->fuse) {
        d->error = cfs_xstrdup("cannot set up FUSE (see the message above)");
        return false;
    }
    if (fuse_mount(d->fuse, d->abs_mnt) != 0) {
        d->error = cfs_xstrdup("cannot mount (see the message above)");
        return false;
    }
    d->mounted = true;
    d->fs.fuse = d->fuse;
    cfs_fleet_set_invalidate(d->fleet, cfs_fs_invalidate, &d->fs);
    struct fuse_session *se = fuse_get_session(d->fuse);
    if (fuse_set_signal_handlers(se) != 0) {
        d->error = cfs_xstrdup("cannot install signal handlers");
        return false;
    }
    d->se = se;

    /* watch for our mount leaving the namespace (see mount_watch) */
    d->watch.se = se;
    d->watch.main_thread = pthread_self();
    bool present;
    d->watch.mount_id = find_mount_id(d->abs_mnt, &present, -1);
    if (d->watch.mount_id < 0)
        log_warn("cannot find our mount in /proc/self/mountinfo; an unmount "
                 "hidden by another mount namespace will not be noticed");
    else if (pipe2(d->watch.wake, O_CLOEXEC) == 0 &&
             pthread_create(&d->watcher, NULL, mount_watch_thread, &d->watch) == 0)
        d->watching = true;
    return true;
}

/* libfuse's log, once detached: its levels are syslog's; its lines end
 * with a newline, which one log record does not carry. */
static void fuse_to_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    int prio = (int)level;
    if (prio < LOG_EMERG || prio > LOG_DEBUG)
        prio = LOG_ERR;
    cfs_log(prio, "fuse: %s", msg);
}

/* Tell the parent all is well, let go of the terminal, serve until the
 * unmount; the exit status. */
static int serve(struct daemon *d)
{
    if (d->n_hosts > 1) {
        _cleanup_buf_ struct cfs_buf b = {0};
        for (size_t i = 0; i < d->n_hosts; i++)
            cfs_buf_printf(&b, "%s%s=%s", i ? ", " : "", d->host_names[i],
                           d->host_uris[i] ? d->host_uris[i] : "default URI");
        log_info("mounted on %s (%zu libvirt hosts: %s; state in %s)",
                 d->abs_mnt, d->n_hosts, b.data, d->o->state_dir);
    } else {
        const char *uri = cfs_engine_uri(cfs_fleet_engine(d->fleet, 0));
        log_info("mounted on %s (libvirt %s, state in %s)", d->abs_mnt,
                 uri ? uri : d->host_uris[0] ? d->host_uris[0] : "default URI",
                 d->o->state_dir);
    }
    if (d->report_fd >= 0) {
        report(d->report_fd, 0, NULL);
        d->report_fd = -1; /* report() closed it */
        if (chdir("/") < 0)
            log_warn("chdir /: %s", strerror(errno));
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            if (null > 2)
                close(null);
        }
        /* libfuse's own messages (a failed request reply, the loop's
         * errors) went to stderr, /dev/null from here: to syslog too */
        fuse_set_log_func(fuse_to_log);
    }
    d->served = true;
    int ret;
    if (d->o->single) {
        ret = fuse_loop(d->fuse);
    } else {
        struct fuse_loop_config *lc = fuse_loop_cfg_create();
        fuse_loop_cfg_set_max_threads(lc, 64);
        ret = fuse_loop_mt(d->fuse, lc);
        fuse_loop_cfg_destroy(lc);
    }
    /* libfuse ends the loop on SIGTERM, SIGINT and SIGHUP with the
     * signal's number: a stop asked for (`systemctl stop`, Ctrl-C in the
     * foreground), undone like an unmount, so 0 as for one. A negative
     * errno is the loop failing. */
    if (ret > 0 && !d->watch.gone) {
        log_info("stopping on %s; unmounting %s", strsignal(ret), d->abs_mnt);
        ret = 0;
    }
    return ret == 0 || d->watch.gone ? 0 : 1;
}

/* The one way out: undo whatever was set up, newest first; report a
 * start-up error to the waiting parent last. */
static void tear_down(struct daemon *d)
{
    if (d->watching) {
        if (write(d->watch.wake[1], "x", 1) < 0)
            log_warn("waking the mount watcher: %s", strerror(errno));
        pthread_join(d->watcher, NULL);
    }
    if (d->watch.wake[0] >= 0) {
        close(d->watch.wake[0]);
        close(d->watch.wake[1]);
    }
    if (d->fleet)
        cfs_fleet_set_invalidate(d->fleet, NULL, NULL);
    if (d->se) {
        fuse_remove_signal_handlers(d->se);
        /* That put SIGPIPE back to its default, and closing libvirt
         * connections may still write to a socket the daemon has closed:
         * a write error, not a reason to die with status 141. */
        signal(SIGPIPE, SIG_IGN);
    }
    if (d->mounted) {
        /* Once our mount has left this namespace, the connection may live
         * on in another one, and the path may hold someone else's mount
         * by now. Put an unconnected /dev/fuse in place of our device fd:
         * that drops the last reference to the connection (the kernel
         * aborts it, so the copies elsewhere report ENOTCONN), and
         * fuse_unmount() sees a dead device and does not unmount the
         * path. */
        bool unmount = true;
        if (d->watch.gone) {
            struct fuse_session *se = fuse_get_session(d->fuse);
            int nfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
            if (nfd >= 0 && dup2(nfd, fuse_session_fd(se)) >= 0)
                close(nfd);
            else
                unmount = false;
        }
        if (unmount)
            fuse_unmount(d->fuse);
    }
    if (d->fuse)
        fuse_destroy(d->fuse);
    if (d->served)
        cfs_fs_release_images(); /* their servers stop with the engine's help */
    d->fleet = cfs_fleet_free(d->fleet);
    if (d->served) {
        cfs_fs_forget_recent();
        cfs_fs_free_handles();
    }
    d->fs.stamps = cfs_stamps_free(d->fs.stamps);
    if (d->mounted && !d->error)
        log_info("unmounted %s", d->abs_mnt);
    if (d->error) {
        /* detached, the terminal gets it through the parent, and the
         * log (syslog) as well: a unit's journal shows why it failed */
        if (d->report_fd >= 0)
            log_err("start-up failed: %s", d->error);
        report(d->report_fd, 1, d->error);
    }
    else if (d->report_fd >= 0)
        close(d->report_fd);
    free(d->error);
    free(d->group_warning);
    for (size_t i = 0; i < d->n_hosts && d->host_names; i++) {
        free(d->host_names[i]);
        free(d->host_uris[i]);
    }
    free(d->host_names);
    free(d->host_uris);
}

/* Everything main() does; main() frees what the options allocated. */
static int run(struct fuse_args *args, struct options *o)
{
    struct daemon d = {
        .args = args, .o = o, .report_fd = -1, .watch.wake = {-1, -1},
    };
    int status;
    if (command_line(&d, &status) && prepare(&d, &status) &&
        detach(&d, &status))
        status = start_engine(&d) && mount_fs(&d) ? serve(&d)
                                                  : EXIT_START_FAILED;
    tear_down(&d);
    return status;
}

int main(int argc, char *argv[])
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct options o = {0};
    int r = run(&args, &o);
    options_free(&o);
    fuse_opt_free_args(&args);
    return r;
}
