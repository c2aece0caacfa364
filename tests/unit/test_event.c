/*
 * test_event.c - unit tests for src/event: the JSON codec (round trips, key
 * order, every rejected field), RFC 3339 timestamps, UUIDv7 ids, the naming
 * rules and event_build(). Exact values come from independent sources
 * (Python's datetime for epoch milliseconds, glibc's gmtime_r/timegm as an
 * oracle for the calendar arithmetic).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "event/event.h"

/* 2025-01-15T14:30:22.456Z, from Python's datetime. */
#define SAMPLE_MS INT64_C(1736951422456)

#define SAMPLE_ID "0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6b"

/* The envelope of ARCHITECTURE.md, compact and in envelope order. */
static const char sample_json[] =
    "{\"event_id\":\"" SAMPLE_ID "\",\"event_type\":\"task.created\","
    "\"occurred_at\":\"2025-01-15T14:30:22.456Z\","
    "\"data\":{\"task_id\":\"t-1\",\"title\":\"Write report\",\"owner_id\":\"u-7\","
    "\"priority\":2},"
    "\"metadata\":{\"correlation_id\":\"req-abc-123\",\"causation_id\":\"api-create-t-1\","
    "\"source\":\"task-api\"}}";

static void assert_event_is_init(const event *ev)
{
    assert_int_equal(ev->event_id[0], '\0');
    assert_int_equal(ev->event_type[0], '\0');
    assert_true(ev->occurred_ms == 0);
    assert_null(ev->data);
    assert_null(ev->correlation_id);
    assert_null(ev->causation_id);
    assert_null(ev->source);
    assert_null(ev->metadata_extra);
}

/* Fill ev with junk so that a test notices if a failing call does not
 * reset it to EVENT_INIT. The junk is never freed by the code under test. */
static void scribble(event *ev)
{
    memset(ev, 0x5a, sizeof(*ev));
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

/* Replace the first occurrence of `from` in `base` by `to`; caller frees. */
static char *replace(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    assert_non_null(at);
    size_t head = (size_t)(at - base), flen = strlen(from), tlen = strlen(to);
    char *out = xmalloc(strlen(base) - flen + tlen + 1);
    memcpy(out, base, head);
    memcpy(out + head, to, tlen);
    strcpy(out + head + tlen, at + flen);
    return out;
}

static char *repeat(const char *unit, size_t times)
{
    size_t n = strlen(unit);
    char *s = xmalloc(n * times + 1);
    for (size_t i = 0; i < times; i++)
        memcpy(s + i * n, unit, n);
    s[n * times] = '\0';
    return s;
}

/* ---- codec: valid input ----------------------------------------------- */

static void test_decode_sample(void **state)
{
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, sample_json, strlen(sample_json), err, sizeof(err)), 0);
    assert_string_equal(ev.event_id, SAMPLE_ID);
    assert_string_equal(ev.event_type, "task.created");
    assert_true(ev.occurred_ms == SAMPLE_MS);
    assert_true(json_is_object(ev.data));
    assert_string_equal(json_string_value(json_object_get(ev.data, "title")), "Write report");
    assert_int_equal(json_integer_value(json_object_get(ev.data, "priority")), 2);
    assert_string_equal(ev.correlation_id, "req-abc-123");
    assert_string_equal(ev.causation_id, "api-create-t-1");
    assert_string_equal(ev.source, "task-api");
    assert_null(ev.metadata_extra);

    /* Re-encoding gives back exactly the input: same keys, same order. */
    size_t len = 0;
    char *out = event_encode(&ev, &len);
    assert_string_equal(out, sample_json);
    assert_int_equal(len, strlen(sample_json));
    free(out);
    event_release(&ev);
    assert_event_is_init(&ev);
}

static void test_build_encode_key_order(void **state)
{
    json_t *data = json_pack("{s:s, s:s, s:s, s:i}", "task_id", "t-1", "title", "Write report",
                             "owner_id", "u-7", "priority", 2);
    event ev;
    char err[256] = "";
    assert_int_equal(event_build(&ev, "task.created", data, "req-abc-123", "api-create-t-1",
                                 "task-api", err, sizeof(err)),
                     0);
    char when[EVENT_TIME_LEN + 1];
    event_format_time(ev.occurred_ms, when);
    char expected[1024];
    snprintf(expected, sizeof(expected),
             "{\"event_id\":\"%s\",\"event_type\":\"task.created\",\"occurred_at\":\"%s\","
             "\"data\":{\"task_id\":\"t-1\",\"title\":\"Write report\",\"owner_id\":\"u-7\","
             "\"priority\":2},\"metadata\":{\"correlation_id\":\"req-abc-123\","
             "\"causation_id\":\"api-create-t-1\",\"source\":\"task-api\"}}",
             ev.event_id, when);
    size_t len = 0;
    char *out = event_encode(&ev, &len);
    assert_string_equal(out, expected);
    assert_int_equal(len, strlen(expected));
    free(out);
    event_release(&ev);
    json_decref(data);
}

static void test_round_trip_byte_identical(void **state)
{
    json_t *data = json_pack("{s:s, s:f, s:b, s:n, s:[i,i], s:{s:s}}", "task_id", "t-9", "score",
                             2.5, "done", 1, "note", "tags", 1, 2, "nested", "k", "v");
    event ev;
    char err[256] = "";
    assert_int_equal(event_build(&ev, "task.updated", data, NULL, NULL, "api", err, sizeof(err)),
                     0);
    json_decref(data);
    size_t len1, len2;
    char *first = event_encode(&ev, &len1);

    event back;
    assert_int_equal(event_decode(&back, first, len1, err, sizeof(err)), 0);
    assert_string_equal(back.event_id, ev.event_id);
    assert_string_equal(back.event_type, ev.event_type);
    assert_true(back.occurred_ms == ev.occurred_ms);
    assert_string_equal(back.correlation_id, ev.correlation_id);
    assert_string_equal(back.causation_id, ev.causation_id);
    assert_string_equal(back.source, ev.source);
    assert_true(json_equal(back.data, ev.data));

    char *second = event_encode(&back, &len2);
    assert_int_equal(len1, len2);
    assert_memory_equal(first, second, len1);
    free(first);
    free(second);
    event_release(&ev);
    event_release(&back);
}

static void test_non_ascii_passes_as_utf8(void **state)
{
    /* "Café ✓ 日本" and an emoji, as raw UTF-8. */
    const char *title = "Caf\xc3\xa9 \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89";
    json_t *data = json_pack("{s:s}", "title", title);
    event ev;
    char err[256] = "";
    assert_int_equal(
        event_build(&ev, "task.created", data, "r\xc3\xa9q-1", NULL, "api", err, sizeof(err)), 0);
    json_decref(data);
    size_t len;
    char *out = event_encode(&ev, &len);
    assert_non_null(strstr(out, title));
    assert_non_null(strstr(out, "\"correlation_id\":\"r\xc3\xa9q-1\""));
    assert_null(strstr(out, "\\u"));

    event back;
    assert_int_equal(event_decode(&back, out, len, err, sizeof(err)), 0);
    assert_string_equal(json_string_value(json_object_get(back.data, "title")), title);
    assert_string_equal(back.correlation_id, "r\xc3\xa9q-1");
    char *again = event_encode(&back, NULL);
    assert_string_equal(again, out);
    free(out);
    free(again);
    event_release(&ev);
    event_release(&back);
}

