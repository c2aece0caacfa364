/*
 * test_store.c - the task store (store/task_store.h) on a real SQLite log:
 * each outcome of each operation, the events it publishes, idempotency
 * keys, group commit (concurrent requests share transactions, and every
 * committed task has exactly its event in the log), and task histories that
 * refer to the log yet outlive its retention.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus/bus.h"
#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"
#include "store/task_store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fixture {
    char dir[64];
    bus_config cfg;
    task_store *store;
} fixture;

static int setup(void **state)
{
    fixture *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/herald-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = f->dir;
    cfg.retention_ms = 0;
    cfg.synchronous_full = 0;
    f->cfg = cfg;
    char err[256];
    f->store = task_store_open(&f->cfg, err, sizeof(err));
    assert_non_null(f->store);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    task_store_close(f->store);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* All events in task-events, decoded, in order. */
static size_t read_events(fixture *f, event *out, size_t max)
{
    char err[256];
    const char *topics[1] = {"task-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.topics = topics;
    sub.topic_count = 1;
    bus_consumer *c = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    assert_non_null(c);
    size_t n = 0;
    for (;;) {
        const bus_message *m;
        size_t k;
        assert_int_equal(bus_consumer_poll(c, 0, &m, &k, err, sizeof(err)), 0);
        if (!k)
            break;
        for (size_t i = 0; i < k; i++) {
            event ev = EVENT_INIT;
            assert_int_equal(event_decode(&ev, m[i].value, m[i].value_len, err, sizeof(err)), 0);
            /* the key is the task id */
            assert_string_equal(m[i].key, json_string_value(json_object_get(ev.data, "task_id")));
            if (n < max)
                out[n] = ev;
            else
                event_release(&ev);
            n++;
        }
    }
    bus_consumer_close(c);
    return n;
}

static void release_events(event *evs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        event_release(&evs[i]);
}

static void create(fixture *f, const char *title, const char *cid, store_request *sr)
{
    store_request_init(sr, STORE_CREATE);
    event_uuid_v7(sr->task_id);
    sr->input.title = (char *)title;
    sr->input.owner_id = "user-456";
    sr->input.priority = 2;
    sr->correlation_id = cid;
    char err[256];
    assert_int_equal(store_prepare_create(sr, err, sizeof(err)), 0);
    assert_int_equal(task_store_execute(f->store, sr), 0);
    memset(&sr->input, 0, sizeof(sr->input));
}

static void test_create_stores_task_and_event(void **state)
{
    fixture *f = *state;
    store_request sr;
    create(f, "Review quarterly report", "req-abc-123", &sr);
    assert_int_equal(sr.outcome, STORE_DONE);
    assert_int_equal(sr.result.version, 1);
    task t = TASK_INIT;
    char err[256];
    assert_int_equal(task_store_get(f->store, sr.task_id, &t, err, sizeof(err)), 1);
    assert_string_equal(t.title, "Review quarterly report");
    assert_string_equal(t.owner_id, "user-456");
    assert_int_equal(t.priority, 2);
    assert_int_equal(t.completed, 0);
    task_release(&t);
    event evs[4];
    assert_int_equal(read_events(f, evs, 4), 1);
    assert_string_equal(evs[0].event_type, "task.created");
    assert_string_equal(evs[0].event_id, sr.event_id);
    assert_string_equal(evs[0].correlation_id, "req-abc-123");
    char causation[128];
    snprintf(causation, sizeof(causation), "api-create-%s", sr.task_id);
    assert_string_equal(evs[0].causation_id, causation);
    assert_string_equal(evs[0].source, "task-api");
    assert_string_equal(json_string_value(json_object_get(evs[0].data, "title")),
                        "Review quarterly report");
    release_events(evs, 1);
    store_request_release(&sr);
}

/* task.created's data, written without a tree: every field, in order. */
static void test_created_event_data(void **state)
{
    fixture *f = *state;
    store_request sr;
    store_request_init(&sr, STORE_CREATE);
    util_strlcpy(sr.task_id, "t-data-1", sizeof(sr.task_id));
    sr.input.title = "Say \"hi\"\n\xc3\xa9";
    sr.input.owner_id = "user-7";
    sr.input.priority = 4;
    sr.input.description = "with a description";
    sr.input.due_ms = INT64_C(1767225600000); /* 2026-01-01T00:00:00.000Z */
    sr.correlation_id = "cd-1";
    char err[256];
    assert_int_equal(store_prepare_create(&sr, err, sizeof(err)), 0);
    assert_int_equal(task_store_execute(f->store, &sr), 0);
    assert_int_equal(sr.outcome, STORE_DONE);
    char created[EVENT_TIME_LEN + 1];
    event_format_time(sr.result.created_ms, created);
    event evs[2];
    assert_int_equal(read_events(f, evs, 2), 1);
    char *data = json_dumps(evs[0].data, JSON_COMPACT);
    char expected[512];
    snprintf(expected, sizeof(expected),
             "{\"task_id\":\"t-data-1\",\"title\":\"Say \\\"hi\\\"\\n\xc3\xa9\","
             "\"owner_id\":\"user-7\",\"priority\":4,\"description\":\"with a description\","
             "\"due_at\":\"2026-01-01T00:00:00.000Z\",\"created_at\":\"%s\"}",
             created);
    assert_string_equal(data, expected);
    free(data);
    release_events(evs, 1);
    memset(&sr.input, 0, sizeof(sr.input));
    store_request_release(&sr);

    /* a create that skipped store_prepare_create fails, writing nothing */
    store_request bare;
    store_request_init(&bare, STORE_CREATE);
    util_strlcpy(bare.task_id, "t-data-2", sizeof(bare.task_id));
    bare.input.title = "x";
    bare.input.owner_id = "y";
    assert_int_equal(task_store_execute(f->store, &bare), 0);
    assert_int_equal(bare.outcome, STORE_FAILED);
    assert_non_null(strstr(bare.err, "store_prepare_create"));
    memset(&bare.input, 0, sizeof(bare.input));
    store_request_release(&bare);
    task t = TASK_INIT;
    assert_int_equal(task_store_get(f->store, "t-data-2", &t, err, sizeof(err)), 0);
}

static void test_update_complete_delete_and_their_events(void **state)
{
    fixture *f = *state;
    store_request c, r;
    create(f, "old title", "c1", &c);
    /* stale If-Match */
    store_request_init(&r, STORE_UPDATE);
    util_strlcpy(r.task_id, c.task_id, sizeof(r.task_id));
    json_t *patch = json_pack("{s:s, s:i}", "title", "new title", "priority", 5);
    r.patch = patch;
    r.if_match = 7;
    r.correlation_id = "c2";
    assert_int_equal(task_store_execute(f->store, &r), 0);
    assert_int_equal(r.outcome, STORE_VERSION_MISMATCH);
    assert_int_equal(r.result.version, 1);
    store_request_release(&r);
    /* good If-Match */
    store_request_init(&r, STORE_UPDATE);
    util_strlcpy(r.task_id, c.task_id, sizeof(r.task_id));
    r.patch = patch;
    r.if_match = 1;
    r.correlation_id = "c2";
    assert_int_equal(task_store_execute(f->store, &r), 0);
    assert_int_equal(r.outcome, STORE_DONE);
    assert_int_equal(r.result.version, 2);
    assert_string_equal(r.result.title, "new title");
    store_request_release(&r);
    /* the same values again: no change, no event */
    store_request_init(&r, STORE_UPDATE);
    util_strlcpy(r.task_id, c.task_id, sizeof(r.task_id));
    r.patch = patch;
    r.correlation_id = "c2";
    assert_int_equal(task_store_execute(f->store, &r), 0);
    assert_int_equal(r.outcome, STORE_UNCHANGED);
    store_request_release(&r);
    json_decref(patch);
    /* complete twice: one event */
    for (int i = 0; i < 2; i++) {
        store_request_init(&r, STORE_COMPLETE);
        util_strlcpy(r.task_id, c.task_id, sizeof(r.task_id));
        r.correlation_id = "c3";
        assert_int_equal(task_store_execute(f->store, &r), 0);
        assert_int_equal(r.outcome, i == 0 ? STORE_DONE : STORE_UNCHANGED);
        assert_int_equal(r.result.completed, 1);
        store_request_release(&r);
    }
    /* delete, then it is gone */
    store_request_init(&r, STORE_DELETE);
    util_strlcpy(r.task_id, c.task_id, sizeof(r.task_id));
    r.correlation_id = "c4";
    assert_int_equal(task_store_execute(f->store, &r), 0);
    assert_int_equal(r.outcome, STORE_DONE);
    store_request_release(&r);
    store_request_init(&r, STORE_DELETE);
    util_strlcpy(r.task_id, c.task_id, sizeof(r.task_id));
    assert_int_equal(task_store_execute(f->store, &r), 0);
    assert_int_equal(r.outcome, STORE_NOT_FOUND);
    store_request_release(&r);
    char err[256];
    task t = TASK_INIT;
    assert_int_equal(task_store_get(f->store, c.task_id, &t, err, sizeof(err)), 0);

    event evs[8];
    size_t n = read_events(f, evs, 8);
    assert_int_equal(n, 4);
    assert_string_equal(evs[0].event_type, "task.created");
    assert_string_equal(evs[1].event_type, "task.updated");
    assert_string_equal(evs[2].event_type, "task.completed");
    assert_string_equal(evs[3].event_type, "task.deleted");
    json_t *changes = json_object_get(evs[1].data, "changes");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(changes, "title"), "old")), "old title");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(changes, "title"), "new")), "new title");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(changes, "priority"), "old")), 2);
    assert_string_equal(evs[3].correlation_id, "c4");
    /* the task's own history survives its deletion */
    json_t *history;
    assert_int_equal(task_store_events(f->store, c.task_id, &history, err, sizeof(err)), 1);
    assert_int_equal(json_array_size(history), 4);
    json_decref(history);
    release_events(evs, n);
    store_request_release(&c);
}

