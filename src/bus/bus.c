/*
 * bus.c - the backend-neutral face of the bus (see bus.h): configuration,
 * header decoding, and dispatch of producer/consumer calls to the backend.
 *
 * Kafka (cfg->kind BUS_KAFKA) is in kafka.c; Kafka does its own retention.
 *
 * The embedded producer also runs retention: when it opens, and then at most
 * once a minute from bus_produce(), it deletes events older than
 * cfg->retention_ms.
 */
#include "bus/bus.h"

#include "bus/kafka.h"
#include "bus/kafka_admin.h"
#include "bus/arena.h"
#include "bus/sqlite_consumer.h"
#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETENTION_INTERVAL_MS 60000

struct bus_producer {
    enum bus_kind kind;
    bus_log *log;
    bus_kafka_producer *kafka;
    int64_t retention_ms;
    int64_t next_retention_ms;
};

struct bus_consumer {
    enum bus_kind kind;
    bus_consumer_sqlite *sqlite;
    bus_kafka_consumer *kafka;
};

/* Check one "host:port" of a Kafka bootstrap list (len bytes at s). */
static int kafka_hostport_valid(const char *s, size_t len, char *err, size_t errlen)
{
    const char *end = s + len, *colon;
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close || close == s + 1 || close + 1 >= end || close[1] != ':')
            return util_error(err, errlen, "bad Kafka broker '%.*s' (expected [IPV6]:PORT)",
                              (int)len, s);
        for (const char *p = s + 1; p < close; p++)
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
                  (*p >= 'A' && *p <= 'F') || *p == ':' || *p == '.'))
                return util_error(err, errlen, "bad IPv6 address in Kafka broker '%.*s'", (int)len,
                                  s);
        colon = close + 1;
    } else {
        colon = NULL;
        for (const char *p = s; p < end; p++)
            if (*p == ':')
                colon = p;
        if (!colon || colon == s)
            return util_error(err, errlen, "bad Kafka broker '%.*s' (expected HOST:PORT)", (int)len,
                              s);
        if (colon - s > 253)
            return util_error(err, errlen, "Kafka broker host too long in '%.*s'", (int)len, s);
        for (const char *p = s; p < colon; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
                return util_error(err, errlen, "bad host in Kafka broker '%.*s'", (int)len, s);
    }
    long port = 0;
    const char *p = colon + 1;
    if (p == end)
        return util_error(err, errlen, "missing port in Kafka broker '%.*s'", (int)len, s);
    for (; p < end; p++) {
        if (*p < '0' || *p > '9' || port > 65535)
            return util_error(err, errlen, "bad port in Kafka broker '%.*s' (expected 1-65535)",
                              (int)len, s);
        port = port * 10 + (*p - '0');
    }
    if (port < 1 || port > 65535)
        return util_error(err, errlen, "bad port in Kafka broker '%.*s' (expected 1-65535)",
                          (int)len, s);
    return 0;
}

int bus_config_set_url(bus_config *cfg, const char *url, char *err, size_t errlen)
{
    if (!url || !*url || strcmp(url, "sqlite") == 0) {
        cfg->kind = BUS_SQLITE;
        return 0;
    }
    static const char prefix[] = "kafka:";
    if (strncmp(url, prefix, sizeof(prefix) - 1) != 0)
        return util_error(err, errlen,
                          "unsupported bus '%s' (expected 'sqlite' or 'kafka:HOST:PORT[,...]')",
                          url);
    const char *list = url + sizeof(prefix) - 1;
    if (!*list)
        return util_error(err, errlen, "bus '%s' names no Kafka broker (kafka:HOST:PORT[,...])",
                          url);
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0)
            return util_error(err, errlen, "empty Kafka broker in bus '%s'", url);
        if (kafka_hostport_valid(p, len, err, errlen) != 0)
            return -1;
        if (!comma)
            break;
        p = comma + 1;
    }
    cfg->kind = BUS_KAFKA;
    cfg->bootstrap = list;
    return 0;
}

