"""Webhooks without I/O: signing, the back-off schedule, the URL allow-list, the messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import ClassVar

import pytest
from standardwebhooks.webhooks import Webhook

from ivr.domain.request import parse_request
from ivr.domain.webhooks import (
    Backoff,
    UrlError,
    check_callback_url,
    check_url,
    envelope,
    fraud_alert,
    mask_phone,
    outcome_webhook_id,
    parse_allowed_urls,
    security_deliveries,
    security_type,
)
from ivr.exceptions import RequestError, SettingsError
from ivr.fronts.alerts import alert_message
from ivr.fronts.webhooks import signed_headers
from ivr.settings import Settings
from ivr.storage.webhooks import Delivery

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RID = "0b6d6f3e-8d44-4a9c-9f0e-0a1b2c3d4e5f"


class TestSigning:
    def test_the_standard_webhooks_test_vector(self) -> None:
        """The spec's published vector: what any receiver's library computes."""
        when = datetime.fromtimestamp(1614265330, UTC)
        headers = signed_headers(Webhook(SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", when,
                                 '{"test": 2432232314}')
        assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        assert headers["webhook-timestamp"] == "1614265330"
        assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"

    def test_a_receiver_verifies_what_is_sent_and_refuses_a_changed_body(self) -> None:
        data = envelope("verification.finished", "2026-12-01T00:00:00.000Z",
                        '{"id":"x","outcome":"approved"}')
        headers = signed_headers(Webhook(SECRET), "msg_1", datetime.now(UTC), data)
        assert Webhook(SECRET).verify(data, headers)["data"]["outcome"] == "approved"
        with pytest.raises(Exception, match="signature"):
            Webhook(SECRET).verify(data.replace("approved", "denied!!"), headers)


class TestBackoff:
    schedule = Backoff(base_s=5, max_s=3600, give_up_s=86400, jitter=0.25)

    def test_doubles_from_the_base_up_to_the_cap(self) -> None:
        delays = [self.schedule.delay(n, 0.0) for n in range(1, 13)]
        assert delays[:5] == [5, 10, 20, 40, 80]
        assert max(delays) == 3600
        assert delays[-1] == 3600

    def test_jitter_only_shortens_by_at_most_its_share(self) -> None:
        assert self.schedule.delay(3, 0.999) == pytest.approx(20 * 0.75, rel=0.01)
        assert self.schedule.delay(3, 0.0) == 20

    def test_dead_lettered_once_the_next_attempt_passes_24_hours(self) -> None:
        created = 1_000_000.0
        assert self.schedule.next_attempt(3, created, created + 100, 0.0) == created + 120
        assert self.schedule.next_attempt(40, created, created + 86400 - 3600, 0.0) == (
            created + 86400)
        assert self.schedule.next_attempt(40, created, created + 86400 - 3599, 0.0) is None

    def test_the_whole_default_schedule_tries_about_30_times_in_24_hours(self) -> None:
        created = now = 0.0
        attempts = 1
        while (at := self.schedule.next_attempt(attempts, created, now, 0.5)) is not None:
            now, attempts = at, attempts + 1
        assert 24 <= attempts <= 40
        assert now <= 86400


class TestAllowList:
    rules = parse_allowed_urls("https://hooks.example.com/mfa/, https://*.corp.example,"
                               "http://127.0.0.1:8080/")

    @pytest.mark.parametrize("url", [
        "https://hooks.example.com/mfa/outcome",
        "https://hooks.example.com/mfa/",
        "https://HOOKS.example.com:443/mfa/x?y=1",
        "https://a.corp.example/anything",
        "http://127.0.0.1:8080/hook",
    ])
    def test_allowed(self, url: str) -> None:
        assert check_callback_url(url, self.rules) == url

    @pytest.mark.parametrize(("url", "why"), [
        ("https://hooks.example.com/mfa-evil/x", "matches no prefix"),
        ("https://hooks.example.com.evil.net/mfa/", "matches no prefix"),
        ("https://hooks.example.com:8443/mfa/", "matches no prefix"),
        ("https://corp.example/", "matches no prefix"),
        ("https://evilcorp.example/", "matches no prefix"),
        ("http://hooks.example.com/mfa/", "must use https"),
        ("http://127.0.0.1:9999/", "matches no prefix"),
        ("https://user:pw@hooks.example.com/mfa/", "user name or password"),
        ("ftp://hooks.example.com/mfa/", "https://host"),
        ("https://hooks.example.com/mfa/\r\nX: y", "control characters"),
        ("https://hooks.example.com/mfa/#frag", "fragment"),
        ("https://hooks.example.com:99999/mfa/", "port"),
        (42, "non-empty string"),
        ("https://hooks.example.com/mfa/" + "a" * 3000, "at most"),
        ("https://[::1", "must be a URL"),
        ("https://[abc]/", "must be a URL"),
        ("https://hooks.example.com]/mfa/", "must be a URL"),
        # yarl, which sends, would post these to /x: outside the prefix.
        ("https://hooks.example.com/mfa/../x", r"\. or \.\. segments"),
        ("https://hooks.example.com/mfa/%2e%2E/x", r"\. or \.\. segments"),
        ("https://hooks.example.com/mfa/.%2e/x", r"\. or \.\. segments"),
        ("https://hooks.example.com/mfa/./x", r"\. or \.\. segments"),
    ])
    def test_refused_with_the_reason(self, url: object, why: str) -> None:
        with pytest.raises(UrlError, match=why):
            check_callback_url(url, self.rules)

    def test_nothing_is_allowed_without_a_list(self) -> None:
        with pytest.raises(UrlError, match="ALLOWED_URLS is empty"):
            check_callback_url("https://hooks.example.com/mfa/", ())

    def test_http_only_to_loopback(self) -> None:
        check_url("http://localhost:1/x")
        check_url("http://[::1]:1/x")
        with pytest.raises(UrlError, match="https"):
            check_url("http://10.0.0.1/x")


class TestRequest:
    def _parse(self, **fields: object) -> object:
        data = {"id": RID, "user": "alice", "phone": "+12015550100", **fields}
        return parse_request(json.dumps(data), requested_at=0, default_ttl_s=60,
                             callback_rules=parse_allowed_urls("https://hooks.example.com/"))

    def test_an_allowed_callback_url_is_kept(self) -> None:
        req = self._parse(callback_url="https://hooks.example.com/a")
        assert req.callback_url == "https://hooks.example.com/a"  # type: ignore[attr-defined]

    def test_no_callback_url_is_fine(self) -> None:
        assert self._parse().callback_url == ""  # type: ignore[attr-defined]

    @pytest.mark.parametrize("url", ["https://elsewhere.example/", "http://hooks.example.com/",
                                     "", 5, "https://[::1"])
    def test_a_bad_callback_url_is_rejected_with_a_clear_detail(self, url: object) -> None:
        with pytest.raises(RequestError) as e:
            self._parse(callback_url=url)
        assert e.value.detail == "invalid_callback_url"
        assert "callback_url" in e.value.message or "webhook URL" in e.value.message


class TestWebhookIds:
    def test_an_outcomes_id_is_stable_and_a_hostile_one_is_hashed(self) -> None:
        assert outcome_webhook_id(RID, 5) == f"msg_{RID}_5"
        odd = outcome_webhook_id("é\u2028 x", 5)
        assert odd.startswith("msg_h")
        assert odd.isascii()
        assert odd == outcome_webhook_id("é\u2028 x", 5)


class TestMessages:
    fraud: ClassVar[dict[str, str]] = {
             "event": "blocked", "user": "alice", "id": RID, "number": "+12015550100",
             "actor": "ivr", "reason": "fraud_reported", "until": "2027-03-01T00:00:00.000Z",
             "at": "2026-12-01T00:00:00.000Z", "context": "{}"}

    def test_security_types(self) -> None:
        assert security_type(self.fraud) == "security.fraud_reported"
        assert security_type({"event": "fraud_reported"}) == "security.fraud_reported"
        assert security_type({"event": "blocked", "reason": "admin"}) == "security.blocked"
        assert security_type({"event": "bypass_used"}) == "security.bypass_used"
        assert security_type({"event": "pin_locked_out"}) == "security.pin_locked_out"
        for quiet in ("unblocked", "pin_set", "request_refused", "number_not_allowed"):
            assert security_type({"event": quiet}) is None

    def test_a_fraud_report_makes_a_webhook_and_an_email_with_stable_ids(self) -> None:
        out = security_deliveries("1700000000000-0", self.fraud, url="https://h.example/",
                                  recipients=("sec@example.com", "soc@example.com"),
                                  mail_events=frozenset({"fraud_reported"}))
        assert [d["channel"] for d in out] == ["webhook", "email", "email"]
        assert [d["webhook_id"] for d in out] == ["msg_audit_1700000000000-0",
                                                  "msg_audit_1700000000000-0_email1",
                                                  "msg_audit_1700000000000-0_email2"]
        assert [d["target"] for d in out[1:]] == ["sec@example.com", "soc@example.com"]
        assert json.loads(out[0]["payload"]) == self.fraud
        assert out[0]["created_at"] == "1700000000.0"

    def test_a_block_by_an_admin_is_no_email_by_default(self) -> None:
        entry = {**self.fraud, "reason": "admin", "actor": "cli"}
        out = security_deliveries("1-0", entry, url="", recipients=("a@example.com",),
                                  mail_events=frozenset({"fraud_reported"}))
        assert out == []

    def test_the_envelope_keeps_the_stored_outcome_byte_for_byte(self) -> None:
        stored = '{"id":"x","outcome":"approved","sig":"abc"}'
        body = envelope("verification.finished", "T", stored)
        assert json.loads(body) == {"type": "verification.finished", "timestamp": "T",
                                    "data": json.loads(stored)}
        assert body.endswith(',"data":' + stored + "}")

    def test_the_phone_is_masked(self) -> None:
        assert mask_phone("+12015550100") == "+120•••0100"
        assert mask_phone("+1234") == "•••"

    def test_the_fraud_email_says_who_when_and_what_to_do(self) -> None:
        d = Delivery("1-0", {"channel": "email", "target": "a@example.com",
                             "webhook_id": "msg_audit_1-0_email1",
                             "payload": json.dumps(self.fraud)})
        msg = alert_message(d, "callmfa@example.com")
        text = msg.get_content()
        assert "alice" in msg["Subject"]
        assert "fraud" in msg["Subject"]
        assert msg["To"] == "a@example.com"
        assert msg["Message-ID"] == "<msg_audit_1-0_email1@callmfa>"
        assert "+120•••0100" in text
        assert "+12015550100" not in text
        assert RID in text
        assert "2026-12-01T00:00:00.000Z" in text
        assert "callmfa unblock alice" in text
        assert "Reset alice's password" in text

    def test_the_lockout_email(self) -> None:
        mail = fraud_alert({"event": "pin_locked_out", "user": "bob", "number": "+12015550100"})
        assert "locked out" in mail.subject
        assert "callmfa pin unlock bob" in mail.text


class TestSettings:
    def test_a_webhook_url_needs_a_secret(self) -> None:
        with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
            Settings.from_env({"CALLMFA_WEBHOOK_URL": "https://h.example/"})
        with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
            Settings.from_env({"CALLMFA_WEBHOOK_URL": "https://h.example/",
                               "CALLMFA_WEBHOOK_SECRET": "whsec_c2hvcnQ="})
        s = Settings.from_env({"CALLMFA_WEBHOOK_URL": "https://h.example/",
                               "CALLMFA_WEBHOOK_SECRET": SECRET})
        assert s.security_url == "https://h.example/"
        assert SECRET not in repr(s)

    @pytest.mark.parametrize(("env", "why"), [
        ({"CALLMFA_WEBHOOK_URL": "http://h.example/"}, "WEBHOOK_URL: .*https"),
        ({"CALLMFA_WEBHOOK_ALLOWED_URLS": "https://h.example/?a=1"}, "query"),
        ({"CALLMFA_ALERT_EVENTS": "fraud_reported,nope"}, "unknown event"),
        ({"CALLMFA_SMTP_STARTTLS": "maybe"}, "on, tls or off"),
        ({"CALLMFA_SMTP_STARTTLS": "off", "CALLMFA_SMTP_HOST": "smtp.example.com",
          "CALLMFA_SMTP_USER": "callmfa", "CALLMFA_SMTP_PASSWORD": "pw"}, "clear text"),
        ({"CALLMFA_SMTP_FROM": "a@b\r\nBcc: x@y"}, "CR, LF"),
        ({"CALLMFA_WEBHOOK_BACKOFF_BASE_S": "0"}, "more than 0"),
    ])
    def test_bad_settings_are_refused_with_the_reason(self, env: dict[str, str],
                                                      why: str) -> None:
        with pytest.raises(SettingsError, match=why):
            Settings.from_env({"CALLMFA_WEBHOOK_SECRET": SECRET, **env})

    def test_plain_smtp_is_for_a_relay_here_or_one_without_a_password(self) -> None:
        for env in ({"CALLMFA_SMTP_HOST": "127.0.0.1", "CALLMFA_SMTP_PASSWORD": "pw"},
                    {"CALLMFA_SMTP_HOST": "relay.example.com"}):
            Settings.from_env({"CALLMFA_SMTP_STARTTLS": "off", **env})

    def test_the_webhooks_role(self) -> None:
        assert Settings.from_env({"CALLMFA_ROLES": "webhooks"}).role_set == {"webhooks"}
