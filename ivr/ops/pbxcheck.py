"""What ``callmfa check`` learns about the PBX itself: its modules, the dial template's PJSIP
endpoint, and the mode of the file that holds the AMI secret.

The modules and the endpoint are asked from inside Asterisk by the probe call (see
:mod:`ivr.ops.probe`), with the dialplan functions ``IFMODULE`` (func_module),
``PJSIP_ENDPOINT``, ``PJSIP_AOR`` and ``PJSIP_CONTACT`` (func_pjsip_*). AMI's ``Command`` and
``PJSIPShowEndpoint`` would need the ``command`` or ``system`` rights that callmfa's
least-privilege account (``write = originate``) must not have.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import CheckResult, Status

# The dial template's endpoint, passed to the probe (it lands in a dialplan expression).
ENDPOINT_VARIABLE = "CALLMFA_CHECK_ENDPOINT"
ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,79}\Z")
# A contact id as PJSIP_AOR(aor,contact) gives it: "<aor>@@<hash>".
CONTACT_ID = re.compile(r"[A-Za-z0-9_.+-]{1,80}@@[0-9a-f]{1,64}\Z")
MANAGER_CONF = "manager_callmfa.conf"
INSPECTORS = ("func_module", "func_pjsip_endpoint", "func_pjsip_aor", "func_pjsip_contact")


@dataclass(frozen=True)
class Module:
    """A module the dialplan or the IVR uses."""

    name: str
    needed_for: str
    required: bool = True  # False: only some calls need it (warn, not FAIL)
    amd_only: bool = False


MODULES = (
    Module("res_agi", "AGI() and the IVR's commands (GET DATA, STREAM FILE)"),
    Module("app_stack", "Gosub(callmfa-prepare,...)"),
    Module("app_exec", "ExecIf() and TryExec()"),
    Module("app_amd", "AMD(), answering-machine detection (CALLMFA_AMD=on)", amd_only=True),
    Module("app_read", "Read(), which collects the keys in standard mode"),
    Module("app_playback", "Playback() of the goodbye and the other closing prompts"),
    Module("func_timeout", "TIMEOUT(absolute), the cap on a call's length"),
    Module("func_logic", "IF()"),
    Module("func_strings", "LEN()"),
    Module("func_channel", "CHANNEL(language), the prompts' language"),
    Module("func_env", "STAT(), for CALLMFA_PROMPT_OVERRIDE_DIR", required=False),
    Module("app_senddtmf", "SendDTMF(), for requests with an office extension",
           required=False),
)


def module_fix(name: str) -> str:
    """How to load a module, now and at every start."""
    return (f"load it now: asterisk -rx 'module load {name}.so'; and at start-up: in "
            f"modules.conf, remove any 'noload = {name}.so' line (autoload = yes) or add "
            f"'load = {name}.so' (autoload = no)")


def endpoint_of(dial_template: str) -> str | None:
    """The PJSIP endpoint a dial template dials through (``PJSIP/{number}@trunk`` gives
    ``trunk``), or None when it names none (another technology, or a placeholder there)."""
    tech, _, resource = dial_template.partition("/")
    if tech.upper() != "PJSIP" or not resource:
        return None
    name = resource.rpartition("@")[2] if "@" in resource else resource
    return name if ENDPOINT_NAME.match(name) else None


def check_modules(settings_amd: str, found: dict[str, Any]) -> list[CheckResult]:
    """The ``modules`` line: what the probe's ``IFMODULE`` said of each module."""
    loaded: dict[str, str] | None = found.get("modules")
    if loaded is None:
        return [CheckResult("modules", Status.SKIP,
                            "the running callmfa serve does not report them: restart it")]
    if loaded.get("func_module") != "1":
        return [CheckResult("modules", Status.WARN,
                            "func_module is not loaded: Asterisk cannot say which modules are",
                            module_fix("func_module"))]
    results = []
    wanted = [m for m in MODULES if not (m.amd_only and settings_amd == "off")]
    for m in wanted:
        if loaded.get(m.name) == "1":
            continue
        status = Status.FAIL if m.required else Status.WARN
        results.append(CheckResult("modules", status,
                                   f"{m.name} is not loaded: it provides {m.needed_for}",
                                   module_fix(m.name)))
    if not results:
        results.append(CheckResult("modules", Status.OK,
                                   f"all {len(wanted)} modules the dialplan uses are loaded"))
    return results


def _section_fix(endpoint: str) -> str:
    return (f"add to pjsip.conf a [{endpoint}] section with type = endpoint (and its aor and "
            f"transport: docs/asterisk.md, \"The trunk\"), or fix CALLMFA_DIAL_TEMPLATE; then "
            "asterisk -rx 'module reload res_pjsip.so'")


