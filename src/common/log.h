/*
 * log.h - the one logging module: levels, one line per message on stderr.
 *
 * The level is checked before the arguments are evaluated, so a disabled
 * LOG_DEBUG costs one comparison. Lines that concern an event pass its
 * correlation id with the LOG_*_CID forms, which print "cid=<id>".
 *
 * Line format: 2025-01-15T14:30:22.456Z INFO  herald: message [cid=...]
 */
#ifndef HERALD_LOG_H
#define HERALD_LOG_H

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
    LOG_LEVEL_OFF
};

/* The current threshold; messages below it are dropped. Default INFO. */
extern enum log_level log_threshold;

/* Set the threshold from a name (debug, info, warn, error, off); 0 or -1. */
int log_set_level_name(const char *name);

/* Write one line (used through the macros below). cid may be NULL. */
void log_write(enum log_level level, const char *cid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_AT(level, cid, ...)                                                                    \
    do {                                                                                           \
        if ((level) >= log_threshold)                                                              \
            log_write((level), (cid), __VA_ARGS__);                                                \
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