static void test_metadata_extra_kept(void **state)
{
    char *in = replace(sample_json, "\"source\":\"task-api\"}",
                       "\"source\":\"task-api\",\"traceparent\":\"00-abc-01\",\"hops\":3}");
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_non_null(ev.metadata_extra);
    assert_int_equal(json_object_size(ev.metadata_extra), 2);
    assert_string_equal(json_string_value(json_object_get(ev.metadata_extra, "traceparent")),
                        "00-abc-01");
    assert_int_equal(json_integer_value(json_object_get(ev.metadata_extra, "hops")), 3);
    char *out = event_encode(&ev, NULL);
    assert_string_equal(out, in);

    /* A deep copy keeps them too, independently of the original. */
    event copy;
    event_copy(&copy, &ev);
    event_release(&ev);
    char *out2 = event_encode(&copy, NULL);
    assert_string_equal(out2, in);
    free(out);
    free(out2);
    free(in);
    event_release(&copy);
}

static void test_metadata_extra_moved_after_source(void **state)
{
    /* Unknown metadata keys come back after the three known ones. */
    char *in = replace(sample_json, "\"metadata\":{", "\"metadata\":{\"traceparent\":\"tp\",");
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    char *out = event_encode(&ev, NULL);
    assert_non_null(strstr(out, "\"source\":\"task-api\",\"traceparent\":\"tp\"}}"));
    free(out);
    free(in);
    event_release(&ev);
}

static void test_decode_ignores_unknown_top_level_keys(void **state)
{
    char *in = replace(sample_json, "{\"event_id\"", "{\"schema\":3,\"event_id\"");
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    char *out = event_encode(&ev, NULL);
    assert_string_equal(out, sample_json);
    free(out);
    free(in);
    event_release(&ev);
}

static void test_decode_accepts_foreign_forms(void **state)
{
    /* Other producers: imperative type, uppercase UUID, offset timestamp
     * with microseconds, whitespace. Past tense is not required here. */
    const char *in = "{ \"event_id\" : \"0194697E-1F38-7CC1-9A3B-1C2D3E4F5A6B\",\n"
                     "  \"event_type\": \"task.create\",\n"
                     "  \"occurred_at\": \"2025-01-15T16:30:22.456789+02:00\",\n"
                     "  \"data\": {},\n"
                     "  \"metadata\": {\"correlation_id\": \"c\", \"causation_id\": \"d\","
                     " \"source\": \"s\"} }";
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_string_equal(ev.event_id, "0194697E-1F38-7CC1-9A3B-1C2D3E4F5A6B");
    assert_string_equal(ev.event_type, "task.create");
    assert_true(ev.occurred_ms == SAMPLE_MS);
    event_release(&ev);
}

static void test_decode_uses_only_len_bytes(void **state)
{
    /* The input need not be NUL-terminated: bytes past len are ignored. */
    size_t n = strlen(sample_json);
    char *buf = xmalloc(n + 8);
    memcpy(buf, sample_json, n);
    memcpy(buf + n, "garbage!", 8);
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, buf, n, err, sizeof(err)), 0);
    event_release(&ev);
    /* ...and a len one short cuts the closing brace off. */
    assert_int_equal(event_decode(&ev, buf, n - 1, err, sizeof(err)), -1);
    assert_contains(err, "malformed JSON");
    free(buf);
}

static void test_ids_limit_counts_characters(void **state)
{
    /* 256 two-byte characters are 512 bytes but within the limit. */
    char *id = repeat("\xc3\xa9", EVENT_REF_ID_MAX);
    char *in = replace(sample_json, "req-abc-123", id);
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), 0);
    assert_string_equal(ev.correlation_id, id);
    event_release(&ev);
    free(in);
    free(id);
}

/* ---- codec: invalid input --------------------------------------------- */

struct bad_case {
    const char *from, *to; /* edit applied to sample_json */
    const char *expect;    /* substring of the error */
};

