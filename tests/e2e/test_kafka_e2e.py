"""The embedded mode's end-to-end scenarios again, in Kafka mode: one `herald
up` on the librdkafka mock cluster (tests/tools/kafka_mock, 3 brokers, real
Kafka protocol on loopback) with a real SMTP server (aiosmtpd) and a real
webhook receiver, shared by the tests of this module. Each test tells its own
records apart by task id, owner and correlation id, and scripts SMTP and
webhook failures for its own recipient / title only, so the tests stay
independent of each other and of the order they run in.

What is read back: mails and webhook posts as received; the topics with kcat
(an independent Kafka client: envelope as the value, ce_* headers, key =
task_id, the dead letters' dlq-* headers); the audit log's files and `herald
audit verify`; `herald dlq list/replay` and `herald tail` on Kafka.

Mock quirks (shared/KAFKA-MOCK.md): every client uses fetch.wait.max.ms=5;
group joins take about 3 s, so every wait is for a condition, with generous
timeouts (ASan build, shared machine)."""

import json
import re
import signal
import subprocess
import time
import uuid

import pytest

from api_helpers import Api, wait_listening
from helpers import CMD_TIMEOUT, HERALD_BIN, Proc, clean_env, wait_for
from kafka_helpers import HERALD_TOPICS, KCAT_FAST, KafkaMock, audit_events, kafka_env
from smtp_server import WAIT_TIMEOUT, SmtpServer, _EphemeralController, _Handler
from webhook_receiver import Request, WebhookReceiver

TOPICS = HERALD_TOPICS
DOMAIN = "example.test"
FROM = "herald@example.test"
DUE = "2030-01-01T08:00:00.000Z"  # far ahead: no reminder fires during the tests
CE_HEADERS = {"ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "ce_correlationid",
              "ce_causationid", "content-type"}
WAIT = CMD_TIMEOUT


def uid():
    return uuid.uuid4().hex[:12]




# ---- SMTP and webhook failures scripted per recipient / per text -------------


class _KeyedHandler(_Handler):
    """smtp_server's handler, plus refusals that apply to one recipient."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refused = self.owner.take_for(address, "RCPT")
        if refused:
            return refused
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            refused = self.owner.take_for(rcpt, "DATA")
            if refused:
                return refused
        return await super().handle_DATA(server, session, envelope)


class KeyedSmtp(SmtpServer):
    """SmtpServer whose refusals can be aimed at one recipient, so a test
    sharing the server with others fails only its own mails."""

    def __init__(self):
        super().__init__()
        self.keyed = {}  # (rcpt, stage) -> [reply, ...]
        self.keyed_attempts = {}  # (rcpt, stage) -> commands seen

    def start(self):
        self._controller = _EphemeralController(_KeyedHandler(self), hostname="127.0.0.1",
                                                port=0, ready_timeout=WAIT_TIMEOUT)
        self._controller.start()
        return self

    def refuse_for(self, rcpt, stage, reply, times=1):
        with self._cond:
            self.keyed.setdefault((rcpt, stage), []).extend([reply] * times)

    def take_for(self, rcpt, stage):
        with self._cond:
            k = (rcpt, stage)
            self.keyed_attempts[k] = self.keyed_attempts.get(k, 0) + 1
            queue = self.keyed.get(k)
            return queue.pop(0) if queue else None

    def mails_to(self, rcpt):
        with self._cond:
            return [m for m in self.messages if rcpt in m.rcpt_tos]

    def wait_mails_to(self, rcpt, n=1):
        return wait_for(f"{n} mail(s) to {rcpt}",
                        lambda: (lambda ms: ms if len(ms) >= n else None)(self.mails_to(rcpt)))


class KeyedHook(WebhookReceiver):
    """WebhookReceiver whose scripted answers can be aimed at the posts whose
    text contains a marker (a test's unique title)."""

    def __init__(self):
        super().__init__()
        self.keyed = []  # [(marker, status, headers, body)]

    def answer_for(self, marker, status, headers=None, body=""):
        with self._lock:
            self.keyed.append((marker, status, dict(headers or {}), body.encode()))

    def posts(self, marker):
        return [r for r in self.requests
                if r.json and marker in r.json.get("text", "")]

    def wait_posts(self, marker, n=1):
        return wait_for(f"{n} Slack post(s) about {marker}",
                        lambda: (lambda ps: ps if len(ps) >= n else None)(self.posts(marker)))

    def _handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        text = parsed.get("text", "") if isinstance(parsed, dict) else ""
        status, headers, answer = 200, {}, b"ok"
        with self._lock:
            for i, (marker, st, hs, b) in enumerate(self.keyed):
                if marker in text:
                    status, headers, answer = st, hs, b
                    del self.keyed[i]
                    break
            req = Request(h.command, h.path, h.headers, body, parsed, time.monotonic(), status)
            self._requests.append(req)
            self._lock.notify_all()
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(len(answer)))
            h.end_headers()
            h.wfile.write(answer)
        except OSError:
            h.close_connection = True


