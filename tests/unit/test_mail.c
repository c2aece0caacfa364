/*
 * test_mail.c - unit tests for src/agents/mail: addresses, sanitizing,
 * dates, header folding and RFC 2047 words, message composition (headers,
 * Message-ID, body encodings), header injection through CR/LF and other
 * line breaks, and .eml files. Encoded words are decoded back with
 * OpenSSL's EVP_DecodeBlock and quoted-printable with a small decoder
 * written from RFC 2045 here, so the tests do not trust the encoder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agents/mail.h"
#include "common/util.h"

/* 2025-01-15T14:30:22.456Z, a Wednesday (from Python's datetime). */
#define SAMPLE_MS INT64_C(1736951422456)
#define SAMPLE_ID "<0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6b@herald>"

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

/* ---- a parsed message -------------------------------------------------- */

typedef struct parsed {
    char *fields[64]; /* unfolded header fields "Name: value" */
    size_t count;
    char *body; /* raw body (after the blank line) */
} parsed;

/* Split a composed message; asserts CRLF line ends, no bare CR or LF, and
 * header lines within 78 columns (998 is the hard limit). */
static void parse(const char *msg, parsed *p)
{
    memset(p, 0, sizeof(*p));
    for (const char *c = msg; *c; c++) {
        if (*c == '\n')
            assert_true(c > msg && c[-1] == '\r');
        if (*c == '\r')
            assert_int_equal(c[1], '\n');
    }
    const char *end = strstr(msg, "\r\n\r\n");
    assert_non_null(end);
    p->body = xstrdup(end + 4);
    const char *line = msg;
    while (line < end + 2) {
        const char *eol = strstr(line, "\r\n");
        size_t n = (size_t)(eol - line);
        assert_true(n <= 78);
        if (line[0] == ' ' || line[0] == '\t') {
            assert_true(p->count > 0);
            char *prev = p->fields[p->count - 1];
            size_t pl = strlen(prev);
            prev = xrealloc(prev, pl + n + 1);
            memcpy(prev + pl, line, n); /* unfold: drop the CRLF only */
            prev[pl + n] = '\0';
            p->fields[p->count - 1] = prev;
        } else {
            assert_true(p->count < 64);
            assert_non_null(memchr(line, ':', n));
            p->fields[p->count++] = xstrndup(line, n);
        }
        line = eol + 2;
    }
}

static void parsed_free(parsed *p)
{
    for (size_t i = 0; i < p->count; i++)
        free(p->fields[i]);
    free(p->body);
}

/* The value of the field named name (exactly one such field), after ": ". */
static const char *field(const parsed *p, const char *name)
{
    const char *found = NULL;
    size_t n = strlen(name);
    for (size_t i = 0; i < p->count; i++) {
        if (strncasecmp(p->fields[i], name, n) == 0 && p->fields[i][n] == ':') {
            if (found)
                fail_msg("two '%s' fields", name);
            found = p->fields[i] + n + 1;
            while (*found == ' ')
                found++;
        }
    }
    return found;
}

/* Decode an unstructured value made of RFC 2047 B words and/or plain text
 * (whitespace between two encoded words is dropped, as RFC 2047 says).
 * Caller frees. */
