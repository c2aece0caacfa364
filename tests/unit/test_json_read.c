/*
 * test_json_read.c - json_read() against jansson's own
 * json_loadb(JSON_REJECT_DUPLICATES | JSON_DECODE_ANY): the same tree
 * (compared as jansson's compact text, which keeps member order and tells
 * 1 from 1.0) or the same error (text, line, column, position), for
 *  - hand-picked documents at every edge where yajl and jansson could part
 *    (numbers out of range, duplicate keys, escapes, bytes over 0x7e,
 *    control bytes, white space jansson does not allow, depth, comments,
 *    trailing data);
 *  - generated documents and random mutations of them (a fixed seed and
 *    one from the clock, printed; HERALD_TEST_SEED replays one).
 * It also checks that the fast path is taken where it should be (a task
 * body, an event envelope): a json_read() that always fell back to jansson
 * would pass the comparisons and gain nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/json_read.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FLAGS (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY)

/* The document, printable, for failure messages. */
static const char *shown(const char *buf, size_t len)
{
    static char out[600];
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < sizeof(out); i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c >= 0x20 && c < 0x7f)
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, sizeof(out) - o, "\\x%02x", c);
    }
    out[o] = '\0';
    return out;
}

/* json_read() and json_loadb() agree on buf; returns 1 when json_read()
 * took the fast path (yajl) for it. */
static int agree(const char *buf, size_t len)
{
    json_error_t want_err, got_err;
    memset(&want_err, 0, sizeof(want_err));
    memset(&got_err, 0, sizeof(got_err));
    json_t *want = json_loadb(buf, len, FLAGS, &want_err);
    json_t *got = json_read(buf, len, &got_err);
    json_t *fast = json_read_fast(buf, len);
    if (!want != !got)
        fail_msg("'%s': jansson %s, json_read %s", shown(buf, len),
                 want ? "parses it" : want_err.text, got ? "parses it" : got_err.text);
    if (want) {
        char *a = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY);
        char *b = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
        if (strcmp(a, b) != 0)
            fail_msg("'%s': jansson %s, json_read %s", shown(buf, len), a, b);
        free(a);
        free(b);
    } else {
        if (strcmp(want_err.text, got_err.text) != 0 || want_err.line != got_err.line ||
            want_err.column != got_err.column || want_err.position != got_err.position)
            fail_msg("'%s': jansson says %d:%d (%d) %s, json_read %d:%d (%d) %s", shown(buf, len),
                     want_err.line, want_err.column, want_err.position, want_err.text, got_err.line,
                     got_err.column, got_err.position, got_err.text);
    }
    /* the fast path never accepts what jansson refuses */
    if (fast && !want)
        fail_msg("'%s': the fast path parses what jansson refuses (%s)", shown(buf, len),
                 want_err.text);
    json_decref(want);
    json_decref(got);
    json_decref(fast);
    return fast != NULL;
}

static int agree_text(const char *s)
{
    return agree(s, strlen(s));
}

static void test_bodies_take_the_fast_path(void **state)
{
    (void)state;
    assert_true(agree_text("{\"title\":\"Review quarterly report\",\"owner_id\":\"user-456\","
                           "\"priority\":2,\"description\":\"Benchmark task\"}"));
    assert_true(agree_text("{\n  \"title\": \"x\",\r\n\t\"due_at\": \"2030-01-01T00:00:00Z\","
                           " \"priority\": 5, \"done\": false, \"n\": null}\n"));
    assert_true(agree_text(
        "{\"event_id\":\"01a2\",\"event_type\":\"task.created\",\"occurred_at\":"
        "\"2026-12-03T07:47:31.525Z\",\"data\":{\"task_id\":\"t-1\",\"priority\":2,\"tags\":[\"a\","
        "[1,2.5,-0,1e5,-1.25E-3]]},\"metadata\":{\"correlation_id\":\"c\",\"causation_id\":\"x\"}"
        "}"));
    assert_true(agree_text("[]"));
    assert_true(agree_text("{}"));
    assert_true(agree_text("\"just a string\""));
    assert_true(agree_text("  42  "));
    assert_true(agree_text("{\"\":\"empty key\"}"));
    assert_true(agree_text("9223372036854775807"));
    assert_true(agree_text("-9223372036854775808"));
}