# ---- the shared system ------------------------------------------------------


class System:
    """The mock cluster, the SMTP server, the webhook receiver and one
    `herald up` on them (restartable)."""

    def __init__(self, tmp):
        self.data_dir = tmp / "data"
        self.audit_dir = tmp / "audit"
        self.mock = self.smtp = self.hook = self.up = self.api = self.env = None

    def start(self):
        """Start the cluster, the servers and herald up (close() stops
        whatever of them started)."""
        self.mock = KafkaMock(topics=TOPICS)
        self.smtp = KeyedSmtp().start()
        self.hook = KeyedHook()
        self.env = kafka_env(self.mock, {
            "HERALD_SMTP_URL": self.smtp.url, "HERALD_SMTP_FROM": FROM,
            "HERALD_EMAIL_DOMAIN": DOMAIN, "HERALD_SLACK_WEBHOOK_URL": self.hook.url(),
            "HERALD_AUDIT_DIR": str(self.audit_dir), "NO_PROXY": "127.0.0.1",
            "HERALD_RETRY_BASE": "50ms", "HERALD_RETRY_MAX": "200ms",
            "HERALD_RETRY_ATTEMPTS": "5"})
        self.start_up()

    def start_up(self):
        env = dict(self.env, HERALD_LISTEN="127.0.0.1:0")
        self.up = Proc([str(HERALD_BIN), "up"], clean_env(self.data_dir, env))
        self.api = Api(wait_listening(self.up), self.up)
        return self.api

    def stop_up(self):
        """SIGTERM: herald up must exit 0."""
        self.up.signal(signal.SIGTERM)
        rc = self.up.wait()
        assert rc == 0, self.up.err_lines[-30:]
        bad = [line for line in self.up.err_lines if "Sanitizer" in line or "runtime error" in line]
        assert not bad, bad

    def close(self):
        for stop in (lambda: self.up and self.up.stop(),
                     lambda: self.mock and self.mock.stop(),
                     lambda: self.smtp and self.smtp.stop(),
                     lambda: self.hook and self.hook.close()):
            try:
                stop()
            except Exception:  # noqa: BLE001 - stop the rest whatever happens
                pass

    # ---- commands ----

    def herald(self, *args):
        return subprocess.run([str(HERALD_BIN), *map(str, args)],
                              env=clean_env(self.data_dir, self.env), capture_output=True,
                              text=True, timeout=2 * CMD_TIMEOUT)

    def dlq_list(self, *args):
        r = self.herald("dlq", "list", "--json", *args)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    # ---- kcat ----

    def kcat_records(self, topic):
        """Every record of topic: dicts with key, headers (dict), value
        (text), partition, offset; envelope (dict or None)."""
        r = subprocess.run(["kcat", "-C", "-b", self.mock.bootstrap, "-t", topic, "-o",
                            "beginning", "-e", "-q", "-J", *KCAT_FAST],
                           capture_output=True, text=True, timeout=CMD_TIMEOUT)
        assert r.returncode == 0, r.stderr
        out = []
        for line in r.stdout.splitlines():
            j = json.loads(line)
            hs = j.get("headers") or []
            headers = dict(zip(hs[0::2], hs[1::2]))
            try:
                env = json.loads(j["payload"]) if j["payload"] is not None else None
            except ValueError:
                env = None
            out.append({"key": j["key"], "headers": headers, "value": j["payload"],
                        "partition": j["partition"], "offset": j["offset"],
                        "envelope": env if isinstance(env, dict) else None})
        return out

    def records(self, topic, key, event_type=None):
        return [r for r in self.kcat_records(topic) if r["key"] == key
                and (event_type is None or (r["envelope"] or {}).get("event_type") == event_type)]

    def wait_records(self, topic, key, n, event_type=None, pred=None):
        def fetch():
            rs = [r for r in self.records(topic, key, event_type) if pred is None or pred(r)]
            return rs if len(rs) >= n else None
        return wait_for(f"{n} record(s) of {key} ({event_type or 'any'}) on {topic}", fetch)

    def kcat_produce(self, topic, key, value, headers=()):
        args = ["kcat", "-P", "-b", self.mock.bootstrap, "-t", topic, "-k", key]
        for h in headers:
            args += ["-H", h]
        r = subprocess.run(args, input=value + "\n", capture_output=True, text=True,
                           timeout=CMD_TIMEOUT)
        assert r.returncode == 0, r.stderr

    # ---- audit ----

    def audit_events(self):
        return audit_events(self.audit_dir)

    def wait_audited(self, event_ids):
        want = set(event_ids)
        return wait_for(f"audit lines for {sorted(want)}",
                        lambda: want <= {e.get("event_id") for e in self.audit_events()}
                        and self.audit_events())

    def audit_verify(self):
        r = self.herald("audit", "verify", "--dir", self.audit_dir)
        assert r.returncode == 0, r.stdout + r.stderr
        return r


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = System(tmp_path_factory.mktemp("kafka-e2e"))
    try:
        s.start()
        yield s
        s.stop_up()  # a clean exit 0, no sanitizer report
    finally:
        s.close()


