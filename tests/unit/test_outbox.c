/*
 * test_outbox.c - the transactional outbox and its relay (outbox.h), with
 * real embedded logs on both sides: the relay publishes from the outbox of
 * one data directory to the event log of another through bus.h, exactly as
 * it publishes to Kafka.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus/bus.h"
#include "bus/outbox.h"
#include "bus/sqlite_log.h"
#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fixture {
    char local_dir[256], remote_dir[300];
    bus_config local, remote;
    bus_log *log;
} fixture;

static int setup(void **state)
{
    fixture *f = xcalloc(1, sizeof(*f));
    snprintf(f->local_dir, sizeof(f->local_dir), "/tmp/herald-test-outbox-XXXXXX");
    assert_non_null(mkdtemp(f->local_dir));
    snprintf(f->remote_dir, sizeof(f->remote_dir), "%s/remote", f->local_dir);
    bus_config c = BUS_CONFIG_INIT;
    c.data_dir = f->local_dir;
    c.retention_ms = 0;
    c.synchronous_full = 0;
    f->local = c;
    c.data_dir = f->remote_dir;
    f->remote = c;
    char err[256];
    f->log = bus_log_open(&f->local, err, sizeof(err));
    assert_non_null(f->log);
    assert_int_equal(bus_outbox_ensure(f->log, err, sizeof(err)), 0);
    log_threshold = LOG_LEVEL_OFF;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    bus_log_close(f->log);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->local_dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Queue n records "v<first+i>" with key "k<i%3>" and a header, in one
 * transaction; rollback instead of commit if asked. */
static void queue(fixture *f, int first, int n, int rollback)
{
    char err[256];
    assert_int_equal(bus_log_begin(f->log, err, sizeof(err)), 0);
    for (int i = 0; i < n; i++) {
        char value[32], key[8], hv[16];
        snprintf(value, sizeof(value), "v%d", first + i);
        snprintf(key, sizeof(key), "k%d", i % 3);
        snprintf(hv, sizeof(hv), "h%d", first + i);
        bus_header h = {"ce_id", hv, strlen(hv)};
        bus_record r = BUS_RECORD_INIT;
        r.topic = "task-events";
        r.key = key;
        r.key_len = strlen(key);
        r.value = value;
        r.value_len = strlen(value);
        r.headers = &h;
        r.header_count = 1;
        assert_int_equal(bus_outbox_append(f->log, &r, 1, err, sizeof(err)), 0);
    }
    if (rollback)
        bus_log_rollback(f->log);
    else
        assert_int_equal(bus_log_commit(f->log, err, sizeof(err)), 0);
}

/* Read the remote log's task-events until count records arrived (or 30 s);
 * checks they are v<0..count-1> in order with their header. */
static void expect_remote(fixture *f, int count)
{
    const char *topic = "task-events";
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.topics = &topic;
    sub.topic_count = 1;
    char err[256];
    bus_consumer *c = bus_consumer_open(&f->remote, &sub, err, sizeof(err));
    assert_non_null(c);
    int seen = 0;
    int64_t deadline = util_monotonic_ns() + 30LL * 1000000000;
    while (seen < count && util_monotonic_ns() < deadline) {
        const bus_message *m;
        size_t n;
        assert_int_equal(bus_consumer_poll(c, 200, &m, &n, err, sizeof(err)), 0);
        for (size_t i = 0; i < n; i++, seen++) {
            char value[32], hv[16];
            snprintf(value, sizeof(value), "v%d", seen);
            snprintf(hv, sizeof(hv), "h%d", seen);
            assert_string_equal(m[i].value, value);
            const char *v;
            size_t len;
            assert_int_equal(bus_message_header(&m[i], "ce_id", &v, &len), 1);
            assert_int_equal(len, strlen(hv));
            assert_memory_equal(v, hv, len);
        }
    }
    const bus_message *m;
    size_t n;
    assert_int_equal(bus_consumer_poll(c, 100, &m, &n, err, sizeof(err)), 0);
    assert_int_equal(seen + (int)n, count); /* nothing more, nothing twice */
    bus_consumer_close(c);
}

static void test_relay_publishes_in_order_and_empties_the_outbox(void **state)
{
    fixture *f = *state;
    char err[256];
    queue(f, 0, 3, 0);
    bus_relay *r = bus_relay_start(&f->local, &f->remote, 2, err, sizeof(err));
    assert_non_null(r);
    expect_remote(f, 3);
    /* records queued while it runs are picked up at once (woken by the commit) */
    queue(f, 3, 5, 0);
    expect_remote(f, 8);
    assert_int_equal(bus_relay_published(r), 8);
    assert_int_equal(bus_relay_stop(r, 1000), 0);
    assert_int_equal(bus_outbox_depth(f->log), 0);
}

static void test_rolled_back_records_are_never_published(void **state)
{
    fixture *f = *state;
    char err[256];
    queue(f, 0, 2, 0);
    queue(f, 100, 4, 1); /* rolled back */
    assert_int_equal(bus_outbox_depth(f->log), 2);
    bus_relay *r = bus_relay_start(&f->local, &f->remote, 0, err, sizeof(err));
    assert_non_null(r);
    expect_remote(f, 2);
    assert_int_equal(bus_relay_stop(r, 1000), 0);
}

static void test_stop_flushes_what_is_queued(void **state)
{
    fixture *f = *state;
    char err[256];
    queue(f, 0, 3000, 0);
    bus_relay *r = bus_relay_start(&f->local, &f->remote, 500, err, sizeof(err));
    assert_non_null(r);
    assert_int_equal(bus_relay_stop(r, 30000), 0);
    expect_remote(f, 3000);
}

static void test_a_later_relay_publishes_what_an_earlier_left(void **state)
{
    fixture *f = *state;
    char err[256];
    queue(f, 0, 1000, 0);
    bus_relay *r = bus_relay_start(&f->local, &f->remote, 10, err, sizeof(err));
    assert_non_null(r);
    int64_t left = bus_relay_stop(r, 0); /* no time to flush */
    assert_true(left >= 0 && left <= 1000);
    r = bus_relay_start(&f->local, &f->remote, 500, err, sizeof(err));
    assert_non_null(r);
    expect_remote(f, 1000);
    assert_int_equal(bus_relay_stop(r, 1000), 0);
}

static void test_bad_topic_and_unusable_bus_are_refused(void **state)
{
    fixture *f = *state;
    char err[256];
    assert_int_equal(bus_log_begin(f->log, err, sizeof(err)), 0);
    bus_record r = BUS_RECORD_INIT;
    r.topic = "bad topic";
    r.value = "x";
    r.value_len = 1;
    assert_int_equal(bus_outbox_append(f->log, &r, 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "bad topic"));
    bus_log_rollback(f->log);
    bus_config bad = f->remote;
    bad.data_dir = "/proc/herald-cannot-be-here";
    assert_null(bus_relay_start(&f->local, &bad, 0, err, sizeof(err)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_relay_publishes_in_order_and_empties_the_outbox, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_rolled_back_records_are_never_published, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stop_flushes_what_is_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_later_relay_publishes_what_an_earlier_left, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bad_topic_and_unusable_bus_are_refused, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
