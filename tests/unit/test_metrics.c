/*
 * test_metrics.c - the metrics engine (metrics/metrics.h): the exact text
 * of each family type, escaping, cumulative histogram buckets, the bounds
 * on label sets, collectors, and exact totals under concurrent updates;
 * plus the API's route templates (the bounded route label).
 *
 * The registry is the process's: each test registers families under names
 * of its own and reads back only their part of the exposition.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/routes.h"
#include "metrics/catalog.h"
#include "metrics/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The lines of family name in a fresh rendering (malloc'd). */
static char *family_text(const char *name)
{
    char *all = metrics_render(NULL);
    char head[200];
    snprintf(head, sizeof(head), "# HELP %s ", name);
    char *start = strstr(all, head);
    assert_non_null(start);
    char *end = strstr(start + 1, "# HELP ");
    size_t n = end ? (size_t)(end - start) : strlen(start);
    char *out = malloc(n + 1);
    memcpy(out, start, n);
    out[n] = '\0';
    free(all);
    return out;
}

static void assert_family(const char *name, const char *want)
{
    char *got = family_text(name);
    if (strcmp(got, want) != 0)
        fail_msg("family %s:\n--- got\n%s--- want\n%s", name, got, want);
    free(got);
}

static void test_counter_text(void **state)
{
    (void)state;
    metrics_family *f = metrics_counter_family("t_requests_total", "Requests.", "method,code", 8);
    metrics_counter *get200 = metrics_counter_get(f, (const char *[]){"GET", "200"});
    metrics_counter *post201 = metrics_counter_get(f, (const char *[]){"POST", "201"});
    metrics_counter_add(get200, 3);
    metrics_counter_add(post201, 1);
    metrics_counter_add(metrics_counter_get(f, (const char *[]){"GET", "200"}), 2);
    assert_ptr_equal(get200, metrics_counter_get(f, (const char *[]){"GET", "200"}));
    assert_family("t_requests_total", "# HELP t_requests_total Requests.\n"
                                      "# TYPE t_requests_total counter\n"
                                      "t_requests_total{method=\"GET\",code=\"200\"} 5\n"
                                      "t_requests_total{method=\"POST\",code=\"201\"} 1\n");
    /* registering again gives the same family and its series */
    assert_ptr_equal(f, metrics_counter_family("t_requests_total", "Requests.", "method,code", 8));
    assert_int_equal(metrics_counter_value(get200), 5);
    /* NULL series are ignored */
    metrics_counter_add(NULL, 1);
    metrics_histogram_observe_ns(NULL, 1);
    metrics_gauge_set(NULL, 1);
}

static void test_gauge_and_unlabelled(void **state)
{
    (void)state;
    metrics_family *f = metrics_gauge_family("t_depth", "Depth.", NULL, 1);
    assert_family("t_depth", "# HELP t_depth Depth.\n# TYPE t_depth gauge\n");
    metrics_gauge *g = metrics_gauge_get(f, NULL);
    metrics_gauge_set(g, 10);
    metrics_gauge_add(g, -13);
    assert_family("t_depth", "# HELP t_depth Depth.\n# TYPE t_depth gauge\nt_depth -3\n");
}

static void test_escaping(void **state)
{
    (void)state;
    metrics_family *f =
        metrics_counter_family("t_escape_total", "Back\\slash and\nnewline.", "value", 8);
    metrics_counter_add(metrics_counter_get(f, (const char *[]){"a\"b\\c"}), 1);
    assert_family("t_escape_total", "# HELP t_escape_total Back\\\\slash and\\nnewline.\n"
                                    "# TYPE t_escape_total counter\n"
                                    "t_escape_total{value=\"a\\\"b\\\\c\"} 1\n");
}

