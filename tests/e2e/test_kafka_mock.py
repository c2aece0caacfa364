"""The kafka_mock test tool (tests/tools/kafka_mock.c) against an independent
Kafka client, kcat: what kcat writes to the mock cluster it reads back with
keys and headers; the control channel really takes brokers down and up
and fails the requests of an API key with an error code; bad commands are answered and survived; EOF, quit and SIGTERM end it with
status 0. No timing assertions: only "this happened" with generous limits."""

import json
import signal
import socket
import subprocess

import pytest

from helpers import CMD_TIMEOUT
from kafka_helpers import KAFKA_MOCK, KCAT_FAST, KafkaMock, kafka_mock  # noqa: F401 (fixture)


def kcat(*args, input=None, timeout=CMD_TIMEOUT):
    return subprocess.run(["kcat", *map(str, args)], input=input, capture_output=True,
                          text=True, timeout=timeout)


def produce(bootstrap, topic, lines, headers=()):
    """kcat -P: each line "key:value"; the same headers on every record."""
    args = ["-P", "-b", bootstrap, "-t", topic, "-K", ":", "-X", "acks=all"]
    for h in headers:
        args += ["-H", h]
    r = kcat(*args, input="".join(line + "\n" for line in lines))
    assert r.returncode == 0, r.stderr


def consume_all(bootstrap, topic):
    """kcat -C from the beginning to the end of every partition; returns the
    "key headers value" lines, sorted (partitions interleave freely)."""
    r = kcat("-C", "-b", bootstrap, "-t", topic, "-f", "%k %h %s\n", "-e", "-o", "beginning",
             "-q", *KCAT_FAST)
    assert r.returncode == 0, r.stderr
    return sorted(r.stdout.splitlines())


def metadata(bootstrap, topic):
    """kcat -L -J for one topic; returns (brokers {id: "host:port"}, topic dict)."""
    r = kcat("-L", "-b", bootstrap, "-t", topic, "-J")
    assert r.returncode == 0, r.stderr
    md = json.loads(r.stdout)
    brokers = {b["id"]: b["name"] for b in md["brokers"]}
    topics = [t for t in md["topics"] if t["topic"] == topic]
    assert len(topics) == 1, md
    return brokers, topics[0]


def connectable(address):
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=CMD_TIMEOUT):
            return True
    except ConnectionRefusedError:
        return False


def test_bootstrap_is_loopback_brokers(kafka_mock):
    addresses = kafka_mock.bootstrap.split(",")
    assert len(addresses) == 3
    for a in addresses:
        host, port = a.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0, a
    assert kafka_mock.command("topic t-meta 4") == "ok topic t-meta 4"
    brokers, topic = metadata(kafka_mock.bootstrap, "t-meta")
    assert sorted(brokers) == [1, 2, 3]
    assert sorted(brokers.values()) == sorted(addresses)
    assert [p["partition"] for p in topic["partitions"]] == [0, 1, 2, 3]
    for p in topic["partitions"]:
        assert len(p["replicas"]) == 3


def test_topic_options_and_replication_for_small_cluster():
    mock = KafkaMock(brokers=2, topics=[("orders-events", 3), ("x.y_z", 1)])
    try:
        assert len(mock.bootstrap.split(",")) == 2
        brokers, topic = metadata(mock.bootstrap, "orders-events")
        assert sorted(brokers) == [1, 2]
        assert len(topic["partitions"]) == 3
        for p in topic["partitions"]:
            assert len(p["replicas"]) == 2  # min(3, brokers)
        _, topic = metadata(mock.bootstrap, "x.y_z")
        assert len(topic["partitions"]) == 1
    finally:
        mock.stop()


def test_kcat_round_trip_keys_headers_values(kafka_mock):
    b = kafka_mock.bootstrap
    assert kafka_mock.command("topic task-events 3") == "ok topic task-events 3"
    produce(b, "task-events", ["task-1:{\"n\": 1}", "task-2:plain value two"],
            headers=["ce_type=task.created", "traceparent=00-abc-01"])
    produce(b, "task-events", ["task-3:third"], headers=["ce_type=task.deleted"])
    assert consume_all(b, "task-events") == sorted([
        'task-1 ce_type=task.created,traceparent=00-abc-01 {"n": 1}',
        "task-2 ce_type=task.created,traceparent=00-abc-01 plain value two",
        "task-3 ce_type=task.deleted third",
    ])


def test_broker_down_and_up(kafka_mock):
    b = kafka_mock.bootstrap
    assert kafka_mock.command("topic t-faults 3") == "ok topic t-faults 3"
    brokers, _ = metadata(b, "t-faults")

    # One broker: its listener refuses connections while down, the others serve.
    assert connectable(brokers[2])
    assert kafka_mock.command("down 2") == "ok down 2"
    assert not connectable(brokers[2])
    assert connectable(brokers[1]) and connectable(brokers[3])
    assert kafka_mock.command("up 2") == "ok up 2"
    assert connectable(brokers[2])

    # Every broker down: a client gets no metadata at all.
    assert kafka_mock.command("down -1") == "ok down -1"
    r = kcat("-L", "-b", b, "-t", "t-faults", "-m", "2")
    assert r.returncode != 0, r.stdout
    assert kafka_mock.command("up -1") == "ok up -1"

    # Round trip after the outage, over partitions led by every broker.
    assert kafka_mock.command("rtt 3 1") == "ok rtt 3 1"
    produce(b, "t-faults", [f"k{i}:v{i}" for i in range(12)], headers=["h=after-up"])
    assert consume_all(b, "t-faults") == sorted(f"k{i} h=after-up v{i}" for i in range(12))


