/*
 * cmd_audit.c - `herald audit verify [--dir D]`: check the audit log's
 * files and their hash chain (audit_log.h) and say where it is broken.
 *
 * Output: on success one summary line on stdout (files, lines, events, the
 * chain head to keep elsewhere) and a note for each crash-damaged tail the
 * agent sealed; exit 0. On the first bad line: "herald audit verify:
 * FILE line N: what is wrong" on stderr, exit 1. Usage errors exit 2.
 */
#include "cli/cli.h"

#include "agents/audit_log.h"
#include "common/util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *usage =
    "usage: herald audit verify [--dir D]\n"
    "\n"
    "Check every audit file (audit-YYYY-MM-DD.jsonl, in date order) and the SHA-256\n"
    "chain that links each line to the one before, across files. Prints a summary and\n"
    "exits 0 when the log is intact; otherwise names the first bad line (an edited\n"
    "line, a deleted, inserted or reordered one, a cut or missing file) and exits 1.\n"
    "\n"
    "  --dir D    the audit directory (default: the audit-dir setting, else\n"
    "             DATA_DIR/audit)\n"
    "\n";

typedef struct audit_opts {
    const char *dir;
} audit_opts;

static int on_option(void *ctx, const char *name, const char *value, char *err, size_t errlen)
{
    audit_opts *o = ctx;
    if (strcmp(name, "dir") == 0) {
        if (!*value)
            return util_error(err, errlen, "--dir: empty directory name");
        if (strlen(value) > 3000)
            return util_error(err, errlen, "--dir: path too long");
        o->dir = value;
    }
    return 0;
}

static int verify(const char *dir)
{
    audit_verify_report rep;
    char err[1024];
    int rc = audit_verify(dir, &rep, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "herald audit verify: %s\n", err);
        return CLI_FAILED;
    }
    if (rc > 0) {
        fprintf(stderr, "herald audit verify: %s/%s line %" PRIu64 ": %s\n", dir, rep.bad_file,
                rep.bad_line, rep.problem);
        return CLI_FAILED;
    }
    printf("audit log OK: %zu file%s, %" PRIu64 " line%s, %" PRIu64 " event%s; chain head seq "
           "%" PRId64 " hash %s\n",
           rep.files, rep.files == 1 ? "" : "s", rep.lines, rep.lines == 1 ? "" : "s", rep.events,
           rep.events == 1 ? "" : "s", rep.head.seq, rep.head.hash);
    if (rep.repairs)
        printf("note: %" PRIu64 " tail%s damaged by a crash and sealed by the agent (the first "
               "at %s/%s line %" PRIu64 "); the events there were logged again after it\n",
               rep.repairs, rep.repairs == 1 ? "" : "s", dir, rep.repair_file, rep.repair_line);
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAILED;
}

int cmd_audit(int argc, char **argv, herald_config *cfg)
{
    static const cli_option opts[] = {{"dir", 1}};
    audit_opts o = {NULL};
    cli_parsed args;
    if (cli_parse("audit", argc, argv, opts, UTIL_ARRAY_LEN(opts), cfg, on_option, &o, &args) != 0)
        return CLI_USAGE;
    int status = CLI_USAGE;
    char *dir = NULL;
    if (cli_finish_parse("audit", &args, usage, 1, &status))
        goto out;
    if (args.positional_count == 0) {
        cli_usage_error("audit", "missing subcommand (see 'herald audit --help')");
        goto out;
    }
    if (strcmp(args.positional[0], "verify") != 0) {
        cli_usage_error("audit", "unknown subcommand '%s' (see 'herald audit --help')",
                        args.positional[0]);
        goto out;
    }
    if (o.dir) {
        dir = xstrdup(o.dir);
    } else if (cfg->audit_dir && *cfg->audit_dir) {
        dir = xstrdup(cfg->audit_dir);
    } else {
        size_t n = strlen(cfg->data_dir) + sizeof("/audit");
        dir = xmalloc(n);
        snprintf(dir, n, "%s/audit", cfg->data_dir);
    }
    status = verify(dir);
out:
    free(dir);
    free(args.positional);
    return status;
}
