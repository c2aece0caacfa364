/*
 * event.h - the event envelope: ids, clock, naming rules and the JSON codec.
 *
 * Every change in herald is published as one immutable event whose JSON is
 * exactly the envelope of the original Python design:
 *
 *   {"event_id": "<uuid>", "event_type": "task.created",
 *    "occurred_at": "2025-01-15T14:30:22.456Z",
 *    "data": {...},
 *    "metadata": {"correlation_id": "...", "causation_id": "...",
 *                 "source": "task-api"}}
 *
 * with, when the event belongs to a W3C trace, "traceparent" (and
 * "tracestate") after "source" inside metadata: consumers written for the
 * original design read only their three keys and ignore them.
 *
 * An event is a plain value (struct event) with owned members; build one
 * with event_build() or event_decode(), release it with event_release().
 * Nothing here keeps global state except the UUIDv7 generator (thread-safe).
 */
#ifndef HERALD_EVENT_H
#define HERALD_EVENT_H

#include "event/tracecontext.h"

#include "common/json_text.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Largest encoded envelope accepted by event_decode(), in bytes. */
#define EVENT_MAX_BYTES (1024 * 1024)
/* Longest event type ("domain.action"). */
#define EVENT_TYPE_MAX 128
/* Longest correlation_id / causation_id. */
#define EVENT_REF_ID_MAX 256
/* Longest source name. */
#define EVENT_SOURCE_MAX 128
/* Text length of a UUID (8-4-4-4-12) and of a formatted occurred_at. */
#define EVENT_UUID_LEN 36
#define EVENT_TIME_LEN 24

typedef struct event {
    char event_id[EVENT_UUID_LEN + 1];
    char event_type[EVENT_TYPE_MAX + 1];
    int64_t occurred_ms;    /* ms since the Unix epoch, UTC */
    json_t *data;           /* owned reference; always a JSON object */
    char *correlation_id;   /* owned */
    char *causation_id;     /* owned */
    char *source;           /* owned */
    json_t *metadata_extra; /* owned; NULL or an object holding any
                               other metadata keys, kept on round trip */
    /* W3C Trace Context (metadata.traceparent / .tracestate): "" / NULL
     * when the event has none. traceparent is always a valid version-00
     * value (tracecontext.h) naming the span that published the event;
     * tracestate (owned) is only ever set together with it. */
    char traceparent[TRACE_PARENT_LEN + 1];
    char *tracestate;
} event;

/* clang-format off */
#define EVENT_INIT { {0}, {0}, 0, NULL, NULL, NULL, NULL, NULL, {0}, NULL }
/* clang-format on */

/* ---- life cycle ------------------------------------------------------- */

/*
 * Build a new event: a fresh UUIDv7 event_id, occurred_at = now, and the
 * given type, data and metadata. The type must pass event_type_check()
 * (past tense). data must be a JSON object; the event takes its own
 * reference (the caller keeps theirs, and must not modify the object
 * afterwards: events are immutable). correlation_id NULL generates a new
 * UUID; causation_id NULL uses the correlation id (the request itself caused
 * the event). source must be non-empty. Ids must be 1..EVENT_REF_ID_MAX
 * printable characters. Returns 0, or -1 with a message in err and *ev left
 * as EVENT_INIT.
 */
int event_build(event *ev, const char *type, json_t *data, const char *correlation_id,
                const char *causation_id, const char *source, char *err, size_t errlen);

/*
 * event_build() without data (ev->data stays NULL), for a producer that has
 * its data as C values and writes the object straight into the encoded
 * text with event_encode_with(). Same checks and results otherwise.
 */
int event_build_head(event *ev, const char *type, const char *correlation_id,
                     const char *causation_id, const char *source, char *err, size_t errlen);

/* Free the members of ev and reset it to EVENT_INIT. NULL is a no-op. */
void event_release(event *ev);

/* Deep copy src into dst (dst must be EVENT_INIT or released). */
void event_copy(event *dst, const event *src);

/*
 * Set ev's trace context: traceparent must be a valid version-00 value
 * (trace_parent_valid()); tracestate (may be NULL) is kept only if
 * trace_state_valid(). traceparent NULL clears both. Returns 0, or -1 (ev
 * unchanged) when traceparent is not valid.
 */
