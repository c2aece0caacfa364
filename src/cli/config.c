/*
 * config.c - the settings table (see config.h). Adding a setting is one row
 * in `settings` and one field in herald_config.
 */
#include "cli/config.h"

#include "api/server.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*setter_fn)(herald_config *cfg, const char *value, char *err, size_t errlen);

typedef struct setting {
    const char *flag;
    const char *env;
    const char *default_value;
    const char *help;
    setter_fn set;
} setting;

static int set_data_dir(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (!*v)
        return util_error(err, errlen, "must not be empty");
    if (strlen(v) > 3000)
        return util_error(err, errlen, "path too long");
    free(cfg->data_dir);
    cfg->data_dir = xstrdup(v);
    return 0;
}

static int set_bus(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    bus_config probe = BUS_CONFIG_INIT;
    if (bus_config_set_url(&probe, v, err, errlen) != 0)
        return -1;
    free(cfg->bus_url);
    cfg->bus_url = xstrdup(v);
    return 0;
}

static int set_retention(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    int64_t ms;
    if (strcmp(v, "0") == 0 || strcmp(v, "forever") == 0) {
        cfg->retention_ms = 0;
        return 0;
    }
    if (util_parse_duration_ms(v, &ms) != 0 || ms <= 0)
        return util_error(err, errlen,
                          "invalid duration '%s' (e.g. 90s, 12h, 7d, or 0 to keep "
                          "everything)",
                          v);
    cfg->retention_ms = ms;
    return 0;
}

/* A setting of two named values: *out = 0 for `off`, 1 for `on`. */
static int set_either(const char *v, const char *off, const char *on, int *out, char *err,
                      size_t errlen)
{
    if (strcmp(v, on) == 0)
        *out = 1;
    else if (strcmp(v, off) == 0)
        *out = 0;
    else
        return util_error(err, errlen, "must be '%s' or '%s', not '%s'", on, off, v);
    return 0;
}

static int set_sync(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return set_either(v, "normal", "full", &cfg->sync_full, err, errlen);
}

static int set_http_poller(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return set_either(v, "poll", "epoll", &cfg->http_epoll, err, errlen);
}

static int set_log_level(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (log_set_level_name(v) != 0)
        return util_error(err, errlen, "must be debug, info, warn, error or off, not '%s'", v);
    free(cfg->log_level);
    cfg->log_level = xstrdup(v);
    return 0;
}

static int set_log_format(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (log_set_format_name(v) != 0)
        return util_error(err, errlen, "must be text or json, not '%s'", v);
    return 0;
}

static int set_listen(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    char host[256];
    unsigned port;
    if (api_parse_listen(v, host, sizeof(host), &port) != 0)
        return util_error(err, errlen,
                          "invalid address '%s' (expected HOST:PORT, e.g. "
                          "127.0.0.1:8080)",
                          v);
    free(cfg->listen);
    cfg->listen = xstrdup(v);
    return 0;
}

/* A string setting stored at an offset of herald_config; any value. */
#define STRING_SETTER(field, max_len)                                                              \
    static int set_##field(herald_config *cfg, const char *v, char *err, size_t errlen)            \
    {                                                                                              \
        if (strlen(v) > (max_len))                                                                 \
            return util_error(err, errlen, "too long (at most %d characters)", (int)(max_len));    \
        for (const char *p = v; *p; p++)                                                           \
            if ((unsigned char)*p < 0x20 || *p == 0x7f)                                            \
                return util_error(err, errlen, "must not contain control characters");             \
        free(cfg->field);                                                                          \
        cfg->field = xstrdup(v);                                                                   \
        return 0;                                                                                  \
    }

STRING_SETTER(smtp_url, 2048)
STRING_SETTER(smtp_user, 256)
STRING_SETTER(smtp_password, 256)
STRING_SETTER(slack_webhook_url, 2048)
STRING_SETTER(audit_dir, 3000)

static int set_smtp_from(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    const char *at = strchr(v, '@');
    if (!at || at == v || !at[1] || strlen(v) > 254 || strpbrk(v, " <>\"\r\n\t,;"))
        return util_error(err, errlen, "'%s' is not a plain mail address (name@domain)", v);
    free(cfg->smtp_from);
    cfg->smtp_from = xstrdup(v);
    return 0;
}

static int set_email_domain(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n == 0 || n > 253)
        return util_error(err, errlen, "must be a domain name of 1..253 characters");
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '-'))
            return util_error(err, errlen, "'%s' is not a domain name", v);
    free(cfg->email_domain);
    cfg->email_domain = xstrdup(v);
    return 0;
}

