/*
 * agent_runner.c - agents on threads (see agent_runner.h). Each thread runs
 * agent_runtime_run() until agent_runner_stop() stops its runtime; the
 * runtimes share nothing but the data directory. A run that ends on a fatal
 * bus error calls the runner's on_fatal callback from its thread (the
 * callback is read under a mutex, so one set after the error still runs).
 */
#include "cli/agent_runner.h"

#include "common/log.h"
#include "common/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct agent_slot {
    agent_runtime *rt;
    agent_runner *runner;
    pthread_t thread;
    int started;
} agent_slot;

struct agent_runner {
    agent_slot *slots;
    size_t count;
    pthread_mutex_t fatal_lock; /* guards the three below */
    int fatal;                  /* an agent stopped on a fatal error */
    void (*on_fatal)(void *arg);
    void *on_fatal_arg;
};

static void *agent_thread(void *arg)
{
    agent_slot *slot = arg;
    char thread_name[16]; /* the kernel keeps 15 characters */
    snprintf(thread_name, sizeof thread_name, "%s", agent_runtime_name(slot->rt));
    pthread_setname_np(pthread_self(), thread_name);
    if (agent_runtime_run(slot->rt) == 0)
        return NULL;
    agent_runner *r = slot->runner;
    pthread_mutex_lock(&r->fatal_lock);
    r->fatal = 1;
    void (*fn)(void *) = r->on_fatal;
    void *fn_arg = r->on_fatal_arg;
    pthread_mutex_unlock(&r->fatal_lock);
    if (fn)
        fn(fn_arg);
    return NULL;
}

agent_runner *agent_runner_start(const bus_config *cfg, const agent_settings *s,
                                 const runtime_retry *retry, const agent_entry *const *entries,
                                 size_t n, char *err, size_t errlen)
{
    agent_runner *r = xcalloc(1, sizeof(*r));
    r->slots = xcalloc(n ? n : 1, sizeof(*r->slots));
    pthread_mutex_init(&r->fatal_lock, NULL);
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
        slot->runner = r;
        r->count++;
        if (pthread_create(&slot->thread, NULL, agent_thread, slot) != 0) {
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
    pthread_mutex_destroy(&r->fatal_lock);
    free(r->slots);
    free(r);
}

void agent_runner_on_fatal(agent_runner *r, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&r->fatal_lock);
    r->on_fatal = fn;
    r->on_fatal_arg = arg;
    int already = r->fatal;
    pthread_mutex_unlock(&r->fatal_lock);
    if (already && fn)
        fn(arg);
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
