/*
 * config.h - herald's settings: one table drives every setting's name,
 * environment variable, command-line flag, default, validation and help.
 *
 * Precedence: built-in default < environment (HERALD_*) < command-line flag.
 * Every value from outside is validated; a bad one is an error that names
 * the variable or flag and the value.
 */
#ifndef HERALD_CONFIG_H
#define HERALD_CONFIG_H

#include "agents/agents.h"
#include "bus/bus.h"
#include "runtime/runtime.h"

#include <stddef.h>
#include <stdint.h>

typedef struct herald_config {
    char *data_dir;       /* HERALD_DATA_DIR, --data-dir */
    char *bus_url;        /* HERALD_BUS, --bus */
    int64_t retention_ms; /* HERALD_RETENTION, --retention */
    int sync_full;        /* HERALD_SYNC, --sync: full (1) or normal (0) */
    char *log_level;      /* HERALD_LOG_LEVEL, --log-level */
    char *listen;         /* HERALD_LISTEN, --listen: HOST:PORT of the Task API */

    /* agents */
    char *smtp_url;           /* HERALD_SMTP_URL; "" writes .eml files */
    char *smtp_from;          /* HERALD_SMTP_FROM */
    char *smtp_user;          /* HERALD_SMTP_USER */
    char *smtp_password;      /* HERALD_SMTP_PASSWORD */
    char *email_domain;       /* HERALD_EMAIL_DOMAIN */
    char *slack_webhook_url;  /* HERALD_SLACK_WEBHOOK_URL; "" only logs */
    char *slack_channel;      /* HERALD_SLACK_CHANNEL */
    char *audit_dir;          /* HERALD_AUDIT_DIR; "" means DATA_DIR/audit */
    int64_t remind_before_ms; /* HERALD_REMIND_BEFORE */
    int64_t call_timeout_ms;  /* HERALD_CALL_TIMEOUT */
    int retry_attempts;       /* HERALD_RETRY_ATTEMPTS */
    int64_t retry_base_ms;    /* HERALD_RETRY_BASE */
    int64_t retry_max_ms;     /* HERALD_RETRY_MAX */

    /* librdkafka properties: HERALD_KAFKA_<PROPERTY> (FETCH_WAIT_MAX_MS ->
     * fetch.wait.max.ms) and --kafka PROP=VALUE; "name=value" strings,
     * NULL-terminated (NULL when none) */
    char **kafka_props;
    size_t kafka_prop_count;

    /* Kafka topics herald creates when missing */
    int topic_partitions;   /* HERALD_TOPIC_PARTITIONS, --topic-partitions */
    int topic_replication;  /* HERALD_TOPIC_REPLICATION, --topic-replication; 0: auto */
    int topic_create;       /* HERALD_TOPIC_CREATE (0 or 1), --no-create-topics */
    int64_t stall_after_ms; /* HERALD_STALL_AFTER: /readyz and `herald lag` */
    int http_epoll;         /* HERALD_HTTP_POLLER, --http-poller: epoll (1) or poll (0) */
} herald_config;

/* clang-format off */
#define HERALD_CONFIG_INIT {NULL, NULL, 0, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
                           NULL, NULL, 0, 0, 0, 0, 0, NULL, 0, 0, 0, 1, 0, 0}
/* clang-format on */

/* Fill cfg with the defaults, then apply the environment. 0 or -1 + err. */
int config_load(herald_config *cfg, char *err, size_t errlen);

/*
 * Apply one setting by its flag name ("data-dir", "bus", ...). Returns 0,
 * 1 if name is not a setting, or -1 with err filled for a bad value.
 * A switch (a flag "no-...", see config_flag_takes_value()) takes value
 * NULL and sets its setting to "0".
 */
int config_set(herald_config *cfg, const char *name, const char *value, char *err, size_t errlen);

/* 1 if the setting with flag name takes a value ("--bus kafka:..."), 0 if
 * it is a switch ("--no-create-topics"; its variable takes 0 or 1). */
int config_flag_takes_value(const char *name);

/* Fill a bus configuration from cfg (pointers borrow cfg's strings).
 * component names the client on the bus (Kafka client.id, unless
 * HERALD_KAFKA_CLIENT_ID overrides it): "task-api", "herald-tail", ...;
 * it must outlive bus. */
int config_bus(const herald_config *cfg, const char *component, bus_config *bus, char *err,
               size_t errlen);

/* Fill the agents' settings from cfg (pointers borrow cfg's strings). */
void config_agents(const herald_config *cfg, agent_settings *out);

/* Fill the runtime's retry policy from cfg. */
void config_retry(const herald_config *cfg, runtime_retry *out);

/* Print the settings table (flag, variable, default, meaning) for --help. */
void config_print_help(void);

/* Free cfg's strings and reset it. */
void config_release(herald_config *cfg);

/* Number of settings and the flag name of the i-th (for getopt tables). */
size_t config_count(void);
const char *config_flag(size_t i);

#endif
