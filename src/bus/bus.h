/*
 * bus.h - the event bus: producers append records to topics, consumer groups
 * read them back in order and commit how far they got.
 *
 * The interface follows Kafka's model so that the embedded SQLite backend
 * (default, DATA_DIR/bus.db) and the Kafka backend (librdkafka) are
 * interchangeable: topics, records with a key, a value and headers, offsets
 * that grow within a topic, consumer groups with committed offsets and an
 * auto.offset.reset rule applied only when a group has no committed offset.
 *
 * Kafka backend specifics (kafka.h): partitions as configured on the
 * cluster, offsets start at 0; bus_produce() returns 0 only when every
 * record's delivery report confirmed it (acks=all, idempotent producer),
 * but a batch is not atomic: on -1 some records may have been appended.
 *
 * Embedded backend specifics (see sqlite_log.h for the transactional API):
 *  - one partition per topic (partition is always 0); offsets within a
 *    topic are dense and start at 1;
 *  - a committed offset is the NEXT offset to read, as in Kafka.
 *
 * Threads: a producer or a consumer is used by one thread at a time;
 * bus_consumer_wakeup() alone may be called from any thread or a signal
 * handler.
 */
#ifndef HERALD_BUS_H
#define HERALD_BUS_H

#include "event/event.h"

#include <stddef.h>
#include <stdint.h>

/* ---- values ----------------------------------------------------------- */

/* One record header: a name and an arbitrary byte value. */
typedef struct bus_header {
    const char *name;
    const char *value;
    size_t value_len;
} bus_header;

/* A record to publish. key may be NULL (no key). Borrowed by bus calls. */
typedef struct bus_record {
    const char *topic;
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
    const bus_header *headers;
    size_t header_count;
} bus_record;

/* clang-format off */
#define BUS_RECORD_INIT { NULL, NULL, 0, NULL, 0, NULL, 0 }
/* clang-format on */

/*
 * A consumed record. Every pointer points into memory owned by the consumer
 * and stays valid until its next poll or close. key and value are also
 * NUL-terminated (key is NULL when the record has none).
 */
typedef struct bus_message {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* when the record was appended */
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
    const unsigned char *headers; /* encoded; read with bus_message_header() */
    size_t headers_len;
} bus_message;

/*
 * Walk encoded headers (bus_message.headers, or bus_headers_encode()'s
 * output): start with *pos = 0; each call returns 1 with the next header's
 * name (name_len bytes, not NUL-terminated) and value, or 0 at the end or
 * at a malformed entry.
 */
int bus_headers_next(const unsigned char *headers, size_t len, size_t *pos, const char **name,
                     size_t *name_len, const char **value, size_t *value_len);

/*
 * Find header name in m. Returns 1 and sets *value and *len (pointing into the
 * message) when present, else 0.
 */
int bus_message_header(const bus_message *m, const char *name, const char **value, size_t *len);

/*
 * Envelope headers: every record herald publishes carries its envelope's
 * attributes as CloudEvents binary-mode headers (the same the Kafka backend
 * sends): ce_specversion "1.0", ce_id, ce_type, ce_source, ce_time,
 * ce_correlationid, ce_causationid, content-type "application/json", and
 * when the event has a trace context the W3C headers "traceparent" (and
 * "tracestate"), as OpenTelemetry's Kafka instrumentation names them. The
 * value stays the whole envelope. Consumers use the headers to route and
 * de-duplicate a record without parsing its JSON.
 */
#define BUS_ENVELOPE_HEADERS 10 /* at most: 8 always, 2 with a trace */
#define BUS_HEADER_TRACEPARENT "traceparent"
#define BUS_HEADER_TRACESTATE "tracestate"

/*
 * Fill out[] with ev's envelope headers; values point into ev and into
 * timebuf (which must outlive out). Returns the number of headers: 8, 9 or
 * 10 (the CloudEvents ones first).
 */
size_t bus_envelope_headers(const event *ev, bus_header out[BUS_ENVELOPE_HEADERS],
                            char timebuf[EVENT_TIME_LEN + 1]);

/*
 * Fill ev's ids, type, time and metadata (data stays NULL) from m's envelope
 * headers, when they are all present and valid and match the value's first
 * bytes as herald encodes them ({"event_id":"<ce_id>","event_type":
 * "<ce_type>",...}), so headers cannot describe another record's value.
 * A valid "traceparent" header sets ev->traceparent and a valid
 * "tracestate" beside it ev->tracestate (invalid ones are ignored, as the
 * JSON decoder ignores them). Returns 0, or -1 (ev left EVENT_INIT) when the record must be decoded
 * in full with event_decode().
 */
int bus_envelope_from_headers(const bus_message *m, event *ev);

