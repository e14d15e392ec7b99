"""Without CALLMFA_PIN_PEPPER, `callmfa serve` (its IVR) and `callmfa check` warn (issue 12)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from ivr.app import Service
from ivr.ops.doctor import Status, check_pin_pepper
from ivr.settings import Settings

from ..conftest import RedisServer
from .conftest import eventually


async def _startup(redis_server: RedisServer, **overrides: Any) -> list[dict[str, Any]]:
    """The log events of an IVR-only serve from start to service_ready, then stopped."""
    settings = Settings(redis_url=redis_server.url, roles="agi", agi_port=0, health_port=0,
                        metrics_port=0, signing_key="k" * 32, **overrides)
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(Service(settings).run(stop))
        await eventually(lambda: any(e["event"] == "service_ready" for e in logs)
                         or running.done(), what="service_ready")
        stop.set()
        await running
    return logs


@pytest.mark.parametrize(("pepper", "warned"), [("", True), ("p" * 32, False)])
async def test_serve_warns_at_start_up_without_a_pepper(
    redis_server: RedisServer, pepper: str, warned: bool
) -> None:
    """pin_pepper_missing, naming the setting, before service_ready; none with a pepper."""
    logs = await _startup(redis_server, pin_pepper=pepper)
    missing = [e for e in logs if e["event"] == "pin_pepper_missing"]
    assert bool(missing) is warned
    if warned:
        assert missing[0]["log_level"] == "warning"
        assert missing[0]["setting"] == "CALLMFA_PIN_PEPPER"


def test_check_warns_without_a_pepper_with_the_fix() -> None:
    """`callmfa check`'s pin-pepper line: warn with the fix without one, ok with one."""
    missing = check_pin_pepper(Settings())
    assert missing.status is Status.WARN
    assert missing.fix is not None
    assert "CALLMFA_PIN_PEPPER_FILE" in missing.fix
    assert check_pin_pepper(Settings(pin_pepper="p" * 32)).status is Status.OK
