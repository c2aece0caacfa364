/*
 * event.c - the event envelope: UUIDv7 ids, the UTC clock format, the naming
 * rules for event types and the JSON codec (see event.h for the contract).
 *
 * Design
 * - The codec goes through jansson both ways. Decoding parses with
 *   JSON_REJECT_DUPLICATES, then validates the fields in envelope order
 *   (event_id, event_type, occurred_at, data, metadata.*) into a local
 *   struct that is handed to the caller only once everything passed, so a
 *   failure leaves *ev as EVENT_INIT and the one `fail:` path frees all.
 *   Error messages name the field by its dotted path ("field
 *   'metadata.source': expected a string, got number") and quote offending
 *   values shortened and with control characters masked, since they end up
 *   in logs and HTTP responses.
 * - Encoding builds a jansson object in envelope order and dumps it compact;
 *   jansson (>= 2.8) keeps object keys in insertion order, so the key order
 *   is fixed and encode -> decode -> encode is byte-identical. Non-ASCII
 *   text is written as UTF-8, never as \u escapes.
 * - `data` and `metadata_extra` are shared by reference between the parsed
 *   tree and the event (json_incref), never copied, except by event_copy(),
 *   which is a deep copy.
 * - Timestamps are int64 ms since the epoch. Formatting and parsing use our
 *   own proleptic-Gregorian day arithmetic (no timegm/gmtime, no TZ, no
 *   locale), so they work for any year 0000..9999 and negative times.
 *   event_format_time() clamps its input into that range so the output is
 *   always exactly EVENT_TIME_LEN characters. event_parse_time() follows
 *   RFC 3339 section 5.6 strictly; it accepts any number (>= 1) of fraction
 *   digits as RFC 3339 and event.h allow, and truncates below the
 *   millisecond. A leap second (":60") is rejected, as Python's datetime
 *   (the original producer) and most other parsers reject it: it can't be
 *   represented in Unix time anyway.
 * - Naming: an action is past tense when its last '_'-separated word ends in
 *   "-ed" (minus a short list of words like "need" or "proceed") or is a
 *   known irregular past form. Suggestions for an imperative come from a
 *   base -> past table (irregular verbs and verbs that double their final
 *   consonant) and otherwise from the regular spelling rules.
 *
 * - UUIDv7 (RFC 9562): 48-bit Unix ms, version 7, rand_a is a 12-bit
 *   counter within the millisecond (seeded randomly below 1024 on each new
 *   ms; when it overflows, or the clock steps back, the generator keeps
 *   counting on its own last ms, borrowing the next one), variant 10 and 62
 *   bits from getrandom(2). So ids from one process strictly increase.
 * - Trace context: a valid metadata.traceparent / tracestate pair is held in
 *   ev->traceparent / ev->tracestate (fixed text and one string, so the
 *   runtime's header path copies it without building JSON) and written
 *   back right after "source"; an invalid one is someone else's data and
 *   stays in metadata_extra untouched.
 * - event_topic_for_type() also refuses an empty domain (".x"), which would
 *   give the meaningless topic "-events".
 *
 * Threads: everything is reentrant except the UUIDv7 generator, whose
 * last-millisecond/counter state is guarded by a mutex.
 */
#include "event/event.h"

#include "common/json_read.h"
#include "common/json_text.h"
#include "common/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* ---- small helpers ---------------------------------------------------- */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_lower(char c)
{
    return c >= 'a' && c <= 'z';
}

static int is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The JSON type of v as a word for error messages. */
static const char *json_type_name(const json_t *v)
{
    if (!v)
        return "nothing";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "unknown";
}

/* Length in bytes of the UTF-8 sequence at s, 0 if it is not valid UTF-8
 * (overlong forms, surrogates and code points over U+10FFFF are invalid).
 * *cp receives the code point. s must be NUL-terminated. */
static size_t utf8_decode(const unsigned char *s, unsigned *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        c &= 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        if (c == 0xED)
            hi = 0x9F; /* surrogates */
        c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        if (c == 0xF4)
            hi = 0x8F; /* over U+10FFFF */
        c &= 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        unsigned b = s[i];
        if (b < lo || b > hi)
            return 0; /* also stops at the NUL terminator */
        lo = 0x80;
        hi = 0xBF;
        c = (c << 6) | (b & 0x3F);
    }
    *cp = c;
    return n;
}

static int is_control(unsigned cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

/*
 * Write a printable, shortened copy of s for an error message into
 * buf[buflen]: control characters and invalid UTF-8 become '?', and text
 * beyond `max` bytes is cut at a character boundary and marked "...".
 */
static const char *quote_value(const char *s, size_t max, char *buf, size_t buflen)
{
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)s;
    if (max + 4 > buflen)
        max = buflen - 4;
    while (*p) {
        unsigned cp;
        size_t n = utf8_decode(p, &cp);
        if (o + (n ? n : 1) > max) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (n == 0 || is_control(cp)) {
            buf[o++] = '?';
            p += n ? n : 1;
        } else {
            memcpy(buf + o, p, n);
            o += n;
            p += n;
        }
    }
    buf[o] = '\0';
    return buf;
}

