/*
 * durable_noop.c - the ceiling of a durable Task API on this machine: a
 * libmicrohttpd server that answers each POST only after its body is on
 * disk, with nothing else to do (no JSON, no SQL, no event).
 *
 * It does what any Task API that "answers after the change is durably
 * committed, with a shared fsync" must do at the least, the way herald does
 * it: the HTTP thread reads the body, suspends the connection and queues
 * the request; one writer thread takes every queued request, appends their
 * bodies to a file in one pwrite() and calls fdatasync() once for all of
 * them (a group commit), then resumes their connections, which are answered
 * 201. So its requests/s bound herald's from above: herald does the same
 * plus the JSON, the SQLite transaction and the event.
 *
 * The file is rewritten in place within its first 64 MiB (as SQLite's WAL
 * is after a checkpoint), so fdatasync() never has a file size to update.
 *
 * Modes (to find the best a design of this kind can do here):
 *   --sync fdatasync   group commit with an fsync (default)
 *   --sync none        the same hand-off to the writer, no write, no fsync:
 *                      what suspend/resume and the writer thread cost
 *   --pipeline         the writer only writes; a second thread runs the
 *                      fdatasync()s and resumes, so the next batch is
 *                      written while the last one is being synced
 *   --threads N        HTTP threads (libmicrohttpd's pool; default 1, as
 *                      herald on 2 cores)
 *   --thread-per-connection
 *                      no suspend/resume and no writer thread: each
 *                      connection has a thread (libmicrohttpd's mode) that
 *                      waits in the handler; the first one to find no commit
 *                      running writes and syncs every queued body (leader
 *                      and followers, as databases group their commits)
 *   --epoll            libmicrohttpd's epoll instead of poll (as
 *                      HERALD_HTTP_POLLER=epoll)
 *   --batch-bytes B    write at least B bytes per batch (herald's commits
 *                      write 8-10 KB of WAL per task): what the bytes cost
 *   --http-work NS     keep the HTTP thread busy NS ns per request before
 *                      queueing it (herald's parse, validation, encoding)
 *   --writer-work NS[,BATCH_NS]
 *                      keep the writer busy NS ns per request, plus
 *                      BATCH_NS per batch, before the write (herald's SQL)
 *   --dir D            where the file is (default .); the disk under test
 *
 * Usage: durable_noop PORT [--sync fdatasync|none] [--pipeline] [--threads N]
 *                          [--thread-per-connection] [--epoll]
 *                          [--batch-bytes B] [--http-work NS]
 *                          [--writer-work NS[,BATCH_NS]] [--dir D]
 * Stops on SIGTERM/SIGINT and prints "batches N requests M" on stderr.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FILE_SPAN (64L * 1024 * 1024)
#define BODY_MAX 4096
/* the most one batch writes (its bodies, or --batch-bytes) */
#define BATCH_BUFFER (1024 * BODY_MAX)

static const char reply[] = "{\"id\":\"0\",\"status\":\"created\"}";

typedef struct request {
    struct MHD_Connection *conn;
    char body[BODY_MAX];
    size_t len;
    int queued, done;
    struct request *next;
} request;

/* a queue of requests with its lock and condition */
typedef struct queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    request *head, *tail;
    int stopping;
} queue;

static queue to_writer = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0};
static queue to_syncer = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0};
static int sync_fd = -1; /* -1: --sync none */
static int pipeline, per_connection, use_epoll;
static size_t batch_bytes; /* --batch-bytes: write at least this much per batch */
/* --http-work, --writer-work: CPU spent per request (and per batch), ns */
static long http_work_ns, writer_work_ns, writer_batch_work_ns;

/* Keep the CPU busy for ns nanoseconds (a stand-in for real work). */
static void busy_for(long ns)
{
    if (ns <= 0)
        return;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do
        clock_gettime(CLOCK_MONOTONIC, &now);
    while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < ns);
}
static unsigned long long batches, answered;

