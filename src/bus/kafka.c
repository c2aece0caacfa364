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
 * Errors: librdkafka's errors are logged (error callback, or error events
 * in the consumer's queue) and survived: it retries by itself. A fatal
 * error (rd_kafka_fatal_error(): e.g. an idempotent producer refused a
 * producer id, a static group member fenced) is never recovered from: it
 * fails every later produce and poll with an error naming the client, and
 * bus_kafka_*_fatal() says so, so callers stop instead of retrying.
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
/* topic checks and creation: the wait for metadata and for the broker to
 * complete a creation; the request itself may take this much longer */
#define TOPIC_TIMEOUT_MS 10000
#define TOPIC_REQUEST_MARGIN_MS 5000
/* a consumer's first try before it subscribes, and its retries */
#define TOPIC_OPEN_TIMEOUT_MS 5000
#define TOPIC_RETRY_TIMEOUT_MS 2000
#define TOPIC_RETRY_MIN_MS 1000
#define TOPIC_RETRY_MAX_MS 30000

/* ---- shared configuration -------------------------------------------- */

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    enum log_level lv = level <= 3   ? LOG_LEVEL_ERROR
                        : level == 4 ? LOG_LEVEL_WARN
                        : level <= 6 ? LOG_LEVEL_INFO
                                     : LOG_LEVEL_DEBUG;
    LOG_AT(lv, NULL, "kafka %s: %s: %s", rd_kafka_name(rk), fac, buf);
}

static void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        /* librdkafka logs it (FATAL), and every later produce or poll fails
         * with it (fatal_check), which is where herald reports it */
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        LOG_DEBUG("kafka %s: fatal error %s: %s", rd_kafka_name(rk), rd_kafka_err2name(orig), why);
        return;
    }
    LOG_WARN("kafka %s: %s: %s", rd_kafka_name(rk), rd_kafka_err2name((rd_kafka_resp_err_t)err),
             reason);
}

/* 0, or -1 with err naming the client and the error when librdkafka has
 * raised a fatal error on rk (it never recovers: bus.h). */
