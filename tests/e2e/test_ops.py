"""Operations end to end: the per-event log line (text and --log-format
json), GET /readyz, and `herald lag` with its statuses.

Scenarios use the real binary: an exec channel (a shell script that exits 3
for task "bad", else 0) for the log lines and the lag counts, and `herald up`
with a real SMTP server (aiosmtpd) that answers 451 to every RCPT once told
to, so the email agent is stuck retrying one record while its process is
alive: /readyz says 503 naming agent:email and `herald lag` says STALL; once
the process is stopped, STOP.

Requires /usr/bin/python3 (Debian's python3-aiosmtpd)."""

import json
import signal
import time
from datetime import datetime

import pytest

from api_helpers import start_api, start_server
from helpers import wait_for
from smtp_server import SmtpServer

SCRIPT = r"""#!/bin/sh
cat > /dev/null
case "${HERALD_TASK_ID:-}" in
bad) exit 3 ;;
esac
exit 0
"""


@pytest.fixture
def script(tmp_path):
    p = tmp_path / "channel.sh"
    p.write_text(SCRIPT)
    p.chmod(0o755)
    return p


def occurred_ms(envelope):
    t = datetime.strptime(envelope["occurred_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return (t - datetime(1970, 1, 1)).total_seconds() * 1000


def lag(herald, *args):
    """`herald lag --json` -> (exit status, rows by (group, topic), summary)."""
    r = herald("lag", "--json", "--window", "0", *args)
    assert r.returncode in (0, 1), r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    summary = lines.pop()
    assert summary["rows"] == len(lines)
    return r.returncode, {(x["group"], x["topic"]): x for x in lines}, summary


def start_channel(procs, script, group, fmt="text"):
    return procs.herald("agent", "exec", "--group", group, "--types", "task.created", "--",
                        script, env={"HERALD_LOG_FORMAT": fmt})


def stop(proc):
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.err_lines[-20:]


# ---- the per-event log line ----------------------------------------------


def test_event_line_text(publish, procs, script):
    ok = publish("task.created", {"task_id": "t-ok", "title": "x", "owner_id": "u"},
                 "--correlation-id", "req-text-ok")
    bad = publish("task.created", {"task_id": "bad", "title": "x", "owner_id": "u"},
                  "--correlation-id", "req-text-bad")
    agent = start_channel(procs, script, "chan-text")

    def line_of(event):
        return [l for l in list(agent.err_lines) if f"event_id={event['event_id']}" in l]

    handled = wait_for("handled line", lambda: line_of(ok))
    assert len(handled) == 1, handled
    line = handled[0]
    assert " INFO  " in line
    for part in ("outcome=handled", "type=task.created", "group=chan-text", "attempts=1",
                 "duration_ms=", "topic=task-events", "offset=1"):
        assert f" {part}" in line, line
    assert line.endswith(" cid=req-text-ok"), line
    dead = wait_for("dead-letter line", lambda: line_of(bad))
    assert len(dead) == 1, dead
    assert " ERROR " in dead[0] and " outcome=dead-lettered " in dead[0], dead
    assert ' reason="exit status 3"' in dead[0] and dead[0].endswith(" cid=req-text-bad")
    stop(agent)


def test_event_line_json(publish, procs, script):
    ok = publish("task.created", {"task_id": "t-ok", "title": "x", "owner_id": "u"},
                 "--correlation-id", "req-json-ok")
    bad = publish("task.created", {"task_id": "bad", "title": "x", "owner_id": "u"},
                  "--correlation-id", "req-json-bad")
    agent = start_channel(procs, script, "chan-json", fmt="json")

    def by_event(event):
        out = []
        for l in list(agent.err_lines):
            if event["event_id"] in l and '"outcome"' in l:
                out.append(json.loads(l))
        return out

    handled = wait_for("handled object", lambda: by_event(ok))
    dead = wait_for("dead-letter object", lambda: by_event(bad))
    stop(agent)
    # every line the process wrote is one JSON object
    objs = [json.loads(l) for l in agent.err_lines if l]
    assert all({"time", "level", "message"} <= o.keys() for o in objs), objs
    h = handled[0]
    assert (h["level"], h["outcome"], h["type"], h["group"], h["cid"], h["attempts"]) == \
        ("info", "handled", "task.created", "chan-json", "req-json-ok", 1)
    assert h["event_id"] == ok["event_id"] and isinstance(h["duration_ms"], float)
    d = dead[0]
    assert (d["level"], d["outcome"], d["reason"], d["cid"], d["attempts"]) == \
        ("error", "dead-lettered", "exit status 3", "req-json-bad", 1)


def test_log_format_is_validated(herald):
    r = herald("tail", env={"HERALD_LOG_FORMAT": "yaml"})
    assert r.returncode == 2 and "HERALD_LOG_FORMAT" in r.stderr and "yaml" in r.stderr
    r = herald("tail", "--log-format", "xml")
    assert r.returncode == 2 and "--log-format" in r.stderr


# ---- herald lag: counts, OK and STOP -------------------------------------


def test_lag_counts_ok_and_stop(herald, publish, procs, script):
    first = publish("task.created", {"task_id": "t-0", "title": "x", "owner_id": "u"})
    agent = start_channel(procs, script, "chan-lag")
    wait_for("the first event handled",
               lambda: any("outcome=handled" in l for l in list(agent.err_lines)))
    # caught up while running: OK, exit 0
    rc, rows, summary = wait_for("a caught-up group", lambda: (lambda r: r if r[0] == 0 else None)(
        lag(herald, "--group", "chan-lag")))
    row = rows[("chan-lag", "task-events")]
    assert (row["committed"], row["end"], row["lag"], row["status"]) == (2, 2, 0, "OK")
    assert row["alive"] is True and row["lag_seconds"] == 0 and summary["status"] == "OK"
    stop(agent)
    waiting = [publish("task.created", {"task_id": f"t-{i}", "title": "x", "owner_id": "u"})
               for i in (1, 2, 3)]
    before = time.time() * 1000
    rc, rows, summary = lag(herald)
    after = time.time() * 1000
    row = rows[("chan-lag", "task-events")]
    assert rc == 1 and summary["status"] == "STOP"
    assert (row["committed"], row["end"], row["lag"], row["status"]) == (2, 5, 3, "STOP")
    assert row["alive"] is False and row["members"] == 0
    oldest = occurred_ms(waiting[0])
    assert (before - oldest) / 1000 - 0.002 <= row["lag_seconds"] <= (after - oldest) / 1000 + 0.002
    assert first["event_id"] != waiting[0]["event_id"]
    # the table form says the same, one row per group and topic
    r = herald("lag", "--window", "0", "--group", "chan-lag")
    assert r.returncode == 1
    body = [l.split() for l in r.stdout.splitlines()[1:]]
    assert body == [["chan-lag", "task-events", "0", "2", "5", "3", body[0][6], "STOP", "no",
                     "live", "member", "while", "events", "wait"]], r.stdout


def test_lag_usage(herald):
    for args in (["--samples", "1"], ["--window", "soon"], ["--stall-after", "0"],
                 ["--topic", "bad topic"], ["extra"]):
        r = herald("lag", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("herald lag: "), r.stderr
    r = herald("lag", "--help")
    assert r.returncode == 0
    for status in ("OK", "WARN", "STALL", "STOP", "REWIND"):
        assert f"  {status} " in r.stdout
    r = herald("lag")  # no event log yet
    assert r.returncode == 1 and "event log" in r.stderr


# ---- /readyz and STALL: herald up stuck on a failing SMTP server ---------


def test_readyz_and_lag_stall_then_stop(herald, procs, data_dir):
    smtp = SmtpServer().start()
    try:
        api = start_server(procs, cmd="up", data_dir=data_dir, env={
            "HERALD_SMTP_URL": smtp.url, "HERALD_RETRY_ATTEMPTS": "100",
            "HERALD_RETRY_BASE": "50ms", "HERALD_RETRY_MAX": "200ms",
            "HERALD_STALL_AFTER": "1s"})
        r = api.request("GET", "/readyz")
        assert r.status == 200, r
        body = r.json
        names = {c["name"]: c for c in body["checks"]}
        assert body["status"] == "ready"
        assert set(names) == {"store", "bus", "agent:email", "agent:slack", "agent:audit",
                              "agent:scheduler"}
        assert all(c["status"] == "ok" for c in body["checks"]), body
        assert names["agent:email"]["group"] == "notification-email"
        assert api.request("POST", "/readyz").status == 405

        # one task delivered: every group catches up, lag says OK
        api.create(title="first", owner_id="alice")
        smtp.wait_messages(1)
        rc, rows, _ = wait_for("every group caught up", lambda: (
            lambda r: r if r[0] == 0 and ("notification-email", "task-events") in r[1]
            else None)(lag(herald)))
        assert rows[("notification-email", "task-events")]["status"] == "OK"

        # now every RCPT is deferred: the email agent retries one record forever
        smtp.refuse("RCPT", "451 4.3.0 try again later", times=100000)
        r = api.create(title="second", owner_id="bob")
        task_id = r.json["id"]
        r = wait_for("503 from /readyz", lambda: (
            lambda x: x if x.status == 503 else None)(api.request("GET", "/readyz")))
        assert r.header("Content-Type") == "application/problem+json"
        p = r.json
        assert p["type"] == "urn:herald:problem:not-ready" and p["status"] == 503
        assert "agent:email" in p["detail"] and "stalled" in p["detail"], p
        failing = [c["name"] for c in p["checks"] if c["status"] != "ok"]
        assert failing == ["agent:email"], p
        email = next(c for c in p["checks"] if c["name"] == "agent:email")
        assert email["running"] and email["retrying"] and email["attempts"] >= 1
        assert api.request("GET", "/healthz").status == 200

        created = next(e for e in api.events(task_id) if e["event_type"] == "task.created")

        def stalled():
            # /readyz counts from the agent's last progress, lag from the
            # event's arrival: lag may need a moment more to call it STALL
            before = time.time() * 1000
            rc, rows, summary = lag(herald, "--stall-after", "1s")
            after = time.time() * 1000
            row = rows[("notification-email", "task-events")]
            return (rc, rows, row, before, after) if row["status"] != "OK" else None
        rc, rows, row, before, after = wait_for("lag to leave OK", stalled)
        assert rc == 1 and row["status"] == "STALL", rows
        assert row["alive"] is True and row["lag"] == 1 and row["end"] == row["committed"] + 1
        lo, hi = before - occurred_ms(created), after - occurred_ms(created)
        assert lo / 1000 - 0.002 <= row["lag_seconds"] <= hi / 1000 + 0.002
        others = [v for k, v in rows.items() if k[0] != "notification-email"]
        assert others and all(v["status"] == "OK" for v in others), rows

        # stopped (SIGTERM stops it even in the middle of a backoff): STOP
        api.proc.signal(signal.SIGTERM)
        assert api.proc.wait() == 0, api.proc.err_lines[-20:]
        rc, rows, summary = lag(herald)
        row = rows[("notification-email", "task-events")]
        assert (rc, row["status"], row["lag"], row["alive"]) == (1, "STOP", 1, False), row
        assert summary["status"] == "STOP"
    finally:
        smtp.stop()


def test_readyz_of_the_api_alone(procs, data_dir):
    api = start_api(procs, data_dir)
    r = api.request("GET", "/readyz")
    assert r.status == 200, r
    assert [c["name"] for c in r.json["checks"]] == ["store", "bus"]


# ---- herald lag on Kafka (librdkafka's mock cluster) ---------------------


def test_lag_on_kafka_ok_then_stop(herald, procs, script):
    from kafka_helpers import KafkaMock
    mock = KafkaMock(topics=[("task-events", 2), ("task-events.dlq", 1)])
    procs.adopt(mock.popen)
    env = {"HERALD_BUS": f"kafka:{mock.bootstrap}", "HERALD_KAFKA_FETCH_WAIT_MAX_MS": "5",
           "HERALD_KAFKA_SESSION_TIMEOUT_MS": "6000"}

    def pub(task_id):
        r = herald("publish", "task.created", "--data",
                   json.dumps({"task_id": task_id, "title": "x", "owner_id": "u"}), env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    agent = procs.herald("agent", "exec", "--group", "chan-kafka", "--types", "task.created",
                         "--", script, env=env)
    first = pub("k-1")
    wait_for("the event handled on Kafka",
               lambda: any(first["event_id"] in l and "outcome=handled" in l
                           for l in list(agent.err_lines)))

    def kafka_lag(*args):
        args = args or ("--window", "0")
        r = herald("lag", "--json", "--group", "chan-kafka", *args, env=env)
        assert r.returncode in (0, 1), r.stderr
        lines = [json.loads(line) for line in r.stdout.splitlines()]
        return r.returncode, lines[:-1], lines[-1]

    rc, rows, summary = wait_for("a committed, caught-up row", lambda: (
        lambda r: r if r[0] == 0 and r[1] else None)(kafka_lag()))
    assert len(rows) == 1, rows  # the one partition the key went to
    row = rows[0]
    assert (row["group"], row["topic"], row["committed"], row["end"], row["lag"]) == \
        ("chan-kafka", "task-events", 1, 1, 0)
    # the mock cluster cannot list groups: the member is known from the
    # runtime's heartbeat on this data directory
    assert row["alive"] is True and row["members"] == 1 and row["status"] == "OK"
    part = row["partition"]

    stop(agent)
    waiting = [pub("k-1"), pub("k-1")]  # same key: same partition
    # no member known any more (liveness unknown): STOP once the offset has
    # not moved for --stall-after over the sampling window
    before = time.time() * 1000
    rc, rows, summary = kafka_lag("--window", "1500ms", "--samples", "2", "--stall-after", "1s")
    after = time.time() * 1000
    row = rows[0]
    assert row["alive"] is None and row["members"] is None, row
    assert rc == 1 and summary["status"] == "STOP"
    assert (row["partition"], row["committed"], row["end"], row["lag"], row["status"]) == \
        (part, 1, 3, 2, "STOP")
    oldest = occurred_ms(waiting[0])
    assert (before - oldest) / 1000 - 0.002 <= row["lag_seconds"] <= (after - oldest) / 1000 + 0.002
