"""Notifications against real local receivers: an HTTP server on 127.0.0.1 for the webhook and
an aiosmtpd SMTP server (STARTTLS + login) for email. Nothing is patched."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from deploy_support import COMMENT_0009, DeployEnv

from pytest_hokmdb.cluster.embedded import free_port
from pytest_hokmdb.config import load_config
from pytest_hokmdb.deploy.orchestrator import DeployOptions, run_deploy
from pytest_hokmdb.notify import Notification, send

WEBHOOK_TOKEN = "T0ABC/B0DEF/wEbHoOkSeCrEt42"


class Receiver:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.location: str | None = None  # sent with a 3xx status
        self.posts: list[dict[str, object]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append({"path": self.path, "json": json.loads(body), "type": self.headers["Content-Type"]})
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.end_headers()
                self.wfile.write(b"ok" if receiver.status == 200 else b"nope")

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{WEBHOOK_TOKEN}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.logins: list[str] = []
        self.tls: list[bool] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        self.tls.append(session.ssl is not None)
        return "250 OK"


@pytest.fixture
def smtp_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Mailbox, int]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the client's trust store: our test CA
    mailbox = Mailbox()

    def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        ok = auth_data.login == b"hokmdb" and auth_data.password == b"smtp-pass-Q8"
        if ok:
            mailbox.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
        authenticator=authenticator, auth_required=True, auth_require_tls=True,
    )
    controller.start()
    yield mailbox, port
    controller.stop()


def _config(tmp_path: Path, **notifications: object):  # type: ignore[no-untyped-def]
    from helpers import write_config_dir

    overrides = {f"notifications__{k}": v for k, v in notifications.items()}
    write_config_dir(tmp_path / "cfg", "testing", **overrides)
    return load_config("testing", tmp_path / "cfg", environ={}).config


NOTE = Notification(event="deploy.succeeded", environment="testing", title="testing deployed to 0009",
                    text="0008 -> 0009 in 4.2s", severity="info", fields={"from": "0008", "to": "0009"})


async def test_webhook_gets_a_slack_payload(webhook: Receiver, tmp_path: Path) -> None:
    config = _config(tmp_path, slack_webhook_url=webhook.url, notify_on_success=True)
    assert await send(config, NOTE) == []
    [post] = webhook.posts
    assert post["path"] == f"/services/{WEBHOOK_TOKEN}" and post["type"] == "application/json"
    payload = post["json"]
    assert "[testing] testing deployed to 0009" in payload["text"] and "0008 -> 0009" in payload["text"]  # type: ignore[operator]
    fields = {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}  # type: ignore[index]
    assert fields == {"from": "0008", "to": "0009"}


async def test_severity_decides_who_is_told(webhook: Receiver, tmp_path: Path) -> None:
    quiet = _config(tmp_path, slack_webhook_url=webhook.url, notify_on_success=False, notify_on_failure=False, critical_alerts=True)
    assert await send(quiet, NOTE) == []
    assert await send(quiet, Notification("deploy.rolled_back", "testing", "t", "x", "warning")) == []
    assert webhook.posts == []
    assert await send(quiet, Notification("deploy.rollback_failed", "testing", "rollback failed", "x", "critical")) == []
    [post] = webhook.posts
    assert post["json"]["text"].startswith("<!channel> ")  # type: ignore[index]


async def test_email_goes_through_starttls_with_login(smtp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mailbox, port = smtp_server
    config = _config(tmp_path, notify_on_success=True, email_recipients=["ops@example.com", "dba@example.com"],
                     smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=True, smtp_user="hokmdb", smtp_password="smtp-pass-Q8",
                     email_sender="deploys@example.com")
    assert await send(config, NOTE) == []
    [(recipients, raw)] = mailbox.messages
    assert recipients == ["ops@example.com", "dba@example.com"]
    assert mailbox.tls == [True] and mailbox.logins == ["hokmdb"]
    message = message_from_bytes(raw)
    assert message["Subject"] == "[hokmdb testing] testing deployed to 0009"
    assert message["From"] == "deploys@example.com" and message["X-Hokmdb-Severity"] == "info"
    assert "from: 0008" in message.get_payload()


async def test_delivery_problems_are_returned_never_raised_and_the_url_stays_secret(webhook: Receiver, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    webhook.status = 500
    dead_port = free_port()
    config = _config(tmp_path, slack_webhook_url=webhook.url, notify_on_success=True, email_recipients=["ops@example.com"],
                     smtp_host="127.0.0.1", smtp_port=dead_port)
    problems = await send(config, NOTE)
    assert len(problems) == 2
    assert any("HTTP 500" in p for p in problems) and any(f"127.0.0.1:{dead_port}" in p for p in problems)
    assert WEBHOOK_TOKEN not in "\n".join(problems) + caplog.text


async def test_a_redirecting_or_unreachable_webhook_is_a_problem_and_the_alert_is_not_reposted(webhook: Receiver, tmp_path: Path) -> None:
    elsewhere = Receiver()
    try:
        webhook.status, webhook.location = 307, elsewhere.url
        config = _config(tmp_path, slack_webhook_url=webhook.url, notify_on_success=True)
        problems = await send(config, NOTE)
        assert len(problems) == 1 and "webhook: answered HTTP 307" in problems[0], problems
        assert len(webhook.posts) == 1 and elsewhere.posts == []  # asked once, never followed
    finally:
        elsewhere.close()
    dead = f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}"
    problems = await send(_config(tmp_path, slack_webhook_url=dead, notify_on_success=True), NOTE)
    assert len(problems) == 1 and "webhook: URLError: [Errno 111] Connection refused" in problems[0], problems
    assert WEBHOOK_TOKEN not in problems[0]


async def test_a_failed_notification_never_fails_a_successful_deploy(deploy_env_factory, project_factory) -> None:  # type: ignore[no-untyped-def]
    dead = f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}"
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], notifications__slack_webhook_url=dead, notifications__notify_on_success=True)
    env.use_project(project_factory([COMMENT_0009]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == 0, outcome.message
    step = outcome.steps[-1]
    assert step.name == "notify" and step.status == "failed" and "Connection refused" in step.detail
    assert WEBHOOK_TOKEN not in step.detail + outcome.log_path.read_text()  # type: ignore[union-attr]


async def test_a_rolled_back_deploy_notifies_with_its_fields(deploy_env_factory, project_factory, webhook: Receiver) -> None:  # type: ignore[no-untyped-def]
    env: DeployEnv = deploy_env_factory(deploy__gate_suites=[], notifications__slack_webhook_url=webhook.url, notifications__notify_on_failure=True)
    failing = ("0009", "Fails.", "op.execute('SELECT 1 / 0')", "pass")
    env.use_project(project_factory([failing]))
    outcome = await run_deploy(DeployOptions("testing", str(env.config_dir)))
    assert outcome.exit_code == 10
    [post] = webhook.posts
    payload = post["json"]
    assert "deploy failed and was rolled back to 0008" in payload["text"]  # type: ignore[operator]
    fields = {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}  # type: ignore[index]
    assert fields["result"] == "rolled_back" and fields["exit code"] == "10" and fields["from"] == "0008" and fields["to"] == "0009"
    assert fields["by"].startswith("tester@")


def test_notify_command_posts_and_never_fails_the_pipeline(webhook: Receiver, tmp_path: Path) -> None:
    import argparse

    from helpers import write_config_dir

    from pytest_hokmdb.notify.cli import add_notify_parser, run_notify

    write_config_dir(tmp_path / "cfg", "testing", notifications__slack_webhook_url=webhook.url, notifications__notify_on_failure=True)
    parser = argparse.ArgumentParser()
    add_notify_parser(parser.add_subparsers(dest="command"))
    argv = ["notify", "--environment", "testing", f"--config={tmp_path / 'cfg'}", "--status", "failure", "--link", "https://ci/run/1"]
    assert run_notify(parser.parse_args(argv)) == 0
    [post] = webhook.posts
    assert "pipeline failure on testing" in post["json"]["text"]  # type: ignore[index]
    webhook.status = 500
    assert run_notify(parser.parse_args(argv)) == 0  # delivery failed: printed, exit 0
