/*
 * routes.c - the Task API (see routes.h): routing, validation of every
 * field with precise problems, and the mapping of store outcomes to HTTP.
 *
 * Validation collects every invalid field before answering, so a client
 * sees all its mistakes in one 422: each entry of "errors" names the field,
 * a machine-readable reason (missing, wrong_type, out_of_range, too_long,
 * empty, bad_timestamp, control_characters, unknown_field) and a detail.
 */
#include "api/routes.h"

#include "common/json_read.h"
#include "common/json_text.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"
#include "trace/trace.h"
#include "metrics/metrics.h"

#include <nettle/sha2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LIST_DEFAULT_LIMIT 50
#define LIST_MAX_LIMIT 500

/* ---- small helpers ------------------------------------------------------ */

static char *dump(json_t *v)
{
    char *s = json_text_dump(v, NULL);
    json_decref(v);
    return s;
}

/* The text of a writer whose shape is fixed here (no caller data nests in
 * it), so it cannot fail but by a bug in this file. */
static char *finish_fixed(json_text *w)
{
    char *s = json_text_finish(w, NULL);
    if (!s) {
        fprintf(stderr, "herald: internal error writing a response body\n");
        abort();
    }
    return s;
}

static char *task_body(const task *t)
{
    json_text *w = json_text_new();
    task_write_json(w, t);
    return finish_fixed(w);
}

void api_problem(api_response *resp, int status, const char *slug, const char *title,
                 const char *detail, json_t *errors)
{
    json_t *p = json_object();
    char type[96];
    snprintf(type, sizeof(type), "urn:herald:problem:%s", slug);
    json_object_set_new(p, "type", json_string(type));
    json_object_set_new(p, "title", json_string(title));
    json_object_set_new(p, "status", json_integer(status));
    json_object_set_new(p, "detail", json_string(detail));
    if (errors)
        json_object_set_new(p, "errors", errors);
    free(resp->body);
    resp->status = status;
    resp->problem = 1;
    resp->body = dump(p);
}

int api_correlation_id_valid(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++)
        if ((unsigned char)v[n] < 0x20 || (unsigned char)v[n] > 0x7e)
            return 0;
    return n >= 1 && n <= API_CORRELATION_ID_MAX;
}

static size_t utf8_length(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            n++;
    return n;
}

/* C0 controls, DEL, and the C1 controls U+0080..U+009F (0xC2 0x80..0x9F
 * in UTF-8, which jansson guarantees strings are). */
static int has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
            return 1;
    return 0;
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    default:
        return "null";
    }
}

static void field_error(json_t *errors, const char *field, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void field_error(json_t *errors, const char *field, const char *reason, const char *fmt, ...)
{
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_t *e = json_object();
    json_object_set_new(e, "field", json_string(field));
    json_object_set_new(e, "reason", json_string(reason));
    json_object_set_new(e, "detail", json_string(detail));
    json_array_append_new(errors, e);
}

/* ---- field validation --------------------------------------------------- */

typedef struct string_rule {
    const char *name;
    size_t max_chars;
    int nullable;   /* null clears the field */
    int no_control; /* refuse control characters */
} string_rule;

/* Validate a string field if present. Returns 1 if present and valid. */
static int check_string(json_t *body, const string_rule *rule, json_t *errors)
{
    json_t *v = json_object_get(body, rule->name);
    if (!v)
        return 0;
    if (json_is_null(v)) {
        if (rule->nullable)
            return 1;
        field_error(errors, rule->name, "wrong_type", "%s must be a string, not null", rule->name);
        return 0;
    }
    if (!json_is_string(v)) {
        field_error(errors, rule->name, "wrong_type", "%s must be a string, got %s", rule->name,
                    json_type_name(v));
        return 0;
    }
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        field_error(errors, rule->name, "control_characters", "%s must not contain NUL",
                    rule->name);
        return 0;
    }
    size_t n = utf8_length(s);
    if (n == 0) {
        field_error(errors, rule->name, "empty", "%s must not be empty", rule->name);
        return 0;
    }
    if (n > rule->max_chars) {
        field_error(errors, rule->name, "too_long", "%s is %zu characters, at most %zu allowed",
                    rule->name, n, rule->max_chars);
        return 0;
    }
    if (rule->no_control && has_control(s)) {
        field_error(errors, rule->name, "control_characters",
                    "%s must not contain control characters", rule->name);
        return 0;
    }
    return 1;
}

