/*
 * scheduler.c - the reminder scheduler agent (group "scheduler"): turns the
 * due times of tasks into durable timers and publishes reminder.scheduled,
 * reminder.due and reminder.cancelled on reminder-events.
 *
 * Design:
 * - The timers are rows of the table scheduler_reminders in the agent's
 *   state database. The handler runs inside the runtime's batch transaction
 *   (in_transaction), which in the embedded mode is the event log's own
 *   database: a reminder row, the events that announce it and the consumer
 *   offset commit together or not at all. The handler is local and quick:
 *   a few indexed statements and no I/O of its own.
 * - A reminder's id is derived from (task_id, due time) by SHA-256
 *   (scheduler_reminder_id()), so the same due time of the same task is
 *   always the same reminder: a task.created seen twice (even with two
 *   event ids) schedules once. The table's key is (task_id, due_ms), which
 *   the id stands for: task ids from the Task API are time-ordered, so new
 *   rows append to the B-tree instead of landing on random pages (with the
 *   hash as the key, 100,000 reminders took 2.6 times as long). A task
 *   never has more than one pending reminder (a unique partial index says
 *   so).
 * - Rows move pending -> fired (reminder.due published) or pending ->
 *   cancelled; they are kept afterwards, which is what lets a duplicate
 *   task.created be recognised after its reminder has fired. Completed and
 *   deleted tasks are remembered in scheduler_closed_tasks so that a later
 *   change of their due time does not remind anyone.
 * - Timers: next_timer() is the earliest pending remind time (an index
 *   lookup); fire_timers() publishes reminder.due for every pending row due
 *   by now, with the correlation id of the task event that scheduled it and
 *   the id of its reminder.scheduled event as causation, and marks it fired
 *   in the same transaction. A reminder that fell due while herald was down
 *   is simply due at the first call after the start.
 * - Statements are prepared once per connection and kept in the state (a
 *   prepare costs more than the indexed statement it prepares); each is
 *   reset right after use, so none holds a read transaction open between
 *   calls. They are finalized in destroy(), which the runtime calls after
 *   it closed its connection: the event log closes with sqlite3_close_v2(),
 *   which keeps a connection with live statements as a "zombie" until the
 *   last one is finalized, so that order is safe (and, for the same reason,
 *   a new connection can never reuse the address of the one the statements
 *   belong to, which is how stmt() notices a different connection).
 *
 * Threads: the runtime calls every hook from its one thread.
 * Ownership: the state (remind_before_ms, the statements) is owned by the
 * runtime after agent_scheduler_def() and freed by sched_destroy().
 */
#include "agents/scheduler.h"

#include "agents/agents.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"
#include "runtime/runtime.h"

#include <inttypes.h>
#include <jansson.h>
#include <nettle/sha2.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHED_NAME "scheduler"
#define SCHED_GROUP "scheduler"

/* 0000-01-01T00:00:00.000Z, the earliest time an RFC 3339 year can express. */
#define SCHED_MIN_MS INT64_C(-62167219200000)

/* Rows fired per statement round in fire_timers(), and per call: after a
 * long downtime the backlog goes out in transactions of bounded size (the
 * runtime calls again at once while next_timer() is in the past). */
#define SCHED_FIRE_CHUNK 128
#define SCHED_FIRE_MAX 4096

/* Longest user text (title, task id) copied into a log line. */
#define SCHED_LOG_TEXT 200

static const char *const sched_topics[] = {"task-events"};
static const char *const sched_types[] = {"task.created", "task.updated", "task.completed",
                                          "task.deleted"};