static void test_histogram_buckets_cumulative(void **state)
{
    (void)state;
    static const double bounds[] = {0.001, 0.01, 0.1};
    metrics_family *f =
        metrics_histogram_family("t_call_seconds", "Calls.", "target", 4, bounds, 3);
    metrics_histogram *h = metrics_histogram_get(f, (const char *[]){"smtp"});
    metrics_histogram_observe_ns(h, 500000);     /* 0.5 ms */
    metrics_histogram_observe_ns(h, 1000000);    /* 1 ms: le is inclusive */
    metrics_histogram_observe_ns(h, 5000000);    /* 5 ms */
    metrics_histogram_observe_ns(h, 50000000);   /* 50 ms */
    metrics_histogram_observe_ns(h, 2000000000); /* 2 s */
    metrics_histogram_observe_ns(h, -7);         /* a clock step: counts as 0 */
    assert_family("t_call_seconds", "# HELP t_call_seconds Calls.\n"
                                    "# TYPE t_call_seconds histogram\n"
                                    "t_call_seconds_bucket{target=\"smtp\",le=\"0.001\"} 3\n"
                                    "t_call_seconds_bucket{target=\"smtp\",le=\"0.01\"} 4\n"
                                    "t_call_seconds_bucket{target=\"smtp\",le=\"0.1\"} 5\n"
                                    "t_call_seconds_bucket{target=\"smtp\",le=\"+Inf\"} 6\n"
                                    "t_call_seconds_sum{target=\"smtp\"} 2.0565\n"
                                    "t_call_seconds_count{target=\"smtp\"} 6\n");
    /* without labels, le is the only label */
    metrics_family *u = metrics_histogram_family("t_plain_seconds", "Plain.", NULL, 1, bounds, 3);
    metrics_histogram_observe_ns(metrics_histogram_get(u, NULL), 3000000000LL);
    assert_family("t_plain_seconds", "# HELP t_plain_seconds Plain.\n"
                                     "# TYPE t_plain_seconds histogram\n"
                                     "t_plain_seconds_bucket{le=\"0.001\"} 0\n"
                                     "t_plain_seconds_bucket{le=\"0.01\"} 0\n"
                                     "t_plain_seconds_bucket{le=\"0.1\"} 0\n"
                                     "t_plain_seconds_bucket{le=\"+Inf\"} 1\n"
                                     "t_plain_seconds_sum 3.0\n"
                                     "t_plain_seconds_count 1\n");
}

static void test_label_sets_are_bounded(void **state)
{
    (void)state;
    metrics_family *f = metrics_counter_family("t_types_total", "Types.", "type", 2);
    metrics_counter *a = metrics_counter_get(f, (const char *[]){"a.created"});
    metrics_counter *b = metrics_counter_get(f, (const char *[]){"b.created"});
    metrics_counter *c = metrics_counter_get(f, (const char *[]){"c.created"});
    metrics_counter *d = metrics_counter_get(f, (const char *[]){"d.created"});
    assert_ptr_not_equal(a, b);
    assert_ptr_equal(c, d); /* both past the bound: the overflow series */
    assert_ptr_equal(a, metrics_counter_get(f, (const char *[]){"a.created"}));
    /* values that are no printable ASCII, or too long, overflow too */
    char long_value[METRICS_VALUE_MAX + 2];
    memset(long_value, 'x', sizeof(long_value) - 1);
    long_value[sizeof(long_value) - 1] = '\0';
    assert_ptr_equal(c, metrics_counter_get(f, (const char *[]){long_value}));
    assert_ptr_equal(c, metrics_counter_get(f, (const char *[]){"new\nline"}));
    assert_ptr_equal(c, metrics_counter_get(f, (const char *[]){NULL}));
    metrics_counter_add(a, 1);
    metrics_counter_add(c, 4);
    assert_family("t_types_total", "# HELP t_types_total Types.\n"
                                   "# TYPE t_types_total counter\n"
                                   "t_types_total{type=\"a.created\"} 1\n"
                                   "t_types_total{type=\"b.created\"} 0\n"
                                   "t_types_total{type=\"other\"} 4\n");
    /* a value of exactly METRICS_VALUE_MAX characters is kept (in a family
     * with room) */
    metrics_family *g = metrics_counter_family("t_long_total", "Long.", "v", 4);
    long_value[METRICS_VALUE_MAX] = '\0';
    metrics_counter *kept = metrics_counter_get(g, (const char *[]){long_value});
    assert_ptr_not_equal(kept, metrics_counter_get(g, (const char *[]){"short"}));
}