static const string_rule title_rule = {"title", TASK_TITLE_MAX, 0, 0};
static const string_rule owner_rule = {"owner_id", TASK_OWNER_MAX, 0, 1};
static const string_rule description_rule = {"description", TASK_DESCRIPTION_MAX, 1, 0};

static int check_priority(json_t *body, json_t *errors, int *out)
{
    json_t *v = json_object_get(body, "priority");
    if (!v)
        return 0;
    if (!json_is_integer(v)) {
        field_error(errors, "priority", "wrong_type", "priority must be an integer, got %s",
                    json_type_name(v));
        return 0;
    }
    json_int_t p = json_integer_value(v);
    if (p < TASK_PRIORITY_MIN || p > TASK_PRIORITY_MAX) {
        field_error(errors, "priority", "out_of_range", "priority must be %d..%d, got %lld",
                    TASK_PRIORITY_MIN, TASK_PRIORITY_MAX, (long long)p);
        return 0;
    }
    *out = (int)p;
    return 1;
}

/* due_at: RFC 3339 text or null. *ms is 0 for null. */
static int check_due(json_t *body, json_t *errors, int64_t *ms)
{
    json_t *v = json_object_get(body, "due_at");
    if (!v)
        return 0;
    *ms = 0;
    if (json_is_null(v))
        return 1;
    if (!json_is_string(v)) {
        field_error(errors, "due_at", "wrong_type",
                    "due_at must be an RFC 3339 timestamp string, got %s", json_type_name(v));
        return 0;
    }
    if (event_parse_time(json_string_value(v), ms) != 0 || *ms <= 0) {
        field_error(errors, "due_at", "bad_timestamp",
                    "due_at is not an RFC 3339 timestamp (e.g. 2025-01-15T14:30:00Z)");
        return 0;
    }
    return 1;
}

/* The fields a task body may hold (POST and PATCH). */
static const char *const task_fields[] = {"title",       "owner_id", "priority",
                                          "description", "due_at",   NULL};

static void check_unknown(json_t *body, const char *const *known, json_t *errors)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        int ok = 0;
        for (const char *const *k = known; *k; k++)
            if (strcmp(*k, key) == 0)
                ok = 1;
        if (!ok)
            field_error(errors, key, "unknown_field", "unknown field '%.64s'", key);
    }
}

/* ---- request plumbing --------------------------------------------------- */

static int content_type_is_json(const char *ct)
{
    if (!ct)
        return 0;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return 1;
    /* application/<something>+json */
    return n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
           strncasecmp(ct + n - 5, "+json", 5) == 0;
}

/*
 * Parse the JSON body of a POST/PATCH. Returns the object, or NULL with
 * resp filled (415, 400, 422).
 */
static json_t *parse_body(const api_request *req, api_response *resp)
{
    if (!content_type_is_json(req->content_type)) {
        char detail[200];
        snprintf(detail, sizeof(detail), "the request body must be application/json, not '%.100s'",
                 req->content_type ? req->content_type : "(no Content-Type)");
        api_problem(resp, 415, "unsupported-media-type", "Unsupported Media Type", detail, NULL);
        return NULL;
    }
    json_error_t jerr;
    /* json_loadb(JSON_REJECT_DUPLICATES | JSON_DECODE_ANY), faster */
    json_t *body = json_read(req->body ? req->body : "", req->body_len, &jerr);
    if (!body) {
        char detail[300];
        snprintf(detail, sizeof(detail), "malformed JSON at line %d, column %d (byte %d): %s",
                 jerr.line, jerr.column, jerr.position, jerr.text);
        json_t *pos = json_object();
        json_object_set_new(pos, "line", json_integer(jerr.line));
        json_object_set_new(pos, "column", json_integer(jerr.column));
        json_object_set_new(pos, "position", json_integer(jerr.position));
        api_problem(resp, 400, "malformed-json", "Malformed JSON", detail, NULL);
        /* add the position as its own member */
        json_t *p = json_loads(resp->body, 0, NULL);
        json_object_set_new(p, "position", pos);
        free(resp->body);
        resp->body = dump(p);
        return NULL;
    }
    if (!json_is_object(body)) {
        char detail[100];
        snprintf(detail, sizeof(detail), "the request body must be a JSON object, got %s",
                 json_type_name(body));
        json_decref(body);
        api_problem(resp, 422, "invalid-body", "Invalid request body", detail, NULL);
        return NULL;
    }
    return body;
}

