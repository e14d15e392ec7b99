"""The images are built the way the sandbox is, so the sandbox's tests vouch for them.

No Docker engine runs in CI: these tests read docker/sandbox/sandbox.sh and the Docker files
and fail when the packages, the configuration steps, Asterisk's flags, the dependency
versions or the service settings differ.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ivr.classic import SETTINGS_READ
from ivr.settings import SECRETS, Settings

from ..conftest import REPO

DOCKER = REPO / "docker"
SANDBOX_SH = (DOCKER / "sandbox" / "sandbox.sh").read_text()
ASTERISK_DOCKERFILE = (DOCKER / "asterisk" / "Dockerfile").read_text()
ENTRYPOINT = (DOCKER / "asterisk" / "entrypoint.sh").read_text()
SERVICE_DOCKERFILE = (DOCKER / "Dockerfile").read_text()
COMPOSE = (DOCKER / "compose.demo.yaml").read_text()  # the all-in-one demo
PRODUCTION = (DOCKER / "compose.yaml").read_text()  # callmfa and Redis next to a PBX
LOCK = (DOCKER / "requirements.lock").read_text()

# The per-instance steps of `sandbox.sh up` (before it starts an Asterisk): the entrypoint
# defines functions of the same names and runs them for instance 1.
MIRRORED = ("inst_key", "install_asterisk_config", "install_classic_agi", "install_prompts",
            "file_secret")

# Every line of those functions that must differ, as (function, sandbox line) -> the image's
# line, or None where the image has no such step (lines as _functions gives them).
SANDBOX_ONLY: dict[tuple[str, str], str | None] = {
    # The sandbox makes its AMI secret; the container is given one (a Docker secret).
    ("install_asterisk_config", 'secret=$(<"$SB/ami-secret")'):
        'secret=$(<"$CALLMFA_AMI_SECRET_FILE")',
    # A link in the sandbox's logs directory; the container keeps the log where Asterisk puts it.
    ("install_asterisk_config",
     'ln -sfn "$ROOT/var/log/asterisk-$key/messages.log" "$SB/logs/$(inst_name "$n").log"'): None,
    # pyst2's `asterisk` package: from the sandbox's venv; from the image's payload stage.
    ("install_classic_agi",
     "site=$(\"$VENV/bin/python\" -c 'import asterisk, os; "
     "print(os.path.dirname(os.path.dirname(asterisk.__file__)))')"): "site=/opt/callmfa/site",
    # The classic script's settings, of those it reads (CLASSIC_SETTINGS): the sandbox's env
    # file and CALLMFA_* environment; the container's CALLMFA_* environment.
    ("install_classic_agi",
     "(umask 077 && { echo \"export CALLMFA_ROLES=agi\"; { cat \"$SB/env\"; "
     "env | grep '^CALLMFA_' | sed 's/^\\([^=]*\\)=\\(.*\\)$/export \\1=\"\\2\"/'; } "
     "| grep -E \"^export CALLMFA_($CLASSIC_SETTINGS)=\" || true"):
        "(umask 077 && { echo \"export CALLMFA_ROLES=agi\"; env | grep '^CALLMFA_' "
        "| sed 's/^\\([^=]*\\)=\\(.*\\)$/export \\1=\"\\2\"/' "
        "| grep -E \"^export CALLMFA_($CLASSIC_SETTINGS)=\" || true",
    # The prompts are made once, when the image is built (test_prompts_made_at_build_time).
    ("install_prompts", '"$VENV/bin/python" -m ivr.ops.promptgen "$repo/build/prompts" >/dev/null'):
        None,
}


def _logical_lines(text: str) -> list[str]:
    """Shell lines with continuations joined, stripped, without blanks and comment lines."""
    lines = re.sub(r"\s*\\\n\s*", " ", text).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _functions(script: str) -> dict[str, list[str]]:
    """Each shell function of a script (`name() {` ... `}` or `name() { ...; }`), by name."""
    found = {name: [body] for name, body in re.findall(r"^(\w+)\(\) \{ (.*); \}$", script, re.M)}
    for name, body in re.findall(r"^(\w+)\(\) \{\n(.*?)^\}$", script, re.M | re.S):
        found[name] = _logical_lines(body)
    return found


def _main(script: str) -> list[str]:
    """A script's top-level lines (outside its functions)."""
    body = re.sub(r"^\w+\(\) \{\n.*?^\}$", "", script, flags=re.M | re.S)
    return _logical_lines(re.sub(r"^\w+\(\) \{ .*; \}$", "", body, flags=re.M))


