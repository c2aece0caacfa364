/*
 * sqlite_log.c - the embedded event log (see sqlite_log.h).
 *
 * Schema (one database, WAL mode):
 *   topics(id, name, deleted_upto, created_ms)
 *       deleted_upto is the highest offset of the topic removed by retention.
 *   t_<topic id>(id = rowid = offset, ts_ms, key, value, headers)
 *       one table per topic, like a Kafka partition: offsets are dense
 *       (1, 2, 3, ...), a consumer reads its topic sequentially and an
 *       append is one B-tree insert (no secondary index). SQLite gives a new
 *       row max(id)+1; retention never deletes a topic's newest row, so
 *       offsets never go back.
 *   offsets(group_name, topic_id, next_offset, committed_ms)
 *       a group's committed position per topic (the next offset to read).
 *   group_leases(group_name, owner, pid, expires_ms)
 *       which consumer is a group's active member (sqlite_consumer.c).
 *
 * Durability: journal_mode=WAL with synchronous=FULL (or NORMAL when
 * configured): a committed transaction survives kill -9 of any process at
 * any moment, and a transaction is all or nothing, so a batch is never half
 * visible. Writers take the lock with BEGIN IMMEDIATE and wait through a
 * short-sleep busy handler (sub-millisecond first retries, not SQLite's
 * default multi-millisecond steps) so cross-process contention costs little
 * latency.
 *
 * Ownership: a bus_log owns its connection, its prepared statements, a
 * cache of topics (name, id, insert statement) and the notify descriptor.
 */
#include "bus/sqlite_log.h"

#include "bus/checkpointer.h"
#include "bus/wal_vfs.h"

#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How long a writer waits for the database lock before giving up. */
#define BUS_LOG_BUSY_TIMEOUT_MS 30000
/* Rows deleted per retention transaction. */
#define RETENTION_CHUNK 5000
/* 8 KiB pages hold ~25 events of 300 bytes; fewer pages per batch. */
#define PAGE_SIZE_TEXT "8192"
/* Checkpoint the WAL into the database every 2000 pages (16 MiB): pages
 * rewritten by many transactions are copied once. */
#define WAL_CHECKPOINT_PAGES_TEXT "2000"
/* With background checkpoints (bus_log_checkpoint_in_background): the
 * thread starts past 500 pages (4 MiB; small checkpoints keep the WAL short
 * and its fsyncs light), the writer itself only past 8000 (64 MiB). */
#define BACKGROUND_CHECKPOINT_START_PAGES 500
#define BACKGROUND_CHECKPOINT_HARD_PAGES 8000

typedef struct topic_cache_entry {
    char *name;
    int64_t id;
    sqlite3_stmt *insert;
} topic_cache_entry;

struct bus_log {
    sqlite3 *db;
    char *db_path;
    char *notify_path;
    int notify_fd;
    int appended; /* records appended in the open transaction */
    int64_t busy_started_ns;
    sqlite3_stmt *select_topic;
    sqlite3_stmt *insert_topic;
    /* BEGIN IMMEDIATE / COMMIT / ROLLBACK, prepared once: sqlite3_exec()
     * parses its text on every call (a parser allocation of several KiB) */
    sqlite3_stmt *begin, *commit, *rollback;
    topic_cache_entry *topics;
    size_t topic_count;
    int synchronous_full;
    bus_checkpointer *checkpointer; /* NULL: SQLite's automatic checkpoints */
};

static const char *schema_sql = "CREATE TABLE IF NOT EXISTS topics("
                                "  id INTEGER PRIMARY KEY,"
                                "  name TEXT NOT NULL UNIQUE,"
                                "  deleted_upto INTEGER NOT NULL DEFAULT 0,"
                                "  created_ms INTEGER NOT NULL);"
                                "CREATE TABLE IF NOT EXISTS offsets("
                                "  group_name TEXT NOT NULL,"
                                "  topic_id INTEGER NOT NULL,"
                                "  next_offset INTEGER NOT NULL,"
                                "  committed_ms INTEGER NOT NULL,"
                                "  PRIMARY KEY(group_name, topic_id)) WITHOUT ROWID;"
                                "CREATE TABLE IF NOT EXISTS group_leases("
                                "  group_name TEXT PRIMARY KEY,"
                                "  owner TEXT NOT NULL,"
                                "  pid INTEGER NOT NULL,"
                                "  expires_ms INTEGER NOT NULL);";

