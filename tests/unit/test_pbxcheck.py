"""`callmfa check` on the PBX itself: modules, the dial template's endpoint, the mode of the
file that holds the AMI secret (issue 19). What the probe found is given as a dict."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ivr.ops.pbxcheck import (
    INSPECTORS,
    MODULES,
    check_ami_events,
    check_ami_secret_file,
    check_endpoint,
    check_modules,
    endpoint_of,
)
from ivr.ops.probe import _endpoint, _modules
from ivr.ops.results import Status

ALL_LOADED = {name: "1" for name in [*INSPECTORS, *(m.name for m in MODULES)]}
CID = "trunk@@b0e9390783472b741f270e3d28bcc046"


class TestEndpointOf:
    @pytest.mark.parametrize(("template", "endpoint"), [
        ("PJSIP/{number}@trunk", "trunk"),
        ("PJSIP/00{digits}@pstn-gw", "pstn-gw"),
        ("pjsip/{number}@my.itsp", "my.itsp"),
        ("PJSIP/my-itsp", "my-itsp"),
        ("PJSIP/{number}", None),
        ("Local/{number}@callmfa-dial/n", None),
        ("PJSIP/{number}@${SHELL(id)}", None),
    ])
    def test_endpoint_of(self, template: str, endpoint: str | None) -> None:
        """Only a plain PJSIP endpoint name is checked (it goes into a dialplan expression)."""
        assert endpoint_of(template) == endpoint


class TestModules:
    def test_all_loaded(self) -> None:
        [r] = check_modules("on", {"modules": ALL_LOADED})
        assert r.status is Status.OK
        assert f"all {len(MODULES)} modules" in r.message

    def test_missing_module_is_named_with_its_load_line(self) -> None:
        """A missing app_amd fails, naming the module, the CLI command and modules.conf."""
        [r] = check_modules("on", {"modules": {**ALL_LOADED, "app_amd": "0"}})
        assert r.status is Status.FAIL
        assert r.message.startswith("app_amd is not loaded: it provides AMD()")
        assert r.fix is not None
        assert "asterisk -rx 'module load app_amd.so'" in r.fix
        assert "'load = app_amd.so'" in r.fix
        assert "noload = app_amd.so" in r.fix

    def test_amd_off_needs_no_app_amd(self) -> None:
        [r] = check_modules("off", {"modules": {**ALL_LOADED, "app_amd": "0"}})
        assert r.status is Status.OK

    def test_optional_module_warns(self) -> None:
        [r] = check_modules("on", {"modules": {**ALL_LOADED, "app_senddtmf": "0"}})
        assert r.status is Status.WARN

    def test_without_func_module_asterisk_cannot_say(self) -> None:
        [r] = check_modules("on", {"modules": {**ALL_LOADED, "func_module": ""}})
        assert r.status is Status.WARN
        assert "func_module" in r.message

    def test_older_serve(self) -> None:
        [r] = check_modules("on", {})
        assert r.status is Status.SKIP


class TestEndpoint:
    def test_reachable(self) -> None:
        r = check_endpoint("PJSIP/{number}@trunk", {"endpoint": {
            "name": "trunk", "exists": True, "aors": "trunk",
            "contacts": {CID: "sip:192.0.2.1:5060|Reachable"}}})
        assert r.status is Status.OK
        assert "sip:192.0.2.1:5060: Reachable" in r.message

    def test_missing_endpoint_names_the_section(self) -> None:
        r = check_endpoint("PJSIP/{number}@nosuch", {"endpoint": {"name": "nosuch",
                                                                  "exists": False}})
        assert r.status is Status.FAIL
        assert "no PJSIP endpoint 'nosuch'" in r.message
        assert r.fix is not None
        assert "[nosuch] section with type = endpoint" in r.fix

    def test_qualify_off_is_unknown(self) -> None:
        r = check_endpoint("PJSIP/{number}@trunk", {"endpoint": {
            "name": "trunk", "exists": True, "aors": "trunk",
            "contacts": {CID: "sip:192.0.2.1:5060|NonQualified"}}})
        assert r.status is Status.WARN
        assert "sip:192.0.2.1:5060: unknown (qualify is off)" in r.message
        assert r.fix is not None
        assert "qualify_frequency" in r.fix
        assert "[trunk]" in r.fix

    def test_unreachable_fails(self) -> None:
        r = check_endpoint("PJSIP/{number}@trunk", {"endpoint": {
            "name": "trunk", "exists": True, "aors": "trunk",
            "contacts": {CID: "sip:192.0.2.1:5060|Unreachable"}}})
        assert r.status is Status.FAIL

    def test_no_contact_fails(self) -> None:
        r = check_endpoint("PJSIP/{number}@trunk", {"endpoint": {
            "name": "trunk", "exists": True, "aors": "", "contacts": {}}})
        assert r.status is Status.FAIL
        assert r.fix is not None
        assert "contact = sip:" in r.fix

    def test_functions_missing(self) -> None:
        r = check_endpoint("PJSIP/{number}@trunk", {"endpoint": {"name": "trunk",
                                                                 "inspect": False}})
        assert r.status is Status.WARN

    def test_not_pjsip(self) -> None:
        assert check_endpoint("Local/{number}@callmfa-dial/n", {}).status is Status.SKIP


class TestAmiSecretFile:
    def test_world_readable_fails_with_the_fix(self, tmp_path: Path) -> None:
        conf = tmp_path / "manager_callmfa.conf"
        conf.write_text("[callmfa]\nsecret = s\n")
        os.chmod(conf, 0o644)
        r = check_ami_secret_file(str(tmp_path))
        assert r.status is Status.FAIL
        assert "mode 0644: everyone on this host can read the AMI secret" in r.message
        assert r.fix == f"chown root:asterisk {conf} && chmod 0640 {conf}"

    def test_0640_is_ok(self, tmp_path: Path) -> None:
        conf = tmp_path / "manager_callmfa.conf"
        conf.write_text("")
        os.chmod(conf, 0o640)
        assert check_ami_secret_file(str(tmp_path)).status is Status.OK

    def test_not_on_this_host(self, tmp_path: Path) -> None:
        assert check_ami_secret_file(str(tmp_path / "none")).status is Status.SKIP


class FakeChannel:
    """Answers GET FULL VARIABLE from a table; records every expression asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def get_full_variable(self, expression: str) -> str:
        self.asked.append(expression)
        return self.answers.get(expression, "")


