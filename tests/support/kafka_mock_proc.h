/*
 * kafka_mock_proc.h - run tests/tools/kafka_mock (librdkafka's mock
 * cluster, the real Kafka protocol over loopback) as a child process from
 * C: for the unit tests and the benchmarks that drive Kafka clients
 * directly. (The e2e tests have the same in Python: kafka_helpers.py.)
 *
 *     kafka_mock_proc m;
 *     if (kafka_mock_proc_start(&m, path, 1, topics, 1, err, sizeof(err)) != 0) ...
 *     ... m.bootstrap ...
 *     kafka_mock_proc_command(&m, "down -1", answer, sizeof(answer), err, sizeof(err));
 *     kafka_mock_proc_stop(&m);
 */
#ifndef HERALD_TESTS_KAFKA_MOCK_PROC_H
#define HERALD_TESTS_KAFKA_MOCK_PROC_H

#include <stddef.h>
#include <sys/types.h>

typedef struct kafka_mock_proc {
    pid_t pid;
    int in_fd, out_fd;    /* its stdin (commands), its stdout (answers) */
    char bootstrap[1024]; /* "host:port,..." */
    char pending[1100];   /* read from its stdout past the last line */
    size_t pending_len;
} kafka_mock_proc;

/* Start the tool at path with `brokers` brokers and the topics
 * ("NAME:PARTITIONS") and read its bootstrap line (10 s at most). 0, or -1
 * with err filled (nothing left running). */
int kafka_mock_proc_start(kafka_mock_proc *m, const char *path, int brokers,
                          const char *const *topics, int ntopics, char *err, size_t errlen);

/* Send one control command (tests/tools/kafka_mock.c lists them) and read
 * its one-line answer ("ok ..." or "error ...", without the newline) into
 * answer (10 s at most). 0, or -1 with err filled. */
int kafka_mock_proc_command(kafka_mock_proc *m, const char *command, char *answer,
                            size_t answer_len, char *err, size_t errlen);

/* Stop it: "quit" and EOF on stdin, then SIGTERM, then SIGKILL to its PID,
 * and reap it. Returns its exit status (0 after a clean quit), or -1 if it
 * had to be killed. */
int kafka_mock_proc_stop(kafka_mock_proc *m);

#endif
