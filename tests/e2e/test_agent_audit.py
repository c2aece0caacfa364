"""The audit agent end to end: `herald agent audit` logs every event of
every <domain>-events topic exactly once, as a hash-chained line of
AUDIT_DIR/audit-YYYY-MM-DD.jsonl; `herald audit verify` passes on the
untouched log and names the first bad line of a tampered one; a kill -9 in
the middle of a burst loses no line and duplicates none.

The files are also checked here by a second, independent implementation of
the format documented in src/agents/audit_log.h (Python's hashlib), and a
log written by that implementation must pass `herald audit verify`."""

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import time
from collections import Counter

import pytest

from helpers import CMD_TIMEOUT, HERALD_TOOLS

EVGEN = HERALD_TOOLS / "evgen"
GENESIS = "0" * 64
LOGGED = re.compile(r"Audit logged: (\S+) \[([0-9a-f-]{36})\]")
ALREADY = re.compile(r"audit: \S+ \[([0-9a-f-]{36})\] is already in the audit log")
NAME = re.compile(r"^audit-(\d{4}-\d\d-\d\d)\.jsonl$")


def wait_for(predicate, what, timeout=CMD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def audit_files(adir):
    return sorted(p for p in adir.iterdir() if NAME.match(p.name)) if adir.exists() else []


def split_lines(data):
    """Lines of a file as bytes; the last one keeps no newline if it had none."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
        return [p + b"\n" for p in parts]
    return [p + b"\n" for p in parts[:-1]] + [parts[-1]]


def line_hash(body):
    return hashlib.sha256(body).hexdigest()


def check_log(adir):
    """The independent verifier: returns the event lines' parsed dicts in
    order and the number of sealed damaged tails. Raises AssertionError
    naming the file and line of the first problem."""
    events, repairs = [], 0
    last_hash, last_seq, last_at = GENESIS, 0, ""
    damage = b""
    for path in audit_files(adir):
        day = NAME.match(path.name).group(1)
        for no, raw in enumerate(split_lines(path.read_bytes()), 1):
            where = f"{path.name} line {no}"
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if line is None or not raw.endswith(b"\n"):
                damage += raw
                continue
            text = raw[:-1]
            assert "repair" in line or not damage, f"{where}: unsealed damage before it"
            if damage:
                assert line["repair"] == {"bytes": len(damage),
                                          "sha256": hashlib.sha256(damage).hexdigest()}, where
                damage, repairs = b"", repairs + 1
            keys = list(line)
            assert keys in (["logged_at", "event", "seq", "prev", "hash"],
                            ["logged_at", "repair", "seq", "prev", "hash"]), (where, keys)
            suffix = b',"hash":"' + line["hash"].encode() + b'"}'
            assert text.endswith(suffix), where
            assert line_hash(text[:-len(suffix)]) == line["hash"], f"{where}: hash"
            assert line["seq"] == last_seq + 1, f"{where}: seq {line['seq']} after {last_seq}"
            assert line["prev"] == last_hash, f"{where}: prev"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["logged_at"])
            assert line["logged_at"] >= last_at, f"{where}: logged_at goes back"
            if "event" in line:
                assert line["logged_at"][:10] == day, f"{where}: in the wrong file"
                events.append(line["event"])
            last_hash, last_seq, last_at = line["hash"], line["seq"], line["logged_at"]
    assert not damage, "unsealed damage at the end of the log"
    return events, repairs


def verify(herald, *args, env=None):
    return herald("audit", "verify", *args, env=env)


def logged(agent):
    """(type, event_id) of the "Audit logged" lines the agent printed."""
    return [m.groups() for m in map(LOGGED.search, list(agent.err_lines)) if m]


def stop(agent):
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0, agent.err_lines[-20:]


def run_agent_until(procs, count, env=None):
    """Start the audit agent, wait for `count` "Audit logged" lines, stop it;
    returns the Proc."""
    agent = procs.herald("agent", "audit", env=env)
    wait_for(lambda: len(logged(agent)) >= count or agent.poll() is not None,
             f"{count} audit lines")
    assert agent.poll() is None, agent.err_lines
    stop(agent)
    return agent


# ---- logging --------------------------------------------------------------


def test_every_event_is_logged_once_as_received(herald, publish, procs, data_dir):
    published = [
        publish("task.created", {"task_id": "t-1", "title": "Review quarterly report",
                                 "owner_id": "user-456", "priority": 2}),
        publish("task.created", {"task_id": "t-2", "title": "Prüfung ✓ \"quoted\"",
                                 "owner_id": "u-2", "priority": 1}),
        publish("task.completed", {"task_id": "t-1", "title": "Review quarterly report",
                                   "owner_id": "user-456", "priority": 2}),
        publish("reminder.due", {"reminder_id": "r-1", "task_id": "t-2", "owner_id": "u-2",
                                 "title": "x", "due_at": "2030-01-01T00:00:00.000Z",
                                 "remind_at": "2030-01-01T00:00:00.000Z"}),
        publish("notification.sent", {"task_id": "t-1", "channel": "email",
                                      "recipient": "user-456@company.com", "subject": "s",
                                      "event_type": "task.created"}),
        publish("invoice.paid", {"invoice_id": "i-9", "amount": 12.5}, "--key", "i-9"),
    ]
    agent = run_agent_until(procs, len(published))
    # one line per event, in the original design's words, with its correlation id
    assert sorted(logged(agent)) == sorted((e["event_type"], e["event_id"]) for e in published)
    for e in published:
        line = next(l for l in agent.err_lines if e["event_id"] in l)
        assert line.endswith(f"cid={e['metadata']['correlation_id']}"), line

    adir = data_dir / "audit"
    events, repairs = check_log(adir)
    assert repairs == 0
    assert [e["event_id"] for e in events].count(published[0]["event_id"]) == 1
    assert sorted(json.dumps(e, sort_keys=True) for e in events) == \
        sorted(json.dumps(e, sort_keys=True) for e in published)  # the envelope as received
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert (adir / f"audit-{day}.jsonl").exists() or len(audit_files(adir)) == 2

    r = verify(herald)
    assert r.returncode == 0, r.stderr
    last = json.loads(audit_files(adir)[-1].read_text().splitlines()[-1])
    assert "6 events" in r.stdout and f"seq 6 hash {last['hash']}" in r.stdout, r.stdout

    # a restart continues the chain and logs only what is new
    more = [publish("task.deleted", {"task_id": f"t-{i}", "title": "d", "owner_id": "u",
                                     "priority": 3}) for i in range(3)]
    agent = run_agent_until(procs, 3)
    assert sorted(logged(agent)) == sorted((e["event_type"], e["event_id"]) for e in more)
    events, _ = check_log(adir)
    ids = [e["event_id"] for e in events]
    assert len(ids) == 9 and set(ids) == {e["event_id"] for e in published + more}
    r = verify(herald)
    assert r.returncode == 0 and "9 events" in r.stdout, (r.stdout, r.stderr)


def test_audit_dir_setting(herald, publish, procs, data_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "audit"
    env = {"HERALD_AUDIT_DIR": str(elsewhere)}
    for i in range(2):
        publish("task.created", {"task_id": f"t-{i}", "title": "a", "owner_id": "u",
                                 "priority": 1})
    run_agent_until(procs, 2, env=env)
    assert len(check_log(elsewhere)[0]) == 2
    assert not (data_dir / "audit").exists()
    r = verify(herald, env=env)
    assert r.returncode == 0 and "2 events" in r.stdout, r.stderr
    r = verify(herald, "--dir", elsewhere)
    assert r.returncode == 0 and "2 events" in r.stdout, r.stderr
    r = verify(herald)  # the default, DATA_DIR/audit, does not exist
    assert r.returncode == 1 and "cannot open audit directory" in r.stderr, r.stderr


def test_usage_errors(herald):
    for args, words in [(("audit",), "missing subcommand"),
                        (("audit", "check"), "unknown subcommand 'check'"),
                        (("audit", "verify", "extra"), "unexpected argument 'extra'"),
                        (("audit", "verify", "--bogus"), "unknown option '--bogus'"),
                        (("audit", "verify", "--dir"), "needs a value")]:
        r = herald(*args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
    r = herald("audit", "--help")
    assert r.returncode == 0 and "usage: herald audit verify [--dir D]" in r.stdout


# ---- tampering ------------------------------------------------------------


def rehash(line):
    """Recompute the hash of a line (bytes without "\\n") as an attacker would."""
    text = line[:-75]
    return text + b',"hash":"' + line_hash(text).encode() + b'"}'


def relink(lines):
    """Rewrite a list of parsed lines into a consistent chain (the second
    implementation of the writer); returns the encoded lines."""
    out, prev = [], GENESIS
    for seq, line in enumerate(lines, 1):
        body = (b'{"logged_at":"' + line["logged_at"].encode() + b'","event":' +
                json.dumps(line["event"], separators=(",", ":"), ensure_ascii=False).encode() +
                b',"seq":' + str(seq).encode() + b',"prev":"' + prev.encode() + b'"')
        prev = line_hash(body)
        out.append(body + b',"hash":"' + prev.encode() + b'"}\n')
    return out


def test_verify_names_the_first_bad_line(herald, publish, procs, data_dir, tmp_path):
    for i in range(8):
        publish("task.created", {"task_id": f"t-{i}", "title": f"Task {i}", "owner_id": "u",
                                 "priority": 2})
    run_agent_until(procs, 8)
    pristine = data_dir / "audit"
    files = audit_files(pristine)
    if len(files) != 1:
        pytest.skip("the events were logged across midnight UTC")
    name = files[0].name
    lines = split_lines(files[0].read_bytes())
    assert len(lines) == 8 and verify(herald, "--dir", pristine).returncode == 0

    def edit(ls):
        ls[2] = ls[2].replace(b'"Task 2"', b'"Task X"')
        return ls

    def edit_and_rehash(ls):
        ls[2] = rehash(ls[2].replace(b'"Task 2"', b'"Task X"')[:-1]) + b"\n"
        return ls

    cases = [
        ("edit", edit, 3, "hash mismatch"),
        ("edit-rehash", edit_and_rehash, 4, "chain broken"),
        ("insert", lambda ls: ls[:5] + [ls[1]] + ls[5:], 6, "out of order"),
        ("delete", lambda ls: ls[:3] + ls[4:], 4, "gap: seq 5 follows seq 3"),
        ("swap", lambda ls: ls[:4] + [ls[5], ls[4]] + ls[6:], 5, "reordered"),
        ("truncate", lambda ls: ls[:6] + [ls[6][:50]], 7, "no newline at the end"),
        ("garbage", lambda ls: ls[:1] + [b"not json\n"] + ls[1:], 2, "not valid JSON"),
    ]
    for label, mutate, line_no, words in cases:
        copy = tmp_path / label
        shutil.copytree(pristine, copy)
        (copy / name).write_bytes(b"".join(mutate(list(lines))))
        r = verify(herald, "--dir", copy)
        assert r.returncode == 1, (label, r.stdout)
        assert f"{copy}/{name} line {line_no}: " in r.stderr and words in r.stderr, \
            (label, r.stderr)
        with pytest.raises(AssertionError):
            check_log(copy)  # the second implementation agrees


def test_chain_across_day_files(herald, publish, procs, data_dir, tmp_path):
    """A two-day log written by the independent implementation passes
    verify; removing the first day, or the first line of the second day,
    is caught at the second file's first line."""
    for i in range(6):
        publish("task.created", {"task_id": f"t-{i}", "title": f"Task {i}", "owner_id": "u",
                                 "priority": 2})
    run_agent_until(procs, 6)
    parsed = [json.loads(l) for f in audit_files(data_dir / "audit") for l in
              f.read_text().splitlines()]
    assert len(parsed) == 6
    for line in parsed[:3]:  # the first three a day earlier
        at = datetime.datetime.strptime(line["logged_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
        line["logged_at"] = (at - datetime.timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    encoded = relink(parsed)
    days = [p["logged_at"][:10] for p in parsed]

    def write(dir_, keep):
        dir_.mkdir()
        for i, line in enumerate(encoded):
            if keep(i):
                with open(dir_ / f"audit-{days[i]}.jsonl", "ab") as f:
                    f.write(line)

    good = tmp_path / "good"
    write(good, lambda i: True)
    assert len(audit_files(good)) == 2
    r = verify(herald, "--dir", good)
    assert r.returncode == 0 and "2 files, 6 lines, 6 events" in r.stdout, (r.stdout, r.stderr)
    assert check_log(good)[0] == [p["event"] for p in parsed]

    second = f"audit-{days[3]}.jsonl"
    for label, keep, words in [("no-first-day", lambda i: i >= 3, "the chain starts at seq 4"),
                               ("no-first-line", lambda i: i != 3, "gap: seq 5 follows seq 3")]:
        d = tmp_path / label
        write(d, keep)
        r = verify(herald, "--dir", d)
        assert r.returncode == 1 and f"{d}/{second} line 1: " in r.stderr and \
            words in r.stderr, (label, r.stderr)


# ---- crash ----------------------------------------------------------------


def size_of(adir):
    return sum(p.stat().st_size for p in audit_files(adir))


def kill_right_after_a_write(agent, adir, timeout=CMD_TIMEOUT):
    """kill -9 the agent the moment its audit files grow: after its write,
    most likely before its fsync and offset commit finished."""
    base = size_of(adir)
    deadline = time.monotonic() + timeout
    while size_of(adir) <= base:
        assert agent.poll() is None, agent.err_lines[-20:]
        assert time.monotonic() < deadline, "the agent wrote nothing"
        time.sleep(0.0002)
    agent.kill9()


def test_kill9_in_a_burst_loses_and_duplicates_nothing(herald, procs, data_dir):
    if not os.access(EVGEN, os.X_OK):
        pytest.fail(f"missing {EVGEN} (make all {EVGEN})")
    first = procs.start([EVGEN, data_dir, "--count", 300, "--batch", 100, "--tag", "pre"])
    assert first.wait() == 0, first.err_lines
    burst = procs.start([EVGEN, data_dir, "--count", 3000, "--batch", 50, "--sleep-us", 15000,
                         "--tag", "burst"])
    burst.line()  # it is publishing
    adir = data_dir / "audit"
    env = {"HERALD_LOG_LEVEL": "debug"}
    skipped = 0  # lines found in the file after a crash and not written again
    kills = 0
    while kills < 3 or (skipped == 0 and kills < 12):
        agent = procs.herald("agent", "audit", env=env)
        kill_right_after_a_write(agent, adir)
        kills += 1
        skipped += sum(1 for l in agent.err_lines if ALREADY.search(l))
    assert burst.wait(timeout=120) == 0, burst.err_lines

    r = herald("tail")
    assert r.returncode == 0, r.stderr
    published = [json.loads(l)["event_id"] for l in r.stdout.splitlines()]
    assert len(published) == 3300 and len(set(published)) == 3300

    agent = procs.herald("agent", "audit", env=env)

    def all_logged():
        try:
            return len(check_log(adir)[0]) >= len(published)
        except AssertionError:
            return False  # a write in progress, or a torn tail not sealed yet

    wait_for(all_logged, "every event in the audit log", timeout=120)
    stop(agent)
    skipped += sum(1 for l in agent.err_lines if ALREADY.search(l))

    events, repairs = check_log(adir)
    counts = Counter(e["event_id"] for e in events)
    assert set(counts) == set(published), "lost or foreign lines"
    assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1][:5]
    r = verify(herald)
    assert r.returncode == 0, r.stderr
    assert "3300 events" in r.stdout, r.stdout
    print(f"{kills} kills, {skipped} lines found after a crash and skipped, "
          f"{repairs} torn tails sealed; {r.stdout.strip()}")
    # the crash window (lines written, offsets not committed) was hit
    assert skipped > 0
