"""The RADIUS front end to end: radclient and pam_radius_auth (through pamtester) as the NAS,
the real Asterisk and sipp phone, the real Redis; refused packets; retransmissions; load.

Users are put in the local directory by ``callmfa user set`` (the first test) or, to keep
the suite short, by writing the same hash (:func:`seed`).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyrad.packet import AccessAccept
from redis import Redis

from ivr.storage.directory import user_key
from ivr.testing import PhoneBehaviour, SippPhone, access_request

from ..conftest import Sandbox, wait_until
from .conftest import PhoneFactory, _no_calls, restart_serve
from .test_operations import run_cli, scrape

RADIUS = ("127.0.0.1", 1812)
FRAUD_BLOCK_S = "86400"


@pytest.fixture(scope="module", autouse=True)
def fraud_blocks(sandbox: Sandbox) -> Iterator[None]:
    """For this module, 0# blocks the user (the suite's serve only audits it)."""
    restart_serve(sandbox, CALLMFA_FRAUD_BLOCK_S=FRAUD_BLOCK_S)
    try:
        yield
    finally:
        restart_serve(sandbox)


def secret(sandbox: Sandbox) -> str:
    return Path(sandbox.env["CALLMFA_RADIUS_SECRET_FILE"]).read_text().strip()


def redis(sandbox: Sandbox) -> Redis:
    return Redis.from_url(sandbox.redis_url)


def seed(sandbox: Sandbox, user: str, phone: str, mode: str = "standard") -> None:
    """Put ``user`` in the local directory, as ``callmfa user set`` stores it."""
    with redis(sandbox) as r:
        r.hset(user_key(user), mapping={"phone": phone, "mode": mode, "lang": "en"})


def new_user(sandbox: Sandbox, mode: str = "standard") -> str:
    user = f"rad-{uuid.uuid4().hex[:8]}"
    seed(sandbox, user, "+12015550142", mode)
    return user


def finished(sandbox: Sandbox, user: str) -> list[str]:
    """The outcomes in callmfa:events for ``user``."""
    with redis(sandbox) as r:
        entries: Any = r.xrange("callmfa:events")
    return [f[b"outcome"].decode() for _, f in entries
            if f.get(b"event") == b"finished" and f.get(b"user") == user.encode()]


@dataclass
class Answer:
    """What radclient printed: the reply's code and attributes."""

    code: str | None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    sent: int = 0
    output: str = ""

    def one(self, name: str) -> str:
        [value] = self.attributes[name]
        return value


def radclient(attributes: dict[str, str], *, key: str, retries: int = 1, timeout_s: int = 60,
              command: str = "auth", message_authenticator: bool = True) -> Answer:
    """One request with Debian's radclient (freeradius-utils) as the NAS."""
    pairs = [f"{k} = {v}" if v.startswith("0x") else f'{k} = "{v}"'
             for k, v in attributes.items()]
    if message_authenticator:
        pairs.append("Message-Authenticator = 0x00")
    out = subprocess.run(
        ["radclient", "-x", "-r", str(retries), "-t", str(timeout_s), f"{RADIUS[0]}:{RADIUS[1]}",
         command, key],
        input=", ".join(pairs) + "\n", capture_output=True, text=True,
        timeout=retries * timeout_s + 15)
    text = out.stdout + out.stderr
    answer = Answer(None, sent=len(re.findall(r"^Sent ", text, re.MULTILINE)), output=text)
    received = re.search(r"^Received (\S+) Id .*$((?:\n\t.*)*)", text, re.MULTILINE)
    if received:
        answer.code = received.group(1)
        for line in received.group(2).strip("\n").splitlines():
            name, _, value = line.strip().partition(" = ")
            answer.attributes.setdefault(name, []).append(value.strip('"'))
    return answer


def calls_placed() -> float:
    return scrape().get("callmfa_calls_placed_total{}", 0.0)