static char *decode_words(const char *v)
{
    char *out = xcalloc(1, strlen(v) * 2 + 8);
    size_t n = 0;
    int last_was_word = 0;
    const char *p = v;
    while (*p) {
        const char *ws = p;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, "=?UTF-8?B?", 10) == 0) {
            const char *b64 = p + 10, *q = strstr(b64, "?=");
            assert_non_null(q);
            assert_true(q + 2 - p <= 75); /* RFC 2047: an encoded word <= 75 */
            if (!last_was_word) {
                memcpy(out + n, ws, (size_t)(p - ws));
                n += (size_t)(p - ws);
            }
            size_t bl = (size_t)(q - b64);
            assert_int_equal(bl % 4, 0);
            unsigned char tmp[128];
            int m = EVP_DecodeBlock(tmp, (const unsigned char *)b64, (int)bl);
            assert_true(m >= 0);
            /* EVP_DecodeBlock keeps the padding bytes: drop them */
            if (bl >= 1 && b64[bl - 1] == '=')
                m--;
            if (bl >= 2 && b64[bl - 2] == '=')
                m--;
            memcpy(out + n, tmp, (size_t)m);
            n += (size_t)m;
            p = q + 2;
            last_was_word = 1;
        } else {
            memcpy(out + n, ws, (size_t)(p - ws));
            n += (size_t)(p - ws);
            while (*p && *p != ' ' && *p != '\t')
                out[n++] = *p++;
            last_was_word = 0;
        }
    }
    out[n] = '\0';
    return out;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    fail_msg("bad hex digit '%c' in quoted-printable", c);
    return 0;
}

/* Quoted-printable (RFC 2045 6.7) to text with "\n" line ends. */
static char *decode_qp(const char *s)
{
    char *out = xcalloc(1, strlen(s) + 1);
    size_t n = 0, col = 0;
    for (const char *p = s; *p;) {
        if (p[0] == '=' && p[1] == '\r' && p[2] == '\n') {
            assert_true(col + 1 <= 76);
            p += 3;
            col = 0;
        } else if (p[0] == '=') {
            out[n++] = (char)(hexval(p[1]) * 16 + hexval(p[2]));
            p += 3;
            col += 3;
        } else if (p[0] == '\r' && p[1] == '\n') {
            assert_true(col <= 76);
            if (n > 0) /* a literal space or tab never ends a line */
                assert_true(p[-1] != ' ' && p[-1] != '\t');
            out[n++] = '\n';
            p += 2;
            col = 0;
        } else {
            unsigned char c = (unsigned char)*p;
            assert_true((c >= 33 && c <= 126) || c == ' ' || c == '\t');
            out[n++] = *p++;
            col++;
        }
    }
    out[n] = '\0';
    return out;
}

static char *compose(const char *subject, const char *body)
{
    mail_message m = MAIL_MESSAGE_INIT;
    m.from = "herald@example.org";
    m.to = "user-456@company.com";
    m.subject = subject;
    m.body = body;
    m.message_id = SAMPLE_ID;
    m.date_ms = SAMPLE_MS;
    char err[256] = "";
    size_t len = 0;
    char *msg = mail_compose(&m, &len, err, sizeof(err));
    if (!msg)
        fail_msg("mail_compose: %s", err);
    assert_int_equal(len, strlen(msg));
    return msg;
}

/* ---- addresses -------------------------------------------------------- */

static void test_local_parts(void **state)
{
    (void)state;
    const char *good[] = {"user-456", "a",     "first.last",         "o'brien",
                          "x+tag",    "A_B=c", "!#$%&'*+-/=?^_`{|}~"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(good); i++)
        if (mail_local_part_check(good[i], NULL, 0) != 0)
            fail_msg("'%s' should be a valid local part", good[i]);
    char long65[66];
    memset(long65, 'a', 65);
    long65[65] = '\0';
    const char *bad[] = {"",       ".a",        "a.",       "a..b", "a b",   "a@b",
                         "a\r\nb", "a\nBcc: x", "\xc3\xbc", "<a>",  "a,b",   "a;b",
                         "a\"b",   "a(b)",      "a\\b",     "a\tb", "a\x7f", long65};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad); i++) {
        char err[256] = "";
        if (mail_local_part_check(bad[i], err, sizeof(err)) == 0)
            fail_msg("'%s' should not be a valid local part", bad[i]);
        assert_true(err[0] != '\0');
    }
    char err[256];
    assert_int_equal(mail_local_part_check("a b", err, sizeof(err)), -1);
    assert_contains(err, "\\x20");
    long65[64] = '\0';
    assert_int_equal(mail_local_part_check(long65, NULL, 0), 0);
}