static int set_slack_channel(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n == 0 || n > 80)
        return util_error(err, errlen, "must be 1..80 characters");
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == ' ')
            return util_error(err, errlen, "must not contain spaces or control characters");
    free(cfg->slack_channel);
    cfg->slack_channel = xstrdup(v);
    return 0;
}

static int parse_ms(const char *v, int64_t min, int64_t *out, char *err, size_t errlen)
{
    int64_t ms;
    if ((strcmp(v, "0") == 0 && min == 0) ? (ms = 0, 0) : util_parse_duration_ms(v, &ms) != 0)
        return util_error(err, errlen, "invalid duration '%s' (e.g. 500ms, 30s, 15m, 2h)", v);
    if (ms < min)
        return util_error(err, errlen, "'%s' is too short (at least %lldms)", v, (long long)min);
    *out = ms;
    return 0;
}

static int set_remind_before(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return parse_ms(v, 0, &cfg->remind_before_ms, err, errlen);
}

static int set_call_timeout(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return parse_ms(v, 100, &cfg->call_timeout_ms, err, errlen);
}

static int set_retry_base(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return parse_ms(v, 1, &cfg->retry_base_ms, err, errlen);
}

static int set_retry_max(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return parse_ms(v, 1, &cfg->retry_max_ms, err, errlen);
}

static int set_stall_after(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return parse_ms(v, 100, &cfg->stall_after_ms, err, errlen);
}

static int set_retry_attempts(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (end == v || *end || n < 1 || n > 100)
        return util_error(err, errlen, "must be a whole number from 1 to 100, not '%s'", v);
    cfg->retry_attempts = (int)n;
    return 0;
}

/* A whole decimal number in [lo, hi]; 0, or -1 with err filled. */
static int parse_count(const char *v, long lo, long hi, int *out, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end || errno || n < lo || n > hi)
        return util_error(err, errlen, "must be a whole number from %ld to %ld, not '%s'", lo, hi,
                          v);
    *out = (int)n;
    return 0;
}

static int set_topic_partitions(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    return parse_count(v, 1, BUS_MAX_TOPIC_PARTITIONS, &cfg->topic_partitions, err, errlen);
}

static int set_topic_replication(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (strcmp(v, "auto") == 0) {
        cfg->topic_replication = 0;
        return 0;
    }
    char why[128];
    if (parse_count(v, 1, BUS_MAX_TOPIC_REPLICATION, &cfg->topic_replication, why, sizeof(why)) !=
        0)
        return util_error(err, errlen, "%s (or 'auto')", why);
    return 0;
}

static int set_topic_create(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (strcmp(v, "1") == 0)
        cfg->topic_create = 1;
    else if (strcmp(v, "0") == 0)
        cfg->topic_create = 0;
    else
        return util_error(err, errlen,
                          "must be 1 (create missing Kafka topics) or 0 (never create them), not "
                          "'%s'",
                          v);
    return 0;
}

/* Append "name=value" to the librdkafka properties. */
static void add_kafka_prop(herald_config *cfg, const char *name, size_t name_len, const char *value)
{
    cfg->kafka_props =
        xrealloc(cfg->kafka_props, (cfg->kafka_prop_count + 2) * sizeof(*cfg->kafka_props));
    size_t len = name_len + 1 + strlen(value) + 1;
    char *p = xmalloc(len);
    snprintf(p, len, "%.*s=%s", (int)name_len, name, value);
    cfg->kafka_props[cfg->kafka_prop_count++] = p;
    cfg->kafka_props[cfg->kafka_prop_count] = NULL;
}

static int kafka_prop_name_valid(const char *name, size_t len)
{
    if (len == 0 || len > 128)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '.' || name[i] == '_'))
            return 0;
    return 1;
}

static int set_kafka(herald_config *cfg, const char *v, char *err, size_t errlen)
{
    if (!*v)
        return 0; /* the default: no property */
    const char *eq = strchr(v, '=');
    if (!eq || !kafka_prop_name_valid(v, (size_t)(eq - v)))
        return util_error(err, errlen,
                          "expected PROPERTY=VALUE with a librdkafka property name "
                          "(e.g. security.protocol=ssl), not '%s'",
                          v);
    add_kafka_prop(cfg, v, (size_t)(eq - v), eq + 1);
    return 0;
}

