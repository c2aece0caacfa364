/*
 * sqlite_consumer.c - a consumer of the embedded log (see bus.h).
 *
 * Each consumer has its own connection. A poll:
 *   1. drains its inotify descriptor (so a commit that lands after this
 *      point raises a fresh notification and cannot be missed);
 *   2. refreshes the topic list in one query (new topics matching the
 *      pattern or named explicitly, and each topic's retention mark);
 *   3. reads up to max_batch records after each topic's position, starting
 *      with a different topic each poll so no topic starves another;
 *   4. if nothing was found, sleeps in poll(2) on inotify (a commit by any
 *      process on the data directory) and an eventfd (wakeup()).
 * Records are copied into one arena owned by the consumer; the returned
 * bus_message array points into it until the next poll.
 *
 * Group membership: the embedded log has one partition per topic, so a
 * group has one active member at a time, like a Kafka group with a single
 * partition. The member holds a lease in group_leases (owner token, pid,
 * expiry), renewed on every commit and at least every third of the lease
 * while polling. Another consumer of the same group waits as a standby (its
 * polls return nothing) and takes over when the lease expires, when it is
 * released by bus_consumer_close(), or at once when the holder's pid no
 * longer exists (a crashed process on this machine). On taking over it
 * re-reads the committed offsets. A commit checks the lease in the same
 * transaction, so a member that lost its lease can never overwrite the new
 * member's offsets.
 *
 * Positions: a topic's position is initialised from the group's committed
 * offset, or by the reset rule when there is none (earliest: the oldest
 * record kept; latest: the end of the log). A topic that appears after the
 * consumer's first poll is read from its start, so nothing published to a
 * brand-new topic is skipped. A position at or below the topic's retention
 * mark is moved past it, with a warning that says how far.
 */
#include "bus/sqlite_consumer.h"

#include "bus/arena.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <poll.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/inotify.h>
#include <unistd.h>

#define DEFAULT_MAX_BATCH 1000
/* Longest sleep between checks even without a notification (safety net). */
#define MAX_WAIT_MS 1000
/* Sleep between checks when inotify is not available. */
#define FALLBACK_WAIT_MS 2
/* Group lease: how long it lasts, and how often a standby looks again. */
#define LEASE_MS 30000
#define STANDBY_CHECK_MS 250

typedef struct topic_state {
    char *name;
    int64_t id;
    int64_t position;    /* next offset to read */
    int64_t committed;   /* last committed next_offset, -1 if none */
    sqlite3_stmt *fetch; /* next records of this topic's table */
} topic_state;

/* Where a message's bytes live in the arena until pointers are fixed. */
typedef struct pending_ref {
    size_t key, value, headers;
} pending_ref;

struct bus_consumer_sqlite {
    bus_log *log;
    char *group;
    char **names; /* explicit topic names */
    size_t name_count;
    regex_t pattern;
    int has_pattern;
    enum bus_offset_reset reset;
    size_t max_batch;
    int started;

    /* group membership (see the top of the file) */
    char owner[64];
    int member; /* holds the lease */
    int standby_logged;
    int64_t lease_renew_at; /* wall ms: renew the lease after this */
    int64_t next_check_ms;  /* standby: next look at the lease */

    topic_state *topics;
    size_t topic_count;
    size_t round_robin;

    sqlite3_stmt *list_topics, *committed, *upsert;
    sqlite3_stmt *lease_read, *lease_take, *lease_renew, *lease_release;

    int inotify_fd;
    int wake_fd;

    bus_message *msgs;
    pending_ref *refs;
    size_t msg_cap;
    bus_arena arena;
};

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **stmt, char *err, size_t errlen)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) != SQLITE_OK)
        return util_error(err, errlen, "cannot prepare '%.50s': %s", sql, sqlite3_errmsg(db));
    return 0;
}

