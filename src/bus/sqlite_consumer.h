/*
 * sqlite_consumer.h - the embedded backend's consumer, behind bus.h's
 * bus_consumer. Callers normally use bus.h; the runtime uses
 * bus_consumer_sqlite_log() to commit offsets inside its own transaction
 * together with derived events.
 */
#ifndef HERALD_SQLITE_CONSUMER_H
#define HERALD_SQLITE_CONSUMER_H

#include "bus/bus.h"
#include "bus/sqlite_log.h"

typedef struct bus_consumer_sqlite bus_consumer_sqlite;

/* As bus_consumer_open() for the embedded log. */
bus_consumer_sqlite *bus_consumer_sqlite_open(const bus_config *cfg, const bus_subscription *sub,
                                              char *err, size_t errlen);
/* As bus_consumer_poll(). */
int bus_consumer_sqlite_poll(bus_consumer_sqlite *c, int timeout_ms, const bus_message **msgs,
                             size_t *count, char *err, size_t errlen);
/*
 * As bus_consumer_commit(). If a transaction is open on the consumer's log
 * (bus_log_begin() on bus_consumer_sqlite_log()), the offsets are written in
 * it and the caller must call bus_consumer_sqlite_mark_committed() after its
 * own commit succeeds.
 */
int bus_consumer_sqlite_commit(bus_consumer_sqlite *c, char *err, size_t errlen);
/* Record that the positions written by the last commit are durable. */
void bus_consumer_sqlite_mark_committed(bus_consumer_sqlite *c);
/* As bus_consumer_seek(). */
int bus_consumer_sqlite_seek(bus_consumer_sqlite *c, const char *topic, int32_t partition,
                             int64_t offset, char *err, size_t errlen);
/* The embedded consumer behind a bus_consumer, or NULL for another backend. */
bus_consumer_sqlite *bus_consumer_sqlite_of(bus_consumer *c);
/* As bus_consumer_wakeup(). */
void bus_consumer_sqlite_wakeup(bus_consumer_sqlite *c);
/* As bus_consumer_close(). */
void bus_consumer_sqlite_close(bus_consumer_sqlite *c);
/* The consumer's own connection to the log (owned by the consumer). */
bus_log *bus_consumer_sqlite_log(bus_consumer_sqlite *c);

#endif
