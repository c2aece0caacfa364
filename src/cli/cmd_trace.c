/*
 * cmd_trace.c - `herald trace CORRELATION_ID`: the causal tree of every
 * event of one request, with orphans and missing follow-ups flagged (the
 * work is in trace/trace.h; this file parses, collects, prints).
 */
#include "cli/cli.h"

#include "bus/bus.h"
#include "common/util.h"
#include "trace/trace.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *usage =
    "usage: herald trace CORRELATION_ID [--json] [--grace DURATION]\n"
    "\n"
    "Print the causal tree of every event with that correlation id, read from every\n"
    "<domain>-events topic and its .dlq: each event with its type, source, the last\n"
    "8 characters of its event_id and the time since the first event, indented under\n"
    "the event its causation_id names. Flags orphans (a causation_id that looks like\n"
    "an event id but names no event of the trace) and missing follow-ups (a\n"
    "task.created without notification.sent, a notification.sent by email without\n"
    "email.delivered) once the event is older than the grace period.\n"
    "\n"
    "  --json            the same tree as one JSON object (nodes with children arrays,\n"
    "                    plus the orphans and missing lists)\n"
    "  --grace DURATION  how long a follow-up may take (default 30s; e.g. 0s, 2m)\n"
    "\n"
    "Exit status: 0 events found, 1 no event with that correlation id (or the log\n"
    "cannot be read), 2 bad usage.\n"
    "\n";

typedef struct trace_opts {
    int json;
    int64_t grace_ms;
} trace_opts;

static int on_option(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    trace_opts *o = ctx;
    if (strcmp(name, "json") == 0) {
        o->json = 1;
    } else if (strcmp(name, "grace") == 0) {
        if (util_parse_duration_ms(value, &o->grace_ms) != 0)
            return util_error(err, errlen, "--grace: '%s' is not a duration (e.g. 30s, 2m, 0s)",
                              value);
    }
    return 0;
}

int cmd_trace(int argc, char **argv, herald_config *cfg)
{
    static const cli_option opts[] = {{"json", 0}, {"grace", 1}};
    trace_opts o = {0, TRACE_DEFAULT_GRACE_MS};
    cli_parsed args;
    if (cli_parse("trace", argc, argv, opts, UTIL_ARRAY_LEN(opts), cfg, on_option, &o, &args) != 0)
        return CLI_USAGE;
    int status = CLI_USAGE;
    trace_tree t;
    int have_tree = 0;
    char err[512];
    if (cli_finish_parse("trace", &args, usage, 1, &status))
        goto out;
    if (args.positional_count == 0) {
        cli_usage_error("trace", "missing CORRELATION_ID (see 'herald trace --help')");
        goto out;
    }
    const char *cid = args.positional[0];
    if (!trace_correlation_id_valid(cid)) {
        cli_usage_error("trace",
                        "invalid correlation id: must be 1..128 printable ASCII characters");
        goto out;
    }
    status = CLI_FAILED;
    bus_config bus;
    if (config_bus(cfg, "herald-trace", &bus, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald trace: %s\n", err);
        goto out;
    }
    trace_tree_init(&t, cid);
    have_tree = 1;
    if (trace_collect(&bus, &t, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald trace: %s\n", err);
        goto out;
    }
    if (t.count == 0) {
        fprintf(stderr, "herald trace: no event with correlation id '%s'\n", cid);
        goto out;
    }
    trace_tree_build(&t, util_now_ms(), o.grace_ms);
    if (o.json) {
        json_t *j = trace_tree_to_json(&t);
        json_dumpf(j, stdout, JSON_COMPACT);
        fputc('\n', stdout);
        json_decref(j);
    } else {
        trace_tree_print(&t, stdout);
    }
    status = fflush(stdout) == 0 && !ferror(stdout) ? CLI_OK : CLI_FAILED;
out:
    if (have_tree)
        trace_tree_release(&t);
    free(args.positional);
    return status;
}
