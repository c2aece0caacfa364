/*
 * mail.c - see mail.h: compose one plain-text mail, send it with libcurl's
 * SMTP client or write it as an .eml file.
 *
 * Design. Composition works on sanitized text only: a header value passes
 * through mail_sanitize_line() before anything else looks at it, so no
 * character of user input can end a header line; the only CRLFs in the
 * header block are the ones this file writes (line ends and folds, each
 * fold followed by a space). A subject stays plain ASCII when it can be
 * folded at its spaces within 78 columns; otherwise (non-ASCII, "=?", a
 * very long word) the whole value becomes RFC 2047 B-encoded words of at
 * most 75 characters, each holding whole UTF-8 characters, one per line.
 * The body is 7bit when it is ASCII with lines of at most 998 bytes and
 * quoted-printable (RFC 2045 6.7, lines of at most 76) otherwise.
 *
 * Sending: libcurl speaks SMTP (EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA and
 * the dot-stuffing of the data: lines starting with "." are doubled by
 * libcurl itself, so this file must not do it). The server's reply text is
 * not part of libcurl's info API, so the client keeps the last reply line
 * seen by a debug callback (CURLINFO_HEADER_IN: the lines the server sent),
 * and the last 4xx/5xx line apart (after a refusal libcurl may still say
 * QUIT, and "221 Bye" must not hide the reason).
 * The code from CURLINFO_RESPONSE_CODE decides: 5xx is permanent, anything
 * else that failed (4xx, no reply, a timeout) is temporary.
 *
 * Metrics: each transaction's duration, and its failure by reason (4xx,
 * 5xx, transport), go to herald_smtp_* (metrics/catalog.h).
 *
 * Threads: composition is pure and thread-safe; a mail_smtp belongs to one
 * thread at a time. Ownership: see mail.h.
 */
#include "agents/mail.h"

#include "common/util.h"
#include "metrics/catalog.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <nettle/base64.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Longest header line we write (RFC 5322 2.1.1 recommends 78). */
#define LINE_SOFT 78
/* Longest encoded word (RFC 2047 2) and its fixed part "=?UTF-8?B?" "?=". */
#define WORD_MAX 75
#define WORD_FRAME 12
/* Longest line of a 7bit body (RFC 5322 2.1.1, without CRLF). */
#define LINE_HARD 998
/* Longest quoted-printable line before the soft break "=" (RFC 2045). */
#define QP_LINE 75

/* ---- a growing string ------------------------------------------------- */

typedef struct mbuf {
    char *p;
    size_t len, cap;
} mbuf;

static void mbuf_add(mbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void mbuf_adds(mbuf *b, const char *s)
{
    mbuf_add(b, s, strlen(s));
}

static void mbuf_addc(mbuf *b, char c)
{
    mbuf_add(b, &c, 1);
}

/* The string (never NULL, "" when nothing was added); the buffer is reset. */
static char *mbuf_detach(mbuf *b, size_t *len_out)
{
    if (!b->p)
        mbuf_add(b, "", 0);
    char *s = b->p;
    if (len_out)
        *len_out = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    return s;
}

/* ---- addresses -------------------------------------------------------- */

static int is_atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* A character for a message: printable ASCII as itself, others as \xNN. */
static void show_char(unsigned char c, char out[8])
{
    if (c > 0x20 && c < 0x7f)
        snprintf(out, 8, "'%c'", c);
    else
        snprintf(out, 8, "\\x%02x", c);
}

int mail_local_part_check(const char *local, char *err, size_t errlen)
{
    size_t n = strlen(local);
    if (n == 0)
        return util_error(err, errlen, "empty local part");
    if (n > MAIL_LOCAL_MAX)
        return util_error(err, errlen, "local part longer than %d characters", MAIL_LOCAL_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)local[i];
        if (c == '.') {
            if (i == 0 || i + 1 == n || local[i + 1] == '.')
                return util_error(err, errlen,
                                  "a '.' at the start or end of a local part, or two in a row");
            continue;
        }
        if (!is_atext(c)) {
            char shown[8];
            show_char(c, shown);
            return util_error(err, errlen,
                              "character %s at position %zu is not allowed in a "
                              "mail address's local part",
                              shown, i + 1);
        }
    }
    return 0;
}