/* How a free-text id (correlation_id, causation_id, source) is wrong. */
enum text_problem { TEXT_OK, TEXT_EMPTY, TEXT_TOO_LONG, TEXT_CONTROL, TEXT_BAD_UTF8 };

/*
 * Check that s (len bytes; a NUL inside counts as a control character) is
 * 1..max characters of valid UTF-8 without control characters (C0, DEL or
 * C1). Problems are reported in this order: empty, too long, control
 * character, bad UTF-8.
 */
static enum text_problem check_text(const char *s, size_t len, size_t max)
{
    if (len == 0)
        return TEXT_EMPTY;
    int control = strlen(s) != len, bad = 0;
    size_t chars = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned cp;
        size_t n = utf8_decode(p, &cp);
        if (n == 0) {
            bad = 1;
            n = 1;
        } else if (is_control(cp)) {
            control = 1;
        }
        chars++;
        p += n;
    }
    if (chars > max)
        return TEXT_TOO_LONG;
    if (control)
        return TEXT_CONTROL;
    if (bad)
        return TEXT_BAD_UTF8;
    return TEXT_OK;
}

/* Format "<what>: <problem>" (what is "field 'x'" or a parameter name). */
static int text_error(char *err, size_t errlen, const char *what, enum text_problem problem,
                      size_t max)
{
    switch (problem) {
    case TEXT_EMPTY:
        return util_error(err, errlen, "%s: empty", what);
    case TEXT_TOO_LONG:
        return util_error(err, errlen, "%s: longer than %zu characters", what, max);
    case TEXT_CONTROL:
        return util_error(err, errlen, "%s: contains a control character", what);
    case TEXT_BAD_UTF8:
        return util_error(err, errlen, "%s: not valid UTF-8", what);
    case TEXT_OK:
        break;
    }
    return 0;
}

/* ---- ids -------------------------------------------------------------- */

/* State of the UUIDv7 generator: the millisecond of the last id and the
 * 12-bit counter used within it (RFC 9562 section 6.2, method 1). */
static pthread_mutex_t uuid_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t uuid_last_ms;
static unsigned uuid_counter;

#define UUID_MS_MASK ((UINT64_C(1) << 48) - 1)
#define UUID_COUNTER_MAX 0xFFFu
/* A fresh millisecond starts the counter at a random value below this, so
 * at least 3072 ids fit in one millisecond before it has to borrow the
 * next one. */
#define UUID_COUNTER_SEED_MASK 0x3FFu

void event_uuid_v7(char out[EVENT_UUID_LEN + 1])
{
    unsigned char rnd[10]; /* 8 for rand_b, 2 to seed the counter */
    util_random_bytes(rnd, sizeof(rnd));
    unsigned seed = ((unsigned)rnd[8] << 8 | rnd[9]) & UUID_COUNTER_SEED_MASK;
    int64_t now_ms = util_now_ms();
    uint64_t now = now_ms > 0 ? (uint64_t)now_ms & UUID_MS_MASK : 0;

    pthread_mutex_lock(&uuid_lock);
    if (now > uuid_last_ms) {
        uuid_last_ms = now;
        uuid_counter = seed;
    } else if (uuid_counter < UUID_COUNTER_MAX) {
        uuid_counter++; /* same millisecond, or the clock went back */
    } else {
        uuid_last_ms = (uuid_last_ms + 1) & UUID_MS_MASK; /* borrow the next ms */
        uuid_counter = seed;
    }
    uint64_t ms = uuid_last_ms;
    unsigned counter = uuid_counter;
    pthread_mutex_unlock(&uuid_lock);

    unsigned char b[16];
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (counter >> 8)); /* version 7 + rand_a high */
    b[7] = (unsigned char)(counter & 0xFF);
    b[8] = (unsigned char)(0x80 | (rnd[0] & 0x3F)); /* variant 10 + 6 random bits */
    memcpy(b + 9, rnd + 1, 7);                      /* 56 more random bits */

    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 0x0F];
    }
    *o = '\0';
}

int event_uuid_valid(const char *s)
{
    if (!s)
        return 0;
    for (int i = 0; i < EVENT_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!is_hex(s[i])) {
            return 0; /* also stops at an early NUL */
        }
    }
    return s[EVENT_UUID_LEN] == '\0';
}

/* ---- clock ------------------------------------------------------------ */

#define MS_PER_DAY INT64_C(86400000)

static int is_leap(int64_t y)
{
    return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
}

static int days_in_month(int64_t y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Floor division for a positive divisor. */
static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b < 0);
}

/*
 * Days since 1970-01-01 of a proleptic Gregorian date. Counts in 400-year
 * eras (146097 days each) of years starting on March 1st, so the leap day
 * is the last day of its year and the month lengths from March repeat in a
 * 153-day pattern every five months.
 */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    if (m <= 2)
        y--;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;                                   /* 0..399 */
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* 0..365 */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* 0..146096 */
    return era * 146097 + doe - 719468; /* 719468: 0000-03-01 to 1970-01-01 */
}

