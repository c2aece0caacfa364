/*
 * evgen.c - a test tool: publish many valid event envelopes quickly, for
 * the audit agent's end-to-end tests (tests/e2e/test_agent_audit.py). Not
 * installed. busctl publishes raw test records; these are real events.
 *
 *   evgen DIR --count N [--batch M] [--sleep-us U] [--tag S]
 *       Publishes N events in batches of M (one bus_produce() each, default
 *       100), cycling through task.created, task.completed, reminder.due
 *       and notification.sent (three topics), each with data
 *       {"task_id": "<S>-<i>", "n": i} and source "evgen". After each batch
 *       it prints "committed <first i> <last i>" and flushes; sleeps U
 *       microseconds between batches.
 */
#include "bus/bus.h"
#include "common/util.h"
#include "event/event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *opt(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 2; i < argc - 1; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: evgen DIR --count N [--batch M] [--sleep-us U] [--tag S]\n");
        return 2;
    }
    static const char *const types[] = {"task.created", "task.completed", "reminder.due",
                                        "notification.sent"};
    long count = atol(opt(argc, argv, "--count", "1"));
    long batch = atol(opt(argc, argv, "--batch", "100"));
    long sleep_us = atol(opt(argc, argv, "--sleep-us", "0"));
    const char *tag = opt(argc, argv, "--tag", "t");
    if (count < 1 || batch < 1) {
        fprintf(stderr, "evgen: --count and --batch must be positive\n");
        return 2;
    }
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.data_dir = argv[1];
    cfg.retention_ms = 0;
    char err[512];
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    if (!p) {
        fprintf(stderr, "evgen: %s\n", err);
        return 1;
    }
    bus_record *recs = xcalloc((size_t)batch, sizeof(*recs));
    char **values = xcalloc((size_t)batch, sizeof(*values));
    char(*keys)[64] = xcalloc((size_t)batch, sizeof(*keys));
    char(*topics)[64] = xcalloc((size_t)batch, sizeof(*topics));
    int status = 0;
    for (long first = 0; first < count && status == 0; first += batch) {
        long m = count - first < batch ? count - first : batch;
        for (long j = 0; j < m; j++) {
            long i = first + j;
            const char *type = types[i % 4];
            snprintf(keys[j], sizeof(keys[j]), "%s-%ld", tag, i);
            event_topic_for_type(type, topics[j], sizeof(topics[j]));
            json_t *data = json_pack("{s:s, s:I}", "task_id", keys[j], "n", (json_int_t)i);
            event ev = EVENT_INIT;
            if (event_build(&ev, type, data, NULL, NULL, "evgen", err, sizeof(err)) != 0) {
                fprintf(stderr, "evgen: %s\n", err);
                return 1;
            }
            json_decref(data);
            size_t len;
            values[j] = event_encode(&ev, &len);
            event_release(&ev);
            recs[j] = (bus_record)BUS_RECORD_INIT;
            recs[j].topic = topics[j];
            recs[j].key = keys[j];
            recs[j].key_len = strlen(keys[j]);
            recs[j].value = values[j];
            recs[j].value_len = len;
        }
        if (bus_produce(p, recs, (size_t)m, NULL, err, sizeof(err)) != 0) {
            fprintf(stderr, "evgen: %s\n", err);
            status = 1;
        } else {
            printf("committed %ld %ld\n", first, first + m - 1);
            fflush(stdout);
        }
        for (long j = 0; j < m; j++)
            free(values[j]);
        if (sleep_us)
            util_sleep_us(sleep_us);
    }
    free(recs);
    free(values);
    free(keys);
    free(topics);
    bus_producer_close(p);
    return status;
}
