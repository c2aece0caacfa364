/*
 * runtime.h - the agent runtime: one consume loop that every agent shares.
 *
 * An agent is a small handler plus a description (agent_def). The runtime
 * owns everything else, once:
 *
 *   poll a batch -> for each record: decode the envelope (an invalid one goes
 *   straight to the dead-letter topic), skip types the agent does not handle,
 *   drop duplicates (event_id already handled by this group), call the
 *   handler, retrying AGENT_RETRY with exponential backoff and jitter up to
 *   max_attempts -> in ONE transaction: the derived events the handlers
 *   emitted, the de-duplication records, the dead letters and the group's
 *   offsets -> commit.
 *
 * Dead letters: an event that failed for good (AGENT_FAIL, or AGENT_RETRY
 * on the last attempt, or an undecodable record) is appended to the topic
 * "<topic>.dlq" with the original key and value unchanged and the headers
 * RUNTIME_DLQ_* below (reason, group, attempts, original topic and offset,
 * time). The offset moves past it only in the transaction that wrote the
 * dead letter, so nothing is lost and nothing stays stuck behind a poison
 * event.
 *
 * Derived events: agent_emit() builds an event whose correlation_id is the
 * input's, causation_id the input's event_id (or an event emitted earlier
 * for the same input) and source the agent's name; when its cause has a
 * W3C traceparent, it gets a child span: the same trace id (and flags and
 * tracestate), a new span id. No trace context in, none out. They are published in
 * the batch transaction, so they exist if and only if the input counts as
 * handled.
 *
 * Side effects outside the log (a mail, a webhook, a file) happen before the
 * transaction: after a crash the uncommitted part of a batch is handled
 * again (at-least-once); agents make their side effects idempotent where
 * they can (Message-ID from the event_id, audit lines checked against the
 * file's tail) and keep batches small when they cannot.
 *
 * Threads: an agent_runtime is driven by one thread (agent_runtime_run());
 * agent_runtime_stop() may be called from any thread.
 */
#ifndef HERALD_RUNTIME_H
#define HERALD_RUNTIME_H

#include "bus/bus.h"
#include "event/event.h"

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* Headers of a dead letter (values are text). */
#define RUNTIME_DLQ_REASON "dlq-reason"
#define RUNTIME_DLQ_GROUP "dlq-group"
#define RUNTIME_DLQ_ATTEMPTS "dlq-attempts"
#define RUNTIME_DLQ_TOPIC "dlq-topic"
#define RUNTIME_DLQ_PARTITION "dlq-partition"
#define RUNTIME_DLQ_OFFSET "dlq-offset"
#define RUNTIME_DLQ_FAILED_AT "dlq-failed-at"
/* Suffix of dead-letter topics: "task-events" -> "task-events.dlq". */
#define RUNTIME_DLQ_SUFFIX ".dlq"

/* What a handler says about one event. */
typedef enum agent_outcome {
    AGENT_OK = 0, /* handled: commit, record the event_id, publish what was emitted */
    AGENT_RETRY,  /* transient failure: call again after a backoff */
    AGENT_FAIL    /* permanent failure: dead-letter it with the reason */
} agent_outcome;

/* The handler's view of the event being handled (or of a timer firing). */
typedef struct agent_ctx agent_ctx;

/*
 * Emit a derived event. type must be a valid past-tense type (event.h); its
 * topic is "<domain>-events". data is borrowed (the runtime takes its own
 * reference; do not modify it afterwards). key NULL uses data's "task_id"
 * when it is a string, else the input record's key. caused_by NULL makes
 * the input event the cause; otherwise it must be the id of an event emitted
 * earlier for the same input (e.g. email.delivered caused by
 * notification.sent). out_id (may be NULL) receives the new event's id.
 * Nothing is published until the input is committed as handled; events
 * emitted in an attempt that ends in AGENT_RETRY or AGENT_FAIL are dropped.
 * Returns 0, or -1 with err filled (bad type or ids).
 */
int agent_emit(agent_ctx *ctx, const char *type, json_t *data, const char *key,
               const char *caused_by, char out_id[EVENT_UUID_LEN + 1], char *err, size_t errlen);

/*
 * Emit an event with explicit correlation and causation ids, for timers.
 * Called from a handler, the event is a child span of the input's; from a
 * timer (no input event), of parent_traceparent (with parent_tracestate)
 * when that is a valid traceparent, else it has no trace context. Otherwise
 * as agent_emit().
 */
int agent_emit_with(agent_ctx *ctx, const char *type, json_t *data, const char *key,
                    const char *correlation_id, const char *causation_id,
                    const char *parent_traceparent, const char *parent_tracestate,
                    char out_id[EVENT_UUID_LEN + 1], char *err, size_t errlen);

