/*
 * test_bus.c - unit tests of the embedded bus (bus.h, sqlite_log.h,
 * sqlite_consumer.h) against a real SQLite log in a temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus/bus.h"
#include "bus/sqlite_consumer.h"
#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct fixture {
    char dir[256];
    bus_config cfg;
    bus_producer *producer;
} fixture;

static int setup(void **state)
{
    fixture *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/herald-test-bus-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = f->dir;
    cfg.retention_ms = 0;
    cfg.synchronous_full = 0;
    f->cfg = cfg;
    char err[256];
    f->producer = bus_producer_open(&f->cfg, err, sizeof(err));
    assert_non_null(f->producer);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    bus_producer_close(f->producer);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static bus_record rec(const char *topic, const char *key, const char *value)
{
    bus_record r = BUS_RECORD_INIT;
    r.topic = topic;
    r.key = key;
    r.key_len = key ? strlen(key) : 0;
    r.value = value;
    r.value_len = strlen(value);
    return r;
}

static void publish(fixture *f, const char *topic, const char *key, const char *value,
                    int64_t *offset)
{
    char err[256];
    bus_record r = rec(topic, key, value);
    assert_int_equal(bus_produce(f->producer, &r, 1, offset, err, sizeof(err)), 0);
}

static bus_consumer *open_consumer(fixture *f, const char *group, const char *topic,
                                   const char *pattern, enum bus_offset_reset reset)
{
    char err[256];
    const char *topics[1] = {topic};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = group;
    if (topic) {
        sub.topics = topics;
        sub.topic_count = 1;
    }
    sub.pattern = pattern;
    sub.reset = reset;
    bus_consumer *c = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    if (!c)
        fail_msg("consumer: %s", err);
    return c;
}

/* Poll everything currently available; values joined by ',' into out. */
static size_t drain_values(bus_consumer *c, char *out, size_t outlen)
{
    char err[256];
    size_t total = 0;
    out[0] = '\0';
    for (;;) {
        const bus_message *m;
        size_t n;
        assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++) {
            if (out[0])
                strncat(out, ",", outlen - strlen(out) - 1);
            strncat(out, m[i].value, outlen - strlen(out) - 1);
        }
        total += n;
    }
    return total;
}

static void test_offsets_are_dense_and_returned(void **state)
{
    fixture *f = *state;
    int64_t a, b, c;
    publish(f, "task-events", "t1", "one", &a);
    publish(f, "task-events", "t1", "two", &b);
    publish(f, "other-events", "t1", "x", &c);
    assert_int_equal(a, 1);
    assert_int_equal(b, 2);
    assert_int_equal(c, 1); /* offsets are per topic */
    char err[256];
    bus_record batch[3] = {rec("task-events", "k", "3"), rec("task-events", "k", "4"),
                           rec("task-events", NULL, "5")};
    int64_t offs[3];
    assert_int_equal(bus_produce(f->producer, batch, 3, offs, err, sizeof(err)), 0);
    assert_int_equal(offs[0], 3);
    assert_int_equal(offs[2], 5);
    bus_consumer *cons = open_consumer(f, NULL, "task-events", NULL, BUS_RESET_EARLIEST);
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_poll(cons, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 5);
    assert_string_equal(m[0].value, "one");
    assert_string_equal(m[0].topic, "task-events");
    assert_string_equal(m[0].key, "t1");
    assert_int_equal(m[0].key_len, 2);
    assert_null(m[4].key);
    assert_int_equal(m[4].offset, 5);
    assert_true(m[4].timestamp_ms > util_now_ms() - 60000);
    bus_consumer_close(cons);
}

static void test_batch_is_atomic(void **state)
{
    fixture *f = *state;
    char err[256];
    /* the third record's topic is invalid: nothing of the batch may land */
    bus_record batch[3] = {rec("task-events", "k", "a"), rec("task-events", "k", "b"),
                           rec("bad topic!", "k", "c")};
    assert_int_equal(bus_produce(f->producer, batch, 3, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "bad topic!"));
    publish(f, "task-events", "k", "after", NULL);
    bus_consumer *c = open_consumer(f, NULL, "task-events", NULL, BUS_RESET_EARLIEST);
    char values[256];
    assert_int_equal(drain_values(c, values, sizeof(values)), 1);
    assert_string_equal(values, "after");
    bus_consumer_close(c);
}