static void test_decode_rejects_bad_fields(void **state)
{
    char *long_id = repeat("x", EVENT_REF_ID_MAX + 1);
    char *long_src = repeat("s", EVENT_SOURCE_MAX + 1);
    char long_id_json[400], long_src_json[200];
    snprintf(long_id_json, sizeof(long_id_json), "\"correlation_id\":\"%s\"", long_id);
    snprintf(long_src_json, sizeof(long_src_json), "\"source\":\"%s\"", long_src);

    const struct bad_case cases[] = {
        {"\"event_id\":\"" SAMPLE_ID "\",", "", "field 'event_id': missing"},
        {"\"" SAMPLE_ID "\"", "42", "field 'event_id': expected a string, got number"},
        {"\"" SAMPLE_ID "\"", "\"abc\"", "field 'event_id': bad UUID 'abc'"},
        {"\"" SAMPLE_ID "\"", "\"0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6\"", "bad UUID"},
        /* Quoted values are masked and shortened for logs. */
        {"\"" SAMPLE_ID "\"", "\"ab\\u0001c\\nd\"", "field 'event_id': bad UUID 'ab?c?d'"},
        {"\"" SAMPLE_ID "\"", "\"" SAMPLE_ID SAMPLE_ID "\"",
         "field 'event_id': bad UUID '" SAMPLE_ID "0194697e-1f3...'"},
        {"\"" SAMPLE_ID "\"", "\"0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6bb\"", "bad UUID"},
        {"\"" SAMPLE_ID "\"", "\"0194697e_1f38-7cc1-9a3b-1c2d3e4f5a6b\"", "bad UUID"},
        {"\"" SAMPLE_ID "\"", "\"0194697g-1f38-7cc1-9a3b-1c2d3e4f5a6b\"", "bad UUID"},
        {"\"event_type\":\"task.created\",", "", "field 'event_type': missing"},
        {"\"task.created\"", "null", "field 'event_type': expected a string, got null"},
        {"\"task.created\"", "\"Task.Created\"",
         "field 'event_type': event type 'Task.Created': "
         "must be domain.action in lowercase"},
        {"\"task.created\"", "\"task\"",
         "field 'event_type': event type 'task': "
         "must be domain.action (no '.' found)"},
        {"\"task.created\"", "\"a.b.c\"",
         "field 'event_type': event type 'a.b.c': "
         "must be domain.action (more than one '.')"},
        {"\"task.created\"", "\"\"", "field 'event_type': event type is empty"},
        {"\"occurred_at\":\"2025-01-15T14:30:22.456Z\",", "", "field 'occurred_at': missing"},
        {"\"2025-01-15T14:30:22.456Z\"", "1736951422456",
         "field 'occurred_at': expected a string, got number"},
        {"2025-01-15T14:30:22.456Z", "2025-13-01T00:00:00Z",
         "field 'occurred_at': bad timestamp '2025-13-01T00:00:00Z'"},
        {"2025-01-15T14:30:22.456Z", "2025-01-15", "field 'occurred_at': bad timestamp"},
        {"2025-01-15T14:30:22.456Z", "yesterday", "field 'occurred_at': bad timestamp 'yesterday'"},
        {"\"data\":{\"task_id\":\"t-1\",\"title\":\"Write report\",\"owner_id\":\"u-7\","
         "\"priority\":2},",
         "", "field 'data': missing"},
        {"{\"task_id\":\"t-1\",\"title\":\"Write report\",\"owner_id\":\"u-7\",\"priority\":2}",
         "[1,2]", "field 'data': expected an object, got array"},
        {"\"data\":{", "\"data\":\"x\",\"_\":{", "field 'data': expected an object, got string"},
        {",\"metadata\":{\"correlation_id\":\"req-abc-123\",\"causation_id\":\"api-create-t-1\","
         "\"source\":\"task-api\"}",
         "", "field 'metadata': missing"},
        {"\"metadata\":{", "\"metadata\":true,\"_\":{",
         "field 'metadata': expected an object, got boolean"},
        {"\"correlation_id\":\"req-abc-123\",", "", "field 'metadata.correlation_id': missing"},
        {"\"req-abc-123\"", "7", "field 'metadata.correlation_id': expected a string, got number"},
        {"\"req-abc-123\"", "\"\"", "field 'metadata.correlation_id': empty"},
        {"\"correlation_id\":\"req-abc-123\"", long_id_json,
         "field 'metadata.correlation_id': longer than 256 characters"},
        {"req-abc-123", "req\\u0001abc",
         "field 'metadata.correlation_id': contains a control "
         "character"},
        {"req-abc-123", "req\\u007f", "field 'metadata.correlation_id': contains a control"},
        {"req-abc-123", "req\\u0085", "field 'metadata.correlation_id': contains a control"},
        {"\"causation_id\":\"api-create-t-1\",", "", "field 'metadata.causation_id': missing"},
        {"\"api-create-t-1\"", "\"\"", "field 'metadata.causation_id': empty"},
        {"api-create-t-1", "api\\ncreate", "field 'metadata.causation_id': contains a control"},
        {",\"source\":\"task-api\"", "", "field 'metadata.source': missing"},
        {"\"task-api\"", "12", "field 'metadata.source': expected a string, got number"},
        {"\"task-api\"", "null", "field 'metadata.source': expected a string, got null"},
        {"\"task-api\"", "{}", "field 'metadata.source': expected a string, got object"},
        {"\"task-api\"", "\"\"", "field 'metadata.source': empty"},
        {"\"source\":\"task-api\"", long_src_json,
         "field 'metadata.source': longer than 128 characters"},
        {"task-api", "task\\tapi", "field 'metadata.source': contains a control character"},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        char *in = replace(sample_json, cases[i].from, cases[i].to);
        event ev;
        scribble(&ev);
        char err[512] = "";
        int rc = event_decode(&ev, in, strlen(in), err, sizeof(err));
        if (rc != -1)
            fail_msg("case %zu (%s) was accepted", i, cases[i].expect);
        assert_contains(err, cases[i].expect);
        assert_event_is_init(&ev);
        free(in);
    }
    free(long_id);
    free(long_src);
}

static void test_decode_exact_limits_accepted(void **state)
{
    char *id = repeat("x", EVENT_REF_ID_MAX);
    char *src = repeat("s", EVENT_SOURCE_MAX);
    char *a = replace(sample_json, "req-abc-123", id);
    char *b = replace(a, "task-api", src);
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, b, strlen(b), err, sizeof(err)), 0);
    assert_int_equal(strlen(ev.correlation_id), EVENT_REF_ID_MAX);
    assert_int_equal(strlen(ev.source), EVENT_SOURCE_MAX);
    event_release(&ev);
    free(a);
    free(b);
    free(id);
    free(src);
}

static void test_decode_rejects_bad_json(void **state)
{
    const struct {
        const char *in, *expect;
    } cases[] = {
        {"", "malformed JSON at line 1"},
        {"{\"event_id\":", "malformed JSON at line 1"},
        {"{\n\"event_id\": 1,\n  nope}", "malformed JSON at line 3, column "},
        {"[1, 2]", "top level must be a JSON object, got array"},
        {"42", "top level must be a JSON object, got number"},
        {"\"s\"", "top level must be a JSON object, got string"},
        {"null", "top level must be a JSON object, got null"},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        event ev;
        scribble(&ev);
        char err[512] = "";
        assert_int_equal(event_decode(&ev, cases[i].in, strlen(cases[i].in), err, sizeof(err)), -1);
        assert_contains(err, cases[i].expect);
        assert_event_is_init(&ev);
    }

    /* Position of the error: byte offset and jansson's own text. */
    event ev;
    char err[512] = "";
    const char *in = "{\"a\": tru}";
    assert_int_equal(event_decode(&ev, in, strlen(in), err, sizeof(err)), -1);
    assert_contains(err, "malformed JSON at line 1, column ");
    assert_contains(err, "(byte ");
    assert_contains(err, "invalid token");

    /* Duplicate keys, a NUL escape and trailing garbage are parse errors. */
    char *dup = replace(sample_json, "{\"event_id\"", "{\"event_type\":\"x.y\",\"event_id\"");
    assert_int_equal(event_decode(&ev, dup, strlen(dup), err, sizeof(err)), -1);
    assert_contains(err, "malformed JSON");
    assert_contains(err, "duplicate");
    free(dup);
    char *nul = replace(sample_json, "req-abc-123", "req\\u0000abc");
    assert_int_equal(event_decode(&ev, nul, strlen(nul), err, sizeof(err)), -1);
    assert_contains(err, "malformed JSON");
    free(nul);
    char *trail = replace(sample_json, "\"task-api\"}}", "\"task-api\"}} x");
    assert_int_equal(event_decode(&ev, trail, strlen(trail), err, sizeof(err)), -1);
    assert_contains(err, "malformed JSON");
    free(trail);
}

static void test_decode_size_limit(void **state)
{
    /* Exactly EVENT_MAX_BYTES (the sample padded with whitespace) decodes;
     * one byte more is refused before parsing, even though it is valid. */
    size_t n = strlen(sample_json);
    char *buf = xmalloc(EVENT_MAX_BYTES + 2);
    memset(buf, ' ', EVENT_MAX_BYTES + 1);
    memcpy(buf, sample_json, n);
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, buf, EVENT_MAX_BYTES, err, sizeof(err)), 0);
    event_release(&ev);
    scribble(&ev);
    assert_int_equal(event_decode(&ev, buf, EVENT_MAX_BYTES + 1, err, sizeof(err)), -1);
    assert_string_equal(err, "event is 1048577 bytes, over the 1048576-byte limit");
    assert_event_is_init(&ev);
    free(buf);

    /* A huge input is refused without reading it (len only). */
    static const char small[] = "{}";
    assert_int_equal(event_decode(&ev, small, (size_t)1 << 40, err, sizeof(err)), -1);
    assert_contains(err, "over the 1048576-byte limit");
}