static char *render_fixed(const store_request *sr, int *status)
{
    *status = 201;
    char buf[128];
    snprintf(buf, sizeof(buf), "{\"id\":\"%s\"}", sr->result.id);
    return xstrdup(buf);
}

static void test_idempotency_keys(void **state)
{
    fixture *f = *state;
    char first_body[128] = "";
    for (int i = 0; i < 3; i++) {
        store_request sr;
        store_request_init(&sr, STORE_CREATE);
        event_uuid_v7(sr.task_id);
        sr.input.title = "t";
        sr.input.owner_id = "o";
        sr.correlation_id = "c";
        sr.idempotency_key = "key-1";
        sr.request_hash = i < 2 ? "hash-a" : "hash-b";
        sr.render = render_fixed;
        char err[256];
        assert_int_equal(store_prepare_create(&sr, err, sizeof(err)), 0);
        assert_int_equal(task_store_execute(f->store, &sr), 0);
        if (i == 0) {
            assert_int_equal(sr.outcome, STORE_DONE);
            snprintf(first_body, sizeof(first_body), "{\"id\":\"%s\"}", sr.task_id);
        } else if (i == 1) {
            assert_int_equal(sr.outcome, STORE_REPLAYED);
            assert_int_equal(sr.replay_status, 201);
            assert_string_equal(sr.replay_body, first_body);
        } else {
            assert_int_equal(sr.outcome, STORE_KEY_REUSED);
        }
        memset(&sr.input, 0, sizeof(sr.input));
        store_request_release(&sr);
    }
    event evs[4];
    assert_int_equal(read_events(f, evs, 4), 1); /* one task, one event */
    release_events(evs, 1);
}

