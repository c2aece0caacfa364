/*
 * test_runtime.c - unit tests of the agent runtime (runtime.h) on a real
 * embedded event log in a temporary directory, with a test agent whose
 * behaviour each event chooses through data.mode:
 *   "ok"            handled; emits test.handled (and test.followed caused by it)
 *   "retry:N"       AGENT_RETRY for the first N attempts, then ok
 *   "fail"          AGENT_FAIL
 *   "retry"         AGENT_RETRY forever
 *   "ra:N"          AGENT_RETRY with a Retry-After of 1 ms for N attempts
 * The agent counts its calls per event so the tests can see exactly what
 * the runtime did.
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
#include "runtime/runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct test_agent {
    int calls; /* handler calls in all */
    int calls_by_id[64];
    char ids[64][EVENT_UUID_LEN + 1];
    int id_count;
    int destroyed;
    int64_t timer_at; /* -1: none */
    int timer_fired;
    const char *timer_parent; /* traceparent the timer's event descends from */
} test_agent;

typedef struct fixture {
    char dir[256];
    bus_config cfg;
    bus_producer *producer;
    test_agent agent;
} fixture;

static int calls_for(test_agent *a, const char *id)
{
    for (int i = 0; i < a->id_count; i++)
        if (strcmp(a->ids[i], id) == 0)
            return a->calls_by_id[i];
    return 0;
}

static agent_outcome test_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                 size_t reasonlen)
{
    test_agent *a = state;
    a->calls++;
    int slot = -1;
    for (int i = 0; i < a->id_count; i++)
        if (strcmp(a->ids[i], ev->event_id) == 0)
            slot = i;
    if (slot < 0 && a->id_count < 64) {
        slot = a->id_count++;
        strcpy(a->ids[slot], ev->event_id);
    }
    if (slot >= 0)
        a->calls_by_id[slot]++;
    const char *mode = json_string_value(json_object_get(ev->data, "mode"));
    if (!mode)
        mode = "ok";
    if (strcmp(mode, "fail") == 0) {
        snprintf(reason, reasonlen, "test failure");
        return AGENT_FAIL;
    }
    int retry_after = strncmp(mode, "ra:", 3) == 0 && agent_ctx_attempt(ctx) <= atoi(mode + 3);
    if (strcmp(mode, "retry") == 0 || retry_after ||
        (strncmp(mode, "retry:", 6) == 0 && agent_ctx_attempt(ctx) <= atoi(mode + 6))) {
        char id[EVENT_UUID_LEN + 1];
        char err[256];
        /* emitted in a failing attempt: must never be published */
        json_t *d = json_pack("{s:s}", "task_id", "lost");
        assert_int_equal(agent_emit(ctx, "test.lost", d, NULL, NULL, id, err, sizeof(err)), 0);
        json_decref(d);
        snprintf(reason, reasonlen, "try later");
        if (retry_after)
            agent_retry_after(ctx, 1);
        return AGENT_RETRY;
    }
    char first[EVENT_UUID_LEN + 1], err[256];
    json_t *d = json_pack("{s:s}", "task_id", "t-1");
    assert_int_equal(agent_emit(ctx, "test.handled", d, NULL, NULL, first, err, sizeof(err)), 0);
    assert_int_equal(agent_emit(ctx, "test.followed", d, NULL, first, NULL, err, sizeof(err)), 0);
    /* a cause that is not an event of this input is refused */
    assert_int_equal(
        agent_emit(ctx, "test.followed", d, NULL, ev->event_id, NULL, err, sizeof(err)), -1);
    json_decref(d);
    if (agent_ctx_db(ctx)) { /* in_transaction variant: write a row */
        char sql[200];
        snprintf(sql, sizeof(sql), "INSERT INTO test_rows VALUES ('%s')", ev->event_id);
        assert_int_equal(sqlite3_exec(agent_ctx_db(ctx), sql, NULL, NULL, NULL), SQLITE_OK);
    }
    return AGENT_OK;
}

static agent_outcome test_handle_in_txn(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                        size_t reasonlen)
{
    char sql[200];
    snprintf(sql, sizeof(sql), "INSERT INTO test_rows VALUES ('pre-%s')", ev->event_id);
    assert_int_equal(sqlite3_exec(agent_ctx_db(ctx), sql, NULL, NULL, NULL), SQLITE_OK);
    return test_handle(state, ctx, ev, reason, reasonlen);
}

