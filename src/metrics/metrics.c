/*
 * metrics.c - the process's metric registry and its Prometheus text
 * rendering (see metrics.h).
 *
 * Design. A family owns a fixed array of max_series + 1 series pointers
 * (the extra slot is for the overflow series) and an atomic count. A
 * series is created under the family's mutex, written into the next slot,
 * and only then published by a release store of the count; readers load
 * the count with acquire and scan slots [0, count) without a lock, so
 * resolving an existing label set never blocks and never allocates. Each
 * series keeps a 64-bit FNV-1a hash of its label values, compared before
 * the strings. Each metric value is allocated on its own cache line, so
 * counters updated by different threads (one agent each) do not share one.
 *
 * Counters and gauges are one atomic integer. A histogram counts durations
 * in nanoseconds: one atomic per bucket (not cumulative; the rendering
 * adds them up, so _count always equals the +Inf bucket) and one for the
 * sum; an observation is a short scan of the bounds and two relaxed adds.
 * A scrape reads the atomics one by one: a scrape concurrent with updates
 * may see a histogram's _sum a few observations apart from its buckets,
 * which Prometheus tolerates.
 *
 * Threads: the family list is appended under registry_lock and walked
 * under it by metrics_render() (registration is a startup affair, so this
 * never contends with a hot path). Collectors are called under
 * collectors_lock, which is what lets metrics_remove_collector() promise
 * that no call is running once it returns.
 *
 * Ownership: families, series and their strings live until the process
 * exits (still reachable, never leaked).
 */
#include "metrics/metrics.h"

#include "common/util.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_LINE 64

typedef struct series {
    uint64_t hash;
    char *values[METRICS_MAX_LABELS];
    void *metric; /* metrics_counter, metrics_gauge or metrics_histogram */
} series;

struct metrics_histogram {
    const uint64_t *bounds_ns; /* the family's */
    size_t nbounds;
    _Atomic uint64_t sum_ns;
    _Atomic uint64_t buckets[]; /* nbounds + 1: the last one is +Inf */
};

struct metrics_family {
    metrics_type type;
    char *name, *help, *labels_text;
    char *labels[METRICS_MAX_LABELS];
    size_t nlabels;
    size_t max_series;
    double bounds[METRICS_MAX_BUCKETS];
    uint64_t bounds_ns[METRICS_MAX_BUCKETS];
    size_t nbounds;
    series **series; /* max_series + 1 slots */
    _Atomic size_t count;
    pthread_mutex_t lock; /* creating series */
    metrics_family *next;
};

