"""Operations pieces without a PBX: metrics, the report, the doctor's pure checks, the docs."""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.fronts.web import HttpListener, ops_app
from ivr.metrics import Metrics, metrics_route
from ivr.ops.doctor import (
    OUTCOME_FIXES,
    Status,
    _privileges,
    check_amd,
    check_dial_template,
    check_early_keys,
    check_signing,
    probe_url,
)
from ivr.ops.reference import BEGIN, END, generated, settings_markdown
from ivr.ops.report import Audited, Finished, Report, render_csv, render_text
from ivr.settings import Settings
from ivr.storage.acl import SERVICE, USERS, setuser_line

from ..conftest import REPO


def _samples(metrics: Metrics) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return out


class TestMetrics:
    def test_an_outcome_counts_once_with_its_latencies(self) -> None:
        """outcome_stored counts the value and observes the three latencies it has."""
        m = Metrics()
        m.outcome_stored(OutcomeRecord(id="a", user="u", outcome=Outcome.APPROVED,
                                       requested_at=10.0, call_started_at=10.01, input_at=14.0,
                                       finished_at=14.002))
        m.outcome_stored(OutcomeRecord(id="b", user="u", outcome=Outcome.BUSY,
                                       requested_at=10.0, call_started_at=10.01,
                                       finished_at=12.0))
        s = _samples(m)
        assert s['callmfa_outcomes_total{"outcome": "approved"}'] == 1
        assert s['callmfa_outcomes_total{"outcome": "busy"}'] == 1
        assert s['callmfa_outcomes_total{"outcome": "error"}'] == 0
        assert s["callmfa_verification_seconds_count{}"] == 2
        assert s["callmfa_input_to_outcome_seconds_count{}"] == 1

    def test_number_refusals_count_by_reason(self) -> None:
        """number_refused counts rejected/number_not_allowed requests by reason."""
        m = Metrics()
        m.number_refused("region_not_allowed")
        m.number_refused("region_not_allowed")
        m.number_refused("invalid_number")
        s = _samples(m)
        assert s['callmfa_numbers_refused_total{"reason": "region_not_allowed"}'] == 2
        assert s['callmfa_numbers_refused_total{"reason": "invalid_number"}'] == 1

    def test_registries_are_separate(self) -> None:
        """Two Metrics never share counts (no global registry)."""
        a, b = Metrics(), Metrics()
        a.event_added("dialing")
        assert _samples(a)["callmfa_calls_placed_total{}"] == 1
        assert _samples(b)["callmfa_calls_placed_total{}"] == 0

    async def test_server_answers_metrics_health_and_404(self) -> None:
        """GET /metrics, /healthz (503 when unhealthy) and anything else over real TCP."""
        healthy = [True]

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text="ok\n") if healthy[0] else web.Response(status=503)

        server = HttpListener(ops_app({"/metrics": metrics_route(Metrics()),
                                       "/healthz": healthz}), host="127.0.0.1", port=0)
        await server.start()

        async def get(path: str) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data

        try:
            assert b"callmfa_calls_placed_total 0.0" in await get("/metrics")
            assert (await get("/healthz")).startswith(b"HTTP/1.1 200")
            healthy[0] = False
            assert (await get("/healthz")).startswith(b"HTTP/1.1 503")
            assert (await get("/nope")).startswith(b"HTTP/1.1 404")
        finally:
            await server.close()


