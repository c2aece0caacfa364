/*
 * test_wal_vfs.c - unit tests for src/bus/wal_vfs: a connection on the
 * gathering VFS (WAL) must leave exactly the database the default VFS
 * would: every commit visible to another connection (on the default VFS)
 * right after COMMIT returns, with synchronous FULL, NORMAL (no sync at
 * commit: the agents' setting) and OFF, transactions larger than the
 * buffer and than the page cache (frames written before the commit and
 * read back), rollbacks, checkpoints and WAL restarts, and kill -9 between
 * or during commits (every commit the writer saw return is there, the
 * database passes integrity_check). Real SQLite on real files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus/wal_vfs.h"

typedef struct fixture {
    char dir[64];
    char path[96];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/herald-walvfs-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/test.db", f->dir);
    *state = f;
    return wal_vfs_register() == SQLITE_OK ? 0 : -1;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, msg ? msg : sqlite3_errstr(rc));
}

static sqlite3 *open_db(const char *path, const char *vfs)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    assert_int_equal(sqlite3_open_v2(path, &db, flags, vfs), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    exec_ok(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)");
    return db;
}

static long long query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    long long v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

static void assert_intact(sqlite3 *db)
{
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "ok");
    sqlite3_finalize(s);
}

/* Insert rows rows of size bytes in the current transaction. */
static void insert_rows(sqlite3 *db, int rows, int size)
{
    sqlite3_stmt *s = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(db, "INSERT INTO t(v) VALUES(randomblob(?1))", -1, &s, NULL), SQLITE_OK);
    for (int i = 0; i < rows; i++) {
        sqlite3_bind_int(s, 1, size);
        assert_int_equal(sqlite3_step(s), SQLITE_DONE);
        sqlite3_reset(s);
    }
    sqlite3_finalize(s);
}

/* Commit 60 transactions of 12 rows on the gathering VFS with the given
 * synchronous setting; a connection on the default VFS must see each one
 * as soon as COMMIT returns. */
static void commit_and_read_back(const fixture *f, const char *synchronous)
{
    sqlite3 *writer = open_db(f->path, WAL_VFS_NAME);
    char pragma[64];
    snprintf(pragma, sizeof(pragma), "PRAGMA synchronous=%s", synchronous);
    exec_ok(writer, pragma);
    sqlite3 *reader = open_db(f->path, NULL);
    long long before = query_int(reader, "SELECT count(*) FROM t");
    unsigned long long gathered0, pwrites0, gathered1, pwrites1;
    wal_vfs_stats(&gathered0, &pwrites0);
    for (int i = 1; i <= 60; i++) {
        exec_ok(writer, "BEGIN IMMEDIATE");
        insert_rows(writer, 12, 600);
        exec_ok(writer, "COMMIT");
        /* the default VFS's connection sees the commit at once */
        assert_int_equal(query_int(reader, "SELECT count(*) FROM t"), before + 12 * i);
    }
    wal_vfs_stats(&gathered1, &pwrites1);
    /* two writes per frame (header, page) went out as far fewer pwrites */
    assert_true(gathered1 - gathered0 > 3 * (pwrites1 - pwrites0));
    assert_true(pwrites1 > pwrites0);
    assert_intact(reader);
    sqlite3_close(reader);
    sqlite3_close(writer);
}

static void test_every_commit_is_visible_to_another_connection(void **state)
{
    fixture *f = *state;
    commit_and_read_back(f, "FULL");
    commit_and_read_back(f, "NORMAL");
    commit_and_read_back(f, "OFF");
    commit_and_read_back(f, "EXTRA");
}

