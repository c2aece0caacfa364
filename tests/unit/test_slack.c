/*
 * test_slack.c - the Slack agent's text, escaping and payload (agents/slack.h),
 * its factory's checks of the settings, and the webhook helper's Retry-After
 * parser (agents/webhook.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agents/agents.h"
#include "agents/slack.h"
#include "agents/webhook.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void check_escape(const char *in, const char *want)
{
    char *got = slack_escape(in);
    assert_string_equal(got, want);
    free(got);
}

static void test_escape_the_three(void **state)
{
    (void)state;
    check_escape("a & b", "a &amp; b");
    check_escape("<@U123>", "&lt;@U123&gt;");
    check_escape("<!channel> & <https://x.example|click>",
                 "&lt;!channel&gt; &amp; &lt;https://x.example|click&gt;");
    check_escape("&amp;", "&amp;amp;"); /* escaped again: it is user text */
    check_escape("&&<<>>", "&amp;&amp;&lt;&lt;&gt;&gt;");
    check_escape("", "");
}

static void test_escape_nothing_else(void **state)
{
    (void)state;
    const char *keep = "quotes \" ' backslash \\ *bold* _it_ ~s~ `code` # @ | : ;";
    check_escape(keep, keep);
    check_escape("Überprüfung – 報告書 🚀", "Überprüfung – 報告書 🚀");
    check_escape("line\nbreak\ttab\r", "line\nbreak\ttab\r");
    check_escape("é<ü>", "é&lt;ü&gt;");
}

static void test_text(void **state)
{
    (void)state;
    char *t = slack_text("task.created", "Review quarterly report");
    assert_string_equal(t, ":new: Task created: Review quarterly report");
    free(t);
    t = slack_text("task.completed", "Review quarterly report");
    assert_string_equal(t, ":white_check_mark: Task completed: Review quarterly report");
    free(t);
    t = slack_text("task.created", "R&D <team>");
    assert_string_equal(t, ":new: Task created: R&D <team>"); /* escaping is the payload's */
    free(t);
    assert_null(slack_text("task.updated", "x"));
    assert_null(slack_text("task.deleted", "x"));
    assert_null(slack_text("notification.sent", "x"));
}

static void test_payload(void **state)
{
    (void)state;
    char *p = slack_payload("#tasks", ":new: Task created: Review quarterly report");
    assert_string_equal(p,
                        "{\"channel\":\"#tasks\",\"text\":\":new: Task created: Review quarterly "
                        "report\"}");
    free(p);

    /* escaping, JSON quoting of quotes and control characters, UTF-8 as is */
    p = slack_payload("#ops", ":new: Task created: R&D \"<b>\" 報告\n");
    assert_string_equal(p, "{\"channel\":\"#ops\",\"text\":\":new: Task created: R&amp;D "
                           "\\\"&lt;b&gt;\\\" 報告\\n\"}");
    json_error_t jerr;
    json_t *root = json_loads(p, 0, &jerr);
    assert_non_null(root);
    assert_int_equal(json_object_size(root), 2);
    assert_string_equal(json_string_value(json_object_get(root, "text")),
                        ":new: Task created: R&amp;D \"&lt;b&gt;\" 報告\n");
    json_decref(root);
    free(p);

    /* the channel is configuration, not message text: not escaped */
    p = slack_payload("#a&b", "x");
    assert_string_equal(p, "{\"channel\":\"#a&b\",\"text\":\"x\"}");
    free(p);
}

