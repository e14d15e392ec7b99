"""Tests for ivr.settings: the frozen Settings object and its loading from the environment."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest

from ivr.classic import load_env
from ivr.exceptions import SettingsError
from ivr.settings import ENV_PREFIX, Settings, default_config_file


class TestDefaults:
    def test_defaults(self) -> None:
        """Without any variable, the single-PBX defaults apply."""
        s = Settings()

        assert s.redis_url == "redis://127.0.0.1:6379/0"
        assert (s.ami_host, s.ami_port, s.ami_user, s.ami_secret) == (
            "127.0.0.1",
            5038,
            "callmfa",
            "",
        )
        assert (s.agi_host, s.agi_port) == ("127.0.0.1", 4573)
        assert s.agi_url == "agi://127.0.0.1:4573/verify"
        assert s.dial_template == "PJSIP/{number}@trunk"
        assert s.caller_id == ""
        assert s.context == "callmfa-verify"
        assert s.ring_timeout_s == 30.0
        assert s.max_call_s == 120
        assert s.max_in_flight == 100
        assert s.input_timeout_s == 6.0
        assert s.max_attempts == 3
        assert s.request_ttl_s == 120
        assert s.result_ttl_s == 3600
        assert s.events_maxlen == 100_000
        assert s.agi_command_timeout_s == 90.0
        assert s.log_level == "info"

    def test_default_consumer_is_host_and_pid(self) -> None:
        """The consumer name defaults to host-pid."""
        assert Settings().consumer == f"{socket.gethostname()}-{os.getpid()}"

    def test_from_empty_mapping_is_defaults(self) -> None:
        """from_env({}) gives the defaults."""
        assert Settings.from_env({}) == Settings()


class TestFromEnv:
    def test_strings(self) -> None:
        """String settings are taken as they are."""
        s = Settings.from_env(
            {
                "CALLMFA_REDIS_URL": "rediss://user:pw@redis.example:6380/2",
                "CALLMFA_AMI_HOST": "pbx.example",
                "CALLMFA_DIAL_TEMPLATE": "PJSIP/{digits}@carrier",
                "CALLMFA_CALLER_ID": '"Sign-in" <+15550000>',
                "CALLMFA_LOG_LEVEL": "debug",
            }
        )

        assert s.redis_url == "rediss://user:pw@redis.example:6380/2"
        assert s.ami_host == "pbx.example"
        assert s.dial_template == "PJSIP/{digits}@carrier"
        assert s.caller_id == '"Sign-in" <+15550000>'
        assert s.log_level == "debug"

    def test_numbers_converted(self) -> None:
        """int fields become int and float fields float."""
        s = Settings.from_env(
            {
                "CALLMFA_AMI_PORT": "15038",
                "CALLMFA_MAX_ATTEMPTS": "2",
                "CALLMFA_INPUT_TIMEOUT_S": "1.5",
                "CALLMFA_RING_TIMEOUT_S": "3",
            }
        )

        assert s.ami_port == 15038
        assert type(s.ami_port) is int
        assert s.max_attempts == 2
        assert s.input_timeout_s == 1.5
        assert s.ring_timeout_s == 3.0
        assert type(s.ring_timeout_s) is float

    @pytest.mark.parametrize(
        ("key", "raw"),
        [
            ("CALLMFA_AMI_PORT", "five"),
            ("CALLMFA_AMI_PORT", "1.5"),
            ("CALLMFA_AMI_PORT", ""),
            ("CALLMFA_INPUT_TIMEOUT_S", "6s"),
            ("CALLMFA_INPUT_TIMEOUT_S", ""),
        ],
    )
    def test_bad_number(self, key: str, raw: str) -> None:
        """A value that is not a number raises SettingsError naming the variable."""
        with pytest.raises(SettingsError, match=key):
            Settings.from_env({key: raw})

    @pytest.mark.parametrize(
        "key",
        [
            "CALLMFA_MAX_ATTEMPTS",
            "CALLMFA_MAX_IN_FLIGHT",
            "CALLMFA_AGI_MAX_SESSIONS",
            "CALLMFA_MAX_CALL_S",
        ],
    )
    def test_counts_at_least_one(self, key: str) -> None:
        """Counts and limits below 1 are refused."""
        with pytest.raises(SettingsError, match=key):
            Settings.from_env({key: "0"})

    def test_unknown_variables_ignored(self) -> None:
        """Unknown CALLMFA_ variables (used by the sandbox and tests) and others are ignored."""
        s = Settings.from_env(
            {
                "CALLMFA_NETNS": "x",
                "CALLMFA_SANDBOX_DIR": "/srv/sandbox",
                "HOME": "/root",
                "AMI_PORT": "1",
            }
        )

        assert s == Settings()

    def test_prefix_is_case_sensitive(self) -> None:
        """Only upper-case CALLMFA_ variables are read."""
        assert Settings.from_env({"callmfa_ami_port": "1"}).ami_port == 5038

    def test_reads_os_environ_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a mapping, os.environ is read."""
        for key in list(os.environ):
            if key.startswith(ENV_PREFIX):
                monkeypatch.delenv(key)
        monkeypatch.setenv("CALLMFA_AMI_PORT", "6038")

        assert Settings.from_env().ami_port == 6038

    def test_mapping_replaces_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With a mapping, os.environ is not read at all."""
        monkeypatch.setenv("CALLMFA_AMI_PORT", "6038")

        assert Settings.from_env({}).ami_port == 5038


class TestSecret:
    def test_secret_from_variable(self) -> None:
        """CALLMFA_AMI_SECRET sets the secret."""
        assert Settings.from_env({"CALLMFA_AMI_SECRET": "hunter2"}).ami_secret == "hunter2"

    def test_secret_file(self, tmp_path: Path) -> None:
        """CALLMFA_AMI_SECRET_FILE is read, surrounding whitespace stripped."""
        path = tmp_path / "secret"
        path.write_text("  s3cret-value\n")

        s = Settings.from_env({"CALLMFA_AMI_SECRET_FILE": str(path)})

        assert s.ami_secret == "s3cret-value"

    def test_missing_secret_file(self, tmp_path: Path) -> None:
        """A secret file that cannot be read raises SettingsError naming the variable."""
        missing = tmp_path / "nope"

        with pytest.raises(SettingsError, match="CALLMFA_AMI_SECRET_FILE"):
            Settings.from_env({"CALLMFA_AMI_SECRET_FILE": str(missing)})

    def test_secret_file_is_a_directory(self, tmp_path: Path) -> None:
        """A directory is not a secret file."""
        with pytest.raises(SettingsError, match="CALLMFA_AMI_SECRET_FILE"):
            Settings.from_env({"CALLMFA_AMI_SECRET_FILE": str(tmp_path)})

    def test_secret_file_not_text(self, tmp_path: Path) -> None:
        """A secret file that is not UTF-8 text raises SettingsError, not a decoding error."""
        path = tmp_path / "secret"
        path.write_bytes(b"\xff\xfe\x00s")

        with pytest.raises(SettingsError, match="CALLMFA_AMI_SECRET_FILE"):
            Settings.from_env({"CALLMFA_AMI_SECRET_FILE": str(path)})

    def test_secret_file_with_inner_newline(self, tmp_path: Path) -> None:
        """A secret file with a line break inside the secret is refused (header injection)."""
        path = tmp_path / "secret"
        path.write_text("abc\r\nAction: Originate\n")

        with pytest.raises(SettingsError, match="CALLMFA_AMI_SECRET"):
            Settings.from_env({"CALLMFA_AMI_SECRET_FILE": str(path)})

    def test_repr_hides_secret(self) -> None:
        """repr() (and so logs of the settings) never shows the secret."""
        s = Settings(ami_secret="hunter2-very-secret")

        assert "hunter2-very-secret" not in repr(s)
        assert "hunter2-very-secret" not in str(s)
        assert "ami_secret" not in repr(s)


class TestValidation:
    @pytest.mark.parametrize(
        "name", ["caller_id", "dial_template", "ami_user", "ami_secret", "context", "agi_url"]
    )
    @pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\0"])
    def test_no_line_breaks_in_ami_values(self, name: str, bad: str) -> None:
        """Values that reach AMI headers must not hold CR, LF or NUL."""
        value = f"PJSIP/{{number}}@trunk{bad}Action: Originate"

        with pytest.raises(SettingsError, match=f"CALLMFA_{name.upper()}"):
            Settings.from_env({f"CALLMFA_{name.upper()}": value})

    def test_constructor_validates_too(self) -> None:
        """Validation runs on direct construction, not only in from_env."""
        with pytest.raises(SettingsError, match="CALLMFA_CALLER_ID"):
            Settings(caller_id="Sign-in\r\nAction: Originate")

    @pytest.mark.parametrize("template", ["PJSIP/trunk", "PJSIP/{num}@trunk", "{NUMBER}", ""])
    def test_dial_template_needs_number(self, template: str) -> None:
        """The dial template must contain {number} or {digits}."""
        with pytest.raises(SettingsError, match="CALLMFA_DIAL_TEMPLATE"):
            Settings.from_env({"CALLMFA_DIAL_TEMPLATE": template})

    @pytest.mark.parametrize("url", ["foo://x", "localhost:6379", "redis://h:abc/0",
                                     "redis://h:70000/0", "redis://[x/0",
                                     "http://u:s3cret@h/0"])
    def test_a_malformed_redis_url_is_a_settings_error(self, url: str) -> None:
        """A malformed CALLMFA_REDIS_URL was a redis-py ValueError traceback at the first
        connection; it is a settings error now, which leaves the password out."""
        with pytest.raises(SettingsError, match="CALLMFA_REDIS_URL") as e:
            Settings.from_env({"CALLMFA_REDIS_URL": url})
        assert "s3cret" not in str(e.value)

    @pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://u:p@h/1",
                                     "redis://[::1]:6379/0", "unix:///run/redis.sock"])
    def test_redis_urls(self, url: str) -> None:
        """redis://, rediss:// and unix:// URLs pass."""
        assert Settings.from_env({"CALLMFA_REDIS_URL": url}).redis_url == url

    @pytest.mark.parametrize("name", ["AGI_PORT", "HEALTH_PORT", "METRICS_PORT", "API_PORT"])
    @pytest.mark.parametrize("port", ["-1", "65536", "99999"])
    def test_listen_ports_are_checked(self, name: str, port: str) -> None:
        """A listen port out of range is refused at start-up, not at the bind."""
        with pytest.raises(SettingsError, match=f"CALLMFA_{name} must be 0 to 65535"):
            Settings.from_env({f"CALLMFA_{name}": port})

    @pytest.mark.parametrize("template", ["PJSIP/{number}@trunk", "SIP/trunk/{digits}"])
    def test_dial_template_with_number(self, template: str) -> None:
        """{number} or {digits} alone is enough."""
        assert Settings.from_env({"CALLMFA_DIAL_TEMPLATE": template}).dial_template == template


