"""Notifications reach a local webhook receiver (signed, retried with backoff) and a local SMTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from facefleet.platform import notifications
from facefleet.platform.db.models import Notification
from facefleet.platform.policies import service as policies
from facefleet.platform.scheduler import Scheduler
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.fixtures.servers import free_port
from tests.platform.scheduler_support import T0, Clock, RecordingStarter, finish_run, make_policy, register

SECRET = "s3cret"


@dataclass
class WebhookReceiver:
    """A tiny HTTP server that fails the first ``failures`` POSTs with 500, then records them."""

    failures: int = 0
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.attempts += 1
            if receiver.attempts <= receiver.failures:
                self.send_response(500)
            else:
                receiver.received.append((body, dict(self.headers)))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


class MailSink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[MailSink]:
    sink = MailSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("FACEFLEET_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FACEFLEET_SMTP_PORT", str(port))
    monkeypatch.setenv("FACEFLEET_WEBHOOK_SECRET", SECRET)
    get_settings.cache_clear()
    yield sink
    controller.stop()


def test_webhook_is_signed_and_retried_with_backoff(
    sqlite_engine: Engine, webhook: WebhookReceiver, smtp: MailSink
) -> None:
    webhook.failures = 2
    with Session(sqlite_engine) as session:
        notifications.enqueue(
            session, event="deployment.finished", payload={"deployment": 7}, webhooks=[webhook.url], now=T0
        )
        session.commit()
        assert notifications.deliver_due(session, now=T0) == 0
        row = session.scalars(select(Notification)).one()
        assert (row.status, row.attempts) == ("pending", 1) and "HTTP 500" in (row.last_error or "")
        assert notifications.deliver_due(session, now=T0 + timedelta(seconds=4)) == 0  # backoff: not yet due
        assert notifications.deliver_due(session, now=T0 + timedelta(seconds=5)) == 0  # second failure
        assert notifications.backoff_seconds(2) == 10
        assert notifications.deliver_due(session, now=T0 + timedelta(seconds=15)) == 1
        assert (row.status, row.attempts) == ("sent", 3)
        session.commit()
    body, headers = webhook.received[0]
    assert json.loads(body)["deployment"] == 7 and headers["X-Facefleet-Event"] == "deployment.finished"
    assert notifications.verify_signature(body, SECRET, headers["X-Facefleet-Signature"])
    assert not notifications.verify_signature(body + b" ", SECRET, headers["X-Facefleet-Signature"])


def test_a_target_that_keeps_failing_is_given_up(sqlite_engine: Engine) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    with Session(sqlite_engine) as session:
        notifications.enqueue(session, event="run.failed", payload={}, webhooks=[dead], now=T0)
        for attempt in range(notifications.MAX_ATTEMPTS):
            notifications.deliver_due(session, now=T0 + timedelta(hours=attempt + 1))
        row = session.scalars(select(Notification)).one()
        assert (row.status, row.attempts) == ("failed", notifications.MAX_ATTEMPTS)


def test_run_finished_reaches_webhook_and_email_with_the_best_combination(
    engine: Engine, local_store: ObjectStore, tmp_path: Path, webhook: WebhookReceiver, smtp: MailSink
) -> None:
    clock = Clock()
    register(engine, local_store, tmp_path, "faces-a")
    register(engine, local_store, tmp_path, "lfw", kind="verification")
    policy_id = make_policy(
        engine,
        name="nightly",
        verification_sets=["lfw"],
        debounce_seconds=0,
        model_name="faces",
        notify={"webhooks": [webhook.url], "emails": ["ops@example.com"]},
    )
    sched = Scheduler(engine, start=RecordingStarter(), clock=clock)
    with Session(engine) as session:
        policies.request_fire(session, policy_id=policy_id, requested_by="t", now=clock())
        session.commit()
    run_id = sched.tick().created_runs[0]
    finish_run(engine, run_id, model=("faces", 1), accuracy=0.93)
    report = sched.tick()
    assert report.finished_runs == [run_id] and report.notifications_sent == 2
    payload = json.loads(webhook.received[0][0])
    assert payload["event"] == "run.succeeded" and payload["run_id"] == run_id
    assert payload["best_combination"]["datasets"] == ["faces-a:1"]
    assert payload["best_combination"]["accuracy"] == 0.93
    mail = message_from_bytes(smtp.messages[0])
    assert mail["To"] == "ops@example.com" and "run.succeeded" in mail["Subject"]
    assert "faces-a:1 -> accuracy 0.93" in mail.get_payload()
