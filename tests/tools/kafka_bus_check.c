/*
 * kafka_bus_check.c - a test tool: the Kafka backend of bus.h against a
 * librdkafka mock cluster (rdkafka_mock.h, 3 brokers) started in this
 * process. Run by tests/e2e/test_bus_kafka.py. Not installed.
 *
 *   kafka_bus_check
 *       Creates topics task-events (3 partitions), email-events (2) and
 *       other-topic (1), then, through bus.h only (kind BUS_KAFKA, set by
 *       bus_config_set_url("kafka:<mock bootstraps>")):
 *         - produces 3 batches of 4 records with keys and headers (binary,
 *           empty) and checks every record was acknowledged with an offset;
 *         - a group consumes them back: values, keys, headers, per-key
 *           order, timestamps; seek re-reads a record; wakeup ends a
 *           blocked poll; commit;
 *         - the group reopened after 20 marker records (keys that cover
 *           every partition) receives the markers and nothing else;
 *         - a second group receives everything;
 *         - a pattern subscription ^.*-events$ receives from task-events
 *           and email-events and nothing from other-topic;
 *         - a consumer without a group reads everything from the start;
 *         - a second member joining a group: committed records are not
 *           delivered again, nothing produced meanwhile is lost.
 *       Prints one "ok ..." line per check (or "FAIL ..." on stderr) and
 *       exits 0 when every check passed, 1 otherwise.
 *
 * The consumers set fetch.wait.max.ms=5 through cfg.kafka_props (the mock
 * answers an empty fetch only after the full wait); group joins take about
 * 3 s on the mock, so every wait is for a condition, with a long limit.
 * They also set session.timeout.ms=6000 (see consumer_props).
 */
#include "bus/bus.h"
#include "common/log.h"
#include "common/util.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAIT_MS 60000
#define MAX_GOT 256
#define BATCHES 3
#define PER_BATCH 4
#define MARKERS 20
#define EMAILS 5

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __func__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            failures++;                                                                            \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

static const char bin_header[3] = {'\0', '\001', '\377'};

/* A consumed record, copied out of its batch. */
typedef struct got {
    char topic[64];
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms;
    char key[32]; /* "" when none */
    int has_key;
    char value[64];
    int seq;        /* header "seq", -1 when absent */
    int headers_ok; /* the binary, empty and ce_id headers round-tripped */
    int header_count_ok;
} got;

typedef struct got_list {
    got items[MAX_GOT];
    size_t n;
} got_list;

static bus_config base_cfg;
/* session.timeout.ms: the 2.0.2 mock keeps a member that sent LeaveGroup
 * until its session times out (45 s by default), so reopening a group waits
 * that long; a real broker rebalances at once. */
static const char *const consumer_props[] = {"fetch.wait.max.ms=5", "session.timeout.ms=6000",
                                             NULL};

static void copy_message(const bus_message *m, got *g)
{
    memset(g, 0, sizeof(*g));
    util_strlcpy(g->topic, m->topic, sizeof(g->topic));
    g->partition = m->partition;
    g->offset = m->offset;
    g->timestamp_ms = m->timestamp_ms;
    g->has_key = m->key != NULL;
    if (m->key)
        snprintf(g->key, sizeof(g->key), "%.*s", (int)m->key_len, m->key);
    snprintf(g->value, sizeof(g->value), "%.*s", (int)m->value_len, m->value);
    const char *v;
    size_t len;
    g->seq = -1;
    if (bus_message_header(m, "seq", &v, &len) && len < 16) {
        char buf[16];
        memcpy(buf, v, len);
        buf[len] = '\0';
        g->seq = atoi(buf);
    }
    int bin = bus_message_header(m, "bin", &v, &len) && len == sizeof(bin_header) &&
              memcmp(v, bin_header, len) == 0;
    int empty = bus_message_header(m, "empty", &v, &len) && len == 0;
    char want_id[80];
    snprintf(want_id, sizeof(want_id), "id-%s", g->value);
    int id = bus_message_header(m, "ce_id", &v, &len) && len == strlen(want_id) &&
             memcmp(v, want_id, len) == 0;
    g->headers_ok = bin && empty && id;
    g->header_count_ok = !bus_message_header(m, "missing", &v, &len);
}