static void collect(metrics_writer *w, void *ctx)
{
    int *calls = ctx;
    (*calls)++;
    metrics_write_family(w, "t_lag_events", "Lag.", METRICS_GAUGE);
    metrics_write_sample(w, "t_lag_events", "group,topic",
                         (const char *[]){"audit-log", "task-events"}, 42);
    metrics_write_sample(w, "t_lag_events", "group,topic", (const char *[]){"we\"ird\n", "x\\y"},
                         1.5);
    metrics_write_gauge(w, "t_nan", "Not a number.", NAN);
}

static void test_collector(void **state)
{
    (void)state;
    int calls = 0;
    metrics_add_collector(collect, &calls);
    assert_family("t_lag_events", "# HELP t_lag_events Lag.\n"
                                  "# TYPE t_lag_events gauge\n"
                                  "t_lag_events{group=\"audit-log\",topic=\"task-events\"} 42\n"
                                  "t_lag_events{group=\"we\\\"ird\\n\",topic=\"x\\\\y\"} 1.5\n");
    assert_family("t_nan", "# HELP t_nan Not a number.\n# TYPE t_nan gauge\nt_nan NaN\n");
    assert_int_equal(calls, 2);
    metrics_remove_collector(collect, &calls);
    char *all = metrics_render(NULL);
    assert_null(strstr(all, "t_lag_events"));
    free(all);
    assert_int_equal(calls, 2);
}

/* ---- concurrency -------------------------------------------------------- */

#define THREADS 8
#define ROUNDS 200000
#define NEW_SERIES 50

static pthread_barrier_t start_line;

typedef struct worker {
    metrics_family *counters, *hist;
    metrics_counter *shared;
    int index;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    metrics_histogram *h = metrics_histogram_get(w->hist, NULL);
    pthread_barrier_wait(&start_line); /* all threads at once */
    for (int i = 0; i < ROUNDS; i++) {
        metrics_counter_add(w->shared, 1);
        metrics_histogram_observe_ns(h, (i % 3) * 1000000); /* 0, 1 or 2 ms */
        if (i % 1000 == 0) {
            /* every thread creates the same new series at the same time */
            char name[16];
            snprintf(name, sizeof(name), "s%d", (i / 1000) % NEW_SERIES);
            metrics_counter_add(metrics_counter_get(w->counters, (const char *[]){name}), 1);
        }
    }
    return NULL;
}

