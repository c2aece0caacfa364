/*
 * test_kafka_fatal.c - bus_kafka_produce() returns promptly when librdkafka
 * raises a fatal error while the records are being handed over.
 *
 * librdkafka purges its queues on a fatal error, but asynchronously (an op
 * to its main thread, then to the broker threads): a record handed over
 * while the error is being raised can miss that purge and sit, never sent,
 * until message.timeout.ms. bus_kafka_produce() waits for every record's
 * report, so without a purge of its own the outbox relay (and with it
 * `herald api`) hung for minutes before stopping on the fatal error.
 *
 * The test runs the mock cluster (build/tools/kafka_mock, its own process,
 * the real Kafka protocol on loopback) with every InitProducerId answered
 * COORDINATOR_NOT_AVAILABLE, a retriable error: the idempotent producer
 * never gets a producer id, so every record stays queued. A second thread
 * waits until a random number of records is queued and raises the fatal
 * error (rd_kafka_test_fatal_error(), librdkafka's own test hook) while the
 * first thread is still handing records over. Each round must end with the
 * fatal error, well before message.timeout.ms (20 s here). Without the
 * purge, one round in 7 to 40 waited for the full timeout.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus/bus.h"
#include "bus/kafka.h"
#include "common/log.h"
#include "common/util.h"
#include "support/kafka_mock_proc.h"

#include <librdkafka/rdkafka.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TOPIC "fatal-race"
#define RECORDS 2000
#define ROUNDS 200        /* the race hit one round in 7 to 40 here */
#define ROUNDS_SECONDS 30 /* but stop starting rounds after this (valgrind) */
#define MESSAGE_TIMEOUT_MS "20000"
#define ROUND_LIMIT_MS 10000 /* a round that takes longer waited for the timeout */

static kafka_mock_proc mock;

/* build/tools/kafka_mock: $HERALD_TOOLS, or next to this test's directory */
static void kafka_mock_path(char *path, size_t len)
{
    const char *tools = getenv("HERALD_TOOLS");
    if (tools && *tools) {
        snprintf(path, len, "%s/kafka_mock", tools);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    snprintf(path, len, "%s/../tools/kafka_mock", dirname(exe));
}

static void mock_command(const char *command, const char *expect_prefix)
{
    char answer[512], err[256];
    if (kafka_mock_proc_command(&mock, command, answer, sizeof(answer), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    if (strncmp(answer, expect_prefix, strlen(expect_prefix)) != 0)
        fail_msg("kafka_mock answered '%s' to '%s'", answer, command);
}

static int start_mock(void **state)
{
    (void)state;
    char path[PATH_MAX + 32], err[512];
    kafka_mock_path(path, sizeof(path));
    static const char *const topics[] = {TOPIC ":1"};
    if (kafka_mock_proc_start(&mock, path, 1, topics, 1, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s (make build/tools/kafka_mock)\n", err);
        return -1;
    }
    return 0;
}

static int stop_mock(void **state)
{
    (void)state;
    return kafka_mock_proc_stop(&mock) == 0 ? 0 : -1;
}

/* The second thread: raise the fatal error once `threshold` records are
 * queued (or after 10 s, so that a round never waits forever). */
typedef struct raiser {
    rd_kafka_t *rk;
    int threshold;
} raiser;

static void *raise_fatal(void *arg)
{
    raiser *r = arg;
    int64_t give_up = util_now_ms() + 10000;
    while (rd_kafka_outq_len(r->rk) < r->threshold && util_now_ms() < give_up)
        sched_yield();
    rd_kafka_test_fatal_error(r->rk, RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED,
                              "raised by test_kafka_fatal");
    return NULL;
}

static void test_fatal_error_while_handing_records_over_ends_the_produce(void **state)
{
    (void)state;
    /* no producer id, ever: every record stays queued until purged */
    mock_command("error 22 15 10000", "ok error 22 15 10000");
    static const char *props[] = {"message.timeout.ms=" MESSAGE_TIMEOUT_MS, NULL};
    bus_record *records = calloc(RECORDS, sizeof(*records));
    assert_non_null(records);
    for (size_t i = 0; i < RECORDS; i++) {
        records[i].topic = TOPIC;
        records[i].key = "k";
        records[i].key_len = 1;
        records[i].value = "{}";
        records[i].value_len = 2;
    }
    srand((unsigned)time(NULL));
    /* librdkafka logs every round's fatal error; the assertions below say
     * what went wrong */
    assert_int_equal(log_set_level_name("off"), 0);
    int64_t stop_starting = util_now_ms() + ROUNDS_SECONDS * 1000;
    int round = 0;
    for (; round < ROUNDS && util_now_ms() < stop_starting; round++) {
        bus_config cfg = BUS_CONFIG_INIT;
        cfg.kind = BUS_KAFKA;
        cfg.bootstrap = mock.bootstrap;
        cfg.client_id = "test-kafka-fatal";
        cfg.kafka_props = props;
        char err[512];
        bus_kafka_producer *p = bus_kafka_producer_open(&cfg, err, sizeof(err));
        assert_non_null(p);
        raiser r = {bus_kafka_producer_handle(p), 1 + rand() % (RECORDS - 1)};
        pthread_t thread;
        assert_int_equal(pthread_create(&thread, NULL, raise_fatal, &r), 0);
        int64_t started = util_now_ms();
        int rc = bus_kafka_produce(p, records, RECORDS, NULL, err, sizeof(err));
        int64_t took = util_now_ms() - started;
        pthread_join(thread, NULL);
        assert_int_equal(rc, -1);
        if (!strstr(err, "CLUSTER_AUTHORIZATION_FAILED"))
            fail_msg("round %d: the error does not name the fatal one: %s", round, err);
        if (took > ROUND_LIMIT_MS)
            fail_msg("round %d (fatal error at %d queued records): bus_kafka_produce took %lld "
                     "ms, waiting for records that can never be sent",
                     round, r.threshold, (long long)took);
        assert_true(bus_kafka_producer_fatal(p, NULL, 0));
        int64_t closing = util_now_ms();
        bus_kafka_producer_close(p);
        if (util_now_ms() - closing > ROUND_LIMIT_MS)
            fail_msg("round %d: closing the failed producer took %lld ms", round,
                     (long long)(util_now_ms() - closing));
    }
    free(records);
    log_set_level_name("info");
    fprintf(stderr, "%d rounds, each ended by its fatal error\n", round);
    mock_command("clear 22", "ok");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fatal_error_while_handing_records_over_ends_the_produce),
    };
    return cmocka_run_group_tests(tests, start_mock, stop_mock);
}
