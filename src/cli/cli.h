/*
 * cli.h - `herald <command>`: the commands and the shared argument parser.
 *
 * Exit status of every command: 0 success, 1 failure at run time (cannot
 * open the log, ...), 2 bad usage (unknown option, bad value), printed as
 * one line "herald CMD: what is wrong".
 */
#ifndef HERALD_CLI_H
#define HERALD_CLI_H

#include "cli/config.h"

#include <stddef.h>

#define HERALD_VERSION "0.1.0"

enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

/* One command-specific option. */
typedef struct cli_option {
    const char *name; /* long name without "--" */
    int takes_value;
} cli_option;

/* Called for each command-specific option; returns 0 or -1 with err. */
typedef int (*cli_option_fn)(void *ctx, const char *name, const char *value, char *err,
                             size_t errlen);

typedef struct cli_parsed {
    char **positional; /* borrowed from argv; NULL-terminated */
    int positional_count;
    char **rest; /* arguments after "--" (borrowed), NULL if none */
    int rest_count;
    int help; /* --help or -h was given */
} cli_parsed;

/*
 * Parse argv[1..argc-1] of command `cmd`: "--name value", "--name=value",
 * -h/--help, "--" ends options. The settings of config.h are accepted by
 * every command and applied to cfg; opts go to on_option. On a usage error
 * it prints "herald CMD: ..." to stderr and returns CLI_USAGE; else 0.
 * out->positional is malloc'd; free it with free().
 */
int cli_parse(const char *cmd, int argc, char **argv, const cli_option *opts, size_t nopts,
              herald_config *cfg, cli_option_fn on_option, void *ctx, cli_parsed *out);

/*
 * The checks every command makes after cli_parse(): --help prints usage and
 * the settings table (*status = CLI_OK); more than max_positional
 * arguments, or any after "--", is a usage error (*status = CLI_USAGE).
 * Returns 1 when the command should stop with *status, else 0.
 */
int cli_finish_parse(const char *cmd, const cli_parsed *args, const char *usage, int max_positional,
                     int *status);

/* Print "herald CMD: <message>" to stderr; returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The commands: argv[0] is the command name. Each returns an exit status. */
int cmd_publish(int argc, char **argv, herald_config *cfg);
int cmd_tail(int argc, char **argv, herald_config *cfg);
int cmd_api(int argc, char **argv, herald_config *cfg);
int cmd_up(int argc, char **argv, herald_config *cfg);
int cmd_agent(int argc, char **argv, herald_config *cfg);
int cmd_dlq(int argc, char **argv, herald_config *cfg);
int cmd_audit(int argc, char **argv, herald_config *cfg);
int cmd_lag(int argc, char **argv, herald_config *cfg);
int cmd_trace(int argc, char **argv, herald_config *cfg);

/*
 * A fatal Kafka error (a client that can never recover: the outbox relay's
 * producer, an agent's consumer) stops the process as SIGTERM does, but the
 * exit status is 1 so that a supervisor restarts it. cli_fatal_stop() is the
 * on-fatal callback of bus_relay_on_fatal() / agent_runner_on_fatal(): it
 * runs on the failing thread, marks the stop as fatal and sends SIGTERM to
 * the process, which the main thread's sigwait() takes (every thread blocks
 * it). cli_fatal_stopped(): 1 once that happened (the exit status is then 1).
 */
void cli_fatal_stop(void *unused);
int cli_fatal_stopped(void);

#endif
