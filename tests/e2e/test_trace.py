"""Tracing a request end to end: W3C trace context from the Task API through
every derived event, `herald trace CORRELATION_ID` (text and --json) and
GET /traces/{correlation_id}.

Checked: under `herald up` with a real SMTP server and a Slack webhook, a
task with a due date, an X-Correlation-ID and a traceparent gives the tree
task.created -> notification.sent (email) -> email.delivered,
notification.sent (slack) and reminder.scheduled under task.created, from
the CLI and from the API alike; every event carries the client's trace id
(and tracestate) with a span id of its own; the text output draws that
tree. With `herald api` alone, a task.created has no notification.sent: it
is flagged once the grace period is over (--grace 0s), not before; an event
published with a causation id that names no event is flagged as an orphan.
Invalid (or repeated) traceparent headers are replaced by a new trace, not
propagated, and their tracestate is dropped. Unknown ids: exit 1 / 404;
bad ids and flags: exit 2 / 422."""

import json
import re
import uuid

from api_helpers import assert_problem, start_api, tail_events
from helpers import CMD_TIMEOUT, wait_for
from smtp_server import SmtpServer
from webhook_receiver import WebhookReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
VALID_TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def trace_json(herald, cid, *args):
    r = herald("trace", cid, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def nodes(tree):
    """Every node of a --json tree, depth first, without recursion."""
    out, stack = [], list(reversed(tree["roots"]))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(n["children"]))
    return out


def shape(tree):
    """The tree as nested (type, source, [children]) tuples, ids left out."""
    def one(n):
        return (n["event_type"], n["source"], sorted(one(c) for c in n["children"]))
    return sorted(one(r) for r in tree["roots"])


