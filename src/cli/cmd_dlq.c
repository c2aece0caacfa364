/*
 * cmd_dlq.c - `herald dlq list` and `herald dlq replay`: inspect and
 * re-drive the events the agents gave up on.
 *
 * Dead letters live in the topics "<topic>.dlq" (see runtime.h): the
 * original record (key and value unchanged) plus dlq-* headers. Replay
 * publishes the original record again to its original topic, in one
 * transaction with a row in dlq_replays that marks the dead letter as
 * replayed (so a second replay does not send it twice). Every group
 * receives the replayed event; the groups that had handled it drop it by
 * its event_id (the runtime's de-duplication), so only the group that failed
 * acts on it. If it fails again, it becomes a new dead letter.
 *
 * Kafka (HERALD_BUS=kafka:...): the .dlq topics are read through the bus
 * until the consumer has caught up with their high watermarks (a throw-away
 * group, nothing committed). The replay marks live in the data directory's
 * database, like the agents' de-duplication state; a replayed record goes
 * into the outbox in the same transaction as its mark, and a relay started
 * here publishes it before the command returns (what it cannot publish in
 * REPLAY_FLUSH_MS stays queued for the next herald process on this data
 * directory). Dead letters are told apart by topic, partition and offset:
 * a mark's dlq_topic is "TOPIC" for partition 0 (the embedded log's only
 * one) and "TOPIC#PARTITION" otherwise.
 */
#include "cli/cli.h"

#include "bus/outbox.h"
#include "bus/sqlite_log.h"
#include "common/util.h"
#include "event/event.h"
#include "runtime/runtime.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DLQ_TOPIC_PATTERN "^.+\\.dlq$"
#define DLQ_REPLAY_HEADER "dlq-replay-of"
/* Kafka: how long to wait for the group's assignment and the end of the
 * .dlq topics, the poll slice, and how long the replay relay may publish */
#define KAFKA_READ_TIMEOUT_MS 60000
#define KAFKA_POLL_MS 200
#define KAFKA_WATERMARK_TIMEOUT_MS 5000
#define REPLAY_FLUSH_MS 30000

static const char *usage =
    "usage: herald dlq list [--group G] [--event-id ID] [--json]\n"
    "       herald dlq replay [--group G] [--event-id ID]\n"
    "\n"
    "Events an agent gave up on (a permanent failure, the last retry, or a record\n"
    "that is not a valid envelope) are kept in <topic>.dlq with the reason, the\n"
    "group, the attempts and the original topic and offset.\n"
    "\n"
    "  list     print each dead letter (one line, or one JSON object with --json);\n"
    "           'replayed' marks those already re-driven, 'handled' those the group\n"
    "           has handled since\n"
    "  replay   publish the original events again to their topics, once: the group\n"
    "           that failed handles them again, the others drop them as duplicates\n"
    "  --group G      only dead letters of consumer group G\n"
    "  --event-id ID  only the dead letters of that event\n"
    "\n";

typedef struct dlq_opts {
    const char *group;
    const char *event_id;
    int json;
} dlq_opts;

/* One dead letter, fields pointing into the consumer's batch. */
typedef struct dlq_entry {
    const bus_message *m;
    char reason[512], group[256], attempts[16], topic[256], partition[16], offset[32],
        failed_at[40];
    char event_id[EVENT_UUID_LEN + 1], event_type[EVENT_TYPE_MAX + 1];
} dlq_entry;

static int on_option(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    dlq_opts *o = ctx;
    if (strcmp(name, "group") == 0) {
        if (!*value || strlen(value) > 255)
            return util_error(err, errlen, "--group: must be 1..255 characters");
        o->group = value;
    } else if (strcmp(name, "event-id") == 0) {
        if (!event_uuid_valid(value))
            return util_error(err, errlen, "--event-id: '%s' is not a UUID", value);
        o->event_id = value;
    } else if (strcmp(name, "json") == 0) {
        o->json = 1;
    }
    return 0;
}

