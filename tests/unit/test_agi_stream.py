"""The FastAGI stream's reads by deadline: one timer per connection, moved when it fires."""

from __future__ import annotations

import asyncio

import pytest

from ivr.transport.fastagi import AgiStream

LIMIT = 64


class Transport:
    """What the stream calls on its transport in these tests."""

    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def stream() -> AgiStream:
    s = AgiStream(lambda _s: None, limit=LIMIT)
    s.connection_made(Transport())  # type: ignore[arg-type]
    return s


def later(s: AgiStream, delay_s: float, data: bytes) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay_s, s.data_received, data)


async def test_a_buffered_line_is_read_at_once() -> None:
    s = stream()
    s.data_received(b"200 result=0\nHANGUP\n")

    assert await s.readline_by(s.time()) == b"200 result=0\n"
    assert await s.readline_by(s.time()) == b"HANGUP\n"


async def test_no_line_by_the_deadline_is_a_timeout() -> None:
    s = stream()
    start = s.time()

    with pytest.raises(TimeoutError):
        await s.readline_by(start + 0.05)

    assert 0.04 <= s.time() - start < 1


async def test_a_later_read_outlives_the_first_reads_timer() -> None:
    """The timer set for the first read's deadline fires during the second read, whose
    deadline is later: it moves on, and the line that comes in time is read."""
    s = stream()
    later(s, 0.01, b"one\n")
    assert await s.readline_by(s.time() + 0.05) == b"one\n"

    later(s, 0.1, b"two\n")
    assert await s.readline_by(s.time() + 1) == b"two\n"


async def test_an_earlier_deadline_than_the_timers_is_kept() -> None:
    s = stream()
    later(s, 0.01, b"one\n")
    assert await s.readline_by(s.time() + 30) == b"one\n"
    start = s.time()

    with pytest.raises(TimeoutError):
        await s.readline_by(start + 0.05)

    assert s.time() - start < 1


async def test_the_end_of_the_stream_ends_a_waiting_read() -> None:
    s = stream()
    asyncio.get_running_loop().call_later(0.01, s.data_received, b"half")
    asyncio.get_running_loop().call_later(0.02, s.connection_lost, None)

    with pytest.raises(asyncio.IncompleteReadError) as e:
        await s.readline_by(s.time() + 5)

    assert e.value.partial == b"half"
    assert s._timer is None  # no timer left to keep the stream alive


async def test_a_line_over_the_limit_is_refused() -> None:
    s = stream()
    s.data_received(b"x" * (LIMIT + 1))

    with pytest.raises(asyncio.LimitOverrunError):
        await s.readline_by(s.time() + 5)


async def test_a_cancelled_read_leaves_no_deadline() -> None:
    """A cancelled read leaves no deadline behind: the timer, when it fires, does nothing,
    and the next read is not timed out by it."""
    s = stream()
    read = asyncio.ensure_future(s.readline_by(s.time() + 0.03))
    await asyncio.sleep(0.01)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    await asyncio.sleep(0.05)  # the timer fired, with no read waiting

    later(s, 0.05, b"next\n")
    assert await s.readline_by(s.time() + 1) == b"next\n"
