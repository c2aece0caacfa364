/*
 * trace.c - the causal tree of one correlation id (see trace.h).
 *
 * Design
 * - Collecting, embedded log: a read-only SQLite connection to
 *   DATA_DIR/bus.db, one read transaction (a WAL snapshot: writers go on
 *   undisturbed) over every topic table whose name matches
 *   TRACE_TOPIC_PATTERN. Records carrying the ce_correlationid header
 *   (everything herald publishes) are filtered in SQL by the id's bytes in
 *   the header blob and then compared exactly in C, so the envelopes of
 *   other requests are never parsed; records without it (other producers,
 *   dead letters) are decoded and compared in full.
 * - Collecting, Kafka: a throw-away consumer through bus.h (group NULL: no
 *   commits) on the same pattern from the earliest offset, read until
 *   bus_consumer_caught_up() says every partition is at its high watermark
 *   (at most KAFKA_READ_LIMIT_MS).
 * - Building: nodes are sorted by (occurred_at, event_id); an open-addressing
 *   table maps event ids to nodes. Depths are computed iteratively (walk up
 *   to a known depth, then unwind), which also finds cycles; nothing here or
 *   in the output recurses, so a hostile chain cannot exhaust a stack (the
 *   API's threads have small ones). jansson's dumper does recurse, which is
 *   one reason for TRACE_MAX_DEPTH.
 *
 * Ownership: the tree owns its nodes' events (moved in by trace_tree_add).
 */
#include "trace/trace.h"

#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"

#include <inttypes.h>
#include <regex.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define KAFKA_READ_LIMIT_MS 60000
#define KAFKA_WATERMARK_TIMEOUT_MS 5000
#define CE_CORRELATION_HEADER "ce_correlationid"

int trace_correlation_id_valid(const char *cid)
{
    size_t n = 0;
    if (!cid)
        return 0;
    for (const unsigned char *p = (const unsigned char *)cid; *p; p++, n++)
        if (*p < 0x20 || *p > 0x7e)
            return 0;
    return n >= 1 && n <= 128;
}

/* ---- the tree ------------------------------------------------------------ */

void trace_tree_init(trace_tree *t, const char *cid)
{
    memset(t, 0, sizeof(*t));
    t->correlation_id = xstrdup(cid);
}

void trace_tree_release(trace_tree *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->count; i++) {
        event_release(&t->nodes[i].ev);
        free(t->nodes[i].children);
    }
    free(t->nodes);
    free(t->roots);
    free(t->index_);
    free(t->correlation_id);
    memset(t, 0, sizeof(*t));
}

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The node with event_id id, or TRACE_NONE. */
static size_t find(const trace_tree *t, const char *id)
{
    if (t->index_cap_ == 0)
        return TRACE_NONE;
    size_t mask = t->index_cap_ - 1;
    for (size_t i = hash_id(id) & mask;; i = (i + 1) & mask) {
        size_t slot = t->index_[i];
        if (slot == 0)
            return TRACE_NONE;
        if (strcmp(t->nodes[slot - 1].ev.event_id, id) == 0)
            return slot - 1;
    }
}

static void index_put(trace_tree *t, size_t idx)
{
    size_t mask = t->index_cap_ - 1;
    size_t i = hash_id(t->nodes[idx].ev.event_id) & mask;
    while (t->index_[i])
        i = (i + 1) & mask;
    t->index_[i] = idx + 1;
}

/* Rebuild the index for the current node order, with room to grow. */
static void reindex(trace_tree *t, size_t want)
{
    size_t cap = 16;
    while (cap < want * 2)
        cap *= 2;
    free(t->index_);
    t->index_ = xcalloc(cap, sizeof(*t->index_));
    t->index_cap_ = cap;
    for (size_t i = 0; i < t->count; i++)
        index_put(t, i);
}

