"""The images are built the way the sandbox is, so the sandbox's tests vouch for them.

No Docker engine runs in CI: these tests read docker/sandbox/sandbox.sh and the Docker files
and fail when the packages, the configuration steps, Asterisk's flags, the dependency
versions or the service settings differ.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ..conftest import REPO

DOCKER = REPO / "docker"
SANDBOX_SH = (DOCKER / "sandbox" / "sandbox.sh").read_text()
ASTERISK_DOCKERFILE = (DOCKER / "asterisk" / "Dockerfile").read_text()
ENTRYPOINT = (DOCKER / "asterisk" / "entrypoint.sh").read_text()
SERVICE_DOCKERFILE = (DOCKER / "Dockerfile").read_text()
COMPOSE = (DOCKER / "compose.yaml").read_text()
LOCK = (DOCKER / "requirements.lock").read_text()

# The lines that must differ: where the files come from, and the sandbox's log link.
SANDBOX_ONLY = {
    'cp "$here"/asterisk/*.conf "$repo"/dialplan/*.conf "$etc/"':
        'cp /opt/callmfa/asterisk/*.conf /opt/callmfa/dialplan/*.conf "$etc/"',
    'secret=$(cat "$SB/ami-secret")': 'secret=$(cat "$CALLMFA_AMI_SECRET_FILE")',
    'local etc=$ROOT/etc/asterisk-$NS secret': "etc=$ROOT/etc/asterisk-$NS",
}


def _function_body(script: str, name: str) -> list[str]:
    body = script.split(f"{name}() {{\n", 1)[1].split("\n}\n", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip()]


def _asterisk_flags(text: str) -> list[str]:
    m = re.search(r'chroot "\$ROOT" /usr/sbin/asterisk ((?:[^\n\\]|\\\n)*)',
                  text.split("start asterisk")[-1])
    assert m is not None
    return m.group(1).replace("\\\n", " ").replace('"$AST_CONF"', "CONF").split()


class TestAsteriskImage:
    def test_same_packages_from_the_same_suite(self) -> None:
        """The image installs the packages debootstrap includes, from Debian sid."""
        m = re.search(r"--include=(\S+)", SANDBOX_SH)
        assert m is not None
        image = re.search(r'ARG ASTERISK_PACKAGES="([^"]+)"', ASTERISK_DOCKERFILE)
        assert image is not None
        assert set(image.group(1).split()) == set(m.group(1).split(","))
        assert re.search(r"--include=\S+ \\\n\s+sid ", SANDBOX_SH)
        assert "FROM debian:sid-slim" in ASTERISK_DOCKERFILE
        assert "--no-install-recommends $ASTERISK_PACKAGES" in ASTERISK_DOCKERFILE

    def test_same_configuration_files(self) -> None:
        """The image copies the sandbox's asterisk/*.conf and the product's dialplan/*.conf."""
        assert "COPY docker/sandbox/asterisk/ /opt/callmfa/asterisk/" in ASTERISK_DOCKERFILE
        assert "COPY dialplan/ /opt/callmfa/dialplan/" in ASTERISK_DOCKERFILE

    def test_same_configuration_steps(self) -> None:
        """The entrypoint runs install_asterisk_config's steps, line for line."""
        sandbox = [SANDBOX_ONLY.get(line, line)
                   for line in _function_body(SANDBOX_SH, "install_asterisk_config")
                   if not line.startswith("ln -sfn")]
        block = ENTRYPOINT.split("# --- install_asterisk_config\n")[1].split("# --- end")[0]
        image = [line.strip() for line in block.splitlines() if line.strip()]
        assert image == sandbox

    def test_same_asterisk_command_line(self) -> None:
        """Asterisk runs with the same flags (foreground, user and group asterisk)."""
        entry = ENTRYPOINT.split("exec /usr/sbin/asterisk ")[1].split("\n")[0]
        assert entry.replace('"$AST_CONF"', "CONF").split() == _asterisk_flags(SANDBOX_SH)
        assert "AST_CONF=/etc/asterisk-$NS/asterisk.conf" in SANDBOX_SH
        assert "AST_CONF=/etc/asterisk-$NS/asterisk.conf" in ENTRYPOINT


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

    def test_same_python_and_an_unprivileged_user(self) -> None:
        """The image's Python is the tests' Python; it runs as a non-root user."""
        assert f"ARG PYTHON={sys.version_info[0]}.{sys.version_info[1]}" in SERVICE_DOCKERFILE
        assert SERVICE_DOCKERFILE.count("FROM python:${PYTHON}-slim") == 2  # multi-stage
        assert "USER 10001:10001" in SERVICE_DOCKERFILE

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
