/*
 * bus_bench.c - benchmarks of the embedded bus (make bench).
 *
 * Each figure is measured RUNS times on a fresh data directory and printed
 * as the median, with every run's value, so a noisy shared machine shows
 * itself in the spread:
 *   publish_single   events/s, one event per transaction (synchronous=FULL)
 *   publish_batched  events/s, 1000 events of 300 bytes per transaction
 *   consume_1_group  events/s handed over by poll (not decoded), one group
 *   consume_4_groups events/s per group, four groups reading at once
 *   <same|cross>_<full|normal>_<delivery|total>_<p50|p99>
 *                    publish-to-consume latency in microseconds, consumer
 *                    in the producer's process (same) or another (cross),
 *                    synchronous=FULL or NORMAL; "delivery" counts from
 *                    bus_produce() returning, "total" from calling it
 *                    (so it includes the commit's fsync)
 *   idle_cpu         % of one core used by a consumer waiting in poll
 *
 * Usage: bus_bench [--runs N] [--dir DIR] [--quick]
 */
#include "bus/bus.h"
#include "bus/sqlite_log.h"
#include "common/util.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static int runs = 5;
static const char *base_dir = "build/bench-data";
static int quick = 0;
static int run_seq = 0;

static void fresh_dir(char *out, size_t len)
{
    snprintf(out, len, "%s/run-%d-%d", base_dir, (int)getpid(), run_seq++);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", out);
    if (system(cmd) != 0)
        exit(1);
    if (util_mkdir_p(out) != 0) {
        perror(out);
        exit(1);
    }
}

static void remove_dir(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        exit(1);
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "bus_bench: %s: %s\n", what, err);
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *name, const char *unit, double *v, int n)
{
    double sorted[64];
    memcpy(sorted, v, (size_t)n * sizeof(double));
    qsort(sorted, (size_t)n, sizeof(double), cmp_double);
    printf("%-26s median %12.1f %-10s runs:", name, sorted[n / 2], unit);
    for (int i = 0; i < n; i++)
        printf(" %.1f", v[i]);
    printf("\n");
    fflush(stdout);
}

static char payload[301];

static void fill(bus_producer *p, size_t total, size_t per_txn, const char *topic)
{
    char err[256];
    bus_record *recs = xcalloc(per_txn, sizeof(*recs));
    char keys[1000][16];
    for (size_t i = 0; i < per_txn; i++) {
        snprintf(keys[i % 1000], sizeof(keys[0]), "task-%zu", i % 1000);
        recs[i].topic = topic;
        recs[i].key = keys[i % 1000];
        recs[i].key_len = strlen(keys[i % 1000]);
        recs[i].value = payload;
        recs[i].value_len = 300;
    }
    for (size_t done = 0; done < total; done += per_txn) {
        size_t n = total - done < per_txn ? total - done : per_txn;
        if (bus_produce(p, recs, n, NULL, err, sizeof(err)) != 0)
            die("produce", err);
    }
    free(recs);
}

static bus_config config_for(const char *dir)
{
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = dir;
    cfg.retention_ms = 0;
    return cfg;
}

static double bench_publish(size_t total, size_t per_txn)
{
    char dir[256], err[256];
    fresh_dir(dir, sizeof(dir));
    bus_config cfg = config_for(dir);
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    if (!p)
        die("open", err);
    int64_t t0 = util_monotonic_ns();
    fill(p, total, per_txn, "task-events");
    double secs = (double)(util_monotonic_ns() - t0) / 1e9;
    bus_producer_close(p);
    remove_dir(dir);
    return (double)total / secs;
}

typedef struct consume_job {
    const char *dir;
    const char *group;
    size_t expect;
    double rate;
} consume_job;

