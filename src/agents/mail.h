/*
 * mail.h - one plain-text mail: composition (RFC 5322 + MIME), sending over
 * SMTP with libcurl, or writing it as an .eml file.
 *
 * Composition never lets user text shape the message: every header value is
 * sanitized first (CR, LF and every other control character become a
 * space, invalid UTF-8 becomes U+FFFD), a non-ASCII or over-long subject is
 * written as RFC 2047 encoded words folded to 78 columns, addresses are
 * checked against the RFC 5322 dot-atom syntax before they are used, and
 * the body is sent as 7bit when it can be and quoted-printable otherwise.
 * The result has CRLF line endings and is not dot-stuffed: libcurl does the
 * SMTP transparency itself (a line starting with "." is sent as "..").
 *
 * Ownership: the functions below borrow their arguments; returned strings
 * are malloc'd and freed by the caller with free().
 */
#ifndef HERALD_MAIL_H
#define HERALD_MAIL_H

#include <stddef.h>
#include <stdint.h>

/* Longest address (RFC 5321 path limit) and local part. */
#define MAIL_ADDRESS_MAX 254
#define MAIL_LOCAL_MAX 64
/* Text length of an RFC 5322 date: "Wed, 15 Jan 2025 14:30:22 +0000". */
#define MAIL_DATE_LEN 31
/* Longest server reply kept by mail_smtp_send(). */
#define MAIL_REPLY_MAX 512

/* ---- addresses -------------------------------------------------------- */

/*
 * Check a local part: an RFC 5322 dot-atom (letters, digits and
 * !#$%&'*+-/=?^_`{|}~, with single dots between them), 1..MAIL_LOCAL_MAX
 * characters. Returns 0, or -1 with err naming the first bad character.
 */
int mail_local_part_check(const char *local, char *err, size_t errlen);

/*
 * Check a domain: dot-separated labels of letters, digits and '-' (not at
 * a label's ends), each 1..63 characters, 1..253 in all. Returns 0 or -1.
 */
int mail_domain_check(const char *domain, char *err, size_t errlen);

/* Check "local@domain" with the two rules above (split at the last '@'). */
int mail_address_check(const char *address, char *err, size_t errlen);

/*
 * Build "local@domain" into out after checking both parts; never builds an
 * address from a local part it would have to alter. Returns 0, or -1 with
 * err filled (out is then empty).
 */
int mail_address_build(const char *local, const char *domain, char out[MAIL_ADDRESS_MAX + 1],
                       char *err, size_t errlen);

/* ---- text ------------------------------------------------------------- */

/*
 * A copy of the UTF-8 text s fit for one header or body line: CR, LF, TAB
 * and every other control character (C0, DEL, C1) and the Unicode line and
 * paragraph separators become a space; invalid UTF-8 becomes U+FFFD.
 * Caller frees.
 */
char *mail_sanitize_line(const char *s);

/*
 * As mail_sanitize_line() but for multi-line text: CRLF, CR and LF become
 * "\n" and TAB is kept; every other control character becomes a space.
 */
char *mail_sanitize_text(const char *s);

/* Format ms since the epoch (UTC) as an RFC 5322 date. */
void mail_format_date(int64_t ms, char out[MAIL_DATE_LEN + 1]);

/*
 * One header field, "Name: value" ending in CRLF, folded to 78 columns.
 * value is sanitized; if it holds non-ASCII text, "=?" or a word too long
 * to fold, it is written as RFC 2047 "=?UTF-8?B?...?=" words of whole
 * characters. name must be printable ASCII without ':' or spaces.
 * Caller frees.
 */
char *mail_header_field(const char *name, const char *value);

/* ---- composition ------------------------------------------------------ */

typedef struct mail_message {
    const char *from;       /* address, checked */
    const char *to;         /* address, checked */
    const char *subject;    /* any UTF-8 text; sanitized and encoded */
    const char *body;       /* any UTF-8 text; line ends normalized to CRLF */
    const char *message_id; /* "<left@right>", printable ASCII without spaces */
    int64_t date_ms;        /* the Date header */
} mail_message;

