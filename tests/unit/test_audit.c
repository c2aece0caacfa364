/*
 * test_audit.c - unit tests for src/agents/audit_log: the line format and
 * the chain across day files, the verifier against every kind of tampering
 * (each must name the right file and line), and the writer's crash
 * recovery: reopening continues the chain and skips what is already
 * logged, torn tails are sealed, an edited tail is refused, a failed write
 * (file size limit) is recovered without loss or duplicates.
 *
 * Every test works in its own directory under /tmp and removes it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agents/audit_log.h"
#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

/* 2025-01-15T00:00:00Z */
#define DAY1 INT64_C(1736899200000)
#define DAY_MS INT64_C(86400000)
#define HOUR_MS INT64_C(3600000)
#define F1 "audit-2025-01-15.jsonl"
#define F2 "audit-2025-01-16.jsonl"
#define F3 "audit-2025-01-17.jsonl"

#define MAX_EVENTS 64

typedef struct fx {
    char dir[64];
    int n; /* events made so far */
    char ids[MAX_EVENTS][EVENT_UUID_LEN + 1];
    char *json[MAX_EVENTS];
} fx;

/* ---- helpers ---------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fx *f = xcalloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/herald-audit-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < f->n; i++)
        free(f->json[i]);
    free(f);
    return 0;
}

static void path_of(const fx *f, const char *name, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%s", f->dir, name);
}

/* A new envelope; returns its index. */
static int make_event(fx *f)
{
    assert_true(f->n < MAX_EVENTS);
    int i = f->n++;
    event_uuid_v7(f->ids[i]);
    char buf[512];
    snprintf(buf, sizeof(buf),
             "{\"event_id\":\"%s\",\"event_type\":\"task.created\","
             "\"occurred_at\":\"2025-01-15T10:00:00.000Z\",\"data\":{\"task_id\":\"t-%d\","
             "\"title\":\"Task %d\",\"owner_id\":\"u-1\",\"priority\":2},"
             "\"metadata\":{\"correlation_id\":\"c-%d\",\"causation_id\":\"c-%d\","
             "\"source\":\"test\"}}",
             f->ids[i], i, i, i, i);
    f->json[i] = xstrdup(buf);
    return i;
}

static int append(audit_writer *w, fx *f, int i, int64_t ms)
{
    char err[512];
    int rc =
        audit_writer_append(w, f->ids[i], f->json[i], strlen(f->json[i]), ms, err, sizeof(err));
    if (rc < 0 && rc != AUDIT_BAD_EVENT)
        print_message("append: %s\n", err);
    return rc;
}

static void flush_ok(audit_writer *w)
{
    char err[512];
    int rc = audit_writer_flush(w, err, sizeof(err));
    if (rc != 0)
        print_message("flush: %s\n", err);
    assert_int_equal(rc, 0);
}

static audit_writer *open_writer(fx *f, size_t recent)
{
    char err[512];
    audit_writer *w = audit_writer_open(f->dir, recent, err, sizeof(err));
    if (!w)
        print_message("open: %s\n", err);
    assert_non_null(w);
    return w;
}

/*
 * The standard log: 10 events on 2025-01-15, 10 on the 16th, 5 on the 17th,
 * one second apart, flushed in batches of 4 (so batches span days).
 */
static void write_standard_log(fx *f)
{
    audit_writer *w = open_writer(f, 0);
    const int per_day[3] = {10, 10, 5};
    int k = 0;
    for (int d = 0; d < 3; d++) {
        for (int j = 0; j < per_day[d]; j++) {
            int i = make_event(f);
            assert_int_equal(append(w, f, i, DAY1 + d * DAY_MS + 10 * HOUR_MS + j * 1000),
                             AUDIT_APPENDED);
            if (++k % 4 == 0)
                flush_ok(w);
        }
    }
    flush_ok(w);
    audit_writer_close(w);
}

/* The lines of a file (each without its "\n"); *final_nl says whether the
 * file ends with one. Free with free_lines(). */
typedef struct lines {
    char **v;
    size_t n;
    int final_nl;
} lines;