def assert_ce_headers(rec):
    """The record's CloudEvents headers describe its envelope."""
    h, env = rec["headers"], rec["envelope"]
    assert CE_HEADERS <= set(h), h
    md = env["metadata"]
    assert h["ce_specversion"] == "1.0"
    assert h["ce_id"] == env["event_id"]
    assert h["ce_type"] == env["event_type"]
    assert h["ce_source"] == md["source"]
    assert h["ce_time"] == env["occurred_at"]
    assert h["ce_correlationid"] == md["correlation_id"]
    assert h["ce_causationid"] == md["causation_id"]
    assert h["content-type"] == "application/json"
    # W3C trace context: the header carries the metadata's traceparent
    assert h.get("traceparent") == md.get("traceparent"), (h, md)


def untraced(ev, cause=None):
    """ev's metadata without its traceparent, after checking it: a valid
    version-00 traceparent, and (cause given) a child span of the cause's:
    the same trace id, its own span id."""
    md = dict(ev["metadata"])
    tp = md.pop("traceparent")
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", tp), tp
    if cause is not None:
        parent = cause["metadata"]["traceparent"]
        assert tp[:36] == parent[:36] and tp[36:52] != parent[36:52], (tp, parent)
    return md


def one(items, what):
    assert len(items) == 1, f"expected one {what}, got {items}"
    return items[0]


# ---- the happy path -----------------------------------------------------------