static void test_publish_inside_callers_transaction(void **state)
{
    fixture *f = *state;
    char err[256];
    bus_log *log = bus_log_open(&f->cfg, err, sizeof(err));
    assert_non_null(log);
    sqlite3 *db = bus_log_db(log);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE tasks(id TEXT PRIMARY KEY)", NULL, NULL, NULL),
                     SQLITE_OK);
    /* rolled back: neither the row nor the event exists */
    assert_int_equal(bus_log_begin(log, err, sizeof(err)), 0);
    assert_true(bus_log_in_transaction(log));
    assert_int_equal(sqlite3_exec(db, "INSERT INTO tasks VALUES('t1')", NULL, NULL, NULL),
                     SQLITE_OK);
    bus_record r = rec("task-events", "t1", "created-t1");
    assert_int_equal(bus_log_append(log, &r, 1, NULL, err, sizeof(err)), 0);
    bus_log_rollback(log);
    /* committed: both */
    assert_int_equal(bus_log_begin(log, err, sizeof(err)), 0);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO tasks VALUES('t2')", NULL, NULL, NULL),
                     SQLITE_OK);
    r = rec("task-events", "t2", "created-t2");
    int64_t off;
    assert_int_equal(bus_log_append(log, &r, 1, &off, err, sizeof(err)), 0);
    assert_int_equal(bus_log_commit(log, err, sizeof(err)), 0);
    assert_int_equal(off, 1);

    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT group_concat(id) FROM tasks", -1, &s, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "t2");
    sqlite3_finalize(s);
    bus_consumer *c = open_consumer(f, NULL, "task-events", NULL, BUS_RESET_EARLIEST);
    char values[256];
    assert_int_equal(drain_values(c, values, sizeof(values)), 1);
    assert_string_equal(values, "created-t2");
    bus_consumer_close(c);
    bus_log_close(log);
}

static void test_every_group_gets_every_event(void **state)
{
    fixture *f = *state;
    publish(f, "task-events", "a", "1", NULL);
    publish(f, "task-events", "b", "2", NULL);
    char err[256], v1[256], v2[256];
    bus_consumer *g1 = open_consumer(f, "g1", "task-events", NULL, BUS_RESET_EARLIEST);
    bus_consumer *g2 = open_consumer(f, "g2", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(g1, v1, sizeof(v1)), 2);
    assert_int_equal(bus_consumer_commit(g1, err, sizeof(err)), 0);
    assert_int_equal(drain_values(g2, v2, sizeof(v2)), 2);
    assert_string_equal(v1, "1,2");
    assert_string_equal(v2, "1,2");
    bus_consumer_close(g1);
    bus_consumer_close(g2);
}

static void test_reset_applies_only_without_committed_offset(void **state)
{
    fixture *f = *state;
    char err[256], v[256];
    publish(f, "task-events", "a", "old1", NULL);
    publish(f, "task-events", "a", "old2", NULL);
    /* latest, no committed offset: skips the old events */
    bus_consumer *c = open_consumer(f, "late", "task-events", NULL, BUS_RESET_LATEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 0);
    publish(f, "task-events", "a", "new1", NULL);
    assert_int_equal(drain_values(c, v, sizeof(v)), 1);
    assert_string_equal(v, "new1");
    assert_int_equal(bus_consumer_commit(c, err, sizeof(err)), 0);
    bus_consumer_close(c);
    /* earliest, no committed offset: everything */
    c = open_consumer(f, "early", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 3);
    assert_string_equal(v, "old1,old2,new1");
    assert_int_equal(bus_consumer_commit(c, err, sizeof(err)), 0);
    bus_consumer_close(c);
    /* a committed group ignores the reset rule either way */
    publish(f, "task-events", "a", "new2", NULL);
    c = open_consumer(f, "early", "task-events", NULL, BUS_RESET_LATEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 1);
    assert_string_equal(v, "new2");
    bus_consumer_close(c);
    c = open_consumer(f, "late", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 1);
    assert_string_equal(v, "new2");
    bus_consumer_close(c);
}

