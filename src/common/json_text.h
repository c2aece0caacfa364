/*
 * json_text.h - compact JSON text written in one pass (yajl's generator).
 *
 * jansson stays herald's JSON library for parsing and for values built as
 * trees. Writing text from a jansson tree costs a malloc per value and key
 * to build the tree and ~30 instructions per character to dump it; on the
 * Task API's hot path (the task.created event and the 201 body, ~900 bytes
 * per request) that was ~20 % of the server's CPU. A json_text writes the
 * same compact text straight from C values through yajl's generator, and
 * writes jansson values it is given (an event's data) without dumping them
 * through jansson.
 *
 *     json_text *w = json_text_new();
 *     json_text_open_object(w);
 *     json_text_key(w, "id");
 *     json_text_string(w, id);
 *     json_text_close_object(w);
 *     char *s = json_text_finish(w, &len);   // malloc'd; w is gone
 *
 * Errors are sticky: a call that yajl refuses (a key where a value is due,
 * nesting deeper than yajl's 128 levels) marks the writer failed and
 * json_text_finish() returns NULL; callers then fall back to jansson.
 * Strings must be valid UTF-8 (jansson's values always are). The output is
 * byte for byte jansson's JSON_COMPACT text (tests/unit/test_json_text.c
 * holds the two against each other).
 * A writer is used by one thread at a time.
 */
#ifndef HERALD_JSON_TEXT_H
#define HERALD_JSON_TEXT_H

#include <jansson.h>
#include <stddef.h>

typedef struct json_text json_text;

/* A new writer (aborts if out of memory, like xmalloc). */
json_text *json_text_new(void);

void json_text_open_object(json_text *w);
void json_text_close_object(json_text *w);
void json_text_open_array(json_text *w);
void json_text_close_array(json_text *w);
/* An object member's name. */
void json_text_key(json_text *w, const char *key);
/* A string value; NULL writes null. */
void json_text_string(json_text *w, const char *s);
void json_text_stringn(json_text *w, const char *s, size_t len);
void json_text_int(json_text *w, long long v);
void json_text_null(json_text *w);
/* An object member: json_text_key() and then the value. */
void json_text_member_string(json_text *w, const char *key, const char *s);
void json_text_member_int(json_text *w, const char *key, long long v);
/* Any jansson value (NULL writes null), in jansson's member order. */
void json_text_value(json_text *w, const json_t *v);

/* The text (malloc'd, NUL-terminated, length in *len when len is not
 * NULL), or NULL if a call failed. Frees the writer either way. */
char *json_text_finish(json_text *w, size_t *len);

/* Encode one jansson value as compact JSON: json_text's writer, or
 * jansson's own dump when the writer cannot (nesting deeper than yajl
 * allows). malloc'd; aborts only if out of memory. */
char *json_text_dump(const json_t *v, size_t *len);

#endif
