"""The Task API end to end: the real `herald api` on 127.0.0.1 (any free
port), spoken to over HTTP/1.1 with the standard library, its events read
back from the log with `herald tail`, `busctl consume` and
GET /tasks/{id}/events.

Covered: every route's success path with exact shapes and headers; the four
task events (envelope, topic, key, causation and correlation ids,
data.changes); every error (400, 404, 405 + Allow, 412, 413 declared and
chunked, 415, 422 per field) as application/problem+json; X-Correlation-ID;
If-Match; Idempotency-Key; cursor pagination and filters; a bounded garbage
fuzz loop; graceful shutdown with requests in flight; the request log lines;
the command line (--help, bad --listen, port in use)."""

import http.client
import json
import os
import random
import re
import signal
import socket
import sqlite3
import threading
import time

import pytest

from api_helpers import (JSON, TASK_KEYS, TIMESTAMP, UUID, Response, assert_envelope,
                         assert_problem, events_of, field_reasons, start_api, tail_events,
                         task_records, wait_log)
from helpers import CMD_TIMEOUT, HERALD_BIN, is_sanitizer_build

SANITIZED = is_sanitizer_build(HERALD_BIN)


@pytest.fixture
def api(procs, data_dir):
    return start_api(procs, data_dir)


def integrity(data_dir):
    db = sqlite3.connect(str(data_dir / "bus.db"), timeout=30)
    try:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]
    finally:
        db.close()


def stop_cleanly(api, sig=signal.SIGTERM):
    """Signal the server and assert it exits 0 without sanitizer reports."""
    api.proc.signal(sig)
    rc = api.proc.wait(timeout=CMD_TIMEOUT)
    err = "\n".join(api.proc.err_lines)
    assert rc == 0, err[-3000:]
    assert "Sanitizer" not in err and "runtime error" not in err, err[-3000:]
    return err


# ---- command line ------------------------------------------------------------


def test_help_exits_0(herald):
    for cmd in ("api", "up"):
        r = herald(cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"usage: herald {cmd} "), r.stdout
        assert r.stderr == ""
    r = herald("api", "--help")
    for route in ("POST   /tasks ", "GET    /tasks/{id}/events", "GET    /healthz"):
        assert route in r.stdout


def test_bad_listen_exits_2_with_one_line(herald):
    r = herald("api", "--listen", "nonsense")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "nonsense" in lines[0] and "HOST:PORT" in lines[0], lines


