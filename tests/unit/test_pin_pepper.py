"""PIN hashes peppered with CALLMFA_PIN_PEPPER (HMAC-SHA256 before scrypt), old ones upgraded."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.call import CallContext
from ivr.domain.codes import (
    PEPPERED,
    PinCheck,
    check_code,
    check_pin,
    hash_code,
    hash_pin,
    is_valid_hash,
)
from ivr.exceptions import SettingsError
from ivr.settings import Settings

PEPPER = b"p" * 32
OTHER = b"q" * 32
PIN = "5938"


def _call(stored: str) -> CallContext:
    call = CallContext(id="x", user="alice", mode="pin", lang="en", requested_at=None,
                       call_started_at=None, answered_at=0.0)
    call.started(pin_hash=stored, pin_locked=False)
    return call


class TestHashes:
    def test_new_hash_is_peppered(self) -> None:
        """With a pepper, the stored form says so and holds neither the PIN nor the pepper."""
        stored = hash_pin(PIN, PEPPER)
        assert stored.startswith(PEPPERED + "$14$8$1$")
        assert PIN not in stored
        assert PEPPER.decode() not in stored
        assert check_pin(PIN, stored, PEPPER).ok

    def test_peppered_hash_is_no_plain_scrypt_of_the_pin(self) -> None:
        """The scrypt inside is not over the PIN: without the pepper it matches nothing."""
        stored = hash_pin(PIN, PEPPER)
        inner = "scrypt" + stored.removeprefix(PEPPERED)
        assert is_valid_hash(inner)
        assert not check_code(PIN, inner)

    @pytest.mark.parametrize("pepper", [OTHER, b""])
    def test_wrong_or_missing_pepper_fails(self, pepper: bytes) -> None:
        """A peppered hash never matches with another pepper, nor with none."""
        stored = hash_pin(PIN, PEPPER)
        assert check_pin(PIN, stored, pepper) == PinCheck(ok=False)

    def test_wrong_pin_fails(self) -> None:
        """The right pepper and a wrong PIN: no."""
        assert not check_pin("5939", hash_pin(PIN, PEPPER), PEPPER).ok

    def test_old_hash_still_verifies_and_asks_for_an_upgrade(self) -> None:
        """A hash set before the pepper (plain scrypt) verifies; a right PIN asks to upgrade."""
        old = hash_code(PIN)
        assert check_pin(PIN, old, PEPPER).ok
        assert check_pin(PIN, old, PEPPER).upgrade
        assert not check_pin("5939", old, PEPPER).upgrade

    def test_without_pepper_nothing_is_upgraded(self) -> None:
        """No pepper configured: PINs are plain scrypt, as before, and stay so."""
        stored = hash_pin(PIN, b"")
        assert stored.startswith("scrypt$")
        assert check_pin(PIN, stored, b"").ok
        assert not check_pin(PIN, stored, b"").upgrade

    @pytest.mark.parametrize("stored", ["", "scrypt-p1$", "scrypt-p1$99$8$1$aaaa$bbbb", "x"])
    def test_malformed_hash_matches_nothing(self, stored: str) -> None:
        """A broken stored form is a no, never an error."""
        assert not check_pin(PIN, stored, PEPPER).ok


class TestOneCodePathForBothDrivers:
    def test_right_pin_on_an_old_hash_gets_the_upgrade(self) -> None:
        """CallContext.check_code, which both drivers call: the old hash approves and the
        (old, new) pair to store with the success is the new peppered hash."""
        old = hash_code(PIN)
        call = _call(old)
        assert call.check_code(PIN, PEPPER)
        assert call.pin_upgrade is not None
        checked, new = call.pin_upgrade
        assert checked == old
        assert new.startswith(PEPPERED + "$")
        assert check_pin(PIN, new, PEPPER) == PinCheck(ok=True)

    def test_wrong_pin_or_peppered_hash_gets_none(self) -> None:
        """A wrong PIN upgrades nothing; nor does a hash that is peppered already."""
        old_call = _call(hash_code(PIN))
        assert not old_call.check_code("0000", PEPPER)
        assert old_call.pin_upgrade is None
        new_call = _call(hash_pin(PIN, PEPPER))
        assert new_call.check_code(PIN, PEPPER)
        assert new_call.pin_upgrade is None

    def test_match_codes_are_not_peppered(self) -> None:
        """Mode match checks the sign-in service's own hash, with no pepper."""
        call = CallContext(id="x", user="alice", mode="match", lang="en", requested_at=None,
                           call_started_at=None, answered_at=0.0, match_hash=hash_code("42"))
        assert call.check_code("42", PEPPER)
        assert call.pin_upgrade is None


class TestSetting:
    def test_from_a_file(self, tmp_path: Path) -> None:
        """CALLMFA_PIN_PEPPER_FILE names a file holding it, like the other secrets; it is
        never in repr."""
        path = tmp_path / "pepper"
        path.write_text("k" * 40 + "\n")
        settings = Settings.from_env({"CALLMFA_PIN_PEPPER_FILE": str(path)})
        assert settings.pin_pepper == "k" * 40
        assert "k" * 40 not in repr(settings)

    def test_short_pepper_is_refused(self) -> None:
        """A pepper under 32 bytes is a settings error that names the setting."""
        with pytest.raises(SettingsError, match="CALLMFA_PIN_PEPPER"):
            Settings(pin_pepper="short")