static void test_edges_agree(void **state)
{
    (void)state;
    static const char *docs[] = {
        /* numbers */
        "01",
        "-",
        "1.",
        ".5",
        "+1",
        "1e",
        "1e+",
        "-0",
        "-0.0",
        "1E5",
        "1e400",
        "-1e400",
        "1e-400",
        "9223372036854775808",
        "-9223372036854775809",
        "[1,2,3.25,-4e2]",
        "11111111111111111111111111111111111111111111111111111111111111111111111111111",
        "0.111111111111111111111111111111111111111111111111111111111111111111111111111",
        "{\"a\":1.7976931348623157e308}",
        "{\"a\":2e308}",
        "{\"a\":4.9e-324}",
        /* duplicates */
        "{\"a\":1,\"a\":2}",
        "{\"a\":{\"b\":1,\"b\":2}}",
        "{\"a\":{\"b\":1},\"a\":2}",
        "[{\"a\":1},{\"a\":1}]",
        /* structure */
        "",
        " ",
        "{",
        "}",
        "[",
        "]",
        "{\"a\":1,}",
        "[1,]",
        "{,}",
        "{\"a\"}",
        "{\"a\":}",
        "{a:1}",
        "'x'",
        "{} {}",
        "{}x",
        "[1][2]",
        "{\"a\":1} ",
        "\t{\"a\":1}\r\n",
        "[true false]",
        "nul",
        "tru",
        "nulll",
        "truex",
        "[null,true,false]",
        "{\"a\":[]}",
        "[[[[[]]]]]",
        "\"unterminated",
        /* escapes, bytes over 0x7e, control bytes, white space */
        "{\"a\":\"\\u0000\"}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\ud83d\\ude00\"}",
        "{\"a\":\"\\udc00\"}",
        "{\"a\":\"\\n\\t\\\"\\\\\\/\"}",
        "{\"a\":\"\\x\"}",
        "{\"\\u0041\":1}",
        "{\"a\":\"\xc3\xa9\"}",
        "{\"a\":\"\xff\"}",
        "{\"a\":\"\xc0\x80\"}",
        "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}",
        "{\"a\":\"\x01\"}",
        "{\"a\":\"\x7f\"}",
        "\f{}",
        "\v{}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"line\nbreak\"}",
        /* comments, trailing data */
        "/*c*/{}",
        "{}//",
        "{}/",
        "{\"a\":1}#",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++)
        agree_text(docs[i]);
    /* a NUL byte inside and at the end */
    agree("{\"a\":\"x\0y\"}", 11);
    agree("{}\0", 3);
    /* long keys and deep nesting around the fast path's limits */
    char buf[8000];
    for (size_t k = JSON_READ_MAX_KEY - 1; k <= JSON_READ_MAX_KEY + 1; k++) {
        size_t o = 0;
        buf[o++] = '{';
        buf[o++] = '"';
        memset(buf + o, 'k', k);
        o += k;
        memcpy(buf + o, "\":1}", 4);
        o += 4;
        assert_int_equal(agree(buf, o), k <= JSON_READ_MAX_KEY);
    }
    size_t depths[] = {1, JSON_READ_MAX_DEPTH, JSON_READ_MAX_DEPTH + 1, 2047, 2048, 2049, 3000};
    for (size_t d = 0; d < sizeof(depths) / sizeof(depths[0]); d++) {
        size_t n = depths[d], o = 0;
        for (size_t i = 0; i < n; i++)
            buf[o++] = '[';
        for (size_t i = 0; i < n; i++)
            buf[o++] = ']';
        assert_int_equal(agree(buf, o), n <= JSON_READ_MAX_DEPTH);
    }
}

/* ---- generated documents ---------------------------------------------- */

static unsigned long long rng_state;

static unsigned rnd(unsigned n)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)((rng_state >> 33) % n);
}

