"""The FastAGI ``check`` route: proof, for ``callmfa check``, that Asterisk reaches callmfa.

``callmfa check`` originates a Local channel into the verification context with
``CALLMFA_AGI`` pointing at this route instead of ``verify``. When Asterisk connects, the
probe asks whether the dialplan could keep early keys (``StoreDTMF``), whether it has
``[callmfa-collect]`` (which keeps a key pressed between two AGI commands), and whether it can
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
from ..transport.agi import AgiChannel
from ..transport.fastagi import AgiSession
from .pbxcheck import CONTACT_ID, ENDPOINT_NAME, ENDPOINT_VARIABLE, INSPECTORS, MODULES

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
            # Set by [callmfa-prepare] when the dialplan has [callmfa-collect].
            collect = await channel.get_full_variable("${CALLMFA_COLLECT}") == "1"
            modules = await _modules(channel)
            endpoint = await _endpoint(channel)
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
                        "early_keys": early_keys, "collect": collect, "modules": modules,
                        "endpoint": endpoint}),
            ex=PROBE_TTL_S,
        )
        log.info("probe_answered", missing=missing)
        await channel.hangup()


async def _modules(channel: AgiChannel) -> dict[str, str]:
    """IFMODULE() of each module the dialplan uses, in one GET FULL VARIABLE: "1" loaded,
    "0" not, "" when func_module (which answers) is not loaded itself."""
    names = [*INSPECTORS, *(m.name for m in MODULES)]
    reply = await channel.get_full_variable(
        "|".join(f"${{IFMODULE({name}.so)}}" for name in names))
    values = reply.split("|")
    return dict(zip(names, values + [""] * (len(names) - len(values)), strict=True))


async def _endpoint(channel: AgiChannel) -> dict[str, object] | None:
    """The PJSIP endpoint ``callmfa check`` asked about (CALLMFA_CHECK_ENDPOINT): whether it
    exists, its aors, and the status of each of their contacts; None when not asked."""
    name = await channel.get_full_variable(f"${{{ENDPOINT_VARIABLE}}}")
    if not ENDPOINT_NAME.match(name):
        return None  # not asked, or not a name to put into an expression
    have = await channel.get_full_variable(
        "${IFMODULE(func_pjsip_endpoint.so)}${IFMODULE(func_pjsip_aor.so)}"
        "${IFMODULE(func_pjsip_contact.so)}")
    if have != "111":
        return {"name": name, "inspect": False}
    # An endpoint's context is never empty ("default" unless set): empty means no endpoint.
    context = await channel.get_full_variable(f"${{PJSIP_ENDPOINT({name},context)}}")
    if not context:
        return {"name": name, "exists": False}
    aors = await channel.get_full_variable(f"${{PJSIP_ENDPOINT({name},aors)}}")
    contacts: dict[str, str] = {}
    for aor in (a.strip() for a in aors.split(",")):
        if not ENDPOINT_NAME.match(aor):
            continue
        ids = await channel.get_full_variable(f"${{PJSIP_AOR({aor},contact)}}")
        for cid in (c.strip() for c in ids.split(",")):
            if CONTACT_ID.match(cid):
                # "sip:host:port|Reachable" (a URI holds no '|')
                contacts[cid] = await channel.get_full_variable(
                    f"${{PJSIP_CONTACT({cid},uri)}}|${{PJSIP_CONTACT({cid},status)}}")
    return {"name": name, "exists": True, "context": context, "aors": aors,
            "contacts": contacts}