class TestFrozen:
    def test_cannot_assign(self) -> None:
        """Settings are frozen once loaded."""
        s = Settings()

        with pytest.raises(dataclasses.FrozenInstanceError):
            s.max_attempts = 5  # type: ignore[misc]

    def test_replace_revalidates(self) -> None:
        """dataclasses.replace builds a new, checked instance."""
        s = Settings()

        assert dataclasses.replace(s, max_attempts=2).max_attempts == 2
        with pytest.raises(SettingsError):
            dataclasses.replace(s, max_attempts=0)


class TestReference:
    def test_lists_every_field(self) -> None:
        """reference() has one row per field, in order, named CALLMFA_<FIELD>."""
        rows = Settings.reference()

        assert [r[0] for r in rows] == [
            ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)
        ]

    def test_every_row_documented(self) -> None:
        """Every row has a description."""
        assert all(doc.strip() for _, _, doc in Settings.reference())

    def test_defaults_shown(self) -> None:
        """Defaults are shown as text; the secret is blank and the consumer is symbolic."""
        rows = {name: default for name, default, _ in Settings.reference()}

        assert rows["CALLMFA_AMI_PORT"] == "5038"
        assert rows["CALLMFA_INPUT_TIMEOUT_S"] == "6.0"
        assert rows["CALLMFA_AMI_SECRET"] == ""
        assert rows["CALLMFA_CONSUMER"] == "(host-pid)"

    def test_every_variable_round_trips(self) -> None:
        """Each documented default, fed back through from_env, gives the default."""
        env = {
            name: default for name, default, _ in Settings.reference() if name != "CALLMFA_CONSUMER"
        }

        assert Settings.from_env(env) == Settings()


