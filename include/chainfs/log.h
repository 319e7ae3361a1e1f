/* log.h — the daemon's log: stderr in the foreground, syslog otherwise.
 * Program code logs; library-like modules (names, render, journal,
 * backends) return errors and leave logging to their callers.
 * Thread-safe. */
#pragma once

#include <stdbool.h>
#include <syslog.h>

void cfs_log_init(bool to_syslog, bool debug);
void cfs_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Tests: every line logged from now on (debug lines only with debug on)
 * is also handed to SINK, escaped as written, with its priority; NULL
 * stops it. Called from any thread that logs; not for the daemon. */
typedef void (*cfs_log_sink)(int prio, const char *line, void *opaque);
void cfs_log_set_sink(cfs_log_sink sink, void *opaque);

/* Issue 12: several hosts in one mount. The calling thread's host name
 * (NULL or "": none, the one-host format) is put before every line this
 * thread logs, as "host NAME: ...", on stderr, syslog and the sink alike.
 * Every thread an engine starts sets its engine's host name first thing
 * (cfg.host); FUSE threads set it around a call routed to one host. The
 * string must outlive the thread's use of it (the engine's config). */
void cfs_log_set_context(const char *host);
const char *cfs_log_context(void);

#define log_err(...) cfs_log(LOG_ERR, __VA_ARGS__)
#define log_warn(...) cfs_log(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) cfs_log(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) cfs_log(LOG_INFO, __VA_ARGS__)
#define log_debug(...) cfs_log(LOG_DEBUG, __VA_ARGS__)
