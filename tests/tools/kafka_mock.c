/*
 * kafka_mock.c - a Kafka cluster for the tests, without a Kafka broker: it
 * runs librdkafka's mock cluster (rdkafka_mock.h) in its own process, so any
 * Kafka client (herald through librdkafka, kcat, Python) talks to it over
 * loopback TCP as to a real cluster. Not installed.
 *
 *   kafka_mock [--brokers N] [--topic NAME:PARTITIONS]...
 *
 * Starts N brokers (default 3, ids 1..N; the mock listens on 127.0.0.1 on
 * ephemeral ports), creates the given topics (replication factor
 * min(3, N)), prints exactly one line "bootstrap HOST:PORT,..." on stdout,
 * then reads control commands on stdin, one per line, and answers each with
 * exactly one line "ok ..." or "error ...":
 *
 *   down ID        disconnect broker ID and refuse new connections
 *   up ID          accept connections on broker ID again
 *   rtt ID MS      delay every response of broker ID by MS milliseconds
 *   topic NAME P   create topic NAME with P partitions
 *   error APIKEY ERRCODE [COUNT]
 *                  the next COUNT (default 1, at most 10000) requests of
 *                  Kafka API key APIKEY (0..999: 0 Produce, 1 Fetch, 8
 *                  OffsetCommit, 11 JoinGroup, 12 Heartbeat, 14 SyncGroup,
 *                  22 InitProducerId, ...) to any broker are answered with
 *                  error code ERRCODE (a Kafka protocol error code such as
 *                  7 REQUEST_TIMED_OUT, 16 NOT_COORDINATOR, 31
 *                  CLUSTER_AUTHORIZATION_FAILED, 82 FENCED_INSTANCE_ID; or
 *                  -195, librdkafka's __TRANSPORT, which makes the broker
 *                  drop the connection); pushed after any still pending
 *                  (rd_kafka_mock_push_request_errors); answers
 *                  "ok error APIKEY ERRCODE COUNT NAME"
 *   clear APIKEY   drop the errors still pending for APIKEY
 *   quit           stop (answers "ok quit" first)
 *
 * ID is a broker id 1..N, or -1 for every broker. A bad command is answered
 * with "error <reason>" and changes nothing. EOF on stdin, SIGTERM or SIGINT
 * stop the cluster and exit 0; bad options exit 2, a failure to start 1.
 *
 * Design: the main thread owns everything. SIGTERM/SIGINT are blocked before
 * librdkafka starts its threads (they inherit the mask), and are unblocked
 * only inside ppoll() on stdin, where the handler merely sets a flag; so a
 * signal always ends the wait and never lands in a librdkafka thread. stdin
 * is read with read(2) into a fixed line buffer (no stdio buffering under
 * poll); a line longer than the buffer is answered with an error and
 * skipped. The cluster's own threads belong to librdkafka; the mock
 * functions used here are synchronous requests to them.
 */
#include "common/util.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
    KMOCK_MAX_BROKERS = 64,
    KMOCK_MAX_PARTITIONS = 10000,
    KMOCK_MAX_RTT_MS = 600000,
    KMOCK_TOPIC_MAX = 249, /* Kafka's limit on a topic name */
    KMOCK_LINE_MAX = 1024,
    KMOCK_MAX_API_KEY = 999,     /* Kafka's keys are below 100 today */
    KMOCK_MAX_ERRORS = 10000,    /* per error command */
    KMOCK_MAX_ERROR_CODE = 1000, /* Kafka's codes are below 200 today */
};

static volatile sig_atomic_t kmock_stop;

static void kmock_on_signal(int sig)
{
    (void)sig;
    kmock_stop = 1;
}