/* The inverse of days_from_civil(). */
static void civil_from_days(int64_t days, int64_t *y, int *m, int *d)
{
    days += 719468;
    int64_t era = floor_div(days, 146097);
    int64_t doe = days - era * 146097;                                   /* 0..146096 */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* 0..399 */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* 0..365 */
    int64_t mp = (5 * doy + 2) / 153;                                    /* 0..11, from March */
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static char *put_digits(char *p, int64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + n;
}

void event_format_time(int64_t ms, char out[EVENT_TIME_LEN + 1])
{
    /* Clamp into 0000-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z, the
     * range a four-digit RFC 3339 year can express. */
    const int64_t lo = days_from_civil(0, 1, 1) * MS_PER_DAY;
    const int64_t hi = days_from_civil(10000, 1, 1) * MS_PER_DAY - 1;
    if (ms < lo)
        ms = lo;
    if (ms > hi)
        ms = hi;

    int64_t days = floor_div(ms, MS_PER_DAY);
    int64_t rem = ms - days * MS_PER_DAY; /* 0..86399999 */
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);

    char *p = out;
    p = put_digits(p, y, 4);
    *p++ = '-';
    p = put_digits(p, m, 2);
    *p++ = '-';
    p = put_digits(p, d, 2);
    *p++ = 'T';
    p = put_digits(p, rem / 3600000, 2);
    *p++ = ':';
    p = put_digits(p, rem / 60000 % 60, 2);
    *p++ = ':';
    p = put_digits(p, rem / 1000 % 60, 2);
    *p++ = '.';
    p = put_digits(p, rem % 1000, 3);
    *p++ = 'Z';
    *p = '\0';
}

/* Read exactly n ASCII digits at s into *out; -1 if any is not a digit. */
static int read_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int event_parse_time(const char *s, int64_t *ms_out)
{
    if (!s)
        return -1;
    int y, mo, d, h, mi, sec;
    /* Each check runs only if the previous ones passed, so a short string
     * is never read past its NUL. */
    if (read_digits(s, 4, &y) < 0 || s[4] != '-' || read_digits(s + 5, 2, &mo) < 0 || s[7] != '-' ||
        read_digits(s + 8, 2, &d) < 0)
        return -1;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
        return -1;
    if (read_digits(s + 11, 2, &h) < 0 || s[13] != ':' || read_digits(s + 14, 2, &mi) < 0 ||
        s[16] != ':' || read_digits(s + 17, 2, &sec) < 0)
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59)
        return -1;

    const char *p = s + 19;
    int frac_ms = 0;
    if (*p == '.') {
        p++;
        if (!is_digit(*p))
            return -1;
        int ndig = 0;
        for (; is_digit(*p); p++, ndig++)
            if (ndig < 3) /* digits below the millisecond are dropped */
                frac_ms = frac_ms * 10 + (*p - '0');
        for (; ndig < 3; ndig++) /* ".4" is 400 ms, ".45" is 450 ms */
            frac_ms *= 10;
    }

    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (read_digits(p + 1, 2, &oh) < 0 || p[3] != ':' || read_digits(p + 4, 2, &om) < 0)
            return -1;
        if (oh > 23 || om > 59)
            return -1;
        offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;

    int64_t ms = days_from_civil(y, mo, d) * MS_PER_DAY +
                 ((int64_t)h * 3600 + mi * 60 + sec) * 1000 + frac_ms;
    /* Local time = UTC + offset, so UTC = local - offset. */
    *ms_out = ms - (int64_t)offset_min * 60000;
    return 0;
}

/* ---- naming rules ----------------------------------------------------- */

/* The word tables are kept dense by hand. */
/* clang-format off */

/* Words ending in "-ed" that are not past forms. */
static const char *const not_past_ed[] = {
    "need",  "feed",    "seed",    "speed",  "bleed", "breed", "proceed", "succeed",
    "exceed", "embed",  "bed",     "red",    "heed",  "weed",  "deed",    "shred",
    "sled",  "creed",   "greed",   "steed",
};

/*
 * Base form -> past form, for verbs the regular rules get wrong: irregular
 * verbs and verbs that double their final consonant. Every past form here
 * is also accepted as past tense.
 */
