/*
 * log.c - see log.h. Each line is formatted into one buffer and written with
 * a single write(2), so lines from several threads or processes sharing
 * stderr never interleave mid-line. Control characters in the message
 * (a CR or LF in a task title, say) are written as \xNN, so no input can
 * forge or split a log line.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_LEVEL_INFO;

static const char *level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

int log_set_level_name(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++) {
        if (strcasecmp(name, names[i]) == 0) {
            log_threshold = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

/* Copy in[0..len) to out (capacity cap), writing control characters as
 * \xNN; returns the length written (cut short rather than overflow). */
static size_t escape_controls(const char *in, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < len && o + 4 < cap; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch < 0x20 || ch == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
    }
    return o;
}

void log_write(enum log_level level, const char *cid, const char *fmt, ...)
{
    char raw[2048], line[2048 + 64];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level < 4 ? level : 3]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    size_t rawlen = m < 0 ? 0 : (size_t)m >= sizeof(raw) ? sizeof(raw) - 1 : (size_t)m;
    size_t len = (size_t)n + escape_controls(raw, rawlen, line + n, sizeof(line) - 64 - (size_t)n);
    if (cid) {
        int k = snprintf(line + len, sizeof(line) - len, " cid=%s", cid);
        len += k < 0 ? 0 : (size_t)k;
        if (len > sizeof(line) - 2)
            len = sizeof(line) - 2;
    }
    line[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}
