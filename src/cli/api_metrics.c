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
 */
#include "cli/api_metrics.h"

#include "cli/cli.h"
#include "common/util.h"
#include "metrics/catalog.h"

#include <pthread.h>
#include <stdlib.h>

struct api_metrics {
    bus_relay *relay;
    bus_log *log; /* the outbox's database; NULL without a relay */
    pthread_mutex_t lock;
};

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

api_metrics *api_metrics_start(const bus_config *bus, bus_relay *relay, char *err, size_t errlen)
{
    metrics_catalog_init();
    metrics_process_register(HERALD_VERSION);
    api_metrics *m = xcalloc(1, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    m->relay = relay;
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
    if (m->log) {
        metrics_remove_collector(outbox_collect, m);
        bus_log_close(m->log);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}