/* Poll c until list holds at least want records or WAIT_MS passes. */
static int consume(bus_consumer *c, got_list *list, size_t want)
{
    int64_t deadline = util_now_ms() + WAIT_MS;
    while (list->n < want && util_now_ms() < deadline) {
        const bus_message *msgs;
        size_t n;
        char err[512];
        if (bus_consumer_poll(c, 500, &msgs, &n, err, sizeof(err)) != 0) {
            fprintf(stderr, "poll: %s\n", err);
            return -1;
        }
        for (size_t i = 0; i < n && list->n < MAX_GOT; i++)
            copy_message(&msgs[i], &list->items[list->n++]);
    }
    return list->n >= want ? 0 : -1;
}

static bus_consumer *open_consumer(const char *group, const char *const *topics, size_t ntopics,
                                   const char *pattern, size_t max_batch)
{
    bus_config cfg = base_cfg;
    cfg.kafka_props = consumer_props;
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = group;
    sub.topics = topics;
    sub.topic_count = ntopics;
    sub.pattern = pattern;
    sub.max_batch = max_batch;
    char err[512];
    bus_consumer *c = bus_consumer_open(&cfg, &sub, err, sizeof(err));
    if (!c)
        fprintf(stderr, "consumer open: %s\n", err);
    return c;
}

/* Produce one batch of records to topic; value "<prefix>-<i>", key
 * "<keyprefix><i % keys>", headers seq/bin/empty/ce_id when with_headers. */
static int produce_batch(bus_producer *p, const char *topic, const char *prefix, int first,
                         int count, const char *keyprefix, int keys, int with_headers)
{
    bus_record recs[MARKERS];
    char values[MARKERS][64], keybuf[MARKERS][32], seqs[MARKERS][16], ids[MARKERS][80];
    bus_header hdrs[MARKERS][4];
    int64_t offsets[MARKERS];
    memset(recs, 0, sizeof(recs));
    for (int i = 0; i < count; i++) {
        int k = first + i;
        snprintf(values[i], sizeof(values[i]), "%s-%d", prefix, k);
        snprintf(keybuf[i], sizeof(keybuf[i]), "%s%d", keyprefix, k % keys);
        snprintf(seqs[i], sizeof(seqs[i]), "%d", k);
        snprintf(ids[i], sizeof(ids[i]), "id-%s", values[i]);
        bus_record r = BUS_RECORD_INIT;
        r.topic = topic;
        r.key = keybuf[i];
        r.key_len = strlen(keybuf[i]);
        r.value = values[i];
        r.value_len = strlen(values[i]);
        if (with_headers) {
            hdrs[i][0] = (bus_header){"seq", seqs[i], strlen(seqs[i])};
            hdrs[i][1] = (bus_header){"bin", bin_header, sizeof(bin_header)};
            hdrs[i][2] = (bus_header){"empty", "", 0};
            hdrs[i][3] = (bus_header){"ce_id", ids[i], strlen(ids[i])};
            r.headers = hdrs[i];
            r.header_count = 4;
        }
        recs[i] = r;
        offsets[i] = -1;
    }
    char err[512];
    CHECK(bus_produce(p, recs, (size_t)count, offsets, err, sizeof(err)) == 0, "produce: %s", err);
    for (int i = 0; i < count; i++)
        CHECK(offsets[i] >= 0, "record %d has no offset", i);
    return 0;
}

/* The 12 records with headers: every one exactly once, headers intact,
 * keys k0..k3 in seq order per key. */
