/*
 * runtime.c - the consume loop every agent shares (see runtime.h).
 *
 * One round (agent_runtime_step):
 *   1. poll a batch from the agent's consumer group;
 *   2. classify the batch without side effects: read each envelope (from
 *      the record's CloudEvents headers when it has them and the handler
 *      needs no data, else by decoding the JSON; undecodable: a dead
 *      letter), skip types the agent does not handle, and look the rest up
 *      in the de-duplication table (agent_processed) in one read
 *      transaction; then, in order, call the handler with retries and
 *      backoff (a second copy in the same batch is a duplicate too);
 *      handlers marked in_transaction are deferred to step 4;
 *   3. before_commit hook (the audit agent's fsync), on a second thread
 *      while step 4 writes its transaction, and finished before COMMIT;
 *   4. one transaction on the event log: the deferred handlers (each in a
 *      savepoint), the derived events, the dead letters, the
 *      de-duplication records and the group's offsets; COMMIT;
 *   5. timers: if the agent's next timer is due, fire_timers() in a second
 *      transaction with the events it emits.
 * A fatal error of the consumer (bus_consumer_fatal(): the Kafka client can
 * never recover) ends the loop instead of being retried: run() logs it and
 * returns -1 without another commit; the caller stops the process.
 *
 * If the loop is stopped while a batch is in hand (a stop during a retry
 * backoff), the consumer is moved back to the first record not handled, so
 * the commit covers exactly what was handled. If the transaction fails, the
 * consumer is moved back to the start of the batch and nothing counts as
 * handled: the batch is read again (at-least-once).
 *
 * State database: in the embedded mode, the consumer's own connection to
 * the event log, so the agent's rows (agent_processed, reminders, ...)
 * commit atomically with its events and offsets.
 *
 * Per-event log line: when a record's outcome is known (handled,
 * dead-lettered, a duplicate, skipped, or an attempt failed and will be
 * retried), one structured line (log.h) names the outcome, type, group,
 * event id, attempts and duration, with the correlation id; nothing is
 * formatted when its level is off. The line tells what the handler decided:
 * if the batch transaction then fails, an ERROR line says so and the records
 * are handled (and logged) again.
 *
 * Health: the loop publishes its state in relaxed atomics (running, last
 * poll, last progress, busy, retrying, failures) for agent_runtime_health();
 * and every RUNTIME_HEARTBEAT_MS, and while it waits to retry, it upserts
 * its heartbeat row (runtime.h), a tiny autocommit write outside any batch.
 *
 * Metrics (metrics/catalog.h, the group's series resolved once at open):
 * every handler call is timed and its failure counted as it happens; the
 * records consumed, handled and dead-lettered and the derived events (by
 * type) are added once their transaction has committed: a few relaxed
 * atomic adds per event or per batch, no lock.
 *
 * Threads: the loop runs on one thread; agent_runtime_stop(),
 * agent_runtime_stats() and agent_runtime_health() may be called from
 * others (an atomic flag, an eventfd, a mutex around the counters, atomics
 * for the health).
 */
#include "runtime/runtime.h"

#include "bus/outbox.h"
#include "bus/sqlite_consumer.h"
#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"
#include "metrics/catalog.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/types.h>
#include <unistd.h>

#define DEFAULT_MAX_BATCH 256
/* Page cache of an agent's connection, in KiB: agents read the log
 * forward (pages come from the OS's cache); 512 instead of 1024 lowered
 * herald up's peak by ~0.35 MiB, the audit agent stayed at ~150,000+
 * events/s. */
#define RUNTIME_CACHE_KIB_TEXT "512"
/* Longest wait in one poll when no timer is pending (stop wakes it anyway). */
#define IDLE_POLL_MS 5000
/* Longest Retry-After honoured, and the delay after a failed round. */
#define MAX_RETRY_AFTER_MS (3600 * 1000)
#define ERROR_BACKOFF_MS 1000
/* How often old de-duplication records are purged. */
#define PURGE_INTERVAL_MS (3600 * 1000)
/* Without event retention, de-duplication records are kept this long. */
#define DEFAULT_DEDUP_KEEP_MS (30LL * 24 * 3600 * 1000)

/* A record to append in the batch transaction (owned copies). */
typedef struct pending_record {
    char *topic;
    char *key;
    char *value;
    size_t value_len;
    bus_header headers[BUS_ENVELOPE_HEADERS + 6];
    char *header_values[BUS_ENVELOPE_HEADERS + 6];
    size_t header_count;
    metrics_counter *published; /* a derived event: its type's counter */
} pending_record;

typedef struct record_list {
    pending_record *items;
    size_t count, cap;
} record_list;

struct agent_ctx {
    agent_runtime *rt;
    const bus_message *msg; /* NULL in a timer */
    const event *ev;        /* NULL in a timer */
    int attempt;
    int64_t retry_after_ms; /* -1: computed backoff */
    int db_open;            /* agent_ctx_db() allowed */
    size_t emit_mark;       /* rt->emits.count when this attempt started */
};

/* What the first pass over a batch found out about a record. */
enum record_state {
    RECORD_SKIP,      /* a type the agent does not handle */
    RECORD_INVALID,   /* not a valid envelope: a dead letter */
    RECORD_DUPLICATE, /* already handled by the group */
    RECORD_HANDLE     /* to be handled */
};

struct agent_runtime {
    agent_def def;
    runtime_retry retry;
    bus_consumer *consumer;
    bus_log *log;       /* the state database (the consumer's, or owned_log) */
    bus_log *owned_log; /* external bus: our own connection to the data dir */
    sqlite3 *db;
    sqlite3_stmt *seen, *mark, *purge;
    int64_t group_id; /* agent_groups.id of def.group */
    int64_t dedup_keep_ms, next_purge_ms;

    record_list emits, dead;
    /* ids of the events handled in this batch (pointing into rt->events) */
    const char **handled;
    size_t handled_count;
    /* the same, as an open-addressing set of indexes into rt->handled */
    size_t *batch_ids;
    size_t batch_ids_cap;
    /* the batch in hand, one slot per record (see agent_runtime_step) */
    event *events;         /* its envelope (data NULL when read from headers) */
    unsigned char *states; /* enum record_state */
    char **reasons;        /* why an invalid record is invalid */
    size_t batch_count;
    size_t *deferred; /* indexes of in_transaction records */
    size_t deferred_count;
    int full_batches_without_timers; /* see fire_timers() */

    atomic_int stopping;
    atomic_int fatal; /* the consumer hit a fatal error (agent_runtime_fatal) */
    int stop_fd;
    pthread_mutex_t stats_lock;
    runtime_stats stats;

    /* health (written by the loop, read by anyone) */
    atomic_int h_running, h_busy, h_retrying, h_attempts;
    atomic_uint h_failures;
    atomic_llong h_started_ms, h_poll_ms, h_progress_ms;
    /* heartbeat row */
    sqlite3_stmt *beat, *unbeat;
    char *subscription;
    int64_t next_beat_ms;
    metrics_group metrics; /* this group's series (catalog.h) */
};

/* ---- small helpers ---------------------------------------------------- */

static void record_free(pending_record *r)
{
    free(r->topic);
    free(r->key);
    free(r->value);
    for (size_t i = 0; i < r->header_count; i++)
        free(r->header_values[i]);
}