def test_port_in_use_exits_1(herald):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = herald("api", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"herald api: cannot listen on '127.0.0.1:{port}'" in r.stderr, r.stderr
    assert "in use" in r.stderr, r.stderr


def test_up_serves_the_api_and_stops_on_sigint(procs, data_dir):
    api = start_api(procs, data_dir, cmd="up")
    assert api.healthy()
    tid = api.create().json["id"]
    assert api.get(f"/tasks/{tid}").status == 200
    err = stop_cleanly(api, signal.SIGINT)
    assert "herald up: SIGINT received" in err
    assert "herald up: stopped cleanly" in err


# ---- success paths -------------------------------------------------------------


def test_healthz(api):
    r = api.get("/healthz")
    assert r.status == 200
    assert r.json == {"status": "ok"}
    assert r.header("Content-Type") == "application/json"
    assert UUID.match(r.cid), r
    h = api.request("HEAD", "/healthz")
    assert h.status == 200 and h.body == b""


def check_task(t, **expected):
    assert set(t) == TASK_KEYS, t
    assert UUID.match(t["id"]), t
    assert t["status"] in ("open", "completed")
    for k in ("created_at", "updated_at"):
        assert TIMESTAMP.match(t[k]), t
    for k, v in expected.items():
        assert t[k] == v, (k, t)


def test_create_and_get_shapes_and_headers(api):
    r = api.request("POST", "/tasks", json_body={
        "title": "Write the report", "owner_id": "alice", "priority": 2,
        "description": "quarterly numbers", "due_at": "2025-01-15T14:30:00+02:00"})
    assert r.status == 201, r
    assert r.header("Content-Type") == "application/json"
    body = r.json
    assert set(body) == {"id", "status", "task"}, body
    tid = body["id"]
    assert body["status"] == "created"
    check_task(body["task"], id=tid, title="Write the report", owner_id="alice", priority=2,
               description="quarterly numbers", status="open",
               due_at="2025-01-15T12:30:00.000Z", completed_at=None, version=1)
    assert body["task"]["created_at"] == body["task"]["updated_at"]
    assert r.header("Location") == f"/tasks/{tid}"
    assert r.header("ETag") == '"1"'
    assert UUID.match(r.cid)

    g = api.get(f"/tasks/{tid}")
    assert g.status == 200, g
    assert g.header("Content-Type") == "application/json"
    assert g.header("ETag") == '"1"'
    assert g.json == body["task"]
    # HEAD: the headers of GET, no body
    h = api.request("HEAD", f"/tasks/{tid}")
    assert h.status == 200 and h.body == b"" and h.header("ETag") == '"1"'

    # defaults
    d = api.create(title="minimal", owner_id="bob").json["task"]
    check_task(d, title="minimal", owner_id="bob", priority=1, description=None, due_at=None,
               completed_at=None, status="open", version=1)
    # the Location is a working URL
    assert api.get(api.create().header("Location")).status == 200


def test_created_event_envelope_topic_and_key(api, data_dir):
    r = api.create(title="t1", owner_id="carol", priority=3, due_at="2030-05-06T07:08:09Z",
                   headers={"X-Correlation-ID": "req-abc-123"})
    assert r.cid == "req-abc-123"
    tid = r.json["id"]

    evs = events_of(tail_events(data_dir), tid)
    assert len(evs) == 1, evs
    ev = evs[0]
    assert_envelope(ev, "task.created", tid, "req-abc-123")
    data = ev["data"]
    assert data["title"] == "t1" and data["owner_id"] == "carol" and data["priority"] == 3, data
    assert data["due_at"] == "2030-05-06T07:08:09.000Z", data

    recs = [x for x in task_records(data_dir) if x[3]["data"]["task_id"] == tid]
    assert len(recs) == 1, recs
    topic, _, key, value = recs[0]
    assert (topic, key) == ("task-events", tid)
    assert value == ev

    assert api.get(f"/tasks/{tid}/events").json == {"task_id": tid, "events": [ev]}


def test_update_publishes_changes_old_and_new(api, data_dir):
    tid = api.create(title="before", owner_id="dave", priority=1).json["id"]
    r = api.request("PATCH", f"/tasks/{tid}", headers={"X-Correlation-ID": "req-upd-1"},
                    json_body={"title": "after", "priority": 4, "owner_id": "dave",
                               "description": "new text", "due_at": "2031-01-02T03:04:05Z"})
    assert r.status == 200, r
    assert r.header("ETag") == '"2"'
    assert r.header("Content-Type") == "application/json"
    t = r.json
    check_task(t, id=tid, title="after", priority=4, owner_id="dave", description="new text",
               due_at="2031-01-02T03:04:05.000Z", version=2, status="open")
    assert api.get(f"/tasks/{tid}").json == t

    upd = events_of(tail_events(data_dir), tid, "task.updated")
    assert len(upd) == 1, upd
    assert_envelope(upd[0], "task.updated", tid, "req-upd-1")
    # owner_id was sent with its current value: not a change
    assert upd[0]["data"]["changes"] == {
        "title": {"old": "before", "new": "after"},
        "priority": {"old": 1, "new": 4},
        "description": {"old": None, "new": "new text"},
        "due_at": {"old": None, "new": "2031-01-02T03:04:05.000Z"},
    }

    # null clears the optional fields
    r = api.request("PATCH", f"/tasks/{tid}", json_body={"description": None, "due_at": None})
    assert r.status == 200 and r.json["description"] is None and r.json["due_at"] is None, r
    assert r.json["version"] == 3
    upd = events_of(tail_events(data_dir), tid, "task.updated")
    assert upd[-1]["data"]["changes"] == {
        "description": {"old": "new text", "new": None},
        "due_at": {"old": "2031-01-02T03:04:05.000Z", "new": None}}

    # a PATCH that changes nothing: 200, same version, no event
    r = api.request("PATCH", f"/tasks/{tid}", json_body={"title": "after"})
    assert r.status == 200 and r.json["version"] == 3 and r.header("ETag") == '"3"', r
    r = api.request("PATCH", f"/tasks/{tid}", json_body={})
    assert r.status == 200 and r.json["version"] == 3, r
    assert len(events_of(tail_events(data_dir), tid, "task.updated")) == 2

    # busctl: every event of the task on task-events with key = task_id
    recs = [x for x in task_records(data_dir) if x[3]["data"]["task_id"] == tid]
    assert [(x[0], x[2], x[3]["event_type"]) for x in recs] == [
        ("task-events", tid, "task.created"), ("task-events", tid, "task.updated"),
        ("task-events", tid, "task.updated")]


def test_if_match(api, data_dir):
    tid = api.create().json["id"]
    ok = api.request("PATCH", f"/tasks/{tid}", json_body={"priority": 2},
                     headers={"If-Match": '"1"'})
    assert ok.status == 200 and ok.header("ETag") == '"2"', ok

    stale = api.request("PATCH", f"/tasks/{tid}", json_body={"priority": 5},
                        headers={"If-Match": '"1"'})
    assert_problem(stale, 412, "precondition-failed")
    assert stale.header("ETag") == '"2"'  # the current version, to retry with
    assert api.get(f"/tasks/{tid}").json["priority"] == 2
    for bad in ('"0"', '"abc"', "1x"):
        assert_problem(api.request("PATCH", f"/tasks/{tid}", json_body={"priority": 5},
                                   headers={"If-Match": bad}), 412)
    # stale If-Match on delete and complete also refuses
    assert_problem(api.request("DELETE", f"/tasks/{tid}", headers={"If-Match": '"1"'}), 412)
    assert_problem(api.request("POST", f"/tasks/{tid}/complete", headers={"If-Match": '"1"'}),
                   412)
    assert api.get(f"/tasks/{tid}").json["status"] == "open"

    fresh = api.request("PATCH", f"/tasks/{tid}", json_body={"priority": 5},
                        headers={"If-Match": '"2"'})
    assert fresh.status == 200 and fresh.json["priority"] == 5 and fresh.header("ETag") == '"3"'
    star = api.request("PATCH", f"/tasks/{tid}", json_body={"priority": 4},
                       headers={"If-Match": "*"})
    assert star.status == 200 and star.json["version"] == 4, star
    types = [e["event_type"] for e in api.events(tid)]
    assert types == ["task.created"] + ["task.updated"] * 3


def test_concurrent_if_match_one_winner(api):
    tid = api.create().json["id"]
    statuses = []

    def patch(i):
        r = api.request("PATCH", f"/tasks/{tid}", json_body={"title": f"writer {i}"},
                        headers={"If-Match": '"1"'})
        statuses.append(r.status)

    threads = [threading.Thread(target=patch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [412] * 7
    assert [e["event_type"] for e in api.events(tid)] == ["task.created", "task.updated"]


@pytest.mark.parametrize("poller", ["poll", "epoll"])
def test_pollers_answer_concurrent_changes(procs, data_dir, poller):
    """HERALD_HTTP_POLLER (poll by default, epoll for thousands of
    connections): both answer changes from 16 clients at once, each after
    its group commit, and every task and its event are there."""
    api = start_api(procs, data_dir, env={"HERALD_HTTP_POLLER": poller})
    statuses, ids = [], []

    def create(i):
        r = api.create(title=f"task {i}", owner_id=f"poller-{poller}")
        statuses.append(r.status)
        ids.append(r.json["id"])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 16
    listed = api.get(f"/tasks?owner_id=poller-{poller}&limit=100").json["tasks"]
    assert sorted(t["id"] for t in listed) == sorted(ids)
    for tid in ids:
        assert [e["event_type"] for e in api.events(tid)] == ["task.created"]


def test_bad_poller_exits_2(herald):
    r = herald("api", "--http-poller", "select")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "--http-poller" in r.stderr and "select" in r.stderr, r.stderr


def test_complete_twice_publishes_once(api, data_dir):
    tid = api.create(title="finish me", owner_id="erin").json["id"]
    r = api.request("POST", f"/tasks/{tid}/complete", headers={"X-Correlation-ID": "req-done"})
    assert r.status == 200, r
    t = r.json
    check_task(t, id=tid, status="completed", version=2)
    assert TIMESTAMP.match(t["completed_at"]) and t["updated_at"] == t["completed_at"]
    assert r.header("ETag") == '"2"'

    again = api.request("POST", f"/tasks/{tid}/complete")
    assert again.status == 200 and again.json == t and again.header("ETag") == '"2"'

    evs = events_of(tail_events(data_dir), tid, "task.completed")
    assert len(evs) == 1, evs
    assert_envelope(evs[0], "task.completed", tid, "req-done")
    assert evs[0]["data"]["completed_at"] == t["completed_at"]
    assert evs[0]["data"]["title"] == "finish me"
    recs = [x for x in task_records(data_dir) if x[3]["event_type"] == "task.completed"]
    assert [(x[0], x[2]) for x in recs] == [("task-events", tid)]


def test_delete_then_404_and_events_kept(api, data_dir):
    tid = api.create().json["id"]
    api.request("PATCH", f"/tasks/{tid}", json_body={"title": "renamed"})
    api.request("POST", f"/tasks/{tid}/complete")
    r = api.request("DELETE", f"/tasks/{tid}", headers={"X-Correlation-ID": "req-del"})
    assert r.status == 204, r
    assert r.body == b""
    assert r.cid == "req-del"

    for method, path, body in (("GET", f"/tasks/{tid}", None),
                               ("DELETE", f"/tasks/{tid}", None),
                               ("PATCH", f"/tasks/{tid}", {"title": "x"}),
                               ("POST", f"/tasks/{tid}/complete", None)):
        p = assert_problem(api.request(method, path, json_body=body), 404, "not-found")
        assert tid in p["detail"], p
    assert tid not in [t["id"] for t in api.get("/tasks").json["tasks"]]

    events = api.events(tid)
    assert [e["event_type"] for e in events] == ["task.created", "task.updated",
                                                 "task.completed", "task.deleted"]
    for e in events:
        assert_envelope(e, e["event_type"], tid)
    assert_envelope(events[-1], "task.deleted", tid, "req-del")
    assert TIMESTAMP.match(events[-1]["data"]["deleted_at"])
    # the log holds the same four, in order, keyed by the task id
    recs = [x for x in task_records(data_dir) if x[2] == tid]
    assert [x[3] for x in recs] == events
    assert all(x[0] == "task-events" for x in recs)
    assert events_of(tail_events(data_dir), tid) == events


def test_events_of_unknown_task_404(api):
    assert_problem(api.get("/tasks/no-such-task/events"), 404, "not-found")
    assert_problem(api.get("/tasks/no-such-task"), 404, "not-found")
    assert_problem(api.get("/nothing-here"), 404, "not-found")
    assert_problem(api.get("/tasks/x/unknown"), 404, "not-found")


def test_list_pagination_and_filters(api):
    ids = [api.create(title=f"task {i}", owner_id="pager").json["id"] for i in range(7)]
    other = api.create(title="not mine", owner_id="someone-else").json["id"]
    for tid in ids[:2]:
        assert api.request("POST", f"/tasks/{tid}/complete").status == 200

    pages, after = [], None
    while True:
        q = "/tasks?owner_id=pager&limit=3" + (f"&after={after}" if after else "")
        r = api.get(q)
        assert r.status == 200, r
        assert r.header("Content-Type") == "application/json"
        assert set(r.json) == {"tasks", "next_after"}
        page = r.json["tasks"]
        for t in page:
            check_task(t, owner_id="pager")
        pages.append([t["id"] for t in page])
        after = r.json["next_after"]
        if after is None:
            break
        assert after == page[-1]["id"]
        assert len(pages) < 10
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]

    # exactly limit left: no next page
    r = api.get("/tasks?owner_id=pager&limit=7").json
    assert [t["id"] for t in r["tasks"]] == ids and r["next_after"] is None
    done = api.get("/tasks?owner_id=pager&status=completed").json
    assert [t["id"] for t in done["tasks"]] == ids[:2] and done["next_after"] is None
    assert all(t["status"] == "completed" for t in done["tasks"])
    open_ = api.get("/tasks?owner_id=pager&status=open").json
    assert [t["id"] for t in open_["tasks"]] == ids[2:]
    everyone = [t["id"] for t in api.get("/tasks").json["tasks"]]
    assert everyone == sorted(ids + [other])
    assert [t["id"] for t in api.get("/tasks?owner_id=someone-else").json["tasks"]] == [other]
    assert api.get("/tasks?owner_id=nobody").json == {"tasks": [], "next_after": None}


@pytest.mark.parametrize("query, errors", [
    ("limit=0", {("limit", "out_of_range")}),
    ("limit=501", {("limit", "out_of_range")}),
    ("limit=abc", {("limit", "out_of_range")}),
    ("limit=", {("limit", "out_of_range")}),
    ("status=done", {("status", "out_of_range")}),
    ("status=", {("status", "out_of_range")}),
    ("color=red", {("color", "unknown_field")}),
    ("status=closed&limit=-1", {("status", "out_of_range"), ("limit", "out_of_range")}),
])
def test_list_bad_query_422(api, query, errors):
    p = assert_problem(api.get(f"/tasks?{query}"), 422, "invalid-fields")
    assert field_reasons(p) == errors


# ---- errors --------------------------------------------------------------------


def test_malformed_json_400_with_position(api):
    body = '{"title": "x",'
    r = api.request("POST", "/tasks", body=body, headers=JSON)
    p = assert_problem(r, 400, "malformed-json")
    assert p["position"]["line"] == 1 and p["position"]["column"] == len(body), p
    assert p["position"]["position"] == len(body), p
    assert "line 1" in p["detail"], p
    r = api.request("POST", "/tasks", body='{"title": "a"\n  "owner_id": "b"}', headers=JSON)
    p = assert_problem(r, 400, "malformed-json")
    assert p["position"]["line"] == 2, p
    tid = api.create().json["id"]
    assert_problem(api.request("PATCH", f"/tasks/{tid}", body="{,}", headers=JSON), 400)
    assert_problem(api.request("POST", "/tasks", body="", headers=JSON), 400)
    # an escaped NUL is refused by the parser
    assert_problem(api.request("POST", "/tasks", body='{"title": "a\\u0000b", "owner_id": "o"}',
                               headers=JSON), 400, "malformed-json")
    assert len(api.events(tid)) == 1


TOO_LONG_TITLE = "é" * 501
MAX_TITLE = "é" * 500


@pytest.mark.parametrize("body, errors", [
    ({}, {("title", "missing"), ("owner_id", "missing")}),
    ({"title": "a"}, {("owner_id", "missing")}),
    ({"title": 5, "owner_id": ["x"]}, {("title", "wrong_type"), ("owner_id", "wrong_type")}),
    ({"title": None, "owner_id": "a"}, {("title", "wrong_type")}),
    ({"title": "a", "owner_id": "b", "priority": "2"}, {("priority", "wrong_type")}),
    ({"title": "a", "owner_id": "b", "priority": 2.0}, {("priority", "wrong_type")}),
    ({"title": "a", "owner_id": "b", "priority": True}, {("priority", "wrong_type")}),
    ({"title": "a", "owner_id": "b", "priority": 0}, {("priority", "out_of_range")}),
    ({"title": "a", "owner_id": "b", "priority": 6}, {("priority", "out_of_range")}),
    ({"title": "a", "owner_id": "b", "priority": -1}, {("priority", "out_of_range")}),
    ({"title": TOO_LONG_TITLE, "owner_id": "o" * 129},
     {("title", "too_long"), ("owner_id", "too_long")}),
    ({"title": "", "owner_id": "b"}, {("title", "empty")}),
    ({"title": "a", "owner_id": "b\u0001c"}, {("owner_id", "control_characters")}),
    ({"title": "a", "owner_id": "b\nc"}, {("owner_id", "control_characters")}),
    ({"title": "a", "owner_id": "b\u0085c"}, {("owner_id", "control_characters")}),
    ({"title": "a", "owner_id": "b", "due_at": "tomorrow"}, {("due_at", "bad_timestamp")}),
    ({"title": "a", "owner_id": "b", "due_at": "2025-02-30T00:00:00Z"},
     {("due_at", "bad_timestamp")}),
    ({"title": "a", "owner_id": "b", "due_at": "2025-01-15 14:30"}, {("due_at", "bad_timestamp")}),
    ({"title": "a", "owner_id": "b", "due_at": 1736951400}, {("due_at", "wrong_type")}),
    ({"title": "a", "owner_id": "b", "description": 7}, {("description", "wrong_type")}),
    ({"title": "a", "owner_id": "b", "description": "d" * 10001},
     {("description", "too_long")}),
    ({"title": "a", "owner_id": "b", "colour": "red"}, {("colour", "unknown_field")}),
    ({"title": 1, "owner_id": "", "priority": 9, "due_at": "x", "extra": 1},
     {("title", "wrong_type"), ("owner_id", "empty"), ("priority", "out_of_range"),
      ("due_at", "bad_timestamp"), ("extra", "unknown_field")}),
])
def test_create_invalid_fields_422(api, data_dir, body, errors):
    r = api.request("POST", "/tasks", json_body=body)
    p = assert_problem(r, 422, "invalid-fields")
    assert field_reasons(p) == errors, p
    assert str(len(errors)) in p["detail"]
    assert api.get("/tasks").json["tasks"] == []


def test_create_422_leaves_server_healthy(api, data_dir):
    """Regression: create_task() used to json_decref() the errors array that
    api_problem() had already freed (heap-use-after-free on every 422 of
    POST /tasks; the ASan build aborted on the first one)."""
    for body in ({}, {"title": "a"}, {"title": "a", "owner_id": "b", "priority": 9}):
        assert_problem(api.request("POST", "/tasks", json_body=body), 422, "invalid-fields")
    assert api.healthy()
    assert api.create().status == 201
    stop_cleanly(api)
    assert integrity(data_dir) == ["ok"]


def test_boundaries_accepted(api):
    t = api.create(title=MAX_TITLE, owner_id="o" * 128, priority=5).json["task"]
    assert t["title"] == MAX_TITLE and t["priority"] == 5
    assert api.create(title="x", owner_id="y", priority=1, description="d" * 10000)
    assert api.create(title="multi\nline\ttitle", owner_id="z").json["task"]["title"] == \
        "multi\nline\ttitle"


def test_update_invalid_fields_422(api):
    tid = api.create().json["id"]
    for body, errors in (
            ({"title": None}, {("title", "wrong_type")}),
            ({"owner_id": None, "priority": 0}, {("owner_id", "wrong_type"),
                                                 ("priority", "out_of_range")}),
            ({"title": TOO_LONG_TITLE}, {("title", "too_long")}),
            ({"due_at": "2025-13-01T00:00:00Z"}, {("due_at", "bad_timestamp")}),
            ({"status": "completed"}, {("status", "unknown_field")}),
            ({"description": ""}, {("description", "empty")})):
        p = assert_problem(api.request("PATCH", f"/tasks/{tid}", json_body=body), 422)
        assert field_reasons(p) == errors, p
    assert_problem(api.request("PATCH", f"/tasks/{tid}", json_body=[1]), 422, "invalid-body")
    assert_problem(api.request("POST", "/tasks", json_body="a string"), 422, "invalid-body")
    assert api.get(f"/tasks/{tid}").json["version"] == 1
    assert len(api.events(tid)) == 1


@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/tasks/abc", "GET, HEAD, PATCH, DELETE"),
    ("POST", "/tasks/abc", "GET, HEAD, PATCH, DELETE"),
    ("DELETE", "/tasks", "GET, HEAD, POST"),
    ("PATCH", "/tasks", "GET, HEAD, POST"),
    ("GET", "/tasks/abc/complete", "POST"),
    ("DELETE", "/tasks/abc/complete", "POST"),
    ("POST", "/tasks/abc/events", "GET, HEAD"),
    ("POST", "/healthz", "GET, HEAD"),
    ("OPTIONS", "/tasks", "GET, HEAD, POST"),
])
def test_405_with_allow(api, method, path, allow):
    r = api.request(method, path, body=b"{}", headers=JSON)
    p = assert_problem(r, 405, "method-not-allowed")
    assert r.header("Allow") == allow
    assert method in p["detail"]