bus_consumer_sqlite *bus_consumer_sqlite_open(const bus_config *cfg, const bus_subscription *sub,
                                              char *err, size_t errlen)
{
    if (!sub->pattern && sub->topic_count == 0) {
        util_error(err, errlen, "subscription names no topic and no pattern");
        return NULL;
    }
    bus_consumer_sqlite *c = xcalloc(1, sizeof(*c));
    c->inotify_fd = -1;
    c->wake_fd = -1;
    c->reset = sub->reset;
    c->max_batch = sub->max_batch ? sub->max_batch : DEFAULT_MAX_BATCH;
    if (sub->group_id) {
        if (!*sub->group_id || strlen(sub->group_id) > 255) {
            util_error(err, errlen, "invalid group id '%s' (1..255 characters)", sub->group_id);
            goto fail;
        }
        c->group = xstrdup(sub->group_id);
    }
    if (sub->pattern) {
        int rc = regcomp(&c->pattern, sub->pattern, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char msg[128];
            regerror(rc, &c->pattern, msg, sizeof(msg));
            util_error(err, errlen, "invalid topic pattern '%s': %s", sub->pattern, msg);
            goto fail;
        }
        c->has_pattern = 1;
    }
    c->names = xcalloc(sub->topic_count + 1, sizeof(char *));
    for (size_t i = 0; i < sub->topic_count; i++) {
        if (!bus_topic_name_valid(sub->topics[i])) {
            util_error(err, errlen, "invalid topic name '%s'", sub->topics[i]);
            goto fail;
        }
        c->names[c->name_count++] = xstrdup(sub->topics[i]);
    }

    c->log = bus_log_open(cfg, err, errlen);
    if (!c->log)
        goto fail;
    sqlite3 *db = bus_log_db(c->log);
    if (prepare(db, "SELECT id, name, deleted_upto FROM topics ORDER BY id", &c->list_topics, err,
                errlen) != 0 ||
        prepare(db, "SELECT next_offset FROM offsets WHERE group_name = ?1 AND topic_id = ?2",
                &c->committed, err, errlen) != 0 ||
        prepare(db,
                "INSERT INTO offsets(group_name, topic_id, next_offset, committed_ms) "
                "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(group_name, topic_id) DO UPDATE SET "
                "next_offset = excluded.next_offset, committed_ms = excluded.committed_ms",
                &c->upsert, err, errlen) != 0 ||
        prepare(db, "SELECT owner, pid, expires_ms FROM group_leases WHERE group_name = ?1",
                &c->lease_read, err, errlen) != 0 ||
        prepare(db,
                "INSERT INTO group_leases(group_name, owner, pid, expires_ms) "
                "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(group_name) DO UPDATE SET "
                "owner = excluded.owner, pid = excluded.pid, expires_ms = excluded.expires_ms",
                &c->lease_take, err, errlen) != 0 ||
        prepare(db, "UPDATE group_leases SET expires_ms = ?3 WHERE group_name = ?1 AND owner = ?2",
                &c->lease_renew, err, errlen) != 0 ||
        prepare(db, "DELETE FROM group_leases WHERE group_name = ?1 AND owner = ?2",
                &c->lease_release, err, errlen) != 0)
        goto fail;
    {
        unsigned char rnd[8];
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
            memset(rnd, 0, sizeof(rnd));
        snprintf(c->owner, sizeof(c->owner), "pid-%d-%02x%02x%02x%02x%02x%02x%02x%02x",
                 (int)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    }

    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->wake_fd < 0) {
        util_error(err, errlen, "cannot create eventfd: %s", strerror(errno));
        goto fail;
    }
    c->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (c->inotify_fd >= 0 &&
        inotify_add_watch(c->inotify_fd, bus_log_notify_path(c->log), IN_MODIFY) < 0) {
        close(c->inotify_fd);
        c->inotify_fd = -1;
    }
    if (c->inotify_fd < 0)
        LOG_WARN("inotify unavailable (%s): consumer falls back to checking every %d ms",
                 strerror(errno), FALLBACK_WAIT_MS);
    return c;
fail:
    bus_consumer_sqlite_close(c);
    return NULL;
}