/* Process-wide SQLite settings, applied once before the first connection:
 * no global memory statistics (they take a mutex on every allocation), and
 * multi-thread mode (each connection is used by one thread at a time). */
static void sqlite_global_setup_once(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    sqlite3_config(SQLITE_CONFIG_MULTITHREAD);
    sqlite3_initialize();
}

static void sqlite_global_setup(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, sqlite_global_setup_once);
}

/* Busy handler: retry quickly at first, then back off to 2 ms sleeps. */
static int busy_handler(void *arg, int count)
{
    bus_log *log = arg;
    int64_t now = util_monotonic_ns();
    if (count == 0)
        log->busy_started_ns = now;
    if (now - log->busy_started_ns > (int64_t)BUS_LOG_BUSY_TIMEOUT_MS * 1000000)
        return 0;
    int64_t sleep_us = count < 20 ? 50 : count < 100 ? 250 : 2000;
    util_sleep_us(sleep_us);
    return 1;
}

static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "sqlite: %s (in: %.60s)", msg ? msg : sqlite3_errmsg(db), sql);
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int prepare(bus_log *log, const char *sql, sqlite3_stmt **stmt, char *err, size_t errlen)
{
    if (sqlite3_prepare_v3(log->db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) != SQLITE_OK)
        return util_error(err, errlen, "cannot prepare '%.60s': %s", sql, sqlite3_errmsg(log->db));
    return 0;
}

void bus_log_topic_table(int64_t topic_id, char *out, size_t len)
{
    snprintf(out, len, "t_%lld", (long long)topic_id);
}

