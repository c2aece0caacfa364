"""The exec agent end to end: `herald agent exec --group G --types ... --
SCRIPT` with a real shell script that records, for every run, its stdin,
its environment and its open file descriptors under a directory, and
behaves according to the event's task id:

  tempfail-once   exit 75 on the first attempt, 0 afterwards
  fail3           exit 3
  sleep           start a `sleep` child, record both pids, and wait for it
                  (without reading stdin)
  ignore-stdin    never read stdin, exit 0
  (other)         exit 0
"""

import json
import os
import signal
import time

import pytest

from helpers import CMD_TIMEOUT, consume_all

SCRIPT = r"""#!/bin/sh
set -u
run="$RUNS/$HERALD_EVENT_ID.$HERALD_ATTEMPT"
env > "$run.env"
ls -l /proc/$$/fd/ > "$run.fds" 2>&1
echo "exec-script says hello for $HERALD_EVENT_ID"
case "${HERALD_TASK_ID:-}" in
ignore-stdin)
    : > "$run.stdin"; exit 0 ;;
sleep)
    echo $$ > "$run.pid"
    sleep 300 &
    echo $! > "$run.child"
    wait ;;
esac
cat > "$run.stdin"
case "${HERALD_TASK_ID:-}" in
tempfail-once)
    [ "$HERALD_ATTEMPT" = 1 ] && exit 75; exit 0 ;;
fail3)
    exit 3 ;;
esac
exit 0
"""


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    yield d
    # a failed test may leave a sleeping script behind: stop what it recorded
    for f in list(d.glob("*.pid")) + list(d.glob("*.child")):
        pid = int(f.read_text())
        try:
            with open(f"/proc/{pid}/environ", "rb") as e:
                ours = f"RUNS={d}".encode() in e.read().split(b"\0")
            if ours:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def script(tmp_path):
    p = tmp_path / "record.sh"
    p.write_text(SCRIPT)
    p.chmod(0o755)
    return p


def start_exec(procs, runs, script, types="task.created,task.completed", group="my-channel",
               **env):
    e = {"RUNS": str(runs), "HERALD_RETRY_BASE": "50ms", "HERALD_RETRY_MAX": "200ms"}
    e.update(env)
    return procs.herald("agent", "exec", "--group", group, "--types", types, "--", script,
                        env=e)


def wait_until(what, fetch, timeout=CMD_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)


def run_files(runs, suffix):
    return sorted(p.name for p in runs.iterdir() if p.name.endswith(suffix))


def wait_runs(runs, n):
    """Wait until n runs finished writing their stdin record."""
    return wait_until(f"{n} runs", lambda: (lambda f: f if len(f) >= n else None)(
        run_files(runs, ".stdin")))


def read_env(path):
    env = {}
    for line in path.read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep:
            env[k] = v
    return env


