"""Fault tests of herald on Kafka (HERALD_BUS=kafka:...) against the
librdkafka mock cluster (tests/tools/kafka_mock, 3 brokers), with its
controls: every broker down and up again while the Task API takes writes,
kill -9 and SIGTERM of the API while the brokers are down, a consumer of a
group killed (or stopped) while it works, and a producer queue of two
records.

What is checked is what the issue promises: no acknowledged (201) task
without its event in the audit log, each event logged once; events left in
the outbox at a stop are published after a restart; a group member that
dies leaves its partitions to the others and nothing is lost.

Mock quirks (shared/KAFKA-MOCK.md): every client uses fetch.wait.max.ms=5
and a 6 s session timeout; group joins take seconds, so the tests wait for
conditions (assignments, log lines, rows) and never assert on speed."""

import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict

from api_helpers import start_api
from helpers import CMD_TIMEOUT, HERALD_BIN, clean_env, wait_for
from kafka_helpers import (HERALD_TOPICS, KCAT_FAST, KafkaMock, assignments, audit_events,
                           audit_task_ids, kafka_env, kcat_keys, outbox_depth, start_audit)

TOPICS = HERALD_TOPICS

# The Task API's and the agents' flush time limit at a stop (SHUTDOWN_GRACE_MS
# in src/cli/cmd_api.c; bus_relay_stop(relay, 10000) in cmd_agent.c).
FLUSH_LIMIT_S = 10.0
# A stop with the brokers down used to wait for librdkafka's
# message.timeout.ms (300 s); anything well below that proves the limit.
STOP_TIMEOUT_S = FLUSH_LIMIT_S + 30.0

