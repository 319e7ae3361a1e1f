/* snapdesc.c — chainfs's line in a snapshot's <description>
 * (snapdesc.h). Pure. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chainfs/snapdesc.h"
#include "chainfs/util.h"

#define PREFIX "chainfs: "

void cfs_snapdesc_clear(struct cfs_snapdesc *d)
{
    if (!d)
        return;
    free(d->reason);
    cfs_strv_free(d->disks);
    for (size_t i = 0; i < d->n_excluded; i++) {
        free(d->excluded[i].target);
        free(d->excluded[i].why);
    }
    free(d->excluded);
    *d = (struct cfs_snapdesc){ .quiesced = -1 };
}

/* S escaped into B: a backslash and control characters always, and the
 * bytes of EXTRA (list separators) as \xHH. */
static void put_escaped(struct cfs_buf *b, const char *s, const char *extra,
                        bool named)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '\\')
            cfs_buf_put(b, "\\\\", 2);
        else if (named && *p == '\n')
            cfs_buf_put(b, "\\n", 2);
        else if (named && *p == '\t')
            cfs_buf_put(b, "\\t", 2);
        else if (*p < 0x20 || *p == 0x7f || (extra && strchr(extra, *p)))
            cfs_buf_printf(b, "\\x%02x", *p);
        else
            cfs_buf_put(b, (const char *)p, 1);
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* S[0..LEN) unescaped; NULL if an escape is malformed. */
static char *unescape(const char *s, size_t len)
{
    struct cfs_buf b = { 0 };
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\\') {
            cfs_buf_put(&b, &s[i], 1);
            continue;
        }
        if (i + 1 >= len)
            goto bad;
        char c = s[++i];
        if (c == '\\') {
            cfs_buf_put(&b, "\\", 1);
        } else if (c == 'n') {
            cfs_buf_put(&b, "\n", 1);
        } else if (c == 't') {
            cfs_buf_put(&b, "\t", 1);
        } else if (c == 'x' && i + 2 < len && hexval(s[i + 1]) >= 0 &&
                   hexval(s[i + 2]) >= 0) {
            char v = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            if (v == '\0')
                goto bad;
            cfs_buf_put(&b, &v, 1);
            i += 2;
        } else {
            goto bad;
        }
    }
    return cfs_buf_steal(&b);
bad:
    cfs_buf_free(&b);
    return NULL;
}

/* Split V[0..LEN) at commas into unescaped items; false if one is
 * malformed or empty. */
static bool split_list(const char *v, size_t len, char ***out)
{
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && v[j] != ',')
            j++;
        char *item = j > i ? unescape(v + i, j - i) : NULL;
        if (!item || !*item) {
            free(item);
            return false;
        }
        cfs_strv_push(out, item);
        i = j + 1;
        if (j + 1 == len)
            return false; /* a trailing comma */
    }
    return true;
}

static bool parse_unsigned(const char *v, size_t len, unsigned *out)
{
    if (len == 0 || len > 9)
        return false;
    unsigned n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (unsigned)(v[i] - '0');
    }
    *out = n;
    return true;
}

static bool word_is(const char *k, size_t klen, const char *s)
{
    return strlen(s) == klen && memcmp(k, s, klen) == 0;
}

