/*
 * checkpointer.c - background WAL checkpoints (see checkpointer.h).
 *
 * The writer's side is the WAL hook, called by SQLite on the writer's
 * thread after each commit with the WAL's size in frames: it only stores
 * that size and, past start_pages, wakes the thread (no system call unless
 * the thread sleeps). The thread runs PASSIVE checkpoints on its own
 * connection until every frame is backfilled; a round that backfills
 * nothing new (a reader still uses an old snapshot) ends the attempt and
 * the thread waits RETRY_MS before the next one.
 *
 * Why the writer finishes: SQLite starts the WAL over only when a write
 * transaction begins with every frame already in the database. Under
 * steady load the writer is always inside a transaction when the thread
 * is done, and adds frames before its next one, so the WAL would only
 * grow. So when the thread has copied all but what the writer added
 * meanwhile, it asks the writer (finish_wanted) to copy that small rest
 * itself between two transactions (bus_checkpointer_finish): a few pages
 * and two fsyncs (~2 ms here), after which the next transaction starts the
 * WAL over.
 *
 * SQLite syncs the database file only in a checkpoint that reaches the
 * WAL's end, so under load the thread's checkpoints (always a commit
 * behind) would leave every page they copied for the writer's small one to
 * fsync: several milliseconds. The thread therefore fdatasyncs the
 * database file itself after each round (its own descriptor).
 */
#include "bus/checkpointer.h"

#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Rounds per attempt: each round copies what the writer added meanwhile. */
#define MAX_ROUNDS 16
/* After an attempt that could not finish, wait this long before the next. */
#define RETRY_MS 5
/* The thread's nice value (the writer and the HTTP threads keep 0). */
#define CHECKPOINTER_NICE 10

struct bus_checkpointer {
    sqlite3 *writer;
    sqlite3 *db; /* the thread's own connection */
    int db_fd;   /* the database file, for fdatasync after a round */
    int start_pages, hard_pages;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_int finish_wanted; /* the writer should copy the rest */
    int wanted;               /* under lock: the WAL passed start_pages */
    int running;              /* under lock: an attempt is under way */
    int stopping;
    atomic_uint_fast64_t background, inline_, finished;
    int warned;
};

static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames)
{
    bus_checkpointer *c = arg;
    if (frames >= c->hard_pages) {
        /* the thread is behind: checkpoint here, as SQLite would have */
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        atomic_fetch_add(&c->inline_, 1);
        return SQLITE_OK;
    }
    if (frames < c->start_pages)
        return SQLITE_OK;
    pthread_mutex_lock(&c->lock);
    if (!c->running && !c->wanted) {
        c->wanted = 1;
        pthread_cond_signal(&c->wake);
    }
    pthread_mutex_unlock(&c->lock);
    return SQLITE_OK;
}

/* One attempt: PASSIVE checkpoints until the WAL is all backfilled, or
 * only what the writer added since the last round is left (the writer
 * finishes it). 1 if it got there, 0 if a round made no progress or failed. */
static int checkpoint_all(bus_checkpointer *c)
{
    int last = -1, last_log = -1;
    for (int round = 0; round < MAX_ROUNDS; round++) {
        int log_frames = 0, done = 0;
        int rc =
            sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_PASSIVE, &log_frames, &done);
        if (rc != SQLITE_OK) {
            /* SQLITE_BUSY: another connection is checkpointing right now */
            if (rc != SQLITE_BUSY && !c->warned) {
                LOG_WARN("background checkpoint failed: %s", sqlite3_errmsg(c->db));
                c->warned = 1;
            }
            return 0;
        }
        atomic_fetch_add(&c->background, 1);
        if (done > last && done < log_frames && fdatasync(c->db_fd) != 0 && !c->warned) {
            LOG_WARN("background checkpoint: cannot sync the database file: %s", strerror(errno));
            c->warned = 1;
        }
        if (done >= log_frames || (last_log >= 0 && done >= last_log)) {
            /* all that was there when this round (or the last) began is
             * copied; what is left, or comes with the commit under way,
             * the writer copies before its next transaction */
            atomic_store(&c->finish_wanted, 1);
            return 1;
        }
        if (done == last)
            return 0;
        last = done;
        last_log = log_frames;
    }
    return 0;
}

