"""Notifications: a Slack-compatible webhook and email, per the config's ``notifications`` block.

    from pytest_hokmdb.notify import Notification, send

    problems = await send(config, Notification(
        event="deploy.succeeded", environment="staging", title="staging deployed to 0006",
        text="...", severity="info", fields={"from": "0005", "to": "0006"},
    ))

Who gets what:

* ``info`` (a success) is sent when ``notify_on_success`` is true;
* ``warning`` (a failure that was handled, e.g. rolled back cleanly) when ``notify_on_failure``;
* ``critical`` (someone must act: rollback failed, emergency restore) when
  ``notify_on_failure`` or ``critical_alerts``; with ``critical_alerts`` the Slack message
  mentions ``@channel`` and the email subject starts with ``[CRITICAL]``.

Channels: the webhook (``slack_webhook_url``, a JSON POST in Slack's format, which
Mattermost, Rocket.Chat and most chat tools accept) and email to ``email_recipients``
through ``smtp_host:smtp_port`` (STARTTLS when ``smtp_starttls``; implicit TLS on port 465;
login when ``smtp_user`` is set). Both are tried; a failure of one never stops the other.

``send`` never raises: it returns the delivery problems (redacted; the webhook URL is a
secret and never appears) so that a notification failure is logged and can never turn a
successful deploy into a failed one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

from pytest_hokmdb.config.model import HokmdbConfig
from pytest_hokmdb.redaction import redact, register_secret

log = logging.getLogger("hokmdb.notify")

Severity = Literal["info", "warning", "critical"]
TIMEOUT_S = 10.0
_COLORS = {"info": "#2eb67d", "warning": "#ecb22e", "critical": "#e01e5a"}
_ICONS = {"info": ":white_check_mark:", "warning": ":warning:", "critical": ":rotating_light:"}

__all__ = ["Notification", "send", "wanted"]


@dataclass
class Notification:
    event: str
    environment: str
    title: str
    text: str
    severity: Severity
    fields: dict[str, str] = field(default_factory=dict)


def wanted(config: HokmdbConfig, note: Notification) -> bool:
    settings = config.notifications
    if note.severity == "info":
        return settings.notify_on_success
    if note.severity == "warning":
        return settings.notify_on_failure
    return settings.notify_on_failure or settings.critical_alerts


def slack_payload(config: HokmdbConfig, note: Notification) -> dict[str, object]:
    mention = "<!channel> " if note.severity == "critical" and config.notifications.critical_alerts else ""
    headline = f"{mention}{_ICONS[note.severity]} *[{note.environment}] {note.title}*"
    return {
        "text": redact(f"{headline}\n{note.text}"),
        "attachments": [
            {
                "color": _COLORS[note.severity],
                "fields": [{"title": k, "value": redact(str(v)), "short": len(str(v)) < 40} for k, v in note.fields.items()],
                "footer": f"hokmdb {note.event}",
            }
        ],
    }


def email_message(config: HokmdbConfig, note: Notification) -> EmailMessage:
    settings = config.notifications
    prefix = "[CRITICAL] " if note.severity == "critical" and settings.critical_alerts else ""
    message = EmailMessage()
    message["Subject"] = redact(f"{prefix}[hokmdb {note.environment}] {note.title}")
    message["From"] = settings.email_sender
    message["To"] = ", ".join(settings.email_recipients)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="hokmdb")
    message["X-Hokmdb-Event"] = note.event
    message["X-Hokmdb-Severity"] = note.severity
    body = [note.text, ""] + [f"{k}: {v}" for k, v in note.fields.items()]
    message.set_content(redact("\n".join(body)) + "\n")
    return message


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect is misconfigured: say so rather than re-post the
    alert (and its URL's token) to wherever it points."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _post_webhook_sync(url: str, payload: dict[str, object]) -> str | None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "hokmdb"})
    try:
        with urllib.request.build_opener(_NoRedirects).open(request, timeout=TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode(errors="replace")
        return f"webhook: answered HTTP {exc.code}: {redact(body)}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"webhook: {type(exc).__name__}: {redact(str(reason)) or 'no detail'}"
    return None


async def _post_webhook(url: str, payload: dict[str, object]) -> str | None:
    """The POST runs on a thread (the standard library's client, as for SMTP): one request per
    alert needs no HTTP stack of its own, and the notifications stay out of every pytest run's
    plugins."""
    return await asyncio.to_thread(_post_webhook_sync, url, payload)


def _send_email_sync(config: HokmdbConfig, message: EmailMessage) -> None:
    settings = config.notifications
    assert settings.smtp_host is not None
    context = ssl.create_default_context()
    if settings.smtp_port == 465:
        client: smtplib.SMTP = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=TIMEOUT_S, context=context)
    else:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=TIMEOUT_S)
    with client:
        client.ehlo()
        if settings.smtp_starttls and settings.smtp_port != 465:
            if not client.has_extn("starttls"):
                # Never fall back to plain text when TLS was asked for: credentials and content would leak.
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS (smtp_starttls is true)")
            client.starttls(context=context)
            client.ehlo()
        if settings.smtp_user:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            client.login(settings.smtp_user, password)
        client.send_message(message)


async def _send_email(config: HokmdbConfig, note: Notification) -> str | None:
    try:
        await asyncio.wait_for(asyncio.to_thread(_send_email_sync, config, email_message(config, note)), timeout=TIMEOUT_S * 3)
    except Exception as exc:  # noqa: BLE001 - every failure is a delivery problem, never an exception
        return f"email via {config.notifications.smtp_host}:{config.notifications.smtp_port}: {type(exc).__name__}: {redact(str(exc))}"
    return None


async def send(config: HokmdbConfig, note: Notification) -> list[str]:
    """Deliver ``note`` on every configured channel it is wanted on; return the problems (never raises)."""
    try:
        if not wanted(config, note):
            log.debug("notification %s (%s) not wanted by the config", note.event, note.severity)
            return []
        settings = config.notifications
        jobs = []
        if settings.slack_webhook_url is not None:
            url = settings.slack_webhook_url.get_secret_value()
            register_secret(url)
            jobs.append(_post_webhook(url, slack_payload(config, note)))
        if settings.email_recipients:
            if settings.smtp_host:
                jobs.append(_send_email(config, note))
            else:
                log.warning("notifications.email_recipients is set but smtp_host is not: no email sent")
        if not jobs:
            log.debug("notification %s: no channel configured", note.event)
            return []
        results = await asyncio.gather(*jobs, return_exceptions=True)
        problems = [redact(str(r)) if isinstance(r, BaseException) else r for r in results if r is not None]
        sent = len(jobs) - len(problems)
        log.info("notification %s (%s) delivered on %d of %d channel(s)", note.event, note.severity, sent, len(jobs))
        for problem in problems:
            log.warning("notification %s not delivered: %s", note.event, problem)
        return [str(p) for p in problems]
    except Exception as exc:  # noqa: BLE001 - the contract: never raise
        problem = f"notification {note.event} failed: {type(exc).__name__}: {redact(str(exc))}"
        log.warning("%s", problem)
        return [problem]
