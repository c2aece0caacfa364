/*
 * exec.c - the exec agent: user channels as commands. For every event of
 * the chosen types it runs COMMAND [ARGS] once, with the event on stdin:
 *
 *   herald agent exec --group sms --types task.created -- ./send-sms.sh
 *
 * Contract with the command
 * - stdin: the event exactly as it is in the log (the envelope's JSON, one
 *   line, no trailing newline), then end of file.
 * - environment: herald's own, plus HERALD_EVENT_TYPE, HERALD_EVENT_ID,
 *   HERALD_CORRELATION_ID, HERALD_CAUSATION_ID, HERALD_EVENT_SOURCE,
 *   HERALD_TASK_ID (when data.task_id is a string; otherwise removed) and
 *   HERALD_ATTEMPT (1 for the first call of an event, 2 for its first retry,
 *   ...).
 * - stdout and stderr both go to herald's stderr (stdout is redirected), so
 *   the command's output sits between herald's log lines and herald's own
 *   stdout stays clean.
 * - exit 0: done. exit 75 (EX_TEMPFAIL): retry with the runtime's backoff.
 *   Any other status, or death by a signal: failed, the event goes to the
 *   dead-letter topic with the reason ("exit status 3", "killed by signal 6
 *   (SIGABRT)"). A run longer than HERALD_CALL_TIMEOUT is killed and counts
 *   as a transient failure, like a webhook timeout: it is retried and
 *   dead-lettered only after the last attempt ("timed out after 30000 ms").
 * - it starts in its own process group, with default signal dispositions
 *   and an empty signal mask, and no file descriptor of herald's beyond 0, 1
 *   and 2. On a timeout the whole group is killed (SIGKILL), so a shell
 *   script's children go too.
 *
 * Design
 * - posix_spawnp(), not fork(): herald is multi-threaded, and glibc's
 *   posix_spawn (clone + exec) neither copies the address space nor runs
 *   anything unsafe between fork and exec. closefrom(3) in the file actions
 *   closes every other descriptor, whether or not it was opened O_CLOEXEC.
 * - The parent feeds stdin through a non-blocking pipe and waits for the
 *   child in one poll() loop over the pipe and a pidfd (pidfd_open; where
 *   the kernel has none, the loop wakes every 10 ms to check waitpid), up to
 *   the deadline. A command that never reads its input therefore never
 *   blocks herald; when it exits (or closes stdin) the write fails with
 *   EPIPE, which is expected and ignored. SIGPIPE is blocked around that
 *   write and a SIGPIPE it raised is consumed, so this does not depend on
 *   the process ignoring SIGPIPE.
 * - Every child is reaped before the handler returns (after the SIGKILL on
 *   a timeout, waitpid blocks until it is gone): no zombies.
 * - The command is looked up in PATH once, when the agent is made, so a
 *   typo is an error at start rather than a dead letter per event.
 * - Batches are small (16): runs cannot be undone, and after a crash the
 *   uncommitted part of a batch runs again (at-least-once; HERALD_EVENT_ID
 *   lets a command drop repeats).
 *
 * Threads: the runtime calls the handler from one thread. While a command
 * runs, that thread waits for it (at most the time limit), so a stop
 * request takes effect after the run in hand.
 */
#include "agents/agents.h"

#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define EXEC_MAX_BATCH 16
#define EXEC_DEFAULT_TIMEOUT_MS 30000
#define EXEC_EX_TEMPFAIL 75
/* Polling period when the kernel offers no pidfd. */
#define EXEC_POLL_MS 10

/* Groups of herald's own agents: an exec agent must not share their offsets. */
static const char *const exec_reserved_groups[] = {"notification-email", "notification-slack",
                                                   "audit-log", "scheduler"};

/* The variables herald sets for the command (removed from the inherited
 * environment first, so a stale value never leaks through). */
static const char *const exec_env_names[] = {
    "HERALD_EVENT_TYPE",   "HERALD_EVENT_ID", "HERALD_CORRELATION_ID", "HERALD_CAUSATION_ID",
    "HERALD_EVENT_SOURCE", "HERALD_TASK_ID",  "HERALD_ATTEMPT"};

typedef struct exec_state {
    char *group;
    char **types;
    size_t type_count;
    char **topics;
    size_t topic_count;
    char **argv; /* NULL-terminated */
    int64_t timeout_ms;
} exec_state;

/* ---- the environment -------------------------------------------------- */