def test_api_to_email_slack_audit_scheduler_with_causation_chain(system):
    tag = uid()
    owner, title, cid = f"chain-{tag}", f"Review report {tag}", f"req-kafka-{tag}"
    rcpt = f"{owner}@{DOMAIN}"
    r = system.api.create(title=title, owner_id=owner, due_at=DUE,
                          headers={"X-Correlation-ID": cid})
    task_id = r.json["id"]

    # a real mail and a real Slack post
    mail = one(system.smtp.wait_mails_to(rcpt), "mail")
    post = one(system.hook.wait_posts(title), "Slack post")
    assert post.json["text"] == f":new: Task created: {title}"

    # the chain on the topics, read with kcat; key = task_id everywhere
    created = one(system.wait_records("task-events", task_id, 1), "task record")
    ce = created["envelope"]
    assert ce["event_type"] == "task.created"
    assert untraced(ce) == {"correlation_id": cid, "causation_id": f"api-create-{task_id}",
                            "source": "task-api"}
    assert mail.message["Message-ID"] == f"<{ce['event_id']}@herald>"
    assert mail.message["Subject"] == f"New task assigned: {title}"
    sent = system.wait_records("notification-events", task_id, 2, "notification.sent")
    by_source = {s["envelope"]["metadata"]["source"]: s for s in sent}
    assert len(sent) == 2 and set(by_source) == {"email", "slack"}, sent
    email_sent, slack_sent = by_source["email"]["envelope"], by_source["slack"]["envelope"]
    assert email_sent["data"]["channel"] == "email" and email_sent["data"]["recipient"] == rcpt
    assert slack_sent["data"]["channel"] == "slack"
    delivered = one(system.wait_records("email-events", task_id, 1, "email.delivered"),
                    "email.delivered")["envelope"]
    scheduled = one(system.wait_records("reminder-events", task_id, 1, "reminder.scheduled"),
                    "reminder.scheduled")["envelope"]
    assert scheduled["data"]["due_at"] == DUE and scheduled["data"]["task_id"] == task_id
    # the causation chain, one correlation id
    assert email_sent["metadata"]["causation_id"] == ce["event_id"]
    assert delivered["metadata"]["causation_id"] == email_sent["event_id"]
    assert slack_sent["metadata"]["causation_id"] == ce["event_id"]
    assert untraced(scheduled, ce) == {"correlation_id": cid, "causation_id": ce["event_id"],
                                       "source": "scheduler"}
    untraced(email_sent, ce), untraced(slack_sent, ce), untraced(delivered, email_sent)
    assert delivered["data"]["message_id"] == f"<{ce['event_id']}@herald>"
    chain = [created] + sent + system.records("email-events", task_id) + \
        system.records("reminder-events", task_id)
    for rec in chain:
        assert rec["envelope"]["metadata"]["correlation_id"] == cid, rec
        assert_ce_headers(rec)

    # the audit log holds each of them once, and its chain verifies
    ids = [rec["envelope"]["event_id"] for rec in chain]
    assert len(ids) == 5
    logged = system.wait_audited(ids)
    for rec in chain:
        mine = [e for e in logged if e["event_id"] == rec["envelope"]["event_id"]]
        assert mine == [rec["envelope"]], mine
    system.audit_verify()

    # herald tail reads Kafka to its end and prints the chain
    r = system.herald("tail")
    assert r.returncode == 0, r.stderr
    tailed = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(e["event_id"] for e in tailed if e["metadata"]["correlation_id"] == cid) == \
        sorted(ids)

    # completing the task cancels its reminder
    r = system.api.request("POST", f"/tasks/{task_id}/complete",
                           headers={"X-Correlation-ID": f"{cid}-done"})
    assert r.status == 200, r
    completed = one(system.wait_records("task-events", task_id, 1, "task.completed"),
                    "task.completed")["envelope"]
    cancelled = one(system.wait_records("reminder-events", task_id, 1, "reminder.cancelled"),
                    "reminder.cancelled")
    assert_ce_headers(cancelled)
    assert cancelled["envelope"]["data"] == {"reminder_id": scheduled["data"]["reminder_id"],
                                             "task_id": task_id, "reason": "completed"}
    assert untraced(cancelled["envelope"], completed) == {"correlation_id": f"{cid}-done",
                                                          "causation_id": completed["event_id"],
                                                          "source": "scheduler"}
    system.hook.wait_posts(title, 2)  # the completion's post
    assert len(system.smtp.mails_to(rcpt)) == 1  # a completion is not mailed


# ---- failures -------------------------------------------------------------


