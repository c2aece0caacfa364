/*
 * webhook.h - POST a JSON body to an HTTP(S) URL through libcurl and report
 * what came back: the status, the Retry-After delay and the start of the
 * answer's body. Used by the agents that call webhooks (Slack).
 *
 * A webhook keeps one libcurl handle, so consecutive posts to the same host
 * reuse the connection. One thread at a time per webhook.
 */
#ifndef HERALD_WEBHOOK_H
#define HERALD_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

/* Longest part of an answer's body kept for error messages, in bytes. */
#define WEBHOOK_BODY_MAX 200

/* What one POST got back. */
typedef struct webhook_response {
    long status;                     /* HTTP status of the final answer */
    int64_t retry_after_ms;          /* its Retry-After (seconds, or an HTTP-date
                                        turned into a delay from now, at least 0),
                                        in ms; -1 when absent or unreadable */
    char body[WEBHOOK_BODY_MAX + 1]; /* start of the body, NUL-terminated,
                                        bytes outside printable ASCII as '?' */
} webhook_response;

typedef struct webhook webhook;

/* A new client (initialises libcurl once per process; never NULL). */
webhook *webhook_new(void);

/* Free the client and its connections; NULL is a no-op. */
void webhook_free(webhook *w);

/*
 * Check that url is an absolute http:// or https:// URL with a host.
 * Returns 0, or -1 with err filled ("not an http or https URL"). The URL
 * itself is never quoted in err: webhook URLs carry secrets.
 */
int webhook_url_check(const char *url, char *err, size_t errlen);

/*
 * POST len bytes of body with "Content-Type: application/json" to url,
 * giving the whole exchange at most timeout_ms (> 0). Redirects are not
 * followed (a 3xx is an answer like any other) and only http and https are
 * spoken. Returns 0 when an HTTP answer arrived, whatever its status (see
 * *resp); -1 when none did (bad URL, DNS, connection refused or reset, TLS,
 * timeout), with err filled by libcurl's description of the failure.
 */
int webhook_post_json(webhook *w, const char *url, const char *body, size_t len, int64_t timeout_ms,
                      webhook_response *resp, char *err, size_t errlen);

/*
 * Parse a Retry-After header value: delay-seconds ("120") or an HTTP-date
 * ("Wed, 21 Oct 2015 07:28:00 GMT", a delay from now_s, at least 0).
 * Surrounding blanks are ignored. Returns the delay in ms, or -1 when the
 * value is neither.
 */
int64_t webhook_parse_retry_after(const char *value, int64_t now_s);

#endif