@pytest.mark.parametrize("command, answer", [
    ("", "error empty command"),
    ("bogus", "error unknown command 'bogus'"),
    ("down", "error wrong number of arguments for 'down'"),
    ("down 0", "error invalid broker id '0' (1..3 or -1 for all)"),
    ("down 4", "error invalid broker id '4' (1..3 or -1 for all)"),
    ("up two", "error invalid broker id 'two' (1..3 or -1 for all)"),
    ("rtt 1", "error wrong number of arguments for 'rtt'"),
    ("rtt 1 -5", "error invalid rtt '-5' (0..600000 ms)"),
    ("rtt 1 5ms", "error invalid rtt '5ms' (0..600000 ms)"),
    ("topic a/b 1", "error invalid topic name 'a/b'"),
    ("topic ok-name 0", "error invalid partition count '0' (1..10000)"),
    ("topic ok-name 1 2", "error wrong number of arguments for 'topic'"),
    ("quit now", "error wrong number of arguments for 'quit'"),
    ("error 22", "error wrong number of arguments for 'error'"),
    ("error 22 31 1 2", "error too many arguments"),
    ("error x 31", "error invalid API key 'x' (0..999)"),
    ("error 1000 31", "error invalid API key '1000' (0..999)"),
    ("error 22 0", "error invalid error code '0' (-199..1000, not 0)"),
    ("error 22 -200", "error invalid error code '-200' (-199..1000, not 0)"),
    ("error 22 31 0", "error invalid count '0' (1..10000)"),
    ("clear", "error wrong number of arguments for 'clear'"),
    ("clear -1", "error invalid API key '-1' (0..999)"),
    ("x" * 5000, "error line too long"),
])
def test_bad_commands_answer_error_and_tool_survives(kafka_mock, command, answer):
    assert kafka_mock.command(command) == answer
    # Still alive and still answering, and the cluster still serves.
    assert kafka_mock.command("topic after-error 1") == "ok topic after-error 1"
    _, topic = metadata(kafka_mock.bootstrap, "after-error")
    assert len(topic["partitions"]) == 1
    assert kafka_mock.popen.poll() is None


def test_error_command_fails_the_next_requests_of_an_api_key(kafka_mock):
    """error 0 10 2: the next two Produce requests (API key 0) are answered
    MSG_SIZE_TOO_LARGE (10, not retried by the client), the third is not;
    clear drops what is still pending."""
    b = kafka_mock.bootstrap
    assert kafka_mock.command("topic t-err 1") == "ok topic t-err 1"
    assert kafka_mock.command("error 0 10 2") == "ok error 0 10 2 MSG_SIZE_TOO_LARGE"

    def produce_one(line):
        return kcat("-P", "-b", b, "-t", "t-err", "-K", ":", "-X", "acks=all",
                    input=line + "\n")

    for key in ("k1", "k2"):
        r = produce_one(f"{key}:refused")
        assert r.returncode != 0 and "Message size too large" in r.stderr, r
    produce(b, "t-err", ["k3:v3"])
    assert kafka_mock.command("error 0 10 5") == "ok error 0 10 5 MSG_SIZE_TOO_LARGE"
    assert kafka_mock.command("clear 0") == "ok clear 0"
    produce(b, "t-err", ["k4:v4"])
    assert consume_all(b, "t-err") == ["k3  v3", "k4  v4"]


def test_existing_topic_is_an_error(kafka_mock):
    assert kafka_mock.command("topic dup 2") == "ok topic dup 2"
    answer = kafka_mock.command("topic dup 2")
    assert answer.startswith("error cannot create topic 'dup'"), answer
    assert kafka_mock.command("up 1") == "ok up 1"


def test_exit_0_on_eof(kafka_mock):
    assert kafka_mock.command("down 1") == "ok down 1"
    kafka_mock.close_stdin()
    assert kafka_mock.wait() == 0
    assert kafka_mock.proc.rest() == []  # nothing more than the answers


def test_quit_answers_then_exits_0(kafka_mock):
    assert kafka_mock.command("quit") == "ok quit"
    assert kafka_mock.wait() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exit_0_on_signal(kafka_mock, sig):
    assert kafka_mock.command("topic sig 1") == "ok topic sig 1"
    kafka_mock.popen.send_signal(sig)
    assert kafka_mock.wait() == 0


@pytest.mark.parametrize("args", [["--brokers", "0"], ["--brokers", "x"], ["--topic", "t"],
                                  ["--topic", "t:0"], ["--topic", "bad/name:1"], ["--what"]])
def test_bad_options_exit_2(args):
    r = subprocess.run([str(KAFKA_MOCK), *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=CMD_TIMEOUT)
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert r.stderr.startswith(("kafka_mock:", "usage: kafka_mock")), r.stderr