static void test_from_json(void **state)
{
    json_error_t jerr;
    json_t *root = json_loads(sample_json, 0, &jerr);
    assert_non_null(root);
    event ev;
    char err[256] = "";
    assert_int_equal(event_from_json(&ev, root, err, sizeof(err)), 0);
    assert_string_equal(ev.source, "task-api");
    /* root is borrowed: dropping it leaves the event intact. */
    json_decref(root);
    assert_string_equal(json_string_value(json_object_get(ev.data, "task_id")), "t-1");
    event_release(&ev);

    assert_int_equal(event_from_json(&ev, NULL, err, sizeof(err)), -1);
    assert_contains(err, "top level must be a JSON object");

    /* A hand-built tree may hold strings with a NUL, which the parser
     * never produces: still refused. */
    root = json_loads(sample_json, 0, &jerr);
    json_t *meta = json_object_get(root, "metadata");
    json_object_set_new(meta, "source", json_stringn("task\0api", 8));
    scribble(&ev);
    assert_int_equal(event_from_json(&ev, root, err, sizeof(err)), -1);
    assert_string_equal(err, "field 'metadata.source': contains a control character");
    assert_event_is_init(&ev);
    json_object_set_new(meta, "source", json_string("task-api"));
    json_object_set_new(root, "occurred_at", json_stringn("2025-01-15T14:30:22.456Z\0!", 26));
    assert_int_equal(event_from_json(&ev, root, err, sizeof(err)), -1);
    assert_contains(err, "field 'occurred_at': bad timestamp");
    json_object_set_new(root, "event_type", json_stringn("task.created\0x", 14));
    assert_int_equal(event_from_json(&ev, root, err, sizeof(err)), -1);
    assert_contains(err, "field 'event_type'");
    json_decref(root);
}

static void test_to_json(void **state)
{
    event ev;
    char err[256] = "";
    assert_int_equal(event_decode(&ev, sample_json, strlen(sample_json), err, sizeof(err)), 0);
    json_t *root = event_to_json(&ev);
    assert_int_equal(json_object_size(root), 5);
    assert_string_equal(json_string_value(json_object_get(root, "occurred_at")),
                        "2025-01-15T14:30:22.456Z");
    json_t *meta = json_object_get(root, "metadata");
    assert_int_equal(json_object_size(meta), 3);
    assert_string_equal(json_string_value(json_object_get(meta, "causation_id")), "api-create-t-1");
    json_decref(root);
    /* The event does not depend on the returned tree. */
    assert_string_equal(json_string_value(json_object_get(ev.data, "title")), "Write report");
    event_release(&ev);
}

/* ---- timestamps ------------------------------------------------------- */

static void test_parse_time_valid(void **state)
{
    const struct {
        const char *in;
        int64_t ms;
    } cases[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"2025-01-15T14:30:22.456Z", SAMPLE_MS},
        {"2025-01-15T14:30:22Z", SAMPLE_MS - 456},
        {"2025-01-15t14:30:22.456z", SAMPLE_MS},
        {"2025-01-15 14:30:22.456Z", SAMPLE_MS},
        {"2025-01-15T16:30:22.456+02:00", SAMPLE_MS},
        {"2025-01-15T09:00:22.456-05:30", SAMPLE_MS},
        {"2025-01-15T14:30:22.456+00:00", SAMPLE_MS},
        {"2025-01-15T14:30:22.456-00:00", SAMPLE_MS},
        {"2025-01-15T14:30:22.4Z", SAMPLE_MS - 56},
        {"2025-01-15T14:30:22.45Z", SAMPLE_MS - 6},
        {"2025-01-15T14:30:22.456999999Z", SAMPLE_MS}, /* truncated, not rounded */
        {"2025-01-15T14:30:22.4569Z", SAMPLE_MS},
        {"2025-01-15T14:30:22.456789123456Z", SAMPLE_MS},      /* RFC 3339: any digit count */
        {"2025-01-01T00:30:00+01:00", INT64_C(1735687800000)}, /* crosses into 2024 */
        {"2024-02-29T12:00:00Z", INT64_C(1709208000000)},
        {"2000-02-29T00:00:00Z", INT64_C(951782400000)},
        {"1969-12-31T23:59:59.999Z", -1},
        {"0001-01-01T00:00:00Z", INT64_C(-62135596800000)},
        {"9999-12-31T23:59:59.999Z", INT64_C(253402300799999)},
        {"2025-01-15T23:59:59+23:59", SAMPLE_MS - SAMPLE_MS % 86400000 + 59000},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        int64_t ms = 12345;
        if (event_parse_time(cases[i].in, &ms) != 0)
            fail_msg("'%s' was refused", cases[i].in);
        if (ms != cases[i].ms)
            fail_msg("'%s' gave %lld, expected %lld", cases[i].in, (long long)ms,
                     (long long)cases[i].ms);
    }
}

static void test_parse_time_invalid(void **state)
{
    const char *cases[] = {
        "",
        "2025-01-15",
        "2025-01-15T14:30Z",
        "2025-01-15T14:30:22",     /* no zone */
        "2025-01-15T14:30:22.456", /* no zone */
        "2025-13-01T00:00:00Z",    /* month 13 */
        "2025-00-01T00:00:00Z",    /* month 0 */
        "2025-01-00T00:00:00Z",    /* day 0 */
        "2025-01-32T00:00:00Z",    /* day 32 */
        "2025-04-31T00:00:00Z",    /* April has 30 days */
        "2025-06-31T00:00:00Z",    /* June too */
        "2023-02-29T00:00:00Z",    /* not a leap year */
        "1900-02-29T00:00:00Z",    /* century, not a leap year */
        "2024-02-30T00:00:00Z",
        "2025-01-15T24:00:00Z",      /* hour 24 */
        "2025-01-15T14:60:00Z",      /* minute 60 */
        "2025-01-15T14:30:60Z",      /* leap second: refused, see event.c */
        "2025-01-15T14:30:22.Z",     /* '.' without digits */
        "2025-01-15T14:30:22.456ZZ", /* trailing garbage */
        "2025-01-15T14:30:22.456Z ",
        "2025-01-15T14:30:22.456Z\n",
        "2025-01-15T14:30:22.456Zx",
        "2025-01-15T14:30:22+02:00x",
        "2025-01-15T14:30:22+0200", /* offset needs a colon */
        "2025-01-15T14:30:22+02",
        "2025-01-15T14:30:22+24:00", /* offset hour 24 */
        "2025-01-15T14:30:22+02:60", /* offset minute 60 */
        "2025-01-15X14:30:22Z",      /* bad separator */
        "2025-01-15_14:30:22Z",
        "2025/01/15T14:30:22Z",
        "2025-1-15T14:30:22Z", /* one-digit month */
        "25-01-15T14:30:22Z",
        "+2025-01-15T14:30:22Z",
        "2025-01-15T14:30:2Z",
        "2025-01-15T14:30:22,456Z", /* comma fraction */
        "2025-01-15T 4:30:22Z",
        "2025-01-15T14:30:22.45a6Z",
        "２０２５-01-15T14:30:22Z", /* full-width digits */
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        int64_t ms = 12345;
        if (event_parse_time(cases[i], &ms) != -1)
            fail_msg("'%s' was accepted as %lld", cases[i], (long long)ms);
        assert_true(ms == 12345); /* untouched on failure */
    }
    int64_t ms = 0;
    assert_int_equal(event_parse_time(NULL, &ms), -1);
}