typedef struct worker {
    fixture *f;
    int count;
} worker;

static void *create_many(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->count; i++) {
        store_request sr;
        create(w->f, "concurrent", "load", &sr);
        assert_int_equal(sr.outcome, STORE_DONE);
        store_request_release(&sr);
    }
    return NULL;
}

static void test_group_commit_shares_transactions(void **state)
{
    fixture *f = *state;
    enum { THREADS = 16, EACH = 40 };
    pthread_t th[THREADS];
    worker w = {f, EACH};
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, create_many, &w);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    uint64_t batches, requests;
    task_store_stats(f->store, &batches, &requests);
    assert_int_equal(requests, THREADS * EACH);
    /* concurrent requests were committed together */
    assert_true(batches < requests);
    /* every task has exactly its one event */
    task *tasks;
    size_t n;
    int more;
    char err[256];
    assert_int_equal(
        task_store_list(f->store, NULL, NULL, NULL, 500, &tasks, &n, &more, err, sizeof(err)), 0);
    for (size_t i = 0; i < n; i++)
        task_release(&tasks[i]);
    free(tasks);
    assert_int_equal(n, 500); /* a full first page, and more behind it */
    assert_int_equal(more, 1);
    assert_int_equal(read_events(f, NULL, 0), THREADS * EACH);
}

