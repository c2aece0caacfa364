/*
 * test_kafka_topics.c - the pure parts of Kafka topic creation and of the
 * per-client property split:
 *  - the settings HERALD_TOPIC_PARTITIONS / --topic-partitions,
 *    HERALD_TOPIC_REPLICATION / --topic-replication and HERALD_TOPIC_CREATE
 *    / --no-create-topics: defaults, environment, flags, bad values, and
 *    how config_bus() hands them to the bus;
 *  - bus_kafka_property_scope() from librdkafka's own property table;
 *  - opening a producer or a consumer with a property of the other kind
 *    works (it is checked, not set), a bad value of it or an unknown name
 *    fails (librdkafka makes no connection before the first request).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus/bus.h"
#include "bus/kafka.h"
#include "cli/config.h"
#include "common/log.h"

#include <stdlib.h>
#include <string.h>

static void clear_env(void)
{
    unsetenv("HERALD_TOPIC_PARTITIONS");
    unsetenv("HERALD_TOPIC_REPLICATION");
    unsetenv("HERALD_TOPIC_CREATE");
}

static void test_topic_defaults(void **state)
{
    (void)state;
    clear_env();
    herald_config cfg = HERALD_CONFIG_INIT;
    char err[256];
    assert_int_equal(config_load(&cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg.topic_partitions, 3);
    assert_int_equal(cfg.topic_replication, 0); /* auto */
    assert_int_equal(cfg.topic_create, 1);
    bus_config bus;
    assert_int_equal(config_bus(&cfg, "test", &bus, err, sizeof(err)), 0);
    assert_int_equal(bus.topic_partitions, 3);
    assert_int_equal(bus.topic_replication, 0);
    assert_int_equal(bus.no_topic_create, 0);
    config_release(&cfg);
    /* a zeroed or initialised bus_config means the same defaults */
    bus_config init = BUS_CONFIG_INIT;
    assert_int_equal(init.topic_partitions, BUS_DEFAULT_TOPIC_PARTITIONS);
    assert_int_equal(init.topic_replication, 0);
    assert_int_equal(init.no_topic_create, 0);
}

static void test_topic_environment_then_flags(void **state)
{
    (void)state;
    clear_env();
    setenv("HERALD_TOPIC_PARTITIONS", "12", 1);
    setenv("HERALD_TOPIC_REPLICATION", "2", 1);
    setenv("HERALD_TOPIC_CREATE", "0", 1);
    herald_config cfg = HERALD_CONFIG_INIT;
    char err[256];
    assert_int_equal(config_load(&cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg.topic_partitions, 12);
    assert_int_equal(cfg.topic_replication, 2);
    assert_int_equal(cfg.topic_create, 0);
    bus_config bus;
    assert_int_equal(config_bus(&cfg, "test", &bus, err, sizeof(err)), 0);
    assert_int_equal(bus.topic_partitions, 12);
    assert_int_equal(bus.topic_replication, 2);
    assert_int_equal(bus.no_topic_create, 1);
    /* flags win */
    assert_int_equal(config_set(&cfg, "topic-partitions", "10000", err, sizeof(err)), 0);
    assert_int_equal(cfg.topic_partitions, 10000);
    assert_int_equal(config_set(&cfg, "topic-partitions", "1", err, sizeof(err)), 0);
    assert_int_equal(cfg.topic_partitions, 1);
    assert_int_equal(config_set(&cfg, "topic-replication", "auto", err, sizeof(err)), 0);
    assert_int_equal(cfg.topic_replication, 0);
    assert_int_equal(config_set(&cfg, "topic-replication", "32767", err, sizeof(err)), 0);
    assert_int_equal(cfg.topic_replication, 32767);
    config_release(&cfg);
    /* the switch: no value, sets creation off */
    clear_env();
    assert_int_equal(config_load(&cfg, err, sizeof(err)), 0);
    assert_int_equal(config_flag_takes_value("no-create-topics"), 0);
    assert_int_equal(config_flag_takes_value("topic-partitions"), 1);
    assert_int_equal(config_flag_takes_value("bus"), 1);
    assert_int_equal(config_set(&cfg, "no-create-topics", NULL, err, sizeof(err)), 0);
    assert_int_equal(cfg.topic_create, 0);
    /* a value setting without a value is an error, not a crash */
    assert_int_equal(config_set(&cfg, "topic-partitions", NULL, err, sizeof(err)), -1);
    config_release(&cfg);
    clear_env();
}

static void test_topic_bad_values(void **state)
{
    (void)state;
    static const struct {
        const char *flag, *env, *value;
    } bad[] = {
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "0"},
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "-3"},
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "abc"},
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "100000"},
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "10001"},
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", ""},
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "3x"},
        {"topic-partitions", "HERALD_TOPIC_PARTITIONS", "99999999999999999999"},
        {"topic-replication", "HERALD_TOPIC_REPLICATION", "0"},
        {"topic-replication", "HERALD_TOPIC_REPLICATION", "-3"},
        {"topic-replication", "HERALD_TOPIC_REPLICATION", "abc"},
        {"topic-replication", "HERALD_TOPIC_REPLICATION", "100000"},
        {"topic-replication", "HERALD_TOPIC_REPLICATION", "32768"},
        {"topic-replication", "HERALD_TOPIC_REPLICATION", "AUTO"},
        {NULL, "HERALD_TOPIC_CREATE", "2"},
        {NULL, "HERALD_TOPIC_CREATE", "no"},
        {NULL, "HERALD_TOPIC_CREATE", ""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        clear_env();
        herald_config cfg = HERALD_CONFIG_INIT;
        setenv(bad[i].env, bad[i].value, 1);
        if (config_load(&cfg, err, sizeof(err)) != -1)
            fail_msg("%s=%s accepted", bad[i].env, bad[i].value);
        if (!strstr(err, bad[i].env))
            fail_msg("%s=%s: error '%s' does not name the variable", bad[i].env, bad[i].value, err);
        config_release(&cfg);
        clear_env();
        if (!bad[i].flag)
            continue;
        assert_int_equal(config_load(&cfg, err, sizeof(err)), 0);
        if (config_set(&cfg, bad[i].flag, bad[i].value, err, sizeof(err)) != -1)
            fail_msg("--%s %s accepted", bad[i].flag, bad[i].value);
        if (!strstr(err, bad[i].flag) || !strstr(err, bad[i].value))
            fail_msg("--%s %s: error '%s' names neither", bad[i].flag, bad[i].value, err);
        assert_int_equal(cfg.topic_partitions, 3); /* unchanged */
        assert_int_equal(cfg.topic_replication, 0);
        config_release(&cfg);
    }
}

