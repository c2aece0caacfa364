/*
 * kafka_bench.c - benchmarks of the Kafka mode (make bench), against
 * librdkafka's mock cluster (tests/tools/kafka_mock, 3 brokers, real Kafka
 * protocol over loopback TCP).
 *
 *   kafka_bench --mock PATH [--runs N] [--dir D] [--only relay|drain]
 *               [--events N] [--txn K] [--partitions P] [--relay-batch B]
 *               [--drain-events N] [--drain-partitions P]
 *               [--kafka NAME=VALUE]... [--verbose]
 *
 * Every run starts a fresh mock cluster per figure (its own process,
 * tests/support/kafka_mock_proc.c: its "bootstrap" line is read from a
 * pipe; it is stopped with "quit" on its stdin and, should it not exit,
 * SIGTERM to its PID) and a
 * fresh data directory D/relay-RUN, D/drain-RUN. D is removed only after
 * the last run: ext4 allocates inodes slowly right after many files were
 * deleted (recently_deleted() in a profile), and deleting one run's 10,000
 * .eml files just before the next run slowed that run's email agent by up
 * to 4x. Figures, medians of the runs:
 *
 *  1. relay: the outbox of DATA_DIR holds N (default 50,000) task.created
 *     envelopes (the Task API's shape and CloudEvents headers), appended in
 *     transactions of K (16; synchronous=FULL, as the Task API's group
 *     commits) before the clock starts (that fill rate is printed too); then
 *     bus_relay_start() with batches of B (2000, herald's default), and
 *     events/s until the relay has published and deleted all N (every
 *     delivery report confirmed: acks=all, idempotent producer), counted
 *     from its first confirmed batch, whose time (connections, producer id;
 *     sometimes ~1 s on the mock) is printed apart. Topic of P (12)
 *     partitions.
 *  2. produce: the same N records straight through bus_produce() on the
 *     Kafka backend, B per call, timed the same way (the calls after the
 *     first): what the relay costs on top of the client.
 *  3. drain: N (10,000) task.created are published to task-events before
 *     the clock; then the email (.eml), slack (log only), audit and
 *     scheduler agents run in this process on Kafka exactly as `herald up`
 *     runs them (one runtime and consumer group each, state in DATA_DIR's
 *     database, derived events through its outbox and one relay); the time
 *     until the outbox is empty and every group's committed offsets reach
 *     the end of every partition it reads (including the derived
 *     notification.sent, email.delivered and reminder.scheduled, which the
 *     audit agent reads too), held for three checks 50 ms apart. The group
 *     joins (~3 s on the mock: until every agent handled its first record)
 *     are part of it and are also printed apart, as is the CPU time of this
 *     process and of the mock. Topics of P (6) partitions.
 *
 * --kafka NAME=VALUE adds a librdkafka property to every herald client
 * (as HERALD_KAFKA_* does); --verbose logs at info and prints the agents'
 * counters.
 *
 * Mock quirks that shape the figures (shared/KAFKA-MOCK.md): clients get
 * fetch.wait.max.ms=5 (an empty Fetch is answered only after the whole
 * wait); retention is ~5 MiB per partition, so topics get enough partitions
 * for N records of ~0.8 KB, and the bench fails if any partition's start
 * offset moved (records were deleted); group joins take ~3 s.
 *
 * Threads: the main thread; the relay and the agents run on threads of
 * their own (outbox.c, agent_runner.c); librdkafka's threads.
 * Ownership: everything is created and freed per figure.
 */
#include "agents/agents.h"
#include "bus/bus.h"
#include "bus/outbox.h"
#include "bus/sqlite_log.h"
#include "cli/agent_runner.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"
#include "runtime/runtime.h"
#include "shared/task_gen.h"
#include "support/kafka_mock_proc.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_RUNS 50
#define DEFAULT_RELAY_BATCH 2000 /* outbox.c's default */
#define DRAIN_PUBLISH_BATCH 1000
#define CHECK_INTERVAL_US 50000
#define STABLE_CHECKS 3
#define DRAIN_TIMEOUT_S 300