static const struct {
    const char *base, *past;
} past_of[] = {
    /* irregular */
    {"send", "sent"}, {"pay", "paid"}, {"build", "built"}, {"make", "made"},
    {"sell", "sold"}, {"buy", "bought"}, {"hold", "held"}, {"keep", "kept"},
    {"leave", "left"}, {"lose", "lost"}, {"meet", "met"}, {"write", "written"},
    {"begin", "begun"}, {"break", "broken"}, {"choose", "chosen"}, {"do", "done"},
    {"draw", "drawn"}, {"drive", "driven"}, {"eat", "eaten"}, {"fall", "fallen"},
    {"forget", "forgotten"}, {"freeze", "frozen"}, {"give", "given"}, {"go", "gone"},
    {"hide", "hidden"}, {"know", "known"}, {"see", "seen"}, {"show", "shown"},
    {"speak", "spoken"}, {"steal", "stolen"}, {"take", "taken"}, {"throw", "thrown"},
    {"wake", "woken"}, {"wear", "worn"}, {"bind", "bound"}, {"find", "found"},
    {"hang", "hung"}, {"deal", "dealt"}, {"feel", "felt"}, {"feed", "fed"},
    {"flee", "fled"}, {"lead", "led"}, {"lend", "lent"}, {"mean", "meant"},
    {"spin", "spun"}, {"stick", "stuck"}, {"strike", "struck"}, {"sweep", "swept"},
    {"withdraw", "withdrawn"}, {"teach", "taught"}, {"tell", "told"},
    {"think", "thought"}, {"win", "won"}, {"spend", "spent"}, {"get", "got"},
    {"ride", "ridden"}, {"rise", "risen"}, {"shake", "shaken"}, {"override", "overridden"},
    {"undo", "undone"}, {"redo", "redone"}, {"rebuild", "rebuilt"}, {"resend", "resent"},
    {"rewrite", "rewritten"}, {"remake", "remade"}, {"forbid", "forbidden"},
    {"forgive", "forgiven"}, {"bring", "brought"}, {"catch", "caught"},
    {"fight", "fought"}, {"seek", "sought"}, {"sleep", "slept"}, {"stand", "stood"},
    {"understand", "understood"}, {"withhold", "withheld"}, {"uphold", "upheld"},
    {"sit", "sat"}, {"shoot", "shot"}, {"light", "lit"}, {"slide", "slid"},
    {"bend", "bent"}, {"dig", "dug"}, {"grow", "grown"}, {"blow", "blown"},
    {"fly", "flown"}, {"swear", "sworn"}, {"tear", "torn"}, {"beat", "beaten"},
    {"bite", "bitten"}, {"sing", "sung"}, {"ring", "rung"}, {"sink", "sunk"},
    {"drink", "drunk"}, {"shrink", "shrunk"}, {"swing", "swung"}, {"wind", "wound"},
    {"grind", "ground"}, {"speed", "sped"}, {"bleed", "bled"}, {"breed", "bred"},
    {"say", "said"}, {"hear", "heard"}, {"mistake", "mistaken"}, {"undertake", "undertaken"},
    {"come", "come"}, {"become", "become"}, {"overcome", "overcome"}, {"run", "run"},
    {"rerun", "rerun"}, {"read", "read"}, {"set", "set"}, {"reset", "reset"},
    {"put", "put"}, {"cut", "cut"}, {"hit", "hit"}, {"quit", "quit"}, {"cast", "cast"},
    {"upset", "upset"}, {"shut", "shut"}, {"split", "split"}, {"shed", "shed"},
    {"wed", "wed"}, {"let", "let"}, {"spread", "spread"}, {"cost", "cost"},
    {"hurt", "hurt"}, {"burst", "burst"}, {"broadcast", "broadcast"},
    {"forecast", "forecast"},
    /* regular, but the final consonant doubles */
    {"stop", "stopped"}, {"drop", "dropped"}, {"ship", "shipped"}, {"plan", "planned"},
    {"log", "logged"}, {"tag", "tagged"}, {"flag", "flagged"}, {"pin", "pinned"},
    {"unpin", "unpinned"}, {"star", "starred"}, {"submit", "submitted"},
    {"resubmit", "resubmitted"}, {"commit", "committed"}, {"emit", "emitted"},
    {"admit", "admitted"}, {"permit", "permitted"}, {"omit", "omitted"},
    {"occur", "occurred"}, {"recur", "recurred"}, {"transfer", "transferred"},
    {"refer", "referred"}, {"prefer", "preferred"}, {"defer", "deferred"},
    {"cancel", "cancelled"}, {"embed", "embedded"}, {"shred", "shredded"},
    {"chat", "chatted"}, {"skip", "skipped"}, {"snap", "snapped"}, {"zip", "zipped"},
    {"unzip", "unzipped"}, {"trim", "trimmed"}, {"scan", "scanned"}, {"ban", "banned"},
    {"unban", "unbanned"}, {"map", "mapped"}, {"wrap", "wrapped"}, {"swap", "swapped"},
    {"strip", "stripped"}, {"step", "stepped"}, {"rob", "robbed"}, {"grab", "grabbed"},
    {"nag", "nagged"}, {"mob", "mobbed"}, {"dim", "dimmed"}, {"rig", "rigged"},
    {"prod", "prodded"}, {"nod", "nodded"}, {"kid", "kidded"}, {"rot", "rotted"},
    {"spot", "spotted"}, {"plot", "plotted"}, {"knit", "knitted"}, {"fit", "fitted"},
    {"pat", "patted"}, {"jog", "jogged"}, {"hug", "hugged"}, {"beg", "begged"},
    {"bug", "bugged"}, {"debug", "debugged"}, {"control", "controlled"},
    {"patrol", "patrolled"}, {"compel", "compelled"}, {"expel", "expelled"},
    {"propel", "propelled"}, {"repel", "repelled"}, {"rebel", "rebelled"},
};

