"""CALLMFA_EVENT_LOOP: uvloop by default when it is installed, asyncio's loop without it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from ivr.app import loop_factory, loop_name
from ivr.exceptions import SettingsError


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import uvloop`` fails, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


class TestLoopFactory:
    def test_auto_takes_uvloop_when_installed(self) -> None:
        uvloop = pytest.importorskip("uvloop")
        assert loop_factory("auto") is uvloop.new_event_loop
        assert loop_factory("uvloop") is uvloop.new_event_loop

    def test_auto_falls_back_to_asyncio(self, no_uvloop: None) -> None:
        """Without uvloop, auto is asyncio's own loop (no factory), silently."""
        assert loop_factory("auto") is None

    def test_asyncio_is_asyncio_even_with_uvloop(self) -> None:
        assert loop_factory("asyncio") is None

    def test_uvloop_named_but_missing_is_a_clear_error(self, no_uvloop: None) -> None:
        with pytest.raises(SettingsError, match="CALLMFA_EVENT_LOOP=uvloop needs uvloop"):
            loop_factory("uvloop")


class TestLoopName:
    def test_asyncio(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            assert loop_name(loop) == "asyncio"
        finally:
            loop.close()

    def test_uvloop(self) -> None:
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
        try:
            assert loop_name(loop) == "uvloop"
        finally:
            loop.close()
