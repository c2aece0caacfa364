/*
 * outbox.h - the transactional outbox: records bound for an external bus
 * (Kafka) are first written to a table of the embedded database, in the same
 * transaction as the change that produced them; a relay publishes them in
 * order and deletes them only after the bus acknowledged them.
 *
 *     bus_log_begin(log);
 *     ... the change (a task row) ...
 *     bus_outbox_append(log, records, n);    -- same transaction
 *     bus_log_commit(log);                   -- wakes the relay
 *
 * So no acknowledged change is without its event, whatever happens to the
 * process or the bus: while the bus is unreachable the outbox grows, and the
 * relay catches up when it returns. A crash between the bus's
 * acknowledgement and the delete publishes a record twice at worst; the
 * consumers drop the copy by its event_id.
 *
 * Threads: bus_outbox_append() runs on the caller's connection; a relay
 * runs on a thread of its own with its own connection and producer.
 */
#ifndef HERALD_OUTBOX_H
#define HERALD_OUTBOX_H

#include "bus/bus.h"
#include "bus/sqlite_log.h"

#include <stddef.h>
#include <stdint.h>

/* Create the outbox table if needed (outside a transaction). 0 or -1. */
int bus_outbox_ensure(bus_log *log, char *err, size_t errlen);

/*
 * Queue n records in the transaction open on log (bus_log_begin()); the
 * commit wakes the relay. Returns 0, or -1 with err (the transaction stays
 * open; the caller rolls back).
 */
int bus_outbox_append(bus_log *log, const bus_record *records, size_t n, char *err, size_t errlen);

/* Records waiting in the outbox of log, or -1 on error. */
int64_t bus_outbox_depth(bus_log *log);

typedef struct bus_relay bus_relay;

/*
 * Start a relay: it reads the outbox of the embedded database in
 * local->data_dir and publishes to the bus of remote (any bus.h backend),
 * in outbox order, up to batch records per bus_produce() (0: 2000), deleting
 * them once bus_produce() returned success. When the bus fails it logs,
 * waits (backing off up to 5 s) and tries again; nothing is dropped.
 * A fatal error of the producer (bus_producer_fatal()) stops it instead,
 * with one ERROR line and the records kept (see bus_relay_on_fatal()).
 * Only one relay per data directory publishes at a time (an flock on
 * DATA_DIR/bus.outbox.lock); a relay of another process on the same
 * directory waits and takes over when that one stops or dies.
 * Returns NULL with err filled if the database, the lock file or the
 * producer cannot be opened.
 */
bus_relay *bus_relay_start(const bus_config *local, const bus_config *remote, size_t batch,
                           char *err, size_t errlen);

/*
 * Have fn(arg) called once when the relay's producer hits a fatal error
 * (bus_producer_fatal(): the bus client can never publish again): the relay
 * then stops for good, keeping the records in the outbox for the next
 * process, and the process should stop (bus_relay_stop() is still due).
 * fn runs on the relay's thread, or at once on the caller's if the error
 * came first. Set it once, right after bus_relay_start().
 */
void bus_relay_on_fatal(bus_relay *r, void (*fn)(void *arg), void *arg);

/*
 * Stop the relay: it keeps publishing for at most flush_ms to empty the
 * outbox, then stops. Returns the number of records left in the outbox
 * (they are published by the next relay), or -1 if unknown. NULL: 0.
 */
int64_t bus_relay_stop(bus_relay *r, int flush_ms);

/* Records published by this relay so far. */
uint64_t bus_relay_published(bus_relay *r);

#endif
