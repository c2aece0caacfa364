"""Helpers shared by the end-to-end tests: where the binaries are, a clean
environment for children, a line-reading process wrapper and parsers of
busctl's output. Fixtures live in conftest.py."""

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERALD_BIN = Path(os.environ.get("HERALD_BIN") or REPO / "build" / "herald")
HERALD_TOOLS = Path(os.environ.get("HERALD_TOOLS") or REPO / "build" / "tools")
BUSCTL = HERALD_TOOLS / "busctl"

# One command that should take milliseconds; generous for ASan and loaded CI.
CMD_TIMEOUT = 60.0


def clean_env(data_dir=None, extra=None):
    """The environment for a child: ours without any HERALD_* setting, plus
    HERALD_DATA_DIR=data_dir (if given) and `extra` (None removes a key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    if data_dir is not None:
        env["HERALD_DATA_DIR"] = str(data_dir)
    # Sanitizer builds: report with stacks; ignored by the normal build.
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class Proc:
    """A started child with its stdout and stderr read line by line by
    background threads, so a test can wait for a line with a timeout.
    Output is decoded as UTF-8 with backslash escapes for other bytes: a
    server's log echoes client input, and a strict decoder would end the
    reader thread, fill the pipe and block the server in write(2)."""

    def __init__(self, argv, env, stdin=subprocess.DEVNULL):
        self.argv = argv
        self.popen = subprocess.Popen(argv, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1,
                                      encoding="utf-8", errors="backslashreplace")
        self.started = time.monotonic()
        self.ended = None
        self.out = queue.Queue()
        self.err = queue.Queue()
        self.err_lines = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.out, None),
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.err,
                                                      self.err_lines), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, q, keep):
        try:
            for line in stream:
                line = line.rstrip("\n")
                if keep is not None:
                    keep.append(line)
                q.put((time.monotonic(), line))
        except (ValueError, OSError):
            pass  # the stream was closed by the test
        q.put((time.monotonic(), None))

    @property
    def pid(self):
        return self.popen.pid

    def line(self, timeout=CMD_TIMEOUT, stream="out"):
        """The next line of stdout (or stderr) as (monotonic time, text);
        text is None at end of stream. Raises AssertionError on timeout."""
        q = self.out if stream == "out" else self.err
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {stream} line from {self.argv[:3]} within {timeout}s")

    def wait_stderr(self, text, timeout=CMD_TIMEOUT):
        """Wait for a stderr line equal to text."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no '{text}' on stderr of {self.argv[:3]}: {self.err_lines}"
            _, line = self.line(left, stream="err")
            assert line is not None, f"stderr closed before '{text}': {self.err_lines}"
            if line == text:
                return

    def wait(self, timeout=CMD_TIMEOUT):
        """Wait for the exit; returns the status. AssertionError on timeout."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tail = list(self.err_lines)[-20:]
            raise AssertionError(f"{self.argv[:3]} did not exit within {timeout}s; "
                                 f"last stderr lines: {tail}")
        if self.ended is None:
            self.ended = time.monotonic()
        for t in self._threads:
            t.join(timeout=timeout)
        return rc

    def rest(self, timeout=CMD_TIMEOUT):
        """All remaining stdout lines until end of stream (the process must
        exit or be killed for this to return)."""
        lines = []
        deadline = time.monotonic() + timeout
        while True:
            _, line = self.line(max(0.01, deadline - time.monotonic()))
            if line is None:
                return lines
            lines.append(line)

    def poll(self):
        rc = self.popen.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def signal(self, sig):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=CMD_TIMEOUT)

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=CMD_TIMEOUT)
        for t in self._threads:
            t.join(timeout=5)


# ---- helpers for busctl output ---------------------------------------------


def run_busctl(*args, timeout=CMD_TIMEOUT):
    """Run busctl to completion; returns CompletedProcess (text)."""
    return subprocess.run([str(BUSCTL), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=clean_env())


def parse_consumed(lines):
    """busctl consume lines "<topic> <offset> <key> <value>" -> list of
    (topic, offset, key, value_text)."""
    out = []
    for line in lines:
        topic, offset, key, value = line.split(" ", 3)
        out.append((topic, int(offset), key, value))
    return out


def parse_committed(lines):
    """busctl produce lines "committed <b> <first> <last>" -> list of
    (batch, first, last)."""
    out = []
    for line in lines:
        word, b, first, last = line.split()
        assert word == "committed", line
        out.append((int(b), int(first), int(last)))
    return out


def consume_all(data_dir, *, topic=None, pattern=None, group="-", idle_ms=300, extra=()):
    """Read back what the log holds with busctl consume; returns parsed
    records. Asserts the tool succeeded."""
    args = ["consume", data_dir, "--group", group, "--idle-exit-ms", idle_ms, *extra]
    if topic:
        args += ["--topic", topic]
    if pattern:
        args += ["--pattern", pattern]
    r = run_busctl(*args)
    assert r.returncode == 0, r.stderr
    return parse_consumed(r.stdout.splitlines())


def init_log(data_dir):
    """Create the event log in data_dir with one short-lived process, so that
    processes started together afterwards find it ready. (Processes opening a
    FRESH data directory at the same moment can fail with 'database is
    locked'; test_multiprocess.py records that bug on its own.)"""
    r = run_busctl("consume", data_dir, "--group", "-", "--topic", "init-events",
                   "--idle-exit-ms", 0)
    assert r.returncode == 0, r.stderr
    assert (Path(data_dir) / "bus.db").exists()


def is_sanitizer_build(path):
    """True if the executable at path was built with AddressSanitizer."""
    try:
        return b"__asan_init" in Path(path).read_bytes()
    except OSError:
        return False


def wait_for(what, cond, timeout=CMD_TIMEOUT, interval=0.1):
    """Poll cond() until it returns something true; returns it.
    AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
