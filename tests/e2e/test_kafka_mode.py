"""herald on Kafka (HERALD_BUS=kafka:...) against the librdkafka mock
cluster (tests/tools/kafka_mock, 3 brokers, real Kafka protocol on
loopback): the Task API's events leave through the outbox and its relay and
are read by kcat, an independent client, with the envelope as the value and
the CloudEvents headers; the audit agent consumes them (and records kcat
produced) from Kafka.

Mock quirks (shared/KAFKA-MOCK.md): consumers use fetch.wait.max.ms=5 and a
short session timeout; group joins take seconds, so tests wait for results,
never for a guessed time."""

import json
import subprocess
import time

from api_helpers import start_api
from helpers import CMD_TIMEOUT, HERALD_BIN, Proc, clean_env
from kafka_helpers import HERALD_TOPICS, KCAT_FAST, KafkaMock, audit_events, kafka_env

TOPICS = HERALD_TOPICS


def kcat_read(mock, topic, expect, timeout=CMD_TIMEOUT):
    """Records of topic as (key, {header: value}, value text), read with kcat
    until at least `expect` arrived."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["kcat", "-C", "-b", mock.bootstrap, "-t", topic, "-o", "beginning",
                            "-e", "-q", "-f", "%k\t%h\t%s\n", *KCAT_FAST],
                           capture_output=True, text=True, timeout=timeout)
        records = []
        for line in r.stdout.splitlines():
            key, headers, value = line.split("\t", 2)
            hs = dict(h.split("=", 1) for h in headers.split(",") if "=" in h)
            records.append((key, hs, value))
        if len(records) >= expect or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_api_events_reach_kafka_with_envelope_and_cloudevents_headers(procs, data_dir):
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    api = start_api(procs, data_dir, env=kafka_env(mock))
    ids = []
    for i in range(5):
        r = api.create(title=f"task {i}", owner_id="user-456",
                       headers={"X-Correlation-ID": f"req-{i}"})
        assert r.status == 201, r.body
        ids.append(r.json["id"])
    records = kcat_read(mock, "task-events", 5)
    assert len(records) == 5
    by_key = {k: (h, json.loads(v)) for k, h, v in records}
    assert set(by_key) == set(ids)  # key = task_id
    for i, task_id in enumerate(ids):
        headers, env = by_key[task_id]
        assert list(env) == ["event_id", "event_type", "occurred_at", "data", "metadata"]
        assert env["event_type"] == "task.created"
        assert env["data"]["task_id"] == task_id
        tp = env["metadata"]["traceparent"]  # W3C trace context, after the original keys
        assert env["metadata"] == {"correlation_id": f"req-{i}",
                                   "causation_id": f"api-create-{task_id}",
                                   "source": "task-api", "traceparent": tp}
        assert headers["traceparent"] == tp
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_id"] == env["event_id"]
        assert headers["ce_type"] == "task.created"
        assert headers["ce_source"] == "task-api"
        assert headers["ce_correlationid"] == f"req-{i}"
        assert headers["ce_causationid"] == f"api-create-{task_id}"
        assert headers["content-type"] == "application/json"
    # everything was relayed: the outbox is empty after a clean stop
    api.proc.signal(15)
    assert api.proc.wait() == 0
    import sqlite3
    db = sqlite3.connect(str(data_dir / "bus.db"))
    assert db.execute("SELECT count(*) FROM bus_outbox").fetchone()[0] == 0
    db.close()


def test_audit_agent_consumes_from_kafka_including_kcat_records(procs, data_dir, tmp_path):
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    api = start_api(procs, data_dir, env=kafka_env(mock))
    ids = [api.create(title=f"t{i}").json["id"] for i in range(3)]
    # an envelope produced by another client (kcat), as the original design would
    foreign = {"event_id": "01936f0e-6a3c-7c41-9d2e-5b8f0c1a2b3c", "event_type": "task.created",
               "occurred_at": "2025-01-15T14:30:22.456Z",
               "data": {"task_id": "t-kcat", "title": "from kcat", "owner_id": "u"},
               "metadata": {"correlation_id": "req-kcat", "causation_id": "c",
                            "source": "python"}}
    r = subprocess.run(["kcat", "-P", "-b", mock.bootstrap, "-t", "task-events", "-k", "t-kcat"],
                       input=json.dumps(foreign) + "\n", capture_output=True, text=True,
                       timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    audit_dir = tmp_path / "audit"
    agent = Proc([str(HERALD_BIN), "agent", "audit"],
                 clean_env(data_dir, kafka_env(mock, {"HERALD_AUDIT_DIR": str(audit_dir)})))
    procs.adopt(agent.popen)
    deadline = time.monotonic() + CMD_TIMEOUT
    logged = []
    while time.monotonic() < deadline:
        logged = audit_events(audit_dir)
        if len(logged) >= 4:
            break
        time.sleep(0.2)
    assert sorted(e["data"]["task_id"] for e in logged) == sorted(ids + ["t-kcat"])
    assert [e for e in logged if e["data"]["task_id"] == "t-kcat"] == [foreign]
    agent.signal(15)
    assert agent.wait() == 0
    r = subprocess.run([str(HERALD_BIN), "audit", "verify", "--dir", str(audit_dir)],
                       capture_output=True, text=True, env=clean_env(data_dir),
                       timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    # the group committed on Kafka: a restart logs nothing twice
    agent = Proc([str(HERALD_BIN), "agent", "audit"],
                 clean_env(data_dir, kafka_env(mock, {"HERALD_AUDIT_DIR": str(audit_dir)})))
    procs.adopt(agent.popen)
    api.create(title="after restart")
    deadline = time.monotonic() + CMD_TIMEOUT
    while time.monotonic() < deadline:
        if len(audit_events(audit_dir)) >= 5:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    ids = [e["event_id"] for e in audit_events(audit_dir)]
    assert len(ids) == 5 and len(set(ids)) == 5


def test_bad_kafka_settings_are_usage_errors(herald):
    r = herald("api", "--kafka", "not-a-property")
    assert r.returncode == 2 and "--kafka" in r.stderr
    r = herald("api", env={"HERALD_KAFKA_": "x"})
    assert r.returncode == 2 and "HERALD_KAFKA_" in r.stderr


def test_each_component_names_its_kafka_client(procs, data_dir, tmp_path):
    """client.id is the component's name: `herald up`'s relay producer is
    herald-up, each agent's consumer its agent's name. librdkafka names its
    handles CLIENT_ID#producer-N / #consumer-N, and herald's log lines about
    a client carry that name: with every broker down, each client reports
    it in its own name."""
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    env = kafka_env(mock, {"HERALD_AUDIT_DIR": str(tmp_path / "audit")})
    api = start_api(procs, data_dir, cmd="up", env=env)
    assert api.create(title="before the outage").status == 201
    for broker in (1, 2, 3):
        assert mock.command(f"down {broker}").startswith("ok")
    wanted = {"herald-up#producer", "email#consumer", "slack#consumer", "audit#consumer",
              "scheduler#consumer"}
    deadline = time.monotonic() + CMD_TIMEOUT
    seen = set()
    while time.monotonic() < deadline and seen != wanted:
        for line in list(api.proc.err_lines):
            for name in wanted:
                if f"kafka {name}-" in line:
                    seen.add(name)
        time.sleep(0.2)
    assert seen == wanted, (seen, list(api.proc.err_lines)[-30:])
    for broker in (1, 2, 3):
        assert mock.command(f"up {broker}").startswith("ok")
