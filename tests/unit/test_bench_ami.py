"""bench/ami_events.py: its streams hold what each filter keeps, and both parsers read them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.ami_events import FILTERS, lazy_protocol, panoramisk_protocol, verification


@pytest.mark.parametrize(("kept", "count"), FILTERS.items())
def test_events_per_verification(kept: str, count: int) -> None:
    assert verification("u1", "action/other/1/1", kept).count(b"Event: ") == count


@pytest.mark.parametrize("make", [panoramisk_protocol, lazy_protocol])
async def test_both_parsers_read_the_call(make: Callable[..., Any]) -> None:
    """The comparison is fair: both see the ringing and the Hangup cause."""
    protocol, watches = make(["u1"])
    protocol.data_received(verification("u1", "action/other/1/1", "none"))
    assert watches["u1"].ringing.is_set()
    assert watches["u1"].hangup.result() == 16


async def test_the_lazy_parser_reads_3_of_10() -> None:
    """No filter: Newstate twice and Hangup read; another session's OriginateResponse
    skipped; 6 events of kinds callmfa never reads."""
    protocol, _ = lazy_protocol(["u1"])
    protocol.data_received(verification("u1", "action/other/1/1", "none"))
    counts = protocol._counts
    assert (counts.received, counts.read, counts.unneeded) == (10, 3, 6)