typedef struct collector {
    metrics_collector_fn fn;
    void *ctx;
    struct collector *next;
} collector;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static metrics_family *families, *families_tail;
static pthread_mutex_t collectors_lock = PTHREAD_MUTEX_INITIALIZER;
static collector *collectors;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("herald: metrics: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ---- a growing string ------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > b->cap)
            b->cap *= 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_adds(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_addf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_addf(sbuf *b, const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    sb_add(b, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* HELP text: backslash and newline escaped. */
static void sb_help(sbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            sb_add(b, "\\\\", 2);
        else if (*s == '\n')
            sb_add(b, "\\n", 2);
        else
            sb_add(b, s, 1);
    }
}

/* A label value: backslash, double quote and newline escaped. */
static void sb_label_value(sbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            sb_add(b, "\\\\", 2);
        else if (*s == '"')
            sb_add(b, "\\\"", 2);
        else if (*s == '\n')
            sb_add(b, "\\n", 2);
        else
            sb_add(b, s, 1);
    }
}

/* A sample value or a bucket bound, as Prometheus spells floats. */
static void format_double(double v, char out[40])
{
    if (isnan(v))
        snprintf(out, 40, "NaN");
    else if (isinf(v))
        snprintf(out, 40, "%s", v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        snprintf(out, 40, "%.0f", v);
    else
        snprintf(out, 40, "%.15g", v);
}

/* ---- names ------------------------------------------------------------ */

static int name_valid(const char *s, int colons)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colons && c == ':') || (p > s && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* Split "a,b" into names[]; returns the count. Aborts on an invalid one. */
static size_t parse_labels(const char *text, char names[][64], const char *metric, int histogram)
{
    size_t n = 0;
    if (!text || !*text)
        return 0;
    const char *p = text;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (n == METRICS_MAX_LABELS || len == 0 || len >= 64)
            die("bad label list '%s' of %s", text, metric);
        memcpy(names[n], p, len);
        names[n][len] = '\0';
        if (!name_valid(names[n], 0) || strncmp(names[n], "__", 2) == 0 ||
            (histogram && strcmp(names[n], "le") == 0))
            die("bad label name '%s' of %s", names[n], metric);
        n++;
        if (!p[len])
            return n;
        p += len + 1;
    }
}

/* ---- registration ----------------------------------------------------- */

static int same_bounds(const metrics_family *f, const double *bounds, size_t nbounds)
{
    if (f->nbounds != nbounds)
        return 0;
    for (size_t i = 0; i < nbounds; i++)
        if (f->bounds[i] != bounds[i])
            return 0;
    return 1;
}

static metrics_family *family_register(metrics_type type, const char *name, const char *help,
                                       const char *labels, size_t max_series, const double *bounds,
                                       size_t nbounds)
{
    if (!name_valid(name, 1))
        die("invalid metric name '%s'", name ? name : "(null)");
    size_t nl = strlen(name);
    if (type == METRICS_COUNTER && (nl < 6 || strcmp(name + nl - 6, "_total") != 0))
        die("counter %s: the name must end in _total", name);
    if (max_series < 1)
        die("%s: max_series must be at least 1", name);
    char names[METRICS_MAX_LABELS][64];
    size_t nlabels = parse_labels(labels, names, name, type == METRICS_HISTOGRAM);
    if (type == METRICS_HISTOGRAM) {
        if (nbounds < 1 || nbounds > METRICS_MAX_BUCKETS)
            die("histogram %s: 1..%d bucket bounds", name, METRICS_MAX_BUCKETS);
        for (size_t i = 0; i < nbounds; i++)
            if (!isfinite(bounds[i]) || bounds[i] < 0 || (i > 0 && bounds[i] <= bounds[i - 1]))
                die("histogram %s: bounds must be finite, >= 0 and increasing", name);
    } else {
        nbounds = 0;
    }
    const char *ltext = labels ? labels : "";
    pthread_mutex_lock(&registry_lock);
    for (metrics_family *f = families; f; f = f->next) {
        if (strcmp(f->name, name) != 0)
            continue;
        if (f->type != type || strcmp(f->labels_text, ltext) != 0 ||
            !same_bounds(f, bounds, nbounds))
            die("%s registered twice with different types, labels or buckets", name);
        pthread_mutex_unlock(&registry_lock);
        return f;
    }
    metrics_family *f = xcalloc(1, sizeof(*f));
    f->type = type;
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->labels_text = xstrdup(ltext);
    f->nlabels = nlabels;
    for (size_t i = 0; i < nlabels; i++)
        f->labels[i] = xstrdup(names[i]);
    f->max_series = max_series;
    f->nbounds = nbounds;
    for (size_t i = 0; i < nbounds; i++) {
        f->bounds[i] = bounds[i];
        f->bounds_ns[i] = (uint64_t)llround(bounds[i] * 1e9);
    }
    f->series = xcalloc(max_series + 1, sizeof(*f->series));
    atomic_init(&f->count, 0);
    pthread_mutex_init(&f->lock, NULL);
    if (families_tail)
        families_tail->next = f;
    else
        families = f;
    families_tail = f;
    pthread_mutex_unlock(&registry_lock);
    return f;
}

metrics_family *metrics_counter_family(const char *name, const char *help, const char *labels,
                                       size_t max_series)
{
    return family_register(METRICS_COUNTER, name, help, labels, max_series, NULL, 0);
}

metrics_family *metrics_gauge_family(const char *name, const char *help, const char *labels,
                                     size_t max_series)
{
    return family_register(METRICS_GAUGE, name, help, labels, max_series, NULL, 0);
}

metrics_family *metrics_histogram_family(const char *name, const char *help, const char *labels,
                                         size_t max_series, const double *bounds, size_t nbounds)
{
    return family_register(METRICS_HISTOGRAM, name, help, labels, max_series, bounds, nbounds);
}

/* ---- series ----------------------------------------------------------- */

static int value_ok(const char *v)
{
    if (!v)
        return 0;
    size_t n = 0;
    for (; v[n]; n++)
        if ((unsigned char)v[n] < 0x20 || (unsigned char)v[n] > 0x7e || n >= METRICS_VALUE_MAX)
            return 0;
    return 1;
}

static uint64_t hash_values(size_t n, const char *const *values)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        for (const char *p = values[i]; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ULL;
        h = (h ^ 0xffu) * 1099511628211ULL; /* separator: ("a","bc") != ("ab","c") */
    }
    return h;
}

static series *find(const metrics_family *f, const char *const *values, uint64_t h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        series *s = f->series[i];
        if (s->hash != h)
            continue;
        size_t k = 0;
        while (k < f->nlabels && strcmp(s->values[k], values[k]) == 0)
            k++;
        if (k == f->nlabels)
            return s;
    }
    return NULL;
}

