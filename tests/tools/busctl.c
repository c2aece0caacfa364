/*
 * busctl.c - a test tool that drives the bus library directly, for the
 * multi-process and crash tests (tests/e2e). Not installed.
 *
 *   busctl produce DIR --topic T --batches N --batch-size M [--tag S]
 *                  [--sleep-us U] [--sync full|normal]
 *       Publishes N batches of M records, each batch in ONE bus_produce().
 *       Record i of batch b: key "k<i % 7>", value
 *       {"tag":"S","batch":b,"seq":i,"of":M}. After each batch commits it
 *       prints "committed <b> <first offset> <last offset>" and flushes, so
 *       a test that kill -9s it knows exactly what was acknowledged.
 *
 *   busctl consume DIR --group G (--topic T | --pattern P)
 *                  [--from earliest|latest] [--max N] [--idle-exit-ms MS]
 *                  [--batch B] [--sleep-us-per-msg U] [--no-commit]
 *       Prints "<topic> <offset> <key> <value>" per record, commits after
 *       each batch (unless --no-commit; --group "-" means no group), and
 *       exits after N records or after MS without a record (default 2000).
 *       Prints "ready" on stderr after its first poll.
 */
#include "bus/bus.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *opt(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 3; i < argc - 1; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

static int flag(int argc, char **argv, const char *name)
{
    for (int i = 3; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

static int produce(int argc, char **argv, bus_config *cfg)
{
    const char *topic = opt(argc, argv, "--topic", "test-events");
    const char *tag = opt(argc, argv, "--tag", "t");
    long batches = atol(opt(argc, argv, "--batches", "1"));
    long size = atol(opt(argc, argv, "--batch-size", "1"));
    long sleep_us = atol(opt(argc, argv, "--sleep-us", "0"));
    char err[512];
    bus_producer *p = bus_producer_open(cfg, err, sizeof(err));
    if (!p) {
        fprintf(stderr, "busctl: %s\n", err);
        return 1;
    }
    bus_record *recs = xcalloc((size_t)size, sizeof(*recs));
    char **values = xcalloc((size_t)size, sizeof(char *));
    char **keys = xcalloc((size_t)size, sizeof(char *));
    int64_t *offsets = xcalloc((size_t)size, sizeof(int64_t));
    for (long i = 0; i < size; i++) {
        keys[i] = xmalloc(16);
        snprintf(keys[i], 16, "k%ld", i % 7);
        values[i] = xmalloc(256);
    }
    for (long b = 0; b < batches; b++) {
        for (long i = 0; i < size; i++) {
            int len =
                snprintf(values[i], 256, "{\"tag\":\"%s\",\"batch\":%ld,\"seq\":%ld,\"of\":%ld}",
                         tag, b, i, size);
            recs[i] = (bus_record)BUS_RECORD_INIT;
            recs[i].topic = topic;
            recs[i].key = keys[i];
            recs[i].key_len = strlen(keys[i]);
            recs[i].value = values[i];
            recs[i].value_len = (size_t)len;
        }
        if (bus_produce(p, recs, (size_t)size, offsets, err, sizeof(err)) != 0) {
            fprintf(stderr, "busctl: %s\n", err);
            return 1;
        }
        printf("committed %ld %lld %lld\n", b, (long long)offsets[0], (long long)offsets[size - 1]);
        fflush(stdout);
        if (sleep_us)
            util_sleep_us(sleep_us);
    }
    for (long i = 0; i < size; i++) {
        free(keys[i]);
        free(values[i]);
    }
    free(keys);
    free(values);
    free(recs);
    free(offsets);
    bus_producer_close(p);
    return 0;
}

static int consume(int argc, char **argv, bus_config *cfg)
{
    const char *group = opt(argc, argv, "--group", "-");
    const char *topic = opt(argc, argv, "--topic", NULL);
    const char *pattern = opt(argc, argv, "--pattern", NULL);
    const char *from = opt(argc, argv, "--from", "earliest");
    long max = atol(opt(argc, argv, "--max", "0"));
    long idle_ms = atol(opt(argc, argv, "--idle-exit-ms", "2000"));
    long batch = atol(opt(argc, argv, "--batch", "0"));
    long sleep_us = atol(opt(argc, argv, "--sleep-us-per-msg", "0"));
    int commit = !flag(argc, argv, "--no-commit");
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = strcmp(group, "-") == 0 ? NULL : group;
    const char *topics[1] = {topic};
    if (topic) {
        sub.topics = topics;
        sub.topic_count = 1;
    }
    sub.pattern = pattern;
    sub.reset = strcmp(from, "latest") == 0 ? BUS_RESET_LATEST : BUS_RESET_EARLIEST;
    sub.max_batch = (size_t)batch;
    if (max > 0 && (batch == 0 || batch > max))
        sub.max_batch = (size_t)max; /* never print more than --max */
    char err[512];
    bus_consumer *c = bus_consumer_open(cfg, &sub, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "busctl: %s\n", err);
        return 1;
    }
    long got = 0;
    int64_t last = util_monotonic_ns();
    int first = 1;
    while (max == 0 || got < max) {
        const bus_message *m;
        size_t n;
        if (bus_consumer_poll(c, first ? 0 : 200, &m, &n, err, sizeof(err)) != 0) {
            fprintf(stderr, "busctl: %s\n", err);
            return 1;
        }
        if (first) {
            fprintf(stderr, "ready\n");
            first = 0;
        }
        for (size_t i = 0; i < n; i++) {
            printf("%s %lld %s %s\n", m[i].topic, (long long)m[i].offset, m[i].key ? m[i].key : "-",
                   m[i].value);
            if (sleep_us)
                util_sleep_us(sleep_us);
        }
        fflush(stdout);
        got += (long)n;
        if (n) {
            last = util_monotonic_ns();
            if (commit && bus_consumer_commit(c, err, sizeof(err)) != 0) {
                fprintf(stderr, "busctl: %s\n", err);
                return 1;
            }
        } else if (util_monotonic_ns() - last > idle_ms * 1000000LL) {
            break;
        }
    }
    bus_consumer_close(c);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: busctl produce|consume DIR [options]\n");
        return 2;
    }
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = argv[2];
    cfg.retention_ms = 0;
    cfg.synchronous_full = strcmp(opt(argc, argv, "--sync", "full"), "full") == 0;
    if (strcmp(argv[1], "produce") == 0)
        return produce(argc, argv, &cfg);
    if (strcmp(argv[1], "consume") == 0)
        return consume(argc, argv, &cfg);
    fprintf(stderr, "busctl: unknown mode '%s'\n", argv[1]);
    return 2;
}