/* Past forms accepted beyond those in past_of: simple past of irregular
 * verbs (whose participle is in past_of) and the state word "due". */
static const char *const past_extra[] = {
    "due",   "wrote",  "began", "broke", "chose", "did",   "drew",   "drove",    "ate",
    "fell",  "froze",  "gave",  "went",  "hid",   "knew",  "rode",   "rose",     "saw",
    "shook", "spoke",  "stole", "took",  "threw", "woke",  "wore",   "ran",      "came",
    "became", "forgave", "sang", "rang", "sank",  "drank", "shrank", "grew",     "blew",
    "flew",  "swore",  "tore",  "bit",   "withdrew", "overrode", "undid", "redid",
    "rewrote", "forbade", "gotten", "proven", "spun", "born", "borne", "sewn", "sown",
    "mown",  "outgrown", "overdue",
};

/* clang-format on */

static int in_list(const char *w, size_t n, const char *const *list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (strlen(list[i]) == n && memcmp(list[i], w, n) == 0)
            return 1;
    return 0;
}

/* Whether the word w[0..n) is a past form. */
static int word_is_past(const char *w, size_t n)
{
    if (n >= 4 && w[n - 2] == 'e' && w[n - 1] == 'd' &&
        !in_list(w, n, not_past_ed, UTIL_ARRAY_LEN(not_past_ed)))
        return 1;
    for (size_t i = 0; i < UTIL_ARRAY_LEN(past_of); i++)
        if (strlen(past_of[i].past) == n && memcmp(past_of[i].past, w, n) == 0)
            return 1;
    return in_list(w, n, past_extra, UTIL_ARRAY_LEN(past_extra));
}

static int is_vowel(char c)
{
    return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
}

/*
 * The past form of the base word w[0..n) into out[outlen]; 0, or -1 when we
 * have no sensible suggestion (empty, digits, or a gerund like "creating").
 */
static int suggest_past(const char *w, size_t n, char *out, size_t outlen)
{
    if (n == 0 || n + 4 > outlen)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!is_lower(w[i]))
            return -1;
    for (size_t i = 0; i < UTIL_ARRAY_LEN(past_of); i++) {
        if (strlen(past_of[i].base) == n && memcmp(past_of[i].base, w, n) == 0) {
            util_strlcpy(out, past_of[i].past, outlen);
            return 0;
        }
    }
    if (n >= 5 && memcmp(w + n - 3, "ing", 3) == 0)
        return -1;
    memcpy(out, w, n);
    if (w[n - 1] == 'e') {
        memcpy(out + n, "d", 2);
    } else if (w[n - 1] == 'y' && n >= 2 && !is_vowel(w[n - 2])) {
        memcpy(out + n - 1, "ied", 4);
    } else {
        memcpy(out + n, "ed", 3);
    }
    return 0;
}

/* Whether c may appear after the first character of a domain or action. */
static int is_name_char(char c)
{
    return is_lower(c) || is_digit(c) || c == '_';
}

/* Whether s[0..n) matches [a-z][a-z0-9_]*. */
static int is_name(const char *s, size_t n)
{
    if (n == 0 || !is_lower(s[0]))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!is_name_char(s[i]))
            return 0;
    return 1;
}

int event_type_check_syntax(const char *type, char *err, size_t errlen)
{
    if (!type || !*type)
        return util_error(err, errlen, "event type is empty");
    char q[200];
    size_t len = strlen(type);
    if (len > EVENT_TYPE_MAX)
        return util_error(err, errlen, "event type '%s': longer than %d characters",
                          quote_value(type, 48, q, sizeof(q)), EVENT_TYPE_MAX);
    quote_value(type, EVENT_TYPE_MAX, q, sizeof(q));
    const char *dot = strchr(type, '.');
    if (!dot)
        return util_error(err, errlen, "event type '%s': must be domain.action (no '.' found)", q);
    if (strchr(dot + 1, '.'))
        return util_error(err, errlen, "event type '%s': must be domain.action (more than one '.')",
                          q);
    if (!is_name(type, (size_t)(dot - type)) || !is_name(dot + 1, strlen(dot + 1)))
        return util_error(err, errlen,
                          "event type '%s': must be domain.action in lowercase "
                          "([a-z][a-z0-9_]* on each side)",
                          q);
    return 0;
}