static void test_large_transactions_rollbacks_and_checkpoints(void **state)
{
    fixture *f = *state;
    sqlite3 *writer = open_db(f->path, WAL_VFS_NAME);
    /* a page cache of 16 pages: a big transaction writes frames before its
     * commit and reads them back */
    exec_ok(writer, "PRAGMA cache_size=16; PRAGMA wal_autocheckpoint=0");
    exec_ok(writer, "BEGIN IMMEDIATE");
    insert_rows(writer, 3000, 1000); /* ~3 MB: far past the buffer */
    assert_int_equal(query_int(writer, "SELECT sum(length(v)) FROM t"), 3000 * 1000);
    exec_ok(writer, "COMMIT");

    exec_ok(writer, "BEGIN IMMEDIATE");
    insert_rows(writer, 2000, 1000);
    exec_ok(writer, "ROLLBACK");
    assert_int_equal(query_int(writer, "SELECT count(*) FROM t"), 3000);

    /* everything into the database, then the WAL starts over at offset 0 */
    exec_ok(writer, "PRAGMA wal_checkpoint(TRUNCATE)");
    for (int i = 0; i < 20; i++) {
        exec_ok(writer, "BEGIN IMMEDIATE");
        insert_rows(writer, 5, 300);
        exec_ok(writer, "COMMIT");
    }
    exec_ok(writer, "PRAGMA wal_checkpoint(PASSIVE)");
    exec_ok(writer, "BEGIN IMMEDIATE");
    insert_rows(writer, 5, 300);
    exec_ok(writer, "COMMIT");
    sqlite3_close(writer);

    sqlite3 *reader = open_db(f->path, NULL);
    assert_int_equal(query_int(reader, "SELECT count(*) FROM t"), 3000 + 21 * 5);
    assert_intact(reader);
    sqlite3_close(reader);
}

/* The child commits one row per transaction on the gathering VFS and
 * writes each committed id to the pipe once COMMIT has returned. */
static void run_committer(const char *path, const char *synchronous, int out)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, WAL_VFS_NAME) != SQLITE_OK)
        _exit(2);
    sqlite3_busy_timeout(db, 5000);
    char pragmas[96];
    snprintf(pragmas, sizeof(pragmas), "PRAGMA synchronous=%s; PRAGMA wal_autocheckpoint=200",
             synchronous);
    sqlite3_exec(db, pragmas, NULL, NULL, NULL);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO t(v) VALUES(randomblob(700)) RETURNING id", -1, &s,
                           NULL) != SQLITE_OK)
        _exit(3);
    for (;;) {
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            _exit(4);
        long long id = 0;
        for (int i = 0; i < 4; i++) {
            if (sqlite3_step(s) != SQLITE_ROW)
                _exit(5);
            id = sqlite3_column_int64(s, 0);
            sqlite3_reset(s);
        }
        if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
            _exit(6);
        if (write(out, &id, sizeof(id)) != (ssize_t)sizeof(id))
            _exit(7);
    }
}

static void test_kill_9_keeps_every_returned_commit(void **state)
{
    fixture *f = *state;
    sqlite3 *setup_db = open_db(f->path, NULL);
    sqlite3_close(setup_db);
    for (int round = 0; round < 6; round++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            run_committer(f->path, round % 2 ? "NORMAL" : "FULL", fds[1]);
        }
        close(fds[1]);
        /* its first commit (under valgrind on a busy machine that can take
         * longer than any fixed pause), then a different moment each round */
        struct pollfd first = {.fd = fds[0], .events = POLLIN};
        assert_int_equal(poll(&first, 1, 60000), 1);
        struct timespec pause = {0, (long)(60 + 37 * round) * 1000000L};
        nanosleep(&pause, NULL);
        kill(pid, SIGKILL);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        long long id = 0, last = 0;
        while (read(fds[0], &id, sizeof(id)) == (ssize_t)sizeof(id))
            last = id;
        close(fds[0]);
        assert_true(last > 0);

        sqlite3 *db = open_db(f->path, NULL);
        long long max_id = query_int(db, "SELECT coalesce(max(id), 0) FROM t");
        /* every commit the child saw return is there, nothing half */
        assert_true(max_id >= last);
        assert_int_equal(query_int(db, "SELECT count(*) FROM t"), max_id);
        assert_int_equal(max_id % 4, 0);
        assert_intact(db);
        sqlite3_close(db);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_commit_is_visible_to_another_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_large_transactions_rollbacks_and_checkpoints, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kill_9_keeps_every_returned_commit, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
