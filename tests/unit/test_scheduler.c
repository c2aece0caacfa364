/*
 * test_scheduler.c - unit tests for the pure parts of the reminder
 * scheduler (agents/scheduler.h): deterministic reminder ids (known values
 * computed independently with Python's hashlib), reminder times, and what
 * each task event asks of the scheduler, including every kind of bad data
 * that must be refused with a reason instead of crashing. Then the agent
 * itself on the real runtime and a temporary event log: events go in on
 * task-events, the test steps the runtime and reads reminder-events back
 * (due times in the past fire in the same step, so no test waits for a
 * clock except the one that waits for a short due time).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agents/agents.h"
#include "agents/scheduler.h"
#include "bus/bus.h"
#include "common/util.h"
#include "event/event.h"
#include "runtime/runtime.h"

/* 2030-01-01T08:00:00Z (Python: datetime(2030,1,1,8,tzinfo=utc).timestamp()). */
#define DUE_2030 INT64_C(1893484800000)
/* 2025-01-15T14:30:22.456Z */
#define SAMPLE_MS INT64_C(1736951422456)

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

/* ---- reminder ids ------------------------------------------------------- */

/* Values from: b = sha256(f"{task_id}\n{due_ms}".encode()).digest()[:16];
 * b[6] = b[6] & 0x0f | 0x80; b[8] = b[8] & 0x3f | 0x80; as 8-4-4-4-12 hex. */
static void test_reminder_id_known_values(void **unused)
{
    char id[EVENT_UUID_LEN + 1];
    scheduler_reminder_id("t-1", SAMPLE_MS, id);
    assert_string_equal(id, "40f8df8b-3b89-8451-9ccf-9330cc5e59e6");
    scheduler_reminder_id("01a212c9-bfb8-7302-b418-1619a3fa1429", DUE_2030, id);
    assert_string_equal(id, "aa7ceb15-f27f-8809-b524-b2bcbd287c03");
    scheduler_reminder_id("t-1", -1, id);
    assert_string_equal(id, "c7869584-16ed-88ff-b977-e0c2cb903324");
}

static void test_reminder_id_deterministic_and_distinct(void **unused)
{
    char a[EVENT_UUID_LEN + 1], b[EVENT_UUID_LEN + 1];
    scheduler_reminder_id("task-42", DUE_2030, a);
    scheduler_reminder_id("task-42", DUE_2030, b);
    assert_string_equal(a, b);
    assert_true(event_uuid_valid(a));
    assert_int_equal(a[14], '8');           /* version 8 */
    assert_non_null(strchr("89ab", a[19])); /* variant 10 */

    scheduler_reminder_id("task-42", DUE_2030 + 1, b); /* another due time */
    assert_string_not_equal(a, b);
    scheduler_reminder_id("task-43", DUE_2030, b); /* another task */
    assert_string_not_equal(a, b);
    /* the separator keeps "task-4" + "2..." apart from "task-42" + "..." */
    scheduler_reminder_id("task-4", 21893484800000, b);
    assert_string_not_equal(a, b);
}

/* The same due time written two ways is the same reminder. */
static void test_reminder_id_same_instant_other_spelling(void **unused)
{
    int64_t x, y;
    assert_int_equal(event_parse_time("2030-01-01T08:00:00Z", &x), 0);
    assert_int_equal(event_parse_time("2030-01-01T09:00:00.000+01:00", &y), 0);
    char a[EVENT_UUID_LEN + 1], b[EVENT_UUID_LEN + 1];
    scheduler_reminder_id("t", x, a);
    scheduler_reminder_id("t", y, b);
    assert_string_equal(a, b);
}

/* ---- reminder times ------------------------------------------------------ */

static void test_remind_at(void **unused)
{
    assert_true(scheduler_remind_at(DUE_2030, 0) == DUE_2030);
    assert_true(scheduler_remind_at(DUE_2030, 15 * 60 * 1000) == DUE_2030 - 900000);
    assert_true(scheduler_remind_at(DUE_2030, -5000) == DUE_2030); /* negative: 0 */
    /* before 1970 is fine: it is simply due at once */
    assert_true(scheduler_remind_at(1000, 5000) == -4000);
    /* never before year 0, never an overflow */
    int64_t year0 = INT64_C(-62167219200000);
    assert_true(scheduler_remind_at(year0, 1) == year0);
    assert_true(scheduler_remind_at(DUE_2030, INT64_MAX) == year0);
    assert_true(scheduler_remind_at(INT64_MIN, 0) == year0);
    char buf[EVENT_TIME_LEN + 1];
    event_format_time(scheduler_remind_at(DUE_2030, 3600 * 1000), buf);
    assert_string_equal(buf, "2030-01-01T07:00:00.000Z");
}