static void test_format_time(void **state)
{
    const struct {
        int64_t ms;
        const char *out;
    } cases[] = {
        {0, "1970-01-01T00:00:00.000Z"},
        {SAMPLE_MS, "2025-01-15T14:30:22.456Z"},
        {-1, "1969-12-31T23:59:59.999Z"},
        {-86400000, "1969-12-31T00:00:00.000Z"},
        {INT64_C(1709208000000), "2024-02-29T12:00:00.000Z"},
        {INT64_C(951782400000), "2000-02-29T00:00:00.000Z"},
        {INT64_C(-62135596800000), "0001-01-01T00:00:00.000Z"},
        {INT64_C(253402300799999), "9999-12-31T23:59:59.999Z"},
        /* Out of the four-digit-year range: clamped, never longer. */
        {INT64_C(253402300800000), "9999-12-31T23:59:59.999Z"},
        {INT64_MAX, "9999-12-31T23:59:59.999Z"},
        {INT64_MIN, "0000-01-01T00:00:00.000Z"},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        char out[EVENT_TIME_LEN + 1];
        memset(out, 'x', sizeof(out));
        event_format_time(cases[i].ms, out);
        assert_string_equal(out, cases[i].out);
        assert_int_equal(strlen(out), EVENT_TIME_LEN);
    }
}

static uint64_t lcg_next(uint64_t *s)
{
    *s = *s * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
    return *s >> 11;
}

static void test_time_against_libc(void **state)
{
    /* Random instants from 1600 to 2400: our calendar agrees with glibc's
     * gmtime_r, and format -> parse gives back the same ms. */
    const int64_t lo = INT64_C(-11676096000000), span = INT64_C(25245561600000);
    uint64_t seed = 42;
    for (int i = 0; i < 20000; i++) {
        int64_t ms = lo + (int64_t)(lcg_next(&seed) % (uint64_t)span);
        char out[EVENT_TIME_LEN + 1], expect[64];
        event_format_time(ms, out);

        int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
        time_t t = (time_t)secs;
        struct tm tm;
        assert_non_null(gmtime_r(&t, &tm));
        snprintf(expect, sizeof(expect), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(ms - secs * 1000));
        assert_string_equal(out, expect);

        int64_t back = 0;
        assert_int_equal(event_parse_time(out, &back), 0);
        assert_true(back == ms);
    }
}

/* ---- ids -------------------------------------------------------------- */

static void assert_uuid_v7_shape(const char *id)
{
    assert_int_equal(strlen(id), EVENT_UUID_LEN);
    for (int i = 0; i < EVENT_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(id[i], '-');
        else if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            fail_msg("'%s': character %d is not lowercase hex", id, i);
    }
    assert_int_equal(id[14], '7');           /* version */
    assert_non_null(strchr("89ab", id[19])); /* variant 10 */
    assert_true(event_uuid_valid(id));
}

static void test_uuid_v7_format_and_time(void **state)
{
    int64_t before = util_now_ms();
    char id[EVENT_UUID_LEN + 1];
    event_uuid_v7(id);
    int64_t after = util_now_ms();
    assert_uuid_v7_shape(id);

    /* The first 48 bits are the Unix time in ms. */
    char hex[13];
    memcpy(hex, id, 8);
    memcpy(hex + 8, id + 9, 4);
    hex[12] = '\0';
    int64_t ms = (int64_t)strtoll(hex, NULL, 16);
    assert_true(ms >= before);
    assert_true(ms <= after + 1); /* +1: the counter may borrow the next ms */
}

static void test_uuid_v7_strictly_increasing(void **state)
{
    char prev[EVENT_UUID_LEN + 1], cur[EVENT_UUID_LEN + 1];
    event_uuid_v7(prev);
    int random_bits_differ = 0;
    for (int i = 0; i < 10000; i++) {
        event_uuid_v7(cur);
        assert_uuid_v7_shape(cur);
        if (strcmp(cur, prev) <= 0)
            fail_msg("'%s' is not after '%s'", cur, prev);
        if (strcmp(cur + 19, prev + 19) != 0)
            random_bits_differ++;
        memcpy(prev, cur, sizeof(cur));
    }
    assert_int_equal(random_bits_differ, 10000);
}

/* util_random_bytes hands out pooled bytes once: no two draws repeat, and
 * a forked child does not hand out the bytes its parent will. */
static void test_random_bytes_never_repeat(void **state)
{
    enum { DRAWS = 2000, LEN = 10 };
    static unsigned char seen[DRAWS][LEN];
    for (int i = 0; i < DRAWS; i++)
        util_random_bytes(seen[i], (size_t)(1 + i % LEN)); /* odd sizes cross pool refills */
    for (int i = LEN; i < DRAWS; i += LEN)
        for (int j = i + LEN; j < DRAWS; j += LEN)
            if (memcmp(seen[i - 1], seen[j - 1], LEN) == 0)
                fail_msg("draws %d and %d are equal", i - 1, j - 1);
    unsigned char big[1000];
    util_random_bytes(big, sizeof(big)); /* past the pool's size: straight from the kernel */
    int zeros = 0;
    for (size_t i = 0; i < sizeof(big); i++)
        zeros += big[i] == 0;
    assert_true(zeros < 30);

    unsigned char parent[16], child[16];
    util_random_bytes(parent, 1); /* the pool is now partly used */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        util_random_bytes(child, sizeof(child));
        _exit(write(fds[1], child, sizeof(child)) == (ssize_t)sizeof(child) ? 0 : 1);
    }
    close(fds[1]);
    util_random_bytes(parent, sizeof(parent));
    assert_int_equal(read(fds[0], child, sizeof(child)), (int)sizeof(child));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_memory_not_equal(parent, child, sizeof(parent));
}

#define UUID_THREADS 4
#define UUID_PER_THREAD 5000

