/*
 * lag.c - consumer lag and Burrow-like statuses (see lag.h).
 *
 * lag_collect() takes opt->samples snapshots, spread over opt->window_ms,
 * into an accumulator of rows keyed by (group, topic, partition); each
 * snapshot overwrites a row's current values (so the last one wins) and
 * adds a sample; lag_evaluate() then judges each row from its samples.
 *
 * Embedded snapshot: one read transaction on DATA_DIR/bus.db (opened
 * read-only; the agents are never blocked): topics and their ends, the
 * offsets table (group, topic, next offset, time of the last move: the
 * consumer writes a topic's row only when its position changed), the
 * runtimes' heartbeat rows (runtime.h) and the group leases. Rows are every
 * committed (group, topic), plus, for a group with a heartbeat, every topic
 * its subscription matches where it has not committed yet (a member stuck
 * on its very first record still shows). A pid is alive when kill(pid, 0)
 * says so: the data directory is local, so its members run on this machine.
 */
#include "ops/lag_internal.h"

#include "bus/sqlite_log.h"
#include "common/util.h"
#include "event/event.h"
#include "runtime/runtime.h"

#include <errno.h>
#include <jansson.h>
#include <regex.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *lag_status_name(lag_status s)
{
    static const char *names[] = {"OK", "WARN", "STALL", "STOP", "REWIND"};
    return (unsigned)s < 5 ? names[s] : "?";
}

lag_status lag_evaluate(const lag_evidence *e)
{
    const lag_sample *s = e->samples;
    size_t n = e->count;
    if (n == 0)
        return LAG_OK;
    for (size_t i = 1; i < n; i++)
        if (s[i].committed < s[i - 1].committed)
            return LAG_REWIND;
    const lag_sample *first = &s[0], *last = &s[n - 1];
    int64_t lag_last = last->end - last->committed;
    if (lag_last <= 0)
        return LAG_OK;
    if (e->alive == 0)
        return LAG_STOP;
    if (last->committed > first->committed) {
        int growing = n >= 2 && lag_last > first->end - first->committed;
        for (size_t i = 1; i < n && growing; i++)
            growing = s[i].end - s[i].committed >= s[i - 1].end - s[i - 1].committed;
        return growing ? LAG_WARN : LAG_OK;
    }
    int64_t stuck =
        e->waiting_since_ms >= 0 ? e->now_ms - e->waiting_since_ms : last->at_ms - first->at_ms;
    if (stuck < e->stall_ms)
        return LAG_OK;
    return e->alive == 1 ? LAG_STALL : LAG_STOP;
}

lag_status lag_worst(const lag_row *rows, size_t count)
{
    static const int rank[] = {
        [LAG_OK] = 0, [LAG_WARN] = 1, [LAG_STALL] = 2, [LAG_STOP] = 3, [LAG_REWIND] = 4};
    lag_status w = LAG_OK;
    for (size_t i = 0; i < count; i++)
        if (rank[rows[i].status] > rank[w])
            w = rows[i].status;
    return w;
}

/* ---- the accumulator -------------------------------------------------- */

lag_acc_row *lag_acc_get(lag_acc *a, const char *group, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < a->count; i++) {
        lag_row *r = &a->rows[i].row;
        if (r->partition == partition && strcmp(r->group, group) == 0 &&
            strcmp(r->topic, topic) == 0)
            return &a->rows[i];
    }
    if (a->count == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->rows = xrealloc(a->rows, a->cap * sizeof(*a->rows));
    }
    lag_acc_row *r = &a->rows[a->count++];
    memset(r, 0, sizeof(*r));
    r->row.group = xstrdup(group);
    r->row.topic = xstrdup(topic);
    r->row.partition = partition;
    r->row.committed = -1;
    r->row.last_commit_ms = -1;
    r->row.alive = -1;
    r->row.members = -1;
    r->waiting_since_ms = -1;
    return r;
}

