"""kill -9 the Task API while clients are creating tasks, restart it on the
same data directory, and check that the task row and its event really went
into the store together: every create the server acknowledged (201) is
there with exactly one task.created event, no event exists for a task that
does not, nothing was created twice, and the database is intact."""

import http.client
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter

from api_helpers import start_api, tail_events
from helpers import CMD_TIMEOUT

ROUNDS = 3
CLIENTS = 4


def integrity(data_dir):
    db = sqlite3.connect(str(data_dir / "bus.db"), timeout=30)
    try:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]
    finally:
        db.close()


def check_store(api, data_dir, acked):
    """Everything in acked ({task_id: title}) is stored, and tasks and
    task.created events match one to one."""
    s = api.session()
    try:
        tasks = s.all_tasks()
        for tid, title in acked.items():
            r = s.request("GET", f"/tasks/{tid}")
            assert r.status == 200, (tid, r)
            assert r.json["title"] == title and r.json["version"] == 1, r.json
    finally:
        s.close()
    ids = [t["id"] for t in tasks]
    titles = Counter(t["title"] for t in tasks)
    assert len(set(ids)) == len(ids)
    assert [t for t, n in titles.items() if n > 1] == [], "a create was stored twice"
    events = tail_events(data_dir)
    created = Counter(e["data"]["task_id"] for e in events if e["event_type"] == "task.created")
    assert [t for t, n in created.items() if n != 1] == [], "duplicate task.created"
    assert set(acked) <= set(ids), sorted(set(acked) - set(ids))[:5]
    assert set(created) - set(ids) == set(), "task.created for a task that does not exist"
    assert set(ids) - set(created) == set(), "a task without its task.created event"
    assert {e["event_type"] for e in events} <= {"task.created"}
    for e in events:
        md = e["metadata"]
        assert md["causation_id"] == f"api-create-{e['data']['task_id']}", e
        assert md["source"] == "task-api", e
    return len(ids)


def test_kill9_during_creates_loses_nothing_acknowledged(procs, data_dir):
    seed = int(os.environ.get("HERALD_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"seed {seed} (set HERALD_TEST_SEED to replay)")
    acked = {}  # task_id -> title, over all rounds
    for round_ in range(ROUNDS):
        api = start_api(procs, data_dir)
        stored = check_store(api, data_dir, acked)  # what the rounds before left
        lock = threading.Lock()
        statuses = []

        def client(n):
            i = 0
            while True:
                i += 1
                title = f"round {round_} client {n} #{i}"
                try:
                    r = api.request("POST", "/tasks", timeout=CMD_TIMEOUT, headers={
                        "X-Correlation-ID": f"crash-{round_}-{n}-{i}"},
                        json_body={"title": title, "owner_id": f"client-{n}"})
                except (OSError, http.client.HTTPException):
                    return  # the server is gone
                with lock:
                    statuses.append(r.status)
                    if r.status == 201:
                        acked[r.json["id"]] = title

        threads = [threading.Thread(target=client, args=(n,), daemon=True)
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + CMD_TIMEOUT
        while not statuses:  # the clients are being served
            assert time.monotonic() < deadline, api.proc.err_lines[-10:]
            time.sleep(0.01)
        time.sleep(rng.uniform(0.5, 1.5))
        assert api.proc.poll() is None, api.proc.err_lines[-20:]
        api.proc.kill9()
        for t in threads:
            t.join(timeout=CMD_TIMEOUT)
            assert not t.is_alive()
        assert set(statuses) == {201}, Counter(statuses)
        print(f"round {round_}: {len(statuses)} creates acknowledged, "
              f"{stored} tasks stored before")
        assert integrity(data_dir) == ["ok"]

    api = start_api(procs, data_dir)
    total = check_store(api, data_dir, acked)
    # at most one in-flight create per client per round was committed but
    # not acknowledged before the kill
    assert len(acked) <= total <= len(acked) + CLIENTS * ROUNDS, (len(acked), total)
    # and the store still takes changes
    r = api.request("POST", "/tasks", json_body={"title": "after the crashes", "owner_id": "x"})
    assert r.status == 201, r
    api.proc.signal(signal.SIGTERM)
    assert api.proc.wait() == 0, api.proc.err_lines[-20:]
    assert integrity(data_dir) == ["ok"]
