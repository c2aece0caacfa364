/*
 * task_store.h - tasks in SQLite, each change committed together with its
 * event, many requests per transaction (group commit).
 *
 * The store lives in the event log's database (DATA_DIR/bus.db), so a task
 * row and the event that announces its change are written in ONE SQLite
 * transaction: there is never an event for a change that did not commit,
 * nor a committed change without its event, whatever is killed when.
 *
 * Writes: callers (HTTP threads) hand a store_request to
 * task_store_execute(), which blocks. One writer thread takes every request
 * waiting at that moment (up to STORE_MAX_BATCH), runs them in one
 * transaction, each inside its own SAVEPOINT so one failing request does not
 * undo the others, commits once (one fsync for the whole batch under
 * synchronous=FULL) and wakes the callers. While it commits, new requests
 * queue up for the next batch, so throughput grows with concurrency instead
 * of stopping at one fsync per request.
 *
 * Reads: from a pool of read-only connections (WAL readers never wait for
 * the writer). Every function is thread-safe.
 */
#ifndef HERALD_TASK_STORE_H
#define HERALD_TASK_STORE_H

#include "bus/bus.h"
#include "event/event.h"
#include "store/task.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_MAX_BATCH 256
/* Idempotency keys are kept this long (at least 24 hours, as promised). */
#define STORE_IDEMPOTENCY_TTL_MS (48LL * 3600 * 1000)

typedef struct task_store task_store;

typedef enum store_op { STORE_CREATE, STORE_UPDATE, STORE_COMPLETE, STORE_DELETE } store_op;

typedef enum store_outcome {
    STORE_DONE = 0,         /* changed and its event published */
    STORE_UNCHANGED,        /* nothing to change (completed twice, same values): no event */
    STORE_NOT_FOUND,        /* no such task */
    STORE_VERSION_MISMATCH, /* if_match is not the current version */
    STORE_REPLAYED,         /* idempotency key seen with this same request */
    STORE_KEY_REUSED,       /* idempotency key seen with a different request */
    STORE_FAILED            /* database error: err says what */
} store_outcome;

struct store_request;

/*
 * Renders the response stored with an idempotency key, called by the writer
 * inside the transaction once the request succeeded: returns a malloc'd body
 * and sets *http_status.
 */
typedef char *(*store_render_fn)(const struct store_request *req, int *http_status);

typedef struct store_request {
    /* ---- in ---- */
    store_op op;
    char task_id[TASK_ID_MAX + 1]; /* create: chosen by the caller */
    task input;           /* create: title, description, owner_id, priority, due_ms (borrowed) */
    char *prepared_event; /* create: the encoded task.created (store_prepare_create) */
    size_t prepared_event_len;
    event prepared_meta; /* create: its ids and metadata (data NULL), for the headers */
    json_t *patch;       /* update: object of validated new values (title, description,
                            owner_id, priority, due_at as "…Z" text or null); borrowed */
    int64_t if_match;    /* 0: no precondition */
    const char *correlation_id;
    const char *traceparent;     /* NULL: none; else a valid version-00 value for the event */
    const char *tracestate;      /* NULL: none; only with traceparent */
    const char *idempotency_key; /* NULL: none */
    const char *request_hash;    /* with idempotency_key: hash of method, path and body */
    store_render_fn render;      /* with idempotency_key */
    /* ---- out ---- */
    store_outcome outcome;
    task result;                       /* the task after the request (DONE, UNCHANGED) or as it is
                                          (VERSION_MISMATCH); release with store_request_release() */
    char event_id[EVENT_UUID_LEN + 1]; /* DONE: the published event */
    char *replay_body;                 /* REPLAYED: the stored response body (owned) */
    int replay_status;
    char err[160]; /* STORE_FAILED: why (the 500's detail); sized so that a
                      request stays under 1 KiB (malloc's small bins) */
    /* ---- private to the store ---- */
    int done_;
    void (*on_done_)(struct store_request *req, void *arg);
    void *on_done_arg_;
    struct store_request *next_;
} store_request;

/*
 * For a create, before task_store_execute()/submit() (a create without it
 * fails): build and encode its task.created event now, on the caller's
 * thread, so that the writer thread only has to insert it. Needs task_id,
 * input (title and owner_id at least) and correlation_id set. 0, or -1
 * with err filled.
 */
int store_prepare_create(store_request *req, char *err, size_t errlen);

/* Zero a request before filling its inputs. */
void store_request_init(store_request *req, store_op op);
/* Free the outputs of a request. */
void store_request_release(store_request *req);

/*
 * Open the store in cfg->data_dir (creating tables as needed) and start its
 * writer thread. With the embedded bus each change's event is appended to
 * the log in the change's transaction; with an external bus (Kafka) it goes
 * to the transactional outbox (bus/outbox.h) instead, for a relay to
 * publish. NULL with err filled on failure.
 */
task_store *task_store_open(const bus_config *cfg, char *err, size_t errlen);

/* Finish every queued request, stop the writer, close; NULL is a no-op. */
void task_store_close(task_store *s);

/* Run one write request (blocks until its batch committed). Returns 0 when
 * req->outcome is set (any outcome), -1 only if the store is closing. */
int task_store_execute(task_store *s, store_request *req);

/*
 * Queue a write request without waiting: on_done(req, arg) is called from
 * the writer thread once the request's batch committed (or failed) and
 * req->outcome is set; req must stay valid until then. Returns 0, or -1 if
 * the store is closing (on_done is then never called).
 */
int task_store_submit(task_store *s, store_request *req,
                      void (*on_done)(store_request *req, void *arg), void *arg);

/* Read one task. Returns 1 found (*out filled), 0 not found, -1 error. */
int task_store_get(task_store *s, const char *id, task *out, char *err, size_t errlen);

/*
 * List tasks in id (creation) order: owner_id and status ("open" or
 * "completed") filter when non-NULL; after is the cursor (the last id of the
 * previous page, NULL for the first); at most limit. *out receives a
 * malloc'd array of *count tasks (free each with task_release, then the
 * array). *more is set when further tasks follow. 0 or -1.
 */
int task_store_list(task_store *s, const char *owner_id, const char *status, const char *after,
                    int limit, task **out, size_t *count, int *more, char *err, size_t errlen);

/*
 * A task's events in order, as a new JSON array of envelopes (also after
 * the task was deleted). Returns 1 and sets *events, 0 if the task never
 * existed, -1 on error.
 */
int task_store_events(task_store *s, const char *id, json_t **events, char *err, size_t errlen);

/* The bus configuration the store was opened with (a copy; the strings it
 * points to are the caller's, who keeps them alive), e.g. to read the log
 * for GET /traces. */
const bus_config *task_store_bus_config(const task_store *s);

/* Counters for the benchmark and logs: transactions and requests committed. */
void task_store_stats(task_store *s, uint64_t *batches, uint64_t *requests);

#endif
