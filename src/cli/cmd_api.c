/*
 * cmd_api.c - `herald api` and `herald up`: run the Task API over HTTP.
 *
 * SIGINT and SIGTERM are blocked in every thread and taken by the main
 * thread with sigwait(), so no handler runs in the middle of a request.
 * On a signal: stop accepting, let the requests in flight finish and be
 * answered (at most SHUTDOWN_GRACE_MS), then stop the store's writer (which
 * commits everything queued) and exit 0. A fatal Kafka error stops it the
 * same way, with exit status 1 (cli_fatal_stop()); the outbox keeps what was
 * not published, for the next start.
 */
#include "cli/cli.h"

#include "api/server.h"
#include "bus/outbox.h"
#include "cli/agent_runner.h"
#include "cli/api_metrics.h"
#include "common/log.h"
#include "common/util.h"
#include "ops/ready.h"
#include "store/task_store.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SHUTDOWN_GRACE_MS 10000

static const char *api_usage =
    "usage: herald api [--listen HOST:PORT] [--data-dir DIR]\n"
    "\n"
    "Serve the Task API over HTTP/1.1 (JSON in and out):\n"
    "  POST   /tasks                 create (201, Location, ETag)\n"
    "  GET    /tasks                 list: ?owner_id=&status=open|completed&limit=&after=\n"
    "  GET    /tasks/{id}            one task (ETag)\n"
    "  PATCH  /tasks/{id}            partial update (If-Match for optimistic locking)\n"
    "  POST   /tasks/{id}/complete   complete (idempotent)\n"
    "  DELETE /tasks/{id}            delete (204)\n"
    "  GET    /tasks/{id}/events     the task's events in order\n"
    "  GET    /healthz               liveness\n"
    "  GET    /readyz                readiness: store and bus reachable, agents running\n"
    "                                and not stalled (--stall-after); 503 names what fails\n"
    "  GET    /metrics               Prometheus metrics (text format 0.0.4)\n"
    "  GET    /traces/{cid}          the causal tree of one correlation id (as herald trace\n"
    "                                --json); ?grace=30s for missing follow-ups\n"
    "Every change is stored together with its event (task.created, task.updated,\n"
    "task.completed, task.deleted on topic task-events) in one transaction.\n"
    "Stop with SIGINT or SIGTERM: requests in flight finish first.\n"
    "\n";

static const char *up_usage =
    "usage: herald up [--listen HOST:PORT] [--data-dir DIR]\n"
    "\n"
    "Run the whole system in one process on the embedded event log: the Task API\n"
    "(see 'herald api --help') and every agent, each on its own thread in its own\n"
    "consumer group: email, slack, audit and scheduler (see 'herald agent --help').\n"
    "Stop with SIGINT or SIGTERM: requests in flight finish, then each agent\n"
    "finishes the event in hand and commits.\n"
    "\n";

static int no_options(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    return 0;
}

/* Start every agent of the registry that `herald up` runs. */
static agent_runner *start_agents(const bus_config *bus, const herald_config *cfg, char *err,
                                  size_t errlen)
{
    size_t n, count = 0;
    const agent_entry *reg = agents_registry(&n);
    const agent_entry **entries = xcalloc(n ? n : 1, sizeof(*entries));
    for (size_t i = 0; i < n; i++)
        if (reg[i].in_up)
            entries[count++] = &reg[i];
    agent_settings s;
    config_agents(cfg, &s);
    runtime_retry retry;
    config_retry(cfg, &retry);
    agent_runner *r = agent_runner_start(bus, &s, &retry, entries, count, err, errlen);
    free(entries);
    return r;
}

