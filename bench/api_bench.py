#!/usr/bin/python3
"""Task API benchmark (make bench): POST /tasks with wrk.

For each server -- a libmicrohttpd server that does no work (the ceiling on
this machine, bench/noop_server.c), the same server answering only once the
request body is fdatasync'ed in a group commit (the ceiling of any Task API
that answers after a durable commit, bench/durable_noop.c), `herald api`
(the Task API alone) and `herald up` (the API and every agent, all handling
what wrk creates), both with synchronous=FULL -- runs wrk at 1 and 32
keep-alive connections, RUNS times each, the servers taking turns, and
prints the median requests/s, p50 and p99 latency with every run's value,
and herald's share of both ceilings (of the medians, and run by run). Then
the resident memory of `herald up` (peak and current). Each herald run
starts on a fresh data directory, and the durable no-op writes into one on
the same disk.

Usage: api_bench.py BUILD_DIR [--runs N] [--seconds S]
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, conns, seconds):
    threads = 1 if conns == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
         "-s", os.path.join(HERE, "post_task.lua"), f"http://127.0.0.1:{port}/tasks"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses:\n{out}")
    return rps, to_ms(*p50.groups()), to_ms(*p99.groups())


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def run_server(kind, build, port, data, durable_args=()):
    """Start a server ("noop", "durable" with durable_noop's durable_args,
    or a herald command: "api", "up") on port and wait until it listens."""
    if kind == "noop":
        cmd = [os.path.join(build, "bench", "noop_server"), str(port)]
        env = os.environ.copy()
    elif kind == "durable":
        cmd = [os.path.join(build, "bench", "durable_noop"), str(port), "--dir", data]
        cmd += list(durable_args)
        env = os.environ.copy()
    else:
        cmd = [os.path.join(build, "herald"), kind]
        env = dict(os.environ, HERALD_LISTEN=f"127.0.0.1:{port}", HERALD_DATA_DIR=data,
                   HERALD_SYNC="full", HERALD_LOG_LEVEL="warn")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL if kind == "durable" else None)
    wait_port(port)
    return proc


def report(name, values, unit, fmt="{:.0f}"):
    med = statistics.median(values)
    runs = " ".join(fmt.format(v) for v in values)
    print(f"{name:<34} median {fmt.format(med):>10} {unit:<6} runs: {runs}", flush=True)
    return med


def one_run(kind, build, conns, seconds):
    """One wrk run against a fresh server; (rps, p50, p99, (peak, rss) or None)."""
    data = tempfile.mkdtemp(prefix="herald-bench-")
    port = free_port()
    proc = run_server(kind, build, port, data)
    try:
        r, a, b = wrk(port, conns, seconds)
        mem = rss_kib(proc.pid) if kind == "up" and conns == 32 else None
    finally:
        stop(proc)
        shutil.rmtree(data, ignore_errors=True)
    return r, a, b, mem


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 5
    seconds = int(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 5
    print(f"# Task API benchmark: wrk POST /tasks, {seconds} s per run, {runs} runs, medians")
    print("# the servers take turns run by run (no-op, durable no-op, api, up, no-op, ...), so a change in")
    print("# the machine's load during the benchmark weighs on all of them alike")
    kinds = ("noop", "durable", "api", "up")
    results = {}
    peak = []
    for conns in (1, 32):
        for _ in range(runs):
            for kind in kinds:
                r, a, b, mem = one_run(kind, build, conns, seconds)
                results.setdefault((kind, conns), []).append((r, a, b))
                if mem:
                    peak.append(mem)
    medians = {}
    for kind in kinds:
        for conns in (1, 32):
            rps, p50, p99 = zip(*results[(kind, conns)])
            label = f"{kind} c={conns}"
            medians[(kind, conns)] = report(f"{label} requests/s", rps, "req/s")
            report(f"{label} p50", p50, "ms", "{:.2f}")
            report(f"{label} p99", p99, "ms", "{:.2f}")
    for kind, ceiling in (("durable", "noop"), ("api", "noop"), ("up", "noop"),
                          ("api", "durable"), ("up", "durable")):
        for conns in (1, 32):
            ratio = medians[(kind, conns)] / medians[(ceiling, conns)]
            pairs = [h[0] / n[0] for h, n in zip(results[(kind, conns)], results[(ceiling, conns)])]
            name = "durable no-op" if kind == "durable" else f"herald {kind}"
            print(f"{name} / {ceiling} ceiling at c={conns}: {ratio:.0%} (run by run: "
                  + " ".join(f"{x:.0%}" for x in pairs) + ")")
    # up: the API and every agent (email in .eml mode, slack log-only, audit,
    # scheduler) handling what wrk creates
    report("herald up peak RSS (VmHWM)", [p[0] / 1024 for p in peak], "MiB", "{:.1f}")
    report("herald up RSS after the run", [p[1] / 1024 for p in peak], "MiB", "{:.1f}")


if __name__ == "__main__":
    main()
