/*
 * api_metrics.h - what the API process adds to its metrics beyond the
 * counters the layers keep (metrics/catalog.h): the build info and process
 * metrics, and in Kafka mode the outbox's depth and the relay's count,
 * computed on each scrape by a collector. Used by `herald api` / `herald up`.
 */
#ifndef HERALD_API_METRICS_H
#define HERALD_API_METRICS_H

#include "bus/bus.h"
#include "bus/outbox.h"

typedef struct api_metrics api_metrics;

/*
 * Register every catalogue family, the build info and process metrics, and
 * (relay non-NULL: an external bus) the outbox collector, which reads the
 * outbox of bus's data directory on its own connection. relay must outlive
 * api_metrics_stop(). Returns NULL with err filled if that connection
 * cannot be opened.
 */
api_metrics *api_metrics_start(const bus_config *bus, bus_relay *relay, char *err, size_t errlen);

/* Remove the collector (no scrape uses it afterwards) and free; NULL: no-op. */
void api_metrics_stop(api_metrics *m);

#endif
