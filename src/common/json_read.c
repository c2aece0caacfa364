/*
 * json_read.c - a jansson tree from yajl's callback parser for plain
 * ASCII documents, jansson's own parser for every other (json_read.h).
 *
 * The callbacks keep a stack of open containers; a value goes into the
 * container on top (under the key seen last when that is an object), and
 * a new container is linked into its parent when it opens, so the only
 * state between callbacks is the stack and one pending key. Any callback
 * that meets something jansson might treat differently (a duplicate key,
 * a number out of range, nesting too deep) cancels the parse, and the
 * document goes to json_loadb().
 */
#include "common/json_read.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#define JANSSON_FLAGS (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY)

typedef struct reader {
    yajl_handle yajl;
    size_t len;      /* of the document */
    int finishing;   /* in yajl_complete_parse(), which parses a buffer of its own */
    size_t root_end; /* bytes read when the top-level value was complete */
    json_t *root;
    json_t *stack[JSON_READ_MAX_DEPTH]; /* open containers, innermost last */
    size_t depth;
    char key[JSON_READ_MAX_KEY];
    size_t key_len;
    int have_key; /* key[] waits for its value */
} reader;

/* The plain-ASCII test of json_read.h. */
static int plain(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c >= 0x7f || c == '\\' || (c < 0x20 && c != '\t' && c != '\n' && c != '\r'))
            return 0;
    }
    return 1;
}

/* Where the top-level value that just completed ends in the document. */
static size_t root_end(const reader *r)
{
    return r->finishing ? r->len : yajl_get_bytes_consumed(r->yajl);
}

/* Put v where the document is: the root, the open array, or the open
 * object under the pending key. 1, or 0 (v released) to cancel. */
static int place(reader *r, json_t *v)
{
    if (!v)
        return 0;
    if (r->depth == 0) {
        if (r->root) { /* a second top-level value: yajl refuses it too */
            json_decref(v);
            return 0;
        }
        r->root = v;
        r->root_end = root_end(r);
        return 1;
    }
    json_t *top = r->stack[r->depth - 1];
    if (json_is_array(top))
        return json_array_append_new(top, v) == 0;
    if (!r->have_key) {
        json_decref(v);
        return 0;
    }
    r->have_key = 0;
    return json_object_setn_new_nocheck(top, r->key, r->key_len, v) == 0;
}

static int on_null(void *ctx)
{
    return place(ctx, json_null());
}

static int on_boolean(void *ctx, int value)
{
    return place(ctx, json_boolean(value));
}

/* jansson's rule: a number with '.', 'e' or 'E' is a real, any other an
 * integer; out of range is an error there, so it goes to jansson here.
 * (herald never calls setlocale(): strtod() reads '.' as jansson does.) */
static int on_number(void *ctx, const char *text, size_t len)
{
    char buf[JSON_READ_MAX_NUMBER + 1];
    if (len == 0 || len > JSON_READ_MAX_NUMBER)
        return 0;
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    if (strpbrk(buf, ".eE")) {
        double d = strtod(buf, &end);
        if (errno == ERANGE || *end)
            return 0;
        return place(ctx, json_real(d));
    }
    long long i = strtoll(buf, &end, 10);
    if (errno == ERANGE || *end)
        return 0;
    return place(ctx, json_integer(i));
}

static int on_string(void *ctx, const unsigned char *s, size_t len)
{
    return place(ctx, json_stringn_nocheck((const char *)s, len));
}

static int open_container(reader *r, json_t *c)
{
    if (!c)
        return 0;
    if (r->depth == JSON_READ_MAX_DEPTH) {
        json_decref(c);
        return 0;
    }
    json_incref(c); /* one reference for the stack while it is open */
    if (!place(r, c)) {
        json_decref(c);
        return 0;
    }
    r->stack[r->depth++] = c;
    return 1;
}

static int close_container(reader *r)
{
    if (r->depth == 0)
        return 0;
    json_decref(r->stack[--r->depth]);
    if (r->depth == 0)
        r->root_end = root_end(r);
    return 1;
}

static int on_start_map(void *ctx)
{
    return open_container(ctx, json_object());
}

static int on_map_key(void *ctx, const unsigned char *key, size_t len)
{
    reader *r = ctx;
    if (len > sizeof(r->key) || r->depth == 0)
        return 0;
    /* jansson with JSON_REJECT_DUPLICATES refuses the document */
    if (json_object_getn(r->stack[r->depth - 1], (const char *)key, len))
        return 0;
    memcpy(r->key, key, len);
    r->key_len = len;
    r->have_key = 1;
    return 1;
}

static int on_end_container(void *ctx)
{
    return close_container(ctx);
}

static int on_start_array(void *ctx)
{
    return open_container(ctx, json_array());
}

static const yajl_callbacks callbacks = {
    on_null,        on_boolean,       NULL,
    NULL,           on_number,        on_string,
    on_start_map,   on_map_key,       on_end_container,
    on_start_array, on_end_container,
};

json_t *json_read_fast(const char *buf, size_t len)
{
    if (!plain(buf, len))
        return NULL;
    reader r;
    r.root = NULL;
    r.root_end = 0;
    r.depth = 0;
    r.key_len = 0;
    r.have_key = 0;
    yajl_handle h = yajl_alloc(&callbacks, NULL, &r);
    if (!h)
        return NULL;
    r.yajl = h;
    r.len = len;
    r.finishing = 0;
    int ok = yajl_parse(h, (const unsigned char *)buf, len) == yajl_status_ok;
    r.finishing = 1; /* a number at the very end completes only now */
    ok = ok && yajl_complete_parse(h) == yajl_status_ok && r.depth == 0 && r.root;
    yajl_free(h);
    /* yajl lets an unfinished token after the value pass at the end of the
     * input (`"a" "`); jansson allows nothing but white space there */
    for (size_t i = r.root_end; ok && i < len; i++)
        ok = buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r';
    while (r.depth > 0) /* a cancelled parse leaves containers open */
        close_container(&r);
    if (!ok) {
        json_decref(r.root);
        return NULL;
    }
    return r.root;
}

json_t *json_read(const char *buf, size_t len, json_error_t *err)
{
    json_t *v = json_read_fast(buf, len);
    return v ? v : json_loadb(buf, len, JANSSON_FLAGS, err);
}
