/*
 * slack.c - the Slack agent: a message for every task.created and
 * task.completed, POSTed to an incoming webhook.
 *
 * Design
 * - Group notification-slack, topic task-events, types task.created and
 *   task.completed (the runtime commits every other type without a call).
 * - The text is ":new: Task created: <title>" or ":white_check_mark: Task
 *   completed: <title>". The body is {"channel": HERALD_SLACK_CHANNEL,
 *   "text": ...} built with jansson; in the text '&', '<' and '>' are
 *   escaped as Slack's formatting requires (and nothing else, so a title
 *   can never become a link, a mention or a channel ping).
 * - The answer decides the outcome: 2xx ok; 429 retry, after its
 *   Retry-After when it gives one (agent_retry_after); 408, 5xx, timeouts
 *   and connection errors retry with the runtime's backoff; any other status
 *   (3xx, 4xx) fails for good: the event goes to task-events.dlq with the
 *   status and the start of the answer's body as the reason.
 * - After a delivery the line of the original design is logged,
 *   "Slack [#tasks]: :new: Task created: <title>", and notification.sent is
 *   emitted (caused by the task event): {"task_id", "channel": "slack",
 *   "recipient": <channel>, "text": <the message, unescaped>,
 *   "event_type": <the task event's type>}. The text is the message as a
 *   reader sees it; the escaping belongs to the transport, like JSON's.
 * - Without HERALD_SLACK_WEBHOOK_URL nothing is posted: the line is only
 *   logged, and notification.sent is still emitted, with "logged_only":
 *   true, so the chain of events looks the same in both modes.
 * - Control characters of a title are shown as \xNN in the log line (a
 *   title can never forge a log line); the webhook gets them unchanged
 *   (JSON escapes them).
 * - Side effects cannot be undone, so batches are small (32): after a crash
 *   at most one batch is posted again.
 *
 * Threads: the runtime calls the handler from one thread; the state (the
 * webhook client, the settings copied at creation) belongs to the runtime
 * through agent_def.state and is freed by slack_destroy().
 */
#include "agents/slack.h"

#include "agents/agents.h"
#include "agents/webhook.h"
#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLACK_GROUP "notification-slack"
#define SLACK_MAX_BATCH 32
#define SLACK_CHANNEL_MAX 256
#define SLACK_DEFAULT_TIMEOUT_MS 30000

static const char *const slack_topics[] = {"task-events"};
static const char *const slack_types[] = {"task.created", "task.completed"};

typedef struct slack_state {
    char *url; /* NULL: log only */
    char *channel;
    int64_t timeout_ms;
    webhook *hook; /* NULL without a URL */
} slack_state;

/* ---- formatting ------------------------------------------------------- */

