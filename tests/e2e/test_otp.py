"""Voice one-time codes (mode otp) through the real chain: '#' first, then the code twice."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.storage.keys import EVENTS, REQUESTS

from ..conftest import REPO, Sandbox
from .conftest import AsteriskLog, PhoneFactory, redis_dump

PHONE = "+12015550100"
CODE = "4829173"  # seven digits, no two alike in a row: the order is checkable
VOICEMAIL = ("Hi, you have reached the voicemail of Alice Example. I am not available right "
             "now. Please leave your name, your number and a short message after the tone, "
             "and I will call you back as soon as I can.")
_DIGIT = re.compile(r"'callmfa/digit_(\d)[.']")
_PROMPT = re.compile(r"'callmfa/(\w+)[.']")


def digits_played(played: list[str]) -> str:
    """The digits Asterisk's log says it played, in order, as one string."""
    return "".join(m.group(1) for line in played if (m := _DIGIT.search(line)))


async def otp_call(client: VerificationClient, user: str, code: str = CODE,
                   **kw: object) -> OutcomeRecord:
    record = await client.verify(user=user, phone=PHONE, mode="otp", otp=code, timeout_s=60,
                                 **kw)
    assert record is not None, "no outcome within 60 s"
    return record


async def code_nowhere(sandbox: Sandbox, code: str) -> None:
    """The code is in no log line (serve's, Asterisk's, the phones'), event, outcome or
    Redis key, and no request is left in the stream."""
    # The code as a number of its own: not inside a longer one (a timestamp, an entry id), nor
    # an Asterisk thread id such as VERBOSE[5831], which a 4-digit code can equal by chance.
    alone = re.compile(rf"(?<![0-9\[]){code}(?![0-9\]])")
    for log in (sandbox.directory / "logs").glob("*.log"):
        found = alone.search(log.read_text(errors="replace"))
        assert found is None, (log, found)
    assert re.search(alone.pattern.encode(), await redis_dump(sandbox)) is None
    redis = Redis.from_url(sandbox.redis_url)
    try:
        assert await redis.xlen(REQUESTS) == 0
    finally:
        await redis.aclose()


