#!/usr/bin/python3
"""The durable ceiling in every shape: is there a faster way to answer after an fsync?

Runs wrk POST /tasks at 32 keep-alive connections against the no-op server
(bench/noop_server.c, the ceiling of make bench), against each mode of
bench/durable_noop.c (a server that answers only once the body is
fdatasync'ed in a group commit, doing nothing else) and against `herald api`
(synchronous=FULL), RUNS rounds, the servers taking turns within a round,
and prints each one's median requests/s and p99 and its share of the no-op
ceiling, run by run; then the durable no-op again with herald's own costs
added (CPU on the HTTP thread and the writer, WAL bytes per commit), to
show what each one takes. It is not part of make bench (~RUNS x 70 s);
docs/benchmarks.md records its output.

Usage: durable_variants.py BUILD_DIR [--runs N] [--seconds S]
"""
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api_bench  # noqa: E402  (servers, wrk, ports)

# label: durable_noop's arguments after the port
DURABLE_MODES = [
    ("durable: group commit, 1 HTTP thread (poll)", []),
    ("durable: the same, epoll", ["--epoll"]),
    ("durable: 2 HTTP threads", ["--threads", "2"]),
    ("durable: fsync on a second thread (pipeline)", ["--pipeline"]),
    ("durable: thread per connection, leader commits", ["--thread-per-connection"]),
    ("durable: 128 KiB written per batch (as herald)", ["--batch-bytes", "131072"]),
    ("hand-off only: no write, no fsync", ["--sync", "none"]),
    # herald's own costs added one by one (measured: ~8 µs of handler CPU
    # per create on the HTTP thread; ~13 µs of SQLite per create and ~37 µs
    # per commit on the writer; ~123 KB of WAL per commit of ~12 creates)
    ("durable + 8 us HTTP work per request", ["--http-work", "8000"]),
    ("durable + 13 us/request + 37 us/batch writer work", ["--writer-work", "13000,37000"]),
    ("durable + all three of herald's costs", ["--http-work", "8000", "--writer-work",
                                                "13000,37000", "--batch-bytes", "131072"]),
]


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 5
    seconds = int(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 5
    servers = [("noop", [])] + DURABLE_MODES + [("herald api", [])]
    kinds = {"noop": "noop", "herald api": "api"}
    results = {label: [] for label, _ in servers}
    print(f"# wrk -t2 -c32 -d{seconds}s POST /tasks, {runs} rounds, servers in turn")
    for _ in range(runs):
        for label, args in servers:
            data = tempfile.mkdtemp(prefix="herald-durable-")
            port = api_bench.free_port()
            proc = api_bench.run_server(kinds.get(label, "durable"), build, port, data, args)
            try:
                results[label].append(api_bench.wrk(port, 32, seconds))
            finally:
                api_bench.stop(proc)
                shutil.rmtree(data, ignore_errors=True)
    ceiling = [r[0] for r in results["noop"]]
    for label, _ in servers:
        rps = [r[0] for r in results[label]]
        p99 = [r[2] for r in results[label]]
        share = [a / b for a, b in zip(rps, ceiling)]
        print(f"{label:<50} {statistics.median(rps):>8.0f} req/s  p99 "
              f"{statistics.median(p99):5.2f} ms  {statistics.median(share):4.0%} of no-op "
              f"(runs: {' '.join(f'{x:.0f}' for x in rps)}; "
              f"{' '.join(f'{x:.0%}' for x in share)})", flush=True)


if __name__ == "__main__":
    main()
