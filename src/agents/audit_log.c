/*
 * audit_log.c - the hash-chained audit files: writer, crash recovery and
 * verifier (the format is specified in audit_log.h).
 *
 * Design
 * - Writer fast path, per event: look the event_id up in the recent-id set,
 *   take the received envelope bytes as they are (trimmed; only text that
 *   spans lines is re-encoded), append `{"logged_at":..,"event":..,"seq":..,
 *   "prev":..` to one batch buffer, hash exactly those bytes with one reused
 *   EVP_MD_CTX and append the hash member. No JSON is parsed or encoded and
 *   nothing is written per event: the buffer goes to the file with one
 *   write(2) per batch (or per MiB), then one fdatasync per batch.
 * - Files are opened O_WRONLY|O_APPEND and never truncated or rewritten.
 *   Partial writes are continued; a write or sync error marks the batch
 *   failed, and the writer forgets what it believed about the file: the next
 *   batch starts from the file again.
 * - Recovery reads the last `recent` lines of the newest files (a backward
 *   scan counting newlines finds where to start, then the lines are read
 *   forward and checked one by one). It yields the chain head (the last
 *   valid line), the event ids of those lines (a window of several batches,
 *   so the uncommitted part of a crashed batch is recognised when it is
 *   delivered again) and the damage after the head, which it seals with a
 *   repair record or, when the damage is anything but unparsable bytes at
 *   the end of the newest file, refuses to write after.
 * - Recent ids: a ring of the last `recent` ids with a chained hash index
 *   over it, so lookups and evictions are O(1).
 * - The verifier streams every file once with getline(), parsing each line
 *   with jansson (strict: duplicate keys refused) and checking the hash, seq,
 *   prev and logged_at; on a forward jump in seq it scans the rest of the log
 *   for the missing numbers to tell a reordering from a deletion.
 *
 * Threads: none of its own; a writer belongs to one thread.
 * Ownership: the writer owns its buffer, descriptors and the directory lock.
 */
#include "agents/audit_log.h"

#include "common/log.h"
#include "common/util.h"
#include "event/event.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <nettle/sha2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEX AUDIT_HASH_HEX_LEN
/* ,"hash":"<64 hex>"} ends every line (before its "\n"). */
#define SUFFIX_HEAD ",\"hash\":\""
#define SUFFIX_HEAD_LEN 9
#define SUFFIX_LEN (SUFFIX_HEAD_LEN + HEX + 2)
/* audit-YYYY-MM-DD.jsonl */
#define FILE_NAME_LEN 22
/* Write the batch buffer out once it holds this much. */
#define WRITE_AT (1024 * 1024)
/* How long an append waits for another process's batch to end. */
#define LOCK_WAIT_MS 2000
/* Bytes a line needs besides the event text (generous). */
#define LINE_OVERHEAD 256

/* ---- small helpers ---------------------------------------------------- */

static void genesis_hash(char out[HEX + 1])
{
    memset(out, '0', HEX);
    out[HEX] = '\0';
}

static void head_init(audit_head *h)
{
    h->seq = 0;
    genesis_hash(h->hash);
    h->logged_ms = INT64_MIN;
}

static void hex_encode(const unsigned char *md, char out[HEX + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < HEX / 2; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    out[HEX] = '\0';
}

static int is_hex64(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return 0;
    return n == HEX;
}

/* One SHA-256 context (GNU Nettle's), reused for every hash. Nettle and
 * not OpenSSL: OpenSSL's first digest loads its configuration and
 * providers, ~2 MiB of resident memory in every process with an audit
 * agent. */
typedef struct hasher {
    struct sha256_ctx ctx;
} hasher;

static void hasher_init(hasher *h)
{
    sha256_init(&h->ctx);
}

static void hasher_release(hasher *h)
{
    (void)h;
}

static void hasher_begin(hasher *h)
{
    sha256_init(&h->ctx);
}

static void hasher_add(hasher *h, const void *data, size_t len)
{
    if (len)
        sha256_update(&h->ctx, len, data);
}

static void hasher_end(hasher *h, char out[HEX + 1])
{
    unsigned char md[SHA256_DIGEST_SIZE];
    sha256_digest(&h->ctx, sizeof(md), md);
    hex_encode(md, out);
}

static void sha256_hex(hasher *h, const void *data, size_t len, char out[HEX + 1])
{
    hasher_begin(h);
    hasher_add(h, data, len);
    hasher_end(h, out);
}

/* "audit-YYYY-MM-DD.jsonl" with a real date? */
static int is_audit_name(const char *name)
{
    if (strlen(name) != FILE_NAME_LEN || strncmp(name, "audit-", 6) != 0 ||
        strcmp(name + 16, ".jsonl") != 0)
        return 0;
    char stamp[32];
    memcpy(stamp, name + 6, 10);
    memcpy(stamp + 10, "T00:00:00Z", 11);
    for (int i = 0; i < 10; i++)
        if (i == 4 || i == 7 ? stamp[i] != '-' : (stamp[i] < '0' || stamp[i] > '9'))
            return 0;
    int64_t ms;
    return event_parse_time(stamp, &ms) == 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The audit file names of a directory, sorted (= date order). */
static int list_files(int dirfd, const char *dir, char ***out, size_t *count, char *err,
                      size_t errlen)
{
    int fd = dirfd >= 0 ? dup(dirfd) : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return util_error(err, errlen, "cannot open audit directory '%s': %s", dir, strerror(e));
    }
    rewinddir(d);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        if (!is_audit_name(de->d_name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            names = xrealloc(names, cap * sizeof(*names));
        }
        names[n++] = xstrdup(de->d_name);
    }
    int e = errno;
    closedir(d);
    if (e) {
        free_names(names, n);
        return util_error(err, errlen, "cannot read audit directory '%s': %s", dir, strerror(e));
    }
    if (n)
        qsort(names, n, sizeof(*names), cmp_names);
    *out = names;
    *count = n;
    return 0;
}

/* ---- one line --------------------------------------------------------- */

typedef enum line_kind {
    LINE_EVENT,    /* a valid event line */
    LINE_REPAIR,   /* a valid repair record */
    LINE_NOT_JSON, /* does not parse as JSON (damage, maybe sealed) */
    LINE_INVALID   /* JSON, but not a valid line (why says what) */
} line_kind;

typedef struct line_info {
    line_kind kind;
    int64_t seq;
    int64_t logged_ms;
    char logged_at[EVENT_TIME_LEN + 1];
    char prev[HEX + 1];
    char hash[HEX + 1];
    char event_id[EVENT_UUID_LEN + 1];
    int64_t repair_bytes;
    char repair_sha[HEX + 1];
    char why[320];
} line_info;

static int line_bad(line_info *li, line_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int line_bad(line_info *li, line_kind kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(li->why, sizeof(li->why), fmt, ap);
    va_end(ap);
    li->kind = kind;
    return -1;
}

/* Copy a 64-hex string member into out; 0 or -1. */
static int hex_member(json_t *obj, const char *key, char out[HEX + 1])
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v) || !is_hex64(json_string_value(v)))
        return -1;
    memcpy(out, json_string_value(v), HEX + 1);
    return 0;
}

