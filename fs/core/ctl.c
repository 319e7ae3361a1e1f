/* ctl.c — the commands a disk's `ctl` file takes (ctl.h).
 *
 * A write is one command: words separated by blanks (space, tab), at most
 * one "\n" and only at the very end (what `echo` adds). Anything else —
 * an unknown word, a missing or extra argument, a second line, a NUL or
 * another control byte — is refused as a whole, so a bad write changes
 * nothing. Pure functions of their arguments: no globals but constant
 * tables, no allocation, thread-safe. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "chainfs/ctl.h"
#include "chainfs/util.h"

const char cfs_ctl_usage[] =
    "abort             cancel the disk's running job\n"
    "pivot             pivot a ready active commit now\n"
    "pivot manual      active commits wait in ready for pivot\n"
    "pivot auto        active commits pivot on their own (the default)\n"
    "bandwidth N       the running job's limit in bytes/s; K, M, G, T\n"
    "                  suffixes (powers of 1024); 0 = unlimited\n"
    "merge NAME commit|pull|auto\n"
    "                  the direction of snapshot NAME's next merge (auto:\n"
    "                  the one that copies less; the default)\n"
    "copy DEST [flatten|shallow|chain] [manual]\n"
    "                  mirror the running disk to DEST (a new qcow2 file)\n"
    "                  and pivot to it; manual: wait in ready for pivot\n"
    "                  or finish\n"
    "finish            end a ready manual copy without a pivot (DEST is a\n"
    "                  point-in-time copy)\n"
    "revert NAME [force]\n"
    "                  shut-off domain: the disk goes back to snapshot NAME\n"
    "                  (a new empty overlay on NAME's frozen layer; NAME\n"
    "                  stays); only the newest snapshot unless force, which\n"
    "                  also discards the later ones\n";

/* Most words a command has ("copy DEST shallow manual"). */
#define MAX_WORDS 4

_Static_assert(CFS_CTL_MAX_WRITE == 4096, "the refusal text says 4096");

struct word {
    const char *s;
    size_t len;
};