void lag_acc_sample(lag_acc_row *r, int64_t at_ms, int64_t position, int64_t end)
{
    if (r->nsamples == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 8;
        r->samples = xrealloc(r->samples, r->cap * sizeof(*r->samples));
    }
    r->samples[r->nsamples++] = (lag_sample){at_ms, position, end};
}

static void acc_free(lag_acc *a)
{
    for (size_t i = 0; i < a->count; i++) {
        free(a->rows[i].row.group);
        free(a->rows[i].row.topic);
        free(a->rows[i].samples);
    }
    free(a->rows);
    memset(a, 0, sizeof(*a));
}

int64_t lag_record_time(const char *value, size_t value_len, const unsigned char *headers,
                        size_t headers_len)
{
    size_t pos = 0, nl, vl;
    const char *name, *v;
    while (headers && bus_headers_next(headers, headers_len, &pos, &name, &nl, &v, &vl)) {
        char t[64];
        int64_t ms;
        if (nl == 7 && memcmp(name, "ce_time", 7) == 0 && vl < sizeof(t)) {
            memcpy(t, v, vl);
            t[vl] = '\0';
            if (event_parse_time(t, &ms) == 0)
                return ms;
        }
    }
    if (!value)
        return -1;
    json_t *root = json_loadb(value, value_len, 0, NULL);
    int64_t ms = -1;
    const char *t = json_string_value(json_object_get(root, "occurred_at"));
    if (!t || event_parse_time(t, &ms) != 0)
        ms = -1;
    json_decref(root);
    return ms;
}

/* ---- embedded snapshot ------------------------------------------------ */

typedef struct topic_info {
    int64_t id;
    char *name;
    int64_t first; /* earliest kept offset (deleted_upto + 1) */
    int64_t end;
} topic_info;

typedef struct member_info {
    char *group;
    int64_t pid;
    int64_t started_ms; /* heartbeat: when the member started; lease: -1 */
    char *subscription; /* heartbeat only */
    int live;
} member_info;

typedef struct snapshot {
    sqlite3 *db;
    topic_info *topics;
    size_t ntopics;
    member_info *members;
    size_t nmembers;
} snapshot;

static int pid_alive(int64_t pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

static void snapshot_clear(snapshot *s)
{
    for (size_t i = 0; i < s->ntopics; i++)
        free(s->topics[i].name);
    for (size_t i = 0; i < s->nmembers; i++) {
        free(s->members[i].group);
        free(s->members[i].subscription);
    }
    free(s->topics);
    free(s->members);
    s->topics = NULL;
    s->members = NULL;
    s->ntopics = s->nmembers = 0;
}

static int table_exists(sqlite3 *db, const char *name)
{
    sqlite3_stmt *st = NULL;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    return found;
}

static int db_fail(snapshot *s, const char *what, char *err, size_t errlen)
{
    return util_error(err, errlen, "cannot read %s from the event log: %s", what,
                      sqlite3_errmsg(s->db));
}

static topic_info *find_topic(snapshot *s, int64_t id)
{
    for (size_t i = 0; i < s->ntopics; i++)
        if (s->topics[i].id == id)
            return &s->topics[i];
    return NULL;
}

static int load_topics(snapshot *s, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT id, name, deleted_upto FROM topics", -1, &st, NULL) !=
        SQLITE_OK)
        return db_fail(s, "the topics", err, errlen);
    while (sqlite3_step(st) == SQLITE_ROW) {
        s->topics = xrealloc(s->topics, (s->ntopics + 1) * sizeof(*s->topics));
        topic_info *t = &s->topics[s->ntopics++];
        t->id = sqlite3_column_int64(st, 0);
        t->name = xstrdup((const char *)sqlite3_column_text(st, 1));
        t->first = sqlite3_column_int64(st, 2) + 1;
        t->end = t->first;
    }
    sqlite3_finalize(st);
    for (size_t i = 0; i < s->ntopics; i++) {
        char table[64], sql[128];
        bus_log_topic_table(s->topics[i].id, table, sizeof(table));
        snprintf(sql, sizeof(sql), "SELECT max(id) FROM %s", table);
        if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
            continue; /* a topic row whose table is not there yet */
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL &&
            sqlite3_column_int64(st, 0) + 1 > s->topics[i].end)
            s->topics[i].end = sqlite3_column_int64(st, 0) + 1;
        sqlite3_finalize(st);
    }
    return 0;
}

