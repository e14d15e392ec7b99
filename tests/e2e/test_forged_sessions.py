"""Forgeries against the real chain.

- Forged AGI sessions: a local process that is not Asterisk speaks FastAGI (or runs the
  classic script) naming a live verification, as an attacker who read the id from
  callmfa:events would. It can neither approve, deny, report fraud nor block; the real call
  ends as the phone made it end, and the attempt is logged and counted. The call's token
  appears in none of callmfa's events, logs and outcomes, nor in Asterisk's log at the
  sandbox's verbosity.
- Replayed outcomes: a genuine signed approval copied into another request's result key is
  refused by the client; a forged message on callmfa:results does not stop the waiter,
  which gets its real outcome at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.request

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.exceptions import OutcomeBindingError
from ivr.storage.keys import BLOCKED
from ivr.storage.store import EVENTS, RESULTS_CHANNEL, call_key, result_key

from ..conftest import E2E_SETTINGS, Sandbox, wait_until
from .conftest import PhoneFactory, audit_of

PHONE = "+12015550100"
PROBE = ("GET FULL VARIABLE ${CALLMFA_TOKEN}|${AMDSTATUS}|${AMDCAUSE}|${CALLMFA_EARLY_KEYS}|"
         "|${CALLMFA_COLLECT}")
_TOKEN = re.compile(r"CALLMFA_TOKEN=([0-9a-f]{48})")


async def forge(rid: str, keys: str, *, token: str = "00" * 24) -> list[str]:
    """One forged FastAGI session for ``rid`` that answers every command as if the user
    pressed ``keys``; returns the commands the IVR sent before it closed the session."""
    reader, writer = await asyncio.open_connection("127.0.0.1", 4573)
    headers = [
        "agi_network: yes", "agi_network_script: verify",
        "agi_request: agi://127.0.0.1:4573/verify", "agi_channel: PJSIP/callmfa-phone-0000ffff",
        "agi_language: en", "agi_type: PJSIP", f"agi_uniqueid: {rid}",
        "agi_context: callmfa-verify", "agi_extension: s", "agi_priority: 6",
        f"agi_arg_1: {rid}",
    ]
    writer.write(("\n".join(headers) + "\n\n").encode())
    commands: list[str] = []
    try:
        async with asyncio.timeout(10):
            while line := await reader.readline():
                command = line.decode().rstrip("\n")
                commands.append(command)
                if command.startswith("GET FULL VARIABLE ${CALLMFA_TOKEN}"):
                    answer = f"200 result=1 ({token}|HUMAN||{keys}|)"
                elif command.startswith("GET FULL VARIABLE ${READSTATUS}"):
                    answer = f"200 result=1 (OK:{keys.rstrip('#')})"
                elif command.startswith("GET DATA"):
                    answer = f"200 result={keys.rstrip('#')}"
                else:
                    answer = "200 result=0"
                writer.write(f"{answer}\n".encode())
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
    return commands


def refused_count(reason: str) -> float:
    port = E2E_SETTINGS["CALLMFA_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'callmfa_ivr_sessions_refused_total{{reason="{reason}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


async def wait_for_event(redis: Redis, rid: str, name: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            for _, fields in await redis.xrange(EVENTS):
                if fields.get(b"id") == rid.encode() and fields.get(b"event") == name.encode():
                    return
            await asyncio.sleep(0.02)


@pytest.fixture
async def redis(sandbox: Sandbox) -> Redis:
    client = Redis.from_url(sandbox.redis_url)
    yield client  # type: ignore[misc]
    await client.aclose()


class TestForgedFastAgi:
    async def test_forger_while_it_rings_cannot_approve_or_report_fraud(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, redis: Redis
    ) -> None:
        """While the phone rings, forged sessions answer '#' and '0#': refused at the probe.
        The user stays silent, so the verification ends no_input, and 'alice' is not
        blocked; the metric and the log show the attempts with the peer address."""
        before = refused_count("bad_token")
        log_start = (sandbox.directory / "logs" / "callmfa.log").stat().st_size
        p = phone(keys="", answer_delay_ms=2500)
        rid = await client.submit(user="alice", phone=PHONE)
        await wait_for_event(redis, rid, "ringing")

        assert await forge(rid, "#") == [PROBE]
        assert len(await forge(rid, "0#")) == 1
        record = await client.wait(rid, 60)

        assert record is not None
        assert record.outcome is Outcome.NO_INPUT
        assert p.wait(20) == 0, p.errors()
        assert await audit_of(sandbox, rid) == []
        assert await redis.zscore(BLOCKED, "alice") is None
        assert refused_count("bad_token") == before + 2
        with (sandbox.directory / "logs" / "callmfa.log").open() as f:
            f.seek(log_start)
            refused = [line for line in f if '"ivr_session_refused"' in line and rid in line]
        assert len(refused) == 2
        assert all('"peer": "127.0.0.1:' in line or '"peer":"127.0.0.1:' in line
                   for line in refused)

    async def test_forger_during_the_greeting_then_replayed_changes_nothing(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, redis: Redis
    ) -> None:
        """During the greeting a forger keys '0#'; the user keys '#': approved, no fraud
        audit. Replayed after the call ended, the forgery still changes nothing. The
        token Asterisk holds for the call is nowhere in callmfa's output or Asterisk's log."""
        p = phone(keys="#", key_delay_ms=2500)
        rid = await client.submit(user="alice", phone=PHONE)
        await wait_for_event(redis, rid, "answered")
        token = await asyncio.to_thread(channel_token, sandbox)

        assert len(await forge(rid, "0#")) == 1
        assert len(await forge(rid, "0#", token="")) == 1
        record = await client.wait(rid, 60)
        assert record is not None
        assert record.outcome is Outcome.APPROVED
        assert p.wait(20) == 0, p.errors()
        assert len(await forge(rid, "0#")) == 1  # the replay, after the call
        await asyncio.sleep(0.2)

        assert (await client.wait(rid, 1)) == record
        assert await audit_of(sandbox, rid) == []
        assert await redis.zscore(BLOCKED, "alice") is None
        # Where the token must not be.
        assert token not in (await redis.get(result_key(rid)) or b"").decode()
        assert token not in str(await redis.hgetall(call_key(rid)))
        assert token not in str(await redis.xrange(EVENTS))
        for name in ("callmfa.log", "asterisk.log"):
            assert token not in (sandbox.directory / "logs" / name).read_text(errors="replace")


class TestReplayedOutcomes:
    async def test_an_approval_copied_to_another_request_is_refused(
        self, client: VerificationClient, phone: PhoneFactory, redis: Redis
    ) -> None:
        """A is approved (signed by serve). While B rings, its result key gets a copy of
        A's outcome: the client refuses it for B."""
        p = phone(calls=2, keys="#", key_delay_ms=500, answer_delay_ms=1500)
        a = await client.verify(user="alice", phone=PHONE, timeout_s=60)
        assert a is not None
        assert a.outcome is Outcome.APPROVED
        b = await client.submit(user="alice", phone=PHONE)
        await wait_for_event(redis, b, "ringing")
        await redis.set(result_key(b), await redis.get(result_key(a.id)) or b"")

        with pytest.raises(OutcomeBindingError):
            await client.wait(b, 60)
        assert p.wait(30) == 0, p.errors()

    async def test_a_forged_message_does_not_stop_the_waiter(
        self, client: VerificationClient, phone: PhoneFactory, redis: Redis
    ) -> None:
        """While the user is being called, forged messages for the request are published:
        the waiter ignores them and gets the real approval the moment '#' is stored."""
        p = phone(keys="#", key_delay_ms=2000)
        rid = await client.submit(user="alice", phone=PHONE)
        waiting = asyncio.create_task(client.wait(rid, 60))
        await wait_for_event(redis, rid, "answered")
        for forged in ({"id": rid, "user": "alice", "outcome": "approved"},
                       {"id": rid, "outcome": "approved", "sig": "é" * 64},
                       {"id": rid, "outcome": "no_such_value"}):
            await redis.publish(RESULTS_CHANNEL, json.dumps(forged))
        await asyncio.sleep(0.2)
        assert not waiting.done()

        record = await waiting
        assert record is not None
        assert record.outcome is Outcome.APPROVED
        assert record.input_at is not None
        assert record.finished_at is not None
        assert p.wait(20) == 0, p.errors()


