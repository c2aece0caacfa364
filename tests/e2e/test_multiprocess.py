"""Several processes on one data directory: producers and consumer groups in
separate processes (busctl, and `herald publish`), the way agents run as
their own processes next to the API."""

import json
import subprocess
import time
from collections import defaultdict

from helpers import (CMD_TIMEOUT, HERALD_BIN, clean_env, consume_all, init_log,
                     parse_committed, parse_consumed, run_busctl)

# A consumer that should never go idle while a test still feeds it.
WAITING = ["--idle-exit-ms", "60000"]


def produce(data_dir, topic, batches, size, tag="t", *extra):
    """Run busctl produce to completion; returns [(batch, first, last)]."""
    r = run_busctl("produce", data_dir, "--topic", topic, "--batches", batches, "--batch-size",
                   size, "--tag", tag, *extra)
    assert r.returncode == 0, r.stderr
    committed = parse_committed(r.stdout.splitlines())
    assert [b for b, _, _ in committed] == list(range(batches))
    return committed


def values(records):
    """(topic, offset, key, value) records -> [(offset, key, value dict)]."""
    return [(o, k, json.loads(v)) for _, o, k, v in records]


def check_complete_in_order(records, committed, size, tag="t"):
    """records hold every record of `committed` (batches of `size` records
    from one producer) exactly once, in offset order, each batch at the
    offsets its producer was told, and per key in publish order."""
    recs = values(records)
    offsets = [o for o, _, _ in recs]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), \
        "offsets not strictly increasing"
    expected_offsets = [o for _, first, last in committed for o in range(first, last + 1)]
    assert offsets == expected_offsets
    assert [(v["tag"], v["batch"], v["seq"]) for _, _, v in recs] == \
        [(tag, b, i) for b, _, _ in committed for i in range(size)]
    assert all(k == f"k{v['seq'] % 7}" for _, k, v in recs)
    per_key = defaultdict(list)
    for _, k, v in recs:
        per_key[k].append((v["batch"], v["seq"]))
    assert len(per_key) == min(7, size)
    for k, seq in per_key.items():
        assert seq == sorted(seq), f"key {k} out of publish order"


def test_producer_and_consumers_in_separate_processes(data_dir, procs):
    batches, size = 50, 20
    groups = ["audit-log", "notification-email", "scheduler"]
    init_log(data_dir)
    consumers = [procs.busctl("consume", data_dir, "--group", g, "--topic", "mp-events",
                              "--max", batches * size, *WAITING) for g in groups]
    for c in consumers:
        c.wait_stderr("ready")
    producer = procs.busctl("produce", data_dir, "--topic", "mp-events", "--batches", batches,
                            "--batch-size", size, "--tag", "t")
    assert producer.wait() == 0, producer.err_lines
    committed = parse_committed(producer.rest())
    assert [b for b, _, _ in committed] == list(range(batches))
    outputs = []
    for g, c in zip(groups, consumers):
        assert c.wait() == 0, (g, c.err_lines)
        records = parse_consumed(c.rest())
        assert len(records) == batches * size, g
        assert {t for t, _, _, _ in records} == {"mp-events"}
        check_complete_in_order(records, committed, size)
        outputs.append(records)
    assert outputs[0] == outputs[1] == outputs[2]
    # each group committed the end: nothing more for any of them
    for g in groups:
        assert consume_all(data_dir, topic="mp-events", group=g) == []


def test_commit_and_resume_across_processes(data_dir):
    committed = produce(data_dir, "resume-events", 10, 100)
    everything = consume_all(data_dir, topic="resume-events")
    assert len(everything) == 1000

    r = run_busctl("consume", data_dir, "--group", "g", "--topic", "resume-events",
                   "--max", 300, "--batch", 100)
    assert r.returncode == 0, r.stderr
    first = parse_consumed(r.stdout.splitlines())
    assert first == everything[:300]

    second = consume_all(data_dir, topic="resume-events", group="g")
    assert second == everything[300:], "second run must continue exactly after the first"
    check_complete_in_order(first + second, committed, 100)
    assert consume_all(data_dir, topic="resume-events", group="g") == []
    # --no-commit reads but leaves the group where it was
    committed2 = produce(data_dir, "resume-events", 1, 5, "u")
    assert len(consume_all(data_dir, topic="resume-events", group="g",
                           extra=["--no-commit"])) == 5
    again = consume_all(data_dir, topic="resume-events", group="g")
    assert [o for _, o, _, _ in again] == list(range(committed2[0][1], committed2[0][2] + 1))


