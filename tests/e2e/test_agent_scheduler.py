"""End-to-end tests of the reminder scheduler (`herald agent scheduler`).

Tasks are created, changed, completed and deleted through the real Task API
(`herald api`), or published with `herald publish` where the test needs an
event the API would never send; the agent runs as its own process on the
same data directory, and what it did is read back from the event log with
`herald tail` (plus its table in bus.db where a test checks the state it
keeps). Due times are a few seconds ahead; every wait is for a condition,
with a generous timeout. Where a test shows that a reminder did NOT fire, it
waits for a later reminder of another task (a sentinel) to fire: reminders
fire in order of their time, so by then the first one would have fired too.
"""

import json
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone

from api_helpers import start_api, tail_events, wait_log
from helpers import CMD_TIMEOUT
from smtp_server import SmtpServer

# Generous: an ASan build on a loaded machine.
WAIT = CMD_TIMEOUT
REMINDER_KEYS = {"reminder_id", "task_id", "owner_id", "title", "due_at", "remind_at"}


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def ahead(seconds):
    """A due time `seconds` from now, at whole milliseconds (UTC)."""
    dt = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def reminders(data_dir, task_id=None, event_type=None):
    return [e for e in tail_events(data_dir)
            if e["event_type"].startswith("reminder.")
            and (task_id is None or e["data"].get("task_id") == task_id)
            and (event_type is None or e["event_type"] == event_type)]


def wait_reminder(data_dir, task_id, event_type, count=1, timeout=WAIT):
    """Wait until the log holds `count` events of this type for the task;
    returns them."""
    deadline = time.monotonic() + timeout
    while True:
        found = reminders(data_dir, task_id, event_type)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, \
            f"no {count} x {event_type} for {task_id} within {timeout}s: {reminders(data_dir)}"
        time.sleep(0.1)


def wait_until(dt):
    while datetime.now(timezone.utc) < dt:
        time.sleep(0.05)


def start_scheduler(procs, env=None):
    p = procs.herald("agent", "scheduler", env=env)
    wait_log(p, lambda line: "scheduler: running (group scheduler)" in line)
    return p


def stop(proc):
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.err_lines


def task_event(data_dir, task_id, event_type):
    found = [e for e in tail_events(data_dir)
             if e["event_type"] == event_type and e["data"].get("task_id") == task_id]
    assert len(found) == 1, found
    return found[0]


def rows(data_dir, task_id):
    """The scheduler's rows for a task: [(reminder_id, state)]."""
    db = sqlite3.connect(str(data_dir / "bus.db"), timeout=30)
    try:
        return db.execute("SELECT reminder_id, state FROM scheduler_reminders WHERE task_id = ?"
                          " ORDER BY updated_ms", (task_id,)).fetchall()
    finally:
        db.close()


def traced_metadata(ev, cause):
    """ev's metadata without its W3C traceparent, after checking that the
    traceparent is a child span of its cause's (same trace, new span)."""
    md = dict(ev["metadata"])
    tp, parent = md.pop("traceparent"), cause["metadata"]["traceparent"]
    assert tp[:36] == parent[:36] and tp[36:52] != parent[36:52], (tp, parent)
    return md


def assert_no_errors(proc):
    bad = [line for line in proc.err_lines
           if " ERROR " in line or "runtime error" in line or "AddressSanitizer" in line]
    assert not bad, bad


