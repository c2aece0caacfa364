#!/bin/sh
# Run herald's benchmarks and print medians of several runs.
#   scripts/bench.sh BUILD_DIR     (make bench calls it with "build")
# BENCH_RUNS (default 5) sets the number of runs per figure; BENCH_AGENT_RUNS
# (default 3) those of the agents, BENCH_KAFKA_RUNS (default 3) those of the
# Kafka mode (on tests/tools/kafka_mock, the librdkafka mock cluster).
set -eu
build=${1:-build}
runs=${BENCH_RUNS:-5}
echo "# machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "# command: $build/bench/bus_bench --runs $runs"
"$build/bench/bus_bench" --runs "$runs" --dir "$build/bench-data"
rm -rf "$build/bench-data"
echo
echo "# command: bench/api_bench.py $build --runs $runs"
/usr/bin/python3 bench/api_bench.py "$build" --runs "$runs"
echo
agent_runs=${BENCH_AGENT_RUNS:-3}
echo "# command: $build/bench/agents_bench --runs $agent_runs"
"$build/bench/agents_bench" --runs "$agent_runs" --dir "$build/bench-agents"
echo
kafka_runs=${BENCH_KAFKA_RUNS:-3}
echo "# command: $build/bench/kafka_bench --mock $build/tools/kafka_mock --runs $kafka_runs"
"$build/bench/kafka_bench" --mock "$build/tools/kafka_mock" --runs "$kafka_runs" \
    --dir "$build/bench-kafka"