int event_type_check(const char *type, char *err, size_t errlen)
{
    if (event_type_check_syntax(type, err, errlen) < 0)
        return -1;
    const char *action = strchr(type, '.') + 1;
    const char *word = strrchr(action, '_');
    word = word ? word + 1 : action;
    size_t n = strlen(word);
    if (word_is_past(word, n))
        return 0;
    char past[EVENT_TYPE_MAX + 16];
    if (suggest_past(word, n, past, sizeof(past)) == 0)
        return util_error(err, errlen,
                          "event type '%s': action '%s' is not in the past tense; "
                          "did you mean '%.*s%s'?",
                          type, action, (int)(word - type), type, past);
    return util_error(err, errlen,
                      "event type '%s': action '%s' is not in the past tense "
                      "(name what happened, e.g. 'created', 'sent')",
                      type, action);
}

int event_topic_for_type(const char *type, char *topic, size_t topiclen)
{
    if (!type || !topic)
        return -1;
    const char *dot = strchr(type, '.');
    if (!dot || dot == type)
        return -1;
    static const char suffix[] = "-events";
    size_t n = (size_t)(dot - type);
    if (n + sizeof(suffix) > topiclen)
        return -1;
    memcpy(topic, type, n);
    memcpy(topic + n, suffix, sizeof(suffix));
    return 0;
}

/* ---- life cycle ------------------------------------------------------- */

int event_build(event *ev, const char *type, json_t *data, const char *correlation_id,
                const char *causation_id, const char *source, char *err, size_t errlen)
{
    *ev = (event)EVENT_INIT;
    if (event_type_check(type, err, errlen) < 0)
        return -1;
    if (!json_is_object(data))
        return util_error(err, errlen, "data must be a JSON object, got %s",
                          data ? json_type_name(data) : "NULL");
    if (event_build_head(ev, type, correlation_id, causation_id, source, err, errlen) != 0)
        return -1;
    ev->data = json_incref(data);
    return 0;
}

int event_build_head(event *ev, const char *type, const char *correlation_id,
                     const char *causation_id, const char *source, char *err, size_t errlen)
{
    *ev = (event)EVENT_INIT;
    if (event_type_check(type, err, errlen) < 0)
        return -1;
    const struct {
        const char *name, *value;
        size_t max;
    } texts[] = {
        {"correlation_id", correlation_id, EVENT_REF_ID_MAX},
        {"causation_id", causation_id, EVENT_REF_ID_MAX},
        {"source", source, EVENT_SOURCE_MAX},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(texts); i++) {
        const char *v = texts[i].value;
        if (!v && i < 2)
            continue; /* generated / defaulted below */
        enum text_problem p = check_text(v ? v : "", v ? strlen(v) : 0, texts[i].max);
        if (p != TEXT_OK)
            return text_error(err, errlen, texts[i].name, p, texts[i].max);
    }

    event_uuid_v7(ev->event_id);
    util_strlcpy(ev->event_type, type, sizeof(ev->event_type));
    ev->occurred_ms = util_now_ms();
    if (correlation_id) {
        ev->correlation_id = xstrdup(correlation_id);
    } else {
        ev->correlation_id = xmalloc(EVENT_UUID_LEN + 1);
        event_uuid_v7(ev->correlation_id);
    }
    ev->causation_id = xstrdup(causation_id ? causation_id : ev->correlation_id);
    ev->source = xstrdup(source);
    return 0;
}

void event_release(event *ev)
{
    if (!ev)
        return;
    json_decref(ev->data);
    json_decref(ev->metadata_extra);
    free(ev->tracestate);
    free(ev->correlation_id);
    free(ev->causation_id);
    free(ev->source);
    *ev = (event)EVENT_INIT;
}

static char *strdup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

void event_copy(event *dst, const event *src)
{
    *dst = (event)EVENT_INIT;
    memcpy(dst->event_id, src->event_id, sizeof(dst->event_id));
    memcpy(dst->event_type, src->event_type, sizeof(dst->event_type));
    dst->occurred_ms = src->occurred_ms;
    dst->data = src->data ? json_deep_copy(src->data) : NULL;
    dst->correlation_id = strdup_or_null(src->correlation_id);
    dst->causation_id = strdup_or_null(src->causation_id);
    dst->source = strdup_or_null(src->source);
    dst->metadata_extra = src->metadata_extra ? json_deep_copy(src->metadata_extra) : NULL;
    memcpy(dst->traceparent, src->traceparent, sizeof(dst->traceparent));
    dst->tracestate = strdup_or_null(src->tracestate);
}

int event_set_trace(event *ev, const char *traceparent, const char *tracestate)
{
    if (traceparent && !trace_parent_valid(traceparent, strlen(traceparent)))
        return -1;
    free(ev->tracestate);
    ev->tracestate = NULL;
    ev->traceparent[0] = '\0';
    if (!traceparent)
        return 0;
    memcpy(ev->traceparent, traceparent, TRACE_PARENT_LEN + 1);
    if (tracestate && trace_state_valid(tracestate, strlen(tracestate)))
        ev->tracestate = xstrdup(tracestate);
    return 0;
}

/* Whether key is one the event holds in its own fields (not in
 * metadata_extra) when ev has them. */
