/*
 * server.c - libmicrohttpd glue for the Task API (see server.h).
 *
 * Per request: the first call sets up a request_ctx (start time, the
 * correlation id, an early 413 when Content-Length is over the limit); the
 * body arrives in pieces and is collected up to API_MAX_BODY (a chunked body
 * that grows past it is answered 413 at once); the last call builds an
 * api_request, lets routes.c answer and queues the response with the
 * headers every response carries (X-Correlation-ID, Content-Type,
 * traceresponse). One log line per request: method, path, status,
 * duration, correlation id.
 *
 * Trace context (W3C): each request is a span. A valid `traceparent` makes
 * it a child (same trace id and flags, a new span id) and keeps a valid
 * `tracestate` (several tracestate headers are joined with ','); a missing
 * or invalid traceparent (also: more than one) starts a new trace and drops
 * tracestate, as the spec asks (logged at debug). The span's traceparent
 * goes into the events the request publishes and back to the client as
 * `traceresponse` (Trace Context Level 2), so a client that sent none
 * learns the trace id. Every answered request is counted in metrics
 * (catalog.h: by method, route template and status).
 *
 * Threads: a pool of threads (one per core but one, at least one: the
 * store's writer is busy whenever the API is) serves every connection, each
 * waiting on its connections with poll(2) (HERALD_HTTP_POLLER=poll, the
 * default) or epoll. poll cost ~10 % less CPU per request at 32
 * connections (a suspend and resume is then no epoll_ctl pair); epoll
 * scales better to thousands of connections.
 * A change is never waited for on those threads: the connection is
 * suspended, the request goes to the store's queue, and the store's writer
 * resumes the connection once the batch holding it is committed; MHD then
 * calls the handler again and the response is queued. So the pool keeps
 * reading new requests, which fill the next group commit.
 *
 * In-flight accounting (for graceful stop) counts requests from their first
 * call to MHD's completion callback.
 */
#include "api/server.h"

#include "api/routes.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"
#include "metrics/catalog.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define CONNECTION_LIMIT 1024
#define CONNECTION_TIMEOUT_S 60
#define THREAD_STACK_SIZE (256 * 1024)
#define MAX_POOL_THREADS 8
/* Characters of a request path shown in the log line. */
#define LOG_PATH_MAX 200
/* A body without Content-Length that outgrows API_MAX_BODY is read and
 * dropped to its end (then 413), up to this much; past it the connection
 * is closed. */
#define API_MAX_DISCARD (1024 * 1024)

struct api_server {
    struct MHD_Daemon *daemon;
    task_store *store;
    unsigned port;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    long in_flight;
    /* GET /readyz (api_server_set_readiness); read under lock */
    api_ready_fn ready_fn;
    void *ready_arg;
    /* GET /traces workers running (under lock; `idle` is signalled when one
     * ends) and the flag that cancels them while stopping */
    int trace_workers;
    atomic_int cancel_traces;
};

/* GET /traces reads run on threads of their own, at most this many at once
 * (more get 503 with Retry-After) */
#define TRACE_WORKERS_MAX 4

typedef struct request_ctx {
    int64_t start_ns;
    /* Per-request allocations stay under 1 KiB, so malloc serves them from
     * its per-thread cache: the correlation id has at most 128 characters
     * (api_correlation_id_valid) and a tracestate (rare) is malloc'd. */
    char correlation_id[API_CORRELATION_ID_MAX + 1];
    char traceparent[TRACE_PARENT_LEN + 1]; /* this request's span */
    char *tracestate;                       /* NULL if none kept */
    char *body;
    size_t len, cap;
    size_t expected; /* Content-Length (<= API_MAX_BODY), 0 if not sent */
    int too_large;
    size_t discarded; /* bytes dropped after the body went over the limit */
    int answered;
    api_request req;
    /* a change waiting for the store */
    api_pending *pending;
    struct MHD_Connection *conn;
    /* how many of the two owners of a pending change are done with it:
     * the store (its callback ran) and MHD (the request ended before the
     * answer was sent, which happens only while stopping). The second one
     * frees the context. The store's callback always comes first otherwise,
     * so releases >= 1 also means "the store answered". */
    int releases;
    /* GET /traces: answered by a worker thread (trace_ready set, then the
     * connection resumed) */
    int trace_deferred;
    int trace_ready;
    api_response trace_resp;
    api_server *srv;
} request_ctx;

