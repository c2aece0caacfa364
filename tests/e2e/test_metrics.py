"""GET /metrics end to end: `herald up` with a real SMTP server (aiosmtpd)
and a real webhook receiver (Slack), scraped and parsed with
prometheus_client's own parser of the text format (never grepped).

The main test takes a scrape, makes known requests (creates, a 404, a 422,
a completion, a 405 on /metrics) while the SMTP server refuses one mail with
550 (dead-lettered) and the receiver answers one post with 500 (retried),
waits for every agent to be done, scrapes again and checks that each
counter moved by exactly what those requests cause, that each histogram's
count moved with its counter and its buckets are cumulative, and that the
SMTP and webhook latency histograms gained one sample per call. In Kafka
mode (librdkafka's mock cluster), herald_outbox_depth shows the records
held while every broker is down, then 0 once they are relayed."""

from prometheus_client.parser import text_string_to_metric_families

from api_helpers import start_api
from helpers import wait_for
from kafka_helpers import KafkaMock
from smtp_server import SmtpServer
from webhook_receiver import WebhookReceiver

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GROUPS = ("notification-email", "notification-slack", "audit-log", "scheduler")
FAST_RETRY = {"HERALD_RETRY_BASE": "50ms", "HERALD_RETRY_MAX": "200ms",
              "HERALD_RETRY_ATTEMPTS": "5", "NO_PROXY": "127.0.0.1"}


class Scrape:
    """One parsed exposition: samples by (name, labels) and family types."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"duplicate sample {key}"
                self.samples[key] = s.value

    def get(self, name, **labels):
        """A sample's value; 0 when the series does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name):
        """[(labels dict, value)] of every sample with this name."""
        return [(dict(k[1]), v) for k, v in self.samples.items() if k[0] == name]


class Scraper:
    def __init__(self, api):
        self.api = api
        self.count = 0  # GET /metrics answered so far (each is counted itself)

    def __call__(self):
        r = self.api.get("/metrics")
        assert r.status == 200, r
        assert r.header("Content-Type") == CONTENT_TYPE, r
        self.count += 1
        return Scrape(r.body.decode("utf-8"))


def check_histograms(scrape):
    """Every histogram series: buckets cumulative, +Inf bucket == _count."""
    for name, kind in scrape.types.items():
        if kind != "histogram":
            continue
        by_series = {}
        for labels, value in scrape.series(name + "_bucket"):
            le = labels.pop("le")
            by_series.setdefault(frozenset(labels.items()), []).append((float(le), value))
        for key, buckets in by_series.items():
            buckets.sort()
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), (name, key, buckets)
            assert buckets[-1][0] == float("inf"), (name, key, buckets)
            assert counts[-1] == scrape.get(name + "_count", **dict(key)), (name, key)