static void test_domains_and_addresses(void **state)
{
    (void)state;
    assert_int_equal(mail_domain_check("company.com", NULL, 0), 0);
    assert_int_equal(mail_domain_check("localhost", NULL, 0), 0);
    assert_int_equal(mail_domain_check("a-b.c0.example", NULL, 0), 0);
    const char *bad[] = {"",           ".com",   "com.",
                         "a..b",       "-a.com", "a-.com",
                         "a_b.com",    "a b",    "exa\r\nmple.com",
                         "[127.0.0.1]"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad); i++)
        if (mail_domain_check(bad[i], NULL, 0) == 0)
            fail_msg("'%s' should not be a valid domain", bad[i]);

    char out[MAIL_ADDRESS_MAX + 1];
    char err[256];
    assert_int_equal(mail_address_build("user-456", "company.com", out, err, sizeof(err)), 0);
    assert_string_equal(out, "user-456@company.com");
    /* never a mail to a wrong address: a bad local part builds nothing */
    assert_int_equal(mail_address_build("bob@evil.com", "company.com", out, err, sizeof(err)), -1);
    assert_string_equal(out, "");
    assert_contains(err, "'@'");
    assert_int_equal(
        mail_address_build("bob\r\nRCPT TO:<x@y>", "company.com", out, err, sizeof(err)), -1);
    assert_string_equal(out, "");
    assert_contains(err, "\\x0d");

    assert_int_equal(mail_address_check("herald@localhost", NULL, 0), 0);
    assert_int_equal(mail_address_check("a.b@c.d", NULL, 0), 0);
    assert_int_equal(mail_address_check("nobody", NULL, 0), -1);
    assert_int_equal(mail_address_check("@c.d", NULL, 0), -1);
    assert_int_equal(mail_address_check("a@", NULL, 0), -1);
    assert_int_equal(mail_address_check("Name <a@b.c>", NULL, 0), -1);
}

/* ---- text ------------------------------------------------------------- */