class TestReport:
    # Blocks, bypasses and fraud audits live in callmfa:audit, not in callmfa:events.
    REPORT = Report(
        finished=[Finished("1", "2026-11-27T10:00:00.000Z", "alice", "approved"),
                  Finished("2", "2026-11-28T10:00:00.000Z", "alice", "fraud_reported"),
                  Finished("3", "2026-11-28T11:00:00.000Z", "bob", "approved")],
        audit=[Audited("2026-11-28T10:00:00.100Z", "blocked", "alice", "ivr",
                       "fraud_reported", "2027-02-26T10:00:00.100Z", "2"),
               Audited("2026-11-28T12:00:00.000Z", "bypass_granted", "bob", "cli:ops@h",
                       "lost phone", "2026-11-28T12:10:00.000Z")],
    )

    def test_csv_counts_per_day_user_and_outcome(self) -> None:
        """One row per (day, user, outcome); audit entries as audit:<name>."""
        assert render_csv(self.REPORT).splitlines() == [
            "day,user,outcome,count", "2026-11-27,alice,approved,1",
            "2026-11-28,alice,fraud_reported,1", "2026-11-28,bob,approved,1",
            "2026-11-28,alice,audit:blocked,1", "2026-11-28,bob,audit:bypass_granted,1"]

    def test_text_lists_fraud_reports_and_the_audit(self) -> None:
        """The table shows every section, the fraud report's id and the audit entries."""
        text = render_text(self.REPORT)
        for part in ("3 verifications", "per day (UTC)", "per user", "per outcome",
                     "fraud reports (1)", "security audit, callmfa:audit (1 blocked, "
                     "1 bypass_granted)", "lost phone", "cli:ops@h"):
            assert part in text
        assert any(line.startswith("2026-11-28T10:00:00.000Z  alice") and line.endswith(" 2")
                   for line in text.splitlines())

    def test_audit_alone_is_a_report(self) -> None:
        """A period with blocks but no verification still shows the blocks."""
        text = render_text(Report(audit=self.REPORT.audit[:1]))
        assert "security audit, callmfa:audit (1 blocked)" in text


class TestDoctorPureChecks:
    def test_every_outcome_has_a_fix(self) -> None:
        """check --call looked up OUTCOME_FIXES[outcome] and raised KeyError on six."""
        assert [o for o in Outcome if not OUTCOME_FIXES.get(o)] == []

    def test_dial_templates(self) -> None:
        """A TECH/resource string is ok; blanks fail; an unknown technology warns."""
        assert check_dial_template("PJSIP/{number}@trunk").status is Status.OK
        assert check_dial_template("PJSIP/{number}@a b").status is Status.FAIL
        assert check_dial_template("PJSIP/{nmber}{number}").status is Status.FAIL
        assert check_dial_template("Foo/{digits}").status is Status.WARN

    def test_privileges_from_list_commands(self) -> None:
        """ListCommands' '(Priv: ...)' gives the actions and their privilege classes."""
        actions, classes = _privileges({
            "Response": "Success", "Originate": "Originate a call.  (Priv: originate,all)",
            "Command": "Execute Asterisk CLI Command.  (Priv: command,all)",
            "Ping": "Keepalive command.  (Priv: <none>)"})
        assert actions == {"Originate", "Command", "Ping"}
        assert classes == {"originate", "command"}

    def test_early_keys_from_the_probe_calls_trystatus(self) -> None:
        """StoreDTMF ran: ok. Not loaded (NOAPP): warn, load the module. Not run at all (a
        dialplan from before it): warn, install the current dialplan. Calls work either way."""
        assert check_early_keys("SUCCESS").status is Status.OK
        noapp = check_early_keys("NOAPP")
        assert (noapp.status, "app_dtmfstore" in (noapp.fix or "")) == (Status.WARN, True)
        old = check_early_keys("")
        assert (old.status, "install-dialplan" in (old.fix or "")) == (Status.WARN, True)
        assert "FAILED" in check_early_keys("FAILED").message
        assert check_early_keys(None).status is Status.SKIP  # serve older than check

    def test_an_old_dialplan_without_callmfa_collect_is_a_warning(self) -> None:
        assert check_early_keys("SUCCESS", collect=True).status is Status.OK
        old = check_early_keys("SUCCESS", collect=False)
        assert old.status is Status.WARN
        assert "[callmfa-collect]" in old.message
        assert "install-dialplan" in (old.fix or "")

    def test_amd(self) -> None:
        """The AMD parameters in use are reported; AMD off is a warning."""
        amd = check_amd(Settings(amd_initial_silence_ms=2000))
        assert (amd.status, amd.message.startswith("AMD(2000,1500,,5000)")) == (Status.OK, True)
        assert check_amd(Settings(amd="off")).status is Status.WARN

    def test_signing(self) -> None:
        """No key fails; the opt-out warns; a key of 32 bytes or more is ok."""
        assert check_signing(Settings()).status is Status.FAIL
        assert "16 bytes" in check_signing(Settings(signing_key="k" * 16)).message
        assert check_signing(Settings(insecure_unsigned=1)).status is Status.WARN
        ok = check_signing(Settings(signing_key="k" * 40))
        assert (ok.status, "k" * 40 in ok.message) == (Status.OK, False)

    def test_probe_url_replaces_the_route(self) -> None:
        """The probe runs on the same host and port, route check."""
        assert probe_url("agi://pbx.example:4573/verify?x=1") == "agi://pbx.example:4573/check"