static lines read_lines(const fx *f, const char *name)
{
    char path[256];
    path_of(f, name, path, sizeof(path));
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    lines l = {NULL, 0, 1};
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, fp)) > 0) {
        l.v = xrealloc(l.v, (l.n + 1) * sizeof(char *));
        l.final_nl = line[got - 1] == '\n';
        l.v[l.n++] = xstrndup(line, (size_t)got - (size_t)l.final_nl);
    }
    free(line);
    fclose(fp);
    return l;
}

static void write_lines(const fx *f, const char *name, const lines *l, int final_nl)
{
    char path[256];
    path_of(f, name, path, sizeof(path));
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    for (size_t i = 0; i < l->n; i++)
        fprintf(fp, "%s%s", l->v[i], i + 1 < l->n || final_nl ? "\n" : "");
    assert_int_equal(fclose(fp), 0);
}

static void free_lines(lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

static void append_raw(const fx *f, const char *name, const char *bytes, size_t len)
{
    char path[256];
    path_of(f, name, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
    close(fd);
}

static void remove_file(const fx *f, const char *name)
{
    char path[256];
    path_of(f, name, path, sizeof(path));
    assert_int_equal(unlink(path), 0);
}

static int verify(const fx *f, audit_verify_report *rep)
{
    char err[512] = "";
    int rc = audit_verify(f->dir, rep, err, sizeof(err));
    if (rc < 0)
        print_message("verify: %s\n", err);
    else if (rc > 0)
        print_message("verify: %s line %llu: %s\n", rep->bad_file,
                      (unsigned long long)rep->bad_line, rep->problem);
    return rc;
}

/* verify must fail at name:line with a problem containing `what`. */
static void expect_bad(const fx *f, const char *name, uint64_t line, const char *what)
{
    audit_verify_report rep;
    assert_int_equal(verify(f, &rep), 1);
    assert_string_equal(rep.bad_file, name);
    assert_int_equal(rep.bad_line, line);
    if (!strstr(rep.problem, what))
        fail_msg("problem '%s' does not mention '%s'", rep.problem, what);
}

static void expect_ok(const fx *f, uint64_t lines_, uint64_t events, uint64_t repairs)
{
    audit_verify_report rep;
    assert_int_equal(verify(f, &rep), 0);
    assert_int_equal(rep.lines, lines_);
    assert_int_equal(rep.events, events);
    assert_int_equal(rep.repairs, repairs);
}

/* How many times the event id occurs in the whole log (event lines). */
static int count_id(const fx *f, const char *id)
{
    const char *names[] = {F1, F2, F3};
    int count = 0;
    for (size_t k = 0; k < 3; k++) {
        char path[256];
        path_of(f, names[k], path, sizeof(path));
        if (access(path, F_OK) != 0)
            continue;
        lines l = read_lines(f, names[k]);
        for (size_t i = 0; i < l.n; i++) {
            json_t *root = json_loads(l.v[i], 0, NULL);
            json_t *ev = json_object_get(root, "event");
            const char *got = json_string_value(json_object_get(ev, "event_id"));
            if (got && strcmp(got, id) == 0)
                count++;
            json_decref(root);
        }
        free_lines(&l);
    }
    return count;
}

/* ---- format and chain ------------------------------------------------- */

static void test_untouched_log_passes(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    audit_verify_report rep;
    assert_int_equal(verify(f, &rep), 0);
    assert_int_equal(rep.files, 3);
    assert_int_equal(rep.lines, 25);
    assert_int_equal(rep.events, 25);
    assert_int_equal(rep.repairs, 0);
    assert_int_equal(rep.head.seq, 25);
    /* the head is the hash of the last line */
    lines l = read_lines(f, F3);
    json_t *last = json_loads(l.v[4], 0, NULL);
    assert_string_equal(rep.head.hash, json_string_value(json_object_get(last, "hash")));
    json_decref(last);
    free_lines(&l);
}

static void test_line_format(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    assert_int_equal(l.n, 10);
    assert_true(l.final_nl);
    char prev[65];
    memset(prev, '0', 64);
    prev[64] = '\0';
    for (size_t i = 0; i < l.n; i++) {
        const char *line = l.v[i];
        /* keys in order, the event embedded byte for byte */
        char head[128];
        snprintf(head, sizeof(head),
                 "{\"logged_at\":\"2025-01-15T10:00:%02zu.000Z\",\"event\":", i);
        assert_memory_equal(line, head, strlen(head));
        const char *ev = line + strlen(head);
        assert_memory_equal(ev, f->json[i], strlen(f->json[i]));
        char tail[128];
        snprintf(tail, sizeof(tail), ",\"seq\":%zu,\"prev\":\"%s\",\"hash\":\"", i + 1, prev);
        assert_memory_equal(ev + strlen(f->json[i]), tail, strlen(tail));
        /* hash = SHA-256 of the bytes before ,"hash": (checked with the
         * openssl command line tool as an independent implementation) */
        size_t body = strlen(line) - 75;
        char cmd[256];
        char tmp[128];
        snprintf(tmp, sizeof(tmp), "%s/body", f->dir);
        FILE *fp = fopen(tmp, "wb");
        fwrite(line, 1, body, fp);
        fclose(fp);
        snprintf(cmd, sizeof(cmd), "openssl dgst -sha256 -r %s", tmp);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char out[256] = "";
        assert_non_null(fgets(out, sizeof(out), p));
        pclose(p);
        unlink(tmp);
        assert_memory_equal(line + body + 9, out, 64);
        assert_string_equal(line + strlen(line) - 2, "\"}");
        memcpy(prev, out, 64);
    }
    free_lines(&l);
}

static void test_day_rollover_chains(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    const char *names[] = {F1, F2, F3};
    const char *dates[] = {"2025-01-15", "2025-01-16", "2025-01-17"};
    const size_t counts[] = {10, 10, 5};
    char last_hash[65] = "";
    long long seq = 0;
    for (int k = 0; k < 3; k++) {
        lines l = read_lines(f, names[k]);
        assert_int_equal(l.n, counts[k]);
        for (size_t i = 0; i < l.n; i++) {
            json_t *root = json_loads(l.v[i], 0, NULL);
            assert_non_null(root);
            assert_int_equal(json_integer_value(json_object_get(root, "seq")), ++seq);
            const char *at = json_string_value(json_object_get(root, "logged_at"));
            assert_memory_equal(at, dates[k], 10);
            if (seq > 1)
                assert_string_equal(json_string_value(json_object_get(root, "prev")), last_hash);
            strcpy(last_hash, json_string_value(json_object_get(root, "hash")));
            json_decref(root);
        }
        free_lines(&l);
    }
    assert_int_equal(seq, 25);
}

/* ---- tampering -------------------------------------------------------- */

static void test_edit_field(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F2);
    char *p = strstr(l.v[3], "\"Task 13\"");
    assert_non_null(p);
    p[6] = '9'; /* "Task 93" */
    write_lines(f, F2, &l, 1);
    free_lines(&l);
    expect_bad(f, F2, 4, "hash mismatch");
}

static void test_edit_breaking_json(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    l.v[5][0] = '[';
    write_lines(f, F1, &l, 1);
    free_lines(&l);
    expect_bad(f, F1, 6, "not valid JSON");
}

static void test_insert_copied_line(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    l.v = xrealloc(l.v, (l.n + 1) * sizeof(char *));
    memmove(l.v + 6, l.v + 5, (l.n - 5) * sizeof(char *));
    l.v[5] = xstrdup(l.v[1]); /* a copy of line 2 becomes line 6 */
    l.n++;
    write_lines(f, F1, &l, 1);
    free_lines(&l);
    expect_bad(f, F1, 6, "out of order");
}

static void test_insert_forged_line(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    /* a new line with a plausible seq but a made-up hash */
    lines l = read_lines(f, F1);
    char *forged = xstrdup(l.v[4]);
    char *h = forged + strlen(forged) - 66;
    memset(h, 'a', 64);
    l.v = xrealloc(l.v, (l.n + 1) * sizeof(char *));
    memmove(l.v + 5, l.v + 4, (l.n - 4) * sizeof(char *));
    l.v[4] = forged;
    l.n++;
    write_lines(f, F1, &l, 1);
    free_lines(&l);
    expect_bad(f, F1, 5, "hash mismatch");
}

static void test_delete_line(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    free(l.v[2]);
    memmove(l.v + 2, l.v + 3, (l.n - 3) * sizeof(char *));
    l.n--;
    write_lines(f, F1, &l, 1);
    free_lines(&l);
    expect_bad(f, F1, 3, "gap: seq 4 follows seq 2: 1 line(s) missing");
}

static void test_swap_lines(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F2);
    char *t = l.v[6];
    l.v[6] = l.v[7];
    l.v[7] = t;
    write_lines(f, F2, &l, 1);
    free_lines(&l);
    expect_bad(f, F2, 7, "out of order: seq 18 comes before seq 17");
}