def test_counters_move_by_exactly_what_the_requests_cause(procs, data_dir):
    n = 3
    with SmtpServer() as smtp, WebhookReceiver() as hook:
        env = {"HERALD_SMTP_URL": smtp.url, "HERALD_SMTP_FROM": "herald@example.org",
               "HERALD_EMAIL_DOMAIN": "example.org",
               "HERALD_SLACK_WEBHOOK_URL": hook.url(), **FAST_RETRY}
        api = start_api(procs, data_dir, cmd="up", env=env)
        scrape = Scraper(api)
        before = scrape()
        check_histograms(before)
        for kind, name in [("counter", "herald_http_requests"),
                           ("histogram", "herald_http_request_duration_seconds"),
                           ("counter", "herald_events_published"),
                           ("counter", "herald_events_consumed"),
                           ("counter", "herald_events_dead_lettered"),
                           ("histogram", "herald_handler_duration_seconds"),
                           ("histogram", "herald_smtp_duration_seconds"),
                           ("histogram", "herald_webhook_duration_seconds"),
                           ("gauge", "herald_build_info"),
                           ("gauge", "process_resident_memory_bytes"),
                           ("gauge", "process_start_time_seconds")]:
            assert before.types.get(name) == kind, (name, before.types.get(name))
        assert before.get("process_resident_memory_bytes") > 1024 * 1024
        assert before.get("process_start_time_seconds") > 1.7e9
        [(info, one)] = before.series("herald_build_info")
        assert one == 1 and info["version"], info
        # the four agents' groups are there from the start
        for g in GROUPS:
            assert ("herald_events_consumed_total", frozenset({("group", g)})) in before.samples

        # one mail refused for good (dead letter), one Slack post retried
        smtp.refuse("DATA", "550 5.7.1 message rejected", times=1)
        hook.answer(500, body="oops")
        ids = [api.create(f"task {i}", "user-1").json["id"] for i in range(n)]
        r = api.request("POST", "/tasks", json_body={"title": "", "owner_id": "user-1"})
        assert r.status == 422, r
        r = api.get("/tasks/no-such-task")
        assert r.status == 404, r
        r = api.request("POST", f"/tasks/{ids[0]}/complete")
        assert r.status == 200, r
        r = api.request("PUT", "/metrics")
        assert r.status == 405 and r.header("Allow") == "GET, HEAD", r
        r = api.request("POST", "/metrics", body="x")
        assert r.status == 405, r

        # the agents' work: 3 SMTP transactions (one refused), 5 webhook
        # posts (3 created + 1 completed + 1 retry); then every group has
        # committed past every record it will ever see in this test
        smtp.wait_messages(n - 1)
        hook.wait_for(n + 2)
        consumed = {"notification-email": n + 1, "notification-slack": n + 1,
                    # task-events, notification-events (2 mails + 4 Slack), email-events
                    "audit-log": (n + 1) + (n - 1 + n + 1) + (n - 1), "scheduler": n + 1}

        def settled():
            s = scrape()
            done = all(s.get("herald_events_consumed_total", group=g)
                       - before.get("herald_events_consumed_total", group=g) >= want
                       for g, want in consumed.items())
            return done and s

        after = settled() or wait_for("every group to settle", settled)
        check_histograms(after)

        def delta(name, **labels):
            return after.get(name, **labels) - before.get(name, **labels)

        # HTTP: by method, route template (never the raw path) and status
        http = {("POST", "/tasks", "201"): n, ("POST", "/tasks", "422"): 1,
                ("GET", "/tasks/{id}", "404"): 1, ("POST", "/tasks/{id}/complete", "200"): 1,
                ("PUT", "/metrics", "405"): 1, ("POST", "/metrics", "405"): 1,
                ("GET", "/metrics", "200"): scrape.count - 1}
        for (method, route, status), want in http.items():
            got = delta("herald_http_requests_total", method=method, route=route, status=status)
            assert got == want, (method, route, status, got, want)
        for labels, value in after.series("herald_http_requests_total"):
            key = (labels["method"], labels["route"], labels["status"])
            assert key in http or value == before.get("herald_http_requests_total", **labels), \
                f"unexpected requests {labels}: {value}"
            assert "no-such-task" not in labels["route"], labels
        durations = {("POST", "/tasks"): n + 1, ("GET", "/tasks/{id}"): 1,
                     ("POST", "/tasks/{id}/complete"): 1, ("PUT", "/metrics"): 1,
                     ("POST", "/metrics"): 1, ("GET", "/metrics"): scrape.count - 1}
        for (method, route), want in durations.items():
            got = delta("herald_http_request_duration_seconds_count", method=method, route=route)
            assert got == want, (method, route, got, want)

        # events published, by type: the API's and the agents' derived ones
        published = {"task.created": n, "task.completed": 1, "task.updated": 0,
                     "task.deleted": 0,
                     "notification.sent": (n - 1) + (n + 1),  # email + slack
                     "email.delivered": n - 1}
        for event_type, want in published.items():
            got = delta("herald_events_published_total", type=event_type)
            assert got == want, (event_type, got, want)
        for labels, value in after.series("herald_events_published_total"):
            assert labels["type"] in published or value == 0, labels

        # consumer groups
        groups = {
            #                      consumed, handled, retried, failed, dead, handler calls
            "notification-email": (n + 1, n - 1, 0, 1, 1, n),
            "notification-slack": (n + 1, n + 1, 1, 1, 0, n + 2),
            "audit-log": (consumed["audit-log"], consumed["audit-log"], 0, 0, 0,
                          consumed["audit-log"]),
            "scheduler": (n + 1, n + 1, 0, 0, 0, n + 1),
        }
        for g, (cons, handled, retried, failed, dead, calls) in groups.items():
            got = (delta("herald_events_consumed_total", group=g),
                   delta("herald_events_handled_total", group=g),
                   delta("herald_events_retried_total", group=g),
                   delta("herald_events_failed_total", group=g),
                   delta("herald_events_dead_lettered_total", group=g),
                   delta("herald_handler_duration_seconds_count", group=g))
            assert got == (cons, handled, retried, failed, dead, calls), (g, got)
            assert delta("herald_handler_duration_seconds_sum", group=g) > 0, g

        # outbound calls: one latency sample per call; errors by reason
        assert delta("herald_smtp_duration_seconds_count") == n
        assert delta("herald_smtp_duration_seconds_sum") > 0
        assert delta("herald_smtp_errors_total", reason="5xx") == 1
        assert [labels for labels, _ in after.series("herald_smtp_errors_total")] == \
            [{"reason": "5xx"}]
        assert delta("herald_webhook_duration_seconds_count") == n + 2
        assert delta("herald_webhook_duration_seconds_sum") > 0
        assert delta("herald_webhook_errors_total", reason="5xx") == 1
        assert [labels for labels, _ in after.series("herald_webhook_errors_total")] == \
            [{"reason": "5xx"}]
        # the embedded log has no outbox
        assert "herald_outbox_depth" not in after.types

        # HEAD: the headers of GET, no body
        r = api.request("HEAD", "/metrics")
        assert r.status == 200 and r.body == b"", r
        assert r.header("Content-Type") == CONTENT_TYPE, r