int mail_domain_check(const char *domain, char *err, size_t errlen)
{
    size_t n = strlen(domain), label = 0;
    if (n == 0 || n > 253)
        return util_error(err, errlen, "a mail domain must have 1..253 characters");
    for (size_t i = 0; i <= n; i++) {
        unsigned char c = (unsigned char)domain[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || label > 63 || domain[i - 1] == '-')
                return util_error(err, errlen,
                                  "mail domain '%.253s' has an empty, too long or "
                                  "badly ended label",
                                  domain);
            label = 0;
            continue;
        }
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 (c == '-' && label > 0);
        if (!ok) {
            char shown[8];
            show_char(c, shown);
            return util_error(err, errlen, "character %s is not allowed in mail domain", shown);
        }
        label++;
    }
    return 0;
}

int mail_address_check(const char *address, char *err, size_t errlen)
{
    const char *at = strrchr(address, '@');
    if (!at)
        return util_error(err, errlen, "mail address without '@'");
    if (strlen(address) > MAIL_ADDRESS_MAX)
        return util_error(err, errlen, "mail address longer than %d characters", MAIL_ADDRESS_MAX);
    char local[MAIL_LOCAL_MAX + 2];
    size_t ln = (size_t)(at - address);
    if (ln > MAIL_LOCAL_MAX)
        return util_error(err, errlen, "local part longer than %d characters", MAIL_LOCAL_MAX);
    memcpy(local, address, ln);
    local[ln] = '\0';
    if (mail_local_part_check(local, err, errlen) != 0)
        return -1;
    return mail_domain_check(at + 1, err, errlen);
}

int mail_address_build(const char *local, const char *domain, char out[MAIL_ADDRESS_MAX + 1],
                       char *err, size_t errlen)
{
    out[0] = '\0';
    if (mail_local_part_check(local, err, errlen) != 0 ||
        mail_domain_check(domain, err, errlen) != 0)
        return -1;
    if (strlen(local) + 1 + strlen(domain) > MAIL_ADDRESS_MAX)
        return util_error(err, errlen, "mail address longer than %d characters", MAIL_ADDRESS_MAX);
    size_t ln = strlen(local), dn = strlen(domain);
    memcpy(out, local, ln);
    out[ln] = '@';
    memcpy(out + ln + 1, domain, dn + 1);
    return 0;
}

/* ---- text ------------------------------------------------------------- */

/* Length (1..4) of the valid UTF-8 sequence at s with its code point in
 * *cp, or 0 if s does not start one (overlong, surrogate, > U+10FFFF,
 * truncated). s is NUL-terminated. */
static size_t utf8_decode(const unsigned char *s, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xe0) == 0xc0) {
        n = 2, v = c & 0x1fu, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3, v = c & 0x0fu, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4, v = c & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3fu);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return n;
}

static char *sanitize(const char *s, int multiline)
{
    mbuf b = {0};
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t cp;
        size_t n = utf8_decode(p, &cp);
        if (n == 0) {
            mbuf_adds(&b, "\xef\xbf\xbd");
            p++;
            continue;
        }
        if (multiline && cp == '\r') {
            mbuf_addc(&b, '\n');
            p += p[1] == '\n' ? 2 : 1;
            continue;
        }
        if (multiline && (cp == '\n' || cp == '\t')) {
            mbuf_addc(&b, (char)cp);
        } else if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0) || cp == 0x2028 ||
                   cp == 0x2029) {
            mbuf_addc(&b, ' ');
        } else {
            mbuf_add(&b, (const char *)p, n);
        }
        p += n;
    }
    return mbuf_detach(&b, NULL);
}

char *mail_sanitize_line(const char *s)
{
    return sanitize(s, 0);
}

char *mail_sanitize_text(const char *s)
{
    return sanitize(s, 1);
}

void mail_format_date(int64_t ms, char out[MAIL_DATE_LEN + 1])
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : 0);
    struct tm tm;
    char buf[64];
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday],
             tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    util_strlcpy(out, buf, MAIL_DATE_LEN + 1);
}

/* 1 if v (trimmed, sanitized) can be written as plain folded text after
 * `col` columns: printable ASCII, no "=?" (it would read as an encoded
 * word), and every space-led word fits on a line of its own. */
