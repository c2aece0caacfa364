/*
 * agents_bench.c - benchmarks of the agents (make bench).
 *
 *   agents_bench [--runs N] [--events N] [--dir D] [--audit-only]
 *
 * Each run starts from a fresh data directory holding N task.created events
 * (realistic envelopes from the Task API's shape, each with a due_at a day
 * ahead so the scheduler has work), published in batches of 1000 before the
 * clock starts. Two figures, medians of the runs:
 *
 *  1. audit alone: one audit agent (its real runtime, its real files,
 *     fsync per batch) drains the N events; events/s from the first poll to
 *     the last commit.
 *  2. drain: the email (.eml mode), slack (no webhook: log only), audit and
 *     scheduler agents run at once, each on its own thread and consumer
 *     group, exactly as `herald up` runs them; the time until every group
 *     has committed everything, including the events the agents themselves
 *     derived (notification.sent, email.delivered, reminder.scheduled, which
 *     the audit agent logs too).
 * Logging is off during the runs (it is a separate cost: one line per event
 * and agent to stderr).
 */
#include "agents/agents.h"
#include "bus/bus.h"
#include "bus/sqlite_log.h"
#include "cli/agent_runner.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"
#include "runtime/runtime.h"
#include "shared/task_gen.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "agents_bench: %s: %s\n", what, err);
    exit(1);
}

static void fresh_dir(const char *dir)
{
    char cmd[8300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    if (system(cmd) != 0)
        die("cannot prepare", dir);
}

/* task_gen() sink: publish the batch. */
static void produce_batch(void *arg, const bus_record *recs, size_t n)
{
    char err[512];
    if (bus_produce(arg, recs, n, NULL, err, sizeof(err)) != 0)
        die("produce", err);
}

static void publish_tasks(const bus_config *cfg, int n)
{
    char err[512];
    bus_producer *p = bus_producer_open(cfg, err, sizeof(err));
    if (!p)
        die("producer", err);
    task_gen("agents_bench", n, 1000, produce_batch, p);
    bus_producer_close(p);
}

/* 1 when every group in the offsets table has committed every topic it
 * reads up to its end, and the named groups all exist. */
static int all_caught_up(sqlite3 *db, int groups_expected)
{
    sqlite3_stmt *st;
    const char *sql = "SELECT o.group_name, o.topic_id, o.next_offset FROM offsets o";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return 0;
    int ok = 1;
    char groups[16][64];
    int ngroups = 0;
    while (ok && sqlite3_step(st) == SQLITE_ROW) {
        const char *g = (const char *)sqlite3_column_text(st, 0);
        int64_t topic = sqlite3_column_int64(st, 1), next = sqlite3_column_int64(st, 2);
        int known = 0;
        for (int i = 0; i < ngroups; i++)
            known |= strcmp(groups[i], g) == 0;
        if (!known && ngroups < 16)
            snprintf(groups[ngroups++], sizeof(groups[0]), "%s", g);
        char table[64], q[128];
        bus_log_topic_table(topic, table, sizeof(table));
        snprintf(q, sizeof(q), "SELECT coalesce(max(id), 0) FROM %s", table);
        sqlite3_stmt *mx;
        if (sqlite3_prepare_v2(db, q, -1, &mx, NULL) != SQLITE_OK) {
            ok = 0;
            break;
        }
        if (sqlite3_step(mx) == SQLITE_ROW && sqlite3_column_int64(mx, 0) + 1 != next)
            ok = 0;
        sqlite3_finalize(mx);
    }
    sqlite3_finalize(st);
    return ok && ngroups >= groups_expected;
}

/* Run the registry's agents named in names until every group caught up;
 * returns the seconds taken. */
static double drain(const bus_config *cfg, const agent_settings *s, const char *const *names, int n)
{
    const agent_entry *entries[8];
    for (int i = 0; i < n; i++) {
        entries[i] = agents_find(names[i]);
        if (!entries[i])
            die("no agent", names[i]);
    }
    runtime_retry retry = RUNTIME_RETRY_INIT;
    char err[1024];
    bus_log *log = bus_log_open(cfg, err, sizeof(err));
    if (!log)
        die("log", err);
    int64_t start = util_monotonic_ns();
    agent_runner *r = agent_runner_start(cfg, s, &retry, entries, (size_t)n, err, sizeof(err));
    if (!r)
        die("agents", err);
    int stable = 0;
    int64_t done_at = 0;
    while (stable < 3) {
        util_sleep_us(20000);
        if (all_caught_up(bus_log_db(log), n)) {
            if (stable++ == 0)
                done_at = util_monotonic_ns();
        } else {
            stable = 0;
        }
    }
    agent_runner_stop(r);
    bus_log_close(log);
    return (double)(done_at - start) / 1e9;
}

int main(int argc, char **argv)
{
    int runs = 5, events = 100000, audit_only_flag = 0;
    const char *dir = "build/bench-agents";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--runs") == 0)
            runs = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--events") == 0)
            events = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--dir") == 0)
            dir = argv[i + 1];
    }
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--audit-only") == 0)
            audit_only_flag = 1;
    if (runs < 1 || runs > 50 || events < 1)
        die("usage", "agents_bench [--runs N] [--events N] [--dir D]");
    log_threshold = LOG_LEVEL_OFF;
    double *audit_rate = xcalloc((size_t)runs, sizeof(double));
    double *drain_s = xcalloc((size_t)runs, sizeof(double));
    for (int run = 0; run < runs; run++) {
        /* each figure in a directory of its own, all removed after the
         * last run: ext4 allocates inodes slowly right after many files
         * were deleted, so removing a run's .eml files just before the
         * next run would slow that run's email agent */
        char run_dir[4096];
        snprintf(run_dir, sizeof(run_dir), "%s/audit-%d", dir, run);
        bus_config cfg = BUS_CONFIG_INIT;
        cfg.data_dir = run_dir;
        cfg.retention_ms = 0;
        agent_settings s = AGENT_SETTINGS_INIT;
        s.data_dir = run_dir;
        s.smtp_from = "herald@localhost";

        fresh_dir(run_dir);
        publish_tasks(&cfg, events);
        const char *audit_only[] = {"audit"};
        double t = drain(&cfg, &s, audit_only, 1);
        audit_rate[run] = events / t;
        if (audit_only_flag) {
            printf("run %d: audit %.0f events/s\n", run + 1, audit_rate[run]);
            continue;
        }

        snprintf(run_dir, sizeof(run_dir), "%s/drain-%d", dir, run);
        fresh_dir(run_dir);
        publish_tasks(&cfg, events);
        const char *all[] = {"email", "slack", "audit", "scheduler"};
        drain_s[run] = drain(&cfg, &s, all, 4);
        printf("run %d: audit %.0f events/s; drain of %d task.created through email, slack, "
               "audit, scheduler: %.2f s\n",
               run + 1, audit_rate[run], events, drain_s[run]);
        fflush(stdout);
    }
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        return 1;
    printf("audit agent alone (fsync per batch): median %.0f events/s over %d runs\n",
           median(audit_rate, runs), runs);
    if (audit_only_flag)
        return 0;
    printf("drain of %d task.created through email (.eml), slack (log only), audit and "
           "scheduler at once: median %.2f s over %d runs (%.0f task events/s)\n",
           events, median(drain_s, runs), runs, events / median(drain_s, runs));
    free(audit_rate);
    free(drain_s);
    return 0;
}