static int check_task_records(const got_list *list, const char *what)
{
    int seen[BATCHES * PER_BATCH] = {0};
    int last_seq[PER_BATCH] = {-1, -1, -1, -1};
    int64_t now = util_now_ms();
    for (size_t i = 0; i < list->n; i++) {
        const got *g = &list->items[i];
        int k;
        if (sscanf(g->value, "task-%d", &k) != 1)
            continue;
        CHECK(k >= 0 && k < BATCHES * PER_BATCH, "%s: unexpected value %s", what, g->value);
        CHECK(!seen[k], "%s: %s delivered twice", what, g->value);
        seen[k] = 1;
        CHECK(strcmp(g->topic, "task-events") == 0, "%s: topic %s", what, g->topic);
        char key[32];
        snprintf(key, sizeof(key), "k%d", k % PER_BATCH);
        CHECK(g->has_key && strcmp(g->key, key) == 0, "%s: %s has key '%s', want %s", what,
              g->value, g->key, key);
        CHECK(g->seq == k, "%s: %s has seq %d", what, g->value, g->seq);
        CHECK(g->headers_ok && g->header_count_ok, "%s: %s headers did not round-trip", what,
              g->value);
        CHECK(g->seq > last_seq[k % PER_BATCH], "%s: key %s out of order (%d after %d)", what, key,
              g->seq, last_seq[k % PER_BATCH]);
        last_seq[k % PER_BATCH] = g->seq;
        CHECK(g->timestamp_ms > now - 3600000 && g->timestamp_ms < now + 3600000,
              "%s: %s has timestamp %lld", what, g->value, (long long)g->timestamp_ms);
    }
    for (int k = 0; k < BATCHES * PER_BATCH; k++)
        CHECK(seen[k], "%s: task-%d never delivered", what, k);
    return 0;
}

static void *wake_later(void *arg)
{
    util_sleep_us(300000);
    bus_consumer_wakeup(arg);
    return NULL;
}

static int step_produce(bus_producer *p)
{
    for (int b = 0; b < BATCHES; b++)
        if (produce_batch(p, "task-events", "task", b * PER_BATCH, PER_BATCH, "k", PER_BATCH, 1) !=
            0)
            return -1;
    printf("ok produce: %d batches of %d records acknowledged with offsets\n", BATCHES, PER_BATCH);
    return 0;
}

static got_list list_a, list_b, list_c, list_d, list_e;

static int step_group_consume(void)
{
    static const char *const topics[] = {"task-events"};
    bus_consumer *c = open_consumer("check-g1", topics, 1, NULL, 5);
    CHECK(c, "open g1");
    int rc = consume(c, &list_a, BATCHES * PER_BATCH);
    if (rc != 0) {
        bus_consumer_close(c);
        CHECK(0, "g1 received %zu of %d records", list_a.n, BATCHES * PER_BATCH);
    }
    if (check_task_records(&list_a, "g1") != 0) {
        bus_consumer_close(c);
        return -1;
    }
    printf("ok group g1: %zu records with keys, headers (binary, empty), per-key order\n",
           list_a.n);

    /* seek back to the first record received and read it again */
    const got *first = &list_a.items[0];
    char err[512];
    if (bus_consumer_seek(c, first->topic, first->partition, first->offset, err, sizeof(err)) !=
        0) {
        bus_consumer_close(c);
        CHECK(0, "seek: %s", err);
    }
    got_list again = {.n = 0};
    int found = 0;
    int64_t deadline = util_now_ms() + WAIT_MS;
    while (!found && util_now_ms() < deadline) {
        again.n = 0;
        if (consume(c, &again, 1) != 0)
            break;
        for (size_t i = 0; i < again.n; i++)
            if (again.items[i].partition == first->partition &&
                again.items[i].offset == first->offset &&
                strcmp(again.items[i].value, first->value) == 0)
                found = 1;
    }
    if (!found) {
        bus_consumer_close(c);
        CHECK(0, "seek did not re-read %s", first->value);
    }
    printf("ok seek: %s (partition %d offset %lld) read again\n", first->value,
           (int)first->partition, (long long)first->offset);

    /* drain what the seek re-reads, so the commit covers everything */
    const bus_message *msgs;
    size_t n;
    do {
        if (bus_consumer_poll(c, 1000, &msgs, &n, err, sizeof(err)) != 0)
            n = 0;
    } while (n > 0);

    pthread_t t;
    pthread_create(&t, NULL, wake_later, c);
    int64_t t0 = util_now_ms();
    int prc = bus_consumer_poll(c, 30000, &msgs, &n, err, sizeof(err));
    int64_t waited = util_now_ms() - t0;
    pthread_join(t, NULL);
    if (prc != 0 || n != 0 || waited >= 25000) {
        bus_consumer_close(c);
        CHECK(0, "wakeup: poll rc %d count %zu after %lld ms", prc, n, (long long)waited);
    }
    printf("ok wakeup: a blocked poll returned empty\n");

    rc = bus_consumer_commit(c, err, sizeof(err));
    bus_consumer_close(c);
    CHECK(rc == 0, "commit: %s", err);
    printf("ok commit\n");
    return 0;
}

