/*
 * agents.h - the agents herald ships, and the registry that names them.
 *
 * Each agent is one .c file with a factory that fills an agent_def (see
 * runtime/runtime.h) from the settings below: its group, topics, the types
 * it handles, its handler and hooks. The runtime does the rest.
 *
 *   name       group                topics                      publishes
 *   email      notification-email   task-events, reminder-events notification.sent, email.delivered
 *   slack      notification-slack   task-events                 notification.sent
 *   audit      audit-log            ^.*-events$                 (nothing: a hash-chained file)
 *   scheduler  scheduler            task-events                 reminder.scheduled/.due/.cancelled
 *   exec       (--group)            (from --types)              (nothing: runs a command)
 */
#ifndef HERALD_AGENTS_H
#define HERALD_AGENTS_H

#include "runtime/runtime.h"

#include <stddef.h>
#include <stdint.h>

/* Everything an agent may be configured with (strings borrowed). */
typedef struct agent_settings {
    const char *data_dir;          /* HERALD_DATA_DIR */
    const char *smtp_url;          /* HERALD_SMTP_URL; NULL/"": write .eml files */
    const char *smtp_from;         /* HERALD_SMTP_FROM */
    const char *smtp_user;         /* HERALD_SMTP_USER; NULL: no login */
    const char *smtp_password;     /* HERALD_SMTP_PASSWORD */
    const char *email_domain;      /* HERALD_EMAIL_DOMAIN */
    const char *slack_webhook_url; /* HERALD_SLACK_WEBHOOK_URL; NULL/"": log only */
    const char *slack_channel;     /* HERALD_SLACK_CHANNEL */
    const char *audit_dir;         /* HERALD_AUDIT_DIR; NULL: DATA_DIR/audit */
    int64_t remind_before_ms;      /* HERALD_REMIND_BEFORE */
    int64_t call_timeout_ms;       /* HERALD_CALL_TIMEOUT: one SMTP/webhook/exec call */

    /* exec only (herald agent exec --group G --types T1,T2 -- COMMAND ARGS) */
    const char *exec_group;
    const char *const *exec_types;
    size_t exec_type_count;
    char *const *exec_argv; /* NULL-terminated */
} agent_settings;

/* clang-format off */
#define AGENT_SETTINGS_INIT { NULL, NULL, NULL, NULL, NULL, "company.com", NULL, "#tasks", \
                              NULL, 0, 30000, NULL, NULL, 0, NULL }
/* clang-format on */

/* Fills def for one agent; returns 0, or -1 with err filled. */
typedef int (*agent_factory)(agent_def *def, const agent_settings *s, char *err, size_t errlen);

/* The factories (one per file in this folder). */
int agent_email_def(agent_def *def, const agent_settings *s, char *err, size_t errlen);
int agent_slack_def(agent_def *def, const agent_settings *s, char *err, size_t errlen);
int agent_audit_def(agent_def *def, const agent_settings *s, char *err, size_t errlen);
int agent_scheduler_def(agent_def *def, const agent_settings *s, char *err, size_t errlen);
int agent_exec_def(agent_def *def, const agent_settings *s, char *err, size_t errlen);

typedef struct agent_entry {
    const char *name;
    const char *summary;
    agent_factory make;
    int in_up; /* started by `herald up` */
} agent_entry;

/* The registry, in the order `herald up` starts them; *count gets its size. */
const agent_entry *agents_registry(size_t *count);

/* The entry named name, or NULL. */
const agent_entry *agents_find(const char *name);

#endif