void bus_consumer_sqlite_close(bus_consumer_sqlite *c)
{
    if (!c)
        return;
    sqlite3_finalize(c->list_topics);
    if (c->member && c->lease_release) {
        /* hand the group over at once instead of after the lease expires */
        sqlite3_bind_text(c->lease_release, 1, c->group, -1, SQLITE_STATIC);
        sqlite3_bind_text(c->lease_release, 2, c->owner, -1, SQLITE_STATIC);
        sqlite3_step(c->lease_release);
        sqlite3_reset(c->lease_release);
    }
    sqlite3_finalize(c->committed);
    sqlite3_finalize(c->upsert);
    sqlite3_finalize(c->lease_read);
    sqlite3_finalize(c->lease_take);
    sqlite3_finalize(c->lease_renew);
    sqlite3_finalize(c->lease_release);
    bus_log_close(c->log);
    if (c->inotify_fd >= 0)
        close(c->inotify_fd);
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    if (c->has_pattern)
        regfree(&c->pattern);
    for (size_t i = 0; i < c->name_count; i++)
        free(c->names[i]);
    free(c->names);
    for (size_t i = 0; i < c->topic_count; i++) {
        free(c->topics[i].name);
        sqlite3_finalize(c->topics[i].fetch);
    }
    free(c->topics);
    free(c->group);
    free(c->msgs);
    free(c->refs);
    free(c->arena.buf);
    free(c);
}

bus_log *bus_consumer_sqlite_log(bus_consumer_sqlite *c)
{
    return c->log;
}

static int wants_topic(bus_consumer_sqlite *c, const char *name)
{
    for (size_t i = 0; i < c->name_count; i++)
        if (strcmp(c->names[i], name) == 0)
            return 1;
    return c->has_pattern && regexec(&c->pattern, name, 0, NULL, 0) == 0;
}