def _asterisk_flags(line: str) -> list[str]:
    """The arguments after the last /usr/sbin/asterisk of a command line."""
    words = shlex.split(line)
    return words[len(words) - words[::-1].index("/usr/sbin/asterisk"):]


def _bash_array(name: str) -> list[str]:
    m = re.search(rf"^{name}=\(([^)]*)\)", SANDBOX_SH, re.M)
    assert m is not None, name
    return m.group(1).split()


def _dockerfile_arg(name: str) -> list[str]:
    m = re.search(rf'^ARG {name}="([^"]+)"', ASTERISK_DOCKERFILE, re.M)
    assert m is not None, name
    return m.group(1).split()


SANDBOX_FUNCTIONS = _functions(SANDBOX_SH)
ENTRYPOINT_FUNCTIONS = _functions(ENTRYPOINT)


def _commands(line: str) -> list[str]:
    """The first words of the commands in a shell line (also inside $(...) and after ;, &&, |)."""
    return re.findall(r"(?:^|\$\(|[;&|{]\s)\s*([A-Za-z_]\w*)", line)


def _undefined_variables(body: list[str], defined: set[str]) -> set[str]:
    """The variables a function body reads that it neither declares nor finds in `defined`."""
    text = "\n".join(body)
    own = set(re.findall(r"^(\w+)=", text, re.M)) | set(re.findall(r"\bfor (\w+) in", text))
    for declaration in re.findall(r"^local (.*)$", text, re.M):
        own |= {word.split("=")[0] for word in declaration.split()}
    return set(re.findall(r"\$\{?([A-Za-z_]\w*)", text)) - own - defined


