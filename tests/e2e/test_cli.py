"""`herald` as a user runs it: help and version, usage errors, `publish`
(the envelope it prints and stores, and what it refuses) and `tail` (order,
filters, consumer groups, --follow, signals, a reader that goes away)."""

import json
import os
import re
import select
import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest

from helpers import CMD_TIMEOUT, HERALD_BIN, clean_env, consume_all

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENVELOPE_KEYS = ["event_id", "event_type", "occurred_at", "data", "metadata"]
METADATA_KEYS = ["correlation_id", "causation_id", "source"]

# How long an event may take to reach a waiting `tail --follow`: normally
# milliseconds; generous for the sanitizer build on a loaded machine.
ARRIVAL_TIMEOUT = 10.0


def ordered(line):
    """Parse a JSON line keeping key order (as lists of pairs at every level)."""
    return json.loads(line, object_pairs_hook=lambda pairs: pairs)


def tail_events(herald, *args):
    """Run `herald tail ARGS` (no --follow); return the parsed lines."""
    r = herald("tail", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def assert_usage_error(r, *mentions):
    """Exit status 2, nothing on stdout, exactly one stderr line that starts
    with "herald" and mentions each of `mentions`."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("herald"), lines[0]
    assert r.stderr.endswith("\n")
    for m in mentions:
        assert m in lines[0], (m, lines[0])


# ---- help and version ---------------------------------------------------


def test_help_lists_the_commands(herald):
    for flag in ("--help", "-h"):
        r = herald(flag)
        assert r.returncode == 0, r.stderr
        commands = re.findall(r"^\s+(\w+)\s+\S", r.stdout.split("Commands:")[1].split("\n\n")[0],
                              re.M)
        assert "publish" in commands and "tail" in commands, r.stdout
        # the settings table names every environment variable
        for var in ("HERALD_DATA_DIR", "HERALD_RETENTION", "HERALD_SYNC", "HERALD_LOG_LEVEL"):
            assert var in r.stdout


def test_version(herald):
    r = herald("--version")
    assert r.returncode == 0
    assert re.fullmatch(r"herald \d+\.\d+\.\d+\n", r.stdout), r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("cmd,options", [
    ("publish", ["--data", "--key", "--correlation-id", "--causation-id", "--source"]),
    ("tail", ["--group", "--from", "--type", "--follow"]),
])
def test_command_help(herald, data_dir, cmd, options):
    r = herald(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: herald {cmd}")
    for opt in options + ["--data-dir"]:
        assert opt in r.stdout, opt
    # asking for help touches nothing
    assert not data_dir.exists()


# ---- usage errors: status 2 and one line --------------------------------

USAGE_ERRORS = [
    # (argv, env, words the message must contain)
    (["bogus"], {}, ["bogus"]),
    (["tail", "--bogus"], {}, ["--bogus"]),
    (["tail", "-x"], {}, ["-x"]),
    (["publish", "task.created", "--data", "{}", "--nope", "1"], {}, ["--nope"]),
    (["tail", "--group"], {}, ["--group"]),
    (["publish", "task.created", "--data"], {}, ["--data"]),
    (["tail", "--from", "middle"], {}, ["middle"]),
    (["tail", "--from=yesterday"], {}, ["yesterday"]),
    (["tail", "--follow=yes"], {}, ["--follow"]),
    (["tail", "extra"], {}, ["extra"]),
    (["tail"], {"HERALD_RETENTION": "abc"}, ["HERALD_RETENTION", "abc"]),
    (["tail"], {"HERALD_RETENTION": "-5d"}, ["HERALD_RETENTION"]),
    (["tail"], {"HERALD_SYNC": "sometimes"}, ["HERALD_SYNC", "sometimes"]),
    (["tail"], {"HERALD_LOG_LEVEL": "loud"}, ["HERALD_LOG_LEVEL", "loud"]),
    (["publish", "task.created", "--data", "{}"], {"HERALD_SYNC": "x"}, ["HERALD_SYNC"]),
    (["tail", "--retention", "soon"], {}, ["--retention", "soon"]),
    (["tail", "--sync", "always"], {}, ["--sync", "always"]),
    (["tail", "--log-level", "chatty"], {}, ["--log-level", "chatty"]),
    (["tail", "--data-dir", ""], {}, ["--data-dir"]),
]


@pytest.mark.parametrize("argv,env,mentions", USAGE_ERRORS,
                         ids=[" ".join(a) + (" " + " ".join(f"{k}={v}" for k, v in e.items())
                                             if e else "") for a, e, _ in USAGE_ERRORS])
def test_usage_error(herald, data_dir, argv, env, mentions):
    r = herald(*argv, env=env)
    assert_usage_error(r, *mentions)
    # a usage error is found before anything is opened or created
    assert not data_dir.exists()


def test_flag_overrides_environment(herald, tmp_path):
    other = tmp_path / "other"
    r = herald("publish", "task.created", "--data", '{"task_id":"t-1"}', "--data-dir", other)
    assert r.returncode == 0, r.stderr
    assert (other / "bus.db").exists()
    assert tail_events(herald) == []  # HERALD_DATA_DIR holds nothing
    assert tail_events(herald, f"--data-dir={other}") == [json.loads(r.stdout)]


# ---- publish ------------------------------------------------------------


def test_publish_prints_exactly_the_envelope(herald):
    before = datetime.now(timezone.utc)
    r = herald("publish", "task.created", "--data",
               '{"task_id": "t-1", "title": "Write tests \u00e9\u2713", "priority": 2, '
               '"tags": ["a", "b"], "owner": {"id": "u-1"}, "done": false, "due": null}')
    after = datetime.now(timezone.utc)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and r.stdout.endswith("\n"), r.stdout

    pairs = ordered(lines[0])
    assert [k for k, _ in pairs] == ENVELOPE_KEYS
    ev = json.loads(lines[0])
    assert [k for k, _ in dict(pairs)["metadata"]] == METADATA_KEYS

    assert UUID7_RE.match(ev["event_id"]), ev["event_id"]
    assert ev["event_type"] == "task.created"
    assert ev["data"] == {"task_id": "t-1", "title": "Write tests \u00e9\u2713", "priority": 2,
                          "tags": ["a", "b"], "owner": {"id": "u-1"}, "done": False,
                          "due": None}

    assert TIME_RE.match(ev["occurred_at"]), ev["occurred_at"]
    at = datetime.strptime(ev["occurred_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc)
    assert (before - at).total_seconds() < 1.0 and (at - after).total_seconds() < 1.0, \
        (before, at, after)
    # a UUIDv7 carries its creation time (ms since the epoch) in its first 48 bits
    id_ms = int(ev["event_id"].replace("-", "")[:12], 16)
    assert abs(id_ms - at.timestamp() * 1000) < 5000, (id_ms, at)

    md = ev["metadata"]
    assert UUID_RE.match(md["correlation_id"]), md
    assert md["causation_id"] == md["correlation_id"]
    assert md["source"] == "herald-cli"


def test_publish_ids_are_fresh(publish):
    evs = [publish("task.updated", {"task_id": "t-1", "n": i}) for i in range(3)]
    ids = [e["event_id"] for e in evs] + [e["metadata"]["correlation_id"] for e in evs]
    assert len(set(ids)) == 6, ids


def test_publish_honours_metadata_options(publish):
    ev = publish("task.assigned", {"task_id": "t-2"}, "--correlation-id", "req-abc-123",
                 "--causation-id", "api-create-t-2", "--source", "task-api")
    assert ev["metadata"] == {"correlation_id": "req-abc-123", "causation_id": "api-create-t-2",
                              "source": "task-api"}
    # causation defaults to the correlation id given
    ev = publish("task.assigned", {"task_id": "t-2"}, "--correlation-id=req-xyz")
    assert ev["metadata"] == {"correlation_id": "req-xyz", "causation_id": "req-xyz",
                              "source": "herald-cli"}


REFUSALS = [
    # (argv after "publish", words the message must contain)
    (["task.create", "--data", "{}"], ["'task.created'"]),
    (["Task.Created", "--data", "{}"], ["Task.Created"]),
    (["task", "--data", "{}"], ["'task'"]),
    (["a.b.c", "--data", "{}"], ["a.b.c"]),
    (["task.created", "--data", "[1, 2]"], ["object"]),
    (["task.created", "--data", '"text"'], ["--data"]),
    (["task.created", "--data", '{"task_id": '], ["--data", "JSON"]),
    (["task.created", "--data", '{"a": 1, "a": 2}'], ["--data"]),
    (["task.created"], ["--data"]),
    (["--data", "{}"], ["EVENT_TYPE"]),
    (["task.created", "--data", "{}", "--correlation-id", "c" * 300], ["correlation"]),
    (["task.created", "--data", "{}", "--causation-id", ""], ["causation"]),
    (["task.created", "--data", "{}", "--correlation-id", "a\nb"], ["correlation"]),
    (["task.created", "--data", "{}", "--source", ""], ["source"]),
    (["task.created", "task.updated", "--data", "{}"], ["task.updated"]),
]


def _arg_id(a):
    a = a.replace("\n", "\\n")
    return a if len(a) <= 20 else f"{a[:8]}..({len(a)})"


@pytest.mark.parametrize("argv,mentions", REFUSALS,
                         ids=[" ".join(_arg_id(x) for x in a) for a, _ in REFUSALS])
def test_publish_refuses(herald, publish, argv, mentions):
    good = publish("task.created", {"task_id": "t-0"})
    r = herald("publish", *argv)
    assert_usage_error(r, *mentions)
    # nothing new in the log
    assert tail_events(herald) == [good]
    assert [rec[1] for rec in consume_all(herald.data_dir, pattern=".*")] == [1]


def test_publish_key_is_task_id(herald, publish):
    a = publish("task.created", {"task_id": "t-9", "title": "x"})
    b = publish("task.updated", {"task_id": "t-9"}, "--key", "explicit")
    c = publish("task.commented", {"task_id": 42})  # not a string: no key
    d = publish("email.sent", {"task_id": "t-9"})   # another topic
    recs = consume_all(herald.data_dir, pattern="^task-events$")
    assert [(t, k) for t, _, k, _ in recs] == [("task-events", "t-9"), ("task-events", "explicit"),
                                               ("task-events", "-")]
    assert [json.loads(v) for *_, v in recs] == [a, b, c]
    offsets = [o for _, o, _, _ in recs]
    assert offsets == sorted(offsets) and len(set(offsets)) == 3
    recs = consume_all(herald.data_dir, pattern="^email-events$")
    assert [(t, k, json.loads(v)) for t, _, k, v in recs] == [("email-events", "t-9", d)]


# ---- tail ---------------------------------------------------------------


def test_tail_prints_what_was_published_in_order(herald, publish):
    assert tail_events(herald) == []  # empty log (it did not exist): nothing, status 0
    published = [publish(t, {"task_id": f"t-{i}", "i": i}) for i, t in
                 enumerate(["task.created", "task.assigned", "task.completed", "task.created",
                            "task.deleted"])]
    r = herald("tail")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(published)
    for line, ev in zip(lines, published):
        assert [k for k, _ in ordered(line)] == ENVELOPE_KEYS
        assert json.loads(line) == ev
    # without a group nothing is committed: a second run prints it all again
    assert tail_events(herald) == published


def test_tail_reads_every_domain_topic(herald, publish):
    evs = [publish("task.created", {"task_id": "t-1"}),
           publish("email.sent", {"task_id": "t-1"}),
           publish("notification.sent", {"task_id": "t-1"}),
           publish("task.completed", {"task_id": "t-1"}),
           publish("reminder.due", {"task_id": "t-1"})]
    got = tail_events(herald)
    # all of them, once; order is kept within a topic
    assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in evs)
    assert [e for e in got if e["event_type"].startswith("task.")] == [evs[0], evs[3]]


def test_tail_type_filter(herald, publish):
    evs = [publish("task.created", {"task_id": "t-1"}),
           publish("email.sent", {"task_id": "t-1"}),
           publish("task.completed", {"task_id": "t-1"}),
           publish("taskforce.created", {"x": 1})]
    assert tail_events(herald, "--type", "task.*") == [evs[0], evs[2]]
    assert tail_events(herald, "--type", "*.sent") == [evs[1]]
    assert tail_events(herald, "--type", "*.created") in ([evs[0], evs[3]], [evs[3], evs[0]])
    assert tail_events(herald, "--type", "nothing.matches") == []


def test_tail_group_prints_only_new_events(herald, publish):
    first = [publish("task.created", {"task_id": f"t-{i}"}) for i in range(3)]
    assert tail_events(herald, "--group", "g") == first
    assert tail_events(herald, "--group", "g") == []
    second = [publish("task.updated", {"task_id": f"t-{i}"}) for i in range(2)]
    assert tail_events(herald, "--group", "g") == second
    assert tail_events(herald, "--group", "g") == []
    # a group is not global state: no group still sees everything
    assert tail_events(herald) == first + second


def test_tail_groups_are_independent(herald, publish):
    first = [publish("task.created", {"task_id": f"t-{i}"}) for i in range(3)]
    assert tail_events(herald, "--group", "a") == first
    assert tail_events(herald, "--group", "b") == first
    more = publish("task.completed", {"task_id": "t-0"})
    assert tail_events(herald, "--group", "b") == [more]
    assert tail_events(herald, "--group", "a") == [more]
    assert tail_events(herald, "--group", "c") == first + [more]


def test_tail_from_latest(herald, publish):
    [publish("task.created", {"task_id": f"t-{i}"}) for i in range(3)]
    assert tail_events(herald, "--from", "latest") == []
    assert tail_events(herald, "--group", "late", "--from", "latest") == []
    # --from only applies without a committed position
    assert tail_events(herald, "--group", "early") != []
    assert tail_events(herald, "--group", "early", "--from", "earliest") == []


def test_tail_group_from_latest_then_new_event(herald, publish):
    publish("task.created", {"task_id": "t-old"})
    assert tail_events(herald, "--group", "late", "--from", "latest") == []
    new = publish("task.created", {"task_id": "t-new"})
    assert tail_events(herald, "--group", "late", "--from", "latest") == [new]


def test_tail_follow_receives_new_event_and_stops_on_sigterm(herald, publish, procs):
    old = publish("task.created", {"task_id": "t-1"})
    tail = procs.herald("tail", "--follow", "--group", "f")
    _, line = tail.line(ARRIVAL_TIMEOUT)
    assert json.loads(line) == old
    time.sleep(0.3)  # let it reach its wait
    assert tail.poll() is None, "tail --follow exited on its own"
    for i in range(3):
        new = publish("task.updated", {"task_id": "t-1", "i": i})
        _, line = tail.line(ARRIVAL_TIMEOUT)
        assert line is not None and json.loads(line) == new
    tail.signal(signal.SIGTERM)
    assert tail.wait(timeout=10) == 0
    assert tail.rest() == []
    # what it printed was committed for its group
    assert tail_events(herald, "--group", "f") == []


def test_tail_follow_sigint(publish, procs):
    ev = publish("task.created", {"task_id": "t-1"})
    tail = procs.herald("tail", "--follow")
    _, line = tail.line(ARRIVAL_TIMEOUT)  # running, its handlers in place
    assert json.loads(line) == ev
    time.sleep(0.3)  # asleep in its wait
    tail.signal(signal.SIGINT)
    assert tail.wait(timeout=10) == 0
    assert tail.rest() == []


def _read_line(fd, timeout):
    """Read one line from a raw pipe descriptor, with a timeout."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no line within {timeout}s (got {buf!r})"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            assert chunk, f"end of stream before a line (got {buf!r})"
            buf += chunk
    return buf.decode()


def test_tail_stops_when_reader_goes_away(herald, publish, procs, data_dir):
    """`herald tail --follow | head -1`: once the reader has closed the pipe,
    the next event makes tail exit instead of hanging, and the event it could
    not write is not committed for its group (at-least-once)."""
    first = publish("task.created", {"task_id": "t-1"})
    p = procs.adopt(subprocess.Popen(
        [str(HERALD_BIN), "tail", "--follow", "--group", "h"], env=clean_env(data_dir),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    line = _read_line(p.stdout.fileno(), ARRIVAL_TIMEOUT)
    assert json.loads(line) == first
    p.stdout.close()  # like head -1 exiting
    second = publish("task.updated", {"task_id": "t-1"})
    try:
        rc = p.wait(timeout=ARRIVAL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("herald tail kept running after its reader went away")
    assert rc == 0, p.stderr.read()
    p.stderr.close()
    assert tail_events(herald, "--group", "h") == [second]


def test_tail_head_on_a_log_larger_than_the_pipe(herald, publish, procs, data_dir):
    """`herald tail --group g | head -1` on a log of ~1 MB: tail exits (no
    hang, no death by SIGPIPE) and, because its batch was not fully written,
    commits nothing, so the next run prints everything again."""
    evs = [publish("task.created", {"task_id": f"t-{i}", "pad": "x" * 100_000})
           for i in range(10)]
    p = procs.adopt(subprocess.Popen(
        [str(HERALD_BIN), "tail", "--group", "g"], env=clean_env(data_dir),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    fd = p.stdout.fileno()
    line = b""
    deadline = time.monotonic() + CMD_TIMEOUT
    while not line.endswith(b"\n"):  # read just the first line, like head -1
        assert time.monotonic() < deadline
        if select.select([fd], [], [], 1.0)[0]:
            chunk = os.read(fd, 4096)
            assert chunk
            line += chunk.split(b"\n", 1)[0] + (b"\n" if b"\n" in chunk else b"")
    p.stdout.close()
    try:
        rc = p.wait(timeout=CMD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("herald tail hung after its reader went away")
    assert rc == 0, (rc, p.stderr.read())
    p.stderr.close()
    assert json.loads(line) == evs[0]
    assert tail_events(herald, "--group", "g") == evs
