/*
 * tracecontext.h - W3C Trace Context (https://www.w3.org/TR/trace-context/)
 * values: parsing, validation and generation of `traceparent`, and the
 * checks herald applies to `tracestate`.
 *
 * A traceparent is "VV-TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT-PPPPPPPPPPPPPPPP-FF":
 * version (2 hex), trace id (32 hex, not all zero), parent id (16 hex, the
 * span of the sender; not all zero) and flags (2 hex; bit 0 = sampled), all
 * lowercase. herald stores and sends only version 00, exactly
 * TRACE_PARENT_LEN characters.
 *
 * Random ids come from getrandom(2) (the kernel's CSPRNG). Everything here
 * is reentrant and thread-safe.
 */
#ifndef HERALD_TRACECONTEXT_H
#define HERALD_TRACECONTEXT_H

#include <stddef.h>

/* Length of a version-00 traceparent, and of its trace id and span id. */
#define TRACE_PARENT_LEN 55
#define TRACE_ID_HEX 32
#define TRACE_SPAN_HEX 16
/* Longest tracestate herald keeps (the spec's propagation minimum). */
#define TRACE_STATE_MAX 512

/*
 * Parse a traceparent as received (len bytes at s, need not be
 * NUL-terminated) into herald's form: out receives "00-<trace>-<parent>-
 * <flags>". Version 00 must be exactly 55 characters; a higher version
 * (01..fe) is read as version 00 from its first 55 characters when they are
 * followed by nothing or by '-' (as the spec requires for forward
 * compatibility); version ff, uppercase hex, a zero trace or parent id and
 * any other shape are refused. Returns 0, or -1 with the reason in err.
 */
int trace_parent_parse(const char *s, size_t len, char out[TRACE_PARENT_LEN + 1], char *err,
                       size_t errlen);

/* 1 if s (len bytes) is exactly a valid version-00 traceparent, else 0. */
int trace_parent_valid(const char *s, size_t len);

/* A new trace: random trace id and span id, flags 01 (sampled: herald
 * records every event). */
void trace_parent_new(char out[TRACE_PARENT_LEN + 1]);

/*
 * A child span of parent (a valid version-00 traceparent): the same trace id
 * and flags, a new random span id.
 */
void trace_parent_child(const char *parent, char out[TRACE_PARENT_LEN + 1]);

/*
 * Copy the trace id (32 hex) or the span id (16 hex) of a valid traceparent
 * into out, NUL-terminated.
 */
void trace_parent_trace_id(const char *traceparent, char out[TRACE_ID_HEX + 1]);
void trace_parent_span_id(const char *traceparent, char out[TRACE_SPAN_HEX + 1]);

/*
 * Whether a tracestate value (len bytes) is kept: 1..TRACE_STATE_MAX
 * characters of printable ASCII (0x20..0x7e) with at least one character
 * other than spaces and commas. herald does not interpret the list;
 * it keeps it only together with a valid traceparent and passes it on
 * unchanged. Returns 1 if kept, else 0.
 */
int trace_state_valid(const char *s, size_t len);

#endif