static const char *sched_schema =
    "CREATE TABLE IF NOT EXISTS scheduler_reminders("
    "  task_id TEXT NOT NULL, due_ms INTEGER NOT NULL,"
    "  reminder_id TEXT NOT NULL," /* scheduler_reminder_id(task_id, due_ms) */
    "  owner_id TEXT NOT NULL, title TEXT NOT NULL, remind_ms INTEGER NOT NULL,"
    "  state INTEGER NOT NULL,"           /* 0 pending, 1 fired, 2 cancelled */
    "  correlation_id TEXT NOT NULL,"     /* of the task event that scheduled it */
    "  scheduled_event_id TEXT NOT NULL," /* its reminder.scheduled event */
    "  updated_ms INTEGER NOT NULL,"
    "  traceparent TEXT, tracestate TEXT," /* reminder.scheduled's trace context */
    "  PRIMARY KEY(task_id, due_ms)) WITHOUT ROWID;"
    "CREATE UNIQUE INDEX IF NOT EXISTS scheduler_reminders_pending_task"
    "  ON scheduler_reminders(task_id) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS scheduler_reminders_pending_time"
    "  ON scheduler_reminders(remind_ms) WHERE state = 0;"
    "CREATE TABLE IF NOT EXISTS scheduler_closed_tasks("
    "  task_id TEXT PRIMARY KEY, reason TEXT NOT NULL, closed_ms INTEGER NOT NULL) WITHOUT ROWID;";

/* The statements, prepared once per connection (see stmt()). */
enum sched_query {
    Q_CLOSED,
    Q_SEEN,
    Q_PENDING,
    Q_UPSERT,
    Q_CANCEL,
    Q_CLOSE_TASK,
    Q_REFRESH,
    Q_NEXT,
    Q_DUE,
    Q_FIRED,
    SCHED_Q_COUNT
};

typedef struct scheduler_state {
    int64_t remind_before_ms;
    sqlite3 *db; /* the connection the statements below belong to */
    sqlite3_stmt *stmt[SCHED_Q_COUNT];
} scheduler_state;

/* ---- pure helpers (scheduler.h) ---------------------------------------- */

void scheduler_reminder_id(const char *task_id, int64_t due_ms, char out[EVENT_UUID_LEN + 1])
{
    /* "<task_id>\n<due_ms>": the due part is a number, so splitting at the
     * last newline recovers both parts and different inputs never collide
     * as text. */
    size_t tlen = strlen(task_id);
    char due[32];
    int dlen = snprintf(due, sizeof(due), "%" PRId64, due_ms);
    unsigned char *buf = xmalloc(tlen + 1 + (size_t)dlen);
    memcpy(buf, task_id, tlen);
    buf[tlen] = '\n';
    memcpy(buf + tlen + 1, due, (size_t)dlen);

    unsigned char md[SHA256_DIGEST_SIZE];
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, tlen + 1 + (size_t)dlen, buf);
    sha256_digest(&ctx, sizeof(md), md);
    free(buf);
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x80); /* version 8: custom */
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* variant 10 */

    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[md[i] >> 4];
        *p++ = hex[md[i] & 0x0f];
    }
    *p = '\0';
}

int64_t scheduler_remind_at(int64_t due_ms, int64_t remind_before_ms)
{
    if (due_ms < SCHED_MIN_MS)
        due_ms = SCHED_MIN_MS;
    if (remind_before_ms <= 0)
        return due_ms;
    /* SCHED_MIN_MS + a positive number cannot overflow */
    if (due_ms < SCHED_MIN_MS + remind_before_ms)
        return SCHED_MIN_MS;
    return due_ms - remind_before_ms;
}

