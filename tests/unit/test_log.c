/*
 * test_log.c - the logging module (common/log.h): JSON escaping, and that
 * every line in the json format is one valid JSON object with the fields
 * as typed members, whatever the message and values hold; text lines keep
 * values quoted and control characters escaped. Lines are captured by
 * pointing stderr at a temporary file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_json_escape(void **state)
{
    (void)state;
    char out[128];
    const char in[] = "a\"b\\c\nd\te\x01\x7f";
    log_json_escape(in, sizeof(in) - 1, out, sizeof(out));
    assert_string_equal(out, "a\\\"b\\\\c\\nd\\te\\u0001\\u007f");
    /* valid UTF-8 is kept; invalid bytes become U+FFFD, one per byte */
    const char utf[] = "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
    log_json_escape(utf, sizeof(utf) - 1, out, sizeof(out));
    assert_string_equal(out, utf);
    const char bad[] = "x\xff\xc3(\xed\xa0\x80y";
    log_json_escape(bad, sizeof(bad) - 1, out, sizeof(out));
    assert_string_equal(out, "x\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffdy");
    /* never cuts an escape or a character in half */
    char small[7];
    size_t n = log_json_escape("ab\n\xe2\x82\xac", 6, small, sizeof(small));
    assert_string_equal(small, "ab\\n");
    assert_int_equal(n, 4);
    n = log_json_escape("abc\xe2\x82\xac", 6, small, sizeof(small));
    assert_string_equal(small, "abc\xe2\x82\xac");
    assert_int_equal(n, 6);
}

/* Run fn with stderr captured; returns the text (malloc'd). */
static char *capture(void (*fn)(void))
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fileno(tmp), STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    long len = ftell(tmp);
    rewind(tmp);
    char *buf = calloc(1, (size_t)len + 1);
    assert_int_equal(fread(buf, 1, (size_t)len, tmp), (size_t)len);
    fclose(tmp);
    return buf;
}

static void write_lines(void)
{
    LOG_INFO_CID("req-\"1\"", "plain %s with \"quotes\", a\nnewline and \xff", "message");
    LOG_FIELDS(LOG_LEVEL_WARN, "cid-2", "event", LOG_STR("outcome", "handled"),
               LOG_STR("type", "task.created"), LOG_STR("reason", "550 no \"such\"\r\nuser"),
               LOG_STR("omitted", NULL), LOG_INT("attempts", 3), LOG_NUM("duration_ms", 1.5));
    LOG_DEBUG("not shown");
}

static void test_json_lines(void **state)
{
    (void)state;
    log_threshold = LOG_LEVEL_INFO;
    assert_int_equal(log_set_format_name("json"), 0);
    char *out = capture(write_lines);
    assert_int_equal(log_set_format_name("text"), 0);
    char *second = strchr(out, '\n');
    assert_non_null(second);
    *second++ = '\0';
    assert_non_null(strchr(second, '\n'));
    assert_null(strchr(strchr(second, '\n') + 1, '\n')); /* two lines, DEBUG dropped */
    *strchr(second, '\n') = '\0';

    json_error_t jerr;
    json_t *a = json_loads(out, 0, &jerr);
    assert_non_null(a);
    assert_string_equal(json_string_value(json_object_get(a, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(a, "message")),
                        "plain message with \"quotes\", a\nnewline and \xef\xbf\xbd");
    assert_string_equal(json_string_value(json_object_get(a, "cid")), "req-\"1\"");
    assert_true(json_is_string(json_object_get(a, "time")));
    json_decref(a);

    json_t *b = json_loads(second, 0, &jerr);
    assert_non_null(b);
    assert_string_equal(json_string_value(json_object_get(b, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(b, "message")), "event");
    assert_string_equal(json_string_value(json_object_get(b, "outcome")), "handled");
    assert_string_equal(json_string_value(json_object_get(b, "reason")), "550 no \"such\"\r\nuser");
    assert_null(json_object_get(b, "omitted"));
    assert_int_equal(json_integer_value(json_object_get(b, "attempts")), 3);
    assert_true(json_is_real(json_object_get(b, "duration_ms")));
    assert_string_equal(json_string_value(json_object_get(b, "cid")), "cid-2");
    json_decref(b);
    free(out);
}

static void test_text_lines(void **state)
{
    (void)state;
    log_threshold = LOG_LEVEL_INFO;
    char *out = capture(write_lines);
    /* control characters never split a line */
    assert_non_null(strstr(out, " INFO  plain message with \"quotes\", a\\x0anewline and \xff"
                                " cid=req-\"1\"\n"));
    assert_non_null(strstr(out, " WARN  event outcome=handled type=task.created"
                                " reason=\"550 no \\\"such\\\"\\x0d\\x0auser\" attempts=3"
                                " duration_ms=1.500 cid=cid-2\n"));
    assert_null(strstr(out, "omitted"));
    free(out);
}

static void test_long_json_line_stays_valid(void **state)
{
    (void)state;
    static char big[6000];
    memset(big, '"', sizeof(big) - 1);
    log_threshold = LOG_LEVEL_INFO;
    assert_int_equal(log_set_format_name("json"), 0);
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    dup2(fileno(tmp), STDERR_FILENO);
    LOG_FIELDS(LOG_LEVEL_INFO, big, big, LOG_STR("a", big), LOG_INT("n", 7));
    dup2(saved, STDERR_FILENO);
    close(saved);
    assert_int_equal(log_set_format_name("text"), 0);
    assert_int_equal(log_set_format_name("xml"), -1);
    long len = ftell(tmp);
    rewind(tmp);
    char *buf = calloc(1, (size_t)len + 1);
    assert_int_equal(fread(buf, 1, (size_t)len, tmp), (size_t)len);
    fclose(tmp);
    assert_true(len <= 4096);
    assert_int_equal(buf[len - 1], '\n');
    json_error_t jerr;
    json_t *o = json_loadb(buf, (size_t)len - 1, 0, &jerr);
    assert_non_null(o);
    assert_true(json_is_string(json_object_get(o, "message")));
    json_decref(o);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_json_lines),
        cmocka_unit_test(test_text_lines),
        cmocka_unit_test(test_long_json_line_stays_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