static void test_property_scope(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        enum bus_kafka_scope scope;
    } cases[] = {
        {"fetch.wait.max.ms", BUS_KAFKA_SCOPE_CONSUMER},
        {"session.timeout.ms", BUS_KAFKA_SCOPE_CONSUMER},
        {"group.id", BUS_KAFKA_SCOPE_CONSUMER},
        {"enable.auto.commit", BUS_KAFKA_SCOPE_CONSUMER},
        {"auto.offset.reset", BUS_KAFKA_SCOPE_CONSUMER}, /* a topic-level property */
        {"linger.ms", BUS_KAFKA_SCOPE_PRODUCER},
        {"acks", BUS_KAFKA_SCOPE_PRODUCER}, /* topic-level */
        {"enable.idempotence", BUS_KAFKA_SCOPE_PRODUCER},
        {"message.timeout.ms", BUS_KAFKA_SCOPE_PRODUCER},
        {"client.id", BUS_KAFKA_SCOPE_BOTH},
        {"bootstrap.servers", BUS_KAFKA_SCOPE_BOTH},
        {"security.protocol", BUS_KAFKA_SCOPE_BOTH},
        {"allow.auto.create.topics", BUS_KAFKA_SCOPE_BOTH},
        {"no.such.property", BUS_KAFKA_SCOPE_UNKNOWN},
        {"fetch", BUS_KAFKA_SCOPE_UNKNOWN},               /* a prefix of a name */
        {"fetch.wait.max.ms.x", BUS_KAFKA_SCOPE_UNKNOWN}, /* longer than a name */
        {"Property", BUS_KAFKA_SCOPE_UNKNOWN},            /* the table's header */
        {"", BUS_KAFKA_SCOPE_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (bus_kafka_property_scope(cases[i].name) != cases[i].scope)
            fail_msg("%s: scope %d, expected %d", cases[i].name,
                     (int)bus_kafka_property_scope(cases[i].name), (int)cases[i].scope);
}

static void test_open_with_properties_of_the_other_kind(void **state)
{
    (void)state;
    log_set_level_name("off"); /* config_load() applied the default level */
    char err[512] = "";
    bus_config cfg = BUS_CONFIG_INIT;
    assert_int_equal(bus_config_set_url(&cfg, "kafka:127.0.0.1:9", err, sizeof(err)), 0);
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = "g";
    sub.pattern = "^.*-events$"; /* a pattern: nothing to create, no broker needed */

    /* both kinds of property: each client takes its own */
    static const char *const mixed[] = {"fetch.wait.max.ms=5", "session.timeout.ms=6000",
                                        "linger.ms=2", "client.id=t", NULL};
    cfg.kafka_props = mixed;
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    assert_non_null(p);
    bus_producer_close(p);
    bus_consumer *c = bus_consumer_open(&cfg, &sub, err, sizeof(err));
    assert_non_null(c);
    bus_consumer_close(c);

    /* a bad value of a consumer property fails the producer too */
    static const char *const bad_consumer[] = {"fetch.wait.max.ms=soon", NULL};
    cfg.kafka_props = bad_consumer;
    assert_null(bus_producer_open(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "fetch.wait.max.ms"));
    assert_null(bus_consumer_open(&cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "fetch.wait.max.ms"));

    /* and of a producer property the consumer */
    static const char *const bad_producer[] = {"linger.ms=-5", NULL};
    cfg.kafka_props = bad_producer;
    assert_null(bus_consumer_open(&cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "linger.ms"));

    /* a property of neither fails both */
    static const char *const unknown[] = {"no.such.property=1", NULL};
    cfg.kafka_props = unknown;
    assert_null(bus_producer_open(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "no.such.property"));
    assert_null(bus_consumer_open(&cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "no.such.property"));
}

int main(void)
{
    log_set_level_name("off");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_defaults),
        cmocka_unit_test(test_topic_environment_then_flags),
        cmocka_unit_test(test_topic_bad_values),
        cmocka_unit_test(test_property_scope),
        cmocka_unit_test(test_open_with_properties_of_the_other_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