/*
 * The trace context of an event emitted earlier for this input (event_id as
 * agent_emit()'s out_id gave it), for a timer that will emit its follow-up
 * later: copies its traceparent into traceparent (TRACE_PARENT_LEN + 1
 * bytes) and returns 1, or returns 0 when that event has none (or is not
 * one emitted for this input).
 */
int agent_emitted_traceparent(const agent_ctx *ctx, const char *event_id, char *traceparent);

/* Ask for this delay before the next attempt (e.g. HTTP Retry-After) instead
 * of the computed backoff. Only meaningful with AGENT_RETRY. */
void agent_retry_after(agent_ctx *ctx, int64_t delay_ms);

/* The record being handled (NULL in a timer). Valid during the call. */
const bus_message *agent_ctx_message(const agent_ctx *ctx);

/* 1-based attempt number of this call. */
int agent_ctx_attempt(const agent_ctx *ctx);

/* The consumer group and the agent's name (its events' source). */
const char *agent_ctx_group(const agent_ctx *ctx);
const char *agent_ctx_name(const agent_ctx *ctx);

/*
 * The state database, with the batch transaction open. Only for handlers
 * with in_transaction set, for setup, next_timer and fire_timers: at other
 * times it returns NULL. In the embedded mode this is the event log's own
 * database, so the agent's rows commit atomically with its events.
 */
sqlite3 *agent_ctx_db(const agent_ctx *ctx);

/* ---- an agent --------------------------------------------------------- */

typedef struct agent_def {
    const char *name;          /* "email": `herald agent NAME`, logs, source of its events */
    const char *group;         /* consumer group, e.g. "notification-email" */
    const char *const *topics; /* topics to read (borrowed) ... */
    size_t topic_count;
    const char *pattern;      /* ... or a regex over topic names ("^.*-events$") */
    const char *const *types; /* event types handed to the handler; others are
                                 committed without a call. NULL: every type */
    size_t type_count;
    size_t max_batch; /* records per poll and per transaction; 0: 256 */

    /* Handler: called for each new event of a handled type. On AGENT_FAIL or
     * AGENT_RETRY it writes a short reason into reason[reasonlen]. */
    agent_outcome (*handle)(void *state, agent_ctx *ctx, const event *ev, char *reason,
                            size_t reasonlen);
    /* 1: the handler needs no data: for records that carry the envelope
     * headers (bus.h; everything herald publishes) the event it gets has
     * ids, type, time and metadata but data NULL, and the JSON is never
     * parsed (the raw value is agent_ctx_message()->value). Records
     * without the headers are decoded in full as usual. */
    int raw_events;
    /* 1: handle() runs inside the batch transaction (agent_ctx_db() is open;
     * each call is wrapped in a savepoint that is rolled back if it does not
     * return AGENT_OK). It must be quick and local: no network. AGENT_RETRY
     * counts as a failure there. */
    int in_transaction;

    /* Optional hooks (NULL when unused). Each returns 0, or -1 with err. */
    /* Once at start with the state database (create tables, load state). */
    int (*setup)(void *state, sqlite3 *db, char *err, size_t errlen);
    /* After a batch was handled, before its transaction commits: make side
     * effects durable (the audit log's fsync). It runs on another thread
     * while the runtime writes the batch transaction (never concurrently
     * with another call into the agent). Failure: nothing is committed and
     * the batch is handled again after a backoff. */
    int (*before_commit)(void *state, char *err, size_t errlen);
    /* Timers: the wall-clock ms of the next timer, or -1 for none; read after
     * every batch (no transaction open, db readable). */
    int64_t (*next_timer)(void *state, sqlite3 *db);
    /* Fire the timers due at now_ms, inside a transaction (agent_ctx_db());
     * events are emitted with agent_emit_with(). */
    int (*fire_timers)(void *state, agent_ctx *ctx, int64_t now_ms, char *err, size_t errlen);
    /* Free state (called by agent_runtime_close()). */
    void (*destroy)(void *state);
    void *state;
} agent_def;

/* clang-format off */
#define AGENT_DEF_INIT { NULL, NULL, NULL, 0, NULL, NULL, 0, 0, NULL, 0, 0, \
                         NULL, NULL, NULL, NULL, NULL, NULL }
/* clang-format on */

/* Retry policy shared by the agents of a process. */
typedef struct runtime_retry {
    int max_attempts; /* calls of the handler before dead-lettering; >= 1 */
    int64_t base_ms;  /* first backoff; doubles each attempt ... */
    int64_t max_ms;   /* ... up to this; each delay is jittered to 50..100 % */
} runtime_retry;

/* clang-format off */
#define RUNTIME_RETRY_INIT { 5, 500, 30000 }
/* clang-format on */

