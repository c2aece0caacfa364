/*
 * test_trace.c - unit tests of W3C trace context (event/tracecontext.h:
 * parsing, generation; its place in the envelope codec and the record
 * headers; child spans of derived events in the runtime) and of the causal
 * tree (trace/trace.h: building, orphans, cycles, missing follow-ups, JSON
 * and text, collecting from a real embedded log).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus/bus.h"
#include "bus/sqlite_log.h"
#include "common/util.h"
#include "event/event.h"
#include "event/tracecontext.h"
#include "runtime/runtime.h"
#include "trace/trace.h"

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TRACE_ID "4bf92f3577b34da6a3ce929d0e0e4736"

/* ---- traceparent / tracestate ---------------------------------------------------- */

static int parses(const char *s, char *out)
{
    char err[128];
    return trace_parent_parse(s, strlen(s), out, err, sizeof(err));
}

static void test_traceparent_valid(void **state)
{
    char out[TRACE_PARENT_LEN + 1];
    assert_int_equal(parses(TP, out), 0);
    assert_string_equal(out, TP);
    assert_true(trace_parent_valid(TP, strlen(TP)));
    char id[TRACE_ID_HEX + 1], span[TRACE_SPAN_HEX + 1];
    trace_parent_trace_id(TP, id);
    trace_parent_span_id(TP, span);
    assert_string_equal(id, TRACE_ID);
    assert_string_equal(span, "00f067aa0ba902b7");
    /* unsampled is fine too */
    assert_int_equal(parses("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", out), 0);
}

static void test_traceparent_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",     /* no flags */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  /* uppercase */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  /* zero parent id */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* version ff */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* v00 too long */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",  /* flags */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",  /* shifted */
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* version hex */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", /* future: no '-' */
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* space */
    };
    char out[TRACE_PARENT_LEN + 1];
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad); i++) {
        char err[128] = "";
        if (trace_parent_parse(bad[i], strlen(bad[i]), out, err, sizeof(err)) == 0)
            fail_msg("accepted '%s'", bad[i]);
        assert_non_null(strstr(err, "traceparent"));
        assert_false(trace_parent_valid(bad[i], strlen(bad[i])));
    }
    /* a NUL inside is not hidden by the length */
    char nul[] = TP;
    nul[10] = '\0';
    assert_int_equal(trace_parent_parse(nul, sizeof(nul) - 1, out, NULL, 0), -1);
}

