/*
 * audit_log.h - the audit log: daily JSONL files with one hash-chained line
 * per event, an append-only writer that survives crashes, and the verifier
 * behind `herald audit verify`.
 *
 * FORMAT
 *
 * Files: AUDIT_DIR/audit-YYYY-MM-DD.jsonl, the UTC date of the logged_at of
 * the lines inside. Read in name order (= date order) they form ONE chain:
 * the first line of a day's file links to the last line of the previous
 * file. Other names in the directory are ignored. Each line ends with "\n"
 * and is one compact JSON object with its keys in this order:
 *
 *   {"logged_at":"2025-01-15T14:30:22.456Z","event":{...},"seq":42,
 *    "prev":"<64 hex>","hash":"<64 hex>"}
 *
 *   logged_at  when the line was written, UTC, millisecond precision; never
 *              earlier than the line before (a clock stepping back is held
 *              at the last value), so its date also names the file.
 *   event      the event envelope exactly as it was received (the bytes of
 *              the bus record); re-encoded compactly only when the received
 *              text spanned lines.
 *   seq        1 for the first line ever, then +1 per line, across files.
 *   prev       the "hash" of the line before; 64 zeros for seq 1.
 *   hash       lowercase hex SHA-256 of the line's own bytes from its "{"
 *              up to, not including, the ',"hash":' member, which is always
 *              last: a line ends with ,"hash":"<64 hex>"} and "\n".
 *
 * Because each hash covers seq and prev, editing any byte of a line breaks
 * its hash; deleting, inserting or reordering lines breaks seq and prev of
 * the next line; removing or cutting a day file breaks the first line of the
 * next file (or, for the first file, seq 1). Limits: the chain has no secret
 * key, so whoever can write the files can also recompute every hash after
 * an edit, and cutting lines off the END of the newest file leaves a shorter
 * valid chain. verify prints the head (last seq and hash): keep it elsewhere
 * to detect both.
 *
 * Repair records. A crash can cut the last write short (kill -9 between two
 * pages of a write(2), power loss before the fsync): the newest file then
 * ends in bytes that are not a line. Files are append-only, so the writer
 * never truncates; when it starts it seals such a tail instead: it appends
 * "\n" if the tail lacks one, then a repair record in the same file,
 *
 *   {"logged_at":"...","repair":{"bytes":N,"sha256":"<64 hex>"},"seq":43,
 *    "prev":"<hash of the last valid line>","hash":"<64 hex>"}
 *
 * where N and sha256 describe the damaged bytes between the last valid line
 * and the repair record (including their final "\n"). Only bytes that do not
 * even parse as JSON are sealed: a torn write is always a strict prefix of a
 * line, while an edited line still parses, and the writer refuses to extend
 * a chain whose last line is an edited one. The events of the damaged bytes
 * were not committed, so they are delivered and logged again after the
 * repair record. verify accepts sealed damage and reports it; a repair
 * record's logged_at may be later than its file's date.
 *
 * Threads: an audit_writer is used by one thread. Several processes may
 * open writers on the same directory (a standby agent): each batch holds an
 * exclusive flock(2) on the directory from its first append to the end of
 * its flush, and a writer re-reads the tail when the directory changed
 * since its own last flush.
 */
#ifndef HERALD_AUDIT_LOG_H
#define HERALD_AUDIT_LOG_H

#include <stddef.h>
#include <stdint.h>

/* Length of a hash in hex. */
#define AUDIT_HASH_HEX_LEN 64
/* Default number of recent event ids a writer remembers (see below). */
#define AUDIT_RECENT_IDS 12000

/* The end of the chain: what the next line links to. */
typedef struct audit_head {
    int64_t seq;                       /* of the last line; 0: empty log */
    char hash[AUDIT_HASH_HEX_LEN + 1]; /* its hash; 64 '0' when empty */
    int64_t logged_ms;                 /* its logged_at; INT64_MIN when empty */
} audit_head;

/* ---- writer ----------------------------------------------------------- */

typedef struct audit_writer audit_writer;

/*
 * Create the directory (and parents) if needed and return a writer for it.
 * Nothing is read or locked yet: the first append of a batch locks the
 * directory and, the first time or when another process wrote since, reads
 * the tail of the newest files: the chain head, the event ids of the last
 * recent_ids lines (0: AUDIT_RECENT_IDS) and damage to seal. Returns NULL
 * with err filled.
 */
audit_writer *audit_writer_open(const char *dir, size_t recent_ids, char *err, size_t errlen);

enum {
    AUDIT_APPENDED = 0,  /* the line is buffered (or already written) */
    AUDIT_DUPLICATE = 1, /* event_id is among the recent lines: nothing added */
    AUDIT_FAILED = -1,   /* I/O error (err filled): this batch's flush will fail */
    AUDIT_BAD_EVENT = -2 /* json is not one JSON object (err filled); nothing added */
};

/*
 * Add the line of one event: event_id (borrowed, from the decoded envelope)
 * and json[len], the envelope as received. now_ms is the wall clock
 * (logged_at is max(now_ms, the last line's logged_at)). Lines are buffered
 * and written with as few write(2)s as possible: when the buffer passes
 * 1 MiB, when the date changes (the old file is written and synced first),
 * and by audit_writer_flush(). Returns one of the codes above. After
 * AUDIT_FAILED every further append of the batch fails fast; the caller
 * finishes the batch and its flush reports the failure.
 */
int audit_writer_append(audit_writer *w, const char *event_id, const char *json, size_t len,
                        int64_t now_ms, char *err, size_t errlen);

/*
 * End a batch: write the buffered lines, fdatasync the file (and fsync the
 * directory when a file was created) and release the directory lock.
 * Returns 0, or -1 with err filled when this or any append of the batch
 * failed; then none of the batch may be treated as logged, and the next
 * append reads the tail again (lines that did reach the file are found
 * there and skipped as duplicates).
 */
int audit_writer_flush(audit_writer *w, char *err, size_t errlen);

/* The chain head as the writer knows it (seq 0 before the first append). */
void audit_writer_head(const audit_writer *w, audit_head *out);

/* Damaged tails this writer sealed with a repair record so far. */
uint64_t audit_writer_repairs(const audit_writer *w);

/* Close the files and release the lock. Buffered lines that were not
 * flushed are dropped (their batch was not committed). NULL is a no-op. */
void audit_writer_close(audit_writer *w);

/* ---- verifier --------------------------------------------------------- */

typedef struct audit_verify_report {
    size_t files;     /* audit-*.jsonl files read */
    uint64_t lines;   /* lines read (event lines, repair records, sealed damage) */
    uint64_t events;  /* event lines */
    uint64_t repairs; /* sealed damaged tails */
    audit_head head;  /* the last valid line */
    /* the first sealed damage (repairs > 0) */
    char repair_file[64];
    uint64_t repair_line;
    /* the first problem (audit_verify() returned 1) */
    char bad_file[64]; /* file name inside the directory */
    uint64_t bad_line; /* 1-based line number in that file */
    char problem[512]; /* what is wrong, e.g. "hash mismatch: ..." */
} audit_verify_report;

/*
 * Check every audit file of dir in date order and the chain across them.
 * Returns 0 when intact (report filled), 1 at the first bad line (bad_file,
 * bad_line and problem say which and what: an edited line is a hash
 * mismatch, a deleted one a gap in seq, a moved or inserted one a seq out
 * of order or a broken prev, a cut file a line without its newline or a
 * gap at the start of the next file, ...), or -1 with err filled when the
 * directory or a file cannot be read.
 */
int audit_verify(const char *dir, audit_verify_report *report, char *err, size_t errlen);

#endif