char *slack_escape(const char *text)
{
    size_t len = 0;
    for (const char *p = text; *p; p++)
        len += *p == '&' ? 5 : (*p == '<' || *p == '>') ? 4 : 1;
    char *out = xmalloc(len + 1), *o = out;
    for (const char *p = text; *p; p++) {
        const char *rep = *p == '&' ? "&amp;" : *p == '<' ? "&lt;" : *p == '>' ? "&gt;" : NULL;
        if (rep) {
            size_t n = strlen(rep);
            memcpy(o, rep, n);
            o += n;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

char *slack_text(const char *event_type, const char *title)
{
    const char *prefix;
    if (strcmp(event_type, "task.created") == 0)
        prefix = ":new: Task created: ";
    else if (strcmp(event_type, "task.completed") == 0)
        prefix = ":white_check_mark: Task completed: ";
    else
        return NULL;
    size_t plen = strlen(prefix), tlen = strlen(title);
    char *out = xmalloc(plen + tlen + 1);
    memcpy(out, prefix, plen);
    memcpy(out + plen, title, tlen + 1);
    return out;
}

char *slack_payload(const char *channel, const char *text)
{
    char *escaped = slack_escape(text);
    json_t *body = json_object();
    json_object_set_new(body, "channel", json_string(channel));
    json_object_set_new(body, "text", json_string(escaped));
    free(escaped);
    char *out = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!out) /* only when out of memory (or invalid UTF-8: see the caller) */
        abort();
    return out;
}

/* text for one log line: control characters as \xNN, UTF-8 kept. */
static char *slack_loggable(const char *text)
{
    size_t len = strlen(text);
    char *out = xmalloc(len * 4 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            o += sprintf(o, "\\x%02x", *p);
        else
            *o++ = (char)*p;
    }
    *o = '\0';
    return out;
}

/* ---- the handler ------------------------------------------------------ */

/* Post the message; AGENT_OK on a 2xx, else the outcome and its reason. */
static agent_outcome slack_post(slack_state *st, agent_ctx *ctx, const char *text, char *reason,
                                size_t reasonlen)
{
    char *payload = slack_payload(st->channel, text);
    webhook_response resp;
    char err[256];
    int rc = webhook_post_json(st->hook, st->url, payload, strlen(payload), st->timeout_ms, &resp,
                               err, sizeof(err));
    free(payload);
    if (rc != 0) {
        util_error(reason, reasonlen, "slack webhook: %s", err);
        return AGENT_RETRY;
    }
    long s = resp.status;
    if (s >= 200 && s <= 299)
        return AGENT_OK;
    const char *sep = resp.body[0] ? ": " : "";
    if (s == 429) {
        if (resp.retry_after_ms >= 0) {
            agent_retry_after(ctx, resp.retry_after_ms);
            util_error(reason, reasonlen, "slack webhook: HTTP 429, retry after %lld ms%s%s",
                       (long long)resp.retry_after_ms, sep, resp.body);
        } else {
            util_error(reason, reasonlen, "slack webhook: HTTP 429%s%s", sep, resp.body);
        }
        return AGENT_RETRY;
    }
    util_error(reason, reasonlen, "slack webhook: HTTP %ld%s%s", s, sep, resp.body);
    return (s == 408 || (s >= 500 && s <= 599)) ? AGENT_RETRY : AGENT_FAIL;
}

static agent_outcome slack_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                  size_t reasonlen)
{
    slack_state *st = state;
    json_t *title = json_object_get(ev->data, "title");
    if (!json_is_string(title)) {
        util_error(reason, reasonlen, "%s without a string data.title", ev->event_type);
        return AGENT_FAIL;
    }
    char *text = slack_text(ev->event_type, json_string_value(title));
    if (!text) {
        util_error(reason, reasonlen, "event type '%s' is not a slack message", ev->event_type);
        return AGENT_FAIL;
    }

    agent_outcome outcome = st->url ? slack_post(st, ctx, text, reason, reasonlen) : AGENT_OK;
    if (outcome == AGENT_OK) {
        char *shown = slack_loggable(text);
        LOG_INFO_CID(ev->correlation_id, "Slack [%s]: %s", st->channel, shown);
        free(shown);

        json_t *data = json_object();
        json_t *task_id = json_object_get(ev->data, "task_id");
        if (json_is_string(task_id))
            json_object_set(data, "task_id", task_id);
        json_object_set_new(data, "channel", json_string("slack"));
        json_object_set_new(data, "recipient", json_string(st->channel));
        json_object_set_new(data, "text", json_string(text));
        json_object_set_new(data, "event_type", json_string(ev->event_type));
        if (!st->url)
            json_object_set_new(data, "logged_only", json_true());
        char err[256];
        if (agent_emit(ctx, "notification.sent", data, NULL, NULL, NULL, err, sizeof(err)) != 0) {
            util_error(reason, reasonlen, "cannot emit notification.sent: %s", err);
            outcome = AGENT_FAIL;
        }
        json_decref(data);
    }
    free(text);
    return outcome;
}

static void slack_destroy(void *state)
{
    slack_state *st = state;
    if (!st)
        return;
    webhook_free(st->hook);
    free(st->url);
    free(st->channel);
    free(st);
}

/* ---- the factory ------------------------------------------------------ */

int agent_slack_def(agent_def *def, const agent_settings *s, char *err, size_t errlen)
{
    const char *channel = s->slack_channel ? s->slack_channel : "#tasks";
    size_t clen = strlen(channel);
    if (clen == 0 || clen > SLACK_CHANNEL_MAX)
        return util_error(err, errlen, "HERALD_SLACK_CHANNEL: must be 1..%d characters",
                          SLACK_CHANNEL_MAX);
    for (const unsigned char *p = (const unsigned char *)channel; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return util_error(err, errlen,
                              "HERALD_SLACK_CHANNEL: must not contain control "
                              "characters");
    json_t *probe = json_string(channel); /* jansson refuses invalid UTF-8 */
    if (!probe)
        return util_error(err, errlen, "HERALD_SLACK_CHANNEL: not valid UTF-8");
    json_decref(probe);
    const char *url = s->slack_webhook_url && *s->slack_webhook_url ? s->slack_webhook_url : NULL;
    char why[128];
    if (url && webhook_url_check(url, why, sizeof(why)) != 0)
        return util_error(err, errlen, "HERALD_SLACK_WEBHOOK_URL: %s", why);

    slack_state *st = xcalloc(1, sizeof(*st));
    st->url = url ? xstrdup(url) : NULL;
    st->channel = xstrdup(channel);
    st->timeout_ms = s->call_timeout_ms > 0 ? s->call_timeout_ms : SLACK_DEFAULT_TIMEOUT_MS;
    st->hook = url ? webhook_new() : NULL;
    if (!url)
        LOG_INFO("slack: HERALD_SLACK_WEBHOOK_URL is not set, messages are only logged");

    agent_def d = AGENT_DEF_INIT;
    d.name = "slack";
    d.group = SLACK_GROUP;
    d.topics = slack_topics;
    d.topic_count = UTIL_ARRAY_LEN(slack_topics);
    d.types = slack_types;
    d.type_count = UTIL_ARRAY_LEN(slack_types);
    d.max_batch = SLACK_MAX_BATCH;
    d.handle = slack_handle;
    d.destroy = slack_destroy;
    d.state = st;
    *def = d;
    return 0;
}
