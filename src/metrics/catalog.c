/*
 * catalog.c - herald's metric families (see catalog.h for the list).
 *
 * All families are registered together, once (pthread_once), so every
 * scrape shows the whole catalogue and each family's HELP and TYPE even
 * before its first sample. Bucket layouts: the API and SMTP/webhook calls
 * from 0.5 ms / 5 ms to 10 s / 30 s; handlers from 10 us (the audit agent
 * handles an event in a few microseconds) to 30 s (a slow SMTP server).
 *
 * Hot paths: the runtime resolves its group's series once (metrics_group)
 * and a published event type once per emitted event; an HTTP request looks
 * its two series up without a lock (metrics.h). SMTP and webhook series
 * are resolved with the families.
 */
#include "metrics/catalog.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define HTTP_MAX_SERIES 256
#define HTTP_MAX_ROUTES 64
#define MAX_GROUPS 64
#define ERROR_REASONS 8

static const double api_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const double handler_bounds[] = {0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01,
                                        0.05,    0.1,     0.5,    1,      5,     10,    30};
static const double call_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

static struct {
    metrics_family *http_requests, *http_duration, *published;
    metrics_family *consumed, *handled, *retried, *failed, *dead_lettered, *handler_duration;
    metrics_family *smtp_errors, *webhook_errors;
    metrics_histogram *smtp_duration, *webhook_duration;
} cat;

static pthread_once_t cat_once = PTHREAD_ONCE_INIT;

static void catalog_register(void)
{
    cat.http_requests = metrics_counter_family(
        "herald_http_requests_total",
        "HTTP requests answered by the Task API, by method, route template and status.",
        "method,route,status", HTTP_MAX_SERIES);
    cat.http_duration = metrics_histogram_family(
        "herald_http_request_duration_seconds",
        "Time from a request's arrival to its queued answer, by method and route template.",
        "method,route", HTTP_MAX_ROUTES, api_bounds, sizeof(api_bounds) / sizeof(api_bounds[0]));
    cat.published = metrics_counter_family(
        "herald_events_published_total",
        "Events this process published (committed to the log, or to the outbox in Kafka mode) "
        "by event type: the Task API's and the agents' derived events.",
        "type", CATALOG_MAX_TYPES);
    cat.consumed = metrics_counter_family(
        "herald_events_consumed_total",
        "Records a consumer group read and committed past (handled, skipped, duplicate or "
        "dead-lettered).",
        "group", MAX_GROUPS);
    cat.handled = metrics_counter_family("herald_events_handled_total",
                                         "Events a group's handler handled successfully.", "group",
                                         MAX_GROUPS);
    cat.retried = metrics_counter_family(
        "herald_events_retried_total",
        "Handler calls that failed temporarily and were called again after a backoff.", "group",
        MAX_GROUPS);
    cat.failed = metrics_counter_family(
        "herald_events_failed_total",
        "Handler calls that did not succeed (temporary or permanent failures).", "group",
        MAX_GROUPS);
    cat.dead_lettered = metrics_counter_family(
        "herald_events_dead_lettered_total",
        "Records a group wrote to a dead-letter (.dlq) topic: permanent failures, retries "
        "exhausted, invalid envelopes.",
        "group", MAX_GROUPS);
    cat.handler_duration = metrics_histogram_family(
        "herald_handler_duration_seconds", "Duration of each handler call, by consumer group.",
        "group", MAX_GROUPS, handler_bounds, sizeof(handler_bounds) / sizeof(handler_bounds[0]));
    metrics_family *smtp = metrics_histogram_family(
        "herald_smtp_duration_seconds", "Duration of each SMTP transaction, whatever its outcome.",
        NULL, 1, call_bounds, sizeof(call_bounds) / sizeof(call_bounds[0]));
    cat.smtp_duration = metrics_histogram_get(smtp, NULL);
    cat.smtp_errors = metrics_counter_family(
        "herald_smtp_errors_total",
        "SMTP transactions that failed, by reason: 4xx or 5xx (the server's reply) or "
        "transport (no reply).",
        "reason", ERROR_REASONS);
    metrics_family *hook = metrics_histogram_family(
        "herald_webhook_duration_seconds",
        "Duration of each webhook POST (Slack), whatever its outcome.", NULL, 1, call_bounds,
        sizeof(call_bounds) / sizeof(call_bounds[0]));
    cat.webhook_duration = metrics_histogram_get(hook, NULL);
    cat.webhook_errors = metrics_counter_family(
        "herald_webhook_errors_total",
        "Webhook POSTs that did not get a 2xx, by reason: 3xx, 4xx or 5xx (the answer's "
        "status) or transport (no answer).",
        "reason", ERROR_REASONS);
}