typedef struct text {
    char buf[4096];
    size_t len;
} text;

static void put(text *t, const char *s)
{
    size_t n = strlen(s);
    if (t->len + n < sizeof(t->buf)) {
        memcpy(t->buf + t->len, s, n);
        t->len += n;
    }
}

static void gen_value(text *t, int depth);

static void gen_string(text *t)
{
    static const char *parts[] = {"a", "title", "x y", "user-456", "", "0", "{", "]", ":", ","};
    put(t, "\"");
    for (unsigned i = rnd(3); i > 0; i--)
        put(t, parts[rnd(sizeof(parts) / sizeof(parts[0]))]);
    put(t, "\"");
}

static void gen_value(text *t, int depth)
{
    static const char *numbers[] = {
        "0",     "-0", "7", "-12", "2.5", "1e3", "1E-2", "-0.0", "12345678901234567890",
        "1e999", "3.0"};
    static const char *spaces[] = {"", " ", "\n", "\t", "\r\n"};
    put(t, spaces[rnd(5)]);
    switch (depth > 4 ? rnd(5) : rnd(7)) {
    case 0:
        put(t, numbers[rnd(sizeof(numbers) / sizeof(numbers[0]))]);
        break;
    case 1:
        gen_string(t);
        break;
    case 2:
        put(t, rnd(2) ? "true" : "false");
        break;
    case 3:
        put(t, "null");
        break;
    case 4:
        gen_string(t);
        break;
    case 5: {
        put(t, "{");
        for (unsigned i = 0, n = rnd(4); i < n; i++) {
            if (i)
                put(t, ",");
            gen_string(t); /* keys repeat now and then: duplicates */
            put(t, ":");
            gen_value(t, depth + 1);
        }
        put(t, "}");
        break;
    }
    default: {
        put(t, "[");
        for (unsigned i = 0, n = rnd(4); i < n; i++) {
            if (i)
                put(t, ",");
            gen_value(t, depth + 1);
        }
        put(t, "]");
    }
    }
    put(t, spaces[rnd(5)]);
}

static void mutate(text *t)
{
    static const char bytes[] = "{}[],:\"0123456789.eE+-tfnul \t\r\n\\/\x01\x7f\f\xc3\xa9\xff";
    for (unsigned m = 1 + rnd(3); m > 0 && t->len > 0; m--) {
        size_t at = rnd((unsigned)t->len);
        char c = bytes[rnd(sizeof(bytes) - 1)];
        switch (rnd(3)) {
        case 0: /* replace */
            t->buf[at] = c;
            break;
        case 1: /* delete */
            memmove(t->buf + at, t->buf + at + 1, t->len - at - 1);
            t->len--;
            break;
        default: /* insert */
            if (t->len + 1 < sizeof(t->buf)) {
                memmove(t->buf + at + 1, t->buf + at, t->len - at);
                t->buf[at] = c;
                t->len++;
            }
        }
    }
}

static void test_generated_and_mutated_documents_agree(void **state)
{
    (void)state;
    unsigned long long seeds[2] = {20261203ULL, (unsigned long long)time(NULL)};
    const char *replay = getenv("HERALD_TEST_SEED");
    if (replay)
        seeds[1] = strtoull(replay, NULL, 10);
    printf("seeds %llu and %llu (set HERALD_TEST_SEED to replay the second)\n", seeds[0], seeds[1]);
    int fast = 0, total = 0;
    for (int s = 0; s < 2; s++) {
        rng_state = seeds[s];
        for (int i = 0; i < 2500; i++) {
            text t;
            t.len = 0;
            gen_value(&t, 0);
            fast += agree(t.buf, t.len);
            mutate(&t);
            fast += agree(t.buf, t.len);
            total += 2;
        }
    }
    printf("%d documents, %d of them parsed by the fast path\n", total, fast);
    /* most generated documents are valid plain ASCII */
    assert_true(fast > total / 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bodies_take_the_fast_path),
        cmocka_unit_test(test_edges_agree),
        cmocka_unit_test(test_generated_and_mutated_documents_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