static void *consume_thread(void *arg)
{
    consume_job *job = arg;
    char err[256];
    bus_config cfg = config_for(job->dir);
    const char *topics[] = {"task-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = job->group;
    sub.topics = topics;
    sub.topic_count = 1;
    sub.max_batch = 5000;
    bus_consumer *c = bus_consumer_open(&cfg, &sub, err, sizeof(err));
    if (!c)
        die("consumer", err);
    size_t got = 0;
    size_t bytes = 0;
    int64_t t0 = util_monotonic_ns();
    while (got < job->expect) {
        const bus_message *m;
        size_t n;
        if (bus_consumer_poll(c, 1000, &m, &n, err, sizeof(err)) != 0)
            die("poll", err);
        for (size_t i = 0; i < n; i++)
            bytes += m[i].value_len; /* touch every message */
        got += n;
        if (bus_consumer_commit(c, err, sizeof(err)) != 0)
            die("commit", err);
    }
    job->rate = (double)got / ((double)(util_monotonic_ns() - t0) / 1e9);
    if (bytes == 0)
        die("consume", "no bytes");
    bus_consumer_close(c);
    return NULL;
}

static void bench_consume(size_t total, int groups, double *per_group)
{
    char dir[256], err[256];
    fresh_dir(dir, sizeof(dir));
    bus_config cfg = config_for(dir);
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    if (!p)
        die("open", err);
    fill(p, total, 1000, "task-events");
    bus_producer_close(p);
    pthread_t th[4];
    consume_job jobs[4];
    char names[4][32];
    for (int g = 0; g < groups; g++) {
        snprintf(names[g], sizeof(names[g]), "group-%d", g);
        jobs[g] = (consume_job){dir, names[g], total, 0};
        pthread_create(&th[g], NULL, consume_thread, &jobs[g]);
    }
    double sum = 0;
    for (int g = 0; g < groups; g++) {
        pthread_join(th[g], NULL);
        sum += jobs[g].rate;
    }
    *per_group = sum / groups;
    remove_dir(dir);
}

/* ---- latency ------------------------------------------------------------
 * The producer publishes one event every 2 ms and notes, per event, when it
 * called bus_produce() and when that returned (the commit is durable). The
 * consumer notes when poll handed the event over. Reported:
 *   delivery = handed over - publish returned   (the bus's own latency)
 *   total    = handed over - publish called     (includes the commit's
 *                                                fsync under synchronous=FULL)
 */

typedef struct latency_job {
    const char *dir;
    int sync_full;
    size_t expect;
    int64_t *recv_ns; /* per event, indexed by the sequence in the value */
    volatile int ready;
} latency_job;

static void consume_latency(latency_job *job)
{
    char err[256];
    bus_config cfg = config_for(job->dir);
    cfg.synchronous_full = job->sync_full;
    const char *topics[] = {"task-events"};
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.topics = topics;
    sub.topic_count = 1;
    sub.reset = BUS_RESET_LATEST;
    bus_consumer *c = bus_consumer_open(&cfg, &sub, err, sizeof(err));
    if (!c)
        die("consumer", err);
    const bus_message *m;
    size_t n;
    /* the first poll fixes the start position */
    if (bus_consumer_poll(c, 0, &m, &n, err, sizeof(err)) != 0)
        die("poll", err);
    job->ready = 1;
    size_t got = 0;
    while (got < job->expect) {
        if (bus_consumer_poll(c, -1, &m, &n, err, sizeof(err)) != 0)
            die("poll", err);
        int64_t now = util_monotonic_ns();
        for (size_t i = 0; i < n; i++) {
            size_t seq = (size_t)atoll(m[i].value);
            if (seq < job->expect)
                job->recv_ns[seq] = now;
            got++;
        }
    }
    bus_consumer_close(c);
}

static void *latency_thread(void *arg)
{
    consume_latency(arg);
    return NULL;
}

static void produce_timed(const char *dir, int sync_full, size_t count, int64_t *start_ns,
                          int64_t *done_ns)
{
    char err[256];
    bus_config cfg = config_for(dir);
    cfg.synchronous_full = sync_full;
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    if (!p)
        die("open", err);
    for (size_t i = 0; i < count; i++) {
        char value[64];
        int len = snprintf(value, sizeof(value), "%zu", i);
        bus_record r = BUS_RECORD_INIT;
        r.topic = "task-events";
        r.key = "k";
        r.key_len = 1;
        r.value = value;
        r.value_len = (size_t)len;
        start_ns[i] = util_monotonic_ns();
        if (bus_produce(p, &r, 1, NULL, err, sizeof(err)) != 0)
            die("produce", err);
        done_ns[i] = util_monotonic_ns();
        util_sleep_us(2000);
    }
    bus_producer_close(p);
}

/* A running service has a WAL file of its full size that commits
 * overwrite; a fresh one grows with every commit, which makes each fsync
 * dearer. Measure the steady state: 3000 commits first. */
static void warm_up(const char *dir, int sync_full)
{
    char err[256];
    bus_config cfg = config_for(dir);
    cfg.synchronous_full = sync_full;
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    if (!p)
        die("open", err);
    for (int i = 0; i < 3000; i++) {
        bus_record r = BUS_RECORD_INIT;
        r.topic = "warmup-events";
        r.value = payload;
        r.value_len = 300;
        if (bus_produce(p, &r, 1, NULL, err, sizeof(err)) != 0)
            die("produce", err);
    }
    bus_producer_close(p);
}

typedef struct latency_result {
    double delivery_p50, delivery_p99, total_p50, total_p99;
} latency_result;

static void percentiles(double *v, size_t n, double *p50, double *p99)
{
    qsort(v, n, sizeof(double), cmp_double);
    *p50 = v[n / 2];
    *p99 = v[(size_t)((double)n * 0.99)];
}

static latency_result summarize(size_t count, const int64_t *start, const int64_t *done,
                                const int64_t *recv)
{
    latency_result r;
    double *a = xcalloc(count, sizeof(double)), *b = xcalloc(count, sizeof(double));
    for (size_t i = 0; i < count; i++) {
        a[i] = (double)(recv[i] - done[i]) / 1000.0;
        b[i] = (double)(recv[i] - start[i]) / 1000.0;
    }
    percentiles(a, count, &r.delivery_p50, &r.delivery_p99);
    percentiles(b, count, &r.total_p50, &r.total_p99);
    free(a);
    free(b);
    return r;
}

static latency_result bench_latency(size_t count, int cross_process, int sync_full)
{
    char dir[256];
    fresh_dir(dir, sizeof(dir));
    int64_t *start = xcalloc(count, sizeof(int64_t)), *done = xcalloc(count, sizeof(int64_t));
    int64_t *recv = xcalloc(count, sizeof(int64_t));
    warm_up(dir, sync_full);
    if (!cross_process) {
        latency_job job = {dir, sync_full, count, recv, 0};
        pthread_t th;
        pthread_create(&th, NULL, latency_thread, &job);
        while (!job.ready)
            util_sleep_us(1000);
        produce_timed(dir, sync_full, count, start, done);
        pthread_join(th, NULL);
    } else {
        int pipefd[2];
        if (pipe(pipefd) != 0)
            die("pipe", "failed");
        pid_t pid = fork();
        if (pid == 0) {
            close(pipefd[0]);
            latency_job job = {dir, sync_full, count, recv, 0};
            pthread_t th;
            pthread_create(&th, NULL, latency_thread, &job);
            while (!job.ready)
                util_sleep_us(1000);
            if (write(pipefd[1], "r", 1) != 1)
                _exit(1);
            pthread_join(th, NULL);
            size_t want = count * sizeof(int64_t), off = 0;
            while (off < want) {
                ssize_t w = write(pipefd[1], (char *)recv + off, want - off);
                if (w <= 0)
                    _exit(1);
                off += (size_t)w;
            }
            _exit(0);
        }
        close(pipefd[1]);
        char ready;
        if (read(pipefd[0], &ready, 1) != 1)
            die("child", "not ready");
        produce_timed(dir, sync_full, count, start, done);
        size_t want = count * sizeof(int64_t), got = 0;
        while (got < want) {
            ssize_t r = read(pipefd[0], (char *)recv + got, want - got);
            if (r <= 0)
                die("child", "short read");
            got += (size_t)r;
        }
        close(pipefd[0]);
        waitpid(pid, NULL, 0);
    }
    latency_result res = summarize(count, start, done, recv);
    free(start);
    free(done);
    free(recv);
    remove_dir(dir);
    return res;
}

static void run_latency(const char *label, size_t count, int cross, int sync_full)
{
    double d50[64], d99[64], t50[64], t99[64];
    for (int r = 0; r < runs; r++) {
        latency_result res = bench_latency(count, cross, sync_full);
        d50[r] = res.delivery_p50;
        d99[r] = res.delivery_p99;
        t50[r] = res.total_p50;
        t99[r] = res.total_p99;
    }
    char name[64];
    snprintf(name, sizeof(name), "%s_delivery_p50", label);
    report(name, "us", d50, runs);
    snprintf(name, sizeof(name), "%s_delivery_p99", label);
    report(name, "us", d99, runs);
    snprintf(name, sizeof(name), "%s_total_p50", label);
    report(name, "us", t50, runs);
    snprintf(name, sizeof(name), "%s_total_p99", label);
    report(name, "us", t99, runs);
}

static double bench_idle_cpu(int seconds)
{
    char dir[256];
    fresh_dir(dir, sizeof(dir));
    int pipefd[2];
    if (pipe(pipefd) != 0)
        die("pipe", "failed");
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        char err[256];
        bus_config cfg = config_for(dir);
        bus_subscription sub = BUS_SUBSCRIPTION_INIT;
        sub.pattern = "^.*-events$";
        sub.group_id = "idle";
        bus_consumer *c = bus_consumer_open(&cfg, &sub, err, sizeof(err));
        if (!c)
            die("consumer", err);
        struct rusage before, after;
        getrusage(RUSAGE_SELF, &before);
        int64_t t0 = util_monotonic_ns();
        while (util_monotonic_ns() - t0 < (int64_t)seconds * 1000000000LL) {
            const bus_message *m;
            size_t n;
            if (bus_consumer_poll(c, 500, &m, &n, err, sizeof(err)) != 0)
                die("poll", err);
        }
        getrusage(RUSAGE_SELF, &after);
        double cpu = (double)(after.ru_utime.tv_sec - before.ru_utime.tv_sec) +
                     (double)(after.ru_stime.tv_sec - before.ru_stime.tv_sec) +
                     (double)(after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6 +
                     (double)(after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e6;
        double pct = 100.0 * cpu / ((double)(util_monotonic_ns() - t0) / 1e9);
        if (write(pipefd[1], &pct, sizeof(pct)) != sizeof(pct))
            _exit(1);
        bus_consumer_close(c);
        _exit(0);
    }
    close(pipefd[1]);
    double pct = -1;
    if (read(pipefd[0], &pct, sizeof(pct)) != sizeof(pct))
        die("child", "no result");
    close(pipefd[0]);
    waitpid(pid, NULL, 0);
    remove_dir(dir);
    return pct;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            base_dir = argv[++i];
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else {
            fprintf(stderr, "usage: bus_bench [--runs N] [--dir DIR] [--quick]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 64)
        runs = 5;
    memset(payload, 'x', 300);
    payload[0] = '{';
    payload[299] = '}';
    util_mkdir_p(base_dir);
    size_t n_single = quick ? 200 : 2000;
    size_t n_batched = quick ? 50000 : 500000;
    size_t n_consume = quick ? 100000 : 1000000;
    size_t n_latency = quick ? 200 : 1000;

    printf("# herald bus benchmark: %d runs each, medians; data dir %s\n", runs, base_dir);
    double v[64];
    for (int r = 0; r < runs; r++)
        v[r] = bench_publish(n_single, 1);
    report("publish_single", "events/s", v, runs);
    for (int r = 0; r < runs; r++)
        v[r] = bench_publish(n_batched, 1000);
    report("publish_batched", "events/s", v, runs);
    for (int r = 0; r < runs; r++)
        bench_consume(n_consume, 1, &v[r]);
    report("consume_1_group", "events/s", v, runs);
    for (int r = 0; r < runs; r++)
        bench_consume(n_consume / 2, 4, &v[r]);
    report("consume_4_groups", "ev/s/group", v, runs);
    run_latency("same_full", n_latency, 0, 1);
    run_latency("cross_full", n_latency, 1, 1);
    run_latency("same_normal", n_latency, 0, 0);
    run_latency("cross_normal", n_latency, 1, 0);
    for (int r = 0; r < runs; r++)
        v[r] = bench_idle_cpu(quick ? 1 : 3);
    report("idle_cpu", "% core", v, runs);
    return 0;
}