static int fatal_check(rd_kafka_t *rk, const char *what, char *err, size_t errlen)
{
    char why[512];
    rd_kafka_resp_err_t e = rd_kafka_fatal_error(rk, why, sizeof(why));
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    return util_error(err, errlen, "Kafka %s %s failed: %s: %s", what, rd_kafka_name(rk),
                      rd_kafka_err2name(e), why);
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

/* librdkafka's table of properties as text (rd_kafka_conf_properties_show:
 * Markdown rows "name | C/P | range | default | importance | description"
 * where C/P is "C", "P" or "*"); NULL if it cannot be had. free() it. */
static char *property_table(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    rd_kafka_conf_properties_show(f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* The scope of name in table (a property_table()). */
static enum bus_kafka_scope table_scope(const char *table, const char *name)
{
    size_t nl = strlen(name);
    if (nl == 0)
        return BUS_KAFKA_SCOPE_UNKNOWN;
    for (const char *line = table; *line;) {
        const char *end = strchr(line, '\n');
        if (!end)
            end = line + strlen(line);
        if ((size_t)(end - line) > nl && strncmp(line, name, nl) == 0) {
            const char *q = line + nl;
            while (q < end && *q == ' ')
                q++;
            if (q < end && *q == '|') {
                for (q++; q < end && *q == ' '; q++)
                    ;
                if (q + 1 < end && (q[1] == ' ' || q[1] == '|')) {
                    if (*q == '*')
                        return BUS_KAFKA_SCOPE_BOTH;
                    if (*q == 'C')
                        return BUS_KAFKA_SCOPE_CONSUMER;
                    if (*q == 'P')
                        return BUS_KAFKA_SCOPE_PRODUCER;
                }
            }
        }
        line = *end ? end + 1 : end;
    }
    return BUS_KAFKA_SCOPE_UNKNOWN;
}

enum bus_kafka_scope bus_kafka_property_scope(const char *name)
{
    char *table = property_table();
    enum bus_kafka_scope s = table ? table_scope(table, name) : BUS_KAFKA_SCOPE_UNKNOWN;
    free(table);
    return s;
}

/* Apply cfg->kafka_props ("name=value") last, so they can override; only
 * those whose scope includes `mine`. The others are set on a scratch
 * configuration, which checks their name and value without librdkafka
 * warning that this client ignores them. */
static int conf_apply_props(rd_kafka_conf_t *conf, const bus_config *cfg, enum bus_kafka_scope mine,
                            char *err, size_t errlen)
{
    char *table = NULL;
    rd_kafka_conf_t *scratch = NULL;
    int rc = 0;
    for (const char *const *p = cfg->kafka_props; p && *p && rc == 0; p++) {
        const char *eq = strchr(*p, '=');
        if (!eq || eq == *p) {
            rc = util_error(err, errlen, "Kafka property '%s' is not name=value", *p);
            break;
        }
        char *name = xstrndup(*p, (size_t)(eq - *p));
        if (!table)
            table = property_table();
        enum bus_kafka_scope scope = table ? table_scope(table, name) : BUS_KAFKA_SCOPE_BOTH;
        if (scope == BUS_KAFKA_SCOPE_UNKNOWN || (scope & mine)) {
            rc = conf_set(conf, name, eq + 1, err, errlen); /* unknown: librdkafka says so */
        } else {
            if (!scratch)
                scratch = rd_kafka_conf_new();
            rc = conf_set(scratch, name, eq + 1, err, errlen);
        }
        free(name);
    }
    free(table);
    if (scratch)
        rd_kafka_conf_destroy(scratch);
    return rc;
}

/* ---- topics ----------------------------------------------------------- */

/* What a client needs to create topics (copied from the bus_config). */
typedef struct topic_policy {
    int create;
    int partitions;
    int replication; /* 0: auto */
    char *bootstrap; /* for the kafka-topics.sh hint */
} topic_policy;

static void topic_policy_init(topic_policy *tp, const bus_config *cfg)
{
    tp->create = !cfg->no_topic_create;
    tp->partitions =
        cfg->topic_partitions > 0 ? cfg->topic_partitions : BUS_DEFAULT_TOPIC_PARTITIONS;
    tp->replication = cfg->topic_replication > 0 ? cfg->topic_replication : 0;
    tp->bootstrap = xstrdup(cfg->bootstrap ? cfg->bootstrap : "HOST:PORT");
}

static int topic_in_metadata(const struct rd_kafka_metadata *md, const char *topic)
{
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0)
            return md->topics[i].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    return 0;
}

/* Send one CreateTopics request for topics[0..n) and wait for its result.
 * 0; 2 when the cluster does not support CreateTopics (err filled); or -1
 * with err naming the first topic that could not be created. */
static int create_topics(rd_kafka_t *rk, const topic_policy *tp, int replication, int32_t broker,
                         const char *const *topics, size_t n, int timeout_ms, char *err,
                         size_t errlen)
{
    char why[512];
    int rc = 0;
    rd_kafka_NewTopic_t **nt = xcalloc(n, sizeof(*nt));
    for (size_t i = 0; i < n; i++) {
        nt[i] = rd_kafka_NewTopic_new(topics[i], tp->partitions, replication, why, sizeof(why));
        if (!nt[i]) {
            rd_kafka_NewTopic_destroy_array(nt, i);
            free(nt);
            return util_error(err, errlen, "cannot create Kafka topic '%s': %s", topics[i], why);
        }
    }
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    /* the broker waits up to timeout_ms for the creation to complete; the
     * request gives it a little more */
    rd_kafka_AdminOptions_set_operation_timeout(opt, timeout_ms, why, sizeof(why));
    rd_kafka_AdminOptions_set_request_timeout(opt, timeout_ms + TOPIC_REQUEST_MARGIN_MS, why,
                                              sizeof(why));
    if (broker >= 0)
        rd_kafka_AdminOptions_set_broker(opt, broker, why, sizeof(why));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, nt, n, opt, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 2 * TOPIC_REQUEST_MARGIN_MS);
    const rd_kafka_CreateTopics_result_t *res = ev ? rd_kafka_event_CreateTopics_result(ev) : NULL;
    if (!res) {
        rc = util_error(err, errlen, "cannot create Kafka topic '%s': no answer from the cluster",
                        topics[0]);
    } else if (rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE) {
        util_error(err, errlen, "%s", rd_kafka_event_error_string(ev));
        rc = 2;
    } else if (rd_kafka_event_error(ev)) {
        rc = util_error(err, errlen, "cannot create Kafka topic '%s': %s: %s", topics[0],
                        rd_kafka_err2name(rd_kafka_event_error(ev)),
                        rd_kafka_event_error_string(ev));
    } else {
        size_t cnt = 0;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &cnt);
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
            const char *name = rd_kafka_topic_result_name(tr[i]);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
                LOG_INFO("kafka: created topic '%s' (%d partitions, replication factor %d)", name,
                         tp->partitions, replication);
            } else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                const char *msg = rd_kafka_topic_result_error_string(tr[i]);
                if (rc == 0)
                    rc = util_error(err, errlen,
                                    "cannot create Kafka topic '%s' (%d partitions, replication "
                                    "factor %d): %s: %s",
                                    name, tp->partitions, replication, rd_kafka_err2name(e),
                                    msg && *msg ? msg : rd_kafka_err2str(e));
                else
                    LOG_WARN("kafka: cannot create topic '%s': %s: %s", name, rd_kafka_err2name(e),
                             msg && *msg ? msg : rd_kafka_err2str(e));
            }
        }
        if (rc == 0 && cnt < n)
            rc = util_error(err, errlen, "cannot create Kafka topic '%s': incomplete answer",
                            topics[0]);
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_NewTopic_destroy_array(nt, n);
    free(nt);
    return rc;
}

