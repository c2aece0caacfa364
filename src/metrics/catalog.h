/*
 * catalog.h - herald's metrics: every name, help text, label set and
 * bucket layout in one place (catalog.c), and the few calls the layers
 * make to update them. The engine underneath is metrics.h.
 *
 * Exposed at GET /metrics by the API process (`herald api`, `herald up`):
 *
 *   herald_http_requests_total{method,route,status}         counter
 *   herald_http_request_duration_seconds{method,route}      histogram
 *   herald_events_published_total{type}                     counter
 *   herald_events_consumed_total{group}                     counter
 *   herald_events_handled_total{group}                      counter
 *   herald_events_retried_total{group}                      counter
 *   herald_events_failed_total{group}                       counter
 *   herald_events_dead_lettered_total{group}                counter
 *   herald_handler_duration_seconds{group}                  histogram
 *   herald_smtp_duration_seconds                            histogram
 *   herald_smtp_errors_total{reason}                        counter
 *   herald_webhook_duration_seconds                         histogram
 *   herald_webhook_errors_total{reason}                     counter
 *   herald_build_info{version}, process_start_time_seconds,
 *   process_resident_memory_bytes, process_cpu_seconds_total
 *   herald_outbox_depth, herald_outbox_relayed_total        (Kafka mode)
 *   herald_consumer_lag_events{group,topic},
 *   herald_consumer_lag_seconds{group,topic}                (collector, see README)
 *
 * Cardinality: route is the route's template ("/tasks/{id}", "unknown"
 * for a path no route matches), method one of the HTTP methods or
 * "other"; event types beyond CATALOG_MAX_TYPES, and any further label set
 * beyond a family's bound, count under "other".
 *
 * Threads: every function is thread-safe; the families are registered on
 * the first call of any of them.
 */
#ifndef HERALD_CATALOG_H
#define HERALD_CATALOG_H

#include "metrics/metrics.h"

#include <stdint.h>

/* Distinct event types counted by name; the rest count as "other". */
#define CATALOG_MAX_TYPES 64

/* Register every family of the catalog now (otherwise on first use), so
 * that a scrape lists them all, even those still without samples. */
void metrics_catalog_init(void);

/*
 * One HTTP request answered: its method (any text: unknown methods count
 * as "other"), its route template (a static string: routes.h), its status
 * and how long it took from its first byte to the queued answer.
 * Lock-free: two lookups of existing series and three atomic adds.
 */
void metrics_http_request(const char *method, const char *route, int status, int64_t duration_ns);

/* The counter of published events of this type (resolve once per type or
 * per emitted event; add 1 once the event is committed). */
metrics_counter *metrics_published(const char *event_type);

/* The series of one consumer group, resolved once when its runtime opens. */
typedef struct metrics_group {
    metrics_counter *consumed;      /* records read and committed past */
    metrics_counter *handled;       /* handler returned OK */
    metrics_counter *retried;       /* a failed call that is called again */
    metrics_counter *failed;        /* handler calls that failed (retry or fail) */
    metrics_counter *dead_lettered; /* written to a .dlq topic */
    metrics_histogram *handler_duration;
} metrics_group;

void metrics_group_resolve(const char *group, metrics_group *out);

/*
 * An SMTP transaction or a webhook POST took duration_ns. error is NULL
 * when it succeeded, else a short reason: "4xx", "5xx" (the server's
 * answer) or "transport" (no answer: connection, TLS, timeout).
 */
void metrics_smtp_call(int64_t duration_ns, const char *error);
void metrics_webhook_call(int64_t duration_ns, const char *error);

/*
 * herald_build_info{version} and the process_* metrics (start time,
 * resident memory from /proc/self/statm, CPU time), for the process that
 * serves /metrics. Call once at startup.
 */
void metrics_process_register(const char *version);

#endif