static int test_setup_hook(void *state, sqlite3 *db, char *err, size_t errlen)
{
    return sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS test_rows (id TEXT)", NULL, NULL, NULL) ==
                   SQLITE_OK
               ? 0
               : util_error(err, errlen, "cannot create test_rows");
}

static int64_t test_next_timer(void *state, sqlite3 *db)
{
    return ((test_agent *)state)->timer_at;
}

static int test_fire(void *state, agent_ctx *ctx, int64_t now, char *err, size_t errlen)
{
    test_agent *a = state;
    json_t *d = json_pack("{s:s}", "task_id", "timer");
    int rc = agent_emit_with(ctx, "test.fired", d, NULL, "corr-timer", "cause-timer",
                             a->timer_parent, NULL, NULL, err, errlen);
    json_decref(d);
    a->timer_at = -1;
    a->timer_fired++;
    return rc;
}

static void test_destroy(void *state)
{
    ((test_agent *)state)->destroyed++;
}

static const char *const topics[] = {"task-events"};
static const char *const types[] = {"task.created"};

static agent_def make_def(fixture *f)
{
    agent_def d = AGENT_DEF_INIT;
    d.name = "tester";
    d.group = "test-group";
    d.topics = topics;
    d.topic_count = 1;
    d.types = types;
    d.type_count = 1;
    d.handle = test_handle;
    d.setup = test_setup_hook;
    d.next_timer = test_next_timer;
    d.fire_timers = test_fire;
    d.destroy = test_destroy;
    d.state = &f->agent;
    return d;
}

static agent_runtime *open_rt(fixture *f, agent_def *d, int attempts)
{
    runtime_retry retry = {attempts, 1, 2};
    char err[512] = "";
    agent_runtime *rt = agent_runtime_open(&f->cfg, d, &retry, err, sizeof(err));
    if (!rt)
        fail_msg("agent_runtime_open: %s", err);
    return rt;
}

static int setup(void **state)
{
    fixture *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/herald-test-runtime-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = f->dir;
    cfg.retention_ms = 0;
    cfg.synchronous_full = 0;
    f->cfg = cfg;
    f->agent.timer_at = -1;
    char err[256];
    f->producer = bus_producer_open(&f->cfg, err, sizeof(err));
    assert_non_null(f->producer);
    log_threshold = LOG_LEVEL_OFF;
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

/* Publish an event of type with data {"mode": mode}; its id into id_out. */
static void publish_event(fixture *f, const char *type, const char *mode, char *id_out)
{
    event ev = EVENT_INIT;
    char err[256];
    json_t *data = json_pack("{s:s, s:s}", "task_id", "t-1", "mode", mode);
    assert_int_equal(event_build(&ev, type, data, "corr-1", NULL, "test", err, sizeof(err)), 0);
    json_decref(data);
    size_t len;
    char *value = event_encode(&ev, &len);
    bus_record r = BUS_RECORD_INIT;
    r.topic = "task-events";
    r.key = "t-1";
    r.key_len = 3;
    r.value = value;
    r.value_len = len;
    assert_int_equal(bus_produce(f->producer, &r, 1, NULL, err, sizeof(err)), 0);
    if (id_out)
        strcpy(id_out, ev.event_id);
    free(value);
    event_release(&ev);
}

/* As publish_event() with the envelope headers herald's producers add. */
static void publish_with_headers(fixture *f, const char *type, char *id_out)
{
    event ev = EVENT_INIT;
    char err[256];
    json_t *data = json_pack("{s:s, s:s}", "task_id", "t-1", "mode", "ok");
    assert_int_equal(event_build(&ev, type, data, "corr-h", NULL, "test", err, sizeof(err)), 0);
    json_decref(data);
    size_t len;
    char *value = event_encode(&ev, &len);
    bus_header h[BUS_ENVELOPE_HEADERS];
    char timebuf[EVENT_TIME_LEN + 1];
    bus_record r = BUS_RECORD_INIT;
    r.topic = "task-events";
    r.value = value;
    r.value_len = len;
    r.headers = h;
    r.header_count = bus_envelope_headers(&ev, h, timebuf);
    assert_int_equal(bus_produce(f->producer, &r, 1, NULL, err, sizeof(err)), 0);
    strcpy(id_out, ev.event_id);
    free(value);
    event_release(&ev);
}

static int raw_calls, raw_without_data;

static agent_outcome raw_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                size_t reasonlen)
{
    raw_calls++;
    raw_without_data += ev->data == NULL;
    /* the record is there either way */
    assert_non_null(strstr(agent_ctx_message(ctx)->value, ev->event_id));
    return AGENT_OK;
}