/* The offset the next record of topic t will get. */
static int64_t end_of_topic(bus_consumer_sqlite *c, topic_state *t)
{
    char table[32], sql[96];
    bus_log_topic_table(t->id, table, sizeof(table));
    snprintf(sql, sizeof(sql), "SELECT max(id) FROM %s", table);
    sqlite3_stmt *s = NULL;
    int64_t last = 0;
    if (sqlite3_prepare_v2(bus_log_db(c->log), sql, -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        last = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return last + 1;
}

/* Initial position of a newly found topic. */
static int init_position(bus_consumer_sqlite *c, topic_state *t, int64_t deleted_upto,
                         int discovered_later, char *err, size_t errlen)
{
    t->committed = -1;
    if (c->group) {
        sqlite3_bind_text(c->committed, 1, c->group, -1, SQLITE_STATIC);
        sqlite3_bind_int64(c->committed, 2, t->id);
        int rc = sqlite3_step(c->committed);
        if (rc == SQLITE_ROW)
            t->committed = sqlite3_column_int64(c->committed, 0);
        sqlite3_reset(c->committed);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return util_error(err, errlen, "cannot read committed offset of group '%s': %s",
                              c->group, sqlite3_errmsg(bus_log_db(c->log)));
    }
    if (t->committed >= 0)
        t->position = t->committed;
    else if (c->reset == BUS_RESET_LATEST && !discovered_later)
        t->position = end_of_topic(c, t);
    else
        t->position = deleted_upto + 1;
    return 0;
}

/* Step 2 of a poll: find new topics, apply retention marks. */
static int refresh_topics(bus_consumer_sqlite *c, char *err, size_t errlen)
{
    sqlite3_stmt *s = c->list_topics;
    int rc;
    size_t known = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(s, 0);
        const char *name = (const char *)sqlite3_column_text(s, 1);
        int64_t deleted_upto = sqlite3_column_int64(s, 2);
        topic_state *t = NULL;
        /* topics come in id order and so were appended in id order */
        if (known < c->topic_count && c->topics[known].id == id) {
            t = &c->topics[known++];
        } else {
            if (!name || !wants_topic(c, name))
                continue;
            c->topics = xrealloc(c->topics, (c->topic_count + 1) * sizeof(*c->topics));
            /* keep id order: new ids are always larger than known ones */
            t = &c->topics[c->topic_count++];
            known = c->topic_count;
            t->name = xstrdup(name);
            t->id = id;
            t->fetch = NULL;
            char table[32], sql[160];
            bus_log_topic_table(id, table, sizeof(table));
            snprintf(sql, sizeof(sql),
                     "SELECT id, ts_ms, key, value, headers FROM %s WHERE id >= ?1 "
                     "ORDER BY id LIMIT ?2",
                     table);
            if (prepare(bus_log_db(c->log), sql, &t->fetch, err, errlen) != 0) {
                sqlite3_reset(s);
                return -1;
            }
            if (init_position(c, t, deleted_upto, c->started, err, errlen) != 0) {
                sqlite3_reset(s);
                return -1;
            }
        }
        if (t->position <= deleted_upto) {
            LOG_WARN("group '%s' topic '%s': position %lld fell behind retention (events up "
                     "to offset %lld were deleted); resuming at the oldest kept event",
                     c->group ? c->group : "(none)", t->name, (long long)t->position,
                     (long long)deleted_upto);
            t->position = deleted_upto + 1;
        }
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return util_error(err, errlen, "cannot list topics: %s",
                          sqlite3_errmsg(bus_log_db(c->log)));
    c->started = 1;
    return 0;
}

/* Step 3: read up to max_batch records. Returns the count or -1. */
static long fetch(bus_consumer_sqlite *c, char *err, size_t errlen)
{
    if (c->msg_cap < c->max_batch) {
        c->msgs = xrealloc(c->msgs, c->max_batch * sizeof(*c->msgs));
        c->refs = xrealloc(c->refs, c->max_batch * sizeof(*c->refs));
        c->msg_cap = c->max_batch;
    }
    c->arena.len = 0;
    size_t n = 0;
    for (size_t k = 0; k < c->topic_count && n < c->max_batch; k++) {
        topic_state *t = &c->topics[(c->round_robin + k) % c->topic_count];
        sqlite3_stmt *s = t->fetch;
        sqlite3_bind_int64(s, 1, t->position);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)(c->max_batch - n));
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            bus_message *m = &c->msgs[n];
            pending_ref *r = &c->refs[n];
            m->topic = t->name;
            m->partition = 0;
            m->offset = sqlite3_column_int64(s, 0);
            m->timestamp_ms = sqlite3_column_int64(s, 1);
            if (sqlite3_column_type(s, 2) == SQLITE_NULL) {
                m->key_len = 0;
                r->key = SIZE_MAX;
            } else {
                m->key_len = (size_t)sqlite3_column_bytes(s, 2);
                r->key = bus_arena_put(&c->arena, sqlite3_column_blob(s, 2), m->key_len);
            }
            m->value_len = (size_t)sqlite3_column_bytes(s, 3);
            r->value = bus_arena_put(&c->arena, sqlite3_column_blob(s, 3), m->value_len);
            m->headers_len = (size_t)sqlite3_column_bytes(s, 4);
            r->headers = m->headers_len
                             ? bus_arena_put(&c->arena, sqlite3_column_blob(s, 4), m->headers_len)
                             : SIZE_MAX;
            t->position = m->offset + 1;
            n++;
        }
        sqlite3_reset(s);
        if (rc != SQLITE_DONE)
            return util_error(err, errlen, "cannot read topic '%s': %s", t->name,
                              sqlite3_errmsg(bus_log_db(c->log)));
    }
    if (c->topic_count)
        c->round_robin = (c->round_robin + 1) % c->topic_count;
    for (size_t i = 0; i < n; i++) {
        bus_message *m = &c->msgs[i];
        m->key = c->refs[i].key == SIZE_MAX ? NULL : c->arena.buf + c->refs[i].key;
        m->value = c->arena.buf + c->refs[i].value;
        m->headers = c->refs[i].headers == SIZE_MAX
                         ? NULL
                         : (const unsigned char *)c->arena.buf + c->refs[i].headers;
    }
    return (long)n;
}

/* Forget positions so they are read again from the committed offsets. */
static void forget_positions(bus_consumer_sqlite *c)
{
    for (size_t i = 0; i < c->topic_count; i++) {
        free(c->topics[i].name);
        sqlite3_finalize(c->topics[i].fetch);
    }
    c->topic_count = 0;
    c->round_robin = 0;
}

/* Does process pid exist (and is not a zombie waiting to be reaped)? */
static int pid_alive(int64_t pid)
{
    if (pid <= 0 || pid > INT32_MAX)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1; /* no /proc: trust kill() */
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); /* "pid (comm) STATE ..." */
    return !(paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'));
}

/*
 * Make sure this consumer is the group's active member. Returns 1 if it is,
 * 0 if it is a standby, -1 on error. Cheap when the lease is fresh.
 */