/* A string member of data, or NULL when it is missing or not a string. */
static const char *data_string(json_t *data, const char *key)
{
    json_t *v = json_object_get(data, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int scheduler_intent_of(const event *ev, scheduler_intent *out, char *reason, size_t reasonlen)
{
    scheduler_intent init = SCHEDULER_INTENT_INIT;
    *out = init;
    const char *type = ev->event_type;
    int created = strcmp(type, "task.created") == 0;
    int updated = strcmp(type, "task.updated") == 0;
    int completed = strcmp(type, "task.completed") == 0;
    int deleted = strcmp(type, "task.deleted") == 0;
    if (!created && !updated && !completed && !deleted)
        return 0;
    json_t *data = ev->data;
    if (!json_is_object(data))
        return util_error(reason, reasonlen, "%s: data is not an object", type);

    json_t *tid = json_object_get(data, "task_id");
    if (!json_is_string(tid) || json_string_length(tid) == 0)
        return util_error(reason, reasonlen,
                          "%s: data.task_id is missing or not a non-empty string", type);
    if (json_string_length(tid) > SCHEDULER_TASK_ID_MAX ||
        strlen(json_string_value(tid)) != json_string_length(tid))
        return util_error(reason, reasonlen,
                          "%s: data.task_id is longer than %d bytes or holds a NUL character", type,
                          SCHEDULER_TASK_ID_MAX);
    out->task_id = json_string_value(tid);
    out->title = data_string(data, "title");
    out->owner_id = data_string(data, "owner_id");

    if (completed || deleted) {
        out->action = SCHEDULER_CLOSE;
        out->reason = completed ? "completed" : "deleted";
        return 0;
    }

    json_t *due;
    const char *due_name;
    if (created) {
        due = json_object_get(data, "due_at");
        due_name = "data.due_at";
        if (!due || json_is_null(due))
            return 0;
    } else {
        json_t *changes = json_object_get(data, "changes");
        if (!changes)
            return 0;
        if (!json_is_object(changes))
            return util_error(reason, reasonlen, "%s: data.changes is not an object", type);
        if ((json_object_get(changes, "title") || json_object_get(changes, "owner_id")) &&
            out->title && out->owner_id)
            out->details_changed = 1;
        json_t *change = json_object_get(changes, "due_at");
        if (!change)
            return 0;
        if (!json_is_object(change) || !json_object_get(change, "new"))
            return util_error(reason, reasonlen,
                              "%s: data.changes.due_at is not an object with a 'new' member", type);
        due = json_object_get(change, "new");
        due_name = "data.changes.due_at.new";
        if (json_is_null(due)) {
            out->action = SCHEDULER_CLEAR;
            out->reason = "rescheduled";
            return 0;
        }
    }
    if (!json_is_string(due))
        return util_error(reason, reasonlen, "%s: %s is not a string or null", type, due_name);
    if (event_parse_time(json_string_value(due), &out->due_ms) != 0)
        return util_error(reason, reasonlen, "%s: %s is not an RFC 3339 timestamp", type, due_name);
    if (!out->title)
        return util_error(reason, reasonlen, "%s: data.title is missing or not a string", type);
    if (!out->owner_id)
        return util_error(reason, reasonlen, "%s: data.owner_id is missing or not a string", type);
    out->action = SCHEDULER_SET;
    out->only_if_new = created;
    return 0;
}

/* ---- helpers ----------------------------------------------------------- */

/* Copy user text for a log line: control characters become '?', and it is
 * cut at SCHED_LOG_TEXT bytes, so no input can forge or flood log lines. */
static const char *log_text(const char *s, char out[SCHED_LOG_TEXT + 4])
{
    size_t n = 0;
    for (; s[n] && n < SCHED_LOG_TEXT; n++)
        out[n] = ((unsigned char)s[n] < 0x20 || s[n] == 0x7f) ? '?' : s[n];
    if (s[n]) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

/* ---- statements ---------------------------------------------------------- */

static const char *const sched_sql[SCHED_Q_COUNT] = {
    [Q_CLOSED] = "SELECT 1 FROM scheduler_closed_tasks WHERE task_id = ?1",
    [Q_SEEN] = "SELECT 1 FROM scheduler_reminders WHERE task_id = ?1 LIMIT 1",
    [Q_PENDING] = "SELECT reminder_id FROM scheduler_reminders WHERE task_id = ?1 AND state = 0",
    /* a row of this id may exist, fired or cancelled, when a task.updated
     * brings back an earlier due time: it is armed again */
    [Q_UPSERT] = "INSERT INTO scheduler_reminders(reminder_id, task_id, owner_id, title, due_ms,"
                 " remind_ms, state, correlation_id, scheduled_event_id, updated_ms, traceparent,"
                 " tracestate)"
                 " VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11)"
                 " ON CONFLICT(task_id, due_ms) DO UPDATE SET owner_id = excluded.owner_id,"
                 " title = excluded.title, remind_ms = excluded.remind_ms, state = 0,"
                 " correlation_id = excluded.correlation_id,"
                 " scheduled_event_id = excluded.scheduled_event_id,"
                 " updated_ms = excluded.updated_ms, traceparent = excluded.traceparent,"
                 " tracestate = excluded.tracestate",
    [Q_CANCEL] = "UPDATE scheduler_reminders SET state = 2, updated_ms = ?2"
                 " WHERE task_id = ?1 AND state = 0",
    [Q_CLOSE_TASK] = "INSERT OR IGNORE INTO scheduler_closed_tasks(task_id, reason, closed_ms)"
                     " VALUES(?1, ?2, ?3)",
    [Q_REFRESH] = "UPDATE scheduler_reminders SET title = ?2, owner_id = ?3"
                  " WHERE task_id = ?1 AND state = 0",
    [Q_NEXT] = "SELECT min(remind_ms) FROM scheduler_reminders WHERE state = 0",
    [Q_DUE] = "SELECT reminder_id, task_id, owner_id, title, due_ms, remind_ms, correlation_id,"
              " scheduled_event_id, traceparent, tracestate FROM scheduler_reminders"
              " WHERE state = 0 AND remind_ms <= ?1 ORDER BY remind_ms, task_id LIMIT ?2",
    [Q_FIRED] = "UPDATE scheduler_reminders SET state = 1, updated_ms = ?3"
                " WHERE task_id = ?1 AND due_ms = ?2 AND state = 0",
};

static void stmts_finalize(scheduler_state *s)
{
    for (int q = 0; q < SCHED_Q_COUNT; q++) {
        sqlite3_finalize(s->stmt[q]);
        s->stmt[q] = NULL;
    }
    s->db = NULL;
}

/* The prepared statement q on db (reset, ready to bind), or NULL with err. */
static sqlite3_stmt *stmt(scheduler_state *s, sqlite3 *db, enum sched_query q, char *err,
                          size_t errlen)
{
    if (s->db != db) {
        stmts_finalize(s);
        s->db = db;
    }
    if (!s->stmt[q] && sqlite3_prepare_v3(db, sched_sql[q], -1, SQLITE_PREPARE_PERSISTENT,
                                          &s->stmt[q], NULL) != SQLITE_OK) {
        util_error(err, errlen, "scheduler: cannot prepare '%.40s...': %s", sched_sql[q],
                   sqlite3_errmsg(db));
        sqlite3_finalize(s->stmt[q]);
        s->stmt[q] = NULL;
        return NULL;
    }
    return s->stmt[q];
}

static int db_error(sqlite3 *db, const char *what, char *err, size_t errlen)
{
    return util_error(err, errlen, "scheduler: cannot %s: %s", what, sqlite3_errmsg(db));
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
}

/* Run a statement that returns no rows, then reset it. */
static int step_done(sqlite3 *db, sqlite3_stmt *st, const char *what, char *err, size_t errlen)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return db_error(db, what, err, errlen);
    return 0;
}

/* 1 if query q with ?1 = text has a row, 0 if not, -1 on error. */
static int exists(scheduler_state *s, sqlite3 *db, enum sched_query q, const char *text,
                  const char *what, char *err, size_t errlen)
{
    sqlite3_stmt *st = stmt(s, db, q, err, errlen);
    if (!st)
        return -1;
    bind_text(st, 1, text);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    return db_error(db, what, err, errlen);
}

/* The pending reminder of a task: 1 and its id in id_out, 0 if none, -1 on
 * error. */
static int pending_of(scheduler_state *s, sqlite3 *db, const char *task_id,
                      char id_out[EVENT_UUID_LEN + 1], char *err, size_t errlen)
{
    sqlite3_stmt *st = stmt(s, db, Q_PENDING, err, errlen);
    if (!st)
        return -1;
    bind_text(st, 1, task_id);
    int rc = sqlite3_step(st);
    int found = 0;
    if (rc == SQLITE_ROW) {
        const unsigned char *id = sqlite3_column_text(st, 0);
        util_strlcpy(id_out, id ? (const char *)id : "", EVENT_UUID_LEN + 1);
        found = 1;
    } else if (rc != SQLITE_DONE) {
        db_error(db, "read the pending reminder", err, errlen);
        found = -1;
    }
    sqlite3_reset(st);
    return found;
}

/* data of reminder.scheduled and reminder.due; NULL if a text is not UTF-8
 * (it came out of a decoded event, so that means a damaged row). */
static json_t *reminder_data(const char *reminder_id, const char *task_id, const char *owner_id,
                             const char *title, int64_t due_ms, int64_t remind_ms)
{
    char due[EVENT_TIME_LEN + 1], remind[EVENT_TIME_LEN + 1];
    event_format_time(due_ms, due);
    event_format_time(remind_ms, remind);
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "reminder_id", reminder_id, "task_id",
                     task_id, "owner_id", owner_id, "title", title, "due_at", due, "remind_at",
                     remind);
}

/* ---- the handler --------------------------------------------------------- */

/* Cancel the pending reminder reminder_id of the task in hand. */
static int cancel_reminder(scheduler_state *s, agent_ctx *ctx, sqlite3 *db, const event *ev,
                           const char *reminder_id, const char *task_id, const char *why, char *err,
                           size_t errlen)
{
    json_t *data =
        json_pack("{s:s, s:s, s:s}", "reminder_id", reminder_id, "task_id", task_id, "reason", why);
    if (!data)
        return util_error(err, errlen, "scheduler: cannot build reminder.cancelled");
    int rc = agent_emit(ctx, "reminder.cancelled", data, NULL, NULL, NULL, err, errlen);
    json_decref(data);
    if (rc != 0)
        return -1;

    sqlite3_stmt *st = stmt(s, db, Q_CANCEL, err, errlen);
    if (!st)
        return -1;
    bind_text(st, 1, task_id); /* a task has at most one pending reminder */
    sqlite3_bind_int64(st, 2, util_now_ms());
    if (step_done(db, st, "cancel a reminder", err, errlen) != 0)
        return -1;
    char t[SCHED_LOG_TEXT + 4];
    LOG_INFO_CID(ev->correlation_id, "Reminder cancelled for task %s (%s)", log_text(task_id, t),
                 why);
    return 0;
}

static int schedule(scheduler_state *s, agent_ctx *ctx, sqlite3 *db, const event *ev,
                    const scheduler_intent *in, char *err, size_t errlen)
{
    int r = exists(s, db, Q_CLOSED, in->task_id, "read the closed tasks", err, errlen);
    if (r != 0)
        return r < 0 ? -1 : 0; /* completed or deleted: no reminder */
    if (in->only_if_new) {
        r = exists(s, db, Q_SEEN, in->task_id, "read the reminders", err, errlen);
        if (r != 0)
            return r < 0 ? -1 : 0; /* a task.created seen before */
    }

    char id[EVENT_UUID_LEN + 1], old[EVENT_UUID_LEN + 1];
    scheduler_reminder_id(in->task_id, in->due_ms, id);
    r = pending_of(s, db, in->task_id, old, err, errlen);
    if (r < 0)
        return -1;
    if (r == 1 && strcmp(old, id) == 0)
        return 0; /* already pending for this due time */
    if (r == 1 &&
        cancel_reminder(s, ctx, db, ev, old, in->task_id, "rescheduled", err, errlen) != 0)
        return -1;

    int64_t remind_ms = scheduler_remind_at(in->due_ms, s->remind_before_ms);
    json_t *data = reminder_data(id, in->task_id, in->owner_id, in->title, in->due_ms, remind_ms);
    if (!data)
        return util_error(err, errlen, "scheduler: cannot build reminder.scheduled");
    char scheduled_id[EVENT_UUID_LEN + 1];
    int rc = agent_emit(ctx, "reminder.scheduled", data, NULL, NULL, scheduled_id, err, errlen);
    json_decref(data);
    if (rc != 0)
        return -1;

    sqlite3_stmt *st = stmt(s, db, Q_UPSERT, err, errlen);
    if (!st)
        return -1;
    bind_text(st, 1, id);
    bind_text(st, 2, in->task_id);
    bind_text(st, 3, in->owner_id);
    bind_text(st, 4, in->title);
    sqlite3_bind_int64(st, 5, in->due_ms);
    sqlite3_bind_int64(st, 6, remind_ms);
    bind_text(st, 7, ev->correlation_id);
    bind_text(st, 8, scheduled_id);
    sqlite3_bind_int64(st, 9, util_now_ms());
    /* reminder.due will be a child span of reminder.scheduled */
    char traceparent[TRACE_PARENT_LEN + 1];
    int traced = agent_emitted_traceparent(ctx, scheduled_id, traceparent);
    if (traced)
        bind_text(st, 10, traceparent);
    else
        sqlite3_bind_null(st, 10); /* bindings outlive a reset */
    if (traced && ev->tracestate)
        bind_text(st, 11, ev->tracestate);
    else
        sqlite3_bind_null(st, 11);
    if (step_done(db, st, "store a reminder", err, errlen) != 0)
        return -1;

    char remind[EVENT_TIME_LEN + 1], t[SCHED_LOG_TEXT + 4];
    event_format_time(remind_ms, remind);
    LOG_INFO_CID(ev->correlation_id, "Reminder scheduled for task %s at %s",
                 log_text(in->task_id, t), remind);
    return 0;
}

/* Cancel the task's pending reminder (if any); remember a closed task. */
static int unschedule(scheduler_state *s, agent_ctx *ctx, sqlite3 *db, const event *ev,
                      const scheduler_intent *in, char *err, size_t errlen)
{
    char old[EVENT_UUID_LEN + 1];
    int r = pending_of(s, db, in->task_id, old, err, errlen);
    if (r < 0)
        return -1;
    if (r == 1 && cancel_reminder(s, ctx, db, ev, old, in->task_id, in->reason, err, errlen) != 0)
        return -1;
    if (in->action != SCHEDULER_CLOSE)
        return 0;
    sqlite3_stmt *st = stmt(s, db, Q_CLOSE_TASK, err, errlen);
    if (!st)
        return -1;
    bind_text(st, 1, in->task_id);
    bind_text(st, 2, in->reason);
    sqlite3_bind_int64(st, 3, util_now_ms());
    return step_done(db, st, "record a closed task", err, errlen);
}

/* A pending reminder takes the task's current title and owner. */
static int refresh_details(scheduler_state *s, sqlite3 *db, const scheduler_intent *in, char *err,
                           size_t errlen)
{
    sqlite3_stmt *st = stmt(s, db, Q_REFRESH, err, errlen);
    if (!st)
        return -1;
    bind_text(st, 1, in->task_id);
    bind_text(st, 2, in->title);
    bind_text(st, 3, in->owner_id);
    return step_done(db, st, "update a pending reminder", err, errlen);
}

static agent_outcome sched_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                  size_t reasonlen)
{
    scheduler_state *s = state;
    scheduler_intent in = SCHEDULER_INTENT_INIT;
    if (scheduler_intent_of(ev, &in, reason, reasonlen) != 0)
        return AGENT_FAIL;
    if (in.action == SCHEDULER_NOTHING && !in.details_changed)
        return AGENT_OK;
    sqlite3 *db = agent_ctx_db(ctx);
    if (!db) {
        util_error(reason, reasonlen, "scheduler: no state database in the handler");
        return AGENT_FAIL;
    }
    int rc = 0;
    switch (in.action) {
    case SCHEDULER_SET:
        rc = schedule(s, ctx, db, ev, &in, reason, reasonlen);
        break;
    case SCHEDULER_CLEAR:
    case SCHEDULER_CLOSE:
        rc = unschedule(s, ctx, db, ev, &in, reason, reasonlen);
        break;
    case SCHEDULER_NOTHING:
        break;
    }
    if (rc == 0 && in.details_changed && in.action != SCHEDULER_SET)
        rc = refresh_details(s, db, &in, reason, reasonlen);
    /* a database error is not the event's fault: ask for another attempt */
    return rc == 0 ? AGENT_OK : AGENT_RETRY;
}