static void test_swap_distant_lines(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    char *t = l.v[1];
    l.v[1] = l.v[8];
    l.v[8] = t;
    write_lines(f, F1, &l, 1);
    free_lines(&l);
    expect_bad(f, F1, 2, "reordered");
}

static void test_delete_first_line_of_second_day(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F2);
    free(l.v[0]);
    memmove(l.v, l.v + 1, (l.n - 1) * sizeof(char *));
    l.n--;
    write_lines(f, F2, &l, 1);
    free_lines(&l);
    expect_bad(f, F2, 1, "gap: seq 12 follows seq 10");
}

static void test_delete_last_line_of_first_day(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    l.n--;
    write_lines(f, F1, &l, 1);
    l.n++;
    free_lines(&l);
    expect_bad(f, F2, 1, "gap: seq 11 follows seq 9");
}

static void test_truncate_file_mid_line(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    l.n = 7;
    l.v[6][40] = '\0'; /* line 7 cut after 40 bytes, no newline */
    write_lines(f, F1, &l, 0);
    l.n = 10;
    free_lines(&l);
    expect_bad(f, F1, 7, "no newline at the end");
}

static void test_truncate_file_at_line_boundary(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    char path[256];
    path_of(f, F2, path, sizeof(path));
    lines l = read_lines(f, F2);
    off_t keep = 0;
    for (int i = 0; i < 6; i++)
        keep += (off_t)strlen(l.v[i]) + 1;
    free_lines(&l);
    assert_int_equal(truncate(path, keep), 0);
    expect_bad(f, F3, 1, "gap: seq 21 follows seq 16: 4 line(s) missing");
}