static int plain_fits(const char *v, size_t col)
{
    if (strstr(v, "=?"))
        return 0;
    int first = 1;
    size_t tok = 0;
    for (const char *p = v;; p++) {
        if (*p == '\0' || (*p == ' ' && p > v && p[-1] != ' ')) {
            if (first ? col + tok > LINE_SOFT : tok > LINE_SOFT)
                return 0;
            if (*p == '\0')
                return 1;
            first = 0;
            tok = 0;
        }
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            return 0;
        tok++;
    }
}

/* Fold v at its spaces: a fold goes before a space-led word that would not
 * fit on the current line. */
static void add_plain(mbuf *b, const char *v, size_t col)
{
    const char *p = v;
    int first = 1;
    while (*p) {
        const char *end = p;
        while (*end == ' ')
            end++;
        while (*end && *end != ' ')
            end++;
        size_t n = (size_t)(end - p);
        if (!first && col + n > LINE_SOFT) {
            mbuf_adds(b, "\r\n");
            col = 0;
        }
        mbuf_add(b, p, n);
        col += n;
        first = 0;
        p = end;
    }
}

/* RFC 2047 B-encoded words of whole UTF-8 characters, one per line. */
static void add_encoded(mbuf *b, const char *v, size_t col)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t n = strlen(v);
    while (n > 0) {
        size_t room = col + WORD_FRAME < LINE_SOFT ? (LINE_SOFT - col - WORD_FRAME) / 4 * 3 : 0;
        if (room > (WORD_MAX - WORD_FRAME) / 4 * 3)
            room = (WORD_MAX - WORD_FRAME) / 4 * 3;
        if (room < 4) { /* not even one character fits after the name */
            mbuf_adds(b, "\r\n ");
            col = 1;
            continue;
        }
        size_t take = 0;
        while (take < n) {
            uint32_t cp;
            size_t k = utf8_decode(p + take, &cp);
            if (k == 0)
                k = 1; /* cannot happen after sanitize(); keep the byte */
            if (take + k > room)
                break;
            take += k;
        }
        unsigned char enc[4 * ((WORD_MAX - WORD_FRAME) / 4) + 8];
        base64_encode_raw((char *)enc, take, p);
        mbuf_adds(b, "=?UTF-8?B?");
        mbuf_add(b, (const char *)enc, BASE64_ENCODE_RAW_LENGTH(take));
        mbuf_adds(b, "?=");
        p += take;
        n -= take;
        if (n > 0) {
            mbuf_adds(b, "\r\n ");
            col = 1;
        }
    }
}

static void add_header(mbuf *b, const char *name, const char *value)
{
    char *v = mail_sanitize_line(value);
    /* trim: folding must never leave a line of only spaces */
    char *s = v, *e = v + strlen(v);
    while (*s == ' ')
        s++;
    while (e > s && e[-1] == ' ')
        *--e = '\0';
    mbuf_adds(b, name);
    mbuf_addc(b, ':');
    if (*s) {
        mbuf_addc(b, ' ');
        size_t col = strlen(name) + 2;
        if (plain_fits(s, col))
            add_plain(b, s, col);
        else
            add_encoded(b, s, col);
    }
    mbuf_adds(b, "\r\n");
    free(v);
}

char *mail_header_field(const char *name, const char *value)
{
    mbuf b = {0};
    add_header(&b, name, value);
    return mbuf_detach(&b, NULL);
}

/* ---- composition ------------------------------------------------------ */

static int message_id_check(const char *id, char *err, size_t errlen)
{
    size_t n = strlen(id);
    if (n < 5 || n > 250 || id[0] != '<' || id[n - 1] != '>' || !strchr(id, '@'))
        return util_error(err, errlen, "Message-ID '%.250s' is not of the form <left@right>", id);
    for (size_t i = 1; i + 1 < n; i++)
        if (id[i] <= 0x20 || id[i] >= 0x7f || id[i] == '<' || id[i] == '>')
            return util_error(err, errlen, "Message-ID has a space, control or bracket inside");
    return 0;
}

/* The body: 7bit if every line is ASCII without controls (TAB aside) and
 * at most LINE_HARD bytes, else quoted-printable. text is sanitized. */
static int body_needs_qp(const char *text)
{
    size_t line = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '\n') {
            line = 0;
            continue;
        }
        if (*p >= 0x7f || (*p < 0x20 && *p != '\t') || ++line > LINE_HARD)
            return 1;
    }
    return 0;
}

