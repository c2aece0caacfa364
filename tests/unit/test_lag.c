/*
 * test_lag.c - the lag status rules (ops/lag.h: lag_evaluate(), a pure
 * function from samples and liveness to a status) and the runtime's stall
 * rule (runtime_health_stalled()).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ops/lag.h"
#include "runtime/runtime.h"

#define NOW 1000000
#define STALL 30000

/* samples of (committed, end) one second apart, ending at NOW */
static lag_status eval(const int64_t (*s)[2], size_t n, int alive, int64_t waiting_since)
{
    lag_sample samples[16];
    for (size_t i = 0; i < n; i++)
        samples[i] = (lag_sample){NOW - (int64_t)(n - 1 - i) * 1000, s[i][0], s[i][1]};
    lag_evidence e = {samples, n, alive, waiting_since, NOW, STALL};
    return lag_evaluate(&e);
}

static void test_ok_without_lag(void **state)
{
    (void)state;
    const int64_t s[][2] = {{10, 10}, {12, 12}};
    assert_int_equal(eval(s, 2, 1, -1), LAG_OK);
    /* no lag is OK even with no member at all, and even long after */
    assert_int_equal(eval(s, 2, 0, NOW - 10 * STALL), LAG_OK);
    const int64_t one[][2] = {{5, 5}};
    assert_int_equal(eval(one, 1, 0, -1), LAG_OK);
}

static void test_rewind_comes_first(void **state)
{
    (void)state;
    const int64_t s[][2] = {{10, 20}, {12, 20}, {4, 20}};
    assert_int_equal(eval(s, 3, 1, -1), LAG_REWIND);
    /* even when caught up after moving back */
    const int64_t t[][2] = {{10, 10}, {3, 3}};
    assert_int_equal(eval(t, 2, 0, -1), LAG_REWIND);
}

static void test_stop_when_nobody_consumes(void **state)
{
    (void)state;
    const int64_t s[][2] = {{10, 13}, {10, 13}};
    /* at once: no live member means nobody will commit */
    assert_int_equal(eval(s, 2, 0, NOW - 10), LAG_STOP);
    /* without liveness evidence: STOP only after the stall limit */
    assert_int_equal(eval(s, 2, -1, NOW - 10), LAG_OK);
    assert_int_equal(eval(s, 2, -1, NOW - STALL), LAG_STOP);
}

static void test_stall_when_alive_but_not_moving(void **state)
{
    (void)state;
    const int64_t s[][2] = {{10, 13}, {10, 13}, {10, 14}};
    assert_int_equal(eval(s, 3, 1, NOW - STALL), LAG_STALL);
    assert_int_equal(eval(s, 3, 1, NOW - STALL - 1), LAG_STALL);
    /* work that arrived recently is not a stall yet (a slow record) */
    assert_int_equal(eval(s, 3, 1, NOW - STALL + 1), LAG_OK);
    /* unknown waiting time: the window is the evidence */
    lag_sample w[2] = {{NOW - STALL, 10, 13}, {NOW, 10, 13}};
    lag_evidence e = {w, 2, 1, -1, NOW, STALL};
    assert_int_equal(lag_evaluate(&e), LAG_STALL);
    e.samples = &w[1];
    e.count = 1;
    assert_int_equal(lag_evaluate(&e), LAG_OK);
}

static void test_warn_when_lag_grows_while_moving(void **state)
{
    (void)state;
    const int64_t grow[][2] = {{10, 15}, {12, 18}, {14, 22}};
    assert_int_equal(eval(grow, 3, 1, -1), LAG_WARN);
    /* moving and shrinking or steady: OK */
    const int64_t shrink[][2] = {{10, 15}, {12, 16}, {14, 16}};
    assert_int_equal(eval(shrink, 3, 1, -1), LAG_OK);
    const int64_t steady[][2] = {{10, 15}, {12, 17}, {14, 19}};
    assert_int_equal(eval(steady, 3, 1, -1), LAG_OK);
    /* grew, dipped, grew again: not growing over the whole window */
    const int64_t dip[][2] = {{10, 15}, {14, 16}, {15, 25}};
    assert_int_equal(eval(dip, 3, 1, -1), LAG_OK);
    /* moving wins over a long wait: a busy consumer is not stalled */
    const int64_t moving[][2] = {{10, 15}, {11, 15}};
    assert_int_equal(eval(moving, 2, 1, NOW - 10 * STALL), LAG_OK);
    /* but with no live member it is STOP (it moved, then stopped) */
    assert_int_equal(eval(moving, 2, 0, -1), LAG_STOP);
}

static void test_names_and_worst(void **state)
{
    (void)state;
    assert_string_equal(lag_status_name(LAG_OK), "OK");
    assert_string_equal(lag_status_name(LAG_WARN), "WARN");
    assert_string_equal(lag_status_name(LAG_STALL), "STALL");
    assert_string_equal(lag_status_name(LAG_STOP), "STOP");
    assert_string_equal(lag_status_name(LAG_REWIND), "REWIND");
    lag_row rows[3] = {{0}};
    rows[0].status = LAG_WARN;
    rows[1].status = LAG_STALL;
    rows[2].status = LAG_OK;
    assert_int_equal(lag_worst(rows, 3), LAG_STALL);
    assert_int_equal(lag_worst(rows, 0), LAG_OK);
    rows[2].status = LAG_REWIND;
    assert_int_equal(lag_worst(rows, 3), LAG_REWIND);
}

static void test_runtime_stall_rule(void **state)
{
    (void)state;
    runtime_health h = RUNTIME_HEALTH_INIT;
    h.running = 1;
    h.last_progress_ms = NOW - 2 * STALL;
    /* idle (caught up): never stalled however long ago it last moved */
    assert_false(runtime_health_stalled(&h, NOW, STALL));
    h.busy = 1;
    h.retrying = 1;
    assert_true(runtime_health_stalled(&h, NOW, STALL));
    h.last_progress_ms = NOW - STALL + 1;
    assert_false(runtime_health_stalled(&h, NOW, STALL));
    h.last_progress_ms = NOW - STALL;
    assert_true(runtime_health_stalled(&h, NOW, STALL));
    /* a runtime that is not running is "not running", not stalled */
    h.running = 0;
    assert_false(runtime_health_stalled(&h, NOW, STALL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ok_without_lag),
        cmocka_unit_test(test_rewind_comes_first),
        cmocka_unit_test(test_stop_when_nobody_consumes),
        cmocka_unit_test(test_stall_when_alive_but_not_moving),
        cmocka_unit_test(test_warn_when_lag_grows_while_moving),
        cmocka_unit_test(test_names_and_worst),
        cmocka_unit_test(test_runtime_stall_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