class TestOtp:
    async def test_pound_hears_the_code_twice_and_is_delivered(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'#' after the greeting: Asterisk plays the digits, in order, twice; delivered.
        Then the code is in no log line, event, outcome or Redis key."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", key_delay_ms=1500)
        record = await otp_call(client, "otp-user")
        assert (record.outcome, record.detail) == (Outcome.DELIVERED, None)
        assert await asyncio.to_thread(p.wait, 30) == 0, p.errors()  # the goodbye too
        played = await asyncio.to_thread(log.played)
        ours = [line for line in played if "'callmfa/" in line]
        names = [m.group(1) for line in ours if (m := _PROMPT.search(line))]
        assert names.index("otp_greeting") < names.index("otp_code_is") \
            < names.index("otp_again") < names.index("otp_menu"), names
        assert digits_played(played) == CODE * 2, played
        assert "otp_goodbye" in names
        await code_nowhere(sandbox, CODE)

    async def test_star_reads_it_again(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'*' after the two readings: the code is read twice more (in French for lang fr);
        delivered all the same."""
        code = "5831"
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        # '#' at 1.5 s; the two readings of 4 digits take about 9 s: '*' lands in the menu
        # (or, on a slow machine, in the second reading, which then starts again).
        p = phone(keys="#*", key_delay_ms=1500, key_gap_ms=11000)
        record = await otp_call(client, "otp-again", code, lang="fr")
        assert record.outcome is Outcome.DELIVERED
        assert await asyncio.to_thread(p.wait, 40) == 0, p.errors()
        played = await asyncio.to_thread(log.played)
        digits = digits_played(played)
        assert digits.endswith(code * 2), played
        assert digits.count(code) >= 3, played
        assert all("(language 'fr')" in line for line in played if "'callmfa/" in line)
        await code_nowhere(sandbox, code)

    async def test_no_pound_gets_no_digit(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A phone that never presses '#': no_input, and not one digit is played."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="")
        record = await otp_call(client, "otp-silent")
        assert (record.outcome, record.detail) == (Outcome.NO_INPUT, "timeout")
        await asyncio.to_thread(p.wait, 30)
        played = await asyncio.to_thread(log.played)
        assert any("'callmfa/otp_greeting." in line for line in played), played
        assert digits_played(played) == ""
        await code_nowhere(sandbox, CODE)

    async def test_machine_greeting_gets_no_digit(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A voicemail's long greeting, then '#' (its beep menu): machine_answered, and no
        digit (nor any prompt of ours) is played."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", speech=VOICEMAIL, key_delay_ms=200)
        record = await otp_call(client, "otp-machine")
        assert (record.outcome, record.input_at) == (Outcome.MACHINE_ANSWERED, None)
        p.stop()
        played = await asyncio.to_thread(log.played)
        assert digits_played(played) == ""
        assert not any("'callmfa/otp_" in line for line in played), played
        await code_nowhere(sandbox, CODE)


# --- the provider endpoints, driven with each vendor's documented payload ---

FIXTURES = REPO / "tests" / "fixtures" / "providers"
VENDOR_CASES = [
    ("privacyidea", "privacyidea_gtx_get"),
    ("authentik", "authentik_generic"),
    ("okta", "okta_telephony_hook"),
    ("linotp", "linotp_custom_voice"),
]
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def vendor_fixture(name: str) -> dict[str, Any]:
    """The fixture, its number replaced by the sandbox's phone (the vendors' example
    numbers are German or invalid: callmfa's number policy rightly refuses them)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    text = json.dumps({k: data[k] for k in ("query", "form", "json") if k in data})
    for number in ("+4917012345678", "9876543210"):
        text = text.replace(number, PHONE)
    data.update(json.loads(text))
    return data


def credentials(vendor: str, token: str) -> dict[str, str]:
    """Each vendor's documented auth: Basic (privacyIDEA, LinOTP's server_url), Bearer
    (authentik), the authScheme header (Okta)."""
    basic = "Basic " + base64.b64encode(f"callmfa:{token}".encode()).decode()
    return {"privacyidea": {"Authorization": basic}, "linotp": {"Authorization": basic},
            "authentik": {"Authorization": f"Bearer {token}"},
            "okta": {"X-Okta-Hook-Secret": token}}[vendor]


@pytest.fixture
def endpoints(sandbox: Sandbox) -> str:
    """The provider endpoints as the sandbox's `callmfa serve` mounts them on its HTTP API
    (role api), with the sandbox's provider token: their base URL."""
    return f"http://127.0.0.1:{sandbox.env['CALLMFA_API_PORT']}"


@pytest.fixture
def token(sandbox: Sandbox) -> str:
    """The token the sandbox gives every provider endpoint ($SB/provider-token)."""
    return (sandbox.directory / "provider-token").read_text().strip()


async def post_fixture(base: str, vendor: str, data: dict[str, Any],
                       headers: dict[str, str]) -> tuple[int, str, float]:
    """Send the fixture as the vendor does; (status, body, seconds to the reply)."""
    url = f"{base}/providers/{vendor}"
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        if data["method"] == "GET":
            resp = await http.get(url, params=data["query"], headers=headers)
        else:
            resp = await http.post(url, json=data["json"], headers=headers)
        async with resp:
            return resp.status, await resp.text(), time.monotonic() - started


class TestProviderEndpoints:
    @pytest.mark.parametrize(("vendor", "name"), VENDOR_CASES)
    async def test_fixture_places_a_call_that_plays_its_code(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
        endpoints: str, token: str, vendor: str, name: str,
    ) -> None:
        """The vendor's payload: its success reply (Okta's within 3 s), then a call that
        plays its code twice, delivered; the code in no log line or Redis key after."""
        data = vendor_fixture(name)
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", key_delay_ms=1000)
        status, body, took = await post_fixture(endpoints, vendor, data,
                                                credentials(vendor, token))
        assert status == 200, body
        if vendor == "okta":
            assert took < 3
            value = json.loads(body)["commands"][0]["value"][0]
            assert value["status"] == "SUCCESSFUL"
            rid = value["transactionId"]
        else:
            found = _ID.search(body)
            assert found, body
            rid = found.group(0)
        if vendor == "privacyidea":
            assert "ACCEPTED" in body  # its RETURN_SUCCESS
        record = await client.wait(rid, 60)
        assert record is not None
        assert record.outcome is Outcome.DELIVERED
        assert await asyncio.to_thread(p.wait, 40) == 0, p.errors()
        assert digits_played(await asyncio.to_thread(log.played)) == data["code"] * 2
        await code_nowhere(sandbox, data["code"])

    @pytest.mark.parametrize(("vendor", "name"), VENDOR_CASES)
    async def test_bad_credential_gets_the_failure_reply_and_no_call(
        self, sandbox: Sandbox, endpoints: str, vendor: str, name: str
    ) -> None:
        """A wrong token: 401 (privacyIDEA: its RETURN_FAIL text; Okta: an error object),
        and nothing is queued."""
        redis = Redis.from_url(sandbox.redis_url)
        try:
            before = await redis.xlen(EVENTS)
            status, body, _ = await post_fixture(endpoints, vendor, vendor_fixture(name),
                                                 credentials(vendor, "not-the-token"))
            assert (status, await redis.xlen(REQUESTS), await redis.xlen(EVENTS)) \
                == (401, 0, before)
        finally:
            await redis.aclose()
        if vendor == "privacyidea":
            assert body.startswith("FAILED")
        if vendor == "okta":
            assert json.loads(body)["error"]["errorSummary"]