static void publish_raw(fixture *f, const char *value)
{
    char err[256];
    bus_record r = BUS_RECORD_INIT;
    r.topic = "task-events";
    r.value = value;
    r.value_len = strlen(value);
    assert_int_equal(bus_produce(f->producer, &r, 1, NULL, err, sizeof(err)), 0);
}

/* Every record of topic, as a JSON array of {"key","value","headers"...}. */
typedef struct seen_record {
    char value[2048];
    char key[64];
    char reason[256], group[64], attempts[16], topic[64], offset[16];
} seen_record;

static size_t read_topic(fixture *f, const char *topic, seen_record *out, size_t max)
{
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.topics = &topic;
    sub.topic_count = 1;
    char err[256];
    bus_consumer *c = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    assert_non_null(c);
    size_t count = 0;
    for (;;) {
        const bus_message *m;
        size_t n;
        assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
        if (n == 0)
            break;
        for (size_t i = 0; i < n && count < max; i++, count++) {
            seen_record *s = &out[count];
            memset(s, 0, sizeof(*s));
            snprintf(s->value, sizeof(s->value), "%.*s", (int)m[i].value_len, m[i].value);
            if (m[i].key)
                snprintf(s->key, sizeof(s->key), "%s", m[i].key);
            const char *names[] = {RUNTIME_DLQ_REASON, RUNTIME_DLQ_GROUP, RUNTIME_DLQ_ATTEMPTS,
                                   RUNTIME_DLQ_TOPIC, RUNTIME_DLQ_OFFSET};
            char *dst[] = {s->reason, s->group, s->attempts, s->topic, s->offset};
            size_t caps[] = {sizeof(s->reason), sizeof(s->group), sizeof(s->attempts),
                             sizeof(s->topic), sizeof(s->offset)};
            for (int h = 0; h < 5; h++) {
                const char *v;
                size_t vl;
                if (bus_message_header(&m[i], names[h], &v, &vl))
                    snprintf(dst[h], caps[h], "%.*s", (int)vl, v);
            }
        }
    }
    bus_consumer_close(c);
    return count;
}

static void step(agent_runtime *rt)
{
    char err[512] = "";
    if (agent_runtime_step(rt, 0, NULL, err, sizeof(err)) != 0)
        fail_msg("agent_runtime_step: %s", err);
}

static void decode(const char *value, event *ev)
{
    char err[256];
    assert_int_equal(event_decode(ev, value, strlen(value), err, sizeof(err)), 0);
}

static void test_derived_events_carry_correlation_and_causation(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 3);
    char id[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "ok", id);
    step(rt);
    seen_record recs[8];
    assert_int_equal(read_topic(f, "test-events", recs, 8), 2);
    event a = EVENT_INIT, b = EVENT_INIT;
    decode(recs[0].value, &a);
    decode(recs[1].value, &b);
    assert_string_equal(a.event_type, "test.handled");
    assert_string_equal(a.correlation_id, "corr-1");
    assert_string_equal(a.causation_id, id);
    assert_string_equal(a.source, "tester");
    assert_string_equal(recs[0].key, "t-1");
    assert_string_equal(b.event_type, "test.followed");
    assert_string_equal(b.causation_id, a.event_id);
    assert_string_equal(b.correlation_id, "corr-1");
    event_release(&a);
    event_release(&b);
    runtime_stats s;
    agent_runtime_stats(rt, &s);
    assert_int_equal(s.handled, 1);
    assert_int_equal(s.emitted, 2);
    agent_runtime_close(rt);
    assert_int_equal(f->agent.destroyed, 1);
}

static void test_redelivered_event_is_handled_once(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 3);
    char id[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "ok", id);
    step(rt);
    /* the same envelope published again (a producer retry, a replay) */
    seen_record recs[4];
    assert_int_equal(read_topic(f, "task-events", recs, 4), 1);
    publish_raw(f, recs[0].value);
    publish_raw(f, recs[0].value);
    step(rt);
    assert_int_equal(calls_for(&f->agent, id), 1);
    runtime_stats s;
    agent_runtime_stats(rt, &s);
    assert_int_equal(s.duplicates, 2);
    /* and after a restart of the agent as well */
    agent_runtime_close(rt);
    rt = open_rt(f, &d, 3);
    publish_raw(f, recs[0].value);
    step(rt);
    assert_int_equal(calls_for(&f->agent, id), 1);
    seen_record out[8];
    assert_int_equal(read_topic(f, "test-events", out, 8), 2);
    agent_runtime_close(rt);
}