class TestEventLoop:
    def test_default_is_auto(self) -> None:
        """Issue 16: uvloop when it is installed is the default (auto); asyncio and uvloop
        may be named."""
        assert Settings().event_loop == "auto"
        assert Settings.from_env({"CALLMFA_EVENT_LOOP": "auto"}).event_loop == "auto"
        assert Settings.from_env({"CALLMFA_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
        assert Settings.from_env({"CALLMFA_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"

    def test_unknown_loop_refused(self) -> None:
        """A typo is a clear error at start-up, not a silent fallback."""
        with pytest.raises(SettingsError, match="CALLMFA_EVENT_LOOP"):
            Settings.from_env({"CALLMFA_EVENT_LOOP": "trio"})


class TestConfigFile:
    def test_file_under_the_environment(self, tmp_path: Path) -> None:
        """CALLMFA_CONFIG_FILE's lines apply; the environment wins; comments are skipped."""
        conf = tmp_path / "callmfa.conf"
        conf.write_text("# comment\n\nCALLMFA_MAX_ATTEMPTS=5\nCALLMFA_RING_TIMEOUT_S=9\n")
        s = Settings.load({"CALLMFA_CONFIG_FILE": str(conf), "CALLMFA_RING_TIMEOUT_S": "7"})
        assert (s.max_attempts, s.ring_timeout_s) == (5, 7.0)

    @pytest.mark.parametrize(("line", "value"), [
        ('CALLMFA_CALLER_ID="Sign-in" <+15550000>', '"Sign-in" <+15550000>'),
        ("CALLMFA_CALLER_ID='Sign-in <+15550000>'", "Sign-in <+15550000>"),
        ('CALLMFA_CALLER_ID="Sign-in <+15550000>"', "Sign-in <+15550000>"),
    ])
    def test_only_wholly_quoted_values_are_unquoted(
        self, tmp_path: Path, line: str, value: str
    ) -> None:
        """A caller ID that starts with a quoted name keeps its quotes."""
        conf = tmp_path / "callmfa.conf"
        conf.write_text(line + "\n")
        assert Settings.load({"CALLMFA_CONFIG_FILE": str(conf)}).caller_id == value

    def test_the_service_file_is_the_default(self, tmp_path: Path) -> None:
        """The command line reads the service's file when CALLMFA_CONFIG_FILE is unset and
        it exists, secret files included; an explicit or empty CALLMFA_CONFIG_FILE wins
        (issue 19: `callmfa check` on the host gets serve's settings)."""
        secret = tmp_path / "ami-secret"
        secret.write_text("s3cret\n")
        conf = tmp_path / "callmfa.conf"
        conf.write_text(f"CALLMFA_AMI_SECRET_FILE={secret}\nCALLMFA_MAX_ATTEMPTS=5\n")
        env: dict[str, str] = {}
        default_config_file(env, conf)
        assert env == {"CALLMFA_CONFIG_FILE": str(conf)}
        s = Settings.load(env)
        assert (s.ami_secret, s.max_attempts) == ("s3cret", 5)
        for given in ({"CALLMFA_CONFIG_FILE": ""}, {"CALLMFA_CONFIG_FILE": "/other.conf"}):
            env = dict(given)
            default_config_file(env, conf)
            assert env == given
        env = {}
        default_config_file(env, tmp_path / "absent.conf")
        assert env == {}
        assert Settings.load({"CALLMFA_CONFIG_FILE": ""}).max_attempts == 3

    def test_a_line_that_is_not_a_setting_is_an_error(self, tmp_path: Path) -> None:
        """A stray line names the file and line number."""
        conf = tmp_path / "callmfa.conf"
        conf.write_text("CALLMFA_MAX_ATTEMPTS=2\nnonsense\n")
        with pytest.raises(SettingsError, match=r"callmfa.conf:2"):
            Settings.load({"CALLMFA_CONFIG_FILE": str(conf)})

    @pytest.mark.parametrize("line", [
        "CALLMFA_DIAL_TEMPLATE='PJSIP/{number}@my-itsp'      # the ITSP wants +E.164",
        "CALLMFA_WEBHOOK_SECRET_FILE=/etc/callmfa/webhook-secret   # whsec_",
        "CALLMFA_DIAL_TEMPLATE=PJSIP/{number}@my-itsp\t# a tab, then a comment",
        "CALLMFA_LDAP_BIND_DN=   # empty: bind anonymously",  # no value, then a comment
    ])
    def test_a_comment_after_a_value_is_an_error(self, tmp_path: Path, line: str) -> None:
        """A '#' after a value was kept in it (the docs' own examples had one: the dial
        template became the comment's text too); the line is refused, with its number."""
        conf = tmp_path / "callmfa.conf"
        conf.write_text(f"# comment\n{line}\n")
        with pytest.raises(SettingsError, match=r"callmfa.conf:2: a '#' after the value"):
            Settings.load({"CALLMFA_CONFIG_FILE": str(conf)})

    @pytest.mark.parametrize(("line", "value"), [
        ("CALLMFA_AMI_SECRET=ab#cd", "ab#cd"),
        ("CALLMFA_AMI_SECRET='ab #cd'", "ab #cd"),
        ('CALLMFA_AMI_SECRET="ab #cd"', "ab #cd"),
    ])
    def test_a_hash_inside_a_value_stays(self, tmp_path: Path, line: str, value: str) -> None:
        """A '#' with no space before it, or in a quoted value, is part of the value."""
        conf = tmp_path / "callmfa.conf"
        conf.write_text(line + "\n")
        assert Settings.load({"CALLMFA_CONFIG_FILE": str(conf)}).ami_secret == value

    def test_classic_script_reads_its_env_file_the_same_way(self, tmp_path: Path) -> None:
        """The classic AGI script's callmfa.env (export lines, as the sandbox writes it) is
        parsed like CALLMFA_CONFIG_FILE: a quoted caller name keeps its quotes; the
        environment wins."""
        (tmp_path / "callmfa.env").write_text(
            "export CALLMFA_DIAL_TEMPLATE='PJSIP/{number}@trunk'\n"
            'export CALLMFA_CALLER_ID="Sign-in" <+15550000>\nCALLMFA_MAX_ATTEMPTS=5\n')
        values = load_env({"AST_CONFIG_DIR": str(tmp_path), "CALLMFA_MAX_ATTEMPTS": "2",
                           "PATH": "/bin"})
        assert values == {"CALLMFA_DIAL_TEMPLATE": "PJSIP/{number}@trunk",
                          "CALLMFA_CALLER_ID": '"Sign-in" <+15550000>',
                          "CALLMFA_MAX_ATTEMPTS": "2"}

    def test_changed_fields_and_reloadable(self) -> None:
        """changed_fields names what differs; RELOADABLE excludes addresses and secrets."""
        a, b = Settings(max_attempts=2), Settings(max_attempts=3, agi_port=1)
        assert a.changed_fields(b) == {"max_attempts", "agi_port"}
        assert "max_attempts" in Settings.RELOADABLE
        assert not {"agi_port", "redis_url", "ami_secret"} & Settings.RELOADABLE


ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a listen address under test, never bound


class TestIvrHere:
    @pytest.mark.parametrize(("agi_host", "agi_url"), [
        ("127.0.0.1", "agi://127.0.0.1:4573/verify"),
        ("127.0.0.1", "agi://localhost/verify"),
        (ALL_INTERFACES, "agi://127.0.0.1:4573/verify"),
        ("::", "agi://[::1]:4573/verify"),
        ("10.0.0.5", "agi://10.0.0.5:4573/verify"),
    ])
    def test_agi_url_names_this_listener(self, agi_host: str, agi_url: str) -> None:
        assert Settings(agi_host=agi_host, agi_url=agi_url).ivr_here

    @pytest.mark.parametrize(("agi_host", "agi_url"), [
        ("127.0.0.1", "agi://127.0.0.1:4574/verify"),  # another port
        ("127.0.0.1", "agi://10.0.0.5:4573/verify"),  # another host
        ("10.0.0.5", "agi://127.0.0.1:4573/verify"),  # not listening on loopback
        (ALL_INTERFACES, "agi://ivr.example:4573/verify"),  # a name: maybe a balancer
    ])
    def test_agi_url_names_another(self, agi_host: str, agi_url: str) -> None:
        assert not Settings(agi_host=agi_host, agi_url=agi_url).ivr_here

    @pytest.mark.parametrize("agi_url", [
        "agi://127.0.0.1:port/verify", "agi://127.0.0.1:70000/verify", "127.0.0.1:4573",
        "http://127.0.0.1:4573/verify", "agi:///verify",
    ])
    def test_a_malformed_agi_url_is_a_settings_error(self, agi_url: str) -> None:
        """It failed only when the first call was answered (found in a docs review)."""
        with pytest.raises(SettingsError, match="CALLMFA_AGI_URL"):
            Settings(agi_url=agi_url)

    @pytest.mark.parametrize("agi_url", [
        "agi://2001:db8::10/verify", "agi://::1/verify", "hagi://agi.example.com/verify",
        "AGI://[2001:db8::10]:4573/verify",
    ])
    def test_an_agi_url_asterisk_accepts_is_accepted(self, agi_url: str) -> None:
        """Asterisk's FastAGI takes a bare IPv6 address without a port (its
        ast_sockaddr_split_hostport: two colons or more are the host's, port 4573); the
        check refused it at start-up (found in review)."""
        Settings(agi_url=agi_url)

    def test_a_bare_ipv6_agi_url_names_this_listener(self) -> None:
        assert Settings(agi_host="::", agi_url="agi://::1/verify").ivr_here
        assert not Settings(agi_host="::", agi_url="agi://::1:4574/verify").ivr_here

    @pytest.mark.parametrize("change", [{"roles": "originator"}, {"agi_mode": "classic"}])
    def test_no_fastagi_here(self, change: dict[str, str]) -> None:
        assert not Settings(**change).ivr_here  # type: ignore[arg-type]
