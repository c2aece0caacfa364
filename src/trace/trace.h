/*
 * trace.h - the causal tree of one request: every event with a given
 * correlation id, each under the event named by its causation_id.
 *
 *   trace_tree t;
 *   trace_tree_init(&t, "req-abc-123");
 *   trace_collect(&cfg, &t, err, sizeof(err));   -- or trace_tree_add() each event
 *   trace_tree_build(&t, util_now_ms(), grace_ms);
 *   trace_tree_print(&t, stdout)  /  json_t *j = trace_tree_to_json(&t);
 *   trace_tree_release(&t);
 *
 * Roots: events whose cause is not an event of the trace: a call such as
 * "api-create-<task_id>" or the correlation id itself (herald publish), and
 * orphans. An orphan is an event whose causation_id has the form of an
 * event id (a UUID) that no event of the trace has; it is flagged, and shown
 * as a root. A causal cycle (only possible with hand-made events) is cut at
 * its earliest event, and chains deeper than TRACE_MAX_DEPTH are cut too
 * (the cut node becomes a root, flagged "cut").
 *
 * Missing follow-ups, once an event is older than the grace period: a
 * task.created without a notification.sent child, and a notification.sent
 * with data.channel "email" without an email.delivered child.
 *
 * Threads: a trace_tree belongs to one thread; trace_collect() opens its
 * own connections, so concurrent calls are fine.
 */
#ifndef HERALD_TRACE_H
#define HERALD_TRACE_H

#include "bus/bus.h"
#include "event/event.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

/* Topics read: every domain topic and its dead letters. */
#define TRACE_TOPIC_PATTERN "^.*-events(\\.dlq)?$"
/* Most events kept in one trace (more: truncated is set). */
#define TRACE_MAX_EVENTS 10000
/* Deepest causal chain shown as one branch. */
#define TRACE_MAX_DEPTH 64
/* Default grace period before a follow-up counts as missing. */
#define TRACE_DEFAULT_GRACE_MS 30000

#define TRACE_NONE ((size_t)-1)

typedef struct trace_node {
    event ev;          /* the event, with its data */
    int dead_lettered; /* a copy of it is in a .dlq topic */
    int orphan;        /* its causation_id names an event id that is not here */
    int cut;           /* its cause is here, but a cycle or the depth limit cut it off */
    size_t parent;     /* index of the cause in nodes[], or TRACE_NONE */
    size_t *children;  /* indexes, in time order */
    size_t child_count;
    const char *missing; /* the event type of a missing follow-up, or NULL */
} trace_node;

typedef struct trace_tree {
    char *correlation_id;
    trace_node *nodes; /* after build: in (occurred_at, event_id) order */
    size_t count, cap;
    int truncated; /* more than TRACE_MAX_EVENTS events */
    /* filled by trace_tree_build() */
    size_t *roots;
    size_t root_count;
    size_t orphan_count, missing_count;
    int64_t start_ms; /* occurred_at of the earliest event */
    int64_t grace_ms, now_ms;
    int built;
    /* private: event_id -> index + 1, open addressing */
    size_t *index_;
    size_t index_cap_;
} trace_tree;

/* Start an empty tree for correlation id cid (copied). */
void trace_tree_init(trace_tree *t, const char *cid);

/* Free everything; t is left empty (init again to reuse). NULL is a no-op. */
void trace_tree_release(trace_tree *t);

/*
 * Add an event of the trace (its correlation id is not checked here). ev is
 * moved into the tree (left EVENT_INIT). An event_id already present is
 * merged: from_dlq marks the node dead-lettered, and the copy is dropped.
 * Past TRACE_MAX_EVENTS the event is dropped and t->truncated set. Must be
 * called before trace_tree_build().
 */
void trace_tree_add(trace_tree *t, event *ev, int from_dlq);

/*
 * Link every event to its cause, find roots, orphans, cycles, and missing
 * follow-ups of events that occurred at least grace_ms before now_ms.
 */
void trace_tree_build(trace_tree *t, int64_t now_ms, int64_t grace_ms);

/*
 * The tree as JSON (caller owns the reference): {"correlation_id",
 * "event_count", "started_at", "grace_ms", "truncated", "roots": [node...],
 * "orphans": [...], "missing": [...]}; a node is {"event_id",
 * "event_type", "source", "occurred_at", "offset_ms", "causation_id",
 * "traceparent"?, "dead_lettered"?, "orphan"?, "cut"?, "missing"?, "data",
 * "children": [node...]}. Built without recursion.
 */
json_t *trace_tree_to_json(const trace_tree *t);

/* Print the tree as text (one line per event, indented under its cause,
 * then the orphans and missing follow-ups). */
void trace_tree_print(const trace_tree *t, FILE *out);

/*
 * Read every event with t's correlation id from the bus into t: the
 * embedded log through a read-only connection (one snapshot of every topic
 * matching TRACE_TOPIC_PATTERN; never blocks a writer), or Kafka through a
 * throw-away consumer (no group commits) from the earliest offsets up to the
 * end offsets (a few seconds, most of it the group join; at most 60 s).
 * Records that are not envelopes are skipped. cancel (NULL: none) is
 * watched while reading: once it is non-zero the read stops soon and fails
 * ("cancelled"). Returns 0 (t may be empty), or -1 with err filled.
 */
int trace_collect(const bus_config *cfg, trace_tree *t, const atomic_int *cancel, char *err,
                  size_t errlen);

/* A correlation id as the Task API accepts it: 1..128 printable ASCII. */
int trace_correlation_id_valid(const char *cid);

#endif
