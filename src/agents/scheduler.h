/*
 * scheduler.h - the pure parts of the reminder scheduler (agents/scheduler.c),
 * exposed for its unit tests: reminder ids, reminder times and what a task
 * event asks of the scheduler. The agent itself is agent_scheduler_def() in
 * agents.h.
 */
#ifndef HERALD_SCHEDULER_H
#define HERALD_SCHEDULER_H

#include "event/event.h"

#include <stddef.h>
#include <stdint.h>

/* Longest task_id the scheduler accepts (bytes). */
#define SCHEDULER_TASK_ID_MAX 256

/*
 * The reminder id of a task's due time: the first 16 bytes of
 * SHA-256("<task_id>\n<due_ms in decimal>") as a UUID (version 8, variant
 * 10), lowercase text. The same task and due time always give the same id,
 * so a duplicate event cannot schedule a second reminder; any other task or
 * due time gives another id.
 */
void scheduler_reminder_id(const char *task_id, int64_t due_ms, char out[EVENT_UUID_LEN + 1]);

/* When the reminder of due_ms fires: due_ms - remind_before_ms (a negative
 * remind_before_ms counts as 0), never before 0000-01-01T00:00:00Z. */
int64_t scheduler_remind_at(int64_t due_ms, int64_t remind_before_ms);

/* What a task event asks of the scheduler. */
typedef enum scheduler_action {
    SCHEDULER_NOTHING = 0, /* no due time involved (a title change, no due_at) */
    SCHEDULER_SET,         /* the task is due at due_ms: (re)schedule */
    SCHEDULER_CLEAR,       /* the due time was removed: cancel, "rescheduled" */
    SCHEDULER_CLOSE        /* completed or deleted: cancel with reason */
} scheduler_action;

/* Members borrow from the event's data. */
typedef struct scheduler_intent {
    scheduler_action action;
    const char *task_id;  /* always set */
    const char *title;    /* current title, or NULL when the event has none */
    const char *owner_id; /* current owner, or NULL when the event has none */
    int64_t due_ms;       /* SET */
    int only_if_new;      /* SET from task.created: only a task never seen
                             before gets a reminder (a duplicate is ignored) */
    const char *reason;   /* CLEAR, CLOSE: "rescheduled", "completed", "deleted" */
    int details_changed;  /* task.updated changed the title or the owner: a
                             pending reminder takes the current values */
} scheduler_intent;

/* clang-format off */
#define SCHEDULER_INTENT_INIT { SCHEDULER_NOTHING, NULL, NULL, NULL, 0, 0, NULL, 0 }
/* clang-format on */

/*
 * Read what ev (task.created, task.updated, task.completed or task.deleted)
 * asks of the scheduler:
 *   task.created with a due_at          -> SET, only_if_new
 *   task.updated whose changes hold due_at -> SET (new value) or CLEAR (null)
 *   task.completed / task.deleted       -> CLOSE with that reason
 *   anything else about the task        -> NOTHING
 * SET requires title and owner_id strings (the reminder carries them);
 * details_changed also requires them.
 * Returns 0, or -1 with a reason naming the bad field (missing or empty
 * task_id, unparsable due_at, ...) in reason[reasonlen]; never fails on an
 * unknown type (NOTHING).
 */
int scheduler_intent_of(const event *ev, scheduler_intent *out, char *reason, size_t reasonlen);

#endif
