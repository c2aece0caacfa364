/*
 * test_bus_kafka_url.c - bus_config_set_url(): "sqlite", and
 * "kafka:HOST:PORT[,HOST:PORT...]" with each broker validated; bad values
 * are rejected with an error naming them and leave the config unchanged.
 * Also opening a Kafka producer/consumer with bad properties fails cleanly
 * (librdkafka creates no connection before the first request).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus/bus.h"
#include "common/log.h"

#include <string.h>

static void test_sqlite(void **state)
{
    (void)state;
    char err[256];
    bus_config cfg = BUS_CONFIG_INIT;
    cfg.kind = BUS_KAFKA;
    assert_int_equal(bus_config_set_url(&cfg, "sqlite", err, sizeof(err)), 0);
    assert_int_equal(cfg.kind, BUS_SQLITE);
    cfg.kind = BUS_KAFKA;
    assert_int_equal(bus_config_set_url(&cfg, "", err, sizeof(err)), 0);
    assert_int_equal(cfg.kind, BUS_SQLITE);
    assert_int_equal(bus_config_set_url(&cfg, NULL, err, sizeof(err)), 0);
    assert_int_equal(cfg.kind, BUS_SQLITE);
    assert_null(cfg.bootstrap);
}

static void test_kafka_good(void **state)
{
    (void)state;
    static const char *const good[] = {
        "kafka:localhost:9092",
        "kafka:127.0.0.1:1",
        "kafka:broker-1.example.internal:65535",
        "kafka:a:9092,b:9093,c_d.e:9094",
        "kafka:[::1]:9092",
        "kafka:[fe80::1:2]:9092,10.0.0.1:9092",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char err[256] = "";
        bus_config cfg = BUS_CONFIG_INIT;
        int rc = bus_config_set_url(&cfg, good[i], err, sizeof(err));
        if (rc != 0)
            fail_msg("%s rejected: %s", good[i], err);
        assert_int_equal(cfg.kind, BUS_KAFKA);
        assert_string_equal(cfg.bootstrap, good[i] + 6);
        assert_string_equal(cfg.data_dir, "./herald-data"); /* rest unchanged */
    }
}

static void test_kafka_bad(void **state)
{
    (void)state;
    static const struct {
        const char *url, *want;
    } bad[] = {
        {"kafka:", "names no Kafka broker"},
        {"kafka", "unsupported bus"},
        {"kafka:localhost", "expected HOST:PORT"},
        {"kafka:localhost:", "missing port"},
        {"kafka::9092", "expected HOST:PORT"},
        {"kafka:localhost:0", "bad port"},
        {"kafka:localhost:65536", "bad port"},
        {"kafka:localhost:99999999999999999999", "bad port"},
        {"kafka:localhost:90a2", "bad port"},
        {"kafka:localhost:-1", "bad port"},
        {"kafka:host name:9092", "bad host"},
        {"kafka:host/x:9092", "bad host"},
        {"kafka:a:9092,", "empty Kafka broker"},
        {"kafka:,a:9092", "empty Kafka broker"},
        {"kafka:a:9092,,b:9092", "empty Kafka broker"},
        {"kafka:a:9092,b", "expected HOST:PORT"},
        {"kafka:[::1:9092", "expected [IPV6]:PORT"},
        {"kafka:[]:9092", "expected [IPV6]:PORT"},
        {"kafka:[::1]9092", "expected [IPV6]:PORT"},
        {"kafka:[::g]:9092", "bad IPv6"},
        {"kafka:[::1]:", "missing port"},
        {"redis:localhost:6379", "unsupported bus"},
        {"KAFKA:localhost:9092", "unsupported bus"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        bus_config cfg = BUS_CONFIG_INIT;
        if (bus_config_set_url(&cfg, bad[i].url, err, sizeof(err)) != -1)
            fail_msg("%s accepted", bad[i].url);
        if (!strstr(err, bad[i].want))
            fail_msg("%s: error '%s' lacks '%s'", bad[i].url, err, bad[i].want);
        assert_int_equal(cfg.kind, BUS_SQLITE);
        assert_null(cfg.bootstrap);
    }
    /* a long host is cut off in the message, never overflows */
    char url[1200] = "kafka:";
    memset(url + 6, 'h', 1000);
    strcpy(url + 1006, ":9092");
    char err[64];
    bus_config cfg = BUS_CONFIG_INIT;
    assert_int_equal(bus_config_set_url(&cfg, url, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "too long"));
}

static void test_kafka_open_errors(void **state)
{
    (void)state;
    char err[256] = "";
    bus_config cfg = BUS_CONFIG_INIT;
    assert_int_equal(bus_config_set_url(&cfg, "kafka:127.0.0.1:9", err, sizeof(err)), 0);
    static const char *const bad_syntax[] = {"=x", NULL};
    cfg.kafka_props = bad_syntax;
    assert_null(bus_producer_open(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "not name=value"));
    static const char *const bad_value[] = {"acks=sometimes", NULL};
    cfg.kafka_props = bad_value;
    assert_null(bus_producer_open(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "acks"));

    cfg.kafka_props = NULL;
    bus_subscription sub = BUS_SUBSCRIPTION_INIT;
    sub.group_id = "g";
    assert_null(bus_consumer_open(&cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "no topic"));
    static const char *const bad_topics[] = {"ok-topic", "bad topic"};
    sub.topics = bad_topics;
    sub.topic_count = 2;
    assert_null(bus_consumer_open(&cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "bad topic"));
    sub.topics = NULL;
    sub.topic_count = 0;
    sub.pattern = "^(unclosed";
    assert_null(bus_consumer_open(&cfg, &sub, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid topic pattern"));

    /* a valid configuration opens and closes without a broker */
    sub.pattern = "^.*-events$";
    bus_consumer *c = bus_consumer_open(&cfg, &sub, err, sizeof(err));
    assert_non_null(c);
    bus_consumer_close(c);
    bus_producer *p = bus_producer_open(&cfg, err, sizeof(err));
    assert_non_null(p);
    bus_producer_close(p);
}

int main(void)
{
    log_set_level_name("off");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sqlite),
        cmocka_unit_test(test_kafka_good),
        cmocka_unit_test(test_kafka_bad),
        cmocka_unit_test(test_kafka_open_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