static void free_ctx(request_ctx *ctx)
{
    if (ctx->pending) {
        api_response ignored = {0};
        api_finish(ctx->pending, &ignored);
        free(ignored.body);
    }
    free(ctx->trace_resp.body);
    free(ctx->tracestate);
    free(ctx->body);
    free(ctx);
}

int api_parse_listen(const char *listen, char *host, size_t hostlen, unsigned *port)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen)
        return -1;
    const char *h = listen;
    size_t hl = (size_t)(colon - listen);
    if (h[0] == '[') {
        if (hl < 3 || h[hl - 1] != ']')
            return -1;
        h++;
        hl -= 2;
    }
    if (hl + 1 > hostlen)
        return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (unsigned)p;
    return 0;
}

static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    api_request *req = cls;
    if (req->query_count >= API_MAX_QUERY_ARGS) {
        req->query_overflow = 1;
        return MHD_NO;
    }
    req->query[req->query_count].name = key;
    req->query[req->query_count].value = value;
    req->query_count++;
    return MHD_YES;
}

/*
 * A client's text made safe for one log line: bytes outside printable
 * ASCII become \xNN, so a path can never start a forged line, and long
 * ones are cut at LOG_PATH_MAX characters ("...").
 */
static void loggable(const char *in, char *out, size_t outlen)
{
    size_t o = 0, shown = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 8 < outlen; p++) {
        if (shown++ >= LOG_PATH_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (*p < 0x20 || *p > 0x7e || *p == '\\')
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *p);
        else
            out[o++] = (char)*p;
    }
    out[o] = '\0';
}

/*
 * URL unescaping: as libmicrohttpd's own, except that a path holding an
 * encoded NUL (%00) is left undecoded, so it can never be cut short into
 * another route ("/tasks/%00abc" is not "/tasks"); it then matches nothing.
 */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    if (strstr(s, "%00"))
        return strlen(s);
    return MHD_http_unescape(s);
}

/* The trace headers of a request, gathered in one pass. */
typedef struct trace_headers {
    const char *traceparent;
    int traceparent_count;
    char state[TRACE_STATE_MAX + 1];
    size_t state_len;
    int state_overflow;
} trace_headers;

static enum MHD_Result collect_trace(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    trace_headers *t = cls;
    if (strcasecmp(key, "traceparent") == 0) {
        t->traceparent = value;
        t->traceparent_count++;
    } else if (strcasecmp(key, "tracestate") == 0 && value && *value) {
        size_t n = strlen(value), sep = t->state_len ? 1 : 0;
        if (t->state_len + sep + n > TRACE_STATE_MAX) {
            t->state_overflow = 1;
        } else {
            if (sep)
                t->state[t->state_len++] = ',';
            memcpy(t->state + t->state_len, value, n + 1);
            t->state_len += n;
        }
    }
    return MHD_YES;
}

/* This request's span: a child of the client's traceparent or a new trace. */
static void start_span(struct MHD_Connection *conn, request_ctx *ctx)
{
    trace_headers t = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_trace, &t);
    char parent[TRACE_PARENT_LEN + 1], why[128];
    if (!t.traceparent) {
        trace_parent_new(ctx->traceparent);
        return;
    }
    if (t.traceparent_count > 1) {
        util_error(why, sizeof(why), "traceparent: sent %d times", t.traceparent_count);
    } else if (trace_parent_parse(t.traceparent, strlen(t.traceparent), parent, why, sizeof(why)) ==
               0) {
        trace_parent_child(parent, ctx->traceparent);
        if (!t.state_overflow && trace_state_valid(t.state, t.state_len))
            ctx->tracestate = xstrdup(t.state);
        else if (t.state_len || t.state_overflow)
            LOG_DEBUG_CID(ctx->correlation_id,
                          "tracestate dropped: over %d characters or not printable ASCII",
                          TRACE_STATE_MAX);
        return;
    }
    trace_parent_new(ctx->traceparent);
    LOG_DEBUG_CID(ctx->correlation_id, "invalid %s; started a new trace %.32s", why,
                  ctx->traceparent + 3);
}