static int step_reopen(bus_producer *p)
{
    if (produce_batch(p, "task-events", "marker", 0, MARKERS, "m", MARKERS, 0) != 0)
        return -1;
    static const char *const topics[] = {"task-events"};
    bus_consumer *c = open_consumer("check-g1", topics, 1, NULL, 0);
    CHECK(c, "reopen g1");
    int rc = consume(c, &list_b, MARKERS);
    /* anything re-delivered comes before the markers of its partition */
    const bus_message *msgs;
    size_t n;
    char err[512];
    if (bus_consumer_poll(c, 1000, &msgs, &n, err, sizeof(err)) == 0)
        for (size_t i = 0; i < n && list_b.n < MAX_GOT; i++)
            copy_message(&msgs[i], &list_b.items[list_b.n++]);
    bus_consumer_close(c);
    CHECK(rc == 0, "reopened g1 received %zu of %d markers", list_b.n, MARKERS);
    unsigned parts = 0;
    for (size_t i = 0; i < list_b.n; i++) {
        CHECK(strncmp(list_b.items[i].value, "marker-", 7) == 0,
              "reopened g1 re-delivered %s after its commit", list_b.items[i].value);
        parts |= 1u << list_b.items[i].partition;
    }
    CHECK(list_b.n == MARKERS, "reopened g1 received %zu records, want %d", list_b.n, MARKERS);
    CHECK(parts == 7u, "markers did not cover the 3 partitions (mask %u)", parts);
    printf("ok reopened group g1: only the %d new records (all 3 partitions), nothing "
           "re-delivered\n",
           MARKERS);
    return 0;
}

static int step_second_group(void)
{
    static const char *const topics[] = {"task-events"};
    bus_consumer *c = open_consumer("check-g2", topics, 1, NULL, 0);
    CHECK(c, "open g2");
    int rc = consume(c, &list_c, BATCHES * PER_BATCH + MARKERS);
    bus_consumer_close(c);
    CHECK(rc == 0, "g2 received %zu of %d", list_c.n, BATCHES * PER_BATCH + MARKERS);
    CHECK(list_c.n == BATCHES * PER_BATCH + MARKERS, "g2 received %zu", list_c.n);
    if (check_task_records(&list_c, "g2") != 0)
        return -1;
    printf("ok second group g2: all %zu records\n", list_c.n);
    return 0;
}

static int step_pattern(bus_producer *p)
{
    if (produce_batch(p, "email-events", "email", 0, EMAILS, "e", EMAILS, 1) != 0 ||
        produce_batch(p, "other-topic", "other", 0, 3, "o", 3, 0) != 0)
        return -1;
    bus_consumer *c = open_consumer("check-audit", NULL, 0, "^.*-events$", 0);
    CHECK(c, "open pattern consumer");
    size_t want = BATCHES * PER_BATCH + MARKERS + EMAILS;
    int rc = consume(c, &list_d, want);
    const bus_message *msgs;
    size_t n;
    char err[512];
    if (bus_consumer_poll(c, 1000, &msgs, &n, err, sizeof(err)) == 0)
        for (size_t i = 0; i < n && list_d.n < MAX_GOT; i++)
            copy_message(&msgs[i], &list_d.items[list_d.n++]);
    bus_consumer_close(c);
    CHECK(rc == 0, "pattern consumer received %zu of %zu", list_d.n, want);
    size_t emails = 0, tasks = 0;
    for (size_t i = 0; i < list_d.n; i++) {
        const got *g = &list_d.items[i];
        CHECK(strcmp(g->topic, "other-topic") != 0, "pattern matched other-topic (%s)", g->value);
        if (strcmp(g->topic, "email-events") == 0) {
            emails++;
            char want_key[32];
            int k = -1;
            sscanf(g->value, "email-%d", &k);
            snprintf(want_key, sizeof(want_key), "e%d", k);
            CHECK(strcmp(g->key, want_key) == 0 && g->headers_ok, "email record %s: key %s",
                  g->value, g->key);
        } else {
            tasks++;
        }
    }
    CHECK(emails == EMAILS && tasks == BATCHES * PER_BATCH + MARKERS,
          "pattern consumer: %zu email, %zu task records", emails, tasks);
    printf("ok pattern ^.*-events$: %zu from task-events, %zu from email-events, none from "
           "other-topic\n",
           tasks, emails);
    return 0;
}