static void push(queue *q, request *first, request *last)
{
    pthread_mutex_lock(&q->lock);
    if (q->tail)
        q->tail->next = first;
    else
        q->head = first;
    q->tail = last;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* Everything queued, or NULL when stopping with nothing left. */
static request *take_all(queue *q)
{
    pthread_mutex_lock(&q->lock);
    while (!q->head && !q->stopping)
        pthread_cond_wait(&q->cond, &q->lock);
    request *all = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->lock);
    return all;
}

static void resume_all(request *r)
{
    while (r) {
        request *next = r->next;
        __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
        MHD_resume_connection(r->conn);
        r = next;
    }
}

static void *syncer_main(void *arg)
{
    (void)arg;
    request *batch;
    while ((batch = take_all(&to_syncer)) != NULL) {
        if (fdatasync(sync_fd) != 0) {
            perror("durable_noop: fdatasync");
            exit(1);
        }
        resume_all(batch);
    }
    return NULL;
}

/*
 * One batch's share of the commit, by whichever thread commits it (the
 * writer, or the leading handler with --thread-per-connection): the writer
 * work (herald's SQL), the bodies (padded to --batch-bytes) written at
 * *offset with one pwrite, and with `sync` their fdatasync. Counts the
 * batch and its requests; returns the batch's last request.
 */
static request *write_batch(request *batch, off_t *offset, int sync)
{
    static char buf[BATCH_BUFFER];
    size_t len = 0;
    long n = 0;
    request *last = batch;
    for (request *r = batch; r; r = r->next, n++) {
        last = r;
        if (len + r->len <= sizeof(buf)) {
            memcpy(buf + len, r->body, r->len);
            len += r->len;
        }
    }
    batches++;
    answered += (unsigned long long)n;
    if (len < batch_bytes)
        len = batch_bytes;
    /* herald's SQL runs here, before its commit's write and fsync */
    busy_for(writer_batch_work_ns + writer_work_ns * n);
    if (sync_fd < 0)
        return last;
    if (*offset + (off_t)len > FILE_SPAN)
        *offset = 0;
    if (pwrite(sync_fd, buf, len, *offset) != (ssize_t)len) {
        perror("durable_noop: pwrite");
        exit(1);
    }
    *offset += (off_t)len;
    if (sync && fdatasync(sync_fd) != 0) {
        perror("durable_noop: fdatasync");
        exit(1);
    }
    return last;
}

static void *writer_main(void *arg)
{
    (void)arg;
    off_t offset = 0;
    request *batch;
    while ((batch = take_all(&to_writer)) != NULL) {
        request *last = write_batch(batch, &offset, !pipeline);
        if (pipeline && sync_fd >= 0)
            push(&to_syncer, batch, last);
        else
            resume_all(batch);
    }
    return NULL;
}

/* --thread-per-connection: the group commit of the waiting handlers */
static pthread_mutex_t group_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t group_done = PTHREAD_COND_INITIALIZER;
static request *group_head;
static int group_leader_busy;
static off_t group_offset;

/* Called by the handler of r: returns once r's body is durable. */
static void commit_in_group(request *r)
{
    pthread_mutex_lock(&group_lock);
    r->next = group_head;
    group_head = r;
    while (!r->done) {
        if (group_leader_busy) {
            pthread_cond_wait(&group_done, &group_lock);
            continue;
        }
        /* lead: take everyone queued, commit without the lock */
        group_leader_busy = 1;
        request *batch = group_head;
        group_head = NULL;
        pthread_mutex_unlock(&group_lock);
        write_batch(batch, &group_offset, 1);
        pthread_mutex_lock(&group_lock);
        for (request *b = batch; b; b = b->next)
            b->done = 1;
        group_leader_busy = 0;
        pthread_cond_broadcast(&group_done);
    }
    pthread_mutex_unlock(&group_lock);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    request *r = *req_cls;
    if (!r) {
        *req_cls = r = calloc(1, sizeof(*r));
        return r ? MHD_YES : MHD_NO;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        if (r->len + n > BODY_MAX)
            n = BODY_MAX - r->len;
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!r->queued && !r->done)
        busy_for(http_work_ns); /* herald parses, validates and encodes here */
    if (per_connection) {
        commit_in_group(r);
    } else if (!r->queued) {
        r->queued = 1;
        r->conn = conn;
        r->next = NULL;
        MHD_suspend_connection(conn);
        push(&to_writer, r, r);
        return MHD_YES;
    }
    if (!per_connection && !__atomic_load_n(&r->done, __ATOMIC_ACQUIRE))
        return MHD_YES;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(reply), (void *)reply, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result ok = MHD_queue_response(conn, 201, resp);
    MHD_destroy_response(resp);
    return ok;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    free(*req_cls);
    *req_cls = NULL;
}

