"""A Kafka cluster for the end-to-end tests: the kafka_mock tool
(tests/tools/kafka_mock.c, librdkafka's mock cluster in its own process).

    from kafka_helpers import kafka_mock   # the fixture

    def test_x(kafka_mock):
        kafka_mock.bootstrap                # "127.0.0.1:PORT,..."
        kafka_mock.command("down 2")        # -> "ok down 2"

KafkaMock(...) starts one by hand (brokers, topics); the fixture starts a
3-broker cluster and stops it at teardown, pass or fail, by its Popen object.
Quirks of the mock (see KAFKA-MOCK.md): give clients a low
fetch.wait.max.ms (KCAT_FAST has it for kcat), and wait for group
assignments instead of sleeping.
"""

import json
import os
import re
import sqlite3
import subprocess
import time

import pytest

from helpers import CMD_TIMEOUT, HERALD_BIN, HERALD_TOOLS, Proc, clean_env

KAFKA_MOCK = HERALD_TOOLS / "kafka_mock"

# kcat options that make it usable against the mock: an empty Fetch there
# is answered only after the whole fetch.wait.max.ms (default 500 ms).
KCAT_FAST = ["-X", "fetch.wait.max.ms=5"]

# herald's topics, created up front (the mock cannot create topics through the
# admin API; see test_kafka_topics.py)
HERALD_TOPICS = [("task-events", 3), ("notification-events", 3), ("email-events", 3),
                 ("reminder-events", 3), ("task-events.dlq", 1)]

# the consumer's log line for each assignment
ASSIGNED = re.compile(r"kafka: (\d+) partition\(s\) assigned")


def kafka_env(mock, extra=None):
    """The environment that runs herald on mock: HERALD_BUS and the client
    settings the mock needs (a short fetch wait and session timeout), plus
    extra."""
    env = {"HERALD_BUS": f"kafka:{mock.bootstrap}",
           "HERALD_KAFKA_FETCH_WAIT_MAX_MS": "5",
           "HERALD_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "HERALD_LOG_LEVEL": "info"}
    env.update(extra or {})
    return env


class KafkaMock:
    """A running kafka_mock. Raises AssertionError if it does not print its
    bootstrap line within `timeout` seconds."""

    def __init__(self, brokers=3, topics=(), timeout=CMD_TIMEOUT):
        if not os.access(KAFKA_MOCK, os.X_OK):
            pytest.fail(f"missing {KAFKA_MOCK} (build it: make {KAFKA_MOCK.parent.name}"
                        f"/tools/kafka_mock or make e2e)")
        argv = [str(KAFKA_MOCK), "--brokers", str(brokers)]
        for name, partitions in topics:
            argv += ["--topic", f"{name}:{partitions}"]
        self.brokers = brokers
        self.proc = Proc(argv, clean_env(), stdin=subprocess.PIPE)
        try:
            _, line = self.proc.line(timeout)
            assert line is not None and line.startswith("bootstrap "), (
                f"kafka_mock did not start: {line!r}, stderr: {self.proc.err_lines}")
        except BaseException:
            self.stop()
            raise
        self.bootstrap = line.split(" ", 1)[1]

    @property
    def popen(self):
        return self.proc.popen

    def command(self, text, timeout=CMD_TIMEOUT):
        """Send one control command line; returns the answer line
        ("ok ..." or "error ..."). AssertionError if none comes."""
        assert "\n" not in text, "one command per call"
        self.proc.popen.stdin.write(text + "\n")
        self.proc.popen.stdin.flush()
        _, line = self.proc.line(timeout)
        assert line is not None, (
            f"kafka_mock ended without answering {text!r}: {self.proc.err_lines}")
        return line

    def close_stdin(self):
        """EOF on the control channel: the tool stops and exits 0."""
        if not self.proc.popen.stdin.closed:
            try:
                self.proc.popen.stdin.close()
            except OSError:
                pass  # it is already gone

    def wait(self, timeout=CMD_TIMEOUT):
        """Wait for the exit; returns the status."""
        return self.proc.wait(timeout)

    def stop(self):
        """Stop it (EOF, then SIGTERM, then SIGKILL) and reap it."""
        self.close_stdin()
        try:
            self.proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.proc.stop()


@pytest.fixture
def kafka_mock():
    """A 3-broker mock cluster, stopped when the test ends."""
    mock = KafkaMock()
    try:
        yield mock
    finally:
        mock.stop()


def outbox_depth(data_dir):
    """Rows waiting in the outbox of data_dir's database."""
    db = sqlite3.connect(str(data_dir / "bus.db"), timeout=30)
    try:
        return db.execute("SELECT count(*) FROM bus_outbox").fetchone()[0]
    finally:
        db.close()


def kcat_keys(mock, topic, expect):
    """The keys of the topic's records (task ids), read with kcat until at
    least `expect` arrived (or CMD_TIMEOUT passed)."""
    deadline = time.monotonic() + CMD_TIMEOUT
    while True:
        r = subprocess.run(["kcat", "-C", "-b", mock.bootstrap, "-t", topic, "-o", "beginning",
                            "-e", "-q", "-f", "%k\n", *KCAT_FAST],
                           capture_output=True, text=True, timeout=CMD_TIMEOUT)
        keys = r.stdout.splitlines()
        if len(keys) >= expect or time.monotonic() > deadline:
            return keys
        time.sleep(0.2)


def start_audit(procs, mock, data_dir, audit_dir, extra=None):
    """`herald agent audit` on Kafka with its own data directory (its
    de-duplication table and outbox) writing to audit_dir."""
    env = kafka_env(mock, {"HERALD_AUDIT_DIR": str(audit_dir), **(extra or {})})
    p = Proc([str(HERALD_BIN), "agent", "audit"], clean_env(data_dir, env))
    procs.adopt(p.popen)
    return p


def assignments(proc):
    """The partition counts of the agent's assignments so far, in order."""
    return [int(m.group(1)) for m in map(ASSIGNED.search, list(proc.err_lines)) if m]


def audit_events(audit_dir):
    """The events of the audit log, in order (complete lines only: a line
    the agent is writing right now, or that a killed agent left half
    written, has no newline yet and is skipped)."""
    out = []
    for f in sorted(audit_dir.glob("audit-*.jsonl")):
        for line in f.read_text().split("\n")[:-1]:
            rec = json.loads(line)
            if "event" in rec:
                out.append(rec["event"])
    return out


def audit_task_ids(audit_dir):
    """task_id of every task.created line of the audit log, in order."""
    return [e["data"]["task_id"] for e in audit_events(audit_dir)
            if e["event_type"] == "task.created"]
