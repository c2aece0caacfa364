#!/bin/sh
# Valgrind over the unit tests and over a normal run of the binary
# (publish, tail, tail --group): any leak or invalid access fails.
#   scripts/memcheck.sh BUILD_DIR
set -eu
build=${1:-build}
vg="valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99"
for t in "$build"/tests/test_*; do
    echo "== valgrind $t"
    $vg "$t" >/dev/null
done
dir=$(mktemp -d /tmp/herald-memcheck-XXXXXX)
trap 'rm -rf "$dir"' EXIT
export HERALD_DATA_DIR="$dir/data"
echo "== valgrind herald publish / tail"
$vg "$build/herald" publish task.created --data '{"task_id":"t-1","title":"x"}' >/dev/null
$vg "$build/herald" publish task.completed --data '{"task_id":"t-1"}' --correlation-id c-1 >/dev/null
$vg "$build/herald" publish task.create --data '{}' >/dev/null 2>&1 && exit 1
$vg "$build/herald" tail >/dev/null
$vg "$build/herald" tail --group g --type 'task.*' >/dev/null
$vg "$build/herald" --help >/dev/null
echo "memcheck: no leaks, no errors"
