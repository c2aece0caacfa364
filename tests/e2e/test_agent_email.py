"""The email agent end to end: `herald agent email` (and `herald up`) against a
real SMTP server (aiosmtpd, tests/e2e/smtp_server.py) on 127.0.0.1, or in its
.eml mode against the data directory.

Checked: the mail's envelope, headers and body as Python's email package
parses them; a title carrying CR/LF and "Bcc:" adds no header and no
recipient; an owner_id that is not a mail local part goes to the DLQ and no
mail is sent; a non-ASCII subject (RFC 2047) decodes back; the chain
task.created -> notification.sent -> email.delivered with one correlation
id; 451 (RCPT or DATA), a refused connection and a silent server (the call
timeout) are retried, 550 goes to task-events.dlq and `herald dlq replay`
re-drives it; AUTH with HERALD_SMTP_USER/PASSWORD; dot-stuffing done once
(by libcurl); reminder.due mails; .eml files that parse; a kill -9 in the
middle of an .eml batch, then a restart: one file and one delivery per task."""

import email
import email.policy
import email.utils
import json
import re
import socket
import time
from pathlib import Path

import pytest

from api_helpers import start_api, tail_events
from helpers import CMD_TIMEOUT
from smtp_server import SmtpServer

OWNER = "user-456"
DOMAIN = "company.com"
RCPT = f"{OWNER}@{DOMAIN}"
FROM = "herald@example.org"

# Short retries so a test waits milliseconds, not seconds, between attempts.
FAST_RETRY = {"HERALD_RETRY_BASE": "50ms", "HERALD_RETRY_MAX": "200ms",
              "HERALD_RETRY_ATTEMPTS": "5"}


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


