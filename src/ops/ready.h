/*
 * ready.h - the readiness checks of one herald process (GET /readyz): the
 * store answers a read, the bus is reachable, and every agent of the
 * process is running and not stalled (runtime_health_stalled()).
 */
#ifndef HERALD_OPS_READY_H
#define HERALD_OPS_READY_H

#include "bus/bus.h"
#include "runtime/runtime.h"
#include "store/task_store.h"

#include <jansson.h>
#include <stdint.h>

/* How long one bus check may take, and how long its answer is reused (so
 * frequent probes do not open a Kafka client each). */
#define OPS_READY_BUS_TIMEOUT_MS 2000
#define OPS_READY_BUS_CACHE_MS 1500

typedef struct ops_ready ops_ready;

/*
 * Checks for a process with store (may be NULL: no store check) on bus cfg;
 * an agent with work that made no progress for stall_ms is stalled. cfg's
 * strings, store and the runtimes added are borrowed: they must outlive the
 * checker (or the server using it).
 */
ops_ready *ops_ready_new(const bus_config *cfg, task_store *store, int64_t stall_ms);

/* Check this runtime too (before the checker is in use). */
void ops_ready_add(ops_ready *r, agent_runtime *rt);

/*
 * Run every check (an api_ready_fn: arg is the ops_ready). Appends to checks
 * {"name": "store" | "bus" | "agent:<name>", "status": "ok" | "fail",
 * "detail"}, agents with "group", "running", "busy", "retrying",
 * "attempts", "failures" and "since_progress_ms". Returns 1 if all passed.
 * Thread-safe.
 */
int ops_ready_check(void *arg, json_t *checks);

/* Free the checker; NULL is a no-op. */
void ops_ready_free(ops_ready *r);

#endif
