/*
 * kafka_mock_proc.c - tests/tools/kafka_mock as a child process (see
 * kafka_mock_proc.h): posix_spawn with its stdin and stdout on pipes,
 * lines read with poll(2) and a deadline so that a mock that hangs fails
 * the caller instead of blocking it, stopped by its PID.
 */
#include "kafka_mock_proc.h"

#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define LINE_TIMEOUT_MS 10000

extern char **environ;

/* The next line of its stdout, without the newline, into line; 0, or -1
 * with err filled (no line within the timeout, or the stream ended). */
static int read_line(kafka_mock_proc *m, char *line, size_t len, char *err, size_t errlen)
{
    int64_t deadline = util_monotonic_ns() + (int64_t)LINE_TIMEOUT_MS * 1000000;
    for (;;) {
        char *nl = memchr(m->pending, '\n', m->pending_len);
        if (nl) {
            size_t n = (size_t)(nl - m->pending);
            util_strlcpy(line, m->pending, n + 1 < len ? n + 1 : len);
            m->pending_len -= n + 1;
            memmove(m->pending, nl + 1, m->pending_len);
            return 0;
        }
        if (m->pending_len == sizeof(m->pending))
            return util_error(err, errlen, "kafka_mock: a line over %zu bytes", sizeof(m->pending));
        struct pollfd p = {.fd = m->out_fd, .events = POLLIN};
        int left = (int)((deadline - util_monotonic_ns()) / 1000000);
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return util_error(err, errlen, "kafka_mock: no answer within %d s",
                              LINE_TIMEOUT_MS / 1000);
        ssize_t got =
            read(m->out_fd, m->pending + m->pending_len, sizeof(m->pending) - m->pending_len);
        if (got <= 0)
            return util_error(err, errlen, "kafka_mock: its output ended (it exited)");
        m->pending_len += (size_t)got;
    }
}

int kafka_mock_proc_start(kafka_mock_proc *m, const char *path, int brokers,
                          const char *const *topics, int ntopics, char *err, size_t errlen)
{
    memset(m, 0, sizeof(*m));
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0)
        return util_error(err, errlen, "pipe: %s", strerror(errno));
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        return util_error(err, errlen, "pipe: %s", strerror(errno));
    }
    char brokers_text[16];
    snprintf(brokers_text, sizeof(brokers_text), "%d", brokers);
    const char *argv[32];
    int argc = 0;
    argv[argc++] = path;
    argv[argc++] = "--brokers";
    argv[argc++] = brokers_text;
    for (int i = 0; i < ntopics && argc < 29; i++) {
        argv[argc++] = "--topic";
        argv[argc++] = topics[i];
    }
    argv[argc] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    int rc = posix_spawn(&m->pid, path, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    m->in_fd = in[1];
    m->out_fd = out[0];
    if (rc != 0) {
        close(m->in_fd);
        close(m->out_fd);
        m->pid = 0;
        return util_error(err, errlen, "%s: %s", path, strerror(rc));
    }
    char line[1100];
    if (read_line(m, line, sizeof(line), err, errlen) != 0) {
        kafka_mock_proc_stop(m);
        return -1;
    }
    if (strncmp(line, "bootstrap ", 10) != 0) {
        util_error(err, errlen, "kafka_mock: unexpected first line '%.200s'", line);
        kafka_mock_proc_stop(m);
        return -1;
    }
    util_strlcpy(m->bootstrap, line + 10, sizeof(m->bootstrap));
    return 0;
}

int kafka_mock_proc_command(kafka_mock_proc *m, const char *command, char *answer,
                            size_t answer_len, char *err, size_t errlen)
{
    char text[512];
    int n = snprintf(text, sizeof(text), "%s\n", command);
    if (n < 0 || (size_t)n >= sizeof(text) || strchr(command, '\n'))
        return util_error(err, errlen, "kafka_mock: bad command '%.100s'", command);
    if (write(m->in_fd, text, (size_t)n) != n)
        return util_error(err, errlen, "kafka_mock: cannot write a command: %s", strerror(errno));
    return read_line(m, answer, answer_len, err, errlen);
}

int kafka_mock_proc_stop(kafka_mock_proc *m)
{
    if (m->pid <= 0)
        return -1;
    static const char quit[] = "quit\n";
    ssize_t ignored = write(m->in_fd, quit, sizeof(quit) - 1);
    (void)ignored;
    close(m->in_fd);
    int status = 0, killed = 0;
    for (int i = 0; i < 300; i++) { /* 30 s, then signals */
        if (waitpid(m->pid, &status, WNOHANG) == m->pid)
            goto reaped;
        if (i == 100 || i == 250) {
            kill(m->pid, i == 100 ? SIGTERM : SIGKILL);
            killed = 1;
        }
        util_sleep_us(100000);
    }
    waitpid(m->pid, &status, 0);
reaped:
    close(m->out_fd);
    m->pid = 0;
    return !killed && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