static void test_remove_first_file(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    remove_file(f, F1);
    expect_bad(f, F2, 1, "the chain starts at seq 11, not 1");
}

static void test_remove_middle_file(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    remove_file(f, F2);
    expect_bad(f, F3, 1, "gap: seq 21 follows seq 10: 10 line(s) missing");
}

static void test_alter_earlier_file_recomputed(void **state)
{
    /* an edit in an earlier file whose own hash was recomputed is still
     * caught: the next line's prev no longer matches */
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F1);
    char *line = l.v[9];
    char *p = strstr(line, "\"Task 9\"");
    assert_non_null(p);
    p[6] = '8';
    size_t body = strlen(line) - 75;
    char cmd[256], tmp[128], out[256] = "";
    snprintf(tmp, sizeof(tmp), "%s/body", f->dir);
    FILE *fp = fopen(tmp, "wb");
    fwrite(line, 1, body, fp);
    fclose(fp);
    snprintf(cmd, sizeof(cmd), "openssl dgst -sha256 -r %s", tmp);
    FILE *pp = popen(cmd, "r");
    assert_non_null(fgets(out, sizeof(out), pp));
    pclose(pp);
    unlink(tmp);
    memcpy(line + body + 9, out, 64);
    write_lines(f, F1, &l, 1);
    free_lines(&l);
    expect_bad(f, F2, 1, "chain broken: prev does not match");
}

