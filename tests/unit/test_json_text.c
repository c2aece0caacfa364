/*
 * test_json_text.c - unit tests for src/common/json_text: the one-pass JSON
 * writer must give jansson's JSON_COMPACT text (jansson is the oracle:
 * every document is dumped by both and compared), fall back to jansson
 * where yajl cannot go (nesting deeper than 128), and refuse misuse. Also
 * the two writers built on it: event_encode() and task_write_json() against
 * the trees they replace (event_to_json(), task_to_json()).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_text.h"
#include "common/util.h"
#include "event/event.h"
#include "store/task.h"

/* json_text_dump(v) must equal jansson's compact dump of v, byte for byte. */
static void assert_same_as_jansson(const json_t *v)
{
    size_t len = 0;
    char *ours = json_text_dump(v, &len);
    char *theirs = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    assert_non_null(theirs);
    assert_string_equal(ours, theirs);
    assert_int_equal(len, strlen(theirs));
    free(ours);
    free(theirs);
}

static void test_documents_match_jansson(void **state)
{
    (void)state;
    static const char *const docs[] = {
        "{}",
        "[]",
        "{\"a\":{},\"b\":[],\"c\":[[],[{}]]}",
        "{\"id\":\"t-1\",\"n\":-42,\"big\":9223372036854775807,\"small\":-9223372036854775808}",
        "[true,false,null,0,1,-1]",
        "{\"reals\":[0.1,1e300,-2.5,1.0,3.141592653589793,1e-300]}",
        "{\"q\":\"say \\\"hi\\\"\",\"bs\":\"a\\\\b\",\"ws\":\"l1\\nl2\\tt\\rr\\bb\\ff\"}",
        "{\"slash\":\"a/b</script>\",\"utf8\":\"caf\\u00e9 \\u2603 \\ud83d\\ude00\"}",
        "{\"k\\\"ey\":1,\"\\u00e9\":2,\"\":3}",
        "{\"order\":{\"z\":1,\"a\":2,\"m\":[3,{\"y\":4,\"b\":5}]}}",
        "\"just a string\"",
        "12345",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        json_error_t jerr;
        json_t *v = json_loads(docs[i], JSON_DECODE_ANY, &jerr);
        assert_non_null(v);
        assert_same_as_jansson(v);
        json_decref(v);
    }
}

/* Control characters are escaped as jansson escapes them (\u001F) and
 * read back the same; NUL inside a string survives. */
static void test_control_characters_read_back_the_same(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *v = json_loads("{\"c\":\"a\\u0000b\\u0001\\u001fc\\u007f\"}", JSON_ALLOW_NUL, &jerr);
    assert_non_null(v);
    size_t len = 0;
    char *text = json_text_dump(v, &len);
    assert_string_equal(text, "{\"c\":\"a\\u0000b\\u0001\\u001Fc\x7f\"}");
    assert_same_as_jansson(v);
    json_t *back = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);
    assert_non_null(back);
    assert_true(json_equal(v, back));
    assert_int_equal(json_string_length(json_object_get(back, "c")), 7);
    json_decref(back);
    json_decref(v);
    free(text);
}

static json_t *nested_arrays(int depth)
{
    json_t *v = json_string("bottom");
    for (int i = 0; i < depth; i++) {
        json_t *a = json_array();
        json_array_append_new(a, v);
        v = a;
    }
    return v;
}

/* yajl stops at 128 levels; json_text_dump falls back to jansson. */
static void test_deep_nesting_falls_back_to_jansson(void **state)
{
    (void)state;
    for (int depth = 120; depth <= 300; depth += 60) {
        json_t *v = nested_arrays(depth);
        assert_same_as_jansson(v);
        json_decref(v);
    }
}

/* Misuse (a number where a member name is due) fails the whole text. */
static void test_misuse_fails_the_text(void **state)
{
    (void)state;
    json_text *w = json_text_new();
    json_text_open_object(w);
    json_text_int(w, 7);
    json_text_null(w);
    json_text_close_object(w);
    assert_null(json_text_finish(w, NULL));

    w = json_text_new(); /* and a correct one still works */
    json_text_open_object(w);
    json_text_key(w, "k");
    json_text_string(w, NULL);
    json_text_close_object(w);
    size_t len = 0;
    char *text = json_text_finish(w, &len);
    assert_string_equal(text, "{\"k\":null}");
    assert_int_equal(len, 10);
    free(text);
}

