/*
 * agent_runner.c - agents on threads (see agent_runner.h). Each thread runs
 * agent_runtime_run() until agent_runner_stop() stops its runtime; the
 * runtimes share nothing but the data directory.
 */
#include "cli/agent_runner.h"

#include "common/log.h"
#include "common/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct agent_slot {
    agent_runtime *rt;
    pthread_t thread;
    int started;
} agent_slot;

struct agent_runner {
    agent_slot *slots;
    size_t count;
};

static void *agent_thread(void *arg)
{
    agent_runtime_run(arg);
    return NULL;
}

agent_runner *agent_runner_start(const bus_config *cfg, const agent_settings *s,
                                 const runtime_retry *retry, const agent_entry *const *entries,
                                 size_t n, char *err, size_t errlen)
{
    agent_runner *r = xcalloc(1, sizeof(*r));
    r->slots = xcalloc(n ? n : 1, sizeof(*r->slots));
    for (size_t i = 0; i < n; i++) {
        agent_def def = AGENT_DEF_INIT;
        char why[512];
        if (entries[i]->make(&def, s, why, sizeof(why)) != 0) {
            util_error(err, errlen, "agent '%s': %s", entries[i]->name, why);
            goto fail;
        }
        agent_slot *slot = &r->slots[r->count];
        slot->rt = agent_runtime_open(cfg, &def, retry, err, errlen);
        if (!slot->rt)
            goto fail;
        r->count++;
        if (pthread_create(&slot->thread, NULL, agent_thread, slot->rt) != 0) {
            util_error(err, errlen, "agent '%s': cannot start a thread", entries[i]->name);
            goto fail;
        }
        slot->started = 1;
    }
    return r;
fail:
    agent_runner_stop(r);
    return NULL;
}

void agent_runner_stop(agent_runner *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->count; i++)
        if (r->slots[i].started)
            agent_runtime_stop(r->slots[i].rt);
    for (size_t i = 0; i < r->count; i++) {
        if (r->slots[i].started)
            pthread_join(r->slots[i].thread, NULL);
        agent_runtime_close(r->slots[i].rt);
    }
    free(r->slots);
    free(r);
}

size_t agent_runner_count(const agent_runner *r)
{
    return r ? r->count : 0;
}

void agent_runner_stats(agent_runner *r, size_t i, const char **name, runtime_stats *out)
{
    *name = agent_runtime_name(r->slots[i].rt);
    agent_runtime_stats(r->slots[i].rt, out);
}

agent_runtime *agent_runner_runtime(agent_runner *r, size_t i)
{
    return i < r->count ? r->slots[i].rt : NULL;
}