static enum MHD_Result send_response(struct MHD_Connection *conn, request_ctx *ctx,
                                     const char *method, const char *url, api_response *resp)
{
    size_t len = resp->body ? strlen(resp->body) : 0;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, resp->body, MHD_RESPMEM_MUST_FREE);
    resp->body = NULL; /* owned by MHD now */
    if (!r)
        return MHD_NO;
    if (len)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                resp->content_type ? resp->content_type
                                : resp->problem    ? "application/problem+json"
                                                   : "application/json");
    MHD_add_response_header(r, "X-Correlation-ID", ctx->correlation_id);
    if (ctx->traceparent[0])
        MHD_add_response_header(r, "traceresponse", ctx->traceparent);
    if (resp->location[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, resp->location);
    if (resp->retry_after > 0) {
        char seconds[16];
        snprintf(seconds, sizeof(seconds), "%d", resp->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
    }
    if (resp->etag[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, resp->etag);
    if (resp->allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, resp->allow);
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)resp->status, r);
    MHD_destroy_response(r);
    ctx->answered = 1;
    int64_t ns = util_monotonic_ns() - ctx->start_ns;
    metrics_http_request(method, api_route_template(url), resp->status, ns);
    double ms = (double)ns / 1e6;
    if (log_threshold <= LOG_LEVEL_INFO) {
        char path[LOG_PATH_MAX * 4 + 8];
        loggable(url, path, sizeof(path));
        char verb[24];
        loggable(method, verb, sizeof(verb));
        LOG_INFO_CID(ctx->correlation_id, "%s %s %d %.2fms", verb, path, resp->status, ms);
    }
    return ok;
}

static void too_large(api_response *resp)
{
    char detail[100];
    snprintf(detail, sizeof(detail), "the request body is over the limit of %d bytes",
             API_MAX_BODY);
    api_problem(resp, 413, "payload-too-large", "Payload Too Large", detail, NULL);
}

/* Writer thread: the change of this request is durable (or failed). */
static void on_store_done(store_request *sr, void *arg)
{
    request_ctx *ctx = arg;
    struct MHD_Connection *conn = ctx->conn; /* read before ctx can be freed */
    if (__atomic_add_fetch(&ctx->releases, 1, __ATOMIC_ACQ_REL) == 2) {
        free_ctx(ctx); /* MHD already ended the request: nobody waits */
        return;
    }
    MHD_resume_connection(conn);
}

/* A GET /traces worker: the read can take seconds (the whole kept log, or
 * every Kafka topic), so it runs here while the connection is suspended and
 * the HTTP threads go on. api_server_stop() cancels and waits for it before
 * the daemon goes (a suspended connection must be resumed first). */