static void invalid_fields(api_response *resp, json_t *errors)
{
    char detail[160];
    size_t n = json_array_size(errors);
    json_t *first = json_array_get(errors, 0);
    snprintf(detail, sizeof(detail), "%zu invalid field%s: %s", n, n == 1 ? "" : "s",
             json_string_value(json_object_get(first, "detail")));
    api_problem(resp, 422, "invalid-fields", "Invalid fields", detail, errors);
}

static void request_hash(const api_request *req, char out[65])
{
    unsigned char md[SHA256_DIGEST_SIZE];
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, strlen(req->method), (const uint8_t *)req->method);
    sha256_update(&ctx, 1, (const uint8_t *)"\n");
    sha256_update(&ctx, strlen(req->path), (const uint8_t *)req->path);
    sha256_update(&ctx, 1, (const uint8_t *)"\n");
    if (req->body_len)
        sha256_update(&ctx, req->body_len, (const uint8_t *)req->body);
    sha256_digest(&ctx, sizeof(md), md);
    for (unsigned int i = 0; i < sizeof(md); i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Idempotency-Key: 1..255 printable ASCII. Returns 0, or -1 with resp. */
static int use_idempotency_key(const api_request *req, store_request *sr, char **hash,
                               api_response *resp)
{
    if (!req->idempotency_key)
        return 0;
    const char *k = req->idempotency_key;
    size_t n = strlen(k);
    int ok = n >= 1 && n <= 255;
    for (size_t i = 0; ok && i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            ok = 0;
    if (!ok) {
        json_t *errors = json_array();
        field_error(errors, "Idempotency-Key", "invalid",
                    "Idempotency-Key must be 1..255 printable ASCII characters without spaces");
        invalid_fields(resp, errors);
        return -1;
    }
    *hash = xmalloc(65);
    request_hash(req, *hash);
    sr->idempotency_key = k;
    sr->request_hash = *hash;
    return 0;
}

static int64_t parse_if_match(const char *v)
{
    if (!v)
        return 0;
    while (*v == ' ')
        v++;
    if (strcmp(v, "*") == 0)
        return 0;
    if (strncmp(v, "W/", 2) == 0)
        v += 2;
    if (*v == '"')
        v++;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (end == v || n <= 0 || (*end != '"' && *end != '\0'))
        return -1; /* can never match */
    return n;
}

static void set_task_headers(api_response *resp, const task *t)
{
    snprintf(resp->etag, sizeof(resp->etag), "\"%lld\"", (long long)t->version);
}

static void respond_task(api_response *resp, int status, const task *t)
{
    resp->status = status;
    resp->body = task_body(t);
    set_task_headers(resp, t);
}

/* Map a failed store outcome to a response. Returns 1 if it did. */
static int store_failure(const store_request *sr, api_response *resp)
{
    char detail[300];
    switch (sr->outcome) {
    case STORE_NOT_FOUND:
        snprintf(detail, sizeof(detail), "no task with id '%s'", sr->task_id);
        api_problem(resp, 404, "not-found", "Not Found", detail, NULL);
        return 1;
    case STORE_VERSION_MISMATCH:
        snprintf(detail, sizeof(detail),
                 "If-Match does not match the task's current version \"%lld\"",
                 (long long)sr->result.version);
        api_problem(resp, 412, "precondition-failed", "Precondition Failed", detail, NULL);
        set_task_headers(resp, &sr->result);
        return 1;
    case STORE_KEY_REUSED:
        api_problem(resp, 422, "idempotency-key-reused", "Idempotency-Key reused",
                    "this Idempotency-Key was already used with a different request", NULL);
        return 1;
    case STORE_REPLAYED:
        resp->status = sr->replay_status;
        resp->body = sr->replay_body ? xstrdup(sr->replay_body) : NULL;
        if (sr->replay_body) {
            /* the first response's Location and ETag, from its body */
            json_t *j = json_loads(sr->replay_body, 0, NULL);
            json_t *t = json_object_get(j, "task") ? json_object_get(j, "task") : j;
            const char *id = json_string_value(json_object_get(t, "id"));
            json_t *version = json_object_get(t, "version");
            if (id && resp->status == 201)
                snprintf(resp->location, sizeof(resp->location), "/tasks/%s", id);
            if (json_is_integer(version))
                snprintf(resp->etag, sizeof(resp->etag), "\"%lld\"",
                         (long long)json_integer_value(version));
            json_decref(j);
        }
        return 1;
    case STORE_FAILED:
        snprintf(detail, sizeof(detail), "the change could not be stored: %s", sr->err);
        api_problem(resp, 500, "storage-failed", "Internal Server Error", detail, NULL);
        return 1;
    default:
        return 0;
    }
}

/* ---- handlers ----------------------------------------------------------- */

/* {"id": ..., "status": "created", "task": {...}} */
static char *created_body(const task *t)
{
    json_text *w = json_text_new();
    json_text_open_object(w);
    json_text_member_string(w, "id", t->id);
    json_text_member_string(w, "status", "created");
    json_text_key(w, "task");
    task_write_json(w, t);
    json_text_close_object(w);
    return finish_fixed(w);
}

static char *render_created(const store_request *sr, int *status)
{
    *status = 201;
    return created_body(&sr->result);
}

static char *render_task(const store_request *sr, int *status)
{
    *status = 200;
    return task_body(&sr->result);
}

/* A change waiting for the store (see routes.h). */
struct api_pending {
    store_request sr;
    json_t *body;  /* the parsed request body: sr.input borrows its strings */
    json_t *patch; /* update: the validated changes */
    char *hash;    /* with an Idempotency-Key (malloc'd) */
};

static api_pending *pending_new(store_op op, const api_request *req)
{
    api_pending *p = xcalloc(1, sizeof(*p));
    store_request_init(&p->sr, op);
    p->sr.correlation_id = req->correlation_id;
    p->sr.traceparent = req->traceparent;
    p->sr.tracestate = req->traceparent ? req->tracestate : NULL;
    p->sr.if_match = parse_if_match(req->if_match);
    return p;
}

static void pending_free(api_pending *p)
{
    json_decref(p->body);
    json_decref(p->patch);
    store_request_release(&p->sr);
    free(p->hash);
    free(p);
}

store_request *api_pending_request(api_pending *p)
{
    return &p->sr;
}

void api_finish(api_pending *p, api_response *resp)
{
    store_request *sr = &p->sr;
    if (!store_failure(sr, resp)) {
        switch (sr->op) {
        case STORE_CREATE:
            resp->status = 201;
            resp->body = created_body(&sr->result);
            snprintf(resp->location, sizeof(resp->location), "/tasks/%s", sr->result.id);
            set_task_headers(resp, &sr->result);
            break;
        case STORE_DELETE:
            resp->status = 204;
            break;
        default:
            respond_task(resp, 200, &sr->result);
        }
    }
    pending_free(p);
}

void api_cancel(api_pending *p, api_response *resp)
{
    api_problem(resp, 503, "shutting-down", "Service Unavailable", "the server is stopping", NULL);
    pending_free(p);
}

static api_pending *create_task(const api_request *req, api_response *resp)
{
    json_t *body = parse_body(req, resp);
    if (!body)
        return NULL;
    json_t *errors = json_array();
    api_pending *p = pending_new(STORE_CREATE, req);
    p->body = body;
    store_request *sr = &p->sr;
    if (!json_object_get(body, "title"))
        field_error(errors, "title", "missing", "title is required");
    else if (check_string(body, &title_rule, errors))
        sr->input.title = (char *)json_string_value(json_object_get(body, "title"));
    if (!json_object_get(body, "owner_id"))
        field_error(errors, "owner_id", "missing", "owner_id is required");
    else if (check_string(body, &owner_rule, errors))
        sr->input.owner_id = (char *)json_string_value(json_object_get(body, "owner_id"));
    sr->input.priority = 1;
    check_priority(body, errors, &sr->input.priority);
    if (check_string(body, &description_rule, errors))
        sr->input.description = (char *)json_string_value(json_object_get(body, "description"));
    check_due(body, errors, &sr->input.due_ms);
    check_unknown(body, task_fields, errors);
    if (json_array_size(errors) > 0) {
        invalid_fields(resp, errors); /* takes errors */
        errors = NULL;
        goto refused;
    }
    json_decref(errors);
    errors = NULL;
    if (use_idempotency_key(req, sr, &p->hash, resp) != 0)
        goto refused;
    event_uuid_v7(sr->task_id);
    sr->render = render_created;
    char err[256];
    if (store_prepare_create(sr, err, sizeof(err)) != 0) {
        char detail[300];
        snprintf(detail, sizeof(detail), "cannot build the task.created event: %s", err);
        api_problem(resp, 500, "event-failed", "Internal Server Error", detail, NULL);
        goto refused;
    }
    return p;
refused:
    /* input borrows from body: forget it before freeing */
    memset(&sr->input, 0, sizeof(sr->input));
    json_decref(errors);
    pending_free(p);
    return NULL;
}

static api_pending *update_task(const api_request *req, const char *id, api_response *resp)
{
    json_t *body = parse_body(req, resp);
    if (!body)
        return NULL;
    json_t *errors = json_array();
    json_t *patch = json_object();
    int priority;
    int64_t due_ms;
    if (check_string(body, &title_rule, errors))
        json_object_set(patch, "title", json_object_get(body, "title"));
    if (check_string(body, &owner_rule, errors))
        json_object_set(patch, "owner_id", json_object_get(body, "owner_id"));
    if (check_string(body, &description_rule, errors))
        json_object_set(patch, "description", json_object_get(body, "description"));
    if (check_priority(body, errors, &priority))
        json_object_set_new(patch, "priority", json_integer(priority));
    if (check_due(body, errors, &due_ms)) {
        char buf[EVENT_TIME_LEN + 1];
        event_format_time(due_ms, buf);
        json_object_set_new(patch, "due_at", due_ms ? json_string(buf) : json_null());
    }
    check_unknown(body, task_fields, errors);
    if (json_array_size(errors) > 0) {
        invalid_fields(resp, errors);
        json_decref(patch);
        json_decref(body);
        return NULL;
    }
    json_decref(errors);
    api_pending *p = pending_new(STORE_UPDATE, req);
    p->body = body;
    p->patch = patch;
    util_strlcpy(p->sr.task_id, id, sizeof(p->sr.task_id));
    p->sr.patch = patch;
    return p;
}

static api_pending *simple_change(const api_request *req, const char *id, store_op op,
                                  api_response *resp)
{
    api_pending *p = pending_new(op, req);
    if (op == STORE_COMPLETE && use_idempotency_key(req, &p->sr, &p->hash, resp) != 0) {
        pending_free(p);
        return NULL;
    }
    util_strlcpy(p->sr.task_id, id, sizeof(p->sr.task_id));
    p->sr.render = render_task;
    return p;
}

/* A read of task id returned rc (1 found, 0 not, -1 error): answer 404 or
 * 500 and return 1, or return 0 when found. */
static int read_failed(api_response *resp, int rc, const char *id, const char *err)
{
    char detail[320];
    if (rc < 0) {
        snprintf(detail, sizeof(detail), "cannot read task '%s': %s", id, err);
        api_problem(resp, 500, "storage-failed", "Internal Server Error", detail, NULL);
        return 1;
    }
    if (rc == 0) {
        snprintf(detail, sizeof(detail), "no task with id '%s'", id);
        api_problem(resp, 404, "not-found", "Not Found", detail, NULL);
        return 1;
    }
    return 0;
}

static void get_task(task_store *store, const char *id, api_response *resp)
{
    task t = TASK_INIT;
    char err[256];
    int rc = task_store_get(store, id, &t, err, sizeof(err));
    if (!read_failed(resp, rc, id, err))
        respond_task(resp, 200, &t);
    task_release(&t);
}

static const char *query_value(const api_request *req, const char *name)
{
    for (size_t i = 0; i < req->query_count; i++)
        if (strcmp(req->query[i].name, name) == 0)
            return req->query[i].value ? req->query[i].value : "";
    return NULL;
}

static void list_tasks(task_store *store, const api_request *req, api_response *resp)
{
    json_t *errors = json_array();
    static const char *const known[] = {"owner_id", "status", "limit", "after", NULL};
    for (size_t i = 0; i < req->query_count; i++) {
        int ok = 0;
        for (const char *const *k = known; *k; k++)
            if (strcmp(*k, req->query[i].name) == 0)
                ok = 1;
        if (!ok)
            field_error(errors, req->query[i].name, "unknown_field",
                        "unknown query parameter '%.64s' (known: owner_id, status, limit, after)",
                        req->query[i].name);
    }
    if (req->query_overflow)
        field_error(errors, "query", "too_long", "at most %d query parameters", API_MAX_QUERY_ARGS);
    const char *owner = query_value(req, "owner_id");
    if (owner && (!*owner || utf8_length(owner) > TASK_OWNER_MAX || has_control(owner)))
        field_error(errors, "owner_id", "out_of_range",
                    "owner_id must be 1..%d characters without control characters", TASK_OWNER_MAX);
    const char *status = query_value(req, "status");
    if (status && strcmp(status, "open") != 0 && strcmp(status, "completed") != 0)
        field_error(errors, "status", "out_of_range", "status must be 'open' or 'completed'");
    const char *limit_text = query_value(req, "limit");
    long limit = LIST_DEFAULT_LIMIT;
    if (limit_text) {
        char *end;
        limit = strtol(limit_text, &end, 10);
        if (!*limit_text || *end || limit < 1 || limit > LIST_MAX_LIMIT)
            field_error(errors, "limit", "out_of_range", "limit must be an integer 1..%d",
                        LIST_MAX_LIMIT);
    }
    const char *after = query_value(req, "after");
    if (after && strlen(after) > TASK_ID_MAX)
        field_error(errors, "after", "too_long", "after is not a task id");
    if (json_array_size(errors) > 0) {
        invalid_fields(resp, errors);
        return;
    }
    json_decref(errors);
    task *tasks;
    size_t n;
    int more;
    char err[256], detail[300];
    if (task_store_list(store, owner, status, after, (int)limit, &tasks, &n, &more, err,
                        sizeof(err)) != 0) {
        snprintf(detail, sizeof(detail), "cannot list tasks: %s", err);
        api_problem(resp, 500, "storage-failed", "Internal Server Error", detail, NULL);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, task_to_json(&tasks[i]));
    json_t *o = json_object();
    json_object_set_new(o, "tasks", arr);
    json_object_set_new(o, "next_after", more && n ? json_string(tasks[n - 1].id) : json_null());
    for (size_t i = 0; i < n; i++)
        task_release(&tasks[i]);
    free(tasks);
    resp->status = 200;
    resp->body = dump(o);
}

static void task_events(task_store *store, const char *id, api_response *resp)
{
    json_t *events;
    char err[256];
    int rc = task_store_events(store, id, &events, err, sizeof(err));
    if (!read_failed(resp, rc, id, err)) {
        json_t *o = json_object();
        json_object_set_new(o, "task_id", json_string(id));
        json_object_set_new(o, "events", events);
        resp->status = 200;
        resp->body = dump(o);
    }
}

/*
 * GET /traces/{correlation_id}[?grace=DURATION]: the causal tree as JSON
 * (trace.h), read from the log through a read-only connection of its own.
 */
static void get_trace(task_store *store, const api_request *req, const char *cid,
                      const atomic_int *cancel, api_response *resp)
{
    json_t *errors = json_array();
    int64_t grace_ms = TRACE_DEFAULT_GRACE_MS;
    for (size_t i = 0; i < req->query_count; i++) {
        const char *name = req->query[i].name, *value = req->query[i].value;
        if (strcmp(name, "grace") != 0)
            field_error(errors, name, "unknown_field",
                        "unknown query parameter '%.64s' (known: grace)", name);
        else if (!value || util_parse_duration_ms(value, &grace_ms) != 0)
            field_error(errors, "grace", "out_of_range",
                        "grace must be a duration such as 30s, 2m or 0s");
    }
    size_t len = strlen(cid);
    if (len > 128)
        field_error(errors, "correlation_id", "too_long",
                    "a correlation id has at most 128 characters");
    else if (!trace_correlation_id_valid(cid))
        field_error(errors, "correlation_id", "control_characters",
                    "a correlation id is printable ASCII");
    if (json_array_size(errors) > 0) {
        invalid_fields(resp, errors);
        return;
    }
    json_decref(errors);
    trace_tree t;
    char err[512], detail[600];
    trace_tree_init(&t, cid);
    if (trace_collect(task_store_bus_config(store), &t, cancel, err, sizeof(err)) != 0) {
        snprintf(detail, sizeof(detail), "cannot read the event log: %s", err);
        api_problem(resp, 500, "storage-failed", "Internal Server Error", detail, NULL);
    } else if (t.count == 0) {
        snprintf(detail, sizeof(detail), "no event with correlation id '%s'", cid);
        api_problem(resp, 404, "not-found", "Not Found", detail, NULL);
    } else {
        trace_tree_build(&t, util_now_ms(), grace_ms);
        resp->status = 200;
        resp->body = dump(trace_tree_to_json(&t));
    }
    trace_tree_release(&t);
}

/* ---- routing ------------------------------------------------------------ */

static int task_id_valid(const char *s, size_t n)
{
    if (n == 0 || n > TASK_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

static void method_not_allowed(api_response *resp, const char *method, const char *allow)
{
    char detail[160];
    snprintf(detail, sizeof(detail), "method %.16s is not allowed here; allowed: %s", method,
             allow);
    api_problem(resp, 405, "method-not-allowed", "Method Not Allowed", detail, NULL);
    resp->allow = allow;
}

static void not_found(api_response *resp, const char *path)
{
    char detail[200];
    snprintf(detail, sizeof(detail), "no resource at '%.120s'", path);
    api_problem(resp, 404, "not-found", "Not Found", detail, NULL);
}

void api_readyz(const api_request *req, api_ready_fn fn, void *arg, api_response *resp)
{
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        method_not_allowed(resp, req->method, "GET, HEAD");
        return;
    }
    json_t *checks = json_array();
    int ok = fn ? fn(arg, checks) : 0;
    json_t *body = json_object();
    if (ok) {
        json_object_set_new(body, "status", json_string("ready"));
        json_object_set_new(body, "checks", checks);
        resp->status = 200;
        resp->body = dump(body);
        return;
    }
    char detail[1024];
    size_t len = (size_t)snprintf(detail, sizeof(detail), "%s",
                                  fn ? "failing checks:" : "the server is starting");
    size_t i;
    json_t *c;
    json_array_foreach(checks, i, c)
    {
        const char *status = json_string_value(json_object_get(c, "status"));
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *why = json_string_value(json_object_get(c, "detail"));
        if (!status || strcmp(status, "ok") == 0 || len >= sizeof(detail))
            continue;
        len += (size_t)snprintf(detail + len, sizeof(detail) - len, "%s %s (%s)",
                                len > sizeof("failing checks:") - 1 ? ";" : "", name ? name : "?",
                                why ? why : "failed");
    }
    json_object_set_new(body, "type", json_string("urn:herald:problem:not-ready"));
    json_object_set_new(body, "title", json_string("Service Unavailable"));
    json_object_set_new(body, "status", json_integer(503));
    json_object_set_new(body, "detail", json_string(detail));
    json_object_set_new(body, "checks", checks);
    resp->status = 503;
    resp->problem = 1;
    resp->body = dump(body);
}

/*
 * Route templates, for metrics labels: a "{name}" segment matches one
 * non-empty path segment. A row with a label counts its pattern under that
 * label ("/tasks/" is served as "/tasks").
 */
static const struct route_template {
    const char *pattern;
    const char *label; /* NULL: the pattern */
} route_templates[] = {
    {"/healthz", NULL},           {"/metrics", NULL},    {"/tasks", NULL},
    {"/tasks/", "/tasks"},        {"/tasks/{id}", NULL}, {"/tasks/{id}/complete", NULL},
    {"/tasks/{id}/events", NULL}, {"/readyz", NULL},     {"/traces/{correlation_id}", NULL},
};

static int template_matches(const char *pattern, const char *path)
{
    while (*pattern && *path) {
        if (*pattern == '{') {
            pattern = strchr(pattern, '}');
            if (!pattern || *path == '/')
                return 0;
            pattern++;
            path += strcspn(path, "/");
        } else if (*pattern++ != *path++) {
            return 0;
        }
    }
    return !*pattern && !*path;
}

const char *api_route_template(const char *path)
{
    for (size_t i = 0; path && i < UTIL_ARRAY_LEN(route_templates); i++)
        if (template_matches(route_templates[i].pattern, path))
            return route_templates[i].label ? route_templates[i].label : route_templates[i].pattern;
    return "unknown";
}

/* GET /metrics: the Prometheus text exposition of this process. */
static void metrics_page(api_response *resp)
{
    resp->status = 200;
    resp->body = metrics_render(NULL);
    resp->content_type = METRICS_CONTENT_TYPE;
}

int api_is_trace(const api_request *req)
{
    return strncmp(req->path, "/traces/", 8) == 0 && req->path[8];
}

void api_trace(task_store *store, const api_request *req, const atomic_int *cancel,
               api_response *resp)
{
    if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0)
        get_trace(store, req, req->path + 8, cancel, resp);
    else
        method_not_allowed(resp, req->method, "GET, HEAD");
}

api_pending *api_handle(task_store *store, const api_request *req, api_response *resp)
{
    const char *m = req->method;
    const char *path = req->path;
    int get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0;
    if (strcmp(path, "/healthz") == 0) {
        if (!get) {
            method_not_allowed(resp, m, "GET, HEAD");
        } else {
            resp->status = 200;
            resp->body = xstrdup("{\"status\":\"ok\"}");
        }
        return NULL;
    }
    if (strcmp(path, "/metrics") == 0) {
        if (get)
            metrics_page(resp);
        else
            method_not_allowed(resp, m, "GET, HEAD");
        return NULL;
    }
    if (strcmp(path, "/tasks") == 0 || strcmp(path, "/tasks/") == 0) {
        if (strcmp(m, "POST") == 0)
            return create_task(req, resp);
        if (get)
            list_tasks(store, req, resp);
        else
            method_not_allowed(resp, m, "GET, HEAD, POST");
        return NULL;
    }
    if (api_is_trace(req)) {
        api_trace(store, req, NULL, resp);
        return NULL;
    }
    if (strncmp(path, "/tasks/", 7) != 0) {
        not_found(resp, path);
        return NULL;
    }
    const char *id = path + 7;
    size_t id_len = strcspn(id, "/");
    if (!task_id_valid(id, id_len)) {
        not_found(resp, path);
        return NULL;
    }
    const char *rest = id + id_len;
    char id_buf[TASK_ID_MAX + 1];
    memcpy(id_buf, id, id_len);
    id_buf[id_len] = '\0';
    if (*rest == '\0') {
        if (strcmp(m, "PATCH") == 0)
            return update_task(req, id_buf, resp);
        if (strcmp(m, "DELETE") == 0)
            return simple_change(req, id_buf, STORE_DELETE, resp);
        if (get)
            get_task(store, id_buf, resp);
        else
            method_not_allowed(resp, m, "GET, HEAD, PATCH, DELETE");
    } else if (strcmp(rest, "/complete") == 0) {
        if (strcmp(m, "POST") == 0)
            return simple_change(req, id_buf, STORE_COMPLETE, resp);
        method_not_allowed(resp, m, "POST");
    } else if (strcmp(rest, "/events") == 0) {
        if (get)
            task_events(store, id_buf, resp);
        else
            method_not_allowed(resp, m, "GET, HEAD");
    } else {
        not_found(resp, path);
    }
    return NULL;
}

void api_handle_sync(task_store *store, const api_request *req, api_response *resp)
{
    api_pending *p = api_handle(store, req, resp);
    if (!p)
        return;
    if (task_store_execute(store, api_pending_request(p)) != 0)
        api_cancel(p, resp);
    else
        api_finish(p, resp);
}
