/*
 * agent_runner.h - start agents, each on its own thread with its own
 * runtime (consumer group, connection), and stop them together. Used by
 * `herald agent NAME` (one agent) and `herald up` (every agent).
 */
#ifndef HERALD_AGENT_RUNNER_H
#define HERALD_AGENT_RUNNER_H

#include "agents/agents.h"
#include "bus/bus.h"
#include "runtime/runtime.h"

#include <stddef.h>

typedef struct agent_runner agent_runner;

/*
 * Build each agent of entries[0..n) with settings s, open its runtime on
 * bus cfg with the retry policy, and start its thread. All or nothing:
 * on failure every agent started so far is stopped, and NULL is returned
 * with err naming the agent and the reason.
 */
agent_runner *agent_runner_start(const bus_config *cfg, const agent_settings *s,
                                 const runtime_retry *retry, const agent_entry *const *entries,
                                 size_t n, char *err, size_t errlen);

/*
 * Have fn(arg) called when an agent stops on a fatal error of its consumer
 * (agent_runtime_run() returned -1: the Kafka client cannot recover, see
 * agent_runtime_fatal()); the process should then stop. fn runs on that
 * agent's thread, once per agent that fails, or at once on the caller's if
 * one failed already. The other agents go on until agent_runner_stop().
 */
void agent_runner_on_fatal(agent_runner *r, void (*fn)(void *arg), void *arg);

/* Stop every agent (each finishes the event in hand and commits what it
 * handled), join the threads and free everything. NULL is a no-op. */
void agent_runner_stop(agent_runner *r);

/* Number of agents and the counters of the i-th. */
size_t agent_runner_count(const agent_runner *r);
void agent_runner_stats(agent_runner *r, size_t i, const char **name, runtime_stats *out);

/* The i-th agent's runtime (owned by the runner; valid until
 * agent_runner_stop()), e.g. for readiness checks. */
agent_runtime *agent_runner_runtime(agent_runner *r, size_t i);

#endif
