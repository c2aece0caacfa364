/*
 * args.c - the argument parser shared by every command (see cli.h), and
 * the process-wide fatal stop (cli_fatal_stop()).
 * Hand-written rather than getopt_long so that every error is one precise
 * line in herald's own words.
 */
#include "cli/cli.h"

#include "common/util.h"

#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "herald%s%s: %s\n", cmd ? " " : "", cmd ? cmd : "", msg);
    return CLI_USAGE;
}

static int is_setting(const char *name)
{
    for (size_t i = 0; i < config_count(); i++)
        if (strcmp(config_flag(i), name) == 0)
            return 1;
    return 0;
}

int cli_parse(const char *cmd, int argc, char **argv, const cli_option *opts, size_t nopts,
              herald_config *cfg, cli_option_fn on_option, void *ctx, cli_parsed *out)
{
    memset(out, 0, sizeof(*out));
    out->positional = xcalloc((size_t)argc + 1, sizeof(char *));
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            out->rest = argv + i + 1;
            out->rest_count = argc - i - 1;
            break;
        }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            out->help = 1;
            continue;
        }
        if (arg[0] != '-' || arg[1] == '\0') {
            out->positional[out->positional_count++] = arg;
            continue;
        }
        if (arg[1] != '-')
            goto unknown;
        char name[64];
        const char *value = NULL;
        const char *eq = strchr(arg + 2, '=');
        size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        if (len == 0 || len >= sizeof(name))
            goto unknown;
        memcpy(name, arg + 2, len);
        name[len] = '\0';
        const cli_option *opt = NULL;
        for (size_t k = 0; k < nopts; k++)
            if (strcmp(opts[k].name, name) == 0)
                opt = &opts[k];
        int setting = !opt && is_setting(name);
        if (!opt && !setting)
            goto unknown;
        int takes_value = setting ? config_flag_takes_value(name) : opt->takes_value;
        if (takes_value) {
            if (eq) {
                value = eq + 1;
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                free(out->positional);
                out->positional = NULL;
                return cli_usage_error(cmd, "option '--%s' needs a value", name);
            }
        } else if (eq) {
            free(out->positional);
            out->positional = NULL;
            return cli_usage_error(cmd, "option '--%s' takes no value", name);
        }
        char err[512];
        int rc = setting ? config_set(cfg, name, value, err, sizeof(err))
                         : on_option(ctx, name, value, err, sizeof(err));
        if (rc != 0) {
            free(out->positional);
            out->positional = NULL;
            return cli_usage_error(cmd, "%s", err);
        }
        continue;
    unknown:
        free(out->positional);
        out->positional = NULL;
        return cli_usage_error(cmd, "unknown option '%s' (see 'herald %s --help')", arg,
                               cmd ? cmd : "");
    }
    return 0;
}

int cli_finish_parse(const char *cmd, const cli_parsed *args, const char *usage, int max_positional,
                     int *status)
{
    if (args->help) {
        fputs(usage, stdout);
        config_print_help();
        *status = CLI_OK;
        return 1;
    }
    *status = CLI_USAGE;
    if (args->positional_count > max_positional) {
        cli_usage_error(cmd, "unexpected argument '%s'", args->positional[max_positional]);
        return 1;
    }
    if (args->rest) {
        cli_usage_error(cmd, "unexpected arguments after '--'");
        return 1;
    }
    return 0;
}

static atomic_int fatal_stopped;

void cli_fatal_stop(void *unused)
{
    (void)unused;
    if (!atomic_exchange(&fatal_stopped, 1))
        kill(getpid(), SIGTERM);
}

int cli_fatal_stopped(void)
{
    return atomic_load(&fatal_stopped);
}