int bus_topic_name_valid(const char *topic)
{
    size_t n = 0;
    for (const char *p = topic; *p; p++, n++) {
        char ch = *p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return n >= 1 && n <= 249 && strcmp(topic, ".") != 0 && strcmp(topic, "..") != 0;
}

size_t bus_arena_put(bus_arena *a, const void *data, size_t len)
{
    if (a->len + len + 1 > a->cap) {
        size_t cap = a->cap ? a->cap : 65536;
        while (cap < a->len + len + 1)
            cap *= 2;
        a->buf = xrealloc(a->buf, cap);
        a->cap = cap;
    }
    size_t at = a->len;
    if (len)
        memcpy(a->buf + at, data, len);
    a->buf[at + len] = '\0';
    a->len += len + 1;
    return at;
}

int bus_headers_next(const unsigned char *headers, size_t len, size_t *pos, const char **name,
                     size_t *name_len, const char **value, size_t *value_len)
{
    /* per header: u16 name length, name, u32 value length, value (LE) */
    if (!headers || *pos + 2 > len)
        return 0;
    const unsigned char *p = headers + *pos;
    size_t nl = (size_t)p[0] | ((size_t)p[1] << 8);
    if (*pos + 2 + nl + 4 > len)
        return 0;
    const unsigned char *vp = p + 2 + nl;
    size_t vl =
        (size_t)vp[0] | ((size_t)vp[1] << 8) | ((size_t)vp[2] << 16) | ((size_t)vp[3] << 24);
    if (*pos + 2 + nl + 4 + vl > len)
        return 0;
    *name = (const char *)p + 2;
    *name_len = nl;
    *value = (const char *)vp + 4;
    *value_len = vl;
    *pos += 2 + nl + 4 + vl;
    return 1;
}

int bus_message_header(const bus_message *m, const char *name, const char **value, size_t *len)
{
    size_t pos = 0, want = strlen(name), nl;
    const char *n;
    while (bus_headers_next(m->headers, m->headers_len, &pos, &n, &nl, value, len))
        if (nl == want && memcmp(n, name, nl) == 0)
            return 1;
    return 0;
}

size_t bus_envelope_headers(const event *ev, bus_header out[BUS_ENVELOPE_HEADERS],
                            char timebuf[EVENT_TIME_LEN + 1])
{
    event_format_time(ev->occurred_ms, timebuf);
    const char *values[8] = {"1.0",   ev->event_id,       ev->event_type,   ev->source,
                             timebuf, ev->correlation_id, ev->causation_id, "application/json"};
    static const char *names[8] = {"ce_specversion", "ce_id",       "ce_type",
                                   "ce_source",      "ce_time",     "ce_correlationid",
                                   "ce_causationid", "content-type"};
    size_t n = 8;
    for (size_t i = 0; i < n; i++) {
        out[i].name = names[i];
        out[i].value = values[i];
        out[i].value_len = strlen(values[i]);
    }
    if (ev->traceparent[0]) {
        out[n].name = BUS_HEADER_TRACEPARENT;
        out[n].value = ev->traceparent;
        out[n++].value_len = TRACE_PARENT_LEN;
        if (ev->tracestate) {
            out[n].name = BUS_HEADER_TRACESTATE;
            out[n].value = ev->tracestate;
            out[n++].value_len = strlen(ev->tracestate);
        }
    }
    return n;
}

/* Copy a header value into out[cap] as text; 0 if too long, empty or
 * holding control characters. */
static int header_text(const char *v, size_t len, char *out, size_t cap)
{
    if (len == 0 || len >= cap)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return 0;
    memcpy(out, v, len);
    out[len] = '\0';
    return 1;
}

int bus_envelope_from_headers(const bus_message *m, event *ev)
{
    char id[EVENT_UUID_LEN + 1], type[EVENT_TYPE_MAX + 1], when[64];
    char cid[EVENT_REF_ID_MAX + 1], cause[EVENT_REF_ID_MAX + 1], source[EVENT_SOURCE_MAX + 1];
    static const char *names[] = {"ce_id",          "ce_type",  "ce_time", "ce_correlationid",
                                  "ce_causationid", "ce_source"};
    static const size_t name_lens[] = {5, 7, 7, 16, 14, 9};
    char *outs[] = {id, type, when, cid, cause, source};
    const size_t caps[] = {sizeof(id),  sizeof(type),  sizeof(when),
                           sizeof(cid), sizeof(cause), sizeof(source)};
    unsigned found = 0;
    const char *tp = NULL, *ts = NULL;
    size_t ts_len = 0;
    /* one pass over the headers */
    size_t pos = 0, nl, vl;
    const char *name, *hv;
    while (bus_headers_next(m->headers, m->headers_len, &pos, &name, &nl, &hv, &vl)) {
        if (nl == 11 && memcmp(name, BUS_HEADER_TRACEPARENT, 11) == 0) {
            tp = trace_parent_valid(hv, vl) ? hv : NULL;
            continue;
        }
        if (nl == 10 && memcmp(name, BUS_HEADER_TRACESTATE, 10) == 0) {
            ts = trace_state_valid(hv, vl) ? hv : NULL;
            ts_len = vl;
            continue;
        }
        for (size_t k = 0; k < UTIL_ARRAY_LEN(names); k++) {
            if (name_lens[k] == nl && memcmp(names[k], name, nl) == 0) {
                if (!header_text(hv, vl, outs[k], caps[k]))
                    return -1;
                found |= 1u << k;
            }
        }
    }
    int64_t ms;
    if (found != (1u << UTIL_ARRAY_LEN(names)) - 1 || !event_uuid_valid(id) ||
        event_type_check_syntax(type, NULL, 0) != 0 || event_parse_time(when, &ms) != 0)
        return -1;
    /* the value must be this envelope: {"event_id":"<id>","event_type":"<type>", ... } */
    static const char p1[] = "{\"event_id\":\"", p2[] = "\",\"event_type\":\"";
    size_t tl = strlen(type), need = sizeof(p1) - 1 + EVENT_UUID_LEN + sizeof(p2) - 1 + tl + 2;
    const char *v = m->value;
    if (m->value_len < need || memcmp(v, p1, sizeof(p1) - 1) != 0)
        return -1;
    v += sizeof(p1) - 1;
    if (memcmp(v, id, EVENT_UUID_LEN) != 0)
        return -1;
    v += EVENT_UUID_LEN;
    if (memcmp(v, p2, sizeof(p2) - 1) != 0)
        return -1;
    v += sizeof(p2) - 1;
    if (memcmp(v, type, tl) != 0 || v[tl] != '"' || m->value[m->value_len - 1] != '}')
        return -1;
    memcpy(ev->event_id, id, sizeof(ev->event_id));
    memcpy(ev->event_type, type, tl + 1);
    ev->occurred_ms = ms;
    ev->data = NULL;
    ev->correlation_id = xstrdup(cid);
    ev->causation_id = xstrdup(cause);
    ev->source = xstrdup(source);
    ev->metadata_extra = NULL;
    ev->traceparent[0] = '\0';
    ev->tracestate = NULL;
    if (tp) {
        memcpy(ev->traceparent, tp, TRACE_PARENT_LEN);
        ev->traceparent[TRACE_PARENT_LEN] = '\0';
        if (ts)
            ev->tracestate = xstrndup(ts, ts_len);
    }
    return 0;
}

int bus_ping(const bus_config *cfg, int timeout_ms, char *err, size_t errlen)
{
    if (cfg->kind == BUS_KAFKA)
        return bus_kafka_ping(cfg, timeout_ms, err, errlen);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, BUS_LOG_FILE);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        util_error(err, errlen, "cannot open the event log '%s': %s", path,
                   db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(db, timeout_ms);
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM topics", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        util_error(err, errlen, "the event log '%s' does not answer: %s", path, sqlite3_errmsg(db));
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

static void run_retention(bus_producer *p)
{
    char err[256];
    p->next_retention_ms = util_now_ms() + RETENTION_INTERVAL_MS;
    if (bus_log_retention_run(p->log, p->retention_ms, NULL, err, sizeof(err)) != 0)
        LOG_WARN("retention failed: %s", err);
}

bus_producer *bus_producer_open(const bus_config *cfg, char *err, size_t errlen)
{
    bus_producer *p = xcalloc(1, sizeof(*p));
    p->kind = cfg->kind;
    if (cfg->kind == BUS_KAFKA) {
        p->kafka = bus_kafka_producer_open(cfg, err, errlen);
        if (!p->kafka) {
            free(p);
            return NULL;
        }
        return p;
    }
    p->retention_ms = cfg->retention_ms;
    p->log = bus_log_open(cfg, err, errlen);
    if (!p->log) {
        free(p);
        return NULL;
    }
    if (p->retention_ms > 0)
        run_retention(p);
    return p;
}

int bus_produce(bus_producer *p, const bus_record *records, size_t n, int64_t *offsets, char *err,
                size_t errlen)
{
    if (n == 0)
        return 0;
    if (p->kind == BUS_KAFKA)
        return bus_kafka_produce(p->kafka, records, n, offsets, err, errlen);
    if (bus_log_begin(p->log, err, errlen) != 0)
        return -1;
    if (bus_log_append(p->log, records, n, offsets, err, errlen) != 0) {
        bus_log_rollback(p->log);
        return -1;
    }
    if (bus_log_commit(p->log, err, errlen) != 0)
        return -1;
    if (p->retention_ms > 0 && util_now_ms() >= p->next_retention_ms)
        run_retention(p);
    return 0;
}

void bus_producer_give_up_at(bus_producer *p, int64_t deadline_ns)
{
    if (p && p->kind == BUS_KAFKA)
        bus_kafka_producer_give_up_at(p->kafka, deadline_ns);
}

int bus_producer_fatal(bus_producer *p, char *err, size_t errlen)
{
    return p && p->kind == BUS_KAFKA && bus_kafka_producer_fatal(p->kafka, err, errlen);
}

void bus_producer_close(bus_producer *p)
{
    if (!p)
        return;
    if (p->kind == BUS_KAFKA)
        bus_kafka_producer_close(p->kafka);
    else
        bus_log_close(p->log);
    free(p);
}

bus_consumer *bus_consumer_open(const bus_config *cfg, const bus_subscription *sub, char *err,
                                size_t errlen)
{
    if (cfg->kind == BUS_KAFKA) {
        bus_kafka_consumer *k = bus_kafka_consumer_open(cfg, sub, err, errlen);
        if (!k)
            return NULL;
        bus_consumer *c = xcalloc(1, sizeof(*c));
        c->kind = BUS_KAFKA;
        c->kafka = k;
        return c;
    }
    bus_consumer_sqlite *s = bus_consumer_sqlite_open(cfg, sub, err, errlen);
    if (!s)
        return NULL;
    bus_consumer *c = xcalloc(1, sizeof(*c));
    c->kind = cfg->kind;
    c->sqlite = s;
    return c;
}

int bus_consumer_poll(bus_consumer *c, int timeout_ms, const bus_message **msgs, size_t *count,
                      char *err, size_t errlen)
{
    if (c->kind == BUS_KAFKA)
        return bus_kafka_consumer_poll(c->kafka, timeout_ms, msgs, count, err, errlen);
    return bus_consumer_sqlite_poll(c->sqlite, timeout_ms, msgs, count, err, errlen);
}

int bus_consumer_commit(bus_consumer *c, char *err, size_t errlen)
{
    if (c->kind == BUS_KAFKA)
        return bus_kafka_consumer_commit(c->kafka, err, errlen);
    return bus_consumer_sqlite_commit(c->sqlite, err, errlen);
}

int bus_consumer_seek(bus_consumer *c, const char *topic, int32_t partition, int64_t offset,
                      char *err, size_t errlen)
{
    if (c->kind == BUS_KAFKA)
        return bus_kafka_consumer_seek(c->kafka, topic, partition, offset, err, errlen);
    return bus_consumer_sqlite_seek(c->sqlite, topic, partition, offset, err, errlen);
}

int bus_consumer_caught_up(bus_consumer *c, int timeout_ms, char *err, size_t errlen)
{
    if (c->kind == BUS_KAFKA)
        return bus_kafka_consumer_caught_up(c->kafka, timeout_ms, err, errlen);
    return 1;
}

bus_consumer_sqlite *bus_consumer_sqlite_of(bus_consumer *c)
{
    return c->kind == BUS_SQLITE ? c->sqlite : NULL;
}

void bus_consumer_wakeup(bus_consumer *c)
{
    if (c->kind == BUS_KAFKA)
        bus_kafka_consumer_wakeup(c->kafka);
    else
        bus_consumer_sqlite_wakeup(c->sqlite);
}

int bus_consumer_fatal(bus_consumer *c, char *err, size_t errlen)
{
    return c && c->kind == BUS_KAFKA && bus_kafka_consumer_fatal(c->kafka, err, errlen);
}

void bus_consumer_close(bus_consumer *c)
{
    if (!c)
        return;
    if (c->kind == BUS_KAFKA)
        bus_kafka_consumer_close(c->kafka);
    else
        bus_consumer_sqlite_close(c->sqlite);
    free(c);
}