def test_415_unsupported_media_type(api):
    tid = api.create().json["id"]
    for ct in ("text/plain", "application/xml", "application/jsonx", "multipart/form-data",
               None):
        headers = {"Content-Type": ct} if ct else {}
        body = b'{"title": "a", "owner_id": "b"}'
        p = assert_problem(api.request("POST", "/tasks", body=body, headers=headers), 415,
                           "unsupported-media-type")
        assert_problem(api.request("PATCH", f"/tasks/{tid}", body=b'{"title":"x"}',
                                   headers=headers), 415)
        if ct:
            assert ct in p["detail"], p
    for ct in ("application/json; charset=utf-8", "Application/JSON",
               "application/merge-patch+json"):
        r = api.request("POST", "/tasks", body=b'{"title": "a", "owner_id": "b"}',
                        headers={"Content-Type": ct})
        assert r.status == 201, (ct, r)


def test_413_declared_content_length(api):
    # the server answers from the headers alone: no body is ever sent
    for length in (64 * 1024 + 1, 10 ** 9):
        conn = api.connection()
        try:
            conn.putrequest("POST", "/tasks")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(length))
            conn.putheader("X-Correlation-ID", f"big-{length}")
            conn.endheaders()
            r = conn.getresponse()
            body = r.read()
        finally:
            conn.close()
        assert r.status == 413
        assert r.getheader("Content-Type") == "application/problem+json"
        assert r.getheader("X-Correlation-ID") == f"big-{length}"
        p = json.loads(body)
        assert p["status"] == 413 and p["type"] == "urn:herald:problem:payload-too-large", p
    assert api.healthy()
    # exactly 64 KiB is allowed
    body = b'{"title": "edge", "owner_id": "me"}'
    body = body + b" " * (64 * 1024 - len(body))
    r = api.request("POST", "/tasks", body=body, headers=JSON)
    assert r.status == 201, r
    assert len(api.get("/tasks").json["tasks"]) == 1


