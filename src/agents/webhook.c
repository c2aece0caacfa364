/*
 * webhook.c - JSON POSTs through libcurl (see webhook.h).
 *
 * Design
 * - One easy handle per webhook, configured once (headers, protocols,
 *   callbacks) and reused for every post, so keep-alive connections to the
 *   same host are reused. Per post only the URL, the body and the timeout
 *   change.
 * - "Expect:" is sent empty: libcurl would otherwise announce larger bodies
 *   with "Expect: 100-continue" and wait for an interim answer that simple
 *   webhook receivers never send.
 * - Headers are read by a header callback. Retry-After is taken from the
 *   final answer only: every status line ("HTTP/...") forgets what an
 *   interim answer said. The value is parsed here rather than with
 *   CURLINFO_RETRY_AFTER, which cannot tell "absent" from "0" and gives a
 *   negative delay for a date in the past; dates are parsed by libcurl's
 *   curl_getdate() (RFC 1123 and the other HTTP-date forms).
 * - The body is kept up to WEBHOOK_BODY_MAX bytes for error messages
 *   (Slack answers "invalid_payload", "channel_not_found", ...); the rest
 *   is read and dropped.
 * - CURLOPT_NOSIGNAL: libcurl must not use signals, herald is threaded.
 *
 * - Metrics: each POST's duration, and a non-2xx answer or no answer by
 *   reason (3xx, 4xx, 5xx, transport), go to herald_webhook_* (catalog.h).
 *
 * Threads: libcurl's global initialisation runs once (pthread_once) and is
 * never undone, since other threads may still use libcurl; a webhook is
 * used by one thread at a time.
 */
#include "agents/webhook.h"

#include "common/util.h"
#include "metrics/catalog.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct webhook {
    CURL *curl;
    struct curl_slist *headers;
    char errbuf[CURL_ERROR_SIZE];
    webhook_response *resp; /* of the post in progress */
    size_t body_len;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- Retry-After ------------------------------------------------------ */

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int64_t webhook_parse_retry_after(const char *value, int64_t now_s)
{
    if (!value)
        return -1;
    while (is_blank(*value))
        value++;
    size_t n = strlen(value);
    while (n > 0 && is_blank(value[n - 1]))
        n--;
    if (n == 0 || n > 64)
        return -1;
    char text[65];
    memcpy(text, value, n);
    text[n] = '\0';

    if (strspn(text, "0123456789") == n) {
        /* delay-seconds; anything beyond a year is a year */
        const int64_t max_s = 365LL * 24 * 3600;
        int64_t s = 0;
        for (size_t i = 0; i < n && s <= max_s; i++)
            s = s * 10 + (text[i] - '0');
        return (s > max_s ? max_s : s) * 1000;
    }
    time_t when = curl_getdate(text, NULL);
    if (when == (time_t)-1)
        return -1;
    int64_t delay_s = (int64_t)when - now_s;
    return delay_s > 0 ? delay_s * 1000 : 0;
}

/* ---- callbacks -------------------------------------------------------- */

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata)
{
    webhook *w = userdata;
    size_t len = size * nitems;
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        w->resp->retry_after_ms = -1; /* a new answer begins */
        return len;
    }
    static const char name[] = "retry-after:";
    size_t name_len = sizeof(name) - 1;
    if (len > name_len && strncasecmp(buf, name, name_len) == 0) {
        size_t vlen = len - name_len;
        if (vlen > 64)
            return len; /* no valid value is that long */
        char value[65];
        memcpy(value, buf + name_len, vlen);
        value[vlen] = '\0';
        w->resp->retry_after_ms = webhook_parse_retry_after(value, (int64_t)time(NULL));
    }
    return len;
}

static size_t on_body(char *buf, size_t size, size_t nmemb, void *userdata)
{
    webhook *w = userdata;
    size_t len = size * nmemb;
    size_t room = WEBHOOK_BODY_MAX - w->body_len;
    size_t take = len < room ? len : room;
    for (size_t i = 0; i < take; i++) {
        unsigned char c = (unsigned char)buf[i];
        w->resp->body[w->body_len++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    w->resp->body[w->body_len] = '\0';
    return len;
}

/* ---- life cycle ------------------------------------------------------- */

webhook *webhook_new(void)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK)
        abort(); /* only fails when out of memory */
    webhook *w = xcalloc(1, sizeof(*w));
    w->curl = curl_easy_init();
    if (!w->curl)
        abort();
    w->headers = curl_slist_append(NULL, "Content-Type: application/json");
    w->headers = curl_slist_append(w->headers, "Expect:");
    if (!w->headers)
        abort();
    CURL *c = w->curl;
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, w->headers);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "herald");
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, w->errbuf);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, w);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, w);
    return w;
}

void webhook_free(webhook *w)
{
    if (!w)
        return;
    curl_easy_cleanup(w->curl);
    curl_slist_free_all(w->headers);
    free(w);
}

int webhook_url_check(const char *url, char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init_once);
    if (!url || !*url)
        return util_error(err, errlen, "empty URL");
    CURLU *u = curl_url();
    if (!u)
        abort();
    char *scheme = NULL, *host = NULL;
    int rc = -1;
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        util_error(err, errlen, "not a valid URL (%s)", curl_url_strerror(uc));
        goto done;
    }
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        util_error(err, errlen, "not an http or https URL");
        goto done;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
        util_error(err, errlen, "URL has no host");
        goto done;
    }
    rc = 0;
done:
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return rc;
}

/* ---- posting ---------------------------------------------------------- */

int webhook_post_json(webhook *w, const char *url, const char *body, size_t len, int64_t timeout_ms,
                      webhook_response *resp, char *err, size_t errlen)
{
    resp->status = 0;
    resp->retry_after_ms = -1;
    resp->body[0] = '\0';
    w->resp = resp;
    w->body_len = 0;
    w->errbuf[0] = '\0';
    if (timeout_ms <= 0)
        timeout_ms = 1;

    CURL *c = w->curl;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);

    int64_t start = util_monotonic_ns();
    CURLcode rc = curl_easy_perform(c);
    int64_t took = util_monotonic_ns() - start;
    w->resp = NULL;
    if (rc != CURLE_OK) {
        metrics_webhook_call(took, "transport");
        resp->retry_after_ms = -1;
        return util_error(err, errlen, "%s", w->errbuf[0] ? w->errbuf : curl_easy_strerror(rc));
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    long s = resp->status;
    metrics_webhook_call(took, s >= 200 && s <= 299   ? NULL
                               : s >= 300 && s <= 399 ? "3xx"
                               : s >= 400 && s <= 499 ? "4xx"
                               : s >= 500 && s <= 599 ? "5xx"
                                                      : "other");
    return 0;
}