static int ensure_membership(bus_consumer_sqlite *c, char *err, size_t errlen)
{
    if (!c->group)
        return 1;
    int64_t now = util_now_ms();
    if (c->member && now < c->lease_renew_at)
        return 1;
    if (!c->member && now < c->next_check_ms)
        return 0;
    c->next_check_ms = now + STANDBY_CHECK_MS;
    sqlite3 *db = bus_log_db(c->log);
    int took = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        /* attempt 0 reads without the write lock; attempt 1 writes */
        if (attempt == 1 && bus_log_begin(c->log, err, errlen) != 0)
            return -1;
        sqlite3_bind_text(c->lease_read, 1, c->group, -1, SQLITE_STATIC);
        int rc = sqlite3_step(c->lease_read);
        int free_to_take = 1;
        int64_t holder_pid = 0;
        if (rc == SQLITE_ROW) {
            const char *owner = (const char *)sqlite3_column_text(c->lease_read, 0);
            holder_pid = sqlite3_column_int64(c->lease_read, 1);
            int64_t expires = sqlite3_column_int64(c->lease_read, 2);
            free_to_take =
                (owner && strcmp(owner, c->owner) == 0) || expires < now || !pid_alive(holder_pid);
        }
        sqlite3_reset(c->lease_read);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            util_error(err, errlen, "cannot read the lease of group '%s': %s", c->group,
                       sqlite3_errmsg(db));
            if (attempt == 1)
                bus_log_rollback(c->log);
            return -1;
        }
        if (!free_to_take) {
            if (attempt == 1)
                bus_log_rollback(c->log);
            if (c->member)
                LOG_WARN("group '%s': lost its membership to pid %lld; standing by", c->group,
                         (long long)holder_pid);
            else if (!c->standby_logged)
                LOG_INFO("group '%s' is consumed by pid %lld; standing by until it stops", c->group,
                         (long long)holder_pid);
            c->standby_logged = 1;
            if (c->member)
                forget_positions(c);
            c->member = 0;
            return 0;
        }
        if (attempt == 0)
            continue;
        sqlite3_bind_text(c->lease_take, 1, c->group, -1, SQLITE_STATIC);
        sqlite3_bind_text(c->lease_take, 2, c->owner, -1, SQLITE_STATIC);
        sqlite3_bind_int64(c->lease_take, 3, (int64_t)getpid());
        sqlite3_bind_int64(c->lease_take, 4, now + LEASE_MS);
        rc = sqlite3_step(c->lease_take);
        sqlite3_reset(c->lease_take);
        if (rc != SQLITE_DONE) {
            util_error(err, errlen, "cannot take the lease of group '%s': %s", c->group,
                       sqlite3_errmsg(db));
            bus_log_rollback(c->log);
            return -1;
        }
        if (bus_log_commit(c->log, err, errlen) != 0)
            return -1;
        took = 1;
    }
    if (took && !c->member) {
        if (c->standby_logged)
            LOG_INFO("group '%s': now the active member, resuming from committed offsets",
                     c->group);
        forget_positions(c);
        c->standby_logged = 0;
    }
    c->member = 1;
    c->lease_renew_at = now + LEASE_MS / 3;
    return 1;
}

static void drain(int fd)
{
    char buf[4096];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
}

int bus_consumer_sqlite_poll(bus_consumer_sqlite *c, int timeout_ms, const bus_message **msgs,
                             size_t *count, char *err, size_t errlen)
{
    *msgs = c->msgs;
    *count = 0;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : util_monotonic_ns() + timeout_ms * 1000000LL;
    for (;;) {
        if (c->inotify_fd >= 0)
            drain(c->inotify_fd);
        int member = ensure_membership(c, err, errlen);
        if (member < 0)
            return -1;
        long n = 0;
        if (member) {
            if (refresh_topics(c, err, errlen) != 0)
                return -1;
            n = fetch(c, err, errlen);
            if (n < 0)
                return -1;
        }
        if (n > 0) {
            *msgs = c->msgs;
            *count = (size_t)n;
            return 0;
        }
        int64_t now = util_monotonic_ns();
        if (now >= deadline)
            return 0;
        int64_t left_ms = (deadline - now + 999999) / 1000000;
        int cap = !member ? STANDBY_CHECK_MS : c->inotify_fd >= 0 ? MAX_WAIT_MS : FALLBACK_WAIT_MS;
        int wait_ms = left_ms < cap ? (int)left_ms : cap;
        struct pollfd fds[2] = {{.fd = c->wake_fd, .events = POLLIN},
                                {.fd = c->inotify_fd, .events = POLLIN}};
        int rc = poll(fds, c->inotify_fd >= 0 ? 2 : 1, wait_ms);
        if (rc < 0 && errno != EINTR)
            return util_error(err, errlen, "poll: %s", strerror(errno));
        if (rc > 0 && (fds[0].revents & POLLIN)) {
            drain(c->wake_fd);
            return 0;
        }
    }
}

