/*
 * audit.c - the audit agent: every event of every <domain>-events topic,
 * unfiltered, as one hash-chained line of AUDIT_DIR/audit-YYYY-MM-DD.jsonl
 * (format, chain and crash recovery: audit_log.h).
 *
 * Design
 * - Group audit-log, pattern ^.*-events$ (the .dlq topics do not match),
 *   every type, batches of AUDIT_MAX_BATCH records.
 * - handle() adds the line to the writer's batch buffer (the envelope bytes
 *   of the bus record, as received) and notes what to log; before_commit()
 *   writes the batch with one write(2), fdatasyncs it, and only then prints
 *   "Audit logged: <type> [<event_id>]" for each line. So the offsets and
 *   the de-duplication rows are committed only after the lines are durable.
 * - No duplicate lines: the runtime drops events its group committed; the
 *   writer drops events whose line is among the last AUDIT_RECENT_IDS lines
 *   (several batches: after a crash, the uncommitted batch whose lines did
 *   reach the file is delivered again and skipped line by line).
 * - An I/O error does not fail single events (that would dead-letter audit
 *   records): handle() still returns AGENT_OK, before_commit() fails, and
 *   the runtime handles the whole batch again after a backoff, for as long
 *   as the disk refuses.
 * - The files are opened on the first event, not in setup, so a standby
 *   process of the group (one that does not hold the group's lease) never
 *   touches them.
 *
 * Threads: the runtime's loop thread only. Ownership: the state (writer,
 * pending log lines) belongs to the agent_def and is freed by destroy().
 */
#include "agents/agents.h"

#include "agents/audit_log.h"
#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Records per poll and per transaction: one write(2) and one fdatasync.
 * AUDIT_RECENT_IDS (audit_log.h) must cover at least two batches. */
#define AUDIT_MAX_BATCH 4000

/* A line written in this batch, to be reported once it is durable. */
typedef struct logged_note {
    char event_id[EVENT_UUID_LEN + 1];
    char event_type[EVENT_TYPE_MAX + 1];
    char *correlation_id; /* owned */
} logged_note;

typedef struct audit_state {
    char *dir;
    audit_writer *writer;
    logged_note *notes;
    size_t note_count, note_cap;
    int failing; /* the last batch failed: say so once it works again */
} audit_state;

static void notes_clear(audit_state *st)
{
    for (size_t i = 0; i < st->note_count; i++)
        free(st->notes[i].correlation_id);
    st->note_count = 0;
}

static void note_add(audit_state *st, const event *ev)
{
    if (st->note_count == st->note_cap) {
        st->note_cap = st->note_cap ? st->note_cap * 2 : 256;
        st->notes = xrealloc(st->notes, st->note_cap * sizeof(*st->notes));
    }
    logged_note *n = &st->notes[st->note_count++];
    util_strlcpy(n->event_id, ev->event_id, sizeof(n->event_id));
    util_strlcpy(n->event_type, ev->event_type, sizeof(n->event_type));
    n->correlation_id = xstrdup(ev->correlation_id ? ev->correlation_id : "");
}

static int audit_setup(void *state, sqlite3 *db, char *err, size_t errlen)
{
    (void)db;
    audit_state *st = state;
    st->writer = audit_writer_open(st->dir, AUDIT_RECENT_IDS, err, errlen);
    return st->writer ? 0 : -1;
}

static agent_outcome audit_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                  size_t reasonlen)
{
    audit_state *st = state;
    const bus_message *m = agent_ctx_message(ctx);
    if (!m)
        return AGENT_OK; /* no timers here; nothing to log */
    char err[1024];
    int rc = audit_writer_append(st->writer, ev->event_id, m->value, m->value_len, util_now_ms(),
                                 err, sizeof(err));
    switch (rc) {
    case AUDIT_APPENDED:
        if (LOG_LEVEL_INFO >= log_threshold)
            note_add(st, ev);
        return AGENT_OK;
    case AUDIT_DUPLICATE:
        LOG_DEBUG_CID(ev->correlation_id, "audit: %s [%s] is already in the audit log",
                      ev->event_type, ev->event_id);
        return AGENT_OK;
    case AUDIT_BAD_EVENT:
        util_strlcpy(reason, err, reasonlen);
        return AGENT_FAIL;
    default:
        /* the batch will fail in before_commit and be handled again */
        LOG_DEBUG_CID(ev->correlation_id, "audit: %s [%s] not logged: %s", ev->event_type,
                      ev->event_id, err);
        return AGENT_OK;
    }
}

static int audit_before_commit(void *state, char *err, size_t errlen)
{
    audit_state *st = state;
    if (audit_writer_flush(st->writer, err, errlen) != 0) {
        notes_clear(st);
        st->failing = 1;
        return -1;
    }
    if (st->failing) {
        LOG_INFO("audit: writing to '%s' again", st->dir);
        st->failing = 0;
    }
    for (size_t i = 0; i < st->note_count; i++) {
        const logged_note *n = &st->notes[i];
        LOG_INFO_CID(n->correlation_id, "Audit logged: %s [%s]", n->event_type, n->event_id);
    }
    notes_clear(st);
    return 0;
}

static void audit_destroy(void *state)
{
    audit_state *st = state;
    if (!st)
        return;
    audit_writer_close(st->writer);
    notes_clear(st);
    free(st->notes);
    free(st->dir);
    free(st);
}

int agent_audit_def(agent_def *def, const agent_settings *s, char *err, size_t errlen)
{
    static const char pattern[] = "^.*-events$";
    char dir[4096];
    if (s->audit_dir && *s->audit_dir) {
        if (util_strlcpy(dir, s->audit_dir, sizeof(dir)) >= sizeof(dir))
            return util_error(err, errlen, "audit directory path too long");
    } else {
        if (!s->data_dir || !*s->data_dir)
            return util_error(err, errlen, "no data directory for the audit log");
        if ((size_t)snprintf(dir, sizeof(dir), "%s/audit", s->data_dir) >= sizeof(dir))
            return util_error(err, errlen, "audit directory path too long");
    }
    audit_state *st = xcalloc(1, sizeof(*st));
    st->dir = xstrdup(dir);
    *def = (agent_def)AGENT_DEF_INIT;
    def->name = "audit";
    def->group = "audit-log";
    def->pattern = pattern;
    def->max_batch = AUDIT_MAX_BATCH;
    def->handle = audit_handle;
    def->raw_events = 1; /* logs the record as it is: no need to parse it */
    def->setup = audit_setup;
    def->before_commit = audit_before_commit;
    def->destroy = audit_destroy;
    def->state = st;
    return 0;
}