static void test_sanitize(void **state)
{
    (void)state;
    struct {
        const char *in, *line, *text;
    } cases[] = {
        {"plain", "plain", "plain"},
        {"a\r\nb", "a  b", "a\nb"},
        {"a\rb\nc", "a b c", "a\nb\nc"},
        {"tab\there", "tab here", "tab\there"},
        {"nul\x01"
         "esc\x1b"
         "del\x7f",
         "nul esc del ", "nul esc del "},
        {"nel\xc2\x85"
         "end",
         "nel end", "nel end"},                               /* C1 NEL */
        {"ls\xe2\x80\xa8ps\xe2\x80\xa9", "ls ps ", "ls ps "}, /* U+2028/9 */
        {"\xc3\xbc"
         "ber \xe5\xad\xa3",
         "\xc3\xbc"
         "ber \xe5\xad\xa3",
         "\xc3\xbc"
         "ber \xe5\xad\xa3"},
        {"bad\xff"
         "x",
         "bad\xef\xbf\xbdx", "bad\xef\xbf\xbdx"}, /* invalid byte */
        {"over\xc0\xaf", "over\xef\xbf\xbd\xef\xbf\xbd", "over\xef\xbf\xbd\xef\xbf\xbd"},
        {"sur\xed\xa0\x80", "sur\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
         "sur\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"cut\xe5\xad", "cut\xef\xbf\xbd\xef\xbf\xbd", "cut\xef\xbf\xbd\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(cases); i++) {
        char *l = mail_sanitize_line(cases[i].in);
        char *t = mail_sanitize_text(cases[i].in);
        assert_string_equal(l, cases[i].line);
        assert_string_equal(t, cases[i].text);
        free(l);
        free(t);
    }
}

static void test_date(void **state)
{
    (void)state;
    char d[MAIL_DATE_LEN + 1];
    mail_format_date(SAMPLE_MS, d);
    assert_string_equal(d, "Wed, 15 Jan 2025 14:30:22 +0000");
    mail_format_date(0, d);
    assert_string_equal(d, "Thu, 01 Jan 1970 00:00:00 +0000");
    /* 2024-02-29T23:59:59Z, a Thursday (leap day) */
    mail_format_date(INT64_C(1709251199000), d);
    assert_string_equal(d, "Thu, 29 Feb 2024 23:59:59 +0000");
    assert_int_equal(strlen(d), MAIL_DATE_LEN);
}

static void test_header_plain_and_folded(void **state)
{
    (void)state;
    char *h = mail_header_field("Subject", "New task assigned: Review quarterly report");
    assert_string_equal(h, "Subject: New task assigned: Review quarterly report\r\n");
    free(h);
    h = mail_header_field("Subject", "");
    assert_string_equal(h, "Subject:\r\n");
    free(h);
    h = mail_header_field("Subject", "  padded  ");
    assert_string_equal(h, "Subject: padded\r\n");
    free(h);

    /* a long ASCII subject folds at spaces, lines <= 78, unfolds to itself */
    char text[600] = "";
    for (int i = 0; i < 40; i++)
        strcat(text, i ? " word" : "word");
    strcat(text, " x1234567890");
    h = mail_header_field("Subject", text);
    char *msg = NULL;
    assert_true(asprintf(&msg, "%s\r\n", h) > 0);
    parsed p;
    parse(msg, &p);
    assert_int_equal(p.count, 1);
    assert_string_equal(field(&p, "Subject"), text);
    assert_null(strstr(h, "=?")); /* stayed plain */
    parsed_free(&p);
    free(msg);
    free(h);
}

static void test_header_rfc2047(void **state)
{
    (void)state;
    const char *subjects[] = {
        "New task assigned: \xc3\x9c"
        "berpr\xc3\xbc"
        "fung des Quartalsberichts",
        /* 3-byte and 4-byte characters, long enough for several words */
        "\xe5\xad\xa3\xe5\xba\xa6\xe6\x8a\xa5\xe5\x91\x8a \xf0\x9f\x93\x88 "
        "\xe5\xad\xa3\xe5\xba\xa6\xe6\x8a\xa5\xe5\x91\x8a\xe5\xad\xa3\xe5\xba\xa6\xe6\x8a\xa5"
        "\xe5\x91\x8a\xe5\xad\xa3\xe5\xba\xa6\xe6\x8a\xa5\xe5\x91\x8a\xe5\xad\xa3\xe5\xba\xa6"
        "\xe6\x8a\xa5\xe5\x91\x8a\xe5\xad\xa3\xe5\xba\xa6\xe6\x8a\xa5\xe5\x91\x8a \xf0\x9f\x93"
        "\x88\xf0\x9f\x93\x88\xf0\x9f\x93\x88\xf0\x9f\x93\x88\xf0\x9f\x93\x88 end",
        /* looks like an encoded word: must be encoded so it reads literally */
        "=?UTF-8?B?SGk=?= literally",
        /* one ASCII word too long to fold */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(subjects); i++) {
        char *h = mail_header_field("Subject", subjects[i]);
        assert_contains(h, "=?UTF-8?B?");
        char *msg = NULL;
        assert_true(asprintf(&msg, "%s\r\n", h) > 0);
        parsed p;
        parse(msg, &p); /* every line <= 78 */
        assert_int_equal(p.count, 1);
        char *decoded = decode_words(field(&p, "Subject"));
        assert_string_equal(decoded, subjects[i]);
        /* each encoded word holds whole characters: each decodes alone */
        for (const char *w = strstr(h, "=?UTF-8?B?"); w; w = strstr(w + 1, "=?UTF-8?B?")) {
            const char *q = strstr(w + 10, "?=");
            char *one = xstrndup(w, (size_t)(q + 2 - w));
            char *d1 = decode_words(one);
            char *clean = mail_sanitize_line(d1); /* a cut character would become U+FFFD */
            assert_string_equal(clean, d1);
            free(clean);
            free(d1);
            free(one);
        }
        free(decoded);
        parsed_free(&p);
        free(msg);
        free(h);
    }
}

/* ---- composition ------------------------------------------------------ */

static void test_compose_headers(void **state)
{
    (void)state;
    char *msg = compose("New task assigned: Review quarterly report",
                        "Task ID: t-1\nCorrelation: req-abc-123\n");
    parsed p;
    parse(msg, &p);
    assert_string_equal(field(&p, "Date"), "Wed, 15 Jan 2025 14:30:22 +0000");
    assert_string_equal(field(&p, "From"), "herald@example.org");
    assert_string_equal(field(&p, "To"), "user-456@company.com");
    assert_string_equal(field(&p, "Subject"), "New task assigned: Review quarterly report");
    assert_string_equal(field(&p, "Message-ID"), SAMPLE_ID);
    assert_string_equal(field(&p, "MIME-Version"), "1.0");
    assert_string_equal(field(&p, "Content-Type"), "text/plain; charset=UTF-8");
    assert_string_equal(field(&p, "Content-Transfer-Encoding"), "7bit");
    assert_null(field(&p, "Bcc"));
    assert_null(field(&p, "Cc"));
    assert_string_equal(p.body, "Task ID: t-1\r\nCorrelation: req-abc-123\r\n");
    parsed_free(&p);
    free(msg);
}

static void test_compose_refuses_bad_input(void **state)
{
    (void)state;
    mail_message m = MAIL_MESSAGE_INIT;
    m.from = "herald@example.org";
    m.to = "user@company.com";
    m.subject = "s";
    m.body = "b";
    m.message_id = "<id@herald>";
    char err[256];
    const char *bad_to[] = {"user@company.com\r\nBcc: evil@x", "a b@c.d", "nobody", ""};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad_to); i++) {
        m.to = bad_to[i];
        assert_null(mail_compose(&m, NULL, err, sizeof(err)));
        assert_contains(err, "recipient");
    }
    m.to = "user@company.com";
    m.from = "herald@example.org\nBcc: x@y";
    assert_null(mail_compose(&m, NULL, err, sizeof(err)));
    assert_contains(err, "sender");
    m.from = "herald@example.org";
    const char *bad_ids[] = {"id@herald", "<id@herald>\r\nBcc: x@y", "<id @herald>", "<idherald>",
                             "<a<b@c>"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad_ids); i++) {
        m.message_id = bad_ids[i];
        assert_null(mail_compose(&m, NULL, err, sizeof(err)));
        assert_contains(err, "Message-ID");
    }
}