/* Counters of one runtime since it opened. */
typedef struct runtime_stats {
    uint64_t handled;       /* AGENT_OK */
    uint64_t retried;       /* attempts that returned AGENT_RETRY */
    uint64_t dead_lettered; /* written to a .dlq topic */
    uint64_t duplicates;    /* dropped: event_id already handled by the group */
    uint64_t skipped;       /* types the agent does not handle */
    uint64_t emitted;       /* derived events published */
    uint64_t batches;       /* transactions committed */
} runtime_stats;

typedef struct agent_runtime agent_runtime;

/*
 * Health of one runtime, for readiness checks (GET /readyz). Times are wall
 * clock ms (0: not yet).
 */
typedef struct runtime_health {
    int running;              /* agent_runtime_run() is looping */
    int64_t started_ms;       /* when run() started */
    int64_t last_poll_ms;     /* when the last poll of the bus returned */
    int64_t last_progress_ms; /* last record settled, or last time it was caught up */
    int busy;                 /* has work: records in hand, one waiting for a retry,
                                 or the last round failed and will be repeated */
    int retrying;             /* a record failed and is being retried (waiting or in
                                 its next attempt) ... */
    int attempts;             /* ... after this many failed attempts */
    uint32_t failures;        /* rounds failed in a row (bus or database errors) */
} runtime_health;

/* clang-format off */
#define RUNTIME_HEALTH_INIT { 0, 0, 0, 0, 0, 0, 0, 0 }
/* clang-format on */

/*
 * Stalled: running, has work (busy), and no progress for at least stall_ms
 * at now_ms. An idle runtime (caught up) is never stalled. Pure function.
 */
int runtime_health_stalled(const runtime_health *h, int64_t now_ms, int64_t stall_ms);

/*
 * Heartbeats: every runtime keeps one row in the state database's table
 * RUNTIME_HEARTBEAT_TABLE (group_name, pid, agent, subscription, started_ms,
 * beat_ms, progress_ms, retrying, failures; one row per group and process),
 * written at start and then at least every RUNTIME_HEARTBEAT_MS while it
 * runs, also while it waits to retry a failing record, and deleted when it
 * closes. `herald lag` tells a live member (even one stuck on a record)
 * from a dead one with it. subscription is "topics:a,b" or "pattern:<regex>".
 */
#define RUNTIME_HEARTBEAT_TABLE "agent_heartbeats"
#define RUNTIME_HEARTBEAT_MS 2000

/*
 * Open the runtime of one agent: its consumer (group def->group), its state
 * database and the de-duplication table, then def->setup. The runtime takes
 * over def->state (def->destroy runs at close, also when open fails).
 * Returns NULL with err filled on failure.
 */
agent_runtime *agent_runtime_open(const bus_config *cfg, const agent_def *def,
                                  const runtime_retry *retry, char *err, size_t errlen);

/*
 * Run the loop until agent_runtime_stop(): poll, handle, commit, fire
 * timers. Errors of the bus or the database are logged and retried after a
 * backoff (the batch is read again from the committed offsets). Returns 0
 * after a stop; -1 after a fatal error of the consumer (agent_runtime_fatal()),
 * logged as one ERROR line: nothing more is committed, the group reads what
 * was not committed again, and the caller should stop the process.
 */
int agent_runtime_run(agent_runtime *rt);

/*
 * One round of the loop: poll (waiting up to timeout_ms), handle, commit,
 * fire due timers. *handled (may be NULL) receives the number of records
 * read. Returns 0, or -1 with err filled (the records of the batch that were
 * not committed will be read again). When the consumer hit a fatal error
 * (bus_consumer_fatal()), agent_runtime_fatal() becomes 1 and every later
 * round fails: retrying is pointless.
 */
int agent_runtime_step(agent_runtime *rt, int timeout_ms, size_t *records, char *err,
                       size_t errlen);

/* 1 once a round failed on a fatal error of the consumer; thread-safe. */
int agent_runtime_fatal(agent_runtime *rt);

/* Make run() return after the event in hand; thread-safe. */
void agent_runtime_stop(agent_runtime *rt);

/* Counters so far (a consistent copy; thread-safe). */
void agent_runtime_stats(agent_runtime *rt, runtime_stats *out);

/* The agent's name, and its consumer group. */
const char *agent_runtime_name(const agent_runtime *rt);
const char *agent_runtime_group(const agent_runtime *rt);

/* A consistent-enough copy of the runtime's health (thread-safe, lock-free). */
void agent_runtime_health(agent_runtime *rt, runtime_health *out);

/* 1 if group has handled event_id (its de-duplication record exists) in the
 * state database db, else 0 (also when no agent ever ran there). */
int runtime_event_handled(sqlite3 *db, const char *group, const char *event_id);

/* The 16 bytes of a UUID in text form; uuid must pass event_uuid_valid(). */
void runtime_uuid_bytes(const char *uuid, unsigned char out[16]);

/* Close the consumer and the database and destroy the agent's state.
 * NULL is a no-op. */
void agent_runtime_close(agent_runtime *rt);

#endif