static int exec_env_is_ours(const char *entry)
{
    for (size_t i = 0; i < UTIL_ARRAY_LEN(exec_env_names); i++) {
        size_t n = strlen(exec_env_names[i]);
        if (strncmp(entry, exec_env_names[i], n) == 0 && entry[n] == '=')
            return 1;
    }
    return 0;
}

static char *exec_env_entry(const char *name, const char *value)
{
    size_t n = strlen(name), v = strlen(value);
    char *s = xmalloc(n + 1 + v + 1);
    memcpy(s, name, n);
    s[n] = '=';
    memcpy(s + n + 1, value, v + 1);
    return s;
}

/* herald's environment without our names, then ours for ev. *added gets
 * the index of the first entry we allocated (free those). */
static char **exec_env_build(const event *ev, int attempt, size_t *added, size_t *total)
{
    size_t n = 0;
    for (char **e = environ; e && *e; e++)
        n++;
    char **env = xmalloc((n + UTIL_ARRAY_LEN(exec_env_names) + 1) * sizeof(*env));
    size_t k = 0;
    for (char **e = environ; e && *e; e++)
        if (!exec_env_is_ours(*e))
            env[k++] = *e;
    *added = k;
    char num[24];
    snprintf(num, sizeof(num), "%d", attempt);
    env[k++] = exec_env_entry("HERALD_EVENT_TYPE", ev->event_type);
    env[k++] = exec_env_entry("HERALD_EVENT_ID", ev->event_id);
    env[k++] = exec_env_entry("HERALD_CORRELATION_ID", ev->correlation_id);
    env[k++] = exec_env_entry("HERALD_CAUSATION_ID", ev->causation_id);
    env[k++] = exec_env_entry("HERALD_EVENT_SOURCE", ev->source);
    env[k++] = exec_env_entry("HERALD_ATTEMPT", num);
    json_t *task_id = json_object_get(ev->data, "task_id");
    if (json_is_string(task_id))
        env[k++] = exec_env_entry("HERALD_TASK_ID", json_string_value(task_id));
    env[k] = NULL;
    *total = k;
    return env;
}

static void exec_env_free(char **env, size_t added, size_t total)
{
    for (size_t i = added; i < total; i++)
        free(env[i]);
    free(env);
}

/* ---- running the command ---------------------------------------------- */

/* write(2) that never raises SIGPIPE in the process: the signal is blocked
 * in this thread for the call, and one the call raised is consumed. */
static ssize_t exec_write_nosigpipe(int fd, const char *buf, size_t len)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n = write(fd, buf, len);
    int saved = errno;
    if (n < 0 && saved == EPIPE && !was_pending) {
        const struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return n;
}

/* Spawn errors that will not go away by themselves. */
static int exec_spawn_error_permanent(int e)
{
    return e == ENOENT || e == EACCES || e == ENOEXEC || e == ENOTDIR || e == ELOOP ||
           e == ENAMETOOLONG || e == EISDIR || e == EPERM;
}

/*
 * Run the command with input on stdin and env as its environment, for at
 * most timeout_ms. Returns the outcome, with the reason filled unless OK.
 */