void trace_tree_add(trace_tree *t, event *ev, int from_dlq)
{
    size_t at = find(t, ev->event_id);
    if (at != TRACE_NONE) {
        if (from_dlq)
            t->nodes[at].dead_lettered = 1;
        event_release(ev);
        return;
    }
    if (t->count >= TRACE_MAX_EVENTS) {
        t->truncated = 1;
        event_release(ev);
        return;
    }
    if (t->count == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->nodes = xrealloc(t->nodes, t->cap * sizeof(*t->nodes));
    }
    trace_node *n = &t->nodes[t->count];
    memset(n, 0, sizeof(*n));
    n->ev = *ev;
    *ev = (event)EVENT_INIT;
    n->dead_lettered = from_dlq;
    n->parent = TRACE_NONE;
    t->count++;
    if (t->count * 2 > t->index_cap_)
        reindex(t, t->count * 2);
    else
        index_put(t, t->count - 1);
}

static int node_cmp(const void *a, const void *b)
{
    const trace_node *x = a, *y = b;
    if (x->ev.occurred_ms != y->ev.occurred_ms)
        return x->ev.occurred_ms < y->ev.occurred_ms ? -1 : 1;
    return strcmp(x->ev.event_id, y->ev.event_id);
}

static int has_child_of_type(const trace_tree *t, const trace_node *n, const char *type)
{
    for (size_t i = 0; i < n->child_count; i++)
        if (strcmp(t->nodes[n->children[i]].ev.event_type, type) == 0)
            return 1;
    return 0;
}

/* The follow-up n should have by now, or NULL. */
static const char *expected_follow_up(const trace_tree *t, const trace_node *n)
{
    if (t->now_ms - n->ev.occurred_ms < t->grace_ms)
        return NULL;
    if (strcmp(n->ev.event_type, "task.created") == 0 &&
        !has_child_of_type(t, n, "notification.sent"))
        return "notification.sent";
    if (strcmp(n->ev.event_type, "notification.sent") == 0) {
        json_t *channel = n->ev.data ? json_object_get(n->ev.data, "channel") : NULL;
        if (json_is_string(channel) && strcmp(json_string_value(channel), "email") == 0 &&
            !has_child_of_type(t, n, "email.delivered"))
            return "email.delivered";
    }
    return NULL;
}

/*
 * Depth of every node, cutting cycles and chains over TRACE_MAX_DEPTH: walk
 * up from each node until a node of known depth (or a root), then assign
 * depths on the way back. A node met twice on one walk closes a cycle.
 */
static void cut_cycles_and_depth(trace_tree *t)
{
    size_t n = t->count;
    int *depth = xmalloc(n * sizeof(*depth));
    size_t *walk = xmalloc(n * sizeof(*walk)), *on_walk = xmalloc(n * sizeof(*on_walk));
    for (size_t i = 0; i < n; i++) {
        depth[i] = -1;
        on_walk[i] = TRACE_NONE;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = 0, j = i;
        while (depth[j] < 0) {
            if (on_walk[j] == i) { /* a cycle through j: cut it at j */
                t->nodes[j].parent = TRACE_NONE;
                t->nodes[j].cut = 1;
                depth[j] = 0;
                break;
            }
            on_walk[j] = i;
            walk[len++] = j;
            if (t->nodes[j].parent == TRACE_NONE)
                break;
            j = t->nodes[j].parent;
        }
        while (len > 0) {
            size_t k = walk[--len];
            size_t p = t->nodes[k].parent;
            if (depth[k] >= 0)
                continue;
            if (p == TRACE_NONE) {
                depth[k] = 0;
            } else if (depth[p] + 1 > TRACE_MAX_DEPTH) {
                t->nodes[k].parent = TRACE_NONE;
                t->nodes[k].cut = 1;
                depth[k] = 0;
            } else {
                depth[k] = depth[p] + 1;
            }
        }
    }
    free(depth);
    free(walk);
    free(on_walk);
}