static void *aligned_zeroed(size_t size)
{
    size = (size + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    void *p = aligned_alloc(CACHE_LINE, size);
    if (!p) {
        fputs("herald: out of memory\n", stderr);
        abort();
    }
    memset(p, 0, size);
    return p;
}

static series *series_new(metrics_family *f, const char *const *values, uint64_t h)
{
    series *s = xcalloc(1, sizeof(*s));
    s->hash = h;
    for (size_t i = 0; i < f->nlabels; i++)
        s->values[i] = xstrdup(values[i]);
    if (f->type == METRICS_HISTOGRAM) {
        metrics_histogram *hist =
            aligned_zeroed(sizeof(*hist) + (f->nbounds + 1) * sizeof(hist->buckets[0]));
        hist->bounds_ns = f->bounds_ns;
        hist->nbounds = f->nbounds;
        atomic_init(&hist->sum_ns, 0);
        for (size_t i = 0; i <= f->nbounds; i++)
            atomic_init(&hist->buckets[i], 0);
        s->metric = hist;
    } else if (f->type == METRICS_COUNTER) {
        metrics_counter *c = aligned_zeroed(sizeof(*c));
        atomic_init(&c->value, 0);
        s->metric = c;
    } else {
        metrics_gauge *g = aligned_zeroed(sizeof(*g));
        atomic_init(&g->value, 0);
        s->metric = g;
    }
    return s;
}

static void *series_get(metrics_family *f, metrics_type type, const char *const *values)
{
    if (f->type != type)
        die("%s: series of the wrong type requested", f->name);
    const char *other[METRICS_MAX_LABELS];
    for (size_t i = 0; i < f->nlabels; i++)
        other[i] = METRICS_OVERFLOW;
    int ok = 1;
    for (size_t i = 0; i < f->nlabels && ok; i++)
        ok = values && value_ok(values[i]);
    if (!ok)
        values = other;
    uint64_t h = hash_values(f->nlabels, values);
    series *s = find(f, values, h, atomic_load_explicit(&f->count, memory_order_acquire));
    if (s)
        return s->metric;
    pthread_mutex_lock(&f->lock);
    size_t n = atomic_load_explicit(&f->count, memory_order_relaxed);
    s = find(f, values, h, n);
    if (!s && n >= f->max_series && values != other) {
        /* full: count it under the overflow series (which has its own slot) */
        values = other;
        h = hash_values(f->nlabels, values);
        s = find(f, values, h, n);
    }
    if (!s) {
        s = series_new(f, values, h);
        f->series[n] = s;
        atomic_store_explicit(&f->count, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&f->lock);
    return s->metric;
}

metrics_counter *metrics_counter_get(metrics_family *f, const char *const *values)
{
    return series_get(f, METRICS_COUNTER, values);
}

metrics_gauge *metrics_gauge_get(metrics_family *f, const char *const *values)
{
    return series_get(f, METRICS_GAUGE, values);
}

metrics_histogram *metrics_histogram_get(metrics_family *f, const char *const *values)
{
    return series_get(f, METRICS_HISTOGRAM, values);
}

void metrics_histogram_observe_ns(metrics_histogram *h, int64_t ns)
{
    if (!h)
        return;
    uint64_t v = ns > 0 ? (uint64_t)ns : 0;
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds_ns[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, v, memory_order_relaxed);
}

uint64_t metrics_counter_value(const metrics_counter *c)
{
    return c ? atomic_load_explicit(&c->value, memory_order_relaxed) : 0;
}

/* ---- rendering -------------------------------------------------------- */

struct metrics_writer {
    sbuf *b;
};

static const char *type_name(metrics_type t)
{
    return t == METRICS_COUNTER ? "counter" : t == METRICS_GAUGE ? "gauge" : "histogram";
}

static void write_header(sbuf *b, const char *name, const char *help, metrics_type type)
{
    sb_adds(b, "# HELP ");
    sb_adds(b, name);
    sb_add(b, " ", 1);
    sb_help(b, help);
    sb_adds(b, "\n# TYPE ");
    sb_adds(b, name);
    sb_add(b, " ", 1);
    sb_adds(b, type_name(type));
    sb_add(b, "\n", 1);
}

/* "name{a="x",b="y"" without the closing brace (le may follow). */
static void write_labels(sbuf *b, size_t n, char *const *names, const char *const *values)
{
    for (size_t i = 0; i < n; i++) {
        sb_add(b, i ? "," : "{", 1);
        sb_adds(b, names[i]);
        sb_add(b, "=\"", 2);
        sb_label_value(b, values[i] ? values[i] : "");
        sb_add(b, "\"", 1);
    }
}

/* One line: name[suffix]{labels[,le="..."]} value-text */
static void write_line(sbuf *b, const metrics_family *f, const series *s, const char *suffix,
                       const char *le)
{
    sb_adds(b, f->name);
    sb_adds(b, suffix);
    write_labels(b, f->nlabels, f->labels, (const char *const *)s->values);
    if (le) {
        sb_adds(b, f->nlabels ? ",le=\"" : "{le=\"");
        sb_adds(b, le);
        sb_add(b, "\"", 1);
    }
    if (f->nlabels || le)
        sb_add(b, "}", 1);
    sb_add(b, " ", 1);
}

static void write_histogram(sbuf *b, const metrics_family *f, const series *s)
{
    const metrics_histogram *h = s->metric;
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= f->nbounds; i++) {
        cumulative += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        char le[40];
        format_double(i < f->nbounds ? f->bounds[i] : INFINITY, le);
        write_line(b, f, s, "_bucket", le);
        sb_addf(b, "%" PRIu64 "\n", cumulative);
    }
    uint64_t sum = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
    write_line(b, f, s, "_sum", NULL);
    /* seconds, exactly: integer part and nine decimals, trailing zeros cut */
    char frac[16];
    snprintf(frac, sizeof(frac), "%09" PRIu64, sum % 1000000000u);
    size_t fl = strlen(frac);
    while (fl > 1 && frac[fl - 1] == '0')
        frac[--fl] = '\0';
    sb_addf(b, "%" PRIu64 ".%s\n", sum / 1000000000u, frac);
    write_line(b, f, s, "_count", NULL);
    sb_addf(b, "%" PRIu64 "\n", cumulative);
}

static void write_family(sbuf *b, const metrics_family *f)
{
    write_header(b, f->name, f->help, f->type);
    size_t n = atomic_load_explicit(&f->count, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        const series *s = f->series[i];
        if (f->type == METRICS_HISTOGRAM) {
            write_histogram(b, f, s);
        } else if (f->type == METRICS_COUNTER) {
            write_line(b, f, s, "", NULL);
            sb_addf(
                b, "%" PRIu64 "\n",
                atomic_load_explicit(&((metrics_counter *)s->metric)->value, memory_order_relaxed));
        } else {
            write_line(b, f, s, "", NULL);
            sb_addf(
                b, "%" PRId64 "\n",
                atomic_load_explicit(&((metrics_gauge *)s->metric)->value, memory_order_relaxed));
        }
    }
}

char *metrics_render(size_t *len)
{
    sbuf b = {0};
    sb_add(&b, "", 0);
    pthread_mutex_lock(&registry_lock);
    for (const metrics_family *f = families; f; f = f->next)
        write_family(&b, f);
    pthread_mutex_unlock(&registry_lock);
    metrics_writer w = {&b};
    pthread_mutex_lock(&collectors_lock);
    for (collector *c = collectors; c; c = c->next)
        c->fn(&w, c->ctx);
    pthread_mutex_unlock(&collectors_lock);
    if (len)
        *len = b.len;
    return b.p;
}

/* ---- collectors ------------------------------------------------------- */

void metrics_add_collector(metrics_collector_fn fn, void *ctx)
{
    collector *c = xcalloc(1, sizeof(*c));
    c->fn = fn;
    c->ctx = ctx;
    pthread_mutex_lock(&collectors_lock);
    collector **tail = &collectors;
    while (*tail)
        tail = &(*tail)->next;
    *tail = c;
    pthread_mutex_unlock(&collectors_lock);
}

void metrics_remove_collector(metrics_collector_fn fn, void *ctx)
{
    pthread_mutex_lock(&collectors_lock);
    for (collector **p = &collectors; *p; p = &(*p)->next) {
        if ((*p)->fn == fn && (*p)->ctx == ctx) {
            collector *c = *p;
            *p = c->next;
            free(c);
            break;
        }
    }
    pthread_mutex_unlock(&collectors_lock);
}

void metrics_write_family(metrics_writer *w, const char *name, const char *help, metrics_type type)
{
    if (!name_valid(name, 1))
        die("invalid metric name '%s'", name ? name : "(null)");
    write_header(w->b, name, help ? help : "", type);
}

void metrics_write_sample(metrics_writer *w, const char *name, const char *labels,
                          const char *const *values, double value)
{
    char names[METRICS_MAX_LABELS][64];
    size_t n = parse_labels(labels, names, name, 0);
    char *np[METRICS_MAX_LABELS] = {0};
    for (size_t i = 0; i < n; i++)
        np[i] = names[i];
    sb_adds(w->b, name);
    write_labels(w->b, n, np, values);
    if (n)
        sb_add(w->b, "}", 1);
    char text[40];
    format_double(value, text);
    sb_add(w->b, " ", 1);
    sb_adds(w->b, text);
    sb_add(w->b, "\n", 1);
}

void metrics_write_gauge(metrics_writer *w, const char *name, const char *help, double value)
{
    metrics_write_family(w, name, help, METRICS_GAUGE);
    metrics_write_sample(w, name, NULL, NULL, value);
}