static int step_no_group(void)
{
    static const char *const topics[] = {"email-events"};
    bus_consumer *c = open_consumer(NULL, topics, 1, NULL, 0);
    CHECK(c, "open consumer without group");
    int rc = consume(c, &list_e, EMAILS);
    char err[512];
    int crc = bus_consumer_commit(c, err, sizeof(err));
    bus_consumer_close(c);
    CHECK(rc == 0 && list_e.n == EMAILS, "no-group consumer received %zu of %d", list_e.n, EMAILS);
    CHECK(crc == 0, "commit without group: %s", err);
    printf("ok consumer without group: %zu records\n", list_e.n);
    return 0;
}

/* Poll c once (timeout_ms) into list; -1 on a poll error. */
static int poll_into(bus_consumer *c, int timeout_ms, got_list *list)
{
    const bus_message *msgs;
    size_t n;
    char err[512];
    if (bus_consumer_poll(c, timeout_ms, &msgs, &n, err, sizeof(err)) != 0) {
        fprintf(stderr, "poll: %s\n", err);
        return -1;
    }
    for (size_t i = 0; i < n && list->n < MAX_GOT; i++)
        copy_message(&msgs[i], &list->items[list->n++]);
    return 0;
}

static got_list list_f, list_g;

/* Did list hold a record with this value? */
static int got_value(const got_list *list, const char *value)
{
    for (size_t i = 0; i < list->n; i++)
        if (strcmp(list->items[i].value, value) == 0)
            return 1;
    return 0;
}

/*
 * A reads email-events and commits; B joins the group and the partitions
 * are split between them. The committed records are never delivered again
 * (positions restart from the commit after a reassignment) and nothing
 * produced around the rebalance is lost. Records A read but had not
 * committed may be delivered again: the revocation commits A's positions,
 * but the 2.0.2 mock refuses any commit while a rebalance is in progress
 * (REBALANCE_IN_PROGRESS; a real broker accepts it from the current
 * generation), so duplicates of those are allowed here.
 */
static int step_rebalance(bus_producer *p)
{
    static const char *const topics[] = {"email-events"};
    bus_consumer *a = open_consumer("check-g5", topics, 1, NULL, 0);
    CHECK(a, "open a");
    char err[512] = "";
    int rc = consume(a, &list_f, EMAILS);
    int crc = rc == 0 ? bus_consumer_commit(a, err, sizeof(err)) : -1;
    size_t old = list_f.n;
    bus_consumer *b = crc == 0 ? open_consumer("check-g5", topics, 1, NULL, 0) : NULL;
    int64_t deadline = util_now_ms() + WAIT_MS;
    int late = 0;
    for (int round = 0; b && list_g.n == 0 && util_now_ms() < deadline; round++) {
        if (round % 8 == 0 && late + 10 <= 100) {
            if (produce_batch(p, "email-events", "late", late, 10, "l", 10, 0) != 0)
                break;
            late += 10;
        }
        if (poll_into(a, 250, &list_f) != 0 || poll_into(b, 250, &list_g) != 0)
            break;
    }
    /* then until every late record has arrived at a or b */
    int missing = late;
    while (b && missing > 0 && util_now_ms() < deadline) {
        if (poll_into(a, 250, &list_f) != 0 || poll_into(b, 250, &list_g) != 0)
            break;
        missing = 0;
        for (int i = 0; i < late; i++) {
            char v[32];
            snprintf(v, sizeof(v), "late-%d", i);
            missing += !got_value(&list_f, v) && !got_value(&list_g, v);
        }
    }
    bus_consumer_close(a);
    bus_consumer_close(b);
    CHECK(rc == 0, "a received %zu of %d records", list_f.n, EMAILS);
    CHECK(crc == 0, "a commit: %s", err);
    CHECK(list_g.n > 0, "b never received a record after joining");
    CHECK(missing == 0, "%d of %d records produced around the rebalance were lost", missing, late);
    for (size_t i = old; i < list_f.n + list_g.n; i++) {
        const got *x = i < list_f.n ? &list_f.items[i] : &list_g.items[i - list_f.n];
        CHECK(strncmp(x->value, "email-", 6) != 0, "committed record %s delivered again", x->value);
    }
    printf("ok rebalance: a %zu records, b %zu after joining; committed records not "
           "re-delivered, none of %d produced meanwhile lost\n",
           list_f.n, list_g.n, late);
    return 0;
}

