"""No key is lost between two AGI commands (res_agi drops the keys that arrive while no
command collects them). The gap is made wide and deterministic: once the IVR has claimed
the call, Redis pauses writes for 2.5 s (CLIENT PAUSE WRITE), so that after the user's
wrong answer the IVR waits on its 'input' event before it starts the next prompt. The user
keys '5#' during the greeting and '#' 150 ms later, inside that gap: the dialplan's
StoreDTMF heard it, and the next collection (the dialplan's callmfa-collect) returns at once
with what it kept: the call is approved as soon as the gap ends, not after the retry prompt
and the input timeout. Over FastAGI and over classic AGI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.storage.store import call_key

from ..conftest import Sandbox
from .conftest import AsteriskLog, PhoneFactory

PHONE = "+12015550100"
PAUSE_MS = 2500


@pytest.fixture
async def redis(sandbox: Sandbox) -> AsyncIterator[Redis]:
    client = Redis.from_url(sandbox.redis_url)
    yield client
    await client.aclose()


async def key_in_the_gap(
    sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, redis: Redis
) -> None:
    log = await asyncio.to_thread(AsteriskLog, sandbox)
    p = phone(keys="5##", key_delay_ms=1600, key_gap_ms=150)
    rid = await client.submit(user="alice", phone=PHONE)
    for _ in range(3000):  # the IVR's claim, within 30 s
        if await redis.hexists(call_key(rid), "ivr_at"):
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the IVR never claimed the call")
    await redis.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")
    paused = time.time()
    record = await client.wait(rid, 60)

    assert record is not None
    assert record.outcome is Outcome.APPROVED
    # The '#' came inside the pause; the outcome follows the pause's end, within a couple of
    # seconds (not after the retry prompt, the greeting and the input timeout: 15 s).
    assert record.finished_at is not None
    assert record.finished_at - paused < PAUSE_MS / 1000 + 2.0
    assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()
    played = "".join(await asyncio.to_thread(log.played))
    # The retry collection returned at once with the kept '#': its prompt never played.
    assert "callmfa/retry" not in played


class TestFastAgi:
    async def test_a_key_between_two_commands_counts(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, redis: Redis
    ) -> None:
        await key_in_the_gap(sandbox, client, phone, redis)


@pytest.mark.usefixtures("classic")
class TestClassicAgi:
    async def test_a_key_between_two_commands_counts(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, redis: Redis
    ) -> None:
        await key_in_the_gap(sandbox, client, phone, redis)
