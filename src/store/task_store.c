/*
 * task_store.c - tasks and their events, group-committed (see
 * task_store.h for the contract).
 *
 * Tables (in bus.db, next to the log's own):
 *   tasks(id, title, description, owner_id, priority, completed, due_ms,
 *         created_ms, updated_ms, completed_ms, version)
 *   task_events(task_id, seq, event, log_id)   -- each task's events,
 *         kept after the task is deleted and independent of the log's
 *         retention, for GET /tasks/{id}/events; seq is the task's version
 *         after the change. With the embedded bus the event is not stored
 *         twice: log_id is its row in the task-events topic table and event
 *         is ''; a trigger on that table copies the text into event (and
 *         clears log_id) before retention, or anything else, deletes the
 *         row. With Kafka (outbox) event holds the text and log_id is NULL.
 *   idempotency_keys(key, request_hash, status, body, created_ms)
 *
 * Threads: one writer thread owns the write connection (a bus_log, so the
 * event append and the consumers' wake-up come from the log module). Read
 * connections are pooled: a caller borrows one, uses it, gives it back.
 *
 * A request's life: execute() or submit() links it into the queue; the
 * writer takes the whole queue, BEGIN IMMEDIATE, runs every request, COMMIT
 * (one fsync), then calls each request's callback or wakes its waiter. A
 * database error in one request rolls the batch back and the requests are
 * retried one transaction each, so only the failing one reports
 * STORE_FAILED. A create's event is built and encoded by the caller's
 * thread (store_prepare_create), so the single writer does little more
 * than the inserts.
 */
#include "store/task_store.h"

#include "bus/outbox.h"

#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"
#include "metrics/catalog.h"

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TASK_TOPIC "task-events"
#define TASK_SOURCE "task-api"
#define IDEMPOTENCY_PURGE_INTERVAL_MS 60000

static const char *store_schema =
    "CREATE TABLE IF NOT EXISTS tasks("
    "  id TEXT PRIMARY KEY, title TEXT NOT NULL, description TEXT,"
    "  owner_id TEXT NOT NULL, priority INTEGER NOT NULL,"
    "  completed INTEGER NOT NULL DEFAULT 0, due_ms INTEGER,"
    "  created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, completed_ms INTEGER,"
    "  version INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks(owner_id, id);"
    "CREATE TABLE IF NOT EXISTS task_events("
    "  task_id TEXT NOT NULL, seq INTEGER NOT NULL, event TEXT NOT NULL,"
    "  PRIMARY KEY(task_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS idempotency_keys("
    "  key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, status INTEGER NOT NULL,"
    "  body TEXT NOT NULL, created_ms INTEGER NOT NULL) WITHOUT ROWID;";

#define TASK_COLUMNS                                                                               \
    "id, title, description, owner_id, priority, completed, due_ms, created_ms, updated_ms, "      \
    "completed_ms, version"

typedef struct reader {
    sqlite3 *db;
    sqlite3_stmt *get, *list, *events, *exists;
    struct reader *next;
} reader;

struct task_store {
    bus_log *log;
    int outbox; /* the bus is external (Kafka): events go to the outbox */
    char *db_path;
    /* the task-events topic's table in bus.db ("" if it does not exist:
     * then no task_events row refers to it) */
    char log_table[32];
    /* writer statements */
    sqlite3_stmt *w_get, *w_insert, *w_update, *w_delete, *w_event, *w_idem_get, *w_idem_put,
        *w_idem_purge;
    /* queue */
    pthread_mutex_t lock;
    pthread_cond_t work_cond;
    pthread_cond_t done_cond;
    store_request *head, *tail;
    int stopping;
    pthread_t writer;
    int writer_started;
    int64_t next_purge_ms;
    uint64_t batches, requests;
    metrics_counter *published[4]; /* by store_op: task.created, ... */
    /* read pool */
    pthread_mutex_t pool_lock;
    reader *pool;
    bus_config bus; /* as opened (task_store_bus_config) */
};

void store_request_init(store_request *req, store_op op)
{
    memset(req, 0, sizeof(*req));
    req->op = op;
    task empty = TASK_INIT;
    req->input = empty;
    req->result = empty;
}

void store_request_release(store_request *req)
{
    free(req->prepared_event);
    req->prepared_event = NULL;
    event_release(&req->prepared_meta);
    task_release(&req->result);
    free(req->replay_body);
    req->replay_body = NULL;
}

/* ---- row <-> task ------------------------------------------------------ */

static char *column_text_dup(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return t ? xstrdup((const char *)t) : NULL;
}

