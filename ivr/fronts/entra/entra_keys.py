"""Entra's own signing keys, for the ``id_token_hint``: its discovery document, then its
``jwks_uri``, fetched with a timeout and cached; a hint signed by a key not in the cache
refetches, at most once a minute (Entra rotates its keys)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..web import read_body
from .protocol import EntraError

log = structlog.get_logger("ivr.fronts.entra")

CACHE_S = 3600.0
REFETCH_MIN_S = 60.0
MAX_DOCUMENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class EntraKeySet:
    """Entra's discovery ``issuer`` (with its ``{tenantid}`` placeholder) and its keys."""

    issuer_template: str
    keys: KeySet

    def has(self, kid: str | None) -> bool:
        """True if ``kid`` is one of the keys."""
        return any(k.kid == kid for k in self.keys.keys)


class EntraKeys:
    """Fetches and caches Entra's keys through ``session`` (owned by the caller)."""

    def __init__(self, session: aiohttp.ClientSession, discovery_url: str, *,
                 timeout_s: float = 5.0) -> None:
        self._session = session
        self._url = discovery_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._cached: EntraKeySet | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, kid: str | None = None) -> EntraKeySet:
        """The key set, fresh enough and holding ``kid`` if it can; EntraError
        (``entra_unavailable``) if Entra's documents cannot be had."""
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            cached = self._cached
            stale = cached is None or age > CACHE_S
            unknown = cached is not None and kid is not None and not cached.has(kid)
            if stale or (unknown and age > REFETCH_MIN_S):
                self._cached = await self._fetch()
                self._fetched_at = time.monotonic()
            assert self._cached is not None
            return self._cached

    async def _fetch(self) -> EntraKeySet:
        try:
            document = await self._json(self._url)
            issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
            if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
                raise ValueError("no issuer or jwks_uri")
            jwks: Any = await self._json(jwks_uri)
            keys = KeySet.import_key_set(jwks)
        except (aiohttp.ClientError, TimeoutError, ValueError, JoseError) as e:
            log.warning("entra_keys_unavailable", url=self._url, error=repr(e))
            if self._cached is not None:  # keep serving with the keys already known
                return self._cached
            raise EntraError("entra_unavailable", "Entra's keys cannot be fetched") from None
        log.info("entra_keys_fetched", issuer=issuer, keys=len(keys.keys))
        return EntraKeySet(issuer, keys)

    async def _json(self, url: str) -> dict[str, Any]:
        async with self._session.get(url, timeout=self._timeout,
                                     allow_redirects=False) as response:
            response.raise_for_status()
            raw = await read_body(response.content, MAX_DOCUMENT_BYTES)
            if len(raw) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url}: over {MAX_DOCUMENT_BYTES} bytes")
            body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError(f"{url}: not a JSON object")
        return body