static void test_commit_and_resume(void **state)
{
    fixture *f = *state;
    char err[256], v[512];
    for (int i = 0; i < 10; i++) {
        char val[16];
        snprintf(val, sizeof(val), "%d", i);
        publish(f, "task-events", "k", val, NULL);
    }
    const char *topics[1] = {"task-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = "g";
    sub.topics = topics;
    sub.topic_count = 1;
    sub.max_batch = 4;
    bus_consumer *c = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    assert_non_null(c);
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 4); /* max_batch respected */
    assert_int_equal(bus_consumer_commit(c, err, sizeof(err)), 0);
    assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 4); /* polled but not committed */
    bus_consumer_close(c);
    c = open_consumer(f, "g", "task-events", NULL, BUS_RESET_LATEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 6);
    assert_string_equal(v, "4,5,6,7,8,9");
    bus_consumer_close(c);
}

static void test_same_key_keeps_publish_order(void **state)
{
    fixture *f = *state;
    char err[256];
    bus_record batch[100];
    char vals[100][16];
    const char *keys[] = {"t1", "t2", "t3"};
    for (int i = 0; i < 100; i++) {
        snprintf(vals[i], sizeof(vals[i]), "%d", i);
        batch[i] = rec("task-events", keys[i % 3], vals[i]);
    }
    assert_int_equal(bus_produce(f->producer, batch, 50, NULL, err, sizeof(err)), 0);
    assert_int_equal(bus_produce(f->producer, batch + 50, 50, NULL, err, sizeof(err)), 0);
    bus_consumer *c = open_consumer(f, "order", "task-events", NULL, BUS_RESET_EARLIEST);
    int last[3] = {-1, -1, -1};
    int seen = 0;
    for (;;) {
        const bus_message *m;
        size_t n;
        assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
        if (!n)
            break;
        for (size_t i = 0; i < n; i++) {
            int k = m[i].key[1] - '1';
            int v = atoi(m[i].value);
            assert_true(v > last[k]);
            assert_int_equal(v % 3, k);
            last[k] = v;
            seen++;
        }
    }
    assert_int_equal(seen, 100);
    bus_consumer_close(c);
}

static void test_pattern_subscription_finds_new_topics(void **state)
{
    fixture *f = *state;
    char v[256];
    publish(f, "task-events", "a", "t", NULL);
    publish(f, "task-events.dlq", "a", "dead", NULL);
    publish(f, "metrics", "a", "m", NULL);
    bus_consumer *c = open_consumer(f, "audit", NULL, "^[a-z]+-events$", BUS_RESET_LATEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 0); /* latest: old ones skipped */
    /* a topic created after the subscription is read from its start */
    publish(f, "email-events", "a", "e1", NULL);
    publish(f, "task-events", "a", "t2", NULL);
    publish(f, "other", "a", "no", NULL);
    assert_int_equal(drain_values(c, v, sizeof(v)), 2);
    assert_true(strstr(v, "e1") && strstr(v, "t2"));
    assert_null(strstr(v, "no"));
    bus_consumer_close(c);
}

/* A message as the consumer returns it: value plus encoded headers. */
static bus_message message_of(const char *value, const bus_header *h, size_t nh,
                              unsigned char **blob)
{
    bus_message m;
    memset(&m, 0, sizeof(m));
    m.value = value;
    m.value_len = strlen(value);
    *blob = bus_headers_encode(h, nh, &m.headers_len);
    m.headers = *blob;
    return m;
}