static void header(const bus_message *m, const char *name, char *out, size_t outlen)
{
    const char *v;
    size_t len;
    out[0] = '\0';
    if (bus_message_header(m, name, &v, &len)) {
        if (len >= outlen)
            len = outlen - 1;
        memcpy(out, v, len);
        out[len] = '\0';
    }
}

static void parse_entry(const bus_message *m, dlq_entry *e)
{
    memset(e, 0, sizeof(*e));
    e->m = m;
    header(m, RUNTIME_DLQ_REASON, e->reason, sizeof(e->reason));
    header(m, RUNTIME_DLQ_GROUP, e->group, sizeof(e->group));
    header(m, RUNTIME_DLQ_ATTEMPTS, e->attempts, sizeof(e->attempts));
    header(m, RUNTIME_DLQ_TOPIC, e->topic, sizeof(e->topic));
    header(m, RUNTIME_DLQ_PARTITION, e->partition, sizeof(e->partition));
    header(m, RUNTIME_DLQ_OFFSET, e->offset, sizeof(e->offset));
    header(m, RUNTIME_DLQ_FAILED_AT, e->failed_at, sizeof(e->failed_at));
    event ev = EVENT_INIT;
    char why[256];
    if (event_decode(&ev, m->value, m->value_len, why, sizeof(why)) == 0) {
        memcpy(e->event_id, ev.event_id, sizeof(e->event_id));
        memcpy(e->event_type, ev.event_type, sizeof(e->event_type));
        event_release(&ev);
    }
}

/* The dead letter's name in dlq_replays (see the comment at the top). */
static void mark_topic(const dlq_entry *e, char *out, size_t outlen)
{
    if (e->m->partition == 0)
        snprintf(out, outlen, "%s", e->m->topic);
    else
        snprintf(out, outlen, "%s#%d", e->m->topic, (int)e->m->partition);
}

static int replayed(sqlite3 *db, const dlq_entry *e)
{
    sqlite3_stmt *st = NULL;
    char topic[300];
    mark_topic(e, topic, sizeof(topic));
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM dlq_replays WHERE dlq_topic = ?1 AND dlq_offset = ?2",
                           -1, &st, NULL) != SQLITE_OK)
        return 0; /* nothing was ever replayed here */
    sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, e->m->offset);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

static int handled(sqlite3 *db, const dlq_entry *e)
{
    return e->event_id[0] && runtime_event_handled(db, e->group, e->event_id);
}

static void print_entry(sqlite3 *db, const dlq_entry *e, int json)
{
    int rep = replayed(db, e), done = handled(db, e);
    if (!json) {
        char part[16] = ""; /* Kafka: the partition, when not 0 */
        if (e->m->partition != 0)
            snprintf(part, sizeof(part), "[%d]", (int)e->m->partition);
        char from_part[24] = ""; /* the original record's partition, when not 0 */
        if (e->partition[0] && strcmp(e->partition, "0") != 0)
            snprintf(from_part, sizeof(from_part), "[%s]", e->partition);
        printf("%s%s:%" PRId64 "  group=%s  attempts=%s  from=%s%s:%s  %s  %s  %s%s%s  %s\n",
               e->m->topic, part, e->m->offset, e->group, e->attempts, e->topic, from_part,
               e->offset, e->event_type[0] ? e->event_type : "(invalid)",
               e->event_id[0] ? e->event_id : "-", e->failed_at, rep ? "  replayed" : "",
               done ? "  handled" : "", e->reason);
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "dlq_topic", json_string(e->m->topic));
    json_object_set_new(o, "dlq_partition", json_integer(e->m->partition));
    json_object_set_new(o, "dlq_offset", json_integer(e->m->offset));
    json_object_set_new(o, "group", json_string(e->group));
    json_object_set_new(o, "attempts", json_integer(atoi(e->attempts)));
    json_object_set_new(o, "topic", json_string(e->topic));
    json_object_set_new(o, "partition", json_integer(atoi(e->partition))); /* "": 0 */
    json_object_set_new(o, "offset", json_integer(strtoll(e->offset, NULL, 10)));
    json_object_set_new(o, "failed_at", json_string(e->failed_at));
    json_object_set_new(o, "reason", json_string(e->reason));
    json_object_set_new(o, "event_id", e->event_id[0] ? json_string(e->event_id) : json_null());
    json_object_set_new(o, "event_type",
                        e->event_type[0] ? json_string(e->event_type) : json_null());
    json_object_set_new(o, "key", e->m->key ? json_stringn(e->m->key, e->m->key_len) : json_null());
    json_object_set_new(o, "value", json_stringn(e->m->value, e->m->value_len));
    json_object_set_new(o, "replayed", json_boolean(rep));
    json_object_set_new(o, "handled", json_boolean(done));
    char *text = json_dumps(o, JSON_COMPACT);
    if (text)
        puts(text);
    free(text);
    json_decref(o);
}