int event_set_trace(event *ev, const char *traceparent, const char *tracestate);

/* ---- JSON codec ------------------------------------------------------- */

/*
 * Encode ev as compact JSON with exactly the envelope keys, in envelope
 * order (inside metadata: correlation_id, causation_id, source, then
 * traceparent and tracestate when set, then the metadata_extra keys). Returns a
 * malloc'd NUL-terminated string the caller frees; *len_out (if non-NULL)
 * receives its length.
 */
char *event_encode(const event *ev, size_t *len_out);

/* Writes an event's data: exactly one JSON object, to w. */
typedef void (*event_data_writer)(json_text *w, const void *arg);

/*
 * event_encode() of an event without data (event_build_head) whose data
 * object write_data(w, arg) writes in place. NULL if the writer wrote
 * something other than one object.
 */
char *event_encode_with(const event *ev, event_data_writer write_data, const void *arg,
                        size_t *len_out);

/* The envelope as a new JSON object (caller owns the reference). */
json_t *event_to_json(const event *ev);

/*
 * Decode and validate an envelope from len bytes of JSON text (need not be
 * NUL-terminated). Rejects, with a message naming the field: input over
 * EVENT_MAX_BYTES, malformed JSON (with line, column and byte position), a
 * top level that is not an object, a missing key, a wrong type, a bad UUID
 * event_id, an event_type that is not "domain.action" syntax (past tense is
 * NOT required here: events from other producers are accepted), an
 * occurred_at that is not an RFC 3339 timestamp, data that is not an object,
 * metadata ids that are empty, too long or hold control characters.
 * Unknown top-level keys are ignored; unknown metadata keys are kept in
 * metadata_extra. metadata.traceparent becomes ev->traceparent when it is a
 * valid version-00 traceparent, and metadata.tracestate ev->tracestate when
 * that holds and trace_state_valid(); otherwise (another producer's
 * format) they are kept as they are in metadata_extra and the event counts
 * as having no trace context. Events without them are accepted as before. Returns 0, or -1 with err
 * filled and *ev as EVENT_INIT.
 */
int event_decode(event *ev, const char *json, size_t len, char *err, size_t errlen);

/* As event_decode() but from an already parsed object (borrowed). */
int event_from_json(event *ev, json_t *root, char *err, size_t errlen);

/* ---- naming rules ----------------------------------------------------- */

/*
 * Syntax of an event type: "domain.action", each side [a-z][a-z0-9_]*,
 * at most EVENT_TYPE_MAX characters. Returns 0 or -1 with err filled.
 */
int event_type_check_syntax(const char *type, char *err, size_t errlen);

/*
 * The full rule for types herald publishes: syntax as above and an action
 * in the past tense (its last '_'-separated word is a regular "-ed" form or
 * one of the known irregular past forms such as "sent", "paid", "built"; the
 * state word "due" is also allowed). An imperative is refused with a
 * suggestion: "task.create" -> "... did you mean 'task.created'?".
 */
int event_type_check(const char *type, char *err, size_t errlen);

/*
 * Write the topic of an event type, "<domain>-events", into topic[topiclen].
 * Returns 0, or -1 if the type has no '.' or the buffer is too small.
 */
int event_topic_for_type(const char *type, char *topic, size_t topiclen);

/* ---- ids and clock ---------------------------------------------------- */

/* A new time-ordered UUIDv7 (RFC 9562), lowercase text, NUL-terminated.
 * Ids from one process are strictly increasing. Thread-safe. */
void event_uuid_v7(char out[EVENT_UUID_LEN + 1]);

/* 1 if s is a UUID in 8-4-4-4-12 hex form (either case), else 0. */
int event_uuid_valid(const char *s);

/* Format ms since the epoch as "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC). */
void event_format_time(int64_t ms, char out[EVENT_TIME_LEN + 1]);

/*
 * Parse an RFC 3339 timestamp ("2025-01-15T14:30:22.456Z", any number of
 * fraction digits or none, 'Z' or a +hh:mm / -hh:mm offset; 't'/'z' and a
 * space for 'T' are accepted) into ms since the epoch, truncating below a
 * millisecond. Checks field ranges, including the days of each month.
 * Returns 0 or -1.
 */
int event_parse_time(const char *s, int64_t *ms_out);

#endif