static int run_api(const char *cmd, const char *usage, int argc, char **argv, herald_config *cfg)
{
    cli_parsed args;
    if (cli_parse(cmd, argc, argv, NULL, 0, cfg, no_options, NULL, &args) != 0)
        return CLI_USAGE;
    int status = CLI_USAGE;
    task_store *store = NULL;
    api_server *srv = NULL;
    agent_runner *agents = NULL;
    bus_relay *relay = NULL;
    ops_ready *ready = NULL;
    api_metrics *metrics = NULL;
    int with_agents = strcmp(cmd, "up") == 0;
    char err[1024];
    if (cli_finish_parse(cmd, &args, usage, 0, &status))
        goto out;
    status = CLI_FAILED;
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    bus_config bus;
    if (config_bus(cfg, with_agents ? "herald-up" : "task-api", &bus, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald %s: %s\n", cmd, err);
        goto out;
    }
    store = task_store_open(&bus, err, sizeof(err));
    if (!store) {
        fprintf(stderr, "herald %s: %s\n", cmd, err);
        goto out;
    }
    if (bus.kind != BUS_SQLITE) {
        /* external bus: the store queues events in its outbox; publish them */
        bus_config local = bus;
        local.kind = BUS_SQLITE;
        relay = bus_relay_start(&local, &bus, 0, err, sizeof(err));
        if (!relay) {
            fprintf(stderr, "herald %s: %s\n", cmd, err);
            goto out;
        }
        bus_relay_on_fatal(relay, cli_fatal_stop, NULL);
    }
    if (!(metrics = api_metrics_start(&bus, relay, err, sizeof(err)))) {
        fprintf(stderr, "herald %s: %s\n", cmd, err);
        goto out;
    }
    if (with_agents && !(agents = start_agents(&bus, cfg, err, sizeof(err)))) {
        fprintf(stderr, "herald %s: %s\n", cmd, err);
        goto out;
    }
    if (agents)
        agent_runner_on_fatal(agents, cli_fatal_stop, NULL);
    srv = api_server_start(cfg->listen, store, cfg->http_epoll, err, sizeof(err));
    if (!srv) {
        fprintf(stderr, "herald %s: %s\n", cmd, err);
        goto out;
    }
    ready = ops_ready_new(&bus, store, cfg->stall_after_ms);
    for (size_t i = 0; i < agent_runner_count(agents); i++)
        ops_ready_add(ready, agent_runner_runtime(agents, i));
    api_server_set_readiness(srv, ops_ready_check, ready);
    char host[256];
    unsigned port;
    api_parse_listen(cfg->listen, host, sizeof(host), &port);
    LOG_INFO("herald %s: Task API listening on http://%s%s%s:%u (data in %s, sync %s)", cmd,
             strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", api_server_port(srv),
             cfg->data_dir, cfg->sync_full ? "full" : "normal");
    int sig = 0;
    sigwait(&stop_signals, &sig);
    LOG_INFO("herald %s: %s, finishing requests in flight", cmd,
             cli_fatal_stopped() ? "stopping after a fatal Kafka error"
             : sig == SIGINT     ? "SIGINT received"
                                 : "SIGTERM received");
    api_server_stop(srv, SHUTDOWN_GRACE_MS);
    srv = NULL;
    agent_runner_stop(agents);
    agents = NULL;
    api_metrics_stop(metrics);
    metrics = NULL;
    bus_relay_stop(relay, SHUTDOWN_GRACE_MS);
    relay = NULL;
    uint64_t batches, requests;
    task_store_stats(store, &batches, &requests);
    task_store_close(store);
    store = NULL;
    int fatal = cli_fatal_stopped(); /* also one during the stop */
    if (fatal)
        LOG_WARN("herald %s: stopped after a fatal Kafka error, exit status 1 (%llu changes "
                 "committed in %llu transactions)",
                 cmd, (unsigned long long)requests, (unsigned long long)batches);
    else
        LOG_INFO("herald %s: stopped cleanly (%llu changes committed in %llu transactions)", cmd,
                 (unsigned long long)requests, (unsigned long long)batches);
    status = fatal ? CLI_FAILED : CLI_OK;
out:
    api_server_stop(srv, 0);
    ops_ready_free(ready);
    agent_runner_stop(agents);
    api_metrics_stop(metrics);
    bus_relay_stop(relay, 0);
    task_store_close(store);
    free(args.positional);
    return status;
}

int cmd_api(int argc, char **argv, herald_config *cfg)
{
    return run_api("api", api_usage, argc, argv, cfg);
}

int cmd_up(int argc, char **argv, herald_config *cfg)
{
    return run_api("up", up_usage, argc, argv, cfg);
}
