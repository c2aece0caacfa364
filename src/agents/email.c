/*
 * email.c - the email agent (group notification-email): a mail to the task's
 * owner for every task.created and reminder.due.
 *
 * For each event it builds the recipient "<owner_id>@<email domain>" (an
 * owner_id that is not a valid local part fails the event for good: it goes
 * to the dead-letter topic, never to a mangled address), composes the mail
 * with mail.h (Message-ID "<event_id@herald>", so a redelivered event sends
 * a mail the receiver can recognise as the same one) and delivers it: over
 * SMTP when HERALD_SMTP_URL is set, else as DATA_DIR/mail/<event_id>.eml
 * (a redelivery overwrites the same file). Once the mail is accepted it
 * emits notification.sent (caused by the input event) and email.delivered
 * (caused by notification.sent); the runtime publishes both with the
 * input's commit.
 *
 * Outcomes: SMTP 4xx, connection errors, timeouts and file errors retry;
 * SMTP 5xx and bad input data fail to the DLQ. SMTP batches are small
 * (EMAIL_SMTP_BATCH) because a mail cannot be taken back: after a crash at
 * most the uncommitted part of one batch is sent again. .eml files are
 * written as each event is handled and made durable together in the
 * before_commit hook (one fsync of the directory per batch), so they are
 * on disk before email.delivered is; a crash before the commit only
 * rewrites the same files, so .eml batches can be large (EMAIL_EML_BATCH).
 *
 * Threads: the runtime calls the handler from one thread; the state (and
 * its SMTP connection) belongs to that thread. Ownership: the state is
 * owned by the runtime after agent_email_def() and freed by email_destroy.
 */
#include "agents/agents.h"
#include "agents/mail.h"

#include "common/log.h"
#include "common/util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMAIL_SMTP_BATCH 32
#define EMAIL_EML_BATCH 256

typedef struct email_state {
    char *from;        /* HERALD_SMTP_FROM, checked */
    char *domain;      /* HERALD_EMAIL_DOMAIN, checked */
    mail_spool *spool; /* DATA_DIR/mail (.eml mode), else NULL */
    mail_smtp *smtp;   /* SMTP mode, else NULL */
} email_state;

static const char *const email_topics[] = {"task-events", "reminder-events"};
static const char *const email_types[] = {"task.created", "reminder.due"};

static void email_destroy(void *state)
{
    email_state *st = state;
    if (!st)
        return;
    mail_smtp_close(st->smtp);
    free(st->from);
    free(st->domain);
    mail_spool_close(st->spool);
    free(st);
}

/* .eml mode: the files of the batch reach the disk before its commit. */
static int email_before_commit(void *state, char *err, size_t errlen)
{
    email_state *st = state;
    return st->spool ? mail_spool_sync(st->spool, err, errlen) : 0;
}

static const char *data_string(const json_t *data, const char *key)
{
    return json_string_value(json_object_get(data, key));
}

/* Append label, value (made one line) and a newline to buf[*len]. */
static void add_line(char **buf, size_t *len, const char *label, const char *value)
{
    char *v = mail_sanitize_line(value);
    char *line = NULL;
    int n = asprintf(&line, "%s%s\n", label, v);
    free(v);
    if (n < 0)
        abort();
    *buf = xrealloc(*buf, *len + (size_t)n + 1);
    memcpy(*buf + *len, line, (size_t)n + 1);
    *len += (size_t)n;
    free(line);
}

/* The subject and body of the mail for ev (reminder.due or task.created);
 * both malloc'd, one-line fields sanitized. */
