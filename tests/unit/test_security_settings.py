"""Tests for the security settings, the FastAGI peer check and the admin durations."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from ivr.exceptions import SettingsError
from ivr.ops.admin import duration
from ivr.settings import Settings
from ivr.transport.fastagi import peer_allowed


class TestSecuritySettings:
    def test_defaults(self) -> None:
        """The issue's defaults: 60 s cooldowns, 5/h, 5/h, 500/h, 90 days, loopback AGI."""
        s = Settings()
        assert (s.throttle_user_cooldown_s, s.throttle_number_cooldown_s) == (60, 60)
        assert (s.throttle_user_per_hour, s.throttle_number_per_hour,
                s.throttle_global_per_hour) == (5, 5, 500)
        assert s.fraud_block_s == 90 * 86400
        assert s.allowed_prefixes == "+1"
        assert s.agi_allowed_peers == "127.0.0.1"
        assert s.signing_key == ""

    def test_signing_key_from_file_and_masked(self, tmp_path: Path) -> None:
        """CALLMFA_SIGNING_KEY_FILE is read; the key never shows in repr or the reference."""
        path = tmp_path / "key"
        path.write_text("s3cret-signing-key\n")
        s = Settings.from_env({"CALLMFA_SIGNING_KEY_FILE": str(path)})
        assert s.signing_key == "s3cret-signing-key"
        assert "s3cret" not in repr(s)
        ref = {name: default for name, default, _ in Settings.reference()}
        assert ref["CALLMFA_SIGNING_KEY"] == ""

    @pytest.mark.parametrize(("name", "value"), [
        ("CALLMFA_ALLOWED_PREFIXES", "44"),
        ("CALLMFA_ALLOWED_PREFIXES", ""),
        ("CALLMFA_DENIED_PREFIXES", "+1;+2"),
        ("CALLMFA_AGI_ALLOWED_PEERS", "127.0.0.1,not-an-ip"),
        ("CALLMFA_THROTTLE_USER_PER_HOUR", "-1"),
    ])
    def test_bad_values_are_refused_at_start(self, name: str, value: str) -> None:
        """A malformed security setting stops the start with the variable's name."""
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})

    def test_peer_networks(self) -> None:
        """Addresses and networks, IPv4 and IPv6."""
        s = Settings(agi_allowed_peers="127.0.0.1, 10.0.0.0/24,::1")
        assert s.agi_peer_networks() == (
            ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/24"),
            ipaddress.ip_network("::1/128"))


class TestPeerAllowed:
    nets = Settings(agi_allowed_peers="127.0.0.1,10.0.0.0/24").agi_peer_networks()

    @pytest.mark.parametrize("peer", [("127.0.0.1", 5), ("10.0.0.9", 5),
                                      ("::ffff:127.0.0.1", 5, 0, 0)])
    def test_allowed(self, peer: tuple[object, ...]) -> None:
        """Listed addresses, networks, and IPv4-mapped IPv6 of a listed address."""
        assert peer_allowed(peer, self.nets)

    @pytest.mark.parametrize("peer", [("127.0.0.2", 5), ("10.0.1.1", 5), None, ("x", 1), ()])
    def test_refused(self, peer: object) -> None:
        """Anything else, including an unreadable peer, is refused (fail closed)."""
        assert not peer_allowed(peer, self.nets)


class TestDuration:
    @pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30s", 30), ("10m", 600),
                                                   ("12h", 43200), ("90d", 7776000)])
    def test_units(self, text: str, seconds: int) -> None:
        """Plain seconds or s/m/h/d."""
        assert duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "0", "10x", "-5m", "1.5h"])
    def test_bad(self, text: str) -> None:
        """Anything else is a usage error."""
        with pytest.raises(argparse.ArgumentTypeError):
            duration(text)