static void add_member(snapshot *s, const char *group, int64_t pid, int64_t started_ms,
                       const char *subscription, int live)
{
    s->members = xrealloc(s->members, (s->nmembers + 1) * sizeof(*s->members));
    member_info *m = &s->members[s->nmembers++];
    m->group = xstrdup(group);
    m->pid = pid;
    m->started_ms = started_ms;
    m->subscription = subscription ? xstrdup(subscription) : NULL;
    m->live = live;
}

static int load_members(snapshot *s, int64_t now, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (table_exists(s->db, RUNTIME_HEARTBEAT_TABLE)) {
        if (sqlite3_prepare_v2(s->db,
                               "SELECT group_name, pid, subscription, started_ms, beat_ms "
                               "FROM " RUNTIME_HEARTBEAT_TABLE,
                               -1, &st, NULL) != SQLITE_OK)
            return db_fail(s, "the heartbeats", err, errlen);
        while (sqlite3_step(st) == SQLITE_ROW) {
            int64_t pid = sqlite3_column_int64(st, 1);
            int live =
                pid_alive(pid) && now - sqlite3_column_int64(st, 4) <= LAG_HEARTBEAT_STALE_MS;
            add_member(s, (const char *)sqlite3_column_text(st, 0), pid,
                       sqlite3_column_int64(st, 3), (const char *)sqlite3_column_text(st, 2), live);
        }
        sqlite3_finalize(st);
    }
    if (table_exists(s->db, "group_leases")) {
        if (sqlite3_prepare_v2(s->db, "SELECT group_name, pid, expires_ms FROM group_leases", -1,
                               &st, NULL) != SQLITE_OK)
            return db_fail(s, "the group leases", err, errlen);
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *g = (const char *)sqlite3_column_text(st, 0);
            int64_t pid = sqlite3_column_int64(st, 1);
            int dup = 0;
            for (size_t i = 0; i < s->nmembers && !dup; i++)
                dup = s->members[i].pid == pid && strcmp(s->members[i].group, g) == 0;
            if (!dup)
                add_member(s, g, pid, -1, NULL,
                           pid_alive(pid) && sqlite3_column_int64(st, 2) > now);
        }
        sqlite3_finalize(st);
    }
    return 0;
}

/* Does topic match a heartbeat's subscription ("pattern:RE" / "topics:a,b")? */
static int subscribed(const char *sub, const char *topic)
{
    if (strncmp(sub, "pattern:", 8) == 0) {
        regex_t re;
        if (regcomp(&re, sub + 8, REG_EXTENDED | REG_NOSUB) != 0)
            return 0;
        int m = regexec(&re, topic, 0, NULL, 0) == 0;
        regfree(&re);
        return m;
    }
    if (strncmp(sub, "topics:", 7) != 0)
        return 0;
    size_t tl = strlen(topic);
    for (const char *p = sub + 7; *p;) {
        size_t n = strcspn(p, ",");
        if (n == tl && memcmp(p, topic, n) == 0)
            return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

/* Time of the oldest waiting record of t at position, as (append ms,
 * occurred_at ms); -1 when there is none. */
static void oldest_waiting(snapshot *s, const topic_info *t, int64_t position, int64_t *ts_ms,
                           int64_t *occurred_ms)
{
    char table[64], sql[160];
    sqlite3_stmt *st = NULL;
    *ts_ms = *occurred_ms = -1;
    bus_log_topic_table(t->id, table, sizeof(table));
    snprintf(sql, sizeof(sql),
             "SELECT ts_ms, value, headers FROM %s WHERE id >= ?1 ORDER BY id LIMIT 1", table);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, position);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *ts_ms = sqlite3_column_int64(st, 0);
        *occurred_ms =
            lag_record_time(sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1),
                            sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2));
        if (*occurred_ms < 0)
            *occurred_ms = *ts_ms;
    }
    sqlite3_finalize(st);
}