def dead_letters(herald):
    r = herald("dlq", "list", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def stop_clean(agent):
    """Stop the agent with SIGTERM: it exits 0, and (in the sanitizer build)
    without a leak or error report."""
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0, agent.err_lines
    assert not [line for line in agent.err_lines if "Sanitizer" in line], agent.err_lines


def handled_line(proc, event_id):
    return [line for line in list(proc.err_lines)
            if line.startswith(tuple("0123456789")) and f"[{event_id}] done" in line]


def child_pids(pid):
    """Pids whose parent is pid (zombies included)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append((int(entry), fields[0]))
    return out


def gone_or_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_event_on_stdin_and_env(procs, herald, publish, runs, script, data_dir):
    created = publish("task.created", {"task_id": "t-1", "title": "Review quarterly report",
                                       "owner_id": "user-456", "priority": 2},
                      "--correlation-id", "req-abc-123", "--causation-id", "api-create-t-1")
    publish("task.updated", {"task_id": "t-1", "title": "x", "owner_id": "u", "priority": 2,
                             "version": 2, "changes": {}})
    no_task = publish("task.completed", {"title": "no task id"}, "--key", "k")
    due = publish("reminder.due", {"task_id": "t-9", "reminder_id": "r-1"})
    agent = start_exec(procs, runs, script, types="task.created,task.completed,reminder.due",
                       HERALD_TASK_ID="stale-value", HERALD_EVENT_ID="stale-id")
    wait_runs(runs, 3)
    for ev in (created, no_task, due):
        wait_until("done line", lambda: handled_line(agent, ev["event_id"]))
    assert len(run_files(runs, ".stdin")) == 3  # task.updated ran nothing

    raw = {json.loads(v)["event_id"]: v
           for _, _, _, v in consume_all(data_dir, pattern="^(task|reminder)-events$")}
    for ev in (created, no_task, due):
        base = runs / f"{ev['event_id']}.1"
        # stdin is the record exactly as stored
        assert (base.parent / (base.name + ".stdin")).read_text() == raw[ev["event_id"]]
        env = read_env(base.parent / (base.name + ".env"))
        assert env["HERALD_EVENT_TYPE"] == ev["event_type"]
        assert env["HERALD_EVENT_ID"] == ev["event_id"]
        assert env["HERALD_CORRELATION_ID"] == ev["metadata"]["correlation_id"]
        assert env["HERALD_CAUSATION_ID"] == ev["metadata"]["causation_id"]
        assert env["HERALD_EVENT_SOURCE"] == "herald-cli"
        assert env["HERALD_ATTEMPT"] == "1"
        assert env["RUNS"] == str(runs)  # herald's own environment is passed on
        fds = (base.parent / (base.name + ".fds")).read_text()
        assert "bus.db" not in fds, fds  # none of herald's descriptors leak

    env = read_env(runs / f"{created['event_id']}.1.env")
    assert env["HERALD_CORRELATION_ID"] == "req-abc-123"
    assert env["HERALD_CAUSATION_ID"] == "api-create-t-1"
    assert env["HERALD_TASK_ID"] == "t-1"
    assert read_env(runs / f"{due['event_id']}.1.env")["HERALD_TASK_ID"] == "t-9"
    # no task id in the event: the inherited stale value is removed
    assert "HERALD_TASK_ID" not in read_env(runs / f"{no_task['event_id']}.1.env")

    # the command's stdout goes to herald's stderr, not to herald's stdout
    said = f"exec-script says hello for {created['event_id']}"
    wait_until("script output", lambda: said in agent.err_lines)
    assert dead_letters(herald) == []
    stop_clean(agent)
    assert not any("exec-script" in line for line in agent.rest())


def test_exit_75_retries_then_succeeds(procs, herald, publish, runs, script):
    ev = publish("task.created", {"task_id": "tempfail-once", "title": "t", "owner_id": "u",
                                  "priority": 1})
    agent = start_exec(procs, runs, script)
    wait_until("done line", lambda: handled_line(agent, ev["event_id"]))
    assert run_files(runs, ".stdin") == [f"{ev['event_id']}.1.stdin", f"{ev['event_id']}.2.stdin"]
    assert any("exit status 75" in line and "retrying" in line for line in agent.err_lines)
    assert dead_letters(herald) == []


def test_exit_3_dead_letters(procs, herald, publish, runs, script):
    bad = publish("task.created", {"task_id": "fail3", "title": "t", "owner_id": "u",
                                   "priority": 1})
    good = publish("task.completed", {"task_id": "t-2", "title": "t", "owner_id": "u",
                                      "priority": 1})
    agent = start_exec(procs, runs, script)
    wait_until("done line", lambda: handled_line(agent, good["event_id"]))
    dlq = wait_until("dead letter", lambda: dead_letters(herald))
    assert len(dlq) == 1
    assert dlq[0]["event_id"] == bad["event_id"]
    assert dlq[0]["group"] == "my-channel"
    assert dlq[0]["dlq_topic"] == "task-events.dlq"
    assert dlq[0]["attempts"] == 1
    assert dlq[0]["reason"] == "exit status 3"
    # a permanent failure is not retried
    assert run_files(runs, ".stdin") == sorted([f"{bad['event_id']}.1.stdin",
                                                f"{good['event_id']}.1.stdin"])


def test_time_limit_kills_the_process_group(procs, herald, publish, runs, script):
    # more input than a pipe holds, never read: writing it must not keep
    # herald from enforcing the limit
    ev = publish("task.created", {"task_id": "sleep", "title": "x" * 100_000, "owner_id": "u",
                                  "priority": 1})
    agent = start_exec(procs, runs, script, HERALD_CALL_TIMEOUT="1s", HERALD_RETRY_ATTEMPTS="2")
    dlq = wait_until("dead letter", lambda: dead_letters(herald))
    assert len(dlq) == 1
    assert dlq[0]["event_id"] == ev["event_id"]
    assert dlq[0]["attempts"] == 2  # a time-out is retried ...
    assert dlq[0]["reason"] == "gave up after 2 attempts: timed out after 1000 ms"
    for attempt in (1, 2):
        base = runs / f"{ev['event_id']}.{attempt}"
        script_pid = int((base.parent / (base.name + ".pid")).read_text())
        sleep_pid = int((base.parent / (base.name + ".child")).read_text())
        # ... the script was killed and reaped by herald, its child killed too
        assert gone_or_zombie(script_pid)
        assert script_pid not in [p for p, _ in child_pids(agent.pid)]
        wait_until(f"sleep {sleep_pid} killed", lambda: gone_or_zombie(sleep_pid))
    assert child_pids(agent.pid) == []  # no zombies left behind
    stop_clean(agent)


def test_command_that_ignores_stdin(procs, herald, publish, runs, script):
    # an event larger than a pipe's buffer (64 KiB), to a command that never reads it
    ev = publish("task.created", {"task_id": "ignore-stdin", "title": "x" * 100_000,
                                  "owner_id": "u", "priority": 1})
    after = publish("task.created", {"task_id": "t-2", "title": "next", "owner_id": "u",
                                     "priority": 1})
    agent = start_exec(procs, runs, script, HERALD_CALL_TIMEOUT="20s")
    wait_until("done line", lambda: handled_line(agent, ev["event_id"]))
    wait_until("done line", lambda: handled_line(agent, after["event_id"]))
    assert dead_letters(herald) == []
    assert child_pids(agent.pid) == []
    stop_clean(agent)


def test_killed_by_a_signal_dead_letters(procs, herald, publish, tmp_path):
    cmd = tmp_path / "abort.sh"
    cmd.write_text("#!/bin/sh\ncat >/dev/null\nkill -ABRT $$\n")
    cmd.chmod(0o755)
    ev = publish("task.created", {"task_id": "t-1", "title": "t", "owner_id": "u",
                                  "priority": 1})
    start_exec(procs, tmp_path, cmd)
    dlq = wait_until("dead letter", lambda: dead_letters(herald))
    assert dlq[0]["event_id"] == ev["event_id"]
    assert dlq[0]["reason"] == f"killed by signal {int(signal.SIGABRT)} (SIGABRT)"


@pytest.mark.parametrize("args, message", [
    (["--group", "audit-log", "--types", "task.created", "--", "true"], "audit-log"),
    (["--group", "g", "--types", "task.created", "--", "herald-no-such-cmd"],
     "not found in PATH"),
    (["--group", "g", "--types", "task", "--", "true"], "--types"),
    (["--group", "g", "--types", "task.created"], "COMMAND"),
])
def test_bad_arguments_refused(herald, args, message):
    r = herald("agent", "exec", *args)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
