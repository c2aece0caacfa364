/*
 * kafka.c - the Kafka backend of the bus (see kafka.h, bus.h), through
 * librdkafka.
 *
 * Producer: acks=all and enable.idempotence=true (no duplicates or reorder
 * from librdkafka's own retries). bus_kafka_produce() hands every record to
 * rd_kafka_producev() (QUEUE_FULL is back-pressure: serve delivery reports
 * and retry) with a per-record slot as its opaque, then serves delivery
 * reports until every slot is filled. The delivery-report callback is the
 * only thing that marks a record as appended; it runs on the calling thread
 * (inside rd_kafka_poll). librdkafka fails a record after message.timeout.ms
 * at the latest; should a report still be missing a while later, the queues
 * are purged, which reports every remaining record; the same happens at
 * once when the deadline of bus_kafka_producer_give_up_at() (a stop with a
 * time limit) passes. So no call returns with a report outstanding and
 * slots are never reused while referenced.
 *
 * Consumer: a high-level balanced group consumer; its main queue is
 * redirected to the consumer queue, so error, log-forwarding and rebalance
 * callbacks run inside rd_kafka_consumer_poll() on the polling thread.
 * Offsets are never committed or stored automatically: the consumer keeps
 * its own position per partition (past the last record returned, or where
 * bus_kafka_consumer_seek() put it) and commits positions explicitly,
 * synchronously, in bus_kafka_consumer_commit() and when partitions are
 * revoked by a rebalance (the caller is done with a batch once it polls
 * again, which is when rebalances run). Close does not commit (bus.h).
 *
 * A poll waits in slices of at most WAKE_SLICE_MS, checking the wakeup flag
 * (an atomic int, so wakeup is async-signal-safe) between slices. Once it
 * has one record it only takes what is already fetched (poll with 0) up to
 * max_batch. Records are copied into one arena (topic, key, value, headers
 * in bus.h's compact header encoding) so librdkafka's messages are released
 * at once; pointers are fixed up after the arena stops growing.
 *
 * Threads: as bus.h; librdkafka runs its own threads internally.
 * Ownership: the consumer owns its arena and message array; the producer
 * owns its slots. Both own their rd_kafka_t.
 */
#include "bus/kafka.h"

#include "bus/arena.h"
#include "common/log.h"
#include "common/util.h"

#include <librdkafka/rdkafka.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAKE_SLICE_MS 100
#define DEFAULT_MAX_BATCH 1000
#define SEEK_TIMEOUT_MS 10000
#define CLOSE_FLUSH_MS 10000
/* how long past message.timeout.ms a missing delivery report is awaited
 * before the queues are purged */
#define REPORT_GRACE_MS 10000

/* ---- shared configuration -------------------------------------------- */

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    enum log_level lv = level <= 3   ? LOG_LEVEL_ERROR
                        : level == 4 ? LOG_LEVEL_WARN
                        : level <= 6 ? LOG_LEVEL_INFO
                                     : LOG_LEVEL_DEBUG;
    LOG_AT(lv, NULL, "kafka %s: %s", fac, buf);
}