class TestAsteriskImage:
    def test_same_packages_from_the_same_suite(self) -> None:
        """The image installs debootstrap's packages and the root's, from Debian sid."""
        m = re.search(r"--include=(\S+)", SANDBOX_SH)
        assert m is not None
        assert sorted(_dockerfile_arg("ASTERISK_PACKAGES")) == sorted(m.group(1).split(","))
        assert _dockerfile_arg("ROOT_PACKAGES") == _bash_array("ROOT_PACKAGES")
        assert re.search(r"--include=\S+ \\\n\s+sid ", SANDBOX_SH)
        assert "ARG ASTERISK_BASE=debian:sid-slim" in ASTERISK_DOCKERFILE
        assert "FROM ${ASTERISK_BASE}" in ASTERISK_DOCKERFILE
        assert any("--no-install-recommends $ASTERISK_PACKAGES $ROOT_PACKAGES &&" in line
                   for line in _logical_lines(ASTERISK_DOCKERFILE))

    def test_same_files_where_the_steps_read_them(self) -> None:
        """Every repository path the steps read ($here/..., $repo/...) is copied there."""
        roots = {var: re.search(rf"^{var}=(\S+)", ENTRYPOINT, re.M) for var in ("here", "repo")}
        steps = "\n".join(line for fn in MIRRORED for line in ENTRYPOINT_FUNCTIONS[fn])
        refs = set(re.findall(r'"\$(here|repo)"?/(\w+)', steps))
        assert {name for _, name in refs} >= {"asterisk", "dialplan", "agi_scripts", "ivr"}
        for var, name in refs:
            root = roots[var]
            assert root is not None, var
            source = ("docker/sandbox/" if var == "here" else "") + name
            if name == "build":  # made in the payload stage (test_prompts_made_at_build_time)
                name = "build/prompts"
                source = "--from=payload /opt/callmfa/build/prompts"
            assert f"COPY {source}/ {root.group(1)}/{name}/" in ASTERISK_DOCKERFILE, name

    def test_same_configuration_steps(self) -> None:
        """The entrypoint runs the sandbox's per-instance functions, line for line."""
        for (fn, line), _ in SANDBOX_ONLY.items():
            assert line in SANDBOX_FUNCTIONS[fn], f"SANDBOX_ONLY is stale: {fn}: {line}"
        for fn in MIRRORED:
            sandbox = [SANDBOX_ONLY.get((fn, line), line) for line in SANDBOX_FUNCTIONS[fn]]
            expected = [line for line in sandbox if line is not None]
            assert ENTRYPOINT_FUNCTIONS[fn] == expected, fn
            for line in expected:  # a step the sandbox adds in a new function needs it here
                for command in _commands(line):
                    assert command not in SANDBOX_FUNCTIONS or command in MIRRORED, (fn, line)

    def test_callmfa_env_holds_only_what_the_classic_script_reads(self) -> None:
        """Both scripts write the classic script's callmfa.env from the same allow-list:
        ivr.classic.SETTINGS_READ (they let through every secret but a few, found in
        review)."""
        expected = "|".join(sorted(n.upper() for n in SETTINGS_READ))
        for script in (SANDBOX_SH, ENTRYPOINT):
            assert f"CLASSIC_SETTINGS='{expected}'" in _main(script)
        line = SANDBOX_FUNCTIONS["install_classic_agi"]
        env = "\n".join(["export CALLMFA_REDIS_URL=redis://r/0", "export CALLMFA_SMTP_PASSWORD=pw",
                         "export CALLMFA_WEBHOOK_SECRET=whsec_x", "export CALLMFA_PIN_PEPPER=p",
                         "export CALLMFA_REDIS_URL_X=1"])
        kept = subprocess.run(
            ["bash", "-c", f"CLASSIC_SETTINGS='{expected}'; "
             f"grep -E \"^export CALLMFA_($CLASSIC_SETTINGS)=\""],
            input=env, capture_output=True, text=True, check=True).stdout.split()
        assert [k for k in kept if k.startswith("CALLMFA_")] == [
            "CALLMFA_REDIS_URL=redis://r/0", "CALLMFA_PIN_PEPPER=p"]
        assert any("CLASSIC_SETTINGS" in step for step in line)

    def test_every_variable_the_steps_read_is_set(self) -> None:
        """Under `set -u` no step reads a variable the entrypoint does not set (not $SB, $VENV)."""
        defined = set(re.findall(r"^(\w+)=", "\n".join(_main(ENTRYPOINT)), re.M))
        assert {"ROOT", "here", "repo", "NS", "PHONE"} <= defined
        for fn in MIRRORED:
            missing = _undefined_variables(ENTRYPOINT_FUNCTIONS[fn], defined)
            assert missing <= {"CALLMFA_AMI_SECRET_FILE"}, (fn, missing)  # checked at start
        assert "set -euo pipefail" in _main(ENTRYPOINT)
        assert "ROOT=/" in _main(ENTRYPOINT)
        for setting in ("NS=${CALLMFA_NETNS:-callmfa}", "PHONE=${CALLMFA_PHONE:-127.0.0.1:5070}"):
            assert setting in _main(SANDBOX_SH), setting
            assert setting in _main(ENTRYPOINT), setting

    def test_the_entrypoint_is_valid_bash(self) -> None:
        """bash parses the entrypoint (no Docker engine runs it here)."""
        subprocess.run(["bash", "-n", str(DOCKER / "asterisk" / "entrypoint.sh")], check=True,
                       timeout=10)

    def test_instance_one_configured_then_started_with_the_same_flags(self) -> None:
        """As `sandbox.sh up` does for each instance: configure it, then start Asterisk with
        the same flags (foreground, its asterisk.conf, user and group asterisk)."""
        up = SANDBOX_FUNCTIONS["cmd_up"]
        start = next(line for line in up if line.startswith('start "$name"'))
        steps = ['key=$(inst_key "$n")', 'install_asterisk_config "$n"', start]
        assert [line for line in up if line in steps] == steps
        tail = _main(ENTRYPOINT)[-4:]
        assert tail[:3] == ["n=1", *steps[:2]]
        assert tail[3].startswith("exec /usr/sbin/asterisk ")
        assert _asterisk_flags(tail[3]) == _asterisk_flags(start)

    def test_same_readiness_check(self) -> None:
        """The image's and compose's health checks are the sandbox's wait for Asterisk."""
        wait = next(line for line in SANDBOX_FUNCTIONS["cmd_up"]
                    if line.startswith('wait_for "Asterisk $n"'))
        flags = _asterisk_flags(wait)
        m = re.search(r"^HEALTHCHECK .* CMD (.*)$", "\n".join(_logical_lines(ASTERISK_DOCKERFILE)),
                      re.M)
        assert m is not None
        image = [flag.replace("$CALLMFA_NETNS", "$key") for flag in _asterisk_flags(m.group(1))]
        assert image == flags
        compose = re.search(r'test: \["CMD", "/usr/sbin/asterisk", (.*)\]', COMPOSE)
        assert compose is not None
        assert "CALLMFA_NETNS: callmfa" in COMPOSE
        assert [f.strip().strip('"') for f in compose.group(1).split(",")] == [
            flag.replace("$key", "callmfa") for flag in flags]

    def test_classic_agi_payload_from_the_lock(self) -> None:
        """pyst2's `asterisk` package comes at the locked version (its six from the root's
        python3-six), where the entrypoint's install_classic_agi takes it."""
        site = SANDBOX_ONLY[("install_classic_agi", next(
            line for line in SANDBOX_FUNCTIONS["install_classic_agi"] if line.startswith("site=")))]
        assert site is not None
        target = site.removeprefix("site=")
        install = next(line for line in _logical_lines(ASTERISK_DOCKERFILE) if "pyst2" in line)
        assert f"--no-deps --target {target} -c docker/requirements.lock pyst2" in install
        assert f"COPY --from=payload {target}/asterisk/ {target}/asterisk/" in ASTERISK_DOCKERFILE
        assert "python3-six" in _bash_array("ROOT_PACKAGES")

    def test_prompts_made_at_build_time(self) -> None:
        """The prompts the sandbox makes at `up` are made in the image's payload stage, with
        the sandbox's tools (espeak-ng, sox) and Python, into the entrypoint's $repo/build."""
        promptgen = SANDBOX_FUNCTIONS["install_prompts"][0]
        assert SANDBOX_ONLY[("install_prompts", promptgen)] is None
        assert {"espeak-ng", "sox"} <= set(_bash_array("APT_PACKAGES"))
        payload = ASTERISK_DOCKERFILE.split("AS payload\n")[1].split("\nFROM ")[0]
        assert "--no-install-recommends espeak-ng sox" in payload
        assert "python3 -m ivr.ops.promptgen /opt/callmfa/build/prompts" in payload
        assert re.search(r"^repo=/opt/callmfa ", ENTRYPOINT, re.M)
        assert f"ARG PYTHON={sys.version_info[0]}.{sys.version_info[1]}" in ASTERISK_DOCKERFILE
        assert "ARG PYTHON_BASE=python:${PYTHON}-slim-bookworm" in ASTERISK_DOCKERFILE
        assert "FROM ${PYTHON_BASE} AS payload" in ASTERISK_DOCKERFILE

    def test_compose_gives_the_classic_agi_script_its_redis(self) -> None:
        """The Asterisk container's CALLMFA_* settings (its callmfa.env) name the sandbox's
        Redis, as the sandbox's env file does."""
        exports = dict(re.findall(r"export (CALLMFA_\w+)=(.*)", SANDBOX_SH))
        service = COMPOSE.split("  asterisk:\n", 1)[1].split("\n  redis:\n")[0]
        compose = dict(re.findall(r"\n\s+(CALLMFA_\w+): (.*)", service))
        assert compose["CALLMFA_REDIS_URL"] == exports["CALLMFA_REDIS_URL"]


