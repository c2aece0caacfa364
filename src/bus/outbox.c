/*
 * outbox.c - the transactional outbox and its relay (see outbox.h).
 *
 * Table bus_outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, topic, key, value,
 * headers): the id gives the publish order (AUTOINCREMENT so an id is never
 * reused after the rows before it were deleted). Headers are stored in the
 * log's compact encoding (bus_headers_encode) and decoded for the producer.
 *
 * The relay thread: read up to `batch` rows in id order, bus_produce() them
 * (which returns only when the bus acknowledged every record), delete them,
 * repeat; when the outbox is empty, sleep on inotify of DATA_DIR/bus.notify
 * (every commit that queued records rewrites it) or an eventfd (stop). On a
 * bus failure it keeps the rows and retries with a backoff from 100 ms
 * doubling to 5 s, logging the first failure of a streak and the recovery.
 * One relay per outbox: several processes may share a data directory (and
 * so its outbox), and only the one holding flock(DATA_DIR/bus.outbox.lock)
 * publishes; the others check every second and take over when it stops or
 * dies (the kernel drops the lock with the process), so no row is published
 * twice by two relays racing for it.
 * A fatal error of the producer (bus_producer_fatal(), checked after a
 * failure and on every idle wake-up, so a producer that failed at start is
 * found without records to publish) ends the thread instead: one ERROR
 * line, the rows stay, and the on_fatal callback (under a mutex, so one set
 * after the error still runs) asks the process to stop.
 */
#include "bus/outbox.h"

#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <unistd.h>

#define DEFAULT_RELAY_BATCH 2000
#define RELAY_IDLE_WAIT_MS 1000
#define RELAY_LOCK_FILE "bus.outbox.lock"
#define RELAY_BACKOFF_MIN_MS 100
#define RELAY_BACKOFF_MAX_MS 5000
#define MAX_HEADERS_PER_RECORD 32

static const char *outbox_schema =
    "CREATE TABLE IF NOT EXISTS bus_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, headers BLOB)";

int bus_outbox_ensure(bus_log *log, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(bus_log_db(log), outbox_schema, NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "cannot create the outbox: %s", msg);
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int bus_outbox_append(bus_log *log, const bus_record *records, size_t n, char *err, size_t errlen)
{
    sqlite3 *db = bus_log_db(log);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(db,
                           "INSERT INTO bus_outbox (topic, key, value, headers)"
                           " VALUES (?1, ?2, ?3, ?4)",
                           -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK)
        return util_error(err, errlen, "cannot queue in the outbox: %s", sqlite3_errmsg(db));
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const bus_record *r = &records[i];
        if (!bus_topic_name_valid(r->topic)) {
            rc = util_error(err, errlen, "invalid topic name '%s'", r->topic);
            break;
        }
        size_t hlen = 0;
        unsigned char *h = bus_headers_encode(r->headers, r->header_count, &hlen);
        sqlite3_bind_text(st, 1, r->topic, -1, SQLITE_STATIC);
        if (r->key)
            sqlite3_bind_blob(st, 2, r->key, (int)r->key_len, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 2);
        sqlite3_bind_blob(st, 3, r->value ? r->value : "", (int)r->value_len, SQLITE_STATIC);
        if (h)
            sqlite3_bind_blob(st, 4, h, (int)hlen, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 4);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = util_error(err, errlen, "cannot queue in the outbox: %s", sqlite3_errmsg(db));
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        free(h);
    }
    sqlite3_finalize(st);
    if (rc == 0)
        bus_log_notify_on_commit(log);
    return rc;
}