static void test_factory(void **state)
{
    (void)state;
    agent_settings s = AGENT_SETTINGS_INIT;
    agent_def def = AGENT_DEF_INIT;
    char err[256];
    assert_int_equal(agent_slack_def(&def, &s, err, sizeof(err)), 0);
    assert_string_equal(def.name, "slack");
    assert_string_equal(def.group, "notification-slack");
    assert_int_equal(def.topic_count, 1);
    assert_string_equal(def.topics[0], "task-events");
    assert_int_equal(def.type_count, 2);
    assert_string_equal(def.types[0], "task.created");
    assert_string_equal(def.types[1], "task.completed");
    assert_true(def.max_batch > 0 && def.max_batch <= 64);
    assert_non_null(def.handle);
    assert_int_equal(def.in_transaction, 0);
    def.destroy(def.state);

    s.slack_webhook_url = "https://hooks.example.com/services/T/B/secret";
    assert_int_equal(agent_slack_def(&def, &s, err, sizeof(err)), 0);
    def.destroy(def.state);

    static const char *const bad_urls[] = {"ftp://example.com/x", "example.com/hook",
                                           "file:///etc/passwd", "http://", "not a url"};
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        s.slack_webhook_url = bad_urls[i];
        err[0] = '\0';
        assert_int_equal(agent_slack_def(&def, &s, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "HERALD_SLACK_WEBHOOK_URL"));
        /* the URL may hold a secret: never echoed */
        assert_null(strstr(err, bad_urls[i]));
    }
    s.slack_webhook_url = "";
    assert_int_equal(agent_slack_def(&def, &s, err, sizeof(err)), 0); /* empty: log only */
    def.destroy(def.state);

    s.slack_channel = "";
    assert_int_equal(agent_slack_def(&def, &s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "HERALD_SLACK_CHANNEL"));
    s.slack_channel = "#a\nb";
    assert_int_equal(agent_slack_def(&def, &s, err, sizeof(err)), -1);
    s.slack_channel = "#\xff";
    assert_int_equal(agent_slack_def(&def, &s, err, sizeof(err)), -1);
}

static void test_retry_after(void **state)
{
    (void)state;
    const int64_t now = 1445412480; /* Wed, 21 Oct 2015 07:28:00 GMT */
    assert_int_equal(webhook_parse_retry_after("1", now), 1000);
    assert_int_equal(webhook_parse_retry_after(" 120\r\n", now), 120000);
    assert_int_equal(webhook_parse_retry_after("0", now), 0);
    assert_int_equal(webhook_parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), 30000);
    assert_int_equal(webhook_parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now), 60000);
    assert_int_equal(webhook_parse_retry_after("Wed Oct 21 07:28:05 2015", now), 5000);
    assert_int_equal(webhook_parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", now), 0);
    assert_int_equal(webhook_parse_retry_after("99999999999999999999999", now),
                     365LL * 24 * 3600 * 1000);
    assert_int_equal(webhook_parse_retry_after("", now), -1);
    assert_int_equal(webhook_parse_retry_after("-5", now), -1);
    assert_int_equal(webhook_parse_retry_after("1.5", now), -1);
    assert_int_equal(webhook_parse_retry_after("soon", now), -1);
    assert_int_equal(webhook_parse_retry_after(NULL, now), -1);
}

static void test_url_check(void **state)
{
    (void)state;
    char err[128];
    assert_int_equal(webhook_url_check("http://127.0.0.1:9/hook", err, sizeof(err)), 0);
    assert_int_equal(webhook_url_check("https://hooks.example.com/services/x", err, sizeof(err)),
                     0);
    assert_int_equal(webhook_url_check("HTTPS://hooks.example.com/", err, sizeof(err)), 0);
    assert_int_equal(webhook_url_check("gopher://example.com/", err, sizeof(err)), -1);
    assert_int_equal(webhook_url_check("", err, sizeof(err)), -1);
    assert_int_equal(webhook_url_check(NULL, err, sizeof(err)), -1);
}

static void test_post_connection_refused(void **state)
{
    (void)state;
    /* a port bound but not listening refuses connections: a transport
     * error, not an HTTP status */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t salen = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &salen), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", ntohs(sa.sin_port));

    webhook *w = webhook_new();
    webhook_response r;
    char err[256] = "";
    int rc = webhook_post_json(w, url, "{}", 2, 5000, &r, err, sizeof(err));
    close(fd);
    assert_int_equal(rc, -1);
    assert_int_equal(r.status, 0);
    assert_true(err[0] != '\0');
    webhook_free(w);
    webhook_free(NULL);
}

int main(void)
{
    log_threshold = LOG_LEVEL_OFF;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_the_three),
        cmocka_unit_test(test_escape_nothing_else),
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_payload),
        cmocka_unit_test(test_factory),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_url_check),
        cmocka_unit_test(test_post_connection_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
