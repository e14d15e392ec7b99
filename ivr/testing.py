"""A simulated phone for tests and demos: sipp (Debian package ``sip-tester``) as the callee.

    with SippPhone(PhoneBehaviour(keys="#", dtmf="info"), workdir=tmp) as phone:
        ...  # place a verification call to any number
        assert phone.wait(timeout_s=30) == 0

The phone answers (or is busy, or rejects, or never answers), may say something (``speech``:
a text spoken with espeak-ng and sent as RTP, so that answering-machine detection hears a
person's "hello" or a voicemail's long greeting), waits, presses keys over SIP INFO or
RFC 4733 (root is needed to play the RFC 4733 pcaps) or hangs up, and exits after ``calls``
calls; its exit code is 0 when every call went as scripted.
"""

from __future__ import annotations

import re
import subprocess
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pyrad.packet import AccessRequest, AuthPacket, StatusServer

from .domain.directory import DirectoryEntry
from .fronts.radius.packets import dictionary

PCAP_DIR = Path("/usr/share/sip-tester")
STRAY_ALLOWANCE = 20  # concurrent slots for stray messages of earlier calls
_PCAP_NAMES = {"#": "pound", "*": "star"}


@dataclass(frozen=True)
class PhoneBehaviour:
    """What the simulated user does when called."""

    keys: str = "#"  # pressed after answering; "" for silence; "?": see SippPhone.give_keys
    dtmf: Literal["info", "rfc4733"] = "info"
    key_delay_ms: int = 1000  # from the answer to the first key
    key_delay_max_ms: int | None = None  # set: drawn per call, uniform in [key_delay_ms, this]
    key_gap_ms: int = 150  # after each key
    answer_delay_ms: int = 0  # ringing time before answering
    hangup_after_ms: int | None = None  # hang up this long after answering
    reject_with: int | None = None  # answer with this SIP status instead (486, 404, 503)
    ring_forever: bool = False  # ring until the caller cancels
    speech: str | None = None  # said on answer (espeak-ng); key_delay_ms counts from its end
    keys_over_speech: bool = False  # the key delay starts with the speech, not at its end
    speech_delay_ms: int = 0  # silence between the answer and the speech
    silent_rtp: bool = False  # without speech: send silent audio (a muted phone), not none

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9*#?]*", self.keys):
            raise ValueError("keys may hold 0-9, *, # and ? only")
        if "?" in self.keys and self.dtmf != "info":
            raise ValueError("a key given later (?) is sent over SIP INFO only")
        if self.key_delay_max_ms is not None and self.key_delay_max_ms < self.key_delay_ms:
            raise ValueError("key_delay_max_ms must be at least key_delay_ms")


_HEADERS = """[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>"""

_SDP = """v=0
o=phone 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16"""


def _response(status: str, sdp: bool = False, extra: str = "") -> str:
    body = f"Content-Type: application/sdp\nContent-Length: [len]\n\n{_SDP}" if sdp \
        else "Content-Length: 0"
    return f"""  <send{' retrans="500"' if sdp else ''}><![CDATA[
SIP/2.0 {status}
{_HEADERS}{extra}
{body}
]]></send>
"""


def _request(method: str, cseq: int, body: str = "", content_type: str = "") -> str:
    headers = f"Content-Type: {content_type}\nContent-Length: [len]\n\n{body}" if body \
        else "Content-Length: 0"
    return f"""  <send retrans="500"><![CDATA[
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$local_to];tag=[pid]SIPpTag01[call_number]
To: [$remote_from]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
{headers}
]]></send>
  <recv response="200"/>
"""