static int check_repair(json_t *rep, line_info *li)
{
    const char *key;
    json_t *v;
    if (!json_is_object(rep))
        return line_bad(li, LINE_INVALID, "field 'repair' is not an object");
    json_object_foreach(rep, key, v)
    {
        if (strcmp(key, "bytes") != 0 && strcmp(key, "sha256") != 0)
            return line_bad(li, LINE_INVALID, "unexpected key 'repair.%.40s'", key);
    }
    json_t *bytes = json_object_get(rep, "bytes");
    if (!json_is_integer(bytes) || json_integer_value(bytes) < 1)
        return line_bad(li, LINE_INVALID, "field 'repair.bytes' is not a positive integer");
    li->repair_bytes = json_integer_value(bytes);
    if (hex_member(rep, "sha256", li->repair_sha) != 0)
        return line_bad(li, LINE_INVALID, "field 'repair.sha256' is not 64 lowercase hex digits");
    return 0;
}

/* Check the members of a parsed line; fills li except the hash comparison. */
static int check_members(json_t *root, line_info *li)
{
    const char *key;
    json_t *v;
    if (!json_is_object(root))
        return line_bad(li, LINE_INVALID, "not a JSON object");
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "logged_at") != 0 && strcmp(key, "event") != 0 &&
            strcmp(key, "repair") != 0 && strcmp(key, "seq") != 0 && strcmp(key, "prev") != 0 &&
            strcmp(key, "hash") != 0)
            return line_bad(li, LINE_INVALID, "unexpected key '%.40s'", key);
    }
    json_t *at = json_object_get(root, "logged_at");
    if (!json_is_string(at) || strlen(json_string_value(at)) != EVENT_TIME_LEN ||
        json_string_value(at)[EVENT_TIME_LEN - 1] != 'Z' ||
        event_parse_time(json_string_value(at), &li->logged_ms) != 0)
        return line_bad(li, LINE_INVALID,
                        "field 'logged_at' is not a time like 2025-01-15T14:30:22.456Z");
    memcpy(li->logged_at, json_string_value(at), EVENT_TIME_LEN + 1);
    json_t *seq = json_object_get(root, "seq");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1)
        return line_bad(li, LINE_INVALID, "field 'seq' is not a positive integer");
    li->seq = json_integer_value(seq);
    if (hex_member(root, "prev", li->prev) != 0)
        return line_bad(li, LINE_INVALID, "field 'prev' is not 64 lowercase hex digits");
    if (hex_member(root, "hash", li->hash) != 0)
        return line_bad(li, LINE_INVALID, "field 'hash' is not 64 lowercase hex digits");
    json_t *ev = json_object_get(root, "event");
    json_t *rep = json_object_get(root, "repair");
    if (ev && rep)
        return line_bad(li, LINE_INVALID, "both 'event' and 'repair'");
    if (rep) {
        li->kind = LINE_REPAIR;
        return check_repair(rep, li);
    }
    if (!json_is_object(ev))
        return line_bad(li, LINE_INVALID, "field 'event' is missing or not an object");
    json_t *id = json_object_get(ev, "event_id");
    if (!json_is_string(id) || !event_uuid_valid(json_string_value(id)))
        return line_bad(li, LINE_INVALID, "field 'event.event_id' is not a UUID");
    memcpy(li->event_id, json_string_value(id), EVENT_UUID_LEN + 1);
    li->kind = LINE_EVENT;
    return 0;
}

/*
 * Classify one line (without its "\n"): parse it, check its members, that
 * the hash member comes last in compact form, and that the hash matches the
 * bytes before it.
 */
