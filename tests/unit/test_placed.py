"""The hand-over of an answer from the originator to its own process's IVR session."""

from __future__ import annotations

import asyncio

import pytest

from ivr.storage.placed import Placed


async def _claim(placed: Placed, *, wrote: bool, after_s: float = 0.0) -> bool:
    """An IVR session's claim: takes the answer at once, says what it did ``after_s``
    later (its round trip)."""
    answer = placed.claim_starts()
    await asyncio.sleep(after_s)
    if answer is not None:
        answer.resolve(wrote)
    return answer is not None


class TestHandOver:
    async def test_no_session_in_time(self) -> None:
        """Nobody claims: after the wait the originator writes the answer, and a session
        that comes later finds none to write."""
        placed = Placed({})
        assert not await placed.hand_over(1.0, None, 0.01)
        assert placed.claim_starts() is None

    async def test_the_claim_writes_it(self) -> None:
        placed = Placed({})
        offer = asyncio.create_task(placed.hand_over(1.0, 0.5, 1.0))
        await asyncio.sleep(0)
        assert await _claim(placed, wrote=True)
        assert await offer

    async def test_what_the_claim_takes_is_the_answer(self) -> None:
        placed = Placed({})
        offer = asyncio.create_task(placed.hand_over(2.0, 1.5, 1.0))
        await asyncio.sleep(0)
        answer = placed.claim_starts()
        assert answer is not None
        assert (answer.at, answer.ringing_at) == (2.0, 1.5)
        answer.resolve(True)
        assert await offer

    @pytest.mark.parametrize("why", ["refused", "failed"])
    async def test_a_claim_that_did_not_write_it(self, why: str) -> None:
        """A refused session (or a claim that failed) leaves the answer to the originator."""
        placed = Placed({})
        offer = asyncio.create_task(placed.hand_over(1.0, None, 1.0))
        await asyncio.sleep(0)
        assert await _claim(placed, wrote=False)
        assert not await offer

    async def test_a_claim_under_way_at_the_deadline_is_waited_for(self) -> None:
        """Taken just before the wait ends, its reply comes after: the originator waits
        for it rather than writing the answer a second time."""
        placed = Placed({})
        offer = asyncio.create_task(placed.hand_over(1.0, None, 0.02))
        await asyncio.sleep(0.01)
        assert await _claim(placed, wrote=True, after_s=0.05)
        assert await offer

    async def test_the_session_came_first(self) -> None:
        """The session claimed before the answer was seen: no wait at all."""
        placed = Placed({})
        assert placed.claim_starts() is None
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await placed.hand_over(1.0, None, 5.0)
        assert loop.time() - started < 1.0

    async def test_cancelled_while_offered(self) -> None:
        """The originator's task is cancelled: the offer is withdrawn."""
        placed = Placed({})
        offer = asyncio.create_task(placed.hand_over(1.0, None, 5.0))
        await asyncio.sleep(0)
        offer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await offer
        assert placed.claim_starts() is None

    async def test_only_the_first_word_counts(self) -> None:
        placed = Placed({})
        offer = asyncio.create_task(placed.hand_over(1.0, None, 1.0))
        await asyncio.sleep(0)
        answer = placed.claim_starts()
        assert answer is not None
        answer.resolve(True)
        answer.resolve(False)
        assert await offer
