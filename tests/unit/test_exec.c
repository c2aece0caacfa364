/*
 * test_exec.c - the exec agent's factory (agent_exec_def): what it derives
 * from the settings (group, name, topics from the types' domains, types)
 * and what it refuses (group names, types, commands). Running commands is
 * tested end to end (tests/e2e/test_agent_exec.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agents/agents.h"
#include "common/log.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *const sh_argv[] = {"sh", "-c", "cat >/dev/null", NULL};

static agent_settings exec_settings(const char *group, const char *const *types, size_t n,
                                    char *const *argv)
{
    agent_settings s = AGENT_SETTINGS_INIT;
    s.exec_group = group;
    s.exec_types = types;
    s.exec_type_count = n;
    s.exec_argv = argv;
    return s;
}

static void test_derives_topics_and_types(void **state)
{
    (void)state;
    static const char *const types[] = {"task.created", "reminder.due", "task.completed",
                                        "task.created"};
    agent_settings s = exec_settings("sms", types, 4, sh_argv);
    agent_def def = AGENT_DEF_INIT;
    char err[256];
    assert_int_equal(agent_exec_def(&def, &s, err, sizeof(err)), 0);
    assert_string_equal(def.name, "sms");
    assert_string_equal(def.group, "sms");
    assert_int_equal(def.topic_count, 2); /* deduplicated, in order of first use */
    assert_string_equal(def.topics[0], "task-events");
    assert_string_equal(def.topics[1], "reminder-events");
    assert_null(def.pattern);
    assert_int_equal(def.type_count, 3);
    assert_string_equal(def.types[0], "task.created");
    assert_string_equal(def.types[1], "reminder.due");
    assert_string_equal(def.types[2], "task.completed");
    assert_non_null(def.handle);
    assert_int_equal(def.in_transaction, 0);
    assert_true(def.max_batch > 0);
    def.destroy(def.state);
}

static void test_copies_its_settings(void **state)
{
    (void)state;
    char group[] = "push";
    char type[] = "task.created";
    const char *types[] = {type};
    char cmd[] = "true";
    char *argv[] = {cmd, NULL};
    agent_settings s = exec_settings(group, types, 1, argv);
    agent_def def = AGENT_DEF_INIT;
    char err[256];
    assert_int_equal(agent_exec_def(&def, &s, err, sizeof(err)), 0);
    memset(group, 'x', strlen(group));
    memset(type, 'x', strlen(type));
    assert_string_equal(def.group, "push");
    assert_string_equal(def.types[0], "task.created");
    def.destroy(def.state);
}

static void expect_refused(agent_settings s, const char *fragment)
{
    agent_def def = AGENT_DEF_INIT;
    char err[256] = "";
    assert_int_equal(agent_exec_def(&def, &s, err, sizeof(err)), -1);
    if (!strstr(err, fragment))
        fail_msg("error '%s' does not mention '%s'", err, fragment);
}

static void test_refuses_bad_groups(void **state)
{
    (void)state;
    static const char *const types[] = {"task.created"};
    expect_refused(exec_settings(NULL, types, 1, sh_argv), "--group");
    expect_refused(exec_settings("", types, 1, sh_argv), "--group");
    expect_refused(exec_settings("a b", types, 1, sh_argv), "group name");
    expect_refused(exec_settings("-x", types, 1, sh_argv), "group name");
    expect_refused(exec_settings("sms/1", types, 1, sh_argv), "group name");
    char long_name[200];
    memset(long_name, 'g', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    expect_refused(exec_settings(long_name, types, 1, sh_argv), "at most");
    /* the groups of herald's own agents */
    expect_refused(exec_settings("audit-log", types, 1, sh_argv), "audit-log");
    expect_refused(exec_settings("notification-slack", types, 1, sh_argv), "notification-slack");
    expect_refused(exec_settings("notification-email", types, 1, sh_argv), "notification-email");
    expect_refused(exec_settings("scheduler", types, 1, sh_argv), "scheduler");
}

static void test_refuses_bad_types(void **state)
{
    (void)state;
    static const char *const none[] = {NULL};
    static const char *const no_dot[] = {"taskcreated"};
    static const char *const upper[] = {"Task.created"};
    static const char *const empty_domain[] = {".created"};
    static const char *const second_bad[] = {"task.created", "task."};
    expect_refused(exec_settings("sms", NULL, 0, sh_argv), "--types");
    expect_refused(exec_settings("sms", none, 0, sh_argv), "--types");
    expect_refused(exec_settings("sms", none, 1, sh_argv), "--types");
    expect_refused(exec_settings("sms", no_dot, 1, sh_argv), "--types");
    expect_refused(exec_settings("sms", upper, 1, sh_argv), "--types");
    expect_refused(exec_settings("sms", empty_domain, 1, sh_argv), "--types");
    expect_refused(exec_settings("sms", second_bad, 2, sh_argv), "--types");
}

static void test_refuses_bad_commands(void **state)
{
    (void)state;
    static const char *const types[] = {"task.created"};
    static char *const empty[] = {NULL};
    static char *const blank[] = {"", NULL};
    static char *const missing[] = {"herald-no-such-command-xyz", NULL};
    static char *const missing_path[] = {"/nonexistent/dir/cmd", NULL};
    static char *const directory[] = {"/tmp", NULL};
    char plain[] = "/tmp/herald-test-exec-XXXXXX"; /* a file without x bits */
    int fd = mkstemp(plain);
    assert_true(fd >= 0);
    close(fd);
    char *const not_exec[] = {plain, NULL};
    expect_refused(exec_settings("sms", types, 1, NULL), "command");
    expect_refused(exec_settings("sms", types, 1, empty), "command");
    expect_refused(exec_settings("sms", types, 1, blank), "command");
    expect_refused(exec_settings("sms", types, 1, missing), "not found in PATH");
    expect_refused(exec_settings("sms", types, 1, missing_path), "/nonexistent/dir/cmd");
    expect_refused(exec_settings("sms", types, 1, directory), "/tmp");
    expect_refused(exec_settings("sms", types, 1, not_exec), plain);
    unlink(plain);
}

int main(void)
{
    log_threshold = LOG_LEVEL_OFF;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_derives_topics_and_types), cmocka_unit_test(test_copies_its_settings),
        cmocka_unit_test(test_refuses_bad_groups),       cmocka_unit_test(test_refuses_bad_types),
        cmocka_unit_test(test_refuses_bad_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
