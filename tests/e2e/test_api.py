"""The HTTP API on the real chain, driven with the real curl: a POST, a long poll to
`approved` when the phone presses #, auth and bad input refused, one call per
Idempotency-Key, and the progress events as SSE while the call runs."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from typing import Any

from ..conftest import REPO, Sandbox
from ..openapi import check
from .conftest import PhoneFactory

API = "http://127.0.0.1:4581"
PHONE = "+12015550100"


def curl(*args: str, timeout_s: float = 90) -> tuple[int, Any]:
    """Run curl inside the sandbox's namespace (this process joined it): (status, JSON)."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True,
                         text=True, timeout=timeout_s, check=True)
    body, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


def token(sandbox: Sandbox) -> str:
    return (sandbox.directory / "api-token").read_text().strip()


def post(sandbox: Sandbox, body: str, *extra: str) -> tuple[int, Any]:
    return curl("-X", "POST", f"{API}/v1/verifications", "-H", f"Authorization: Bearer "
                f"{token(sandbox)}", "-H", "Content-Type: application/json", "-d", body, *extra)


class TestCurl:
    def test_post_then_wait_gives_approved_when_the_phone_presses_pound(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        p = phone(keys="#")
        status, body = post(sandbox, json.dumps({"user": "api-alice", "phone": PHONE}))
        assert status == 202, body
        check("POST", "/v1/verifications", status, body)
        status, outcome = curl(f"{API}/v1/verifications/{body['id']}?wait=60", "-H",
                               f"Authorization: Bearer {token(sandbox)}")
        assert status == 200, outcome
        check("GET", "/v1/verifications/{id}", status, outcome)
        assert (outcome["outcome"], outcome["user"], outcome["id"]) == (
            "approved", "api-alice", body["id"])
        assert p.wait(20) == 0, p.errors()

    def test_without_a_token_it_is_401(self, sandbox: Sandbox) -> None:
        status, body = curl("-X", "POST", f"{API}/v1/verifications", "-H",
                            "Content-Type: application/json", "-d", '{"user": "x"}')
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = curl(f"{API}/v1/verifications/{uuid.uuid4()}", "-H",
                            "Authorization: Bearer cmfa_forged")
        assert (status, body["error"]) == (401, "unauthorized")

    def test_bad_json_and_a_bad_phone_are_400_with_the_detail(self, sandbox: Sandbox) -> None:
        status, body = post(sandbox, '{"user": "x", ')
        assert (status, body["error"]) == (400, "invalid_json")
        status, body = post(sandbox, json.dumps({"user": "x", "phone": "555-0100"}))
        assert (status, body["error"]) == (400, "invalid_phone")
        assert "E.164" in body["message"]
        check("POST", "/v1/verifications", status, body)

    def test_the_same_idempotency_key_twice_is_one_call(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        p = phone(keys="#")
        request = json.dumps({"user": "api-idem", "phone": "+12015550142"})
        key = f"signin-{uuid.uuid4()}"
        first = post(sandbox, request, "-H", f"Idempotency-Key: {key}")
        second = post(sandbox, request, "-H", f"Idempotency-Key: {key}")
        assert first == second
        assert first[0] == 202
        status, outcome = curl(f"{API}/v1/verifications/{first[1]['id']}?wait=60", "-H",
                               f"Authorization: Bearer {token(sandbox)}")
        assert (status, outcome["outcome"]) == (200, "approved")
        third = post(sandbox, request, "-H", f"Idempotency-Key: {key}")
        assert third == first
        assert p.wait(20) == 0, p.errors()
        assert p.invites() == {"+12015550142": 1}


class TestEvents:
    def test_sse_events_arrive_in_order_while_the_call_runs(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """Each event is read by curl as it happens, every one before `finished`."""
        p = phone(keys="#", key_delay_ms=1500)
        status, body = post(sandbox, json.dumps({"user": "api-sse", "phone": PHONE}))
        assert status == 202
        seen: list[tuple[str, float, dict[str, str]]] = []
        with subprocess.Popen(
            ["curl", "-sSN", "--max-time", "60", f"{API}/v1/verifications/{body['id']}/events",
             "-H", f"Authorization: Bearer {token(sandbox)}"], stdout=subprocess.PIPE, text=True,
        ) as stream:
            assert stream.stdout is not None
            name = ""
            for line in stream.stdout:  # curl ends when the server ends the stream
                if line.startswith("event: "):
                    name = line[7:].strip()
                elif line.startswith("data: "):
                    seen.append((name, time.monotonic(), json.loads(line[6:])))
            assert stream.wait(10) == 0
        names = [n for n, _, _ in seen]
        assert names == ["queued", "dialing", "ringing", "answered", "input", "finished"]
        assert seen[-1][2]["outcome"] == "approved"
        answered = seen[3][1]
        assert seen[-1][1] - answered > 1.0, "answered came with finished, not while it ran"
        assert p.wait(20) == 0, p.errors()


def admin_token(sandbox: Sandbox) -> str:
    """A fresh admin token, made with the CLI as an operator would."""
    env = {**sandbox.env, "PATH": "/usr/bin:/bin"}
    cli = str(REPO / ".venv" / "bin" / "callmfa")
    subprocess.run([cli, "token", "revoke", "e2e-admin"], env=env, capture_output=True,
                   timeout=60, check=False)
    return subprocess.run([cli, "token", "create", "e2e-admin", "--scope", "admin"],
                          env=env, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip().splitlines()[-1]


class TestAdmin:
    def test_a_user_put_in_the_directory_is_verified_by_name_alone(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """PUT /v1/admin/users/<user> (LocalDirectory), then a POST with only the user:
        the originator calls the directory's number and the phone approves."""
        auth = ("-H", f"Authorization: Bearer {admin_token(sandbox)}", "-H",
                "Content-Type: application/json")
        status, body = curl("-X", "PUT", f"{API}/v1/admin/users/api-dora", *auth,
                            "-d", '{"phone": "+12015550177"}')
        assert status == 200, body
        check("PUT", "/v1/admin/users/{user}", status, body)
        p = phone(keys="#")
        status, queued = post(sandbox, json.dumps({"user": "api-dora"}))
        assert status == 202, queued
        status, record = curl(f"{API}/v1/verifications/{queued['id']}?wait=60", "-H",
                              f"Authorization: Bearer {token(sandbox)}")
        assert (status, record["outcome"]) == (200, "approved"), record
        assert p.wait(20) == 0, p.errors()
        assert p.invites() == {"+12015550177": 1}
        status, body = curl("-X", "DELETE", f"{API}/v1/admin/users/api-dora", *auth)
        assert status == 200, body

    def test_block_and_bypass_through_the_api_reach_the_originator(
        self, sandbox: Sandbox
    ) -> None:
        """An admin token (from `callmfa token create --scope admin`) blocks a user: their
        verification ends blocked, uncalled; unblocked and bypassed, it ends bypassed. The
        audit names the token. The verify token gets 403."""
        auth = ("-H", f"Authorization: Bearer {admin_token(sandbox)}", "-H",
                "Content-Type: application/json")
        status, body = curl("-X", "POST", f"{API}/v1/admin/blocks", "-H",
                            f"Authorization: Bearer {token(sandbox)}", "-H",
                            "Content-Type: application/json", "-d", '{"user": "api-eve"}')
        assert (status, body["error"]) == (403, "forbidden")
        status, body = curl("-X", "POST", f"{API}/v1/admin/blocks", *auth,
                            "-d", '{"user": "api-eve", "for": "1h", "reason": "e2e"}')
        assert status == 201, body
        check("POST", "/v1/admin/blocks", status, body)

        def outcome() -> str:
            status, queued = post(sandbox, json.dumps({"user": "api-eve", "phone": PHONE}))
            assert status == 202
            status, record = curl(f"{API}/v1/verifications/{queued['id']}?wait=30", "-H",
                                  f"Authorization: Bearer {token(sandbox)}")
            assert status == 200, record
            found: str = record["outcome"]
            return found

        assert outcome() == "blocked"
        status, body = curl("-X", "DELETE", f"{API}/v1/admin/blocks/api-eve", *auth)
        assert status == 200, body
        status, body = curl("-X", "POST", f"{API}/v1/admin/bypasses", *auth,
                            "-d", '{"user": "api-eve", "for": "5m"}')
        assert status == 201, body
        assert outcome() == "bypassed"
        audit = subprocess.run(["redis-cli", "-p", "6379", "--no-raw", "xrange",
                                "callmfa:audit", "-", "+"], capture_output=True, text=True,
                               timeout=30, check=True).stdout
        assert audit.count('"api:e2e-admin"') >= 3