static void test_envelope_headers_describe_the_event(void **state)
{
    char err[256];
    event ev = EVENT_INIT;
    json_t *data = json_pack("{s:s}", "task_id", "t-1");
    assert_int_equal(event_build(&ev, "task.created", data, "req-1", "api-create-t-1", "task-api",
                                 err, sizeof(err)),
                     0);
    json_decref(data);
    char *value = event_encode(&ev, NULL);
    bus_header h[BUS_ENVELOPE_HEADERS];
    char timebuf[EVENT_TIME_LEN + 1];
    assert_int_equal(bus_envelope_headers(&ev, h, timebuf), 8); /* no trace context */
    unsigned char *blob;
    bus_message m = message_of(value, h, 8, &blob);
    const char *v;
    size_t len;
    assert_int_equal(bus_message_header(&m, "ce_specversion", &v, &len), 1);
    assert_memory_equal(v, "1.0", 3);
    assert_int_equal(bus_message_header(&m, "content-type", &v, &len), 1);
    assert_memory_equal(v, "application/json", len);

    event back = EVENT_INIT;
    assert_int_equal(bus_envelope_from_headers(&m, &back), 0);
    assert_string_equal(back.event_id, ev.event_id);
    assert_string_equal(back.event_type, "task.created");
    assert_int_equal(back.occurred_ms, ev.occurred_ms);
    assert_string_equal(back.correlation_id, "req-1");
    assert_string_equal(back.causation_id, "api-create-t-1");
    assert_string_equal(back.source, "task-api");
    assert_null(back.data);
    event_release(&back);
    free(blob);

    /* headers that do not describe the value are not trusted */
    char *other = xstrdup(value);
    other[14] = other[14] == 'a' ? 'b' : 'a'; /* another event_id */
    m = message_of(other, h, 8, &blob);
    assert_int_equal(bus_envelope_from_headers(&m, &back), -1);
    free(blob);
    /* a value in another key order (another producer) is decoded in full */
    m = message_of("{\"event_type\":\"task.created\"}", h, 8, &blob);
    assert_int_equal(bus_envelope_from_headers(&m, &back), -1);
    free(blob);
    /* a missing or bad header, no headers at all */
    m = message_of(value, h, 8 - 3, &blob); /* no correlation, causation */
    assert_int_equal(bus_envelope_from_headers(&m, &back), -1);
    free(blob);
    bus_header bad[BUS_ENVELOPE_HEADERS];
    memcpy(bad, h, sizeof(bad));
    bad[5].value = "req\n1";
    bad[5].value_len = 5;
    m = message_of(value, bad, 8, &blob);
    assert_int_equal(bus_envelope_from_headers(&m, &back), -1);
    free(blob);
    m = message_of(value, NULL, 0, &blob);
    assert_int_equal(bus_envelope_from_headers(&m, &back), -1);
    free(blob);
    free(other);
    free(value);
    event_release(&ev);
}

static void test_headers_round_trip(void **state)
{
    fixture *f = *state;
    char err[256];
    bus_header h[2] = {{"ce_type", "task.created", 12}, {"bin", "a\0b", 3}};
    bus_record r = rec("task-events", "k", "v");
    r.headers = h;
    r.header_count = 2;
    assert_int_equal(bus_produce(f->producer, &r, 1, NULL, err, sizeof(err)), 0);
    bus_consumer *c = open_consumer(f, NULL, "task-events", NULL, BUS_RESET_EARLIEST);
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 1);
    const char *val;
    size_t len;
    assert_int_equal(bus_message_header(&m[0], "ce_type", &val, &len), 1);
    assert_int_equal(len, 12);
    assert_memory_equal(val, "task.created", 12);
    assert_int_equal(bus_message_header(&m[0], "bin", &val, &len), 1);
    assert_int_equal(len, 3);
    assert_memory_equal(val, "a\0b", 3);
    assert_int_equal(bus_message_header(&m[0], "missing", &val, &len), 0);
    bus_consumer_close(c);
}

static long file_size(const char *dir, const char *name)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/*
 * Background checkpoints (checkpointer.h): a writer committing steadily,
 * with another connection reading now and then, never checkpoints itself
 * and its WAL keeps starting over: after ~40 MiB of records written it
 * stays below SQLite's own limit of 16 MiB (and the hard one, 64 MiB).
 * Every committed record is there afterwards.
 */