int64_t bus_outbox_depth(bus_log *log)
{
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(bus_log_db(log), "SELECT count(*) FROM bus_outbox", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* ---- the relay -------------------------------------------------------- */

/* One outbox row, copied out of SQLite, with its headers decoded. */
typedef struct relay_row {
    int64_t id;
    char *topic, *key, *value, *headers;
    size_t key_len, value_len, headers_len;
    bus_header h[MAX_HEADERS_PER_RECORD];
    size_t header_count;
} relay_row;

struct bus_relay {
    bus_log *log;
    bus_producer *producer;
    size_t batch;
    relay_row *rows;
    bus_record *records;
    sqlite3_stmt *read, *remove;
    pthread_t thread;
    int started;
    atomic_int stopping;
    atomic_llong stop_deadline_ns;
    atomic_ullong published;
    int inotify_fd, wake_fd;
    int lock_fd;                /* DATA_DIR/bus.outbox.lock: one relay per outbox */
    atomic_int holds_lock;      /* this relay publishes the outbox (flock held) */
    pthread_mutex_t fatal_lock; /* guards the three below */
    int fatal;                  /* the producer hit a fatal error; the thread ended */
    void (*on_fatal)(void *arg);
    void *on_fatal_arg;
};

static char *copy_column(sqlite3_stmt *st, int col, size_t *len)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL) {
        *len = 0;
        return NULL;
    }
    const void *p = sqlite3_column_blob(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    char *out = xmalloc(n + 1);
    if (n)
        memcpy(out, p, n);
    out[n] = '\0';
    *len = n;
    return out;
}

/* Decode row->headers (bus_headers_encode's form) into row->h. */
static void decode_headers(relay_row *row)
{
    size_t pos = 0, nl;
    const char *name;
    row->header_count = 0;
    while (row->header_count < MAX_HEADERS_PER_RECORD) {
        bus_header *h = &row->h[row->header_count];
        if (!bus_headers_next((const unsigned char *)row->headers, row->headers_len, &pos, &name,
                              &nl, &h->value, &h->value_len))
            break;
        h->name = xstrndup(name, nl);
        row->header_count++;
    }
}

static void release_rows(bus_relay *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        relay_row *row = &r->rows[i];
        for (size_t k = 0; k < row->header_count; k++)
            free((char *)row->h[k].name);
        free(row->topic);
        free(row->key);
        free(row->value);
        free(row->headers);
        memset(row, 0, sizeof(*row));
    }
}

/* Read the next rows; returns how many, or -1. */
static long read_rows(bus_relay *r)
{
    long n = 0;
    sqlite3_bind_int64(r->read, 1, (sqlite3_int64)r->batch);
    int rc;
    while ((rc = sqlite3_step(r->read)) == SQLITE_ROW) {
        relay_row *row = &r->rows[n];
        size_t tl;
        row->id = sqlite3_column_int64(r->read, 0);
        row->topic = copy_column(r->read, 1, &tl);
        row->key = copy_column(r->read, 2, &row->key_len);
        row->value = copy_column(r->read, 3, &row->value_len);
        row->headers = copy_column(r->read, 4, &row->headers_len);
        decode_headers(row);
        bus_record *rec = &r->records[n];
        *rec = (bus_record)BUS_RECORD_INIT;
        rec->topic = row->topic;
        rec->key = row->key;
        rec->key_len = row->key_len;
        rec->value = row->value;
        rec->value_len = row->value_len;
        rec->headers = row->header_count ? row->h : NULL;
        rec->header_count = row->header_count;
        n++;
    }
    sqlite3_reset(r->read);
    if (rc != SQLITE_DONE) {
        LOG_ERROR("outbox relay: cannot read the outbox: %s", sqlite3_errmsg(bus_log_db(r->log)));
        release_rows(r, (size_t)n);
        return -1;
    }
    return n;
}

static int stop_due(bus_relay *r)
{
    return atomic_load(&r->stopping) &&
           util_monotonic_ns() >= (int64_t)atomic_load(&r->stop_deadline_ns);
}

/* Sleep until the outbox may have changed, a stop, or ms elapsed. */
static void relay_wait(bus_relay *r, int ms)
{
    struct pollfd fds[2] = {{.fd = r->wake_fd, .events = POLLIN},
                            {.fd = r->inotify_fd, .events = POLLIN}};
    if (poll(fds, r->inotify_fd >= 0 ? 2 : 1, ms) > 0) {
        char buf[4096];
        while (r->inotify_fd >= 0 && read(r->inotify_fd, buf, sizeof(buf)) > 0)
            ;
    }
}

