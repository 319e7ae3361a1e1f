/* promcheck FILE... — check each FILE ("-": stdin) with the strict
 * text-format checker (prom_check.h). Exit 0 if every one is valid, 1
 * with "FILE: line N: why" on stderr if not, 2 if one cannot be read.
 * tests/integration/metrics.sh runs it on a mount's metrics.prom. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prom_check.h"

static char *slurp(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            b = realloc(b, cap);
        }
    }
    if (!b || ferror(f)) {
        free(b);
        return NULL;
    }
    *len = n;
    return b;
}

int main(int argc, char **argv)
{
    int rc = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: promcheck FILE...\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        FILE *f = strcmp(argv[i], "-") == 0 ? stdin : fopen(argv[i], "r");
        if (!f) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 2;
        }
        size_t len = 0;
        char *text = slurp(f, &len);
        if (f != stdin)
            fclose(f);
        if (!text) {
            fprintf(stderr, "%s: cannot read\n", argv[i]);
            return 2;
        }
        char err[512];
        if (prom_check(text, len, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s: %s\n", argv[i], err);
            rc = 1;
        }
        free(text);
    }
    return rc;
}