static int metadata_own_key(const event *ev, const char *key)
{
    return strcmp(key, "correlation_id") == 0 || strcmp(key, "causation_id") == 0 ||
           strcmp(key, "source") == 0 || (ev->traceparent[0] && strcmp(key, "traceparent") == 0) ||
           (ev->tracestate && strcmp(key, "tracestate") == 0);
}

/* ---- JSON codec ------------------------------------------------------- */

/* Set obj[key] to the string s (NULL as ""). The strings of a valid event
 * are valid UTF-8 (checked by event_build/event_decode) and the keys are
 * the envelope's, so jansson's UTF-8 check is skipped (_nocheck: it was
 * ~80 ns per value); an invalid string is a caller bug, and the dump of
 * such an event fails. */
static void set_string(json_t *obj, const char *key, const char *s)
{
    json_t *v = json_string_nocheck(s ? s : "");
    if (!v) {
        fprintf(stderr, "herald: out of memory building event field '%s'\n", key);
        abort();
    }
    json_object_set_new_nocheck(obj, key, v);
}

json_t *event_to_json(const event *ev)
{
    char when[EVENT_TIME_LEN + 1];
    event_format_time(ev->occurred_ms, when);

    json_t *root = json_object();
    set_string(root, "event_id", ev->event_id);
    set_string(root, "event_type", ev->event_type);
    set_string(root, "occurred_at", when);
    json_object_set_new_nocheck(root, "data", ev->data ? json_incref(ev->data) : json_object());

    json_t *meta = json_object();
    set_string(meta, "correlation_id", ev->correlation_id);
    set_string(meta, "causation_id", ev->causation_id);
    set_string(meta, "source", ev->source);
    if (ev->traceparent[0])
        set_string(meta, "traceparent", ev->traceparent);
    if (ev->tracestate)
        set_string(meta, "tracestate", ev->tracestate);
    if (json_is_object(ev->metadata_extra)) {
        const char *key;
        json_t *value;
        json_object_foreach(ev->metadata_extra, key, value)
        {
            if (!metadata_own_key(ev, key))
                json_object_set(meta, key, value);
        }
    }
    json_object_set_new_nocheck(root, "metadata", meta);
    return root;
}

/* Write the envelope of event_to_json() straight to w: same members in
 * the same order, without building the tree. */
static void write_envelope(json_text *w, const event *ev, event_data_writer write_data,
                           const void *arg)
{
    char when[EVENT_TIME_LEN + 1];
    event_format_time(ev->occurred_ms, when);
    json_text_open_object(w);
    json_text_member_string(w, "event_id", ev->event_id);
    json_text_member_string(w, "event_type", ev->event_type);
    json_text_member_string(w, "occurred_at", when);
    json_text_key(w, "data");
    if (write_data) {
        write_data(w, arg);
    } else if (ev->data) {
        json_text_value(w, ev->data);
    } else {
        json_text_open_object(w);
        json_text_close_object(w);
    }
    json_text_key(w, "metadata");
    json_text_open_object(w);
    json_text_member_string(w, "correlation_id", ev->correlation_id ? ev->correlation_id : "");
    json_text_member_string(w, "causation_id", ev->causation_id ? ev->causation_id : "");
    json_text_member_string(w, "source", ev->source ? ev->source : "");
    if (ev->traceparent[0]) {
        json_text_member_string(w, "traceparent", ev->traceparent);
    }
    if (ev->tracestate) {
        json_text_member_string(w, "tracestate", ev->tracestate);
    }
    if (json_is_object(ev->metadata_extra)) {
        const char *key;
        size_t key_len;
        json_t *value;
        json_object_keylen_foreach(ev->metadata_extra, key, key_len, value)
        {
            if (!metadata_own_key(ev, key)) {
                json_text_stringn(w, key, key_len);
                json_text_value(w, value);
            }
        }
    }
    json_text_close_object(w);
    json_text_close_object(w);
}

char *event_encode(const event *ev, size_t *len_out)
{
    json_text *w = json_text_new();
    write_envelope(w, ev, NULL, NULL);
    char *text = json_text_finish(w, len_out);
    if (text)
        return text;
    /* data nested deeper than the writer allows: jansson writes it */
    json_t *root = event_to_json(ev);
    text = json_text_dump(root, len_out);
    json_decref(root);
    return text;
}

char *event_encode_with(const event *ev, event_data_writer write_data, const void *arg,
                        size_t *len_out)
{
    json_text *w = json_text_new();
    write_envelope(w, ev, write_data, arg);
    return json_text_finish(w, len_out);
}

/* Fetch obj[key] as a string into *s / *len; path names it in errors. */
static int get_string(json_t *obj, const char *key, const char *path, const char **s, size_t *len,
                      char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return util_error(err, errlen, "field '%s': missing", path);
    if (!json_is_string(v))
        return util_error(err, errlen, "field '%s': expected a string, got %s", path,
                          json_type_name(v));
    *s = json_string_value(v);
    *len = json_string_length(v);
    return 0;
}