static void add_qp_line(mbuf *b, const char *line, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)line[i];
        int literal = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && i + 1 < n);
        size_t w = literal ? 1 : 3;
        if (col + w > QP_LINE) {
            mbuf_adds(b, "=\r\n");
            col = 0;
        }
        if (literal) {
            mbuf_addc(b, (char)c);
        } else {
            char hex[4];
            snprintf(hex, sizeof(hex), "=%02X", c);
            mbuf_add(b, hex, 3);
        }
        col += w;
    }
    mbuf_adds(b, "\r\n");
}

static void add_body(mbuf *b, const char *text, int qp)
{
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (qp) {
            add_qp_line(b, p, n);
        } else {
            mbuf_add(b, p, n);
            mbuf_adds(b, "\r\n");
        }
        p += n + (nl ? 1 : 0);
    }
}

char *mail_compose(const mail_message *m, size_t *len_out, char *err, size_t errlen)
{
    char why[256];
    if (!m->from || mail_address_check(m->from, why, sizeof(why)) != 0) {
        util_error(err, errlen, "bad sender address: %s", m->from ? why : "none");
        return NULL;
    }
    if (!m->to || mail_address_check(m->to, why, sizeof(why)) != 0) {
        util_error(err, errlen, "bad recipient address: %s", m->to ? why : "none");
        return NULL;
    }
    if (!m->message_id || message_id_check(m->message_id, err, errlen) != 0) {
        if (!m->message_id)
            util_error(err, errlen, "no Message-ID");
        return NULL;
    }
    char date[MAIL_DATE_LEN + 1];
    mail_format_date(m->date_ms, date);
    char *body = mail_sanitize_text(m->body ? m->body : "");
    int qp = body_needs_qp(body);

    mbuf b = {0};
    add_header(&b, "Date", date);
    add_header(&b, "From", m->from);
    add_header(&b, "To", m->to);
    add_header(&b, "Subject", m->subject ? m->subject : "");
    add_header(&b, "Message-ID", m->message_id);
    add_header(&b, "MIME-Version", "1.0");
    add_header(&b, "Content-Type", "text/plain; charset=UTF-8");
    add_header(&b, "Content-Transfer-Encoding", qp ? "quoted-printable" : "7bit");
    add_header(&b, "Auto-Submitted", "auto-generated");
    mbuf_adds(&b, "\r\n");
    add_body(&b, body, qp);
    free(body);
    return mbuf_detach(&b, len_out);
}

/* ---- SMTP ------------------------------------------------------------- */

struct mail_smtp {
    CURL *curl;
    const char *data; /* the mail being sent */
    size_t len, pos;
    char reply[MAIL_REPLY_MAX];   /* the server's last reply line */
    char refusal[MAIL_REPLY_MAX]; /* its last 4xx/5xx line: a failed exchange
                                     often ends with QUIT's "221" after it */
    char errbuf[CURL_ERROR_SIZE];
};

static size_t smtp_read(char *buf, size_t size, size_t nitems, void *userp)
{
    mail_smtp *s = userp;
    size_t room = size * nitems, left = s->len - s->pos;
    size_t n = left < room ? left : room;
    memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    return n;
}

/* Keep the last line the server sent (libcurl shows them as HEADER_IN). */
static int smtp_debug(CURL *h, curl_infotype type, char *data, size_t size, void *userp)
{
    (void)h;
    mail_smtp *s = userp;
    if (type != CURLINFO_HEADER_IN)
        return 0;
    while (size > 0 && (data[size - 1] == '\n' || data[size - 1] == '\r'))
        size--;
    if (size == 0)
        return 0;
    size_t start = size;
    while (start > 0 && data[start - 1] != '\n')
        start--;
    size_t n = size - start;
    if (n > sizeof(s->reply) - 1)
        n = sizeof(s->reply) - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)data[start + i];
        s->reply[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    s->reply[n] = '\0';
    if (s->reply[0] == '4' || s->reply[0] == '5')
        memcpy(s->refusal, s->reply, n + 1);
    return 0;
}

