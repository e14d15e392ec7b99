"""Load generators: closed loop (N calls in flight) and open loop (calls per second).

Two ways to place a call, each completed only when its channel has hung up, so that
"in flight" means channels in Asterisk for both:

- ``CallmfaCalls``: the real contract, a request in Redis and its outcome from Redis;
- ``ApiCalls``: the same through the HTTP API (POST, then GET ?wait=60);
- ``DialplanCalls``: the floor, AMI Originate straight into ``[bench-baseline]``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp

from ivr.client import VerificationClient
from ivr.exceptions import AmiError
from ivr.tasks import cancel_and_wait
from ivr.transport.ami import AmiClient, ChannelWatch

CALL_TIMEOUT_S = 60.0
BASELINE_OK_CAUSE = 16  # [bench-baseline] hangs up with 16 after '#', 31 otherwise


@dataclass
class CallResult:
    """One call as the load generator saw it (epoch seconds)."""

    number: str
    submitted_at: float
    outcome_at: float | None = None
    ended_at: float | None = None
    outcome: str = "timeout"
    rid: str = ""

    @property
    def ok(self) -> bool:
        """Approved (callmfa) or '#' read (baseline), and the call ended."""
        return self.outcome in ("approved", f"cause_{BASELINE_OK_CAUSE}") \
            and self.ended_at is not None


Placer = Callable[[str], Awaitable[CallResult]]


# US area codes under which every 555-XXXX is a valid number (libphonenumber): 50,000 numbers.
AREA_CODES = ("201", "202", "203", "205", "206")


def numbers() -> Iterator[str]:
    """Unique dialled numbers, all valid (callmfa refuses others): the phone's trace is
    keyed on them."""
    return (f"+1{area}555{n:04d}" for area in AREA_CODES for n in range(10_000))


async def _ended(ami: AmiClient, uniqueid: str, watch: ChannelWatch, result: CallResult) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(watch.hangup), CALL_TIMEOUT_S)
        result.ended_at = time.time()
    except (TimeoutError, AmiError):
        return
    finally:
        ami.unwatch(uniqueid)


class CallmfaCalls:
    """A verification through Redis; the bench's AMI connection sees the channel end."""

    def __init__(self, client: VerificationClient, ami: AmiClient) -> None:
        self._client = client
        self._ami = ami

    async def __call__(self, number: str) -> CallResult:
        """Submit, wait for the outcome, then for the hang-up."""
        rid = str(uuid.uuid4())
        result = CallResult(number, time.time(), rid=rid)
        # Watch before submitting, so that no Hangup event can be missed.
        watch = self._ami.watch(rid)
        ended = asyncio.create_task(_ended(self._ami, rid, watch, result))
        try:
            # One user per call: admission allows one call in flight per user.
            await self._client.submit(user=f"bench{number}", phone=number, request_id=rid)
            record = await self._client.wait(rid, CALL_TIMEOUT_S)
            result.outcome_at = time.time()
            if record is not None:
                result.outcome = record.outcome.value
                if record.detail:
                    result.outcome += f"/{record.detail}"
            await ended
        finally:
            await cancel_and_wait(ended)
        return result


class ApiCalls:
    """A verification through the HTTP API (role api): POST /v1/verifications, then a long
    poll for the outcome; the bench's AMI connection sees the channel end."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str,
                 ami: AmiClient) -> None:
        self._http = http
        self._url = url
        self._auth = {"Authorization": f"Bearer {token}"}
        self._ami = ami

    async def __call__(self, number: str) -> CallResult:
        """POST, GET ?wait=60, then wait for the hang-up."""
        rid = str(uuid.uuid4())
        result = CallResult(number, time.time(), rid=rid)
        watch = self._ami.watch(rid)
        ended = asyncio.create_task(_ended(self._ami, rid, watch, result))
        try:
            async with self._http.post(
                f"{self._url}/v1/verifications", headers=self._auth,
                json={"id": rid, "user": f"bench{number}", "phone": number},
            ) as r:
                if r.status != 202:
                    result.outcome = f"http_{r.status}"
                    return result
            async with self._http.get(f"{self._url}/v1/verifications/{rid}?wait=60",
                                      headers=self._auth) as r:
                body = await r.json()
            result.outcome_at = time.time()
            if r.status == 200:
                result.outcome = body["outcome"] + (f"/{body['detail']}" if body["detail"]
                                                    else "")
            await ended
        except (aiohttp.ClientError, TimeoutError) as e:
            result.outcome = type(e).__name__
        finally:
            await cancel_and_wait(ended)
        return result


class DialplanCalls:
    """The floor: the same call in pure dialplan, originated by the bench through AMI."""

    def __init__(self, ami: AmiClient, context: str = "bench-baseline") -> None:
        self._ami = ami
        self._context = context

    async def __call__(self, number: str) -> CallResult:
        """Originate, then wait for the Hangup event and its cause."""
        cid = str(uuid.uuid4())
        result = CallResult(number, time.time(), rid=cid)
        watch = self._ami.watch(cid)
        try:
            reply = await self._ami.originate(
                {"Channel": f"PJSIP/{number}@callmfa-phone", "Context": self._context,
                 "Exten": "s", "Priority": "1", "Timeout": "10000", "ChannelId": cid},
                {}, timeout_s=CALL_TIMEOUT_S,
            )
            if not reply.answered:
                result.outcome = f"reason_{reply.reason}"
                return result
            cause = await asyncio.wait_for(asyncio.shield(watch.hangup), CALL_TIMEOUT_S)
            result.outcome_at = result.ended_at = time.time()
            result.outcome = f"cause_{cause}"
        except (TimeoutError, AmiError) as e:
            result.outcome = type(e).__name__
        finally:
            self._ami.unwatch(cid)
        return result


async def closed_loop(
    place: Placer, dial: Iterator[str], *, calls: int, concurrency: int, ramp_s: float = 0.0
) -> list[CallResult]:
    """``concurrency`` callers, each placing its next call when the last one ended.

    The callers start spread over ``ramp_s`` (about one call's length): started at once,
    they would stay in step and the load would be bursts of ``concurrency`` calls.
    """
    results: list[CallResult] = []
    todo = iter(range(calls))
    callers = min(concurrency, calls)

    async def caller(i: int) -> None:
        await asyncio.sleep(ramp_s * i / callers)
        for _ in todo:  # shared: each caller takes the next call
            results.append(await place(next(dial)))

    await asyncio.gather(*(caller(i) for i in range(callers)))
    return results


async def open_loop(
    place: Placer, dial: Iterator[str], *, calls: int, rate: float
) -> list[CallResult]:
    """Calls arrive at ``rate`` per second whatever happens to earlier ones."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(calls):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(place(next(dial))))
    return list(await asyncio.gather(*tasks))