def test_scheduled_then_due_with_causation_and_correlation(procs, data_dir):
    api = start_api(procs, data_dir)
    sched = start_scheduler(procs)
    due = ahead(2)
    r = api.create("Review quarterly report", "user-456", due_at=iso(due),
                   headers={"X-Correlation-ID": "req-remind-1"})
    task_id = r.json["id"]

    [scheduled] = wait_reminder(data_dir, task_id, "reminder.scheduled")
    created = task_event(data_dir, task_id, "task.created")
    assert scheduled["data"] == {
        "reminder_id": scheduled["data"]["reminder_id"], "task_id": task_id,
        "owner_id": "user-456", "title": "Review quarterly report",
        "due_at": iso(due), "remind_at": iso(due)}
    assert set(scheduled["data"]) == REMINDER_KEYS
    assert traced_metadata(scheduled, created) == {"correlation_id": "req-remind-1",
                                                   "causation_id": created["event_id"],
                                                   "source": "scheduler"}

    [fired] = wait_reminder(data_dir, task_id, "reminder.due")
    assert fired["data"] == scheduled["data"]
    # fired by a timer, it is still a child span of reminder.scheduled
    assert traced_metadata(fired, scheduled) == {"correlation_id": "req-remind-1",
                                                 "causation_id": scheduled["event_id"],
                                                 "source": "scheduler"}
    # never early
    assert parse(fired["occurred_at"]) >= due

    wait_log(sched, lambda line: f"Reminder scheduled for task {task_id} at {iso(due)}" in line
             and "cid=req-remind-1" in line)
    wait_log(sched, lambda line: f"Reminder due: Review quarterly report (task {task_id})" in line
             and "cid=req-remind-1" in line)

    # herald trace-style check: the whole chain shares one correlation id
    chain = [e for e in tail_events(data_dir)
             if e["metadata"]["correlation_id"] == "req-remind-1"]
    assert [e["event_type"] for e in chain] == ["task.created", "reminder.scheduled",
                                                "reminder.due"]
    stop(sched)
    assert len(reminders(data_dir, task_id, "reminder.due")) == 1
    assert rows(data_dir, task_id) == [(scheduled["data"]["reminder_id"], 1)]
    assert_no_errors(sched)


def test_reminder_survives_restart_and_fires_at_start(procs, data_dir):
    api = start_api(procs, data_dir)
    sched = start_scheduler(procs)
    due = ahead(4)
    task_id = api.create("Pay the invoice", "bob", due_at=iso(due)).json["id"]
    [scheduled] = wait_reminder(data_dir, task_id, "reminder.scheduled")
    stop(sched)

    wait_until(due + timedelta(milliseconds=300))
    assert reminders(data_dir, task_id, "reminder.due") == []  # nobody was running

    sched2 = start_scheduler(procs)
    [fired] = wait_reminder(data_dir, task_id, "reminder.due")
    assert fired["data"] == scheduled["data"]
    assert fired["metadata"]["causation_id"] == scheduled["event_id"]
    assert fired["metadata"]["correlation_id"] == scheduled["metadata"]["correlation_id"]
    wait_log(sched2, lambda line: f"Reminder due: Pay the invoice (task {task_id})" in line)
    stop(sched2)

    # a third start does not fire it again, nor schedule it again
    sched3 = start_scheduler(procs)
    stop(sched3)
    assert len(reminders(data_dir, task_id)) == 2
    assert_no_errors(sched2)


