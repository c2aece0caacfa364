/*
 * server.h - the Task API's HTTP/1.1 server on libmicrohttpd.
 *
 * A pool of threads waiting with poll(2) or epoll; a request that changes
 * a task is suspended until its group commit is durable, while the pool
 * keeps reading the requests that fill the next batch.
 */
#ifndef HERALD_SERVER_H
#define HERALD_SERVER_H

#include "api/routes.h"
#include "store/task_store.h"

#include <stddef.h>

typedef struct api_server api_server;

/*
 * Listen on `listen` ("HOST:PORT", "[V6]:PORT"; port 0 picks a free port)
 * and serve the Task API from store (borrowed; must outlive the server);
 * the HTTP threads wait with epoll if use_epoll, else with poll(2).
 * Returns NULL with err filled on failure (bad address, port in use, ...).
 */
api_server *api_server_start(const char *listen, task_store *store, int use_epoll, char *err,
                             size_t errlen);

/*
 * Serve GET /readyz with fn(arg) (see api_readyz() in routes.h); until this
 * is called /readyz answers 503. arg is borrowed and must outlive the
 * server. Thread-safe.
 */
void api_server_set_readiness(api_server *srv, api_ready_fn fn, void *arg);

/* The port actually bound. */
unsigned api_server_port(const api_server *srv);

/*
 * Graceful stop: stop accepting connections, wait up to timeout_ms for the
 * requests in flight to finish (they complete and are answered), then close
 * every connection and free the server. NULL is a no-op.
 */
void api_server_stop(api_server *srv, int timeout_ms);

/* Parse "HOST:PORT" into host and port (for errors before starting). 0 or -1. */
int api_parse_listen(const char *listen, char *host, size_t hostlen, unsigned *port);

#endif
