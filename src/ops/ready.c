/*
 * ready.c - readiness checks (see ready.h).
 *
 * store: a read of a task id that cannot exist, on one of the store's read
 * connections (a "not found" answer is success). bus: bus_ping(), whose
 * answer is cached for OPS_READY_BUS_CACHE_MS; one probe refreshes it
 * while concurrent probes wait for that answer (a mutex), so a burst of
 * scrapes costs one ping. agents: each runtime's health, read lock-free.
 *
 * Threads: ops_ready_check() runs on HTTP threads, concurrently.
 */
#include "ops/ready.h"

#include "common/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct ops_ready {
    bus_config cfg;
    task_store *store;
    int64_t stall_ms;
    agent_runtime **runtimes;
    size_t count;
    pthread_mutex_t bus_lock;
    int64_t bus_checked_ms; /* 0: never */
    int bus_ok;
    char bus_err[256];
};

ops_ready *ops_ready_new(const bus_config *cfg, task_store *store, int64_t stall_ms)
{
    ops_ready *r = xcalloc(1, sizeof(*r));
    r->cfg = *cfg;
    r->store = store;
    r->stall_ms = stall_ms;
    pthread_mutex_init(&r->bus_lock, NULL);
    return r;
}

void ops_ready_add(ops_ready *r, agent_runtime *rt)
{
    r->runtimes = xrealloc(r->runtimes, (r->count + 1) * sizeof(*r->runtimes));
    r->runtimes[r->count++] = rt;
}

static json_t *check(json_t *checks, const char *name, int ok, const char *detail)
{
    json_t *c = json_object();
    json_object_set_new(c, "name", json_string(name));
    json_object_set_new(c, "status", json_string(ok ? "ok" : "fail"));
    json_object_set_new(c, "detail", json_string(detail));
    json_array_append_new(checks, c);
    return c;
}

static int check_store(ops_ready *r, json_t *checks)
{
    char err[256];
    task t = TASK_INIT;
    int rc = task_store_get(r->store, "readyz-probe", &t, err, sizeof(err));
    if (rc == 1)
        task_release(&t);
    check(checks, "store", rc >= 0, rc >= 0 ? "answers reads" : err);
    return rc >= 0;
}

static int check_bus(ops_ready *r, json_t *checks)
{
    pthread_mutex_lock(&r->bus_lock);
    int64_t now = util_now_ms();
    if (r->bus_checked_ms == 0 || now - r->bus_checked_ms >= OPS_READY_BUS_CACHE_MS) {
        r->bus_ok =
            bus_ping(&r->cfg, OPS_READY_BUS_TIMEOUT_MS, r->bus_err, sizeof(r->bus_err)) == 0;
        r->bus_checked_ms = util_now_ms();
    }
    int ok = r->bus_ok;
    char detail[300];
    if (ok)
        snprintf(detail, sizeof(detail), "%s reachable",
                 r->cfg.kind == BUS_KAFKA ? "Kafka cluster" : "embedded event log");
    else
        snprintf(detail, sizeof(detail), "%s", r->bus_err);
    pthread_mutex_unlock(&r->bus_lock);
    check(checks, "bus", ok, detail);
    return ok;
}

static int check_agent(ops_ready *r, agent_runtime *rt, int64_t now, json_t *checks)
{
    runtime_health h;
    agent_runtime_health(rt, &h);
    int stalled = runtime_health_stalled(&h, now, r->stall_ms);
    int64_t since = h.last_progress_ms ? now - h.last_progress_ms : -1;
    char name[160], detail[256];
    snprintf(name, sizeof(name), "agent:%s", agent_runtime_name(rt));
    if (!h.running)
        snprintf(detail, sizeof(detail), "not running");
    else if (stalled)
        snprintf(detail, sizeof(detail), "stalled: %s, no progress for %.1f s (limit %.1f s)",
                 h.retrying   ? "retrying a failing record"
                 : h.failures ? "its rounds keep failing"
                              : "busy",
                 (double)since / 1000.0, (double)r->stall_ms / 1000.0);
    else
        snprintf(detail, sizeof(detail), "%s",
                 h.retrying ? "running, retrying a record"
                 : h.busy   ? "running, busy"
                            : "running");
    int ok = h.running && !stalled;
    json_t *c = check(checks, name, ok, detail);
    json_object_set_new(c, "group", json_string(agent_runtime_group(rt)));
    json_object_set_new(c, "running", json_boolean(h.running));
    json_object_set_new(c, "busy", json_boolean(h.busy));
    json_object_set_new(c, "retrying", json_boolean(h.retrying));
    json_object_set_new(c, "attempts", json_integer(h.attempts));
    json_object_set_new(c, "failures", json_integer(h.failures));
    json_object_set_new(c, "since_progress_ms", json_integer(since));
    return ok;
}

int ops_ready_check(void *arg, json_t *checks)
{
    ops_ready *r = arg;
    int ok = 1;
    if (r->store)
        ok &= check_store(r, checks);
    ok &= check_bus(r, checks);
    int64_t now = util_now_ms();
    for (size_t i = 0; i < r->count; i++)
        ok &= check_agent(r, r->runtimes[i], now, checks);
    return ok;
}

void ops_ready_free(ops_ready *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->bus_lock);
    free(r->runtimes);
    free(r);
}