void trace_tree_build(trace_tree *t, int64_t now_ms, int64_t grace_ms)
{
    t->now_ms = now_ms;
    t->grace_ms = grace_ms < 0 ? 0 : grace_ms;
    if (t->count > 1)
        qsort(t->nodes, t->count, sizeof(*t->nodes), node_cmp);
    reindex(t, t->count);
    t->start_ms = t->count ? t->nodes[0].ev.occurred_ms : 0;
    for (size_t i = 0; i < t->count; i++) {
        trace_node *n = &t->nodes[i];
        const char *cause = n->ev.causation_id;
        n->parent = find(t, cause);
        n->orphan = n->parent == TRACE_NONE && event_uuid_valid(cause) &&
                    strcmp(cause, n->ev.correlation_id) != 0;
    }
    cut_cycles_and_depth(t);
    /* children in time order: nodes are sorted, so append in index order */
    size_t *counts = xcalloc(t->count ? t->count : 1, sizeof(*counts));
    for (size_t i = 0; i < t->count; i++)
        if (t->nodes[i].parent != TRACE_NONE)
            counts[t->nodes[i].parent]++;
    t->roots = xmalloc((t->count ? t->count : 1) * sizeof(*t->roots));
    t->root_count = t->orphan_count = t->missing_count = 0;
    for (size_t i = 0; i < t->count; i++)
        t->nodes[i].children = counts[i] ? xmalloc(counts[i] * sizeof(size_t)) : NULL;
    for (size_t i = 0; i < t->count; i++) {
        trace_node *n = &t->nodes[i];
        if (n->parent == TRACE_NONE)
            t->roots[t->root_count++] = i;
        else
            t->nodes[n->parent].children[t->nodes[n->parent].child_count++] = i;
        t->orphan_count += n->orphan;
    }
    free(counts);
    for (size_t i = 0; i < t->count; i++) {
        t->nodes[i].missing = expected_follow_up(t, &t->nodes[i]);
        t->missing_count += t->nodes[i].missing != NULL;
    }
    t->built = 1;
}

/* ---- output ------------------------------------------------------------- */

static json_t *node_json(const trace_tree *t, const trace_node *n)
{
    char when[EVENT_TIME_LEN + 1];
    event_format_time(n->ev.occurred_ms, when);
    json_t *o = json_object();
    json_object_set_new(o, "event_id", json_string(n->ev.event_id));
    json_object_set_new(o, "event_type", json_string(n->ev.event_type));
    json_object_set_new(o, "source", json_string(n->ev.source));
    json_object_set_new(o, "occurred_at", json_string(when));
    json_object_set_new(o, "offset_ms", json_integer(n->ev.occurred_ms - t->start_ms));
    json_object_set_new(o, "causation_id", json_string(n->ev.causation_id));
    if (n->ev.traceparent[0])
        json_object_set_new(o, "traceparent", json_string(n->ev.traceparent));
    if (n->dead_lettered)
        json_object_set_new(o, "dead_lettered", json_true());
    if (n->orphan)
        json_object_set_new(o, "orphan", json_true());
    if (n->cut)
        json_object_set_new(o, "cut", json_true());
    if (n->missing)
        json_object_set_new(o, "missing", json_string(n->missing));
    json_object_set_new(o, "data", n->ev.data ? json_incref(n->ev.data) : json_object());
    json_object_set_new(o, "children", json_array());
    return o;
}

json_t *trace_tree_to_json(const trace_tree *t)
{
    char when[EVENT_TIME_LEN + 1];
    json_t *root = json_object();
    json_object_set_new(root, "correlation_id", json_string(t->correlation_id));
    json_object_set_new(root, "event_count", json_integer((json_int_t)t->count));
    if (t->count) {
        event_format_time(t->start_ms, when);
        json_object_set_new(root, "started_at", json_string(when));
    } else {
        json_object_set_new(root, "started_at", json_null());
    }
    json_object_set_new(root, "grace_ms", json_integer(t->grace_ms));
    json_object_set_new(root, "truncated", json_boolean(t->truncated));
    /* one object per node; each is appended to its parent's children, in
     * index (= time) order, so every array ends up in time order */
    json_t **objs = xmalloc((t->count ? t->count : 1) * sizeof(*objs));
    for (size_t i = 0; i < t->count; i++)
        objs[i] = node_json(t, &t->nodes[i]);
    json_t *roots = json_array(), *orphans = json_array(), *missing = json_array();
    for (size_t i = 0; i < t->count; i++) {
        const trace_node *n = &t->nodes[i];
        json_t *parent =
            n->parent == TRACE_NONE ? roots : json_object_get(objs[n->parent], "children");
        json_array_append(parent, objs[i]);
        if (n->orphan)
            json_array_append_new(orphans, json_pack("{s:s, s:s, s:s}", "event_id", n->ev.event_id,
                                                     "event_type", n->ev.event_type, "causation_id",
                                                     n->ev.causation_id));
        if (n->missing)
            json_array_append_new(missing, json_pack("{s:s, s:s, s:s, s:I}", "event_id",
                                                     n->ev.event_id, "event_type", n->ev.event_type,
                                                     "expected", n->missing, "waited_ms",
                                                     (json_int_t)(t->now_ms - n->ev.occurred_ms)));
    }
    for (size_t i = 0; i < t->count; i++)
        json_decref(objs[i]);
    free(objs);
    json_object_set_new(root, "roots", roots);
    json_object_set_new(root, "orphans", orphans);
    json_object_set_new(root, "missing", missing);
    return root;
}

