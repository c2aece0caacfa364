/*
 * kafka_admin.h - short-lived librdkafka clients for operations: is the
 * cluster reachable (bus_ping(), GET /readyz), and what a consumer group
 * committed and which members it has (`herald lag`). Kept apart from
 * kafka.c, the data path.
 */
#ifndef HERALD_BUS_KAFKA_ADMIN_H
#define HERALD_BUS_KAFKA_ADMIN_H

#include "bus/bus.h"

#include <librdkafka/rdkafka.h>

/*
 * A client handle (consumer type, never subscribed) with cfg's bootstrap
 * servers and properties; group_id NULL for none. Its log lines go to
 * herald's log at DEBUG. Free with rd_kafka_destroy(). NULL + err.
 */
rd_kafka_t *bus_kafka_admin_client(const bus_config *cfg, const char *group_id, char *err,
                                   size_t errlen);

/* Ask for the cluster's metadata within timeout_ms: 0 when a broker
 * answered, else -1 with err. */
int bus_kafka_ping(const bus_config *cfg, int timeout_ms, char *err, size_t errlen);

#endif
