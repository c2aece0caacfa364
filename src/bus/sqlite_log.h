/*
 * sqlite_log.h - the embedded event log: one SQLite database in WAL mode,
 * DATA_DIR/bus.db, shared by every herald process on that data directory.
 *
 * A bus_log is one connection to the log. Besides what bus.h offers, it lets
 * a caller append records inside its own transaction, so that other rows in
 * the same database (the Task API's tasks, an agent's de-duplication record)
 * commit atomically with their events:
 *
 *     bus_log_begin(log);            -- BEGIN IMMEDIATE
 *     ... caller's SQL on bus_log_db(log) ...
 *     bus_log_append(log, recs, n, offsets);
 *     bus_log_commit(log);           -- COMMIT, then wake the consumers
 *
 * Consumers are woken through DATA_DIR/bus.notify: every commit that
 * appended records rewrites one byte of it and consumers wait on it with
 * inotify, so a new event reaches a waiting consumer in any process at once
 * while idle consumers use no CPU.
 *
 * Threads: a bus_log is used by one thread at a time.
 */
#ifndef HERALD_SQLITE_LOG_H
#define HERALD_SQLITE_LOG_H

#include "bus/bus.h"

#include <sqlite3.h>
#include <stdint.h>

typedef struct bus_log bus_log;

/* File names inside the data directory. */
#define BUS_LOG_FILE "bus.db"
#define BUS_LOG_NOTIFY_FILE "bus.notify"
#define BUS_LOG_LOCK_FILE "bus.lock"

/*
 * Open (creating the directory, the database and its schema if needed) the
 * log in cfg->data_dir. Returns NULL with err filled on failure.
 */
bus_log *bus_log_open(const bus_config *cfg, char *err, size_t errlen);

/* Close the connection; NULL is a no-op. A transaction left open is rolled back. */
void bus_log_close(bus_log *log);

/*
 * Run this connection's WAL checkpoints on a thread of their own
 * (checkpointer.h), so its commits never wait for one: for a writer whose
 * callers wait on its commits (the Task API's store). 0, or -1 with err.
 * Stopped by bus_log_close().
 */
int bus_log_checkpoint_in_background(bus_log *log, char *err, size_t errlen);

/* With background checkpoints: call between two transactions, when no
 * caller waits on this thread (the last pages of a checkpoint, see
 * bus_checkpointer_finish). A no-op otherwise. */
void bus_log_between_transactions(bus_log *log);

/* Checkpoints run by the background thread, rests finished by the writer,
 * and checkpoints the writer ran because the WAL passed its hard limit;
 * -1 if checkpoints are not in the background. */
int bus_log_checkpoint_stats(bus_log *log, uint64_t *background, uint64_t *finished,
                             uint64_t *inline_);

/* The underlying connection, for the caller's own SQL in a transaction. */
sqlite3 *bus_log_db(bus_log *log);

/* The path of the notify file and of the database (owned by the log). */
const char *bus_log_notify_path(const bus_log *log);
const char *bus_log_db_path(const bus_log *log);

/* BEGIN IMMEDIATE (waits for other writers). 0 or -1 with err filled. */
int bus_log_begin(bus_log *log, char *err, size_t errlen);

/*
 * Append n records in the open transaction; offsets (may be NULL) receives
 * each record's offset. Returns 0, or -1 with err (the transaction stays
 * open; the caller rolls back).
 */
int bus_log_append(bus_log *log, const bus_record *records, size_t n, int64_t *offsets, char *err,
                   size_t errlen);

/* COMMIT, then notify consumers if records were appended. 0 or -1. */
int bus_log_commit(bus_log *log, char *err, size_t errlen);

/* ROLLBACK the open transaction (no-op if none). */
void bus_log_rollback(bus_log *log);

/* 1 if a transaction is open on this connection. */
int bus_log_in_transaction(bus_log *log);

/* Make the next successful bus_log_commit() wake the waiting consumers
 * (and relays), as an append does. */
void bus_log_notify_on_commit(bus_log *log);

/* Wake every consumer waiting on this data directory. */
void bus_log_notify(bus_log *log);

/*
 * Look up (creating it if create is set, inside the open transaction) a
 * topic's numeric id. Returns the id, 0 if absent and !create, -1 on error.
 */
int64_t bus_log_topic_id(bus_log *log, const char *topic, int create, char *err, size_t errlen);

/*
 * Delete events appended more than max_age_ms ago, in transactions of at
 * most a few thousand rows so that producers are never held up for long,
 * and record per topic the highest deleted offset (so consumers that fell
 * behind can say so). *deleted (may be NULL) receives the count. 0 or -1.
 */
int bus_log_retention_run(bus_log *log, int64_t max_age_ms, int64_t *deleted, char *err,
                          size_t errlen);

/* Name of the table that holds a topic's records ("t_<id>") into out. */
void bus_log_topic_table(int64_t topic_id, char *out, size_t len);

/* Encode headers into the log's compact binary form; returns a malloc'd
 * buffer (NULL when count is 0) and its length in *len. */
unsigned char *bus_headers_encode(const bus_header *headers, size_t count, size_t *len);

#endif
