"""Helpers for the Task API end-to-end tests (test_api*.py): start `herald
api` / `herald up` on 127.0.0.1 with an ephemeral port, talk HTTP to it with
the standard library only, and read back the events it published.

Every server is started through the `procs` fixture (conftest.py), so it is
stopped when the test ends whatever happens."""

import http.client
import json
import re
import socket
import subprocess
import time

from helpers import CMD_TIMEOUT, HERALD_BIN, Proc, clean_env, consume_all

LISTENING = re.compile(r"Task API listening on http://127\.0\.0\.1:(\d+)\b")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")

TASK_KEYS = {"id", "title", "description", "owner_id", "priority", "status", "due_at",
             "created_at", "updated_at", "completed_at", "version"}
ENVELOPE_KEYS = {"event_id", "event_type", "occurred_at", "data", "metadata"}
METADATA_KEYS = {"correlation_id", "causation_id", "source"}
PROBLEM_KEYS = {"type", "title", "status", "detail"}

JSON = {"Content-Type": "application/json"}

# One HTTP exchange on localhost: generous for ASan and a loaded machine.
HTTP_TIMEOUT = 30.0


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.header_list = headers  # [(name, value)] as received
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def cid(self):
        return self.header("X-Correlation-ID")

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:300]!r}>"


class Api:
    """A client for one server: api.request(method, path, json=..., ...)
    opens a connection per request (so a request never depends on the
    state another left behind) and returns a Response."""

    def __init__(self, port, proc=None):
        self.port = port
        self.proc = proc

    def connection(self, timeout=HTTP_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, json_body=None, body=None, headers=None,
                timeout=HTTP_TIMEOUT):
        h = {}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            h.update(JSON)
        h.update(headers or {})
        if isinstance(body, str):
            body = body.encode()
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, r.reason, r.getheaders(), data)
        finally:
            conn.close()

    def raw(self, data, timeout=HTTP_TIMEOUT):
        """Send raw bytes, return everything the server sends until it
        closes the connection (or the timeout)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            chunks = []
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    chunks.append(b)
            except socket.timeout:
                pass
            return b"".join(chunks)

    def session(self):
        """A client that keeps one connection open (for many quick reads)."""
        return Session(self)

    # ---- shortcuts ----

    def create(self, title="write the report", owner_id="alice", headers=None, **fields):
        body = {"title": title, "owner_id": owner_id, **fields}
        r = self.request("POST", "/tasks", json_body=body, headers=headers)
        assert r.status == 201, r
        return r

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def events(self, task_id):
        r = self.get(f"/tasks/{task_id}/events")
        assert r.status == 200, r
        return r.json["events"]

    def healthy(self):
        r = self.get("/healthz")
        return r.status == 200 and r.json == {"status": "ok"}


class Session:
    """Reads over one keep-alive connection, reopened (and the request
    retried once) if the server closed it - so: not for changes."""

    def __init__(self, api):
        self.api = api
        self.conn = None

    def request(self, method, path, json_body=None, headers=None):
        body = json.dumps(json_body).encode() if json_body is not None else None
        h = dict(JSON) if body is not None else {}
        h.update(headers or {})
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = self.api.connection()
            try:
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
                continue
            if r.getheader("Connection", "").lower() == "close":
                self.close()
            return Response(r.status, r.reason, r.getheaders(), data)

    def all_tasks(self, query=""):
        """Every task, following next_after page by page (limit 500)."""
        tasks, after = [], None
        while True:
            q = f"/tasks?limit=500{query}" + (f"&after={after}" if after else "")
            r = self.request("GET", q)
            assert r.status == 200, r
            tasks += r.json["tasks"]
            after = r.json["next_after"]
            if after is None:
                return tasks

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_listening(proc, timeout=CMD_TIMEOUT):
    """Wait for the 'Task API listening on http://127.0.0.1:PORT' line on
    the server's stderr; returns PORT."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"server not listening within {timeout}s: {proc.err_lines}"
        _, line = proc.line(left, stream="err")
        assert line is not None, f"server ended before listening: {proc.err_lines}"
        m = LISTENING.search(line)
        if m:
            return int(m.group(1))


