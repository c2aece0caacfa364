/*
 * task.h - the task value and its JSON form.
 *
 * A task is a plain value with owned strings; task_release() frees them.
 * Times are ms since the epoch (0 = unset for due/completed).
 */
#ifndef HERALD_TASK_H
#define HERALD_TASK_H

#include "common/json_text.h"

#include <jansson.h>
#include <stdint.h>

#define TASK_ID_MAX 64
#define TASK_TITLE_MAX 500
#define TASK_OWNER_MAX 128
#define TASK_DESCRIPTION_MAX 10000
#define TASK_PRIORITY_MIN 1
#define TASK_PRIORITY_MAX 5

typedef struct task {
    char id[TASK_ID_MAX + 1];
    char *title;
    char *description; /* NULL: none */
    char *owner_id;
    int priority;
    int completed;  /* status: 0 open, 1 completed */
    int64_t due_ms; /* 0: no due date */
    int64_t created_ms;
    int64_t updated_ms;
    int64_t completed_ms; /* 0: not completed */
    int64_t version;      /* starts at 1, +1 on every change; the ETag */
} task;

#define TASK_INIT                                                                                  \
    {                                                                                              \
        {0}, NULL, NULL, NULL, 1, 0, 0, 0, 0, 0, 0                                                 \
    }

/* "open" or "completed". */
const char *task_status_name(const task *t);

/*
 * The task as a new JSON object: id, title, description (null if none),
 * owner_id, priority, status, due_at (null if none), created_at,
 * updated_at, completed_at (null if not completed), version.
 */
json_t *task_to_json(const task *t);

/* The same object as task_to_json(), written to w without a tree (the
 * API's response bodies). */
void task_write_json(json_text *w, const task *t);

/* Deep copy src into dst (dst must be TASK_INIT or released). */
void task_copy(task *dst, const task *src);

/* Free the strings of t and reset it to TASK_INIT; NULL is a no-op. */
void task_release(task *t);

#endif