/* Fetch obj[key] as an object (borrowed); path names it in errors. */
static json_t *get_object(json_t *obj, const char *key, const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        util_error(err, errlen, "field '%s': missing", path);
        return NULL;
    }
    if (!json_is_object(v)) {
        util_error(err, errlen, "field '%s': expected an object, got %s", path, json_type_name(v));
        return NULL;
    }
    return v;
}

int event_from_json(event *ev, json_t *root, char *err, size_t errlen)
{
    event tmp = EVENT_INIT;
    const char *s;
    size_t len;
    char q[80], sub[320];

    *ev = (event)EVENT_INIT;
    if (!json_is_object(root))
        return util_error(err, errlen, "top level must be a JSON object, got %s",
                          json_type_name(root));

    if (get_string(root, "event_id", "event_id", &s, &len, err, errlen) < 0)
        goto fail;
    if (len != EVENT_UUID_LEN || !event_uuid_valid(s)) {
        util_error(err, errlen, "field 'event_id': bad UUID '%s'",
                   quote_value(s, 48, q, sizeof(q)));
        goto fail;
    }
    memcpy(tmp.event_id, s, EVENT_UUID_LEN + 1);

    if (get_string(root, "event_type", "event_type", &s, &len, err, errlen) < 0)
        goto fail;
    if (strlen(s) != len) {
        util_error(err, errlen, "field 'event_type': contains a control character");
        goto fail;
    }
    if (event_type_check_syntax(s, sub, sizeof(sub)) < 0) {
        util_error(err, errlen, "field 'event_type': %s", sub);
        goto fail;
    }
    memcpy(tmp.event_type, s, len + 1);

    if (get_string(root, "occurred_at", "occurred_at", &s, &len, err, errlen) < 0)
        goto fail;
    if (strlen(s) != len || event_parse_time(s, &tmp.occurred_ms) < 0) {
        util_error(err, errlen, "field 'occurred_at': bad timestamp '%s'",
                   quote_value(s, 48, q, sizeof(q)));
        goto fail;
    }

    json_t *data = get_object(root, "data", "data", err, errlen);
    if (!data)
        goto fail;
    tmp.data = json_incref(data);

    json_t *meta = get_object(root, "metadata", "metadata", err, errlen);
    if (!meta)
        goto fail;
    const struct {
        const char *key, *path;
        size_t max;
        char **slot;
    } ids[] = {
        {"correlation_id", "metadata.correlation_id", EVENT_REF_ID_MAX, &tmp.correlation_id},
        {"causation_id", "metadata.causation_id", EVENT_REF_ID_MAX, &tmp.causation_id},
        {"source", "metadata.source", EVENT_SOURCE_MAX, &tmp.source},
    };
    for (size_t i = 0; i < UTIL_ARRAY_LEN(ids); i++) {
        if (get_string(meta, ids[i].key, ids[i].path, &s, &len, err, errlen) < 0)
            goto fail;
        enum text_problem p = check_text(s, len, ids[i].max);
        if (p != TEXT_OK) {
            snprintf(sub, sizeof(sub), "field '%s'", ids[i].path);
            text_error(err, errlen, sub, p, ids[i].max);
            goto fail;
        }
        *ids[i].slot = xstrdup(s);
    }

    json_t *tp = json_object_get(meta, "traceparent");
    if (json_is_string(tp) && trace_parent_valid(json_string_value(tp), json_string_length(tp))) {
        memcpy(tmp.traceparent, json_string_value(tp), TRACE_PARENT_LEN + 1);
        json_t *ts = json_object_get(meta, "tracestate");
        if (json_is_string(ts) && trace_state_valid(json_string_value(ts), json_string_length(ts)))
            tmp.tracestate = xstrdup(json_string_value(ts));
    }

    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value)
    {
        if (metadata_own_key(&tmp, key))
            continue;
        if (!tmp.metadata_extra)
            tmp.metadata_extra = json_object();
        json_object_set(tmp.metadata_extra, key, value);
    }

    *ev = tmp;
    return 0;

fail:
    event_release(&tmp);
    return -1;
}

int event_decode(event *ev, const char *json, size_t len, char *err, size_t errlen)
{
    *ev = (event)EVENT_INIT;
    if (len > EVENT_MAX_BYTES)
        return util_error(err, errlen, "event is %zu bytes, over the %d-byte limit", len,
                          EVENT_MAX_BYTES);
    json_error_t jerr;
    /* json_loadb(JSON_REJECT_DUPLICATES | JSON_DECODE_ANY), faster */
    json_t *root = json_read(json ? json : "", json ? len : 0, &jerr);
    if (!root)
        return util_error(err, errlen, "malformed JSON at line %d, column %d (byte %d): %s",
                          jerr.line, jerr.column, jerr.position, jerr.text);
    int rc = event_from_json(ev, root, err, errlen);
    json_decref(root);
    return rc;
}