/* Parse a whole decimal integer within [lo, hi]; 0 on success, -1 otherwise. */
static int kmock_parse_int(const char *text, long lo, long hi, long *out)
{
    char *end;
    if (!text || !*text)
        return -1;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Kafka topic names: 1..249 of [A-Za-z0-9._-], not "." or "..". */
static int kmock_valid_topic(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > KMOCK_TOPIC_MAX || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return 0;
    for (const char *p = name; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

typedef struct {
    rd_kafka_mock_cluster_t *mc;
    int brokers;
} kmock_cluster;

static int kmock_replication(const kmock_cluster *c)
{
    return c->brokers < 3 ? c->brokers : 3;
}

/* Create a topic; 0, or -1 with err filled. */
static int kmock_topic_create(kmock_cluster *c, const char *name, const char *parts_text, char *err,
                              size_t errlen)
{
    long parts;
    if (!kmock_valid_topic(name)) {
        snprintf(err, errlen, "invalid topic name '%.64s'", name);
        return -1;
    }
    if (kmock_parse_int(parts_text, 1, KMOCK_MAX_PARTITIONS, &parts) != 0) {
        snprintf(err, errlen, "invalid partition count '%.32s' (1..%d)", parts_text,
                 KMOCK_MAX_PARTITIONS);
        return -1;
    }
    rd_kafka_resp_err_t e =
        rd_kafka_mock_topic_create(c->mc, name, (int)parts, kmock_replication(c));
    if (e) {
        snprintf(err, errlen, "cannot create topic '%s': %s", name, rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

/* Broker id argument: 1..N, or -1 meaning every broker. */
static int kmock_broker_id(const kmock_cluster *c, const char *text, int32_t *out, char *err,
                           size_t errlen)
{
    long id;
    if (kmock_parse_int(text, -1, c->brokers, &id) != 0 || id == 0) {
        snprintf(err, errlen, "invalid broker id '%.32s' (1..%d or -1 for all)", text ? text : "",
                 c->brokers);
        return -1;
    }
    *out = (int32_t)id;
    return 0;
}

/* Run one command line; writes the answer (without newline) into ans.
 * Returns 1 when the command was "quit", else 0. */
static int kmock_command(kmock_cluster *c, char *line, char *ans, size_t anslen)
{
    char *save = NULL;
    char *argv[4];
    int argc = 0;
    for (char *tok = strtok_r(line, " \t\r", &save); tok; tok = strtok_r(NULL, " \t\r", &save)) {
        if (argc == 4) {
            snprintf(ans, anslen, "error too many arguments");
            return 0;
        }
        argv[argc++] = tok;
    }
    if (argc == 0) {
        snprintf(ans, anslen, "error empty command");
        return 0;
    }
    const char *cmd = argv[0];
    char err[512];
    int32_t id;
    rd_kafka_resp_err_t e;
    if (strcmp(cmd, "quit") == 0 && argc == 1) {
        snprintf(ans, anslen, "ok quit");
        return 1;
    }
    if ((strcmp(cmd, "down") == 0 || strcmp(cmd, "up") == 0) && argc == 2) {
        if (kmock_broker_id(c, argv[1], &id, err, sizeof(err)) != 0)
            goto fail;
        e = cmd[0] == 'd' ? rd_kafka_mock_broker_set_down(c->mc, id)
                          : rd_kafka_mock_broker_set_up(c->mc, id);
        if (e) {
            snprintf(err, sizeof(err), "cannot set broker %d %s: %s", (int)id, cmd,
                     rd_kafka_err2str(e));
            goto fail;
        }
        snprintf(ans, anslen, "ok %s %d", cmd, (int)id);
        return 0;
    }
    if (strcmp(cmd, "rtt") == 0 && argc == 3) {
        long ms;
        if (kmock_broker_id(c, argv[1], &id, err, sizeof(err)) != 0)
            goto fail;
        if (kmock_parse_int(argv[2], 0, KMOCK_MAX_RTT_MS, &ms) != 0) {
            snprintf(err, sizeof(err), "invalid rtt '%.32s' (0..%d ms)", argv[2], KMOCK_MAX_RTT_MS);
            goto fail;
        }
        e = rd_kafka_mock_broker_set_rtt(c->mc, id, (int)ms);
        if (e) {
            snprintf(err, sizeof(err), "cannot set rtt of broker %d: %s", (int)id,
                     rd_kafka_err2str(e));
            goto fail;
        }
        snprintf(ans, anslen, "ok rtt %d %ld", (int)id, ms);
        return 0;
    }
    if (strcmp(cmd, "topic") == 0 && argc == 3) {
        if (kmock_topic_create(c, argv[1], argv[2], err, sizeof(err)) != 0)
            goto fail;
        snprintf(ans, anslen, "ok topic %s %s", argv[1], argv[2]);
        return 0;
    }
    if (strcmp(cmd, "error") == 0 && (argc == 3 || argc == 4)) {
        long key, code, count = 1;
        if (kmock_parse_int(argv[1], 0, KMOCK_MAX_API_KEY, &key) != 0) {
            snprintf(err, sizeof(err), "invalid API key '%.32s' (0..%d)", argv[1],
                     KMOCK_MAX_API_KEY);
            goto fail;
        }
        /* librdkafka's own codes lie between __BEGIN (-200) and -1 */
        if (kmock_parse_int(argv[2], RD_KAFKA_RESP_ERR__BEGIN + 1, KMOCK_MAX_ERROR_CODE, &code) !=
                0 ||
            code == 0) {
            snprintf(err, sizeof(err), "invalid error code '%.32s' (%d..%d, not 0)", argv[2],
                     RD_KAFKA_RESP_ERR__BEGIN + 1, KMOCK_MAX_ERROR_CODE);
            goto fail;
        }
        if (argc == 4 && kmock_parse_int(argv[3], 1, KMOCK_MAX_ERRORS, &count) != 0) {
            snprintf(err, sizeof(err), "invalid count '%.32s' (1..%d)", argv[3], KMOCK_MAX_ERRORS);
            goto fail;
        }
        rd_kafka_resp_err_t *codes = xcalloc((size_t)count, sizeof(*codes));
        for (long i = 0; i < count; i++)
            codes[i] = (rd_kafka_resp_err_t)code;
        rd_kafka_mock_push_request_errors_array(c->mc, (int16_t)key, (size_t)count, codes);
        free(codes);
        snprintf(ans, anslen, "ok error %ld %ld %ld %s", key, code, count,
                 rd_kafka_err2name((rd_kafka_resp_err_t)code));
        return 0;
    }
    if (strcmp(cmd, "clear") == 0 && argc == 2) {
        long key;
        if (kmock_parse_int(argv[1], 0, KMOCK_MAX_API_KEY, &key) != 0) {
            snprintf(err, sizeof(err), "invalid API key '%.32s' (0..%d)", argv[1],
                     KMOCK_MAX_API_KEY);
            goto fail;
        }
        rd_kafka_mock_clear_request_errors(c->mc, (int16_t)key);
        snprintf(ans, anslen, "ok clear %ld", key);
        return 0;
    }
    if (strcmp(cmd, "quit") == 0 || strcmp(cmd, "down") == 0 || strcmp(cmd, "up") == 0 ||
        strcmp(cmd, "rtt") == 0 || strcmp(cmd, "topic") == 0 || strcmp(cmd, "error") == 0 ||
        strcmp(cmd, "clear") == 0)
        snprintf(err, sizeof(err), "wrong number of arguments for '%s'", cmd);
    else
        snprintf(err, sizeof(err), "unknown command '%.64s'", cmd);
fail:
    snprintf(ans, anslen, "error %s", err);
    return 0;
}

static int kmock_answer(const char *ans)
{
    if (printf("%s\n", ans) < 0 || fflush(stdout) != 0)
        return -1;
    return 0;
}

/* Read and run commands until quit, EOF, a signal or a broken stdout. */
static void kmock_serve(kmock_cluster *c, const sigset_t *waitmask)
{
    char buf[KMOCK_LINE_MAX + 1];
    size_t used = 0;
    int skipping = 0; /* inside an over-long line: drop bytes up to '\n' */
    char ans[1024];
    while (!kmock_stop) {
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int n = ppoll(&pfd, 1, NULL, waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "kafka_mock: poll on stdin: %s\n", strerror(errno));
            return;
        }
        ssize_t got = read(STDIN_FILENO, buf + used, KMOCK_LINE_MAX - used);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fprintf(stderr, "kafka_mock: read stdin: %s\n", strerror(errno));
            return;
        }
        if (got == 0)
            return; /* EOF; an unterminated last line is ignored */
        used += (size_t)got;
        size_t start = 0;
        for (size_t i = 0; i < used; i++) {
            if (buf[i] != '\n')
                continue;
            buf[i] = '\0';
            int quit = 0;
            if (skipping) {
                skipping = 0;
            } else {
                quit = kmock_command(c, buf + start, ans, sizeof(ans));
                if (kmock_answer(ans) != 0)
                    return;
            }
            start = i + 1;
            if (quit)
                return;
        }
        memmove(buf, buf + start, used - start);
        used -= start;
        if (used == KMOCK_LINE_MAX) {
            if (!skipping && kmock_answer("error line too long") != 0)
                return;
            skipping = 1;
            used = 0;
        }
    }
}

static void kmock_usage(void)
{
    fprintf(stderr, "usage: kafka_mock [--brokers N] [--topic NAME:PARTITIONS]...\n");
}

int main(int argc, char **argv)
{
    long brokers = 3;
    char **specs = xcalloc((size_t)argc, sizeof(*specs)); /* --topic values */
    int nspecs = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc) {
            if (kmock_parse_int(argv[++i], 1, KMOCK_MAX_BROKERS, &brokers) != 0) {
                fprintf(stderr, "kafka_mock: invalid broker count '%s' (1..%d)\n", argv[i],
                        KMOCK_MAX_BROKERS);
                free(specs);
                return 2;
            }
        } else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc) {
            specs[nspecs++] = argv[++i]; /* created once the cluster exists */
            if (!strrchr(argv[i], ':')) {
                fprintf(stderr, "kafka_mock: --topic wants NAME:PARTITIONS, got '%s'\n", argv[i]);
                free(specs);
                return 2;
            }
        } else {
            kmock_usage();
            free(specs);
            return 2;
        }
    }

    /* Block the stop signals before librdkafka starts threads; ppoll()
     * below is the only place where they are delivered. */
    sigset_t stopsigs, waitmask;
    sigemptyset(&stopsigs);
    sigaddset(&stopsigs, SIGTERM);
    sigaddset(&stopsigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stopsigs, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kmock_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* log_level 4: keep warnings, drop the notice that this handle has no
     * bootstrap.servers (it needs none). The mock's broker sockets take their
     * options from this handle: without TCP_NODELAY a response to a pipelined
     * request waits for the client's delayed ACK (40 ms on Linux). */
    if (rd_kafka_conf_set(conf, "client.id", "kafka_mock", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "socket.nagle.disable", "true", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kafka_mock: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        free(specs);
        return 1;
    }
    /* The handle only carries the cluster; it never connects anywhere. */
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "kafka_mock: cannot create librdkafka handle: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        free(specs);
        return 1;
    }
    int rc = 1;
    kmock_cluster c = {.mc = rd_kafka_mock_cluster_new(rk, (int)brokers), .brokers = (int)brokers};
    if (!c.mc) {
        fprintf(stderr, "kafka_mock: cannot create mock cluster of %ld brokers\n", brokers);
        goto out;
    }
    for (int i = 0; i < nspecs; i++) {
        char *spec = specs[i];
        char *colon = strrchr(spec, ':');
        *colon = '\0';
        char err[512];
        if (kmock_topic_create(&c, spec, colon + 1, err, sizeof(err)) != 0) {
            fprintf(stderr, "kafka_mock: --topic: %s\n", err);
            rc = 2;
            goto out;
        }
    }
    if (printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(c.mc)) < 0 ||
        fflush(stdout) != 0) {
        fprintf(stderr, "kafka_mock: cannot write to stdout\n");
        goto out;
    }
    kmock_serve(&c, &waitmask);
    rc = 0;
out:
    if (c.mc)
        rd_kafka_mock_cluster_destroy(c.mc);
    rd_kafka_destroy(rk);
    free(specs);
    return rc;
}
