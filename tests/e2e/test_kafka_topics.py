"""Kafka topics herald needs are made sure of before use: the producer
before its first record for a topic (task-events from the API, the DLQ and
derived topics from agents, `herald publish`), a consumer with topic names
before it subscribes. Settings: HERALD_TOPIC_PARTITIONS/--topic-partitions,
HERALD_TOPIC_REPLICATION/--topic-replication (auto: min(3, brokers)),
HERALD_TOPIC_CREATE=0/--no-create-topics.

What librdkafka 2.0.2's mock cluster does (measured; shared/KAFKA-MOCK.md):
 - it does NOT implement CreateTopics: librdkafka answers every admin
   CreateTopics locally with _UNSUPPORTED_FEATURE ("Topic Admin API (KIP-4)
   not supported by broker"); herald logs that, with the partitions and
   replication factor it asked for, and leaves the topic to the brokers'
   automatic creation (as with any broker before 0.10.2);
 - it auto-creates any topic named in a Metadata request (4 partitions,
   replication min(3, brokers)), whatever allow.auto.create.topics says;
   a request for all topics creates nothing.
So on the mock these tests prove: herald asks for the topic with the
configured settings before using it, records flow on a cluster that starts
empty, and with creation off a missing topic is an error that says how to
create it and nothing is created. test_create_topics_request_on_the_wire
and its neighbours prove the CreateTopics request itself against
AdminStub below: a minimal Kafka responder of our own (one broker,
ApiVersions v0, Metadata v1, CreateTopics v0, nothing else) that records
what it was asked and answers with the error codes a test gives it.
"""

import json
import socketserver
import struct
import subprocess
import threading
import time

import pytest

from api_helpers import start_api, wait_log
from helpers import CMD_TIMEOUT, HERALD_BIN, Proc, clean_env, wait_for
from kafka_helpers import KCAT_FAST, KafkaMock, kafka_env

UNSUPPORTED = "the cluster does not support it"