static void test_header_injection(void **state)
{
    (void)state;
    const char *titles[] = {
        "Review\r\nBcc: evil@x",
        "Review\nBcc: evil@x",
        "Review\rBcc: evil@x",
        "Review\r\n\r\nfake body",
        "Review\xc2\x85"
        "Bcc: evil@x",
        "Review\xe2\x80\xa8"
        "Bcc: evil@x",
        "\r\nBcc: evil@x\r\n",
        "Review\x0b\x0c"
        "Bcc: evil@x",
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(titles); i++) {
        char subject[128];
        snprintf(subject, sizeof(subject), "New task assigned: %s", titles[i]);
        char *msg = compose(subject, "body\n");
        parsed p;
        parse(msg, &p);
        /* exactly the nine fields mail_compose writes, none from the title */
        assert_int_equal(p.count, 9);
        assert_null(field(&p, "Bcc"));
        for (const char *l = msg; l; l = strstr(l, "\r\n")) {
            l = l[0] == '\r' ? l + 2 : l;
            assert_true(strncasecmp(l, "Bcc", 3) != 0);
            if (!*l)
                break;
        }
        /* the subject is the title on one line (breaks became spaces) */
        char *subj = decode_words(field(&p, "Subject"));
        char *want = mail_sanitize_line(subject);
        for (size_t k = strlen(want); k > 0 && want[k - 1] == ' '; k--)
            want[k - 1] = '\0';
        assert_string_equal(subj, want);
        assert_null(strpbrk(subj, "\r\n"));
        free(want);
        assert_string_equal(p.body, "body\r\n");
        free(subj);
        parsed_free(&p);
        free(msg);
    }
}