/* "+12 ms", "+3.4 s", "+2.5 h": time since the start of the trace. */
static void format_offset(int64_t ms, char *out, size_t len)
{
    if (ms < 10000)
        snprintf(out, len, "+%" PRId64 " ms", ms);
    else if (ms < 6000000)
        snprintf(out, len, "+%.1f s", (double)ms / 1000.0);
    else
        snprintf(out, len, "+%.1f h", (double)ms / 3600000.0);
}

/* The short form of an event id: its LAST 8 hex digits. herald's ids are
 * UUIDv7, whose first 8 digits are the time (the same for every event of
 * one request); the last ones are random. */
static const char *short_id(const char *id)
{
    size_t n = strlen(id);
    return n > 8 ? id + n - 8 : id;
}

/* One line; level is the node's depth (each level indents 3 columns),
 * used to keep the source column aligned. */
static void print_node(const trace_tree *t, const trace_node *n, const char *prefix,
                       const char *branch, int level, FILE *out)
{
    char off[32];
    format_offset(n->ev.occurred_ms - t->start_ms, off, sizeof(off));
    int width = 26 - 3 * level;
    fprintf(out, "%s%s%-*s %-10s %s  %s", prefix, branch, width < 1 ? 1 : width, n->ev.event_type,
            n->ev.source, short_id(n->ev.event_id), off);
    json_t *channel = n->ev.data ? json_object_get(n->ev.data, "channel") : NULL;
    if (json_is_string(channel) && strcmp(n->ev.event_type, "notification.sent") == 0) {
        /* event data is anyone's text: no control bytes to the terminal */
        char shown[33];
        size_t k = 0;
        for (const char *c = json_string_value(channel); *c && k < sizeof(shown) - 1; c++)
            shown[k++] = (unsigned char)*c < 0x20 || *c == 0x7f ? '?' : *c;
        shown[k] = '\0';
        fprintf(out, "  channel=%s", shown);
    }
    if (n->dead_lettered)
        fputs("  [dead-lettered]", out);
    if (n->orphan)
        fprintf(out, "  [orphan: cause %s not found]", short_id(n->ev.causation_id));
    if (n->cut)
        fputs("  [cut: cycle or too deep]", out);
    if (n->missing)
        fprintf(out, "  [missing: %s]", n->missing);
    fputc('\n', out);
}

/*
 * Depth-first without recursion: a stack of (node, index of next child);
 * the prefix string grows by one 4-byte segment per level ("|   " or
 * "    ", box-drawing characters in UTF-8).
 */