static bool word_is(const struct word *w, const char *s)
{
    return w->len == strlen(s) && memcmp(w->s, s, w->len) == 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

int cfs_size_parse(const char *s, uint64_t *out)
{
    if (!s || !out)
        return -EINVAL;
    uint64_t v = 0;
    const char *c = s;
    if (*c < '0' || *c > '9')
        return -EINVAL; /* empty, a sign, blanks, "0x" */
    for (; *c >= '0' && *c <= '9'; c++) {
        unsigned d = (unsigned)(*c - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    unsigned shift = 0;
    switch (*c) {
    case '\0':
        break;
    case 'K': case 'k': shift = 10; break;
    case 'M': case 'm': shift = 20; break;
    case 'G': case 'g': shift = 30; break;
    case 'T': case 't': shift = 40; break;
    default:
        return -EINVAL;
    }
    if (shift) {
        if (c[1] != '\0')
            return -EINVAL; /* "10MB", "10M/s", "1KK" */
        if (v > (UINT64_MAX >> shift))
            return -EINVAL;
        v <<= shift;
    }
    *out = v;
    return 0;
}

/* A word of at most 31 bytes as a C string for cfs_size_parse; false if
 * longer (no number that fits in 64 bits with a suffix is). */
static bool word_copy(const struct word *w, char *buf, size_t size)
{
    if (w->len >= size)
        return false;
    memcpy(buf, w->s, w->len);
    buf[w->len] = '\0';
    return true;
}

static int refuse(const char **why, const char *msg)
{
    if (why)
        *why = msg;
    return -EINVAL;
}

int cfs_ctl_parse(const char *buf, size_t len, struct cfs_ctl_cmd *out,
                  const char **why)
{
    if (why)
        *why = NULL;
    if (len > CFS_CTL_MAX_WRITE) {
        if (why)
            *why = "longer than 4096 bytes";
        return -E2BIG;
    }
    if (!buf || !out)
        return refuse(why, "no command");
    if (len > 0 && buf[len - 1] == '\n')
        len--;

    struct word words[MAX_WORDS];
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)buf[i];
        if (is_blank((char)c)) {
            i++;
            continue;
        }
        if (c == '\n')
            return refuse(why, "one command per write");
        if (c == '\0')
            return refuse(why, "a NUL byte in the command");
        if (c < 0x20 || c == 0x7f)
            return refuse(why, "a control character in the command");
        size_t start = i;
        while (i < len && !is_blank(buf[i]) &&
               (unsigned char)buf[i] >= 0x20 && buf[i] != 0x7f)
            i++;
        if (n == MAX_WORDS)
            return refuse(why, "too many words");
        words[n++] = (struct word){buf + start, i - start};
    }
    if (n == 0)
        return refuse(why, "empty command");

    struct cfs_ctl_cmd cmd = {0};
    const struct word *w = &words[0];
    if (word_is(w, "abort")) {
        if (n != 1)
            return refuse(why, "abort takes no argument");
        cmd.op = CFS_CTL_ABORT;
    } else if (word_is(w, "pivot")) {
        if (n > 2)
            return refuse(why, "pivot takes nothing, \"manual\" or \"auto\"");
        if (n == 1)
            cmd.op = CFS_CTL_PIVOT;
        else if (word_is(&words[1], "manual"))
            cmd.op = CFS_CTL_PIVOT_MANUAL;
        else if (word_is(&words[1], "auto"))
            cmd.op = CFS_CTL_PIVOT_AUTO;
        else
            return refuse(why, "pivot takes nothing, \"manual\" or \"auto\"");
    } else if (word_is(w, "bandwidth")) {
        if (n != 2)
            return refuse(why, "bandwidth needs one number (bytes/s, K/M/G/T suffix)");
        char num[32];
        if (!word_copy(&words[1], num, sizeof(num)) ||
            cfs_size_parse(num, &cmd.bandwidth) < 0)
            return refuse(why, "bandwidth: not a number of bytes/s (digits, an optional K, M, G or T)");
        cmd.op = CFS_CTL_BANDWIDTH;
    } else if (word_is(w, "merge")) {
        if (n != 3)
            return refuse(why, "merge needs a snapshot name and commit, pull or auto");
        const struct word *nm = &words[1];
        if (nm->len >= sizeof(cmd.name) || memchr(nm->s, '/', nm->len) ||
            word_is(nm, ".") || word_is(nm, ".."))
            return refuse(why, "merge: not a snapshot name (an entry of snapshots/)");
        char mode[16];
        if (!word_copy(&words[2], mode, sizeof(mode)) ||
            cfs_merge_mode_from_string(mode, &cmd.merge_mode) < 0)
            return refuse(why, "merge: the direction is commit, pull or auto");
        memcpy(cmd.name, nm->s, nm->len);
        cmd.name[nm->len] = '\0';
        cmd.op = CFS_CTL_MERGE;
    } else if (word_is(w, "revert")) {
        if (n < 2 || n > 3)
            return refuse(why, "revert needs a snapshot name: revert NAME [force]");
        const struct word *nm = &words[1];
        if (nm->len >= sizeof(cmd.name) || memchr(nm->s, '/', nm->len) ||
            word_is(nm, ".") || word_is(nm, ".."))
            return refuse(why, "revert: not a snapshot name (an entry of snapshots/)");
        if (n == 3 && !word_is(&words[2], "force"))
            return refuse(why, "revert NAME takes nothing or \"force\" after the name");
        memcpy(cmd.name, nm->s, nm->len);
        cmd.name[nm->len] = '\0';
        cmd.force = n == 3;
        cmd.op = CFS_CTL_REVERT;
    } else if (word_is(w, "finish")) {
        if (n != 1)
            return refuse(why, "finish takes no argument");
        cmd.op = CFS_CTL_FINISH;
    } else if (word_is(w, "copy")) {
        if (n < 2)
            return refuse(why, "copy needs a destination: copy DEST [flatten|shallow|chain] [manual]");
        const struct word *d = &words[1];
        if (d->s[0] != '/')
            return refuse(why, "copy: the destination must be an absolute path");
        if (d->len >= PATH_MAX || d->len >= sizeof(cmd.dest))
            return refuse(why, "copy: the destination path is too long");
        if (d->s[d->len - 1] == '/')
            return refuse(why, "copy: the destination names a directory, not a file");
        memcpy(cmd.dest, d->s, d->len);
        cmd.dest[d->len] = '\0';
        cmd.copy_mode = CFS_COPY_DEFAULT;
        for (size_t i = 2; i < n; i++) {
            const struct word *m = &words[i];
            enum cfs_copy_mode mode = word_is(m, "flatten") ? CFS_COPY_FLATTEN
                                      : word_is(m, "shallow") ? CFS_COPY_SHALLOW
                                      : word_is(m, "chain")   ? CFS_COPY_CHAIN
                                                              : CFS_COPY_NONE;
            if (mode != CFS_COPY_NONE && i == 2) {
                cmd.copy_mode = mode;
            } else if (word_is(m, "manual") && !cmd.manual) {
                cmd.manual = true;
            } else {
                return refuse(why, "copy DEST takes flatten, shallow or chain, then manual");
            }
        }
        cmd.op = CFS_CTL_COPY;
    } else {
        return refuse(why, "unknown command");
    }
    *out = cmd;
    return 0;
}

const char *cfs_ctl_op_to_string(enum cfs_ctl_op op)
{
    switch (op) {
    case CFS_CTL_ABORT:        return "abort";
    case CFS_CTL_PIVOT:        return "pivot";
    case CFS_CTL_PIVOT_MANUAL: return "pivot manual";
    case CFS_CTL_PIVOT_AUTO:   return "pivot auto";
    case CFS_CTL_BANDWIDTH:    return "bandwidth";
    case CFS_CTL_MERGE:        return "merge";
    case CFS_CTL_COPY:         return "copy";
    case CFS_CTL_FINISH:       return "finish";
    case CFS_CTL_REVERT:       return "revert";
    default:                   return "?";
    }
}