static int ensure_replay_table(bus_log *log, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(bus_log_db(log),
                     "CREATE TABLE IF NOT EXISTS dlq_replays (dlq_topic TEXT NOT NULL,"
                     " dlq_offset INTEGER NOT NULL, replayed_ms INTEGER NOT NULL,"
                     " PRIMARY KEY (dlq_topic, dlq_offset)) WITHOUT ROWID",
                     NULL, NULL, &msg) != SQLITE_OK) {
        util_error(err, errlen, "cannot create dlq_replays: %s", msg);
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Publish e's original record again (into the outbox when outbox is set)
 * and mark e replayed, in the open transaction. */
static int replay_entry(bus_log *log, int outbox, const dlq_entry *e, char *err, size_t errlen)
{
    char topic[300], from[340];
    mark_topic(e, topic, sizeof(topic));
    snprintf(from, sizeof(from), "%s:%" PRId64, topic, e->m->offset);
    bus_header h = {DLQ_REPLAY_HEADER, from, strlen(from)};
    bus_record r = BUS_RECORD_INIT;
    r.topic = e->topic;
    r.key = e->m->key;
    r.key_len = e->m->key_len;
    r.value = e->m->value;
    r.value_len = e->m->value_len;
    r.headers = &h;
    r.header_count = 1;
    if ((outbox ? bus_outbox_append(log, &r, 1, err, errlen)
                : bus_log_append(log, &r, 1, NULL, err, errlen)) != 0)
        return -1;
    sqlite3_stmt *st = NULL;
    sqlite3 *db = bus_log_db(log);
    if (sqlite3_prepare_v2(db,
                           "INSERT OR IGNORE INTO dlq_replays (dlq_topic, dlq_offset, replayed_ms)"
                           " VALUES (?1, ?2, ?3)",
                           -1, &st, NULL) != SQLITE_OK)
        return util_error(err, errlen, "cannot mark a replay: %s", sqlite3_errmsg(db));
    sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, e->m->offset);
    sqlite3_bind_int64(st, 3, util_now_ms());
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return util_error(err, errlen, "cannot mark a replay: %s", sqlite3_errmsg(db));
    return 0;
}

