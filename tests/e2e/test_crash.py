"""kill -9 in the middle of the work: what a producer was told is committed
is in the log, a batch is all or nothing, a consumer group resumes without
losing anything, and the database stays consistent."""

import json
import os
import random
import sqlite3
import time
from collections import defaultdict

from helpers import consume_all, parse_committed, parse_consumed, run_busctl

BATCH = 50
ROUNDS = 5


def integrity_ok(data_dir):
    db = sqlite3.connect(str(data_dir / "bus.db"), timeout=30)
    try:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]
    finally:
        db.close()


def test_killed_producer_leaves_only_whole_batches(data_dir, procs):
    seed = int(os.environ.get("HERALD_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"seed {seed} (set HERALD_TEST_SEED to replay)")
    reported = {}  # tag -> [(batch, first, last)] the producer printed
    for round_ in range(ROUNDS):
        tag = f"r{round_}"
        p = procs.busctl("produce", data_dir, "--topic", "crash-events", "--batches", 100000,
                         "--batch-size", BATCH, "--sync", "full", "--tag", tag)
        _, first_line = p.line()  # it is writing (not still starting up)
        assert first_line is not None, p.err_lines
        time.sleep(rng.uniform(0.3, 1.5))
        assert p.poll() is None, "producer ended before it was killed"
        p.kill9()
        reported[tag] = parse_committed([first_line] + p.rest())
        print(f"round {round_}: {len(reported[tag])} batches reported")
        assert [b for b, _, _ in reported[tag]] == list(range(len(reported[tag])))

    records = consume_all(data_dir, topic="crash-events", extra=["--batch", "5000"])
    batches = defaultdict(list)  # (tag, batch) -> [(offset, seq)]
    for _, offset, key, value in records:
        v = json.loads(value)
        assert v["of"] == BATCH and key == f"k{v['seq'] % 7}", value
        batches[(v["tag"], v["batch"])].append((offset, v["seq"]))
    offsets = [o for _, o, _, _ in records]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)

    for tag, done in reported.items():
        present = sorted(b for t, b in batches if t == tag)
        n = len(done)
        # every acknowledged batch, plus at most the one committed while the
        # producer was being killed (before it could print its line)
        assert present in (list(range(n)), list(range(n + 1))), \
            (tag, n, present[:3], present[-3:])
        for b, first, last in done:
            assert [o for o, _ in batches[(tag, b)]] == list(range(first, last + 1)), (tag, b)
    for (tag, b), recs in batches.items():
        # nothing partial: each batch whole, in order, at contiguous offsets
        assert [s for _, s in recs] == list(range(BATCH)), (tag, b)
        first = recs[0][0]
        assert [o for o, _ in recs] == list(range(first, first + BATCH)), (tag, b)
    assert len(records) == BATCH * len(batches)
    assert set(t for t, _ in batches) == set(reported)

    assert integrity_ok(data_dir) == ["ok"]
    # and the log still takes writes and reads after all that
    r = run_busctl("produce", data_dir, "--topic", "crash-events", "--batches", 1,
                   "--batch-size", 3, "--tag", "after")
    assert r.returncode == 0, r.stderr
    (_, first, last), = parse_committed(r.stdout.splitlines())
    assert first > max(offsets)
    tail = consume_all(data_dir, topic="crash-events", group="late-reader")[-3:]
    assert [o for _, o, _, _ in tail] == [first, first + 1, first + 2]


def test_killed_consumer_resumes_without_loss(data_dir, procs):
    r = run_busctl("produce", data_dir, "--topic", "ck-events", "--batches", 20,
                   "--batch-size", 100)
    assert r.returncode == 0, r.stderr
    everything = [o for _, o, _, _ in consume_all(data_dir, topic="ck-events")]
    assert len(everything) == 2000

    seen = []  # offsets in the order they were printed, over every run
    position = 0  # index in `everything` of the next record not yet printed
    for stop_after in (150, 420, 777):
        c = procs.busctl("consume", data_dir, "--group", "g", "--topic", "ck-events",
                         "--batch", 10, "--sleep-us-per-msg", 1000, "--idle-exit-ms", 60000)
        got = []
        while len(got) < stop_after - position:
            _, line = c.line()
            assert line is not None, c.err_lines
            got.append(line)
        c.kill9()
        got += c.rest()  # whatever it printed before it died
        printed = [o for _, o, _, _ in parse_consumed(got)]
        # it resumed at or before the first record not printed before (no loss),
        # re-reading at most one uncommitted batch of 10
        start = everything.index(printed[0])
        assert start <= position, ("records lost", start, position)
        assert position - start <= 10, ("more than one batch re-read", start, position)
        assert printed == everything[start:start + len(printed)], "gap or reorder"
        seen += printed
        position = start + len(printed)

    rest = consume_all(data_dir, topic="ck-events", group="g")
    printed = [o for _, o, _, _ in rest]
    start = everything.index(printed[0])
    assert start <= position and position - start <= 10
    assert printed == everything[start:]
    seen += printed
    assert set(seen) == set(everything)
    assert len(seen) - len(everything) <= 4 * 10  # duplicates: one batch per resume at most
    assert consume_all(data_dir, topic="ck-events", group="g") == []
    assert integrity_ok(data_dir) == ["ok"]
