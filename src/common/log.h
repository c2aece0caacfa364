/*
 * log.h - the one logging module: levels, one line per message on stderr.
 *
 * The level is checked before the arguments are evaluated, so a disabled
 * LOG_DEBUG costs one comparison. Lines that concern an event pass its
 * correlation id with the LOG_*_CID forms, which print "cid=<id>".
 *
 * Two line formats (log_set_format_name(); HERALD_LOG_FORMAT):
 *   text (default):  2025-01-15T14:30:22.456Z INFO  message [k=v ...] [cid=...]
 *   json:            {"time":"2025-01-15T14:30:22.456Z","level":"info",
 *                     "message":"...","cid":"...", <fields>}
 * Structured lines (log_write_fields(), LOG_FIELDS) carry named fields: in
 * text they follow the message as k=v (a value with a space, a quote, a
 * backslash or an '=' is written "quoted" with \" and \\ escapes), in JSON
 * they are members of the object with their own types.
 */
#ifndef HERALD_LOG_H
#define HERALD_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
    LOG_LEVEL_OFF
};

enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON };

/* The current threshold; messages below it are dropped. Default INFO. */
extern enum log_level log_threshold;

/* The current line format. Default text. */
extern enum log_format log_format;

/* Set the threshold from a name (debug, info, warn, error, off); 0 or -1. */
int log_set_level_name(const char *name);

/* Set the format from a name (text, json); 0 or -1. */
int log_set_format_name(const char *name);

/* Write one line (used through the macros below). cid may be NULL. */
void log_write(enum log_level level, const char *cid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A named value of a structured line. */
enum log_field_kind { LOG_FIELD_STR, LOG_FIELD_INT, LOG_FIELD_NUM };

typedef struct log_field {
    const char *name; /* [a-z_]+: written as is */
    enum log_field_kind kind;
    const char *s; /* LOG_FIELD_STR; NULL omits the field */
    int64_t i;     /* LOG_FIELD_INT */
    double d;      /* LOG_FIELD_NUM (3 decimals) */
} log_field;

#define LOG_STR(n, v) ((log_field){(n), LOG_FIELD_STR, (v), 0, 0})
#define LOG_INT(n, v) ((log_field){(n), LOG_FIELD_INT, NULL, (int64_t)(v), 0})
#define LOG_NUM(n, v) ((log_field){(n), LOG_FIELD_NUM, NULL, 0, (double)(v)})

/*
 * Write one structured line: a fixed message and n fields (see the formats
 * above). Everything is escaped: no value can split or forge a line. Use
 * through LOG_FIELDS so nothing is built when the level is off.
 */
void log_write_fields(enum log_level level, const char *cid, const char *message,
                      const log_field *fields, size_t n);

/*
 * Escape in[0..len) as the inside of a JSON string into out (capacity cap,
 * always NUL-terminated): '"', '\\' and control characters escaped (\n, \t,
 * \u00XX...), valid UTF-8 kept, each byte of invalid UTF-8 written as
 * \ufffd. Stops before a sequence that would not fit. Returns the length
 * written.
 */
size_t log_json_escape(const char *in, size_t len, char *out, size_t cap);

#define LOG_AT(level, cid, ...)                                                                    \
    do {                                                                                           \
        if ((level) >= log_threshold)                                                              \
            log_write((level), (cid), __VA_ARGS__);                                                \
    } while (0)

/* LOG_FIELDS(level, cid, "message", LOG_STR("k", v), LOG_INT("n", 3), ...) */
#define LOG_FIELDS(level, cid, message, ...)                                                       \
    do {                                                                                           \
        if ((level) >= log_threshold) {                                                            \
            const log_field log_fields_[] = {__VA_ARGS__};                                         \
            log_write_fields((level), (cid), (message), log_fields_,                               \
                             sizeof(log_fields_) / sizeof(log_fields_[0]));                        \
        }                                                                                          \
    } while (0)

#define LOG_DEBUG(...) LOG_AT(LOG_LEVEL_DEBUG, NULL, __VA_ARGS__)
#define LOG_INFO(...) LOG_AT(LOG_LEVEL_INFO, NULL, __VA_ARGS__)
#define LOG_WARN(...) LOG_AT(LOG_LEVEL_WARN, NULL, __VA_ARGS__)
#define LOG_ERROR(...) LOG_AT(LOG_LEVEL_ERROR, NULL, __VA_ARGS__)
#define LOG_DEBUG_CID(cid, ...) LOG_AT(LOG_LEVEL_DEBUG, (cid), __VA_ARGS__)
#define LOG_INFO_CID(cid, ...) LOG_AT(LOG_LEVEL_INFO, (cid), __VA_ARGS__)
#define LOG_WARN_CID(cid, ...) LOG_AT(LOG_LEVEL_WARN, (cid), __VA_ARGS__)
#define LOG_ERROR_CID(cid, ...) LOG_AT(LOG_LEVEL_ERROR, (cid), __VA_ARGS__)

#endif