void trace_tree_print(const trace_tree *t, FILE *out)
{
    fprintf(out, "trace %s: %zu event%s, %zu root%s", t->correlation_id, t->count,
            t->count == 1 ? "" : "s", t->root_count, t->root_count == 1 ? "" : "s");
    if (t->truncated)
        fprintf(out, " (truncated at %d events)", TRACE_MAX_EVENTS);
    fputc('\n', out);
    typedef struct frame {
        size_t node, next;
    } frame;
    frame *stack = xmalloc((TRACE_MAX_DEPTH + 2) * sizeof(*stack));
    /* each level adds at most 6 bytes ("│   " is 3 + 3 spaces) */
    char *prefix = xmalloc((TRACE_MAX_DEPTH + 2) * 8);
    size_t *prefix_len = xmalloc((TRACE_MAX_DEPTH + 2) * sizeof(*prefix_len));
    for (size_t r = 0; r < t->root_count; r++) {
        const trace_node *root = &t->nodes[t->roots[r]];
        print_node(t, root, "", "", 0, out);
        size_t depth = 0;
        stack[0] = (frame){t->roots[r], 0};
        prefix[0] = '\0';
        prefix_len[0] = 0;
        while (1) {
            frame *f = &stack[depth];
            const trace_node *n = &t->nodes[f->node];
            if (f->next >= n->child_count) {
                if (depth == 0)
                    break;
                depth--;
                continue;
            }
            size_t c = n->children[f->next++];
            int last = f->next == n->child_count;
            prefix[prefix_len[depth]] = '\0';
            print_node(t, &t->nodes[c], prefix, last ? "└─ " : "├─ ", (int)depth + 1, out);
            if (t->nodes[c].child_count > 0 && depth + 1 <= TRACE_MAX_DEPTH) {
                const char *seg = last ? "   " : "│  ";
                size_t sl = strlen(seg);
                memcpy(prefix + prefix_len[depth], seg, sl + 1);
                prefix_len[depth + 1] = prefix_len[depth] + sl;
                depth++;
                stack[depth] = (frame){c, 0};
            }
        }
    }
    free(stack);
    free(prefix);
    free(prefix_len);
    if (t->orphan_count) {
        fprintf(out, "orphans (causation_id names no event of this trace):\n");
        for (size_t i = 0; i < t->count; i++)
            if (t->nodes[i].orphan)
                fprintf(out, "  %s %s caused by %s\n", t->nodes[i].ev.event_type,
                        t->nodes[i].ev.event_id, t->nodes[i].ev.causation_id);
    }
    if (t->missing_count) {
        fprintf(out, "missing follow-ups (after %" PRId64 " ms):\n", t->grace_ms);
        for (size_t i = 0; i < t->count; i++)
            if (t->nodes[i].missing)
                fprintf(out, "  %s %s has no %s\n", t->nodes[i].ev.event_type,
                        t->nodes[i].ev.event_id, t->nodes[i].missing);
    }
}

/* ---- collecting ----------------------------------------------------------- */

/* Whether topic is a dead-letter topic. */
static int is_dlq(const char *topic)
{
    size_t n = strlen(topic);
    return n > 4 && strcmp(topic + n - 4, ".dlq") == 0;
}

/*
 * One record: when it carries the correlation header, compare that (the
 * value is parsed only on a match); otherwise decode and compare.
 */
static void consider(trace_tree *t, const char *topic, const char *value, size_t value_len,
                     const unsigned char *headers, size_t headers_len)
{
    bus_message m = {0};
    m.headers = headers;
    m.headers_len = headers_len;
    const char *hv;
    size_t hl;
    if (bus_message_header(&m, CE_CORRELATION_HEADER, &hv, &hl) &&
        (hl != strlen(t->correlation_id) || memcmp(hv, t->correlation_id, hl) != 0))
        return;
    event ev = EVENT_INIT;
    char err[256];
    if (event_decode(&ev, value, value_len, err, sizeof(err)) != 0) {
        LOG_DEBUG("trace: skipping a record of %s: %s", topic, err);
        return;
    }
    if (strcmp(ev.correlation_id, t->correlation_id) != 0) {
        event_release(&ev);
        return;
    }
    trace_tree_add(t, &ev, is_dlq(topic));
}

/* sqlite3_progress_handler(): a non-zero answer interrupts the statement. */
static int sqlite_cancelled(void *cancel)
{
    return atomic_load((const atomic_int *)cancel) != 0;
}