def test_slow_consumer_does_not_hold_up_the_producer(data_dir, procs):
    total, batches = 2000, 20
    consumer = procs.busctl("consume", data_dir, "--group", "slow", "--topic", "slow-events",
                            "--max", total, "--sleep-us-per-msg", 2000, *WAITING)
    consumer.wait_stderr("ready")
    t0 = time.monotonic()
    committed = produce(data_dir, "slow-events", batches, total // batches)
    producer_s = time.monotonic() - t0
    # the consumer needs at least total * 2 ms of sleeping alone; the producer
    # must not have been waiting for it
    assert consumer.poll() is None, "consumer finished before the producer?"
    assert consumer.wait(timeout=CMD_TIMEOUT * 2) == 0, consumer.err_lines
    consumer_s = consumer.ended - consumer.started
    assert producer_s < consumer_s, (producer_s, consumer_s)
    records = parse_consumed(consumer.rest())
    check_complete_in_order(records, committed, total // batches)
    print(f"producer {producer_s:.2f}s, slow consumer {consumer_s:.2f}s")


def test_waiting_consumer_is_woken_by_another_process(data_dir, procs, herald):
    consumer = procs.busctl("consume", data_dir, "--group", "-", "--pattern", "^task-events$",
                            *WAITING)
    consumer.wait_stderr("ready")
    time.sleep(0.3)  # let it go to sleep on the log
    latencies = []
    for i in range(5):
        start = time.monotonic()
        r = herald("publish", "task.created", "--data", json.dumps({"task_id": f"t-{i}"}))
        assert r.returncode == 0, r.stderr
        at, line = consumer.line(timeout=10)
        assert line is not None, consumer.err_lines
        # from starting `herald publish` to the consumer printing the record
        latencies.append(at - start)
        topic, _, key, value = line.split(" ", 3)
        assert (topic, key) == ("task-events", f"t-{i}")
        assert json.loads(value) == json.loads(r.stdout)
        time.sleep(0.2)
    print("wake-up latencies (s):", " ".join(f"{x:.3f}" for x in latencies))
    assert max(latencies) < 2.0, latencies


def test_two_producers_on_one_topic(data_dir, procs):
    batches, size = 40, 25
    init_log(data_dir)
    producers = {tag: procs.busctl("produce", data_dir, "--topic", "shared-events", "--batches",
                                   batches, "--batch-size", size, "--tag", tag,
                                   "--sleep-us", 1000)
                 for tag in ("A", "B")}
    committed = {}
    for tag, p in producers.items():
        assert p.wait() == 0, p.err_lines
        committed[tag] = parse_committed(p.rest())
        assert [b for b, _, _ in committed[tag]] == list(range(batches))
    records = consume_all(data_dir, topic="shared-events")
    assert len(records) == 2 * batches * size
    offsets = [o for _, o, _, _ in records]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    by_offset = {o: v for o, _, v in values(records)}
    ranges = []
    for tag, batch_list in committed.items():
        for b, first, last in batch_list:
            # a batch is contiguous and holds exactly its own records, in order
            assert last - first + 1 == size, (tag, b, first, last)
            got = [by_offset[o] for o in range(first, last + 1)]
            assert got == [{"tag": tag, "batch": b, "seq": i, "of": size} for i in range(size)]
            ranges.append((first, last))
        # one producer's batches are in its own order
        firsts = [first for _, first, _ in batch_list]
        assert firsts == sorted(firsts)
    ranges.sort()
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])), "batches overlap"
    assert sum(last - first + 1 for first, last in ranges) == len(records)
    # how much the two producers interleaved (informational)
    owner = sorted((first, tag) for tag, bl in committed.items() for _, first, _ in bl)
    switches = sum(1 for x, y in zip(owner, owner[1:]) if x[1] != y[1])
    print(f"producer switches between batches: {switches}")


