/*
 * metrics.h - counters, gauges and histograms for one process, rendered in
 * the Prometheus text exposition format (version 0.0.4) on a scrape.
 *
 * Life cycle:
 *   1. at startup, register a family: its name, help text, label names and
 *      the most label sets (series) it may hold (metrics_counter_family(),
 *      ...). Registering a name again returns the same family.
 *   2. once per label set (per consumer group, per route, per event type),
 *      resolve it to a series: metrics_counter_get(family, values). Keep
 *      the pointer: it stays valid until the process ends.
 *   3. on the hot path, update the series: one relaxed atomic add for a
 *      counter, two for a histogram observation; no lock, no allocation,
 *      no formatting. A NULL series is accepted and ignored everywhere.
 *   4. on a scrape, metrics_render() writes every family, then whatever the
 *      collectors (metrics_add_collector()) append: values computed on
 *      demand, such as consumer lag or the outbox depth.
 *
 * Cardinality is bounded by construction: a family holds at most
 * max_series label sets; the next new one, and any label value that is not
 * 0..METRICS_VALUE_MAX printable ASCII characters, is counted under one
 * extra series whose values are all METRICS_OVERFLOW ("other").
 *
 * Threads: everything here is thread-safe. Resolving a label set that
 * exists already is lock-free (a scan of the family's series, comparing a
 * hash first); creating one takes the family's mutex. Families and series
 * are never freed: they live as long as the process.
 */
#ifndef HERALD_METRICS_H
#define HERALD_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* The Content-Type of metrics_render()'s text. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Label names of a family, at most. */
#define METRICS_MAX_LABELS 4
/* Bucket bounds of a histogram, at most (+Inf comes on top). */
#define METRICS_MAX_BUCKETS 24
/* The longest label value kept; longer ones count as METRICS_OVERFLOW. */
#define METRICS_VALUE_MAX 128
/* The label value of the overflow series. */
#define METRICS_OVERFLOW "other"

typedef enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

typedef struct metrics_family metrics_family;

/* One counter series. Only ever goes up. */
typedef struct metrics_counter {
    _Atomic uint64_t value;
} metrics_counter;

/* One gauge series: an integer that goes up and down. */
typedef struct metrics_gauge {
    _Atomic int64_t value;
} metrics_gauge;

/* One histogram series (durations, observed in nanoseconds). */
typedef struct metrics_histogram metrics_histogram;

/* ---- registration (startup) ------------------------------------------- */

/*
 * Register (or find) a family. name: [a-zA-Z_:][a-zA-Z0-9_:]*, and a
 * counter's ends in "_total". labels: label names separated by commas
 * ("group,topic"), or NULL/"" for none; never "le". max_series >= 1.
 * Registering an existing name with another type or other labels, or an
 * invalid name, is a programming error: it aborts. Never returns NULL.
 */
metrics_family *metrics_counter_family(const char *name, const char *help, const char *labels,
                                       size_t max_series);
metrics_family *metrics_gauge_family(const char *name, const char *help, const char *labels,
                                     size_t max_series);
/*
 * A histogram of durations: bounds are the buckets' upper bounds in
 * seconds, strictly increasing, 1..METRICS_MAX_BUCKETS of them (the +Inf
 * bucket is added). Rendered in seconds as _bucket{le=...} (cumulative),
 * _sum and _count.
 */
metrics_family *metrics_histogram_family(const char *name, const char *help, const char *labels,
                                         size_t max_series, const double *bounds, size_t nbounds);

/* ---- series (once per label set) -------------------------------------- */

/*
 * The series of family f for these label values, created at zero on first
 * use (one value per label name, in order; NULL when f has no labels).
 * The series of another type's family is a programming error (aborts).
 * Never returns NULL; the pointer stays valid for the life of the process.
 */
metrics_counter *metrics_counter_get(metrics_family *f, const char *const *values);
metrics_gauge *metrics_gauge_get(metrics_family *f, const char *const *values);
metrics_histogram *metrics_histogram_get(metrics_family *f, const char *const *values);

/* ---- updates (hot path) ----------------------------------------------- */

static inline void metrics_counter_add(metrics_counter *c, uint64_t n)
{
    if (c)
        atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

static inline void metrics_gauge_set(metrics_gauge *g, int64_t v)
{
    if (g)
        atomic_store_explicit(&g->value, v, memory_order_relaxed);
}

static inline void metrics_gauge_add(metrics_gauge *g, int64_t n)
{
    if (g)
        atomic_fetch_add_explicit(&g->value, n, memory_order_relaxed);
}

/* Count one duration (negative counts as 0): two relaxed atomic adds. */
void metrics_histogram_observe_ns(metrics_histogram *h, int64_t ns);

/* Current value of a counter (tests, logs). */
uint64_t metrics_counter_value(const metrics_counter *c);

/* ---- scrape ----------------------------------------------------------- */

/*
 * The whole exposition: every family in registration order (HELP, TYPE,
 * then its series in creation order; a family without series shows its
 * HELP and TYPE only), then the collectors' output. Label values and help
 * texts are escaped. Returns malloc'd text (*len its length, may be NULL).
 */
char *metrics_render(size_t *len);

/* What a collector writes into (valid during the call). */
typedef struct metrics_writer metrics_writer;

/*
 * A function called on every scrape, after the registered families, to
 * append families of its own with metrics_write_family() and
 * metrics_write_sample(). It runs on the scraping thread (several scrapes
 * run one collector at a time) and must not register metrics or add or
 * remove collectors.
 */
typedef void (*metrics_collector_fn)(metrics_writer *w, void *ctx);

/* Call fn(w, ctx) on every scrape from now on. */
void metrics_add_collector(metrics_collector_fn fn, void *ctx);

/* Stop calling fn with ctx; when this returns, no call of it is running,
 * so ctx may be freed. Unknown pairs are ignored. */
void metrics_remove_collector(metrics_collector_fn fn, void *ctx);

/* Write a family's HELP and TYPE lines; its samples follow. */
void metrics_write_family(metrics_writer *w, const char *name, const char *help, metrics_type type);

/*
 * Write one sample "name{labels} value". labels as for a family ("group,
 * topic", or NULL for none) with one value per name (escaped here).
 * Integral values are written without a fraction, NaN and infinities as
 * Prometheus spells them.
 */
void metrics_write_sample(metrics_writer *w, const char *name, const char *labels,
                          const char *const *values, double value);

/* metrics_write_family() and one sample without labels. */
void metrics_write_gauge(metrics_writer *w, const char *name, const char *help, double value);

#endif
