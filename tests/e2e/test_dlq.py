"""Dead letters end to end: an agent that fails sends events to
<topic>.dlq with the reason, group, attempts and original position;
`herald dlq list` shows them; `herald dlq replay` re-drives them once, to the
group that failed only (the others drop the replayed event by its id).

The failing agent is a real user channel: `herald agent exec` running a shell
script that fails until a flag file exists."""

import json
import time

from helpers import CMD_TIMEOUT

SCRIPT = """#!/bin/sh
cat > /dev/null
if [ -e "$FLAG" ]; then
    echo "$HERALD_EVENT_ID" >> "$OUT"
    exit 0
fi
exit 3
"""

MIRROR = """#!/bin/sh
cat > /dev/null
echo "$HERALD_EVENT_ID" >> "$OUT"
"""


def wait_for(predicate, what, timeout=CMD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def dlq_list(herald, *args):
    r = herald("dlq", "list", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def lines(path):
    return path.read_text().split() if path.exists() else []


def test_failed_events_are_dead_lettered_listed_and_replayed_once(herald, publish, procs,
                                                                  tmp_path):
    script = tmp_path / "push.sh"
    script.write_text(SCRIPT)
    mirror = tmp_path / "mirror.sh"
    mirror.write_text(MIRROR)
    flag, out, mirrored = tmp_path / "flag", tmp_path / "out", tmp_path / "mirrored"
    env = {"FLAG": str(flag), "OUT": str(out), "HERALD_RETRY_ATTEMPTS": "2",
           "HERALD_RETRY_BASE": "10ms"}

    first = publish("task.created", {"task_id": "t-1", "title": "A", "owner_id": "u"})
    second = publish("task.created", {"task_id": "t-2", "title": "B", "owner_id": "u"})
    publish("task.completed", {"task_id": "t-1", "title": "A", "owner_id": "u"})

    pushes = procs.herald("agent", "exec", "--group", "pushes", "--types", "task.created",
                          "--", "sh", str(script), env=env)
    procs.herald("agent", "exec", "--group", "mirror", "--types", "task.created", "--",
                 "sh", str(mirror), env={"OUT": str(mirrored)})

    entries = wait_for(lambda: len(dlq_list(herald)) == 2 and dlq_list(herald), "2 dead letters")
    by_id = {e["event_id"]: e for e in entries}
    assert set(by_id) == {first["event_id"], second["event_id"]}
    e = by_id[first["event_id"]]
    assert e["dlq_topic"] == "task-events.dlq"
    assert e["group"] == "pushes"
    assert e["topic"] == "task-events" and e["offset"] == 1
    assert e["event_type"] == "task.created"
    assert e["key"] == "t-1"
    assert e["attempts"] == 1  # exit 3 is a permanent failure: no retry
    assert "exit status 3" in e["reason"]
    assert json.loads(e["value"]) == first  # the original record, unchanged
    assert not e["replayed"] and not e["handled"]
    assert by_id[second["event_id"]]["offset"] == 2

    # the other group handled both, once
    wait_for(lambda: len(lines(mirrored)) == 2, "the mirror group")

    # text form, and the filters
    r = herald("dlq", "list")
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 2 and "group=pushes" in r.stdout
    assert dlq_list(herald, "--group", "nobody") == []
    assert [e["event_id"] for e in dlq_list(herald, "--event-id", second["event_id"])] == \
        [second["event_id"]]

    # fix the channel, replay one event
    flag.touch()
    r = herald("dlq", "replay", "--group", "pushes", "--event-id", first["event_id"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("replayed ") == 1 and first["event_id"] in r.stdout
    wait_for(lambda: lines(out) == [first["event_id"]], "the replayed event handled")
    listed = {e["event_id"]: e for e in dlq_list(herald)}
    assert listed[first["event_id"]]["replayed"] and listed[first["event_id"]]["handled"]
    assert not listed[second["event_id"]]["replayed"]

    # replay the rest: only the second goes out; a further replay sends nothing
    r = herald("dlq", "replay")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("replayed ") == 1 and second["event_id"] in r.stdout
    wait_for(lambda: sorted(lines(out)) == sorted([first["event_id"], second["event_id"]]),
             "the second replayed event handled")
    r = herald("dlq", "replay")
    assert r.returncode == 0 and r.stdout == ""

    # the group that had handled the events dropped the replays as duplicates
    time.sleep(1.0)
    assert sorted(lines(mirrored)) == sorted([first["event_id"], second["event_id"]])
    assert sorted(lines(out)) == sorted([first["event_id"], second["event_id"]])
    assert len(dlq_list(herald)) == 2  # nothing failed again
    assert pushes.poll() is None


def test_an_event_that_is_not_an_envelope_is_dead_lettered_not_fatal(herald, procs, busctl,
                                                                      tmp_path):
    from helpers import run_busctl
    mirror = tmp_path / "mirror.sh"
    mirror.write_text(MIRROR)
    mirrored = tmp_path / "mirrored"
    # one raw record that is not an envelope, then a valid event
    r = run_busctl("produce", herald.data_dir, "--topic", "task-events", "--batches", "1",
                   "--batch-size", "1")
    assert r.returncode == 0, r.stderr
    good = herald("publish", "task.created", "--data", '{"task_id": "t-9", "title": "x"}')
    assert good.returncode == 0
    good_id = json.loads(good.stdout)["event_id"]
    procs.herald("agent", "exec", "--group", "mirror", "--types", "task.created", "--", "sh",
                 str(mirror), env={"OUT": str(mirrored)})
    wait_for(lambda: lines(mirrored) == [good_id], "the valid event")
    entries = wait_for(lambda: dlq_list(herald), "the invalid record's dead letter")
    assert len(entries) == 1
    assert entries[0]["event_id"] is None and entries[0]["offset"] == 1
    assert entries[0]["reason"].startswith("invalid envelope")
    # replay skips what can never succeed
    r = herald("dlq", "replay")
    assert r.returncode == 0 and r.stdout == ""
    assert "1 skipped" in r.stderr


def test_dlq_usage_errors(herald):
    for args in (["dlq"], ["dlq", "frob"], ["dlq", "list", "--event-id", "nope"],
                 ["dlq", "replay", "--json"], ["dlq", "list", "extra", "x"]):
        r = herald(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("herald dlq: "), r.stderr
        assert len(r.stderr.splitlines()) == 1
    r = herald("dlq", "--help")
    assert r.returncode == 0 and "replay" in r.stdout
