/*
 * json_text.c - compact JSON text written in one pass (see json_text.h).
 *
 * yajl's generator does the JSON (escaping, separators, nesting); it
 * prints through a callback into one growing buffer that becomes the
 * result, so a short text costs the writer, its generator and one buffer.
 */
#include "common/json_text.h"

#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#define INITIAL_CAPACITY 1024
/* jansson's text of one real number fits easily ("%.17g" and a ".0"). */
#define REAL_TEXT_MAX 64

struct json_text {
    yajl_gen gen;
    char *buf;
    size_t len, cap;
    int failed;
};

static void append(void *ctx, const char *s, size_t n)
{
    json_text *w = ctx;
    if (w->len + n + 1 > w->cap) {
        while (w->len + n + 1 > w->cap)
            w->cap *= 2;
        w->buf = xrealloc(w->buf, w->cap);
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

json_text *json_text_new(void)
{
    json_text *w = xcalloc(1, sizeof(*w));
    w->gen = yajl_gen_alloc(NULL);
    if (!w->gen) {
        fprintf(stderr, "herald: out of memory creating a JSON writer\n");
        abort();
    }
    w->cap = INITIAL_CAPACITY;
    w->buf = xmalloc(w->cap);
    yajl_gen_config(w->gen, yajl_gen_print_callback, append, w);
    return w;
}

static void check(json_text *w, yajl_gen_status st)
{
    if (st != yajl_gen_status_ok)
        w->failed = 1;
}

void json_text_open_object(json_text *w)
{
    check(w, yajl_gen_map_open(w->gen));
}

void json_text_close_object(json_text *w)
{
    check(w, yajl_gen_map_close(w->gen));
}

void json_text_open_array(json_text *w)
{
    check(w, yajl_gen_array_open(w->gen));
}

void json_text_close_array(json_text *w)
{
    check(w, yajl_gen_array_close(w->gen));
}

void json_text_stringn(json_text *w, const char *s, size_t len)
{
    check(w, yajl_gen_string(w->gen, (const unsigned char *)s, len));
}

void json_text_key(json_text *w, const char *key)
{
    json_text_stringn(w, key, strlen(key));
}

void json_text_string(json_text *w, const char *s)
{
    if (s)
        json_text_stringn(w, s, strlen(s));
    else
        json_text_null(w);
}

void json_text_int(json_text *w, long long v)
{
    check(w, yajl_gen_integer(w->gen, v));
}

void json_text_null(json_text *w)
{
    check(w, yajl_gen_null(w->gen));
}

void json_text_member_string(json_text *w, const char *key, const char *s)
{
    json_text_key(w, key);
    json_text_string(w, s);
}

void json_text_member_int(json_text *w, const char *key, long long v)
{
    json_text_key(w, key);
    json_text_int(w, v);
}

void json_text_value(json_text *w, const json_t *v)
{
    if (w->failed)
        return;
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT: {
        const char *key;
        size_t key_len;
        json_t *member;
        json_text_open_object(w);
        /* the macro wants a non-const object; it does not modify it */
        json_object_keylen_foreach((json_t *)v, key, key_len, member)
        {
            json_text_stringn(w, key, key_len);
            json_text_value(w, member);
        }
        json_text_close_object(w);
        break;
    }
    case JSON_ARRAY:
        json_text_open_array(w);
        for (size_t i = 0; i < json_array_size(v); i++)
            json_text_value(w, json_array_get(v, i));
        json_text_close_array(w);
        break;
    case JSON_STRING:
        json_text_stringn(w, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        json_text_int(w, json_integer_value(v));
        break;
    case JSON_REAL: {
        /* jansson's own formatting, so reals read back the same */
        char num[REAL_TEXT_MAX];
        size_t n = json_dumpb(v, num, sizeof(num), JSON_ENCODE_ANY | JSON_COMPACT);
        if (n == 0 || n > sizeof(num))
            w->failed = 1;
        else
            check(w, yajl_gen_number(w->gen, num, n));
        break;
    }
    case JSON_TRUE:
        check(w, yajl_gen_bool(w->gen, 1));
        break;
    case JSON_FALSE:
        check(w, yajl_gen_bool(w->gen, 0));
        break;
    case JSON_NULL:
        json_text_null(w);
        break;
    }
}

char *json_text_finish(json_text *w, size_t *len)
{
    char *text = NULL;
    if (!w->failed) {
        text = w->buf;
        text[w->len] = '\0';
        if (len)
            *len = w->len;
    } else {
        free(w->buf);
    }
    yajl_gen_free(w->gen);
    free(w);
    return text;
}

char *json_text_dump(const json_t *v, size_t *len)
{
    json_text *w = json_text_new();
    json_text_value(w, v);
    char *text = json_text_finish(w, len);
    if (text)
        return text;
    text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        /* Only possible if jansson cannot allocate. */
        fprintf(stderr, "herald: out of memory encoding JSON\n");
        abort();
    }
    if (len)
        *len = strlen(text);
    return text;
}