static int collect_sqlite(const bus_config *cfg, trace_tree *t, const atomic_int *cancel, char *err,
                          size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, BUS_LOG_FILE);
    sqlite3 *db = NULL;
    sqlite3_stmt *topics = NULL, *rows = NULL;
    regex_t re;
    int have_re = 0, rc = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        util_error(err, errlen, "cannot open event log '%s': %s", path,
                   db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(db, 5000);
    if (cancel)
        sqlite3_progress_handler(db, 10000, sqlite_cancelled, (void *)cancel);
    if (regcomp(&re, TRACE_TOPIC_PATTERN, REG_EXTENDED | REG_NOSUB) != 0) {
        util_error(err, errlen, "cannot compile the topic pattern");
        goto out;
    }
    have_re = 1;
    /* one snapshot for every topic */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT id, name FROM topics ORDER BY id", -1, &topics, NULL) !=
            SQLITE_OK) {
        util_error(err, errlen, "cannot read the topics of '%s': %s", path, sqlite3_errmsg(db));
        goto out;
    }
    int step;
    while ((step = sqlite3_step(topics)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(topics, 1);
        if (!name || regexec(&re, name, 0, NULL, 0) != 0)
            continue;
        char table[32], sql[256];
        bus_log_topic_table(sqlite3_column_int64(topics, 0), table, sizeof(table));
        /* herald's records: the header blob must hold the id's bytes; the
         * others are all read and decoded */
        snprintf(sql, sizeof(sql),
                 "SELECT value, headers FROM %s WHERE headers IS NULL"
                 " OR instr(headers, CAST(?1 AS BLOB)) = 0 OR instr(headers, CAST(?2 AS BLOB)) > 0"
                 " ORDER BY id",
                 table);
        if (sqlite3_prepare_v2(db, sql, -1, &rows, NULL) != SQLITE_OK) {
            util_error(err, errlen, "cannot read topic '%s': %s", name, sqlite3_errmsg(db));
            goto out;
        }
        sqlite3_bind_text(rows, 1, CE_CORRELATION_HEADER, -1, SQLITE_STATIC);
        sqlite3_bind_text(rows, 2, t->correlation_id, -1, SQLITE_STATIC);
        while ((step = sqlite3_step(rows)) == SQLITE_ROW) {
            const char *value = sqlite3_column_blob(rows, 0);
            size_t value_len = (size_t)sqlite3_column_bytes(rows, 0);
            const unsigned char *headers = sqlite3_column_blob(rows, 1);
            size_t headers_len = (size_t)sqlite3_column_bytes(rows, 1);
            consider(t, name, value ? value : "", value_len, headers, headers_len);
            if (t->truncated)
                break;
        }
        if (step != SQLITE_ROW && step != SQLITE_DONE) {
            util_error(err, errlen, "cannot read topic '%s': %s", name, sqlite3_errmsg(db));
            goto out;
        }
        sqlite3_finalize(rows);
        rows = NULL;
    }
    if (step != SQLITE_DONE) {
        util_error(err, errlen, "cannot read the topics of '%s': %s", path, sqlite3_errmsg(db));
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(rows);
    sqlite3_finalize(topics);
    if (db)
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close_v2(db);
    if (have_re)
        regfree(&re);
    return rc;
}

static int collect_bus(const bus_config *cfg, trace_tree *t, const atomic_int *cancel, char *err,
                       size_t errlen)
{
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.pattern = TRACE_TOPIC_PATTERN;
    sub.reset = BUS_RESET_EARLIEST;
    bus_consumer *c = bus_consumer_open(cfg, &sub, err, errlen);
    if (!c)
        return -1;
    int64_t deadline = util_monotonic_ns() / 1000000 + KAFKA_READ_LIMIT_MS;
    int rc = -1;
    for (;;) {
        const bus_message *msgs;
        size_t n;
        if (bus_consumer_poll(c, 200, &msgs, &n, err, errlen) != 0)
            break;
        for (size_t i = 0; i < n; i++)
            consider(t, msgs[i].topic, msgs[i].value, msgs[i].value_len, msgs[i].headers,
                     msgs[i].headers_len);
        if (cancel && atomic_load(cancel)) {
            util_error(err, errlen, "cancelled");
            break;
        }
        if (n > 0)
            continue;
        int end = bus_consumer_caught_up(c, KAFKA_WATERMARK_TIMEOUT_MS, err, errlen);
        if (end < 0)
            break;
        if (end) {
            rc = 0;
            break;
        }
        if (util_monotonic_ns() / 1000000 > deadline) {
            util_error(err, errlen, "Kafka: the topics were not read to their end within %d s",
                       KAFKA_READ_LIMIT_MS / 1000);
            break;
        }
    }
    bus_consumer_close(c);
    return rc;
}

int trace_collect(const bus_config *cfg, trace_tree *t, const atomic_int *cancel, char *err,
                  size_t errlen)
{
    if (cfg->kind == BUS_SQLITE)
        return collect_sqlite(cfg, t, cancel, err, errlen);
    return collect_bus(cfg, t, cancel, err, errlen);
}
