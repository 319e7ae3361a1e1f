/* fuzz.h — what the libFuzzer targets share: the input as a C string, and
 * a scratch directory in tmpfs for the targets that go through files. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* DATA[0..SIZE) with a NUL appended (and any NUL inside kept: the string
 * then ends early, as a C caller would see it). Caller frees. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);

    if (!s)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* The next piece of *S up to SEP (replaced by NUL), or the rest of it. */
static inline char *fuzz_next(char **s, char sep)
{
    char *p = *s, *e;

    if (!p)
        return NULL;
    e = strchr(p, sep);
    if (e) {
        *e = '\0';
        *s = e + 1;
    } else {
        *s = NULL;
    }
    return p;
}

/* An invariant of the code under test does not hold: a finding. */
#define FUZZ_ASSERT(cond)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__,       \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)