/* clang-format off */
#define MAIL_MESSAGE_INIT { NULL, NULL, NULL, NULL, NULL, 0 }
/* clang-format on */

/*
 * Compose the whole message (headers, blank line, body; CRLF line ends).
 * Returns a malloc'd NUL-terminated string (*len_out its length, may be
 * NULL), or NULL with err filled when an address or the Message-ID is
 * invalid.
 */
char *mail_compose(const mail_message *m, size_t *len_out, char *err, size_t errlen);

/* ---- delivery --------------------------------------------------------- */

/* What became of one mail. */
typedef enum mail_result {
    MAIL_SENT = 0,  /* the server accepted it (or the file was written) */
    MAIL_TEMPORARY, /* 4xx reply, connection error, timeout: try again later */
    MAIL_PERMANENT  /* 5xx reply or a bad configuration: do not try again */
} mail_result;

typedef struct mail_smtp_config {
    const char *url;      /* smtp://host[:port][/ehlo-name] or smtps://... */
    const char *user;     /* NULL: no AUTH */
    const char *password; /* with user */
    int64_t timeout_ms;   /* the whole exchange of one mail; 0: none */
} mail_smtp_config;

/* clang-format off */
#define MAIL_SMTP_CONFIG_INIT { NULL, NULL, NULL, 30000 }
/* clang-format on */

/* An SMTP client: one libcurl handle whose connection is kept between mails. */
typedef struct mail_smtp mail_smtp;

/*
 * Open a client for cfg (strings are copied). Only smtp:// and smtps://
 * URLs are accepted. smtp:// upgrades with STARTTLS when the server offers
 * it; smtps:// is TLS from the start. Nothing is connected yet. Returns
 * NULL with err filled on a bad URL.
 */
mail_smtp *mail_smtp_open(const mail_smtp_config *cfg, char *err, size_t errlen);

/*
 * Send data (a composed message, len bytes) from `from` to `to`. Blocks
 * for at most the configured timeout. reply[replylen] receives the
 * server's last reply line ("250 OK ...", control characters replaced) or
 * "" when there was none. On failure err says why, naming the SMTP code
 * when there was one. Not thread-safe: one thread per client.
 */
mail_result mail_smtp_send(mail_smtp *s, const char *from, const char *to, const char *data,
                           size_t len, char *reply, size_t replylen, char *err, size_t errlen);

/* Close the connection and free the client. NULL is a no-op. */
void mail_smtp_close(mail_smtp *s);

/*
 * A mail spool: a directory of .eml files, written one by one and made
 * durable in groups. mail_spool_write() puts dir/<name>.eml in place at
 * once (a temporary file renamed over any earlier file of that name, so
 * writing the same mail twice leaves one file, and a reader never sees a
 * half-written one); mail_spool_sync() then fsyncs every file written since
 * the last sync and the directory, once. A caller that reports a mail as
 * written only after the sync (the email agent: in the runtime's
 * before_commit hook) pays one directory fsync per batch, not per mail.
 * One thread at a time.
 */
typedef struct mail_spool mail_spool;

/* Open (creating it and its parents if missing) the spool directory dir,
 * removing the temporary files of writers that died before their rename.
 * Returns NULL with err filled on failure. */
mail_spool *mail_spool_open(const char *dir, char *err, size_t errlen);

/*
 * Write data (len bytes) as <dir>/<name>.eml; name is 1..128 of
 * [A-Za-z0-9._-] and does not start with '.'. path[pathlen] receives the
 * file's path. Durable after the next mail_spool_sync(). Returns 0, or -1
 * with err filled (no file of that name was changed).
 */
int mail_spool_write(mail_spool *sp, const char *name, const char *data, size_t len, char *path,
                     size_t pathlen, char *err, size_t errlen);

/* Make every file written since the last sync durable (fsync of each, then
 * of the directory). Returns 0, or -1 with err filled (then call it again
 * or write the files again: nothing is known to be durable). */
int mail_spool_sync(mail_spool *sp, char *err, size_t errlen);

/* Sync nothing more; close the files and free. NULL is a no-op. */
void mail_spool_close(mail_spool *sp);

#endif
