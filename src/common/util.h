/*
 * util.h - allocation that cannot fail, clocks and small string helpers.
 *
 * Allocation failure is not an error herald tries to recover from: the
 * x-functions print a message and abort, so callers never check for NULL.
 */
#ifndef HERALD_UTIL_H
#define HERALD_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* malloc/calloc/realloc/strdup that abort on failure; never return NULL. */
void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);
/* Copy of the first len bytes of s, NUL-terminated. */
char *xstrndup(const char *s, size_t len);

/* Wall-clock time in milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t util_now_ms(void);
/* Monotonic time in nanoseconds (CLOCK_MONOTONIC, shared by all processes). */
int64_t util_monotonic_ns(void);
/* Sleep for the given number of microseconds (restarts on EINTR). */
void util_sleep_us(int64_t us);

/*
 * Copy src into dst (capacity dstlen, > 0), truncating; always
 * NUL-terminates. Returns strlen(src) so truncation can be detected.
 */
size_t util_strlcpy(char *dst, const char *src, size_t dstlen);

/* printf into err[errlen] if err is non-NULL; always returns -1. */
int util_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Parse a duration such as "500ms", "30s", "15m", "2h", "7d" (a bare number
 * is seconds) into milliseconds. Returns 0 or -1 on malformed or negative
 * input or overflow.
 */
int util_parse_duration_ms(const char *text, int64_t *out_ms);

/* Create a directory and its parents (mode 0755); 0 or -1 with errno set. */
int util_mkdir_p(const char *path);

/* Fill buf with len bytes from the kernel's CSPRNG (getrandom), through a
 * per-thread pool of 256 bytes (one getrandom per few ids; a forked child
 * starts with an empty pool); aborts if the kernel cannot give them (it
 * never fails once booted). Thread-safe. */
void util_random_bytes(void *buf, size_t len);

#define UTIL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
