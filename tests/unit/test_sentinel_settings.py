"""Sentinel settings and the connection plan made from them (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.connection import parse_url
from redis.connection import parse_url as sync_parse_url

from ivr.exceptions import SettingsError
from ivr.settings import Settings
from ivr.storage.failover import SentinelAnswer, SentinelReport
from ivr.storage.sentinel import PLAIN_RETRIES, plan, retries_for


def test_sentinel_addresses_are_parsed() -> None:
    s = Settings(redis_sentinels=" 10.0.0.1:26379, sentinel-b:26380,[::1]:26381 ")
    assert s.sentinel_addresses == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert Settings().sentinel_addresses == ()


@pytest.mark.parametrize("bad", ["host", "host:", ":26379", "host:0", "host:70000", "h:x"])
def test_a_bad_sentinel_address_is_refused_clearly(bad: str) -> None:
    with pytest.raises(SettingsError, match="CALLMFA_REDIS_SENTINELS: bad Sentinel address"):
        Settings(redis_sentinels=f"a:1,{bad}")


@pytest.mark.parametrize(("field", "value"), [
    ("redis_sentinel_service", ""), ("redis_sentinel_service", "two words"),
    ("redis_sentinel_tls", 2), ("redis_wait_replicas", -1), ("redis_wait_timeout_ms", 0),
    ("redis_failover_s", -1.0),
])
def test_bad_sentinel_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(SettingsError):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_the_sentinel_password_comes_from_a_file_and_stays_out_of_repr(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    s = Settings.from_env({"CALLMFA_REDIS_SENTINELS": "a:1",
                           "CALLMFA_REDIS_SENTINEL_PASSWORD_FILE": str(secret)})
    assert s.redis_sentinel_password == "s3cret-value"
    assert "s3cret" not in repr(s)
    p = plan(s, parse_url("redis://u:data-pw@ignored:1/3"), timeout_s=2)
    assert "s3cret" not in repr(p)
    assert "data-pw" not in repr(p)


def test_the_plan_takes_the_nodes_credentials_from_the_url_and_not_its_address() -> None:
    s = Settings(redis_sentinels="a:26379,b:26379", redis_sentinel_service="mfa",
                 redis_sentinel_user="watcher", redis_sentinel_password="spw",
                 redis_failover_s=10)
    p = plan(s, parse_url("redis://callmfa:pw@old-host:6379/2"), timeout_s=3)
    assert p.addresses == (("a", 26379), ("b", 26379))
    assert p.service == "mfa"
    assert dict(p.node) == {"username": "callmfa", "password": "pw", "db": 2}
    assert dict(p.sentinel) == {"socket_connect_timeout": 3, "socket_timeout": 3,
                                "username": "watcher", "password": "spw"}
    assert p.retries == retries_for(10) > PLAIN_RETRIES


@pytest.mark.parametrize("parse", [parse_url, sync_parse_url])
def test_tls_to_the_nodes_and_to_the_sentinels(parse: object) -> None:
    url = "rediss://u:pw@h:6380/0?ssl_ca_certs=/etc/ca.crt&ssl_certfile=/etc/c.crt"
    s = Settings(redis_sentinels="a:26379", redis_sentinel_tls=1)
    p = plan(s, parse(url), timeout_s=1)  # type: ignore[operator]
    assert p.node["ssl"] is True
    assert p.node["ssl_ca_certs"] == "/etc/ca.crt"
    assert p.sentinel["ssl"] is True
    assert p.sentinel["ssl_certfile"] == "/etc/c.crt"
    plain = plan(Settings(redis_sentinels="a:26379"), parse(url), timeout_s=1)  # type: ignore[operator]
    assert "ssl" not in plain.sentinel  # TLS to the nodes only


def test_retries_outlast_the_failover_window() -> None:
    assert retries_for(0) == PLAIN_RETRIES
    assert retries_for(30) == PLAIN_RETRIES + 120


def _answer(primary: str = "10.0.0.1:6379", flags: str = "master",
            state: str = "none") -> SentinelAnswer:
    return SentinelAnswer("s:26379", primary=primary, flags=tuple(flags.split(",")),
                          failover_state=state, replicas=("10.0.0.2:6379 (link ok)",),
                          sentinels=2, quorum=2, ckquorum="OK 3 usable Sentinels.")


@pytest.mark.parametrize(("answers", "failover"), [
    ((_answer(), _answer(), _answer()), False),
    ((_answer(), _answer(flags="master,s_down"), _answer()), True),
    ((_answer(flags="master,o_down"),), True),
    ((_answer(state="wait_promotion"),), True),
    ((_answer(), _answer(primary="10.0.0.2:6379")), True),
    ((SentinelAnswer("s:1", error="refused"),), True),
    ((SentinelAnswer("s:1", error="refused"), _answer()), False),
])
def test_a_failover_in_progress(answers: tuple[SentinelAnswer, ...], failover: bool) -> None:
    assert SentinelReport(answers).failover is failover