def test_outbox_depth_in_kafka_mode(procs, data_dir):
    mock = KafkaMock(topics=[("task-events", 3)])
    procs.adopt(mock.popen)
    env = {"HERALD_BUS": f"kafka:{mock.bootstrap}", "HERALD_KAFKA_FETCH_WAIT_MAX_MS": "5"}
    api = start_api(procs, data_dir, env=env)
    scrape = Scraper(api)
    first = scrape()
    assert first.types.get("herald_outbox_depth") == "gauge"
    assert first.types.get("herald_outbox_relayed") == "counter"
    # the relay cannot publish while every broker is down: the records wait
    for broker in (1, 2, 3):
        assert mock.command(f"down {broker}").startswith("ok"), broker
    for i in range(3):
        api.create(f"task {i}", "user-1")
    held = scrape()
    assert held.get("herald_outbox_depth") == 3
    assert held.get("herald_events_published_total", type="task.created") == 3
    assert held.get("herald_outbox_relayed_total") == 0
    for broker in (1, 2, 3):
        assert mock.command(f"up {broker}").startswith("ok"), broker
    relayed = wait_for("the outbox to empty",
                       lambda: (lambda s: s if s.get("herald_outbox_depth") == 0 else None)(
                           scrape()))
    assert relayed.get("herald_outbox_relayed_total") == 3


def test_consumer_lag_gauges_follow_a_stuck_group(procs, data_dir):
    """The email group is stuck retrying its first record (the SMTP server
    answers 451 to every mail): its lag on task-events is every task
    created, and the oldest one's age grows; the other groups catch up
    to 0. The figures are herald lag's (one sample), summed per topic."""
    n = 4
    with SmtpServer() as smtp, WebhookReceiver() as hook:
        smtp.refuse("DATA", "451 4.3.0 try later", times=100000)
        env = {"HERALD_SMTP_URL": smtp.url, "HERALD_SMTP_FROM": "herald@example.org",
               "HERALD_EMAIL_DOMAIN": "example.org", "HERALD_SLACK_WEBHOOK_URL": hook.url(),
               "HERALD_RETRY_BASE": "200ms", "HERALD_RETRY_MAX": "500ms",
               "HERALD_RETRY_ATTEMPTS": "100", "NO_PROXY": "127.0.0.1"}
        api = start_api(procs, data_dir, cmd="up", env=env)
        scrape = Scraper(api)
        first = scrape()
        assert first.types.get("herald_consumer_lag_events") == "gauge"
        assert first.types.get("herald_consumer_lag_seconds") == "gauge"
        for i in range(n):
            assert api.create(f"task {i}", "user-1").status == 201
        hook.wait_for(n)

        def lagging():
            s = scrape()
            stuck = s.get("herald_consumer_lag_events", group="notification-email",
                          topic="task-events")
            slack = s.samples.get(("herald_consumer_lag_events",
                                   frozenset({("group", "notification-slack"),
                                              ("topic", "task-events")})))
            return s if stuck == n and slack == 0 else None

        s = wait_for("the email group's lag to show", lagging)
        assert s.get("herald_consumer_lag_seconds", group="notification-slack",
                     topic="task-events") == 0
        # the age of the oldest waiting event grows while the group is stuck
        age = s.get("herald_consumer_lag_seconds", group="notification-email",
                    topic="task-events")
        assert age > 0
        older = wait_for("the lag's age to grow", lambda: (lambda x: x if x.get(
            "herald_consumer_lag_seconds", group="notification-email",
            topic="task-events") >= age + 1.0 else None)(scrape()))
        assert older.get("herald_consumer_lag_events", group="notification-email",
                         topic="task-events") == n