def wait_for(predicate, what, timeout=CMD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def task_data(title="Review quarterly report", owner=OWNER, task_id="t-1", **more):
    return {"task_id": task_id, "title": title, "owner_id": owner, "priority": 2, **more}


def agent_env(smtp=None, **more):
    env = {"HERALD_SMTP_FROM": FROM, "HERALD_EMAIL_DOMAIN": DOMAIN, **FAST_RETRY}
    if smtp is not None:
        env["HERALD_SMTP_URL"] = smtp.url
    env.update(more)
    return env


def start_agent(procs, env):
    p = procs.herald("agent", "email", env=env)
    return p


def events_of(data_dir, event_type):
    return [e for e in tail_events(data_dir) if e["event_type"] == event_type]


def wait_events(data_dir, event_type, n=1):
    return wait_for(lambda: len(events_of(data_dir, event_type)) >= n and
                    events_of(data_dir, event_type), f"{n} {event_type} event(s)")


def dlq_list(herald):
    r = herald("dlq", "list", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def content(m):
    """The decoded text body with "\n" line ends."""
    return m.get_content().replace("\r\n", "\n")


def header_lines(raw):
    """The header block of a raw message as a list of physical lines."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


def wait_log(proc, pattern, timeout=CMD_TIMEOUT):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        found = [line for line in list(proc.err_lines) if rx.search(line)]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no log line matching {pattern!r}: {proc.err_lines}")


def assert_chain(data_dir, task_event, recipient, subject):
    """notification.sent caused by the task event, email.delivered caused by
    notification.sent, one correlation id; returns (sent, delivered)."""
    sent = [e for e in wait_events(data_dir, "notification.sent")
            if e["metadata"]["causation_id"] == task_event["event_id"]
            and e["metadata"]["source"] == "email"]  # herald up: slack sends one too
    assert len(sent) == 1, sent
    sent = sent[0]
    delivered = [e for e in wait_events(data_dir, "email.delivered")
                 if e["metadata"]["causation_id"] == sent["event_id"]]
    assert len(delivered) == 1, delivered
    delivered = delivered[0]
    cid = task_event["metadata"]["correlation_id"]
    for e in (sent, delivered):
        assert e["metadata"]["correlation_id"] == cid
        assert e["metadata"]["source"] == "email"
    assert sent["data"] == {"task_id": task_event["data"]["task_id"], "channel": "email",
                            "recipient": recipient, "subject": subject,
                            "event_type": task_event["event_type"]}
    d = delivered["data"]
    assert set(d) == {"task_id", "message_id", "recipient", "smtp_reply"}
    assert d["task_id"] == task_event["data"]["task_id"]
    assert d["recipient"] == recipient
    assert d["message_id"] == f"<{task_event['event_id']}@herald>"
    return sent, delivered


# ---- SMTP ----------------------------------------------------------------


def test_task_created_mail_over_smtp(herald, publish, procs, smtp):
    description = "Line one\n.\n..two dots\n.hidden\nlast line"
    ev = publish("task.created", task_data(description=description, due_at="2030-01-01T08:00:00Z"),
                 "--correlation-id", "req-abc-123")
    agent = start_agent(procs, agent_env(smtp))
    msg = smtp.wait_messages(1)[0]

    assert msg.mail_from == FROM
    assert msg.rcpt_tos == [RCPT]
    m = msg.message
    assert m["From"] == FROM
    assert m["To"] == RCPT
    assert m["Subject"] == "New task assigned: Review quarterly report"
    assert m["Message-ID"] == f"<{ev['event_id']}@herald>"
    assert email.utils.parsedate_to_datetime(m["Date"]).utcoffset().total_seconds() == 0
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000",
                        m["Date"])
    assert m["MIME-Version"] == "1.0"
    assert m.get_content_type() == "text/plain"
    assert m.get_content_charset() == "utf-8"
    assert m["Content-Transfer-Encoding"] in ("7bit", "8bit", "quoted-printable")
    assert m["Bcc"] is None and m["Cc"] is None
    body = content(m)
    assert "Task ID: t-1" in body
    assert "Correlation: req-abc-123" in body
    assert "Due: 2030-01-01T08:00:00Z" in body
    # dot-stuffing happened exactly once on the wire (aiosmtpd undid it)
    assert "\nLine one\n.\n..two dots\n.hidden\nlast line\n" in body
    # CRLF line ends only
    assert b"\n" not in msg.data.replace(b"\r\n", b"")

    sent, delivered = assert_chain(herald.data_dir, ev, RCPT,
                                   "New task assigned: Review quarterly report")
    assert delivered["data"]["smtp_reply"].startswith("250")
    assert "accepted" in delivered["data"]["smtp_reply"]
    wait_log(agent, r"INFO  Sending email to user-456@company\.com: New task assigned: "
                    r"Review quarterly report cid=req-abc-123$")
    assert len(smtp.messages) == 1


def test_title_with_crlf_bcc_adds_no_header_or_recipient(data_dir, procs, smtp):
    # through the real Task API: titles may hold control characters there
    api = start_api(procs, data_dir, cmd="up", env=agent_env(smtp))
    title = "Review\r\nBcc: evil@x.example\r\nX-Injected: yes\nTo: evil@y.example"
    r = api.create(title=title, owner_id=OWNER, headers={"X-Correlation-ID": "req-bcc"})
    msg = smtp.wait_messages(1)[0]

    assert msg.rcpt_tos == [RCPT]
    m = msg.message
    assert m["Bcc"] is None and m["X-Injected"] is None
    assert m.get_all("To") == [RCPT]
    assert m["Subject"] == ("New task assigned: Review  Bcc: evil@x.example  X-Injected: yes "
                            "To: evil@y.example")
    lines = header_lines(msg.data)
    names = [ln.split(b":", 1)[0].lower() for ln in lines if not ln.startswith((b" ", b"\t"))]
    assert b"bcc" not in names and b"x-injected" not in names
    assert names.count(b"to") == 1
    assert all(len(ln) <= 78 for ln in lines)

    task_event = [e for e in tail_events(data_dir) if e["event_type"] == "task.created"][0]
    assert task_event["data"]["task_id"] == r.json["id"]
    assert_chain(data_dir, task_event, RCPT, m["Subject"])


def test_owner_id_that_is_no_local_part_goes_to_the_dlq(herald, publish, procs, smtp):
    bad = publish("task.created", task_data(owner="evil@x.example", task_id="t-bad"))
    bad2 = publish("task.created", task_data(owner="a b\r\nRCPT TO:<x@y>", task_id="t-bad2"))
    good = publish("task.created", task_data(task_id="t-good"))
    start_agent(procs, agent_env(smtp))
    smtp.wait_messages(1)
    entries = wait_for(lambda: len(dlq_list(herald)) == 2 and dlq_list(herald), "2 dead letters")
    by_id = {e["event_id"]: e for e in entries}
    assert set(by_id) == {bad["event_id"], bad2["event_id"]}
    for e in entries:
        assert e["group"] == "notification-email"
        assert e["dlq_topic"] == "task-events.dlq"
        assert e["attempts"] == 1
        assert "owner_id" in e["reason"] and "mail address" in e["reason"]
        assert "\r" not in e["reason"] and "\n" not in e["reason"]
    assert "'@'" in by_id[bad["event_id"]]["reason"]
    # no mail to a wrong address, only the good one
    time.sleep(0.5)
    assert [m.rcpt_tos for m in smtp.messages] == [[RCPT]]
    assert smtp.attempts["RCPT"] == 1
    sent = events_of(herald.data_dir, "notification.sent")
    assert [e["metadata"]["causation_id"] for e in sent] == [good["event_id"]]


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
def test_451_is_retried_then_delivered(herald, publish, procs, smtp, stage):
    smtp.refuse(stage, "451 4.3.0 try again later", times=2)
    ev = publish("task.created", task_data())
    agent = start_agent(procs, agent_env(smtp))
    msg = smtp.wait_messages(1)[0]
    assert msg.rcpt_tos == [RCPT]
    assert smtp.attempts[stage] == 3
    wait_log(agent, r"attempt 1/5 failed: SMTP server deferred the mail with 451: "
                    r"451 4\.3\.0 try again later; retrying")
    wait_log(agent, r"attempt 2/5 failed: .*451")
    _, delivered = assert_chain(herald.data_dir, ev, RCPT,
                                "New task assigned: Review quarterly report")
    assert delivered["data"]["smtp_reply"].startswith("250")
    assert dlq_list(herald) == []
    time.sleep(0.5)
    assert len(smtp.messages) == 1


def test_550_goes_to_the_dlq_and_replay_delivers(herald, publish, procs, smtp):
    smtp.refuse("RCPT", "550 5.1.1 <user-456@company.com>: no such user")
    ev = publish("task.created", task_data())
    later = publish("task.created", task_data(task_id="t-2", title="Second"))
    agent = start_agent(procs, agent_env(smtp))
    # the next event is not stuck behind the failed one
    msg = smtp.wait_messages(1)[0]
    assert msg.message["Subject"] == "New task assigned: Second"
    entries = wait_for(lambda: dlq_list(herald), "a dead letter")
    assert len(entries) == 1
    e = entries[0]
    assert e["event_id"] == ev["event_id"]
    assert e["dlq_topic"] == "task-events.dlq"
    assert e["group"] == "notification-email"
    assert e["topic"] == "task-events"
    assert e["attempts"] == 1  # permanent: not retried
    assert "550" in e["reason"] and "no such user" in e["reason"]
    assert json.loads(e["value"]) == ev
    wait_log(agent, r"dead-lettered to task-events\.dlq .*550")
    # nothing derived from the failed event
    sent = events_of(herald.data_dir, "notification.sent")
    assert [s["metadata"]["causation_id"] for s in sent] == [later["event_id"]]

    r = herald("dlq", "replay", "--group", "notification-email")
    assert r.returncode == 0, r.stderr
    msgs = smtp.wait_messages(2)
    assert msgs[1].message["Message-ID"] == f"<{ev['event_id']}@herald>"
    assert_chain(herald.data_dir, ev, RCPT, "New task assigned: Review quarterly report")


def test_unreachable_server_is_retried_then_dead_lettered(herald, publish, procs):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ev = publish("task.created", task_data())
    env = agent_env(HERALD_SMTP_URL=f"smtp://127.0.0.1:{port}", HERALD_RETRY_ATTEMPTS="3")
    start_agent(procs, env)
    entries = wait_for(lambda: dlq_list(herald), "a dead letter")
    assert entries[0]["event_id"] == ev["event_id"]
    assert entries[0]["attempts"] == 3
    assert "gave up after 3 attempts" in entries[0]["reason"]
    assert "cannot send mail over SMTP" in entries[0]["reason"]


def test_silent_server_times_out_and_is_retried(herald, publish, procs):
    # a listening socket that never accepts: the kernel completes the TCP
    # handshake, no greeting ever comes, HERALD_CALL_TIMEOUT ends each try
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        ev = publish("task.created", task_data())
        env = agent_env(HERALD_SMTP_URL=f"smtp://127.0.0.1:{port}", HERALD_RETRY_ATTEMPTS="2",
                        HERALD_CALL_TIMEOUT="300ms")
        agent = start_agent(procs, env)
        entries = wait_for(lambda: dlq_list(herald), "a dead letter")
    assert entries[0]["event_id"] == ev["event_id"]
    assert entries[0]["attempts"] == 2
    assert "cannot send mail over SMTP" in entries[0]["reason"]
    assert "timed out" in entries[0]["reason"].lower() or "timeout" in entries[0]["reason"].lower()
    wait_log(agent, r"attempt 1/2 failed: cannot send mail over SMTP")
    assert agent.poll() is None  # a timeout is not fatal to the agent


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth(herald, publish, procs):
    with SmtpServer(auth=("herald", "s3cret pass")) as server:
        ev = publish("task.created", task_data())
        env = agent_env(server, HERALD_SMTP_USER="herald", HERALD_SMTP_PASSWORD="s3cret pass")
        start_agent(procs, env)
        msg = server.wait_messages(1)[0]
        assert msg.rcpt_tos == [RCPT]
        assert [(login, ok) for _, login, ok in server.logins] == [("herald", True)]
        assert_chain(herald.data_dir, ev, RCPT, "New task assigned: Review quarterly report")


def test_non_ascii_subject_is_rfc2047_encoded(herald, publish, procs, smtp):
    title = ("\u00dcberpr\u00fcfung des Quartalsberichts \u2014 \u5b63\u5ea6\u62a5\u544a "
             "\U0001f4c8 und noch ein ziemlich langer Rest, damit gefaltet wird")
    ev = publish("task.created", task_data(title=title, description="Gr\u00fc\u00dfe"))
    start_agent(procs, agent_env(smtp))
    msg = smtp.wait_messages(1)[0]
    lines = header_lines(msg.data)
    assert all(len(ln) <= 78 for ln in lines)
    assert all(ln.isascii() for ln in lines)
    raw_subject = [ln for ln in lines if ln.startswith(b"Subject:")][0]
    assert b"=?UTF-8?B?" in raw_subject
    m = msg.message
    assert m["Subject"] == f"New task assigned: {title}"
    assert m["Content-Transfer-Encoding"] == "quoted-printable"
    body = content(m)
    assert f"Title: {title}" in body and "Gr\u00fc\u00dfe" in body
    assert_chain(herald.data_dir, ev, RCPT, f"New task assigned: {title}")


def test_reminder_due_mail(herald, publish, procs, smtp):
    data = {"reminder_id": "r-1", "task_id": "t-7", "owner_id": OWNER,
            "title": "Submit expenses", "due_at": "2030-01-01T08:00:00.000Z",
            "remind_at": "2030-01-01T07:00:00.000Z"}
    ev = publish("reminder.due", data, "--correlation-id", "req-rem-1")
    start_agent(procs, agent_env(smtp))
    m = smtp.wait_messages(1)[0].message
    assert m["Subject"] == "Reminder: Submit expenses"
    assert m["To"] == RCPT
    body = content(m)
    assert "Task ID: t-7" in body
    assert "2030-01-01T08:00:00.000Z" in body
    assert "Correlation: req-rem-1" in body
    assert m["Message-ID"] == f"<{ev['event_id']}@herald>"
    assert_chain(herald.data_dir, ev, RCPT, "Reminder: Submit expenses")


def test_other_types_are_not_mailed(herald, publish, procs, smtp):
    publish("task.completed", task_data(task_id="t-done"))
    ev = publish("task.created", task_data())
    start_agent(procs, agent_env(smtp))
    msgs = smtp.wait_messages(1)
    assert_chain(herald.data_dir, ev, RCPT, "New task assigned: Review quarterly report")
    time.sleep(0.5)
    assert len(msgs) == 1 and len(smtp.messages) == 1


# ---- .eml mode ------------------------------------------------------------


def test_eml_mode_writes_a_parseable_file(herald, publish, procs):
    title = "Caf\u00e9 \r\nBcc: evil@x.example"
    ev = publish("task.created", task_data(title=title), "--correlation-id", "req-eml")
    agent = start_agent(procs, agent_env())  # no HERALD_SMTP_URL
    path = Path(herald.data_dir) / "mail" / f"{ev['event_id']}.eml"
    wait_for(path.exists, "the .eml file")
    _, delivered = assert_chain(herald.data_dir, ev, RCPT,
                                "New task assigned: Caf\u00e9   Bcc: evil@x.example")
    assert delivered["data"]["smtp_reply"] == f"eml:{path}"

    raw = path.read_bytes()
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert m["From"] == FROM and m["To"] == RCPT
    assert m["Subject"] == "New task assigned: Caf\u00e9   Bcc: evil@x.example"
    assert m["Bcc"] is None
    assert m["Message-ID"] == f"<{ev['event_id']}@herald>"
    assert "Correlation: req-eml" in content(m)
    assert "Task ID: t-1" in content(m)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    # one file, no temporary leftovers
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    wait_log(agent, r"Sending email to user-456@company\.com: New task assigned: Caf\u00e9")


def test_kill_9_mid_batch_then_restart_one_file_and_one_delivery_per_task(herald, procs):
    n = 300
    ids = []
    for i in range(n):
        r = herald("publish", "task.created", "--data", json.dumps(task_data(task_id=f"t-{i}")))
        assert r.returncode == 0, r.stderr
        ids.append(json.loads(r.stdout)["event_id"])
    mail_dir = Path(herald.data_dir) / "mail"
    first = start_agent(procs, agent_env())
    wait_for(lambda: mail_dir.exists() and any(mail_dir.glob("*.eml")), "the first .eml",
             timeout=CMD_TIMEOUT)
    first.kill9()
    start_agent(procs, agent_env())
    wait_for(lambda: len(events_of(herald.data_dir, "email.delivered")) >= n,
             f"{n} email.delivered")
    time.sleep(0.5)
    assert sorted(p.name for p in mail_dir.iterdir()) == sorted(f"{i}.eml" for i in ids)
    sent = events_of(herald.data_dir, "notification.sent")
    delivered = events_of(herald.data_dir, "email.delivered")
    assert sorted(e["metadata"]["causation_id"] for e in sent) == sorted(ids)
    assert sorted(e["metadata"]["causation_id"] for e in delivered) == \
        sorted(e["event_id"] for e in sent)
    for i in ids[:: n // 10]:
        m = email.message_from_bytes((mail_dir / f"{i}.eml").read_bytes(),
                                     policy=email.policy.default)
        assert m["Message-ID"] == f"<{i}@herald>"


def test_bad_smtp_url_is_refused_at_start(herald):
    r = herald("agent", "email", env={"HERALD_SMTP_URL": "http://127.0.0.1:25"})
    assert r.returncode != 0
    assert "smtp://" in r.stderr