static void email_text(const event *ev, char **subject, char **body)
{
    const json_t *d = ev->data;
    const char *title = data_string(d, "title");
    const char *owner = data_string(d, "owner_id");
    const char *due = data_string(d, "due_at");
    char *t = mail_sanitize_line(title ? title : "");
    char *b = NULL;
    size_t n = 0;
    char *greeting = NULL;
    if (asprintf(&greeting, "%s,", owner ? owner : "") < 0)
        abort();
    add_line(&b, &n, "Hello ", greeting);
    free(greeting);
    add_line(&b, &n, "", "");
    if (strcmp(ev->event_type, "reminder.due") == 0) {
        if (asprintf(subject, "Reminder: %s", t) < 0)
            abort();
        add_line(&b, &n, "This is a reminder for your task: ", t);
        add_line(&b, &n, "", "");
        add_line(&b, &n, "Title: ", t);
        add_line(&b, &n, "Task ID: ", data_string(d, "task_id"));
        add_line(&b, &n, "Due: ", due ? due : "(not set)");
        const char *rid = data_string(d, "reminder_id");
        if (rid)
            add_line(&b, &n, "Reminder ID: ", rid);
    } else {
        if (asprintf(subject, "New task assigned: %s", t) < 0)
            abort();
        add_line(&b, &n, "A new task has been assigned to you: ", t);
        add_line(&b, &n, "", "");
        add_line(&b, &n, "Title: ", t);
        add_line(&b, &n, "Task ID: ", data_string(d, "task_id"));
        json_t *prio = json_object_get(d, "priority");
        if (json_is_integer(prio)) {
            char p[32];
            snprintf(p, sizeof(p), "%lld", (long long)json_integer_value(prio));
            add_line(&b, &n, "Priority: ", p);
        }
        if (due)
            add_line(&b, &n, "Due: ", due);
        const char *desc = data_string(d, "description");
        if (desc && *desc) {
            add_line(&b, &n, "", "");
            add_line(&b, &n, "Description:", "");
            char *text = mail_sanitize_text(desc); /* keeps its lines */
            size_t tl = strlen(text);
            b = xrealloc(b, n + tl + 2);
            memcpy(b + n, text, tl);
            n += tl;
            b[n++] = '\n';
            b[n] = '\0';
            free(text);
        }
    }
    add_line(&b, &n, "", "");
    add_line(&b, &n, "Correlation: ", ev->correlation_id);
    add_line(&b, &n, "Event: ", ev->event_id);
    free(t);
    *body = b;
}

/* Copy of s fit for a log line or a reason (one line, at most 200 bytes). */
static void shown(const char *s, char *out, size_t outlen)
{
    char *v = mail_sanitize_line(s);
    util_strlcpy(out, v, outlen);
    free(v);
}