def audit_verify(audit_dir):
    r = subprocess.run([str(HERALD_BIN), "audit", "verify", "--dir", str(audit_dir)],
                       capture_output=True, text=True, env=clean_env(), timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr


class LoadClient(threading.Thread):
    """POSTs tasks one after another until stopped; keeps every outcome:
    acked (201, task id), refused (other status) and failed (no answer)."""

    def __init__(self, api):
        super().__init__(daemon=True)
        self.api = api
        self.stopping = threading.Event()
        self.acked, self.refused, self.failed = [], [], []

    def run(self):
        i = 0
        while not self.stopping.is_set():
            i += 1
            try:
                r = self.api.request("POST", "/tasks",
                                     json_body={"title": f"load {i}", "owner_id": "u"})
            except OSError as e:
                self.failed.append(repr(e))
                continue
            if r.status == 201:
                self.acked.append(r.json["id"])
            else:
                self.refused.append(r)

    def stop(self):
        self.stopping.set()
        self.join(CMD_TIMEOUT)
        assert not self.is_alive()


# ---- producing while the brokers are down ----------------------------------


def test_brokers_down_during_write_load_then_up_every_acked_task_audited_once(
        procs, data_dir, tmp_path):
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    api = start_api(procs, data_dir, env=kafka_env(mock))
    audit_dir = tmp_path / "audit"
    agent = start_audit(procs, mock, tmp_path / "agent-data", audit_dir)
    load = LoadClient(api)
    load.start()
    try:
        wait_for("tasks audited before the fault", lambda: len(audit_task_ids(audit_dir)) >= 20)
        assert mock.command("down -1") == "ok down -1"
        acked_at_down = len(load.acked)
        # the API keeps answering 201; the outbox holds what Kafka cannot take
        wait_for("201s with the brokers down", lambda: len(load.acked) >= acked_at_down + 100)
        wait_for("the outbox to grow", lambda: outbox_depth(data_dir) >= 50)
        wait_for("the producer to see the brokers down",
                 lambda: any("Connection refused" in line for line in list(api.proc.err_lines)))
        time.sleep(2.0)  # keep them down for a while (not an assertion)
        depth_down = outbox_depth(data_dir)
        assert mock.command("up -1") == "ok up -1"
        acked_at_up = len(load.acked)
        wait_for("201s after the brokers came back", lambda: len(load.acked) >= acked_at_up + 50)
    finally:
        load.stop()
    assert load.failed == [] and load.refused == []
    acked = load.acked
    assert len(set(acked)) == len(acked)
    # the relay catches up, the audit agent logs every acknowledged task once
    wait_for("the outbox to empty", lambda: outbox_depth(data_dir) == 0)
    wait_for("every acknowledged task in the audit log",
             lambda: set(audit_task_ids(audit_dir)) >= set(acked), timeout=2 * CMD_TIMEOUT)
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    events = audit_events(audit_dir)
    assert Counter(e["event_id"] for e in events).most_common(1)[0][1] == 1
    assert all(e["event_type"] == "task.created" for e in events)
    assert sorted(e["data"]["task_id"] for e in events) == sorted(acked)
    audit_verify(audit_dir)
    print(f"acked {len(acked)}, outbox at most {depth_down} while down")


def test_kill_9_of_the_api_with_brokers_down_loses_no_acknowledged_event(
        procs, data_dir, tmp_path):
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    env = kafka_env(mock)
    api = start_api(procs, data_dir, env=env)
    acked = [api.create(title=f"before {i}").json["id"] for i in range(5)]
    wait_for("the first events published", lambda: outbox_depth(data_dir) == 0)
    assert mock.command("down -1") == "ok down -1"
    acked += [api.create(title=f"down {i}").json["id"] for i in range(50)]
    wait_for("the outbox to hold them", lambda: outbox_depth(data_dir) >= 49)
    api.proc.kill9()
    # a restart while Kafka is still away: the API answers, the outbox grows;
    # with a short message.timeout.ms the relay's records fail, and it keeps
    # them and tries again
    api = start_api(procs, data_dir,
                    env={**env, "HERALD_KAFKA_MESSAGE_TIMEOUT_MS": "1000"})
    acked += [api.create(title=f"restarted {i}").json["id"] for i in range(20)]
    assert outbox_depth(data_dir) >= 69
    wait_for("the relay to fail and keep the records",
             lambda: any("outbox relay: cannot publish" in line
                         for line in list(api.proc.err_lines)))
    assert mock.command("up -1") == "ok up -1"
    wait_for("the outbox to empty", lambda: outbox_depth(data_dir) == 0)
    # a record of the batch in flight at the kill may be in Kafka twice ...
    keys = kcat_keys(mock, "task-events", len(acked))
    assert set(keys) == set(acked)
    # ... the audit agent logs every event once
    audit_dir = tmp_path / "audit"
    agent = start_audit(procs, mock, tmp_path / "agent-data", audit_dir)
    wait_for("every acknowledged task in the audit log",
             lambda: len(audit_task_ids(audit_dir)) >= len(acked))
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    assert sorted(audit_task_ids(audit_dir)) == sorted(acked)
    audit_verify(audit_dir)
    print(f"{len(keys)} records for {len(acked)} tasks")


def test_processes_sharing_a_data_directory_relay_its_outbox_once(procs, data_dir):
    """Two `herald api` on one data directory share its outbox: only one
    relays it (an flock), so every record goes out once; when that one is
    killed, the other takes over and publishes what both accept."""
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    env = kafka_env(mock)
    apis = [start_api(procs, data_dir, env=env), start_api(procs, data_dir, env=env)]

    def waiting(api):
        return any("another herald process on this data directory relays the outbox" in line
                   for line in list(api.proc.err_lines))
    wait_for("one relay to wait for the other", lambda: any(waiting(a) for a in apis))
    second, first = sorted(apis, key=lambda a: not waiting(a))  # first holds the lock
    assert not waiting(first)
    acked = []
    for i in range(20):
        acked.append((first if i % 2 else second).create(title=f"shared {i}").json["id"])
    wait_for("the outbox to empty", lambda: outbox_depth(data_dir) == 0)
    first.proc.kill9()
    wait_for("the second to take over", lambda: any(
        "this process relays the outbox now" in line for line in list(second.proc.err_lines)))
    acked += [second.create(title=f"after {i}").json["id"] for i in range(10)]
    wait_for("the outbox to empty again", lambda: outbox_depth(data_dir) == 0)
    keys = kcat_keys(mock, "task-events", len(acked))
    assert sorted(keys) == sorted(acked)  # each once


def test_sigterm_with_brokers_down_stops_within_the_flush_limit_and_reports_what_is_left(
        procs, data_dir, tmp_path):
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    env = kafka_env(mock)
    api = start_api(procs, data_dir, env=env)
    acked = [api.create(title=f"before {i}").json["id"] for i in range(3)]
    wait_for("the first events published", lambda: outbox_depth(data_dir) == 0)
    assert mock.command("down -1") == "ok down -1"
    acked += [api.create(title=f"down {i}").json["id"] for i in range(20)]
    wait_for("the outbox to hold them", lambda: outbox_depth(data_dir) == 20)
    api.proc.signal(signal.SIGTERM)
    # the relay gives up after the flush limit (it used to wait for
    # librdkafka's message.timeout.ms, 300 s, with a record in flight)
    assert api.proc.wait(timeout=STOP_TIMEOUT_S) == 0
    assert any("stopped with 20 records not yet published" in line
               for line in api.proc.err_lines), api.proc.err_lines[-20:]
    assert outbox_depth(data_dir) == 20
    assert mock.command("up -1") == "ok up -1"
    start_api(procs, data_dir, env=env)
    wait_for("the outbox to empty after the restart", lambda: outbox_depth(data_dir) == 0)
    keys = kcat_keys(mock, "task-events", len(acked))
    assert set(keys) == set(acked)


def test_a_full_producer_queue_is_back_pressure(procs, data_dir):
    """queue.buffering.max.messages=2: the relay hands 200 records to
    librdkafka two at a time, waiting for room; none fails or is lost."""
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    env = kafka_env(mock, {"HERALD_KAFKA_QUEUE_BUFFERING_MAX_MESSAGES": "2"})
    api = start_api(procs, data_dir, env=env)
    # with the brokers down, the outbox collects one batch for the relay
    assert mock.command("down -1") == "ok down -1"
    acked = [api.create(title=f"t{i}").json["id"] for i in range(200)]
    assert mock.command("up -1") == "ok up -1"

    def relay_complaints():
        return [line for line in list(api.proc.err_lines) if "outbox relay" in line]

    wait_for("the outbox to empty", lambda: outbox_depth(data_dir) == 0 or relay_complaints())
    assert relay_complaints() == []
    keys = kcat_keys(mock, "task-events", len(acked))
    assert sorted(keys) == sorted(acked)  # each once: the producer is idempotent


# ---- the consumer group under failures -------------------------------------


def envelope(task_id):
    return {"event_id": str(uuid.uuid4()), "event_type": "task.created",
            "occurred_at": "2025-01-15T14:30:22.456Z",
            "data": {"task_id": task_id, "title": "from kcat", "owner_id": "u"},
            "metadata": {"correlation_id": f"req-{task_id}", "causation_id": "c",
                         "source": "kcat"}}


def kcat_produce(mock, topic, envs):
    """Produce the envelopes with kcat (key = task_id), one batch."""
    data = "".join(f"{e['data']['task_id']}\t{json.dumps(e)}\n" for e in envs)
    r = subprocess.run(["kcat", "-P", "-b", mock.bootstrap, "-t", topic, "-K", "\t"],
                       input=data, capture_output=True, text=True, timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stderr


def kcat_positions(mock, topic, expect):
    """{event_id: (partition, offset)} of the topic, read with kcat until at
    least `expect` records arrived."""
    deadline = time.monotonic() + CMD_TIMEOUT
    while True:
        r = subprocess.run(["kcat", "-C", "-b", mock.bootstrap, "-t", topic, "-o", "beginning",
                            "-e", "-q", "-f", "%p\t%o\t%s\n", *KCAT_FAST],
                           capture_output=True, text=True, timeout=CMD_TIMEOUT)
        pos = {}
        for line in r.stdout.splitlines():
            p, o, value = line.split("\t", 2)
            pos[json.loads(value)["event_id"]] = (int(p), int(o))
        if len(pos) >= expect or time.monotonic() > deadline:
            return pos
        time.sleep(0.2)


class KcatLoad(threading.Thread):
    """Produces envelopes with kcat in chunks, one chunk after the other,
    so the consumers always have work, until release() was called and
    `after` more chunks went out."""

    def __init__(self, mock, topic, chunk=100):
        super().__init__(daemon=True)
        self.mock, self.topic, self.chunk = mock, topic, chunk
        self.released = threading.Event()
        self.after = 0
        self.sent = []
        self.error = None

    def run(self):
        try:
            left = None
            while left is None or left > 0:
                n = len(self.sent)
                envs = [envelope(f"t-{n + i}") for i in range(self.chunk)]
                kcat_produce(self.mock, self.topic, envs)
                self.sent += [e["event_id"] for e in envs]
                if left is not None:
                    left -= 1
                elif self.released.is_set():
                    left = self.after
        except BaseException as e:  # reported by finish()
            self.error = e

    def release(self, after):
        """Produce `after` more chunks, then end."""
        self.after = after
        self.released.set()

    def finish(self):
        self.join(2 * CMD_TIMEOUT)
        assert not self.is_alive() and self.error is None, self.error
        return self.sent


PARTITIONS = 6
GROUP_TOPICS = [("task-events", PARTITIONS)]
# A dead member's partitions move once its session times out; members learn
# of a rebalance at their next heartbeat. Shorter than the defaults so the
# tests take seconds, not tens of seconds.
GROUP_ENV = {"HERALD_KAFKA_SESSION_TIMEOUT_MS": "3000",
             "HERALD_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}


def two_members(procs, mock, tmp_path):
    """Two audit agents of group audit-log, each with its own data
    directory and audit directory, as on two machines. Returns them once
    both hold partitions.

    Why not one shared DATA_DIR: the members would share the group's
    de-duplication table (agent_handled) and, with one HERALD_AUDIT_DIR, one
    hash chain, so a record handled twice would be dropped silently and the
    test could not tell "handled once" from "delivered twice"; they would
    also both relay the same outbox. Separately, the union of the two logs is
    what the group handled, and a record handled by both members shows up in
    both logs."""
    a = start_audit(procs, mock, tmp_path / "a-data", tmp_path / "a-audit", GROUP_ENV)
    wait_for("member a's assignment", lambda: assignments(a))
    b = start_audit(procs, mock, tmp_path / "b-data", tmp_path / "b-audit", GROUP_ENV)
    wait_for("both members' assignments",
             lambda: assignments(b) and assignments(b)[-1] > 0 and assignments(a)[-1] > 0
             and assignments(a)[-1] + assignments(b)[-1] == PARTITIONS)
    return a, b


def test_member_killed_while_working_the_group_rebalances_and_nothing_is_lost(procs, tmp_path):
    """kill -9 of one member while events stream in (at any point of its
    batch: polled, logged, committed or not). The survivor takes its
    partitions once its session times out and handles everything; the only
    records both handle are the dead member's last, uncommitted ones."""
    mock = KafkaMock(topics=GROUP_TOPICS)
    procs.adopt(mock.popen)
    a, b = two_members(procs, mock, tmp_path)
    load = KcatLoad(mock, "task-events")
    load.start()
    wait_for("member a at work", lambda: len(audit_events(tmp_path / "a-audit")) >= 300)
    a.kill9()
    load.release(after=10)
    sent = load.finish()
    # the survivor gets every partition once the dead member's session ends
    wait_for("b to take every partition", lambda: assignments(b)[-1] == PARTITIONS)
    a_log = audit_events(tmp_path / "a-audit")
    wait_for("every event in a log",
             lambda: set(sent) <= {e["event_id"] for e in a_log}
             | {e["event_id"] for e in audit_events(tmp_path / "b-audit")})
    b.signal(signal.SIGTERM)
    assert b.wait() == 0
    b_log = audit_events(tmp_path / "b-audit")
    a_ids = [e["event_id"] for e in a_log]
    b_ids = [e["event_id"] for e in b_log]
    assert len(set(a_ids)) == len(a_ids) and len(set(b_ids)) == len(b_ids)
    assert set(a_ids) | set(b_ids) == set(sent)
    # At-least-once: what a logged but had not committed when it died is
    # handled again by b. Per partition, that is a tail of what a logged
    # there: from a's last committed offset on.
    pos = kcat_positions(mock, "task-events", len(sent))
    dups = set(a_ids) & set(b_ids)
    a_by_part, dup_by_part = defaultdict(list), defaultdict(list)
    for eid in a_ids:
        a_by_part[pos[eid][0]].append(pos[eid][1])
    for eid in dups:
        dup_by_part[pos[eid][0]].append(pos[eid][1])
    for part, offsets in dup_by_part.items():
        first = min(offsets)
        assert sorted(offsets) == sorted(o for o in a_by_part[part] if o >= first), part
    audit_verify(tmp_path / "a-audit")
    audit_verify(tmp_path / "b-audit")
    print(f"a logged {len(a_ids)}, b {len(b_ids)}, handled twice {len(dups)}")


def test_member_leaving_gracefully_commits_and_nothing_is_handled_twice(procs, tmp_path):
    """SIGTERM of one member while events stream in: it finishes its batch
    and commits before it leaves the group, so the survivor, which takes its
    partitions at once, handles none of its records again.

    (The mock refuses every offset commit while the group rebalances, unlike
    Kafka, which accepts commits of the current generation until the new one
    is formed: so the SURVIVOR's commits around the leave fail and it reads
    its own last batches again; its de-duplication table drops them.)"""
    mock = KafkaMock(topics=GROUP_TOPICS)
    procs.adopt(mock.popen)
    a, b = two_members(procs, mock, tmp_path)
    load = KcatLoad(mock, "task-events")
    load.start()
    wait_for("member a at work", lambda: len(audit_events(tmp_path / "a-audit")) >= 300)
    a.signal(signal.SIGTERM)
    assert a.wait() == 0
    load.release(after=10)
    sent = load.finish()
    wait_for("b to take every partition", lambda: assignments(b)[-1] == PARTITIONS)
    wait_for("every event in a log",
             lambda: set(sent) <= {e["event_id"] for e in audit_events(tmp_path / "a-audit")}
             | {e["event_id"] for e in audit_events(tmp_path / "b-audit")})
    b.signal(signal.SIGTERM)
    assert b.wait() == 0
    a_ids = [e["event_id"] for e in audit_events(tmp_path / "a-audit")]
    b_ids = [e["event_id"] for e in audit_events(tmp_path / "b-audit")]
    assert len(set(a_ids)) == len(a_ids) and len(set(b_ids)) == len(b_ids)
    assert set(a_ids) | set(b_ids) == set(sent)
    assert set(a_ids) & set(b_ids) == set()
    audit_verify(tmp_path / "a-audit")
    audit_verify(tmp_path / "b-audit")