def start_server(procs, *args, cmd="api", env=None, data_dir=None):
    """Start `herald <cmd>` on 127.0.0.1:0 (any free port); procs stops it
    at the end of the test. Returns an Api (api.proc is its Proc)."""
    e = {"HERALD_LISTEN": "127.0.0.1:0"}
    e.update(env or {})
    if data_dir is not None:
        e["HERALD_DATA_DIR"] = str(data_dir)
    p = Proc([str(HERALD_BIN), cmd, *map(str, args)], clean_env(None, e))
    procs.adopt(p.popen)
    port = wait_listening(p)
    return Api(port, p)


def start_api(procs, data_dir, *args, cmd="api", env=None):
    """start_server() on data_dir."""
    return start_server(procs, *args, cmd=cmd, env=env, data_dir=data_dir)


def wait_log(proc, predicate, timeout=CMD_TIMEOUT):
    """Wait until some stderr line satisfies predicate; returns the lines
    that do. (Request log lines are written right after the response is
    queued, so a client can see the answer a moment before its line.)"""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in list(proc.err_lines) if predicate(line)]
        if found:
            return found
        assert time.monotonic() < deadline, f"no such log line within {timeout}s"
        time.sleep(0.02)


def tail_events(data_dir, timeout=CMD_TIMEOUT):
    """Every event in the log, via `herald tail` (JSON lines)."""
    r = subprocess.run([str(HERALD_BIN), "tail"], env=clean_env(data_dir), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def task_records(data_dir):
    """Records of topic task-events read with busctl: [(topic, offset, key,
    envelope dict)]."""
    recs = consume_all(data_dir, pattern="^task-events$")
    return [(t, o, k, json.loads(v)) for t, o, k, v in recs]


def events_of(events, task_id, event_type=None):
    return [e for e in events
            if e["data"].get("task_id") == task_id
            and (event_type is None or e["event_type"] == event_type)]


def assert_problem(r, status, type_slug=None):
    """r is an RFC 9457 problem with this status; returns its JSON."""
    assert r.status == status, r
    assert r.header("Content-Type") == "application/problem+json", r
    p = r.json
    assert PROBLEM_KEYS <= set(p), p
    assert p["status"] == status, p
    assert isinstance(p["title"], str) and p["title"], p
    assert isinstance(p["detail"], str) and p["detail"], p
    if type_slug:
        assert p["type"] == f"urn:herald:problem:{type_slug}", p
    return p


def field_reasons(problem):
    """{(field, reason)} of a 422 problem's "errors"."""
    errors = problem.get("errors")
    assert isinstance(errors, list) and errors, problem
    for e in errors:
        assert {"field", "reason", "detail"} <= set(e), e
    return {(e["field"], e["reason"]) for e in errors}


VERBS = {"task.created": "create", "task.updated": "update", "task.completed": "complete",
         "task.deleted": "delete"}


def assert_envelope(ev, event_type, task_id, correlation_id=None):
    """ev is exactly the envelope of a task event from the Task API."""
    assert set(ev) == ENVELOPE_KEYS, ev
    # the original design's three keys first; then the request's W3C
    # traceparent (and tracestate when the client sent one)
    keys = list(ev["metadata"])
    assert keys[:3] == ["correlation_id", "causation_id", "source"], ev
    assert keys[3:] in (["traceparent"], ["traceparent", "tracestate"]), ev
    assert TRACEPARENT.match(ev["metadata"]["traceparent"]), ev
    assert ev["event_type"] == event_type, ev
    assert UUID.match(ev["event_id"]), ev
    assert TIMESTAMP.match(ev["occurred_at"]), ev
    assert ev["data"]["task_id"] == task_id, ev
    md = ev["metadata"]
    assert md["source"] == "task-api", ev
    assert md["causation_id"] == f"api-{VERBS[event_type]}-{task_id}", ev
    if correlation_id is not None:
        assert md["correlation_id"] == correlation_id, ev