def check_endpoint(dial_template: str, found: dict[str, Any]) -> CheckResult:
    """The ``endpoint`` line: the dial template's endpoint exists, and its contact answers
    qualify (``Reachable``); qualify off gives ``unknown``, a warning."""
    endpoint = endpoint_of(dial_template)
    if endpoint is None:
        return CheckResult("endpoint", Status.SKIP,
                           f"{dial_template!r} names no PJSIP endpoint to check")
    seen: dict[str, Any] | None = found.get("endpoint")
    if seen is None:
        return CheckResult("endpoint", Status.SKIP,
                           "the running callmfa serve does not report it: restart it")
    if seen.get("inspect") is False:
        return CheckResult("endpoint", Status.WARN,
                           "Asterisk cannot say: func_pjsip_endpoint, func_pjsip_aor or "
                           "func_pjsip_contact is not loaded",
                           "; ".join(module_fix(m) for m in INSPECTORS[1:]))
    if not seen.get("exists"):
        return CheckResult("endpoint", Status.FAIL,
                           f"Asterisk has no PJSIP endpoint {endpoint!r} (from "
                           f"CALLMFA_DIAL_TEMPLATE {dial_template!r})", _section_fix(endpoint))
    aors = seen.get("aors") or ""
    contacts: dict[str, str] = seen.get("contacts") or {}
    if not contacts:
        return CheckResult(
            "endpoint", Status.FAIL,
            f"PJSIP endpoint {endpoint!r} has no contact (aors: {aors or 'none'})",
            f"give the endpoint an aor (aors = {endpoint}) and that [{aors or endpoint}] "
            "section (type = aor) a 'contact = sip:<trunk host>:5060', or let the trunk "
            "register; then asterisk -rx 'module reload res_pjsip.so'")
    states = {cid: value.rpartition("|")[2] for cid, value in contacts.items()}
    text = f"PJSIP endpoint {endpoint!r}, contact " + ", ".join(
        f"{contacts[cid].rpartition('|')[0] or cid}: "
        f"{status if status in ('Reachable', 'Unreachable') else 'unknown'}"
        for cid, status in sorted(states.items()))
    if "Reachable" in states.values():
        return CheckResult("endpoint", Status.OK, text)
    if all(s in ("Unreachable", "Removed") for s in states.values()):
        return CheckResult("endpoint", Status.FAIL, text + " (it does not answer OPTIONS)",
                           f"is the trunk up, and the contact in the [{aors}] section (type = "
                           "aor) of pjsip.conf right (host, port, transport)?")
    return CheckResult("endpoint", Status.WARN, text + " (qualify is off)",
                       f"add 'qualify_frequency = 60' to the [{aors}] section (type = aor) of "
                       "pjsip.conf, so that Asterisk asks the trunk with OPTIONS")


def check_ami_secret_file(config_dir: str) -> CheckResult:
    """The ``ami-secret`` line: manager_callmfa.conf (it holds the AMI secret) gives others
    no rights; skipped when the directory is not on this host."""
    path = Path(config_dir) / MANAGER_CONF
    try:
        info = path.stat()
    except FileNotFoundError:
        return CheckResult("ami-secret", Status.SKIP,
                           f"no {path} on this host (CALLMFA_ASTERISK_CONFIG_DIR)")
    except OSError as e:
        return CheckResult("ami-secret", Status.SKIP, f"cannot read {path}: {e.strerror}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o007:
        return CheckResult("ami-secret", Status.FAIL,
                           f"{path} is mode {mode:04o}: everyone on this host can read the "
                           "AMI secret",
                           f"chown root:asterisk {path} && chmod 0640 {path}")
    return CheckResult("ami-secret", Status.OK, f"{path} is mode {mode:04o}, no rights for others")


def check_ami_events(user: str, received: int, unneeded: int, names: set[str]) -> CheckResult:
    """The ``ami-events`` line: were the AMI account's events, while the probe call lasted,
    only of the kinds callmfa reads (OriginateResponse, Newstate, Hangup)?

    callmfa drops the others unparsed, but Asterisk still formats and sends them to every
    session of the account: manager_callmfa.conf's eventfilter lines keep them away.
    """
    if not received:
        return CheckResult("ami-events", Status.SKIP, "no AMI event came during the probe call")
    if unneeded:
        return CheckResult(
            "ami-events", Status.WARN,
            f"{user} was sent {unneeded} of {received} events of kinds callmfa does not use "
            f"({', '.join(sorted(names))}) during the probe call",
            f"add the eventfilter lines of dialplan/{MANAGER_CONF} to the [{user}] section, "
            "then `manager reload`")
    return CheckResult("ami-events", Status.OK,
                       f"{user} is sent only the kinds of events callmfa reads "
                       f"({received} during the probe call)")
