/*
 * cmd_lag.c - `herald lag`: consumer lag per group, topic and partition
 * with a Burrow-like status (ops/lag.h holds the rules), as a table or
 * JSON lines. The exit status says whether everything is fine, so it can
 * run from cron or a monitoring check: 0 all OK, 1 any other status (or a
 * failure), 2 bad usage.
 */
#include "cli/cli.h"

#include "common/util.h"
#include "event/event.h"
#include "ops/lag.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *usage =
    "usage: herald lag [--group G] [--topic T] [--window D] [--samples N] [--stall-after D]\n"
    "                  [--json]\n"
    "\n"
    "Consumer lag of every group (embedded: the log in DATA_DIR; Kafka: the cluster),\n"
    "one row per group, topic and partition: the committed offset (the next one the\n"
    "group reads; '-' before its first commit there), the end offset (the next one\n"
    "to be written), the lag in events and in seconds (now - occurred_at of the\n"
    "oldest waiting event; 0 without lag), and a status. Offsets are sampled N times\n"
    "over the window; a group is alive while a member runs (a herald agent's\n"
    "heartbeat, also while it retries a failing record, or a consumer's lease;\n"
    "Kafka: the group's members). Status, the first rule that applies:\n"
    "  REWIND  the committed offset moved back during the window\n"
    "  OK      no lag\n"
    "  STOP    lag, and no live member: nobody is consuming\n"
    "  WARN    the offset moves, but the lag grew over the whole window\n"
    "  STALL   lag, a live member, and the offset has not moved for --stall-after,\n"
    "          counted from the later of its last move and the oldest waiting\n"
    "          event's arrival (e.g. stuck retrying a failing record)\n"
    "  STOP    (Kafka, members unknown) the same without liveness evidence\n"
    "  OK      otherwise: consuming, or waiting less than --stall-after\n"
    "\n"
    "  --group G        only consumer group G\n"
    "  --topic T        only topic T\n"
    "  --window D       sampling window (default 2s; 0: one sample)\n"
    "  --samples N      samples over the window, 2..100 (default 3)\n"
    "  --stall-after D  the STALL limit (default: HERALD_STALL_AFTER, 30s)\n"
    "  --json           one JSON object per row, then {\"status\": worst}\n"
    "Exit status: 0 every row OK, 1 any other status or a failure, 2 bad usage.\n"
    "\n";

typedef struct lag_cli {
    lag_options opt;
    int json;
    int stall_set;
} lag_cli;

static int on_option(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    lag_cli *o = ctx;
    int64_t ms;
    if (strcmp(name, "group") == 0) {
        if (!*value || strlen(value) > 255)
            return util_error(err, errlen, "--group: must be 1..255 characters");
        o->opt.group = value;
    } else if (strcmp(name, "topic") == 0) {
        if (!bus_topic_name_valid(value))
            return util_error(err, errlen, "--topic: '%s' is not a topic name", value);
        o->opt.topic = value;
    } else if (strcmp(name, "window") == 0) {
        if (strcmp(value, "0") == 0)
            ms = 0;
        else if (util_parse_duration_ms(value, &ms) != 0 || ms < 0 || ms > 600000)
            return util_error(err, errlen, "--window: '%s' is not a duration of 0..10m", value);
        o->opt.window_ms = ms;
    } else if (strcmp(name, "samples") == 0) {
        char *end;
        long n = strtol(value, &end, 10);
        if (end == value || *end || n < 2 || n > 100)
            return util_error(err, errlen, "--samples: must be a whole number 2..100, not '%s'",
                              value);
        o->opt.samples = (int)n;
    } else if (strcmp(name, "stall-after") == 0) {
        if (util_parse_duration_ms(value, &ms) != 0 || ms < 100)
            return util_error(err, errlen,
                              "--stall-after: '%s' is not a duration of at least 100ms", value);
        o->opt.stall_ms = ms;
        o->stall_set = 1;
    } else if (strcmp(name, "json") == 0) {
        o->json = 1;
    }
    return 0;
}

static void print_json(const lag_row *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "group", json_string(r->group));
    json_object_set_new(o, "topic", json_string(r->topic));
    json_object_set_new(o, "partition", json_integer(r->partition));
    json_object_set_new(o, "committed",
                        r->committed >= 0 ? json_integer(r->committed) : json_null());
    json_object_set_new(o, "end", json_integer(r->end));
    json_object_set_new(o, "lag", json_integer(r->lag));
    json_object_set_new(o, "lag_seconds", json_real(r->lag_seconds));
    if (r->last_commit_ms >= 0) {
        char t[EVENT_TIME_LEN + 1];
        event_format_time(r->last_commit_ms, t);
        json_object_set_new(o, "last_commit_at", json_string(t));
    } else {
        json_object_set_new(o, "last_commit_at", json_null());
    }
    json_object_set_new(o, "alive", r->alive < 0 ? json_null() : json_boolean(r->alive));
    json_object_set_new(o, "members", r->members < 0 ? json_null() : json_integer(r->members));
    json_object_set_new(o, "status", json_string(lag_status_name(r->status)));
    json_object_set_new(o, "detail", json_string(r->detail));
    char *s = json_dumps(o, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(o);
}

int cmd_lag(int argc, char **argv, herald_config *cfg)
{
    static const cli_option opts[] = {{"group", 1},   {"topic", 1},       {"window", 1},
                                      {"samples", 1}, {"stall-after", 1}, {"json", 0}};
    lag_cli o = {LAG_OPTIONS_INIT, 0, 0};
    o.opt.window_ms = 2000;
    o.opt.samples = 3;
    cli_parsed args;
    if (cli_parse("lag", argc, argv, opts, UTIL_ARRAY_LEN(opts), cfg, on_option, &o, &args) != 0)
        return CLI_USAGE;
    int status = CLI_USAGE;
    lag_row *rows = NULL;
    size_t n = 0;
    char err[512];
    if (cli_finish_parse("lag", &args, usage, 0, &status))
        goto out;
    if (!o.stall_set)
        o.opt.stall_ms = cfg->stall_after_ms;
    status = CLI_FAILED;
    bus_config bus;
    if (config_bus(cfg, "herald-lag", &bus, err, sizeof(err)) != 0 ||
        lag_collect(&bus, &o.opt, &rows, &n, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald lag: %s\n", err);
        goto out;
    }
    lag_status worst = lag_worst(rows, n);
    if (o.json) {
        for (size_t i = 0; i < n; i++)
            print_json(&rows[i]);
        printf("{\"status\":\"%s\",\"rows\":%zu}\n", lag_status_name(worst), n);
    } else {
        printf("%-24s %-26s %4s %10s %10s %8s %9s  %-6s %s\n", "GROUP", "TOPIC", "PART",
               "COMMITTED", "END", "LAG", "LAG_S", "STATUS", "DETAIL");
        for (size_t i = 0; i < n; i++) {
            const lag_row *r = &rows[i];
            char committed[24];
            if (r->committed >= 0)
                snprintf(committed, sizeof(committed), "%lld", (long long)r->committed);
            else
                snprintf(committed, sizeof(committed), "-");
            printf("%-24s %-26s %4d %10s %10lld %8lld %9.1f  %-6s %s\n", r->group, r->topic,
                   r->partition, committed, (long long)r->end, (long long)r->lag, r->lag_seconds,
                   lag_status_name(r->status), r->detail);
        }
        if (n == 0)
            printf("(no consumer group has committed or is running)\n");
    }
    status = fflush(stdout) == 0 && worst == LAG_OK ? CLI_OK : CLI_FAILED;
out:
    lag_rows_free(rows, n);
    free(args.positional);
    return status;
}