static void test_body_quoted_printable(void **state)
{
    (void)state;
    /* non-ASCII, '=', trailing spaces, a line of 300 bytes and a lone dot */
    char body[1024] = "Gr\xc3\xbc\xc3\x9f"
                      "e, a=b   \n.\n";
    for (int i = 0; i < 60; i++)
        strcat(body, "12345");
    strcat(body, "\nend\t\n\xe5\xad\xa3\xe5\xba\xa6\r\nlast");
    char *msg = compose("s", body);
    parsed p;
    parse(msg, &p);
    assert_string_equal(field(&p, "Content-Transfer-Encoding"), "quoted-printable");
    assert_contains(p.body, "Gr=C3=BC=C3=9Fe, a=3Db  =20\r\n");
    /* a "." line is left alone: libcurl dot-stuffs on the wire */
    assert_contains(p.body, "\r\n.\r\n");
    char *decoded = decode_qp(p.body);
    char *want = mail_sanitize_text(body);
    char *want_nl = NULL;
    assert_true(asprintf(&want_nl, "%s\n", want) > 0); /* the last line gets its end */
    assert_string_equal(decoded, want_nl);
    free(want_nl);
    free(want);
    free(decoded);
    parsed_free(&p);
    free(msg);

    /* ASCII with a line over 998 bytes is quoted-printable too */
    char *big = xcalloc(1, 1200);
    memset(big, 'x', 1100);
    msg = compose("s", big);
    parse(msg, &p);
    assert_string_equal(field(&p, "Content-Transfer-Encoding"), "quoted-printable");
    decoded = decode_qp(p.body);
    assert_int_equal(strlen(decoded), 1101);
    free(decoded);
    parsed_free(&p);
    free(msg);
    free(big);
}

static void test_body_line_ends(void **state)
{
    (void)state;
    char *msg = compose("s", "a\rb\r\nc\nd");
    parsed p;
    parse(msg, &p);
    assert_string_equal(p.body, "a\r\nb\r\nc\r\nd\r\n");
    parsed_free(&p);
    free(msg);
}