/* ---- intents ------------------------------------------------------------- */

typedef struct fixture {
    event ev;
    scheduler_intent in;
    char reason[256];
    int rc;
} fixture;

/* Parse an event of this type with this data (JSON text) into f. */
static void intent(fixture *f, const char *type, const char *data_json)
{
    json_error_t jerr;
    json_t *data = json_loads(data_json, 0, &jerr);
    if (!data)
        fail_msg("bad test JSON: %s", jerr.text);
    event_release(&f->ev);
    char err[256];
    assert_int_equal(event_build(&f->ev, type, data, "req-1", NULL, "task-api", err, sizeof(err)),
                     0);
    json_decref(data);
    f->reason[0] = '\0';
    f->rc = scheduler_intent_of(&f->ev, &f->in, f->reason, sizeof(f->reason));
}

static int setup_fixture(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    event init = EVENT_INIT;
    f->ev = init;
    *state = f;
    return 0;
}

static int teardown_fixture(void **state)
{
    fixture *f = *state;
    event_release(&f->ev);
    free(f);
    return 0;
}

static void assert_refused(fixture *f, const char *needle)
{
    assert_int_equal(f->rc, -1);
    assert_contains(f->reason, needle);
}

static void test_created_with_due(void **state)
{
    fixture *f = *state;
    intent(f, "task.created",
           "{\"task_id\":\"t-1\",\"title\":\"Report\",\"owner_id\":\"u-7\",\"priority\":2,"
           "\"due_at\":\"2030-01-01T08:00:00.000Z\",\"created_at\":\"2025-01-15T14:30:22.456Z\"}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_SET);
    assert_string_equal(f->in.task_id, "t-1");
    assert_string_equal(f->in.title, "Report");
    assert_string_equal(f->in.owner_id, "u-7");
    assert_true(f->in.due_ms == DUE_2030);
    assert_int_equal(f->in.only_if_new, 1);
}

static void test_created_without_due(void **state)
{
    fixture *f = *state;
    intent(f, "task.created", "{\"task_id\":\"t-1\",\"title\":\"Report\",\"owner_id\":\"u-7\"}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_NOTHING);
    intent(f, "task.created",
           "{\"task_id\":\"t-1\",\"title\":\"Report\",\"owner_id\":\"u-7\",\"due_at\":null}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_NOTHING);
    assert_int_equal(f->in.details_changed, 0);
}

static void test_created_bad_data(void **state)
{
    fixture *f = *state;
    intent(f, "task.created",
           "{\"title\":\"x\",\"owner_id\":\"u\",\"due_at\":\"2030-01-01T08:00:00Z\"}");
    assert_refused(f, "data.task_id");
    intent(f, "task.created", "{\"task_id\":\"\",\"title\":\"x\",\"owner_id\":\"u\"}");
    assert_refused(f, "data.task_id");
    intent(f, "task.created", "{\"task_id\":42,\"title\":\"x\",\"owner_id\":\"u\"}");
    assert_refused(f, "data.task_id");
    intent(f, "task.created",
           "{\"task_id\":\"t\",\"title\":\"x\",\"owner_id\":\"u\",\"due_at\":\"tomorrow\"}");
    assert_refused(f, "due_at is not an RFC 3339 timestamp");
    intent(f, "task.created",
           "{\"task_id\":\"t\",\"title\":\"x\",\"owner_id\":\"u\",\"due_at\":\"2030-02-30T08:00:"
           "00Z\"}");
    assert_refused(f, "due_at is not an RFC 3339 timestamp");
    intent(f, "task.created",
           "{\"task_id\":\"t\",\"title\":\"x\",\"owner_id\":\"u\",\"due_at\":17}");
    assert_refused(f, "due_at is not a string");
    intent(f, "task.created",
           "{\"task_id\":\"t\",\"owner_id\":\"u\",\"due_at\":\"2030-01-01T08:00:00Z\"}");
    assert_refused(f, "data.title");
    intent(f, "task.created",
           "{\"task_id\":\"t\",\"title\":\"x\",\"due_at\":\"2030-01-01T08:00:00Z\"}");
    assert_refused(f, "data.owner_id");
    /* jansson refuses \u0000 when decoding, so build such a string directly */
    json_t *data =
        json_pack("{s:s%, s:s, s:s}", "task_id", "a\0b", (size_t)3, "title", "x", "owner_id", "u");
    assert_non_null(data);
    char err[256];
    event_release(&f->ev);
    assert_int_equal(event_build(&f->ev, "task.created", data, NULL, NULL, "t", err, sizeof(err)),
                     0);
    json_decref(data);
    f->rc = scheduler_intent_of(&f->ev, &f->in, f->reason, sizeof(f->reason));
    assert_refused(f, "NUL");

    char big[600];
    char json[800];
    memset(big, 'x', 257);
    big[257] = '\0';
    snprintf(json, sizeof(json), "{\"task_id\":\"%s\",\"title\":\"x\",\"owner_id\":\"u\"}", big);
    intent(f, "task.created", json);
    assert_refused(f, "longer than 256");
    big[256] = '\0';
    snprintf(json, sizeof(json), "{\"task_id\":\"%s\",\"title\":\"x\",\"owner_id\":\"u\"}", big);
    intent(f, "task.created", json);
    assert_int_equal(f->rc, 0);
}

static void test_updated_due_changes(void **state)
{
    fixture *f = *state;
    intent(f, "task.updated",
           "{\"task_id\":\"t-1\",\"title\":\"R\",\"owner_id\":\"u\",\"priority\":2,"
           "\"due_at\":\"2030-01-01T08:00:00.000Z\",\"version\":2,"
           "\"changes\":{\"due_at\":{\"old\":null,\"new\":\"2030-01-01T08:00:00.000Z\"}}}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_SET);
    assert_true(f->in.due_ms == DUE_2030);
    assert_int_equal(f->in.only_if_new, 0);

    /* the due time removed */
    intent(f, "task.updated",
           "{\"task_id\":\"t-1\",\"title\":\"R\",\"owner_id\":\"u\",\"priority\":2,\"version\":3,"
           "\"changes\":{\"due_at\":{\"old\":\"2030-01-01T08:00:00.000Z\",\"new\":null}}}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_CLEAR);
    assert_string_equal(f->in.reason, "rescheduled");
    assert_string_equal(f->in.task_id, "t-1");
}

static void test_updated_other_changes(void **state)
{
    fixture *f = *state;
    intent(f, "task.updated",
           "{\"task_id\":\"t-1\",\"title\":\"R\",\"owner_id\":\"u\",\"priority\":3,\"version\":2,"
           "\"due_at\":\"2030-01-01T08:00:00.000Z\","
           "\"changes\":{\"priority\":{\"old\":2,\"new\":3}}}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_NOTHING);
    assert_int_equal(f->in.details_changed, 0);

    intent(f, "task.updated",
           "{\"task_id\":\"t-1\",\"title\":\"New\",\"owner_id\":\"u\",\"priority\":3,\"version\":2,"
           "\"changes\":{\"title\":{\"old\":\"R\",\"new\":\"New\"}}}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_NOTHING);
    assert_int_equal(f->in.details_changed, 1);
    assert_string_equal(f->in.title, "New");

    /* no changes member at all: nothing to do */
    intent(f, "task.updated", "{\"task_id\":\"t-1\",\"title\":\"R\",\"owner_id\":\"u\"}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_NOTHING);
}

static void test_updated_bad_data(void **state)
{
    fixture *f = *state;
    intent(f, "task.updated",
           "{\"task_id\":\"t\",\"title\":\"R\",\"owner_id\":\"u\",\"changes\":[]}");
    assert_refused(f, "data.changes is not an object");
    intent(f, "task.updated",
           "{\"task_id\":\"t\",\"title\":\"R\",\"owner_id\":\"u\",\"changes\":{\"due_at\":\"x\"}}");
    assert_refused(f, "data.changes.due_at");
    intent(f, "task.updated",
           "{\"task_id\":\"t\",\"title\":\"R\",\"owner_id\":\"u\","
           "\"changes\":{\"due_at\":{\"old\":null}}}");
    assert_refused(f, "'new'");
    intent(f, "task.updated",
           "{\"task_id\":\"t\",\"title\":\"R\",\"owner_id\":\"u\","
           "\"changes\":{\"due_at\":{\"old\":null,\"new\":\"soon\"}}}");
    assert_refused(f, "data.changes.due_at.new is not an RFC 3339 timestamp");
    intent(f, "task.updated",
           "{\"changes\":{\"due_at\":{\"old\":null,\"new\":\"2030-01-01T08:00:00Z\"}}}");
    assert_refused(f, "task.updated: data.task_id");
}

static void test_completed_deleted(void **state)
{
    fixture *f = *state;
    intent(f, "task.completed",
           "{\"task_id\":\"t-1\",\"title\":\"R\",\"owner_id\":\"u\",\"priority\":2}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_CLOSE);
    assert_string_equal(f->in.reason, "completed");
    intent(f, "task.deleted", "{\"task_id\":\"t-1\"}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_CLOSE);
    assert_string_equal(f->in.reason, "deleted");
    intent(f, "task.deleted", "{\"title\":\"R\"}");
    assert_refused(f, "task.deleted: data.task_id");
}

static void test_other_types_ignored(void **state)
{
    fixture *f = *state;
    intent(f, "task.archived", "{}");
    assert_int_equal(f->rc, 0);
    assert_int_equal(f->in.action, SCHEDULER_NOTHING);
    assert_null(f->in.task_id);
}

/* ---- the factory ----------------------------------------------------------- */

static void test_factory(void **unused)
{
    agent_settings s = AGENT_SETTINGS_INIT;
    agent_def def = AGENT_DEF_INIT;
    char err[256];
    s.remind_before_ms = 60000;
    assert_int_equal(agent_scheduler_def(&def, &s, err, sizeof(err)), 0);
    assert_string_equal(def.name, "scheduler");
    assert_string_equal(def.group, "scheduler");
    assert_int_equal(def.topic_count, 1);
    assert_string_equal(def.topics[0], "task-events");
    assert_int_equal(def.type_count, 4);
    assert_int_equal(def.in_transaction, 1);
    assert_non_null(def.handle);
    assert_non_null(def.setup);
    assert_non_null(def.next_timer);
    assert_non_null(def.fire_timers);
    def.destroy(def.state);

    s.remind_before_ms = -1;
    assert_int_equal(agent_scheduler_def(&def, &s, err, sizeof(err)), -1);
    assert_contains(err, "HERALD_REMIND_BEFORE");
}

/* ---- the agent on the runtime ------------------------------------------------ */

#define MAX_OUT 64

typedef struct rt_fixture {
    char dir[256];
    bus_config cfg;
    bus_producer *producer;
    agent_runtime *rt;
    event out[MAX_OUT]; /* reminder-events read back */
    size_t out_count;
} rt_fixture;

static void rt_open(rt_fixture *f, int64_t remind_before_ms)
{
    agent_settings s = AGENT_SETTINGS_INIT;
    s.data_dir = f->dir;
    s.remind_before_ms = remind_before_ms;
    agent_def def = AGENT_DEF_INIT;
    char err[256];
    assert_int_equal(agent_scheduler_def(&def, &s, err, sizeof(err)), 0);
    runtime_retry retry = RUNTIME_RETRY_INIT;
    f->rt = agent_runtime_open(&f->cfg, &def, &retry, err, sizeof(err));
    if (!f->rt)
        fail_msg("runtime: %s", err);
}

static int rt_setup(void **state)
{
    rt_fixture *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/herald-test-sched-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = f->dir;
    cfg.retention_ms = 0;
    cfg.synchronous_full = 0;
    f->cfg = cfg;
    char err[256];
    f->producer = bus_producer_open(&f->cfg, err, sizeof(err));
    assert_non_null(f->producer);
    rt_open(f, 0);
    *state = f;
    return 0;
}

static void out_release(rt_fixture *f)
{
    for (size_t i = 0; i < f->out_count; i++)
        event_release(&f->out[i]);
    f->out_count = 0;
}

static int rt_teardown(void **state)
{
    rt_fixture *f = *state;
    out_release(f);
    agent_runtime_close(f->rt);
    bus_producer_close(f->producer);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* The traceparent pub() gives its events (NULL: none). */
static const char *pub_traceparent;

/* Publish a task event from the Task API on task-events; its id and
 * correlation id into the out parameters (may be NULL). */
static void pub(rt_fixture *f, const char *type, const char *data_json, const char *cid,
                char id_out[EVENT_UUID_LEN + 1])
{
    json_error_t jerr;
    json_t *data = json_loads(data_json, 0, &jerr);
    if (!data)
        fail_msg("bad test JSON: %s", jerr.text);
    event ev = EVENT_INIT;
    char err[256];
    assert_int_equal(event_build(&ev, type, data, cid, NULL, "task-api", err, sizeof(err)), 0);
    if (pub_traceparent)
        event_set_trace(&ev, pub_traceparent, NULL);
    size_t len;
    char *value = event_encode(&ev, &len);
    bus_record r = BUS_RECORD_INIT;
    r.topic = "task-events";
    const char *key = json_string_value(json_object_get(data, "task_id"));
    r.key = key;
    r.key_len = key ? strlen(key) : 0;
    r.value = value;
    r.value_len = len;
    assert_int_equal(bus_produce(f->producer, &r, 1, NULL, err, sizeof(err)), 0);
    if (id_out)
        memcpy(id_out, ev.event_id, EVENT_UUID_LEN + 1);
    free(value);
    json_decref(data);
    event_release(&ev);
}

/* Step the runtime until it has read everything published so far. */
static void drain(rt_fixture *f)
{
    char err[256];
    size_t n;
    do {
        if (agent_runtime_step(f->rt, 0, &n, err, sizeof(err)) != 0)
            fail_msg("step: %s", err);
    } while (n > 0);
}

/* Every record of topic, decoded, into f->out (replacing what was there). */
static size_t read_topic(rt_fixture *f, const char *topic)
{
    out_release(f);
    const char *topics[1] = {topic};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.topics = topics;
    sub.topic_count = 1;
    char err[256];
    bus_consumer *c = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    if (!c)
        fail_msg("consumer: %s", err);
    for (;;) {
        const bus_message *m;
        size_t n;
        assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++) {
            assert_true(f->out_count < MAX_OUT);
            event *ev = &f->out[f->out_count++];
            if (event_decode(ev, m[i].value, m[i].value_len, err, sizeof(err)) != 0)
                fail_msg("decode: %s", err);
            /* the key of every reminder event is its task id */
            const char *task_id = json_string_value(json_object_get(ev->data, "task_id"));
            if (task_id && strcmp(topic, "reminder-events") == 0)
                assert_string_equal(m[i].key, task_id);
        }
    }
    bus_consumer_close(c);
    return f->out_count;
}

/* How many records of each reminder type the log holds. */
static void count_reminders(rt_fixture *f, size_t *scheduled, size_t *due)
{
    const char *topics[1] = {"reminder-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.topics = topics;
    sub.topic_count = 1;
    char err[256];
    bus_consumer *c = bus_consumer_open(&f->cfg, &sub, err, sizeof(err));
    assert_non_null(c);
    *scheduled = *due = 0;
    for (;;) {
        const bus_message *m;
        size_t n;
        assert_int_equal(bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)), 0);
        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++) {
            *scheduled += strstr(m[i].value, "\"reminder.scheduled\"") != NULL;
            *due += strstr(m[i].value, "\"reminder.due\"") != NULL;
        }
    }
    bus_consumer_close(c);
}

static size_t read_reminders(rt_fixture *f)
{
    return read_topic(f, "reminder-events");
}

static const char *dstr(const event *ev, const char *key)
{
    const char *s = json_string_value(json_object_get(ev->data, key));
    if (!s)
        fail_msg("%s: no string data.%s", ev->event_type, key);
    return s;
}

#define TASK(id, due)                                                                              \
    "{\"task_id\":\"" id "\",\"title\":\"Report\",\"owner_id\":\"u-7\","                           \
    "\"priority\":2,\"due_at\":\"" due "\"}"
#define DUE_CHANGE(id, old, new)                                                                   \
    "{\"task_id\":\"" id "\",\"title\":\"Report\",\"owner_id\":\"u-7\",\"priority\":2,"            \
    "\"version\":2,\"changes\":{\"due_at\":{\"old\":" old ",\"new\":" new "}}}"
#define CLOSED(id)                                                                                 \
    "{\"task_id\":\"" id "\",\"title\":\"Report\",\"owner_id\":\"u-7\",\"priority\":2}"

/* A due time in the past fires at once: scheduled, then due, with the
 * task event's correlation and the scheduled event as cause. */
static void test_rt_past_due_fires_at_once(void **state)
{
    rt_fixture *f = *state;
    char created[EVENT_UUID_LEN + 1];
    pub(f, "task.created", TASK("t-1", "2020-05-01T10:00:00Z"), "req-1", created);
    drain(f);
    assert_int_equal(read_reminders(f), 2);
    event *s = &f->out[0], *d = &f->out[1];
    assert_string_equal(s->event_type, "reminder.scheduled");
    assert_string_equal(s->correlation_id, "req-1");
    assert_string_equal(s->causation_id, created);
    assert_string_equal(s->source, "scheduler");
    char id[EVENT_UUID_LEN + 1];
    int64_t due;
    assert_int_equal(event_parse_time("2020-05-01T10:00:00Z", &due), 0);
    scheduler_reminder_id("t-1", due, id);
    assert_string_equal(dstr(s, "reminder_id"), id);
    assert_string_equal(dstr(s, "task_id"), "t-1");
    assert_string_equal(dstr(s, "owner_id"), "u-7");
    assert_string_equal(dstr(s, "title"), "Report");
    assert_string_equal(dstr(s, "due_at"), "2020-05-01T10:00:00.000Z");
    assert_string_equal(dstr(s, "remind_at"), "2020-05-01T10:00:00.000Z");
    assert_int_equal(json_object_size(s->data), 6);

    assert_string_equal(d->event_type, "reminder.due");
    assert_string_equal(d->correlation_id, "req-1");
    assert_string_equal(d->causation_id, s->event_id);
    assert_string_equal(d->source, "scheduler");
    assert_true(json_equal(d->data, s->data));

    /* fired once: more steps publish nothing */
    drain(f);
    assert_int_equal(read_reminders(f), 2);
}

/* A traced task.created: reminder.scheduled is a child span of it, and
 * reminder.due, fired by the timer, a child span of reminder.scheduled. */
static void test_rt_due_is_child_span_of_scheduled(void **state)
{
    rt_fixture *f = *state;
    pub_traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    pub(f, "task.created", TASK("t-tr", "2020-05-01T10:00:00Z"), "req-tr", NULL);
    pub_traceparent = NULL;
    drain(f);
    assert_int_equal(read_reminders(f), 2);
    event *s = &f->out[0], *d = &f->out[1];
    assert_string_equal(d->event_type, "reminder.due");
    assert_int_equal(strlen(s->traceparent), TRACE_PARENT_LEN);
    assert_int_equal(strlen(d->traceparent), TRACE_PARENT_LEN);
    assert_memory_equal(s->traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    assert_memory_equal(d->traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    assert_memory_not_equal(d->traceparent + 36, s->traceparent + 36, 16);
}

/* A data directory of a herald from before trace context: the reminders
 * table gains its trace columns at start, and a pending reminder of it
 * still fires (without a trace). */
static void test_rt_old_reminders_table_is_migrated(void **state)
{
    rt_fixture *f = *state;
    agent_runtime_close(f->rt);
    f->rt = NULL;
    char path[300];
    snprintf(path, sizeof(path), "%s/bus.db", f->dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "DROP TABLE scheduler_reminders;"
                     "CREATE TABLE scheduler_reminders(task_id TEXT NOT NULL,"
                     " due_ms INTEGER NOT NULL, reminder_id TEXT NOT NULL,"
                     " owner_id TEXT NOT NULL, title TEXT NOT NULL, remind_ms INTEGER NOT NULL,"
                     " state INTEGER NOT NULL, correlation_id TEXT NOT NULL,"
                     " scheduled_event_id TEXT NOT NULL, updated_ms INTEGER NOT NULL,"
                     " PRIMARY KEY(task_id, due_ms)) WITHOUT ROWID;"
                     "INSERT INTO scheduler_reminders VALUES('t-old', 1588327200000, 'r-old',"
                     " 'u-1', 'Old', 1588327200000, 0, 'req-old',"
                     " '01936f0e-6a3c-7c41-9d2e-5b8f0c1a2b3c', 1);",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    rt_open(f, 0);
    drain(f);
    assert_int_equal(read_reminders(f), 1);
    assert_string_equal(f->out[0].event_type, "reminder.due");
    assert_string_equal(f->out[0].correlation_id, "req-old");
    assert_string_equal(f->out[0].traceparent, "");
}

/* The same task.created published twice (two event ids, so the runtime's
 * de-duplication does not see it): one reminder. */
static void test_rt_duplicate_created_schedules_once(void **state)
{
    rt_fixture *f = *state;
    pub(f, "task.created", TASK("t-2", "2099-01-01T00:00:00Z"), "req-a", NULL);
    pub(f, "task.created", TASK("t-2", "2099-01-01T00:00:00Z"), "req-b", NULL);
    drain(f);
    pub(f, "task.created", TASK("t-2", "2099-01-01T00:00:00Z"), "req-c", NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 1);
    assert_string_equal(f->out[0].event_type, "reminder.scheduled");
    assert_string_equal(f->out[0].correlation_id, "req-a");

    /* also after it fired */
    pub(f, "task.created", TASK("t-3", "2020-01-01T00:00:00Z"), "req-d", NULL);
    drain(f);
    pub(f, "task.created", TASK("t-3", "2020-01-01T00:00:00Z"), "req-e", NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 3); /* t-2 scheduled, t-3 scheduled + due */
}

static void test_rt_completed_and_deleted_cancel(void **state)
{
    rt_fixture *f = *state;
    char done[EVENT_UUID_LEN + 1];
    pub(f, "task.created", TASK("t-4", "2099-01-01T00:00:00Z"), "req-1", NULL);
    pub(f, "task.created", TASK("t-5", "2099-01-01T00:00:00Z"), "req-2", NULL);
    drain(f);
    pub(f, "task.completed", CLOSED("t-4"), "req-3", done);
    pub(f, "task.deleted", CLOSED("t-5"), "req-4", NULL);
    /* no reminder pending: nothing at all */
    pub(f, "task.completed", CLOSED("t-6"), "req-5", NULL);
    pub(f, "task.deleted", CLOSED("t-4"), "req-6", NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 4);
    event *c4 = &f->out[2], *c5 = &f->out[3];
    assert_string_equal(c4->event_type, "reminder.cancelled");
    assert_string_equal(dstr(c4, "task_id"), "t-4");
    assert_string_equal(dstr(c4, "reason"), "completed");
    assert_string_equal(dstr(c4, "reminder_id"), dstr(&f->out[0], "reminder_id"));
    assert_int_equal(json_object_size(c4->data), 3);
    assert_string_equal(c4->correlation_id, "req-3");
    assert_string_equal(c4->causation_id, done);
    assert_string_equal(dstr(c5, "task_id"), "t-5");
    assert_string_equal(dstr(c5, "reason"), "deleted");

    /* a completed task gets no reminder even when its due time changes */
    pub(f, "task.updated",
        DUE_CHANGE("t-4", "\"2099-01-01T00:00:00.000Z\"", "\"2020-01-01T00:00:00Z\""), "req-7",
        NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 4);
}

static void test_rt_reschedule(void **state)
{
    rt_fixture *f = *state;
    char upd[EVENT_UUID_LEN + 1];
    pub(f, "task.created", TASK("t-7", "2099-01-01T00:00:00Z"), "req-1", NULL);
    drain(f);
    pub(f, "task.updated",
        DUE_CHANGE("t-7", "\"2099-01-01T00:00:00.000Z\"", "\"2098-01-01T00:00:00.000Z\""), "req-2",
        upd);
    drain(f);
    assert_int_equal(read_reminders(f), 3);
    event *a = &f->out[0], *c = &f->out[1], *b = &f->out[2];
    assert_string_equal(c->event_type, "reminder.cancelled");
    assert_string_equal(dstr(c, "reason"), "rescheduled");
    assert_string_equal(dstr(c, "reminder_id"), dstr(a, "reminder_id"));
    assert_string_equal(c->causation_id, upd);
    assert_string_equal(b->event_type, "reminder.scheduled");
    assert_string_not_equal(dstr(b, "reminder_id"), dstr(a, "reminder_id"));
    assert_string_equal(dstr(b, "due_at"), "2098-01-01T00:00:00.000Z");
    assert_string_equal(b->correlation_id, "req-2");
    assert_string_equal(b->causation_id, upd);

    /* the same change again (another event id): already pending, nothing */
    pub(f, "task.updated",
        DUE_CHANGE("t-7", "\"2099-01-01T00:00:00.000Z\"", "\"2098-01-01T00:00:00.000Z\""), "req-2",
        NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 3);
    a = &f->out[0];
    b = &f->out[2];

    /* back to the first due time: that reminder is armed again */
    pub(f, "task.updated",
        DUE_CHANGE("t-7", "\"2098-01-01T00:00:00.000Z\"", "\"2099-01-01T00:00:00.000Z\""), "req-3",
        NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 5);
    assert_string_equal(f->out[3].event_type, "reminder.cancelled");
    assert_string_equal(dstr(&f->out[3], "reminder_id"), dstr(&f->out[2], "reminder_id"));
    assert_string_equal(f->out[4].event_type, "reminder.scheduled");
    assert_string_equal(dstr(&f->out[4], "reminder_id"), dstr(&f->out[0], "reminder_id"));

    /* due_at removed: cancelled, nothing new */
    pub(f, "task.updated", DUE_CHANGE("t-7", "\"2099-01-01T00:00:00.000Z\"", "null"), "req-4",
        NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 6);
    assert_string_equal(f->out[5].event_type, "reminder.cancelled");
    assert_string_equal(dstr(&f->out[5], "reason"), "rescheduled");

    /* a due time on a task that had none */
    pub(f, "task.created",
        "{\"task_id\":\"t-8\",\"title\":\"Report\",\"owner_id\":\"u-7\",\"priority\":2}", "req-5",
        NULL);
    pub(f, "task.updated", DUE_CHANGE("t-8", "null", "\"2020-01-01T00:00:00Z\""), "req-6", NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 8);
    assert_string_equal(f->out[6].event_type, "reminder.scheduled");
    assert_string_equal(f->out[7].event_type, "reminder.due");
    assert_string_equal(f->out[7].correlation_id, "req-6");
}

static void test_rt_remind_before(void **state)
{
    rt_fixture *f = *state;
    agent_runtime_close(f->rt);
    rt_open(f, 90 * 60 * 1000);
    pub(f, "task.created", TASK("t-9", "2099-01-01T08:00:00Z"), "req-1", NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 1);
    assert_string_equal(dstr(&f->out[0], "due_at"), "2099-01-01T08:00:00.000Z");
    assert_string_equal(dstr(&f->out[0], "remind_at"), "2099-01-01T06:30:00.000Z");
}

/* Bad data goes to the dead-letter topic with a reason; the agent goes on. */
static void test_rt_bad_data_dead_lettered(void **state)
{
    rt_fixture *f = *state;
    pub(f, "task.created",
        "{\"title\":\"x\",\"owner_id\":\"u\",\"due_at\":\"2020-01-01T00:00:00Z\"}", "req-1", NULL);
    pub(f, "task.created", TASK("t-10", "not a time"), "req-2", NULL);
    pub(f, "task.created", TASK("t-11", "2020-01-01T00:00:00Z"), "req-3", NULL);
    drain(f);
    assert_int_equal(read_reminders(f), 2); /* t-11 scheduled and due */
    assert_string_equal(dstr(&f->out[0], "task_id"), "t-11");
    assert_int_equal(read_topic(f, "task-events.dlq"), 2);
    runtime_stats st;
    agent_runtime_stats(f->rt, &st);
    assert_true(st.dead_lettered == 2);
}

/* More reminders due at once than one statement round reads: all fire,
 * each once. */
static void test_rt_backlog_fires_completely(void **state)
{
    rt_fixture *f = *state;
    for (int i = 0; i < 300; i++) {
        char json[256], id[32];
        snprintf(id, sizeof(id), "bulk-%03d", i);
        snprintf(json, sizeof(json), TASK("%s", "2021-03-04T05:06:07Z"), id);
        pub(f, "task.created", json, "req-bulk", NULL);
    }
    drain(f);
    size_t scheduled, due;
    count_reminders(f, &scheduled, &due);
    assert_int_equal(scheduled, 300);
    assert_int_equal(due, 300);
    drain(f);
    count_reminders(f, &scheduled, &due);
    assert_int_equal(due, 300);
}

/* A pending reminder takes a changed title; it fires when due, and a
 * restarted agent still knows it. */
static void test_rt_fires_when_due_after_restart(void **state)
{
    rt_fixture *f = *state;
    char due_at[EVENT_TIME_LEN + 1], json[512];
    event_format_time(util_now_ms() + 400, due_at);
    snprintf(json, sizeof(json), TASK("t-12", "%s"), due_at);
    pub(f, "task.created", json, "req-1", NULL);
    drain(f);
    pub(f, "task.updated",
        "{\"task_id\":\"t-12\",\"title\":\"New title\",\"owner_id\":\"u-8\",\"priority\":2,"
        "\"version\":2,\"changes\":{\"title\":{\"old\":\"Report\",\"new\":\"New title\"},"
        "\"owner_id\":{\"old\":\"u-7\",\"new\":\"u-8\"}}}",
        "req-2", NULL);
    drain(f);
    agent_runtime_close(f->rt);
    rt_open(f, 0);
    char err[256];
    int64_t deadline = util_now_ms() + 30000;
    while (read_reminders(f) < 2) {
        assert_true(util_now_ms() < deadline);
        assert_int_equal(agent_runtime_step(f->rt, 100, NULL, err, sizeof(err)), 0);
    }
    assert_int_equal(f->out_count, 2);
    event *d = &f->out[1];
    assert_string_equal(d->event_type, "reminder.due");
    assert_string_equal(dstr(d, "title"), "New title");
    assert_string_equal(dstr(d, "owner_id"), "u-8");
    assert_string_equal(d->correlation_id, "req-1");
    assert_string_equal(d->causation_id, f->out[0].event_id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reminder_id_known_values),
        cmocka_unit_test(test_reminder_id_deterministic_and_distinct),
        cmocka_unit_test(test_reminder_id_same_instant_other_spelling),
        cmocka_unit_test(test_remind_at),
        cmocka_unit_test_setup_teardown(test_created_with_due, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_created_without_due, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_created_bad_data, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_updated_due_changes, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_updated_other_changes, setup_fixture,
                                        teardown_fixture),
        cmocka_unit_test_setup_teardown(test_updated_bad_data, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_completed_deleted, setup_fixture, teardown_fixture),
        cmocka_unit_test_setup_teardown(test_other_types_ignored, setup_fixture, teardown_fixture),
        cmocka_unit_test(test_factory),
        cmocka_unit_test_setup_teardown(test_rt_past_due_fires_at_once, rt_setup, rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_due_is_child_span_of_scheduled, rt_setup,
                                        rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_old_reminders_table_is_migrated, rt_setup,
                                        rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_duplicate_created_schedules_once, rt_setup,
                                        rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_completed_and_deleted_cancel, rt_setup,
                                        rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_reschedule, rt_setup, rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_remind_before, rt_setup, rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_bad_data_dead_lettered, rt_setup, rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_backlog_fires_completely, rt_setup, rt_teardown),
        cmocka_unit_test_setup_teardown(test_rt_fires_when_due_after_restart, rt_setup,
                                        rt_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