def test_smtp_451_is_retried_and_one_mail_arrives(system):
    tag = uid()
    owner, title = f"defer-{tag}", f"Deferred {tag}"
    rcpt = f"{owner}@{DOMAIN}"
    system.smtp.refuse_for(rcpt, "DATA", "451 4.3.0 try again later", times=1)
    task_id = system.api.create(title=title, owner_id=owner).json["id"]
    mail = one(system.smtp.wait_mails_to(rcpt), "mail")
    created = one(system.wait_records("task-events", task_id, 1), "task record")["envelope"]
    assert mail.message["Message-ID"] == f"<{created['event_id']}@herald>"
    assert system.smtp.keyed_attempts[(rcpt, "DATA")] == 2  # refused once, then accepted
    sent = system.wait_records("notification-events", task_id, 1, "notification.sent",
                               pred=lambda r: r["envelope"]["metadata"]["source"] == "email")
    assert one(sent, "email notification.sent")["envelope"]["metadata"]["causation_id"] == \
        created["event_id"]
    system.wait_records("email-events", task_id, 1, "email.delivered")
    system.hook.wait_posts(title)
    assert system.records("task-events.dlq", task_id) == []
    assert len(system.smtp.mails_to(rcpt)) == 1


def test_smtp_550_dead_letter_on_kafka_listed_and_replayed_once(system):
    tag = uid()
    owner, title = f"nouser-{tag}", f"Refused {tag}"
    rcpt = f"{owner}@{DOMAIN}"
    system.smtp.refuse_for(rcpt, "RCPT", "550 5.1.1 no such user", times=1)
    task_id = system.api.create(title=title, owner_id=owner).json["id"]
    created = one(system.wait_records("task-events", task_id, 1), "task record")

    # the dead letter on task-events.dlq: the original record, the dlq-* headers
    dead = one(system.wait_records("task-events.dlq", task_id, 1), "dead letter")
    h = dead["headers"]
    assert dead["value"] == created["value"]
    assert h["dlq-group"] == "notification-email"
    assert h["dlq-topic"] == "task-events"
    assert h["dlq-offset"] == str(created["offset"])
    assert h["dlq-partition"] == str(created["partition"])
    assert h["dlq-attempts"] == "1"  # permanent: not retried
    assert "550" in h["dlq-reason"] and "no such user" in h["dlq-reason"], h
    assert h["dlq-failed-at"].endswith("Z")
    assert system.smtp.mails_to(rcpt) == []
    assert [r for r in system.records("notification-events", task_id)
            if r["envelope"]["metadata"]["source"] == "email"] == []
    system.hook.wait_posts(title)
    event_id = created["envelope"]["event_id"]

    # herald dlq list reads it from Kafka
    entry = one(system.dlq_list("--event-id", event_id), "listed dead letter")
    assert entry["dlq_topic"] == "task-events.dlq"
    assert entry["dlq_offset"] == dead["offset"]
    assert entry["group"] == "notification-email"
    assert entry["topic"] == "task-events" and entry["offset"] == created["offset"]
    assert entry["partition"] == created["partition"]
    assert entry["attempts"] == 1 and "550" in entry["reason"]
    assert entry["key"] == task_id
    assert json.loads(entry["value"]) == created["envelope"]
    assert not entry["replayed"] and not entry["handled"]

    # replay: published again through the outbox, the email group handles it
    r = system.herald("dlq", "replay", "--group", "notification-email", "--event-id", event_id)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("replayed ") == 1 and event_id in r.stdout, r.stdout
    mail = one(system.smtp.wait_mails_to(rcpt), "mail")
    assert mail.message["Message-ID"] == f"<{event_id}@herald>"
    again = system.wait_records("task-events", task_id, 2)
    copy = [rec for rec in again if rec["offset"] != created["offset"]
            or rec["partition"] != created["partition"]]
    assert one(copy, "replayed record")["value"] == created["value"]
    assert copy[0]["headers"]["dlq-replay-of"] == f"task-events.dlq:{dead['offset']}"
    sent = system.wait_records("notification-events", task_id, 1, "notification.sent",
                               pred=lambda r: r["envelope"]["metadata"]["source"] == "email")
    assert one(sent, "email notification.sent")["envelope"]["metadata"]["causation_id"] == \
        event_id
    system.wait_records("email-events", task_id, 1, "email.delivered")
    # the groups that had handled it dropped the copy by its event_id
    audited = system.wait_audited([event_id])
    assert len([e for e in audited if e["event_id"] == event_id]) == 1
    assert len(system.hook.posts(title)) == 1

    # a second replay sends nothing: the dead letter is marked replayed
    r = system.herald("dlq", "replay", "--event-id", event_id)
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    assert "0 replayed, 1 skipped" in r.stderr, r.stderr
    assert len(system.records("task-events", task_id)) == 2
    assert len(system.smtp.mails_to(rcpt)) == 1