/* The words of LINE[0..LEN) (after the prefix) into *D. */
static bool parse_line(const char *line, size_t len, struct cfs_snapdesc *d)
{
    size_t i = 0;
    bool have_quiesced = false;
    while (i < len) {
        size_t eq = i;
        while (eq < len && line[eq] != '=' && line[eq] != ' ')
            eq++;
        if (eq >= len || line[eq] != '=' || eq == i)
            return false;
        const char *k = line + i;
        size_t klen = eq - i;
        const char *v = line + eq + 1;
        size_t vlen;
        if (word_is(k, klen, "reason")) {
            vlen = len - (eq + 1); /* the rest of the line */
        } else {
            vlen = 0;
            while (eq + 1 + vlen < len && v[vlen] != ' ')
                vlen++;
        }
        if (word_is(k, klen, "scope")) {
            if (word_is(v, vlen, "domain"))
                d->scope = CFS_SCOPE_DOMAIN;
            else if (word_is(v, vlen, "disk"))
                d->scope = CFS_SCOPE_DISK;
            else
                return false;
        } else if (word_is(k, klen, "quiesced")) {
            if (word_is(v, vlen, "yes"))
                d->quiesced = 1;
            else if (word_is(v, vlen, "no"))
                d->quiesced = 0;
            else
                return false;
            have_quiesced = true;
        } else if (word_is(k, klen, "filesystems")) {
            if (!parse_unsigned(v, vlen, &d->filesystems))
                return false;
        } else if (word_is(k, klen, "reason")) {
            free(d->reason);
            d->reason = unescape(v, vlen);
            if (!d->reason)
                return false;
        } else if (word_is(k, klen, "disks")) {
            d->disks = cfs_strv_free(d->disks);
            if (!split_list(v, vlen, &d->disks))
                return false;
        } else if (word_is(k, klen, "excluded")) {
            _cleanup_strv_ char **items = NULL;
            if (!split_list(v, vlen, &items))
                return false;
            size_t n = cfs_strv_len(items);
            for (size_t x = 0; x < d->n_excluded; x++) {
                free(d->excluded[x].target);
                free(d->excluded[x].why);
            }
            free(d->excluded);
            d->excluded = n ? cfs_xcalloc(n, sizeof(*d->excluded)) : NULL;
            d->n_excluded = 0;
            for (size_t x = 0; x < n; x++) {
                /* TARGET:WHY, each escaped (a colon inside is \x3a) */
                char *colon = strchr(items[x], ':');
                if (!colon || colon == items[x] || !colon[1])
                    return false;
                d->excluded[x].target = cfs_xasprintf("%.*s", (int)(colon - items[x]),
                                                      items[x]);
                d->excluded[x].why = cfs_xstrdup(colon + 1);
                d->n_excluded++;
            }
        }
        /* else: a key of a later version */
        i = eq + 1 + vlen;
        if (i < len) {
            if (line[i] != ' ')
                return false;
            i++;
            if (i == len)
                return false; /* a trailing space */
        }
    }
    return have_quiesced;
}

int cfs_snapdesc_parse(const char *description, struct cfs_snapdesc *out)
{
    *out = (struct cfs_snapdesc){ .quiesced = -1 };
    for (const char *l = description; l && *l;) {
        size_t len = strcspn(l, "\n");
        size_t plen = strlen(PREFIX);
        if (len >= plen && memcmp(l, PREFIX, plen) == 0) {
            size_t body = len - plen;
            /* a CR of a CRLF line end is not part of it */
            if (body > 0 && l[plen + body - 1] == '\r')
                body--;
            if (!parse_line(l + plen, body, out)) {
                cfs_snapdesc_clear(out);
                return -EINVAL;
            }
            return 0;
        }
        l += len;
        if (*l == '\n')
            l++;
    }
    return -ENOENT;
}

/* an item of a list: no separator of the line or the list in it */
#define ITEM_SPECIALS " ,:"

char *cfs_snapdesc_format(const struct cfs_snapdesc *d)
{
    struct cfs_buf b = { 0 };
    cfs_buf_printf(&b, "%s", PREFIX);
    if (d->scope != CFS_SCOPE_UNKNOWN)
        cfs_buf_printf(&b, "scope=%s ", d->scope == CFS_SCOPE_DOMAIN ? "domain" : "disk");
    cfs_buf_printf(&b, "quiesced=%s", d->quiesced == 1 ? "yes" : "no");
    if (d->quiesced == 1)
        cfs_buf_printf(&b, " filesystems=%u", d->filesystems);
    if (d->disks && *d->disks) {
        cfs_buf_printf(&b, " disks=");
        for (char **p = d->disks; *p; p++) {
            if (p != d->disks)
                cfs_buf_put(&b, ",", 1);
            put_escaped(&b, *p, ITEM_SPECIALS, false);
        }
    }
    if (d->n_excluded) {
        cfs_buf_printf(&b, " excluded=");
        for (size_t i = 0; i < d->n_excluded; i++) {
            if (i)
                cfs_buf_put(&b, ",", 1);
            put_escaped(&b, d->excluded[i].target, ITEM_SPECIALS, false);
            cfs_buf_put(&b, ":", 1);
            put_escaped(&b, d->excluded[i].why, ITEM_SPECIALS, false);
        }
    }
    if (d->quiesced != 1 && d->reason && *d->reason) {
        cfs_buf_printf(&b, " reason=");
        put_escaped(&b, d->reason, NULL, true);
    }
    return cfs_buf_steal(&b);
}

char *cfs_snapdesc_quiesce_text(const struct cfs_snapdesc *d)
{
    if (d->quiesced == 1)
        return cfs_xasprintf("%u filesystem%s frozen by the guest agent",
                             d->filesystems, d->filesystems == 1 ? "" : "s");
    if (d->quiesced == 0)
        return cfs_xstrdup(d->reason && *d->reason ? d->reason : "not quiesced");
    return NULL;
}