int bus_consumer_sqlite_commit(bus_consumer_sqlite *c, char *err, size_t errlen)
{
    if (!c->group || !c->member)
        return 0;
    size_t dirty = 0;
    for (size_t i = 0; i < c->topic_count; i++)
        if (c->topics[i].position != c->topics[i].committed)
            dirty++;
    if (dirty == 0)
        return 0;
    int own_txn = !bus_log_in_transaction(c->log);
    if (own_txn && bus_log_begin(c->log, err, errlen) != 0)
        return -1;
    int64_t now = util_now_ms();
    /* still the member? (renews the lease in the same transaction) */
    sqlite3_bind_text(c->lease_renew, 1, c->group, -1, SQLITE_STATIC);
    sqlite3_bind_text(c->lease_renew, 2, c->owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(c->lease_renew, 3, now + LEASE_MS);
    int lrc = sqlite3_step(c->lease_renew);
    sqlite3_reset(c->lease_renew);
    if (lrc != SQLITE_DONE || sqlite3_changes(bus_log_db(c->log)) != 1) {
        if (lrc == SQLITE_DONE)
            util_error(err, errlen,
                       "group '%s': membership lost to another consumer; offsets not committed",
                       c->group);
        else
            util_error(err, errlen, "cannot renew the lease of group '%s': %s", c->group,
                       sqlite3_errmsg(bus_log_db(c->log)));
        if (own_txn)
            bus_log_rollback(c->log);
        if (lrc == SQLITE_DONE) {
            c->member = 0;
            forget_positions(c);
        }
        return -1;
    }
    c->lease_renew_at = now + LEASE_MS / 3;
    for (size_t i = 0; i < c->topic_count; i++) {
        topic_state *t = &c->topics[i];
        if (t->position == t->committed)
            continue;
        sqlite3_bind_text(c->upsert, 1, c->group, -1, SQLITE_STATIC);
        sqlite3_bind_int64(c->upsert, 2, t->id);
        sqlite3_bind_int64(c->upsert, 3, t->position);
        sqlite3_bind_int64(c->upsert, 4, now);
        int rc = sqlite3_step(c->upsert);
        sqlite3_reset(c->upsert);
        if (rc != SQLITE_DONE) {
            util_error(err, errlen, "cannot commit offset of group '%s' on '%s': %s", c->group,
                       t->name, sqlite3_errmsg(bus_log_db(c->log)));
            if (own_txn)
                bus_log_rollback(c->log);
            return -1;
        }
    }
    if (own_txn && bus_log_commit(c->log, err, errlen) != 0)
        return -1;
    /* In a caller's transaction the positions count as committed once the
     * caller commits; if it rolls back, the next commit writes them again
     * because bus_consumer_sqlite_mark_committed() was not called. */
    if (own_txn)
        bus_consumer_sqlite_mark_committed(c);
    return 0;
}

void bus_consumer_sqlite_mark_committed(bus_consumer_sqlite *c)
{
    for (size_t i = 0; i < c->topic_count; i++)
        c->topics[i].committed = c->topics[i].position;
}

int bus_consumer_sqlite_seek(bus_consumer_sqlite *c, const char *topic, int32_t partition,
                             int64_t offset, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->topic_count; i++) {
        if (strcmp(c->topics[i].name, topic) != 0)
            continue;
        if (partition != 0 || offset < 1)
            return util_error(err, errlen, "cannot seek '%s' to partition %d offset %lld", topic,
                              (int)partition, (long long)offset);
        c->topics[i].position = offset;
        return 0;
    }
    return util_error(err, errlen, "cannot seek: the consumer does not read topic '%s'", topic);
}

void bus_consumer_sqlite_wakeup(bus_consumer_sqlite *c)
{
    uint64_t one = 1;
    ssize_t ignored = write(c->wake_fd, &one, sizeof(one));
    (void)ignored;
}