/* ---- timers -------------------------------------------------------------- */

static int sched_setup(void *state, sqlite3 *db, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sched_schema, NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "scheduler: cannot create its tables: %s",
                   msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    /* tables of an earlier herald have no trace columns yet */
    sqlite3_stmt *st = NULL;
    int has_trace = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM pragma_table_info('scheduler_reminders')"
                           " WHERE name = 'traceparent'",
                           -1, &st, NULL) == SQLITE_OK)
        has_trace = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (!has_trace && sqlite3_exec(db,
                                   "ALTER TABLE scheduler_reminders ADD COLUMN traceparent TEXT;"
                                   "ALTER TABLE scheduler_reminders ADD COLUMN tracestate TEXT;",
                                   NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "scheduler: cannot add the trace columns: %s",
                   msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int64_t sched_next_timer(void *state, sqlite3 *db)
{
    char err[256];
    sqlite3_stmt *st = stmt(state, db, Q_NEXT, err, sizeof(err));
    if (!st) {
        LOG_ERROR("%s", err);
        return -1;
    }
    int64_t next = -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        next = sqlite3_column_int64(st, 0);
        if (next < 0)
            next = 0; /* due before 1970: due now (-1 would mean "none") */
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        LOG_ERROR("scheduler: cannot read the next reminder: %s", sqlite3_errmsg(db));
    }
    sqlite3_reset(st);
    return next;
}

typedef struct due_row {
    char *reminder_id, *task_id, *owner_id, *title, *correlation_id, *scheduled_event_id;
    char *traceparent, *tracestate; /* NULL: none */
    int64_t due_ms, remind_ms;
} due_row;

static char *column_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    return xstrdup(s ? (const char *)s : "");
}

