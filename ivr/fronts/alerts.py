"""Fraud alerts by e-mail, as Azure MFA sends them: one plain-text message per event.

The e-mails are deliveries of the ``email`` channel in the same queue as the webhooks
(:mod:`ivr.fronts.webhooks`), so they are retried and dead-lettered the same way. The
wording is :func:`ivr.domain.webhooks.fraud_alert`'s.
"""

from __future__ import annotations

import json
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
import structlog

from ..domain.webhooks import fraud_alert
from ..settings import Settings
from ..storage.webhooks import Delivery
from .webhooks import DeliveryError

log = structlog.get_logger("ivr.alerts")


def alert_message(d: Delivery, sender: str) -> EmailMessage:
    """The e-mail of one ``email`` delivery; its Message-ID is stable across retries."""
    try:
        entry = json.loads(d.fields.get("payload", ""))
    except ValueError:
        raise DeliveryError("the alert's payload is not JSON") from None
    if not isinstance(entry, dict):
        raise DeliveryError("the alert's payload is not an object")
    mail = fraud_alert({str(k): str(v) for k, v in entry.items()})
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(a for a in d.target.split(",") if a)
    msg["Subject"] = mail.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{d.webhook_id}@callmfa>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(mail.text)
    return msg


class MailSender:
    """Sends alert e-mails through CALLMFA_SMTP_HOST with aiosmtplib (STARTTLS by default)."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings

    def __repr__(self) -> str:
        return f"MailSender(host={self._s.smtp_host!r}, password=***)"

    async def send(self, d: Delivery) -> None:
        """One SMTP transaction, bounded by CALLMFA_WEBHOOK_TIMEOUT_S; its recipient refused
        fails it (each delivery has one, so only its own is tried again)."""
        s = self._s
        msg = alert_message(d, s.smtp_from)
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host, port=s.smtp_port, start_tls=s.smtp_starttls == "on",
            use_tls=s.smtp_starttls == "tls", username=s.smtp_user or None,
            password=s.smtp_password or None, timeout=s.webhook_timeout_s)
        try:
            await smtp.connect()
            refused, _ = await smtp.send_message(msg)
        except (aiosmtplib.SMTPException, OSError) as e:
            raise DeliveryError(f"smtp: {type(e).__name__}: {e}"[:200]) from None
        finally:
            # The relay owns the mail once it has answered DATA (RFC 5321 4.1.1.4): QUIT's
            # answer is not waited for, so a relay slow to give it is not sent the mail again.
            smtp.close()
        if refused:  # some of a delivery queued before each recipient had one of its own
            log.warning("alert_recipients_refused", refused=sorted(refused))