static agent_outcome email_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                  size_t reasonlen)
{
    email_state *st = state;
    const char *cid = ev->correlation_id;
    const char *task_id = data_string(ev->data, "task_id");
    const char *owner = data_string(ev->data, "owner_id");
    const char *title = data_string(ev->data, "title");
    if (!task_id || !*task_id || !owner || !title) {
        util_error(reason, reasonlen, "%s event lacks a string %s", ev->event_type,
                   !task_id || !*task_id ? "task_id"
                   : !owner              ? "owner_id"
                                         : "title");
        return AGENT_FAIL;
    }
    char to[MAIL_ADDRESS_MAX + 1], why[256], who[201];
    if (mail_address_build(owner, st->domain, to, why, sizeof(why)) != 0) {
        shown(owner, who, sizeof(who));
        util_error(reason, reasonlen, "owner_id '%s' does not make a mail address: %s", who, why);
        return AGENT_FAIL;
    }

    char *subject = NULL, *body = NULL;
    email_text(ev, &subject, &body);
    char message_id[EVENT_UUID_LEN + 16];
    snprintf(message_id, sizeof(message_id), "<%s@herald>", ev->event_id);
    mail_message m = MAIL_MESSAGE_INIT;
    m.from = st->from;
    m.to = to;
    m.subject = subject;
    m.body = body;
    m.message_id = message_id;
    m.date_ms = util_now_ms();
    size_t len = 0;
    char *data = mail_compose(&m, &len, reason, reasonlen);
    free(body);
    if (!data) {
        free(subject);
        return AGENT_FAIL;
    }

    LOG_INFO_CID(cid, "Sending email to %s: %s", to, subject);
    agent_outcome out = AGENT_OK;
    char reply[MAIL_REPLY_MAX + 8];
    if (st->smtp) {
        mail_result r = mail_smtp_send(st->smtp, st->from, to, data, len, reply, sizeof(reply),
                                       reason, reasonlen);
        if (r != MAIL_SENT)
            out = r == MAIL_PERMANENT ? AGENT_FAIL : AGENT_RETRY;
        else if (!reply[0])
            util_strlcpy(reply, "250", sizeof(reply));
    } else {
        char path[4200];
        if (mail_spool_write(st->spool, ev->event_id, data, len, path, sizeof(path), reason,
                             reasonlen) != 0)
            out = AGENT_RETRY;
        else
            snprintf(reply, sizeof(reply), "eml:%.*s", MAIL_REPLY_MAX - 4, path);
    }
    free(data);
    if (out != AGENT_OK) { /* the runtime logs the reason */
        free(subject);
        return out;
    }

    char sent_id[EVENT_UUID_LEN + 1];
    json_t *sent = json_pack("{s:s, s:s, s:s, s:s, s:s}", "task_id", task_id, "channel", "email",
                             "recipient", to, "subject", subject, "event_type", ev->event_type);
    json_t *delivered = json_pack("{s:s, s:s, s:s, s:s}", "task_id", task_id, "message_id",
                                  message_id, "recipient", to, "smtp_reply", reply);
    free(subject);
    if (!sent || !delivered) {
        json_decref(sent);
        json_decref(delivered);
        util_error(reason, reasonlen, "cannot build the events of a sent mail");
        return AGENT_FAIL;
    }
    int rc = agent_emit(ctx, "notification.sent", sent, NULL, NULL, sent_id, reason, reasonlen);
    if (rc == 0)
        rc = agent_emit(ctx, "email.delivered", delivered, NULL, sent_id, NULL, reason, reasonlen);
    json_decref(sent);
    json_decref(delivered);
    return rc == 0 ? AGENT_OK : AGENT_FAIL;
}

int agent_email_def(agent_def *def, const agent_settings *s, char *err, size_t errlen)
{
    char why[256];
    const char *from = s->smtp_from ? s->smtp_from : "herald@localhost";
    const char *domain = s->email_domain ? s->email_domain : "company.com";
    if (mail_address_check(from, why, sizeof(why)) != 0)
        return util_error(err, errlen, "email: sender address '%s': %s", from, why);
    if (mail_domain_check(domain, why, sizeof(why)) != 0)
        return util_error(err, errlen, "email: domain '%s': %s", domain, why);
    email_state *st = xcalloc(1, sizeof(*st));
    st->from = xstrdup(from);
    st->domain = xstrdup(domain);
    if (s->smtp_url && *s->smtp_url) {
        mail_smtp_config mc = MAIL_SMTP_CONFIG_INIT;
        mc.url = s->smtp_url;
        mc.user = s->smtp_user;
        mc.password = s->smtp_password;
        mc.timeout_ms = s->call_timeout_ms;
        st->smtp = mail_smtp_open(&mc, why, sizeof(why));
        if (!st->smtp) {
            email_destroy(st);
            return util_error(err, errlen, "email: %s", why);
        }
    } else {
        const char *dir = s->data_dir ? s->data_dir : "herald-data";
        char *mail_dir = NULL;
        if (asprintf(&mail_dir, "%s/mail", dir) < 0)
            abort();
        st->spool = mail_spool_open(mail_dir, why, sizeof(why));
        free(mail_dir);
        if (!st->spool) {
            email_destroy(st);
            return util_error(err, errlen, "email: %s", why);
        }
    }

    agent_def d = AGENT_DEF_INIT;
    d.name = "email";
    d.group = "notification-email";
    d.topics = email_topics;
    d.topic_count = UTIL_ARRAY_LEN(email_topics);
    d.types = email_types;
    d.type_count = UTIL_ARRAY_LEN(email_types);
    d.max_batch = st->smtp ? EMAIL_SMTP_BATCH : EMAIL_EML_BATCH;
    d.handle = email_handle;
    d.before_commit = email_before_commit;
    d.destroy = email_destroy;
    d.state = st;
    *def = d;
    return 0;
}
