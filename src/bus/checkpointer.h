/*
 * checkpointer.h - WAL checkpoints of a busy writer's database, run on a
 * thread of their own so the writer's commits never wait for them.
 *
 * SQLite's automatic checkpoint runs inside the commit that crosses the
 * WAL's size limit: that commit (and every request waiting for the next
 * one) waits while the WAL's pages are copied into the database file and it
 * is fsynced. That was the Task API's p99. With a checkpointer, the writer's
 * connection gets a WAL hook instead of the automatic checkpoint; past
 * start_pages of WAL the hook wakes a thread that checkpoints (PASSIVE: it
 * never blocks the writer nor readers) on a second connection; the writer
 * copies the last few pages itself between two transactions
 * (bus_checkpointer_finish), so its next commit starts the WAL over from
 * its beginning. Only if the WAL still reaches hard_pages
 * (the thread cannot keep up, or a reader holds an old snapshot) does the
 * writer checkpoint itself, as SQLite would have.
 *
 * Durability is unchanged: a checkpoint syncs the WAL before copying and
 * the database file before the WAL may be reused, as SQLite's own does.
 */
#ifndef HERALD_CHECKPOINTER_H
#define HERALD_CHECKPOINTER_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bus_checkpointer bus_checkpointer;

/* Checkpoint counters (bus_checkpointer_stats). */
typedef struct bus_checkpoint_stats {
    uint64_t background; /* checkpoints run by the thread */
    uint64_t inline_;    /* checkpoints the writer had to run (hard limit) */
    uint64_t finished;   /* rests copied by the writer (bus_checkpointer_finish) */
} bus_checkpoint_stats;

/*
 * Take over the checkpoints of writer (a connection to db_path in WAL mode,
 * used by one thread): install the WAL hook and start the thread with its
 * own connection (synchronous FULL or NORMAL as synchronous_full says).
 * Returns NULL with err filled on failure (writer is then unchanged).
 */
bus_checkpointer *bus_checkpointer_start(sqlite3 *writer, const char *db_path, int synchronous_full,
                                         int start_pages, int hard_pages, char *err, size_t errlen);

/* Stop the thread (after the checkpoint it is running), close its
 * connection and remove the WAL hook: the writer's connection is left
 * without automatic checkpoints, so stop right before closing it (closing
 * the last connection checkpoints the whole WAL). NULL is a no-op. */
void bus_checkpointer_stop(bus_checkpointer *c);

/*
 * On the writer's thread, between two of its transactions: if the thread
 * has copied all but the writer's latest commits, copy that rest now (a few
 * pages and an fsync), so the next commit starts the WAL over. 1 if it ran,
 * 0 if nothing was asked. NULL is a no-op.
 */
int bus_checkpointer_finish(bus_checkpointer *c);

void bus_checkpointer_stats(bus_checkpointer *c, bus_checkpoint_stats *out);

#endif