def test_completion_and_deletion_cancel(procs, data_dir):
    api = start_api(procs, data_dir)
    sched = start_scheduler(procs)
    due = ahead(6)
    done = api.create("finish me", "carol", due_at=iso(due)).json["id"]
    gone = api.create("delete me", "carol", due_at=iso(due)).json["id"]
    sentinel = api.create("sentinel", "carol",
                          due_at=iso(due + timedelta(milliseconds=500))).json["id"]
    plain = api.create("no due date", "carol").json["id"]
    [s_done] = wait_reminder(data_dir, done, "reminder.scheduled")
    [s_gone] = wait_reminder(data_dir, gone, "reminder.scheduled")

    r = api.request("POST", f"/tasks/{done}/complete", headers={"X-Correlation-ID": "req-done"})
    assert r.status == 200, r
    r = api.request("DELETE", f"/tasks/{gone}")
    assert r.status in (200, 204), r
    # no reminder pending: nothing is published for these
    assert api.request("POST", f"/tasks/{plain}/complete").status == 200

    [c_done] = wait_reminder(data_dir, done, "reminder.cancelled")
    [c_gone] = wait_reminder(data_dir, gone, "reminder.cancelled")
    completed = task_event(data_dir, done, "task.completed")
    assert c_done["data"] == {"reminder_id": s_done["data"]["reminder_id"], "task_id": done,
                              "reason": "completed"}
    assert traced_metadata(c_done, completed) == {"correlation_id": "req-done",
                                                  "causation_id": completed["event_id"],
                                                  "source": "scheduler"}
    assert c_gone["data"] == {"reminder_id": s_gone["data"]["reminder_id"], "task_id": gone,
                              "reason": "deleted"}
    wait_log(sched, lambda line: f"Reminder cancelled for task {done} (completed)" in line)

    # a completed task does not get a reminder when its due time changes
    r = api.request("PATCH", f"/tasks/{done}",
                    json_body={"due_at": iso(due + timedelta(milliseconds=200))})
    assert r.status == 200, r

    wait_reminder(data_dir, sentinel, "reminder.due")
    for task_id in (done, gone):
        assert [e["event_type"] for e in reminders(data_dir, task_id)] == \
            ["reminder.scheduled", "reminder.cancelled"]
    assert reminders(data_dir, plain) == []
    stop(sched)
    assert_no_errors(sched)


def test_due_change_reschedules_and_only_the_new_one_fires(procs, data_dir):
    api = start_api(procs, data_dir)
    sched = start_scheduler(procs)
    first = ahead(5)
    task_id = api.create("moving target", "dave", due_at=iso(first)).json["id"]
    dropped = api.create("due date dropped", "dave", due_at=iso(first)).json["id"]
    [old] = wait_reminder(data_dir, task_id, "reminder.scheduled")
    [old_dropped] = wait_reminder(data_dir, dropped, "reminder.scheduled")

    later = first + timedelta(seconds=2)
    r = api.request("PATCH", f"/tasks/{task_id}", json_body={"due_at": iso(later)},
                    headers={"X-Correlation-ID": "req-move"})
    assert r.status == 200, r
    r = api.request("PATCH", f"/tasks/{dropped}", json_body={"due_at": None})
    assert r.status == 200, r
    # a change of another field schedules nothing
    r = api.request("PATCH", f"/tasks/{task_id}", json_body={"priority": 5})
    assert r.status == 200, r

    [new] = wait_reminder(data_dir, task_id, "reminder.scheduled", count=2)[1:]
    [cancelled] = wait_reminder(data_dir, task_id, "reminder.cancelled")
    updated = [e for e in tail_events(data_dir)
               if e["event_type"] == "task.updated" and e["data"]["task_id"] == task_id][0]
    assert cancelled["data"] == {"reminder_id": old["data"]["reminder_id"], "task_id": task_id,
                                 "reason": "rescheduled"}
    assert new["data"]["reminder_id"] != old["data"]["reminder_id"]
    assert new["data"]["due_at"] == iso(later)
    for e in (cancelled, new):
        assert traced_metadata(e, updated) == {"correlation_id": "req-move",
                                               "causation_id": updated["event_id"],
                                               "source": "scheduler"}
    [c_dropped] = wait_reminder(data_dir, dropped, "reminder.cancelled")
    assert c_dropped["data"]["reminder_id"] == old_dropped["data"]["reminder_id"]

    [fired] = wait_reminder(data_dir, task_id, "reminder.due")
    assert fired["data"] == new["data"]
    assert fired["metadata"]["causation_id"] == new["event_id"]
    assert parse(fired["occurred_at"]) >= later
    # the first due time passed before the new one: had it not been
    # cancelled, it would have fired by now
    assert len(reminders(data_dir, task_id, "reminder.due")) == 1
    assert reminders(data_dir, dropped, "reminder.due") == []
    assert [e["event_type"] for e in reminders(data_dir, task_id)] == \
        ["reminder.scheduled", "reminder.cancelled", "reminder.scheduled", "reminder.due"]
    stop(sched)
    assert_no_errors(sched)


