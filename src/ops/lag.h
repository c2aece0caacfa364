/*
 * lag.h - consumer lag per group, topic and partition, with a status in the
 * spirit of Burrow (`herald lag`; the lag gauges of /metrics).
 *
 * For each (group, topic, partition): the committed offset (the next one the
 * group will read), the end offset (the next one to be written), the lag in
 * events (end - position, where position is the committed offset, or the
 * earliest kept offset when the group has not committed there yet) and in
 * seconds (now - occurred_at of the event at that position, the oldest one
 * waiting; 0 without lag).
 *
 * Evidence: the offsets are sampled `samples` times over `window_ms`; a
 * group's liveness comes from its members: embedded, the heartbeat rows of
 * the agent runtimes (runtime.h: a running member beats every 2 s, also
 * while stuck retrying a record, and deletes its row when it stops; a row
 * whose pid is gone or whose beat is older than LAG_HEARTBEAT_STALE_MS does
 * not count) and the group's lease (sqlite_consumer.c: `herald tail
 * --group`); Kafka, the group's member list on the cluster.
 *
 * Status of one row, the first rule that applies (lag_evaluate()):
 *   REWIND  the committed offset moved back between two samples;
 *   OK      no lag;
 *   STOP    lag, and the group has no live member (nobody will commit);
 *   WARN    the offset moves, but the lag grew over the window (every
 *           sample's lag >= the one before, the last > the first);
 *   STALL   lag, a live member, and the offset has not moved for at least
 *           stall_ms counted from when the work arrived: the later of the
 *           offset's last move and the append time of the oldest waiting
 *           event (a member stuck on a failing record);
 *   STOP    the same without liveness evidence (not committing with lag);
 *   OK      otherwise (moving, or waiting less than stall_ms).
 */
#ifndef HERALD_OPS_LAG_H
#define HERALD_OPS_LAG_H

#include "bus/bus.h"

#include <stddef.h>
#include <stdint.h>

typedef enum lag_status { LAG_OK = 0, LAG_WARN, LAG_STALL, LAG_STOP, LAG_REWIND } lag_status;

/* "OK", "WARN", "STALL", "STOP", "REWIND". */
const char *lag_status_name(lag_status s);

/* A heartbeat older than this does not count as a live member (a frozen
 * process); a live one beats every RUNTIME_HEARTBEAT_MS, but a handler call
 * (up to HERALD_CALL_TIMEOUT) delays the next beat. */
#define LAG_HEARTBEAT_STALE_MS 60000

/* One look at a (group, topic, partition). */
typedef struct lag_sample {
    int64_t at_ms;     /* when it was taken */
    int64_t committed; /* the group's position (committed, or earliest kept) */
    int64_t end;       /* the next offset to be written */
} lag_sample;

typedef struct lag_evidence {
    const lag_sample *samples; /* oldest first; count >= 1 */
    size_t count;
    int alive;                /* 1: a live member, 0: none, -1: unknown */
    int64_t waiting_since_ms; /* the later of the offset's last move and the
                                 oldest waiting event's append time; -1 unknown */
    int64_t now_ms;
    int64_t stall_ms;
} lag_evidence;

/* The status rules above; a pure function. */
lag_status lag_evaluate(const lag_evidence *e);

typedef struct lag_options {
    const char *group; /* only this group (NULL: all) */
    const char *topic; /* only this topic (NULL: all) */
    int64_t window_ms; /* sampling window; 0: one sample */
    int samples;       /* samples over the window (>= 2 when window_ms > 0) */
    int64_t stall_ms;  /* see STALL */
    int timeout_ms;    /* Kafka: time limit of each request */
} lag_options;

/* clang-format off */
#define LAG_OPTIONS_INIT { NULL, NULL, 0, 1, 30000, 5000 }
/* clang-format on */

typedef struct lag_row {
    char *group;
    char *topic;
    int32_t partition;
    int64_t committed;      /* -1: the group never committed here */
    int64_t end;            /* next offset to be written */
    int64_t lag;            /* events waiting */
    double lag_seconds;     /* now - occurred_at of the oldest waiting event */
    int64_t last_commit_ms; /* wall ms of the last offset move; -1 unknown */
    int alive;              /* as in lag_evidence */
    int members;            /* live members seen (-1 unknown) */
    lag_status status;
    char detail[160]; /* why the status, for people */
} lag_row;

/*
 * Collect the rows for cfg's bus (embedded: DATA_DIR/bus.db, read-only;
 * Kafka: the cluster), sorted by group, topic, partition. Takes
 * opt->samples samples over opt->window_ms (sleeping in between). *rows
 * (malloc'd; free with lag_rows_free()) and *count. Returns 0, or -1 with
 * err (no event log, cluster unreachable, ...).
 */
int lag_collect(const bus_config *cfg, const lag_options *opt, lag_row **rows, size_t *count,
                char *err, size_t errlen);

/* Free rows from lag_collect(). */
void lag_rows_free(lag_row *rows, size_t count);

/* The worst status of rows (REWIND > STOP > STALL > WARN > OK). */
lag_status lag_worst(const lag_row *rows, size_t count);

#endif