def send_chunked(api, total, chunk=4096, path="/tasks", finish=False):
    """POST a chunked body of `total` bytes (JSON whitespace) with
    http.client; the terminating chunk is sent if the body is within the
    limit or `finish` is set. Returns (status, headers, body) or raises if
    no answer came."""
    conn = api.connection()
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("X-Correlation-ID", "chunky")
        conn.endheaders()
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            conn.send(b"%x\r\n" % n + b" " * n + b"\r\n")
            sent += n
        if total <= 64 * 1024 or finish:
            conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_413_chunked_body_over_limit(api):
    """A body without Content-Length that ends past the limit: 413. (It is
    read to its end but never kept: libmicrohttpd 0.9.75 cannot answer in
    the middle of an upload.)"""
    status, headers, body = send_chunked(api, 17 * 4096, finish=True)  # 68 KiB
    assert status == 413
    assert headers.get("Content-Type") == "application/problem+json"
    assert json.loads(body)["type"] == "urn:herald:problem:payload-too-large"


def test_chunked_body_over_limit_never_stored(api):
    """An endless chunked body is not read for ever: past 1 MiB the
    connection is closed. Nothing is stored, the server lives on, and a
    chunked body under the limit is read whole."""
    try:
        status, _, _ = send_chunked(api, 2 * 1024 * 1024)  # never terminated
    except (http.client.HTTPException, ConnectionError):
        status = None
    assert status is None
    assert api.healthy()
    assert api.get("/tasks").json["tasks"] == []
    conn = api.connection()
    try:
        body = json.dumps({"title": "chunked", "owner_id": "c"}).encode()
        conn.request("POST", "/tasks", body=iter([body[:10], body[10:]]),
                     headers=JSON, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 201, r.read()
    finally:
        conn.close()


# ---- correlation ids -------------------------------------------------------------


def test_correlation_id_given_is_echoed_and_used(api, data_dir):
    for cid in ("req-abc-123", "a" * 128, "with spaces and ~!@#$%^&*()"):
        r = api.create(headers={"X-Correlation-ID": cid})
        assert r.cid == cid
        ev, = api.events(r.json["id"])
        assert ev["metadata"]["correlation_id"] == cid
        assert api.get("/healthz", headers={"X-Correlation-ID": cid}).cid == cid
        # errors echo it too
        bad = api.request("PATCH", f"/tasks/{r.json['id']}", json_body={"priority": 0},
                          headers={"X-Correlation-ID": cid})
        assert bad.status == 422 and bad.cid == cid
        assert api.get("/tasks?limit=0", headers={"X-Correlation-ID": cid}).cid == cid
        assert api.request("POST", "/tasks", json_body={},
                           headers={"X-Correlation-ID": cid}).cid == cid


def raw_header_request(api, method, path, cid_bytes, body=b""):
    """A request whose X-Correlation-ID is cid_bytes, sent raw (http.client
    refuses control characters in header values). Returns the Response."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as s:
        head = (b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"X-Correlation-ID: %s\r\n" % (method.encode(), path.encode(), cid_bytes))
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        s.sendall(head + b"\r\n" + body)
        r = http.client.HTTPResponse(s, method=method)
        r.begin()
        return Response(r.status, r.reason, r.getheaders(), r.read())


@pytest.mark.parametrize("cid", [b"a" * 129, b"b" * 200, b"ab\tcd", b"ab\x7fcd", b"ab\x01cd",
                                 b"caf\xc3\xa9", b""])
def test_correlation_id_invalid_is_replaced(api, cid):
    body = json.dumps({"title": "t", "owner_id": "o"}).encode()
    r = raw_header_request(api, "POST", "/tasks", cid, body)
    assert r.status == 201, r
    gen = r.cid
    assert UUID.match(gen), r
    ev, = api.events(r.json["id"])
    assert ev["metadata"]["correlation_id"] == gen
    assert raw_header_request(api, "GET", "/healthz", cid).cid != gen  # fresh each time
    assert any(line.endswith(f" cid={gen}") and " POST /tasks 201 " in line
               for line in wait_log(api.proc, lambda line: gen in line))


def test_generated_correlation_id_matches_event(api, data_dir):
    r = api.create()
    tid = r.json["id"]
    assert UUID.match(r.cid)
    ev, = events_of(tail_events(data_dir), tid)
    assert ev["metadata"]["correlation_id"] == r.cid
    c = api.request("POST", f"/tasks/{tid}/complete")
    d = api.request("DELETE", f"/tasks/{tid}")
    evs = api.events(tid)
    assert [e["metadata"]["correlation_id"] for e in evs] == [r.cid, c.cid, d.cid]
    assert len({r.cid, c.cid, d.cid}) == 3


# ---- idempotency ---------------------------------------------------------------


def test_idempotency_key_replay_and_reuse(api, data_dir):
    body = json.dumps({"title": "pay invoice", "owner_id": "frank"}).encode()
    h = {**JSON, "Idempotency-Key": "key-001"}
    first = api.request("POST", "/tasks", body=body, headers=h)
    assert first.status == 201, first
    tid = first.json["id"]
    replay = api.request("POST", "/tasks", body=body,
                         headers={**h, "X-Correlation-ID": "the-retry"})
    assert replay.status == 201, replay
    assert replay.body == first.body
    assert replay.header("Location") == f"/tasks/{tid}"
    assert replay.header("Content-Type") == "application/json"
    assert replay.cid == "the-retry"

    other = api.request("POST", "/tasks", headers=h,
                        json_body={"title": "pay invoice", "owner_id": "grace"})
    p = assert_problem(other, 422, "idempotency-key-reused")
    assert "Idempotency-Key" in p["detail"]

    # nothing new was published or stored
    assert [e["data"]["task_id"] for e in tail_events(data_dir)] == [tid]
    assert [t["id"] for t in api.get("/tasks").json["tasks"]] == [tid]
    # another key is another task
    r = api.request("POST", "/tasks", body=body, headers={**JSON, "Idempotency-Key": "key-002"})
    assert r.status == 201 and r.json["id"] != tid
    assert len(tail_events(data_dir)) == 2


def test_idempotency_key_invalid_422(api):
    for key in ("has space", "k" * 256):
        r = api.request("POST", "/tasks", json_body={"title": "a", "owner_id": "b"},
                        headers={"Idempotency-Key": key})
        p = assert_problem(r, 422)
        assert ("Idempotency-Key", "invalid") in field_reasons(p)
    assert api.get("/tasks").json["tasks"] == []


def test_idempotency_key_concurrent_retries_create_once(api, data_dir):
    results = []
    body = json.dumps({"title": "once", "owner_id": "o"}).encode()

    def post():
        r = api.request("POST", "/tasks", body=body,
                        headers={**JSON, "Idempotency-Key": "concurrent-key"})
        results.append((r.status, r.body))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {s for s, _ in results} == {201}
    assert len({b for _, b in results}) == 1
    assert len(tail_events(data_dir)) == 1


def test_idempotency_replay_has_etag(api):
    h = {"Idempotency-Key": "etag-key"}
    first = api.create(headers=h)
    replay = api.create(headers=h)
    assert replay.body == first.body
    assert replay.header("ETag") == first.header("ETag") == '"1"'


# ---- garbage in ------------------------------------------------------------------


def garbage_cases(rng, tid):
    """Yield (description, kind, payload) forever: kind 'http' -> (method,
    path, headers, body); kind 'raw' -> bytes sent as is."""
    nested = [b"[" * 10000 + b"]" * 10000, b'{"a":' * 10000, b"[" * 60000,
              b'{"title": ' + b"[" * 5000 + b"]" * 5000 + b', "owner_id": "x"}']
    numbers = [b"1e999", b"-1e999", b"1e-999", b"123456789012345678901234567890", b"NaN",
               b"Infinity", b"-0", b"0x10", b"1.5e308", b"00001"]
    while True:
        k = rng.randrange(12)
        if k == 0:
            yield "random body", "http", ("POST", "/tasks", JSON,
                                          rng.randbytes(rng.randrange(0, 3000)))
        elif k == 1:
            yield "random patch", "http", ("PATCH", f"/tasks/{tid}", JSON,
                                           rng.randbytes(rng.randrange(1, 3000)))
        elif k == 2:
            while True:
                bad = bytes(rng.choice([0x80, 0xbf, 0xc0, 0xc1, 0xf5, 0xff, 0xfe, 0xed, 0xa0])
                            for _ in range(rng.randrange(1, 8)))
                try:
                    bad.decode("utf-8")  # e.g. ED 80 80 is U+D000: valid
                except UnicodeDecodeError:
                    break
            values = {b"title": b'"t"', b"owner_id": b'"o"'}
            values[rng.choice([b"title", b"owner_id", b"description"])] = b'"x' + bad + b'y"'
            body = b"{" + b", ".join(b'"%s": %s' % kv for kv in values.items()) + b"}"
            yield "invalid utf-8", "http", ("POST", "/tasks", JSON, body)
        elif k == 3:
            yield "deep nesting", "http", ("POST", "/tasks", JSON, rng.choice(nested))
        elif k == 4:
            n = rng.choice(numbers)
            method, path = rng.choice([("POST", "/tasks"), ("PATCH", f"/tasks/{tid}")])
            yield "number " + n.decode(), "http", (
                method, path, JSON, b'{"title": "t", "owner_id": "o", "priority": ' + n + b"}")
        elif k == 5:
            yield "huge header", "http", ("GET", "/healthz",
                                          {"X-Junk": "j" * rng.randrange(40000, 120000)}, None)
        elif k == 6:
            yield "many query args", "http", (
                "GET", "/tasks?" + "&".join(f"p{i}={i}" for i in range(rng.randrange(17, 400))),
                {}, None)
        elif k == 7:
            yield "long path", "http", ("GET", "/tasks/" + "x" * rng.randrange(65, 6000), {}, None)
        elif k == 8:
            ctype = rng.choice(["", "application/", "json", "*/*", "application/json+",
                                "text/json; charset=klingon", "\u00e9"])
            yield "content type", "http", ("POST", "/tasks", {"Content-Type": ctype.encode(
                "utf-8").decode("latin-1")}, b'{"title": "t", "owner_id": "o"}')
        elif k == 9:
            escapes = [b"\\ud800", b"\\udfff", b"\\u00", b"\\x41", b"\\", b"\\u0000"]
            body = (b'{"title": "a' + rng.choice(escapes) + b'", "owner_id": "o",'
                    b' "title": "dup"}')
            yield "bad escapes", "http", ("POST", "/tasks", JSON, body)
        elif k == 10:
            # starts with a letter: MHD (rightly) keeps waiting after blank
            # lines, and (oddly, but that is libmicrohttpd) after a leading NUL
            yield "raw garbage", "raw", (bytes([rng.randrange(0x41, 0x5b)])
                                         + rng.randbytes(rng.randrange(1, 500)) + b"\r\n\r\n")
        else:
            method = rng.choice(["GET", "PUT", "BREW", "DELETE", "TRACE"])
            path = rng.choice(["/", "/tasks/%2e%2e", "/tasks/../../etc/passwd", "//tasks",
                               "/tasks/" + tid + "/complete/x", "/tasks/%ff%fe", "/healthz/x"])
            yield "method/path", "http", (method, path, {}, None)


def test_garbage_never_crashes_or_corrupts(api, data_dir):
    seed = int(os.environ.get("HERALD_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"seed {seed} (set HERALD_TEST_SEED to replay)")
    tid = api.create(title="survivor", owner_id="me").json["id"]
    deadline = time.monotonic() + (4.0 if SANITIZED else 3.0)
    seen = {}
    for desc, kind, payload in garbage_cases(rng, tid):
        if time.monotonic() > deadline:
            break
        if kind == "raw":
            t0 = time.monotonic()
            out = api.raw(payload, timeout=10)
            assert time.monotonic() - t0 < 9, ("no answer and not closed", payload)
            # MHD closes on a request line it cannot parse, or answers 4xx
            assert out == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", out), (desc, out[:200])
            status = int(out[9:12]) if out else None
        else:
            method, path, headers, body = payload
            try:
                r = api.request(method, path, body=body, headers=headers, timeout=30)
                status = r.status
            except (ConnectionResetError, BrokenPipeError):
                # only the oversized header may be cut short while being sent
                assert desc == "huge header", desc
                status = None
            assert status is None or 400 <= status < 500, (desc, payload[:2], r)
        seen.setdefault(desc.split()[0], set()).add(status)
        assert api.proc.poll() is None, (desc, api.proc.err_lines[-20:])
    print(seen)
    assert len(seen) >= 8, seen
    assert api.healthy()
    # the store is untouched: only the task made above, with its one event
    assert [t["id"] for t in api.get("/tasks?limit=500").json["tasks"]] == [tid]
    assert [e["event_type"] for e in api.events(tid)] == ["task.created"]
    assert api.get(f"/tasks/{tid}").json["version"] == 1
    assert api.create().status == 201
    stop_cleanly(api)
    assert integrity(data_dir) == ["ok"]
    assert len(tail_events(data_dir)) == 2


def test_nul_in_path_is_not_the_collection(api):
    assert api.get("/tasks/%00abc").status == 404
    r = api.request("POST", "/tasks/%00abc", json_body={"title": "a", "owner_id": "b"})
    assert r.status in (404, 405), r
    assert api.get("/tasks").json["tasks"] == []


# ---- request log ---------------------------------------------------------------


def test_one_log_line_per_request(api):
    tid = api.create(headers={"X-Correlation-ID": "log-create"}).json["id"]
    sent = [("GET", f"/tasks/{tid}", None, 200, "log-get"),
            ("GET", "/tasks", None, 200, "log-list"),
            ("PATCH", f"/tasks/{tid}", {"title": "n"}, 200, "log-patch"),
            ("POST", f"/tasks/{tid}/complete", None, 200, "log-complete"),
            ("GET", f"/tasks/{tid}/events", None, 200, "log-events"),
            ("PATCH", f"/tasks/{tid}", {"priority": 0}, 422, "log-422"),
            ("POST", "/tasks", {"title": ""}, 422, "log-create-422"),
            ("PUT", "/tasks", {}, 405, "log-405"),
            ("GET", "/tasks/missing", None, 404, "log-404"),
            ("DELETE", f"/tasks/{tid}", None, 204, "log-delete"),
            ("GET", "/healthz", None, 200, "log-health")]
    for method, path, body, status, cid in sent:
        r = api.request(method, path, json_body=body, headers={"X-Correlation-ID": cid})
        assert r.status == status, (method, path, r)
    sent.insert(0, ("POST", "/tasks", None, 201, "log-create"))
    # an unnamed request logs its generated id
    gen = api.get("/tasks?limit=1").cid
    sent.append(("GET", "/tasks", None, 200, gen))
    for method, path, _, status, cid in sent:
        lines = wait_log(api.proc, lambda line, c=cid: line.endswith(f" cid={c}"))
        assert len(lines) == 1, (cid, lines)
        pat = rf" INFO  {method} {re.escape(path)} {status} \d+\.\d\dms cid={re.escape(cid)}$"
        assert re.search(pat, lines[0]), (pat, lines[0])
        assert lines[0][:24].endswith("Z") and TIMESTAMP.match(lines[0][:24]), lines[0]


def test_stderr_holds_only_log_lines(procs, data_dir):
    """Everything herald and its libraries write to stderr is a log line
    (libmicrohttpd once warned about a thread pool of one on 2 cores)."""
    for cmd in ("api", "up"):
        server = start_api(procs, data_dir / cmd, cmd=cmd)
        assert server.create().status == 201
        wait_log(server.proc, lambda line: " POST /tasks 201 " in line)
        for line in list(server.proc.err_lines):
            assert TIMESTAMP.match(line[:24]) and line[24:30] in (
                " DEBUG", " INFO ", " WARN ", " ERROR"), line


def test_log_line_path_with_newline_stays_one_line(api):
    forged = "2030-01-01T00:00:00.000Z INFO  FORGED"
    r = api.get("/x%0a" + forged.replace(" ", "%20"), headers={"X-Correlation-ID": "inject"})
    assert r.status == 404
    wait_log(api.proc, lambda line: "cid=inject" in line)
    assert not any(line.startswith(forged) for line in api.proc.err_lines), api.proc.err_lines
    line, = [x for x in api.proc.err_lines if "cid=inject" in x]
    assert " GET /x" in line and " 404 " in line


def test_log_line_of_long_path_keeps_status_and_cid(api):
    path = "/tasks/" + "a" * 3000
    r = api.get(path, headers={"X-Correlation-ID": "long-path"})
    assert r.status == 404 and r.cid == "long-path"
    lines = wait_log(api.proc, lambda line: " GET /tasks/aaaa" in line)
    assert len(lines) == 1
    assert re.search(r" 404 \d+\.\d\dms cid=long-path$", lines[0]), lines[0][-80:]


# ---- graceful shutdown -----------------------------------------------------------


def open_slow_create(api, i):
    """Start a POST /tasks whose headers are in (and acknowledged with 100
    Continue, so the server is handling it) but whose body is not yet sent.
    Returns (connection, body)."""
    body = json.dumps({"title": f"slow {i}", "owner_id": "slowpoke"}).encode()
    conn = api.connection()
    conn.putrequest("POST", "/tasks")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("Expect", "100-continue")
    conn.putheader("X-Correlation-ID", f"slow-{i}")
    conn.endheaders()
    got = b""
    while b"\r\n\r\n" not in got:
        b = conn.sock.recv(1024)
        assert b, got
        got += b
    assert got.startswith(b"HTTP/1.1 100 "), got
    return conn, body


def test_sigterm_finishes_requests_in_flight(procs, data_dir):
    api = start_api(procs, data_dir)
    # an idle keep-alive connection must not hold the shutdown up
    idle = api.connection()
    idle.request("GET", "/healthz")
    idle.getresponse().read()

    stop = threading.Event()
    acked, failures, statuses = [], [], []

    def hammer(n):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = api.request("POST", "/tasks", json_body={"title": f"h{n}-{i}",
                                                             "owner_id": "hammer"},
                                headers={"Connection": "close"}, timeout=30)
            except ConnectionRefusedError:
                return  # not accepting any more
            except (OSError, http.client.HTTPException) as e:
                failures.append(repr(e))  # never accepted (backlog reset at close)
                continue
            statuses.append(r.status)
            if r.status == 201:
                acked.append(r.json["id"])

    slow = [open_slow_create(api, i) for i in range(3)]
    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    api.proc.signal(signal.SIGTERM)
    wait_log(api.proc, lambda line: "SIGTERM received, finishing requests in flight" in line)

    # it stops accepting while the slow requests are still in flight
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", api.port), timeout=5).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=CMD_TIMEOUT)
    assert set(statuses) == {201}, statuses
    assert api.proc.poll() is None, "exited with requests in flight"

    slow_ids = []
    for conn, body in slow:
        conn.send(body)
        r = conn.getresponse()
        assert r.status == 201, r.read()
        slow_ids.append(json.loads(r.read())["id"])
        conn.close()
    answered = time.monotonic()
    rc = api.proc.wait(timeout=CMD_TIMEOUT)
    idle.close()
    assert rc == 0, api.proc.err_lines[-20:]
    assert time.monotonic() - answered < 8, "shutdown took too long after the last answer"
    err = "\n".join(api.proc.err_lines)
    assert "stopped cleanly" in err and "still in flight" not in err, err[-2000:]
    assert "Sanitizer" not in err
    print(f"{len(acked)} fast creates answered, {len(failures)} not accepted")

    created = {e["data"]["task_id"] for e in tail_events(data_dir)
               if e["event_type"] == "task.created"}
    assert set(slow_ids) <= created
    assert set(acked) <= created
    for i in range(3):
        assert wait_log(api.proc, lambda line, i=i: f"cid=slow-{i}" in line and " 201 " in line)
    assert integrity(data_dir) == ["ok"]


def test_clients_that_leave_before_the_answer(api, data_dir):
    """Clients that send a change and hang up before the answer: the change
    still commits, nothing leaks (the sanitizer build's leak check makes a
    leaked request fail the clean exit), and the server answers others."""
    body = json.dumps({"title": "gone", "owner_id": "ghost"}).encode()
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
            s.sendall(b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert api.healthy()
    deadline = time.monotonic() + 10
    while len(api.get("/tasks?limit=100").json["tasks"]) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(api.get("/tasks?limit=100").json["tasks"]) == 50
    stop_cleanly(api)