def test_herald_publish_from_parallel_processes(data_dir, herald):
    """Eight `herald publish` processes at once on an existing log, racing to
    create the topic: all succeed, all stored."""
    init_log(data_dir)
    env = clean_env(data_dir)
    ps = [subprocess.Popen([str(HERALD_BIN), "publish", "task.created", "--data",
                            json.dumps({"task_id": f"t-{i}"})], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(8)]
    printed = []
    try:
        for p in ps:
            out, err = p.communicate(timeout=CMD_TIMEOUT)
            assert p.returncode == 0, err
            printed.append(json.loads(out))
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    recs = consume_all(data_dir, topic="task-events")
    assert sorted(json.loads(v)["event_id"] for *_, v in recs) == \
        sorted(e["event_id"] for e in printed)
    assert sorted(k for _, _, k, _ in recs) == sorted(f"t-{i}" for i in range(8))
    r = herald("tail")
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 8


def test_processes_opening_a_fresh_data_dir_at_once(tmp_path):
    """Agents started together (e.g. by a service manager) on a data
    directory that does not exist yet: every one of them must work."""
    script = ('for i in 1 2 3 4; do ( "$0" publish task.created --data "{}" >>"$1/out" '
              '2>>"$1/err"; echo $? >>"$1/rc" ) & done; wait')
    deadline = time.monotonic() + 8
    for round_ in range(40):
        d = tmp_path / f"r{round_}"
        d.mkdir()
        subprocess.run(["/bin/sh", "-c", script, str(HERALD_BIN), str(d)],
                       env=clean_env(d / "data"), timeout=CMD_TIMEOUT)
        rcs = (d / "rc").read_text().split()
        assert rcs == ["0"] * 4, f"round {round_}: exit {rcs}: {(d / 'err').read_text()}"
        assert len((d / "out").read_text().splitlines()) == 4
        assert len(consume_all(d / "data", topic="task-events", idle_ms=0)) == 4
        if time.monotonic() > deadline:
            break


def _read_until(proc, last_offset, timeout=CMD_TIMEOUT):
    """Parsed stdout records of a busctl consumer up to the one at last_offset."""
    got = []
    deadline = time.monotonic() + timeout
    while not got or got[-1][1] != last_offset:
        _, line = proc.line(max(0.01, deadline - time.monotonic()))
        assert line is not None, proc.err_lines
        got += parse_consumed([line])
    return got


def test_group_has_one_active_member_and_hands_over_on_exit(data_dir, procs):
    """Two processes consuming as one group: only one receives; when it
    stops (releasing the group), the other continues where it committed,
    so together they see every record exactly once."""
    produce(data_dir, "grp-events", 5, 100)
    everything = [o for _, o, _, _ in consume_all(data_dir, topic="grp-events")]
    a = procs.busctl("consume", data_dir, "--group", "shared", "--topic", "grp-events",
                     "--batch", 10, "--max", 100, "--sleep-us-per-msg", 5000, *WAITING)
    a.line()  # a is the active member
    b = procs.busctl("consume", data_dir, "--group", "shared", "--topic", "grp-events",
                     *WAITING)
    b.wait_stderr("ready")
    assert a.wait() == 0, a.err_lines
    from_a = [o for _, o, _, _ in parse_consumed(a.rest())]
    assert from_a == everything[1:100]  # (the first line was read above)
    from_b = [o for _, o, _, _ in _read_until(b, everything[-1])]
    assert from_b == everything[100:], "the standby must continue exactly after the first"


def test_group_standby_takes_over_from_a_killed_member(data_dir, procs):
    produce(data_dir, "grp-events", 5, 100)
    everything = [o for _, o, _, _ in consume_all(data_dir, topic="grp-events")]
    a = procs.busctl("consume", data_dir, "--group", "shared", "--topic", "grp-events",
                     "--batch", 10, "--sleep-us-per-msg", 5000, *WAITING)
    lines = [a.line()[1]]
    b = procs.busctl("consume", data_dir, "--group", "shared", "--topic", "grp-events",
                     *WAITING)
    b.wait_stderr("ready")
    while len(lines) < 60:
        lines.append(a.line()[1])
    # while a is alive, b stands by and receives nothing
    assert b.out.empty(), "two active members in one group"
    a.kill9()
    from_a = [o for _, o, _, _ in parse_consumed(lines + a.rest())]
    assert from_a == everything[:len(from_a)]
    from_b = [o for _, o, _, _ in _read_until(b, everything[-1])]
    start = everything.index(from_b[0])
    # at-least-once: b starts at a's last commit, at most one batch of 10 back
    assert len(from_a) - 10 <= start <= len(from_a), (start, len(from_a))
    assert from_b == everything[start:]