static void test_line_moved_to_next_file(void **state)
{
    /* the last line of day 1 moved to the top of day 2: the order is the
     * same, but its logged_at says where it belongs */
    fx *f = *state;
    write_standard_log(f);
    lines a = read_lines(f, F1);
    lines b = read_lines(f, F2);
    b.v = xrealloc(b.v, (b.n + 1) * sizeof(char *));
    memmove(b.v + 1, b.v, b.n * sizeof(char *));
    b.v[0] = a.v[9];
    b.n++;
    a.n--;
    write_lines(f, F1, &a, 1);
    write_lines(f, F2, &b, 1);
    free_lines(&a);
    free_lines(&b);
    expect_bad(f, F2, 1, "belongs in audit-2025-01-15.jsonl");
}

static void test_verify_empty_and_missing(void **state)
{
    fx *f = *state;
    audit_verify_report rep;
    assert_int_equal(verify(f, &rep), 0);
    assert_int_equal(rep.files, 0);
    assert_int_equal(rep.lines, 0);
    /* other names are ignored */
    append_raw(f, "notes.txt", "x", 1);
    append_raw(f, "audit-2025-13-01.jsonl", "x", 1);
    assert_int_equal(verify(f, &rep), 0);
    assert_int_equal(rep.files, 0);
    char err[512];
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/nope", f->dir);
    assert_int_equal(audit_verify(missing, &rep, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "nope"));
}

/* ---- writer: restart, duplicates, damage ------------------------------ */

static void test_reopen_continues_and_skips_duplicates(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    audit_writer *w = open_writer(f, 0);
    /* a redelivery of the last batch */
    for (int i = 20; i < 25; i++)
        assert_int_equal(append(w, f, i, DAY1 + 2 * DAY_MS + 11 * HOUR_MS), AUDIT_DUPLICATE);
    int i = make_event(f);
    assert_int_equal(append(w, f, i, DAY1 + 2 * DAY_MS + 11 * HOUR_MS), AUDIT_APPENDED);
    /* the same id again within the batch */
    assert_int_equal(append(w, f, i, DAY1 + 2 * DAY_MS + 11 * HOUR_MS), AUDIT_DUPLICATE);
    audit_head h;
    audit_writer_head(w, &h);
    assert_int_equal(h.seq, 26);
    flush_ok(w);
    audit_writer_close(w);
    expect_ok(f, 26, 26, 0);
    for (int k = 0; k < f->n; k++)
        assert_int_equal(count_id(f, f->ids[k]), 1);
}

static void test_recent_window_spans_files(void **state)
{
    fx *f = *state;
    write_standard_log(f); /* 5 lines in the newest file */
    audit_writer *w = open_writer(f, 8);
    int64_t t = DAY1 + 2 * DAY_MS + 11 * HOUR_MS;
    /* the last 8 lines: 17..24 (0-based) are known, 16 is not */
    for (int i = 24; i >= 17; i--)
        assert_int_equal(append(w, f, i, t), AUDIT_DUPLICATE);
    assert_int_equal(append(w, f, 16, t), AUDIT_APPENDED);
    flush_ok(w);
    audit_writer_close(w);
    assert_int_equal(count_id(f, f->ids[16]), 2);
    expect_ok(f, 26, 26, 0);
}

static void test_unflushed_lines_are_dropped(void **state)
{
    fx *f = *state;
    audit_writer *w = open_writer(f, 0);
    int a = make_event(f);
    int b = make_event(f);
    assert_int_equal(append(w, f, a, DAY1), AUDIT_APPENDED);
    flush_ok(w);
    assert_int_equal(append(w, f, b, DAY1 + 1), AUDIT_APPENDED);
    audit_writer_close(w); /* a crash before the batch committed */
    w = open_writer(f, 0);
    assert_int_equal(append(w, f, a, DAY1 + 2), AUDIT_DUPLICATE);
    assert_int_equal(append(w, f, b, DAY1 + 2), AUDIT_APPENDED);
    flush_ok(w);
    audit_writer_close(w);
    assert_int_equal(count_id(f, f->ids[b]), 1);
    expect_ok(f, 2, 2, 0);
}

/* Append the first `cut` bytes of a would-be line to F3: a torn write. */
static void tear_tail(fx *f, size_t cut)
{
    lines l = read_lines(f, F3);
    assert_true(strlen(l.v[0]) > cut);
    append_raw(f, F3, l.v[0], cut);
    free_lines(&l);
}