static void die(const char *what, const char *err)
{
    fprintf(stderr, "kafka_bench: %s: %s\n", what, err);
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double s[MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof(*v));
    qsort(s, (size_t)n, sizeof(*s), cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void report(const char *name, const char *unit, const double *v, int n, const char *fmt)
{
    char buf[64];
    snprintf(buf, sizeof(buf), fmt, median(v, n));
    printf("%-34s median %12s %-9s runs:", name, buf, unit);
    for (int i = 0; i < n; i++) {
        snprintf(buf, sizeof(buf), fmt, v[i]);
        printf(" %s", buf);
    }
    printf("\n");
    fflush(stdout);
}

static void fresh_dir(const char *dir)
{
    char cmd[8300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    if (system(cmd) != 0)
        die("cannot prepare", dir);
}

static void remove_dir(const char *dir)
{
    char cmd[8300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        die("cannot remove", dir);
}

/* ---- the mock cluster, as its own process (tests/support) ------------- */

/* Start mock_path with 3 brokers and the topics ("NAME:PARTITIONS"). */
static void mock_start(kafka_mock_proc *m, const char *mock_path, const char *const *topics,
                       int ntopics)
{
    char err[512];
    if (kafka_mock_proc_start(m, mock_path, 3, topics, ntopics, err, sizeof(err)) != 0)
        die("kafka_mock", err);
}

/* CPU seconds (user + system) used so far by process pid (0: this one). */
static double cpu_seconds(pid_t pid)
{
    if (pid == 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    }
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the ")" that ends the command name: state is field 3,
     * utime 14, stime 15 */
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- the events -------------------------------------------------------- */

static void sink_produce(void *arg, const bus_record *recs, size_t n)
{
    char err[512];
    if (bus_produce(arg, recs, n, NULL, err, sizeof(err)) != 0)
        die("produce", err);
}

/* bus_produce() to the topic "produce-bench", timing only the calls. */
typedef struct timed_producer {
    bus_producer *p;
    int64_t ns;       /* in every call but the first */
    int64_t first_ns; /* in the first call */
    int calls;
} timed_producer;

static void sink_timed_produce(void *arg, const bus_record *recs, size_t n)
{
    timed_producer *tp = arg;
    bus_record *copy = xcalloc(n, sizeof(*copy));
    for (size_t i = 0; i < n; i++) {
        copy[i] = recs[i];
        copy[i].topic = "produce-bench";
    }
    char err[512];
    int64_t t0 = util_monotonic_ns();
    if (bus_produce(tp->p, copy, n, NULL, err, sizeof(err)) != 0)
        die("produce", err);
    if (tp->calls++ == 0)
        tp->first_ns = util_monotonic_ns() - t0;
    else
        tp->ns += util_monotonic_ns() - t0;
    free(copy);
}

static void sink_outbox(void *arg, const bus_record *recs, size_t n)
{
    char err[512];
    if (bus_log_begin(arg, err, sizeof(err)) != 0 ||
        bus_outbox_append(arg, recs, n, err, sizeof(err)) != 0 ||
        bus_log_commit(arg, err, sizeof(err)) != 0)
        die("outbox", err);
}

/* ---- Kafka checks (librdkafka directly: watermarks, committed offsets) -- */

/* librdkafka properties of every herald client here: the mock's quirks,
 * then any --kafka NAME=VALUE */
#define MAX_PROPS 32
static int verbose_stats;
static const char *kprops[MAX_PROPS + 3] = {"fetch.wait.max.ms=5", "session.timeout.ms=6000", NULL};
static int kprop_count = 2;

static rd_kafka_t *checker_open(const char *bootstrap, const char *group)
{
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, why, sizeof(why)) ||
        rd_kafka_conf_set(conf, "group.id", group, why, sizeof(why)) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", why, sizeof(why)) ||
        rd_kafka_conf_set(conf, "log_level", "3", why, sizeof(why)))
        die("checker conf", why);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (!rk)
        die("checker", why);
    return rk;
}

typedef struct topic_spec {
    const char *name;
    int partitions;
} topic_spec;

/* Sum of high watermarks of topic; -1 if a query failed. *lost set when a
 * partition's low watermark is above 0 (retention deleted records). */
static int64_t topic_end(rd_kafka_t *rk, const topic_spec *t, int64_t *hi_out, int *lost)
{
    int64_t sum = 0;
    for (int p = 0; p < t->partitions; p++) {
        int64_t lo, hi;
        if (rd_kafka_query_watermark_offsets(rk, t->name, p, &lo, &hi, 5000))
            return -1;
        if (lo > 0)
            *lost = 1;
        hi_out[p] = hi;
        sum += hi;
    }
    return sum;
}

/* 1 if group (checker handle rk) committed every partition of topic up to
 * hi[] (a partition with nothing in it needs no commit). */
static int group_at_end(rd_kafka_t *rk, const topic_spec *t, const int64_t *hi)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(t->partitions);
    for (int p = 0; p < t->partitions; p++)
        rd_kafka_topic_partition_list_add(l, t->name, p);
    int ok = rd_kafka_committed(rk, l, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int i = 0; ok && i < l->cnt; i++) {
        rd_kafka_topic_partition_t *e = &l->elems[i];
        if (e->err || (hi[e->partition] > 0 && e->offset < hi[e->partition]))
            ok = 0;
    }
    rd_kafka_topic_partition_list_destroy(l);
    return ok;
}

/* ---- figures ----------------------------------------------------------- */

typedef struct options {
    const char *mock_path, *dir;
    int runs, events, txn, partitions, relay_batch, drain_events, drain_partitions;
    int do_relay, do_drain;
} options;

static void kafka_config(bus_config *cfg, const char *dir, const char *bootstrap)
{
    *cfg = (bus_config)BUS_CONFIG_INIT;
    cfg->kind = BUS_KAFKA;
    cfg->data_dir = dir;
    cfg->bootstrap = bootstrap;
    cfg->client_id = "kafka_bench";
    cfg->kafka_props = kprops;
}

static void check_retention(const char *bootstrap, const topic_spec *topics, int n)
{
    rd_kafka_t *rk = checker_open(bootstrap, "kafka-bench-check");
    for (int i = 0; i < n; i++) {
        int64_t hi[1024];
        int lost = 0;
        if (topic_end(rk, &topics[i], hi, &lost) < 0)
            die("watermarks", topics[i].name);
        if (lost)
            die(topics[i].name, "the mock's retention deleted records: use more partitions "
                                "or fewer events");
    }
    rd_kafka_destroy(rk);
}

/* Figures 1 and 2 of one run: events/s of the relay, of bus_produce() and
 * of the outbox fill; seconds of the relay's and the producer's first
 * batch. */
static void run_relay(const options *o, int run, double *relay_rate, double *produce_rate,
                      double *fill_rate, double *relay_start, double *produce_start)
{
    char spec1[64], spec2[64];
    snprintf(spec1, sizeof(spec1), "task-events:%d", o->partitions);
    snprintf(spec2, sizeof(spec2), "produce-bench:%d", o->partitions);
    const char *specs[] = {spec1, spec2};
    topic_spec topics[] = {{"task-events", o->partitions}, {"produce-bench", o->partitions}};
    kafka_mock_proc m;
    mock_start(&m, o->mock_path, specs, 2);
    char err[1024];

    /* fill the outbox */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/relay-%d", o->dir, run);
    fresh_dir(dir);
    bus_config local = BUS_CONFIG_INIT, remote;
    local.data_dir = dir;
    kafka_config(&remote, dir, m.bootstrap);
    bus_log *log = bus_log_open(&local, err, sizeof(err));
    if (!log || bus_outbox_ensure(log, err, sizeof(err)) != 0)
        die("outbox", err);
    int64_t t0 = util_monotonic_ns();
    task_gen("kafka_bench", o->events, (size_t)o->txn, sink_outbox, log);
    *fill_rate = o->events / ((double)(util_monotonic_ns() - t0) / 1e9);
    if (bus_outbox_depth(log) != o->events)
        die("outbox", "wrong depth after the fill");

    /* relay it: the rate counts from the first confirmed batch (which
     * carries the producer's connections and idempotence set-up) to the
     * last; that first batch's time is reported apart */
    t0 = util_monotonic_ns();
    bus_relay *r = bus_relay_start(&local, &remote, (size_t)o->relay_batch, err, sizeof(err));
    if (!r)
        die("relay", err);
    int64_t limit = t0 + (int64_t)DRAIN_TIMEOUT_S * 1000000000, t_first = 0;
    uint64_t n_first = 0, n;
    while ((n = bus_relay_published(r)) < (uint64_t)o->events) {
        if (!t_first && n > 0) {
            t_first = util_monotonic_ns();
            n_first = n;
        }
        if (util_monotonic_ns() > limit)
            die("relay", "not done within the time limit");
        util_sleep_us(500);
    }
    int64_t t_end = util_monotonic_ns();
    if (!t_first || n_first >= (uint64_t)o->events)
        die("relay", "too few events to time (raise --events)");
    *relay_rate = (double)(o->events - (int64_t)n_first) / ((double)(t_end - t_first) / 1e9);
    *relay_start = (double)(t_first - t0) / 1e9;
    if (bus_relay_stop(r, 0) != 0 || bus_outbox_depth(log) != 0)
        die("relay", "records left in the outbox");
    bus_log_close(log);

    /* the same records straight through the producer, to another topic,
     * timed in the same way: only the bus_produce() calls, from the end of
     * the first one */
    timed_producer tp = {NULL, 0, 0, 0};
    tp.p = bus_producer_open(&remote, err, sizeof(err));
    if (!tp.p)
        die("producer", err);
    task_gen("kafka_bench", o->events, (size_t)o->relay_batch, sink_timed_produce, &tp);
    if (tp.calls < 2)
        die("produce", "too few events to time (raise --events)");
    *produce_rate = (o->events - o->relay_batch) / ((double)tp.ns / 1e9);
    *produce_start = (double)tp.first_ns / 1e9;
    bus_producer_close(tp.p);
    check_retention(m.bootstrap, topics, 2);
    kafka_mock_proc_stop(&m);
}

/* The agents of the drain, their groups and the topics each reads
 * (agents.h); the checker compares each group's commits with these. */
enum { T_TASK, T_NOTIFICATION, T_EMAIL, T_REMINDER, T_COUNT };
static const struct drain_agent {
    const char *name, *group;
    int reads[T_COUNT];
} drain_agents[] = {
    {"email", "notification-email", {1, 0, 0, 1}},
    {"slack", "notification-slack", {1, 0, 0, 0}},
    {"audit", "audit-log", {1, 1, 1, 1}},
    {"scheduler", "scheduler", {1, 0, 0, 0}},
};
#define DRAIN_AGENTS (sizeof(drain_agents) / sizeof(drain_agents[0]))

/* Figure 3 of one run: seconds to drain, seconds until every agent had
 * handled its first record (the group joins), records per topic, and the
 * CPU seconds this process (cpu[0]) and the mock (cpu[1]) used meanwhile. */
static void run_drain(const options *o, int run, double *drain_s, double *join_s,
                      int64_t totals[T_COUNT], double cpu[2])
{
    int P = o->drain_partitions;
    topic_spec topics[T_COUNT] = {{"task-events", P},
                                  {"notification-events", P},
                                  {"email-events", P},
                                  {"reminder-events", P}};
    char specs_buf[T_COUNT + 1][64];
    const char *specs[T_COUNT + 1];
    for (int i = 0; i < T_COUNT; i++) {
        snprintf(specs_buf[i], sizeof(specs_buf[i]), "%s:%d", topics[i].name, P);
        specs[i] = specs_buf[i];
    }
    specs[T_COUNT] = "task-events.dlq:1";
    kafka_mock_proc m;
    mock_start(&m, o->mock_path, specs, T_COUNT + 1);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/drain-%d", o->dir, run);
    fresh_dir(dir);
    bus_config cfg;
    kafka_config(&cfg, dir, m.bootstrap);
    char err[1024];

    /* N task.created on task-events, before the clock */
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    if (!p)
        die("producer", err);
    task_gen("kafka_bench", o->drain_events, DRAIN_PUBLISH_BATCH, sink_produce, p);
    bus_producer_close(p);

    rd_kafka_t *check[DRAIN_AGENTS];
    for (size_t a = 0; a < DRAIN_AGENTS; a++)
        check[a] = checker_open(m.bootstrap, drain_agents[a].group);
    bus_config local = cfg;
    local.kind = BUS_SQLITE;
    bus_log *log = bus_log_open(&local, err, sizeof(err));
    if (!log || bus_outbox_ensure(log, err, sizeof(err)) != 0)
        die("outbox", err);
    agent_settings s = AGENT_SETTINGS_INIT;
    s.data_dir = dir;
    s.smtp_from = "herald@localhost";
    runtime_retry retry = RUNTIME_RETRY_INIT;
    const agent_entry *entries[DRAIN_AGENTS];
    for (size_t a = 0; a < DRAIN_AGENTS; a++)
        if (!(entries[a] = agents_find(drain_agents[a].name)))
            die("no agent", drain_agents[a].name);

    /* the clock: the relay and the agents, as `herald up` starts them */
    double cpu0 = cpu_seconds(0), mock_cpu0 = cpu_seconds(m.pid);
    int64_t t0 = util_monotonic_ns();
    bus_relay *relay = bus_relay_start(&local, &cfg, 0, err, sizeof(err));
    if (!relay)
        die("relay", err);
    agent_runner *r = agent_runner_start(&cfg, &s, &retry, entries, DRAIN_AGENTS, err, sizeof(err));
    if (!r)
        die("agents", err);
    int64_t first[DRAIN_AGENTS] = {0}, caught_up[DRAIN_AGENTS] = {0}, done_at = 0;
    int stable = 0;
    int64_t limit = t0 + (int64_t)DRAIN_TIMEOUT_S * 1000000000;
    while (stable < STABLE_CHECKS) {
        util_sleep_us(CHECK_INTERVAL_US);
        int64_t now = util_monotonic_ns();
        if (now > limit)
            die("drain", "not done within the time limit");
        for (size_t a = 0; a < DRAIN_AGENTS; a++) {
            runtime_stats st;
            const char *name;
            agent_runner_stats(r, a, &name, &st);
            if (!first[a] && st.handled + st.skipped + st.duplicates + st.dead_lettered > 0)
                first[a] = now;
        }
        /* the outbox last: what an agent committed before its offsets is
         * seen there or, once relayed, in the watermarks of the next check */
        int64_t hi[T_COUNT][1024];
        int lost = 0, ok = 1;
        for (int t = 0; t < T_COUNT && ok; t++)
            ok = topic_end(check[0], &topics[t], hi[t], &lost) >= 0;
        if (lost)
            die("drain", "the mock's retention deleted records: use more partitions");
        int all_at_end = ok;
        for (size_t a = 0; a < DRAIN_AGENTS && ok; a++) {
            int at_end = 1;
            for (int t = 0; t < T_COUNT && at_end; t++)
                if (drain_agents[a].reads[t])
                    at_end = group_at_end(check[a], &topics[t], hi[t]);
            if (!at_end)
                caught_up[a] = 0;
            else if (!caught_up[a])
                caught_up[a] = now;
            all_at_end &= at_end;
        }
        ok = all_at_end && bus_outbox_depth(log) == 0;
        if (ok) {
            if (stable++ == 0)
                done_at = now;
        } else {
            stable = 0;
        }
    }
    cpu[0] = cpu_seconds(0) - cpu0;
    cpu[1] = cpu_seconds(m.pid) - mock_cpu0;
    int64_t joined = 0;
    for (size_t a = 0; a < DRAIN_AGENTS; a++)
        if (first[a] > joined)
            joined = first[a];
    *drain_s = (double)(done_at - t0) / 1e9;
    *join_s = (double)(joined - t0) / 1e9;
    for (int t = 0; t < T_COUNT; t++) {
        int64_t hi[1024];
        int lost = 0;
        totals[t] = topic_end(check[0], &topics[t], hi, &lost);
    }
    int64_t all = 0;
    for (int t = 0; t < T_COUNT; t++)
        all += totals[t];
    for (size_t a = 0; a < DRAIN_AGENTS; a++) {
        runtime_stats st;
        const char *name;
        agent_runner_stats(r, a, &name, &st);
        /* the audit agent reads every record of every topic: a check that
         * the drain really ended */
        if (strcmp(name, "audit") == 0 &&
            (int64_t)(st.handled + st.duplicates + st.skipped + st.dead_lettered) < all)
            die("drain", "the audit agent read fewer records than the topics hold");
        if (verbose_stats)
            fprintf(stderr,
                    "kafka_bench: agent %s: %llu handled, %llu skipped, %llu duplicates, "
                    "%llu emitted, %llu batches; first record at %.2f s, caught up at %.2f s\n",
                    name, (unsigned long long)st.handled, (unsigned long long)st.skipped,
                    (unsigned long long)st.duplicates, (unsigned long long)st.emitted,
                    (unsigned long long)st.batches, (double)(first[a] - t0) / 1e9,
                    caught_up[a] ? (double)(caught_up[a] - t0) / 1e9 : -1.0);
        if (st.dead_lettered || st.retried)
            fprintf(stderr, "kafka_bench: agent %s: %llu retried, %llu dead-lettered\n", name,
                    (unsigned long long)st.retried, (unsigned long long)st.dead_lettered);
    }
    agent_runner_stop(r);
    bus_relay_stop(relay, 10000);
    bus_log_close(log);
    for (size_t a = 0; a < DRAIN_AGENTS; a++)
        rd_kafka_destroy(check[a]);
    kafka_mock_proc_stop(&m);
}

static void usage(void)
{
    die("usage", "kafka_bench --mock PATH [--runs N] [--dir D] [--only relay|drain] "
                 "[--events N] [--txn K] [--partitions P] [--relay-batch B] [--drain-events N] "
                 "[--drain-partitions P] [--kafka NAME=VALUE]... [--verbose]");
}

int main(int argc, char **argv)
{
    options o = {NULL, "build/bench-kafka", 3, 50000, 16, 12, DEFAULT_RELAY_BATCH, 10000, 6, 1, 1};
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--verbose") == 0) {
            verbose = verbose_stats = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (strcmp(a, "--kafka") == 0 && strchr(v, '=') && kprop_count < MAX_PROPS + 2)
            kprops[kprop_count++] = v;
        else if (strcmp(a, "--mock") == 0)
            o.mock_path = v;
        else if (strcmp(a, "--dir") == 0)
            o.dir = v;
        else if (strcmp(a, "--runs") == 0)
            o.runs = atoi(v);
        else if (strcmp(a, "--events") == 0)
            o.events = atoi(v);
        else if (strcmp(a, "--txn") == 0)
            o.txn = atoi(v);
        else if (strcmp(a, "--partitions") == 0)
            o.partitions = atoi(v);
        else if (strcmp(a, "--relay-batch") == 0)
            o.relay_batch = atoi(v);
        else if (strcmp(a, "--drain-events") == 0)
            o.drain_events = atoi(v);
        else if (strcmp(a, "--drain-partitions") == 0)
            o.drain_partitions = atoi(v);
        else if (strcmp(a, "--only") == 0 && strcmp(v, "relay") == 0)
            o.do_drain = 0;
        else if (strcmp(a, "--only") == 0 && strcmp(v, "drain") == 0)
            o.do_relay = 0;
        else
            usage();
    }
    if (!o.mock_path || o.runs < 1 || o.runs > MAX_RUNS || o.events < 1 || o.txn < 1 ||
        o.relay_batch < 1 || o.relay_batch > 100000 || o.partitions < 1 || o.partitions > 1024 ||
        o.drain_events < 1 || o.drain_partitions < 1 || o.drain_partitions > 1024)
        usage();
    log_threshold = verbose ? LOG_LEVEL_INFO : LOG_LEVEL_ERROR;
    signal(SIGPIPE, SIG_IGN);

    double relay_first[MAX_RUNS], produce_first[MAX_RUNS];
    double relay[MAX_RUNS], produce[MAX_RUNS], fill[MAX_RUNS], drain[MAX_RUNS], join[MAX_RUNS];
    int64_t totals[T_COUNT] = {0};
    for (int run = 0; run < o.runs; run++) {
        if (o.do_relay) {
            run_relay(&o, run, &relay[run], &produce[run], &fill[run], &relay_first[run],
                      &produce_first[run]);
            printf("run %d: outbox fill %.0f events/s (%d per transaction); relay %.0f events/s "
                   "(first batch after %.3f s); bus_produce %.0f events/s (first call %.3f s)\n",
                   run + 1, fill[run], o.txn, relay[run], relay_first[run], produce[run],
                   produce_first[run]);
            fflush(stdout);
        }
        if (o.do_drain) {
            double cpu[2];
            run_drain(&o, run, &drain[run], &join[run], totals, cpu);
            printf("run %d: drain of %d task.created %.2f s (group joins %.2f s; CPU: herald "
                   "%.1f s, mock %.1f s); records: task %lld, notification %lld, email %lld, "
                   "reminder %lld\n",
                   run + 1, o.drain_events, drain[run], join[run], cpu[0], cpu[1],
                   (long long)totals[T_TASK], (long long)totals[T_NOTIFICATION],
                   (long long)totals[T_EMAIL], (long long)totals[T_REMINDER]);
            fflush(stdout);
        }
    }
    remove_dir(o.dir);
    if (o.do_relay) {
        char name[64];
        printf("# %d task.created, topic of %d partitions, 3 brokers, acks=all, %d records per "
               "bus_produce() (relay batch)\n",
               o.events, o.partitions, o.relay_batch);
        snprintf(name, sizeof(name), "outbox_fill_%d_per_txn", o.txn);
        report(name, "events/s", fill, o.runs, "%.0f");
        report("relay_publish", "events/s", relay, o.runs, "%.0f");
        snprintf(name, sizeof(name), "bus_produce_%d_per_call", o.relay_batch);
        report(name, "events/s", produce, o.runs, "%.0f");
        report("relay_first_batch", "s", relay_first, o.runs, "%.3f");
        report("bus_produce_first_call", "s", produce_first, o.runs, "%.3f");
    }
    if (o.do_drain) {
        printf("# drain of %d task.created through email (.eml), slack (log only), audit, "
               "scheduler; topics of %d partitions\n",
               o.drain_events, o.drain_partitions);
        report("drain", "s", drain, o.runs, "%.2f");
        report("drain_group_joins", "s", join, o.runs, "%.2f");
        double after[MAX_RUNS];
        for (int i = 0; i < o.runs; i++)
            after[i] = o.drain_events / (drain[i] - join[i]);
        report("drain_after_joins", "tasks/s", after, o.runs, "%.0f");
    }
    return 0;
}