/* A text longer than the writer's first buffer grows it. */
static void test_long_text(void **state)
{
    (void)state;
    json_t *a = json_array();
    for (int i = 0; i < 2000; i++)
        json_array_append_new(a, json_sprintf("item %d with \"quotes\"", i));
    assert_same_as_jansson(a);
    json_decref(a);
}

static void assert_event_encodes_like_its_tree(const event *ev)
{
    size_t len = 0;
    char *ours = event_encode(ev, &len);
    json_t *tree = event_to_json(ev);
    char *theirs = json_dumps(tree, JSON_COMPACT);
    assert_string_equal(ours, theirs);
    assert_int_equal(len, strlen(theirs));
    json_decref(tree);
    free(ours);
    free(theirs);
}

static void test_event_encode_matches_event_to_json(void **state)
{
    (void)state;
    char err[256];
    json_t *data =
        json_pack("{s:s, s:s, s:i, s:f, s:[b, n]}", "task_id", "t-1", "title",
                  "Write \"the\" report \xc3\xa9", "priority", 2, "score", 0.5, "flags", 1);
    event ev = EVENT_INIT;
    assert_int_equal(event_build(&ev, "task.created", data, "req-1", "api-create-t-1", "task-api",
                                 err, sizeof(err)),
                     0);
    json_decref(data);
    assert_event_encodes_like_its_tree(&ev);
    /* with trace context and extra metadata (kept on round trip) */
    event_set_trace(&ev, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k=v");
    ev.metadata_extra = json_pack("{s:s, s:i, s:s}", "tenant", "acme", "attempt", 3, "source",
                                  "ignored: the envelope's own key wins");
    assert_event_encodes_like_its_tree(&ev);
    event_release(&ev);

    /* data nested deeper than yajl allows: jansson writes it */
    json_t *deep = json_object();
    json_object_set_new(deep, "deep", nested_arrays(200));
    event ev2 = EVENT_INIT;
    assert_int_equal(
        event_build(&ev2, "thing.happened", deep, "req-2", "cause", "test", err, sizeof(err)), 0);
    json_decref(deep);
    assert_event_encodes_like_its_tree(&ev2);
    event_release(&ev2);
}

static void test_task_write_json_matches_task_to_json(void **state)
{
    (void)state;
    task t = TASK_INIT;
    util_strlcpy(t.id, "01a23813-7704-71bf-ad80-dbf516d88d4d", sizeof(t.id));
    t.title = xstrdup("Review \"Q3\" report\n\xe2\x98\x83");
    t.owner_id = xstrdup("user-456");
    t.priority = 3;
    t.created_ms = t.updated_ms = INT64_C(1736951422456);
    for (int variant = 0; variant < 2; variant++) {
        if (variant == 1) { /* every optional field set */
            t.description = xstrdup("with a description");
            t.due_ms = INT64_C(1767225600000);
            t.completed = 1;
            t.completed_ms = INT64_C(1736951499999);
            t.version = 7;
        }
        json_text *w = json_text_new();
        task_write_json(w, &t);
        char *ours = json_text_finish(w, NULL);
        json_t *tree = task_to_json(&t);
        char *theirs = json_dumps(tree, JSON_COMPACT);
        assert_string_equal(ours, theirs);
        json_decref(tree);
        free(ours);
        free(theirs);
    }
    task_release(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_documents_match_jansson),
        cmocka_unit_test(test_control_characters_read_back_the_same),
        cmocka_unit_test(test_deep_nesting_falls_back_to_jansson),
        cmocka_unit_test(test_misuse_fails_the_text),
        cmocka_unit_test(test_long_text),
        cmocka_unit_test(test_event_encode_matches_event_to_json),
        cmocka_unit_test(test_task_write_json_matches_task_to_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
