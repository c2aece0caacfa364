"""Fatal and transient Kafka errors, injected with the mock cluster's
`error APIKEY ERRCODE [COUNT]` command (tests/tools/kafka_mock.c).

A fatal librdkafka error is one the client never recovers from. herald
stops the process cleanly on one: one ERROR line naming the client and the
error, the API stops accepting, the agents stop without committing more,
the outbox keeps what was not published, the clients are closed, and the
exit status is 1 so that a supervisor restarts it. Nothing is lost: the
next start publishes the outbox, and the group reads again what was not
committed. Transient errors are logged and survived.

What librdkafka 2.0.2 treats as fatal, and what the tests inject:
- idempotent producer: InitProducerId (API key 22) answered with
  CLUSTER_AUTHORIZATION_FAILED (31) (rdkafka_idempotence.c);
- consumer: FENCED_INSTANCE_ID (82) answering a static group member's
  (group.instance.id) Heartbeat (API key 12) or OffsetCommit (API key 8)
  (rdkafka_cgrp.c).

Mock quirks (shared/KAFKA-MOCK.md): every client uses fetch.wait.max.ms=5
and a 6 s session timeout; group joins take seconds, so the tests wait for
conditions and never assert on speed."""

import signal
from collections import Counter

import pytest

from api_helpers import start_api
from helpers import CMD_TIMEOUT, wait_for
from kafka_helpers import (HERALD_TOPICS, KafkaMock, assignments, audit_task_ids,
                           kafka_env, kcat_keys, outbox_depth, start_audit)

TOPICS = HERALD_TOPICS

# Kafka protocol API keys and error codes (the mock's `error` command)
INIT_PRODUCER_ID, HEARTBEAT, OFFSET_COMMIT, PRODUCE = 22, 12, 8, 0
CLUSTER_AUTHORIZATION_FAILED, FENCED_INSTANCE_ID = 31, 82
REQUEST_TIMED_OUT, NOT_COORDINATOR, REBALANCE_IN_PROGRESS = 7, 16, 27
TRANSPORT = -195  # librdkafka's __TRANSPORT: the mock broker drops the connection

def error_lines(proc):
    return [line for line in list(proc.err_lines) if " ERROR " in line]


def no_sanitizer_report(proc):
    return not any("Sanitizer" in line or "runtime error:" in line for line in proc.err_lines)


def inject(mock, api_key, code, count=1):
    answer = mock.command(f"error {api_key} {code} {count}")
    assert answer.startswith(f"ok error {api_key} {code} {count} "), answer


# ---- the producer: the outbox relay ---------------------------------------


def test_fatal_producer_error_stops_the_api_with_status_1_and_keeps_the_outbox(
        procs, data_dir):
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    env = kafka_env(mock)
    # The brokers are down while the API starts and takes writes: its
    # idempotent producer has no producer id yet, the outbox holds the events.
    assert mock.command("down -1") == "ok down -1"
    api = start_api(procs, data_dir, env=env)
    acked = []
    for i in range(10):
        r = api.create(title=f"task {i}")
        assert r.status == 201, r.body
        acked.append(r.json["id"])
    assert outbox_depth(data_dir) == 10
    # The producer id request will be refused: librdkafka's idempotent
    # producer raises a fatal error, which no retry can clear.
    inject(mock, INIT_PRODUCER_ID, CLUSTER_AUTHORIZATION_FAILED)
    assert mock.command("up -1") == "ok up -1"
    assert api.proc.wait(timeout=CMD_TIMEOUT) == 1
    errors = [line for line in error_lines(api.proc) if "outbox relay:" in line]
    assert len(errors) == 1, api.proc.err_lines[-20:]
    assert "Kafka producer task-api#producer-" in errors[0]
    assert "CLUSTER_AUTHORIZATION_FAILED" in errors[0]
    assert "10 records stay in the outbox" in errors[0]
    assert any("stopped after a fatal Kafka error, exit status 1" in line
               for line in api.proc.err_lines), api.proc.err_lines[-20:]
    assert no_sanitizer_report(api.proc)
    # nothing was published, nothing is lost
    assert outbox_depth(data_dir) == 10
    # the restart (without the injected error) publishes every event once
    api = start_api(procs, data_dir, env=env)
    wait_for("the outbox to empty after the restart", lambda: outbox_depth(data_dir) == 0)
    keys = kcat_keys(mock, "task-events", len(acked))
    assert Counter(keys) == Counter(acked)
    api.proc.signal(signal.SIGTERM)
    assert api.proc.wait() == 0
    assert error_lines(api.proc) == []


# ---- a consumer: a static group member fenced -----------------------------

# A static member (group.instance.id), with quick heartbeats so that a
# fence injected on the Heartbeat API comes soon, and a short session: a
# static member does not leave the group when it closes, so its successor
# joins once the session ended.
STATIC = {"HERALD_KAFKA_GROUP_INSTANCE_ID": "audit-1", "HERALD_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
          "HERALD_KAFKA_SESSION_TIMEOUT_MS": "3000"}