/*
 * Make sure topics[0..n) exist: one all-topics metadata request (it names
 * no topic, so no broker auto-creates one), then, for the missing ones,
 * one CreateTopics request (or, with creation off, an error that says how
 * to create them). Returns 0 when all existed, 1 when some were created,
 * -1 with err filled. A cluster that does not support CreateTopics (brokers
 * before 0.10.2, librdkafka's mock cluster) leaves the missing topics to
 * the brokers' automatic creation: that is logged and counts as created.
 */
static int ensure_topics(rd_kafka_t *rk, const topic_policy *tp, const char *const *topics,
                         size_t n, int timeout_ms, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return util_error(err, errlen, "cannot check that Kafka topic '%s' exists: metadata: %s",
                          topics[0], rd_kafka_err2str(e));
    const char **missing = xcalloc(n, sizeof(*missing));
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int dup = 0;
        for (size_t k = 0; k < m && !dup; k++)
            dup = strcmp(missing[k], topics[i]) == 0;
        if (!dup && !topic_in_metadata(md, topics[i]))
            missing[m++] = topics[i];
    }
    int brokers = md->broker_cnt;
    /* CreateTopics goes to the controller; when the metadata names none of
     * its brokers as controller (librdkafka's mock cluster says 0 while its
     * brokers are 1..N), to the broker that answered: brokers since Kafka
     * 2.8 forward it to the controller. */
    int32_t controller = rd_kafka_controllerid(rk, 0), broker = md->orig_broker_id;
    for (int i = 0; i < md->broker_cnt; i++)
        if (md->brokers[i].id == controller)
            broker = -1;
    rd_kafka_metadata_destroy(md);
    int rc = 0;
    if (m > 0) {
        int replication = tp->replication ? tp->replication
                          : brokers < 1   ? 1
                          : brokers < 3   ? brokers
                                          : 3;
        if (!tp->create)
            rc = util_error(err, errlen,
                            "Kafka topic '%s'%s does not exist and herald may not create topics "
                            "(HERALD_TOPIC_CREATE=0, --no-create-topics); create it with: "
                            "kafka-topics.sh --bootstrap-server %s --create --topic %s "
                            "--partitions %d --replication-factor %d",
                            missing[0], m > 1 ? " (and others)" : "", tp->bootstrap, missing[0],
                            tp->partitions, replication);
        else
            rc = create_topics(rk, tp, replication, broker, missing, m, timeout_ms, err, errlen);
        if (rc == 2) {
            LOG_WARN("kafka: cannot create topic '%s'%s (%d partitions, replication factor %d): "
                     "the cluster does not support it (%s); leaving it to the brokers' automatic "
                     "creation",
                     missing[0], m > 1 ? " and others" : "", tp->partitions, replication, err);
            rc = 1;
        } else if (rc == 0) {
            rc = 1;
        }
    }
    free(missing);
    return rc;
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
    topic_policy topics;
    char **known; /* topics known to exist (checked or created) */
    size_t known_count, known_cap;
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
    topic_policy_init(&p->topics, cfg);
    /* with creation off, herald must not make brokers create topics either */
    if (conf_set(conf, "acks", "all", err, errlen) != 0 ||
        conf_set(conf, "enable.idempotence", "true", err, errlen) != 0 ||
        (cfg->no_topic_create &&
         conf_set(conf, "allow.auto.create.topics", "false", err, errlen) != 0) ||
        conf_apply_props(conf, cfg, BUS_KAFKA_SCOPE_PRODUCER, err, errlen) != 0)
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
    free(p->topics.bootstrap);
    free(p);
    return NULL;
}