static pending_record *record_add(record_list *l)
{
    if (l->count == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->items = xrealloc(l->items, l->cap * sizeof(*l->items));
    }
    pending_record *r = &l->items[l->count++];
    memset(r, 0, sizeof(*r));
    return r;
}

static void record_truncate(record_list *l, size_t count)
{
    while (l->count > count)
        record_free(&l->items[--l->count]);
}

static void record_header(pending_record *r, const char *name, const char *value)
{
    size_t i = r->header_count++;
    r->header_values[i] = xstrdup(value);
    r->headers[i].name = name;
    r->headers[i].value = r->header_values[i];
    r->headers[i].value_len = strlen(value);
}

static int stopping(agent_runtime *rt)
{
    return atomic_load(&rt->stopping);
}

/* Sleep up to ms; returns early (1) when the runtime is stopped. */
static int sleep_or_stop(agent_runtime *rt, int64_t ms)
{
    int64_t deadline = util_monotonic_ns() + ms * 1000000LL;
    while (!stopping(rt)) {
        int64_t left = (deadline - util_monotonic_ns()) / 1000000LL;
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = rt->stop_fd, .events = POLLIN};
        poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
    }
    return 1;
}

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Is event_id among this batch's handled ids? (add: insert index idx) */
static int batch_seen(agent_runtime *rt, const char *id, size_t add_idx, int add)
{
    if (rt->batch_ids_cap == 0)
        return 0;
    size_t mask = rt->batch_ids_cap - 1;
    for (size_t i = hash_id(id) & mask;; i = (i + 1) & mask) {
        size_t slot = rt->batch_ids[i];
        if (slot == 0) {
            if (add)
                rt->batch_ids[i] = add_idx + 1;
            return 0;
        }
        if (strcmp(rt->handled[slot - 1], id) == 0)
            return 1;
    }
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c - 'A' + 10;
}

void runtime_uuid_bytes(const char *uuid, unsigned char out[16])
{
    /* 8-4-4-4-12: the dashes are at 8, 13, 18 and 23 */
    static const unsigned char at[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
    for (int i = 0; i < 16; i++)
        out[i] = (unsigned char)(hex_value(uuid[at[i]]) << 4 | hex_value(uuid[at[i] + 1]));
}

int runtime_event_handled(sqlite3 *db, const char *group, const char *event_id)
{
    if (!event_uuid_valid(event_id))
        return 0;
    unsigned char bytes[16];
    runtime_uuid_bytes(event_id, bytes);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM agent_handled h JOIN agent_groups g ON g.id = h.group_id"
                           " WHERE g.name = ?1 AND h.event_id = ?2",
                           -1, &st, NULL) != SQLITE_OK)
        return 0; /* no agent ever ran here */
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, bytes, sizeof(bytes), SQLITE_STATIC);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

static int db_seen(agent_runtime *rt, const char *id, int *seen, char *err, size_t errlen)
{
    unsigned char bytes[16];
    runtime_uuid_bytes(id, bytes);
    sqlite3_bind_int64(rt->seen, 1, rt->group_id);
    sqlite3_bind_blob(rt->seen, 2, bytes, sizeof(bytes), SQLITE_STATIC);
    int rc = sqlite3_step(rt->seen);
    *seen = rc == SQLITE_ROW;
    sqlite3_reset(rt->seen);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return util_error(err, errlen, "cannot read de-duplication records: %s",
                          sqlite3_errmsg(rt->db));
    return 0;
}

static void stat_add(agent_runtime *rt, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&rt->stats_lock);
    *field += n;
    pthread_mutex_unlock(&rt->stats_lock);
}

static void progress(agent_runtime *rt, int64_t now_ms)
{
    atomic_store_explicit(&rt->h_progress_ms, now_ms, memory_order_relaxed);
}

/* Upsert this runtime's heartbeat row when due (or force); never inside a
 * transaction. A failure is only logged: the next beat tries again. */
static void heartbeat(agent_runtime *rt, int force)
{
    int64_t now = util_now_ms();
    if ((!force && now < rt->next_beat_ms) || !rt->beat || bus_log_in_transaction(rt->log))
        return;
    rt->next_beat_ms = now + RUNTIME_HEARTBEAT_MS;
    sqlite3_stmt *st = rt->beat;
    sqlite3_bind_text(st, 1, rt->def.group, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)getpid());
    sqlite3_bind_text(st, 3, rt->def.name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, rt->subscription, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, atomic_load_explicit(&rt->h_started_ms, memory_order_relaxed));
    sqlite3_bind_int64(st, 6, now);
    sqlite3_bind_int64(st, 7, atomic_load_explicit(&rt->h_progress_ms, memory_order_relaxed));
    sqlite3_bind_int(st, 8, atomic_load_explicit(&rt->h_retrying, memory_order_relaxed));
    sqlite3_bind_int64(st, 9, atomic_load_explicit(&rt->h_failures, memory_order_relaxed));
    if (sqlite3_step(st) != SQLITE_DONE)
        LOG_DEBUG("%s: cannot write the heartbeat: %s", rt->def.name, sqlite3_errmsg(rt->db));
    sqlite3_reset(st);
}

/*
 * The per-event line (see the top of the file). ev may be NULL (a record
 * that is not a valid envelope); t0_ns 0 leaves the duration out. fmt makes
 * the human part of the line; nothing is formatted when level is off.
 */
