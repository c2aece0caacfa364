/*
 * json_read.h - parse a request body into a jansson tree, quickly.
 *
 * json_read(buf, len, err) returns exactly what jansson's
 *     json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, err)
 * returns: the same tree (types, values, member order), or NULL with the
 * same error (text, line, column, position), since every document that
 * fails goes through json_loadb().
 *
 * Why: jansson's lexer reads a character at a time through a stream
 * (~150 instructions per byte); it was ~18,000 of the Task API's HTTP
 * thread's ~86,000 instructions per create. yajl's table-driven lexer
 * reads the same text several times faster. json_read() lets yajl's
 * callback parser build the jansson tree for the documents where the two
 * parsers cannot differ, and hands every other document to json_loadb():
 *  - plain ASCII only: no byte >= 0x7f (jansson checks UTF-8 more strictly
 *    than yajl: overlong forms, surrogates), no backslash (yajl turns a lone
 *    \uD800 into '?', jansson refuses it; \u0000 is refused by jansson
 *    only), no control byte but tab, CR and LF (yajl also skips \f and \v
 *    as white space);
 *  - nesting up to JSON_READ_MAX_DEPTH, keys up to JSON_READ_MAX_KEY bytes,
 *    numbers up to JSON_READ_MAX_NUMBER characters that convert without
 *    ERANGE, no duplicate key;
 *  - and any document yajl refuses, so that the error (its text and
 *    position) is always jansson's.
 * tests/unit/test_json_read.c holds the two against each other over
 * generated and mutated documents.
 */
#ifndef HERALD_JSON_READ_H
#define HERALD_JSON_READ_H

#include <jansson.h>
#include <stddef.h>

#define JSON_READ_MAX_DEPTH 64
#define JSON_READ_MAX_KEY 256
#define JSON_READ_MAX_NUMBER 64

/* As json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, err):
 * a new reference, or NULL with *err filled (err may be NULL; it is only
 * written when NULL is returned). */
json_t *json_read(const char *buf, size_t len, json_error_t *err);

/* The fast path alone, for tests: yajl's tree, or NULL where json_read()
 * hands the document to json_loadb() (not plain ASCII, refused by yajl,
 * or cancelled). */
json_t *json_read_fast(const char *buf, size_t len);

#endif