static void test_background_checkpoints_keep_the_wal_short(void **state)
{
    fixture *f = *state;
    char err[256];
    f->cfg.synchronous_full = 1; /* as the Task API's store: an fsync per commit */
    bus_log *log = bus_log_open(&f->cfg, err, sizeof(err));
    assert_non_null(log);
    assert_int_equal(bus_log_checkpoint_in_background(log, err, sizeof(err)), 0);
    bus_log *reader = bus_log_open(&f->cfg, err, sizeof(err));
    assert_non_null(reader);
    char value[2000];
    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    enum { COMMITS = 2000, PER_COMMIT = 10 };
    long wal_max = 0;
    for (int i = 0; i < COMMITS; i++) {
        bus_record recs[PER_COMMIT];
        char keys[PER_COMMIT][16];
        for (int j = 0; j < PER_COMMIT; j++) {
            snprintf(keys[j], sizeof(keys[j]), "k%d", i * PER_COMMIT + j);
            recs[j] = rec("ckpt", keys[j], value);
        }
        assert_int_equal(bus_log_begin(log, err, sizeof(err)), 0);
        assert_int_equal(bus_log_append(log, recs, PER_COMMIT, NULL, err, sizeof(err)), 0);
        assert_int_equal(bus_log_commit(log, err, sizeof(err)), 0);
        bus_log_between_transactions(log);
        if (i % 100 == 0) {
            /* a reader's short transaction, as consumers make */
            sqlite3_stmt *st;
            assert_int_equal(sqlite3_prepare_v2(bus_log_db(reader), "SELECT count(*) FROM topics",
                                                -1, &st, NULL),
                             SQLITE_OK);
            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            sqlite3_finalize(st);
        }
        long wal = file_size(f->dir, BUS_LOG_FILE "-wal");
        if (wal > wal_max)
            wal_max = wal;
    }
    uint64_t background = 0, finished = 0, by_writer = 0;
    assert_int_equal(bus_log_checkpoint_stats(log, &background, &finished, &by_writer), 0);
    print_message("WAL at most %ld bytes; checkpoints: %llu background, %llu finished by the "
                  "writer, %llu by the writer\n",
                  wal_max, (unsigned long long)background, (unsigned long long)finished,
                  (unsigned long long)by_writer);
    assert_true(background > 0);
    assert_true(finished > 0);
    assert_int_equal(by_writer, 0);
    assert_true(wal_max < 16L * 1024 * 1024);
    bus_log_close(reader);
    bus_log_close(log);

    log = bus_log_open(&f->cfg, err, sizeof(err));
    assert_non_null(log);
    sqlite3_stmt *st;
    int64_t id = bus_log_topic_id(log, "ckpt", 0, err, sizeof(err));
    char table[32], sql[96];
    bus_log_topic_table(id, table, sizeof(table));
    snprintf(sql, sizeof(sql), "SELECT count(*), max(id) FROM %s", table);
    assert_int_equal(sqlite3_prepare_v2(bus_log_db(log), sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), COMMITS * PER_COMMIT);
    assert_int_equal(sqlite3_column_int(st, 1), COMMITS * PER_COMMIT);
    sqlite3_finalize(st);
    bus_log_close(log);
}

static void age_events(fixture *f, const char *topic, int64_t upto, int64_t by_ms)
{
    char err[256], sql[256], table[32];
    bus_log *log = bus_log_open(&f->cfg, err, sizeof(err));
    assert_non_null(log);
    int64_t id = bus_log_topic_id(log, topic, 0, err, sizeof(err));
    assert_true(id > 0);
    bus_log_topic_table(id, table, sizeof(table));
    snprintf(sql, sizeof(sql), "UPDATE %s SET ts_ms = ts_ms - %lld WHERE id <= %lld", table,
             (long long)by_ms, (long long)upto);
    assert_int_equal(sqlite3_exec(bus_log_db(log), sql, NULL, NULL, NULL), SQLITE_OK);
    bus_log_close(log);
}

