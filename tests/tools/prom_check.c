/* prom_check.c — the strict text-format checker (prom_check.h). */
#include "prom_check.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct checker {
    char *err;
    size_t errlen;
    unsigned line;
    /* the family being read */
    char *fam;
    char type[16];
    bool has_help, has_type, has_sample;
    /* families done (may not come back), series seen */
    char **done;
    size_t n_done;
    char **series;
    size_t n_series;
};

static int fail(struct checker *c, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(c->err, c->errlen, "line %u: ", c->line);
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < c->errlen)
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static bool is_blank(char ch) { return ch == ' ' || ch == '\t'; }

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && is_blank(*p))
        p++;
    return p;
}

static bool name_start(char ch, bool metric)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           (metric && ch == ':');
}

static bool name_char(char ch, bool metric)
{
    return name_start(ch, metric) || (ch >= '0' && ch <= '9');
}

/* A metric (METRIC) or label name at *P: its length, 0 if none. */
static size_t read_name(const char *p, const char *end, bool metric)
{
    size_t n = 0;
    if (p >= end || !name_start(*p, metric))
        return 0;
    while (p + n < end && name_char(p[n], metric))
        n++;
    return n;
}

static char *dup_n(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The lines of family NAME (N bytes) begin or continue here. */
static int enter_family(struct checker *c, const char *name, size_t n)
{
    if (c->fam && strlen(c->fam) == n && memcmp(c->fam, name, n) == 0)
        return 0;
    for (size_t i = 0; i < c->n_done; i++)
        if (strlen(c->done[i]) == n && memcmp(c->done[i], name, n) == 0)
            return fail(c, "family %.*s comes back after other families "
                           "(a family's lines must be together)", (int)n, name);
    if (c->fam) {
        if (!c->has_type || !c->has_help)
            return fail(c, "family %s has no %s", c->fam,
                        c->has_help ? "TYPE" : "HELP");
        c->done = realloc(c->done, (c->n_done + 1) * sizeof(*c->done));
        if (!c->done)
            abort();
        c->done[c->n_done++] = c->fam;
    }
    c->fam = dup_n(name, n);
    c->type[0] = '\0';
    c->has_help = c->has_type = c->has_sample = false;
    return 0;
}

static int check_help_text(struct checker *c, const char *p, const char *end)
{
    for (; p < end; p++) {
        if (*p != '\\')
            continue;
        if (p + 1 >= end || (p[1] != '\\' && p[1] != 'n'))
            return fail(c, "HELP text: invalid escape (only \\\\ and \\n)");
        p++;
    }
    return 0;
}

static int comment_line(struct checker *c, const char *p, const char *end)
{
    p++; /* '#' */
    if (p >= end || !is_blank(*p))
        return 0; /* a comment */
    p = skip_blanks(p, end);
    bool help = end - p >= 4 && memcmp(p, "HELP", 4) == 0;
    bool type = end - p >= 4 && memcmp(p, "TYPE", 4) == 0;
    if ((!help && !type) || (end - p > 4 && !is_blank(p[4])))
        return 0; /* another comment */
    p += 4;
    const char *q = skip_blanks(p, end);
    if (q == p)
        return fail(c, "%s without a metric name", help ? "HELP" : "TYPE");
    p = q;
    size_t n = read_name(p, end, true);
    if (!n)
        return fail(c, "%s: invalid metric name", help ? "HELP" : "TYPE");
    if (p + n < end && !is_blank(p[n]))
        return fail(c, "%s: invalid metric name \"%.*s\"", help ? "HELP" : "TYPE",
                    (int)(end - p), p);
    if (enter_family(c, p, n) < 0)
        return -1;
    const char *rest = skip_blanks(p + n, end);
    if (help) {
        if (c->has_help)
            return fail(c, "second HELP for %s", c->fam);
        if (c->has_sample)
            return fail(c, "HELP for %s after its samples", c->fam);
        c->has_help = true;
        return check_help_text(c, rest, end);
    }
    if (c->has_type)
        return fail(c, "second TYPE for %s", c->fam);
    if (c->has_sample)
        return fail(c, "TYPE for %s after its samples", c->fam);
    const char *te = rest;
    while (te < end && !is_blank(*te))
        te++;
    if (skip_blanks(te, end) != end)
        return fail(c, "TYPE %s: text after the type", c->fam);
    static const char *const types[] = {"counter", "gauge", "histogram",
                                        "summary", "untyped"};
    bool ok = false;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if ((size_t)(te - rest) == strlen(types[i]) &&
            memcmp(rest, types[i], strlen(types[i])) == 0)
            ok = true;
    if (!ok)
        return fail(c, "TYPE %s: unknown type \"%.*s\"", c->fam,
                    (int)(te - rest), rest);
    memcpy(c->type, rest, (size_t)(te - rest));
    c->type[te - rest] = '\0';
    if (strcmp(c->type, "counter") == 0 && !ends_with(c->fam, "_total"))
        return fail(c, "counter %s is not named *_total", c->fam);
    c->has_type = true;
    return 0;
}

/* Whether sample name NAME belongs to the family being read. */
static bool in_family(const struct checker *c, const char *name)
{
    if (!c->fam)
        return false;
    if (strcmp(name, c->fam) == 0)
        return strcmp(c->type, "histogram") != 0;
    size_t f = strlen(c->fam);
    if (strncmp(name, c->fam, f) != 0)
        return false;
    const char *sfx = name + f;
    if (strcmp(c->type, "histogram") == 0)
        return !strcmp(sfx, "_bucket") || !strcmp(sfx, "_sum") ||
               !strcmp(sfx, "_count");
    if (strcmp(c->type, "summary") == 0)
        return !strcmp(sfx, "_sum") || !strcmp(sfx, "_count");
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool valid_float(const char *s, size_t n)
{
    if ((n == 3 && !memcmp(s, "NaN", 3)) || (n == 3 && !memcmp(s, "Inf", 3)) ||
        (n == 4 && (!memcmp(s, "+Inf", 4) || !memcmp(s, "-Inf", 4))))
        return true;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789+-.eE", s[i]))
            return false;
    char buf[65];
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *e;
    strtod(buf, &e);
    return *e == '\0' && e != buf;
}

static int sample_line(struct checker *c, const char *p, const char *end)
{
    size_t n = read_name(p, end, true);
    if (!n)
        return fail(c, "invalid metric name at \"%.*s\"", (int)(end - p), p);
    char *name = dup_n(p, n);
    int r = -1;
    char **labels = NULL;
    size_t n_labels = 0;
    p += n;
    if (!in_family(c, name)) {
        bool done = false;
        for (size_t i = 0; i < c->n_done; i++)
            done |= strcmp(c->done[i], name) == 0;
        fail(c, done ? "sample %s after other families (a family's lines must be together)"
                     : "sample %s without HELP and TYPE before it", name);
        goto out;
    }
    if (!c->has_help || !c->has_type) {
        fail(c, "sample %s before its family's %s", name, c->has_help ? "TYPE" : "HELP");
        goto out;
    }
    if (p < end && *p == '{') {
        p = skip_blanks(p + 1, end);
        while (p < end && *p != '}') {
            size_t ln = read_name(p, end, false);
            if (!ln) {
                fail(c, "%s: invalid label name at \"%.*s\"", name, (int)(end - p), p);
                goto out;
            }
            if (ln >= 2 && p[0] == '_' && p[1] == '_') {
                fail(c, "%s: label name %.*s is reserved (__)", name, (int)ln, p);
                goto out;
            }
            const char *lname = p;
            p = skip_blanks(p + ln, end);
            if (p >= end || *p != '=') {
                fail(c, "%s: label %.*s without =", name, (int)ln, lname);
                goto out;
            }
            p = skip_blanks(p + 1, end);
            if (p >= end || *p != '"') {
                fail(c, "%s: label %.*s: value not quoted", name, (int)ln, lname);
                goto out;
            }
            const char *v = ++p;
            while (p < end && *p != '"') {
                if (*p == '\\') {
                    if (p + 1 >= end || (p[1] != '\\' && p[1] != '"' && p[1] != 'n')) {
                        fail(c, "%s: label %.*s: invalid escape", name, (int)ln, lname);
                        goto out;
                    }
                    p++;
                }
                p++;
            }
            if (p >= end) {
                fail(c, "%s: label %.*s: value not closed", name, (int)ln, lname);
                goto out;
            }
            char *kv = malloc(ln + (size_t)(p - v) + 2);
            if (!kv)
                abort();
            sprintf(kv, "%.*s=%.*s", (int)ln, lname, (int)(p - v), v);
            for (size_t i = 0; i < n_labels; i++) {
                if (strncmp(labels[i], kv, ln + 1) == 0) {
                    free(kv);
                    fail(c, "%s: label %.*s twice", name, (int)ln, lname);
                    goto out;
                }
            }
            labels = realloc(labels, (n_labels + 1) * sizeof(*labels));
            if (!labels)
                abort();
            labels[n_labels++] = kv;
            p = skip_blanks(p + 1, end);
            if (p < end && *p == ',')
                p = skip_blanks(p + 1, end);
            else if (p < end && *p != '}') {
                fail(c, "%s: expected , or } after a label", name);
                goto out;
            }
        }
        if (p >= end) {
            fail(c, "%s: labels not closed", name);
            goto out;
        }
        p++;
    }
    const char *q = skip_blanks(p, end);
    if (q == p) {
        fail(c, "%s: no blank before the value", name);
        goto out;
    }
    p = q;
    const char *ve = p;
    while (ve < end && !is_blank(*ve))
        ve++;
    if (!valid_float(p, (size_t)(ve - p))) {
        fail(c, "%s: value \"%.*s\" is not a float", name, (int)(ve - p), p);
        goto out;
    }
    if (skip_blanks(ve, end) != end) {
        fail(c, "%s: text after the value (a timestamp: the textfile collector "
                "refuses them)", name);
        goto out;
    }
    /* the series: name and sorted labels */
    if (n_labels)
        qsort(labels, n_labels, sizeof(*labels), cmp_str);
    size_t klen = strlen(name) + 2;
    for (size_t i = 0; i < n_labels; i++)
        klen += strlen(labels[i]) + 1;
    char *key = malloc(klen);
    if (!key)
        abort();
    strcpy(key, name);
    for (size_t i = 0; i < n_labels; i++) {
        strcat(key, "\x01");
        strcat(key, labels[i]);
    }
    for (size_t i = 0; i < c->n_series; i++) {
        if (strcmp(c->series[i], key) == 0) {
            free(key);
            fail(c, "series %s given twice", name);
            goto out;
        }
    }
    c->series = realloc(c->series, (c->n_series + 1) * sizeof(*c->series));
    if (!c->series)
        abort();
    c->series[c->n_series++] = key;
    c->has_sample = true;
    r = 0;
out:
    for (size_t i = 0; i < n_labels; i++)
        free(labels[i]);
    free(labels);
    free(name);
    return r;
}

int prom_check(const char *text, size_t len, char *err, size_t errlen)
{
    struct checker c = { .err = err, .errlen = errlen };
    int r = 0;
    if (errlen)
        err[0] = '\0';
    if (len == 0 || text[len - 1] != '\n') {
        c.line = 0;
        r = fail(&c, len ? "no newline at the end" : "empty");
        goto out;
    }
    for (const char *p = text, *stop = text + len; p < stop && r == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        c.line++;
        if (memchr(p, '\0', (size_t)(nl - p)))
            r = fail(&c, "a NUL byte");
        else if (nl == p)
            ; /* empty line */
        else if (*p == '#')
            r = comment_line(&c, p, nl);
        else
            r = sample_line(&c, p, nl);
        p = nl + 1;
    }
    if (r == 0 && c.fam && (!c.has_help || !c.has_type))
        r = fail(&c, "family %s has no %s", c.fam, c.has_help ? "TYPE" : "HELP");
out:
    free(c.fam);
    for (size_t i = 0; i < c.n_done; i++)
        free(c.done[i]);
    free(c.done);
    for (size_t i = 0; i < c.n_series; i++)
        free(c.series[i]);
    free(c.series);
    return r;
}