static void *checkpointer_main(void *arg)
{
    bus_checkpointer *c = arg;
    pthread_setname_np(pthread_self(), "checkpointer");
    /* background work: on a busy machine the threads that answer requests
     * go first (a thread may always lower its own priority) */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), CHECKPOINTER_NICE) != 0)
        LOG_DEBUG("checkpoint thread: cannot lower its priority: %s", strerror(errno));
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->wanted && !c->stopping)
            pthread_cond_wait(&c->wake, &c->lock);
        if (c->stopping)
            break;
        c->wanted = 0;
        c->running = 1;
        pthread_mutex_unlock(&c->lock);
        int finished = checkpoint_all(c);
        if (!finished) {
            struct timespec pause = {0, RETRY_MS * 1000000L};
            nanosleep(&pause, NULL);
        }
        pthread_mutex_lock(&c->lock);
        c->running = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

bus_checkpointer *bus_checkpointer_start(sqlite3 *writer, const char *db_path, int synchronous_full,
                                         int start_pages, int hard_pages, char *err, size_t errlen)
{
    bus_checkpointer *c = xcalloc(1, sizeof(*c));
    c->writer = writer;
    c->db_fd = open(db_path, O_RDONLY | O_CLOEXEC);
    if (c->db_fd < 0) {
        util_error(err, errlen, "cannot open '%s': %s", db_path, strerror(errno));
        free(c);
        return NULL;
    }
    c->start_pages = start_pages;
    c->hard_pages = hard_pages;
    if (sqlite3_open_v2(db_path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        util_error(err, errlen, "cannot open '%s' for checkpoints: %s", db_path,
                   c->db ? sqlite3_errmsg(c->db) : "out of memory");
        sqlite3_close_v2(c->db);
        close(c->db_fd);
        free(c);
        return NULL;
    }
    char pragmas[128];
    snprintf(pragmas, sizeof(pragmas), "PRAGMA synchronous=%s; PRAGMA cache_size=-64",
             synchronous_full ? "FULL" : "NORMAL");
    sqlite3_busy_timeout(c->db, 1000);
    if (sqlite3_exec(c->db, pragmas, NULL, NULL, NULL) != SQLITE_OK) {
        util_error(err, errlen, "cannot set up the checkpoint connection: %s",
                   sqlite3_errmsg(c->db));
        sqlite3_close_v2(c->db);
        close(c->db_fd);
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->wake, NULL);
    if (pthread_create(&c->thread, NULL, checkpointer_main, c) != 0) {
        util_error(err, errlen, "cannot start the checkpoint thread");
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->wake);
        sqlite3_close_v2(c->db);
        close(c->db_fd);
        free(c);
        return NULL;
    }
    sqlite3_wal_hook(writer, on_wal_commit, c);
    return c;
}

void bus_checkpointer_stop(bus_checkpointer *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->stopping = 1;
    pthread_cond_signal(&c->wake);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    sqlite3_wal_hook(c->writer, NULL, NULL);
    sqlite3_close_v2(c->db);
    close(c->db_fd);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->wake);
    free(c);
}

int bus_checkpointer_finish(bus_checkpointer *c)
{
    if (!c || !atomic_exchange(&c->finish_wanted, 0))
        return 0;
    if (sqlite3_wal_checkpoint_v2(c->writer, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) ==
        SQLITE_BUSY) {
        /* the thread is in a round right now: after the next batch */
        atomic_store(&c->finish_wanted, 1);
        return 0;
    }
    atomic_fetch_add(&c->finished, 1);
    return 1;
}

void bus_checkpointer_stats(bus_checkpointer *c, bus_checkpoint_stats *out)
{
    out->finished = atomic_load(&c->finished);
    out->background = atomic_load(&c->background);
    out->inline_ = atomic_load(&c->inline_);
}