def test_trace_of_a_request_under_herald_up(procs, data_dir, herald):
    with SmtpServer() as smtp, WebhookReceiver() as hook:
        env = {"HERALD_SMTP_URL": smtp.url, "HERALD_SMTP_FROM": "herald@example.test",
               "HERALD_EMAIL_DOMAIN": "example.test",
               "HERALD_SLACK_WEBHOOK_URL": hook.url()}
        api = start_api(procs, data_dir, cmd="up", env=env)
        r = api.create("Review quarterly report", "user-456", due_at="2031-01-15T09:00:00Z",
                       headers={"X-Correlation-ID": "req-trace-1", "traceparent": TRACEPARENT,
                                "tracestate": TRACESTATE})
        task_id = r.json["id"]
        # the API's own span, child of the client's
        m = VALID_TP.match(r.header("traceresponse") or "")
        assert m and m.group(1) == TRACE_ID and m.group(2) != CLIENT_SPAN, r
        api_span = m.group(2)

        def complete():
            t = trace_json(herald, "req-trace-1")
            return t if t["event_count"] == 5 else None
        tree = wait_for("the five events of the request", complete)
        smtp.wait_messages(1)
        hook.wait_for(1)

        assert tree["correlation_id"] == "req-trace-1"
        assert tree["orphans"] == [] and tree["missing"] == [] and not tree["truncated"]
        [root] = tree["roots"]
        assert root["event_type"] == "task.created" and root["source"] == "task-api"
        assert root["causation_id"] == f"api-create-{task_id}"
        assert root["offset_ms"] == 0
        kids = {(c["event_type"], c["source"]): c for c in root["children"]}
        assert set(kids) == {("notification.sent", "email"), ("notification.sent", "slack"),
                             ("reminder.scheduled", "scheduler")}, kids
        email = kids[("notification.sent", "email")]
        assert email["data"]["channel"] == "email"
        [delivered] = email["children"]
        assert delivered["event_type"] == "email.delivered"
        assert delivered["causation_id"] == email["event_id"]
        assert delivered["children"] == []
        assert kids[("notification.sent", "slack")]["children"] == []
        assert kids[("reminder.scheduled", "scheduler")]["children"] == []
        for c in root["children"]:
            assert c["causation_id"] == root["event_id"]
            assert c["offset_ms"] >= 0

        # one trace id everywhere, a span id of its own per event
        all_nodes = nodes(tree)
        spans = []
        for n in all_nodes:
            m = VALID_TP.match(n["traceparent"])
            assert m and m.group(1) == TRACE_ID, n
            spans.append(m.group(2))
        assert len(set(spans)) == 5 and CLIENT_SPAN not in spans, spans
        assert root["traceparent"] == f"00-{TRACE_ID}-{api_span}-01"
        # the envelope keeps the original keys first, then traceparent and tracestate
        events = [e for e in tail_events(data_dir)
                  if e["metadata"]["correlation_id"] == "req-trace-1"]
        assert len(events) == 5
        for e in events:
            assert list(e["metadata"]) == ["correlation_id", "causation_id", "source",
                                           "traceparent", "tracestate"], e
            assert e["metadata"]["tracestate"] == TRACESTATE

        # the same tree from the API
        g = api.get("/traces/req-trace-1")
        assert g.status == 200, g
        assert g.header("Content-Type") == "application/json"
        assert shape(g.json) == shape(tree)
        assert {n["event_id"] for n in nodes(g.json)} == {n["event_id"] for n in all_nodes}

        # and as text: one line per event, indented under its cause
        t = herald("trace", "req-trace-1")
        assert t.returncode == 0, t.stderr
        lines = t.stdout.splitlines()
        assert lines[0] == "trace req-trace-1: 5 events, 1 root", lines
        assert re.match(r"^task\.created\s+task-api\s+[0-9a-f]{8}\s+\+0 ms$", lines[1]), lines
        body = "\n".join(lines[2:])
        email_line = [ln for ln in lines if "channel=email" in ln]
        assert len(email_line) == 1 and re.match(r"^[├└]─ notification\.sent\s+email\s",
                                                  email_line[0]), lines
        i = lines.index(email_line[0])
        assert re.match(r"^(│  |   )└─ email\.delivered\s+email\s+" + delivered["event_id"][-8:],
                        lines[i + 1]), lines
        assert re.search(r"(?m)^[├└]─ notification\.sent\s+slack\s.*channel=slack$", body)
        assert re.search(r"(?m)^[├└]─ reminder\.scheduled\s+scheduler\s", body)
        assert "orphan" not in t.stdout and "missing" not in t.stdout


def test_orphans_and_missing_follow_ups(procs, data_dir, herald):
    api = start_api(procs, data_dir)  # the API alone: nobody sends notifications
    task_id = api.create(headers={"X-Correlation-ID": "req-lonely"}).json["id"]

    # within the grace period nothing is missing yet
    tree = trace_json(herald, "req-lonely")
    assert tree["missing"] == [] and tree["grace_ms"] == 30000
    # once it is over, the notification is
    tree = trace_json(herald, "req-lonely", "--grace", "0s")
    [missing] = tree["missing"]
    assert missing["event_type"] == "task.created" and missing["expected"] == "notification.sent"
    assert tree["roots"][0]["missing"] == "notification.sent"
    text = herald("trace", "req-lonely", "--grace", "0s")
    assert text.returncode == 0
    assert "[missing: notification.sent]" in text.stdout
    assert re.search(r"(?m)^missing follow-ups \(after 0 ms\):\n  task\.created \S+ has no "
                     r"notification\.sent$", text.stdout), text.stdout
    g = api.get("/traces/req-lonely?grace=0s")
    assert g.status == 200 and [m["expected"] for m in g.json["missing"]] == ["notification.sent"]

    # an event whose cause names no event of the trace: an orphan
    ghost = str(uuid.uuid4())
    p = herald("publish", "notification.sent", "--data",
               json.dumps({"task_id": task_id, "channel": "email", "recipient": "a@b.c"}),
               "--correlation-id", "req-lonely", "--causation-id", ghost, "--source", "email")
    assert p.returncode == 0, p.stderr
    orphan_id = json.loads(p.stdout)["event_id"]
    # and one caused by the correlation id itself (herald publish's default): a root, no orphan
    p = herald("publish", "note.added", "--data", json.dumps({"task_id": task_id}),
               "--correlation-id", "req-lonely")
    assert p.returncode == 0, p.stderr
    tree = trace_json(herald, "req-lonely", "--grace", "0s")
    assert tree["event_count"] == 3 and len(tree["roots"]) == 3
    assert tree["orphans"] == [{"event_id": orphan_id, "event_type": "notification.sent",
                                "causation_id": ghost}]
    orphan = [n for n in tree["roots"] if n["event_id"] == orphan_id][0]
    assert orphan["orphan"] is True
    assert "traceparent" not in orphan  # published without a trace context
    # the orphan is an email notification without email.delivered, too
    assert sorted(m["expected"] for m in tree["missing"]) == ["email.delivered",
                                                              "notification.sent"]
    text = herald("trace", "req-lonely").stdout
    assert f"[orphan: cause {ghost[-8:]} not found]" in text
    assert f"notification.sent {orphan_id} caused by {ghost}" in text