/* Fill r's current values (and a sample) from the snapshot. */
static void fill_row(snapshot *s, lag_acc_row *r, const topic_info *t, int64_t committed,
                     int64_t committed_ms, int64_t now)
{
    lag_row *row = &r->row;
    int members = 0;
    int64_t started = -1;
    for (size_t i = 0; i < s->nmembers; i++) {
        member_info *m = &s->members[i];
        if (!m->live || strcmp(m->group, row->group) != 0)
            continue;
        members++;
        if (m->started_ms >= 0 && (started < 0 || m->started_ms < started))
            started = m->started_ms;
    }
    row->members = members;
    row->alive = members > 0;
    row->committed = committed;
    row->end = t->end;
    row->last_commit_ms = committed >= 0 ? committed_ms : -1;
    int64_t position = committed >= t->first ? committed : t->first;
    row->lag = t->end > position ? t->end - position : 0;
    row->lag_seconds = 0;
    r->waiting_since_ms = -1;
    if (row->lag > 0) {
        int64_t ts, occurred;
        oldest_waiting(s, t, position, &ts, &occurred);
        if (occurred >= 0 && now > occurred)
            row->lag_seconds = (double)(now - occurred) / 1000.0;
        int64_t moved = committed >= 0 ? committed_ms : started;
        r->waiting_since_ms = moved > ts ? moved : ts;
    }
    lag_acc_sample(r, now, position, t->end);
}

static int wanted(const lag_options *opt, const char *group, const char *topic)
{
    return (!opt->group || strcmp(opt->group, group) == 0) &&
           (!opt->topic || strcmp(opt->topic, topic) == 0);
}

static int sqlite_sample(snapshot *s, const lag_options *opt, lag_acc *acc, char *err,
                         size_t errlen)
{
    int64_t now = util_now_ms();
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(s, "a snapshot", err, errlen);
    if (load_topics(s, err, errlen) != 0 || load_members(s, now, err, errlen) != 0)
        goto out;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT group_name, topic_id, next_offset, committed_ms FROM offsets",
                           -1, &st, NULL) != SQLITE_OK) {
        db_fail(s, "the committed offsets", err, errlen);
        goto out;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *group = (const char *)sqlite3_column_text(st, 0);
        topic_info *t = find_topic(s, sqlite3_column_int64(st, 1));
        if (!t || !wanted(opt, group, t->name))
            continue;
        fill_row(s, lag_acc_get(acc, group, t->name, 0), t, sqlite3_column_int64(st, 2),
                 sqlite3_column_int64(st, 3), now);
    }
    sqlite3_finalize(st);
    st = NULL;
    /* topics a member subscribes to but never committed on */
    for (size_t i = 0; i < s->nmembers; i++) {
        member_info *m = &s->members[i];
        if (!m->subscription)
            continue;
        for (size_t j = 0; j < s->ntopics; j++) {
            topic_info *t = &s->topics[j];
            if (!wanted(opt, m->group, t->name) || !subscribed(m->subscription, t->name))
                continue;
            size_t before = acc->count;
            lag_acc_row *r = lag_acc_get(acc, m->group, t->name, 0);
            int sampled_now = r->nsamples > 0 && r->samples[r->nsamples - 1].at_ms == now;
            if (acc->count > before || (!sampled_now && r->row.committed < 0))
                fill_row(s, r, t, -1, -1, now);
        }
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    snapshot_clear(s);
    return rc;
}

int lag_local_members(const char *data_dir, const char *group)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", data_dir, BUS_LOG_FILE);
    snapshot s = {0};
    char err[256];
    int n = -1;
    if (sqlite3_open_v2(path, &s.db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        table_exists(s.db, RUNTIME_HEARTBEAT_TABLE) &&
        load_members(&s, util_now_ms(), err, sizeof(err)) == 0) {
        n = 0;
        for (size_t i = 0; i < s.nmembers; i++)
            n += s.members[i].live && s.members[i].subscription &&
                 strcmp(s.members[i].group, group) == 0;
    }
    snapshot_clear(&s);
    sqlite3_close(s.db);
    return n;
}