mail_smtp *mail_smtp_open(const mail_smtp_config *cfg, char *err, size_t errlen)
{
    const char *url = cfg->url ? cfg->url : "";
    int tls = strncasecmp(url, "smtps://", 8) == 0;
    if (!tls && strncasecmp(url, "smtp://", 7) != 0) {
        util_error(err, errlen, "SMTP URL must start with smtp:// or smtps://");
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        util_error(err, errlen, "cannot initialise libcurl");
        return NULL;
    }
    mail_smtp *s = xcalloc(1, sizeof(*s));
    s->curl = curl_easy_init();
    if (!s->curl) {
        free(s);
        curl_global_cleanup();
        util_error(err, errlen, "cannot create a libcurl handle");
        return NULL;
    }
    CURL *c = s->curl;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(c, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_UPLOAD, 1L);
    SET(CURLOPT_READFUNCTION, smtp_read);
    SET(CURLOPT_READDATA, s);
    SET(CURLOPT_ERRORBUFFER, s->errbuf);
    SET(CURLOPT_VERBOSE, 1L); /* needed for the debug callback; it prints nothing */
    SET(CURLOPT_DEBUGFUNCTION, smtp_debug);
    SET(CURLOPT_DEBUGDATA, s);
    if (cfg->timeout_ms > 0) {
        SET(CURLOPT_TIMEOUT_MS, (long)cfg->timeout_ms);
        SET(CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->timeout_ms);
    }
    if (!tls)
        SET(CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
    if (cfg->user && *cfg->user) {
        SET(CURLOPT_USERNAME, cfg->user);
        SET(CURLOPT_PASSWORD, cfg->password ? cfg->password : "");
    }
#undef SET
    if (rc != CURLE_OK) {
        util_error(err, errlen, "cannot set up the SMTP client: %s", curl_easy_strerror(rc));
        mail_smtp_close(s);
        return NULL;
    }
    return s;
}

mail_result mail_smtp_send(mail_smtp *s, const char *from, const char *to, const char *data,
                           size_t len, char *reply, size_t replylen, char *err, size_t errlen)
{
    if (replylen > 0)
        reply[0] = '\0';
    struct curl_slist *rcpt = curl_slist_append(NULL, to);
    if (!rcpt) {
        util_error(err, errlen, "out of memory for the recipient list");
        return MAIL_TEMPORARY;
    }
    s->data = data;
    s->len = len;
    s->pos = 0;
    s->reply[0] = '\0';
    s->refusal[0] = '\0';
    s->errbuf[0] = '\0';
    CURL *c = s->curl;
    CURLcode rc = curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    int64_t start = -1;
    if (rc == CURLE_OK) {
        start = util_monotonic_ns();
        rc = curl_easy_perform(c);
    }
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (start >= 0)
        metrics_smtp_call(util_monotonic_ns() - start, rc == CURLE_OK               ? NULL
                                                       : code >= 500 && code <= 599 ? "5xx"
                                                       : code >= 400 && code <= 499 ? "4xx"
                                                                                    : "transport");
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, (struct curl_slist *)NULL);
    curl_slist_free_all(rcpt);
    s->data = NULL;
    if (replylen > 0)
        util_strlcpy(reply, s->reply, replylen);

    if (rc == CURLE_OK)
        return MAIL_SENT;
    const char *detail = s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc);
    char digits[8];
    snprintf(digits, sizeof(digits), "%ld", code);
    if (strncmp(s->refusal, digits, 3) == 0)
        detail = s->refusal;
    if (code >= 500 && code <= 599) {
        util_error(err, errlen, "SMTP server refused the mail with %ld: %s", code, detail);
        return MAIL_PERMANENT;
    }
    if (code >= 400 && code <= 499) {
        util_error(err, errlen, "SMTP server deferred the mail with %ld: %s", code, detail);
        return MAIL_TEMPORARY;
    }
    util_error(err, errlen, "cannot send mail over SMTP: %s", detail);
    if (rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT || rc == CURLE_NOT_BUILT_IN)
        return MAIL_PERMANENT;
    return MAIL_TEMPORARY;
}

void mail_smtp_close(mail_smtp *s)
{
    if (!s)
        return;
    curl_easy_cleanup(s->curl); /* sends QUIT on an open connection */
    curl_global_cleanup();
    free(s);
}

/* ---- .eml spool ------------------------------------------------------- */

/* Files written and not yet synced above this many are synced at once
 * (bounds the open descriptors). */
#define SPOOL_PENDING_MAX 1024

struct mail_spool {
    char *dir;
    int dirfd;
    int *pending; /* descriptors of files written since the last sync */
    size_t npending, cap;
};