def scenario_xml(b: PhoneBehaviour, *, speech_file: Path | None = None, speech_ms: int = 0) -> str:
    """The sipp UAS scenario for one behaviour (``speech_file``: its speech, or its silence
    for ``silent_rtp``, as u-law WAV). A key given later (``?``) is read from the file
    ``keyN`` (N: its position) of sipp's working directory."""
    # Capture the dialog's headers at the INVITE: [last_From:]/[last_To:] flip later.
    steps = """  <recv request="INVITE" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="remote_from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" check_it="true" assign_to="local_to"/>
      <ereg regexp=".*" search_in="hdr" header="CSeq:" check_it="true" assign_to="inv_cseq"/>
    </action>
  </recv>
"""
    if b.reject_with is not None:
        steps += _response(f"{b.reject_with} Rejected")
        steps += '  <recv request="ACK"/>\n'
        return _wrap(steps)
    steps += _response("180 Ringing")
    if b.ring_forever:
        steps += '  <recv request="CANCEL"/>\n'
        steps += _response("200 OK")
        steps += """  <send><![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$inv_cseq]
Content-Length: 0
]]></send>
  <recv request="ACK"/>
"""
        return _wrap(steps)
    if b.answer_delay_ms:
        steps += f'  <pause milliseconds="{b.answer_delay_ms}"/>\n'
    steps += _response("200 OK", sdp=True)
    steps += '  <recv request="ACK" crlf="true"/>\n'
    if b.silent_rtp and not b.speech and speech_file is not None:
        # Streamed in the background while the keys are sent (20 s of it).
        steps += f'  <nop><action><exec rtp_stream="{speech_file},1,0"/></action></nop>\n'
    if b.speech and speech_file is not None:
        if b.speech_delay_ms:
            steps += f'  <pause milliseconds="{b.speech_delay_ms}"/>\n'
        steps += f'  <nop><action><exec rtp_stream="{speech_file},1,0"/></action></nop>\n'
        if not b.keys_over_speech:
            steps += f'  <pause milliseconds="{speech_ms}"/>\n'
    cseq = 1
    if b.keys:
        if b.key_delay_max_ms is None:
            steps += f'  <pause milliseconds="{b.key_delay_ms}"/>\n'
        else:  # sipp draws it for each call
            steps += (f'  <pause distribution="uniform" min="{b.key_delay_ms}"'
                      f' max="{b.key_delay_max_ms}"/>\n')
        for n, key in enumerate(b.keys, 1):
            if key == "?":  # sipp reads the file as it sends the INFO
                # A relative name: sipp takes "-<digits>" in a name for an offset.
                key = f'[file name="key{n}"]'
            if b.dtmf == "info":
                steps += _request("INFO", cseq, f"Signal={key}\nDuration=160",
                                  "application/dtmf-relay")
                cseq += 1
            else:
                pcap = PCAP_DIR / f"dtmf_2833_{_PCAP_NAMES.get(key, key)}.pcap"
                steps += f"""  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
  <pause milliseconds="250"/>
"""
            # No pause after the last key unless the phone hangs up itself: the callee's
            # BYE may come at any moment after it, and sipp fails a BYE during a pause.
            if n < len(b.keys) or b.hangup_after_ms is not None:
                steps += f'  <pause milliseconds="{b.key_gap_ms}"/>\n'
    if b.hangup_after_ms is not None:
        steps += f'  <pause milliseconds="{b.hangup_after_ms}"/>\n'
        steps += _request("BYE", cseq)
    else:
        steps += '  <recv request="BYE"/>\n'
        steps += _response("200 OK")
    return _wrap(steps)