@pytest.mark.parametrize("api_key", [HEARTBEAT, OFFSET_COMMIT], ids=["heartbeat", "commit"])
def test_fenced_static_member_stops_the_agent_with_status_1_and_loses_nothing(
        procs, data_dir, tmp_path, api_key):
    """The coordinator fences the member (another one with its
    group.instance.id took over) on a heartbeat, or on the offset commit of
    a batch it has just handled: librdkafka raises a fatal consumer error.
    In the second case the batch is handled (audited) but not committed:
    the restarted agent reads it again and drops it as a duplicate."""
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    api = start_api(procs, data_dir, env=kafka_env(mock))
    acked = [api.create(title=f"before {i}").json["id"] for i in range(5)]
    agent_dir, audit_dir = tmp_path / "agent-data", tmp_path / "audit"
    agent = start_audit(procs, mock, agent_dir, audit_dir, STATIC)
    wait_for("the first tasks audited", lambda: len(audit_task_ids(audit_dir)) >= 5)
    inject(mock, api_key, FENCED_INSTANCE_ID)
    acked += [api.create(title=f"during {i}").json["id"] for i in range(5)]
    assert agent.wait(timeout=CMD_TIMEOUT) == 1
    errors = [line for line in error_lines(agent) if "audit:" in line]
    assert len(errors) == 1, agent.err_lines[-20:]
    assert "Kafka consumer audit#consumer-" in errors[0]
    assert "FENCED_INSTANCE_ID" in errors[0]
    assert any("stopped after a fatal Kafka error, exit status 1" in line
               for line in agent.err_lines), agent.err_lines[-20:]
    assert no_sanitizer_report(agent)
    # events published while it is gone are handled after the restart, and
    # none twice (what it had not committed is read again and de-duplicated)
    acked += [api.create(title=f"after {i}").json["id"] for i in range(5)]
    agent = start_audit(procs, mock, agent_dir, audit_dir, STATIC)
    wait_for("every task audited after the restart",
             lambda: len(audit_task_ids(audit_dir)) >= len(acked))
    if api_key == OFFSET_COMMIT:
        wait_for("the uncommitted batch read again and dropped",
                 lambda: any("already handled by group audit-log" in line
                             for line in list(agent.err_lines)))
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    assert sorted(audit_task_ids(audit_dir)) == sorted(acked)
    assert error_lines(agent) == []


# ---- transient errors are survived -----------------------------------------


def test_transient_errors_are_logged_and_survived(procs, data_dir, tmp_path):
    """A dropped connection and timeouts of produce requests (the idempotent
    producer retries), offset commits refused during a rebalance (the batch
    is recorded; the next commit covers it), heartbeats sent to a broker
    that is no longer the coordinator, and a rebalance forced on the member
    (it rejoins): each logged where herald sees it, none stops anything."""
    mock = KafkaMock(topics=TOPICS)
    procs.adopt(mock.popen)
    api = start_api(procs, data_dir, env=kafka_env(mock))
    audit_dir = tmp_path / "audit"
    agent = start_audit(procs, mock, tmp_path / "agent-data", audit_dir, STATIC)
    acked = [api.create(title=f"before {i}").json["id"] for i in range(3)]
    wait_for("the first tasks audited", lambda: len(audit_task_ids(audit_dir)) >= 3)
    inject(mock, PRODUCE, TRANSPORT)
    inject(mock, PRODUCE, REQUEST_TIMED_OUT, 2)
    inject(mock, OFFSET_COMMIT, REBALANCE_IN_PROGRESS, 2)
    inject(mock, HEARTBEAT, NOT_COORDINATOR, 2)
    inject(mock, HEARTBEAT, REBALANCE_IN_PROGRESS)
    for i in range(20):
        r = api.create(title=f"during {i}")
        assert r.status == 201, r.body
        acked.append(r.json["id"])
    wait_for("the dropped connection logged",
             lambda: any("_TRANSPORT" in line for line in list(api.proc.err_lines)))
    wait_for("the refused commits logged",
             lambda: any("offset commit failed" in line for line in list(agent.err_lines)))
    wait_for("the member to rejoin after the forced rebalance",
             lambda: len(assignments(agent)) >= 2 and assignments(agent)[-1] > 0)
    acked += [api.create(title=f"after {i}").json["id"] for i in range(5)]
    wait_for("every task audited", lambda: len(audit_task_ids(audit_dir)) >= len(acked))
    wait_for("the outbox to empty", lambda: outbox_depth(data_dir) == 0)
    assert api.proc.poll() is None and agent.poll() is None
    keys = kcat_keys(mock, "task-events", len(acked))
    assert set(keys) == set(acked)
    api.proc.signal(signal.SIGTERM)
    agent.signal(signal.SIGTERM)
    assert api.proc.wait() == 0
    assert agent.wait() == 0
    assert sorted(audit_task_ids(audit_dir)) == sorted(acked)
    lines = api.proc.err_lines + agent.err_lines
    assert not any("fatal" in line.lower() for line in lines)
    assert no_sanitizer_report(api.proc) and no_sanitizer_report(agent)