def test_duplicates_and_redelivery_do_not_schedule_twice(procs, data_dir, herald):
    due_past = iso(ahead(-60))
    due_future = iso(ahead(3600))
    data_a = {"task_id": "dup-a", "title": "dup", "owner_id": "erin", "priority": 2,
              "due_at": due_future}
    data_b = {"task_id": "dup-b", "title": "dup", "owner_id": "erin", "priority": 2,
              "due_at": due_past}
    # the same task.created twice (two event ids): the runtime's de-duplication
    # by event_id cannot catch it, the reminder id does
    for data in (data_a, data_a, data_b, data_b):
        r = herald("publish", "task.created", "--data", json.dumps(data))
        assert r.returncode == 0, r.stderr

    sched = start_scheduler(procs)
    wait_reminder(data_dir, "dup-b", "reminder.due")
    r = herald("publish", "task.created", "--data", json.dumps(data_b))
    assert r.returncode == 0, r.stderr
    sentinel = {"task_id": "dup-sentinel", "title": "s", "owner_id": "erin", "due_at": due_past}
    assert herald("publish", "task.created", "--data", json.dumps(sentinel)).returncode == 0
    wait_reminder(data_dir, "dup-sentinel", "reminder.due")
    stop(sched)
    before = reminders(data_dir)
    assert [e["event_type"] for e in reminders(data_dir, "dup-a")] == ["reminder.scheduled"]
    assert [e["event_type"] for e in reminders(data_dir, "dup-b")] == \
        ["reminder.scheduled", "reminder.due"]
    assert len(rows(data_dir, "dup-a")) == 1

    # redelivery of everything (the group's offset rewound and its
    # de-duplication records gone): the scheduler's own state holds
    db = sqlite3.connect(str(data_dir / "bus.db"), timeout=30)
    with db:
        db.execute("UPDATE offsets SET next_offset = 1 WHERE group_name = 'scheduler'")
        db.execute("DELETE FROM agent_handled WHERE group_id = "
                   "(SELECT id FROM agent_groups WHERE name = 'scheduler')")
    db.close()
    sched2 = start_scheduler(procs)
    # handled again: wait until the group caught up with the log
    deadline = time.monotonic() + WAIT
    while True:
        db = sqlite3.connect(str(data_dir / "bus.db"), timeout=30)
        n = db.execute("SELECT count(*) FROM agent_processed WHERE group_name = 'scheduler'"
                       ).fetchone()[0]
        db.close()
        if n >= 6:
            break
        assert time.monotonic() < deadline, "the scheduler did not handle the events again"
        time.sleep(0.1)
    stop(sched2)
    assert reminders(data_dir) == before
    assert_no_errors(sched2)


def test_remind_before(procs, data_dir):
    api = start_api(procs, data_dir)
    sched = start_scheduler(procs, env={"HERALD_REMIND_BEFORE": "1h"})
    due = ahead(3600 + 2)
    task_id = api.create("prepare slides", "frank", due_at=iso(due)).json["id"]
    [scheduled] = wait_reminder(data_dir, task_id, "reminder.scheduled")
    remind = due - timedelta(hours=1)
    assert scheduled["data"]["due_at"] == iso(due)
    assert scheduled["data"]["remind_at"] == iso(remind)
    [fired] = wait_reminder(data_dir, task_id, "reminder.due")
    assert parse(fired["occurred_at"]) >= remind
    assert parse(fired["occurred_at"]) < due
    wait_log(sched, lambda line: f"Reminder scheduled for task {task_id} at {iso(remind)}" in line)
    stop(sched)

    bad = procs.herald("agent", "scheduler", env={"HERALD_REMIND_BEFORE": "soon"})
    assert bad.wait() != 0
    assert any("HERALD_REMIND_BEFORE" in line or "remind-before" in line
               for line in bad.err_lines), bad.err_lines