static void classify(hasher *h, const char *line, size_t len, line_info *li)
{
    memset(li, 0, sizeof(*li));
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        line_bad(li, LINE_NOT_JSON, "not valid JSON (column %d: %s)", jerr.column, jerr.text);
        return;
    }
    int rc = check_members(root, li);
    json_decref(root);
    if (rc != 0)
        return;
    if (len < SUFFIX_LEN || memcmp(line + len - SUFFIX_LEN, SUFFIX_HEAD, SUFFIX_HEAD_LEN) != 0 ||
        memcmp(line + len - SUFFIX_LEN + SUFFIX_HEAD_LEN, li->hash, HEX) != 0 ||
        memcmp(line + len - 2, "\"}", 2) != 0) {
        line_bad(li, LINE_INVALID, "the line does not end with ,\"hash\":\"<64 hex>\"}");
        return;
    }
    char computed[HEX + 1];
    sha256_hex(h, line, len - SUFFIX_LEN, computed);
    if (memcmp(computed, li->hash, HEX) != 0)
        line_bad(li, LINE_INVALID,
                 "hash mismatch: the line was changed after it was written (stored %.12s..., "
                 "computed %.12s...)",
                 li->hash, computed);
}

/* ---- recent event ids ------------------------------------------------- */

typedef struct id_set {
    size_t cap, count, next;         /* ring capacity, entries, slot to fill next */
    char (*ids)[EVENT_UUID_LEN + 1]; /* the ring */
    int32_t *chain;                  /* per slot: next slot in its bucket, -1 */
    int32_t *buckets;                /* first slot of each bucket, -1 */
    size_t mask;                     /* buckets - 1 (a power of two) */
} id_set;

static uint64_t id_hash(const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ULL;
    return h;
}

static void ids_clear(id_set *s)
{
    s->count = s->next = 0;
    for (size_t i = 0; i <= s->mask; i++)
        s->buckets[i] = -1;
}

static void ids_init(id_set *s, size_t cap)
{
    s->cap = cap;
    size_t nb = 16;
    while (nb < 2 * cap)
        nb *= 2;
    s->mask = nb - 1;
    s->ids = xcalloc(cap, sizeof(*s->ids));
    s->chain = xcalloc(cap, sizeof(*s->chain));
    s->buckets = xcalloc(nb, sizeof(*s->buckets));
    ids_clear(s);
}

static void ids_release(id_set *s)
{
    free(s->ids);
    free(s->chain);
    free(s->buckets);
}

static int ids_contains(const id_set *s, const char *id)
{
    for (int32_t i = s->buckets[id_hash(id) & s->mask]; i >= 0; i = s->chain[i])
        if (strcmp(s->ids[i], id) == 0)
            return 1;
    return 0;
}

static void ids_add(id_set *s, const char *id)
{
    int32_t slot = (int32_t)s->next;
    if (s->count == s->cap) { /* evict the oldest, which lives in this slot */
        int32_t *p = &s->buckets[id_hash(s->ids[slot]) & s->mask];
        while (*p != slot)
            p = &s->chain[*p];
        *p = s->chain[slot];
    } else {
        s->count++;
    }
    util_strlcpy(s->ids[slot], id, sizeof(s->ids[slot]));
    int32_t *b = &s->buckets[id_hash(id) & s->mask];
    s->chain[slot] = *b;
    *b = slot;
    s->next = (s->next + 1) % s->cap;
}

/* ---- writer ----------------------------------------------------------- */

struct audit_writer {
    char *dir;
    int dirfd;                    /* the directory: listing, openat, fsync, flock */
    int fd;                       /* the file being appended to, or -1 */
    char name[FILE_NAME_LEN + 1]; /* its name */
    int locked;                   /* holds the directory lock (inside a batch) */
    int recovered;                /* head and ids reflect the files */
    int failed;                   /* an error in this batch: flush fails */
    char fail_msg[512];
    int fd_dirty, dir_dirty; /* to sync at flush */
    /* what the directory looked like after our last flush */
    struct timespec snap_mtime;
    char snap_name[FILE_NAME_LEN + 1];
    off_t snap_size;

    audit_head head;
    hasher hash;
    hasher damage; /* recovery: the hash of damaged bytes */
    id_set ids;
    char *buf; /* lines not yet written */
    size_t len, cap;
    uint64_t repairs;
};

static void writer_close_file(audit_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    w->name[0] = '\0';
}

static void buf_reserve(audit_writer *w, size_t more)
{
    if (w->len + more <= w->cap)
        return;
    size_t cap = w->cap ? w->cap : 64 * 1024;
    while (cap < w->len + more)
        cap *= 2;
    w->buf = xrealloc(w->buf, cap);
    w->cap = cap;
}