/* Remove the temporary files of writers that died between creating and
 * renaming one (".<name>.eml.<pid>.tmp" whose pid is not running). */
static void spool_remove_stale(int dirfd)
{
    int fd = dup(dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (n[0] != '.' || len < 10 || strcmp(n + len - 4, ".tmp") != 0)
            continue;
        const char *p = n + len - 4;
        while (p > n && p[-1] >= '0' && p[-1] <= '9')
            p--;
        if (p == n + len - 4 || p - n < 5 || strncmp(p - 5, ".eml.", 5) != 0)
            continue;
        long pid = strtol(p, NULL, 10);
        if (pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            unlinkat(dirfd, n, 0);
    }
    closedir(d);
}

mail_spool *mail_spool_open(const char *dir, char *err, size_t errlen)
{
    if (util_mkdir_p(dir) != 0) {
        util_error(err, errlen, "cannot create mail directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        util_error(err, errlen, "cannot open mail directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    spool_remove_stale(fd);
    mail_spool *sp = xcalloc(1, sizeof(*sp));
    sp->dir = xstrdup(dir);
    sp->dirfd = fd;
    return sp;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int mail_spool_write(mail_spool *sp, const char *name, const char *data, size_t len, char *path,
                     size_t pathlen, char *err, size_t errlen)
{
    size_t nl = strlen(name);
    if (nl == 0 || nl > 128 || name[0] == '.' ||
        strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != nl)
        return util_error(err, errlen, "bad mail file name '%.128s'", name);
    if (sp->npending >= SPOOL_PENDING_MAX && mail_spool_sync(sp, err, errlen) != 0)
        return -1;
    char file[160], tmp[192];
    snprintf(file, sizeof(file), "%s.eml", name);
    snprintf(tmp, sizeof(tmp), ".%s.eml.%ld.tmp", name, (long)getpid());
    int a = snprintf(path, pathlen, "%s/%s", sp->dir, file);
    if (a < 0 || (size_t)a >= pathlen)
        return util_error(err, errlen, "mail file path too long in '%s'", sp->dir);

    int fd = openat(sp->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return util_error(err, errlen, "cannot create '%s/%s': %s", sp->dir, tmp, strerror(errno));
    if (write_all(fd, data, len) != 0 || renameat(sp->dirfd, tmp, sp->dirfd, file) != 0) {
        int e = errno;
        close(fd);
        unlinkat(sp->dirfd, tmp, 0);
        return util_error(err, errlen, "cannot write '%s': %s", path, strerror(e));
    }
    if (sp->npending == sp->cap) {
        sp->cap = sp->cap ? sp->cap * 2 : 64;
        sp->pending = xrealloc(sp->pending, sp->cap * sizeof(*sp->pending));
    }
    sp->pending[sp->npending++] = fd;
    return 0;
}

/* From this many files written in a batch on, mail_spool_sync() syncs the
 * whole file system once instead of each file. */
#define MAIL_SYNCFS_FROM 8

int mail_spool_sync(mail_spool *sp, char *err, size_t errlen)
{
    int rc = 0, e = 0;
    if (sp->npending == 0)
        return 0;
    /* Many files: one syncfs(2) of the file system (one journal commit, and
     * it reports write-back errors) instead of an fsync per file, which
     * under load made the disk the bottleneck of every other writer. */
    int whole_fs = sp->npending >= MAIL_SYNCFS_FROM;
    if (whole_fs && syncfs(sp->dirfd) != 0)
        rc = -1, e = errno;
    for (size_t i = 0; i < sp->npending; i++) {
        if (!whole_fs && fsync(sp->pending[i]) != 0 && rc == 0)
            rc = -1, e = errno;
        close(sp->pending[i]);
    }
    sp->npending = 0;
    if (rc == 0 && !whole_fs && fsync(sp->dirfd) != 0)
        rc = -1, e = errno;
    if (rc != 0)
        util_error(err, errlen, "cannot sync mail files in '%s': %s", sp->dir, strerror(e));
    return rc;
}

void mail_spool_close(mail_spool *sp)
{
    if (!sp)
        return;
    for (size_t i = 0; i < sp->npending; i++)
        close(sp->pending[i]);
    free(sp->pending);
    close(sp->dirfd);
    free(sp->dir);
    free(sp);
}