static void test_retention_deletes_old_and_consumers_skip_ahead(void **state)
{
    fixture *f = *state;
    char err[256], v[1024];
    for (int i = 1; i <= 20; i++) {
        char val[16];
        snprintf(val, sizeof(val), "%d", i);
        publish(f, "task-events", "k", val, NULL);
    }
    /* group g commits up to offset 5 */
    const char *topics[1] = {"task-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = "g";
    sub.topics = topics;
    sub.topic_count = 1;
    sub.max_batch = 5;
    bus_consumer *c = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(bus_consumer_commit(c, err, sizeof(err)), 0);
    bus_consumer_close(c);

    age_events(f, "task-events", 12, 8LL * 86400 * 1000); /* 1..12 are 8 days old */
    bus_log *log = bus_log_open(&f->cfg, err, sizeof(err));
    int64_t deleted = -1;
    assert_int_equal(
        bus_log_retention_run(log, BUS_DEFAULT_RETENTION_MS, &deleted, err, sizeof(err)), 0);
    assert_int_equal(deleted, 12);
    /* nothing younger goes, and a second run finds nothing */
    assert_int_equal(
        bus_log_retention_run(log, BUS_DEFAULT_RETENTION_MS, &deleted, err, sizeof(err)), 0);
    assert_int_equal(deleted, 0);
    bus_log_close(log);

    /* g fell behind (position 6 <= 12): resumes at the oldest kept, 13 */
    c = open_consumer(f, "g", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 8);
    assert_string_equal(v, "13,14,15,16,17,18,19,20");
    bus_consumer_close(c);
    /* a new group from earliest starts at the oldest kept too */
    c = open_consumer(f, "fresh", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 8);
    bus_consumer_close(c);
}

static void test_retention_keeps_newest_so_offsets_never_restart(void **state)
{
    fixture *f = *state;
    char err[256];
    int64_t off;
    for (int i = 0; i < 3; i++)
        publish(f, "task-events", "k", "x", NULL);
    age_events(f, "task-events", 3, 30LL * 86400 * 1000);
    bus_log *log = bus_log_open(&f->cfg, err, sizeof(err));
    int64_t deleted;
    assert_int_equal(bus_log_retention_run(log, 1000, &deleted, err, sizeof(err)), 0);
    assert_int_equal(deleted, 2);
    bus_log_close(log);
    publish(f, "task-events", "k", "y", &off);
    assert_int_equal(off, 4);
}

static void test_producer_runs_retention_on_open(void **state)
{
    fixture *f = *state;
    char err[256], v[256];
    publish(f, "task-events", "k", "old", NULL);
    publish(f, "task-events", "k", "new", NULL);
    age_events(f, "task-events", 1, 2 * 3600 * 1000LL);
    bus_config cfg = f->cfg;
    cfg.retention_ms = 3600 * 1000;
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    assert_non_null(p);
    bus_producer_close(p);
    bus_consumer *c = open_consumer(f, NULL, "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(c, v, sizeof(v)), 1);
    assert_string_equal(v, "new");
    bus_consumer_close(c);
}

typedef struct waiter {
    bus_consumer *c;
    int timeout_ms;
    size_t got;
    int64_t returned_ns;
} waiter;

static void *wait_thread(void *arg)
{
    waiter *w = arg;
    char err[256];
    const bus_message *m;
    size_t n = 0;
    if (bus_consumer_poll(w->c, w->timeout_ms, &m, &n, err, sizeof(err)) != 0)
        n = 0;
    w->got = n;
    w->returned_ns = util_monotonic_ns();
    return NULL;
}

static void test_waiting_consumer_is_woken_by_a_publish(void **state)
{
    fixture *f = *state;
    bus_consumer *c = open_consumer(f, NULL, "task-events", NULL, BUS_RESET_LATEST);
    char v[64];
    drain_values(c, v, sizeof(v));
    waiter w = {c, 20000, 0, 0};
    pthread_t th;
    pthread_create(&th, NULL, wait_thread, &w);
    util_sleep_us(100000); /* the consumer is now asleep in poll */
    int64_t t0 = util_monotonic_ns();
    publish(f, "task-events", "k", "wake", NULL);
    pthread_join(th, NULL);
    assert_int_equal(w.got, 1);
    /* woken by the notification, far before the 20 s timeout */
    assert_true(w.returned_ns - t0 < 5000LL * 1000000);
    bus_consumer_close(c);
}

static void test_wakeup_interrupts_poll(void **state)
{
    fixture *f = *state;
    bus_consumer *c = open_consumer(f, NULL, "task-events", NULL, BUS_RESET_LATEST);
    waiter w = {c, 20000, 99, 0};
    pthread_t th;
    pthread_create(&th, NULL, wait_thread, &w);
    util_sleep_us(100000);
    int64_t t0 = util_monotonic_ns();
    bus_consumer_wakeup(c);
    pthread_join(th, NULL);
    assert_int_equal(w.got, 0);
    assert_true(w.returned_ns - t0 < 5000LL * 1000000);
    bus_consumer_close(c);
}

static void test_commit_inside_callers_transaction(void **state)
{
    fixture *f = *state;
    char err[256], v[256];
    publish(f, "task-events", "k", "1", NULL);
    publish(f, "task-events", "k", "2", NULL);
    const char *topics[1] = {"task-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = "tx";
    sub.topics = topics;
    sub.topic_count = 1;
    sub.max_batch = 1;
    bus_consumer_sqlite *c = bus_consumer_sqlite_open(&f->cfg, &sub, err, sizeof(err));
    assert_non_null(c);
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_sqlite_poll(c, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 1);
    bus_log *log = bus_consumer_sqlite_log(c);
    /* derived event + offset commit in one transaction, rolled back */
    assert_int_equal(bus_log_begin(log, err, sizeof(err)), 0);
    bus_record r = rec("notification-events", "k", "derived");
    assert_int_equal(bus_log_append(log, &r, 1, NULL, err, sizeof(err)), 0);
    assert_int_equal(bus_consumer_sqlite_commit(c, err, sizeof(err)), 0);
    bus_log_rollback(log);
    bus_consumer_sqlite_close(c);
    /* nothing happened: no committed offset (so the whole topic again), no derived event */
    bus_consumer *g = open_consumer(f, "tx", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(g, v, sizeof(v)), 2);
    bus_consumer_close(g);
    bus_consumer *d = open_consumer(f, NULL, NULL, "^notification-events$", BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(d, v, sizeof(v)), 0);
    bus_consumer_close(d);
}

static void test_bad_subscriptions_are_refused(void **state)
{
    fixture *f = *state;
    char err[256];
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    assert_null(bus_consumer_open(&f->cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "no topic"));
    sub.pattern = "([unclosed";
    assert_null(bus_consumer_open(&f->cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid topic pattern"));
    const char *topics[1] = {"has space"};
    sub.pattern = NULL;
    sub.topics = topics;
    sub.topic_count = 1;
    assert_null(bus_consumer_open(&f->cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "has space"));
    sub.topics = NULL;
    sub.topic_count = 0;
    sub.pattern = ".*";
    sub.group_id = "";
    assert_null(bus_consumer_open(&f->cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "group"));
}

static void test_topic_names(void **state)
{
    (void)state;
    assert_true(bus_topic_name_valid("task-events"));
    assert_true(bus_topic_name_valid("task-events.dlq"));
    assert_true(bus_topic_name_valid("A_b-9"));
    assert_false(bus_topic_name_valid(""));
    assert_false(bus_topic_name_valid("."));
    assert_false(bus_topic_name_valid(".."));
    assert_false(bus_topic_name_valid("a b"));
    assert_false(bus_topic_name_valid("a/b"));
    char long_name[300];
    memset(long_name, 'a', 250);
    long_name[250] = '\0';
    assert_false(bus_topic_name_valid(long_name));
    long_name[249] = '\0';
    assert_true(bus_topic_name_valid(long_name));
}

static void test_bad_data_dir_is_reported(void **state)
{
    (void)state;
    char err[256];
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = "/proc/herald-cannot-exist/data";
    assert_null(bus_producer_open(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "/proc/herald-cannot-exist/data"));
}

static void test_one_active_member_per_group(void **state)
{
    fixture *f = *state;
    char err[256], v[256];
    for (int i = 1; i <= 4; i++) {
        char val[16];
        snprintf(val, sizeof(val), "%d", i);
        publish(f, "task-events", "k", val, NULL);
    }
    const char *topics[1] = {"task-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = "solo";
    sub.topics = topics;
    sub.topic_count = 1;
    sub.max_batch = 2;
    bus_consumer *a = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    bus_consumer *b = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_poll(a, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 2);
    assert_int_equal(bus_consumer_commit(a, err, sizeof(err)), 0);
    /* b is a standby while a holds the group: nothing, even after waiting */
    assert_int_equal(bus_consumer_poll(b, 300, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 0);
    assert_int_equal(bus_consumer_commit(b, err, sizeof(err)), 0); /* no-op */
    bus_consumer_close(a);                                         /* releases the group */
    util_sleep_us(300000); /* past b's standby re-check interval */
    assert_int_equal(drain_values(b, v, sizeof(v)), 2);
    assert_string_equal(v, "3,4"); /* resumes from a's committed offset */
    bus_consumer_close(b);
}

static void test_crashed_members_group_is_taken_over_at_once(void **state)
{
    fixture *f = *state;
    char err[256], v[256];
    publish(f, "task-events", "k", "1", NULL);
    bus_consumer *a = open_consumer(f, "g", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(a, v, sizeof(v)), 1);
    assert_int_equal(bus_consumer_commit(a, err, sizeof(err)), 0);
    /* pretend a's process died: its pid no longer exists */
    bus_log *log = bus_log_open(&f->cfg, err, sizeof(err));
    assert_int_equal(sqlite3_exec(bus_log_db(log),
                                  "UPDATE group_leases SET pid = 2147483600 WHERE group_name = 'g'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    bus_log_close(log);
    publish(f, "task-events", "k", "2", NULL);
    bus_consumer *b = open_consumer(f, "g", "task-events", NULL, BUS_RESET_EARLIEST);
    assert_int_equal(drain_values(b, v, sizeof(v)), 1);
    assert_string_equal(v, "2");
    assert_int_equal(bus_consumer_commit(b, err, sizeof(err)), 0);
    /* a lost the group: its commit is refused and does not move offsets */
    publish(f, "task-events", "k", "3", NULL);
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_poll(a, 0, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 2); /* a does not know yet: its lease looks fresh */
    assert_int_equal(bus_consumer_commit(a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "membership lost"));
    bus_consumer_close(a);
    assert_int_equal(drain_values(b, v, sizeof(v)), 1);
    assert_string_equal(v, "3");
    bus_consumer_close(b);
}

int main(void)
{
    log_threshold = LOG_LEVEL_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_offsets_are_dense_and_returned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_background_checkpoints_keep_the_wal_short, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_batch_is_atomic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_inside_callers_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_group_gets_every_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_applies_only_without_committed_offset, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_commit_and_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_key_keeps_publish_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pattern_subscription_finds_new_topics, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_headers_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_deletes_old_and_consumers_skip_ahead, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_retention_keeps_newest_so_offsets_never_restart, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_producer_runs_retention_on_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_waiting_consumer_is_woken_by_a_publish, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wakeup_interrupts_poll, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_inside_callers_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_subscriptions_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_active_member_per_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crashed_members_group_is_taken_over_at_once, setup,
                                        teardown),
        cmocka_unit_test(test_topic_names),
        cmocka_unit_test(test_envelope_headers_describe_the_event),
        cmocka_unit_test(test_bad_data_dir_is_reported),
    };
    return cmocka_run_group_tests_name("bus", tests, NULL, NULL);
}
