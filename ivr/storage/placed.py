"""The calls this process placed, while they last: what its originator and its IVR session
share without asking Redis (one process, one event loop).

The IVR reads the call marker here. The originator hands the answer it saw to the IVR
session's claim, which writes it in its own step (one round trip for both), and learns
here whether the outcome's script settled the request's stream entry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


def _future() -> asyncio.Future[bool]:
    return asyncio.get_running_loop().create_future()


@dataclass
class Answer:
    """The answer the originator saw (epoch seconds; ``ringing_at`` when the phone rang and
    its event is still to be written), waiting for the IVR session's claim."""

    at: float
    ringing_at: float | None
    taken: bool = False  # a claim under way writes it
    written: asyncio.Future[bool] = field(default_factory=_future)  # the claim wrote it

    def resolve(self, written: bool) -> None:
        """What the claim that took it did with it (the first word counts)."""
        if not self.written.done():
            self.written.set_result(written)


@dataclass
class Placed:
    """One call placed by this process: its marker's fields, whether this process's IVR
    session has claimed it, and whether its outcome's script acknowledged its stream
    entry."""

    fields: dict[str, str]
    claiming: bool = False  # an IVR session of this process has sent its claim
    settled: bool = False
    answer: Answer | None = None

    async def hand_over(self, at: float, ringing_at: float | None, wait_s: float) -> bool:
        """Offer the answer to this process's IVR session for up to ``wait_s``: True once
        its claim wrote it, False when the caller is to write it (the session came later,
        was refused, or its claim failed)."""
        if self.claiming:
            return False  # the session came first: its claim carries no answer
        answer = self.answer = Answer(at, ringing_at)
        try:
            await asyncio.wait({answer.written}, timeout=wait_s)
            if answer.taken:  # the claim is under way: its reply says
                await asyncio.wait({answer.written})
        finally:
            if self.answer is answer:  # never taken: no claim writes it now
                self.answer = None
        return answer.written.done() and answer.written.result()

    def claim_starts(self) -> Answer | None:
        """An IVR session of this process sends its claim now: the answer waiting for it,
        which the claim is to write (and then say so with :meth:`Answer.resolve`)."""
        self.claiming = True
        answer, self.answer = self.answer, None
        if answer is not None:
            answer.taken = True
        return answer