class TestSettingsReference:
    def test_docs_and_readme_match_the_code(self) -> None:
        """README.md and docs/settings.md hold exactly the generated table (`make docs`)."""
        for name in ("README.md", "docs/settings.md"):
            text = (REPO / name).read_text()
            block = text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]
            assert block == settings_markdown(), f"{name} is stale: run `make docs`"

    def test_the_acl_docs_and_file_are_generated_from_the_list(self) -> None:
        """docs/operations.md's ACL line and docker/redis/callmfa.acl come from
        ivr/storage/acl.py (`make docs`); the hand-written line lacked XPENDING, XCLAIM,
        DEL and the commands the Lua scripts call."""
        for name in ("docs/operations.md", "docker/redis/callmfa.acl"):
            assert generated(REPO / name) == (REPO / name).read_text(), \
                f"{name} is stale: run `make docs`"
        line = setuser_line()
        for rule in ("+xpending", "+xclaim", "+del", "+zadd", "+getdel", "+time", "+hincrby"):
            assert f" {rule} " in f"{line} "
        assert {"callmfa-service", "callmfa-signin", "callmfa-security"} <= {
            u.name for u in USERS}

    def test_the_lua_scripts_need_nothing_more(self) -> None:
        """Every command a Lua script calls is in the service's list."""
        rules = {n.rule for n in SERVICE}
        called = set()
        for path in (REPO / "ivr").rglob("*.py"):
            called |= {c.lower() for c in re.findall(r"redis\.call\('([A-Z]+)'",
                                                     path.read_text())}
        assert called, "no Lua script found"
        assert called <= rules, called - rules

    def test_every_setting_is_in_the_table(self) -> None:
        """One row per Settings field."""
        table = settings_markdown()
        for name, _, _ in Settings.reference():
            assert f"| `{name}` |" in table

    def test_every_default_is_shown_as_it_is(self) -> None:
        """A default that starts with "(" is a value, not a placeholder: the table showed
        the LDAP filter's (uid={user}) as uid={user}, which the settings then refuse."""
        table = settings_markdown()
        assert "| `CALLMFA_LDAP_USER_FILTER` | `(uid={user})` |" in table
        assert "| `CALLMFA_CONSUMER` | host-pid |" in table
        assert "| `CALLMFA_AMI_SECRET` | (none) |" in table

    def test_grafana_dashboard_uses_exported_metrics(self) -> None:
        """Every metric the dashboard queries is one callmfa exports."""
        exported = {f.name for f in text_string_to_metric_families(
            Metrics().exposition().decode())}
        dashboard = (REPO / "docs" / "grafana-dashboard.json").read_text()
        exprs = [t["expr"] for p in json.loads(dashboard)["panels"] for t in p["targets"]]
        used = {re.sub(r"_(bucket|total|count|sum)$", "", n)
                for e in exprs for n in re.findall(r"callmfa_\w+", e)}
        assert used <= exported | {"callmfa_info"}, used - exported


class TestServiceUnit:
    def test_says_serve_reconnects(self) -> None:
        """docs/callmfa.service said serve exits when it loses AMI; it reconnects
        (tests/e2e/test_faults.py::test_asterisk_killed_mid_call_then_back proves it)."""
        text = (REPO / "docs" / "callmfa.service").read_text()
        assert "exits when it loses AMI" not in text
        assert "reconnects by itself" in text
        assert "Restart=always" in text.splitlines()

    def test_the_unit_and_the_commands_read_one_file(self) -> None:
        """The unit names the file the command line reads by default; no EnvironmentFile
        or secret paths of its own, which `callmfa check` would not see (issue 19)."""
        from ivr.settings import DEFAULT_CONFIG_FILE
        lines = [line for line in (REPO / "docs" / "callmfa.service").read_text().splitlines()
                 if not line.startswith("#")]
        assert f"Environment=CALLMFA_CONFIG_FILE={DEFAULT_CONFIG_FILE}" in lines
        assert not [line for line in lines if line.startswith("EnvironmentFile=")
                    or ("_FILE=" in line and "CONFIG_FILE" not in line)]
