/*
 * cmd_publish.c - `herald publish EVENT_TYPE --data JSON ...`: build one
 * event, validate it against the naming rules and the envelope, append it
 * to its domain's topic and print it as one JSON line.
 */
#include "cli/cli.h"

#include "bus/bus.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *usage =
    "usage: herald publish EVENT_TYPE --data JSON [--key K] [--correlation-id ID]\n"
    "                      [--causation-id ID] [--source S]\n"
    "\n"
    "Publish one event to the topic of its domain (task.created -> task-events) and\n"
    "print it, as the JSON envelope, on one line.\n"
    "\n"
    "  EVENT_TYPE            domain.action with the action in the past tense\n"
    "  --data JSON           the event's data, a JSON object (required)\n"
    "  --key K               message key; default: data.task_id when it is a string\n"
    "  --correlation-id ID   default: a new UUID\n"
    "  --causation-id ID     default: the correlation id\n"
    "  --source S            default: herald-cli\n"
    "\n";

typedef struct publish_opts {
    const char *data;
    const char *key;
    const char *correlation_id;
    const char *causation_id;
    const char *source;
} publish_opts;

static int on_option(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    publish_opts *o = ctx;
    if (strcmp(name, "data") == 0)
        o->data = value;
    else if (strcmp(name, "key") == 0)
        o->key = value;
    else if (strcmp(name, "correlation-id") == 0)
        o->correlation_id = value;
    else if (strcmp(name, "causation-id") == 0)
        o->causation_id = value;
    else if (strcmp(name, "source") == 0)
        o->source = value;
    return 0;
}

int cmd_publish(int argc, char **argv, herald_config *cfg)
{
    static const cli_option opts[] = {
        {"data", 1}, {"key", 1}, {"correlation-id", 1}, {"causation-id", 1}, {"source", 1}};
    publish_opts o = {NULL, NULL, NULL, NULL, "herald-cli"};
    cli_parsed args;
    if (cli_parse("publish", argc, argv, opts, UTIL_ARRAY_LEN(opts), cfg, on_option, &o, &args) !=
        0)
        return CLI_USAGE;
    int status = CLI_USAGE;
    json_t *data = NULL;
    event ev = EVENT_INIT;
    bus_producer *producer = NULL;
    char *value = NULL;
    char err[512];

    if (cli_finish_parse("publish", &args, usage, 1, &status))
        goto out;
    if (args.positional_count == 0) {
        cli_usage_error("publish", "missing EVENT_TYPE (see 'herald publish --help')");
        goto out;
    }
    if (!o.data) {
        cli_usage_error("publish", "--data is required (a JSON object, e.g. --data "
                                   "'{\"task_id\": \"t-1\"}')");
        goto out;
    }
    json_error_t jerr;
    data = json_loads(o.data, JSON_REJECT_DUPLICATES, &jerr);
    if (!data) {
        cli_usage_error("publish", "--data: malformed JSON at line %d, column %d: %s", jerr.line,
                        jerr.column, jerr.text);
        goto out;
    }
    if (event_build(&ev, args.positional[0], data, o.correlation_id, o.causation_id, o.source, err,
                    sizeof(err)) != 0) {
        cli_usage_error("publish", "%s", err);
        goto out;
    }
    const char *key = o.key;
    if (!key) {
        json_t *task_id = json_object_get(ev.data, "task_id");
        if (json_is_string(task_id))
            key = json_string_value(task_id);
    }
    char topic[EVENT_TYPE_MAX + 16];
    event_topic_for_type(ev.event_type, topic, sizeof(topic));
    size_t len;
    value = event_encode(&ev, &len);

    status = CLI_FAILED;
    bus_config bus;
    if (config_bus(cfg, "herald-publish", &bus, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald publish: %s\n", err);
        goto out;
    }
    producer = bus_producer_open(&bus, err, sizeof(err));
    if (!producer) {
        fprintf(stderr, "herald publish: %s\n", err);
        goto out;
    }
    bus_header headers[BUS_ENVELOPE_HEADERS];
    char timebuf[EVENT_TIME_LEN + 1];
    bus_record rec = BUS_RECORD_INIT;
    rec.headers = headers;
    rec.header_count = bus_envelope_headers(&ev, headers, timebuf);
    rec.topic = topic;
    rec.key = key;
    rec.key_len = key ? strlen(key) : 0;
    rec.value = value;
    rec.value_len = len;
    int64_t offset;
    if (bus_produce(producer, &rec, 1, &offset, err, sizeof(err)) != 0) {
        fprintf(stderr, "herald publish: %s\n", err);
        goto out;
    }
    LOG_DEBUG("published %s [%s] to %s at offset %lld", ev.event_type, ev.event_id, topic,
              (long long)offset);
    printf("%s\n", value);
    status = fflush(stdout) == 0 ? CLI_OK : CLI_FAILED;
out:
    free(value);
    bus_producer_close(producer);
    event_release(&ev);
    json_decref(data);
    free(args.positional);
    return status;
}