bus_log *bus_log_open(const bus_config *cfg, char *err, size_t errlen)
{
    int lock_fd = -1;
    bus_log *log = xcalloc(1, sizeof(*log));
    log->notify_fd = -1;
    const char *dir = cfg->data_dir && *cfg->data_dir ? cfg->data_dir : ".";
    if (util_mkdir_p(dir) != 0) {
        util_error(err, errlen, "cannot create data directory '%s': %s", dir, strerror(errno));
        goto fail;
    }
    size_t n = strlen(dir) + sizeof(BUS_LOG_NOTIFY_FILE) + 2;
    log->db_path = xmalloc(n);
    snprintf(log->db_path, n, "%s/%s", dir, BUS_LOG_FILE);
    log->notify_path = xmalloc(n);
    snprintf(log->notify_path, n, "%s/%s", dir, BUS_LOG_NOTIFY_FILE);

    sqlite_global_setup();
    /* Switching a new database to WAL races between processes opening it at
     * the same moment (SQLite answers BUSY without calling the busy
     * handler): set-up and schema creation hold an exclusive lock file. */
    size_t lock_len = strlen(dir) + sizeof(BUS_LOG_LOCK_FILE) + 2;
    char *lock_path = xmalloc(lock_len);
    snprintf(lock_path, lock_len, "%s/%s", dir, BUS_LOG_LOCK_FILE);
    lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) {
        util_error(err, errlen, "cannot lock '%s': %s", lock_path, strerror(errno));
        free(lock_path);
        goto fail;
    }
    free(lock_path);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    /* a commit's WAL frames in one write (wal_vfs.h) where asked for */
    const char *vfs =
        cfg->gather_wal_writes && wal_vfs_register() == SQLITE_OK ? WAL_VFS_NAME : NULL;
    if (sqlite3_open_v2(log->db_path, &log->db, flags, vfs) != SQLITE_OK) {
        util_error(err, errlen, "cannot open event log '%s': %s", log->db_path,
                   log->db ? sqlite3_errmsg(log->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(log->db, 1);
    sqlite3_busy_handler(log->db, busy_handler, log);
    /* page_size only takes effect on a new database, before WAL is set */
    if (exec_sql(log->db, "PRAGMA page_size=" PAGE_SIZE_TEXT "; PRAGMA journal_mode=WAL", err,
                 errlen) != 0)
        goto fail;
    char pragmas[320];
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA synchronous=%s; PRAGMA temp_store=MEMORY;"
             "PRAGMA journal_size_limit=67108864; PRAGMA cache_size=-4000;"
             "PRAGMA wal_autocheckpoint=" WAL_CHECKPOINT_PAGES_TEXT ";",
             cfg->synchronous_full ? "FULL" : "NORMAL");
    if (exec_sql(log->db, pragmas, err, errlen) != 0)
        goto fail;
    log->synchronous_full = cfg->synchronous_full;
    /* Schema creation races with other processes: take the write lock. */
    if (exec_sql(log->db, "BEGIN IMMEDIATE", err, errlen) != 0)
        goto fail;
    if (exec_sql(log->db, schema_sql, err, errlen) != 0) {
        sqlite3_exec(log->db, "ROLLBACK", NULL, NULL, NULL);
        goto fail;
    }
    if (exec_sql(log->db, "COMMIT", err, errlen) != 0)
        goto fail;

    if (prepare(log, "SELECT id FROM topics WHERE name = ?1", &log->select_topic, err, errlen) !=
            0 ||
        prepare(log, "INSERT INTO topics(name, created_ms) VALUES(?1, ?2)", &log->insert_topic, err,
                errlen) != 0 ||
        prepare(log, "BEGIN IMMEDIATE", &log->begin, err, errlen) != 0 ||
        prepare(log, "COMMIT", &log->commit, err, errlen) != 0 ||
        prepare(log, "ROLLBACK", &log->rollback, err, errlen) != 0)
        goto fail;

    log->notify_fd = open(log->notify_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (log->notify_fd < 0) {
        util_error(err, errlen, "cannot open notify file '%s': %s", log->notify_path,
                   strerror(errno));
        goto fail;
    }
    close(lock_fd); /* releases the set-up lock */
    return log;
fail:
    if (lock_fd >= 0)
        close(lock_fd);
    bus_log_close(log);
    return NULL;
}

static void clear_topic_cache(bus_log *log)
{
    for (size_t i = 0; i < log->topic_count; i++) {
        free(log->topics[i].name);
        sqlite3_finalize(log->topics[i].insert);
    }
    log->topic_count = 0;
}

void bus_log_close(bus_log *log)
{
    if (!log)
        return;
    bus_checkpointer_stop(log->checkpointer);
    if (log->db && !sqlite3_get_autocommit(log->db))
        sqlite3_exec(log->db, "ROLLBACK", NULL, NULL, NULL);
    clear_topic_cache(log);
    free(log->topics);
    sqlite3_finalize(log->select_topic);
    sqlite3_finalize(log->insert_topic);
    sqlite3_finalize(log->begin);
    sqlite3_finalize(log->commit);
    sqlite3_finalize(log->rollback);
    sqlite3_close_v2(log->db);
    if (log->notify_fd >= 0)
        close(log->notify_fd);
    free(log->db_path);
    free(log->notify_path);
    free(log);
}

int bus_log_checkpoint_in_background(bus_log *log, char *err, size_t errlen)
{
    if (log->checkpointer)
        return 0;
    log->checkpointer = bus_checkpointer_start(log->db, log->db_path, log->synchronous_full,
                                               BACKGROUND_CHECKPOINT_START_PAGES,
                                               BACKGROUND_CHECKPOINT_HARD_PAGES, err, errlen);
    return log->checkpointer ? 0 : -1;
}

void bus_log_between_transactions(bus_log *log)
{
    bus_checkpointer_finish(log->checkpointer);
}

int bus_log_checkpoint_stats(bus_log *log, uint64_t *background, uint64_t *finished,
                             uint64_t *inline_)
{
    if (!log->checkpointer)
        return -1;
    bus_checkpoint_stats st;
    bus_checkpointer_stats(log->checkpointer, &st);
    *background = st.background;
    *finished = st.finished;
    *inline_ = st.inline_;
    return 0;
}

sqlite3 *bus_log_db(bus_log *log)
{
    return log->db;
}

const char *bus_log_notify_path(const bus_log *log)
{
    return log->notify_path;
}

const char *bus_log_db_path(const bus_log *log)
{
    return log->db_path;
}

int bus_log_in_transaction(bus_log *log)
{
    return !sqlite3_get_autocommit(log->db);
}

/* Run a prepared statement that returns no rows: SQLITE_OK or the error. */
static int run_prepared(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int bus_log_begin(bus_log *log, char *err, size_t errlen)
{
    log->appended = 0;
    if (run_prepared(log->begin) != SQLITE_OK)
        return util_error(err, errlen, "cannot begin a transaction on '%s': %s", log->db_path,
                          sqlite3_errmsg(log->db));
    return 0;
}

void bus_log_notify_on_commit(bus_log *log)
{
    log->appended = 1;
}

void bus_log_notify(bus_log *log)
{
    /* Any write() to the file raises IN_MODIFY for every watcher. */
    if (pwrite(log->notify_fd, "\n", 1, 0) != 1)
        LOG_WARN("cannot write notify file '%s': %s", log->notify_path, strerror(errno));
}

int bus_log_commit(bus_log *log, char *err, size_t errlen)
{
    if (run_prepared(log->commit) != SQLITE_OK) {
        util_error(err, errlen, "cannot commit to '%s': %s", log->db_path, sqlite3_errmsg(log->db));
        bus_log_rollback(log);
        return -1;
    }
    if (log->appended)
        bus_log_notify(log);
    log->appended = 0;
    return 0;
}

void bus_log_rollback(bus_log *log)
{
    if (!sqlite3_get_autocommit(log->db))
        run_prepared(log->rollback);
    log->appended = 0;
    /* Topics created in the transaction may not exist any more. */
    clear_topic_cache(log);
}

static topic_cache_entry *topic_lookup(bus_log *log, const char *topic, int create, char *err,
                                       size_t errlen, int *failed)
{
    *failed = 0;
    for (size_t i = 0; i < log->topic_count; i++)
        if (strcmp(log->topics[i].name, topic) == 0)
            return &log->topics[i];
    if (!bus_topic_name_valid(topic)) {
        *failed = 1;
        util_error(err, errlen, "invalid topic name '%s'", topic);
        return NULL;
    }
    int64_t id = 0;
    sqlite3_stmt *s = log->select_topic;
    sqlite3_bind_text(s, 1, topic, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        id = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        *failed = 1;
        util_error(err, errlen, "cannot look up topic '%s': %s", topic, sqlite3_errmsg(log->db));
        return NULL;
    }
    char table[32], sql[256];
    if (id == 0) {
        if (!create)
            return NULL;
        s = log->insert_topic;
        sqlite3_bind_text(s, 1, topic, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, util_now_ms());
        rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE) {
            *failed = 1;
            util_error(err, errlen, "cannot create topic '%s': %s", topic, sqlite3_errmsg(log->db));
            return NULL;
        }
        id = sqlite3_last_insert_rowid(log->db);
        bus_log_topic_table(id, table, sizeof(table));
        snprintf(sql, sizeof(sql),
                 "CREATE TABLE IF NOT EXISTS %s(id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL,"
                 " key BLOB, value BLOB NOT NULL, headers BLOB)",
                 table);
        if (exec_sql(log->db, sql, err, errlen) != 0) {
            *failed = 1;
            return NULL;
        }
    }
    bus_log_topic_table(id, table, sizeof(table));
    snprintf(sql, sizeof(sql), "INSERT INTO %s(ts_ms, key, value, headers) VALUES(?1,?2,?3,?4)",
             table);
    sqlite3_stmt *insert = NULL;
    if (prepare(log, sql, &insert, err, errlen) != 0) {
        *failed = 1;
        return NULL;
    }
    log->topics = xrealloc(log->topics, (log->topic_count + 1) * sizeof(*log->topics));
    topic_cache_entry *e = &log->topics[log->topic_count++];
    e->name = xstrdup(topic);
    e->id = id;
    e->insert = insert;
    return e;
}

int64_t bus_log_topic_id(bus_log *log, const char *topic, int create, char *err, size_t errlen)
{
    int failed;
    topic_cache_entry *e = topic_lookup(log, topic, create, err, errlen, &failed);
    return failed ? -1 : e ? e->id : 0;
}

int bus_log_append(bus_log *log, const bus_record *records, size_t n, int64_t *offsets, char *err,
                   size_t errlen)
{
    int64_t now = util_now_ms();
    topic_cache_entry *t = NULL;
    for (size_t i = 0; i < n; i++) {
        const bus_record *r = &records[i];
        if (!r->topic)
            return util_error(err, errlen, "record %zu has no topic", i);
        if (!r->value)
            return util_error(err, errlen, "record %zu has no value", i);
        if (!t || strcmp(t->name, r->topic) != 0) {
            int failed;
            t = topic_lookup(log, r->topic, 1, err, errlen, &failed);
            if (!t)
                return -1;
        }
        sqlite3_stmt *s = t->insert;
        size_t hlen = 0;
        unsigned char *hdr = bus_headers_encode(r->headers, r->header_count, &hlen);
        sqlite3_bind_int64(s, 1, now);
        if (r->key)
            sqlite3_bind_blob64(s, 2, r->key, r->key_len, SQLITE_STATIC);
        else
            sqlite3_bind_null(s, 2);
        sqlite3_bind_blob64(s, 3, r->value, r->value_len, SQLITE_STATIC);
        if (hdr)
            sqlite3_bind_blob64(s, 4, hdr, hlen, SQLITE_STATIC);
        else
            sqlite3_bind_null(s, 4);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        free(hdr);
        if (rc != SQLITE_DONE)
            return util_error(err, errlen, "cannot append to topic '%s': %s", r->topic,
                              sqlite3_errmsg(log->db));
        if (offsets)
            offsets[i] = sqlite3_last_insert_rowid(log->db);
        log->appended++;
    }
    return 0;
}

unsigned char *bus_headers_encode(const bus_header *headers, size_t count, size_t *len)
{
    /* Per header: u16 name length, name, u32 value length, value (LE). */
    *len = 0;
    if (count == 0)
        return NULL;
    size_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += 6 + strlen(headers[i].name) + headers[i].value_len;
    unsigned char *buf = xmalloc(total);
    unsigned char *p = buf;
    for (size_t i = 0; i < count; i++) {
        size_t nl = strlen(headers[i].name);
        if (nl > 0xffff)
            nl = 0xffff;
        size_t vl = headers[i].value_len;
        p[0] = (unsigned char)(nl & 0xff);
        p[1] = (unsigned char)(nl >> 8);
        memcpy(p + 2, headers[i].name, nl);
        p += 2 + nl;
        for (int b = 0; b < 4; b++)
            p[b] = (unsigned char)((vl >> (8 * b)) & 0xff);
        if (vl)
            memcpy(p + 4, headers[i].value, vl);
        p += 4 + vl;
    }
    *len = (size_t)(p - buf);
    return buf;
}

/* Delete one chunk of old rows from the front of one topic. Returns the
 * number deleted (0 when done) or -1. */
static int64_t retention_chunk(bus_log *log, int64_t topic_id, const char *name, int64_t cutoff,
                               char *err, size_t errlen)
{
    char table[32], sql[256];
    bus_log_topic_table(topic_id, table, sizeof(table));
    sqlite3_stmt *scan = NULL, *del = NULL, *mark = NULL;
    int64_t n = -1, upto = 0;
    /* The front only, stopping at the first younger row, and never the
     * newest row (it keeps max(id), so offsets never restart). */
    snprintf(sql, sizeof(sql),
             "SELECT id, ts_ms FROM %s WHERE id < (SELECT max(id) FROM %s) ORDER BY id LIMIT %d",
             table, table, RETENTION_CHUNK);
    if (prepare(log, sql, &scan, err, errlen) != 0)
        goto out;
    snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE id <= ?1", table);
    if (prepare(log, sql, &del, err, errlen) != 0 ||
        prepare(log, "UPDATE topics SET deleted_upto = ?1 WHERE id = ?2 AND deleted_upto < ?1",
                &mark, err, errlen) != 0)
        goto out;
    if (bus_log_begin(log, err, errlen) != 0)
        goto out;
    int rc;
    while ((rc = sqlite3_step(scan)) == SQLITE_ROW) {
        if (sqlite3_column_int64(scan, 1) >= cutoff)
            break;
        upto = sqlite3_column_int64(scan, 0);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        util_error(err, errlen, "retention of '%s': %s", name, sqlite3_errmsg(log->db));
        bus_log_rollback(log);
        goto out;
    }
    sqlite3_reset(scan);
    if (upto == 0) {
        bus_log_rollback(log);
        n = 0;
        goto out;
    }
    sqlite3_bind_int64(del, 1, upto);
    sqlite3_bind_int64(mark, 1, upto);
    sqlite3_bind_int64(mark, 2, topic_id);
    rc = sqlite3_step(del);
    int64_t removed = sqlite3_changes64(log->db);
    if (rc == SQLITE_DONE)
        rc = sqlite3_step(mark);
    if (rc != SQLITE_DONE) {
        util_error(err, errlen, "retention of '%s': %s", name, sqlite3_errmsg(log->db));
        bus_log_rollback(log);
        goto out;
    }
    n = removed;
    if (bus_log_commit(log, err, errlen) != 0)
        n = -1;
out:
    sqlite3_finalize(scan);
    sqlite3_finalize(del);
    sqlite3_finalize(mark);
    return n;
}

int bus_log_retention_run(bus_log *log, int64_t max_age_ms, int64_t *deleted, char *err,
                          size_t errlen)
{
    int64_t total = 0;
    if (deleted)
        *deleted = 0;
    if (max_age_ms <= 0)
        return 0;
    int64_t cutoff = util_now_ms() - max_age_ms;
    /* Snapshot the topic list first: retention commits as it goes. */
    sqlite3_stmt *list = NULL;
    if (prepare(log, "SELECT id, name FROM topics ORDER BY id", &list, err, errlen) != 0)
        return -1;
    size_t count = 0;
    int64_t *ids = NULL;
    char **names = NULL;
    while (sqlite3_step(list) == SQLITE_ROW) {
        ids = xrealloc(ids, (count + 1) * sizeof(*ids));
        names = xrealloc(names, (count + 1) * sizeof(*names));
        ids[count] = sqlite3_column_int64(list, 0);
        names[count] = xstrdup((const char *)sqlite3_column_text(list, 1));
        count++;
    }
    sqlite3_finalize(list);
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        int64_t topic_total = 0;
        for (;;) {
            int64_t n = retention_chunk(log, ids[i], names[i], cutoff, err, errlen);
            if (n < 0) {
                rc = -1;
                break;
            }
            topic_total += n;
            if (n < RETENTION_CHUNK)
                break;
        }
        if (topic_total > 0)
            LOG_INFO("retention: deleted %lld events older than %lld ms from topic '%s'",
                     (long long)topic_total, (long long)max_age_ms, names[i]);
        total += topic_total;
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    free(ids);
    if (deleted)
        *deleted = total;
    return rc;
}