static void row_to_task(sqlite3_stmt *s, task *t)
{
    task_release(t);
    util_strlcpy(t->id, (const char *)sqlite3_column_text(s, 0), sizeof(t->id));
    t->title = column_text_dup(s, 1);
    t->description = column_text_dup(s, 2);
    t->owner_id = column_text_dup(s, 3);
    t->priority = sqlite3_column_int(s, 4);
    t->completed = sqlite3_column_int(s, 5);
    t->due_ms = sqlite3_column_int64(s, 6);
    t->created_ms = sqlite3_column_int64(s, 7);
    t->updated_ms = sqlite3_column_int64(s, 8);
    t->completed_ms = sqlite3_column_int64(s, 9);
    t->version = sqlite3_column_int64(s, 10);
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

static void bind_ms_or_null(sqlite3_stmt *s, int i, int64_t ms)
{
    if (ms)
        sqlite3_bind_int64(s, i, ms);
    else
        sqlite3_bind_null(s, i);
}

/* ---- the writer -------------------------------------------------------- */

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **stmt, char *err, size_t errlen)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) != SQLITE_OK)
        return util_error(err, errlen, "cannot prepare '%.50s': %s", sql, sqlite3_errmsg(db));
    return 0;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

/* Read the current row into *t. 1 found, 0 not, -1 error. */
static int writer_get(task_store *s, const char *id, task *t)
{
    sqlite3_bind_text(s->w_get, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s->w_get);
    if (rc == SQLITE_ROW)
        row_to_task(s->w_get, t);
    sqlite3_reset(s->w_get);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

static int writer_save(task_store *s, sqlite3_stmt *st, const task *t)
{
    sqlite3_bind_text(st, 1, t->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, t->title, -1, SQLITE_STATIC);
    bind_text_or_null(st, 3, t->description);
    sqlite3_bind_text(st, 4, t->owner_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, t->priority);
    sqlite3_bind_int(st, 6, t->completed);
    bind_ms_or_null(st, 7, t->due_ms);
    sqlite3_bind_int64(st, 8, t->created_ms);
    sqlite3_bind_int64(st, 9, t->updated_ms);
    bind_ms_or_null(st, 10, t->completed_ms);
    sqlite3_bind_int64(st, 11, t->version);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void set_time(json_t *o, const char *key, int64_t ms)
{
    char buf[EVENT_TIME_LEN + 1];
    event_format_time(ms, buf);
    json_object_set_new_nocheck(o, key, json_string_nocheck(buf)); /* ASCII */
}

static int append_event(task_store *s, store_request *req, const event *ev, const char *value,
                        size_t len, int64_t seq);

/*
 * Build the event for a change and write it to the log and to
 * task_events, in the open transaction. data is stolen.
 */
static int writer_publish(task_store *s, store_request *req, const char *type, const char *verb,
                          json_t *data, int64_t seq)
{
    char causation[TASK_ID_MAX + 32];
    snprintf(causation, sizeof(causation), "api-%s-%s", verb, req->task_id);
    event ev = EVENT_INIT;
    int rc = event_build(&ev, type, data, req->correlation_id, causation, TASK_SOURCE, req->err,
                         sizeof(req->err));
    json_decref(data);
    if (rc != 0)
        return -1;
    event_set_trace(&ev, req->traceparent, req->tracestate);
    size_t len;
    char *value = event_encode(&ev, &len);
    util_strlcpy(req->event_id, ev.event_id, sizeof(req->event_id));
    rc = append_event(s, req, &ev, value, len, seq);
    event_release(&ev);
    free(value);
    return rc;
}

/* Append an encoded event of req's task (with ev's envelope headers) to the
 * log and to task_events. */
static int append_event(task_store *s, store_request *req, const event *ev, const char *value,
                        size_t len, int64_t seq)
{
    int rc;
    bus_header headers[BUS_ENVELOPE_HEADERS];
    char timebuf[EVENT_TIME_LEN + 1];
    bus_record rec = BUS_RECORD_INIT;
    rec.headers = headers;
    rec.header_count = bus_envelope_headers(ev, headers, timebuf);
    rec.topic = TASK_TOPIC;
    rec.key = req->task_id;
    rec.key_len = strlen(req->task_id);
    rec.value = value;
    rec.value_len = len;
    int64_t log_id = 0;
    rc = s->outbox ? bus_outbox_append(s->log, &rec, 1, req->err, sizeof(req->err))
                   : bus_log_append(s->log, &rec, 1, &log_id, req->err, sizeof(req->err));
    if (rc == 0) {
        sqlite3_bind_text(s->w_event, 1, req->task_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->w_event, 2, seq);
        if (s->outbox) {
            sqlite3_bind_text(s->w_event, 3, value, (int)len, SQLITE_STATIC);
            sqlite3_bind_null(s->w_event, 4);
        } else { /* the log holds the text (see the top of this file) */
            sqlite3_bind_text(s->w_event, 3, "", 0, SQLITE_STATIC);
            sqlite3_bind_int64(s->w_event, 4, log_id);
        }
        if (sqlite3_step(s->w_event) != SQLITE_DONE) {
            util_error(req->err, sizeof(req->err), "cannot record event of task '%s': %s",
                       req->task_id, sqlite3_errmsg(bus_log_db(s->log)));
            rc = -1;
        }
        sqlite3_reset(s->w_event);
    }
    return rc;
}

static json_t *task_summary(const task *t)
{
    json_t *d = json_object();
    json_object_set_new_nocheck(d, "task_id", json_string(t->id));
    json_object_set_new_nocheck(d, "title", json_string(t->title));
    json_object_set_new_nocheck(d, "owner_id", json_string(t->owner_id));
    json_object_set_new_nocheck(d, "priority", json_integer(t->priority));
    return d;
}

/* The new task of a create request. */
static void new_task(const store_request *req, task *t)
{
    task_copy(t, &req->input);
    util_strlcpy(t->id, req->task_id, sizeof(t->id));
    t->completed = 0;
    t->created_ms = t->updated_ms = req->input.created_ms ? req->input.created_ms : util_now_ms();
    t->completed_ms = 0;
    t->version = 1;
}

/* The data of task.created, written from the create request itself (no
 * tree): task_id, title, owner_id, priority, then description and due_at
 * when set, created_at. An event_data_writer. */
static void write_created_data(json_text *w, const void *arg)
{
    const store_request *req = arg;
    const task *in = &req->input;
    char when[EVENT_TIME_LEN + 1];
    json_text_open_object(w);
    json_text_member_string(w, "task_id", req->task_id);
    json_text_member_string(w, "title", in->title);
    json_text_member_string(w, "owner_id", in->owner_id);
    json_text_member_int(w, "priority", in->priority);
    if (in->description) {
        json_text_member_string(w, "description", in->description);
    }
    if (in->due_ms) {
        event_format_time(in->due_ms, when);
        json_text_member_string(w, "due_at", when);
    }
    event_format_time(in->created_ms, when);
    json_text_member_string(w, "created_at", when);
    json_text_close_object(w);
}

int store_prepare_create(store_request *req, char *err, size_t errlen)
{
    if (!req->input.title || !req->input.owner_id)
        return util_error(err, errlen, "a create needs a title and an owner_id");
    req->input.created_ms = util_now_ms();
    char causation[TASK_ID_MAX + 32];
    snprintf(causation, sizeof(causation), "api-create-%s", req->task_id);
    event ev = EVENT_INIT;
    if (event_build_head(&ev, "task.created", req->correlation_id, causation, TASK_SOURCE, err,
                         errlen) != 0)
        return -1;
    event_set_trace(&ev, req->traceparent, req->tracestate);
    size_t len = 0;
    char *text = event_encode_with(&ev, write_created_data, req, &len);
    if (!text) {
        event_release(&ev);
        return util_error(err, errlen, "cannot encode the task.created event of '%s'",
                          req->task_id);
    }
    free(req->prepared_event);
    req->prepared_event = text;
    req->prepared_event_len = len;
    util_strlcpy(req->event_id, ev.event_id, sizeof(req->event_id));
    event_release(&req->prepared_meta); /* the writer needs only the ids and metadata */
    req->prepared_meta = ev;
    return 0;
}

static int op_create(task_store *s, store_request *req)
{
    if (!req->prepared_event)
        return util_error(req->err, sizeof(req->err),
                          "create of '%s' without store_prepare_create()", req->task_id);
    task t = TASK_INIT;
    new_task(req, &t);
    if (writer_save(s, s->w_insert, &t) != 0) {
        util_error(req->err, sizeof(req->err), "cannot insert task '%s': %s", t.id,
                   sqlite3_errmsg(bus_log_db(s->log)));
        task_release(&t);
        return -1;
    }
    int rc = append_event(s, req, &req->prepared_meta, req->prepared_event, req->prepared_event_len,
                          t.version);
    req->result = t;
    req->outcome = STORE_DONE;
    return rc;
}

/* Compare one patched field; record the change and apply it. */
static void patch_string(json_t *changes, const char *field, char **slot, json_t *value)
{
    const char *nv = json_is_string(value) ? json_string_value(value) : NULL;
    const char *ov = *slot;
    if ((nv == NULL && ov == NULL) || (nv && ov && strcmp(nv, ov) == 0))
        return;
    json_t *c = json_object();
    json_object_set_new(c, "old", ov ? json_string(ov) : json_null());
    json_object_set_new(c, "new", nv ? json_string(nv) : json_null());
    json_object_set_new(changes, field, c);
    free(*slot);
    *slot = nv ? xstrdup(nv) : NULL;
}

static json_t *time_json(int64_t ms)
{
    if (!ms)
        return json_null();
    char buf[EVENT_TIME_LEN + 1];
    event_format_time(ms, buf);
    return json_string(buf);
}

static int op_update(task_store *s, store_request *req, task *t)
{
    json_t *changes = json_object();
    const char *key;
    json_t *value;
    json_object_foreach(req->patch, key, value)
    {
        if (strcmp(key, "title") == 0)
            patch_string(changes, key, &t->title, value);
        else if (strcmp(key, "description") == 0)
            patch_string(changes, key, &t->description, value);
        else if (strcmp(key, "owner_id") == 0)
            patch_string(changes, key, &t->owner_id, value);
        else if (strcmp(key, "priority") == 0) {
            int p = (int)json_integer_value(value);
            if (p != t->priority) {
                json_t *c = json_object();
                json_object_set_new(c, "old", json_integer(t->priority));
                json_object_set_new(c, "new", json_integer(p));
                json_object_set_new(changes, key, c);
                t->priority = p;
            }
        } else if (strcmp(key, "due_at") == 0) {
            int64_t ms = 0;
            if (json_is_string(value))
                event_parse_time(json_string_value(value), &ms);
            if (ms != t->due_ms) {
                json_t *c = json_object();
                json_object_set_new(c, "old", time_json(t->due_ms));
                json_object_set_new(c, "new", time_json(ms));
                json_object_set_new(changes, key, c);
                t->due_ms = ms;
            }
        }
    }
    if (json_object_size(changes) == 0) {
        json_decref(changes);
        req->outcome = STORE_UNCHANGED;
        return 0;
    }
    t->version++;
    t->updated_ms = util_now_ms();
    if (writer_save(s, s->w_update, t) != 0) {
        json_decref(changes);
        return util_error(req->err, sizeof(req->err), "cannot update task '%s': %s", t->id,
                          sqlite3_errmsg(bus_log_db(s->log)));
    }
    json_t *data = task_summary(t);
    if (t->due_ms)
        set_time(data, "due_at", t->due_ms);
    json_object_set_new(data, "changes", changes);
    json_object_set_new(data, "version", json_integer(t->version));
    req->outcome = STORE_DONE;
    return writer_publish(s, req, "task.updated", "update", data, t->version);
}

static int op_complete(task_store *s, store_request *req, task *t)
{
    if (t->completed) {
        req->outcome = STORE_UNCHANGED;
        return 0;
    }
    t->completed = 1;
    t->completed_ms = t->updated_ms = util_now_ms();
    t->version++;
    if (writer_save(s, s->w_update, t) != 0)
        return util_error(req->err, sizeof(req->err), "cannot complete task '%s': %s", t->id,
                          sqlite3_errmsg(bus_log_db(s->log)));
    json_t *data = task_summary(t);
    set_time(data, "completed_at", t->completed_ms);
    req->outcome = STORE_DONE;
    return writer_publish(s, req, "task.completed", "complete", data, t->version);
}

static int op_delete(task_store *s, store_request *req, task *t)
{
    sqlite3_bind_text(s->w_delete, 1, t->id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s->w_delete);
    sqlite3_reset(s->w_delete);
    if (rc != SQLITE_DONE)
        return util_error(req->err, sizeof(req->err), "cannot delete task '%s': %s", t->id,
                          sqlite3_errmsg(bus_log_db(s->log)));
    t->version++;
    json_t *data = task_summary(t);
    set_time(data, "deleted_at", util_now_ms());
    req->outcome = STORE_DONE;
    return writer_publish(s, req, "task.deleted", "delete", data, t->version);
}

/* Idempotency: 1 if the request was answered from the table, 0 to go on. */
static int idempotency_check(task_store *s, store_request *req)
{
    sqlite3_stmt *st = s->w_idem_get;
    sqlite3_bind_text(st, 1, req->idempotency_key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int answered = 0;
    if (rc == SQLITE_ROW) {
        const char *hash = (const char *)sqlite3_column_text(st, 0);
        if (hash && strcmp(hash, req->request_hash) == 0) {
            req->outcome = STORE_REPLAYED;
            req->replay_status = sqlite3_column_int(st, 1);
            req->replay_body = column_text_dup(st, 2);
        } else {
            req->outcome = STORE_KEY_REUSED;
        }
        answered = 1;
    }
    sqlite3_reset(st);
    return answered;
}

static int idempotency_record(task_store *s, store_request *req)
{
    int status = 0;
    char *body = req->render(req, &status);
    sqlite3_stmt *st = s->w_idem_put;
    sqlite3_bind_text(st, 1, req->idempotency_key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, req->request_hash, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, status);
    sqlite3_bind_text(st, 4, body, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, util_now_ms());
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    free(body);
    if (rc != SQLITE_DONE)
        return util_error(req->err, sizeof(req->err), "cannot record idempotency key: %s",
                          sqlite3_errmsg(bus_log_db(s->log)));
    return 0;
}

/* Run one request inside the open transaction. 0, or -1 (roll it back). */
static int run_request(task_store *s, store_request *req)
{
    if (req->idempotency_key && idempotency_check(s, req))
        return 0;
    int rc;
    if (req->op == STORE_CREATE) {
        rc = op_create(s, req);
    } else {
        task t = TASK_INIT;
        int found = writer_get(s, req->task_id, &t);
        if (found < 0) {
            util_error(req->err, sizeof(req->err), "cannot read task '%s': %s", req->task_id,
                       sqlite3_errmsg(bus_log_db(s->log)));
            return -1;
        }
        if (!found) {
            req->outcome = STORE_NOT_FOUND;
            return 0;
        }
        if (req->if_match && req->if_match != t.version) {
            req->outcome = STORE_VERSION_MISMATCH;
            req->result = t;
            return 0;
        }
        rc = req->op == STORE_UPDATE     ? op_update(s, req, &t)
             : req->op == STORE_COMPLETE ? op_complete(s, req, &t)
                                         : op_delete(s, req, &t);
        task_release(&req->result);
        req->result = t;
    }
    if (rc == 0 && req->idempotency_key && req->render)
        rc = idempotency_record(s, req);
    return rc;
}

static void purge_idempotency_keys(task_store *s)
{
    int64_t now = util_now_ms();
    if (now < s->next_purge_ms)
        return;
    s->next_purge_ms = now + IDEMPOTENCY_PURGE_INTERVAL_MS;
    sqlite3_bind_int64(s->w_idem_purge, 1, now - STORE_IDEMPOTENCY_TTL_MS);
    sqlite3_step(s->w_idem_purge);
    sqlite3_reset(s->w_idem_purge);
}

/* Forget what a failed attempt left in a request's outputs. */
static void reset_outputs(store_request *r)
{
    task_release(&r->result);
    free(r->replay_body);
    r->replay_body = NULL;
    r->outcome = STORE_DONE;
    r->err[0] = '\0';
}

/* Run requests [first, stop) in one transaction. 0, or -1 if a request or
 * the commit failed (everything rolled back; r->err says why). */
static int run_transaction(task_store *s, store_request *first, store_request *stop)
{
    char err[256];
    if (bus_log_begin(s->log, err, sizeof(err)) != 0) {
        for (store_request *r = first; r != stop; r = r->next_)
            util_strlcpy(r->err, err, sizeof(r->err));
        return -1;
    }
    purge_idempotency_keys(s);
    for (store_request *r = first; r != stop; r = r->next_) {
        if (run_request(s, r) != 0) {
            bus_log_rollback(s->log);
            return -1;
        }
    }
    if (bus_log_commit(s->log, err, sizeof(err)) != 0) {
        for (store_request *r = first; r != stop; r = r->next_)
            util_strlcpy(r->err, err, sizeof(r->err));
        return -1;
    }
    return 0;
}

/* Count the events of the committed requests [first, stop) in metrics. */
static void count_published(task_store *s, store_request *first, store_request *stop)
{
    for (store_request *r = first; r != stop; r = r->next_)
        if (r->outcome == STORE_DONE && (unsigned)r->op < UTIL_ARRAY_LEN(s->published))
            metrics_counter_add(s->published[r->op], 1);
}

/*
 * The whole batch in one transaction. Requests that fail logically (not
 * found, stale version) write nothing, so no savepoints are needed; if one
 * hits a database error, the batch is rolled back and every request is run
 * again in a transaction of its own, so only the failing one fails.
 */
static void run_batch(task_store *s, store_request *batch)
{
    size_t n = 0;
    for (store_request *r = batch; r; r = r->next_)
        n++;
    if (run_transaction(s, batch, NULL) == 0) {
        s->batches++;
        s->requests += n;
        count_published(s, batch, NULL);
        return;
    }
    if (n > 1)
        LOG_WARN("store: a batch of %zu requests failed; retrying them one by one", n);
    for (store_request *r = batch; r; r = r->next_) {
        reset_outputs(r);
        store_request *next = r->next_;
        r->next_ = NULL; /* run_transaction() walks to NULL */
        if (run_transaction(s, r, NULL) == 0) {
            s->batches++;
            s->requests++;
            count_published(s, r, NULL);
        } else {
            char why[sizeof(r->err)]; /* reset_outputs() clears it */
            util_strlcpy(why, r->err, sizeof(why));
            reset_outputs(r);
            util_strlcpy(r->err, why, sizeof(r->err));
            r->outcome = STORE_FAILED;
            LOG_ERROR_CID(r->correlation_id, "store: %s", r->err);
        }
        r->next_ = next;
    }
}

static void *writer_main(void *arg)
{
    task_store *s = arg;
    pthread_setname_np(pthread_self(), "task-writer"); /* top -H, perf */
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->head && !s->stopping)
            pthread_cond_wait(&s->work_cond, &s->lock);
        if (!s->head && s->stopping)
            break;
        /* take up to STORE_MAX_BATCH requests */
        store_request *batch = s->head, *last = s->head;
        size_t n = 1;
        while (last->next_ && n < STORE_MAX_BATCH) {
            last = last->next_;
            n++;
        }
        s->head = last->next_;
        if (!s->head)
            s->tail = NULL;
        last->next_ = NULL;
        pthread_mutex_unlock(&s->lock);

        run_batch(s, batch);

        /* callbacks first (the request may be freed by them), then the
         * waiters of task_store_execute() */
        store_request *waiting = NULL;
        for (store_request *r = batch; r;) {
            store_request *next = r->next_;
            if (r->on_done_) {
                r->next_ = NULL;
                r->on_done_(r, r->on_done_arg_);
            } else {
                r->next_ = waiting;
                waiting = r;
            }
            r = next;
        }
        /* every request of the batch is answered: the moment for the
         * writer's share of a background checkpoint */
        bus_log_between_transactions(s->log);
        pthread_mutex_lock(&s->lock);
        if (waiting) {
            for (store_request *r = waiting; r;) {
                store_request *next = r->next_;
                r->next_ = NULL;
                r->done_ = 1;
                r = next;
            }
            pthread_cond_broadcast(&s->done_cond);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Link req into the queue; called with s->lock held. */
static int enqueue(task_store *s, store_request *req)
{
    if (s->stopping)
        return -1;
    req->done_ = 0;
    req->next_ = NULL;
    if (s->tail)
        s->tail->next_ = req;
    else
        s->head = req;
    s->tail = req;
    pthread_cond_signal(&s->work_cond);
    return 0;
}

int task_store_execute(task_store *s, store_request *req)
{
    req->on_done_ = NULL;
    pthread_mutex_lock(&s->lock);
    if (enqueue(s, req) != 0) {
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    while (!req->done_)
        pthread_cond_wait(&s->done_cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int task_store_submit(task_store *s, store_request *req,
                      void (*on_done)(store_request *req, void *arg), void *arg)
{
    req->on_done_ = on_done;
    req->on_done_arg_ = arg;
    pthread_mutex_lock(&s->lock);
    int rc = enqueue(s, req);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* ---- open / close ------------------------------------------------------ */

/*
 * In the open transaction: give task_events its log_id column (databases
 * of before it have none), and where the task-events topic table exists
 * (the embedded bus creates it here) the trigger that keeps every event a
 * task_events row refers to when the log row goes. 0, or -1 with err.
 */
static int link_history_to_log(task_store *s, char *err, size_t errlen)
{
    sqlite3 *db = bus_log_db(s->log);
    sqlite3_stmt *st = NULL;
    if (prepare(db, "SELECT count(*) FROM pragma_table_info('task_events') WHERE name = 'log_id'",
                &st, err, errlen) != 0)
        return -1;
    int has_column = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    if (!has_column && exec_sql(db, "ALTER TABLE task_events ADD COLUMN log_id INTEGER") != 0)
        return util_error(err, errlen, "cannot add task_events.log_id in '%s': %s", s->db_path,
                          sqlite3_errmsg(db));
    int64_t topic = bus_log_topic_id(s->log, TASK_TOPIC, !s->outbox, err, errlen);
    if (topic < 0)
        return -1;
    s->log_table[0] = '\0';
    if (topic == 0)
        return 0; /* Kafka and never embedded: every event is in task_events */
    bus_log_topic_table(topic, s->log_table, sizeof(s->log_table));
    char sql[512];
    snprintf(sql, sizeof(sql),
             "CREATE TRIGGER IF NOT EXISTS %s_keeps_task_events BEFORE DELETE ON %s BEGIN"
             " UPDATE task_events SET event = CAST(OLD.value AS TEXT), log_id = NULL"
             " WHERE task_id = CAST(OLD.key AS TEXT) AND log_id = OLD.id; END",
             s->log_table, s->log_table);
    if (exec_sql(db, sql) != 0)
        return util_error(err, errlen, "cannot create the trigger that keeps task events: %s",
                          sqlite3_errmsg(db));
    return 0;
}

task_store *task_store_open(const bus_config *cfg, char *err, size_t errlen)
{
    task_store *s = xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work_cond, NULL);
    pthread_cond_init(&s->done_cond, NULL);
    pthread_mutex_init(&s->pool_lock, NULL);
    s->bus = *cfg;
    /* every change of the Task API is committed here: its WAL frames go
     * out in one write per commit */
    bus_config log_cfg = *cfg;
    log_cfg.gather_wal_writes = 1;
    s->log = bus_log_open(&log_cfg, err, errlen);
    if (!s->log)
        goto fail;
    if (bus_log_checkpoint_in_background(s->log, err, errlen) != 0)
        goto fail;
    s->outbox = cfg->kind != BUS_SQLITE;
    s->published[STORE_CREATE] = metrics_published("task.created");
    s->published[STORE_UPDATE] = metrics_published("task.updated");
    s->published[STORE_COMPLETE] = metrics_published("task.completed");
    s->published[STORE_DELETE] = metrics_published("task.deleted");
    if (s->outbox && bus_outbox_ensure(s->log, err, errlen) != 0)
        goto fail;
    s->db_path = xstrdup(bus_log_db_path(s->log));
    sqlite3 *db = bus_log_db(s->log);
    if (bus_log_begin(s->log, err, errlen) != 0)
        goto fail;
    char *msg = NULL;
    if (sqlite3_exec(db, store_schema, NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "cannot create the task tables in '%s': %s", s->db_path, msg);
        sqlite3_free(msg);
        bus_log_rollback(s->log);
        goto fail;
    }
    if (link_history_to_log(s, err, errlen) != 0) {
        bus_log_rollback(s->log);
        goto fail;
    }
    if (bus_log_commit(s->log, err, errlen) != 0)
        goto fail;
    if (prepare(db, "SELECT " TASK_COLUMNS " FROM tasks WHERE id = ?1", &s->w_get, err, errlen) !=
            0 ||
        prepare(db,
                "INSERT INTO tasks(" TASK_COLUMNS ") VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
                &s->w_insert, err, errlen) != 0 ||
        prepare(db,
                "UPDATE tasks SET title=?2, description=?3, owner_id=?4, priority=?5, "
                "completed=?6, due_ms=?7, created_ms=?8, updated_ms=?9, completed_ms=?10, "
                "version=?11 WHERE id=?1",
                &s->w_update, err, errlen) != 0 ||
        prepare(db, "DELETE FROM tasks WHERE id = ?1", &s->w_delete, err, errlen) != 0 ||
        prepare(db, "INSERT INTO task_events(task_id, seq, event, log_id) VALUES(?1, ?2, ?3, ?4)",
                &s->w_event, err, errlen) != 0 ||
        prepare(db, "SELECT request_hash, status, body FROM idempotency_keys WHERE key = ?1",
                &s->w_idem_get, err, errlen) != 0 ||
        prepare(db,
                "INSERT INTO idempotency_keys(key, request_hash, status, body, created_ms) "
                "VALUES(?1, ?2, ?3, ?4, ?5)",
                &s->w_idem_put, err, errlen) != 0 ||
        prepare(db, "DELETE FROM idempotency_keys WHERE created_ms < ?1", &s->w_idem_purge, err,
                errlen) != 0)
        goto fail;
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        util_error(err, errlen, "cannot start the store's writer thread");
        goto fail;
    }
    s->writer_started = 1;
    return s;
fail:
    task_store_close(s);
    return NULL;
}

static void reader_free(reader *r)
{
    sqlite3_finalize(r->get);
    sqlite3_finalize(r->list);
    sqlite3_finalize(r->events);
    sqlite3_finalize(r->exists);
    sqlite3_close_v2(r->db);
    free(r);
}

void task_store_close(task_store *s)
{
    if (!s)
        return;
    if (s->writer_started) {
        pthread_mutex_lock(&s->lock);
        s->stopping = 1;
        pthread_cond_signal(&s->work_cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->writer, NULL);
    }
    uint64_t background, finished, inline_;
    if (s->log && bus_log_checkpoint_stats(s->log, &background, &finished, &inline_) == 0)
        LOG_INFO("store: WAL checkpoints: %" PRIu64 " in the background, %" PRIu64
                 " finished by the writer, %" PRIu64 " by the writer (WAL past its limit)",
                 background, finished, inline_);
    sqlite3_finalize(s->w_get);
    sqlite3_finalize(s->w_insert);
    sqlite3_finalize(s->w_update);
    sqlite3_finalize(s->w_delete);
    sqlite3_finalize(s->w_event);
    sqlite3_finalize(s->w_idem_get);
    sqlite3_finalize(s->w_idem_put);
    sqlite3_finalize(s->w_idem_purge);
    bus_log_close(s->log);
    while (s->pool) {
        reader *r = s->pool;
        s->pool = r->next;
        reader_free(r);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->work_cond);
    pthread_cond_destroy(&s->done_cond);
    pthread_mutex_destroy(&s->pool_lock);
    free(s->db_path);
    free(s);
}

const bus_config *task_store_bus_config(const task_store *s)
{
    return &s->bus;
}

void task_store_stats(task_store *s, uint64_t *batches, uint64_t *requests)
{
    pthread_mutex_lock(&s->lock);
    *batches = s->batches;
    *requests = s->requests;
    pthread_mutex_unlock(&s->lock);
}

/* ---- reads ------------------------------------------------------------- */

static reader *reader_borrow(task_store *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->pool_lock);
    reader *r = s->pool;
    if (r)
        s->pool = r->next;
    pthread_mutex_unlock(&s->pool_lock);
    if (r)
        return r;
    r = xcalloc(1, sizeof(*r));
    if (sqlite3_open_v2(s->db_path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        util_error(err, errlen, "cannot open '%s' for reading: %s", s->db_path,
                   sqlite3_errmsg(r->db));
        reader_free(r);
        return NULL;
    }
    sqlite3_busy_timeout(r->db, 5000);
    char events_sql[256];
    if (s->log_table[0])
        snprintf(events_sql, sizeof(events_sql),
                 "SELECT CASE WHEN e.log_id IS NULL THEN e.event ELSE CAST(l.value AS TEXT) END"
                 " FROM task_events e LEFT JOIN %s l ON l.id = e.log_id"
                 " WHERE e.task_id = ?1 ORDER BY e.seq",
                 s->log_table);
    else
        util_strlcpy(events_sql, "SELECT event FROM task_events WHERE task_id = ?1 ORDER BY seq",
                     sizeof(events_sql));
    if (exec_sql(r->db, "PRAGMA query_only=1") != 0 ||
        prepare(r->db, "SELECT " TASK_COLUMNS " FROM tasks WHERE id = ?1", &r->get, err, errlen) !=
            0 ||
        prepare(r->db,
                "SELECT " TASK_COLUMNS " FROM tasks WHERE (?1 IS NULL OR owner_id = ?1) AND "
                "(?2 IS NULL OR completed = ?2) AND id > ?3 ORDER BY id LIMIT ?4",
                &r->list, err, errlen) != 0 ||
        prepare(r->db, events_sql, &r->events, err, errlen) != 0) {
        reader_free(r);
        return NULL;
    }
    return r;
}

static void reader_return(task_store *s, reader *r)
{
    pthread_mutex_lock(&s->pool_lock);
    r->next = s->pool;
    s->pool = r;
    pthread_mutex_unlock(&s->pool_lock);
}

int task_store_get(task_store *s, const char *id, task *out, char *err, size_t errlen)
{
    reader *r = reader_borrow(s, err, errlen);
    if (!r)
        return -1;
    sqlite3_bind_text(r->get, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(r->get);
    if (rc == SQLITE_ROW)
        row_to_task(r->get, out);
    else if (rc != SQLITE_DONE)
        util_error(err, errlen, "cannot read task '%s': %s", id, sqlite3_errmsg(r->db));
    sqlite3_reset(r->get);
    reader_return(s, r);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

int task_store_list(task_store *s, const char *owner_id, const char *status, const char *after,
                    int limit, task **out, size_t *count, int *more, char *err, size_t errlen)
{
    *out = NULL;
    *count = 0;
    *more = 0;
    reader *r = reader_borrow(s, err, errlen);
    if (!r)
        return -1;
    sqlite3_stmt *st = r->list;
    bind_text_or_null(st, 1, owner_id);
    if (status)
        sqlite3_bind_int(st, 2, strcmp(status, "completed") == 0);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_text(st, 3, after ? after : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 4, limit + 1);
    task *tasks = xcalloc((size_t)limit + 1, sizeof(task));
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == (size_t)limit) {
            *more = 1;
            break;
        }
        task empty = TASK_INIT;
        tasks[n] = empty;
        row_to_task(st, &tasks[n++]);
    }
    int ok = rc == SQLITE_ROW || rc == SQLITE_DONE;
    if (!ok)
        util_error(err, errlen, "cannot list tasks: %s", sqlite3_errmsg(r->db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    reader_return(s, r);
    if (!ok) {
        for (size_t i = 0; i < n; i++)
            task_release(&tasks[i]);
        free(tasks);
        return -1;
    }
    *out = tasks;
    *count = n;
    return 0;
}

int task_store_events(task_store *s, const char *id, json_t **events, char *err, size_t errlen)
{
    *events = NULL;
    reader *r = reader_borrow(s, err, errlen);
    if (!r)
        return -1;
    json_t *arr = json_array();
    sqlite3_bind_text(r->events, 1, id, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(r->events)) == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(r->events, 0);
        json_t *ev = text ? json_loads(text, 0, NULL) : NULL;
        if (ev)
            json_array_append_new(arr, ev);
        else /* the trigger keeps a referred event: a damaged database */
            LOG_WARN("store: an event of task '%s' is missing or unreadable; skipped", id);
    }
    sqlite3_reset(r->events);
    reader_return(s, r);
    if (rc != SQLITE_DONE) {
        util_error(err, errlen, "cannot read events of task '%s'", id);
        json_decref(arr);
        return -1;
    }
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        return 0;
    }
    *events = arr;
    return 1;
}