/* HERALD_KAFKA_<PROPERTY>=VALUE for every such variable of the environment. */
static int load_kafka_env(herald_config *cfg, char *err, size_t errlen)
{
    extern char **environ;
    static const char prefix[] = "HERALD_KAFKA_";
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, prefix, sizeof(prefix) - 1) != 0)
            continue;
        const char *name = *e + sizeof(prefix) - 1, *eq = strchr(name, '=');
        if (!eq)
            continue;
        char prop[129];
        size_t len = (size_t)(eq - name);
        if (len == 0 || len >= sizeof(prop))
            return util_error(err, errlen, "%.*s: not a librdkafka property", (int)(eq - *e), *e);
        for (size_t i = 0; i < len; i++) {
            char c = name[i];
            prop[i] = c == '_' ? '.' : (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        prop[len] = '\0';
        if (!kafka_prop_name_valid(prop, len))
            return util_error(err, errlen, "%.*s: not a librdkafka property", (int)(eq - *e), *e);
        add_kafka_prop(cfg, prop, len, eq + 1);
    }
    return 0;
}

static const setting settings[] = {
    {"data-dir", "HERALD_DATA_DIR", "./herald-data",
     "directory of the event log (bus.db) and all state", set_data_dir},
    {"bus", "HERALD_BUS", "sqlite",
     "event bus: 'sqlite' (embedded, in the data directory) or 'kafka:HOST:PORT[,...]'", set_bus},
    {"retention", "HERALD_RETENTION", "7d",
     "delete events older than this (90s, 12h, 7d; 0 keeps all)", set_retention},
    {"sync", "HERALD_SYNC", "full",
     "'full': fsync every commit (survives power loss); 'normal': survives a crash of "
     "herald but not of the machine",
     set_sync},
    {"log-level", "HERALD_LOG_LEVEL", "info", "debug, info, warn, error or off", set_log_level},
    {"log-format", "HERALD_LOG_FORMAT", "text",
     "log lines on stderr: 'text', or 'json' (one JSON object per line)", set_log_format},
    {"listen", "HERALD_LISTEN", "127.0.0.1:8080",
     "HOST:PORT the Task API listens on (port 0: any free port)", set_listen},
    {"http-poller", "HERALD_HTTP_POLLER", "poll",
     "how the Task API's threads wait for their connections: 'poll' (least CPU per request "
     "with up to a few hundred connections) or 'epoll' (for thousands)",
     set_http_poller},
    {"smtp-url", "HERALD_SMTP_URL", "",
     "smtp:// or smtps:// server for mail; empty: write .eml files to DATA_DIR/mail", set_smtp_url},
    {"smtp-from", "HERALD_SMTP_FROM", "herald@localhost", "sender address of every mail",
     set_smtp_from},
    {"smtp-user", "HERALD_SMTP_USER", "", "SMTP login (empty: none)", set_smtp_user},
    {"smtp-password", "HERALD_SMTP_PASSWORD", "", "SMTP password", set_smtp_password},
    {"email-domain", "HERALD_EMAIL_DOMAIN", "company.com", "mail goes to <owner_id>@this domain",
     set_email_domain},
    {"slack-webhook-url", "HERALD_SLACK_WEBHOOK_URL", "",
     "Slack incoming-webhook URL; empty: messages are only logged", set_slack_webhook_url},
    {"slack-channel", "HERALD_SLACK_CHANNEL", "#tasks", "Slack channel of every message",
     set_slack_channel},
    {"audit-dir", "HERALD_AUDIT_DIR", "", "audit log directory (empty: DATA_DIR/audit)",
     set_audit_dir},
    {"remind-before", "HERALD_REMIND_BEFORE", "0", "reminders fire this long before due_at",
     set_remind_before},
    {"call-timeout", "HERALD_CALL_TIMEOUT", "30s", "time limit of one SMTP, webhook or exec call",
     set_call_timeout},
    {"retry-attempts", "HERALD_RETRY_ATTEMPTS", "5",
     "handler calls per event before it goes to the dead-letter topic", set_retry_attempts},
    {"retry-base", "HERALD_RETRY_BASE", "500ms", "first retry delay (doubles, with jitter)",
     set_retry_base},
    {"retry-max", "HERALD_RETRY_MAX", "30s", "longest retry delay", set_retry_max},
    {"stall-after", "HERALD_STALL_AFTER", "30s",
     "an agent with work that made no progress for this long is stalled (/readyz 503, "
     "'herald lag' STALL)",
     set_stall_after},
    {"kafka", "HERALD_KAFKA_<PROP>", "",
     "a librdkafka property PROP=VALUE (repeatable; HERALD_KAFKA_SECURITY_PROTOCOL=ssl is "
     "security.protocol=ssl): TLS, SASL, tuning",
     set_kafka},
    {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "3",
     "partitions of each Kafka topic herald creates (1..10000)", set_topic_partitions},
    {"topic-replication", "HERALD_TOPIC_REPLICATION", "auto",
     "replication factor of each Kafka topic herald creates; auto: min(3, brokers in the "
     "cluster)",
     set_topic_replication},
    {"no-create-topics", "HERALD_TOPIC_CREATE", "1",
     "never create Kafka topics (HERALD_TOPIC_CREATE=0); a missing topic is an error that says "
     "how to create it",
     set_topic_create},
};

