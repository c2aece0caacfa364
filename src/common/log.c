/*
 * log.c - see log.h. Each line is formatted into one buffer and written with
 * a single write(2), so lines from several threads or processes sharing
 * stderr never interleave mid-line. In text lines, control characters in
 * the message (a CR or LF in a task title, say) are written as \xNN; in JSON
 * lines every string is JSON-escaped and invalid UTF-8 replaced, so no input
 * can forge or split a log line, and every JSON line parses.
 *
 * A line is at most LINE_MAX bytes: a longer message or value is cut short
 * (a JSON line stays a complete object).
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096
/* Room kept for what closes a line ("\"}\n" and a little more). */
#define LINE_RESERVE 8

enum log_level log_threshold = LOG_LEVEL_INFO;
enum log_format log_format = LOG_FORMAT_TEXT;

static const char *level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
static const char *level_names_json[] = {"debug", "info", "warn", "error"};

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

int log_set_format_name(const char *name)
{
    if (strcasecmp(name, "text") == 0)
        log_format = LOG_FORMAT_TEXT;
    else if (strcasecmp(name, "json") == 0)
        log_format = LOG_FORMAT_JSON;
    else
        return -1;
    return 0;
}

/* ---- a bounded line buffer -------------------------------------------- */

typedef struct line_buf {
    char b[LINE_MAX_BYTES];
    size_t len;
} line_buf;

/* Room left for content (what closes the line is kept aside). */
static size_t room(const line_buf *l)
{
    return l->len + LINE_RESERVE < sizeof(l->b) ? sizeof(l->b) - LINE_RESERVE - l->len : 0;
}

static void put(line_buf *l, const char *s, size_t n)
{
    size_t r = room(l);
    if (n > r)
        n = r;
    memcpy(l->b + l->len, s, n);
    l->len += n;
}

static void puts_(line_buf *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s[0..len), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

size_t log_json_escape(const char *in, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len;) {
        char tmp[8];
        size_t tn = 0, adv = 1;
        unsigned char c = s[i];
        const char *src = tmp;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            tn = 2;
        } else if (c < 0x20 || c == 0x7f) {
            static const char short_esc[] = {
                ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'};
            if (c < sizeof(short_esc) && short_esc[c]) {
                tmp[0] = '\\';
                tmp[1] = short_esc[c];
                tn = 2;
            } else {
                memcpy(tmp, "\\u00", 4);
                tmp[4] = hex[c >> 4];
                tmp[5] = hex[c & 15];
                tn = 6;
            }
        } else if (c < 0x80) {
            tmp[0] = (char)c;
            tn = 1;
        } else if ((adv = utf8_seq(s + i, len - i)) != 0) {
            src = (const char *)s + i;
            tn = adv;
        } else {
            memcpy(tmp, "\\ufffd", 6);
            tn = 6;
            adv = 1;
        }
        if (o + tn + 1 > cap)
            break;
        memcpy(out + o, src, tn);
        o += tn;
        i += adv;
    }
    out[o] = '\0';
    return o;
}

/* A JSON string (with its quotes) into the line. */
static void put_json_string(line_buf *l, const char *s, size_t n)
{
    if (room(l) < 2)
        return;
    l->b[l->len++] = '"';
    /* +1: log_json_escape's NUL lands in the reserve, the quote after it */
    l->len += log_json_escape(s, n, l->b + l->len, room(l) + 1);
    l->b[l->len++] = '"';
}

/* Text: control characters as \xNN. quote: also quote the value when it
 * is empty or holds a space, '"', '\\' or '='. */
static void put_text(line_buf *l, const char *s, size_t n, int quote)
{
    static const char hex[] = "0123456789abcdef";
    int q = quote && (n == 0 || strpbrk(s, " \"\\=") != NULL);
    if (q)
        put(l, "\"", 1);
    for (size_t i = 0; i < n && room(l) > (q ? 5 : 4); i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) {
            char e[4] = {'\\', 'x', hex[ch >> 4], hex[ch & 15]};
            put(l, e, 4);
        } else if (q && (ch == '"' || ch == '\\')) {
            char e[2] = {'\\', (char)ch};
            put(l, e, 2);
        } else {
            l->b[l->len++] = (char)ch;
        }
    }
    if (q)
        l->b[l->len++] = '"'; /* room was kept for it */
}

static void put_time(line_buf *l)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char t[32];
    int n =
        snprintf(t, sizeof(t), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    if (log_format == LOG_FORMAT_JSON) {
        puts_(l, "{\"time\":\"");
        put(l, t, (size_t)n);
        puts_(l, "\"");
    } else {
        put(l, t, (size_t)n);
    }
}

static void start_line(line_buf *l, enum log_level level, const char *message, size_t mlen)
{
    int lv = level < 4 ? (int)level : 3;
    l->len = 0;
    put_time(l);
    if (log_format == LOG_FORMAT_JSON) {
        puts_(l, ",\"level\":\"");
        puts_(l, level_names_json[lv]);
        puts_(l, "\",\"message\":");
        put_json_string(l, message, mlen);
    } else {
        char lvl[8];
        snprintf(lvl, sizeof(lvl), " %-5s ", level_names[lv]);
        puts_(l, lvl);
        put_text(l, message, mlen, 0);
    }
}

static void put_field(line_buf *l, const log_field *f)
{
    char num[48];
    int n = 0;
    if (f->kind == LOG_FIELD_STR && !f->s)
        return;
    if (f->kind == LOG_FIELD_INT)
        n = snprintf(num, sizeof(num), "%lld", (long long)f->i);
    else if (f->kind == LOG_FIELD_NUM)
        n = snprintf(num, sizeof(num), "%.3f", f->d);
    if (n < 0 || (size_t)n >= sizeof(num))
        n = 0;
    if (log_format == LOG_FORMAT_JSON) {
        /* a field that cannot fit whole is left out: the object stays valid */
        if (room(l) < strlen(f->name) + 8 + (size_t)n)
            return;
        puts_(l, ",\"");
        puts_(l, f->name);
        puts_(l, "\":");
        if (f->kind == LOG_FIELD_STR)
            put_json_string(l, f->s, strlen(f->s));
        else
            put(l, num, (size_t)n);
    } else {
        puts_(l, " ");
        puts_(l, f->name);
        puts_(l, "=");
        if (f->kind == LOG_FIELD_STR)
            put_text(l, f->s, strlen(f->s), 1);
        else
            put(l, num, (size_t)n);
    }
}

static void end_line(line_buf *l, const char *cid)
{
    if (cid) {
        log_field f = LOG_STR("cid", cid);
        if (log_format == LOG_FORMAT_JSON)
            put_field(l, &f);
        else {
            puts_(l, " cid=");
            put_text(l, cid, strlen(cid), 0);
        }
    }
    if (log_format == LOG_FORMAT_JSON)
        l->b[l->len++] = '}';
    l->b[l->len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, l->b, l->len);
    (void)ignored;
}

void log_write(enum log_level level, const char *cid, const char *fmt, ...)
{
    char raw[2048];
    line_buf l;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    size_t rawlen = m < 0 ? 0 : (size_t)m >= sizeof(raw) ? sizeof(raw) - 1 : (size_t)m;
    start_line(&l, level, raw, rawlen);
    end_line(&l, cid);
}

void log_write_fields(enum log_level level, const char *cid, const char *message,
                      const log_field *fields, size_t n)
{
    line_buf l;
    start_line(&l, level, message, strlen(message));
    for (size_t i = 0; i < n; i++)
        put_field(&l, &fields[i]);
    end_line(&l, cid);
}