static void test_concurrent_updates_add_up(void **state)
{
    (void)state;
    static const double bounds[] = {0.0005, 0.0015};
    metrics_family *c = metrics_counter_family("t_race_total", "Race.", "name", NEW_SERIES * 2);
    metrics_family *h = metrics_histogram_family("t_race_seconds", "Race.", NULL, 1, bounds, 2);
    metrics_counter *shared = metrics_counter_get(c, (const char *[]){"shared"});
    pthread_t t[THREADS];
    worker w[THREADS];
    pthread_barrier_init(&start_line, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){c, h, shared, i};
        assert_int_equal(pthread_create(&t[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start_line);
    assert_int_equal(metrics_counter_value(shared), (uint64_t)THREADS * ROUNDS);
    /* each new series exists once, with every thread's adds */
    char *text = family_text("t_race_total");
    int lines = 0;
    for (char *p = text; (p = strchr(p, '\n')); p++)
        lines++;
    assert_int_equal(lines, 2 + 1 + NEW_SERIES); /* HELP, TYPE, shared, s0..s49 */
    int per_series = THREADS * (ROUNDS / 1000) / NEW_SERIES;
    for (int s = 0; s < NEW_SERIES; s++) {
        char want[64];
        snprintf(want, sizeof(want), "t_race_total{name=\"s%d\"} %d\n", s, per_series);
        if (!strstr(text, want))
            fail_msg("missing '%s' in\n%s", want, text);
    }
    free(text);
    /* the histogram: a third of the observations in each bucket, exact sum */
    char want[1024];
    /* i % 3 == 0, 1, 2: 0 ms, 1 ms, 2 ms (ROUNDS is not a multiple of 3) */
    int zero = THREADS * ((ROUNDS + 2) / 3), one = THREADS * ((ROUNDS + 1) / 3);
    long long sum_ms = (long long)one * 1 + (long long)(THREADS * ROUNDS - zero - one) * 2;
    snprintf(want, sizeof(want),
             "# HELP t_race_seconds Race.\n"
             "# TYPE t_race_seconds histogram\n"
             "t_race_seconds_bucket{le=\"0.0005\"} %d\n"
             "t_race_seconds_bucket{le=\"0.0015\"} %d\n"
             "t_race_seconds_bucket{le=\"+Inf\"} %d\n"
             "t_race_seconds_sum %lld.%03lld\n"
             "t_race_seconds_count %d\n",
             zero, zero + one, THREADS * ROUNDS, sum_ms / 1000, sum_ms % 1000, THREADS * ROUNDS);
    /* the sum is printed with trailing zeros cut: compare numerically */
    char *got = family_text("t_race_seconds");
    char *gs = strstr(got, "t_race_seconds_sum "), *ws = strstr(want, "t_race_seconds_sum ");
    assert_non_null(gs);
    assert_true(fabs(strtod(gs + 19, NULL) - strtod(ws + 19, NULL)) < 1e-9);
    *gs = *ws = '\0';
    assert_string_equal(got, want);
    free(got);
}

/* ---- the route label ------------------------------------------------------ */

static void test_route_templates(void **state)
{
    (void)state;
    assert_string_equal(api_route_template("/tasks"), "/tasks");
    assert_string_equal(api_route_template("/tasks/"), "/tasks");
    assert_string_equal(api_route_template("/tasks/0190-abc"), "/tasks/{id}");
    assert_string_equal(api_route_template("/tasks/0190-abc/complete"), "/tasks/{id}/complete");
    assert_string_equal(api_route_template("/tasks/x/events"), "/tasks/{id}/events");
    assert_string_equal(api_route_template("/healthz"), "/healthz");
    assert_string_equal(api_route_template("/metrics"), "/metrics");
    assert_string_equal(api_route_template("/tasks//complete"), "unknown");
    assert_string_equal(api_route_template("/tasks/x/other"), "unknown");
    assert_string_equal(api_route_template("/tasks/x/complete/"), "unknown");
    assert_string_equal(api_route_template("/metricsX"), "unknown");
    assert_string_equal(api_route_template("/"), "unknown");
    assert_string_equal(api_route_template(""), "unknown");
}

/* The catalogue: every family registered by metrics_catalog_init(), the
 * HTTP helper's labels (method normalised, status as text). */
static void test_catalog_http(void **state)
{
    (void)state;
    metrics_catalog_init();
    metrics_http_request("GET", "/tasks/{id}", 404, 2000000);
    metrics_http_request("BREW", "unknown", 418, 1000);
    char *all = metrics_render(NULL);
    assert_non_null(strstr(all, "herald_http_requests_total{method=\"GET\",route=\"/tasks/{id}\","
                                "status=\"404\"} 1\n"));
    assert_non_null(strstr(all, "herald_http_requests_total{method=\"other\",route=\"unknown\","
                                "status=\"418\"} 1\n"));
    assert_non_null(strstr(all, "herald_http_request_duration_seconds_count{method=\"GET\","
                                "route=\"/tasks/{id}\"} 1\n"));
    static const char *const families[] = {
        "herald_events_published_total",   "herald_events_consumed_total",
        "herald_events_handled_total",     "herald_events_retried_total",
        "herald_events_failed_total",      "herald_events_dead_lettered_total",
        "herald_handler_duration_seconds", "herald_smtp_duration_seconds",
        "herald_smtp_errors_total",        "herald_webhook_duration_seconds",
        "herald_webhook_errors_total"};
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        char head[128];
        snprintf(head, sizeof(head), "# TYPE %s ", families[i]);
        if (!strstr(all, head))
            fail_msg("no family %s", families[i]);
    }
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_text),
        cmocka_unit_test(test_gauge_and_unlabelled),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_histogram_buckets_cumulative),
        cmocka_unit_test(test_label_sets_are_bounded),
        cmocka_unit_test(test_collector),
        cmocka_unit_test(test_concurrent_updates_add_up),
        cmocka_unit_test(test_route_templates),
        cmocka_unit_test(test_catalog_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
