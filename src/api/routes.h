/*
 * routes.h - the Task API's routes, independent of the HTTP library: a
 * request (method, path, query, headers that matter, body) goes in, a
 * response (status, JSON or problem+json body, headers) comes out. The
 * HTTP server (server.c) does the wire; everything the API decides is here.
 */
#ifndef HERALD_ROUTES_H
#define HERALD_ROUTES_H

#include "store/task_store.h"

#include <stdatomic.h>
#include <stddef.h>

#define API_MAX_BODY (64 * 1024)
#define API_MAX_QUERY_ARGS 16

typedef struct api_query_arg {
    const char *name;
    const char *value; /* NULL for "?flag" without '=' */
} api_query_arg;

typedef struct api_request {
    const char *method;
    const char *path; /* without the query string */
    api_query_arg query[API_MAX_QUERY_ARGS];
    size_t query_count;
    int query_overflow;       /* more than API_MAX_QUERY_ARGS arguments */
    const char *content_type; /* NULL if absent */
    const char *if_match;
    const char *idempotency_key;
    const char *correlation_id; /* already validated or generated */
    const char *traceparent;    /* the request's span (W3C, version 00): a child
                                   of the client's traceparent or a new trace;
                                   NULL: the events get none */
    const char *tracestate;     /* NULL, or the client's valid tracestate */
    const char *body;
    size_t body_len;
} api_request;

typedef struct api_response {
    int status;
    char *body;               /* malloc'd; NULL for no body (204) */
    int problem;              /* body is application/problem+json */
    char location[128];       /* "" if none */
    char etag[32];            /* "" if none */
    const char *allow;        /* for 405; NULL otherwise */
    const char *content_type; /* a static string when the body is not JSON */
    int retry_after;          /* seconds for a Retry-After header; 0: none */
} api_response;

/* A change accepted by validation, waiting for the store. */
typedef struct api_pending api_pending;

/*
 * Handle one request. *resp must be zeroed; free resp->body afterwards.
 * Returns NULL when resp is the complete answer (reads, errors). A valid
 * change returns a pending request instead: hand api_pending_request() to
 * task_store_submit() (or _execute()), and once the store is done call
 * api_finish() to fill resp (which also frees the pending request), or
 * api_cancel() if it could not be submitted.
 */
api_pending *api_handle(task_store *store, const api_request *req, api_response *resp);
store_request *api_pending_request(api_pending *p);
void api_finish(api_pending *p, api_response *resp);
void api_cancel(api_pending *p, api_response *resp);

/*
 * GET /traces/{correlation_id}: reads the whole kept log (embedded) or
 * every topic (Kafka), so it can take seconds; the server runs it off its
 * HTTP threads. api_is_trace(): req is one (any method). api_trace():
 * answer it (api_handle() does too, without cancel); a non-zero *cancel
 * (NULL: none) stops the read early and the answer is a 500 problem
 * ("cancelled"); the server cancels only while it stops.
 */
int api_is_trace(const api_request *req);
void api_trace(task_store *store, const api_request *req, const atomic_int *cancel,
               api_response *resp);

/* api_handle() and, for a change, the store's answer: blocks. */
void api_handle_sync(task_store *store, const api_request *req, api_response *resp);

/*
 * Fill resp with an RFC 9457 problem: type urn:herald:problem:<slug>,
 * title, status, detail, and (if errors is non-NULL, stolen) "errors".
 */
void api_problem(api_response *resp, int status, const char *slug, const char *title,
                 const char *detail, json_t *errors);

/*
 * Readiness (GET /readyz). A check function appends one JSON object per
 * thing it checked to the array checks: {"name": "...", "status": "ok" or
 * "fail", "detail": "..." (and any other members)}, and returns 1 when all
 * passed, else 0. It is called on an HTTP thread for every probe.
 */
typedef int (*api_ready_fn)(void *arg, json_t *checks);

/*
 * Answer GET /readyz with fn(arg): 200 {"status": "ready", "checks": [...]}
 * when every check passed; otherwise 503 problem+json (type
 * urn:herald:problem:not-ready) whose detail names the failing checks, with
 * the same "checks". fn NULL (not wired yet): 503. Other methods: 405.
 */
void api_readyz(const api_request *req, api_ready_fn fn, void *arg, api_response *resp);

/*
 * The template of the route that path belongs to ("/tasks/{id}"), or
 * "unknown": a static string, for metrics labels (a bounded set, unlike
 * raw paths).
 */
const char *api_route_template(const char *path);

/* Longest X-Correlation-ID accepted, in characters. */
#define API_CORRELATION_ID_MAX 128

/*
 * Validate an X-Correlation-ID value: 1..API_CORRELATION_ID_MAX printable
 * ASCII characters. Returns 1 if valid.
 */
int api_correlation_id_valid(const char *value);

#endif