static void *uuid_worker(void *arg)
{
    char(*ids)[EVENT_UUID_LEN + 1] = arg;
    for (int i = 0; i < UUID_PER_THREAD; i++)
        event_uuid_v7(ids[i]);
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_uuid_v7_threads_unique(void **state)
{
    char(*ids)[EVENT_UUID_LEN + 1] = xcalloc(UUID_THREADS * UUID_PER_THREAD, EVENT_UUID_LEN + 1);
    pthread_t th[UUID_THREADS];
    for (int t = 0; t < UUID_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, uuid_worker, ids + t * UUID_PER_THREAD), 0);
    for (int t = 0; t < UUID_THREADS; t++)
        pthread_join(th[t], NULL);
    /* Each thread's ids increase; all ids are distinct by their time+counter
     * part alone (the first 18 characters), not only thanks to rand_b. */
    for (int t = 0; t < UUID_THREADS; t++)
        for (int i = 1; i < UUID_PER_THREAD; i++)
            assert_true(strcmp(ids[t * UUID_PER_THREAD + i - 1], ids[t * UUID_PER_THREAD + i]) < 0);
    qsort(ids, UUID_THREADS * UUID_PER_THREAD, EVENT_UUID_LEN + 1, cmp_id);
    for (int i = 1; i < UUID_THREADS * UUID_PER_THREAD; i++)
        assert_true(memcmp(ids[i - 1], ids[i], 18) != 0);
    free(ids);
}

static void test_uuid_valid(void **state)
{
    assert_true(event_uuid_valid("0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6b"));
    assert_true(event_uuid_valid("0194697E-1F38-7CC1-9A3B-1C2D3E4F5A6B"));
    assert_true(event_uuid_valid("00000000-0000-0000-0000-000000000000"));
    assert_false(event_uuid_valid(NULL));
    assert_false(event_uuid_valid(""));
    assert_false(event_uuid_valid("abc"));
    assert_false(event_uuid_valid("0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6"));   /* 35 */
    assert_false(event_uuid_valid("0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6bc")); /* 37 */
    assert_false(event_uuid_valid("0194697e1f38-7cc1-9a3b-1c2d3e4f5a6b0"));
    assert_false(event_uuid_valid("0194697e-1f38-7cc1-9a3b_1c2d3e4f5a6b"));
    assert_false(event_uuid_valid("0194697g-1f38-7cc1-9a3b-1c2d3e4f5a6b"));
    assert_false(event_uuid_valid("{194697e-1f38-7cc1-9a3b-1c2d3e4f5a6b"));
    assert_false(event_uuid_valid(" 194697e-1f38-7cc1-9a3b-1c2d3e4f5a6b"));
}

/* ---- naming rules ----------------------------------------------------- */

static void test_type_check_accepts_past_tense(void **state)
{
    const char *ok[] = {
        "task.created",
        "task.updated",
        "task.deleted",
        "task.completed",
        "task.assigned",
        "task.reopened",
        "task.status_changed",
        "notification.sent",
        "email.delivered",
        "reminder.due",
        "reminder.scheduled",
        "reminder.overdue",
        "order.paid",
        "report.built",
        "record.made",
        "item.sold",
        "item.bought",
        "lock.held",
        "user.left",
        "key.lost",
        "doc.read",
        "job.run",
        "flag.set",
        "page.written",
        "task.done",
        "task.given",
        "job.gone",
        "key.found",
        "job.hung",
        "msg.fed",
        "task.led",
        "task.withdrawn",
        "cfg.reset",
        "job.rebuilt",
        "mail.resent",
        "task.forbidden",
        "job.overridden",
        "task.undone",
        "task.dealt",
        "task.taught",
        "task.told",
        "bid.won",
        "task.spent",
        "task.cut",
        "task.put",
        "task.quit",
        "task.shed",
        "task.wed",
        "job.retried",
        "task.cancelled",
        "task.canceled",
        "v2.created",
        "task.re_opened",
        "a.b_c_d_used",
        "task.swept",
        "task.struck",
        "task.stuck",
        "task.spun",
        "task.meant",
        "task.lent",
        "task.fled",
        "task.felt",
        "task.bound",
        "task.worn",
        "task.woken",
        "task.thrown",
        "task.taken",
        "task.stolen",
        "task.spoken",
        "task.shown",
        "task.seen",
        "task.shaken",
        "task.risen",
        "task.ridden",
        "task.known",
        "task.hidden",
        "task.frozen",
        "task.forgotten",
        "task.fallen",
        "task.eaten",
        "task.driven",
        "task.drawn",
        "task.chosen",
        "task.broken",
        "task.begun",
        "task.met",
        "task.kept",
        "task.thought",
        "task.shut",
        "task.split",
        "task.hit",
        "task.cast",
        "task.upset",
        "task.freed",
        "task.agreed",
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(ok); i++) {
        char err[256] = "";
        if (event_type_check(ok[i], err, sizeof(err)) != 0)
            fail_msg("'%s' refused: %s", ok[i], err);
    }
}

static void test_type_check_suggests(void **state)
{
    const struct {
        const char *type, *suggestion;
    } cases[] = {
        {"task.create", "task.created"},
        {"order.pay", "order.paid"},
        {"notification.send", "notification.sent"},
        {"task.update", "task.updated"},
        {"task.assign", "task.assigned"},
        {"task.mark_complete", "task.mark_completed"},
        {"job.retry", "job.retried"},
        {"media.play", "media.played"},
        {"report.build", "report.built"},
        {"task.write", "task.written"},
        {"task.begin", "task.begun"},
        {"task.do", "task.done"},
        {"task.go", "task.gone"},
        {"task.get", "task.got"},
        {"task.teach", "task.taught"},
        {"task.withdraw", "task.withdrawn"},
        {"job.stop", "job.stopped"},
        {"order.ship", "order.shipped"},
        {"change.commit", "change.committed"},
        {"data.feed", "data.fed"},
        {"input.need", "input.needed"},
        {"step.proceed", "step.proceeded"},
        {"quota.exceed", "quota.exceeded"},
        {"task.embed", "task.embedded"},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        char err[512] = "", expect[128];
        assert_int_equal(event_type_check(cases[i].type, err, sizeof(err)), -1);
        snprintf(expect, sizeof(expect), "did you mean '%s'?", cases[i].suggestion);
        assert_contains(err, expect);
        /* The suggestion itself passes. */
        char err2[256] = "";
        if (event_type_check(cases[i].suggestion, err2, sizeof(err2)) != 0)
            fail_msg("suggestion '%s' refused: %s", cases[i].suggestion, err2);
    }

    char err[512];
    assert_int_equal(event_type_check("task.create", err, sizeof(err)), -1);
    assert_string_equal(err, "event type 'task.create': action 'create' is not in the past "
                             "tense; did you mean 'task.created'?");
    assert_int_equal(event_type_check("task.mark_complete", err, sizeof(err)), -1);
    assert_string_equal(err, "event type 'task.mark_complete': action 'mark_complete' is not "
                             "in the past tense; did you mean 'task.mark_completed'?");
}