static int producer_knows(const bus_kafka_producer *p, const char *topic)
{
    for (size_t i = 0; i < p->known_count; i++)
        if (strcmp(p->known[i], topic) == 0)
            return 1;
    return 0;
}

/* Make sure every topic of records[0..n) exists (once per topic for the
 * producer's life). 0, or -1 with err filled. */
static int producer_ensure_topics(bus_kafka_producer *p, const bus_record *records, size_t n,
                                  char *err, size_t errlen)
{
    const char **todo = NULL;
    size_t t = 0;
    for (size_t i = 0; i < n; i++) {
        if (producer_knows(p, records[i].topic))
            continue;
        int dup = 0;
        for (size_t k = 0; k < t && !dup; k++)
            dup = strcmp(todo[k], records[i].topic) == 0;
        if (dup)
            continue;
        if (!todo)
            todo = xcalloc(n, sizeof(*todo));
        todo[t++] = records[i].topic;
    }
    if (t == 0)
        return 0;
    int rc = ensure_topics(p->rk, &p->topics, todo, t, TOPIC_TIMEOUT_MS, err, errlen);
    if (rc >= 0) {
        if (p->known_count + t > p->known_cap) {
            p->known_cap = (p->known_count + t) * 2;
            p->known = xrealloc(p->known, p->known_cap * sizeof(*p->known));
        }
        for (size_t k = 0; k < t; k++)
            p->known[p->known_count++] = xstrdup(todo[k]);
    }
    free(todo);
    return rc < 0 ? -1 : 0;
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
    if (fatal_check(p->rk, "producer", err, errlen) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!records[i].topic || !bus_topic_name_valid(records[i].topic))
            return util_error(err, errlen, "invalid topic name '%s'",
                              records[i].topic ? records[i].topic : "(null)");
    if (producer_ensure_topics(p, records, n, err, errlen) != 0)
        return -1;
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
        /* A fatal error makes librdkafka purge its queues, but
         * asynchronously: a record handed over while the error was being
         * raised can miss that purge and wait, never sent, for
         * message.timeout.ms (5 minutes by default). Purge again from here. */
        char why[8];
        int fatal = rd_kafka_fatal_error(p->rk, why, sizeof(why)) != RD_KAFKA_RESP_ERR_NO_ERROR;
        if (!purged && p->pending > 0 &&
            (give_up || fatal || util_now_ms() > deadline + REPORT_GRACE_MS)) {
            if (give_up)
                LOG_WARN("kafka: giving up on %zu records not acknowledged yet", p->pending);
            else if (!fatal)
                LOG_WARN("kafka: %zu delivery reports missing past message.timeout.ms; purging",
                         p->pending);
            rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            purged = 1;
        }
    }
    /* a fatal error fails (purges) what was queued: name the cause */
    if (fatal_check(p->rk, "producer", err, errlen) != 0)
        return -1;
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

int bus_kafka_producer_fatal(bus_kafka_producer *p, char *err, size_t errlen)
{
    char ignored[8];
    return fatal_check(p->rk, "producer", err ? err : ignored, err ? errlen : sizeof(ignored)) != 0;
}

struct rd_kafka_s *bus_kafka_producer_handle(bus_kafka_producer *p)
{
    return p->rk;
}

