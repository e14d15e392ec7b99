"""``callmfa check --number N``: what callmfa makes of a number and whether it would dial it.

Offline: the number policy of the settings (docs/security.md), no Redis, no Asterisk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..domain.numbers import DialPolicy
from ..domain.request import parse_request
from ..exceptions import SettingsError
from ..security import number_policy
from ..settings import Settings


@dataclass(frozen=True)
class NumberReport:
    """The lines ``callmfa check --number`` prints, and whether callmfa would dial."""

    lines: list[tuple[str, str]]
    dials: bool


def _why(settings: Settings, policy: DialPolicy, number: str, reason: str,
         region: str | None, kind: str) -> str:
    if reason == "invalid_number":
        return "not a valid number of any region (libphonenumber's metadata)"
    if reason == "not_e164":
        return (f"not in E.164 form: {policy.assess(number).facts.e164} is (a trunk prefix "
                "after the country code is not dialled)")
    if reason == "outside_allowed_prefixes":
        return f"outside CALLMFA_ALLOWED_PREFIXES={settings.allowed_prefixes}"
    if reason == "denied_prefix":
        prefix = policy.prefixes.decision(number)[1]
        return (f"under the denied prefix {prefix} (the shipped deny-list or "
                "CALLMFA_DENIED_PREFIXES)")
    if reason == "region_not_allowed":
        return f"region {region} is not in CALLMFA_ALLOWED_REGIONS={settings.allowed_regions}"
    return f"type {kind.upper()} is in CALLMFA_DENIED_NUMBER_TYPES={settings.denied_number_types}"


def number_report(settings: Settings, phone: str) -> NumberReport:
    """What callmfa would do with a request for ``phone``.

    Raise RequestError for a phone the request parser refuses (``invalid_phone``) and
    SettingsError for a number policy that cannot be built.
    """
    req = parse_request(
        json.dumps({"id": "00000000-0000-0000-0000-000000000000", "user": "check",
                    "phone": phone}),
        requested_at=0, default_ttl_s=0,
    )
    policy = number_policy(settings)
    verdict = policy.assess(req.number)
    facts = verdict.facts
    lines = [
        ("number", req.number + (f" (extension {req.extension})" if req.extension else "")),
        ("E.164", facts.e164),
        ("valid", "yes" if facts.valid else "no"),
        ("region", facts.region or "none"),
        ("type", facts.kind.upper()),
    ]
    if verdict.reason is None:
        lines.append(("dial", "yes"))
    else:
        why = _why(settings, policy, req.number, verdict.reason, facts.region, facts.kind)
        lines.append(("dial", f"no: rejected / number_not_allowed, reason {verdict.reason}: "
                              f"{why}"))
    return NumberReport(lines, verdict.reason is None)


def policy_summary(settings: Settings) -> tuple[bool, str]:
    """(True, what the policy allows) or (False, why it cannot be built: serve would not
    start)."""
    try:
        number_policy(settings)
    except SettingsError as e:
        return False, str(e)
    return True, (f"dials {settings.allowed_prefixes} in {settings.allowed_regions}, "
                  f"never {settings.denied_number_types or 'no type'} "
                  "nor the denied prefixes")