static void due_row_release(due_row *r)
{
    free(r->reminder_id);
    free(r->task_id);
    free(r->owner_id);
    free(r->title);
    free(r->correlation_id);
    free(r->scheduled_event_id);
    free(r->traceparent);
    free(r->tracestate);
}

/* Up to SCHED_FIRE_CHUNK pending rows due by now_ms into rows; their count,
 * or -1 on error. */
static int load_due(scheduler_state *s, sqlite3 *db, int64_t now_ms, due_row *rows, char *err,
                    size_t errlen)
{
    sqlite3_stmt *st = stmt(s, db, Q_DUE, err, errlen);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_int(st, 2, SCHED_FIRE_CHUNK);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        due_row *r = &rows[n++];
        r->reminder_id = column_dup(st, 0);
        r->task_id = column_dup(st, 1);
        r->owner_id = column_dup(st, 2);
        r->title = column_dup(st, 3);
        r->due_ms = sqlite3_column_int64(st, 4);
        r->remind_ms = sqlite3_column_int64(st, 5);
        r->correlation_id = column_dup(st, 6);
        r->scheduled_event_id = column_dup(st, 7);
        r->traceparent = column_dup(st, 8);
        r->tracestate = column_dup(st, 9);
    }
    if (rc != SQLITE_DONE) {
        db_error(db, "read the due reminders", err, errlen);
        for (int i = 0; i < n; i++)
            due_row_release(&rows[i]);
        n = -1;
    }
    sqlite3_reset(st);
    return n;
}