static void test_retry_then_success_publishes_only_the_successful_attempt(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 5);
    char id[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "retry:2", id);
    step(rt);
    assert_int_equal(calls_for(&f->agent, id), 3);
    runtime_stats s;
    agent_runtime_stats(rt, &s);
    assert_int_equal(s.retried, 2);
    assert_int_equal(s.handled, 1);
    assert_int_equal(s.dead_lettered, 0);
    seen_record recs[8];
    assert_int_equal(read_topic(f, "test-events", recs, 8), 2);
    for (int i = 0; i < 2; i++)
        assert_null(strstr(recs[i].value, "test.lost"));
    agent_runtime_close(rt);
}

static void test_permanent_failure_goes_to_dlq_and_moves_on(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 5);
    char bad[EVENT_UUID_LEN + 1], good[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "fail", bad);
    publish_event(f, "task.created", "ok", good);
    step(rt);
    assert_int_equal(calls_for(&f->agent, bad), 1);
    assert_int_equal(calls_for(&f->agent, good), 1);
    seen_record dlq[4];
    assert_int_equal(read_topic(f, "task-events.dlq", dlq, 4), 1);
    assert_non_null(strstr(dlq[0].value, bad));
    assert_string_equal(dlq[0].key, "t-1");
    assert_string_equal(dlq[0].reason, "test failure");
    assert_string_equal(dlq[0].group, "test-group");
    assert_string_equal(dlq[0].attempts, "1");
    assert_string_equal(dlq[0].topic, "task-events");
    assert_string_equal(dlq[0].offset, "1");
    /* committed: a new runtime of the group reads nothing again */
    agent_runtime_close(rt);
    rt = open_rt(f, &d, 5);
    step(rt);
    assert_int_equal(calls_for(&f->agent, bad), 1);
    assert_int_equal(read_topic(f, "task-events.dlq", dlq, 4), 1);
    agent_runtime_close(rt);
}

static void test_retries_exhausted_go_to_dlq_with_attempts(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 3);
    char id[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "retry", id);
    step(rt);
    assert_int_equal(calls_for(&f->agent, id), 3);
    seen_record dlq[4];
    assert_int_equal(read_topic(f, "task-events.dlq", dlq, 4), 1);
    assert_string_equal(dlq[0].attempts, "3");
    assert_non_null(strstr(dlq[0].reason, "gave up after 3 attempts: try later"));
    seen_record out[4];
    assert_int_equal(read_topic(f, "test-events", out, 4), 0);
    agent_runtime_close(rt);
}

static void test_invalid_envelope_goes_to_dlq_unchanged(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 3);
    publish_raw(f, "{\"not\": \"an envelope\"");
    publish_raw(f, "{\"event_type\": \"task.created\"}");
    step(rt);
    assert_int_equal(f->agent.calls, 0);
    seen_record dlq[4];
    assert_int_equal(read_topic(f, "task-events.dlq", dlq, 4), 2);
    assert_string_equal(dlq[0].value, "{\"not\": \"an envelope\"");
    assert_non_null(strstr(dlq[0].reason, "invalid envelope"));
    assert_non_null(strstr(dlq[1].reason, "event_id"));
    agent_runtime_close(rt);
}

static void test_other_types_are_skipped_and_committed(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 3);
    publish_event(f, "task.completed", "fail", NULL);
    step(rt);
    assert_int_equal(f->agent.calls, 0);
    runtime_stats s;
    agent_runtime_stats(rt, &s);
    assert_int_equal(s.skipped, 1);
    seen_record dlq[4];
    assert_int_equal(read_topic(f, "task-events.dlq", dlq, 4), 0);
    agent_runtime_close(rt);
}

