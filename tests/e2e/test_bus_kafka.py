"""The Kafka backend of the bus (src/bus/kafka.c) end to end.

tests/tools/kafka_bus_check starts a librdkafka mock cluster (3 brokers,
real Kafka protocol over loopback) inside its own process and drives it
through bus.h only: produce with keys and headers, group consume, seek,
wakeup, commit, reopen, a second group, a pattern subscription, a consumer
without a group. It prints one "ok" line per check and exits 0 only when
all passed. Group joins on the mock take about 3 s each, hence the long
limit (the ASan build is slower).
"""

import os
import subprocess

import pytest

from helpers import HERALD_TOOLS, clean_env

CHECK = HERALD_TOOLS / "kafka_bus_check"

EXPECTED_OK = [
    "ok url: kind kafka",
    "ok produce:",
    "ok group g1:",
    "ok seek:",
    "ok wakeup:",
    "ok commit",
    "ok reopened group g1:",
    "ok second group g2:",
    "ok pattern ^.*-events$:",
    "ok consumer without group:",
    "ok rebalance:",
    "ok bad input:",
]


@pytest.fixture(scope="module")
def check_run():
    if not os.access(CHECK, os.X_OK):
        pytest.fail(f"missing {CHECK} (build it: make {CHECK.parent.parent.name}/tools/kafka_bus_check)")
    return subprocess.run([str(CHECK)], env=clean_env(), capture_output=True, text=True,
                          timeout=600)


def test_kafka_bus_check_passes(check_run):
    assert check_run.returncode == 0, check_run.stdout + check_run.stderr
    assert "all checks passed" in check_run.stdout


@pytest.mark.parametrize("line", EXPECTED_OK)
def test_kafka_bus_check_line(check_run, line):
    lines = check_run.stdout.splitlines()
    assert any(l.startswith(line) for l in lines), check_run.stdout + check_run.stderr


@pytest.mark.parametrize("url,why", [
    ("kafka:", "names no Kafka broker"),
    ("kafka:nohost", "expected HOST:PORT"),
    ("kafka:localhost:70000", "bad port"),
    ("kafka:a:9092,,b:9092", "empty Kafka broker"),
])
def test_bad_kafka_url_rejected(herald, url, why):
    r = herald("tail", env={"HERALD_BUS": url})
    assert r.returncode != 0
    assert why in r.stderr