static agent_outcome exec_run(const exec_state *st, char **env, const char *input, size_t len,
                              char *reason, size_t reasonlen)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        util_error(reason, reasonlen, "cannot create a pipe: %s", strerror(errno));
        return AGENT_RETRY;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
    posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);

    pid_t pid;
    int e = posix_spawnp(&pid, st->argv[0], &fa, &attr, st->argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(pfd[0]);
    if (e != 0) {
        close(pfd[1]);
        util_error(reason, reasonlen, "cannot run '%s': %s", st->argv[0], strerror(e));
        return exec_spawn_error_permanent(e) ? AGENT_FAIL : AGENT_RETRY;
    }

    int wfd = pfd[1];
    fcntl(wfd, F_SETFL, fcntl(wfd, F_GETFL) | O_NONBLOCK);
    if (len == 0) {
        close(wfd);
        wfd = -1;
    }
    int pidfd = pidfd_open(pid, 0); /* -1 on old kernels: poll waitpid */
    int64_t deadline = util_monotonic_ns() + st->timeout_ms * 1000000;
    size_t off = 0;
    int status = 0, exited = 0, lost = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            exited = 1;
            break;
        }
        if (r < 0 && errno != EINTR) {
            lost = errno; /* ECHILD: reaped elsewhere; cannot happen in herald */
            break;
        }
        int64_t left_ns = deadline - util_monotonic_ns();
        if (left_ns <= 0)
            break;
        int64_t wait_ms = (left_ns + 999999) / 1000000;
        if (pidfd < 0 && wait_ms > EXEC_POLL_MS)
            wait_ms = EXEC_POLL_MS;
        if (wait_ms > 3600 * 1000) /* poll() takes an int */
            wait_ms = 3600 * 1000;
        struct pollfd fds[2];
        nfds_t n = 0;
        if (wfd >= 0)
            fds[n++] = (struct pollfd){wfd, POLLOUT, 0};
        if (pidfd >= 0)
            fds[n++] = (struct pollfd){pidfd, POLLIN, 0};
        if (poll(fds, n, (int)wait_ms) <= 0)
            continue;
        if (wfd >= 0 && fds[0].revents) {
            ssize_t w = exec_write_nosigpipe(wfd, input + off, len - off);
            if (w > 0)
                off += (size_t)w;
            if (off == len || (w < 0 && errno != EAGAIN && errno != EINTR)) {
                close(wfd); /* all written, or EPIPE: the command reads no more */
                wfd = -1;
            }
        }
    }
    if (wfd >= 0)
        close(wfd);
    if (pidfd >= 0)
        close(pidfd);
    if (lost) {
        util_error(reason, reasonlen, "lost track of '%s' (pid %d): %s", st->argv[0], (int)pid,
                   strerror(lost));
        return AGENT_RETRY;
    }
    if (!exited) {
        /* the group leader is not reaped yet, so its pid (= the group id)
         * cannot have been reused */
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        util_error(reason, reasonlen, "timed out after %lld ms", (long long)st->timeout_ms);
        return AGENT_RETRY;
    }
    if (WIFEXITED(status)) {
        int code = WEXITSTATUS(status);
        if (code == 0)
            return AGENT_OK;
        if (code == EXEC_EX_TEMPFAIL) {
            util_error(reason, reasonlen, "exit status %d (EX_TEMPFAIL)", code);
            return AGENT_RETRY;
        }
        util_error(reason, reasonlen, "exit status %d", code);
        return AGENT_FAIL;
    }
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char *name = sigabbrev_np(sig);
        util_error(reason, reasonlen, "killed by signal %d%s%s%s", sig, name ? " (SIG" : "",
                   name ? name : "", name ? ")" : "");
        return AGENT_FAIL;
    }
    util_error(reason, reasonlen, "ended with wait status 0x%x", (unsigned)status);
    return AGENT_FAIL;
}

static agent_outcome exec_handle(void *state, agent_ctx *ctx, const event *ev, char *reason,
                                 size_t reasonlen)
{
    exec_state *st = state;
    const bus_message *m = agent_ctx_message(ctx);
    if (!m) {
        util_error(reason, reasonlen, "no record to hand to the command");
        return AGENT_FAIL;
    }
    size_t added, total;
    char **env = exec_env_build(ev, agent_ctx_attempt(ctx), &added, &total);
    int64_t started = util_monotonic_ns();
    agent_outcome outcome = exec_run(st, env, m->value, m->value_len, reason, reasonlen);
    long long ms = (long long)((util_monotonic_ns() - started) / 1000000);
    exec_env_free(env, added, total);
    if (outcome == AGENT_OK) /* failures are logged by the runtime, with the reason */
        LOG_INFO_CID(ev->correlation_id, "Exec [%s]: %s %s [%s] done in %lld ms", st->group,
                     st->argv[0], ev->event_type, ev->event_id, ms);
    return outcome;
}

/* ---- the factory ------------------------------------------------------ */