int cmd_dlq(int argc, char **argv, herald_config *cfg)
{
    static const cli_option opts[] = {{"group", 1}, {"event-id", 1}, {"json", 0}};
    dlq_opts o = {NULL, NULL, 0};
    cli_parsed args;
    if (cli_parse("dlq", argc, argv, opts, UTIL_ARRAY_LEN(opts), cfg, on_option, &o, &args) != 0)
        return CLI_USAGE;
    int status = CLI_USAGE;
    bus_consumer *c = NULL;
    bus_log *log = NULL;
    char err[1024];
    if (cli_finish_parse("dlq", &args, usage, 1, &status))
        goto out;
    status = CLI_USAGE;
    int replay = args.positional_count == 1 && strcmp(args.positional[0], "replay") == 0;
    int list = args.positional_count == 1 && strcmp(args.positional[0], "list") == 0;
    if (!replay && !list) {
        cli_usage_error("dlq", "expected 'list' or 'replay' (see 'herald dlq --help')");
        goto out;
    }
    if (replay && o.json) {
        cli_usage_error("dlq", "--json is an option of 'dlq list'");
        goto out;
    }
    status = CLI_FAILED;
    bus_config bus;
    if (config_bus(cfg, "herald-dlq", &bus, err, sizeof(err)) != 0)
        goto fail;
    int kafka = bus.kind == BUS_KAFKA;
    bus_config local = bus; /* Kafka: the data directory's database */
    local.kind = BUS_SQLITE;
    log = bus_log_open(&local, err, sizeof(err));
    if (!log)
        goto fail;
    if (replay && (ensure_replay_table(log, err, sizeof(err)) != 0 ||
                   (kafka && bus_outbox_ensure(log, err, sizeof(err)) != 0)))
        goto fail;
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.pattern = DLQ_TOPIC_PATTERN;
    c = bus_consumer_open(&bus, &sub, err, sizeof(err));
    if (!c)
        goto fail;
    size_t total = 0, shown = 0, done = 0, skipped = 0;
    /* event ids replayed in this run, so one event goes out once */
    json_t *sent = json_object();
    int64_t deadline = util_now_ms() + KAFKA_READ_TIMEOUT_MS;
    for (;;) {
        const bus_message *msgs;
        size_t n;
        if (bus_consumer_poll(c, kafka ? KAFKA_POLL_MS : 0, &msgs, &n, err, sizeof(err)) != 0) {
            json_decref(sent);
            goto fail;
        }
        if (n == 0) {
            int end = bus_consumer_caught_up(c, KAFKA_WATERMARK_TIMEOUT_MS, err, sizeof(err));
            if (end == 0 && util_now_ms() > deadline) {
                util_error(err, sizeof(err),
                           "could not read the dead-letter topics to their end within %d s",
                           KAFKA_READ_TIMEOUT_MS / 1000);
                end = -1;
            }
            if (end < 0) {
                json_decref(sent);
                goto fail;
            }
            if (end)
                break;
            continue;
        }
        if (replay && bus_log_begin(log, err, sizeof(err)) != 0) {
            json_decref(sent);
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            dlq_entry e;
            parse_entry(&msgs[i], &e);
            total++;
            if ((o.group && strcmp(o.group, e.group) != 0) ||
                (o.event_id && strcasecmp(o.event_id, e.event_id) != 0))
                continue;
            shown++;
            if (list) {
                print_entry(bus_log_db(log), &e, o.json);
                continue;
            }
            char once[600];
            snprintf(once, sizeof(once), "%s/%s", e.group, e.event_id);
            if (!e.event_id[0] || !e.topic[0] || replayed(bus_log_db(log), &e) ||
                json_object_get(sent, once)) {
                skipped++;
                continue;
            }
            if (replay_entry(log, kafka, &e, err, sizeof(err)) != 0) {
                bus_log_rollback(log);
                json_decref(sent);
                goto fail;
            }
            json_object_set_new(sent, once, json_true());
            printf("replayed %s [%s] to %s (dead letter %s:%" PRId64 ", group %s)\n", e.event_type,
                   e.event_id, e.topic, e.m->topic, e.m->offset, e.group);
            done++;
        }
        if (replay && bus_log_commit(log, err, sizeof(err)) != 0) {
            json_decref(sent);
            goto fail;
        }
    }
    json_decref(sent);
    if (replay && kafka && done > 0) {
        /* publish what was queued now (and anything else the outbox held) */
        bus_relay *relay = bus_relay_start(&local, &bus, 0, err, sizeof(err));
        if (!relay)
            goto fail;
        int64_t left = bus_relay_stop(relay, REPLAY_FLUSH_MS);
        if (left != 0) {
            util_error(err, sizeof(err),
                       "%lld records are still in the outbox; the next herald process on this "
                       "data directory publishes them",
                       (long long)left);
            goto fail;
        }
    }
    if (replay)
        fprintf(stderr,
                "herald dlq: %zu replayed, %zu skipped (already replayed or not a valid "
                "envelope), %zu dead letters in all\n",
                done, skipped, total);
    else if (!o.json)
        fprintf(stderr, "herald dlq: %zu of %zu dead letters shown\n", shown, total);
    status = CLI_OK;
    goto out;
fail:
    fprintf(stderr, "herald dlq: %s\n", err);
out:
    bus_consumer_close(c);
    bus_log_close(log);
    free(args.positional);
    return status;
}
