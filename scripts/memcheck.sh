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

echo "== valgrind herald up: the API (requests of every kind) and every agent, then SIGTERM"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HERALD_LISTEN=127.0.0.1:$port HERALD_LOG_LEVEL=warn $vg "$build/herald" up &
pid=$!
url=http://127.0.0.1:$port
for i in $(seq 100); do curl -sf "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
json='Content-Type: application/json'
id=$(curl -sf -X POST "$url/tasks" -H "$json" -H 'Idempotency-Key: k1' \
    -d '{"title":"memcheck","owner_id":"u-1","due_at":"2030-01-01T00:00:00Z"}' |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sf -X POST "$url/tasks" -H "$json" -H 'Idempotency-Key: k1' \
    -d '{"title":"memcheck","owner_id":"u-1","due_at":"2030-01-01T00:00:00Z"}' >/dev/null
curl -sf "$url/tasks/$id" >/dev/null
curl -sf "$url/tasks?owner_id=u-1&limit=1" >/dev/null
curl -sf -X PATCH "$url/tasks/$id" -H "$json" -H 'If-Match: "1"' -d '{"title":"t2","due_at":null}' >/dev/null
curl -sf -X POST "$url/tasks/$id/complete" >/dev/null
curl -sf "$url/tasks/$id/events" >/dev/null
curl -s -X POST "$url/tasks" -H "$json" -d '{"title":' >/dev/null
curl -s -X POST "$url/tasks" -H "$json" -d '{"title":"","priority":9,"x":1}' >/dev/null
curl -s -X PUT "$url/tasks" >/dev/null
curl -sf -X DELETE "$url/tasks/$id" >/dev/null
# let the agents handle it all: the .eml of the task.created mail is the sign
for i in $(seq 300); do ls "$HERALD_DATA_DIR"/mail/*.eml >/dev/null 2>&1 && break; sleep 0.1; done
ls "$HERALD_DATA_DIR"/mail/*.eml >/dev/null
sleep 2
kill -TERM $pid
wait $pid
echo "== valgrind herald dlq, agent exec"
$vg "$build/herald" dlq list >/dev/null 2>&1
$vg "$build/herald" dlq replay >/dev/null 2>&1
$vg "$build/herald" agent --list >/dev/null
printf '#!/bin/sh\ncat >/dev/null\nexit 3\n' > "$dir/fail.sh"
HERALD_LOG_LEVEL=warn $vg "$build/herald" agent exec --group memcheck --types task.created -- sh "$dir/fail.sh" 2>/dev/null &
pid=$!
for i in $(seq 300); do "$build/herald" dlq list --group memcheck 2>/dev/null | grep -q memcheck && break; sleep 0.1; done
kill -TERM $pid
wait $pid
echo "memcheck: no leaks, no errors"