static void test_in_transaction_handler_rolls_back_its_rows_on_failure(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    d.handle = test_handle_in_txn;
    d.in_transaction = 1;
    agent_runtime *rt = open_rt(f, &d, 3);
    char ok[EVENT_UUID_LEN + 1], bad[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "ok", ok);
    publish_event(f, "task.created", "fail", bad);
    step(rt);
    bus_log *log = bus_log_open(&f->cfg, (char[256]){0}, 256);
    assert_non_null(log);
    sqlite3_stmt *st;
    assert_int_equal(
        sqlite3_prepare_v2(bus_log_db(log), "SELECT id FROM test_rows ORDER BY id", -1, &st, NULL),
        SQLITE_OK);
    char expect_pre[64];
    snprintf(expect_pre, sizeof(expect_pre), "pre-%s", ok);
    int rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        assert_true(strcmp(v, ok) == 0 || strcmp(v, expect_pre) == 0);
        rows++;
    }
    sqlite3_finalize(st);
    bus_log_close(log);
    assert_int_equal(rows, 2); /* the failing handler's row was rolled back */
    seen_record dlq[4];
    assert_int_equal(read_topic(f, "task-events.dlq", dlq, 4), 1);
    assert_non_null(strstr(dlq[0].value, bad));
    agent_runtime_close(rt);
}

static void test_due_timer_fires_in_a_transaction(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 3);
    f->agent.timer_at = util_now_ms() + 50;
    f->agent.timer_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    step(rt); /* the poll waits for the timer instead of the idle timeout */
    char err[256] = "";
    for (int i = 0; i < 100 && !f->agent.timer_fired; i++)
        assert_int_equal(agent_runtime_step(rt, 1000, NULL, err, sizeof(err)), 0);
    assert_int_equal(f->agent.timer_fired, 1);
    seen_record out[4];
    assert_int_equal(read_topic(f, "test-events", out, 4), 1);
    event ev = EVENT_INIT;
    decode(out[0].value, &ev);
    assert_string_equal(ev.event_type, "test.fired");
    assert_string_equal(ev.correlation_id, "corr-timer");
    assert_string_equal(ev.causation_id, "cause-timer");
    /* a child span of the parent the timer named: same trace, own span */
    assert_int_equal(strlen(ev.traceparent), TRACE_PARENT_LEN);
    assert_memory_equal(ev.traceparent, f->agent.timer_parent, 36);
    assert_memory_not_equal(ev.traceparent + 36, f->agent.timer_parent + 36, 16);
    event_release(&ev);
    agent_runtime_close(rt);
}

typedef struct stop_arg {
    agent_runtime *rt;
} stop_arg;

static void *stop_soon(void *arg)
{
    util_sleep_us(200000);
    agent_runtime_stop(((stop_arg *)arg)->rt);
    return NULL;
}

static void test_stop_during_backoff_leaves_the_event_uncommitted(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    runtime_retry retry = {10, 60000, 60000}; /* a long backoff */
    char err[512];
    agent_runtime *rt = agent_runtime_open(&f->cfg, &d, &retry, err, sizeof(err));
    assert_non_null(rt);
    char first[EVENT_UUID_LEN + 1], stuck[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "ok", first);
    publish_event(f, "task.created", "retry:1", stuck);
    pthread_t th;
    stop_arg a = {rt};
    pthread_create(&th, NULL, stop_soon, &a);
    assert_int_equal(agent_runtime_run(rt), 0);
    pthread_join(th, NULL);
    assert_int_equal(calls_for(&f->agent, first), 1);
    agent_runtime_close(rt);
    /* a new runtime starts with the unsettled event, not after it */
    rt = open_rt(f, &d, 3);
    step(rt);
    assert_int_equal(calls_for(&f->agent, first), 1);
    assert_true(calls_for(&f->agent, stuck) >= 2);
    seen_record dlq[4];
    assert_int_equal(read_topic(f, "task-events.dlq", dlq, 4), 0);
    agent_runtime_close(rt);
}

static void test_retry_after_replaces_the_backoff(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    runtime_retry retry = {5, 600000, 600000}; /* the backoff alone would take minutes */
    char err[512];
    agent_runtime *rt = agent_runtime_open(&f->cfg, &d, &retry, err, sizeof(err));
    assert_non_null(rt);
    char id[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "ra:2", id);
    int64_t start = util_monotonic_ns();
    step(rt);
    assert_int_equal(calls_for(&f->agent, id), 3);
    assert_true(util_monotonic_ns() - start < 60LL * 1000000000);
    agent_runtime_close(rt);
}

