"""The Slack agent end to end: `herald agent slack` against a real HTTP
receiver (webhook_receiver.py) on 127.0.0.1. Task events are published with
`herald publish`; what the agent did is read back from the receiver, from
the log (`herald tail`: notification.sent) and from the dead-letter topic
(`herald dlq list --json`)."""

import json
import signal
import time
from email.utils import formatdate

import pytest

from helpers import CMD_TIMEOUT
from webhook_receiver import WebhookReceiver

SLACK_GROUP = "notification-slack"


@pytest.fixture
def hook():
    with WebhookReceiver() as r:
        yield r


def start_slack(procs, hook=None, **env):
    # NO_PROXY: a proxy set in the environment must not take loopback calls
    e = {"HERALD_RETRY_BASE": "50ms", "HERALD_RETRY_MAX": "200ms", "NO_PROXY": "127.0.0.1"}
    if hook is not None:
        e["HERALD_SLACK_WEBHOOK_URL"] = hook.url()
    e.update(env)
    return procs.herald("agent", "slack", env=e)


def wait_until(what, fetch, timeout=CMD_TIMEOUT):
    """Call fetch() until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)


def events(herald, event_type=None):
    r = herald("tail")
    assert r.returncode == 0, r.stderr
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    return [e for e in evs if event_type is None or e["event_type"] == event_type]


def wait_sent(herald, n):
    """Wait for n notification.sent events; returns them."""
    return wait_until(f"{n} notification.sent",
                      lambda: (lambda s: s if len(s) >= n else None)(
                          events(herald, "notification.sent")))


def dead_letters(herald):
    r = herald("dlq", "list", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def stop_clean(agent):
    """Stop the agent with SIGTERM: it exits 0, and (in the sanitizer build)
    without a leak or error report."""
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0, agent.err_lines
    assert not [line for line in agent.err_lines if "Sanitizer" in line], agent.err_lines


def slack_lines(proc):
    return [line for line in list(proc.err_lines) if " Slack [" in line]


def test_payloads_and_escaping(procs, herald, publish, hook):
    created = publish("task.created", {"task_id": "t-1", "title": "Review quarterly report",
                                       "owner_id": "user-456", "priority": 2},
                      "--correlation-id", "req-abc-123")
    publish("task.updated", {"task_id": "t-1", "title": "x", "owner_id": "user-456",
                             "priority": 2, "version": 2, "changes": {}})
    tricky = "R&D <@U123> & <!channel> > \"quotes\" \u00dcberpr\u00fcfung \u5831\u544a \U0001f680"
    completed = publish("task.completed", {"task_id": "t-2", "title": tricky,
                                           "owner_id": "user-456", "priority": 1})
    forged = publish("task.created", {"task_id": "t-3", "title": "two\nlines\tand\x1b[31m",
                                      "owner_id": "u", "priority": 1})
    agent = start_slack(procs, hook, HERALD_SLACK_CHANNEL="#ops")

    reqs = hook.wait_for(3)
    sent = wait_sent(herald, 3)
    assert len(hook.requests) == 3, hook.requests  # task.updated posts nothing

    for r in reqs:
        assert r.method == "POST"
        assert r.path == "/hook"
        assert r.headers["Content-Type"] == "application/json"
        assert list(r.json) == ["channel", "text"], r.json
        assert r.json["channel"] == "#ops"
    assert reqs[0].json["text"] == ":new: Task created: Review quarterly report"
    assert reqs[1].json["text"] == (
        ":white_check_mark: Task completed: R&amp;D &lt;@U123&gt; &amp; &lt;!channel&gt; &gt; "
        "\"quotes\" \u00dcberpr\u00fcfung \u5831\u544a \U0001f680")
    # UTF-8 on the wire, not \u escapes
    assert "\u5831\u544a \U0001f680".encode() in reqs[1].body
    assert reqs[2].json["text"] == ":new: Task created: two\nlines\tand\x1b[31m"

    lines = slack_lines(agent)
    assert any(line.endswith("Slack [#ops]: :new: Task created: Review quarterly report "
                             "cid=req-abc-123") for line in lines), lines
    # control characters never reach the log raw: no forged line
    assert any("two\\x0alines\\x09and\\x1b[31m" in line for line in lines), lines
    assert not any(line.startswith("lines") for line in agent.err_lines)

    by_cause = {e["metadata"]["causation_id"]: e for e in sent}
    for task_event, text in ((created, ":new: Task created: Review quarterly report"),
                             (completed, ":white_check_mark: Task completed: " + tricky)):
        n = by_cause[task_event["event_id"]]
        assert n["metadata"]["correlation_id"] == task_event["metadata"]["correlation_id"]
        assert n["metadata"]["source"] == "slack"
        assert n["data"] == {"task_id": task_event["data"]["task_id"], "channel": "slack",
                             "recipient": "#ops", "text": text,
                             "event_type": task_event["event_type"]}
    assert by_cause[created["event_id"]]["metadata"]["correlation_id"] == "req-abc-123"
    assert forged["event_id"] in by_cause
    assert dead_letters(herald) == []
    stop_clean(agent)


def test_retry_after_503_then_success(procs, herald, publish, hook):
    hook.answer(503, times=2, body="upstream busy")
    ev = publish("task.created", {"task_id": "t-1", "title": "retry me", "owner_id": "u",
                                  "priority": 1})
    agent = start_slack(procs, hook)
    reqs = hook.wait_for(3)
    assert [r.status for r in reqs] == [503, 503, 200]
    assert reqs[0].body == reqs[1].body == reqs[2].body
    sent = wait_sent(herald, 1)
    assert len(sent) == 1
    assert sent[0]["metadata"]["causation_id"] == ev["event_id"]
    assert sent[0]["metadata"]["correlation_id"] == ev["metadata"]["correlation_id"]
    assert dead_letters(herald) == []
    warnings = [line for line in agent.err_lines if "HTTP 503" in line]
    assert len(warnings) == 2 and "upstream busy" in warnings[0], agent.err_lines
    time.sleep(0.5)
    assert len(hook.requests) == 3  # nothing posted twice after the success
    stop_clean(agent)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_honours_retry_after(procs, herald, publish, hook, form):
    if form == "seconds":
        value, at_least = "2", 1.9
    else:
        # an HTTP-date has whole seconds: 3 s ahead is at least 2 s from now
        value, at_least = formatdate(time.time() + 3, usegmt=True), 1.9
    hook.answer(429, headers={"Retry-After": value}, body="rate_limited")
    publish("task.created", {"task_id": "t-1", "title": "slow down", "owner_id": "u",
                             "priority": 1})
    # the runtime's own backoff would retry after ~50 ms
    start_slack(procs, hook, HERALD_RETRY_BASE="50ms", HERALD_RETRY_MAX="50ms")
    reqs = hook.wait_for(2)
    assert [r.status for r in reqs] == [429, 200]
    gap = reqs[1].at - reqs[0].at
    assert gap >= at_least, f"retried after {gap:.3f}s despite Retry-After: {value}"
    wait_sent(herald, 1)
    assert dead_letters(herald) == []


def test_400_goes_to_the_dlq(procs, herald, publish, hook):
    hook.answer(400, body="invalid_payload")
    bad = publish("task.created", {"task_id": "t-1", "title": "refused", "owner_id": "u",
                                   "priority": 1})
    good = publish("task.created", {"task_id": "t-2", "title": "accepted", "owner_id": "u",
                                    "priority": 1})
    start_slack(procs, hook)
    reqs = hook.wait_for(2)
    # no retry of a 4xx: the next request is already the next event
    assert [r.status for r in reqs] == [400, 200]
    assert reqs[1].json["text"] == ":new: Task created: accepted"
    dlq = wait_until("dead letter", lambda: dead_letters(herald))
    assert len(dlq) == 1
    d = dlq[0]
    assert d["dlq_topic"] == "task-events.dlq"
    assert d["group"] == SLACK_GROUP
    assert d["event_id"] == bad["event_id"]
    assert d["attempts"] == 1
    assert "400" in d["reason"] and "invalid_payload" in d["reason"], d["reason"]
    sent = wait_sent(herald, 1)
    assert [s["metadata"]["causation_id"] for s in sent] == [good["event_id"]]


def test_timeout_retries(procs, herald, publish, hook):
    hook.answer(200, delay=4.0)  # answers long after the agent's time limit
    ev = publish("task.created", {"task_id": "t-1", "title": "slow hook", "owner_id": "u",
                                  "priority": 1})
    agent = start_slack(procs, hook, HERALD_CALL_TIMEOUT="1s")
    reqs = hook.wait_for(2)
    assert reqs[0].body == reqs[1].body
    sent = wait_sent(herald, 1)
    assert [s["metadata"]["causation_id"] for s in sent] == [ev["event_id"]]
    assert any("attempt 1/" in line and "imed out" in line for line in agent.err_lines), \
        agent.err_lines
    assert dead_letters(herald) == []


def test_retries_exhausted_then_dlq(procs, herald, publish):
    # a port that refuses connections: a transport error, retried, then given up
    with WebhookReceiver() as gone:
        url = gone.url()
    ev = publish("task.completed", {"task_id": "t-1", "title": "nobody home", "owner_id": "u",
                                    "priority": 1})
    agent = start_slack(procs, HERALD_SLACK_WEBHOOK_URL=url, HERALD_RETRY_ATTEMPTS="3")
    dlq = wait_until("dead letter", lambda: dead_letters(herald))
    assert len(dlq) == 1
    assert dlq[0]["event_id"] == ev["event_id"]
    assert dlq[0]["attempts"] == 3
    assert "gave up after 3 attempts" in dlq[0]["reason"], dlq[0]["reason"]
    assert events(herald, "notification.sent") == []
    stop_clean(agent)


def test_unset_url_only_logs(procs, herald, publish):
    ev = publish("task.created", {"task_id": "t-1", "title": "Review quarterly report",
                                  "owner_id": "user-456", "priority": 2})
    agent = start_slack(procs)
    sent = wait_sent(herald, 1)
    assert sent[0]["data"] == {"task_id": "t-1", "channel": "slack", "recipient": "#tasks",
                               "text": ":new: Task created: Review quarterly report",
                               "event_type": "task.created", "logged_only": True}
    assert sent[0]["metadata"]["causation_id"] == ev["event_id"]
    lines = slack_lines(agent)
    assert any(" INFO  Slack [#tasks]: :new: Task created: Review quarterly report cid="
               in line for line in lines), lines
    stop_clean(agent)


def test_bad_settings_refused(herald):
    r = herald("agent", "slack", env={"HERALD_SLACK_WEBHOOK_URL": "ftp://h/secret-token"})
    assert r.returncode != 0
    assert "HERALD_SLACK_WEBHOOK_URL" in r.stderr
    assert "secret-token" not in r.stderr