/* A flag "no-..." is a switch: it takes no value and stands for "0". */
static int is_switch(const char *flag)
{
    return strncmp(flag, "no-", 3) == 0;
}

int config_flag_takes_value(const char *name)
{
    return !is_switch(name);
}

size_t config_count(void)
{
    return UTIL_ARRAY_LEN(settings);
}

const char *config_flag(size_t i)
{
    return i < UTIL_ARRAY_LEN(settings) ? settings[i].flag : NULL;
}

int config_set(herald_config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    for (size_t i = 0; i < UTIL_ARRAY_LEN(settings); i++) {
        if (strcmp(settings[i].flag, name) != 0)
            continue;
        char why[256];
        if (is_switch(name))
            value = "0";
        if (!value)
            return util_error(err, errlen, "--%s needs a value", name);
        if (settings[i].set(cfg, value, why, sizeof(why)) != 0)
            return util_error(err, errlen, "--%s: %s", name, why);
        return 0;
    }
    return 1;
}

int config_load(herald_config *cfg, char *err, size_t errlen)
{
    char why[256];
    for (size_t i = 0; i < UTIL_ARRAY_LEN(settings); i++) {
        if (settings[i].set(cfg, settings[i].default_value, why, sizeof(why)) != 0)
            return util_error(err, errlen, "default of %s: %s", settings[i].env, why);
        const char *env = getenv(settings[i].env);
        if (env && settings[i].set(cfg, env, why, sizeof(why)) != 0)
            return util_error(err, errlen, "%s: %s", settings[i].env, why);
    }
    return load_kafka_env(cfg, err, errlen);
}

int config_bus(const herald_config *cfg, const char *component, bus_config *bus, char *err,
               size_t errlen)
{
    bus_config b = BUS_CONFIG_INIT;
    b.client_id = component;
    if (bus_config_set_url(&b, cfg->bus_url, err, errlen) != 0)
        return -1;
    b.data_dir = cfg->data_dir;
    b.retention_ms = cfg->retention_ms;
    b.synchronous_full = cfg->sync_full;
    b.kafka_props = (const char *const *)cfg->kafka_props;
    b.topic_partitions = cfg->topic_partitions;
    b.topic_replication = cfg->topic_replication;
    b.no_topic_create = !cfg->topic_create;
    *bus = b;
    return 0;
}

static const char *or_null(const char *s)
{
    return s && *s ? s : NULL;
}

void config_agents(const herald_config *cfg, agent_settings *out)
{
    agent_settings s = AGENT_SETTINGS_INIT;
    s.data_dir = cfg->data_dir;
    s.smtp_url = or_null(cfg->smtp_url);
    s.smtp_from = cfg->smtp_from;
    s.smtp_user = or_null(cfg->smtp_user);
    s.smtp_password = or_null(cfg->smtp_password);
    s.email_domain = cfg->email_domain;
    s.slack_webhook_url = or_null(cfg->slack_webhook_url);
    s.slack_channel = cfg->slack_channel;
    s.audit_dir = or_null(cfg->audit_dir);
    s.remind_before_ms = cfg->remind_before_ms;
    s.call_timeout_ms = cfg->call_timeout_ms;
    *out = s;
}

void config_retry(const herald_config *cfg, runtime_retry *out)
{
    out->max_attempts = cfg->retry_attempts;
    out->base_ms = cfg->retry_base_ms;
    out->max_ms = cfg->retry_max_ms < cfg->retry_base_ms ? cfg->retry_base_ms : cfg->retry_max_ms;
}

void config_print_help(void)
{
    printf("Settings (flag, environment variable, default):\n");
    for (size_t i = 0; i < UTIL_ARRAY_LEN(settings); i++)
        printf("  --%-18s %-25s %-17s %s\n", settings[i].flag, settings[i].env,
               settings[i].default_value, settings[i].help);
}

void config_release(herald_config *cfg)
{
    free(cfg->data_dir);
    free(cfg->bus_url);
    free(cfg->log_level);
    free(cfg->listen);
    free(cfg->smtp_url);
    free(cfg->smtp_from);
    free(cfg->smtp_user);
    free(cfg->smtp_password);
    free(cfg->email_domain);
    free(cfg->slack_webhook_url);
    free(cfg->slack_channel);
    free(cfg->audit_dir);
    for (size_t i = 0; i < cfg->kafka_prop_count; i++)
        free(cfg->kafka_props[i]);
    free(cfg->kafka_props);
    herald_config empty = HERALD_CONFIG_INIT;
    *cfg = empty;
}