static void test_traceparent_future_version(void **state)
{
    /* a higher version is read as 00 from its first 55 characters */
    char out[TRACE_PARENT_LEN + 1];
    assert_int_equal(
        parses("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever", out), 0);
    assert_string_equal(out, TP);
    assert_int_equal(parses("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", out), 0);
    assert_string_equal(out, TP);
    /* but only version 00 is "valid" as stored */
    assert_false(trace_parent_valid("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 55));
}

static void test_traceparent_new_and_child(void **state)
{
    char a[TRACE_PARENT_LEN + 1], b[TRACE_PARENT_LEN + 1], c[TRACE_PARENT_LEN + 1];
    trace_parent_new(a);
    trace_parent_new(b);
    assert_true(trace_parent_valid(a, strlen(a)));
    assert_true(trace_parent_valid(b, strlen(b)));
    assert_string_not_equal(a, b);
    assert_memory_not_equal(a + 3, b + 3, TRACE_ID_HEX); /* new traces */
    assert_memory_equal(a + 52, "-01", 3);               /* sampled */
    trace_parent_child(a, c);
    assert_true(trace_parent_valid(c, strlen(c)));
    assert_memory_equal(a, c, 36);                           /* version, trace id */
    assert_memory_not_equal(a + 36, c + 36, TRACE_SPAN_HEX); /* new span */
    assert_memory_equal(a + 52, c + 52, 3);                  /* flags */
    char unsampled[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    trace_parent_child(unsampled, c);
    assert_memory_equal(c + 52, "-00", 3);
}

static void test_tracestate(void **state)
{
    assert_true(trace_state_valid("congo=t61rcWkgMzE", 17));
    assert_true(trace_state_valid("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", 39));
    assert_false(trace_state_valid("", 0));
    assert_false(trace_state_valid(" , ,", 4));
    assert_false(trace_state_valid("a=b\n", 4));
    assert_false(trace_state_valid("a=\xc3\xa9", 4));
    char big[TRACE_STATE_MAX + 2];
    memset(big, 'a', sizeof(big));
    big[0] = 'k';
    big[1] = '=';
    assert_true(trace_state_valid(big, TRACE_STATE_MAX));
    assert_false(trace_state_valid(big, TRACE_STATE_MAX + 1));
}

/* ---- the envelope and the record headers ------------------------------------------ */

static const char base_json[] =
    "{\"event_id\":\"0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6b\",\"event_type\":\"task.created\","
    "\"occurred_at\":\"2025-01-15T14:30:22.456Z\",\"data\":{\"task_id\":\"t-1\"},"
    "\"metadata\":{\"correlation_id\":\"req-1\",\"causation_id\":\"api-create-t-1\","
    "\"source\":\"task-api\"%s}}";

static char *envelope_with(const char *extra)
{
    char *s = xmalloc(sizeof(base_json) + strlen(extra));
    sprintf(s, base_json, extra);
    return s;
}

static void test_envelope_trace_round_trip(void **state)
{
    char err[256];
    char *in = envelope_with(",\"traceparent\":\"" TP "\",\"tracestate\":\"congo=t61\",\"x\":1");
    event ev;
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_string_equal(ev.traceparent, TP);
    assert_string_equal(ev.tracestate, "congo=t61");
    assert_int_equal(json_object_size(ev.metadata_extra), 1); /* only "x" */
    char *out = event_encode(&ev, NULL);
    assert_string_equal(out, in); /* after source, in that order, byte-identical */
    event copy;
    event_copy(&copy, &ev);
    event_release(&ev);
    assert_string_equal(copy.traceparent, TP);
    assert_string_equal(copy.tracestate, "congo=t61");
    event_release(&copy);
    free(out);
    free(in);

    /* events without a trace context (old producers, kcat) are unchanged */
    in = envelope_with("");
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_string_equal(ev.traceparent, "");
    assert_null(ev.tracestate);
    out = event_encode(&ev, NULL);
    assert_string_equal(out, in);
    assert_null(strstr(out, "traceparent"));
    event_release(&ev);
    free(out);
    free(in);
}

static void test_envelope_foreign_trace_values_kept_as_data(void **state)
{
    char err[256];
    /* an invalid traceparent (and the tracestate beside it) is another
     * producer's data: kept unchanged, but not a trace context */
    char *in = envelope_with(",\"traceparent\":\"00-abc-01\",\"tracestate\":\"a=b\"");
    event ev;
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_string_equal(ev.traceparent, "");
    assert_null(ev.tracestate);
    assert_int_equal(json_object_size(ev.metadata_extra), 2);
    char *out = event_encode(&ev, NULL);
    assert_string_equal(out, in);
    event_release(&ev);
    free(out);
    free(in);
    /* a number as traceparent, a bad tracestate with a good traceparent */
    in = envelope_with(",\"traceparent\":\"" TP "\",\"tracestate\":\"a\\u0001b\"");
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_string_equal(ev.traceparent, TP);
    assert_null(ev.tracestate);
    assert_non_null(json_object_get(ev.metadata_extra, "tracestate"));
    event_release(&ev);
    free(in);
    in = envelope_with(",\"traceparent\":42");
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_string_equal(ev.traceparent, "");
    event_release(&ev);
    free(in);
}

static void test_event_set_trace(void **state)
{
    event ev = EVENT_INIT;
    assert_int_equal(event_set_trace(&ev, "00-nope", NULL), -1);
    assert_string_equal(ev.traceparent, "");
    assert_int_equal(event_set_trace(&ev, TP, "a=\x01"), 0); /* state dropped */
    assert_string_equal(ev.traceparent, TP);
    assert_null(ev.tracestate);
    assert_int_equal(event_set_trace(&ev, TP, "a=b"), 0);
    assert_string_equal(ev.tracestate, "a=b");
    assert_int_equal(event_set_trace(&ev, NULL, "a=b"), 0);
    assert_string_equal(ev.traceparent, "");
    assert_null(ev.tracestate);
    event_release(&ev);
}

static void test_headers_carry_trace(void **state)
{
    char err[256];
    event ev = EVENT_INIT;
    json_t *data = json_pack("{s:s}", "task_id", "t-1");
    assert_int_equal(
        event_build(&ev, "task.created", data, "req-1", "api-create-t-1", "task-api", err, 256), 0);
    json_decref(data);
    assert_int_equal(event_set_trace(&ev, TP, "congo=t61"), 0);
    char *value = event_encode(&ev, NULL);
    bus_header h[BUS_ENVELOPE_HEADERS];
    char timebuf[EVENT_TIME_LEN + 1];
    size_t nh = bus_envelope_headers(&ev, h, timebuf);
    assert_int_equal(nh, 10);
    bus_message m;
    memset(&m, 0, sizeof(m));
    m.value = value;
    m.value_len = strlen(value);
    unsigned char *blob = bus_headers_encode(h, nh, &m.headers_len);
    m.headers = blob;
    const char *v;
    size_t len;
    assert_int_equal(bus_message_header(&m, "traceparent", &v, &len), 1);
    assert_int_equal(len, TRACE_PARENT_LEN);
    assert_memory_equal(v, TP, len);
    assert_int_equal(bus_message_header(&m, "tracestate", &v, &len), 1);
    assert_memory_equal(v, "congo=t61", len);
    /* the header fast path reads them back */
    event back = EVENT_INIT;
    assert_int_equal(bus_envelope_from_headers(&m, &back), 0);
    assert_string_equal(back.traceparent, TP);
    assert_string_equal(back.tracestate, "congo=t61");
    event_release(&back);
    free(blob);
    /* an invalid traceparent header is ignored (the record still reads) */
    h[8].value = "00-zz";
    h[8].value_len = 5;
    blob = bus_headers_encode(h, nh, &m.headers_len);
    m.headers = blob;
    assert_int_equal(bus_envelope_from_headers(&m, &back), 0);
    assert_string_equal(back.traceparent, "");
    assert_null(back.tracestate);
    event_release(&back);
    free(blob);
    /* without a trace: 8 headers, none of them trace headers */
    assert_int_equal(event_set_trace(&ev, NULL, NULL), 0);
    assert_int_equal(bus_envelope_headers(&ev, h, timebuf), 8);
    free(value);
    event_release(&ev);
}

/* ---- the tree ---------------------------------------------------------------------- */

/* An event with a chosen id (suffix n), time and cause. */
static void make(trace_tree *t, int n, const char *type, const char *source, int64_t ms,
                 const char *cause, const char *channel, int dlq)
{
    event ev = EVENT_INIT;
    char err[256];
    json_t *data = channel ? json_pack("{s:s, s:s}", "task_id", "t-1", "channel", channel)
                           : json_pack("{s:s}", "task_id", "t-1");
    assert_int_equal(event_build(&ev, type, data, "req-1", cause, source, err, sizeof(err)), 0);
    json_decref(data);
    snprintf(ev.event_id, sizeof(ev.event_id), "01a213c0-0000-7000-8000-%012d", n);
    ev.occurred_ms = ms;
    trace_tree_add(t, &ev, dlq);
    assert_string_equal(ev.event_id, ""); /* moved */
}

static const char *id_of(int n)
{
    static char buf[8][EVENT_UUID_LEN + 1];
    static int next;
    char *b = buf[next++ % 8];
    snprintf(b, EVENT_UUID_LEN + 1, "01a213c0-0000-7000-8000-%012d", n);
    return b;
}

static size_t node_of(const trace_tree *t, int n)
{
    const char *id = id_of(n);
    for (size_t i = 0; i < t->count; i++)
        if (strcmp(t->nodes[i].ev.event_id, id) == 0)
            return i;
    fail_msg("no node %d", n);
    return TRACE_NONE;
}

/* The full scenario: task.created -> notification.sent (email) ->
 * email.delivered, notification.sent (slack), reminder.scheduled. */
static void scenario(trace_tree *t)
{
    trace_tree_init(t, "req-1");
    /* added out of order on purpose */
    make(t, 4, "email.delivered", "email", 1015, id_of(2), NULL, 0);
    make(t, 1, "task.created", "task-api", 1000, "api-create-t-1", NULL, 0);
    make(t, 3, "notification.sent", "slack", 1010, id_of(1), "slack", 0);
    make(t, 2, "notification.sent", "email", 1011, id_of(1), "email", 0);
    make(t, 5, "reminder.scheduled", "scheduler", 1014, id_of(1), NULL, 0);
}

static void test_tree_scenario(void **state)
{
    trace_tree t;
    scenario(&t);
    trace_tree_build(&t, 1000 + 60000, 30000);
    assert_int_equal(t.count, 5);
    assert_int_equal(t.root_count, 1);
    assert_int_equal(t.orphan_count, 0);
    assert_int_equal(t.missing_count, 0);
    size_t root = node_of(&t, 1), email = node_of(&t, 2);
    assert_int_equal(t.roots[0], root);
    assert_int_equal(t.nodes[root].child_count, 3);
    /* children in time order: slack (1010), email (1011), reminder (1014) */
    assert_int_equal(t.nodes[root].children[0], node_of(&t, 3));
    assert_int_equal(t.nodes[root].children[1], email);
    assert_int_equal(t.nodes[root].children[2], node_of(&t, 5));
    assert_int_equal(t.nodes[email].child_count, 1);
    assert_int_equal(t.nodes[email].children[0], node_of(&t, 4));
    assert_int_equal(t.nodes[node_of(&t, 4)].parent, email);

    json_t *j = trace_tree_to_json(&t);
    assert_int_equal(json_integer_value(json_object_get(j, "event_count")), 5);
    json_t *roots = json_object_get(j, "roots");
    assert_int_equal(json_array_size(roots), 1);
    json_t *r = json_array_get(roots, 0);
    assert_string_equal(json_string_value(json_object_get(r, "event_type")), "task.created");
    assert_int_equal(json_integer_value(json_object_get(r, "offset_ms")), 0);
    json_t *kids = json_object_get(r, "children");
    assert_int_equal(json_array_size(kids), 3);
    json_t *e = json_array_get(kids, 1);
    assert_string_equal(json_string_value(json_object_get(e, "source")), "email");
    assert_int_equal(json_integer_value(json_object_get(e, "offset_ms")), 11);
    json_t *d = json_array_get(json_object_get(e, "children"), 0);
    assert_string_equal(json_string_value(json_object_get(d, "event_type")), "email.delivered");
    assert_int_equal(json_array_size(json_object_get(j, "orphans")), 0);
    assert_int_equal(json_array_size(json_object_get(j, "missing")), 0);
    json_decref(j);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    trace_tree_print(&t, f);
    fclose(f);
    assert_non_null(strstr(text, "trace req-1: 5 events, 1 root\n"));
    assert_non_null(strstr(text, "\ntask.created "));
    assert_non_null(strstr(text, "├─ notification.sent"));
    assert_non_null(strstr(text, "│  └─ email.delivered"));
    assert_non_null(strstr(text, "└─ reminder.scheduled"));
    assert_non_null(strstr(text, "00000002  +11 ms  channel=email"));
    assert_null(strstr(text, "orphan"));
    free(text);
    trace_tree_release(&t);
}

static void test_tree_orphans_and_roots(void **state)
{
    trace_tree t;
    scenario(&t);
    /* caused by an event id that is not in the trace: an orphan */
    make(&t, 6, "task.updated", "cli", 1020, "01a213c0-dead-7000-8000-000000000000", NULL, 0);
    /* caused by the correlation id (herald publish's default): a root */
    make(&t, 7, "audit.noted", "cli", 1021, "req-1", NULL, 0);
    /* caused by a call: a root */
    make(&t, 8, "task.completed", "task-api", 1022, "api-complete-t-1", NULL, 0);
    trace_tree_build(&t, 2000, 30000);
    assert_int_equal(t.root_count, 4);
    assert_int_equal(t.orphan_count, 1);
    assert_true(t.nodes[node_of(&t, 6)].orphan);
    assert_false(t.nodes[node_of(&t, 7)].orphan);
    assert_false(t.nodes[node_of(&t, 8)].orphan);
    json_t *j = trace_tree_to_json(&t);
    json_t *o = json_array_get(json_object_get(j, "orphans"), 0);
    assert_string_equal(json_string_value(json_object_get(o, "event_id")), id_of(6));
    assert_string_equal(json_string_value(json_object_get(o, "causation_id")),
                        "01a213c0-dead-7000-8000-000000000000");
    assert_int_equal(json_array_size(json_object_get(j, "roots")), 4);
    json_decref(j);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    trace_tree_print(&t, f);
    fclose(f);
    assert_non_null(strstr(text, "[orphan: cause 00000000 not found]"));
    assert_non_null(strstr(text, "orphans (causation_id names no event of this trace):"));
    free(text);
    trace_tree_release(&t);
}

static void test_tree_missing_follow_ups(void **state)
{
    trace_tree t;
    trace_tree_init(&t, "req-1");
    make(&t, 1, "task.created", "task-api", 1000, "api-create-t-1", NULL, 0);
    make(&t, 2, "notification.sent", "email", 1010, id_of(1), "email", 0);
    make(&t, 3, "notification.sent", "slack", 1010, id_of(1), "slack", 0);
    make(&t, 4, "task.created", "task-api", 5000, "api-create-t-2", NULL, 0);
    /* within the grace period nothing is missing yet */
    trace_tree_build(&t, 5000 + 999, 1000);
    assert_int_equal(t.missing_count, 1); /* only the email sent at 1010 */
    assert_string_equal(t.nodes[node_of(&t, 2)].missing, "email.delivered");
    assert_null(t.nodes[node_of(&t, 3)].missing); /* slack has no follow-up */
    assert_null(t.nodes[node_of(&t, 1)].missing);
    assert_null(t.nodes[node_of(&t, 4)].missing);
    trace_tree_release(&t);

    trace_tree_init(&t, "req-1");
    make(&t, 4, "task.created", "task-api", 5000, "api-create-t-2", NULL, 0);
    trace_tree_build(&t, 5000, 0); /* grace 0: due at once */
    assert_int_equal(t.missing_count, 1);
    json_t *j = trace_tree_to_json(&t);
    json_t *m = json_array_get(json_object_get(j, "missing"), 0);
    assert_string_equal(json_string_value(json_object_get(m, "expected")), "notification.sent");
    assert_string_equal(json_string_value(json_object_get(m, "event_type")), "task.created");
    json_t *node = json_array_get(json_object_get(j, "roots"), 0);
    assert_string_equal(json_string_value(json_object_get(node, "missing")), "notification.sent");
    json_decref(j);
    trace_tree_release(&t);
}

static void test_tree_duplicates_and_dlq(void **state)
{
    trace_tree t;
    trace_tree_init(&t, "req-1");
    make(&t, 1, "task.created", "task-api", 1000, "api-create-t-1", NULL, 0);
    make(&t, 1, "task.created", "task-api", 1000, "api-create-t-1", NULL, 1); /* its dead letter */
    make(&t, 2, "task.updated", "task-api", 1001, "api-update-t-1", NULL, 1); /* only in .dlq */
    trace_tree_build(&t, 2000, 30000);
    assert_int_equal(t.count, 2);
    assert_true(t.nodes[node_of(&t, 1)].dead_lettered);
    assert_true(t.nodes[node_of(&t, 2)].dead_lettered);
    json_t *j = trace_tree_to_json(&t);
    json_t *r = json_array_get(json_object_get(j, "roots"), 0);
    assert_true(json_is_true(json_object_get(r, "dead_lettered")));
    json_decref(j);
    trace_tree_release(&t);
}

static void test_tree_cycles_and_depth(void **state)
{
    trace_tree t;
    trace_tree_init(&t, "req-1");
    /* a cycle of two, and one event caused by itself */
    make(&t, 1, "x.happened", "a", 1000, id_of(2), NULL, 0);
    make(&t, 2, "x.happened", "a", 1001, id_of(1), NULL, 0);
    make(&t, 3, "x.happened", "a", 1002, id_of(3), NULL, 0);
    trace_tree_build(&t, 2000, 30000);
    assert_int_equal(t.root_count, 2);
    size_t reached = 0;
    for (size_t r = 0; r < t.root_count; r++)
        reached += 1 + t.nodes[t.roots[r]].child_count;
    assert_int_equal(reached, 3); /* every node is shown */
    assert_true(t.nodes[node_of(&t, 3)].cut);
    json_t *j = trace_tree_to_json(&t);
    json_decref(j);
    trace_tree_release(&t);

    /* a chain of 200: cut into branches of at most TRACE_MAX_DEPTH + 1 */
    trace_tree_init(&t, "req-1");
    for (int i = 1; i <= 200; i++)
        make(&t, i, "x.happened", "a", 1000 + i, i == 1 ? "call-1" : id_of(i - 1), NULL, 0);
    trace_tree_build(&t, 2000, 30000);
    assert_int_equal(t.root_count, 4); /* 1, 66, 131, 196 */
    assert_true(t.nodes[node_of(&t, 66)].cut);
    assert_false(t.nodes[node_of(&t, 65)].cut);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    trace_tree_print(&t, f);
    fclose(f);
    assert_non_null(strstr(text, "trace req-1: 200 events, 4 roots"));
    free(text);
    j = trace_tree_to_json(&t);
    char *dumped = json_dumps(j, JSON_COMPACT);
    assert_non_null(dumped);
    free(dumped);
    json_decref(j);
    trace_tree_release(&t);
}

static void test_tree_truncated(void **state)
{
    trace_tree t;
    trace_tree_init(&t, "req-1");
    for (int i = 1; i <= TRACE_MAX_EVENTS + 5; i++)
        make(&t, i, "x.happened", "a", 1000 + i, "call", NULL, 0);
    assert_int_equal(t.count, TRACE_MAX_EVENTS);
    assert_true(t.truncated);
    trace_tree_build(&t, 0, 0);
    json_t *j = trace_tree_to_json(&t);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);
    trace_tree_release(&t);
}

static void test_correlation_id_rule(void **state)
{
    assert_true(trace_correlation_id_valid("req-abc-123"));
    assert_false(trace_correlation_id_valid(""));
    assert_false(trace_correlation_id_valid("a\tb"));
    assert_false(trace_correlation_id_valid("caf\xc3\xa9"));
    char big[130];
    memset(big, 'a', sizeof(big));
    big[128] = '\0';
    assert_true(trace_correlation_id_valid(big));
    big[128] = 'a';
    big[129] = '\0';
    assert_false(trace_correlation_id_valid(big));
}

/* ---- a real log: derived events' spans, collecting -------------------------------- */

typedef struct fixture {
    char dir[256];
    bus_config cfg;
    bus_producer *producer;
} fixture;

static int setup_log(void **state)
{
    fixture *f = xcalloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/herald-test-trace-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->cfg = (bus_config)BUS_CONFIG_INIT;
    f->cfg.data_dir = f->dir;
    f->cfg.synchronous_full = 0;
    char err[256];
    f->producer = bus_producer_open(&f->cfg, err, sizeof(err));
    assert_non_null(f->producer);
    *state = f;
    return 0;
}

static int teardown_log(void **state)
{
    fixture *f = *state;
    bus_producer_close(f->producer);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Publish type with correlation cid, cause and (optional) trace; returns its id. */
static void publish(fixture *f, const char *topic, const char *type, const char *cid,
                    const char *cause, const char *tp, const char *ts, int headers, char *id_out)
{
    event ev = EVENT_INIT;
    char err[256];
    json_t *data = json_pack("{s:s}", "task_id", "t-1");
    assert_int_equal(event_build(&ev, type, data, cid, cause, "test", err, sizeof(err)), 0);
    json_decref(data);
    if (tp)
        assert_int_equal(event_set_trace(&ev, tp, ts), 0);
    size_t len;
    char *value = event_encode(&ev, &len);
    bus_header h[BUS_ENVELOPE_HEADERS];
    char timebuf[EVENT_TIME_LEN + 1];
    bus_record r = BUS_RECORD_INIT;
    r.topic = topic;
    r.value = value;
    r.value_len = len;
    if (headers) {
        r.headers = h;
        r.header_count = bus_envelope_headers(&ev, h, timebuf);
    }
    assert_int_equal(bus_produce(f->producer, &r, 1, NULL, err, sizeof(err)), 0);
    if (id_out)
        strcpy(id_out, ev.event_id);
    free(value);
    event_release(&ev);
}

/* An agent that emits test.handled, and test.followed caused by it. */
static agent_outcome chain_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                  size_t reasonlen)
{
    char first[EVENT_UUID_LEN + 1];
    json_t *d = json_pack("{s:s}", "task_id", "t-1");
    int rc = agent_emit(ctx, "test.handled", d, NULL, NULL, first, reason, reasonlen);
    if (rc == 0)
        rc = agent_emit(ctx, "test.followed", d, NULL, first, NULL, reason, reasonlen);
    json_decref(d);
    return rc == 0 ? AGENT_OK : AGENT_FAIL;
}

static void run_chain_agent(fixture *f, int raw)
{
    static const char *const topics[] = {"task-events"};
    static const char *const types[] = {"task.created"};
    agent_def def = AGENT_DEF_INIT;
    def.name = "chain";
    def.group = raw ? "chain-raw" : "chain";
    def.topics = topics;
    def.topic_count = 1;
    def.types = types;
    def.type_count = 1;
    def.handle = chain_handle;
    def.raw_events = raw;
    char err[512];
    agent_runtime *rt = agent_runtime_open(&f->cfg, &def, NULL, err, sizeof(err));
    assert_non_null(rt);
    size_t n;
    do
        assert_int_equal(agent_runtime_step(rt, 0, &n, err, sizeof(err)), 0);
    while (n > 0);
    agent_runtime_close(rt);
}

static void check_derived(fixture *f, const char *cid, const char *input_tp, int derived_each)
{
    trace_tree t;
    char err[256];
    trace_tree_init(&t, cid);
    assert_int_equal(trace_collect(&f->cfg, &t, NULL, err, sizeof(err)), 0);
    trace_tree_build(&t, util_now_ms(), 30000);
    assert_int_equal(t.count, 1 + 2 * (size_t)derived_each);
    assert_int_equal(t.root_count, 1);
    const trace_node *root = &t.nodes[t.roots[0]];
    assert_int_equal(root->child_count, derived_each); /* test.handled of each group */
    for (size_t i = 0; i < t.count; i++) {
        const trace_node *n = &t.nodes[i];
        if (!input_tp) {
            assert_string_equal(n->ev.traceparent, ""); /* none in, none out */
            continue;
        }
        assert_true(trace_parent_valid(n->ev.traceparent, strlen(n->ev.traceparent)));
        assert_memory_equal(n->ev.traceparent, input_tp, 36); /* same trace */
        assert_string_equal(n->ev.tracestate, "congo=t61");
        for (size_t k = 0; k < i; k++) /* every event its own span */
            assert_memory_not_equal(n->ev.traceparent + 36, t.nodes[k].ev.traceparent + 36, 16);
    }
    for (size_t c = 0; c < root->child_count; c++) {
        const trace_node *h = &t.nodes[root->children[c]];
        assert_string_equal(h->ev.event_type, "test.handled");
        assert_int_equal(h->child_count, 1);
        assert_string_equal(t.nodes[h->children[0]].ev.event_type, "test.followed");
    }
    trace_tree_release(&t);
}

static void test_derived_events_are_child_spans(void **state)
{
    fixture *f = *state;
    publish(f, "task-events", "task.created", "req-traced", "api-create-t-1", TP, "congo=t61", 1,
            NULL);
    run_chain_agent(f, 0); /* decodes the JSON */
    run_chain_agent(f, 1); /* reads the headers only */
    check_derived(f, "req-traced", TP, 2);
}

static void test_untraced_input_gives_untraced_events(void **state)
{
    fixture *f = *state;
    publish(f, "task-events", "task.created", "req-plain", "api-create-t-1", NULL, NULL, 1, NULL);
    publish(f, "task-events", "task.created", "req-nohdr", "api-create-t-1", NULL, NULL, 0, NULL);
    run_chain_agent(f, 1);
    check_derived(f, "req-plain", NULL, 1);
    check_derived(f, "req-nohdr", NULL, 1);
}

static void test_collect_reads_every_topic_and_dlq(void **state)
{
    fixture *f = *state;
    char root[EVENT_UUID_LEN + 1], other[EVENT_UUID_LEN + 1];
    publish(f, "task-events", "task.created", "req-c", "api-create-t-1", TP, NULL, 1, root);
    publish(f, "task-events", "task.created", "req-other", "api-create-t-2", NULL, NULL, 1, other);
    publish(f, "notification-events", "notification.sent", "req-c", root, NULL, NULL, 0, NULL);
    /* a dead letter (another task.created) in task-events.dlq, without ce_ headers */
    publish(f, "task-events.dlq", "task.created", "req-c", "api-create-t-1", NULL, NULL, 0, NULL);
    /* not read: a topic outside the pattern */
    publish(f, "scratch", "task.created", "req-c", "api-create-t-3", NULL, NULL, 1, NULL);
    /* a record that is not an envelope is skipped */
    bus_record r = BUS_RECORD_INIT;
    r.topic = "task-events";
    r.value = "not json req-c";
    r.value_len = strlen(r.value);
    char err[256];
    assert_int_equal(bus_produce(f->producer, &r, 1, NULL, err, sizeof(err)), 0);

    trace_tree t;
    trace_tree_init(&t, "req-c");
    assert_int_equal(trace_collect(&f->cfg, &t, NULL, err, sizeof(err)), 0);
    trace_tree_build(&t, util_now_ms(), 30000);
    assert_int_equal(t.count, 3); /* task.created, notification.sent, the dlq's task.created */
    assert_int_equal(t.root_count, 2);
    size_t dlq = 0;
    for (size_t i = 0; i < t.count; i++) {
        assert_string_equal(t.nodes[i].ev.correlation_id, "req-c");
        dlq += t.nodes[i].dead_lettered;
    }
    assert_int_equal(dlq, 1);
    trace_tree_release(&t);

    trace_tree_init(&t, "req-none");
    assert_int_equal(trace_collect(&f->cfg, &t, NULL, err, sizeof(err)), 0);
    assert_int_equal(t.count, 0);
    trace_tree_release(&t);

    /* no log at all: an error naming the file */
    bus_config missing = f->cfg;
    missing.data_dir = "/nonexistent/herald";
    trace_tree_init(&t, "req-c");
    assert_int_equal(trace_collect(&missing, &t, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/nonexistent/herald/bus.db"));
    trace_tree_release(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_valid),
        cmocka_unit_test(test_traceparent_invalid),
        cmocka_unit_test(test_traceparent_future_version),
        cmocka_unit_test(test_traceparent_new_and_child),
        cmocka_unit_test(test_tracestate),
        cmocka_unit_test(test_envelope_trace_round_trip),
        cmocka_unit_test(test_envelope_foreign_trace_values_kept_as_data),
        cmocka_unit_test(test_event_set_trace),
        cmocka_unit_test(test_headers_carry_trace),
        cmocka_unit_test(test_tree_scenario),
        cmocka_unit_test(test_tree_orphans_and_roots),
        cmocka_unit_test(test_tree_missing_follow_ups),
        cmocka_unit_test(test_tree_duplicates_and_dlq),
        cmocka_unit_test(test_tree_cycles_and_depth),
        cmocka_unit_test(test_tree_truncated),
        cmocka_unit_test(test_correlation_id_rule),
        cmocka_unit_test_setup_teardown(test_derived_events_are_child_spans, setup_log,
                                        teardown_log),
        cmocka_unit_test_setup_teardown(test_untraced_input_gives_untraced_events, setup_log,
                                        teardown_log),
        cmocka_unit_test_setup_teardown(test_collect_reads_every_topic_and_dlq, setup_log,
                                        teardown_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
