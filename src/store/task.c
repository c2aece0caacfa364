/*
 * task.c - the task value (see task.h).
 */
#include "store/task.h"

#include "common/util.h"
#include "event/event.h"

#include <stdlib.h>
#include <string.h>

const char *task_status_name(const task *t)
{
    return t->completed ? "completed" : "open";
}

static json_t *time_or_null(int64_t ms)
{
    if (ms == 0)
        return json_null();
    char buf[EVENT_TIME_LEN + 1];
    event_format_time(ms, buf);
    return json_string_nocheck(buf); /* ASCII */
}

/* Keys, status and times are ASCII of ours (jansson's UTF-8 check
 * skipped); the task's own strings are checked, since they come from the
 * database. */
json_t *task_to_json(const task *t)
{
    json_t *o = json_object();
    json_object_set_new_nocheck(o, "id", json_string(t->id));
    json_object_set_new_nocheck(o, "title", json_string(t->title ? t->title : ""));
    json_object_set_new_nocheck(o, "description",
                                t->description ? json_string(t->description) : json_null());
    json_object_set_new_nocheck(o, "owner_id", json_string(t->owner_id ? t->owner_id : ""));
    json_object_set_new_nocheck(o, "priority", json_integer(t->priority));
    json_object_set_new_nocheck(o, "status", json_string_nocheck(task_status_name(t)));
    json_object_set_new_nocheck(o, "due_at", time_or_null(t->due_ms));
    json_object_set_new_nocheck(o, "created_at", time_or_null(t->created_ms));
    json_object_set_new_nocheck(o, "updated_at", time_or_null(t->updated_ms));
    json_object_set_new_nocheck(o, "completed_at", time_or_null(t->completed_ms));
    json_object_set_new_nocheck(o, "version", json_integer(t->version));
    return o;
}

static void write_time_or_null(json_text *w, const char *key, int64_t ms)
{
    json_text_key(w, key);
    if (ms == 0) {
        json_text_null(w);
        return;
    }
    char buf[EVENT_TIME_LEN + 1];
    event_format_time(ms, buf);
    json_text_string(w, buf);
}

void task_write_json(json_text *w, const task *t)
{
    json_text_open_object(w);
    json_text_member_string(w, "id", t->id);
    json_text_member_string(w, "title", t->title ? t->title : "");
    json_text_member_string(w, "description", t->description); /* NULL: null */
    json_text_member_string(w, "owner_id", t->owner_id ? t->owner_id : "");
    json_text_member_int(w, "priority", t->priority);
    json_text_member_string(w, "status", task_status_name(t));
    write_time_or_null(w, "due_at", t->due_ms);
    write_time_or_null(w, "created_at", t->created_ms);
    write_time_or_null(w, "updated_at", t->updated_ms);
    write_time_or_null(w, "completed_at", t->completed_ms);
    json_text_member_int(w, "version", t->version);
    json_text_close_object(w);
}

void task_copy(task *dst, const task *src)
{
    *dst = *src;
    dst->title = src->title ? xstrdup(src->title) : NULL;
    dst->description = src->description ? xstrdup(src->description) : NULL;
    dst->owner_id = src->owner_id ? xstrdup(src->owner_id) : NULL;
}

void task_release(task *t)
{
    if (!t)
        return;
    free(t->title);
    free(t->description);
    free(t->owner_id);
    task empty = TASK_INIT;
    *t = empty;
}
