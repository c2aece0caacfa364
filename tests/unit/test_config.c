/*
 * test_config.c - the settings table (cli/config.h) and util helpers:
 * defaults, environment over defaults, flags over environment, and precise
 * errors for bad values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli/config.h"
#include "common/log.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void clear_env(void)
{
    unsetenv("HERALD_DATA_DIR");
    unsetenv("HERALD_BUS");
    unsetenv("HERALD_RETENTION");
    unsetenv("HERALD_SYNC");
    unsetenv("HERALD_LOG_LEVEL");
}

static void test_defaults(void **state)
{
    (void)state;
    clear_env();
    herald_config cfg = HERALD_CONFIG_INIT;
    char err[256];
    assert_int_equal(config_load(&cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg.data_dir, "./herald-data");
    assert_string_equal(cfg.bus_url, "sqlite");
    assert_int_equal(cfg.retention_ms, 7LL * 86400 * 1000);
    assert_int_equal(cfg.sync_full, 1);
    assert_int_equal(cfg.http_epoll, 0);
    bus_config bus;
    assert_int_equal(config_bus(&cfg, "test", &bus, err, sizeof(err)), 0);
    assert_string_equal(bus.data_dir, "./herald-data");
    assert_int_equal(bus.retention_ms, 7LL * 86400 * 1000);
    config_release(&cfg);
}

static void test_environment_then_flags(void **state)
{
    (void)state;
    clear_env();
    setenv("HERALD_DATA_DIR", "/tmp/x", 1);
    setenv("HERALD_RETENTION", "90s", 1);
    setenv("HERALD_SYNC", "normal", 1);
    herald_config cfg = HERALD_CONFIG_INIT;
    char err[256];
    assert_int_equal(config_load(&cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg.data_dir, "/tmp/x");
    assert_int_equal(cfg.retention_ms, 90000);
    assert_int_equal(cfg.sync_full, 0);
    assert_int_equal(config_set(&cfg, "data-dir", "/tmp/y", err, sizeof(err)), 0);
    assert_string_equal(cfg.data_dir, "/tmp/y");
    assert_int_equal(config_set(&cfg, "retention", "0", err, sizeof(err)), 0);
    assert_int_equal(cfg.retention_ms, 0);
    assert_int_equal(config_set(&cfg, "http-poller", "epoll", err, sizeof(err)), 0);
    assert_int_equal(cfg.http_epoll, 1);
    assert_int_equal(config_set(&cfg, "no-such-setting", "1", err, sizeof(err)), 1);
    config_release(&cfg);
    clear_env();
}

static void test_bad_values_name_the_variable(void **state)
{
    (void)state;
    clear_env();
    herald_config cfg = HERALD_CONFIG_INIT;
    char err[256];
    setenv("HERALD_RETENTION", "7 days", 1);
    assert_int_equal(config_load(&cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "HERALD_RETENTION"));
    assert_non_null(strstr(err, "7 days"));
    config_release(&cfg);
    clear_env();
    setenv("HERALD_BUS", "rabbitmq", 1);
    assert_int_equal(config_load(&cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "HERALD_BUS"));
    config_release(&cfg);
    clear_env();
    assert_int_equal(config_load(&cfg, err, sizeof(err)), 0);
    assert_int_equal(config_set(&cfg, "sync", "sometimes", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--sync"));
    assert_int_equal(config_set(&cfg, "http-poller", "select", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--http-poller"));
    assert_int_equal(config_set(&cfg, "log-level", "loud", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "loud"));
    assert_int_equal(config_set(&cfg, "data-dir", "", err, sizeof(err)), -1);
    config_release(&cfg);
    log_threshold = LOG_LEVEL_ERROR;
}

static void test_durations(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(util_parse_duration_ms("500ms", &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(util_parse_duration_ms("30", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(util_parse_duration_ms("15m", &ms), 0);
    assert_int_equal(ms, 900000);
    assert_int_equal(util_parse_duration_ms("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(util_parse_duration_ms("7d", &ms), 0);
    assert_int_equal(ms, 604800000);
    assert_int_equal(util_parse_duration_ms("", &ms), -1);
    assert_int_equal(util_parse_duration_ms("-1s", &ms), -1);
    assert_int_equal(util_parse_duration_ms("1w", &ms), -1);
    assert_int_equal(util_parse_duration_ms("1.5h", &ms), -1);
    assert_int_equal(util_parse_duration_ms("99999999999999999999", &ms), -1);
    assert_int_equal(util_parse_duration_ms("9999999999999999d", &ms), -1);
}

static void test_mkdir_p(void **state)
{
    (void)state;
    char dir[] = "/tmp/herald-test-mkdir-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/a/b/c", dir);
    assert_int_equal(util_mkdir_p(path), 0);
    assert_int_equal(util_mkdir_p(path), 0); /* exists: fine */
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "touch %s/file", dir);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof(path), "%s/file/sub", dir);
    assert_int_equal(util_mkdir_p(path), -1);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_environment_then_flags),
        cmocka_unit_test(test_bad_values_name_the_variable),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_mkdir_p),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
