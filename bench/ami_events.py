"""``python -m bench.ami_events``: callmfa's CPU per verification for its AMI events alone.

No Asterisk: the events of 3,000 verifications, as Asterisk 22 writes them, are fed to
panoramisk's parser (every event made a dict of its headers, then matched against the
registered names) and to callmfa's lazy one (:class:`ivr.transport.ami._Protocol`), once
for calls callmfa watches and once for others' calls. Three streams: no eventfilter
(10 events per verification), the regex one (4) and dialplan/manager_callmfa.conf's (3).
Process CPU time, so it is steadier than the whole bench on a shared machine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol

from ivr.transport.ami import AmiClient, ChannelWatch, _Protocol

CALLS = 3000
FILTERS = {"none": 10, "regex": 4, "eventfilter": 3}


def _event(name: str, uniqueid: str, **extra: str) -> bytes:
    headers = {
        "Privilege": "call,all", "Channel": "PJSIP/callmfa-phone-0000a1b2", "ChannelState": "6",
        "ChannelStateDesc": "Up", "CallerIDNum": "+12015550100", "CallerIDName": "<unknown>",
        "ConnectedLineNum": "<unknown>", "ConnectedLineName": "<unknown>", "Language": "en",
        "AccountCode": "", "Context": "callmfa-verify", "Exten": "s", "Priority": "1",
        "Uniqueid": uniqueid, "Linkedid": uniqueid, **extra,
    }
    return (f"Event: {name}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n").encode()


def verification(uniqueid: str, action_id: str, kept: str) -> bytes:
    """One answered call's events, as the account's filter ``kept`` them."""
    none = kept == "none"
    events = []
    if none:
        events += [_event("Newchannel", uniqueid, ChannelState="0", ChannelStateDesc="Down"),
                   _event("DialBegin", uniqueid, DestUniqueid=uniqueid),
                   _event("DialState", uniqueid, DialStatus="RINGING")]
    events.append(_event("Newstate", uniqueid, ChannelState="5", ChannelStateDesc="Ringing"))
    if kept != "eventfilter":
        events.append(_event("Newstate", uniqueid))
    if none:
        events.append(_event("DialEnd", uniqueid, DialStatus="ANSWER"))
    events.append(_event("OriginateResponse", uniqueid, ActionID=action_id,
                         Response="Success", Reason="4"))
    if none:
        events += [_event("SoftHangupRequest", uniqueid, Cause="16")] * 2
    events.append(_event("Hangup", uniqueid, Cause="16", **{"Cause-txt": "Normal Clearing"}))
    return b"".join(events)


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def panoramisk_protocol(watched: list[str]) -> tuple[Any, dict[str, ChannelWatch]]:
    """panoramisk's protocol with the callbacks AmiClient registered before the lazy parser."""
    manager = Manager(loop=asyncio.get_running_loop())
    watches = {u: ChannelWatch() for u in watched}

    def on_event(_manager: Manager, event: Any) -> None:
        watch = watches.get(event.get("Uniqueid", ""))
        if watch is None:
            return
        if event.event == "Hangup":
            if not watch.hangup.done():
                watch.hangup.set_result(int(event.get("Cause", "0")))
        elif event.get("ChannelState") == "5":
            watch.ringing.set()

    manager.register_event("Newstate", on_event)
    manager.register_event("Hangup", on_event)
    protocol = AMIProtocol()
    protocol.connection_made(_Transport())
    protocol.factory, protocol.encoding, protocol.responses = manager, "utf8", {}
    return protocol, watches


def lazy_protocol(watched: list[str]) -> tuple[Any, dict[str, ChannelWatch]]:
    """callmfa's protocol, with an AmiClient's channel handler watching ``watched``."""
    client = AmiClient(host="127.0.0.1", port=5038, user="callmfa", secret="",  # never connects
                       timeout_s=1)
    watches = {u: client.watch(u) for u in watched}
    protocol = _Protocol(client.events, client._on_channel_event)
    protocol.connection_made(_Transport())
    protocol.encoding, protocol.responses = "utf8", {}
    return protocol, watches


async def _measure() -> None:
    print(f"{'filter':>11}  {'calls':<7} {'events':>6}  {'panoramisk':>10}  {'lazy':>7}  ratio")
    for kept, count in FILTERS.items():
        for ours in (True, False):
            ids = [str(uuid.uuid4()) for _ in range(CALLS)]
            # Another session's OriginateResponse (callmfa's own is an action reply in both).
            stream = [verification(u, f"action/other/1/{i}", kept) for i, u in enumerate(ids)]
            assert stream[0].count(b"Event: ") == count
            us = []
            for make in (panoramisk_protocol, lazy_protocol):
                protocol, _ = make(ids if ours else [])
                start = time.process_time()
                for chunk in stream:
                    protocol.data_received(chunk)
                us.append((time.process_time() - start) / CALLS * 1e6)
            print(f"{kept:>11}  {'ours' if ours else 'others':<7} {count:>6}  "
                  f"{us[0]:>7.1f} us  {us[1]:>4.1f} us  {us[0] / us[1]:.1f}x")


def main() -> None:
    """Print the table: CPU microseconds per verification, by filter and whose call."""
    asyncio.run(_measure())


if __name__ == "__main__":
    main()