static int step_bad_input(void)
{
    bus_config cfg = base_cfg;
    static const char *const bad_props[] = {"no-equals-sign", NULL};
    cfg.kafka_props = bad_props;
    char err[512] = "";
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    CHECK(!p && strstr(err, "no-equals-sign"), "bad property accepted: %s", err);
    static const char *const unknown[] = {"no.such.property=1", NULL};
    cfg.kafka_props = unknown;
    p = bus_producer_open(&cfg, err, sizeof(err));
    CHECK(!p && strstr(err, "no.such.property"), "unknown property accepted: %s", err);
    cfg = base_cfg;
    p = bus_producer_open(&cfg, err, sizeof(err));
    CHECK(p, "producer: %s", err);
    bus_record r = BUS_RECORD_INIT;
    r.topic = "bad topic!";
    r.value = "x";
    r.value_len = 1;
    int rc = bus_produce(p, &r, 1, NULL, err, sizeof(err));
    bus_producer_close(p);
    CHECK(rc == -1 && strstr(err, "bad topic!"), "bad topic accepted");
    printf("ok bad input: property syntax, unknown property, topic name rejected\n");
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    log_set_level_name(getenv("HERALD_LOG_LEVEL") ? getenv("HERALD_LOG_LEVEL") : "warn");
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", why, sizeof(why));
    rd_kafka_t *mrk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    if (!mrk) {
        fprintf(stderr, "FAIL mock handle: %s\n", why);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(mrk, 3);
    if (!mc) {
        fprintf(stderr, "FAIL cannot start the mock cluster\n");
        rd_kafka_destroy(mrk);
        return 1;
    }
    if (rd_kafka_mock_topic_create(mc, "task-events", 3, 3) ||
        rd_kafka_mock_topic_create(mc, "email-events", 2, 3) ||
        rd_kafka_mock_topic_create(mc, "other-topic", 1, 3)) {
        fprintf(stderr, "FAIL cannot create topics on the mock cluster\n");
        failures++;
    }
    char url[512];
    snprintf(url, sizeof(url), "kafka:%s", rd_kafka_mock_cluster_bootstraps(mc));
    printf("mock cluster: %s\n", url);
    fflush(stdout);
    base_cfg = (bus_config)BUS_CONFIG_INIT;
    base_cfg.client_id = "kafka_bus_check";
    char err[512];
    if (failures == 0 && bus_config_set_url(&base_cfg, url, err, sizeof(err)) != 0) {
        fprintf(stderr, "FAIL url: %s\n", err);
        failures++;
    }
    bus_producer *p = NULL;
    if (failures == 0) {
        p = bus_producer_open(&base_cfg, err, sizeof(err));
        if (!p) {
            fprintf(stderr, "FAIL producer: %s\n", err);
            failures++;
        }
    }
    if (p && base_cfg.kind == BUS_KAFKA) {
        printf("ok url: kind kafka, bootstrap %s\n", base_cfg.bootstrap);
        if (step_produce(p) == 0 && step_group_consume() == 0 && step_reopen(p) == 0) {
            step_second_group();
            step_pattern(p);
            step_no_group();
            step_rebalance(p);
        }
        step_bad_input();
    }
    bus_producer_close(p);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(mrk);
    if (failures) {
        printf("FAILED: %d check(s)\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