class TestRadclient:
    def test_pound_is_access_accept(self, sandbox: Sandbox, phone: PhoneFactory) -> None:
        user = f"Rad-{uuid.uuid4().hex[:8]}"
        added = run_cli(sandbox, "user", "set", user, "--phone", "+1 (201) 555-0142")
        assert added.returncode == 0, added.stdout + added.stderr
        user = user.lower()
        accepts = scrape()["callmfa_radius_accepts_total{}"]
        p = phone(keys="#")
        answer = radclient({"User-Name": user}, key=secret(sandbox))
        assert answer.code == "Access-Accept", answer.output
        assert answer.one("Reply-Message") == "Sign-in approved by phone"
        assert p.wait(10) == 0
        assert finished(sandbox, user) == ["approved"]
        assert scrape()["callmfa_radius_accepts_total{}"] == accepts + 1
        # One canonical line, bound to the verification and the NAS.
        log = (sandbox.directory / "logs" / "callmfa.log").read_text().splitlines()
        [line] = [json.loads(x) for x in log
                  if '"radius_replied"' in x
                  and (f'"user": "{user}"' in x or f'"user":"{user}"' in x)]
        assert (line["answer"], line["reason"], line["nas"]) == ("accept", "approved", "sandbox")
        assert line["nas_address"] == "127.0.0.1"
        assert uuid.UUID(line["verification_id"])

    def test_zero_pound_is_reject_and_blocks(self, sandbox: Sandbox,
                                             phone: PhoneFactory) -> None:
        user = new_user(sandbox)
        p = phone(keys="0#")
        answer = radclient({"User-Name": user}, key=secret(sandbox))
        assert answer.code == "Access-Reject", answer.output
        assert answer.one("Reply-Message") == ("Sign-in reported as fraud: contact your help "
                                               "desk")
        assert p.wait(10) == 0
        with redis(sandbox) as r:
            assert r.zscore("callmfa:blocked", user) is not None
        # Blocked: the next sign-in is refused without a call.
        before = calls_placed()
        again = radclient({"User-Name": user}, key=secret(sandbox))
        assert again.code == "Access-Reject"
        assert "blocked" in again.one("Reply-Message")
        assert calls_placed() == before

    @pytest.mark.parametrize(("behaviour", "message"), [
        ({"keys": ""}, "No key was pressed during the call: sign in again and key # on the "
                       "phone"),
        ({"reject_with": 486}, "Your phone was busy or declined the call"),
        ({"ring_forever": True}, "The call was not answered"),
    ], ids=["silence", "busy", "no-answer"])
    def test_other_outcomes_are_reject_with_their_message(
        self, sandbox: Sandbox, phone: PhoneFactory, behaviour: dict[str, Any], message: str
    ) -> None:
        user = new_user(sandbox)
        phone(**behaviour)
        answer = radclient({"User-Name": user}, key=secret(sandbox))
        assert answer.code == "Access-Reject", answer.output
        assert answer.one("Reply-Message") == message

    def test_unknown_user_is_reject_and_no_call(self, sandbox: Sandbox) -> None:
        before = calls_placed()
        answer = radclient({"User-Name": f"ghost-{uuid.uuid4().hex[:6]}"}, key=secret(sandbox))
        assert answer.code == "Access-Reject", answer.output
        assert "cannot be verified by phone" in answer.one("Reply-Message")
        assert calls_placed() == before

    def test_status_server_and_check(self, sandbox: Sandbox) -> None:
        answer = radclient({}, key=secret(sandbox), command="status", timeout_s=5)
        assert answer.code == "Access-Accept", answer.output
        assert answer.attributes["Message-Authenticator"]
        out = run_cli(sandbox, "check")
        [line] = [ln for ln in out.stdout.splitlines() if "radius" in ln.split()[:2]] or [""]
        assert "ok" in line.split()[:2], out.stdout
        assert "answers Status-Server" in line


class TestRefused:
    """BlastRADIUS: refused packets get no reply, dial nothing, and are counted."""

    @pytest.mark.parametrize("cause", ["missing_message_authenticator",
                                       "bad_message_authenticator"])
    def test_radclient_gets_no_reply(self, sandbox: Sandbox, cause: str) -> None:
        user = new_user(sandbox)
        before, drops = calls_placed(), _drops(cause)
        answer = radclient(
            {"User-Name": user}, timeout_s=2,
            key=secret(sandbox) if cause.startswith("missing") else "not-the-secret",
            message_authenticator=not cause.startswith("missing"))
        assert answer.code is None
        assert "No reply from server" in answer.output
        assert _drops(cause) == drops + 1
        assert calls_placed() == before

    def test_unknown_client_gets_no_reply(self, sandbox: Sandbox) -> None:
        user = new_user(sandbox)
        before, drops = calls_placed(), _drops("unknown_client")
        raw, _ = access_request(secret(sandbox).encode(), user)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.9", 0))  # not in the clients file
            s.settimeout(2)
            s.sendto(raw, RADIUS)
            with pytest.raises(TimeoutError):
                s.recvfrom(4096)
        assert _drops("unknown_client") == drops + 1
        assert calls_placed() == before


def _drops(cause: str) -> float:
    return scrape().get(f"callmfa_radius_drops_total{{cause={cause}}}", 0.0)