static void log_event_line(agent_runtime *rt, enum log_level level, const bus_message *m,
                           const event *ev, const char *outcome, int attempts, int64_t t0_ns,
                           const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static void log_event_line(agent_runtime *rt, enum log_level level, const bus_message *m,
                           const event *ev, const char *outcome, int attempts, int64_t t0_ns,
                           const char *reason, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    log_field f[11];
    size_t n = 0;
    f[n++] = LOG_STR("outcome", outcome);
    f[n++] = LOG_STR("type", ev && ev->event_type[0] ? ev->event_type : NULL);
    f[n++] = LOG_STR("group", rt->def.group);
    f[n++] = LOG_STR("event_id", ev && ev->event_id[0] ? ev->event_id : NULL);
    f[n++] = LOG_STR("agent", rt->def.name);
    f[n++] = LOG_STR("topic", m->topic);
    f[n++] = LOG_INT("offset", m->offset);
    if (attempts > 0)
        f[n++] = LOG_INT("attempts", attempts);
    if (t0_ns)
        f[n++] = LOG_NUM("duration_ms", (double)(util_monotonic_ns() - t0_ns) / 1e6);
    if (reason)
        f[n++] = LOG_STR("reason", reason);
    log_write_fields(level, ev ? ev->correlation_id : NULL, message, f, n);
}

/* ---- the handler's context -------------------------------------------- */

/*
 * Trace context of a derived event: a child span of its cause (W3C Trace
 * Context), so the trace id of the input runs through every event it
 * caused. The cause is the input event, or an event emitted earlier for it
 * (parent: that record's traceparent header). An input without a trace
 * context gives derived events none: a trace is started only where a
 * request enters (the Task API), and the correlation id still ties them.
 */
static void derive_trace(const agent_ctx *ctx, const pending_record *cause, event *ev)
{
    const char *parent = ctx->ev->traceparent[0] ? ctx->ev->traceparent : NULL;
    if (cause) {
        parent = NULL;
        for (size_t i = 0; i < cause->header_count; i++)
            if (strcmp(cause->headers[i].name, BUS_HEADER_TRACEPARENT) == 0)
                parent = cause->headers[i].value;
    }
    if (!parent)
        return;
    char child[TRACE_PARENT_LEN + 1];
    trace_parent_child(parent, child);
    event_set_trace(ev, child, ctx->ev->tracestate);
}

/* The emitted record of this input whose event id is event_id, or NULL. */
static const pending_record *emitted_record(const agent_ctx *ctx, const char *event_id)
{
    for (size_t i = ctx->emit_mark; i < ctx->rt->emits.count; i++) {
        const char *v = ctx->rt->emits.items[i].value;
        if (strncmp(v, "{\"event_id\":\"", 13) == 0 &&
            strncmp(v + 13, event_id, EVENT_UUID_LEN) == 0)
            return &ctx->rt->emits.items[i];
    }
    return NULL;
}

int agent_emitted_traceparent(const agent_ctx *ctx, const char *event_id, char *traceparent)
{
    const pending_record *r = event_id ? emitted_record(ctx, event_id) : NULL;
    for (size_t i = 0; r && i < r->header_count; i++)
        if (strcmp(r->headers[i].name, BUS_HEADER_TRACEPARENT) == 0 &&
            strlen(r->headers[i].value) == TRACE_PARENT_LEN) {
            memcpy(traceparent, r->headers[i].value, TRACE_PARENT_LEN + 1);
            return 1;
        }
    return 0;
}

static int emit(agent_ctx *ctx, const char *type, json_t *data, const char *key,
                const char *correlation_id, const char *causation_id, const pending_record *cause,
                const char *parent_traceparent, const char *parent_tracestate, char *out_id,
                char *err, size_t errlen)
{
    agent_runtime *rt = ctx->rt;
    if (!json_is_object(data))
        return util_error(err, errlen, "data of '%s' must be a JSON object", type);
    char topic[EVENT_TYPE_MAX + 16];
    if (event_type_check(type, err, errlen) != 0)
        return -1;
    if (event_topic_for_type(type, topic, sizeof(topic)) != 0)
        return util_error(err, errlen, "no topic for event type '%s'", type);
    event ev = EVENT_INIT;
    if (event_build(&ev, type, data, correlation_id, causation_id, rt->def.name, err, errlen) != 0)
        return -1;
    if (ctx->ev) {
        derive_trace(ctx, cause, &ev);
    } else if (parent_traceparent &&
               trace_parent_valid(parent_traceparent, strlen(parent_traceparent))) {
        char child[TRACE_PARENT_LEN + 1];
        trace_parent_child(parent_traceparent, child);
        event_set_trace(&ev, child, parent_tracestate);
    }
    if (!key) {
        json_t *task_id = json_object_get(data, "task_id");
        if (json_is_string(task_id))
            key = json_string_value(task_id);
        else if (ctx->msg && ctx->msg->key)
            key = ctx->msg->key;
    }
    pending_record *r = record_add(&rt->emits);
    r->topic = xstrdup(topic);
    r->key = key ? xstrdup(key) : NULL;
    r->value = event_encode(&ev, &r->value_len);
    r->published = metrics_published(type);
    bus_header h[BUS_ENVELOPE_HEADERS];
    char timebuf[EVENT_TIME_LEN + 1];
    size_t nh = bus_envelope_headers(&ev, h, timebuf);
    for (size_t i = 0; i < nh; i++)
        record_header(r, h[i].name, h[i].value);
    if (out_id)
        memcpy(out_id, ev.event_id, EVENT_UUID_LEN + 1);
    LOG_DEBUG_CID(ev.correlation_id, "%s: emitted %s [%s] caused by %s", rt->def.name, type,
                  ev.event_id, ev.causation_id);
    event_release(&ev);
    return 0;
}

int agent_emit(agent_ctx *ctx, const char *type, json_t *data, const char *key,
               const char *caused_by, char out_id[EVENT_UUID_LEN + 1], char *err, size_t errlen)
{
    if (!ctx->ev)
        return util_error(err, errlen, "agent_emit() needs an input event (use agent_emit_with())");
    const pending_record *cause = NULL;
    if (caused_by) {
        /* must be an event emitted earlier for this input */
        cause = emitted_record(ctx, caused_by);
        if (!cause)
            return util_error(err, errlen, "caused_by '%s' is not an event emitted for this input",
                              caused_by);
    }
    return emit(ctx, type, data, key, ctx->ev->correlation_id,
                caused_by ? caused_by : ctx->ev->event_id, cause, NULL, NULL, out_id, err, errlen);
}

int agent_emit_with(agent_ctx *ctx, const char *type, json_t *data, const char *key,
                    const char *correlation_id, const char *causation_id,
                    const char *parent_traceparent, const char *parent_tracestate,
                    char out_id[EVENT_UUID_LEN + 1], char *err, size_t errlen)
{
    if (!correlation_id || !causation_id)
        return util_error(err, errlen, "agent_emit_with() needs a correlation and a causation id");
    return emit(ctx, type, data, key, correlation_id, causation_id, NULL, parent_traceparent,
                parent_tracestate, out_id, err, errlen);
}

void agent_retry_after(agent_ctx *ctx, int64_t delay_ms)
{
    if (delay_ms < 0)
        delay_ms = 0;
    ctx->retry_after_ms = delay_ms > MAX_RETRY_AFTER_MS ? MAX_RETRY_AFTER_MS : delay_ms;
}

const bus_message *agent_ctx_message(const agent_ctx *ctx)
{
    return ctx->msg;
}

int agent_ctx_attempt(const agent_ctx *ctx)
{
    return ctx->attempt;
}

const char *agent_ctx_group(const agent_ctx *ctx)
{
    return ctx->rt->def.group;
}

const char *agent_ctx_name(const agent_ctx *ctx)
{
    return ctx->rt->def.name;
}

sqlite3 *agent_ctx_db(const agent_ctx *ctx)
{
    return ctx->db_open ? ctx->rt->db : NULL;
}

/* ---- open / close ----------------------------------------------------- */

static int prepare(agent_runtime *rt, const char *sql, sqlite3_stmt **stmt, char *err,
                   size_t errlen)
{
    if (sqlite3_prepare_v3(rt->db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) != SQLITE_OK)
        return util_error(err, errlen, "cannot prepare '%.40s': %s", sql, sqlite3_errmsg(rt->db));
    return 0;
}

/*
 * De-duplication records: one row per (group, handled event), keyed by a
 * small group number and the event id's 16 bytes so that the lookup done
 * for every record compares few bytes. The view agent_processed shows them
 * with names and text ids, for people and tests.
 */
#define RUNTIME_SCHEMA                                                                             \
    "CREATE TABLE IF NOT EXISTS agent_groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);" \
    "CREATE TABLE IF NOT EXISTS agent_handled (group_id INTEGER NOT NULL,"                         \
    " event_id BLOB NOT NULL, handled_ms INTEGER NOT NULL,"                                        \
    " PRIMARY KEY (group_id, event_id)) WITHOUT ROWID;"                                            \
    "CREATE VIEW IF NOT EXISTS agent_processed (group_name, event_id, handled_ms) AS"              \
    " SELECT g.name, lower(substr(hex(h.event_id), 1, 8) || '-' || substr(hex(h.event_id), 9, 4)"  \
    " || '-' || substr(hex(h.event_id), 13, 4) || '-' || substr(hex(h.event_id), 17, 4) || '-'"    \
    " || substr(hex(h.event_id), 21)), h.handled_ms"                                               \
    " FROM agent_handled h JOIN agent_groups g ON g.id = h.group_id;"                              \
    "CREATE TABLE IF NOT EXISTS " RUNTIME_HEARTBEAT_TABLE " (group_name TEXT NOT NULL,"            \
    " pid INTEGER NOT NULL, agent TEXT NOT NULL, subscription TEXT NOT NULL,"                      \
    " started_ms INTEGER NOT NULL, beat_ms INTEGER NOT NULL, progress_ms INTEGER NOT NULL,"        \
    " retrying INTEGER NOT NULL, failures INTEGER NOT NULL,"                                       \
    " PRIMARY KEY (group_name, pid)) WITHOUT ROWID;"

static int create_tables(agent_runtime *rt, char *err, size_t errlen)
{
    if (bus_log_begin(rt->log, err, errlen) != 0)
        return -1;
    char *msg = NULL;
    if (sqlite3_exec(rt->db, RUNTIME_SCHEMA, NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "cannot create the de-duplication table: %s", msg);
        sqlite3_free(msg);
        bus_log_rollback(rt->log);
        return -1;
    }
    sqlite3_stmt *st = NULL;
    int ok = sqlite3_prepare_v2(rt->db, "INSERT OR IGNORE INTO agent_groups (name) VALUES (?1)", -1,
                                &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, rt->def.group, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (ok)
        ok = sqlite3_prepare_v2(rt->db, "SELECT id FROM agent_groups WHERE name = ?1", -1, &st,
                                NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, rt->def.group, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_ROW;
        if (ok)
            rt->group_id = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (!ok) {
        util_error(err, errlen, "cannot register group '%s': %s", rt->def.group,
                   sqlite3_errmsg(rt->db));
        bus_log_rollback(rt->log);
        return -1;
    }
    return bus_log_commit(rt->log, err, errlen);
}

/* "pattern:<regex>" or "topics:a,b" (malloc'd), for the heartbeat row. */
static char *subscription_text(const agent_def *def)
{
    size_t len = 16 + (def->pattern ? strlen(def->pattern) : 0);
    for (size_t i = 0; i < def->topic_count; i++)
        len += strlen(def->topics[i]) + 1;
    char *s = xmalloc(len);
    if (def->pattern) {
        snprintf(s, len, "pattern:%s", def->pattern);
        return s;
    }
    size_t o = (size_t)snprintf(s, len, "topics:");
    for (size_t i = 0; i < def->topic_count; i++)
        o += (size_t)snprintf(s + o, len - o, "%s%s", i ? "," : "", def->topics[i]);
    return s;
}

static void purge_processed(agent_runtime *rt)
{
    int64_t now = util_now_ms();
    rt->next_purge_ms = now + PURGE_INTERVAL_MS;
    sqlite3_bind_int64(rt->purge, 1, rt->group_id);
    sqlite3_bind_int64(rt->purge, 2, now - rt->dedup_keep_ms);
    if (sqlite3_step(rt->purge) != SQLITE_DONE)
        LOG_WARN("%s: cannot purge old de-duplication records: %s", rt->def.name,
                 sqlite3_errmsg(rt->db));
    sqlite3_reset(rt->purge);
}

agent_runtime *agent_runtime_open(const bus_config *cfg, const agent_def *def,
                                  const runtime_retry *retry, char *err, size_t errlen)
{
    agent_runtime *rt = xcalloc(1, sizeof(*rt));
    rt->def = *def;
    rt->retry = retry ? *retry : (runtime_retry)RUNTIME_RETRY_INIT;
    if (rt->retry.max_attempts < 1)
        rt->retry.max_attempts = 1;
    if (rt->def.max_batch == 0)
        rt->def.max_batch = DEFAULT_MAX_BATCH;
    atomic_init(&rt->stopping, 0);
    atomic_init(&rt->fatal, 0);
    rt->stop_fd = -1;
    pthread_mutex_init(&rt->stats_lock, NULL);
    if (!def->name || !*def->name || !def->group || !def->handle) {
        util_error(err, errlen, "agent definition needs a name, a group and a handler");
        goto fail;
    }
    metrics_group_resolve(def->group, &rt->metrics);
    rt->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (rt->stop_fd < 0) {
        util_error(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = def->group;
    sub.topics = def->topics;
    sub.topic_count = def->topic_count;
    sub.pattern = def->pattern;
    sub.reset = BUS_RESET_EARLIEST;
    sub.max_batch = rt->def.max_batch;
    char why[512];
    bus_config consumer_cfg = *cfg; /* the agent names its client (Kafka client.id) */
    consumer_cfg.client_id = def->name;
    rt->consumer = bus_consumer_open(&consumer_cfg, &sub, why, sizeof(why));
    if (!rt->consumer) {
        util_error(err, errlen, "agent '%s': %s", def->name, why);
        goto fail;
    }
    bus_consumer_sqlite *sc = bus_consumer_sqlite_of(rt->consumer);
    if (sc) {
        rt->log = bus_consumer_sqlite_log(sc);
    } else {
        /* an external bus (Kafka): the state lives in the data directory's
         * database, derived events and dead letters leave through its
         * outbox, and the group's offsets are committed on the bus after
         * the state transaction */
        bus_config local = *cfg;
        local.kind = BUS_SQLITE;
        rt->owned_log = bus_log_open(&local, why, sizeof(why));
        if (!rt->owned_log || bus_outbox_ensure(rt->owned_log, why, sizeof(why)) != 0) {
            util_error(err, errlen, "agent '%s': %s", def->name, why);
            goto fail;
        }
        rt->log = rt->owned_log;
    }
    rt->db = bus_log_db(rt->log);
    /* an agent reads the newest pages of the log and its own rows: a small
     * page cache is enough, and `herald up` holds one per agent */
    sqlite3_exec(rt->db, "PRAGMA cache_size=-" RUNTIME_CACHE_KIB_TEXT, NULL, NULL, NULL);
    /* An agent's commit needs no fsync of its own: if a power cut loses it,
     * the batch is simply handled again (at-least-once, which every agent
     * already allows: de-duplicated mails, audit lines checked against the
     * file's tail, deterministic reminders), and the next fsynced commit of
     * any writer (the Task API's) makes it durable. Without this, every task
     * cost one fsync per agent on the same disk as the API's. Side effects
     * the agent itself must make durable go through before_commit. */
    sqlite3_exec(rt->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    rt->dedup_keep_ms = cfg->retention_ms > 0 ? cfg->retention_ms : DEFAULT_DEDUP_KEEP_MS;
    if (create_tables(rt, why, sizeof(why)) != 0 ||
        prepare(rt, "SELECT 1 FROM agent_handled WHERE group_id = ?1 AND event_id = ?2", &rt->seen,
                why, sizeof(why)) != 0 ||
        prepare(rt,
                "INSERT OR IGNORE INTO agent_handled (group_id, event_id, handled_ms)"
                " VALUES (?1, ?2, ?3)",
                &rt->mark, why, sizeof(why)) != 0 ||
        prepare(rt, "DELETE FROM agent_handled WHERE group_id = ?1 AND handled_ms < ?2", &rt->purge,
                why, sizeof(why)) != 0 ||
        prepare(rt,
                "INSERT OR REPLACE INTO " RUNTIME_HEARTBEAT_TABLE " (group_name, pid, agent,"
                " subscription, started_ms, beat_ms, progress_ms, retrying, failures)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &rt->beat, why, sizeof(why)) != 0 ||
        prepare(rt, "DELETE FROM " RUNTIME_HEARTBEAT_TABLE " WHERE group_name = ?1 AND pid = ?2",
                &rt->unbeat, why, sizeof(why)) != 0) {
        util_error(err, errlen, "agent '%s': %s", def->name, why);
        goto fail;
    }
    purge_processed(rt);
    rt->subscription = subscription_text(def);
    if (def->setup && def->setup(def->state, rt->db, why, sizeof(why)) != 0) {
        util_error(err, errlen, "agent '%s': %s", def->name, why);
        goto fail;
    }
    rt->batch_ids_cap = 1;
    while (rt->batch_ids_cap < rt->def.max_batch * 2)
        rt->batch_ids_cap *= 2;
    rt->batch_ids = xcalloc(rt->batch_ids_cap, sizeof(*rt->batch_ids));
    rt->deferred = xcalloc(rt->def.max_batch, sizeof(*rt->deferred));
    rt->events = xcalloc(rt->def.max_batch, sizeof(*rt->events));
    rt->handled = xcalloc(rt->def.max_batch, sizeof(*rt->handled));
    rt->states = xcalloc(rt->def.max_batch, sizeof(*rt->states));
    rt->reasons = xcalloc(rt->def.max_batch, sizeof(*rt->reasons));
    return rt;
fail:
    agent_runtime_close(rt);
    return NULL;
}

static void clear_batch(agent_runtime *rt)
{
    record_truncate(&rt->emits, 0);
    record_truncate(&rt->dead, 0);
    rt->handled_count = 0;
    if (rt->batch_ids)
        memset(rt->batch_ids, 0, rt->batch_ids_cap * sizeof(*rt->batch_ids));
    for (size_t i = 0; i < rt->batch_count; i++) {
        event_release(&rt->events[i]);
        free(rt->reasons[i]);
        rt->reasons[i] = NULL;
    }
    rt->batch_count = 0;
    rt->deferred_count = 0;
}

void agent_runtime_close(agent_runtime *rt)
{
    if (!rt)
        return;
    clear_batch(rt);
    free(rt->emits.items);
    free(rt->dead.items);
    free(rt->handled);
    free(rt->batch_ids);
    free(rt->deferred);
    free(rt->events);
    free(rt->states);
    free(rt->reasons);
    sqlite3_finalize(rt->seen);
    sqlite3_finalize(rt->mark);
    sqlite3_finalize(rt->purge);
    if (rt->unbeat && !bus_log_in_transaction(rt->log)) {
        sqlite3_bind_text(rt->unbeat, 1, rt->def.group, -1, SQLITE_STATIC);
        sqlite3_bind_int64(rt->unbeat, 2, (int64_t)getpid());
        sqlite3_step(rt->unbeat);
    }
    sqlite3_finalize(rt->beat);
    sqlite3_finalize(rt->unbeat);
    free(rt->subscription);
    bus_consumer_close(rt->consumer);
    if (rt->def.destroy)
        rt->def.destroy(rt->def.state);
    bus_log_close(rt->owned_log);
    if (rt->stop_fd >= 0)
        close(rt->stop_fd);
    pthread_mutex_destroy(&rt->stats_lock);
    free(rt);
}

void agent_runtime_stop(agent_runtime *rt)
{
    atomic_store(&rt->stopping, 1);
    uint64_t one = 1;
    ssize_t ignored = write(rt->stop_fd, &one, sizeof(one));
    (void)ignored;
    bus_consumer_wakeup(rt->consumer);
}

void agent_runtime_stats(agent_runtime *rt, runtime_stats *out)
{
    pthread_mutex_lock(&rt->stats_lock);
    *out = rt->stats;
    pthread_mutex_unlock(&rt->stats_lock);
}

const char *agent_runtime_name(const agent_runtime *rt)
{
    return rt->def.name;
}

const char *agent_runtime_group(const agent_runtime *rt)
{
    return rt->def.group;
}

void agent_runtime_health(agent_runtime *rt, runtime_health *out)
{
    out->running = atomic_load_explicit(&rt->h_running, memory_order_relaxed);
    out->started_ms = atomic_load_explicit(&rt->h_started_ms, memory_order_relaxed);
    out->last_poll_ms = atomic_load_explicit(&rt->h_poll_ms, memory_order_relaxed);
    out->last_progress_ms = atomic_load_explicit(&rt->h_progress_ms, memory_order_relaxed);
    out->busy = atomic_load_explicit(&rt->h_busy, memory_order_relaxed);
    out->retrying = atomic_load_explicit(&rt->h_retrying, memory_order_relaxed);
    out->attempts = atomic_load_explicit(&rt->h_attempts, memory_order_relaxed);
    out->failures = atomic_load_explicit(&rt->h_failures, memory_order_relaxed);
}

int runtime_health_stalled(const runtime_health *h, int64_t now_ms, int64_t stall_ms)
{
    return h->running && h->busy && now_ms - h->last_progress_ms >= stall_ms;
}

/* ---- one batch -------------------------------------------------------- */

static int wants_type(const agent_runtime *rt, const char *type)
{
    if (!rt->def.types)
        return 1;
    for (size_t i = 0; i < rt->def.type_count; i++)
        if (strcmp(rt->def.types[i], type) == 0)
            return 1;
    return 0;
}

static void dead_letter(agent_runtime *rt, const bus_message *m, const event *ev,
                        const char *reason, int attempts, int64_t t0_ns)
{
    pending_record *r = record_add(&rt->dead);
    size_t tl = strlen(m->topic);
    r->topic = xmalloc(tl + sizeof(RUNTIME_DLQ_SUFFIX));
    memcpy(r->topic, m->topic, tl);
    memcpy(r->topic + tl, RUNTIME_DLQ_SUFFIX, sizeof(RUNTIME_DLQ_SUFFIX));
    r->key = m->key ? xstrndup(m->key, m->key_len) : NULL;
    r->value = xmalloc(m->value_len + 1);
    memcpy(r->value, m->value, m->value_len);
    r->value[m->value_len] = '\0';
    r->value_len = m->value_len;
    char num[32], when[EVENT_TIME_LEN + 1];
    record_header(r, RUNTIME_DLQ_REASON, reason);
    record_header(r, RUNTIME_DLQ_GROUP, rt->def.group);
    snprintf(num, sizeof(num), "%d", attempts);
    record_header(r, RUNTIME_DLQ_ATTEMPTS, num);
    record_header(r, RUNTIME_DLQ_TOPIC, m->topic);
    snprintf(num, sizeof(num), "%" PRId32, m->partition);
    record_header(r, RUNTIME_DLQ_PARTITION, num);
    snprintf(num, sizeof(num), "%" PRId64, m->offset);
    record_header(r, RUNTIME_DLQ_OFFSET, num);
    event_format_time(util_now_ms(), when);
    record_header(r, RUNTIME_DLQ_FAILED_AT, when);
    log_event_line(rt, LOG_LEVEL_ERROR, m, ev, "dead-lettered", attempts, t0_ns, reason,
                   "%s: %s:%" PRId64 " dead-lettered to %s after %d attempt%s: %s", rt->def.name,
                   m->topic, m->offset, r->topic, attempts, attempts == 1 ? "" : "s", reason);
}

/* event_id must stay valid until clear_batch() (it points into rt->events). */
static void mark_processed(agent_runtime *rt, const char *event_id)
{
    rt->handled[rt->handled_count] = event_id;
    batch_seen(rt, event_id, rt->handled_count++, 1);
}

static int64_t backoff_ms(const agent_runtime *rt, int attempt)
{
    int64_t d = rt->retry.base_ms;
    for (int i = 1; i < attempt && d < rt->retry.max_ms; i++)
        d *= 2;
    if (d > rt->retry.max_ms)
        d = rt->retry.max_ms;
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = (uint32_t)util_monotonic_ns();
    /* jitter: 50..100 % of the delay */
    return d / 2 + (int64_t)((double)(d - d / 2) * ((double)r / 4294967296.0)) + 1;
}

/* The record in hand is no longer in retry (settled, or the runtime stops):
 * its health shows retrying from its first failure until then, through the
 * waits and the attempts in between. */
static void retry_over(agent_runtime *rt)
{
    atomic_store_explicit(&rt->h_retrying, 0, memory_order_relaxed);
    atomic_store_explicit(&rt->h_attempts, 0, memory_order_relaxed);
}

/* A record was settled (handled or dead-lettered): that is progress. */
static void settled(agent_runtime *rt)
{
    retry_over(rt);
    progress(rt, util_now_ms());
}

/* Sleep before a retry, beating the heartbeat meanwhile (a live member
 * stuck on a record is told apart from a dead one). 1 when stopped. */
static int retry_wait(agent_runtime *rt, int64_t delay_ms)
{
    int64_t end = util_now_ms() + delay_ms;
    for (;;) {
        heartbeat(rt, 0);
        int64_t left = end - util_now_ms();
        if (left <= 0)
            return stopping(rt);
        if (sleep_or_stop(rt, left < RUNTIME_HEARTBEAT_MS ? left : RUNTIME_HEARTBEAT_MS))
            return 1;
    }
}

/* One call of the handler, timed and counted in metrics. */
static agent_outcome timed_handle(agent_runtime *rt, agent_ctx *ctx, const event *ev, char *reason,
                                  size_t reasonlen)
{
    int64_t start = util_monotonic_ns();
    agent_outcome o = rt->def.handle(rt->def.state, ctx, ev, reason, reasonlen);
    metrics_histogram_observe_ns(rt->metrics.handler_duration, util_monotonic_ns() - start);
    if (o != AGENT_OK)
        metrics_counter_add(rt->metrics.failed, 1);
    return o;
}

/* The derived events of a committed transaction, counted by type. */
static void count_published(const agent_runtime *rt)
{
    for (size_t i = 0; i < rt->emits.count; i++)
        metrics_counter_add(rt->emits.items[i].published, 1);
}

/*
 * Handle one decoded event outside the transaction, with retries.
 * Returns 0 when the event is settled (handled or dead-lettered), 1 when the
 * runtime was stopped before it was settled.
 */
static int handle_with_retries(agent_runtime *rt, const bus_message *m, const event *ev)
{
    char reason[512];
    /* timed only when the line that shows it is on: two clock reads saved */
    int64_t t0 = log_threshold <= LOG_LEVEL_INFO ? util_monotonic_ns() : 0;
    for (int attempt = 1;; attempt++) {
        agent_ctx ctx = {rt, m, ev, attempt, -1, 0, rt->emits.count};
        reason[0] = '\0';
        agent_outcome o = timed_handle(rt, &ctx, ev, reason, sizeof(reason));
        if (o == AGENT_OK) {
            mark_processed(rt, ev->event_id);
            settled(rt);
            log_event_line(rt, LOG_LEVEL_INFO, m, ev, "handled", attempt, t0, NULL,
                           "%s: %s [%s] handled", rt->def.name, ev->event_type, ev->event_id);
            return 0;
        }
        record_truncate(&rt->emits, ctx.emit_mark);
        if (!reason[0])
            util_strlcpy(reason, o == AGENT_RETRY ? "temporary failure" : "failed", sizeof(reason));
        if (o != AGENT_RETRY) {
            dead_letter(rt, m, ev, reason, attempt, t0);
            settled(rt);
            return 0;
        }
        stat_add(rt, &rt->stats.retried, 1);
        if (attempt >= rt->retry.max_attempts) {
            char why[600];
            snprintf(why, sizeof(why), "gave up after %d attempts: %s", attempt, reason);
            dead_letter(rt, m, ev, why, attempt, t0);
            settled(rt);
            return 0;
        }
        metrics_counter_add(rt->metrics.retried, 1);
        int64_t delay = ctx.retry_after_ms >= 0 ? ctx.retry_after_ms : backoff_ms(rt, attempt);
        log_event_line(rt, LOG_LEVEL_WARN, m, ev, "retrying", attempt, t0, reason,
                       "%s: %s [%s] attempt %d/%d failed: %s; retrying in %" PRId64 " ms",
                       rt->def.name, ev->event_type, ev->event_id, attempt, rt->retry.max_attempts,
                       reason, delay);
        atomic_store_explicit(&rt->h_attempts, attempt, memory_order_relaxed);
        atomic_store_explicit(&rt->h_retrying, 1, memory_order_relaxed);
        if (retry_wait(rt, delay)) {
            retry_over(rt);
            return 1;
        }
    }
}

/* Move the consumer back to the first of msgs[from..n) of each topic. */
static void seek_back(agent_runtime *rt, const bus_message *msgs, size_t from, size_t n)
{
    for (size_t i = from; i < n; i++) {
        int first = 1;
        for (size_t j = from; j < i && first; j++)
            first = strcmp(msgs[j].topic, msgs[i].topic) != 0;
        if (!first)
            continue;
        char err[256];
        if (bus_consumer_seek(rt->consumer, msgs[i].topic, msgs[i].partition, msgs[i].offset, err,
                              sizeof(err)) != 0)
            LOG_ERROR("%s: %s", rt->def.name, err);
    }
}

static int append_list(agent_runtime *rt, record_list *l, char *err, size_t errlen)
{
    for (size_t i = 0; i < l->count; i++) {
        pending_record *p = &l->items[i];
        bus_record r = BUS_RECORD_INIT;
        r.topic = p->topic;
        r.key = p->key;
        r.key_len = p->key ? strlen(p->key) : 0;
        r.value = p->value;
        r.value_len = p->value_len;
        r.headers = p->header_count ? p->headers : NULL;
        r.header_count = p->header_count;
        if ((rt->owned_log ? bus_outbox_append(rt->log, &r, 1, err, errlen)
                           : bus_log_append(rt->log, &r, 1, NULL, err, errlen)) != 0)
            return -1;
    }
    return 0;
}

static int exec_sql(agent_runtime *rt, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(rt->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "%s: %s", sql, msg ? msg : sqlite3_errmsg(rt->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Run one deferred in-transaction handler inside a savepoint. */
static int run_deferred(agent_runtime *rt, const bus_message *m, const event *ev, char *err,
                        size_t errlen)
{
    char reason[512];
    if (batch_seen(rt, ev->event_id, 0, 0)) /* a second copy in this batch */
        return 0;
    if (exec_sql(rt, "SAVEPOINT agent_handler", err, errlen) != 0)
        return -1;
    agent_ctx ctx = {rt, m, ev, 1, -1, 1, rt->emits.count};
    reason[0] = '\0';
    agent_outcome o = timed_handle(rt, &ctx, ev, reason, sizeof(reason));
    if (o == AGENT_OK) {
        mark_processed(rt, ev->event_id);
        log_event_line(rt, LOG_LEVEL_INFO, m, ev, "handled", 1, 0, NULL, "%s: %s [%s] handled",
                       rt->def.name, ev->event_type, ev->event_id);
        return exec_sql(rt, "RELEASE agent_handler", err, errlen);
    }
    record_truncate(&rt->emits, ctx.emit_mark);
    if (exec_sql(rt, "ROLLBACK TO agent_handler", err, errlen) != 0 ||
        exec_sql(rt, "RELEASE agent_handler", err, errlen) != 0)
        return -1;
    dead_letter(rt, m, ev, reason[0] ? reason : "failed", 1, 0);
    return 0;
}

/* The batch transaction: deferred handlers, records, dedup rows, offsets. */
/* The before_commit hook, run on a thread of its own (see commit_batch). */
typedef struct hook_run {
    agent_runtime *rt;
    int rc;
    char err[512];
} hook_run;

static void *hook_thread(void *arg)
{
    hook_run *h = arg;
    h->rc = h->rt->def.before_commit(h->rt->def.state, h->err, sizeof(h->err));
    return NULL;
}

/*
 * The batch transaction: deferred handlers, records, dedup rows, offsets.
 * The agent's before_commit hook (making its side effects durable: the audit
 * log's write and fdatasync) must finish before COMMIT; it runs on a second
 * thread while this one writes the transaction, so the two waits overlap.
 * Not for agents with in-transaction handlers: their hook, if any, runs
 * first, alone (no call into an agent ever runs concurrently with another).
 */
static int commit_batch(agent_runtime *rt, const bus_message *msgs, char *err, size_t errlen)
{
    int hook = rt->def.before_commit && rt->handled_count > 0;
    hook_run run = {rt, 0, ""};
    pthread_t thread;
    int concurrent = 0;
    if (hook && rt->deferred_count == 0)
        concurrent = pthread_create(&thread, NULL, hook_thread, &run) == 0;
    if (hook && !concurrent &&
        (run.rc = rt->def.before_commit(rt->def.state, run.err, sizeof(run.err))) != 0)
        return util_error(err, errlen, "%s", run.err);
    if (bus_log_begin(rt->log, err, errlen) != 0)
        goto fail_open;
    for (size_t i = 0; i < rt->deferred_count; i++)
        if (run_deferred(rt, &msgs[rt->deferred[i]], &rt->events[rt->deferred[i]], err, errlen) !=
            0)
            goto fail;
    if (append_list(rt, &rt->emits, err, errlen) != 0 ||
        append_list(rt, &rt->dead, err, errlen) != 0)
        goto fail;
    int64_t now = util_now_ms();
    for (size_t i = 0; i < rt->handled_count; i++) {
        unsigned char bytes[16];
        runtime_uuid_bytes(rt->handled[i], bytes);
        sqlite3_bind_int64(rt->mark, 1, rt->group_id);
        sqlite3_bind_blob(rt->mark, 2, bytes, sizeof(bytes), SQLITE_STATIC);
        sqlite3_bind_int64(rt->mark, 3, now);
        int rc = sqlite3_step(rt->mark);
        sqlite3_reset(rt->mark);
        if (rc != SQLITE_DONE) {
            util_error(err, errlen, "cannot record handled events: %s", sqlite3_errmsg(rt->db));
            goto fail;
        }
    }
    bus_consumer_sqlite *sc = bus_consumer_sqlite_of(rt->consumer);
    if (sc && bus_consumer_sqlite_commit(sc, err, errlen) != 0)
        goto fail;
    if (concurrent) {
        pthread_join(thread, NULL);
        concurrent = 0;
        if (run.rc != 0) {
            util_error(err, errlen, "%s", run.err);
            goto fail;
        }
    }
    if (bus_log_commit(rt->log, err, errlen) != 0)
        return -1;
    count_published(rt);
    if (sc) {
        bus_consumer_sqlite_mark_committed(sc);
    } else if (bus_consumer_commit(rt->consumer, err, errlen) != 0) {
        /* the batch is handled and recorded: if the bus redelivers it, the
         * de-duplication records drop it */
        LOG_WARN("%s: %s (the batch may be delivered again and dropped as duplicates)",
                 rt->def.name, err);
    }
    return 0;
fail:
    bus_log_rollback(rt->log);
fail_open:
    if (concurrent)
        pthread_join(thread, NULL);
    return -1;
}

/*
 * Fire due timers, but only once the consumer has caught up (the last poll
 * returned less than a full batch): after downtime, a backlog may hold the
 * event that cancels a timer that is already due. Under a load that fills
 * every batch, timers still fire after FULL_BATCHES_BEFORE_TIMERS batches.
 */
#define FULL_BATCHES_BEFORE_TIMERS 8

static int fire_timers(agent_runtime *rt, size_t polled, char *err, size_t errlen)
{
    if (!rt->def.next_timer || !rt->def.fire_timers)
        return 0;
    if (polled >= rt->def.max_batch &&
        ++rt->full_batches_without_timers < FULL_BATCHES_BEFORE_TIMERS)
        return 0;
    rt->full_batches_without_timers = 0;
    int64_t due = rt->def.next_timer(rt->def.state, rt->db);
    int64_t now = util_now_ms();
    if (due < 0 || due > now)
        return 0;
    if (bus_log_begin(rt->log, err, errlen) != 0)
        return -1;
    agent_ctx ctx = {rt, NULL, NULL, 1, -1, 1, 0};
    if (rt->def.fire_timers(rt->def.state, &ctx, now, err, errlen) != 0 ||
        append_list(rt, &rt->emits, err, errlen) != 0) {
        bus_log_rollback(rt->log);
        record_truncate(&rt->emits, 0);
        return -1;
    }
    size_t emitted = rt->emits.count;
    int rc = bus_log_commit(rt->log, err, errlen);
    if (rc == 0)
        count_published(rt);
    record_truncate(&rt->emits, 0);
    if (rc != 0)
        return -1;
    stat_add(rt, &rt->stats.emitted, emitted);
    return 0;
}

/*
 * First pass over a batch, without side effects: read each record's
 * envelope (from its headers when it has them and the handler needs no
 * data, else by decoding the JSON), sort out other types and invalid
 * records, and look every candidate up in the de-duplication table in ONE
 * read transaction (one lock of the log instead of one per record).
 */
static int classify_batch(agent_runtime *rt, const bus_message *msgs, size_t n, char *err,
                          size_t errlen)
{
    size_t candidates = 0;
    char why[512];
    rt->batch_count = n;
    for (size_t i = 0; i < n; i++) {
        const bus_message *m = &msgs[i];
        event *ev = &rt->events[i];
        *ev = (event)EVENT_INIT;
        int from_headers = bus_envelope_from_headers(m, ev) == 0;
        if (from_headers && !wants_type(rt, ev->event_type)) {
            rt->states[i] = RECORD_SKIP;
            continue;
        }
        if (from_headers && !rt->def.raw_events) {
            event_release(ev);
            from_headers = 0;
        }
        if (!from_headers && event_decode(ev, m->value, m->value_len, why, sizeof(why)) != 0) {
            size_t len = strlen(why) + 32;
            rt->reasons[i] = xmalloc(len);
            snprintf(rt->reasons[i], len, "invalid envelope: %s", why);
            rt->states[i] = RECORD_INVALID;
            continue;
        }
        rt->states[i] = wants_type(rt, ev->event_type) ? RECORD_HANDLE : RECORD_SKIP;
        candidates += rt->states[i] == RECORD_HANDLE;
    }
    if (candidates == 0)
        return 0;
    if (exec_sql(rt, "BEGIN", err, errlen) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        if (rt->states[i] != RECORD_HANDLE)
            continue;
        if (db_seen(rt, rt->events[i].event_id, &seen, err, errlen) != 0) {
            exec_sql(rt, "ROLLBACK", why, sizeof(why));
            return -1;
        }
        if (seen)
            rt->states[i] = RECORD_DUPLICATE;
    }
    return exec_sql(rt, "COMMIT", err, errlen);
}

/* A round failed: it has work to do again. Returns -1. */
static int step_failed(agent_runtime *rt)
{
    atomic_fetch_add_explicit(&rt->h_failures, 1, memory_order_relaxed);
    atomic_store_explicit(&rt->h_busy, 1, memory_order_relaxed);
    return -1;
}

int agent_runtime_step(agent_runtime *rt, int timeout_ms, size_t *records, char *err, size_t errlen)
{
    const bus_message *msgs;
    size_t n = 0;
    if (records)
        *records = 0;
    if (rt->next_purge_ms <= util_now_ms())
        purge_processed(rt);
    if (rt->def.next_timer) {
        int64_t due = rt->def.next_timer(rt->def.state, rt->db);
        if (due >= 0) {
            int64_t wait = due - util_now_ms();
            if (wait < timeout_ms || timeout_ms < 0)
                timeout_ms = wait < 0 ? 0 : (int)(wait > IDLE_POLL_MS ? IDLE_POLL_MS : wait);
        }
    }
    if (bus_consumer_poll(rt->consumer, timeout_ms, &msgs, &n, err, errlen) != 0) {
        if (bus_consumer_fatal(rt->consumer, NULL, 0))
            atomic_store(&rt->fatal, 1);
        return step_failed(rt);
    }
    int64_t polled_ms = util_now_ms();
    atomic_store_explicit(&rt->h_poll_ms, polled_ms, memory_order_relaxed);
    if (n == 0 && atomic_load_explicit(&rt->h_failures, memory_order_relaxed) == 0)
        progress(rt, polled_ms); /* caught up */
    else
        atomic_store_explicit(&rt->h_busy, 1, memory_order_relaxed);
    if (records)
        *records = n;
    clear_batch(rt);
    if (classify_batch(rt, msgs, n, err, errlen) != 0) {
        seek_back(rt, msgs, 0, n);
        clear_batch(rt);
        return step_failed(rt);
    }
    uint64_t skipped = 0, duplicates = 0;
    size_t done = 0; /* records settled so far */
    int stopped = 0;
    for (; done < n && !stopped; done++) {
        const bus_message *m = &msgs[done];
        event *ev = &rt->events[done];
        switch ((enum record_state)rt->states[done]) {
        case RECORD_SKIP:
            skipped++;
            log_event_line(rt, LOG_LEVEL_DEBUG, m, ev, "skipped", 0, 0, NULL,
                           "%s: %s [%s] skipped (a type the agent does not handle)", rt->def.name,
                           ev->event_type, ev->event_id);
            break;
        case RECORD_INVALID:
            dead_letter(rt, m, NULL, rt->reasons[done], 0, 0);
            break;
        case RECORD_DUPLICATE:
            duplicates++;
            log_event_line(rt, LOG_LEVEL_INFO, m, ev, "duplicate", 0, 0, NULL,
                           "%s: %s [%s] already handled by group %s, dropped", rt->def.name,
                           ev->event_type, ev->event_id, rt->def.group);
            break;
        case RECORD_HANDLE:
            if (batch_seen(rt, ev->event_id, 0, 0)) {
                duplicates++; /* a second copy in this batch */
                log_event_line(rt, LOG_LEVEL_INFO, m, ev, "duplicate", 0, 0, NULL,
                               "%s: %s [%s] appears twice in the batch, dropped", rt->def.name,
                               ev->event_type, ev->event_id);
            } else if (rt->def.in_transaction)
                rt->deferred[rt->deferred_count++] = done;
            else if (handle_with_retries(rt, m, ev) != 0) {
                stopped = 1;
                done--; /* this record is not settled */
            }
            break;
        }
    }
    if (done < n)
        seek_back(rt, msgs, done, n);
    if (done > 0 && commit_batch(rt, msgs, err, errlen) != 0) {
        seek_back(rt, msgs, 0, done);
        clear_batch(rt);
        return step_failed(rt);
    }
    if (!stopped) {
        progress(rt, util_now_ms());
        atomic_store_explicit(&rt->h_busy, 0, memory_order_relaxed);
        atomic_store_explicit(&rt->h_failures, 0, memory_order_relaxed);
    }
    pthread_mutex_lock(&rt->stats_lock);
    rt->stats.handled += rt->handled_count;
    rt->stats.dead_lettered += rt->dead.count;
    rt->stats.emitted += rt->emits.count;
    rt->stats.skipped += skipped;
    rt->stats.duplicates += duplicates;
    rt->stats.batches += done > 0;
    pthread_mutex_unlock(&rt->stats_lock);
    if (done > 0) {
        metrics_counter_add(rt->metrics.consumed, done);
        metrics_counter_add(rt->metrics.handled, rt->handled_count);
        metrics_counter_add(rt->metrics.dead_lettered, rt->dead.count);
    }
    clear_batch(rt);
    return fire_timers(rt, n, err, errlen);
}

int agent_runtime_run(agent_runtime *rt)
{
    char err[1024];
    LOG_INFO("%s: running (group %s)", rt->def.name, rt->def.group);
    int64_t now = util_now_ms();
    atomic_store_explicit(&rt->h_started_ms, now, memory_order_relaxed);
    progress(rt, now);
    atomic_store_explicit(&rt->h_running, 1, memory_order_relaxed);
    heartbeat(rt, 1);
    int rc = 0;
    while (!stopping(rt)) {
        err[0] = '\0';
        if (agent_runtime_step(rt, IDLE_POLL_MS, NULL, err, sizeof(err)) != 0) {
            if (agent_runtime_fatal(rt)) {
                LOG_ERROR("%s: %s; stopping for good, this client cannot recover (what was not "
                          "committed is handled after a restart)",
                          rt->def.name, err);
                rc = -1;
                break;
            }
            LOG_ERROR("%s: %s; trying again in %d ms", rt->def.name, err, ERROR_BACKOFF_MS);
            heartbeat(rt, 0);
            sleep_or_stop(rt, ERROR_BACKOFF_MS);
        }
        heartbeat(rt, 0);
    }
    atomic_store_explicit(&rt->h_running, 0, memory_order_relaxed);
    runtime_stats s;
    agent_runtime_stats(rt, &s);
    LOG_INFO("%s: stopped (%" PRIu64 " handled, %" PRIu64 " retried, %" PRIu64
             " dead-lettered, %" PRIu64 " duplicates dropped)",
             rt->def.name, s.handled, s.retried, s.dead_lettered, s.duplicates);
    return rc;
}

int agent_runtime_fatal(agent_runtime *rt)
{
    return atomic_load(&rt->fatal);
}
