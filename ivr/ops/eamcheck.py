"""``callmfa check``'s ``eam`` line (CALLMFA_ENTRA_ISSUER set): the key file loads, and the
running API serves a discovery document with the issuer exactly as configured and a JWKS
holding every key of the file (RS256, ``kid``, ``x5c``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..exceptions import SettingsError
from ..fronts.entra.keys import SigningKeys
from ..settings import Settings
from .results import CheckResult, Status

_FIX = "is callmfa serve running with CALLMFA_ROLES including api? (docs/entra.md)"


def _local(settings: Settings, path: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(  # noqa: S104 - read, not bound
        settings.api_host, settings.api_host)
    scheme = "https" if settings.api_tls_cert else "http"
    return f"{scheme}://{host}:{settings.api_port}{path}"


async def check_eam(settings: Settings) -> CheckResult | None:
    """The ``eam`` line; None when Entra's EAM is not configured."""
    if not settings.entra_issuer:
        return None
    try:
        keys = SigningKeys.from_file(settings.entra_signing_key_file)
    except SettingsError as e:
        return CheckResult("eam", Status.FAIL, str(e),
                           "callmfa keys rotate makes the first key (docs/entra.md)")
    prefix = urlsplit(settings.entra_issuer).path.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=settings.connect_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            document = await _json(session, _local(
                settings, f"{prefix}/.well-known/openid-configuration"))
            jwks = await _json(session, _local(settings, f"{prefix}/jwks"))
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return CheckResult("eam", Status.FAIL, f"the EAM endpoints do not answer: {e!r}", _FIX)
    if document.get("issuer") != settings.entra_issuer:
        return CheckResult("eam", Status.FAIL,
                           f"the discovery issuer is {document.get('issuer')!r}, not "
                           f"CALLMFA_ENTRA_ISSUER {settings.entra_issuer!r}", _FIX)
    published = {k.get("kid"): k for k in jwks.get("keys", []) if isinstance(k, dict)}
    missing = [k.kid for k in keys.keys if not published.get(k.kid, {}).get("x5c")]
    if missing:
        return CheckResult("eam", Status.FAIL,
                           f"the JWKS lacks key(s) of the file: {', '.join(missing)}",
                           "restart callmfa serve, or check CALLMFA_ENTRA_SIGNING_KEY_FILE")
    return CheckResult("eam", Status.OK,
                       f"issuer {settings.entra_issuer}; {len(keys.keys)} key(s) published, "
                       f"{keys.signing.kid} signing")


async def _json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    # This host's own listener: its certificate names the public host, not the loopback.
    async with session.get(url, ssl=False, allow_redirects=False) as response:
        response.raise_for_status()
        body = await response.json()
    if not isinstance(body, dict):
        raise ValueError(f"{url}: not a JSON object")
    return body