/* The producer hit a fatal error (err): log it, mark the relay failed and
 * call on_fatal. */
static void relay_fatal(bus_relay *r, const char *err)
{
    int64_t left = bus_outbox_depth(r->log);
    if (left > 0)
        LOG_ERROR("outbox relay: %s; stopping for good, this client cannot recover (%lld records "
                  "stay in the outbox; the next start publishes them)",
                  err, (long long)left);
    else
        LOG_ERROR("outbox relay: %s; stopping for good, this client cannot recover", err);
    pthread_mutex_lock(&r->fatal_lock);
    r->fatal = 1;
    void (*fn)(void *) = r->on_fatal;
    void *fn_arg = r->on_fatal_arg;
    pthread_mutex_unlock(&r->fatal_lock);
    if (fn)
        fn(fn_arg);
}

static void *relay_thread(void *arg)
{
    bus_relay *r = arg;
    pthread_setname_np(pthread_self(), "outbox-relay");
    int64_t backoff = 0;
    char err[512];
    int told_waiting = 0;
    while (!stop_due(r)) {
        if (!atomic_load(&r->holds_lock)) {
            /* several processes on one data directory (herald api and
             * herald agent, say) share the outbox: one relays it, the
             * others wait to take over, or rows would go out twice */
            if (flock(r->lock_fd, LOCK_EX | LOCK_NB) != 0) {
                if (atomic_load(&r->stopping))
                    break;
                if (!told_waiting++)
                    LOG_INFO("outbox relay: another herald process on this data directory "
                             "relays the outbox; this one takes over when it stops");
                relay_wait(r, RELAY_IDLE_WAIT_MS);
                continue;
            }
            atomic_store(&r->holds_lock, 1);
            if (told_waiting)
                LOG_INFO("outbox relay: this process relays the outbox now");
        }
        long n = read_rows(r);
        if (n == 0) {
            if (atomic_load(&r->stopping))
                break; /* empty: nothing left to flush */
            if (bus_producer_fatal(r->producer, err, sizeof(err))) {
                relay_fatal(r, err);
                break;
            }
            relay_wait(r, RELAY_IDLE_WAIT_MS);
            continue;
        }
        if (n > 0 && bus_produce(r->producer, r->records, (size_t)n, NULL, err, sizeof(err)) == 0) {
            sqlite3_bind_int64(r->remove, 1, r->rows[n - 1].id);
            int rc = sqlite3_step(r->remove);
            sqlite3_reset(r->remove);
            if (rc != SQLITE_DONE)
                LOG_ERROR("outbox relay: cannot delete published records (they will be published "
                          "again): %s",
                          sqlite3_errmsg(bus_log_db(r->log)));
            atomic_fetch_add(&r->published, (unsigned long long)n);
            if (backoff) {
                LOG_INFO("outbox relay: the bus accepts records again");
                backoff = 0;
            }
            release_rows(r, (size_t)n);
            continue;
        }
        if (n > 0 && bus_producer_fatal(r->producer, err, sizeof(err))) {
            release_rows(r, (size_t)n);
            relay_fatal(r, err);
            break;
        }
        if (n > 0) {
            if (!backoff)
                LOG_WARN("outbox relay: cannot publish %ld records (%s); keeping them and "
                         "retrying",
                         n, err);
            release_rows(r, (size_t)n);
        }
        backoff = backoff ? backoff * 2 : RELAY_BACKOFF_MIN_MS;
        if (backoff > RELAY_BACKOFF_MAX_MS)
            backoff = RELAY_BACKOFF_MAX_MS;
        relay_wait(r, (int)backoff);
    }
    return NULL;
}

static void relay_free(bus_relay *r)
{
    sqlite3_finalize(r->read);
    sqlite3_finalize(r->remove);
    bus_producer_close(r->producer);
    bus_log_close(r->log);
    if (r->inotify_fd >= 0)
        close(r->inotify_fd);
    if (r->wake_fd >= 0)
        close(r->wake_fd);
    if (r->lock_fd >= 0)
        close(r->lock_fd); /* releases the flock */
    free(r->rows);
    free(r->records);
    pthread_mutex_destroy(&r->fatal_lock);
    free(r);
}