/* ---- collect ---------------------------------------------------------- */

static int row_cmp(const void *a, const void *b)
{
    const lag_row *x = a, *y = b;
    int c = strcmp(x->group, y->group);
    if (!c)
        c = strcmp(x->topic, y->topic);
    return c ? c : (x->partition > y->partition) - (x->partition < y->partition);
}

static void judge(lag_acc_row *r, const lag_options *opt, int64_t now)
{
    lag_evidence e = {r->samples,          r->nsamples, r->row.alive,
                      r->waiting_since_ms, now,         opt->stall_ms};
    lag_row *row = &r->row;
    row->status = lag_evaluate(&e);
    const lag_sample *first = &r->samples[0], *last = &r->samples[r->nsamples - 1];
    switch (row->status) {
    case LAG_OK:
        snprintf(row->detail, sizeof(row->detail), "%s",
                 row->lag == 0                        ? "caught up"
                 : last->committed > first->committed ? "consuming"
                                                      : "waiting less than the stall limit");
        break;
    case LAG_WARN:
        snprintf(row->detail, sizeof(row->detail), "consuming, but the lag grew from %lld to %lld",
                 (long long)(first->end - first->committed), (long long)row->lag);
        break;
    case LAG_STALL:
        snprintf(row->detail, sizeof(row->detail),
                 "a member is alive but the offset has not moved for %.1f s",
                 (double)(now - r->waiting_since_ms) / 1000.0);
        break;
    case LAG_STOP:
        snprintf(row->detail, sizeof(row->detail), "%s",
                 row->alive == 0 ? "no live member while events wait"
                                 : "not committing while events wait");
        break;
    case LAG_REWIND:
        snprintf(row->detail, sizeof(row->detail), "the committed offset moved back");
        break;
    }
}

int lag_collect(const bus_config *cfg, const lag_options *opt, lag_row **rows, size_t *count,
                char *err, size_t errlen)
{
    lag_acc acc = {0};
    snapshot s = {0};
    *rows = NULL;
    *count = 0;
    int samples = opt->window_ms > 0 ? (opt->samples < 2 ? 2 : opt->samples) : 1;
    if (cfg->kind != BUS_KAFKA) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, BUS_LOG_FILE);
        if (sqlite3_open_v2(path, &s.db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
            util_error(err, errlen, "cannot open the event log '%s': %s", path,
                       s.db ? sqlite3_errmsg(s.db) : "out of memory");
            sqlite3_close(s.db);
            return -1;
        }
        sqlite3_busy_timeout(s.db, 5000);
    }
    for (int i = 0; i < samples; i++) {
        if (i > 0)
            util_sleep_us(opt->window_ms * 1000 / (samples - 1));
        int rc = cfg->kind == BUS_KAFKA ? lag_kafka_sample(cfg, opt, &acc, err, errlen)
                                        : sqlite_sample(&s, opt, &acc, err, errlen);
        if (rc != 0) {
            sqlite3_close(s.db);
            acc_free(&acc);
            return -1;
        }
    }
    sqlite3_close(s.db);
    int64_t now = util_now_ms();
    lag_row *out = xcalloc(acc.count ? acc.count : 1, sizeof(*out));
    for (size_t i = 0; i < acc.count; i++) {
        judge(&acc.rows[i], opt, now);
        out[i] = acc.rows[i].row;
        acc.rows[i].row.group = acc.rows[i].row.topic = NULL; /* moved */
    }
    qsort(out, acc.count, sizeof(*out), row_cmp);
    *rows = out;
    *count = acc.count;
    acc_free(&acc);
    return 0;
}

void lag_rows_free(lag_row *rows, size_t count)
{
    for (size_t i = 0; rows && i < count; i++) {
        free(rows[i].group);
        free(rows[i].topic);
    }
    free(rows);
}
