"""Fixtures for herald's end-to-end tests.

The tests run the real binaries the way a user (or another process) does:
`herald` (HERALD_BIN) and the bus test tool `busctl` (in HERALD_TOOLS). Both
default to the normal build in the repository; the Makefile points them at
build-asan/ for the sanitizer run, so every timeout is generous and no test
asserts on speed beyond "this finished / arrived at all".

Every process a test starts goes through the `procs` fixture, which stops it
(terminate, then kill, by its Popen object) when the test ends, pass or fail.
"""

import json
import os
import subprocess

import pytest

from helpers import BUSCTL, CMD_TIMEOUT, HERALD_BIN, Proc, clean_env


@pytest.fixture(scope="session", autouse=True)
def _binaries_exist():
    missing = [str(p) for p in (HERALD_BIN, BUSCTL) if not os.access(p, os.X_OK)]
    if missing:
        pytest.exit("missing executables (build first: make all build/tools/busctl): "
                    + ", ".join(missing), returncode=3)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def herald(data_dir):
    """herald(*args, env=None, input=None, timeout=CMD_TIMEOUT) runs the
    binary with HERALD_DATA_DIR=<tmp>/data and returns the CompletedProcess
    (text mode, stdout and stderr captured)."""

    def run(*args, env=None, input=None, timeout=CMD_TIMEOUT):
        return subprocess.run([str(HERALD_BIN), *map(str, args)], env=clean_env(data_dir, env),
                              input=input, capture_output=True, text=True, timeout=timeout)

    run.data_dir = data_dir
    return run


@pytest.fixture
def busctl():
    """Path of the busctl tool."""
    return str(BUSCTL)


@pytest.fixture
def publish(herald):
    """publish(type, data_dict, *more_args) -> the envelope dict printed."""

    def pub(event_type, data, *args):
        r = herald("publish", event_type, "--data", json.dumps(data), *args)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 1, r.stdout
        return json.loads(lines[0])

    return pub


class _Raw:
    def __init__(self, popen):
        self.popen = popen

    def stop(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=CMD_TIMEOUT)


@pytest.fixture
def procs(data_dir):
    """procs.herald(*args) / procs.busctl(*args) / procs.start(argv) start a
    background process (HERALD_DATA_DIR=<tmp>/data) and return a Proc. Every
    one of them is stopped when the test ends."""

    started = []

    class Starter:
        def start(self, argv, env=None):
            p = Proc([str(a) for a in argv], clean_env(data_dir, env))
            started.append(p)
            return p

        def herald(self, *args, env=None):
            return self.start([HERALD_BIN, *args], env)

        def busctl(self, *args, env=None):
            return self.start([BUSCTL, *args], env)

        def adopt(self, popen):
            """Stop this raw Popen at teardown too."""
            started.append(_Raw(popen))
            return popen

    yield Starter()
    for p in started:
        p.stop()