class TestServiceImage:
    def test_lock_pins_every_dependency(self) -> None:
        """requirements.lock pins each [project] dependency, within its range."""
        pins = dict(line.split("==") for line in LOCK.splitlines()
                    if line and not line.startswith("#"))
        pins = {canonicalize_name(k): v for k, v in pins.items()}
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        for spec in project["dependencies"]:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name in pins, f"{name} is not in docker/requirements.lock: run `make lock`"
            assert req.specifier.contains(pins[name]), (name, pins[name], str(req.specifier))

    def test_the_sandbox_runs_the_locked_versions(self) -> None:
        """The venv the tests run in has exactly the image's versions (make venv uses -c)."""
        for line in LOCK.splitlines():
            if line and not line.startswith("#"):
                name, pinned = line.split("==")
                assert version(name) == pinned, f"{name}: run `make venv` again"
        makefile = (REPO / "Makefile").read_text()
        assert "-c docker/requirements.lock" in makefile
        assert "-c docker/requirements.lock /wheels/callmfa-*.whl" in SERVICE_DOCKERFILE

    def test_build_stage_copies_what_pyproject_reads(self) -> None:
        """The wheel is built from the files pyproject names (readme, package directories,
        among them agi_scripts/, which the Dockerfile once left out): each is copied."""
        build = SERVICE_DOCKERFILE.split(" AS build\n")[1].split("\nFROM ")[0]
        copied = {path.rstrip("/") for line in build.splitlines() if line.startswith("COPY ")
                  for path in line.split()[1:-1]}
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
        needed = {"pyproject.toml", pyproject["project"]["readme"]}
        dirs = pyproject["tool"]["setuptools"]["package-dir"].values()
        needed |= {d.split("/")[0] for d in dirs}
        needed |= {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
        assert "agi_scripts" in needed
        assert needed <= copied, needed - copied

    def test_bases_are_build_arguments(self) -> None:
        """Every stage of both Dockerfiles starts from a base given as a build argument
        (docker/images.sh passes local ones; the defaults are the official images)."""
        for dockerfile in (SERVICE_DOCKERFILE, ASTERISK_DOCKERFILE):
            froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
            assert froms
            assert all(re.fullmatch(r"\$\{\w+\}", f) for f in froms), froms
        images = (DOCKER / "images.sh").read_text()
        assert '--build-arg BASE="$PYTHON_BASE" -f docker/Dockerfile' in images
        assert ('--build-arg PYTHON_BASE="$PYTHON_BASE" --build-arg ASTERISK_BASE="$ASTERISK_BASE"'
                in images)
        assert "bash docker/images.sh" in (REPO / "Makefile").read_text()

    def test_same_python_and_an_unprivileged_user(self) -> None:
        """The image's Python is the tests' Python; it runs as a non-root user."""
        assert f"ARG PYTHON={sys.version_info[0]}.{sys.version_info[1]}" in SERVICE_DOCKERFILE
        assert "ARG BASE=python:${PYTHON}-slim-bookworm" in SERVICE_DOCKERFILE
        assert SERVICE_DOCKERFILE.count("FROM ${BASE}") == 2  # multi-stage
        assert "USER 10001:10001" in SERVICE_DOCKERFILE

    def test_every_listener_binds_loopback_unless_told_otherwise(self) -> None:
        """No image or compose service listens beyond 127.0.0.1 by default: no 0.0.0.0 and
        no published port outside comments, and every *_HOST set names 127.0.0.1."""
        texts = {"docker/Dockerfile": SERVICE_DOCKERFILE, "docker/compose.yaml": COMPOSE,
                 "docker/asterisk/Dockerfile": ASTERISK_DOCKERFILE,
                 "docker/asterisk/entrypoint.sh": (DOCKER / "asterisk" / "entrypoint.sh")
                 .read_text()}
        for name, text in texts.items():
            code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
            assert str(ipaddress.IPv4Address(0)) not in code, name  # 0.0.0.0
            assert "ports:" not in code, name
            for host in re.findall(r"CALLMFA_\w+_HOST[=:] *([^\s\\]+)", code):
                assert host == "127.0.0.1", (name, host)
        assert "CALLMFA_METRICS_HOST: 127.0.0.1" in COMPOSE

    def test_compose_gives_callmfa_the_sandbox_settings(self) -> None:
        """callmfa in compose talks to Asterisk and Redis as the sandbox's serve does."""
        exports = dict(re.findall(r"export (CALLMFA_\w+)=(.*)", SANDBOX_SH))
        service = COMPOSE.split("  callmfa:\n", 1)[1]
        compose = dict(re.findall(r"\n\s+(CALLMFA_\w+): (.*)", service))
        for name in ("CALLMFA_REDIS_URL", "CALLMFA_AMI_HOST", "CALLMFA_AMI_PORT",
                     "CALLMFA_AMI_USER", "CALLMFA_AGI_HOST", "CALLMFA_AGI_PORT",
                     "CALLMFA_DIAL_TEMPLATE"):
            assert compose[name] == exports[name].strip("'"), name
        assert COMPOSE.count("network_mode: service:asterisk") == 2

    def test_compose_runs_signed(self) -> None:
        """callmfa serve does not start without a signing key: compose hands it one, as a
        secret file, to callmfa and to the Asterisk image (the classic script signs too)."""
        for name in ("asterisk", "callmfa"):
            service = COMPOSE.split(f"\n  {name}:\n", 1)[1].split("\n\n")[0]
            assert "CALLMFA_SIGNING_KEY_FILE: /run/secrets/signing_key" in service, name
            assert re.search(r"secrets: \[.*signing_key.*\]", service), name
        assert "signing_key:\n    file: ./signing-key" in COMPOSE
        assert "docker/signing-key" in (REPO / ".gitignore").read_text()


def _service(compose: str, name: str) -> str:
    return compose.split(f"\n  {name}:\n", 1)[1].split("\n\n")[0]


def _environment(compose: str, name: str) -> dict[str, str]:
    return dict(re.findall(r"^      (CALLMFA_\w+): (.*)$", _service(compose, name), re.M))


def _default(value: str) -> str:
    """What compose makes of ``${X:-default}`` when X is unset (a plain value as it is)."""
    m = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return value if m is None else m.group(1)


class TestProductionCompose:
    def test_callmfa_and_redis_only(self) -> None:
        """Next to an existing PBX: no Asterisk of its own; the PBX gets the dialplan from
        `callmfa install-dialplan` (docs/quickstart.md)."""
        services = re.findall(r"^  (\w+):$", PRODUCTION.split("\nservices:\n")[1].split("\n\n"
                              "secrets:")[0], re.M)
        assert services == ["redis", "callmfa"]
        assert "callmfa install-dialplan" in PRODUCTION
        assert "install-dialplan" in (REPO / "docs" / "quickstart.md").read_text()

    def test_every_variable_is_a_setting(self) -> None:
        """A misspelt variable would be ignored by callmfa: each one names a setting, a
        secret's _FILE or the config file."""
        names = {f"CALLMFA_{f.upper()}" for f in Settings.__dataclass_fields__}
        names |= {f"CALLMFA_{s.upper()}_FILE" for s in SECRETS} | {"CALLMFA_CONFIG_FILE"}
        for compose in (PRODUCTION, COMPOSE):
            assert set(_environment(compose, "callmfa")) <= names

    def test_the_sandbox_settings_by_default(self) -> None:
        """Unless told otherwise, callmfa talks to the PBX on this host as the sandbox's serve
        does; the trunk must be given."""
        exports = dict(re.findall(r"export (CALLMFA_\w+)=(.*)", SANDBOX_SH))
        env = _environment(PRODUCTION, "callmfa")
        for name in ("CALLMFA_AMI_HOST", "CALLMFA_AMI_PORT", "CALLMFA_AMI_USER",
                     "CALLMFA_AGI_HOST", "CALLMFA_AGI_PORT"):
            assert _default(env[name]) == exports[name], name
        assert _default(env["CALLMFA_AGI_URL"]) == Settings().agi_url
        assert env["CALLMFA_DIAL_TEMPLATE"].startswith("${CALLMFA_DIAL_TEMPLATE:?")
        assert PRODUCTION.count("network_mode: host") == 2
        assert '"--bind", "127.0.0.1"' in _service(PRODUCTION, "redis")
        assert _default(env["CALLMFA_METRICS_HOST"]) == "127.0.0.1"

    def test_secrets_are_files(self) -> None:
        """The AMI secret, the signing key, the PIN pepper and the Redis URL (its password)
        reach callmfa as secret files, never as environment values; .gitignore keeps them
        out of git."""
        env = _environment(PRODUCTION, "callmfa")
        assert env["CALLMFA_SIGNING_KEY_FILE"] == "/run/secrets/signing_key"
        assert env["CALLMFA_PIN_PEPPER_FILE"] == "/run/secrets/pin_pepper"
        assert env["CALLMFA_AMI_SECRET_FILE"] == "/run/secrets/ami_secret"
        assert env["CALLMFA_CONFIG_FILE"] == "/run/secrets/callmfa_env"
        # The environment wins over the config file: the URL must not be set there too.
        assert "CALLMFA_REDIS_URL" not in env
        assert "CALLMFA_SIGNING_KEY" not in env
        assert "CALLMFA_AMI_SECRET" not in env
        assert "secrets: [ami_secret, signing_key, pin_pepper, callmfa_env]" in _service(
            PRODUCTION, "callmfa")
        ignored = (REPO / ".gitignore").read_text().split()
        for name, path in re.findall(r"^  (\w+):\n    file: \./(\S+)$", PRODUCTION, re.M):
            assert f"docker/{path}" in ignored, name
            assert f"docker/{path}" in (REPO / ".dockerignore").read_text().split(), name

    def test_redis_runs_the_generated_acl(self) -> None:
        """Redis loads docker/redis/callmfa.acl (made from ivr/storage/acl.py) with its
        passwords set, and no default user; quickstart sets every CHANGE-ME-* password."""
        redis = _service(PRODUCTION, "redis")
        assert '"--aclfile", "/run/secrets/redis_acl"' in redis
        assert "secrets: [redis_acl]" in redis
        acl = (DOCKER / "redis" / "callmfa.acl").read_text()
        assert acl.startswith("user default off\n")
        quickstart = (REPO / "docs" / "quickstart.md").read_text()
        assert "docker/redis/callmfa.acl > docker/redis-users.acl" in quickstart
        for placeholder in set(re.findall(r">(CHANGE-ME-\w+)", acl)):
            assert f"s/{placeholder}/" in quickstart, placeholder
        assert re.search(r"CALLMFA_REDIS_URL=redis://callmfa-service:\S+@127\.0\.0\.1:6379/0",
                         quickstart)