static void test_raw_agents_route_by_headers_without_parsing(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    d.handle = raw_handle;
    d.raw_events = 1;
    agent_runtime *rt = open_rt(f, &d, 3);
    char first[EVENT_UUID_LEN + 1], plain[EVENT_UUID_LEN + 1], other[EVENT_UUID_LEN + 1];
    char last[EVENT_UUID_LEN + 1];
    publish_with_headers(f, "task.created", first);
    publish_event(f, "task.created", "ok", plain);    /* no headers: parsed */
    publish_with_headers(f, "task.completed", other); /* not a handled type */
    publish_with_headers(f, "task.created", last);
    seen_record recs[8];
    assert_int_equal(read_topic(f, "task-events", recs, 8), 4);
    publish_raw(f, recs[0].value); /* the first again, without headers */
    raw_calls = raw_without_data = 0;
    step(rt);
    assert_int_equal(raw_calls, 3); /* first, plain, last */
    runtime_stats s;
    agent_runtime_stats(rt, &s);
    assert_int_equal(s.skipped, 1);
    assert_int_equal(s.duplicates, 1);     /* the headerless copy of the first */
    assert_int_equal(raw_without_data, 2); /* first and last were not parsed */
    assert_int_equal(runtime_event_handled(NULL, "x", "not-a-uuid"), 0);
    agent_runtime_close(rt);
}

static void test_handled_events_are_visible_to_tools(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    agent_runtime *rt = open_rt(f, &d, 3);
    char id[EVENT_UUID_LEN + 1], failed[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "ok", id);
    publish_event(f, "task.created", "fail", failed);
    step(rt);
    bus_log *log = bus_log_open(&f->cfg, (char[256]){0}, 256);
    assert_non_null(log);
    assert_int_equal(runtime_event_handled(bus_log_db(log), "test-group", id), 1);
    assert_int_equal(runtime_event_handled(bus_log_db(log), "test-group", failed), 0);
    assert_int_equal(runtime_event_handled(bus_log_db(log), "other-group", id), 0);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(bus_log_db(log),
                                        "SELECT group_name, event_id FROM agent_processed", -1, &st,
                                        NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "test-group");
    assert_string_equal((const char *)sqlite3_column_text(st, 1), id);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    bus_log_close(log);
    agent_runtime_close(rt);
}

static int hook_calls, hook_failures_left;

static int flaky_before_commit(void *state, char *err, size_t errlen)
{
    hook_calls++;
    if (hook_failures_left > 0) {
        hook_failures_left--;
        return util_error(err, errlen, "disk full");
    }
    return 0;
}

static void test_failed_before_commit_commits_nothing(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    d.before_commit = flaky_before_commit;
    agent_runtime *rt = open_rt(f, &d, 3);
    char id[EVENT_UUID_LEN + 1];
    publish_event(f, "task.created", "ok", id);
    hook_calls = 0;
    hook_failures_left = 1;
    char err[512] = "";
    assert_int_equal(agent_runtime_step(rt, 0, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "disk full"));
    seen_record out[4];
    assert_int_equal(read_topic(f, "test-events", out, 4), 0); /* nothing derived */
    /* the batch is read again and handled again; this time it commits */
    step(rt);
    assert_int_equal(calls_for(&f->agent, id), 2);
    assert_int_equal(hook_calls, 2);
    assert_int_equal(read_topic(f, "test-events", out, 4), 2);
    step(rt);
    assert_int_equal(calls_for(&f->agent, id), 2);
    agent_runtime_close(rt);
}

static void test_bad_definitions_are_refused(void **state)
{
    fixture *f = *state;
    agent_def d = make_def(f);
    d.group = NULL;
    char err[256] = "";
    assert_null(agent_runtime_open(&f->cfg, &d, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "group"));
    assert_int_equal(f->agent.destroyed, 1); /* state freed even on failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_derived_events_carry_correlation_and_causation, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redelivered_event_is_handled_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_retry_then_success_publishes_only_the_successful_attempt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_permanent_failure_goes_to_dlq_and_moves_on, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_retries_exhausted_go_to_dlq_with_attempts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_invalid_envelope_goes_to_dlq_unchanged, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_other_types_are_skipped_and_committed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_in_transaction_handler_rolls_back_its_rows_on_failure,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_due_timer_fires_in_a_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_during_backoff_leaves_the_event_uncommitted,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_after_replaces_the_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_agents_route_by_headers_without_parsing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_handled_events_are_visible_to_tools, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_before_commit_commits_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_definitions_are_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