static void test_list_filters_and_pages(void **state)
{
    fixture *f = *state;
    store_request sr;
    char ids[5][TASK_ID_MAX + 1];
    for (int i = 0; i < 5; i++) {
        create(f, "t", "c", &sr);
        util_strlcpy(ids[i], sr.task_id, sizeof(ids[i]));
        store_request_release(&sr);
    }
    store_request_init(&sr, STORE_COMPLETE);
    util_strlcpy(sr.task_id, ids[1], sizeof(sr.task_id));
    assert_int_equal(task_store_execute(f->store, &sr), 0);
    store_request_release(&sr);
    task *tasks;
    size_t n;
    int more;
    char err[256];
    assert_int_equal(
        task_store_list(f->store, "user-456", "open", NULL, 2, &tasks, &n, &more, err, sizeof(err)),
        0);
    assert_int_equal(n, 2);
    assert_int_equal(more, 1);
    assert_string_equal(tasks[0].id, ids[0]);
    assert_string_equal(tasks[1].id, ids[2]); /* ids[1] is completed */
    char after[TASK_ID_MAX + 1];
    util_strlcpy(after, tasks[1].id, sizeof(after));
    for (size_t i = 0; i < n; i++)
        task_release(&tasks[i]);
    free(tasks);
    assert_int_equal(task_store_list(f->store, "user-456", "open", after, 2, &tasks, &n, &more, err,
                                     sizeof(err)),
                     0);
    assert_int_equal(n, 2);
    assert_int_equal(more, 0);
    assert_string_equal(tasks[1].id, ids[4]);
    for (size_t i = 0; i < n; i++)
        task_release(&tasks[i]);
    free(tasks);
    assert_int_equal(
        task_store_list(f->store, "nobody", NULL, NULL, 10, &tasks, &n, &more, err, sizeof(err)),
        0);
    assert_int_equal(n, 0);
    free(tasks);
    assert_int_equal(
        task_store_list(f->store, NULL, "completed", NULL, 10, &tasks, &n, &more, err, sizeof(err)),
        0);
    assert_int_equal(n, 1);
    assert_string_equal(tasks[0].id, ids[1]);
    task_release(&tasks[0]);
    free(tasks);
}

/* The JSON text of a task's history (GET /tasks/{id}/events). */
static char *history_text(fixture *f, const char *id)
{
    char err[256];
    json_t *events = NULL;
    assert_int_equal(task_store_events(f->store, id, &events, err, sizeof(err)), 1);
    char *text = json_dumps(events, JSON_COMPACT);
    json_decref(events);
    return text;
}