/* Publish reminder.due for one row and mark it fired. A row whose event
 * cannot be built (a damaged row) is logged and marked fired all the same,
 * so that it cannot block every reminder behind it. */
static int fire_one(scheduler_state *s, agent_ctx *ctx, sqlite3 *db, const due_row *r, char *err,
                    size_t errlen)
{
    char e[256], t[SCHED_LOG_TEXT + 4], id[SCHED_LOG_TEXT + 4];
    json_t *data =
        reminder_data(r->reminder_id, r->task_id, r->owner_id, r->title, r->due_ms, r->remind_ms);
    int rc = data
                 ? agent_emit_with(ctx, "reminder.due", data, NULL, r->correlation_id,
                                   r->scheduled_event_id, r->traceparent[0] ? r->traceparent : NULL,
                                   r->tracestate[0] ? r->tracestate : NULL, NULL, e, sizeof(e))
                 : util_error(e, sizeof(e), "its text is not UTF-8");
    json_decref(data);
    if (rc != 0)
        LOG_ERROR("scheduler: reminder %s of task %s dropped: %s", r->reminder_id,
                  log_text(r->task_id, id), e);
    else
        LOG_INFO_CID(r->correlation_id, "Reminder due: %s (task %s)", log_text(r->title, t),
                     log_text(r->task_id, id));

    sqlite3_stmt *st = stmt(s, db, Q_FIRED, err, errlen);
    if (!st)
        return -1;
    bind_text(st, 1, r->task_id);
    sqlite3_bind_int64(st, 2, r->due_ms);
    sqlite3_bind_int64(st, 3, util_now_ms());
    return step_done(db, st, "mark a reminder fired", err, errlen);
}

