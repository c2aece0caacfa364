/*
 * test_scheduler.c - unit tests for the pure parts of the reminder
 * scheduler (agents/scheduler.h): deterministic reminder ids (known values
 * computed independently with Python's hashlib), reminder times, and what
 * each task event asks of the scheduler, including every kind of bad data
 * that must be refused with a reason instead of crashing.
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
#include "event/event.h"

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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