def test_invalid_traceparent_is_replaced(procs, data_dir, herald):
    api = start_api(procs, data_dir, env={"HERALD_LOG_LEVEL": "debug"})
    bad = [
        f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01",           # uppercase
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",                  # zero trace id
        f"ff-{TRACE_ID}-{CLIENT_SPAN}-01",                  # version ff
        f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra",            # version 00 with more
        "garbage",
    ]
    for i, value in enumerate(bad):
        cid = f"req-bad-{i}"
        r = api.create(headers={"X-Correlation-ID": cid, "traceparent": value,
                                "tracestate": "congo=t61"})
        m = VALID_TP.match(r.header("traceresponse") or "")
        assert m and m.group(1) != TRACE_ID.lower() and m.group(1) != "0" * 32, (value, r)
        [node] = trace_json(herald, cid)["roots"]
        assert node["traceparent"] == r.header("traceresponse")
        [event] = [e for e in tail_events(data_dir) if e["metadata"]["correlation_id"] == cid]
        assert "tracestate" not in event["metadata"], value  # dropped with its traceparent
    assert any("invalid traceparent" in line for line in api.proc.err_lines), api.proc.err_lines

    # a future version is read as version 00
    r = api.create(headers={"X-Correlation-ID": "req-v1",
                            "traceparent": f"01-{TRACE_ID}-{CLIENT_SPAN}-01-more"})
    assert VALID_TP.match(r.header("traceresponse")).group(1) == TRACE_ID

    # two traceparent headers: a new trace
    body = json.dumps({"title": "t", "owner_id": "u"}).encode()
    raw = (b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"X-Correlation-ID: req-twice\r\n"
           b"traceparent: " + TRACEPARENT.encode() + b"\r\n"
           b"traceparent: " + TRACEPARENT.encode() + b"\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    answer = api.raw(raw).decode()
    assert answer.startswith("HTTP/1.1 201"), answer
    m = re.search(r"(?mi)^traceresponse: (\S+)\r$", answer)
    assert m and VALID_TP.match(m.group(1)).group(1) != TRACE_ID, answer

    # no traceparent at all: a new trace, the same in the response and the event
    r = api.create(headers={"X-Correlation-ID": "req-none"})
    [node] = trace_json(herald, "req-none")["roots"]
    assert VALID_TP.match(node["traceparent"]) and node["traceparent"] == r.header("traceresponse")


def test_unknown_and_invalid_ids(procs, data_dir, herald):
    r = herald("trace", "req-nothing")
    assert r.returncode == 1, r  # no log at all yet
    assert "req-nothing" in r.stderr or "event log" in r.stderr
    api = start_api(procs, data_dir)
    api.create(headers={"X-Correlation-ID": "req-one"})

    r = herald("trace", "req-nothing")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == "herald trace: no event with correlation id 'req-nothing'"
    p = assert_problem(api.get("/traces/req-nothing"), 404, "not-found")
    assert "req-nothing" in p["detail"]

    for args in ([], ["a" * 129], ["a\tb"], ["req-one", "--grace", "soon"],
                 ["req-one", "req-two"], ["req-one", "--colour"]):
        r = herald("trace", *args)
        assert r.returncode == 2, (args, r)
        assert r.stderr.startswith("herald trace: ") and r.stdout == "", (args, r.stderr)
    help_text = herald("trace", "--help")
    assert help_text.returncode == 0 and "--grace DURATION" in help_text.stdout

    p = assert_problem(api.get("/traces/" + "a" * 129), 422, "invalid-fields")
    assert p["errors"][0]["field"] == "correlation_id"
    p = assert_problem(api.get("/traces/req-one?grace=soon"), 422, "invalid-fields")
    assert p["errors"][0]["field"] == "grace"
    p = assert_problem(api.get("/traces/req-one?colour=1"), 422, "invalid-fields")
    assert_problem(api.request("DELETE", "/traces/req-one"), 405)
    assert api.get("/traces/req-one").status == 200
    assert api.get("/traces/req%2Done").status == 200  # percent-decoded like any path


def test_trace_in_kafka_mode(procs, data_dir, herald):
    """HERALD_BUS=kafka:...: the trace is read from Kafka (librdkafka's mock
    cluster) with a throw-away consumer; the records carry traceparent."""
    from kafka_helpers import KafkaMock

    mock = KafkaMock(topics=[("task-events", 3), ("notification-events", 1),
                             ("task-events.dlq", 1)])
    procs.adopt(mock.popen)
    env = {"HERALD_BUS": f"kafka:{mock.bootstrap}", "HERALD_KAFKA_FETCH_WAIT_MAX_MS": "5",
           "HERALD_KAFKA_SESSION_TIMEOUT_MS": "6000"}
    api = start_api(procs, data_dir, env=env)
    r = api.create(headers={"X-Correlation-ID": "req-kafka", "traceparent": TRACEPARENT})
    api.create(headers={"X-Correlation-ID": "req-other"})

    def found():
        t = herald("trace", "req-kafka", "--json", env=env)
        return json.loads(t.stdout) if t.returncode == 0 else None
    tree = wait_for("the task.created in Kafka", found)
    [root] = tree["roots"]
    assert root["event_type"] == "task.created" and tree["event_count"] == 1
    assert root["traceparent"] == r.header("traceresponse")
    assert VALID_TP.match(root["traceparent"]).group(1) == TRACE_ID
    g = api.get("/traces/req-kafka")
    assert g.status == 200 and g.json["roots"][0]["event_id"] == root["event_id"]
    # GET /traces runs off the HTTP threads: while five slow Kafka reads (a
    # group join each) are in progress, creates are answered at once, and
    # the reads beyond the fourth get 503 with Retry-After
    import threading
    results = []

    def get_trace():
        results.append(api.get("/traces/req-kafka"))
    threads = [threading.Thread(target=get_trace) for _ in range(5)]
    for t in threads:
        t.start()
    created = api.create(headers={"X-Correlation-ID": "req-during-traces"})
    assert created.status == 201
    in_progress = len(results)
    for t in threads:
        t.join(CMD_TIMEOUT)
    assert in_progress <= 1, "the create waited for the traces"  # only a 503 is that fast
    statuses = sorted(r.status for r in results)
    assert statuses.count(200) >= 4 and set(statuses) <= {200, 503}, statuses
    for r in results:
        if r.status == 503:
            assert r.header("Retry-After") == "1"
            assert_problem(r, 503)
