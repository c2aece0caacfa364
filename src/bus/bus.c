/*
 * bus.c - the backend-neutral face of the bus (see bus.h): configuration,
 * header decoding, and dispatch of producer/consumer calls to the backend.
 *
 * The embedded producer also runs retention: when it opens, and then at most
 * once a minute from bus_produce(), it deletes events older than
 * cfg->retention_ms.
 */
#include "bus/bus.h"

#include "bus/sqlite_consumer.h"
#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>

#define RETENTION_INTERVAL_MS 60000

struct bus_producer {
    enum bus_kind kind;
    bus_log *log;
    int64_t retention_ms;
    int64_t next_retention_ms;
};

struct bus_consumer {
    enum bus_kind kind;
    bus_consumer_sqlite *sqlite;
};

int bus_config_set_url(bus_config *cfg, const char *url, char *err, size_t errlen)
{
    if (!url || !*url || strcmp(url, "sqlite") == 0) {
        cfg->kind = BUS_SQLITE;
        return 0;
    }
    return util_error(err, errlen, "unsupported bus '%s' (expected 'sqlite')", url);
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

int bus_message_header(const bus_message *m, const char *name, const char **value, size_t *len)
{
    const unsigned char *p = m->headers, *end = m->headers + m->headers_len;
    size_t want = strlen(name);
    while (p && p + 2 <= end) {
        size_t nl = (size_t)p[0] | ((size_t)p[1] << 8);
        if (p + 2 + nl + 4 > end)
            break;
        const unsigned char *nm = p + 2;
        const unsigned char *vp = nm + nl;
        size_t vl =
            (size_t)vp[0] | ((size_t)vp[1] << 8) | ((size_t)vp[2] << 16) | ((size_t)vp[3] << 24);
        if (vp + 4 + vl > end)
            break;
        if (nl == want && memcmp(nm, name, nl) == 0) {
            *value = (const char *)vp + 4;
            *len = vl;
            return 1;
        }
        p = vp + 4 + vl;
    }
    return 0;
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

void bus_producer_close(bus_producer *p)
{
    if (!p)
        return;
    bus_log_close(p->log);
    free(p);
}

bus_consumer *bus_consumer_open(const bus_config *cfg, const bus_subscription *sub, char *err,
                                size_t errlen)
{
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
    return bus_consumer_sqlite_poll(c->sqlite, timeout_ms, msgs, count, err, errlen);
}

int bus_consumer_commit(bus_consumer *c, char *err, size_t errlen)
{
    return bus_consumer_sqlite_commit(c->sqlite, err, errlen);
}

int bus_consumer_seek(bus_consumer *c, const char *topic, int32_t partition, int64_t offset,
                      char *err, size_t errlen)
{
    return bus_consumer_sqlite_seek(c->sqlite, topic, partition, offset, err, errlen);
}

bus_consumer_sqlite *bus_consumer_sqlite_of(bus_consumer *c)
{
    return c->kind == BUS_SQLITE ? c->sqlite : NULL;
}

void bus_consumer_wakeup(bus_consumer *c)
{
    bus_consumer_sqlite_wakeup(c->sqlite);
}

void bus_consumer_close(bus_consumer *c)
{
    if (!c)
        return;
    bus_consumer_sqlite_close(c->sqlite);
    free(c);
}