def channel_token(sandbox: Sandbox) -> str:
    """The CALLMFA_TOKEN of the sandbox's one live call, as an Asterisk console user sees
    it (``core show channel``)."""
    names: list[str] = []

    def live() -> bool:
        out = sandbox.asterisk("core show channels concise")
        names[:] = [line.split("!")[0] for line in out.splitlines() if "!" in line]
        return bool(names)

    wait_until(live, 10, "the call's channel")
    found = _TOKEN.search(sandbox.asterisk(f"core show channel {names[0]}"))
    assert found, "the channel has no CALLMFA_TOKEN"
    return found.group(1)


class TestForgedClassic:
    async def test_forged_classic_script_run_cannot_approve(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, redis: Redis
    ) -> None:
        """A local user runs the classic AGI script by hand with forged AGI input naming a
        ringing verification and answering '#': the script refuses it and stores nothing."""
        p = phone(keys="", answer_delay_ms=3000)
        rid = await client.submit(user="alice", phone=PHONE)
        await wait_for_event(redis, rid, "ringing")

        commands = await asyncio.to_thread(forge_classic, sandbox, rid)
        record = await client.wait(rid, 60)

        assert not any(c.startswith(("EXEC Read", "GOSUB", "GET DATA")) for c in commands), commands
        assert any("AGI session refused (bad_token)" in c for c in commands), commands
        assert record is not None
        assert record.outcome is Outcome.NO_INPUT
        assert p.wait(20) == 0, p.errors()
        assert await audit_of(sandbox, rid) == []


def forge_classic(sandbox: Sandbox, rid: str) -> list[str]:
    """Run the sandbox's installed classic script with forged AGI input; its commands."""
    root = sandbox.env["CALLMFA_ASTERISK_ROOT"]
    key = sandbox.netns
    with subprocess.Popen(
        ["chroot", root, "python3", f"/var/lib/asterisk-{key}/agi-bin/callmfa-verify.agi", rid],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        env={"AST_CONFIG_DIR": f"/etc/asterisk-{key}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        headers = ["agi_request: callmfa-verify.agi", "agi_channel: PJSIP/x-1",
                   f"agi_uniqueid: {rid}", f"agi_arg_1: {rid}"]
        proc.stdin.write("\n".join(headers) + "\n\n")
        commands = []
        for line in proc.stdout:
            command = line.rstrip("\n")
            commands.append(command)
            if command.startswith("GET FULL VARIABLE ${CALLMFA_TOKEN}"):
                answer = f"200 result=1 ({'00' * 24}|HUMAN||#|)"
            elif command.startswith("GET FULL VARIABLE ${READSTATUS}"):
                answer = "200 result=1 (OK:)"
            else:
                answer = "200 result=0"
            proc.stdin.write(answer + "\n")
        proc.stdin.close()
    return commands
