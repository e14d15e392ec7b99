"""callmfa.env, which holds secrets, is written 0640 root:asterisk, and no secret goes on a
command line (issue 12): `callmfa install-dialplan`, sandbox.sh and the Asterisk image."""

from __future__ import annotations

import argparse
import grp
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from ivr.classic import SETTINGS_READ
from ivr.exceptions import SettingsError
from ivr.ops.commands import _install_dialplan as install_dialplan
from ivr.ops.commands import classic_env, write_secret_file
from ivr.settings import Settings, read_config_file

from ..conftest import REPO
from .test_docker import ENTRYPOINT, ENTRYPOINT_FUNCTIONS, SANDBOX_FUNCTIONS, SANDBOX_SH

PEPPER = "p" * 40
WEBHOOK_SECRET = "whsec_" + "QUJD" * 8


class TestInstallDialplan:
    def test_env_file_gives_the_classic_script_its_settings_not_the_ami_secret(
        self, tmp_path: Path
    ) -> None:
        """The script's callmfa.env holds the settings serve was given (secrets as values),
        but not the AMI secret it does not need; callmfa's own parser reads it back."""
        settings = Settings(redis_url="redis://u:pw@127.0.0.1:6379/0", pin_pepper=PEPPER,
                            ami_secret="ami-secret-value", pin_lockout_after=5)
        path = tmp_path / "callmfa.env"
        path.write_text(classic_env(settings))
        values = read_config_file(path)
        assert values["CALLMFA_PIN_PEPPER"] == PEPPER
        assert values["CALLMFA_REDIS_URL"] == "redis://u:pw@127.0.0.1:6379/0"
        assert values["CALLMFA_PIN_LOCKOUT_AFTER"] == "5"
        assert "ami-secret-value" not in path.read_text()
        assert Settings.from_env(values).pin_pepper == PEPPER

    @pytest.mark.parametrize("secret", [
        "a pass #phrase for the Sentinels", "'quoted'", '"double"', " spaced ",
    ])
    def test_env_file_values_read_back_whole(self, tmp_path: Path, secret: str) -> None:
        """A value with ' #' in it (the file's parser refuses it unquoted), or wholly quoted,
        or with spaces around it, reads back as it was set."""
        settings = Settings(redis_url="redis://u:pw@127.0.0.1:6379/0", pin_pepper=PEPPER,
                            redis_sentinels="127.0.0.1:26379", redis_sentinel_password=secret)
        path = tmp_path / "callmfa.env"
        path.write_text(classic_env(settings))
        assert read_config_file(path)["CALLMFA_REDIS_SENTINEL_PASSWORD"] == secret

    def test_env_file_holds_no_secret_the_script_does_not_read(self, tmp_path: Path) -> None:
        """Only the settings the classic script reads go in (found in review: the SMTP
        password, webhook secret, LDAP bind password, provider tokens and RADIUS secret went
        into a file Asterisk's group reads); the script loads it without them."""
        unrelated = {
            "smtp_password": "smtp-pw-value", "webhook_secret": WEBHOOK_SECRET,
            "ldap_bind_password": "ldap-pw-value", "provider_okta_token": "okta-token-value",
            "provider_privacyidea_token": "pi-token-value",
            "provider_authentik_token": "ak-token-value",
            "provider_linotp_token": "lino-token-value",
            "radius_upstream_secret": "radius-secret-value", "ami_secret": "ami-secret-value",
        }
        settings = Settings(
            redis_url="redis://u:pw@127.0.0.1:6379/0", pin_pepper=PEPPER,
            signing_key="k" * 32, webhook_url="https://hooks.example.com/mfa",
            fraud_block_s=0, input_timeout_s=7, smtp_user="mailer",
            ldap_url="ldap://ldap.example.com", ldap_base_dn="dc=example,dc=com",
            ldap_bind_dn="cn=svc,dc=example,dc=com", radius_password="radius",
            radius_upstream="127.0.0.1:1812", **unrelated)
        path = tmp_path / "callmfa.env"
        path.write_text(classic_env(settings))
        text = path.read_text()
        for value in unrelated.values():
            assert value not in text
        values = read_config_file(path)
        assert {k: values[k] for k in ("CALLMFA_REDIS_URL", "CALLMFA_PIN_PEPPER",
                                       "CALLMFA_SIGNING_KEY", "CALLMFA_WEBHOOK_URL",
                                       "CALLMFA_FRAUD_BLOCK_S", "CALLMFA_INPUT_TIMEOUT_S")} == {
            "CALLMFA_REDIS_URL": "redis://u:pw@127.0.0.1:6379/0", "CALLMFA_PIN_PEPPER": PEPPER,
            "CALLMFA_SIGNING_KEY": "k" * 32, "CALLMFA_WEBHOOK_URL": "https://hooks.example.com/mfa",
            "CALLMFA_FRAUD_BLOCK_S": "0", "CALLMFA_INPUT_TIMEOUT_S": "7"}
        assert not {k for k in values if k.removeprefix("CALLMFA_").lower()
                    not in SETTINGS_READ} - {"CALLMFA_ROLES"}
        loaded = Settings.from_env(values)  # a webhook URL without its secret: role agi
        assert (loaded.webhook_url, loaded.webhook_secret) == (settings.webhook_url, "")

    def test_a_sender_still_needs_the_webhook_secret(self) -> None:
        with pytest.raises(SettingsError, match="CALLMFA_WEBHOOK_SECRET"):
            Settings(webhook_url="https://hooks.example.com/mfa")
        with pytest.raises(SettingsError, match="CALLMFA_WEBHOOK_SECRET"):
            Settings(webhook_url="https://hooks.example.com/mfa", roles="webhooks")
        with pytest.raises(SettingsError, match="CALLMFA_WEBHOOK_SECRET"):  # given: valid
            Settings(webhook_url="https://hooks.example.com/mfa", roles="agi",
                     webhook_secret="nope")

    def test_install_dialplan_writes_it_unreadable_by_others(self, tmp_path: Path) -> None:
        """install-dialplan DIR writes DIR/callmfa.env with no rights for others; an
        existing one is kept unless --force."""
        args = argparse.Namespace(directory=tmp_path, force=False, prompts=None)
        assert install_dialplan(Settings(pin_pepper=PEPPER), args) == 0
        mode = stat.S_IMODE((tmp_path / "callmfa.env").stat().st_mode)
        assert mode in (0o600, 0o640)
        assert mode & 0o007 == 0
        assert install_dialplan(Settings(), args) == 1
        assert PEPPER in (tmp_path / "callmfa.env").read_text()


    def test_manager_conf_is_not_world_readable(self, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        """manager_callmfa.conf (the AMI secret goes in it) is written 0640 root:asterisk,
        as Debian's own files; other snippets stay 0644 (issue 19)."""
        args = argparse.Namespace(directory=tmp_path, force=False, prompts=None)
        assert install_dialplan(Settings(), args) == 0
        mode = stat.S_IMODE((tmp_path / "manager_callmfa.conf").stat().st_mode)
        assert mode & 0o007 == 0
        out = capsys.readouterr()
        try:
            grp.getgrnam("asterisk")
        except KeyError:
            assert mode == 0o600
            assert "there is no group 'asterisk' on this host" in out.err
        else:
            assert mode == 0o640
            assert "manager_callmfa.conf (0640, group asterisk)" in out.out
        assert "secret = CHANGE-ME" in (tmp_path / "manager_callmfa.conf").read_text()

    def test_prompts_alone_need_no_directory(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`install-dialplan` with neither DIR nor --prompts is a usage error (exit 2)."""
        args = argparse.Namespace(directory=None, force=False, prompts=None)
        assert install_dialplan(Settings(), args) == 2
        assert "needs DIR, --prompts SOUNDS_DIR or both" in capsys.readouterr().err


class TestWriteSecretFile:
    def test_group_readable_only(self, tmp_path: Path) -> None:
        """With the group present: 0640, that group, owned by root when run as root."""
        group = grp.getgrgid(os.getegid()).gr_name
        path = tmp_path / "callmfa.env"
        assert write_secret_file(path, "CALLMFA_PIN_PEPPER=x\n", group=group) == \
            f"0640, group {group}"
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert info.st_gid == os.getegid()
        if os.geteuid() == 0:
            assert info.st_uid == 0

    def test_no_such_group_owner_only(self, tmp_path: Path) -> None:
        """Without the group: 0600 and the caller is told so."""
        path = tmp_path / "callmfa.env"
        path.write_text("old")
        os.chmod(path, 0o644)
        assert write_secret_file(path, "new\n", group="no-such-group-callmfa") == "0600"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == "new\n"


def _shell_functions() -> list[tuple[str, str, str]]:
    """(script, function, logical line) for sandbox.sh and the image's entrypoint."""
    return [(name, fn, line) for name, functions in (("sandbox.sh", SANDBOX_FUNCTIONS),
                                                     ("entrypoint.sh", ENTRYPOINT_FUNCTIONS))
            for fn, lines in functions.items() for line in lines]


# What holds a secret's value in the scripts: the AMI secret, the PIN pepper's file content.
_SECRET_VALUES = re.compile(
    r'"\$\((?:<|file_secret )"\$(?:PEPPER|SIGNING)_FILE"\)"|\$\(<"\$1"\)|\$\{?secret\b\}?')
# Commands that run inside bash itself, so their arguments are in no process's argv.
_BUILTINS = {"printf", "echo", "[[", "read", "local"}


class TestNoSecretOnACommandLine:
    @pytest.mark.parametrize(("script", "fn", "line"), [
        entry for entry in _shell_functions() if _SECRET_VALUES.search(entry[2])])
    def test_secret_values_reach_only_builtins(self, script: str, fn: str, line: str) -> None:
        """A secret's value is used only by bash builtins and assignments, never as an
        argument of a program (sed, redis-cli...), whose argv /proc shows to every user."""
        marked = _SECRET_VALUES.sub("SECRET_VALUE", line)
        for command in re.split(r"&&|\|\||[;|(){}]|\bdo\b|\bthen\b", marked):
            if "SECRET_VALUE" not in command:
                continue
            first = command.split()[0]
            assert re.fullmatch(r"\w+=\S*", first) or first in _BUILTINS, (script, fn, line)

    def test_the_check_sees_the_old_sed(self) -> None:
        """The check above flags what issue 12 found: the secret in sed's argv."""
        old = 'sed -i "s/^secret = .*/secret = $secret/" "$etc/manager_callmfa.conf"'
        marked = _SECRET_VALUES.sub("SECRET_VALUE", old)
        assert "SECRET_VALUE" in marked
        assert marked.split()[0] not in _BUILTINS

    def test_both_scripts_read_and_write_the_secrets(self) -> None:
        """The AMI secret goes into manager_callmfa.conf and the pepper into callmfa.env."""
        for functions in (SANDBOX_FUNCTIONS, ENTRYPOINT_FUNCTIONS):
            config = "\n".join(functions["install_asterisk_config"])
            assert 'line="secret = $secret"' in config
            assert "sed" not in config.split("secret=")[1].split("chmod 640")[0]
            classic = "\n".join(functions["install_classic_agi"])
            for name, var in (("PIN_PEPPER", "PEPPER_FILE"), ("SIGNING_KEY", "SIGNING_FILE")):
                assert (f"printf 'export CALLMFA_{name}=\"%s\"\\n' \"$(file_secret \"${var}\")\""
                        in classic)

    @pytest.mark.parametrize("script", [SANDBOX_SH, ENTRYPOINT])
    @pytest.mark.parametrize("name", ["PIN_PEPPER", "SIGNING_KEY"])
    @pytest.mark.parametrize("around", [("", " \n"), ("\t", "\r\n"), ("", "\n\n")])
    def test_the_classic_script_gets_the_secret_serve_reads(
        self, script: str, name: str, around: tuple[str, str], tmp_path: Path
    ) -> None:
        """A secret file with blanks or a CR around its value (an editor's, Windows') is read
        stripped by serve; callmfa.env must hold the same value, or the classic script signs
        with another key (every outcome refused) or peppers with another pepper (found in
        review: the quoted line kept a trailing space, and a CR split the line in two)."""
        secret = tmp_path / "secret"
        secret.write_text(f"{around[0]}{PEPPER}{around[1]}")
        var = {"PIN_PEPPER": "PEPPER_FILE", "SIGNING_KEY": "SIGNING_FILE"}[name]
        [line] = re.findall(rf"^.*(printf 'export CALLMFA_{name}=.*?\)\")", script, re.M)
        definitions = "\n".join(re.findall(r"^\w+\(\) \{\n.*?^\}$", script, re.M | re.S))
        out = subprocess.run(["bash", "-c", f"{definitions}\n{var}=$1\n{line}", "_", str(secret)],
                             capture_output=True, text=True, check=True).stdout
        env = tmp_path / "callmfa.env"
        env.write_text(out)
        served = Settings.from_env({f"CALLMFA_{name}_FILE": str(secret)})
        assert read_config_file(env) == {f"CALLMFA_{name}": getattr(served, name.lower())}

    @pytest.mark.parametrize("functions", [SANDBOX_FUNCTIONS, ENTRYPOINT_FUNCTIONS])
    def test_both_scripts_quote_the_settings_they_pass_on(
        self, functions: dict[str, list[str]], tmp_path: Path
    ) -> None:
        """The environment's CALLMFA_* lines go into callmfa.env quoted, so that a value
        with ' #' in it (refused unquoted) reads back whole: the scripts' own sed, run."""
        classic = "\n".join(functions["install_classic_agi"])
        [sed] = re.findall(r"sed '(s/\^[^']*)'", classic)
        value = "a pass #phrase"
        line = subprocess.run(["sed", sed], input=f"CALLMFA_REDIS_SENTINEL_PASSWORD={value}\n",
                              capture_output=True, text=True, check=True).stdout
        path = tmp_path / "callmfa.env"
        path.write_text(line)
        assert read_config_file(path) == {"CALLMFA_REDIS_SENTINEL_PASSWORD": value}

    @pytest.mark.parametrize("path", ["docker/sandbox/sandbox.sh", "docker/asterisk/entrypoint.sh",
                                      "docker/compose.yaml", "docker/Dockerfile",
                                      "docker/asterisk/Dockerfile", "Makefile"])
    def test_no_password_options(self, path: str) -> None:
        """No redis-cli -a, --requirepass or --pass anywhere in the scripts and images."""
        text = (REPO / path).read_text()
        assert not re.search(r"redis-cli[^\n]* -a |--requirepass|--pass\b|--secret\b", text)


class TestCallmfaEnv:
    @pytest.mark.parametrize("functions", [SANDBOX_FUNCTIONS, ENTRYPOINT_FUNCTIONS])
    def test_written_0640_root_asterisk(self, functions: dict[str, list[str]]) -> None:
        """callmfa.env (the Redis password, the signing key, the pepper) is created under
        umask 077, then given to root:asterisk 0640; nothing hands it to asterisk."""
        lines = functions["install_classic_agi"]
        written = next(i for i, line in enumerate(lines) if "callmfa.env" in line)
        assert lines[written].endswith('; } >"$ROOT/etc/asterisk-$key/callmfa.env")')
        opened = max(i for i in range(written) if lines[i].startswith("(umask 077 && {"))
        assert "}" not in "".join(lines[opened + 1:written])  # one group, under the umask
        tail = lines[written:]
        assert 'chroot "$ROOT" chown root:asterisk "/etc/asterisk-$key/callmfa.env"' in tail
        assert 'chmod 640 "$ROOT/etc/asterisk-$key/callmfa.env"' in tail
        assert not any("asterisk:asterisk" in line and "callmfa.env" in line for line in lines)

    def test_the_sandbox_makes_a_pepper_and_passes_it(self) -> None:
        """sandbox.sh up draws a pepper under umask 077 and gives serve its file."""
        assert '(umask 077 && head -c 32 /dev/urandom | base64 >"$PEPPER_FILE")' in SANDBOX_SH
        assert "export CALLMFA_PIN_PEPPER_FILE=$PEPPER_FILE" in SANDBOX_SH
        assert "PEPPER_FILE=${CALLMFA_PIN_PEPPER_FILE:-}" in ENTRYPOINT
        # The container's signing key is a root-only Docker secret: its value goes too.
        assert "SIGNING_FILE=${CALLMFA_SIGNING_KEY_FILE:-}" in ENTRYPOINT

    def test_the_sandbox_env_file_is_created_root_only(self) -> None:
        """$SB/env holds the signing key: made afresh under umask 077 on every `up` (an
        existing file would keep its old mode)."""
        write_env = SANDBOX_FUNCTIONS["write_env"]
        assert write_env[0].startswith('(umask 077 && rm -f "$SB/env" && : >"$SB/env")')

    def test_compose_gives_both_containers_the_pepper(self) -> None:
        """The demo compose passes the pepper as a secret file to callmfa and to Asterisk,
        the production one to callmfa."""
        demo = (REPO / "docker" / "compose.demo.yaml").read_text()
        assert demo.count("CALLMFA_PIN_PEPPER_FILE: /run/secrets/pin_pepper") == 2
        assert demo.count("secrets: [ami_secret, signing_key, pin_pepper]") == 2
        production = (REPO / "docker" / "compose.yaml").read_text()
        assert production.count("CALLMFA_PIN_PEPPER_FILE: /run/secrets/pin_pepper") == 1
        assert "docker/pin-pepper" in (REPO / ".gitignore").read_text()