class TestProbe:
    async def test_an_endpoint_name_that_is_an_expression_is_never_evaluated(self) -> None:
        """CALLMFA_CHECK_ENDPOINT goes into a dialplan expression: a value that could
        call another function (SHELL) is refused before anything is asked."""
        channel = FakeChannel({"${CALLMFA_CHECK_ENDPOINT}": "x,context)}${SHELL(id)}"})
        assert await _endpoint(channel) is None  # type: ignore[arg-type]
        assert channel.asked == ["${CALLMFA_CHECK_ENDPOINT}"]

    async def test_endpoint_and_contacts(self) -> None:
        have = ("${IFMODULE(func_pjsip_endpoint.so)}${IFMODULE(func_pjsip_aor.so)}"
                "${IFMODULE(func_pjsip_contact.so)}")
        channel = FakeChannel({
            "${CALLMFA_CHECK_ENDPOINT}": "trunk", have: "111",
            "${PJSIP_ENDPOINT(trunk,context)}": "from-trunk",
            "${PJSIP_ENDPOINT(trunk,aors)}": "trunk",
            "${PJSIP_AOR(trunk,contact)}": CID,
            f"${{PJSIP_CONTACT({CID},uri)}}|${{PJSIP_CONTACT({CID},status)}}":
                "sip:192.0.2.1:5060|Reachable",
        })
        found = await _endpoint(channel)  # type: ignore[arg-type]
        assert found == {"name": "trunk", "exists": True, "context": "from-trunk",
                         "aors": "trunk", "contacts": {CID: "sip:192.0.2.1:5060|Reachable"}}
        assert check_endpoint("PJSIP/{number}@trunk", {"endpoint": found}).status is Status.OK

    async def test_modules_in_one_round_trip(self) -> None:
        names = [*INSPECTORS, *(m.name for m in MODULES)]
        expression = "|".join(f"${{IFMODULE({n}.so)}}" for n in names)
        channel = FakeChannel({expression: "|".join("1" for _ in names)})
        assert await _modules(channel) == dict.fromkeys(names, "1")  # type: ignore[arg-type]
        assert len(channel.asked) == 1


class TestAmiEvents:
    def test_only_what_callmfa_reads(self) -> None:
        r = check_ami_events("callmfa", 4, 0, set())
        assert r.status is Status.OK
        assert "4 during the probe call" in r.message

    def test_no_eventfilter_warns_with_the_fix(self) -> None:
        """No eventfilter: the probe's Local channels bring Newchannel, DialBegin..."""
        r = check_ami_events("callmfa", 12, 8, {"Newchannel", "DialBegin"})
        assert r.status is Status.WARN
        assert "8 of 12 events" in r.message
        assert "(DialBegin, Newchannel)" in r.message
        assert r.fix is not None
        assert "eventfilter lines of dialplan/manager_callmfa.conf" in r.fix
        assert "[callmfa]" in r.fix

    def test_no_event_at_all_is_skipped(self) -> None:
        assert check_ami_events("callmfa", 0, 0, set()).status is Status.SKIP
