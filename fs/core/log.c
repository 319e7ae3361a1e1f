/* log.c — see log.h. Lines on stderr carry a UTC timestamp and the level;
 * one fprintf per line so lines from different threads do not interleave.
 * Control characters in a message (a newline in a snapshot name, an ESC
 * in a libvirt message) are escaped as in the text files: \n, \t, \xHH,
 * so one record is one line and no name can forge a line of its own. */
#include "chainfs/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "chainfs/util.h"

static bool log_syslog;
static bool log_debug_on;
static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;
static cfs_log_sink sink_fn;
static void *sink_opaque;
static __thread const char *log_host;

void cfs_log_set_context(const char *host)
{
    log_host = host && *host ? host : NULL;
}

const char *cfs_log_context(void)
{
    return log_host;
}

void cfs_log_set_sink(cfs_log_sink sink, void *opaque)
{
    pthread_mutex_lock(&sink_lock);
    sink_fn = sink;
    sink_opaque = opaque;
    pthread_mutex_unlock(&sink_lock);
}

void cfs_log_init(bool to_syslog, bool debug)
{
    log_syslog = to_syslog;
    log_debug_on = debug;
    if (to_syslog)
        openlog("chainfs", LOG_PID, LOG_DAEMON);
}

static const char *prio_name(int prio)
{
    switch (prio) {
    case LOG_ERR: return "error";
    case LOG_WARNING: return "warning";
    case LOG_NOTICE: return "notice";
    case LOG_INFO: return "info";
    case LOG_DEBUG: return "debug";
    default: return "notice";
    }
}

void cfs_log(int prio, const char *fmt, ...)
{
    if (prio == LOG_DEBUG && !log_debug_on)
        return;

    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    _cleanup_buf_ struct cfs_buf line = {0};
    if (log_host) {
        cfs_buf_put(&line, "host ", 5);
        cfs_buf_put_escaped(&line, log_host);
        cfs_buf_put(&line, ": ", 2);
    }
    cfs_buf_put_escaped(&line, msg);
    const char *text = line.data ? line.data : "";

    pthread_mutex_lock(&sink_lock);
    if (sink_fn)
        sink_fn(prio, text, sink_opaque);
    pthread_mutex_unlock(&sink_lock);
    if (log_syslog) {
        syslog(prio, "%s", text);
        return;
    }
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ chainfs %s: %s\n",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, prio_name(prio), text);
}