bus_relay *bus_relay_start(const bus_config *local, const bus_config *remote, size_t batch,
                           char *err, size_t errlen)
{
    bus_relay *r = xcalloc(1, sizeof(*r));
    r->batch = batch ? batch : DEFAULT_RELAY_BATCH;
    r->inotify_fd = r->wake_fd = r->lock_fd = -1;
    atomic_init(&r->stopping, 0);
    atomic_init(&r->stop_deadline_ns, 0);
    atomic_init(&r->published, 0);
    atomic_init(&r->holds_lock, 0);
    pthread_mutex_init(&r->fatal_lock, NULL);
    r->rows = xcalloc(r->batch, sizeof(*r->rows));
    r->records = xcalloc(r->batch, sizeof(*r->records));
    r->log = bus_log_open(local, err, errlen);
    char lock_path[4096];
    snprintf(lock_path, sizeof(lock_path), "%s/" RELAY_LOCK_FILE, local->data_dir);
    r->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0) {
        util_error(err, errlen, "cannot open '%s': %s", lock_path, strerror(errno));
        goto fail;
    }
    if (!r->log || bus_outbox_ensure(r->log, err, errlen) != 0)
        goto fail;
    sqlite3 *db = bus_log_db(r->log);
    if (sqlite3_prepare_v3(db,
                           "SELECT id, topic, key, value, headers FROM bus_outbox ORDER BY id"
                           " LIMIT ?1",
                           -1, SQLITE_PREPARE_PERSISTENT, &r->read, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db, "DELETE FROM bus_outbox WHERE id <= ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &r->remove, NULL) != SQLITE_OK) {
        util_error(err, errlen, "cannot prepare the outbox relay: %s", sqlite3_errmsg(db));
        goto fail;
    }
    r->producer = bus_producer_open(remote, err, errlen);
    if (!r->producer)
        goto fail;
    r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->inotify_fd >= 0 &&
        inotify_add_watch(r->inotify_fd, bus_log_notify_path(r->log), IN_MODIFY) < 0) {
        close(r->inotify_fd);
        r->inotify_fd = -1;
    }
    if (r->wake_fd < 0 || pthread_create(&r->thread, NULL, relay_thread, r) != 0) {
        util_error(err, errlen, "cannot start the outbox relay: %s", strerror(errno));
        goto fail;
    }
    r->started = 1;
    return r;
fail:
    relay_free(r);
    return NULL;
}

int64_t bus_relay_stop(bus_relay *r, int flush_ms)
{
    if (!r)
        return 0;
    int64_t deadline = util_monotonic_ns() + (int64_t)flush_ms * 1000000;
    atomic_store(&r->stop_deadline_ns, deadline);
    atomic_store(&r->stopping, 1);
    if (r->producer) /* a bus_produce() waiting for an unreachable bus ends then */
        bus_producer_give_up_at(r->producer, deadline);
    uint64_t one = 1;
    ssize_t ignored = write(r->wake_fd, &one, sizeof(one));
    (void)ignored;
    if (r->started)
        pthread_join(r->thread, NULL);
    int64_t left = bus_outbox_depth(r->log);
    if (left > 0 && !atomic_load(&r->holds_lock))
        LOG_INFO("outbox relay: stopped; %lld records wait for the relay of the other herald "
                 "process on this data directory",
                 (long long)left);
    else if (left > 0)
        LOG_WARN("outbox relay: stopped with %lld records not yet published (the next start "
                 "publishes them)",
                 (long long)left);
    relay_free(r);
    return left;
}

void bus_relay_on_fatal(bus_relay *r, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&r->fatal_lock);
    r->on_fatal = fn;
    r->on_fatal_arg = arg;
    int already = r->fatal;
    pthread_mutex_unlock(&r->fatal_lock);
    if (already && fn)
        fn(arg);
}

uint64_t bus_relay_published(bus_relay *r)
{
    return atomic_load(&r->published);
}
