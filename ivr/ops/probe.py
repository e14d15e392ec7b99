"""The FastAGI ``check`` route: proof, for ``callmfa check``, that Asterisk reaches callmfa.

``callmfa check`` originates a Local channel into the verification context with
``CALLMFA_AGI`` pointing at this route instead of ``verify``. When Asterisk connects, the
probe asks whether the dialplan could keep early keys (``StoreDTMF``) and whether it can
play every prompt (``STREAM FILE`` from far past the end
returns at once: ``result=0`` if the file exists, ``result=-1`` with the offset as endpos
if it does not), stores what it found under ``callmfa:check:<id>`` for a minute and hangs
up. No call leaves the PBX and nothing else is written.
"""

from __future__ import annotations

import json
import re
import uuid

import structlog
from redis.asyncio import Redis

from ..domain.prompts import PROMPTS, sound_files
from ..exceptions import AgiHangup
from ..transport.fastagi import AgiSession

log = structlog.get_logger("ivr.ops.probe")

PROBE_ROUTE = "check"
PROBE_TTL_S = 60
# The language whose prompts the check proves (`make prompts` installs the others with it).
LANGUAGES = ("en",)
PAST_THE_END = "1000000000"
_PROBE_ID = re.compile(r"check-[0-9a-f]{32}\Z")


def new_probe_id() -> str:
    """A probe id: also the Local channel's Uniqueid."""
    return "check-" + uuid.uuid4().hex


def probe_key(probe_id: str) -> str:
    """Where the probe stores what Asterisk could play."""
    return f"callmfa:check:{probe_id}"


class AgiProbe:
    """The FastAGI handler for the ``check`` route."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def __call__(self, session: AgiSession) -> None:
        """Check the prompts from Asterisk's side and record the result."""
        probe_id = session.args[0] if session.args else ""
        channel = session.channel
        if not _PROBE_ID.match(probe_id):
            log.warning("probe_refused", reason="not a probe id")
            await channel.hangup()
            return
        missing: dict[str, list[str]] = {}
        try:
            # What the dialplan's TryExec(StoreDTMF(...)) said (callmfa check asks for it).
            early_keys = await channel.get_full_variable("${TRYSTATUS}")
            for lang in LANGUAGES:
                await channel.set_variable("CHANNEL(language)", lang)
                for name in dict.fromkeys(sound_files(PROMPTS, lang)):
                    reply = await channel.execute(
                        "STREAM FILE", name, "#", PAST_THE_END, minus_one_is_hangup=False
                    )
                    if reply.result == "-1":
                        if not reply.raw.endswith(f"endpos={PAST_THE_END}"):
                            raise AgiHangup()
                        missing.setdefault(lang, []).append(name)
        except AgiHangup:
            log.info("probe_hung_up")
            return
        await self._redis.set(
            probe_key(probe_id),
            json.dumps({"languages": LANGUAGES, "missing": missing,
                        "early_keys": early_keys}),
            ex=PROBE_TTL_S,
        )
        log.info("probe_answered", missing=missing)
        await channel.hangup()