static void exec_free_list(char **list, size_t n)
{
    if (!list)
        return;
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

static void exec_destroy(void *state)
{
    exec_state *st = state;
    if (!st)
        return;
    free(st->group);
    exec_free_list(st->types, st->type_count);
    exec_free_list(st->topics, st->topic_count);
    if (st->argv)
        for (char **a = st->argv; *a; a++)
            free(*a);
    free(st->argv);
    free(st);
}

/* Consumer group names: 1..EVENT_SOURCE_MAX of [A-Za-z0-9._-], starting
 * with a letter or digit (the group is also the source of the agent). */
static int exec_group_check(const char *group, char *err, size_t errlen)
{
    if (!group || !*group)
        return util_error(err, errlen, "an exec agent needs --group");
    size_t n = strlen(group);
    if (n > EVENT_SOURCE_MAX)
        return util_error(err, errlen, "group name is %zu characters, at most %d allowed", n,
                          EVENT_SOURCE_MAX);
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
    if (strspn(group, ok) != n || strchr("._-", group[0]))
        return util_error(err, errlen,
                          "group name must be letters, digits, '.', '_' or '-', starting "
                          "with a letter or digit");
    for (size_t i = 0; i < UTIL_ARRAY_LEN(exec_reserved_groups); i++)
        if (strcmp(group, exec_reserved_groups[i]) == 0)
            return util_error(err, errlen, "group '%s' belongs to a herald agent; choose another",
                              group);
    return 0;
}

/* Is cmd an executable file, directly (with a '/') or in PATH? */
static int exec_command_check(const char *cmd, char *err, size_t errlen)
{
    if (!cmd || !*cmd)
        return util_error(err, errlen, "an exec agent needs a command after --");
    struct stat sb;
    if (strchr(cmd, '/')) {
        if (access(cmd, X_OK) != 0)
            return util_error(err, errlen, "command '%s': %s", cmd, strerror(errno));
        if (stat(cmd, &sb) != 0 || !S_ISREG(sb.st_mode))
            return util_error(err, errlen, "command '%s' is not a file", cmd);
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin"; /* posix_spawnp's default */
    size_t clen = strlen(cmd);
    for (const char *p = path;;) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        char *full = xmalloc(dlen + 1 + clen + 2);
        if (dlen == 0) /* an empty entry is the current directory */
            full[dlen++] = '.';
        else
            memcpy(full, p, dlen);
        full[dlen] = '/';
        memcpy(full + dlen + 1, cmd, clen + 1);
        int found = access(full, X_OK) == 0 && stat(full, &sb) == 0 && S_ISREG(sb.st_mode);
        free(full);
        if (found)
            return 0;
        if (!end)
            break;
        p = end + 1;
    }
    return util_error(err, errlen, "command '%s' not found in PATH", cmd);
}

int agent_exec_def(agent_def *def, const agent_settings *s, char *err, size_t errlen)
{
    if (exec_group_check(s->exec_group, err, errlen) != 0)
        return -1;
    if (!s->exec_types || s->exec_type_count == 0)
        return util_error(err, errlen, "an exec agent needs --types (e.g. task.created)");
    for (size_t i = 0; i < s->exec_type_count; i++) {
        char why[200];
        if (!s->exec_types[i] || event_type_check_syntax(s->exec_types[i], why, sizeof(why)) != 0)
            return util_error(err, errlen, "--types: %s", s->exec_types[i] ? why : "empty type");
    }
    if (!s->exec_argv || !s->exec_argv[0])
        return util_error(err, errlen, "an exec agent needs a command after --");
    if (exec_command_check(s->exec_argv[0], err, errlen) != 0)
        return -1;

    exec_state *st = xcalloc(1, sizeof(*st));
    st->group = xstrdup(s->exec_group);
    st->timeout_ms = s->call_timeout_ms > 0 ? s->call_timeout_ms : EXEC_DEFAULT_TIMEOUT_MS;
    st->types = xcalloc(s->exec_type_count, sizeof(char *));
    st->topics = xcalloc(s->exec_type_count, sizeof(char *));
    for (size_t i = 0; i < s->exec_type_count; i++) {
        const char *type = s->exec_types[i];
        int seen = 0;
        for (size_t j = 0; j < st->type_count && !seen; j++)
            seen = strcmp(st->types[j], type) == 0;
        if (seen)
            continue;
        st->types[st->type_count++] = xstrdup(type);
        char topic[EVENT_TYPE_MAX + 16];
        if (event_topic_for_type(type, topic, sizeof(topic)) != 0) {
            exec_destroy(st); /* cannot happen after the syntax check */
            return util_error(err, errlen, "--types: no topic for '%s'", type);
        }
        seen = 0;
        for (size_t j = 0; j < st->topic_count && !seen; j++)
            seen = strcmp(st->topics[j], topic) == 0;
        if (!seen)
            st->topics[st->topic_count++] = xstrdup(topic);
    }
    size_t argc = 0;
    while (s->exec_argv[argc])
        argc++;
    st->argv = xcalloc(argc + 1, sizeof(char *));
    for (size_t i = 0; i < argc; i++)
        st->argv[i] = xstrdup(s->exec_argv[i]);

    agent_def d = AGENT_DEF_INIT;
    d.name = st->group;
    d.group = st->group;
    d.topics = (const char *const *)st->topics;
    d.topic_count = st->topic_count;
    d.types = (const char *const *)st->types;
    d.type_count = st->type_count;
    d.max_batch = EXEC_MAX_BATCH;
    d.handle = exec_handle;
    d.destroy = exec_destroy;
    d.state = st;
    *def = d;
    return 0;
}