static void test_type_check_refuses_without_suggestion(void **state)
{
    /* Not a base verb: refused, but no silly "creatinged" suggestion. */
    const char *cases[] = {"task.creating", "task.v2", "task.created_", "task.created_2"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        char err[512] = "";
        assert_int_equal(event_type_check(cases[i], err, sizeof(err)), -1);
        assert_contains(err, "is not in the past tense");
        assert_null(strstr(err, "did you mean"));
    }
    /* "-ed" words that are not past forms, and too-short "-ed". */
    const char *not_past[] = {"task.need", "task.speed", "task.succeed", "task.bed",
                              "task.red",  "task.ed",    "task.bleed",   "task.zed"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(not_past); i++) {
        char err[512] = "";
        if (event_type_check(not_past[i], err, sizeof(err)) != -1)
            fail_msg("'%s' accepted", not_past[i]);
        assert_contains(err, "is not in the past tense");
    }
}

static void test_type_syntax(void **state)
{
    char err[512];
    assert_int_equal(event_type_check("Task.created", err, sizeof(err)), -1);
    assert_string_equal(err, "event type 'Task.created': must be domain.action in lowercase "
                             "([a-z][a-z0-9_]* on each side)");
    assert_int_equal(event_type_check_syntax("Task.Created", err, sizeof(err)), -1);
    assert_string_equal(err, "event type 'Task.Created': must be domain.action in lowercase "
                             "([a-z][a-z0-9_]* on each side)");
    assert_int_equal(event_type_check("task..x", err, sizeof(err)), -1);
    assert_string_equal(err, "event type 'task..x': must be domain.action (more than one '.')");
    assert_int_equal(event_type_check("a.b.c", err, sizeof(err)), -1);
    assert_string_equal(err, "event type 'a.b.c': must be domain.action (more than one '.')");
    assert_int_equal(event_type_check("task", err, sizeof(err)), -1);
    assert_string_equal(err, "event type 'task': must be domain.action (no '.' found)");
    assert_int_equal(event_type_check("", err, sizeof(err)), -1);
    assert_string_equal(err, "event type is empty");
    assert_int_equal(event_type_check(NULL, err, sizeof(err)), -1);
    assert_string_equal(err, "event type is empty");

    const char *bad[] = {".created",      "task.",         "1task.created", "task.Created",
                         "task.cre-ated", "_task.created", "task._created", "task.créé",
                         " task.created", "task.created ", "task.2created", "task\n.created"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad); i++) {
        if (event_type_check_syntax(bad[i], err, sizeof(err)) != -1)
            fail_msg("'%s' accepted", bad[i]);
        assert_contains(err, "must be domain.action in lowercase");
    }

    /* Length: 128 is fine, 129 is not. */
    char type[EVENT_TYPE_MAX + 2];
    memset(type, 'a', sizeof(type));
    memcpy(type, "task.", 5);
    memcpy(type + EVENT_TYPE_MAX - 2, "ed", 2);
    type[EVENT_TYPE_MAX] = '\0';
    assert_int_equal(event_type_check(type, err, sizeof(err)), 0);
    type[EVENT_TYPE_MAX] = 'd';
    type[EVENT_TYPE_MAX + 1] = '\0';
    assert_int_equal(event_type_check(type, err, sizeof(err)), -1);
    assert_contains(err, "longer than 128 characters");

    /* Syntax alone does not require the past tense. */
    assert_int_equal(event_type_check_syntax("task.create", err, sizeof(err)), 0);
    assert_int_equal(event_type_check_syntax("a1_x.b_2", err, sizeof(err)), 0);

    /* A NULL err buffer is allowed. */
    assert_int_equal(event_type_check("task", NULL, 0), -1);
}

static void test_topic_for_type(void **state)
{
    char topic[64];
    assert_int_equal(event_topic_for_type("task.created", topic, sizeof(topic)), 0);
    assert_string_equal(topic, "task-events");
    assert_int_equal(event_topic_for_type("notification.sent", topic, sizeof(topic)), 0);
    assert_string_equal(topic, "notification-events");
    assert_int_equal(event_topic_for_type("reminder.due", topic, sizeof(topic)), 0);
    assert_string_equal(topic, "reminder-events");
    assert_int_equal(event_topic_for_type("email.delivered", topic, sizeof(topic)), 0);
    assert_string_equal(topic, "email-events");

    /* "task-events" needs 12 bytes with its NUL. */
    char small[12];
    assert_int_equal(event_topic_for_type("task.created", small, 12), 0);
    assert_string_equal(small, "task-events");
    assert_int_equal(event_topic_for_type("task.created", small, 11), -1);
    assert_int_equal(event_topic_for_type("task", topic, sizeof(topic)), -1);
    assert_int_equal(event_topic_for_type(".created", topic, sizeof(topic)), -1);
    assert_int_equal(event_topic_for_type(NULL, topic, sizeof(topic)), -1);
}

/* ---- event_build / copy / release ------------------------------------- */

static void test_build_defaults(void **state)
{
    json_t *data = json_pack("{s:s}", "task_id", "t-1");
    event ev;
    char err[256] = "";
    int64_t before = util_now_ms();
    assert_int_equal(
        event_build(&ev, "task.created", data, NULL, NULL, "task-api", err, sizeof(err)), 0);
    int64_t after = util_now_ms();
    assert_uuid_v7_shape(ev.event_id);
    assert_string_equal(ev.event_type, "task.created");
    assert_true(ev.occurred_ms >= before && ev.occurred_ms <= after);
    /* A generated correlation id is a fresh UUIDv7; causation defaults to it. */
    assert_uuid_v7_shape(ev.correlation_id);
    assert_string_not_equal(ev.correlation_id, ev.event_id);
    assert_string_equal(ev.causation_id, ev.correlation_id);
    assert_ptr_not_equal(ev.causation_id, ev.correlation_id);
    assert_string_equal(ev.source, "task-api");
    assert_null(ev.metadata_extra);
    /* The event holds its own reference; the caller keeps theirs. */
    assert_ptr_equal(ev.data, data);
    assert_int_equal(data->refcount, 2);
    event_release(&ev);
    assert_int_equal(data->refcount, 1);
    assert_event_is_init(&ev);

    /* Given ids are kept; causation NULL copies the given correlation. */
    assert_int_equal(event_build(&ev, "task.created", data, "req-1", NULL, "api", err, sizeof(err)),
                     0);
    assert_string_equal(ev.correlation_id, "req-1");
    assert_string_equal(ev.causation_id, "req-1");
    event_release(&ev);
    assert_int_equal(
        event_build(&ev, "task.created", data, "req-1", "evt-9", "api", err, sizeof(err)), 0);
    assert_string_equal(ev.correlation_id, "req-1");
    assert_string_equal(ev.causation_id, "evt-9");
    event_release(&ev);

    /* Two builds get different, increasing ids. */
    event a, b;
    assert_int_equal(event_build(&a, "task.created", data, NULL, NULL, "api", err, sizeof(err)), 0);
    assert_int_equal(event_build(&b, "task.created", data, NULL, NULL, "api", err, sizeof(err)), 0);
    assert_true(strcmp(a.event_id, b.event_id) < 0);
    assert_string_not_equal(a.correlation_id, b.correlation_id);
    event_release(&a);
    event_release(&b);
    json_decref(data);
}

