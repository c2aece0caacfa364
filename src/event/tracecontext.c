/*
 * tracecontext.c - W3C Trace Context values (see tracecontext.h).
 *
 * Design: a traceparent is fixed-width text, so it is checked character
 * by character against the version-00 layout without any allocation; the
 * parsed form is the text itself (herald never needs the ids as numbers).
 * New ids are 24 random bytes per call from util_random_bytes (the kernel's
 * CSPRNG);
 * an all-zero id (probability 2^-64) is drawn again, since the spec makes
 * it invalid.
 *
 * Threads: no state; everything is reentrant.
 */
#include "event/tracecontext.h"

#include "common/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Whether s[0..n) is lowercase hex; *all_zero tells if every digit is 0. */
static int hex_field(const char *s, size_t n, int *all_zero)
{
    *all_zero = 1;
    for (size_t i = 0; i < n; i++) {
        if (!is_lower_hex(s[i]))
            return 0;
        if (s[i] != '0')
            *all_zero = 0;
    }
    return 1;
}

int trace_parent_parse(const char *s, size_t len, char out[TRACE_PARENT_LEN + 1], char *err,
                       size_t errlen)
{
    int zero;
    if (!s || len < TRACE_PARENT_LEN)
        return util_error(err, errlen, "traceparent: %zu characters, expected %d", s ? len : 0,
                          TRACE_PARENT_LEN);
    if (!hex_field(s, 2, &zero) || s[2] != '-')
        return util_error(err, errlen, "traceparent: version must be 2 lowercase hex digits");
    if (s[0] == 'f' && s[1] == 'f')
        return util_error(err, errlen, "traceparent: version ff is invalid");
    int v00 = s[0] == '0' && s[1] == '0';
    if (v00 && len != TRACE_PARENT_LEN)
        return util_error(err, errlen, "traceparent: %zu characters, expected %d for version 00",
                          len, TRACE_PARENT_LEN);
    if (!v00 && len > TRACE_PARENT_LEN && s[TRACE_PARENT_LEN] != '-')
        return util_error(err, errlen, "traceparent: unexpected data after the flags");
    if (!hex_field(s + 3, TRACE_ID_HEX, &zero) || s[35] != '-')
        return util_error(err, errlen, "traceparent: trace id must be 32 lowercase hex digits");
    if (zero)
        return util_error(err, errlen, "traceparent: trace id is all zeros");
    if (!hex_field(s + 36, TRACE_SPAN_HEX, &zero) || s[52] != '-')
        return util_error(err, errlen, "traceparent: parent id must be 16 lowercase hex digits");
    if (zero)
        return util_error(err, errlen, "traceparent: parent id is all zeros");
    if (!hex_field(s + 53, 2, &zero))
        return util_error(err, errlen, "traceparent: flags must be 2 lowercase hex digits");
    memcpy(out, s, TRACE_PARENT_LEN);
    out[0] = out[1] = '0';
    out[TRACE_PARENT_LEN] = '\0';
    return 0;
}

int trace_parent_valid(const char *s, size_t len)
{
    char tmp[TRACE_PARENT_LEN + 1];
    return s && len == TRACE_PARENT_LEN && s[0] == '0' && s[1] == '0' &&
           trace_parent_parse(s, len, tmp, NULL, 0) == 0;
}

static int all_zero(const unsigned char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

static void put_hex(char *out, const unsigned char *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
}

void trace_parent_new(char out[TRACE_PARENT_LEN + 1])
{
    unsigned char r[24]; /* 16 trace id + 8 span id */
    do
        util_random_bytes(r, sizeof(r));
    while (all_zero(r, 16) || all_zero(r + 16, 8));
    memcpy(out, "00-", 3);
    put_hex(out + 3, r, 16);
    out[35] = '-';
    put_hex(out + 36, r + 16, 8);
    memcpy(out + 52, "-01", 4); /* with the NUL */
}

void trace_parent_child(const char *parent, char out[TRACE_PARENT_LEN + 1])
{
    unsigned char r[8];
    do
        util_random_bytes(r, sizeof(r));
    while (all_zero(r, sizeof(r)));
    memcpy(out, parent, TRACE_PARENT_LEN);
    put_hex(out + 36, r, sizeof(r));
    out[TRACE_PARENT_LEN] = '\0';
}

void trace_parent_trace_id(const char *traceparent, char out[TRACE_ID_HEX + 1])
{
    memcpy(out, traceparent + 3, TRACE_ID_HEX);
    out[TRACE_ID_HEX] = '\0';
}

void trace_parent_span_id(const char *traceparent, char out[TRACE_SPAN_HEX + 1])
{
    memcpy(out, traceparent + 36, TRACE_SPAN_HEX);
    out[TRACE_SPAN_HEX] = '\0';
}

int trace_state_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > TRACE_STATE_MAX)
        return 0;
    int content = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e)
            return 0;
        if (c != ' ' && c != ',')
            content = 1;
    }
    return content;
}
