"""A real HTTP receiver for webhook tests: http.server on 127.0.0.1 (an
ephemeral port) in a background thread, recording every request and
answering from a script.

    with WebhookReceiver() as hook:
        hook.answer(503, times=2)                 # the next 2 requests get 503
        hook.answer(429, headers={"Retry-After": "1"})
        hook.answer(400, body="invalid_payload")  # then one 400
        hook.answer(200, delay=3.0)               # then a 200 after 3 s
        ...                                       # afterwards: 200 "ok"
        reqs = hook.wait_for(4)                   # list of Request

Each Request has .method, .path, .headers (case-insensitive, an
email.message.Message), .body (bytes), .json (parsed body or None),
.status (what we answered) and .at (time.monotonic() on arrival).
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers import CMD_TIMEOUT


@dataclass
class Request:
    method: str
    path: str
    headers: object
    body: bytes
    json: object
    at: float
    status: int = 0


@dataclass
class _Answer:
    status: int
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


class WebhookReceiver:
    def __init__(self, default_status=200, default_body="ok"):
        self._lock = threading.Condition()
        self._script = []
        self._requests = []
        self._default = _Answer(default_status, {}, default_body.encode())
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as libcurl expects

            def do_POST(self):
                receiver._handle(self)

            do_GET = do_PUT = do_POST

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # ---- script and results -------------------------------------------

    @property
    def port(self):
        return self._server.server_address[1]

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, status, times=1, headers=None, body="", delay=0.0):
        """Queue `times` answers with this status (after those queued
        before), each sent `delay` seconds after the request arrived."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            for _ in range(times):
                self._script.append(_Answer(status, dict(headers or {}), data, delay))

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def wait_for(self, n, timeout=CMD_TIMEOUT):
        """Wait until at least n requests arrived; returns all of them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self._requests)} webhook requests within "
                                         f"{timeout}s, expected {n}: {self._requests}")
                self._lock.wait(left)
            return list(self._requests)

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=CMD_TIMEOUT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the server side ----------------------------------------------

    def _handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        with self._lock:
            ans = self._script.pop(0) if self._script else self._default
            req = Request(h.command, h.path, h.headers, body, parsed, time.monotonic(),
                          ans.status)
            self._requests.append(req)
            self._lock.notify_all()
        if ans.delay:
            time.sleep(ans.delay)
        try:
            h.send_response(ans.status)
            for k, v in ans.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(len(ans.body)))
            h.end_headers()
            h.wfile.write(ans.body)
        except OSError:
            h.close_connection = True  # the client gave up waiting