void metrics_catalog_init(void)
{
    pthread_once(&cat_once, catalog_register);
}

/* ---- HTTP ------------------------------------------------------------- */

static const char *method_label(const char *m)
{
    static const char *const known[] = {"GET",    "HEAD",    "POST",  "PUT",    "PATCH",
                                        "DELETE", "OPTIONS", "TRACE", "CONNECT"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (m && strcmp(m, known[i]) == 0)
            return known[i];
    return METRICS_OVERFLOW;
}

void metrics_http_request(const char *method, const char *route, int status, int64_t duration_ns)
{
    metrics_catalog_init();
    char code[4] = "000";
    if (status >= 100 && status <= 599) {
        code[0] = (char)('0' + status / 100);
        code[1] = (char)('0' + status / 10 % 10);
        code[2] = (char)('0' + status % 10);
    }
    const char *m = method_label(method);
    const char *with_status[] = {m, route, code[0] != '0' ? code : METRICS_OVERFLOW};
    const char *without[] = {m, route};
    metrics_counter_add(metrics_counter_get(cat.http_requests, with_status), 1);
    metrics_histogram_observe_ns(metrics_histogram_get(cat.http_duration, without), duration_ns);
}

/* ---- events and groups ------------------------------------------------ */

metrics_counter *metrics_published(const char *event_type)
{
    metrics_catalog_init();
    return metrics_counter_get(cat.published, &event_type);
}

void metrics_group_resolve(const char *group, metrics_group *out)
{
    metrics_catalog_init();
    const char *v[] = {group};
    out->consumed = metrics_counter_get(cat.consumed, v);
    out->handled = metrics_counter_get(cat.handled, v);
    out->retried = metrics_counter_get(cat.retried, v);
    out->failed = metrics_counter_get(cat.failed, v);
    out->dead_lettered = metrics_counter_get(cat.dead_lettered, v);
    out->handler_duration = metrics_histogram_get(cat.handler_duration, v);
}

/* ---- outbound calls --------------------------------------------------- */

void metrics_smtp_call(int64_t duration_ns, const char *error)
{
    metrics_catalog_init();
    metrics_histogram_observe_ns(cat.smtp_duration, duration_ns);
    if (error)
        metrics_counter_add(metrics_counter_get(cat.smtp_errors, &error), 1);
}

void metrics_webhook_call(int64_t duration_ns, const char *error)
{
    metrics_catalog_init();
    metrics_histogram_observe_ns(cat.webhook_duration, duration_ns);
    if (error)
        metrics_counter_add(metrics_counter_get(cat.webhook_errors, &error), 1);
}

/* ---- the process ------------------------------------------------------ */

static double process_start_s;

static void process_collect(metrics_writer *w, void *ctx)
{
    metrics_write_gauge(w, "process_start_time_seconds",
                        "Start time of the process since the Unix epoch, in seconds.",
                        process_start_s);
    double rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long size = 0, resident = 0;
        if (fscanf(f, "%lu %lu", &size, &resident) == 2)
            rss = (double)resident * (double)sysconf(_SC_PAGESIZE);
        fclose(f);
    }
    metrics_write_gauge(w, "process_resident_memory_bytes", "Resident memory size in bytes.", rss);
    struct rusage ru;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
              ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
    metrics_write_family(w, "process_cpu_seconds_total",
                         "Total user and system CPU time spent in seconds.", METRICS_COUNTER);
    metrics_write_sample(w, "process_cpu_seconds_total", NULL, NULL, cpu);
}

void metrics_process_register(const char *version)
{
    static atomic_int registered;
    if (atomic_exchange(&registered, 1))
        return;
    metrics_catalog_init();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    process_start_s = (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1e3;
    metrics_family *info = metrics_gauge_family(
        "herald_build_info", "Always 1; the version of herald serving these metrics.", "version",
        1);
    metrics_gauge_set(metrics_gauge_get(info, &version), 1);
    metrics_add_collector(process_collect, NULL);
}