static void buf_add(audit_writer *w, const char *s, size_t n)
{
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

#define BUF_LIT(w, lit) buf_add((w), (lit), sizeof(lit) - 1)

/* write(2) all of data to fd, continuing after short writes. */
static int write_all(int fd, const char *data, size_t len, const char *what, char *err,
                     size_t errlen)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return util_error(err, errlen, "cannot write audit file '%s': %s", what,
                              strerror(errno));
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_out(audit_writer *w, char *err, size_t errlen)
{
    if (!w->len)
        return 0;
    if (write_all(w->fd, w->buf, w->len, w->name, err, errlen) != 0)
        return -1;
    w->len = 0;
    w->fd_dirty = 1;
    return 0;
}

/* Append a line for the next seq: its body with the member "key":value,
 * then its hash; advances the head. */
static void add_line(audit_writer *w, const char *logged_at, int64_t logged_ms, const char *key,
                     const char *value, size_t value_len)
{
    size_t key_len = strlen(key);
    buf_reserve(w, key_len + value_len + LINE_OVERHEAD);
    size_t start = w->len;
    BUF_LIT(w, "{\"logged_at\":\"");
    buf_add(w, logged_at, EVENT_TIME_LEN);
    BUF_LIT(w, "\",\"");
    buf_add(w, key, key_len);
    BUF_LIT(w, "\":");
    buf_add(w, value, value_len);
    int64_t seq = w->head.seq + 1;
    BUF_LIT(w, ",\"seq\":");
    char digits[24];
    size_t nd = 0;
    for (uint64_t v = (uint64_t)seq; v || !nd; v /= 10)
        digits[nd++] = (char)('0' + v % 10);
    while (nd)
        w->buf[w->len++] = digits[--nd];
    BUF_LIT(w, ",\"prev\":\"");
    buf_add(w, w->head.hash, HEX);
    buf_add(w, "\"", 1);
    char hash[HEX + 1];
    sha256_hex(&w->hash, w->buf + start, w->len - start, hash);
    BUF_LIT(w, SUFFIX_HEAD);
    buf_add(w, hash, HEX);
    BUF_LIT(w, "\"}\n");
    w->head.seq = seq;
    memcpy(w->head.hash, hash, HEX + 1);
    w->head.logged_ms = logged_ms;
}

/* Remember the directory's state after our own writes. */
static void writer_snapshot(audit_writer *w, const char *newest, off_t size)
{
    struct stat st;
    if (fstat(w->dirfd, &st) == 0)
        w->snap_mtime = st.st_mtim;
    util_strlcpy(w->snap_name, newest ? newest : "", sizeof(w->snap_name));
    w->snap_size = size;
}

/* Did another process change the directory since our snapshot? */
static int writer_stale(audit_writer *w)
{
    struct stat st;
    if (fstat(w->dirfd, &st) != 0 || st.st_mtim.tv_sec != w->snap_mtime.tv_sec ||
        st.st_mtim.tv_nsec != w->snap_mtime.tv_nsec)
        return 1;
    if (!w->snap_name[0])
        return 0;
    return fstatat(w->dirfd, w->snap_name, &st, 0) != 0 || st.st_size != w->snap_size;
}

/*
 * Where the last `lines` complete lines of fd start (a trailing fragment
 * without "\n" comes on top); *found receives how many complete lines that
 * is (fewer when the file is shorter).
 */
static int tail_start(int fd, off_t size, size_t lines, off_t *start, size_t *found)
{
    char chunk[64 * 1024];
    size_t seen = 0;
    off_t pos = size;
    while (pos > 0) {
        size_t n = pos < (off_t)sizeof(chunk) ? (size_t)pos : sizeof(chunk);
        pos -= (off_t)n;
        ssize_t got = pread(fd, chunk, n, pos);
        if (got != (ssize_t)n)
            return -1;
        for (size_t i = n; i-- > 0;) {
            if (chunk[i] != '\n')
                continue;
            if (++seen == lines + 1) {
                *start = pos + (off_t)i + 1;
                *found = lines;
                return 0;
            }
        }
    }
    *start = 0;
    *found = seen;
    return 0;
}

/* What recovery learns from the tail. */
typedef struct tail_scan {
    int have_valid;
    line_info last; /* the last valid line ... */
    size_t last_file;
    int last_unterminated; /* ... lacks its "\n" (cut right before it) */
    int in_damage;         /* unparsable bytes after it */
    int damage_multi;      /* ... in more than one file */
    size_t damage_file;
    off_t damage_off;
    int64_t damage_bytes;
    int damage_unterminated;
    int bad; /* a parsable but invalid line after the last valid one */
    size_t bad_file;
    off_t bad_off;
    char bad_why[320];
} tail_scan;

static void scan_line(audit_writer *w, tail_scan *t, size_t file, off_t off, const char *line,
                      size_t n)
{
    int has_nl = n && line[n - 1] == '\n';
    size_t len = n - (size_t)has_nl;
    line_info li;
    classify(&w->hash, line, len, &li);
    if (li.kind == LINE_EVENT || li.kind == LINE_REPAIR) {
        t->have_valid = 1;
        t->last = li;
        t->last_file = file;
        t->last_unterminated = !has_nl;
        t->in_damage = t->damage_multi = t->bad = 0;
        if (li.kind == LINE_EVENT)
            ids_add(&w->ids, li.event_id);
    } else if (li.kind == LINE_NOT_JSON) {
        if (!t->in_damage) {
            t->in_damage = 1;
            t->damage_file = file;
            t->damage_off = off;
            t->damage_bytes = 0;
            hasher_begin(&w->damage);
        } else if (t->damage_file != file) {
            t->damage_multi = 1;
        }
        hasher_add(&w->damage, line, n);
        t->damage_bytes += (int64_t)n;
        t->damage_unterminated = !has_nl;
    } else if (!t->bad) {
        t->bad = 1;
        t->bad_file = file;
        t->bad_off = off;
        util_strlcpy(t->bad_why, li.why, sizeof(t->bad_why));
    }
}

/* Read names[file] from offset start, line by line, into the scan. */
static int scan_file(audit_writer *w, tail_scan *t, char **names, size_t file, off_t start,
                     char *err, size_t errlen)
{
    int fd = openat(w->dirfd, names[file], O_RDONLY | O_CLOEXEC);
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return util_error(err, errlen, "cannot read audit file '%s/%s': %s", w->dir, names[file],
                          strerror(e));
    }
    int rc = 0;
    if (fseeko(f, start, SEEK_SET) != 0) {
        rc = util_error(err, errlen, "cannot read audit file '%s/%s': %s", w->dir, names[file],
                        strerror(errno));
    } else {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        off_t off = start;
        while ((n = getline(&line, &cap, f)) > 0) {
            scan_line(w, t, file, off, line, (size_t)n);
            off += n;
        }
        if (ferror(f))
            rc = util_error(err, errlen, "cannot read audit file '%s/%s': %s", w->dir, names[file],
                            strerror(errno));
        free(line);
    }
    fclose(f);
    return rc;
}