class TestRetransmissions:
    def test_radclient_resends_during_a_six_second_call(self, sandbox: Sandbox,
                                                        phone: PhoneFactory) -> None:
        """``radclient -r 5 -t 2``: copies at 0, 2 and 4 s join the call; one INVITE, one
        outcome, and the one reply answers them all."""
        user = new_user(sandbox)
        p = phone(keys="#", key_delay_ms=4500)
        joined = scrape()["callmfa_radius_retransmissions_total{answer=joined}"]
        started = time.monotonic()
        answer = radclient({"User-Name": user}, key=secret(sandbox), retries=5, timeout_s=2)
        took = time.monotonic() - started
        assert answer.code == "Access-Accept", answer.output
        assert answer.sent >= 3, answer.output
        assert took > 5
        assert p.wait(10) == 0
        assert p.received("INVITE") == 1
        assert finished(sandbox, user) == ["approved"]
        assert scrape()["callmfa_radius_retransmissions_total{answer=joined}"] >= joined + 2

    def test_every_copy_gets_the_same_answer(self, sandbox: Sandbox,
                                             phone: PhoneFactory) -> None:
        """The same datagram sent during the call and after it: the same reply bytes."""
        user = new_user(sandbox)
        p = phone(keys="#", key_delay_ms=1500)
        raw, packet = access_request(secret(sandbox).encode(), user)
        replies = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            deadline = time.monotonic() + 30
            while not replies and time.monotonic() < deadline:
                s.sendto(raw, RADIUS)
                try:
                    replies.append(s.recvfrom(4096)[0])
                except TimeoutError:
                    continue
            for _ in range(2):  # copies of the finished request: from the reply cache
                s.sendto(raw, RADIUS)
                replies.append(s.recvfrom(4096)[0])
        assert len(set(replies)) == 1
        assert packet.CreateReply(packet=replies[0]).code == AccessAccept
        assert p.wait(10) == 0
        assert p.received("INVITE") == 1
        assert finished(sandbox, user) == ["approved"]


class TestNumberMatch:
    def _challenge(self, sandbox: Sandbox, tmp_path: Path, keys: str | None) -> Answer:
        """A match user signs in; the phone (started once the number is known) keys ``keys``
        (None: the number shown) and #; returns the answer to the challenge response."""
        user = new_user(sandbox, mode="match")
        wait_until(lambda: _no_calls(sandbox), 40, "the sandbox's calls to end")
        first = radclient({"User-Name": user, "User-Password": "pw"}, key=secret(sandbox))
        assert first.code == "Access-Challenge", first.output
        found = re.fullmatch(r"Answer the call from (.+) and key (\d\d), then #",
                             first.one("Reply-Message"))
        assert found, first.one("Reply-Message")
        code = found.group(2)
        # The call was placed with the challenge; its INVITE is resent until the phone runs.
        phone = SippPhone(PhoneBehaviour(keys=(code if keys is None else keys) + "#",
                                         speech="Hello."),
                          workdir=tmp_path / "phone", address=sandbox.env["CALLMFA_PHONE"])
        phone.start()
        try:
            second = radclient({"User-Name": user, "User-Password": "typed",
                                "State": first.one("State")}, key=secret(sandbox))
            assert phone.wait(10) == 0
        finally:
            phone.stop()
        return second

    def test_the_number_keyed_is_accept(self, sandbox: Sandbox, tmp_path: Path) -> None:
        assert self._challenge(sandbox, tmp_path, None).code == "Access-Accept"

    def test_a_wrong_number_is_reject(self, sandbox: Sandbox, tmp_path: Path) -> None:
        answer = self._challenge(sandbox, tmp_path, "00")
        assert answer.code == "Access-Reject", answer.output
        assert "wrong" in answer.one("Reply-Message")


@pytest.fixture
def pam_service(sandbox: Sandbox, tmp_path: Path) -> Iterator[str]:
    """A PAM service that asks the front through pam_radius_auth (the SSH path), from
    127.0.0.2: Debian 12's pam_radius_auth 2.0 sends no Message-Authenticator, and the
    sandbox lists that address with require_message_authenticator=no."""
    conf = tmp_path / "pam_radius_auth.conf"
    conf.write_text(f"{RADIUS[0]}:{RADIUS[1]} {secret(sandbox)} 60 127.0.0.2\n")
    conf.chmod(0o600)
    name = f"callmfa-radius-{sandbox.netns}"
    service = Path("/etc/pam.d") / name
    service.write_text(f"auth required pam_radius_auth.so conf={conf}\n")
    try:
        yield name
    finally:
        service.unlink()