def test_slack_429_retry_after_is_honoured(system):
    tag = uid()
    title = f"Slow down {tag}"
    system.hook.answer_for(title, 429, headers={"Retry-After": "2"}, body="rate_limited")
    task_id = system.api.create(title=title, owner_id=f"rate-{tag}").json["id"]
    posts = system.hook.wait_posts(title, 2)
    assert [p.status for p in posts] == [429, 200]
    gap = posts[1].at - posts[0].at
    assert gap >= 1.9, f"retried after {gap:.3f}s despite Retry-After: 2"
    assert posts[0].body == posts[1].body
    slack = system.wait_records("notification-events", task_id, 1, "notification.sent",
                                pred=lambda r: r["envelope"]["metadata"]["source"] == "slack")
    assert len(slack) == 1
    system.smtp.wait_mails_to(f"rate-{tag}@{DOMAIN}")
    assert system.records("task-events.dlq", task_id) == []


def test_a_record_that_is_not_an_envelope_is_dead_lettered_and_agents_go_on(system):
    tag = uid()
    bad_key, good_key = f"bad-{tag}", f"good-{tag}"
    garbage = '{"not": "an envelope", "tag": "' + tag + '"}'
    system.kcat_produce("task-events", bad_key, garbage)
    original = one(system.wait_records("task-events", bad_key, 1), "garbage record")
    # the agents keep running: a valid event after it is handled by each
    good = {"event_id": str(uuid.uuid4()), "event_type": "task.created",
            "occurred_at": "2025-01-15T14:30:22.456Z",
            "data": {"task_id": good_key, "title": f"After garbage {tag}",
                     "owner_id": f"after-{tag}", "priority": 1},
            "metadata": {"correlation_id": f"req-{tag}", "causation_id": "python",
                         "source": "python-task-api"}}
    system.kcat_produce("task-events", good_key, json.dumps(good))
    system.smtp.wait_mails_to(f"after-{tag}@{DOMAIN}")
    system.hook.wait_posts(good["data"]["title"])
    system.wait_audited([good["event_id"]])

    groups = {"notification-email", "notification-slack", "audit-log", "scheduler"}
    dead = system.wait_records("task-events.dlq", bad_key, len(groups))
    assert {d["headers"]["dlq-group"] for d in dead} == groups, dead
    for d in dead:
        assert d["value"] == garbage  # the original value, unchanged
        assert d["headers"]["dlq-reason"].startswith("invalid envelope"), d["headers"]
        assert d["headers"]["dlq-topic"] == "task-events"
        assert d["headers"]["dlq-offset"] == str(original["offset"])
        assert d["headers"]["dlq-partition"] == str(original["partition"])
        assert d["headers"]["dlq-attempts"] == "0"  # never handed to a handler
    assert system.up.poll() is None, system.up.err_lines[-20:]
    assert system.api.healthy()