/* ---- configuration ---------------------------------------------------- */

enum bus_kind { BUS_SQLITE = 0, BUS_KAFKA };

typedef struct bus_config {
    enum bus_kind kind;
    const char *data_dir; /* embedded: the log is data_dir/bus.db */
    int64_t retention_ms; /* delete events older than this; <= 0 keeps all */
    int synchronous_full; /* 1: fsync every commit (SQLite synchronous=FULL);
                             0: NORMAL (survives kill -9, not power loss) */
    /* Kafka backend (kind BUS_KAFKA) */
    const char *bootstrap;          /* "host:port[,host:port...]" (bootstrap.servers);
                                       set by bus_config_set_url(), pointing into its
                                       url, which must outlive the config */
    const char *client_id;          /* client.id; NULL: "herald" */
    const char *const *kafka_props; /* NULL-terminated "name=value" librdkafka
                                       properties applied last (TLS, SASL,
                                       tuning); each client gets those that
                                       apply to it (kafka.h); NULL: none */
    /* Kafka topics herald produces to or subscribes to by name are created
     * when missing (kafka.h), with: */
    int topic_partitions;  /* partitions of a new topic; 0: BUS_DEFAULT_TOPIC_PARTITIONS */
    int topic_replication; /* replication factor; 0: auto, min(3, brokers in
                              the cluster's metadata) */
    int no_topic_create;   /* 1: never create topics; a missing one is an
                              error that says how to create it */
    int gather_wal_writes; /* embedded: 1 writes each commit's WAL frames in
                              one system call (wal_vfs.h), for a process's
                              busy writer (the Task API's); costs up to
                              WAL_VFS_BUFFER bytes of memory */
} bus_config;

/* Defaults: sqlite, "./herald-data", 7 days, synchronous FULL; Kafka
 * topics created with 3 partitions and replication min(3, brokers). */
#define BUS_DEFAULT_RETENTION_MS (7LL * 24 * 3600 * 1000)
#define BUS_DEFAULT_TOPIC_PARTITIONS 3
#define BUS_MAX_TOPIC_PARTITIONS 10000
#define BUS_MAX_TOPIC_REPLICATION 32767 /* the Kafka protocol's limit (int16) */
/* clang-format off */
#define BUS_CONFIG_INIT { BUS_SQLITE, "./herald-data", BUS_DEFAULT_RETENTION_MS, 1, NULL, NULL, NULL, \
                          BUS_DEFAULT_TOPIC_PARTITIONS, 0, 0, 0 }
/* clang-format on */

/*
 * Parse a HERALD_BUS value into cfg: "sqlite" (or empty) sets kind
 * BUS_SQLITE; "kafka:HOST:PORT[,HOST:PORT...]" sets kind BUS_KAFKA and
 * cfg->bootstrap (pointing into url). HOST is a name or IPv4 address of
 * [A-Za-z0-9._-] or a bracketed IPv6 address, PORT 1..65535. Returns 0, or
 * -1 with err filled naming the bad value (cfg unchanged).
 */
int bus_config_set_url(bus_config *cfg, const char *url, char *err, size_t errlen);

/*
 * Is the bus reachable? Embedded: the log database opens read-only and
 * answers a trivial query (waiting at most timeout_ms for a lock). Kafka: a
 * broker answers a metadata request within timeout_ms (a new client each
 * call: callers cache the answer). Returns 0, or -1 with err filled.
 */
int bus_ping(const bus_config *cfg, int timeout_ms, char *err, size_t errlen);

/* Topic names: 1..249 characters of [A-Za-z0-9._-], as in Kafka. */
int bus_topic_name_valid(const char *topic);

/* ---- producer --------------------------------------------------------- */

typedef struct bus_producer bus_producer;

/* Open a producer. Returns NULL with err filled on failure. */
bus_producer *bus_producer_open(const bus_config *cfg, char *err, size_t errlen);

/*
 * Publish n records: returns 0 only when all are durably appended.
 * Embedded: atomically (one SQLite transaction, all or none). Kafka: waits
 * for every record's delivery report; on -1 some may have been appended (a
 * retry can duplicate them; consumers drop duplicates by event id).
 * offsets (may be NULL) receives each record's offset. Returns 0, or -1
 * with err filled.
 */
int bus_produce(bus_producer *p, const bus_record *records, size_t n, int64_t *offsets, char *err,
                size_t errlen);

/*
 * Make bus_produce() stop waiting once util_monotonic_ns() reaches
 * deadline_ns, in the call in progress and in every later one: records not
 * acknowledged by then fail it (-1; some of them may still be appended, as
 * for any failure). For a stop with a time limit while the bus is
 * unreachable. The only producer call allowed from another thread than the
 * one producing. Embedded backend: no effect (its calls do not wait).
 */