static void test_torn_tail_is_sealed(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    tear_tail(f, 120);
    expect_bad(f, F3, 6, "no newline at the end");
    /* restart: the batch (the last 2 events were never committed, say) is
     * delivered again, plus a new event */
    audit_writer *w = open_writer(f, 0);
    int64_t t = DAY1 + 2 * DAY_MS + 12 * HOUR_MS;
    assert_int_equal(append(w, f, 23, t), AUDIT_DUPLICATE);
    assert_int_equal(append(w, f, 24, t), AUDIT_DUPLICATE);
    int i = make_event(f);
    assert_int_equal(append(w, f, i, t), AUDIT_APPENDED);
    flush_ok(w);
    assert_int_equal(audit_writer_repairs(w), 1);
    audit_writer_close(w);
    /* 25 events, the sealed fragment, the repair record, the new event */
    audit_verify_report rep;
    assert_int_equal(verify(f, &rep), 0);
    assert_int_equal(rep.lines, 28);
    assert_int_equal(rep.events, 26);
    assert_int_equal(rep.repairs, 1);
    assert_string_equal(rep.repair_file, F3);
    assert_int_equal(rep.repair_line, 6);
    assert_int_equal(rep.head.seq, 27);
    lines l = read_lines(f, F3);
    assert_int_equal(l.n, 8);
    json_t *repair = json_loads(l.v[6], 0, NULL);
    json_t *r = json_object_get(repair, "repair");
    assert_int_equal(json_integer_value(json_object_get(r, "bytes")), 121);
    assert_int_equal(json_integer_value(json_object_get(repair, "seq")), 26);
    json_decref(repair);
    free_lines(&l);
    /* the sealed bytes cannot be removed or changed unnoticed */
    l = read_lines(f, F3);
    l.v[5][3] = 'X';
    write_lines(f, F3, &l, 1);
    free_lines(&l);
    expect_bad(f, F3, 6, "not valid JSON");
    l = read_lines(f, F3);
    free(l.v[5]);
    memmove(l.v + 5, l.v + 6, 2 * sizeof(char *));
    l.n--;
    write_lines(f, F3, &l, 1);
    free_lines(&l);
    expect_bad(f, F3, 6, "repair record without damaged bytes");
}

static void test_torn_first_write_of_a_day(void **state)
{
    /* the newest file holds nothing but a fragment: the chain continues
     * from the previous file */
    fx *f = *state;
    audit_writer *w = open_writer(f, 0);
    for (int k = 0; k < 3; k++)
        assert_int_equal(append(w, f, make_event(f), DAY1 + k), AUDIT_APPENDED);
    flush_ok(w);
    audit_writer_close(w);
    append_raw(f, F2, "{\"logged_at\":\"2025-01-16T00:", 28);
    w = open_writer(f, 0);
    int i = make_event(f);
    assert_int_equal(append(w, f, i, DAY1 + DAY_MS + 5), AUDIT_APPENDED);
    flush_ok(w);
    audit_writer_close(w);
    expect_ok(f, 6, 4, 1);
}

static void test_interrupted_repair_is_sealed_again(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    /* a torn line, then the "\n" and the first bytes of a repair record
     * that was itself cut short */
    tear_tail(f, 90);
    const char *partial = "\n{\"logged_at\":\"2025-01-17T12:00:00.000Z\",\"rep";
    append_raw(f, F3, partial, strlen(partial));
    audit_writer *w = open_writer(f, 0);
    int i = make_event(f);
    assert_int_equal(append(w, f, i, DAY1 + 2 * DAY_MS + 12 * HOUR_MS), AUDIT_APPENDED);
    flush_ok(w);
    audit_writer_close(w);
    audit_verify_report rep;
    assert_int_equal(verify(f, &rep), 0);
    assert_int_equal(rep.repairs, 1);
    assert_int_equal(rep.events, 26);
    assert_int_equal(rep.lines, 29);
}