class TestPam:
    @pytest.mark.parametrize(("keys", "ok"), [("#", True), ("0#", False)],
                             ids=["approves", "refuses"])
    def test_pamtester(self, sandbox: Sandbox, phone: PhoneFactory, pam_service: str,
                       keys: str, ok: bool) -> None:
        user = new_user(sandbox)
        p = phone(keys=keys)
        out = subprocess.run(["pamtester", "-v", pam_service, user, "authenticate"],
                             input="password\n", capture_output=True, text=True, timeout=90)
        assert (out.returncode == 0) is ok, out.stdout + out.stderr
        assert ("successfully authenticated" in out.stderr + out.stdout) is ok
        assert p.wait(10) == 0
        assert finished(sandbox, user) == ["approved" if ok else "fraud_reported"]


class TestLoad:
    def test_fifty_at_once_for_fifty_users(self, sandbox: Sandbox,
                                           phone: PhoneFactory) -> None:
        users = [new_user(sandbox) for _ in range(50)]
        p = phone(calls=50, keys="#")
        key = secret(sandbox).encode()
        codes = asyncio.run(_many(users, key))  # every reply verified against its request
        p.wait(30)
        # Each answer is its verification's: Accept exactly for the approved ones, one
        # outcome per user. (Approving all 50 is the phone's and Asterisk's part: on a
        # loaded 2-core host a few calls may end no_input, and their answer is a Reject.)
        outcomes = {user: finished(sandbox, user) for user in users}
        assert all(len(o) == 1 for o in outcomes.values()), outcomes
        for user, code in zip(users, codes, strict=True):
            assert (code == AccessAccept) is (outcomes[user] == ["approved"]), (user, code)
        approved = sum(o == ["approved"] for o in outcomes.values())
        assert approved >= 45, outcomes


async def _many(users: list[str], key: bytes) -> list[int]:
    """One Access-Request per user, all at once, each reply checked against its request."""
    loop = asyncio.get_running_loop()

    async def one(user: str) -> int:
        raw, packet = access_request(key, user)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            await loop.sock_connect(s, RADIUS)
            await loop.sock_sendall(s, raw)
            data = await asyncio.wait_for(loop.sock_recv(s, 4096), 60)
        finally:
            s.close()
        reply = packet.CreateReply(packet=data)
        assert packet.VerifyReply(reply, data, enforce_ma=True)
        code: int = reply.code
        return code

    return list(await asyncio.gather(*(one(u) for u in users)))


class TestReplyBy:
    def test_no_outcome_in_time_is_reject_not_answered_in_time(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """CALLMFA_RADIUS_REPLY_BY_S=3 and a phone that rings for 5 s: the NAS has its
        Access-Reject at 3 s."""
        restart_serve(sandbox, CALLMFA_FRAUD_BLOCK_S=FRAUD_BLOCK_S,
                      CALLMFA_RADIUS_REPLY_BY_S="3")
        try:
            user = new_user(sandbox)
            phone(ring_forever=True)
            started = time.monotonic()
            answer = radclient({"User-Name": user}, key=secret(sandbox))
            took = time.monotonic() - started
            assert answer.code == "Access-Reject", answer.output
            assert answer.one("Reply-Message") == "The call was not answered in time"
            assert 2.5 < took < 4.5
        finally:
            restart_serve(sandbox, CALLMFA_FRAUD_BLOCK_S=FRAUD_BLOCK_S)


class TestLdapPassword:
    def test_right_password_then_pound_wrong_password_uncalled(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """CALLMFA_RADIUS_PASSWORD=ldap against the sandbox's slapd (ldap-alice)."""
        restart_serve(sandbox, CALLMFA_FRAUD_BLOCK_S=FRAUD_BLOCK_S,
                      CALLMFA_RADIUS_PASSWORD="ldap")
        try:
            password = (sandbox.directory / "ldap-user-password").read_text().strip()
            p = phone(keys="#")
            before = calls_placed()
            wrong = radclient({"User-Name": "ldap-alice", "User-Password": password + "x"},
                              key=secret(sandbox))
            assert wrong.code == "Access-Reject", wrong.output
            assert wrong.one("Reply-Message") == "Wrong user name or password"
            assert calls_placed() == before
            assert p.received("INVITE") == 0
            right = radclient({"User-Name": "ldap-alice", "User-Password": password},
                              key=secret(sandbox))
            assert right.code == "Access-Accept", right.output
            assert p.wait(10) == 0
            [(number, count)] = p.invites().items()
            assert count == 1
            assert number.endswith("12015550181")  # the number LDAP holds
        finally:
            restart_serve(sandbox, CALLMFA_FRAUD_BLOCK_S=FRAUD_BLOCK_S)