static int sched_fire_timers(void *state, agent_ctx *ctx, int64_t now_ms, char *err, size_t errlen)
{
    sqlite3 *db = agent_ctx_db(ctx);
    if (!db)
        return util_error(err, errlen, "scheduler: no state database for the timers");
    due_row rows[SCHED_FIRE_CHUNK];
    for (int fired = 0; fired < SCHED_FIRE_MAX; fired += SCHED_FIRE_CHUNK) {
        /* rows are read first and changed afterwards: a statement must not
         * be stepped over rows the same connection is updating */
        int n = load_due(state, db, now_ms, rows, err, errlen);
        if (n < 0)
            return -1;
        int rc = 0;
        for (int i = 0; i < n; i++) {
            if (rc == 0)
                rc = fire_one(state, ctx, db, &rows[i], err, errlen);
            due_row_release(&rows[i]);
        }
        if (rc != 0)
            return -1;
        if (n < SCHED_FIRE_CHUNK)
            return 0;
    }
    return 0;
}

static void sched_destroy(void *state)
{
    stmts_finalize(state);
    free(state);
}

/* ---- the factory ----------------------------------------------------------- */

int agent_scheduler_def(agent_def *def, const agent_settings *s, char *err, size_t errlen)
{
    if (s->remind_before_ms < 0)
        return util_error(err, errlen, "HERALD_REMIND_BEFORE: must not be negative");
    scheduler_state *state = xcalloc(1, sizeof(*state));
    state->remind_before_ms = s->remind_before_ms;

    agent_def d = AGENT_DEF_INIT;
    d.name = SCHED_NAME;
    d.group = SCHED_GROUP;
    d.topics = sched_topics;
    d.topic_count = UTIL_ARRAY_LEN(sched_topics);
    d.types = sched_types;
    d.type_count = UTIL_ARRAY_LEN(sched_types);
    d.handle = sched_handle;
    d.in_transaction = 1;
    d.setup = sched_setup;
    d.next_timer = sched_next_timer;
    d.fire_timers = sched_fire_timers;
    d.destroy = sched_destroy;
    d.state = state;
    *def = d;
    return 0;
}