static void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        LOG_ERROR("kafka: fatal error %s: %s", rd_kafka_err2name(orig), why);
        return;
    }
    LOG_WARN("kafka: %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                    size_t errlen)
{
    char why[512];
    if (rd_kafka_conf_set(conf, name, value, why, sizeof(why)) != RD_KAFKA_CONF_OK)
        return util_error(err, errlen, "Kafka property '%s': %s", name, why);
    return 0;
}

/* A configuration with bootstrap.servers, client.id and the callbacks. */
static rd_kafka_conf_t *conf_base(const bus_config *cfg, char *err, size_t errlen)
{
    if (!cfg->bootstrap || !*cfg->bootstrap) {
        util_error(err, errlen, "Kafka bus without bootstrap servers (kafka:HOST:PORT[,...])");
        return NULL;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", cfg->bootstrap, err, errlen) != 0 ||
        conf_set(conf, "client.id", cfg->client_id ? cfg->client_id : "herald", err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    return conf;
}

/* Apply cfg->kafka_props ("name=value") last, so they can override. */
static int conf_apply_props(rd_kafka_conf_t *conf, const bus_config *cfg, char *err, size_t errlen)
{
    for (const char *const *p = cfg->kafka_props; p && *p; p++) {
        const char *eq = strchr(*p, '=');
        if (!eq || eq == *p)
            return util_error(err, errlen, "Kafka property '%s' is not name=value", *p);
        char *name = xstrndup(*p, (size_t)(eq - *p));
        int rc = conf_set(conf, name, eq + 1, err, errlen);
        free(name);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* ---- producer --------------------------------------------------------- */

typedef struct dr_slot {
    int done;
    rd_kafka_resp_err_t err;
    int64_t offset;
} dr_slot;

struct bus_kafka_producer {
    rd_kafka_t *rk;
    int64_t timeout_ms; /* message.timeout.ms */
    dr_slot *slots;
    size_t slot_cap;
    size_t pending;          /* records produced whose report has not come */
    atomic_llong give_up_ns; /* bus_kafka_producer_give_up_at(); 0: never */
};

/* The deadline of bus_kafka_producer_give_up_at() has passed. */
static int give_up_due(bus_kafka_producer *p)
{
    int64_t at = (int64_t)atomic_load(&p->give_up_ns);
    return at > 0 && util_monotonic_ns() >= at;
}

void bus_kafka_producer_give_up_at(bus_kafka_producer *p, int64_t deadline_ns)
{
    atomic_store(&p->give_up_ns, deadline_ns > 0 ? deadline_ns : 1);
}

static void kafka_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    bus_kafka_producer *p = opaque;
    dr_slot *slot = m->_private;
    if (!slot)
        return;
    slot->err = m->err;
    slot->offset = m->offset;
    slot->done = 1;
    if (p->pending > 0)
        p->pending--;
}

bus_kafka_producer *bus_kafka_producer_open(const bus_config *cfg, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = conf_base(cfg, err, errlen);
    if (!conf)
        return NULL;
    bus_kafka_producer *p = xcalloc(1, sizeof(*p));
    atomic_init(&p->give_up_ns, 0);
    if (conf_set(conf, "acks", "all", err, errlen) != 0 ||
        conf_set(conf, "enable.idempotence", "true", err, errlen) != 0 ||
        conf_apply_props(conf, cfg, err, errlen) != 0)
        goto fail;
    char buf[64];
    size_t sz = sizeof(buf);
    p->timeout_ms = 300000;
    if (rd_kafka_conf_get(conf, "message.timeout.ms", buf, &sz) == RD_KAFKA_CONF_OK)
        p->timeout_ms = strtoll(buf, NULL, 10);
    rd_kafka_conf_set_dr_msg_cb(conf, kafka_dr_cb);
    rd_kafka_conf_set_opaque(conf, p);
    char why[512];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    if (!p->rk) {
        util_error(err, errlen, "cannot create Kafka producer: %s", why);
        goto fail;
    }
    return p;
fail:
    rd_kafka_conf_destroy(conf);
    free(p);
    return NULL;
}

/* Hand record r to librdkafka with slot as its opaque; QUEUE_FULL waits
 * for room until deadline_ms. */
static rd_kafka_resp_err_t produce_one(bus_kafka_producer *p, const bus_record *r, dr_slot *slot,
                                       int64_t deadline_ms)
{
    rd_kafka_headers_t *h = NULL;
    if (r->header_count) {
        h = rd_kafka_headers_new(r->header_count);
        for (size_t i = 0; i < r->header_count; i++)
            rd_kafka_header_add(h, r->headers[i].name, -1,
                                r->headers[i].value ? r->headers[i].value : "",
                                (ssize_t)r->headers[i].value_len);
    }
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            p->rk, RD_KAFKA_V_TOPIC(r->topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY(r->key, r->key ? r->key_len : 0),
            RD_KAFKA_V_VALUE((void *)r->value, r->value_len), RD_KAFKA_V_HEADERS(h),
            RD_KAFKA_V_OPAQUE(slot), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && util_now_ms() < deadline_ms && !give_up_due(p)) {
            rd_kafka_poll(p->rk, WAKE_SLICE_MS);
            continue;
        }
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR && h)
            rd_kafka_headers_destroy(h); /* only taken over on success */
        return e;
    }
}

int bus_kafka_produce(bus_kafka_producer *p, const bus_record *records, size_t n, int64_t *offsets,
                      char *err, size_t errlen)
{
    char why[512];
    rd_kafka_resp_err_t fatal = rd_kafka_fatal_error(p->rk, why, sizeof(why));
    if (fatal)
        return util_error(err, errlen, "Kafka producer failed: %s: %s", rd_kafka_err2name(fatal),
                          why);
    for (size_t i = 0; i < n; i++)
        if (!records[i].topic || !bus_topic_name_valid(records[i].topic))
            return util_error(err, errlen, "invalid topic name '%s'",
                              records[i].topic ? records[i].topic : "(null)");
    if (n > p->slot_cap) {
        p->slots = xrealloc(p->slots, n * sizeof(*p->slots));
        p->slot_cap = n;
    }
    memset(p->slots, 0, n * sizeof(*p->slots));
    int64_t deadline = util_now_ms() + p->timeout_ms;
    size_t produced = 0;
    rd_kafka_resp_err_t enqueue_err = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (; produced < n; produced++) {
        enqueue_err = produce_one(p, &records[produced], &p->slots[produced], deadline);
        if (enqueue_err != RD_KAFKA_RESP_ERR_NO_ERROR)
            break;
        p->pending++;
    }
    /* wait for the report of every record handed over */
    int purged = 0;
    while (p->pending > 0) {
        rd_kafka_poll(p->rk, WAKE_SLICE_MS);
        int give_up = give_up_due(p);
        if (!purged && p->pending > 0 && (give_up || util_now_ms() > deadline + REPORT_GRACE_MS)) {
            if (give_up)
                LOG_WARN("kafka: giving up on %zu records not acknowledged yet", p->pending);
            else
                LOG_WARN("kafka: %zu delivery reports missing past message.timeout.ms; purging",
                         p->pending);
            rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            purged = 1;
        }
    }
    for (size_t i = 0; i < produced; i++) {
        if (p->slots[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
            return util_error(err, errlen, "Kafka did not acknowledge record %zu of %zu (%s): %s",
                              i + 1, n, records[i].topic, rd_kafka_err2str(p->slots[i].err));
    }
    if (enqueue_err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return util_error(err, errlen, "cannot produce record %zu of %zu to '%s': %s", produced + 1,
                          n, records[produced].topic, rd_kafka_err2str(enqueue_err));
    if (offsets)
        for (size_t i = 0; i < n; i++)
            offsets[i] = p->slots[i].offset;
    return 0;
}

void bus_kafka_producer_close(bus_kafka_producer *p)
{
    if (!p)
        return;
    if (rd_kafka_flush(p->rk, CLOSE_FLUSH_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        LOG_WARN("kafka: %d records not delivered at close", rd_kafka_outq_len(p->rk));
    rd_kafka_destroy(p->rk);
    free(p->slots);
    free(p);
}

/* ---- consumer --------------------------------------------------------- */

/* The consumer's position in one partition. */
typedef struct kc_pos {
    char *topic;
    int32_t partition;
    int64_t next; /* next offset to read; -1 unknown (nothing returned) */
    int assigned;
    int dirty; /* moved since the last commit */
} kc_pos;

/* Where a message's bytes live in the arena until pointers are fixed. */
typedef struct kc_ref {
    size_t topic, key, value, headers; /* SIZE_MAX: none */
} kc_ref;

struct bus_kafka_consumer {
    rd_kafka_t *rk;
    int has_group;
    int closing; /* close: revocation does not commit */
    size_t max_batch;
    atomic_int wake;
    kc_pos *pos;
    size_t pos_count, pos_cap;
    bus_message *msgs;
    kc_ref *refs;
    bus_arena arena;
};

static kc_pos *pos_find(bus_kafka_consumer *c, const char *topic, int32_t partition, int create)
{
    for (size_t i = 0; i < c->pos_count; i++)
        if (c->pos[i].partition == partition && strcmp(c->pos[i].topic, topic) == 0)
            return &c->pos[i];
    if (!create)
        return NULL;
    if (c->pos_count == c->pos_cap) {
        c->pos_cap = c->pos_cap ? 2 * c->pos_cap : 16;
        c->pos = xrealloc(c->pos, c->pos_cap * sizeof(*c->pos));
    }
    kc_pos *p = &c->pos[c->pos_count++];
    p->topic = xstrdup(topic);
    p->partition = partition;
    p->next = -1;
    p->assigned = 0;
    p->dirty = 0;
    return p;
}

/* Commit the moved positions of assigned partitions (only those in `only`
 * when it is non-NULL). Returns 0 or -1 with err filled. */
static int commit_positions(bus_kafka_consumer *c, const rd_kafka_topic_partition_list_t *only,
                            char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(4);
    for (size_t i = 0; i < c->pos_count; i++) {
        kc_pos *p = &c->pos[i];
        if (!p->assigned || !p->dirty || p->next < 0)
            continue;
        if (only && !rd_kafka_topic_partition_list_find(only, p->topic, p->partition))
            continue;
        rd_kafka_topic_partition_list_add(list, p->topic, p->partition)->offset = p->next;
    }
    int rc = 0;
    if (list->cnt > 0) {
        rd_kafka_resp_err_t e = rd_kafka_commit(c->rk, list, 0);
        for (int i = 0; e == RD_KAFKA_RESP_ERR_NO_ERROR && i < list->cnt; i++)
            e = list->elems[i].err;
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR__NO_OFFSET) {
            rc = util_error(err, errlen, "Kafka offset commit failed: %s", rd_kafka_err2str(e));
        } else {
            for (int i = 0; i < list->cnt; i++) {
                kc_pos *p = pos_find(c, list->elems[i].topic, list->elems[i].partition, 0);
                if (p && p->next == list->elems[i].offset)
                    p->dirty = 0;
            }
        }
    }
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

static void set_assigned(bus_kafka_consumer *c, const rd_kafka_topic_partition_list_t *parts,
                         int assigned)
{
    for (int i = 0; i < parts->cnt; i++) {
        kc_pos *p = pos_find(c, parts->elems[i].topic, parts->elems[i].partition, 1);
        p->assigned = assigned;
        if (assigned) { /* the group's committed offset applies again */
            p->next = -1;
            p->dirty = 0;
        }
    }
}

static void kafka_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                               rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    bus_kafka_consumer *c = opaque;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        LOG_INFO("kafka: %d partition(s) assigned", parts->cnt);
        set_assigned(c, parts, 1);
        if (cooperative)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            aerr = rd_kafka_assign(rk, parts);
    } else {
        if (e == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
            LOG_INFO("kafka: %d partition(s) revoked", parts->cnt);
            char why[256];
            if (!c->closing && c->has_group && commit_positions(c, parts, why, sizeof(why)) != 0)
                LOG_WARN("kafka: commit on revocation: %s", why);
        } else {
            LOG_WARN("kafka: rebalance error: %s", rd_kafka_err2str(e));
        }
        set_assigned(c, parts, 0);
        if (cooperative)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            aerr = rd_kafka_assign(rk, NULL);
    }
    if (error) {
        LOG_WARN("kafka: incremental (un)assign failed: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (aerr) {
        LOG_WARN("kafka: (un)assign failed: %s", rd_kafka_err2str(aerr));
    }
}

static int subscribe(bus_kafka_consumer *c, const bus_subscription *sub, char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *list =
        rd_kafka_topic_partition_list_new(sub->topic_count ? (int)sub->topic_count : 1);
    if (sub->pattern) {
        regex_t re;
        if (!*sub->pattern || regcomp(&re, sub->pattern, REG_EXTENDED | REG_NOSUB) != 0) {
            rd_kafka_topic_partition_list_destroy(list);
            return util_error(err, errlen, "invalid topic pattern '%s'", sub->pattern);
        }
        regfree(&re);
        if (sub->pattern[0] == '^') {
            rd_kafka_topic_partition_list_add(list, sub->pattern, RD_KAFKA_PARTITION_UA);
        } else { /* an unanchored POSIX regex matches anywhere in the name */
            size_t len = strlen(sub->pattern) + 6;
            char *anchored = xmalloc(len);
            snprintf(anchored, len, "^.*(%s)", sub->pattern);
            rd_kafka_topic_partition_list_add(list, anchored, RD_KAFKA_PARTITION_UA);
            free(anchored);
        }
    } else {
        for (size_t i = 0; i < sub->topic_count; i++) {
            if (!sub->topics[i] || !bus_topic_name_valid(sub->topics[i])) {
                rd_kafka_topic_partition_list_destroy(list);
                return util_error(err, errlen, "invalid topic name '%s'",
                                  sub->topics[i] ? sub->topics[i] : "(null)");
            }
            rd_kafka_topic_partition_list_add(list, sub->topics[i], RD_KAFKA_PARTITION_UA);
        }
    }
    if (list->cnt == 0) {
        rd_kafka_topic_partition_list_destroy(list);
        return util_error(err, errlen, "subscription names no topic and no pattern");
    }
    rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return util_error(err, errlen, "Kafka subscribe failed: %s", rd_kafka_err2str(e));
    return 0;
}

bus_kafka_consumer *bus_kafka_consumer_open(const bus_config *cfg, const bus_subscription *sub,
                                            char *err, size_t errlen)
{
    if (!sub->pattern && sub->topic_count == 0) {
        util_error(err, errlen, "subscription names no topic and no pattern");
        return NULL;
    }
    rd_kafka_conf_t *conf = conf_base(cfg, err, errlen);
    if (!conf)
        return NULL;
    bus_kafka_consumer *c = xcalloc(1, sizeof(*c));
    atomic_init(&c->wake, 0);
    c->max_batch = sub->max_batch ? sub->max_batch : DEFAULT_MAX_BATCH;
    c->has_group = sub->group_id != NULL;
    char anon[96];
    if (!c->has_group) /* a group of its own that never commits */
        snprintf(anon, sizeof(anon), "herald-nogroup-%ld-%lld", (long)getpid(),
                 (long long)util_monotonic_ns());
    if (conf_set(conf, "group.id", c->has_group ? sub->group_id : anon, err, errlen) != 0 ||
        conf_set(conf, "auto.offset.reset", sub->reset == BUS_RESET_LATEST ? "latest" : "earliest",
                 err, errlen) != 0 ||
        conf_set(conf, "enable.auto.commit", "false", err, errlen) != 0 ||
        conf_set(conf, "enable.auto.offset.store", "false", err, errlen) != 0 ||
        conf_set(conf, "enable.partition.eof", "false", err, errlen) != 0 ||
        conf_apply_props(conf, cfg, err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        free(c);
        return NULL;
    }
    rd_kafka_conf_set_rebalance_cb(conf, kafka_rebalance_cb);
    rd_kafka_conf_set_opaque(conf, c);
    char why[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (!c->rk) {
        util_error(err, errlen, "cannot create Kafka consumer: %s", why);
        rd_kafka_conf_destroy(conf);
        free(c);
        return NULL;
    }
    rd_kafka_poll_set_consumer(c->rk);
    if (subscribe(c, sub, err, errlen) != 0) {
        c->closing = 1;
        rd_kafka_consumer_close(c->rk);
        rd_kafka_destroy(c->rk);
        free(c);
        return NULL;
    }
    c->msgs = xmalloc(c->max_batch * sizeof(*c->msgs));
    c->refs = xmalloc(c->max_batch * sizeof(*c->refs));
    return c;
}

/* Append m's headers to the arena in bus.h's encoding (see
 * bus_headers_encode); returns the start and sets *len (0: no headers). */
static size_t arena_put_headers(bus_kafka_consumer *c, const rd_kafka_message_t *m, size_t *len)
{
    rd_kafka_headers_t *h = NULL;
    *len = 0;
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR || !h)
        return SIZE_MAX;
    size_t start = SIZE_MAX;
    const char *name;
    const void *value;
    size_t vlen;
    for (size_t i = 0;
         rd_kafka_header_get_all(h, i, &name, &value, &vlen) == RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
        size_t nl = strlen(name);
        if (nl > 0xffff || vlen > 0xffffffffu)
            continue; /* cannot be encoded; no herald header is that long */
        if (!value)
            vlen = 0;
        unsigned char pre[2] = {(unsigned char)(nl & 0xff), (unsigned char)(nl >> 8)};
        unsigned char vl[4];
        for (int b = 0; b < 4; b++)
            vl[b] = (unsigned char)((vlen >> (8 * b)) & 0xff);
        /* bus_arena_put adds a NUL after each piece; drop it to keep them
         * contiguous */
        size_t at = bus_arena_put(&c->arena, pre, 2);
        c->arena.len--;
        bus_arena_put(&c->arena, name, nl);
        c->arena.len--;
        bus_arena_put(&c->arena, vl, 4);
        c->arena.len--;
        bus_arena_put(&c->arena, value, vlen);
        c->arena.len--;
        if (start == SIZE_MAX)
            start = at;
        *len += 6 + nl + vlen;
    }
    if (start != SIZE_MAX)
        bus_arena_put(&c->arena, NULL, 0); /* keep the terminating NUL */
    return start;
}

/* Copy m into the batch at index n. */
static void batch_add(bus_kafka_consumer *c, size_t n, const rd_kafka_message_t *m)
{
    bus_message *b = &c->msgs[n];
    kc_ref *r = &c->refs[n];
    const char *topic = rd_kafka_topic_name(m->rkt);
    memset(b, 0, sizeof(*b));
    b->partition = m->partition;
    b->offset = m->offset;
    int64_t ts = rd_kafka_message_timestamp(m, NULL);
    b->timestamp_ms = ts >= 0 ? ts : 0;
    r->topic = bus_arena_put(&c->arena, topic, strlen(topic));
    b->key_len = m->key ? m->key_len : 0;
    r->key = m->key ? bus_arena_put(&c->arena, m->key, m->key_len) : SIZE_MAX;
    b->value_len = m->payload ? m->len : 0;
    r->value = bus_arena_put(&c->arena, m->payload, b->value_len);
    r->headers = arena_put_headers(c, m, &b->headers_len);
    kc_pos *p = pos_find(c, topic, m->partition, 1);
    p->next = m->offset + 1;
    p->dirty = 1;
}

int bus_kafka_consumer_poll(bus_kafka_consumer *c, int timeout_ms, const bus_message **msgs,
                            size_t *count, char *err, size_t errlen)
{
    *msgs = c->msgs;
    *count = 0;
    c->arena.len = 0;
    size_t n = 0;
    int64_t deadline = timeout_ms >= 0 ? util_now_ms() + timeout_ms : 0;
    for (int first = 1; n < c->max_batch; first = 0) {
        if (atomic_exchange(&c->wake, 0))
            break;
        int slice = WAKE_SLICE_MS;
        if (n > 0) {
            slice = 0;
        } else if (timeout_ms >= 0) {
            int64_t left = deadline - util_now_ms();
            if (left <= 0 && !first)
                break;
            slice = left <= 0 ? 0 : left < WAKE_SLICE_MS ? (int)left : WAKE_SLICE_MS;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, slice);
        if (!m) {
            if (n > 0 || (timeout_ms >= 0 && util_now_ms() >= deadline))
                break;
            continue;
        }
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                LOG_WARN("kafka: consumer error%s%s: %s", m->rkt ? " on " : "",
                         m->rkt ? rd_kafka_topic_name(m->rkt) : "", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            char why[512];
            rd_kafka_resp_err_t fatal = rd_kafka_fatal_error(c->rk, why, sizeof(why));
            if (fatal)
                return util_error(err, errlen, "Kafka consumer failed: %s: %s",
                                  rd_kafka_err2name(fatal), why);
            continue;
        }
        batch_add(c, n++, m);
        rd_kafka_message_destroy(m);
    }
    for (size_t i = 0; i < n; i++) {
        bus_message *b = &c->msgs[i];
        const kc_ref *r = &c->refs[i];
        b->topic = c->arena.buf + r->topic;
        b->key = r->key == SIZE_MAX ? NULL : c->arena.buf + r->key;
        b->value = c->arena.buf + r->value;
        b->headers =
            r->headers == SIZE_MAX ? NULL : (const unsigned char *)c->arena.buf + r->headers;
        if (!b->headers)
            b->headers_len = 0;
    }
    *count = n;
    return 0;
}

int bus_kafka_consumer_commit(bus_kafka_consumer *c, char *err, size_t errlen)
{
    if (!c->has_group)
        return 0;
    return commit_positions(c, NULL, err, errlen);
}

int bus_kafka_consumer_seek(bus_kafka_consumer *c, const char *topic, int32_t partition,
                            int64_t offset, char *err, size_t errlen)
{
    kc_pos *p = pos_find(c, topic, partition, 0);
    if (!p || !p->assigned)
        return util_error(err, errlen, "topic '%s' partition %d is not assigned to this consumer",
                          topic, (int)partition);
    if (offset < 0)
        return util_error(err, errlen, "invalid offset %lld", (long long)offset);
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, topic, partition)->offset = offset;
    rd_kafka_error_t *error = rd_kafka_seek_partitions(c->rk, list, SEEK_TIMEOUT_MS);
    int rc = 0;
    if (error) {
        rc = util_error(err, errlen, "Kafka seek failed: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (list->elems[0].err) {
        rc = util_error(err, errlen, "Kafka seek failed: %s", rd_kafka_err2str(list->elems[0].err));
    } else {
        p->next = offset;
        p->dirty = 1;
    }
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

void bus_kafka_consumer_wakeup(bus_kafka_consumer *c)
{
    atomic_store(&c->wake, 1);
}

void bus_kafka_consumer_close(bus_kafka_consumer *c)
{
    if (!c)
        return;
    c->closing = 1;
    rd_kafka_resp_err_t e = rd_kafka_consumer_close(c->rk);
    if (e)
        LOG_WARN("kafka: consumer close: %s", rd_kafka_err2str(e));
    rd_kafka_destroy(c->rk);
    for (size_t i = 0; i < c->pos_count; i++)
        free(c->pos[i].topic);
    free(c->pos);
    free(c->msgs);
    free(c->refs);
    free(c->arena.buf);
    free(c);
}
