/*
 * util.c - see util.h. Nothing here keeps state; every function is safe to
 * call from any thread.
 */
#include "common/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

static void out_of_memory(size_t size)
{
    fprintf(stderr, "herald: out of memory allocating %zu bytes\n", size);
    abort();
}

void *xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        out_of_memory(size);
    return p;
}

void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        out_of_memory(count * size);
    return p;
}

void *xrealloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (!p)
        out_of_memory(size);
    return p;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t len)
{
    char *p = xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void util_sleep_us(int64_t us)
{
    struct timespec req = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    while (nanosleep(&req, &req) != 0 && errno == EINTR)
        ;
}

size_t util_strlcpy(char *dst, const char *src, size_t dstlen)
{
    size_t len = strlen(src);
    size_t n = len < dstlen - 1 ? len : dstlen - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return len;
}

int util_error(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int util_parse_duration_ms(const char *text, int64_t *out_ms)
{
    if (!text || !*text)
        return -1;
    const char *p = text;
    int64_t value = 0;
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        if (value > (INT64_MAX - 9) / 10)
            return -1;
        value = value * 10 + (*p - '0');
        p++;
    }
    int64_t unit;
    if (*p == '\0' || strcmp(p, "s") == 0)
        unit = 1000;
    else if (strcmp(p, "ms") == 0)
        unit = 1;
    else if (strcmp(p, "m") == 0)
        unit = 60 * 1000;
    else if (strcmp(p, "h") == 0)
        unit = 3600 * 1000;
    else if (strcmp(p, "d") == 0)
        unit = 86400 * 1000;
    else
        return -1;
    if (value > INT64_MAX / unit)
        return -1;
    *out_ms = value * unit;
    return 0;
}

int util_mkdir_p(const char *path)
{
    char buf[4096];
    if (util_strlcpy(buf, path, sizeof(buf)) >= sizeof(buf)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (stat(buf, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static void getrandom_all(unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "herald: cannot read random bytes: %s\n", strerror(errno));
            abort();
        }
        p += n;
        len -= (size_t)n;
    }
}

/*
 * Each thread keeps a small pool of the kernel's random bytes: ids are
 * made several times per request, and a getrandom(2) per id cost ~4 % of
 * the Task API's CPU. The pool is the kernel CSPRNG's own output, handed
 * out once. A forked child drops the pool it inherited (pthread_atfork), so
 * parent and child never hand out the same bytes.
 */
#define RANDOM_POOL_SIZE 256
static _Thread_local unsigned char random_pool[RANDOM_POOL_SIZE];
static _Thread_local size_t random_left;
static pthread_once_t random_once = PTHREAD_ONCE_INIT;

static void random_forget_in_child(void)
{
    random_left = 0;
}

static void random_register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, random_forget_in_child);
}

void util_random_bytes(void *buf, size_t len)
{
    pthread_once(&random_once, random_register_fork_handler);
    unsigned char *p = buf;
    if (len > RANDOM_POOL_SIZE / 4) {
        getrandom_all(p, len);
        return;
    }
    if (random_left < len) {
        getrandom_all(random_pool, RANDOM_POOL_SIZE);
        random_left = RANDOM_POOL_SIZE;
    }
    unsigned char *from = random_pool + RANDOM_POOL_SIZE - random_left;
    memcpy(p, from, len);
    memset(from, 0, len); /* handed out once; nothing left to read back */
    random_left -= len;
}