/* Seal the damaged tail of names[file]: "\n" if missing, then a repair
 * record, in one write; the head moves to the repair record. */
static int seal_damage(audit_writer *w, tail_scan *t, const char *name, int64_t now_ms, char *err,
                       size_t errlen)
{
    int64_t bytes = t->damage_bytes;
    if (t->damage_unterminated) {
        hasher_add(&w->damage, "\n", 1);
        bytes++;
    }
    char sha[HEX + 1];
    hasher_end(&w->damage, sha);
    char value[160];
    int vlen =
        snprintf(value, sizeof(value), "{\"bytes\":%" PRId64 ",\"sha256\":\"%s\"}", bytes, sha);
    int64_t logged = now_ms > w->head.logged_ms ? now_ms : w->head.logged_ms;
    char ts[EVENT_TIME_LEN + 1];
    event_format_time(logged, ts);
    w->len = 0;
    if (t->damage_unterminated) {
        buf_reserve(w, 1);
        buf_add(w, "\n", 1);
    }
    add_line(w, ts, logged, "repair", value, (size_t)vlen);
    int fd = openat(w->dirfd, name, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        return util_error(err, errlen, "cannot open audit file '%s/%s': %s", w->dir, name,
                          strerror(errno));
    int rc = write_all(fd, w->buf, w->len, name, err, errlen);
    if (rc == 0 && fdatasync(fd) != 0)
        rc = util_error(err, errlen, "cannot sync audit file '%s/%s': %s", w->dir, name,
                        strerror(errno));
    close(fd);
    w->len = 0;
    if (rc == 0) {
        w->repairs++;
        LOG_WARN("audit log: %" PRId64 " damaged bytes at the end of '%s/%s' (a write cut short "
                 "by a crash) sealed with repair record seq %" PRId64,
                 bytes, w->dir, name, w->head.seq);
    }
    return rc;
}

static int terminate_line(audit_writer *w, const char *name, char *err, size_t errlen)
{
    int fd = openat(w->dirfd, name, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        return util_error(err, errlen, "cannot open audit file '%s/%s': %s", w->dir, name,
                          strerror(errno));
    int rc = write_all(fd, "\n", 1, name, err, errlen);
    if (rc == 0 && fdatasync(fd) != 0)
        rc = util_error(err, errlen, "cannot sync audit file '%s/%s': %s", w->dir, name,
                        strerror(errno));
    close(fd);
    return rc;
}

/* Read the tail of the log: head, recent ids, damage (see the top). */
static int writer_recover(audit_writer *w, int64_t now_ms, char *err, size_t errlen)
{
    writer_close_file(w);
    w->len = 0;
    w->recovered = 0;
    head_init(&w->head);
    ids_clear(&w->ids);
    char **names = NULL;
    size_t n = 0;
    if (list_files(w->dirfd, w->dir, &names, &n, err, errlen) != 0)
        return -1;
    int rc = -1;
    off_t *starts = xcalloc(n ? n : 1, sizeof(*starts));
    size_t first = n, newest = n;
    size_t need = w->ids.cap;
    for (size_t i = n; i-- > 0;) {
        int fd = openat(w->dirfd, names[i], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            util_error(err, errlen, "cannot read audit file '%s/%s': %s", w->dir, names[i],
                       strerror(errno));
            if (fd >= 0)
                close(fd);
            goto out;
        }
        first = i;
        if (st.st_size == 0) {
            close(fd);
            continue;
        }
        if (newest == n)
            newest = i;
        size_t found;
        int trc = tail_start(fd, st.st_size, need, &starts[i], &found);
        close(fd);
        if (trc != 0) {
            util_error(err, errlen, "cannot read audit file '%s/%s'", w->dir, names[i]);
            goto out;
        }
        if (found >= need)
            break;
        need -= found;
    }
    tail_scan t;
    memset(&t, 0, sizeof(t));
    for (size_t i = first; i < n; i++)
        if (scan_file(w, &t, names, i, starts[i], err, errlen) != 0)
            goto out;
    int whole_log = first == 0 && (n == 0 || starts[0] == 0);
    if (t.bad) {
        util_error(err, errlen,
                   "audit file '%s/%s' (byte %lld): %s; not writing after a damaged line: run "
                   "'herald audit verify'",
                   w->dir, names[t.bad_file], (long long)t.bad_off, t.bad_why);
        goto out;
    }
    if (newest < n && !t.have_valid && !whole_log) {
        util_error(err, errlen,
                   "no valid line among the last %zu lines of the audit log in '%s': run "
                   "'herald audit verify'",
                   w->ids.cap, w->dir);
        goto out;
    }
    if (t.in_damage &&
        (t.damage_multi || t.damage_file != newest || (t.have_valid && t.last_unterminated))) {
        util_error(err, errlen,
                   "audit file '%s/%s' (byte %lld): damaged lines that are not the tail of the "
                   "newest file: run 'herald audit verify'",
                   w->dir, names[t.damage_file], (long long)t.damage_off);
        goto out;
    }
    if (t.have_valid) {
        w->head.seq = t.last.seq;
        memcpy(w->head.hash, t.last.hash, HEX + 1);
        w->head.logged_ms = t.last.logged_ms;
    }
    if (t.in_damage) {
        if (seal_damage(w, &t, names[newest], now_ms, err, errlen) != 0)
            goto out;
    } else if (t.have_valid && t.last_unterminated) {
        if (terminate_line(w, names[t.last_file], err, errlen) != 0)
            goto out;
    }
    off_t newest_size = 0;
    if (newest < n) {
        struct stat st;
        if (fstatat(w->dirfd, names[newest], &st, 0) == 0)
            newest_size = st.st_size;
    }
    writer_snapshot(w, newest < n ? names[newest] : NULL, newest_size);
    w->recovered = 1;
    LOG_DEBUG("audit log '%s': chain head seq %" PRId64 ", %zu recent ids", w->dir, w->head.seq,
              w->ids.count);
    rc = 0;
out:
    free(starts);
    free_names(names, n);
    return rc;
}

/* Start a batch: lock the directory, re-read the tail if needed. */
static int writer_begin(audit_writer *w, int64_t now_ms, char *err, size_t errlen)
{
    int64_t deadline = util_monotonic_ns() + (int64_t)LOCK_WAIT_MS * 1000000;
    while (flock(w->dirfd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK)
            return util_error(err, errlen, "cannot lock audit directory '%s': %s", w->dir,
                              strerror(errno));
        if (util_monotonic_ns() > deadline)
            return util_error(err, errlen,
                              "audit directory '%s' is locked by another process (another "
                              "audit agent writing?)",
                              w->dir);
        util_sleep_us(10000);
    }
    w->locked = 1;
    if (w->recovered && !writer_stale(w))
        return 0;
    return writer_recover(w, now_ms, err, errlen);
}

static void writer_unlock(audit_writer *w)
{
    if (w->locked)
        flock(w->dirfd, LOCK_UN);
    w->locked = 0;
}

static int writer_fail(audit_writer *w, const char *msg)
{
    if (!w->failed)
        util_strlcpy(w->fail_msg, msg, sizeof(w->fail_msg));
    w->failed = 1;
    return AUDIT_FAILED;
}

/* Open the file of day `ts` (first 10 characters), writing out and syncing
 * the previous day's file first. */
static int switch_file(audit_writer *w, const char *ts, char *err, size_t errlen)
{
    if (w->fd >= 0) {
        if (write_out(w, err, errlen) != 0)
            return -1;
        if (w->fd_dirty && fdatasync(w->fd) != 0)
            return util_error(err, errlen, "cannot sync audit file '%s/%s': %s", w->dir, w->name,
                              strerror(errno));
        w->fd_dirty = 0;
        writer_close_file(w);
    }
    char name[FILE_NAME_LEN + 1];
    snprintf(name, sizeof(name), "audit-%.10s.jsonl", ts);
    w->fd = openat(w->dirfd, name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (w->fd < 0)
        return util_error(err, errlen, "cannot open audit file '%s/%s': %s", w->dir, name,
                          strerror(errno));
    memcpy(w->name, name, sizeof(name));
    w->dir_dirty = 1; /* it may be new: make its directory entry durable */
    return 0;
}

static int is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The event text to embed: the received bytes, trimmed, or a compact
 * re-encoding when they span lines (*owned is then malloc'd). */
static int event_text(const char *json, size_t len, const char **text, size_t *tlen, char **owned,
                      char *err, size_t errlen)
{
    size_t b = 0, e = len;
    while (b < e && is_json_space(json[b]))
        b++;
    while (e > b && is_json_space(json[e - 1]))
        e--;
    if (e - b < 2 || json[b] != '{' || json[e - 1] != '}')
        return util_error(err, errlen, "the event is not a JSON object");
    *owned = NULL;
    if (!memchr(json + b, '\n', e - b) && !memchr(json + b, '\r', e - b) &&
        !memchr(json + b, '\0', e - b)) {
        *text = json + b;
        *tlen = e - b;
        return 0;
    }
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return util_error(err, errlen, "the event is not a JSON object");
    }
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s)
        return util_error(err, errlen, "cannot encode the event");
    *owned = s;
    *text = s;
    *tlen = strlen(s);
    return 0;
}

audit_writer *audit_writer_open(const char *dir, size_t recent_ids, char *err, size_t errlen)
{
    if (!dir || !*dir) {
        util_error(err, errlen, "empty audit directory name");
        return NULL;
    }
    if (util_mkdir_p(dir) != 0) {
        util_error(err, errlen, "cannot create audit directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        util_error(err, errlen, "cannot open audit directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    audit_writer *w = xcalloc(1, sizeof(*w));
    w->dir = xstrdup(dir);
    w->dirfd = dirfd;
    w->fd = -1;
    head_init(&w->head);
    hasher_init(&w->hash);
    hasher_init(&w->damage);
    ids_init(&w->ids, recent_ids ? recent_ids : AUDIT_RECENT_IDS);
    return w;
}

int audit_writer_append(audit_writer *w, const char *event_id, const char *json, size_t len,
                        int64_t now_ms, char *err, size_t errlen)
{
    if (w->failed) {
        util_error(err, errlen, "%s", w->fail_msg);
        return AUDIT_FAILED;
    }
    if (!w->locked && writer_begin(w, now_ms, err, errlen) != 0)
        return writer_fail(w, err);
    if (!event_id || strlen(event_id) != EVENT_UUID_LEN) {
        util_error(err, errlen, "the event has no valid event_id");
        return AUDIT_BAD_EVENT;
    }
    if (ids_contains(&w->ids, event_id))
        return AUDIT_DUPLICATE;
    const char *text = NULL;
    size_t tlen = 0;
    char *owned = NULL;
    if (event_text(json, len, &text, &tlen, &owned, err, errlen) != 0)
        return AUDIT_BAD_EVENT;
    int64_t logged = now_ms > w->head.logged_ms ? now_ms : w->head.logged_ms;
    char ts[EVENT_TIME_LEN + 1];
    event_format_time(logged, ts);
    if ((w->fd < 0 || memcmp(ts, w->name + 6, 10) != 0) && switch_file(w, ts, err, errlen) != 0) {
        free(owned);
        return writer_fail(w, err);
    }
    add_line(w, ts, logged, "event", text, tlen);
    free(owned);
    ids_add(&w->ids, event_id);
    if (w->len >= WRITE_AT && write_out(w, err, errlen) != 0)
        return writer_fail(w, err);
    return AUDIT_APPENDED;
}

int audit_writer_flush(audit_writer *w, char *err, size_t errlen)
{
    if (w->failed) {
        util_error(err, errlen, "%s", w->fail_msg);
        goto reset;
    }
    if (!w->locked)
        return 0; /* nothing was appended in this batch */
    if (w->len && write_out(w, err, errlen) != 0)
        goto reset;
    if (w->fd >= 0 && w->fd_dirty && fdatasync(w->fd) != 0) {
        util_error(err, errlen, "cannot sync audit file '%s/%s': %s", w->dir, w->name,
                   strerror(errno));
        goto reset;
    }
    w->fd_dirty = 0;
    if (w->dir_dirty && fsync(w->dirfd) != 0) {
        util_error(err, errlen, "cannot sync audit directory '%s': %s", w->dir, strerror(errno));
        goto reset;
    }
    w->dir_dirty = 0;
    if (w->fd >= 0) {
        struct stat st;
        writer_snapshot(w, w->name, fstat(w->fd, &st) == 0 ? st.st_size : -1);
    } else {
        struct stat st;
        if (w->snap_name[0] && fstatat(w->dirfd, w->snap_name, &st, 0) == 0)
            writer_snapshot(w, w->snap_name, st.st_size);
        else
            writer_snapshot(w, w->snap_name, w->snap_size);
    }
    writer_unlock(w);
    return 0;
reset:
    /* forget what we believed about the file: the next batch reads it again */
    w->failed = 0;
    w->recovered = 0;
    w->len = 0;
    w->fd_dirty = 0;
    writer_close_file(w);
    writer_unlock(w);
    return -1;
}

void audit_writer_head(const audit_writer *w, audit_head *out)
{
    *out = w->head;
}

uint64_t audit_writer_repairs(const audit_writer *w)
{
    return w->repairs;
}

void audit_writer_close(audit_writer *w)
{
    if (!w)
        return;
    writer_close_file(w);
    writer_unlock(w);
    close(w->dirfd);
    hasher_release(&w->hash);
    hasher_release(&w->damage);
    ids_release(&w->ids);
    free(w->buf);
    free(w->dir);
    free(w);
}

/* ---- verifier --------------------------------------------------------- */

typedef struct verifier {
    const char *dir;
    char **names;
    size_t n;
    audit_verify_report *rep;
    hasher hash, damage;
    int64_t expect; /* seq of the next line */
    audit_head last;
    /* unparsable bytes waiting for their repair record */
    int pending;
    char pend_file[64];
    uint64_t pend_line;
    char pend_why[400];
    int64_t pend_bytes;
} verifier;

static int problem(verifier *v, const char *file, uint64_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int problem(verifier *v, const char *file, uint64_t line, const char *fmt, ...)
{
    util_strlcpy(v->rep->bad_file, file, sizeof(v->rep->bad_file));
    v->rep->bad_line = line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->rep->problem, sizeof(v->rep->problem), fmt, ap);
    va_end(ap);
    return 1;
}

/* Look for a line with lo <= seq <= hi in the rest of the log, starting
 * with the rest of f (file `file`, positioned after line line_no). */
static int find_seq(verifier *v, size_t file, FILE *f, uint64_t line_no, int64_t lo, int64_t hi,
                    size_t *found_file, uint64_t *found_line)
{
    char *line = NULL;
    size_t cap = 0;
    int found = 0;
    for (size_t i = file; i < v->n && !found; i++) {
        FILE *cur = f;
        if (i != file) {
            char path[4200];
            snprintf(path, sizeof(path), "%s/%s", v->dir, v->names[i]);
            cur = fopen(path, "re");
            if (!cur)
                continue;
            line_no = 0;
        }
        ssize_t got;
        while (!found && (got = getline(&line, &cap, cur)) > 0) {
            line_no++;
            json_t *root = json_loadb(line, (size_t)got, 0, NULL);
            json_t *seq = json_object_get(root, "seq");
            if (json_is_integer(seq) && json_integer_value(seq) >= lo &&
                json_integer_value(seq) <= hi) {
                found = 1;
                *found_file = i;
                *found_line = line_no;
            }
            json_decref(root);
        }
        if (i != file)
            fclose(cur);
    }
    free(line);
    return found;
}

/* seq, prev and logged_at of a valid line against the chain so far. */
static int check_chain(verifier *v, size_t file, FILE *f, uint64_t line_no, const line_info *li)
{
    const char *name = v->names[file];
    int64_t expect = v->expect;
    if (li->seq > expect) {
        size_t ffile = 0;
        uint64_t fline = 0;
        if (find_seq(v, file, f, line_no, expect, li->seq - 1, &ffile, &fline))
            return problem(v, name, line_no,
                           "out of order: seq %" PRId64 " comes before seq %" PRId64
                           " (which is at %s line %" PRIu64 "): lines were reordered",
                           li->seq, expect, v->names[ffile], fline);
        if (expect == 1)
            return problem(v, name, line_no,
                           "the chain starts at seq %" PRId64 ", not 1: the first %" PRId64
                           " line(s) were deleted (lines or whole files)",
                           li->seq, li->seq - 1);
        return problem(v, name, line_no,
                       "gap: seq %" PRId64 " follows seq %" PRId64 ": %" PRId64
                       " line(s) missing (deleted)",
                       li->seq, expect - 1, li->seq - expect);
    }
    if (li->seq < expect)
        return problem(v, name, line_no,
                       "out of order: seq %" PRId64 " after seq %" PRId64
                       ": this line was moved, copied or inserted here",
                       li->seq, expect - 1);
    if (strcmp(li->prev, v->last.hash) != 0)
        return problem(v, name, line_no,
                       expect == 1 ? "the first line does not start the chain (its prev is not "
                                     "64 zeros)"
                                   : "chain broken: prev does not match the hash of the line "
                                     "before: one of the two lines was replaced");
    if (li->kind == LINE_EVENT && memcmp(li->logged_at, name + 6, 10) != 0)
        return problem(v, name, line_no,
                       "logged_at %s belongs in audit-%.10s.jsonl: the line was moved between "
                       "files",
                       li->logged_at, li->logged_at);
    if (li->logged_ms < v->last.logged_ms)
        return problem(v, name, line_no, "logged_at %s is earlier than the line before's",
                       li->logged_at);
    v->expect = li->seq + 1;
    v->last.seq = li->seq;
    memcpy(v->last.hash, li->hash, HEX + 1);
    v->last.logged_ms = li->logged_ms;
    if (li->kind == LINE_EVENT)
        v->rep->events++;
    return 0;
}

static int verify_line(verifier *v, size_t file, FILE *f, uint64_t line_no, const char *line,
                       size_t n)
{
    const char *name = v->names[file];
    v->rep->lines++;
    int has_nl = line[n - 1] == '\n';
    line_info li;
    classify(&v->hash, line, n - (size_t)has_nl, &li);
    if (!has_nl || li.kind == LINE_NOT_JSON) {
        if (!v->pending) {
            v->pending = 1;
            util_strlcpy(v->pend_file, name, sizeof(v->pend_file));
            v->pend_line = line_no;
            if (!has_nl)
                snprintf(v->pend_why, sizeof(v->pend_why),
                         "the file ends in the middle of a line (no newline at the end): a "
                         "write cut short by a crash, or the file was cut");
            else
                snprintf(v->pend_why, sizeof(v->pend_why), "%s: the line was damaged or edited",
                         li.why);
            v->pend_bytes = 0;
            hasher_begin(&v->damage);
        }
        hasher_add(&v->damage, line, n);
        v->pend_bytes += (int64_t)n;
        return 0;
    }
    if (v->pending) {
        char sha[HEX + 1];
        hasher_end(&v->damage, sha);
        if (li.kind != LINE_REPAIR || li.repair_bytes != v->pend_bytes ||
            strcmp(sha, li.repair_sha) != 0)
            return problem(v, v->pend_file, v->pend_line, "%s", v->pend_why);
        v->pending = 0;
        if (v->rep->repairs++ == 0) {
            util_strlcpy(v->rep->repair_file, v->pend_file, sizeof(v->rep->repair_file));
            v->rep->repair_line = v->pend_line;
        }
    } else if (li.kind == LINE_REPAIR) {
        return problem(v, name, line_no,
                       "a repair record without damaged bytes before it: inserted, or the "
                       "damaged bytes were removed");
    }
    if (li.kind == LINE_INVALID)
        return problem(v, name, line_no, "%s", li.why);
    return check_chain(v, file, f, line_no, &li);
}

int audit_verify(const char *dir, audit_verify_report *rep, char *err, size_t errlen)
{
    memset(rep, 0, sizeof(*rep));
    head_init(&rep->head);
    verifier v;
    memset(&v, 0, sizeof(v));
    if (list_files(-1, dir, &v.names, &v.n, err, errlen) != 0)
        return -1;
    v.dir = dir;
    v.rep = rep;
    v.expect = 1;
    head_init(&v.last);
    hasher_init(&v.hash);
    hasher_init(&v.damage);
    int rc = 0;
    char *line = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < v.n && rc == 0; i++) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s", dir, v.names[i]);
        FILE *f = fopen(path, "re");
        if (!f) {
            rc = util_error(err, errlen, "cannot open audit file '%s': %s", path, strerror(errno));
            break;
        }
        rep->files++;
        uint64_t line_no = 0;
        ssize_t got;
        while (rc == 0 && (got = getline(&line, &cap, f)) > 0)
            rc = verify_line(&v, i, f, ++line_no, line, (size_t)got);
        if (rc == 0 && ferror(f))
            rc = util_error(err, errlen, "cannot read audit file '%s': %s", path, strerror(errno));
        fclose(f);
        if (rc == 0 && v.pending)
            rc = problem(&v, v.pend_file, v.pend_line, "%s", v.pend_why);
    }
    rep->head = v.last;
    free(line);
    hasher_release(&v.hash);
    hasher_release(&v.damage);
    free_names(v.names, v.n);
    return rc;
}
