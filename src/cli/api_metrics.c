/*
 * api_metrics.c - the API process's own metrics (see api_metrics.h).
 *
 * Outbox depth (Kafka mode): SELECT count(*) on each scrape, on a
 * connection of the collector's own (the store's and the relay's belong to
 * their threads), under a mutex since scrapes may run on several server
 * threads. A WAL read does not block the writers. The count scans the
 * outbox, which holds a few rows while Kafka keeps up; while Kafka is
 * unreachable it grows, and a scrape costs more but says exactly how much
 * is waiting.
 *
 * Consumer lag: lag_collect() (ops/lag.h, one sample, no window) per
 * scrape, summed over partitions per group and topic (seconds: the oldest
 * waiting event of any partition). Its rows are cached for LAG_CACHE_MS so
 * frequent scrapes cost one read (embedded) or one round of Kafka requests
 * (which open a client per group) at most that often; a failed collection
 * leaves the two families without samples and logs at debug.
 */
#include "cli/api_metrics.h"

#include "cli/cli.h"
#include "common/util.h"
#include "common/log.h"
#include "metrics/catalog.h"
#include "ops/lag.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct api_metrics {
    bus_relay *relay;
    bus_log *log; /* the outbox's database; NULL without a relay */
    pthread_mutex_t lock;
    bus_config bus; /* for lag_collect(); its strings outlive api_metrics */
    pthread_mutex_t lag_lock;
    lag_row *lag_rows;
    size_t lag_count;
    int64_t lag_at_ms; /* when lag_rows were collected; 0: never */
};

#define LAG_CACHE_MS 2000

static void outbox_collect(metrics_writer *w, void *ctx)
{
    api_metrics *m = ctx;
    pthread_mutex_lock(&m->lock);
    int64_t depth = bus_outbox_depth(m->log);
    pthread_mutex_unlock(&m->lock);
    metrics_write_family(
        w, "herald_outbox_depth",
        "Records in the outbox waiting for the relay to publish them (Kafka mode).", METRICS_GAUGE);
    if (depth >= 0)
        metrics_write_sample(w, "herald_outbox_depth", NULL, NULL, (double)depth);
    metrics_write_family(w, "herald_outbox_relayed_total",
                         "Records the outbox relay of this process published to the bus.",
                         METRICS_COUNTER);
    metrics_write_sample(w, "herald_outbox_relayed_total", NULL, NULL,
                         (double)bus_relay_published(m->relay));
}

/* Refresh the cached lag rows if they are older than LAG_CACHE_MS. */
static void lag_refresh(api_metrics *m)
{
    int64_t now = util_now_ms();
    if (m->lag_at_ms && now - m->lag_at_ms < LAG_CACHE_MS)
        return;
    lag_options opt = LAG_OPTIONS_INIT;
    lag_row *rows = NULL;
    size_t n = 0;
    char err[256];
    if (lag_collect(&m->bus, &opt, &rows, &n, err, sizeof(err)) != 0) {
        LOG_DEBUG("metrics: consumer lag: %s", err);
        rows = NULL;
        n = 0;
    }
    lag_rows_free(m->lag_rows, m->lag_count);
    m->lag_rows = rows;
    m->lag_count = n;
    m->lag_at_ms = now;
}

static void lag_collect_metrics(metrics_writer *w, void *ctx)
{
    api_metrics *m = ctx;
    pthread_mutex_lock(&m->lag_lock);
    lag_refresh(m);
    metrics_write_family(w, "herald_consumer_lag_events",
                         "Events a consumer group has yet to read, by group and topic.",
                         METRICS_GAUGE);
    for (size_t i = 0; i < m->lag_count;) {
        const lag_row *r = &m->lag_rows[i];
        int64_t events = 0;
        size_t j = i;
        for (; j < m->lag_count && strcmp(m->lag_rows[j].group, r->group) == 0 &&
               strcmp(m->lag_rows[j].topic, r->topic) == 0;
             j++)
            events += m->lag_rows[j].lag > 0 ? m->lag_rows[j].lag : 0;
        metrics_write_sample(w, "herald_consumer_lag_events", "group,topic",
                             (const char *[]){r->group, r->topic}, (double)events);
        i = j;
    }
    metrics_write_family(w, "herald_consumer_lag_seconds",
                         "Age of the oldest event a consumer group has yet to read (0 without "
                         "lag), by group and topic.",
                         METRICS_GAUGE);
    for (size_t i = 0; i < m->lag_count;) {
        const lag_row *r = &m->lag_rows[i];
        double seconds = 0;
        size_t j = i;
        for (; j < m->lag_count && strcmp(m->lag_rows[j].group, r->group) == 0 &&
               strcmp(m->lag_rows[j].topic, r->topic) == 0;
             j++)
            if (m->lag_rows[j].lag_seconds > seconds)
                seconds = m->lag_rows[j].lag_seconds;
        metrics_write_sample(w, "herald_consumer_lag_seconds", "group,topic",
                             (const char *[]){r->group, r->topic}, seconds);
        i = j;
    }
    pthread_mutex_unlock(&m->lag_lock);
}

api_metrics *api_metrics_start(const bus_config *bus, bus_relay *relay, char *err, size_t errlen)
{
    metrics_catalog_init();
    metrics_process_register(HERALD_VERSION);
    api_metrics *m = xcalloc(1, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->lag_lock, NULL);
    m->relay = relay;
    m->bus = *bus;
    metrics_add_collector(lag_collect_metrics, m);
    if (relay) {
        bus_config local = *bus;
        local.kind = BUS_SQLITE;
        m->log = bus_log_open(&local, err, errlen);
        if (!m->log) {
            api_metrics_stop(m);
            return NULL;
        }
        metrics_add_collector(outbox_collect, m);
    }
    return m;
}

void api_metrics_stop(api_metrics *m)
{
    if (!m)
        return;
    metrics_remove_collector(lag_collect_metrics, m);
    lag_rows_free(m->lag_rows, m->lag_count);
    pthread_mutex_destroy(&m->lag_lock);
    if (m->log) {
        metrics_remove_collector(outbox_collect, m);
        bus_log_close(m->log);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}