void bus_kafka_producer_close(bus_kafka_producer *p)
{
    if (!p)
        return;
    /* after a fatal error nothing queued can be delivered: do not wait */
    char why[8];
    if (rd_kafka_fatal_error(p->rk, why, sizeof(why)) != RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    if (rd_kafka_flush(p->rk, CLOSE_FLUSH_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        LOG_WARN("kafka: %d records not delivered at close", rd_kafka_outq_len(p->rk));
    rd_kafka_destroy(p->rk);
    free(p->slots);
    for (size_t i = 0; i < p->known_count; i++)
        free(p->known[i]);
    free(p->known);
    free(p->topics.bootstrap);
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
    int closing;         /* close: revocation does not commit */
    int assignment_seen; /* a rebalance assigned (possibly no) partitions */
    enum bus_offset_reset reset;
    regex_t re;
    int has_re;
    size_t max_batch;
    atomic_int wake;
    kc_pos *pos;
    size_t pos_count, pos_cap;
    bus_message *msgs;
    kc_ref *refs;
    bus_arena arena;
    /* topics subscribed by name, made sure of before subscribing; while
     * that has not succeeded, poll tries again at ensure_next_ms */
    topic_policy topics;
    char **names;
    size_t name_count;
    int ensure_pending;
    int ensure_failing; /* the last try failed (logged once per streak) */
    int64_t ensure_next_ms;
    int64_t ensure_backoff_ms;
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
        c->assignment_seen = 1;
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

/*
 * Make sure the topics subscribed by name exist (see ensure_topics). Never
 * fails: on an error it logs (once per streak of failures) and schedules a
 * retry with a backoff. A retry that created topics keeps the check pending
 * so the next one, which finds them in the all-topics metadata, makes a
 * subscription that saw them missing join again with their partitions.
 */
static void consumer_ensure_topics(bus_kafka_consumer *c, int before_subscribe, int timeout_ms)
{
    char why[1024];
    int rc = ensure_topics(c->rk, &c->topics, (const char *const *)c->names, c->name_count,
                           timeout_ms, why, sizeof(why));
    int64_t now = util_now_ms();
    if (rc < 0) {
        if (!c->ensure_failing) {
            if (c->topics.create)
                LOG_WARN("kafka: %s; subscribing anyway and trying again", why);
            else
                LOG_ERROR("kafka: %s; subscribing anyway and checking again", why);
        }
        c->ensure_failing = 1;
        c->ensure_pending = 1;
        c->ensure_backoff_ms = c->ensure_backoff_ms ? c->ensure_backoff_ms * 2 : TOPIC_RETRY_MIN_MS;
        if (c->ensure_backoff_ms > TOPIC_RETRY_MAX_MS)
            c->ensure_backoff_ms = TOPIC_RETRY_MAX_MS;
        c->ensure_next_ms = now + c->ensure_backoff_ms;
        return;
    }
    if (c->ensure_failing)
        LOG_INFO("kafka: the subscribed topics exist now");
    c->ensure_failing = 0;
    c->ensure_backoff_ms = 0;
    c->ensure_pending = rc == 1 && !before_subscribe;
    c->ensure_next_ms = now + TOPIC_RETRY_MIN_MS / 2;
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
    if (!sub->pattern) {
        c->names = xcalloc(sub->topic_count, sizeof(*c->names));
        for (size_t i = 0; i < sub->topic_count; i++)
            c->names[c->name_count++] = xstrdup(sub->topics[i]);
        consumer_ensure_topics(c, 1, TOPIC_OPEN_TIMEOUT_MS);
    }
    rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return util_error(err, errlen, "Kafka subscribe failed: %s", rd_kafka_err2str(e));
    return 0;
}

/* Free what the consumer owns besides its rd_kafka_t. */
static void consumer_free(bus_kafka_consumer *c)
{
    for (size_t i = 0; i < c->pos_count; i++)
        free(c->pos[i].topic);
    free(c->pos);
    for (size_t i = 0; i < c->name_count; i++)
        free(c->names[i]);
    free(c->names);
    free(c->topics.bootstrap);
    if (c->has_re)
        regfree(&c->re);
    free(c->msgs);
    free(c->refs);
    free(c->arena.buf);
    free(c);
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
    topic_policy_init(&c->topics, cfg);
    c->max_batch = sub->max_batch ? sub->max_batch : DEFAULT_MAX_BATCH;
    c->has_group = sub->group_id != NULL;
    c->reset = sub->reset;
    if (sub->pattern) /* for caught_up: does any topic match? */
        c->has_re = sub->pattern[0] &&
                    regcomp(&c->re, sub->pattern, REG_EXTENDED | REG_NOSUB) == 0; /* else refused */
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
        conf_apply_props(conf, cfg, BUS_KAFKA_SCOPE_CONSUMER, err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        consumer_free(c);
        return NULL;
    }
    rd_kafka_conf_set_rebalance_cb(conf, kafka_rebalance_cb);
    rd_kafka_conf_set_opaque(conf, c);
    char why[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (!c->rk) {
        util_error(err, errlen, "cannot create Kafka consumer: %s", why);
        rd_kafka_conf_destroy(conf);
        consumer_free(c);
        return NULL;
    }
    rd_kafka_poll_set_consumer(c->rk);
    if (subscribe(c, sub, err, errlen) != 0) {
        c->closing = 1;
        rd_kafka_consumer_close(c->rk);
        rd_kafka_destroy(c->rk);
        consumer_free(c);
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
        if (fatal_check(c->rk, "consumer", err, errlen) != 0)
            return -1; /* the batch so far is dropped: nothing more is committed */
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
        if (n == 0 && c->ensure_pending && util_now_ms() >= c->ensure_next_ms)
            consumer_ensure_topics(c, 0, TOPIC_RETRY_TIMEOUT_MS);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, slice);
        if (!m) {
            if (n > 0 || (timeout_ms >= 0 && util_now_ms() >= deadline))
                break;
            continue;
        }
        if (m->err) { /* logged and survived; a fatal one fails the next round */
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && m->err != RD_KAFKA_RESP_ERR__FATAL)
                LOG_WARN("kafka: consumer error%s%s: %s", m->rkt ? " on " : "",
                         m->rkt ? rd_kafka_topic_name(m->rkt) : "", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
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

/* Where p's next read starts before a record was returned from it: the
 * group's committed offset, else the reset rule's end of [low, high). */
static int start_offset(bus_kafka_consumer *c, const kc_pos *p, int64_t low, int64_t high,
                        int timeout_ms, int64_t *start, char *err, size_t errlen)
{
    *start = c->reset == BUS_RESET_LATEST ? high : low;
    if (!c->has_group)
        return 0;
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, p->topic, p->partition);
    rd_kafka_resp_err_t e = rd_kafka_committed(c->rk, list, timeout_ms);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        e = list->elems[0].err;
    int64_t committed = list->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(list);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return util_error(err, errlen, "Kafka committed offset of %s [%d]: %s", p->topic,
                          (int)p->partition, rd_kafka_err2str(e));
    if (committed >= low) /* else none, or gone: the reset rule applies */
        *start = committed;
    return 0;
}

/* 1 if the cluster has a topic that c's subscription names or matches, 0
 * if not (then it never gets partitions to read), -1 on error (err). */
static int any_topic(bus_kafka_consumer *c, int timeout_ms, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(c->rk, 1, NULL, &md, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return util_error(err, errlen, "Kafka metadata: %s", rd_kafka_err2str(e));
    int found = 0;
    for (int i = 0; i < md->topic_cnt && !found; i++) {
        const char *name = md->topics[i].topic;
        if (md->topics[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        if (c->has_re)
            found = regexec(&c->re, name, 0, NULL, 0) == 0;
        for (size_t t = 0; t < c->name_count && !found; t++)
            found = strcmp(c->names[t], name) == 0;
    }
    rd_kafka_metadata_destroy(md);
    return found;
}

int bus_kafka_consumer_caught_up(bus_kafka_consumer *c, int timeout_ms, char *err, size_t errlen)
{
    if (!c->assignment_seen) { /* nothing to wait for if nothing matches */
        int any = any_topic(c, timeout_ms, err, errlen);
        return any < 0 ? -1 : !any;
    }
    for (size_t i = 0; i < c->pos_count; i++) {
        const kc_pos *p = &c->pos[i];
        if (!p->assigned)
            continue;
        int64_t low, high, at = p->next;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(c->rk, p->topic, p->partition,
                                                                 &low, &high, timeout_ms);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            return util_error(err, errlen, "Kafka watermarks of %s [%d]: %s", p->topic,
                              (int)p->partition, rd_kafka_err2str(e));
        if (at < 0 && high > low &&
            start_offset(c, p, low, high, timeout_ms, &at, err, errlen) != 0)
            return -1;
        if (at < high && high > low)
            return 0;
    }
    return 1;
}

void bus_kafka_consumer_wakeup(bus_kafka_consumer *c)
{
    atomic_store(&c->wake, 1);
}

int bus_kafka_consumer_fatal(bus_kafka_consumer *c, char *err, size_t errlen)
{
    char ignored[8];
    return fatal_check(c->rk, "consumer", err ? err : ignored, err ? errlen : sizeof(ignored)) != 0;
}

void bus_kafka_consumer_close(bus_kafka_consumer *c)
{
    if (!c)
        return;
    c->closing = 1;
    rd_kafka_resp_err_t e = rd_kafka_consumer_close(c->rk);
    if (e && e != RD_KAFKA_RESP_ERR__FATAL) /* a fatal error was reported already */
        LOG_WARN("kafka: consumer close: %s", rd_kafka_err2str(e));
    rd_kafka_destroy(c->rk);
    consumer_free(c);
}