static void test_build_rejects(void **state)
{
    json_t *obj = json_object();
    json_t *arr = json_array();
    char *long_id = repeat("x", EVENT_REF_ID_MAX + 1);
    char *max_id = repeat("x", EVENT_REF_ID_MAX);
    char *long_src = repeat("s", EVENT_SOURCE_MAX + 1);
    const struct {
        const char *type;
        json_t *data;
        const char *corr, *caus, *src, *expect;
    } cases[] = {
        {"task.create", obj, NULL, NULL, "api",
         "event type 'task.create': action 'create' is not in the past tense; did you mean "
         "'task.created'?"},
        {"Task.created", obj, NULL, NULL, "api", "must be domain.action in lowercase"},
        {NULL, obj, NULL, NULL, "api", "event type is empty"},
        {"task.created", arr, NULL, NULL, "api", "data must be a JSON object, got array"},
        {"task.created", NULL, NULL, NULL, "api", "data must be a JSON object, got NULL"},
        {"task.created", obj, "", NULL, "api", "correlation_id: empty"},
        {"task.created", obj, long_id, NULL, "api", "correlation_id: longer than 256 characters"},
        {"task.created", obj,
         "a\x01"
         "b",
         NULL, "api", "correlation_id: contains a control"},
        {"task.created", obj,
         "a\xff"
         "b",
         NULL, "api", "correlation_id: not valid UTF-8"},
        {"task.created", obj, "a\xc0\xaf", NULL, "api", "correlation_id: not valid UTF-8"},
        {"task.created", obj, "a\xed\xa0\x80", NULL, "api", "correlation_id: not valid UTF-8"},
        {"task.created", obj, "a\xc2\x85", NULL, "api", "correlation_id: contains a control"},
        {"task.created", obj, "req", "", "api", "causation_id: empty"},
        {"task.created", obj, "req", long_id, "api", "causation_id: longer than 256 characters"},
        {"task.created", obj, "req", "x\x7f", "api", "causation_id: contains a control"},
        {"task.created", obj, "req", NULL, NULL, "source: empty"},
        {"task.created", obj, "req", NULL, "", "source: empty"},
        {"task.created", obj, "req", NULL, long_src, "source: longer than 128 characters"},
        {"task.created", obj, "req", NULL, "task\napi", "source: contains a control character"},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        event ev;
        scribble(&ev);
        char err[512] = "";
        int rc = event_build(&ev, cases[i].type, cases[i].data, cases[i].corr, cases[i].caus,
                             cases[i].src, err, sizeof(err));
        if (rc != -1)
            fail_msg("case %zu (%s) was accepted", i, cases[i].expect);
        assert_contains(err, cases[i].expect);
        assert_event_is_init(&ev);
    }
    assert_int_equal(obj->refcount, 1); /* no reference leaked by failures */

    /* The limits themselves are fine. */
    event ev;
    char err[256] = "";
    assert_int_equal(event_build(&ev, "task.created", obj, max_id, max_id, "s", err, sizeof(err)),
                     0);
    event_release(&ev);
    json_decref(obj);
    json_decref(arr);
    free(long_id);
    free(max_id);
    free(long_src);
}

static void test_copy_is_deep(void **state)
{
    char *in = replace(sample_json, "\"source\":\"task-api\"}",
                       "\"source\":\"task-api\",\"traceparent\":\"tp\"}");
    event src, dst;
    char err[256] = "";
    assert_int_equal(event_decode(&src, in, strlen(in), err, sizeof(err)), 0);
    event_copy(&dst, &src);
    assert_ptr_not_equal(dst.data, src.data);
    assert_ptr_not_equal(dst.correlation_id, src.correlation_id);
    assert_ptr_not_equal(dst.metadata_extra, src.metadata_extra);
    assert_true(json_equal(dst.data, src.data));

    /* Changing the source afterwards does not touch the copy. */
    json_object_set_new(src.data, "title", json_string("changed"));
    json_object_set_new(src.metadata_extra, "traceparent", json_string("other"));
    src.correlation_id[0] = 'X';
    assert_string_equal(json_string_value(json_object_get(dst.data, "title")), "Write report");
    assert_string_equal(json_string_value(json_object_get(dst.metadata_extra, "traceparent")),
                        "tp");
    assert_string_equal(dst.correlation_id, "req-abc-123");
    event_release(&src);

    char *out = event_encode(&dst, NULL);
    assert_string_equal(out, in);
    free(out);
    free(in);
    event_release(&dst);

    /* Copying an empty event, releasing twice and NULL are all fine. */
    event empty = EVENT_INIT, copy;
    event_copy(&copy, &empty);
    assert_event_is_init(&copy);
    event_release(&copy);
    event_release(&copy);
    event_release(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_sample),
        cmocka_unit_test(test_build_encode_key_order),
        cmocka_unit_test(test_round_trip_byte_identical),
        cmocka_unit_test(test_non_ascii_passes_as_utf8),
        cmocka_unit_test(test_metadata_extra_kept),
        cmocka_unit_test(test_metadata_extra_moved_after_source),
        cmocka_unit_test(test_decode_ignores_unknown_top_level_keys),
        cmocka_unit_test(test_decode_accepts_foreign_forms),
        cmocka_unit_test(test_decode_uses_only_len_bytes),
        cmocka_unit_test(test_ids_limit_counts_characters),
        cmocka_unit_test(test_decode_rejects_bad_fields),
        cmocka_unit_test(test_decode_exact_limits_accepted),
        cmocka_unit_test(test_decode_rejects_bad_json),
        cmocka_unit_test(test_decode_size_limit),
        cmocka_unit_test(test_from_json),
        cmocka_unit_test(test_to_json),
        cmocka_unit_test(test_parse_time_valid),
        cmocka_unit_test(test_parse_time_invalid),
        cmocka_unit_test(test_format_time),
        cmocka_unit_test(test_time_against_libc),
        cmocka_unit_test(test_uuid_v7_format_and_time),
        cmocka_unit_test(test_uuid_v7_strictly_increasing),
        cmocka_unit_test(test_uuid_v7_threads_unique),
        cmocka_unit_test(test_uuid_valid),
        cmocka_unit_test(test_type_check_accepts_past_tense),
        cmocka_unit_test(test_type_check_suggests),
        cmocka_unit_test(test_type_check_refuses_without_suggestion),
        cmocka_unit_test(test_type_syntax),
        cmocka_unit_test(test_topic_for_type),
        cmocka_unit_test(test_random_bytes_never_repeat),
        cmocka_unit_test(test_build_defaults),
        cmocka_unit_test(test_build_rejects),
        cmocka_unit_test(test_copy_is_deep),
    };
    return cmocka_run_group_tests_name("event", tests, NULL, NULL);
}