def cluster_topics(mock):
    """{topic: partition count} from kcat -L -J (all topics: creates none)."""
    r = subprocess.run(["kcat", "-L", "-J", "-b", mock.bootstrap], capture_output=True,
                       text=True, timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    md = json.loads(r.stdout)
    return {t["topic"]: len(t["partitions"]) for t in md["topics"]}


def kcat_values(mock, topic, expect, timeout=CMD_TIMEOUT):
    """Values of topic read with kcat until at least `expect` arrived."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["kcat", "-C", "-b", mock.bootstrap, "-t", topic, "-o", "beginning",
                            "-e", "-q", "-f", "%s\n", *KCAT_FAST],
                           capture_output=True, text=True, timeout=timeout)
        values = [line for line in r.stdout.splitlines() if line]
        if len(values) >= expect or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


def no_confwarn(lines):
    return [line for line in lines if "CONFWARN" in line] == []


def test_api_on_empty_cluster_asks_for_the_topic_with_its_settings(procs, data_dir):
    mock = KafkaMock(brokers=2, topics=())
    procs.adopt(mock.popen)
    assert cluster_topics(mock) == {}
    # partitions from the environment; replication auto = min(3, 2 brokers)
    api = start_api(procs, data_dir, env=kafka_env(mock, {"HERALD_TOPIC_PARTITIONS": "5"}))
    ids = [api.create(title=f"t{i}", owner_id="user-1").json["id"] for i in range(3)]
    asked = wait_log(api.proc, lambda line: "cannot create topic 'task-events'" in line)
    assert "(5 partitions, replication factor 2)" in asked[0], asked
    assert UNSUPPORTED in asked[0] and "Topic Admin API" in asked[0], asked
    # the topic exists now and holds the three events, none lost
    values = kcat_values(mock, "task-events", 3)
    assert sorted(json.loads(v)["data"]["task_id"] for v in values) == sorted(ids)
    assert "task-events" in cluster_topics(mock)
    # HERALD_KAFKA_FETCH_WAIT_MAX_MS / SESSION_TIMEOUT_MS are consumer
    # properties: the relay's producer no longer gets them
    assert no_confwarn(api.proc.err_lines), api.proc.err_lines
    # asked once per topic: later records go straight through
    api.create(title="t3")
    kcat_values(mock, "task-events", 4)
    api.proc.signal(15)
    assert api.proc.wait() == 0
    assert len([l for l in api.proc.err_lines if "cannot create topic" in l]) == 1


def test_flags_override_and_replication_auto_uses_the_broker_count(procs, data_dir):
    mock = KafkaMock(brokers=3, topics=())
    procs.adopt(mock.popen)
    api = start_api(procs, data_dir, "--topic-partitions", "7", "--topic-replication", "1",
                    env=kafka_env(mock, {"HERALD_TOPIC_PARTITIONS": "5"}))
    api.create(title="x")
    asked = wait_log(api.proc, lambda line: "cannot create topic 'task-events'" in line)
    assert "(7 partitions, replication factor 1)" in asked[0], asked
    kcat_values(mock, "task-events", 1)
    api.proc.signal(15)
    assert api.proc.wait() == 0
    # auto on 3 brokers: 3
    r = subprocess.run([str(HERALD_BIN), "publish", "note.added", "--data", '{"x":1}'],
                       env=clean_env(data_dir, kafka_env(mock)), capture_output=True, text=True,
                       timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "cannot create topic 'note-events' (3 partitions, replication factor 3)" in r.stderr
    assert "note-events" in cluster_topics(mock)


def test_agent_started_first_on_empty_cluster_gets_events_and_its_dlq_topic(procs, data_dir):
    mock = KafkaMock(topics=())
    procs.adopt(mock.popen)
    env = kafka_env(mock, {"HERALD_TOPIC_PARTITIONS": "5", "HERALD_RETRY_BASE": "50ms",
                           "HERALD_RETRY_MAX": "200ms", "HERALD_RETRY_ATTEMPTS": "2",
                           # a producer property: the agent's consumer must not get it
                           "HERALD_KAFKA_LINGER_MS": "2"})
    agent = Proc([str(HERALD_BIN), "agent", "email"], clean_env(data_dir, env))
    procs.adopt(agent.popen)
    # before it subscribes, the agent asks for both of its topics
    asked = wait_log(agent, lambda line: "cannot create topic 'task-events' and others" in line)
    assert "(5 partitions, replication factor 3)" in asked[0], asked
    wait_for("the agent's topics",
             lambda: {"task-events", "reminder-events"} <= set(cluster_topics(mock)))
    api = start_api(procs, data_dir, env=env)
    good = api.create(title="Quarterly report", owner_id="user-456").json["id"]
    mails = wait_for("a mail", lambda: list((data_dir / "mail").rglob("*.eml")))
    assert any(good in m.read_text(errors="replace") for m in mails)
    # an owner that is no mail local part is dead-lettered: the agent's
    # relay asks for task-events.dlq first, then the record is there
    bad = api.create(title="bad", owner_id="not a local part!").json["id"]
    wait_log(agent, lambda line: "cannot create topic 'task-events.dlq'" in line)
    dead = kcat_values(mock, "task-events.dlq", 1)
    assert [json.loads(v)["data"]["task_id"] for v in dead] == [bad]
    assert no_confwarn(agent.err_lines), agent.err_lines
    assert no_confwarn(api.proc.err_lines), api.proc.err_lines
    agent.signal(15)
    assert agent.wait() == 0


def test_no_create_topics_names_the_missing_topic_and_how_to_create_it(procs, herald):
    mock = KafkaMock(topics=())
    procs.adopt(mock.popen)
    data = '{"task_id":"t-1","title":"x"}'
    for how in (["--no-create-topics"], []):
        env = kafka_env(mock, {} if how else {"HERALD_TOPIC_CREATE": "0"})
        r = herald("publish", "task.created", "--data", data, *how, env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Kafka topic 'task-events' does not exist" in r.stderr, r.stderr
        assert (f"kafka-topics.sh --bootstrap-server {mock.bootstrap} --create --topic "
                f"task-events --partitions 3 --replication-factor 3") in r.stderr, r.stderr
    # and nothing was created behind its back
    assert "task-events" not in cluster_topics(mock)
    # once the topic exists, the same command publishes
    assert mock.command("topic task-events 2") == "ok topic task-events 2"
    r = herald("publish", "task.created", "--data", data, "--no-create-topics",
               env=kafka_env(mock))
    assert r.returncode == 0, r.stderr
    assert json.loads(kcat_values(mock, "task-events", 1)[0])["data"]["task_id"] == "t-1"


@pytest.mark.parametrize("flag,env,value", [
    ("--topic-partitions", "HERALD_TOPIC_PARTITIONS", "0"),
    ("--topic-partitions", "HERALD_TOPIC_PARTITIONS", "-3"),
    ("--topic-partitions", "HERALD_TOPIC_PARTITIONS", "abc"),
    ("--topic-partitions", "HERALD_TOPIC_PARTITIONS", "100000"),
    ("--topic-partitions", "HERALD_TOPIC_PARTITIONS", ""),
    ("--topic-replication", "HERALD_TOPIC_REPLICATION", "0"),
    ("--topic-replication", "HERALD_TOPIC_REPLICATION", "-3"),
    ("--topic-replication", "HERALD_TOPIC_REPLICATION", "abc"),
    ("--topic-replication", "HERALD_TOPIC_REPLICATION", "100000"),
])
def test_bad_topic_settings_are_usage_errors(herald, flag, env, value):
    r = herald("api", flag, value)
    assert r.returncode == 2, r.stderr
    assert flag in r.stderr and f"'{value}'" in r.stderr, r.stderr
    r = herald("api", env={env: value})
    assert r.returncode == 2, r.stderr
    assert env in r.stderr, r.stderr


def test_topic_create_switch_is_usage_checked(herald):
    r = herald("api", env={"HERALD_TOPIC_CREATE": "no"})
    assert r.returncode == 2 and "HERALD_TOPIC_CREATE" in r.stderr, r.stderr
    r = herald("api", "--no-create-topics=1")
    assert r.returncode == 2 and "takes no value" in r.stderr, r.stderr
    r = herald("api", "--help")
    assert r.returncode == 0
    for text in ("--topic-partitions", "HERALD_TOPIC_PARTITIONS", "--topic-replication",
                 "HERALD_TOPIC_REPLICATION", "--no-create-topics", "HERALD_TOPIC_CREATE"):
        assert text in r.stdout


def test_a_property_for_no_client_still_fails_at_startup(herald):
    r = herald("publish", "task.created", "--data", '{"task_id":"t"}',
               env={"HERALD_BUS": "kafka:127.0.0.1:9", "HERALD_KAFKA_NO_SUCH_PROPERTY": "1"})
    assert r.returncode == 1 and "no.such.property" in r.stderr, r.stderr
    # a bad value of a consumer property fails a producer too
    r = herald("publish", "task.created", "--data", '{"task_id":"t"}',
               env={"HERALD_BUS": "kafka:127.0.0.1:9", "HERALD_KAFKA_FETCH_WAIT_MAX_MS": "x"})
    assert r.returncode == 1 and "fetch.wait.max.ms" in r.stderr, r.stderr


# ---- a minimal Kafka responder for the CreateTopics request -----------------

API_METADATA, API_API_VERSIONS, API_CREATE_TOPICS = 3, 18, 19
ERR_UNSUPPORTED_VERSION = 35
ERR_TOPIC_ALREADY_EXISTS = 36
ERR_INVALID_REPLICATION_FACTOR = 38


class AdminStub:
    """One fake broker (id 1, also the controller) on 127.0.0.1. It answers
    ApiVersions (advertising only ApiVersions v0, Metadata v1 and
    CreateTopics v0; a newer ApiVersions request gets UNSUPPORTED_VERSION
    with that list, as KIP-511 says), Metadata (brokers, controller, the
    topics created so far) and CreateTopics (records (name, partitions,
    replication) in self.created and answers self.errors.get(name, 0)).
    Every other request is left unanswered. Not a Kafka: just enough of the
    protocol for librdkafka's metadata and admin calls."""

    def __init__(self, errors=None):
        self.errors = dict(errors or {})
        self.created = []
        self.topics = {}
        self.lock = threading.Lock()
        stub = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    while True:
                        head = self._read(4)
                        if head is None:
                            return
                        (size,) = struct.unpack(">i", head)
                        body = self._read(size)
                        if body is None:
                            return
                        reply = stub.answer(body)
                        if reply is not None:
                            self.request.sendall(struct.pack(">i", len(reply)) + reply)
                except OSError:
                    return

            def _read(self, n):
                data = b""
                while len(data) < n:
                    chunk = self.request.recv(n - len(data))
                    if not chunk:
                        return None
                    data += chunk
                return data

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _string(s):
        b = s.encode()
        return struct.pack(">h", len(b)) + b

    def answer(self, req):
        api_key, version, corr = struct.unpack(">hhi", req[:8])
        (cid_len,) = struct.unpack(">h", req[8:10])
        body = req[10 + max(cid_len, 0):]  # request header v1 (client id)
        head = struct.pack(">i", corr)
        if api_key == API_API_VERSIONS:
            apis = [(API_API_VERSIONS, 0, 0), (API_METADATA, 0, 1), (API_CREATE_TOPICS, 0, 0)]
            err = ERR_UNSUPPORTED_VERSION if version > 0 else 0
            out = struct.pack(">hi", err, len(apis))
            for key, lo, hi in apis:
                out += struct.pack(">hhh", key, lo, hi)
            return head + out
        if api_key == API_METADATA:
            (n,) = struct.unpack(">i", body[:4])
            pos, wanted = 4, []
            for _ in range(max(n, 0)):
                (ln,) = struct.unpack(">h", body[pos:pos + 2])
                wanted.append(body[pos + 2:pos + 2 + ln].decode())
                pos += 2 + ln
            out = struct.pack(">i", 1) + struct.pack(">i", 1) + self._string("127.0.0.1")
            out += struct.pack(">i", self.port) + struct.pack(">h", -1)  # rack: null
            out += struct.pack(">i", 1)  # controller id
            with self.lock:
                names = list(self.topics) if n < 0 else wanted
                out += struct.pack(">i", len(names))
                for name in names:
                    parts = self.topics.get(name)
                    err = 0 if parts is not None else 3  # UNKNOWN_TOPIC_OR_PART
                    out += struct.pack(">h", err) + self._string(name) + struct.pack(">b", 0)
                    out += struct.pack(">i", parts or 0)
                    for p in range(parts or 0):
                        out += struct.pack(">hii", 0, p, 1) + struct.pack(">ii", 1, 1)
                        out += struct.pack(">ii", 1, 1)
            return head + out
        if api_key == API_CREATE_TOPICS:
            (n,) = struct.unpack(">i", body[:4])
            pos, results = 4, []
            for _ in range(n):
                (ln,) = struct.unpack(">h", body[pos:pos + 2])
                name = body[pos + 2:pos + 2 + ln].decode()
                pos += 2 + ln
                parts, repl = struct.unpack(">ih", body[pos:pos + 6])
                pos += 6
                (na,) = struct.unpack(">i", body[pos:pos + 4])
                pos += 4
                for _ in range(max(na, 0)):
                    (nb,) = struct.unpack(">i", body[pos + 4:pos + 8])
                    pos += 8 + 4 * max(nb, 0)
                (nc,) = struct.unpack(">i", body[pos:pos + 4])
                pos += 4
                for _ in range(max(nc, 0)):
                    for _ in range(2):
                        (ln,) = struct.unpack(">h", body[pos:pos + 2])
                        pos += 2 + max(ln, 0)
                err = self.errors.get(name, 0)
                with self.lock:
                    self.created.append((name, parts, repl))
                    if err == 0:
                        self.topics[name] = parts
                results.append((name, err))
            out = struct.pack(">i", len(results))
            for name, err in results:
                out += self._string(name) + struct.pack(">h", err)
            return head + out
        return None  # anything else: no answer


@pytest.fixture
def admin_stub():
    stub = AdminStub()
    try:
        yield stub
    finally:
        stub.stop()


def stub_env(stub, extra=None):
    env = {"HERALD_BUS": f"kafka:{stub.bootstrap}", "HERALD_LOG_LEVEL": "info",
           # the stub has no InitProducerId: a plain producer
           "HERALD_KAFKA_ENABLE_IDEMPOTENCE": "false",
           "HERALD_KAFKA_MESSAGE_TIMEOUT_MS": "3000"}
    env.update(extra or {})
    return env


def test_create_topics_request_on_the_wire(procs, data_dir, admin_stub):
    """An agent asks for its two topics in one CreateTopics request with the
    configured partitions, and the replication factor auto on a one-broker
    cluster is 1; it logs each creation."""
    agent = Proc([str(HERALD_BIN), "agent", "email", "--topic-partitions", "5"],
                 clean_env(data_dir, stub_env(admin_stub)))
    procs.adopt(agent.popen)
    wait_for("CreateTopics", lambda: len(admin_stub.created) >= 2)
    assert admin_stub.created == [("task-events", 5, 1), ("reminder-events", 5, 1)]
    wait_log(agent, lambda line: "created topic 'reminder-events' (5 partitions, replication "
                                 "factor 1)" in line)
    agent.signal(15)
    assert agent.wait() == 0
    # the next start finds them in the metadata and asks for nothing
    agent = Proc([str(HERALD_BIN), "agent", "email"], clean_env(data_dir, stub_env(admin_stub)))
    procs.adopt(agent.popen)
    # (the consumer makes sure of its topics before "started")
    wait_log(agent, lambda line: "herald agent email: started" in line)
    agent.signal(15)
    assert agent.wait() == 0
    assert len(admin_stub.created) == 2


def test_create_topics_already_exists_is_success_other_errors_are_precise(herald,
                                                                           admin_stub):
    data = '{"task_id":"t-1","title":"x"}'
    admin_stub.errors = {"task-events": ERR_INVALID_REPLICATION_FACTOR}
    r = herald("publish", "task.created", "--data", data, "--topic-replication", "4",
               env=stub_env(admin_stub))
    assert r.returncode == 1, r.stderr
    assert admin_stub.created == [("task-events", 3, 4)]
    assert ("cannot create Kafka topic 'task-events' (3 partitions, replication factor 4): "
            "INVALID_REPLICATION_FACTOR") in r.stderr, r.stderr
    # TOPIC_ALREADY_EXISTS (another process was first) counts as created:
    # herald goes on to produce (which this stub does not answer)
    admin_stub.errors = {"task-events": ERR_TOPIC_ALREADY_EXISTS}
    r = herald("publish", "task.created", "--data", data, env=stub_env(admin_stub))
    assert admin_stub.created[-1] == ("task-events", 3, 1)
    assert "cannot create" not in r.stderr, r.stderr
    assert "did not acknowledge" in r.stderr or "timed out" in r.stderr.lower(), r.stderr


def test_consumer_retries_a_failed_creation_from_its_poll(procs, data_dir, admin_stub):
    """A creation that fails before subscribing does not stop the agent: it
    logs the broker's error, subscribes, and tries again while it polls."""
    admin_stub.errors = {"task-events": ERR_INVALID_REPLICATION_FACTOR}
    agent = Proc([str(HERALD_BIN), "agent", "slack"], clean_env(data_dir, stub_env(admin_stub)))
    procs.adopt(agent.popen)
    failed = wait_log(agent, lambda line: "cannot create Kafka topic 'task-events'" in line)
    assert "INVALID_REPLICATION_FACTOR" in failed[0] and "trying again" in failed[0], failed
    wait_log(agent, lambda line: "herald agent slack: started" in line)
    admin_stub.errors = {}
    wait_log(agent, lambda line: "created topic 'task-events'" in line)
    assert admin_stub.topics == {"task-events": 3}
    assert len(admin_stub.created) >= 2
    agent.signal(15)
    assert agent.wait() == 0