static void *trace_worker(void *arg)
{
    request_ctx *ctx = arg;
    api_server *srv = ctx->srv;
    struct MHD_Connection *conn = ctx->conn;
    api_trace(srv->store, &ctx->req, &srv->cancel_traces, &ctx->trace_resp);
    __atomic_store_n(&ctx->trace_ready, 1, __ATOMIC_RELEASE);
    MHD_resume_connection(conn);
    pthread_mutex_lock(&srv->lock);
    srv->trace_workers--;
    pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

/* Start a trace worker for this request; 0, or -1 (too many running, or no
 * thread): resp holds the answer then. */
static int defer_trace(api_server *srv, struct MHD_Connection *conn, request_ctx *ctx,
                       api_response *resp)
{
    pthread_mutex_lock(&srv->lock);
    int busy = srv->trace_workers >= TRACE_WORKERS_MAX || atomic_load(&srv->cancel_traces);
    if (!busy)
        srv->trace_workers++;
    pthread_mutex_unlock(&srv->lock);
    if (busy) {
        char detail[128];
        snprintf(detail, sizeof(detail), "%d traces are being read already; try again in a second",
                 TRACE_WORKERS_MAX);
        api_problem(resp, 503, "busy", "Service Unavailable", detail, NULL);
        resp->retry_after = 1;
        return -1;
    }
    ctx->srv = srv;
    ctx->conn = conn;
    ctx->trace_deferred = 1;
    MHD_suspend_connection(conn);
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, trace_worker, ctx);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        return 0;
    MHD_resume_connection(conn);
    ctx->trace_deferred = 0;
    pthread_mutex_lock(&srv->lock);
    srv->trace_workers--;
    pthread_mutex_unlock(&srv->lock);
    api_problem(resp, 503, "busy", "Service Unavailable", "cannot start a thread for the trace",
                NULL);
    return -1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    api_server *srv = cls;
    request_ctx *ctx = *req_cls;
    if (!ctx) {
        ctx = xcalloc(1, sizeof(*ctx));
        ctx->start_ns = util_monotonic_ns();
        *req_cls = ctx;
        pthread_mutex_lock(&srv->lock);
        srv->in_flight++;
        pthread_mutex_unlock(&srv->lock);
        const char *cid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Correlation-ID");
        if (cid && api_correlation_id_valid(cid))
            util_strlcpy(ctx->correlation_id, cid, sizeof(ctx->correlation_id));
        else
            event_uuid_v7(ctx->correlation_id);
        start_span(conn, ctx);
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long announced = cl ? strtoull(cl, NULL, 10) : 0;
        if (announced > API_MAX_BODY) {
            /* answer before reading the body; MHD closes the connection */
            api_response resp = {0};
            too_large(&resp);
            return send_response(conn, ctx, method, url, &resp);
        }
        ctx->expected = (size_t)announced;
        return MHD_YES;
    }
    if (ctx->trace_deferred) {
        /* resumed: the trace worker answered */
        if (!__atomic_load_n(&ctx->trace_ready, __ATOMIC_ACQUIRE))
            return MHD_YES;
        ctx->trace_deferred = 0;
        api_response resp = ctx->trace_resp;
        memset(&ctx->trace_resp, 0, sizeof(ctx->trace_resp));
        return send_response(conn, ctx, method, url, &resp);
    }
    if (ctx->pending) {
        /* resumed: the store answered */
        if (__atomic_load_n(&ctx->releases, __ATOMIC_ACQUIRE) == 0)
            return MHD_YES;
        api_response resp = {0};
        api_finish(ctx->pending, &resp);
        ctx->pending = NULL;
        return send_response(conn, ctx, method, url, &resp);
    }
    if (ctx->answered) {
        *upload_data_size = 0; /* discard whatever still arrives */
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (ctx->too_large) {
            /* discarded, nothing is kept; an endless body is cut off */
            ctx->discarded += n;
            return ctx->discarded > API_MAX_DISCARD ? MHD_NO : MHD_YES;
        }
        if (ctx->len + n > API_MAX_BODY) {
            /* a body without Content-Length that grew past the limit:
             * libmicrohttpd cannot answer in the middle of an upload, so
             * the rest is read and dropped, then 413 */
            ctx->too_large = 1;
            free(ctx->body);
            ctx->body = NULL;
            ctx->len = 0;
            return MHD_YES;
        }
        if (ctx->len + n + 1 > ctx->cap) {
            /* the announced length at once (checked against the limit on
             * the first call), else doubling from 1000 bytes */
            size_t want = ctx->len + n + 1;
            ctx->cap = ctx->expected + 1 >= want ? ctx->expected + 1
                       : want < 1000             ? 1000
                                                 : want * 2;
            ctx->body = xrealloc(ctx->body, ctx->cap);
        }
        memcpy(ctx->body + ctx->len, upload_data, n);
        ctx->len += n;
        ctx->body[ctx->len] = '\0';
        return MHD_YES;
    }
    /* the whole request is here */
    if (ctx->too_large) {
        api_response resp = {0};
        too_large(&resp);
        return send_response(conn, ctx, method, url, &resp);
    }
    api_request *req = &ctx->req;
    req->method = method;
    req->path = url;
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, req);
    req->content_type =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    req->if_match = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_MATCH);
    req->idempotency_key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key");
    req->correlation_id = ctx->correlation_id;
    req->traceparent = ctx->traceparent;
    req->tracestate = ctx->tracestate;
    req->body = ctx->body;
    req->body_len = ctx->len;
    api_response resp = {0};
    if (strcmp(url, "/readyz") == 0) {
        pthread_mutex_lock(&srv->lock);
        api_ready_fn fn = srv->ready_fn;
        void *arg = srv->ready_arg;
        pthread_mutex_unlock(&srv->lock);
        api_readyz(req, fn, arg, &resp);
        return send_response(conn, ctx, method, url, &resp);
    }
    if (api_is_trace(req) && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)) {
        if (defer_trace(srv, conn, ctx, &resp) == 0)
            return MHD_YES;
        return send_response(conn, ctx, method, url, &resp);
    }
    api_pending *pending = api_handle(srv->store, req, &resp);
    if (pending) {
        ctx->pending = pending;
        ctx->conn = conn;
        MHD_suspend_connection(conn);
        if (task_store_submit(srv->store, api_pending_request(pending), on_store_done, ctx) != 0) {
            ctx->pending = NULL;
            MHD_resume_connection(conn);
            api_cancel(pending, &resp);
            return send_response(conn, ctx, method, url, &resp);
        }
        return MHD_YES;
    }
    return send_response(conn, ctx, method, url, &resp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    api_server *srv = cls;
    request_ctx *ctx = *req_cls;
    if (!ctx)
        return;
    *req_cls = NULL;
    if (ctx->pending) {
        /* ended before its answer: the store may still hold the request */
        if (__atomic_add_fetch(&ctx->releases, 1, __ATOMIC_ACQ_REL) == 1)
            ctx = NULL; /* the store still holds it: on_store_done() frees it */
    }
    if (ctx)
        free_ctx(ctx);
    pthread_mutex_lock(&srv->lock);
    if (--srv->in_flight == 0)
        pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);
}