def _wrap(steps: str) -> str:
    # sipp refuses a variable that is used only once: this log line uses each again.
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="callmfa phone">
{steps}  <nop><action><log message="[$local_to] [$remote_from] [$inv_cseq]"/></action></nop>
</scenario>
"""


def synthesize(text: str, target: Path, voice: str = "en-us") -> int:
    """Say ``text`` into ``target`` (8 kHz mono u-law WAV, as sipp streams it); its length in ms.

    Needs espeak-ng and sox (Debian packages of the same names).
    """
    pcm = target.with_suffix(".pcm.wav")
    raw = target.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, timeout=60)
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer",
                    str(pcm)], check=True, timeout=60)
    with wave.open(str(pcm)) as w:
        ms = int(w.getnframes() * 1000 // w.getframerate())
    # Then 3 s of silence: answering-machine detection decides on silence it hears as RTP.
    subprocess.run(["sox", str(pcm), "-e", "u-law", str(target), "pad", "0", "3"], check=True,
                   timeout=60)
    return ms


def _udp_bound(port: int) -> bool:
    """Whether a UDP socket is bound to ``port`` in this network namespace."""
    suffix = f":{port:04X}"
    with open("/proc/net/udp") as f:
        next(f)  # the column titles
        return any(line.split()[1].endswith(suffix) for line in f)


class SippPhone:
    """Runs sipp as ``calls`` phones that all behave the same; stops it on exit."""

    def __init__(
        self,
        behaviour: PhoneBehaviour,
        *,
        workdir: Path,
        address: str = "127.0.0.1:5070",
        calls: int = 1,
        media_port: int = 16000,
        timeout_s: float = 120,
    ) -> None:
        self.behaviour = behaviour
        self._workdir = workdir
        self._host, _, port = address.partition(":")
        self._port = int(port or 5070)
        self._calls = calls
        self._media_port = media_port
        self._timeout = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start listening; returns once sipp runs (it binds at once)."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        scenario = self._workdir / "phone.xml"
        speech_file, speech_ms = None, 0
        if self.behaviour.speech:
            speech_file = self._workdir / "speech.wav"
            speech_ms = synthesize(self.behaviour.speech, speech_file)
        elif self.behaviour.silent_rtp:
            speech_file = self._workdir / "silence.wav"
            subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-e", "u-law",
                            str(speech_file), "trim", "0", "20"], check=True, timeout=60)
        scenario.write_text(
            scenario_xml(self.behaviour, speech_file=speech_file, speech_ms=speech_ms)
        )
        cmd = [
            "sipp", "-sf", str(scenario), "-i", self._host, "-p", str(self._port),
            # No -m: sipp counts as a call any stray message of an earlier phone's call (a
            # late BYE) and would stop before the real ones. wait() counts successes.
            "-mp", str(self._media_port), "-nostdin",
            "-timeout", f"{int(self._timeout)}s", "-timeout_error",
            "-max_recv_loops", "10000", "-l", str(self._calls + STRAY_ALLOWANCE),
            "-trace_stat", "-stf", str(self._workdir / "stats.csv"), "-fd", "1",
            "-trace_err", "-error_file", str(self._workdir / "errors.log"),
            "-trace_logs", "-log_file", str(self._workdir / "sipp.log"),
            "-trace_msg", "-message_file", str(self._workdir / "messages.log"),
        ]
        with open(self._workdir / "stdout.log", "wb") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self._workdir,
            )
        deadline = time.monotonic() + 10
        while not _udp_bound(self._port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                said = (self._workdir / "stdout.log").read_text(errors="replace")[:2000]
                raise RuntimeError(f"sipp did not start (or exited at once):\n{said}")
            time.sleep(0.01)

    def give_keys(self, keys: str) -> None:
        """The keys for the ``?`` of ``keys``, in order, known only once the call is under
        way (the number a sign-in page shows): give them before the phone presses them."""
        slots = [n for n, key in enumerate(self.behaviour.keys, 1) if key == "?"]
        if len(keys) != len(slots) or not re.fullmatch(r"[0-9*#]*", keys):
            raise ValueError(f"give {len(slots)} keys of 0-9, * and #")
        for n, key in zip(slots, keys, strict=True):
            target = self._workdir / f"key{n}"
            target.with_suffix(".new").write_text(key)
            target.with_suffix(".new").replace(target)

    def successful_calls(self) -> int:
        """Calls that went as scripted so far (sipp writes its statistics every second)."""
        path = self._workdir / "stats.csv"
        if not path.exists():
            return 0
        rows = [line.split(";") for line in path.read_text().splitlines() if line]
        if len(rows) < 2:
            return 0
        return int(rows[-1][rows[0].index("SuccessfulCall(C)")])

    def wait(self, timeout_s: float) -> int:
        """Wait until the ``calls`` calls went as scripted (0), or the timeout (1); then
        stop sipp. Stray messages of earlier calls do not count either way."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while self.successful_calls() < self._calls:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                ok = self.successful_calls() >= self._calls
                self.stop()
                return 0 if ok else 1
            time.sleep(0.1)
        self.stop()
        return 0

    def stop(self) -> None:
        """Stop sipp if it still runs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def received(self, method: str) -> int:
        """How many SIP requests of ``method`` (e.g. INVITE) the phone has received."""
        path = self._workdir / "messages.log"
        if not path.exists():
            return 0
        text = path.read_text(errors="replace")
        return len(re.findall(rf"^{method} sip:", text, re.MULTILINE))
    @property
    def workdir(self) -> Path:
        """Where the scenario, sipp's logs and its message trace are."""
        return self._workdir

    def invites(self) -> dict[str, int]:
        """INVITEs received per dialled number."""
        counts: dict[str, int] = {}
        path = self._workdir / "messages.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        for number in re.findall(r"^INVITE sip:([^@;\s]+)@", text, re.MULTILINE):
            counts[number] = counts.get(number, 0) + 1
        return counts

    def errors(self) -> str:
        """What sipp logged as errors (for assertion messages)."""
        path = self._workdir / "errors.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def __enter__(self) -> SippPhone:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StaticDirectory:
    """A user directory held in memory, for tests of the fronts: ``StaticDirectory(entry,
    ...)``; :attr:`lookups` counts the look-ups."""

    def __init__(self, *entries: DirectoryEntry) -> None:
        self.entries = {e.user: e for e in entries}
        self.lookups = 0

    async def lookup(self, user: str) -> DirectoryEntry | None:
        """The entry of ``user``, or None."""
        self.lookups += 1
        return self.entries.get(user)


