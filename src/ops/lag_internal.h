/*
 * lag_internal.h - what lag.c shares with its Kafka backend (lag_kafka.c):
 * the accumulator of rows and samples across the sampling window.
 */
#ifndef HERALD_OPS_LAG_INTERNAL_H
#define HERALD_OPS_LAG_INTERNAL_H

#include "ops/lag.h"

typedef struct lag_acc_row {
    lag_row row;
    lag_sample *samples;
    size_t nsamples, cap;
    int64_t waiting_since_ms;
} lag_acc_row;

typedef struct lag_acc {
    lag_acc_row *rows;
    size_t count, cap;
} lag_acc;

/* The accumulated row of (group, topic, partition), added if new. */
lag_acc_row *lag_acc_get(lag_acc *a, const char *group, const char *topic, int32_t partition);

/* Record one sample of r (position: committed or earliest kept). */
void lag_acc_sample(lag_acc_row *r, int64_t at_ms, int64_t position, int64_t end);

/*
 * Kafka backend: one sample of every group (opt->group: one) on the
 * cluster, into acc: committed offsets (rd_kafka_committed), watermarks,
 * members, and the oldest waiting event's time. 0 or -1 with err.
 */
int lag_kafka_sample(const bus_config *cfg, const lag_options *opt, lag_acc *acc, char *err,
                     size_t errlen);

/* Live members of group among the heartbeat rows of the runtimes on
 * data_dir (Kafka mode keeps them in the local state database too); -1 when
 * there is no such database or table. */
int lag_local_members(const char *data_dir, const char *group);

/* occurred_at (ms) of a record from its ce_time header or its JSON value;
 * -1 if neither holds a valid time. */
int64_t lag_record_time(const char *value, size_t value_len, const unsigned char *headers,
                        size_t headers_len);

#endif
