/*
 * kafka.h - the Kafka backend of bus.h through librdkafka. Callers use
 * bus.h; bus.c dispatches here when cfg->kind is BUS_KAFKA. Each function
 * behaves as its bus.h counterpart, with the Kafka specifics below.
 *
 * Producer: acks=all, enable.idempotence=true; bus_kafka_produce() waits for
 * the delivery report of every record (bounded by message.timeout.ms).
 *
 * Consumer: a balanced group consumer (group.id = the subscription's group;
 * without one, a unique throw-away group that never commits), offsets
 * committed only by bus_kafka_consumer_commit() and when partitions are
 * revoked (the position past every record returned so far). A pattern
 * subscription is a librdkafka regex subscription ("^" is prepended when the
 * pattern does not start with it, as "^.*(PATTERN)").
 *
 * cfg->kafka_props ("name=value") are applied after herald's own settings,
 * so they can override them (e.g. fetch.wait.max.ms for the mock cluster).
 * Each client gets only the properties that apply to it: librdkafka's own
 * property table says whether a property is for consumers, producers or
 * both (bus_kafka_property_scope()); one that does not apply is still
 * checked (name and value) so a bad one fails at open, but is not set, so
 * librdkafka prints no CONFWARN. A name librdkafka does not know fails.
 *
 * Topics: before the first record for a topic, the producer makes sure the
 * topic exists (one all-topics metadata request, then one CreateTopics
 * request for the missing ones, with cfg->topic_partitions and
 * cfg->topic_replication; TOPIC_ALREADY_EXISTS counts as created) and
 * remembers it; bus_kafka_produce() fails with the broker's error
 * otherwise, so the caller retries (the outbox relay backs off). A consumer
 * with explicit topic names does the same before it subscribes; if that
 * fails (cluster unreachable, no permission) it logs, subscribes anyway and
 * tries again from bus_kafka_consumer_poll() with a backoff, so an agent
 * started before any producer, or before the cluster, gets its records.
 * With cfg->no_topic_create set, nothing is created: a missing topic is an
 * error (producer) or an error line (consumer) that names the topic and
 * gives the kafka-topics.sh command that creates it. Pattern subscriptions
 * create nothing.
 */
#ifndef HERALD_BUS_KAFKA_H
#define HERALD_BUS_KAFKA_H

#include "bus/bus.h"

typedef struct bus_kafka_producer bus_kafka_producer;
typedef struct bus_kafka_consumer bus_kafka_consumer;

/* Which clients a librdkafka property applies to, from librdkafka's own
 * property table (rd_kafka_conf_properties_show()). */
enum bus_kafka_scope {
    BUS_KAFKA_SCOPE_UNKNOWN = 0, /* not a librdkafka property */
    BUS_KAFKA_SCOPE_PRODUCER = 1,
    BUS_KAFKA_SCOPE_CONSUMER = 2,
    BUS_KAFKA_SCOPE_BOTH = 3, /* PRODUCER | CONSUMER */
};

/* The scope of property `name` (e.g. "fetch.wait.max.ms": CONSUMER). */
enum bus_kafka_scope bus_kafka_property_scope(const char *name);

/* As bus_producer_open(). */
bus_kafka_producer *bus_kafka_producer_open(const bus_config *cfg, char *err, size_t errlen);
/* As bus_produce(): 0 only when every record was acknowledged. */
int bus_kafka_produce(bus_kafka_producer *p, const bus_record *records, size_t n, int64_t *offsets,
                      char *err, size_t errlen);
/* As bus_producer_give_up_at(). */
void bus_kafka_producer_give_up_at(bus_kafka_producer *p, int64_t deadline_ns);
/* As bus_producer_fatal(): librdkafka's rd_kafka_fatal_error() is set. */
int bus_kafka_producer_fatal(bus_kafka_producer *p, char *err, size_t errlen);
/* The producer's librdkafka handle (rd_kafka_t), for tests that drive
 * librdkafka directly (rd_kafka_test_fatal_error()); herald itself goes
 * through the functions above. */
struct rd_kafka_s *bus_kafka_producer_handle(bus_kafka_producer *p);
/* As bus_producer_close(): flushes what is queued (up to 10 s; nothing
 * after a fatal error, when nothing can be delivered). */
void bus_kafka_producer_close(bus_kafka_producer *p);

/* As bus_consumer_open(). */
bus_kafka_consumer *bus_kafka_consumer_open(const bus_config *cfg, const bus_subscription *sub,
                                            char *err, size_t errlen);
/* As bus_consumer_poll(). -1 only on a fatal client error (err names the
 * client and librdkafka's error), checked before every wait. */
int bus_kafka_consumer_poll(bus_kafka_consumer *c, int timeout_ms, const bus_message **msgs,
                            size_t *count, char *err, size_t errlen);
/* As bus_consumer_commit(): a synchronous commit of the positions. */
int bus_kafka_consumer_commit(bus_kafka_consumer *c, char *err, size_t errlen);
/* As bus_consumer_seek(): the partition must be assigned to this consumer. */
int bus_kafka_consumer_seek(bus_kafka_consumer *c, const char *topic, int32_t partition,
                            int64_t offset, char *err, size_t errlen);
/* As bus_consumer_caught_up(): positions against the high watermarks. */
int bus_kafka_consumer_caught_up(bus_kafka_consumer *c, int timeout_ms, char *err, size_t errlen);
/* As bus_consumer_wakeup() (async-signal-safe: sets an atomic flag that a
 * poll checks at least every 100 ms). */
void bus_kafka_consumer_wakeup(bus_kafka_consumer *c);
/* As bus_consumer_fatal(): librdkafka's rd_kafka_fatal_error() is set. */
int bus_kafka_consumer_fatal(bus_kafka_consumer *c, char *err, size_t errlen);
/* As bus_consumer_close(): leaves the group (revocation commits). */
void bus_kafka_consumer_close(bus_kafka_consumer *c);

#endif
