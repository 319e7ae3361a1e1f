/* prom_check.h — a strict checker of the Prometheus text exposition
 * format 0.0.4, as node_exporter's textfile collector reads a file
 * (promtool is not everywhere; tests use this one, and promtool too
 * where it is on PATH). Stricter than the format where the collector or
 * chainfs's contract is:
 *  - the text is not empty and ends with a newline;
 *  - metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names
 *    [a-zA-Z_][a-zA-Z0-9_]* not starting with "__", label values quoted
 *    with only \\ \" \n escapes, HELP text with only \\ \n escapes;
 *  - every family has exactly one HELP and one TYPE (counter, gauge,
 *    histogram, summary, untyped), both before its first sample;
 *  - a family's lines are together (no family comes back later);
 *  - a sample's name is its family's (histogram: _bucket, _sum, _count;
 *    summary: the name, _sum, _count);
 *  - counter families are named *_total;
 *  - values parse as floats (decimal, NaN, +Inf, -Inf);
 *  - no timestamps (the textfile collector refuses them);
 *  - no series twice (same name and label set, in any order), no label
 *    twice in one sample.
 * Empty lines and other comments are allowed, as the format says. */
#pragma once

#include <stddef.h>

/* 0 if TEXT (LEN bytes) is valid, else -1 and a message naming the line
 * in ERR (ERRLEN bytes). */
int prom_check(const char *text, size_t len, char *err, size_t errlen);