def test_bad_data_goes_to_the_dlq_and_the_agent_goes_on(procs, data_dir, herald):
    bad = [{"title": "no id", "owner_id": "x", "due_at": iso(ahead(10))},
           {"task_id": "bad-due", "title": "t", "owner_id": "x", "due_at": "next tuesday"},
           {"task_id": "bad-change", "title": "t", "owner_id": "x",
            "changes": {"due_at": {"old": None, "new": 42}}}]
    types = ["task.created", "task.created", "task.updated"]
    for t, data in zip(types, bad):
        r = herald("publish", t, "--data", json.dumps(data))
        assert r.returncode == 0, r.stderr
    good = {"task_id": "good", "title": "fine", "owner_id": "x", "due_at": iso(ahead(-1))}
    assert herald("publish", "task.created", "--data", json.dumps(good)).returncode == 0

    sched = start_scheduler(procs)
    wait_reminder(data_dir, "good", "reminder.due")
    stop(sched)
    r = herald("dlq", "list", "--group", "scheduler", "--json")
    assert r.returncode == 0, r.stderr
    letters = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(letters) == 3, letters
    reasons = [d["reason"] for d in letters]
    assert "data.task_id" in reasons[0]
    assert "data.due_at is not an RFC 3339 timestamp" in reasons[1]
    assert "data.changes.due_at.new" in reasons[2]
    assert {d["topic"] for d in letters} == {"task-events"}
    assert [e["data"]["task_id"] for e in reminders(data_dir)] == ["good", "good"]
    assert sched.poll() == 0


def test_herald_up_mails_the_reminder_with_one_correlation(procs, data_dir):
    """The whole chain under `herald up`: the API's task.created, the
    scheduler's reminder.scheduled and reminder.due, the email agent's
    reminder mail (real SMTP server), notification.sent and email.delivered,
    all with the request's correlation id."""
    with SmtpServer() as smtp:
        env = {"HERALD_SMTP_URL": smtp.url, "HERALD_EMAIL_DOMAIN": "example.test",
               "HERALD_SMTP_FROM": "herald@example.test"}
        api = start_api(procs, data_dir, cmd="up", env=env)
        due = ahead(2)
        task_id = api.create("Renew the certificate", "grace", due_at=iso(due),
                             headers={"X-Correlation-ID": "req-up-remind"}).json["id"]
        [fired] = wait_reminder(data_dir, task_id, "reminder.due")
        mails = smtp.wait_messages(2)
        by_subject = {m.message["Subject"]: m for m in mails}
        assert set(by_subject) == {"New task assigned: Renew the certificate",
                                   "Reminder: Renew the certificate"}, by_subject
        reminder = by_subject["Reminder: Renew the certificate"]
        assert reminder.rcpt_tos == ["grace@example.test"]
        body = reminder.message.get_content()
        assert f"Task ID: {task_id}" in body
        assert iso(due) in body
        assert "Correlation: req-up-remind" in body

        deadline = time.monotonic() + WAIT
        while True:
            chain = [e for e in tail_events(data_dir)
                     if e["metadata"]["correlation_id"] == "req-up-remind"]
            sent = [e for e in chain if e["event_type"] == "notification.sent"
                    and e["data"].get("event_type") == "reminder.due"]
            delivered = [e for e in chain if e["event_type"] == "email.delivered"
                         and sent and e["metadata"]["causation_id"] == sent[0]["event_id"]]
            if sent and delivered:
                break
            assert time.monotonic() < deadline, chain
            time.sleep(0.1)
        assert sent[0]["metadata"]["causation_id"] == fired["event_id"]
        assert sent[0]["data"]["recipient"] == "grace@example.test"
        assert len(delivered) == 1
        assert len(reminders(data_dir, task_id, "reminder.due")) == 1