void bus_producer_give_up_at(bus_producer *p, int64_t deadline_ns);

/*
 * 1 when the producer hit a fatal error: it can never publish again, and
 * every later bus_produce() fails. Kafka: librdkafka raised a fatal error
 * (e.g. the idempotent producer was refused a producer id, or was fenced);
 * the caller keeps its records and stops, so that a new process (a new
 * client) publishes them. Transient errors (brokers down, timeouts) are not
 * fatal. err (may be NULL) then receives the error, naming the client. 0
 * otherwise, and always for the embedded backend. Thread-safe.
 */
int bus_producer_fatal(bus_producer *p, char *err, size_t errlen);

/* Close the producer; NULL is a no-op. */
void bus_producer_close(bus_producer *p);

/* ---- consumer --------------------------------------------------------- */

enum bus_offset_reset { BUS_RESET_EARLIEST = 0, BUS_RESET_LATEST };

typedef struct bus_subscription {
    const char *group_id;      /* NULL: read without a group (nothing is
                                  committed, reset rule always applies) */
    const char *const *topics; /* explicit topic names, or ... */
    size_t topic_count;
    const char *pattern;         /* ... a POSIX extended regex over topic
                                    names, e.g. "^.*-events$"; new topics
                                    that match are picked up while running */
    enum bus_offset_reset reset; /* used only without a committed offset */
    size_t max_batch;            /* most messages per poll; 0 means 1000 */
} bus_subscription;

/* clang-format off */
#define BUS_SUBSCRIPTION_INIT { NULL, NULL, 0, NULL, BUS_RESET_EARLIEST, 0 }
/* clang-format on */

typedef struct bus_consumer bus_consumer;

/* Open a consumer with its subscription (copied). NULL + err on failure. */
bus_consumer *bus_consumer_open(const bus_config *cfg, const bus_subscription *sub, char *err,
                                size_t errlen);

/*
 * Wait up to timeout_ms (0: don't wait, <0: forever) for records and return
 * a batch of at most max_batch in *msgs / *count (count 0 on timeout or
 * wakeup). Records of one topic come in offset order. The batch stays valid
 * until the next poll or close. Each poll moves the consumer's position past
 * the records it returned; bus_consumer_commit() makes that durable.
 * Returns 0, or -1 with err filled.
 */
int bus_consumer_poll(bus_consumer *c, int timeout_ms, const bus_message **msgs, size_t *count,
                      char *err, size_t errlen);

/*
 * Commit the current position (past every record returned so far) for the
 * group. Without a group it does nothing. Returns 0, or -1 with err filled.
 */
int bus_consumer_commit(bus_consumer *c, char *err, size_t errlen);

/*
 * Set the position of topic (partition) to offset, the next offset to read:
 * records after it are returned by the next poll, and the next commit stores
 * it. Used to read again the part of a batch that was not handled. Returns
 * 0, or -1 with err filled if the consumer does not read that topic.
 */
int bus_consumer_seek(bus_consumer *c, const char *topic, int32_t partition, int64_t offset,
                      char *err, size_t errlen);

/*
 * For readers that stop once they have read everything (herald tail, herald
 * dlq): 1 when the consumer has read every record its topics held when asked,
 * 0 when records remain or (Kafka) the group has not assigned it partitions
 * yet, so poll again; -1 with err filled. Embedded: always 1 (a poll with
 * timeout 0 already returns whatever is there). Kafka: every assigned
 * partition's position (or, before its first record, the committed offset or
 * the reset rule's start) is at its high watermark, asked of the partition
 * leaders with at most timeout_ms per partition; a subscription that matches
 * no topic is caught up once the (empty) assignment arrived.
 */
int bus_consumer_caught_up(bus_consumer *c, int timeout_ms, char *err, size_t errlen);

/*
 * Make a blocked (or the next) bus_consumer_poll() return at once with no
 * records. Async-signal-safe and thread-safe.
 */
void bus_consumer_wakeup(bus_consumer *c);

/*
 * 1 when the consumer hit a fatal error: it can never read or commit again,
 * and every later poll fails. Kafka: librdkafka raised a fatal error (e.g.
 * a static group member, group.instance.id, fenced by another with the
 * same id); the caller stops without committing more, and what it had not
 * committed is read again by the group. err (may be NULL) then receives the
 * error, naming the client. 0 otherwise, and always for the embedded
 * backend. Thread-safe.
 */
int bus_consumer_fatal(bus_consumer *c, char *err, size_t errlen);

/* Close the consumer (without committing); NULL is a no-op. */
void bus_consumer_close(bus_consumer *c);

#endif