/* ---- .eml files -------------------------------------------------------- */

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = xcalloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static size_t count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void test_spool(void **state)
{
    (void)state;
    char base[] = "/tmp/herald-test-mail-XXXXXX";
    assert_non_null(mkdtemp(base));
    char dir[256], path[512], err[256];
    snprintf(dir, sizeof(dir), "%s/data/mail", base);
    mail_spool *sp = mail_spool_open(dir, err, sizeof(err)); /* creates the directories */
    assert_non_null(sp);
    const char *id = "0194697e-1f38-7cc1-9a3b-1c2d3e4f5a6b";
    assert_int_equal(mail_spool_write(sp, id, "first\r\n", 7, path, sizeof(path), err, sizeof(err)),
                     0);
    char want[512];
    snprintf(want, sizeof(want), "%s/%s.eml", dir, id);
    assert_string_equal(path, want);
    char *got = read_file(path); /* in place at once, durable after the sync */
    assert_string_equal(got, "first\r\n");
    free(got);
    assert_int_equal(mail_spool_sync(sp, err, sizeof(err)), 0);
    assert_int_equal(mail_spool_sync(sp, err, sizeof(err)), 0); /* nothing pending */

    /* the same name again replaces the file; no temporary file stays */
    assert_int_equal(
        mail_spool_write(sp, id, "second\r\n", 8, path, sizeof(path), err, sizeof(err)), 0);
    assert_int_equal(
        mail_spool_write(sp, "other", "3\r\n", 3, path, sizeof(path), err, sizeof(err)), 0);
    assert_int_equal(mail_spool_sync(sp, err, sizeof(err)), 0);
    got = read_file(want);
    assert_string_equal(got, "second\r\n");
    free(got);
    assert_int_equal(count_entries(dir), 2);

    const char *bad[] = {"", "../x", "a/b", ".hidden", "a b", "a\nb"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad); i++) {
        assert_int_equal(mail_spool_write(sp, bad[i], "x", 1, path, sizeof(path), err, sizeof(err)),
                         -1);
        assert_contains(err, "bad mail file name");
    }
    assert_int_equal(count_entries(dir), 2);
    /* a file left unsynced is only closed */
    assert_int_equal(mail_spool_write(sp, "last", "x", 1, path, sizeof(path), err, sizeof(err)), 0);
    mail_spool_close(sp);
    mail_spool_close(NULL);
    assert_int_equal(count_entries(dir), 3);

    /* opening removes the temporary files of dead writers only */
    const char *temps[] = {".dead.eml.2147483646.tmp", ".alive.eml.%ld.tmp", ".other.tmp"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(temps); i++) {
        char name[64];
        snprintf(name, sizeof(name), temps[i], (long)getppid());
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fclose(f);
    }
    assert_int_equal(count_entries(dir), 6);
    sp = mail_spool_open(dir, err, sizeof(err));
    assert_non_null(sp);
    mail_spool_close(sp);
    assert_int_equal(count_entries(dir), 5);
    snprintf(path, sizeof(path), "%s/.dead.eml.2147483646.tmp", dir);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof(path), "%s/.alive.eml.%ld.tmp", dir, (long)getppid());
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof(path), "%s/.other.tmp", dir);
    assert_int_equal(unlink(path), 0);

    /* a directory that cannot be created */
    snprintf(path, sizeof(path), "%s/%s.eml/sub", dir, id);
    assert_null(mail_spool_open(path, err, sizeof(err)));
    assert_contains(err, "cannot create mail directory");

    const char *names[] = {id, "other", "last"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(names); i++) {
        snprintf(path, sizeof(path), "%s/%s.eml", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
    snprintf(dir, sizeof(dir), "%s/data", base);
    rmdir(dir);
    rmdir(base);
}

static void test_smtp_open_checks_url(void **state)
{
    (void)state;
    char err[256];
    mail_smtp_config c = MAIL_SMTP_CONFIG_INIT;
    const char *bad[] = {"http://127.0.0.1:25", "127.0.0.1:25", "", "file:///etc/passwd"};
    for (size_t i = 0; i < UTIL_ARRAY_LEN(bad); i++) {
        c.url = bad[i];
        assert_null(mail_smtp_open(&c, err, sizeof(err)));
        assert_contains(err, "smtp://");
    }
    c.url = "smtp://127.0.0.1:1";
    mail_smtp *s = mail_smtp_open(&c, err, sizeof(err));
    assert_non_null(s);
    mail_smtp_close(s);
    c.url = "SMTPS://127.0.0.1:1";
    s = mail_smtp_open(&c, err, sizeof(err));
    assert_non_null(s);
    mail_smtp_close(s);
    mail_smtp_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_parts),
        cmocka_unit_test(test_domains_and_addresses),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_date),
        cmocka_unit_test(test_header_plain_and_folded),
        cmocka_unit_test(test_header_rfc2047),
        cmocka_unit_test(test_compose_headers),
        cmocka_unit_test(test_compose_refuses_bad_input),
        cmocka_unit_test(test_header_injection),
        cmocka_unit_test(test_body_quoted_printable),
        cmocka_unit_test(test_body_line_ends),
        cmocka_unit_test(test_spool),
        cmocka_unit_test(test_smtp_open_checks_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
