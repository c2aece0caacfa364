/*
 * cmd_tail.c - `herald tail`: print events from every *-events topic as
 * JSON lines, one envelope per line.
 *
 * Without --follow it stops once it has caught up with the log (Kafka: with
 * the topics' high watermarks, once the group assigned the partitions); with
 * --group it commits after each printed batch, so the next run with the
 * same group prints only what is new (at-least-once: a batch that could not
 * be written to stdout is not committed). SIGINT/SIGTERM end --follow
 * cleanly: the handler only sets a flag and wakes the consumer.
 */
#include "cli/cli.h"

#include "bus/bus.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

#include <fnmatch.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every domain topic, and not the dead-letter topics ("...-events.dlq"). */
#define TAIL_TOPIC_PATTERN "^[a-z][a-z0-9_]*-events$"
/* Kafka without --follow: the poll slice while catching up, and the longest
 * wait for a partition's high watermark */
#define KAFKA_POLL_MS 200
#define KAFKA_WATERMARK_TIMEOUT_MS 5000

static const char *usage =
    "usage: herald tail [--group G] [--from earliest|latest] [--type PATTERN] [--follow]\n"
    "\n"
    "Print events from every <domain>-events topic as JSON lines (the envelope).\n"
    "\n"
    "  --group G        read as consumer group G and commit what was printed, so the\n"
    "                   next run with G prints only newer events\n"
    "  --from WHERE     earliest (default) or latest; used when the group has no\n"
    "                   committed position yet (always, without --group)\n"
    "  --type PATTERN   only event types matching this glob, e.g. 'task.*'\n"
    "  --follow         keep waiting for new events (stop with Ctrl-C); without it,\n"
    "                   exit once caught up\n"
    "\n";

typedef struct tail_opts {
    const char *group;
    const char *type_pattern;
    enum bus_offset_reset from;
    int follow;
} tail_opts;

static volatile sig_atomic_t stop_requested;
static bus_consumer *active_consumer;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
    if (active_consumer)
        bus_consumer_wakeup(active_consumer);
}

static int on_option(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    tail_opts *o = ctx;
    if (strcmp(name, "group") == 0) {
        if (!*value || strlen(value) > 255)
            return util_error(err, errlen, "--group: must be 1..255 characters");
        o->group = value;
    } else if (strcmp(name, "from") == 0) {
        if (strcmp(value, "earliest") == 0)
            o->from = BUS_RESET_EARLIEST;
        else if (strcmp(value, "latest") == 0)
            o->from = BUS_RESET_LATEST;
        else
            return util_error(err, errlen, "--from: must be 'earliest' or 'latest', not '%s'",
                              value);
    } else if (strcmp(name, "type") == 0) {
        if (!*value)
            return util_error(err, errlen, "--type: empty pattern");
        o->type_pattern = value;
    } else if (strcmp(name, "follow") == 0) {
        o->follow = 1;
    }
    return 0;
}

/* Print one batch; returns 0, or -1 if stdout failed. */
static int print_batch(const bus_message *msgs, size_t n, const tail_opts *o)
{
    char err[512];
    for (size_t i = 0; i < n; i++) {
        event ev = EVENT_INIT;
        if (event_decode(&ev, msgs[i].value, msgs[i].value_len, err, sizeof(err)) != 0) {
            LOG_WARN("skipping record at %s offset %lld: not an event envelope: %s", msgs[i].topic,
                     (long long)msgs[i].offset, err);
            continue;
        }
        if (!o->type_pattern || fnmatch(o->type_pattern, ev.event_type, 0) == 0) {
            size_t len;
            char *line = event_encode(&ev, &len);
            fwrite(line, 1, len, stdout);
            fputc('\n', stdout);
            free(line);
        }
        event_release(&ev);
    }
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : -1;
}

int cmd_tail(int argc, char **argv, herald_config *cfg)
{
    static const cli_option opts[] = {{"group", 1}, {"from", 1}, {"type", 1}, {"follow", 0}};
    tail_opts o = {NULL, NULL, BUS_RESET_EARLIEST, 0};
    cli_parsed args;
    if (cli_parse("tail", argc, argv, opts, UTIL_ARRAY_LEN(opts), cfg, on_option, &o, &args) != 0)
        return CLI_USAGE;
    int status = CLI_USAGE;
    bus_consumer *consumer = NULL;
    char err[512];
    if (cli_finish_parse("tail", &args, usage, 0, &status))
        goto out;
    status = CLI_FAILED;
    bus_config bus;
    if (config_bus(cfg, "herald-tail", &bus, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald tail: %s\n", err);
        goto out;
    }
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = o.group;
    sub.pattern = TAIL_TOPIC_PATTERN;
    sub.reset = o.from;
    consumer = bus_consumer_open(&bus, &sub, err, sizeof(err));
    if (!consumer) {
        fprintf(stderr, "herald tail: %s\n", err);
        goto out;
    }
    active_consumer = consumer;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    while (!stop_requested) {
        const bus_message *msgs;
        size_t n;
        int wait_ms = o.follow ? 1000 : bus.kind == BUS_KAFKA ? KAFKA_POLL_MS : 0;
        if (bus_consumer_poll(consumer, wait_ms, &msgs, &n, err, sizeof(err)) != 0) {
            fprintf(stderr, "herald tail: %s\n", err);
            goto out;
        }
        if (print_batch(msgs, n, &o) != 0) {
            /* the reader went away (e.g. `| head`): stop, commit nothing more */
            status = CLI_OK;
            goto out;
        }
        /* commit even after an empty poll: a group's first run records
         * where the reset rule put it, so --from latest loses nothing
         * published between two runs (a no-op when nothing moved) */
        if (bus_consumer_commit(consumer, err, sizeof(err)) != 0) {
            fprintf(stderr, "herald tail: %s\n", err);
            goto out;
        }
        if (n == 0 && !o.follow) {
            int end =
                bus_consumer_caught_up(consumer, KAFKA_WATERMARK_TIMEOUT_MS, err, sizeof(err));
            if (end < 0) {
                fprintf(stderr, "herald tail: %s\n", err);
                goto out;
            }
            if (end)
                break;
        }
    }
    status = CLI_OK;
out:
    active_consumer = NULL;
    bus_consumer_close(consumer);
    free(args.positional);
    return status;
}
