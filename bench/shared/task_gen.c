/*
 * task_gen.c - task.created records for the benchmarks (see task_gen.h).
 * One set of buffers of `batch` records is reused for every batch.
 */
#include "shared/task_gen.h"

#include "common/util.h"
#include "event/event.h"
#include "event/tracecontext.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

void task_gen(const char *program, int n, size_t batch, task_gen_sink sink, void *arg)
{
    char err[512];
    bus_record *recs = xcalloc(batch, sizeof(*recs));
    char **values = xcalloc(batch, sizeof(*values));
    char(*keys)[EVENT_UUID_LEN + 1] = xcalloc(batch, sizeof(*keys));
    bus_header(*headers)[BUS_ENVELOPE_HEADERS] = xcalloc(batch, sizeof(*headers));
    char(*timebufs)[EVENT_TIME_LEN + 1] = xcalloc(batch, sizeof(*timebufs));
    event *evs = xcalloc(batch, sizeof(*evs));
    char due[EVENT_TIME_LEN + 1], created[EVENT_TIME_LEN + 1];
    event_format_time(util_now_ms() + 24LL * 3600 * 1000, due);
    event_format_time(util_now_ms(), created);
    for (int done = 0; done < n;) {
        size_t m = (size_t)(n - done) < batch ? (size_t)(n - done) : batch;
        for (size_t i = 0; i < m; i++) {
            event_uuid_v7(keys[i]);
            char title[64], owner[32], causation[64];
            snprintf(title, sizeof(title), "Review quarterly report #%d", done + (int)i);
            snprintf(owner, sizeof(owner), "user-%d", (done + (int)i) % 1000);
            json_t *data =
                json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "task_id", keys[i], "title", title,
                          "owner_id", owner, "priority", 2, "created_at", created, "due_at", due);
            snprintf(causation, sizeof(causation), "api-create-%s", keys[i]);
            if (event_build(&evs[i], "task.created", data, NULL, causation, "task-api", err,
                            sizeof(err)) != 0) {
                fprintf(stderr, "%s: event: %s\n", program, err);
                exit(1);
            }
            json_decref(data);
            /* every Task API event carries a traceparent */
            char traceparent[TRACE_PARENT_LEN + 1];
            trace_parent_new(traceparent);
            event_set_trace(&evs[i], traceparent, NULL);
            size_t len;
            values[i] = event_encode(&evs[i], &len);
            bus_record r = BUS_RECORD_INIT;
            r.topic = "task-events";
            r.key = keys[i];
            r.key_len = EVENT_UUID_LEN;
            r.value = values[i];
            r.value_len = len;
            r.headers = headers[i];
            r.header_count = bus_envelope_headers(&evs[i], headers[i], timebufs[i]);
            recs[i] = r;
        }
        sink(arg, recs, m);
        for (size_t i = 0; i < m; i++) {
            free(values[i]);
            event_release(&evs[i]);
        }
        done += (int)m;
    }
    free(recs);
    free(values);
    free(keys);
    free(headers);
    free(timebufs);
    free(evs);
}