def test_kcat_envelopes_without_headers_are_consumed_by_every_agent(system):
    """Records as the original Python design produces them: value = the
    envelope JSON, key = task_id, no ce_* headers."""
    tag = uid()
    task_id, owner, title = f"py-{tag}", f"py-user-{tag}", f"From Python {tag}"
    env = {"event_id": str(uuid.uuid4()), "event_type": "task.created",
           "occurred_at": "2025-01-15T14:30:22.456Z",
           "data": {"task_id": task_id, "title": title, "owner_id": owner, "priority": 2,
                    "due_at": DUE},
           "metadata": {"correlation_id": f"req-py-{tag}",
                        "causation_id": f"api-create-{task_id}", "source": "task-api"}}
    system.kcat_produce("task-events", task_id, json.dumps(env))
    rec = one(system.wait_records("task-events", task_id, 1), "kcat record")
    assert rec["headers"] == {}

    # email: the mail
    mail = one(system.smtp.wait_mails_to(f"{owner}@{DOMAIN}"), "mail")
    assert mail.message["Message-ID"] == f"<{env['event_id']}@herald>"
    assert mail.message["Subject"] == f"New task assigned: {title}"
    # slack: the post
    post = one(system.hook.wait_posts(title), "Slack post")
    assert post.json["text"] == f":new: Task created: {title}"
    # scheduler: reminder.scheduled for the future due date
    scheduled = one(system.wait_records("reminder-events", task_id, 1, "reminder.scheduled"),
                    "reminder.scheduled")["envelope"]
    assert scheduled["data"]["due_at"] == DUE
    assert scheduled["metadata"] == {"correlation_id": f"req-py-{tag}",
                                     "causation_id": env["event_id"], "source": "scheduler"}
    # derived events carry the chain
    sent = system.wait_records("notification-events", task_id, 2, "notification.sent")
    for s in sent:
        assert s["envelope"]["metadata"]["causation_id"] == env["event_id"]
        assert s["envelope"]["metadata"]["correlation_id"] == f"req-py-{tag}"
        assert_ce_headers(s)
    # audit: logged as received
    logged = system.wait_audited([env["event_id"]])
    assert [e for e in logged if e["event_id"] == env["event_id"]] == [env]
    assert system.records("task-events.dlq", task_id) == []


# ---- restart ----------------------------------------------------------------


def test_restart_handles_nothing_twice(system):
    tag = uid()
    owner, title = f"restart-{tag}", f"Before restart {tag}"
    rcpt = f"{owner}@{DOMAIN}"
    task_id = system.api.create(title=title, owner_id=owner, due_at=DUE,
                                headers={"X-Correlation-ID": f"req-{tag}"}).json["id"]
    system.smtp.wait_mails_to(rcpt)
    system.hook.wait_posts(title)
    before = [r["envelope"]["event_id"] for topic in ("task-events", "notification-events",
                                                       "email-events", "reminder-events")
              for r in system.wait_records(topic, task_id, 2 if topic == "notification-events"
                                           else 1)]
    system.wait_audited(before)

    system.stop_up()
    system.start_up()
    # a task after the restart: once its chain is through, the restarted
    # agents have read past everything before it
    owner2, title2 = f"restart2-{tag}", f"After restart {tag}"
    task2 = system.api.create(title=title2, owner_id=owner2, due_at=DUE).json["id"]
    system.smtp.wait_mails_to(f"{owner2}@{DOMAIN}")
    system.hook.wait_posts(title2)
    after = [r["envelope"]["event_id"] for topic in ("task-events", "notification-events",
                                                      "email-events", "reminder-events")
             for r in system.wait_records(topic, task2, 2 if topic == "notification-events"
                                          else 1)]
    system.wait_audited(after)
    time.sleep(1.0)  # room for a wrong second handling to show

    assert len(system.smtp.mails_to(rcpt)) == 1
    assert len(system.hook.posts(title)) == 1
    for topic in ("notification-events", "email-events", "reminder-events"):
        # no derived event published twice for the first task
        assert len(system.records(topic, task_id)) == (2 if topic == "notification-events"
                                                       else 1), topic
    ids = [e["event_id"] for e in system.audit_events()]
    assert len(ids) == len(set(ids)), "an event was audited twice"
    assert set(before + after) <= set(ids)
    system.audit_verify()
