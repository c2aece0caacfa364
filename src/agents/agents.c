/*
 * agents.c - the registry of the agents herald ships (see agents.h). Adding
 * an agent is one file with its factory and one row here.
 */
#include "agents/agents.h"

#include <string.h>

static const agent_entry registry[] = {
    /* name, summary, factory, started by `herald up` */
    {"email", "task.created/reminder.due -> mail to the owner (HERALD_SMTP_URL, else .eml)",
     agent_email_def, 1},
    {"slack", "task.created/completed -> Slack webhook (HERALD_SLACK_WEBHOOK_URL)", agent_slack_def,
     1},
    {"audit", "every *-events event -> hash-chained AUDIT_DIR/audit-YYYY-MM-DD.jsonl",
     agent_audit_def, 1},
    {"scheduler", "due_at -> reminder.scheduled/.due/.cancelled (HERALD_REMIND_BEFORE)",
     agent_scheduler_def, 1},
    {"exec", "user channel: run a command per event (--group, --types, -- COMMAND)", agent_exec_def,
     0},
    {NULL, NULL, NULL, 0}, /* end */
};

const agent_entry *agents_registry(size_t *count)
{
    size_t n = 0;
    while (registry[n].name)
        n++;
    *count = n;
    return registry;
}

const agent_entry *agents_find(const char *name)
{
    for (size_t i = 0; registry[i].name; i++)
        if (strcmp(registry[i].name, name) == 0)
            return &registry[i];
    return NULL;
}
