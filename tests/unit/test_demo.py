"""`make demo`'s choice of user and number: the second run used to end throttled."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType

from ivr.domain.request import parse_request
from ivr.security import number_policy
from ivr.settings import Settings

from ..conftest import REPO


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo", REPO / "docker" / "sandbox" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestFreshUserAndNumber:
    def test_consecutive_runs_share_neither_user_nor_number(self) -> None:
        """Two runs within a minute: neither the user cooldown nor the number cooldown
        applies, and a number comes back only after 100 runs (5 calls an hour allowed)."""
        fresh = _demo()._fresh
        runs = [fresh(n) for n in range(1, 101)]
        assert len({u for u, _ in runs}) == 100
        assert len({n for _, n in runs}) == 100
        assert fresh(1) == ("demo-1", "+12015550100")
        assert fresh(101)[1] == fresh(1)[1]

    def test_the_numbers_are_valid_and_allowed_by_default(self) -> None:
        policy = number_policy(Settings())
        for run in (1, 50, 100):
            user, number = _demo()._fresh(run)
            parse_request(json.dumps({"id": "00000000-0000-4000-8000-000000000000",
                                      "user": user, "phone": number}),
                          requested_at=0, default_ttl_s=0)
            assert policy.refusal(number) is None