class StaticPasswords:
    """A password checker held in memory (``StaticPasswords(alice="pw")``), for tests of
    ``CALLMFA_RADIUS_PASSWORD=ldap`` without a directory server; :attr:`checked` lists the
    users asked about."""

    def __init__(self, **passwords: str) -> None:
        self.passwords = passwords
        self.checked: list[str] = []

    async def check_password(self, user: str, password: str) -> bool:
        """True only for the right password of a known user."""
        self.checked.append(user)
        return user in self.passwords and self.passwords[user] == password


def access_request(
    secret: bytes,
    user: str,
    *,
    password: str | None = None,
    state: bytes | None = None,
    message_authenticator: bool = True,
    identifier: int | None = None,
    status_server: bool = False,
) -> tuple[bytes, Any]:
    """An Access-Request (or Status-Server) as a NAS sends it, for tests and benchmarks of the
    RADIUS front: (the datagram, pyrad's packet, to check the reply with
    ``packet.VerifyReply(reply, raw, enforce_ma=True)``)."""
    packet = AuthPacket(code=StatusServer if status_server else AccessRequest,
                        id=identifier, secret=secret, dict=dictionary())
    if packet.authenticator is None:
        packet.authenticator = packet.CreateAuthenticator()
    if not status_server:
        packet.AddAttribute("User-Name", user)
        packet.AddAttribute("NAS-Identifier", "test-nas")
    if password is not None:
        packet.AddAttribute("User-Password", packet.PwCrypt(password))
    if state is not None:
        packet.AddAttribute("State", state)
    if message_authenticator or status_server:
        packet.add_message_authenticator()
    raw: bytes = packet.RequestPacket()
    return raw, packet
