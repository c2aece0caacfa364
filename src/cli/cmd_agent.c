/*
 * cmd_agent.c - `herald agent NAME`: run one agent alone against the data
 * directory (the same agent `herald up` runs on a thread), and
 * `herald agent exec ... -- COMMAND` for user channels.
 *
 * SIGINT/SIGTERM are blocked and taken by the main thread with sigwait();
 * the agent finishes the event in hand, commits what it handled and the
 * process exits 0. A fatal Kafka error stops it the same way, with exit
 * status 1 (cli_fatal_stop()).
 */
#include "cli/cli.h"

#include "bus/outbox.h"
#include "cli/agent_runner.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_EXEC_TYPES 64

typedef struct agent_opts {
    const char *group;
    char *types_buf; /* owned copy of --types, split in place */
    const char *types[MAX_EXEC_TYPES];
    size_t type_count;
    int list;
} agent_opts;

static void print_usage(void)
{
    size_t n;
    const agent_entry *reg = agents_registry(&n);
    printf("usage: herald agent NAME [OPTIONS]\n"
           "       herald agent exec --group G --types TYPE[,TYPE...] -- COMMAND [ARGS...]\n"
           "       herald agent --list\n"
           "\n"
           "Run one agent alone against the data directory, in its own consumer group\n"
           "(the same agent 'herald up' runs). Stop with SIGINT or SIGTERM: the event in\n"
           "hand is finished and everything handled is committed.\n"
           "\n"
           "Agents:\n");
    for (size_t i = 0; i < n; i++)
        printf("  %-10s %s\n", reg[i].name, reg[i].summary);
    printf("\n"
           "exec runs COMMAND once per matching event, with the event JSON on stdin and\n"
           "HERALD_EVENT_TYPE, HERALD_EVENT_ID, HERALD_CORRELATION_ID, HERALD_CAUSATION_ID,\n"
           "HERALD_EVENT_SOURCE, HERALD_TASK_ID (when the event has one) and HERALD_ATTEMPT\n"
           "in its environment; its output goes to herald's stderr. Exit 0 = done,\n"
           "75 = try again later (with backoff), anything else or a signal = dead letter;\n"
           "a run over --call-timeout is killed (its process group) and retried.\n"
           "  --group G        consumer group of this channel (required)\n"
           "  --types T1,T2    event types to run it for (required)\n"
           "\n"
           "Failed events go, after the retries, to <topic>.dlq: see 'herald dlq --help'.\n"
           "\n");
}

static int on_option(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    agent_opts *o = ctx;
    if (strcmp(name, "list") == 0) {
        o->list = 1;
    } else if (strcmp(name, "group") == 0) {
        if (!bus_topic_name_valid(value))
            return util_error(
                err, errlen,
                "--group: '%s' is not a valid group name (1..249 of A-Z a-z 0-9 . _ -)", value);
        o->group = value;
    } else if (strcmp(name, "types") == 0) {
        free(o->types_buf);
        o->types_buf = xstrdup(value);
        o->type_count = 0;
        char *save = NULL;
        for (char *t = strtok_r(o->types_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            char why[256];
            if (event_type_check_syntax(t, why, sizeof(why)) != 0)
                return util_error(err, errlen, "--types: %s", why);
            if (o->type_count == MAX_EXEC_TYPES)
                return util_error(err, errlen, "--types: at most %d types", MAX_EXEC_TYPES);
            o->types[o->type_count++] = t;
        }
        if (o->type_count == 0)
            return util_error(err, errlen, "--types: name at least one event type");
    }
    return 0;
}

int cmd_agent(int argc, char **argv, herald_config *cfg)
{
    static const cli_option opts[] = {{"group", 1}, {"types", 1}, {"list", 0}};
    agent_opts o;
    memset(&o, 0, sizeof(o));
    cli_parsed args;
    if (cli_parse("agent", argc, argv, opts, UTIL_ARRAY_LEN(opts), cfg, on_option, &o, &args) !=
        0) {
        free(o.types_buf);
        return CLI_USAGE;
    }
    int status = CLI_USAGE;
    agent_runner *runner = NULL;
    bus_relay *relay = NULL;
    char err[1024];
    if (args.help) {
        print_usage();
        config_print_help();
        status = CLI_OK;
        goto out;
    }
    if (o.list) {
        size_t n;
        const agent_entry *reg = agents_registry(&n);
        for (size_t i = 0; i < n; i++)
            printf("%s\t%s\n", reg[i].name, reg[i].summary);
        status = CLI_OK;
        goto out;
    }
    if (args.positional_count != 1) {
        cli_usage_error("agent",
                        args.positional_count ? "unexpected argument '%s'"
                                              : "which agent? (see 'herald agent --list')%s",
                        args.positional_count ? args.positional[1] : "");
        goto out;
    }
    const char *name = args.positional[0];
    const agent_entry *entry = agents_find(name);
    if (!entry) {
        cli_usage_error("agent", "unknown agent '%s' (see 'herald agent --list')", name);
        goto out;
    }
    int is_exec = strcmp(name, "exec") == 0;
    if (is_exec && (!o.group || !o.type_count || !args.rest || args.rest_count == 0)) {
        cli_usage_error("agent", "exec needs --group G, --types T1,T2 and '-- COMMAND [ARGS]'");
        goto out;
    }
    if (!is_exec && (o.group || o.type_count || args.rest)) {
        cli_usage_error("agent", "--group, --types and '-- COMMAND' are options of 'agent exec'");
        goto out;
    }

    status = CLI_FAILED;
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    bus_config bus;
    if (config_bus(cfg, is_exec ? o.group : name, &bus, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald agent: %s\n", err);
        goto out;
    }
    agent_settings s;
    config_agents(cfg, &s);
    s.exec_group = o.group;
    s.exec_types = o.types;
    s.exec_type_count = o.type_count;
    s.exec_argv = args.rest;
    runtime_retry retry;
    config_retry(cfg, &retry);
    if (bus.kind != BUS_SQLITE) {
        /* external bus: derived events and dead letters leave through the
         * data directory's outbox */
        bus_config local = bus;
        local.kind = BUS_SQLITE;
        relay = bus_relay_start(&local, &bus, 0, err, sizeof(err));
        if (!relay) {
            fprintf(stderr, "herald agent: %s\n", err);
            goto out;
        }
        bus_relay_on_fatal(relay, cli_fatal_stop, NULL);
    }
    runner = agent_runner_start(&bus, &s, &retry, &entry, 1, err, sizeof(err));
    if (!runner) {
        fprintf(stderr, "herald agent: %s\n", err);
        goto out;
    }
    agent_runner_on_fatal(runner, cli_fatal_stop, NULL);
    LOG_INFO("herald agent %s: started (data in %s)", name, cfg->data_dir);
    int sig = 0;
    sigwait(&stop_signals, &sig);
    LOG_INFO("herald agent %s: %s, stopping", name,
             cli_fatal_stopped() ? "fatal Kafka error"
             : sig == SIGINT     ? "SIGINT received"
                                 : "SIGTERM received");
    agent_runner_stop(runner);
    runner = NULL;
    bus_relay_stop(relay, 10000);
    relay = NULL;
    int fatal = cli_fatal_stopped(); /* also one during the stop */
    if (fatal)
        LOG_WARN("herald agent %s: stopped after a fatal Kafka error, exit status 1", name);
    status = fatal ? CLI_FAILED : CLI_OK;
out:
    agent_runner_stop(runner);
    bus_relay_stop(relay, 0);
    free(o.types_buf);
    free(args.positional);
    return status;
}