static void test_missing_final_newline_is_completed(void **state)
{
    /* a write cut right before its "\n": the line is whole and valid */
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F3);
    write_lines(f, F3, &l, 0);
    free_lines(&l);
    expect_bad(f, F3, 5, "no newline at the end");
    audit_writer *w = open_writer(f, 0);
    assert_int_equal(append(w, f, 24, DAY1 + 2 * DAY_MS + 12 * HOUR_MS), AUDIT_DUPLICATE);
    int i = make_event(f);
    assert_int_equal(append(w, f, i, DAY1 + 2 * DAY_MS + 12 * HOUR_MS), AUDIT_APPENDED);
    flush_ok(w);
    assert_int_equal(audit_writer_repairs(w), 0);
    audit_writer_close(w);
    expect_ok(f, 26, 26, 0);
}

static void test_edited_tail_is_refused(void **state)
{
    fx *f = *state;
    write_standard_log(f);
    lines l = read_lines(f, F3);
    char *p = strstr(l.v[4], "\"Task 24\"");
    assert_non_null(p);
    p[6] = '5';
    write_lines(f, F3, &l, 1);
    free_lines(&l);
    audit_writer *w = open_writer(f, 0);
    int i = make_event(f);
    char err[512];
    assert_int_equal(audit_writer_append(w, f->ids[i], f->json[i], strlen(f->json[i]),
                                         DAY1 + 2 * DAY_MS + 12 * HOUR_MS, err, sizeof(err)),
                     AUDIT_FAILED);
    assert_non_null(strstr(err, "hash mismatch"));
    assert_non_null(strstr(err, "herald audit verify"));
    assert_int_equal(audit_writer_flush(w, err, sizeof(err)), -1);
    audit_writer_close(w);
    expect_bad(f, F3, 5, "hash mismatch"); /* nothing was added */
    lines after = read_lines(f, F3);
    assert_int_equal(after.n, 5);
    free_lines(&after);
}