static void stop_queue(queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: durable_noop PORT [--sync fdatasync|none] [--pipeline] [--threads N] "
                "[--thread-per-connection] [--epoll] [--batch-bytes B] [--http-work NS] "
                "[--writer-work NS[,BATCH_NS]] [--dir D]\n");
        return 2;
    }
    unsigned threads = 1;
    const char *dir = ".", *sync_mode = "fdatasync";
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--pipeline") == 0)
            pipeline = 1;
        else if (strcmp(argv[i], "--batch-bytes") == 0 && i + 1 < argc) {
            long n = atol(argv[++i]);
            if (n < 0 || n > BATCH_BUFFER) {
                fprintf(stderr, "durable_noop: --batch-bytes must be 0..%d\n", BATCH_BUFFER);
                return 2;
            }
            batch_bytes = (size_t)n;
        } else if (strcmp(argv[i], "--http-work") == 0 && i + 1 < argc) {
            http_work_ns = atol(argv[++i]);
        } else if (strcmp(argv[i], "--writer-work") == 0 && i + 1 < argc) {
            char *comma;
            writer_work_ns = strtol(argv[++i], &comma, 10);
            writer_batch_work_ns = *comma == ',' ? atol(comma + 1) : 0;
        } else if (strcmp(argv[i], "--epoll") == 0)
            use_epoll = 1;
        else if (strcmp(argv[i], "--thread-per-connection") == 0)
            per_connection = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--sync") == 0 && i + 1 < argc)
            sync_mode = argv[++i];
        else {
            fprintf(stderr, "durable_noop: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/durable_noop.%d.log", dir, (int)getpid());
    if (strcmp(sync_mode, "none") != 0) {
        sync_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (sync_fd < 0 || posix_fallocate(sync_fd, 0, FILE_SPAN) != 0 || fsync(sync_fd) != 0) {
            fprintf(stderr, "durable_noop: cannot create '%s'\n", path);
            return 1;
        }
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t writer, syncer;
    pthread_create(&writer, NULL, writer_main, NULL);
    if (pipeline)
        pthread_create(&syncer, NULL, syncer_main, NULL);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    unsigned flags =
        per_connection
            ? MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL
            : MHD_USE_INTERNAL_POLLING_THREAD | (use_epoll ? MHD_USE_EPOLL : MHD_USE_POLL) |
                  MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    if (per_connection)
        threads = 1; /* no pool in this mode */
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, &addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, threads, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "durable_noop: cannot listen on port %s\n", argv[1]);
        return 1;
    }
    int sig;
    sigwait(&set, &sig);
    MHD_quiesce_daemon(d);
    stop_queue(&to_writer);
    pthread_join(writer, NULL);
    if (pipeline) {
        stop_queue(&to_syncer);
        pthread_join(syncer, NULL);
    }
    MHD_stop_daemon(d);
    fprintf(stderr, "batches %llu requests %llu\n", batches, answered);
    if (sync_fd >= 0) {
        close(sync_fd);
        unlink(path);
    }
    return 0;
}