api_server *api_server_start(const char *listen, task_store *store, int use_epoll, char *err,
                             size_t errlen)
{
    char host[256];
    unsigned port;
    if (api_parse_listen(listen, host, sizeof(host), &port) != 0) {
        util_error(err, errlen, "invalid listen address '%s' (expected HOST:PORT)", listen);
        return NULL;
    }
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port_text[16];
    snprintf(port_text, sizeof(port_text), "%u", port);
    int gai = getaddrinfo(host, port_text, &hints, &ai);
    if (gai != 0) {
        util_error(err, errlen, "cannot resolve listen address '%s': %s", listen,
                   gai_strerror(gai));
        return NULL;
    }
    api_server *srv = xcalloc(1, sizeof(*srv));
    srv->store = store;
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->idle, NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | (use_epoll ? MHD_USE_EPOLL : MHD_USE_POLL) |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    /* one core is the store writer's: on 2 cores one HTTP thread gave more
     * requests/s than two in 7 of 8 interleaved runs (+6 % median). One
     * thread is no pool option at all: libmicrohttpd warns on stderr about
     * a pool of 1 (or 0). */
    unsigned pool = cores <= 2                     ? 1
                    : cores - 1 > MAX_POOL_THREADS ? MAX_POOL_THREADS
                                                   : (unsigned)(cores - 1);
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    srv->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)CONNECTION_TIMEOUT_S, MHD_OPTION_THREAD_STACK_SIZE, (size_t)THREAD_STACK_SIZE,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_UNESCAPE_CALLBACK, unescape,
        NULL,
        /* last: without a pool the option list ends here */
        pool > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, pool, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!srv->daemon) {
        util_error(err, errlen, "cannot listen on '%s' (address in use or not available)", listen);
        pthread_mutex_destroy(&srv->lock);
        pthread_cond_destroy(&srv->idle);
        free(srv);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : port;
    return srv;
}

void api_server_set_readiness(api_server *srv, api_ready_fn fn, void *arg)
{
    pthread_mutex_lock(&srv->lock);
    srv->ready_fn = fn;
    srv->ready_arg = arg;
    pthread_mutex_unlock(&srv->lock);
}

unsigned api_server_port(const api_server *srv)
{
    return srv->port;
}

void api_server_stop(api_server *srv, int timeout_ms)
{
    if (!srv)
        return;
    MHD_socket fd = MHD_quiesce_daemon(srv->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    atomic_store(&srv->cancel_traces, 1);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&srv->lock);
    while (srv->in_flight > 0)
        if (pthread_cond_timedwait(&srv->idle, &srv->lock, &deadline) != 0)
            break;
    long left = srv->in_flight;
    pthread_mutex_unlock(&srv->lock);
    if (left > 0)
        LOG_WARN("stopping with %ld requests still in flight after %d ms", left, timeout_ms);
    /* a trace worker resumes its connection: wait for it (cancelled, it
     * ends within a poll) before the daemon goes */
    pthread_mutex_lock(&srv->lock);
    while (srv->trace_workers > 0)
        pthread_cond_wait(&srv->idle, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    MHD_stop_daemon(srv->daemon);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->idle);
    free(srv);
}