static void test_failed_write_recovers(void **state)
{
    /* the file size limit stops a batch half-way (a torn write, EFBIG);
     * the batch fails, and delivering it again logs every event once */
    fx *f = *state;
    audit_writer *w = open_writer(f, 0);
    for (int k = 0; k < 3; k++)
        assert_int_equal(append(w, f, make_event(f), DAY1 + k), AUDIT_APPENDED);
    flush_ok(w);
    char path[256];
    path_of(f, F1, path, sizeof(path));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    lines l = read_lines(f, F1);
    size_t line_len = strlen(l.v[2]) + 1; /* the lines below have the same length */
    free_lines(&l);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)st.st_size + 2 * line_len + 100; /* room for 2 lines and a bit */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int first = f->n;
    for (int k = 0; k < 6; k++)
        assert_int_equal(append(w, f, make_event(f), DAY1 + 10 + k), AUDIT_APPENDED);
    char err[512];
    assert_int_equal(audit_writer_flush(w, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot write"));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    /* the runtime handles the batch again */
    int dups = 0;
    for (int k = first; k < first + 6; k++) {
        int rc = append(w, f, k, DAY1 + 20);
        assert_true(rc == AUDIT_APPENDED || rc == AUDIT_DUPLICATE);
        dups += rc == AUDIT_DUPLICATE;
    }
    flush_ok(w);
    assert_int_equal(dups, 2);
    assert_int_equal(audit_writer_repairs(w), 1);
    audit_writer_close(w);
    for (int k = 0; k < f->n; k++)
        assert_int_equal(count_id(f, f->ids[k]), 1);
    expect_ok(f, 11, 9, 1);
}

static void test_multiline_event_is_reencoded(void **state)
{
    fx *f = *state;
    audit_writer *w = open_writer(f, 0);
    char id[EVENT_UUID_LEN + 1];
    event_uuid_v7(id);
    char json[512];
    snprintf(json, sizeof(json),
             "  {\n  \"event_id\": \"%s\",\r\n  \"event_type\": \"task.created\",\n"
             "  \"data\": {\"title\": \"a\\nb \\u00e9\"}, \"x\": [1, 2]\n}\n",
             id);
    char err[512];
    assert_int_equal(audit_writer_append(w, id, json, strlen(json), DAY1, err, sizeof(err)),
                     AUDIT_APPENDED);
    /* not an object: refused, nothing written */
    char other[EVENT_UUID_LEN + 1];
    event_uuid_v7(other);
    assert_int_equal(audit_writer_append(w, other, "[1,2]", 5, DAY1, err, sizeof(err)),
                     AUDIT_BAD_EVENT);
    assert_int_equal(audit_writer_append(w, other, "  ", 2, DAY1, err, sizeof(err)),
                     AUDIT_BAD_EVENT);
    flush_ok(w);
    audit_writer_close(w);
    lines l = read_lines(f, F1);
    assert_int_equal(l.n, 1);
    char expect[256];
    snprintf(expect, sizeof(expect),
             "\"event\":{\"event_id\":\"%s\",\"event_type\":\"task.created\","
             "\"data\":{\"title\":\"a\\nb \xc3\xa9\"},\"x\":[1,2]},",
             id);
    assert_non_null(strstr(l.v[0], expect));
    free_lines(&l);
    expect_ok(f, 1, 1, 0);
}

static void test_clock_stepping_back(void **state)
{
    fx *f = *state;
    audit_writer *w = open_writer(f, 0);
    int a = make_event(f), b = make_event(f);
    assert_int_equal(append(w, f, a, DAY1 + DAY_MS + 5), AUDIT_APPENDED);
    assert_int_equal(append(w, f, b, DAY1 + 10 * HOUR_MS), AUDIT_APPENDED); /* a day back */
    flush_ok(w);
    audit_writer_close(w);
    lines l = read_lines(f, F2);
    assert_int_equal(l.n, 2);
    assert_non_null(strstr(l.v[1], "\"logged_at\":\"2025-01-16T00:00:00.005Z\""));
    free_lines(&l);
    char path[256];
    path_of(f, F1, path, sizeof(path));
    assert_int_equal(access(path, F_OK), -1);
    expect_ok(f, 2, 2, 0);
}

static void test_second_writer_waits_for_the_lock(void **state)
{
    fx *f = *state;
    audit_writer *a = open_writer(f, 0);
    audit_writer *b = open_writer(f, 0);
    int e1 = make_event(f), e2 = make_event(f), e3 = make_event(f);
    assert_int_equal(append(a, f, e1, DAY1), AUDIT_APPENDED); /* a's batch holds the lock */
    char err[512];
    assert_int_equal(audit_writer_append(b, f->ids[e2], f->json[e2], strlen(f->json[e2]), DAY1, err,
                                         sizeof(err)),
                     AUDIT_FAILED);
    assert_non_null(strstr(err, "locked by another process"));
    assert_int_equal(audit_writer_flush(b, err, sizeof(err)), -1);
    flush_ok(a);
    /* b now sees what a wrote, and a sees b's line in turn */
    assert_int_equal(append(b, f, e1, DAY1 + 1), AUDIT_DUPLICATE);
    assert_int_equal(append(b, f, e2, DAY1 + 1), AUDIT_APPENDED);
    flush_ok(b);
    assert_int_equal(append(a, f, e2, DAY1 + 2), AUDIT_DUPLICATE);
    assert_int_equal(append(a, f, e3, DAY1 + 2), AUDIT_APPENDED);
    flush_ok(a);
    audit_writer_close(a);
    audit_writer_close(b);
    expect_ok(f, 3, 3, 0);
}

int main(void)
{
    log_set_level_name("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_untouched_log_passes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_line_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_day_rollover_chains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edit_field, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edit_breaking_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_copied_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_forged_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_swap_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_swap_distant_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_first_line_of_second_day, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_last_line_of_first_day, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncate_file_mid_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncate_file_at_line_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_first_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_middle_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alter_earlier_file_recomputed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_line_moved_to_next_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_empty_and_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_continues_and_skips_duplicates, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_recent_window_spans_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unflushed_lines_are_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_is_sealed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_first_write_of_a_day, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interrupted_repair_is_sealed_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_final_newline_is_completed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edited_tail_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_multiline_event_is_reencoded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clock_stepping_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_writer_waits_for_the_lock, setup, teardown),
    };
    return cmocka_run_group_tests_name("audit", tests, NULL, NULL);
}