/* One integer from bus.db (a query on a connection of the test's own). */
static int64_t query_int(fixture *f, const char *sql)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/bus.db", f->dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/*
 * A task's history refers to the log's rows instead of holding the events
 * twice, and still outlives the log's retention: the trigger copies each
 * event into task_events before its log row is deleted.
 */
static void test_history_outlives_log_retention(void **state)
{
    fixture *f = *state;
    store_request a, b, done;
    create(f, "first", "h1", &a);
    create(f, "second", "h2", &b);
    store_request_init(&done, STORE_COMPLETE);
    util_strlcpy(done.task_id, a.task_id, sizeof(done.task_id));
    done.correlation_id = "h3";
    assert_int_equal(task_store_execute(f->store, &done), 0);
    assert_int_equal(done.outcome, STORE_DONE);
    char *before_a = history_text(f, a.task_id);
    char *before_b = history_text(f, b.task_id);
    assert_non_null(strstr(before_a, "task.completed"));
    /* three events, each once: in the log, referred to from task_events */
    assert_int_equal(query_int(f, "SELECT count(*) FROM t_1"), 3);
    assert_int_equal(
        query_int(f, "SELECT count(*) FROM task_events WHERE event = '' AND log_id IS NOT NULL"),
        3);

    util_sleep_us(20000);
    char err[256];
    bus_log *log = bus_log_open(&f->cfg, err, sizeof(err));
    assert_non_null(log);
    int64_t deleted = 0;
    assert_int_equal(bus_log_retention_run(log, 1, &deleted, err, sizeof(err)), 0);
    bus_log_close(log);
    /* retention keeps the newest row (offsets never restart): task a's
     * history is now one copied event and one still in the log */
    assert_int_equal(deleted, 2);
    assert_int_equal(query_int(f, "SELECT count(*) FROM t_1"), 1);
    assert_int_equal(
        query_int(f, "SELECT count(*) FROM task_events WHERE event <> '' AND log_id IS NULL"), 2);
    assert_int_equal(query_int(f, "SELECT count(*) FROM task_events WHERE log_id IS NOT NULL"), 1);
    char *after_a = history_text(f, a.task_id);
    char *after_b = history_text(f, b.task_id);
    assert_string_equal(after_a, before_a);
    assert_string_equal(after_b, before_b);
    free(before_a);
    free(before_b);
    free(after_a);
    free(after_b);
    store_request_release(&a);
    store_request_release(&b);
    store_request_release(&done);
}

/* A database from before log_id: its histories read as they were, and new
 * events are referred to. */
static void test_history_of_an_older_database(void **state)
{
    fixture *f = *state;
    task_store_close(f->store);
    char path[128];
    snprintf(path, sizeof(path), "%s/bus.db", f->dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TABLE task_events;"
                                  "CREATE TABLE task_events(task_id TEXT NOT NULL, seq INTEGER "
                                  "NOT NULL, event TEXT NOT NULL, PRIMARY KEY(task_id, seq)) "
                                  "WITHOUT ROWID;"
                                  "INSERT INTO task_events VALUES('old-task', 1, "
                                  "'{\"event_type\":\"task.created\",\"n\":1}');",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    char err[256];
    f->store = task_store_open(&f->cfg, err, sizeof(err));
    assert_non_null(f->store);
    char *old = history_text(f, "old-task");
    assert_string_equal(old, "[{\"event_type\":\"task.created\",\"n\":1}]");
    free(old);
    store_request c;
    create(f, "new", "o1", &c);
    char *fresh = history_text(f, c.task_id);
    assert_non_null(strstr(fresh, "\"title\":\"new\""));
    assert_int_equal(query_int(f, "SELECT count(*) FROM task_events WHERE log_id IS NOT NULL"), 1);
    free(fresh);
    store_request_release(&c);
}

int main(void)
{
    log_threshold = LOG_LEVEL_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_stores_task_and_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_created_event_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_complete_delete_and_their_events, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_shares_transactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_filters_and_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_outlives_log_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_of_an_older_database, setup, teardown),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
