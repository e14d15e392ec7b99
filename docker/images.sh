#!/usr/bin/env bash
# make images: both images with podman, from local bases, so no registry but Debian's and
# PyPI is needed (on CI machines the official base images cannot be pulled).
#   localhost/callmfa:latest           docker/Dockerfile, on a debootstrap Debian 12 root
#                                      with python3 and python3-venv (Python 3.11)
#   localhost/callmfa-asterisk:latest  docker/asterisk/Dockerfile, on the sandbox's Debian
#                                      sid root with Asterisk (sandbox.sh deps builds it)
# The bases are made once and reused; podman's layer cache makes a second run fast.
# Settings (environment):
#   CALLMFA_PYTHON_BASE    the service image's base   (default: localhost/callmfa-python-base:bookworm)
#   CALLMFA_ASTERISK_BASE  the Asterisk image's base  (default: localhost/callmfa-asterisk-base:sid)
#   CALLMFA_IMAGE_TAG      the images' tag            (default: latest)
# Setting a base to an official image (docker.io/library/python:3.11-slim-bookworm,
# docker.io/library/debian:sid-slim) builds on it instead of a local one.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
STATE=/var/tmp/callmfa
PY_ROOT=$STATE/python-base-root
AST_ROOT=${CALLMFA_ASTERISK_ROOT:-$STATE/asterisk-root}
BOOKWORM_MIRROR=${CALLMFA_BOOKWORM_MIRROR:-http://deb.debian.org/debian}
PYTHON_BASE=${CALLMFA_PYTHON_BASE:-localhost/callmfa-python-base:bookworm}
ASTERISK_BASE=${CALLMFA_ASTERISK_BASE:-localhost/callmfa-asterisk-base:sid}
TAG=${CALLMFA_IMAGE_TAG:-latest}
BUILD=(podman build --isolation=chroot --network=host --format=docker --quiet)

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "building the images needs root (debootstrap, podman)"

deps() {
  if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing podman and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman debootstrap >/dev/null
  fi
}

# A Debian 12 root with python3 and python3-venv, as localhost/callmfa-python-base:bookworm.
python_base() {
  podman image exists "$PYTHON_BASE" && return 0
  [[ $PYTHON_BASE == localhost/callmfa-python-base:* ]] || return 0  # pulled by podman build
  mkdir -p "$STATE"
  (
    flock 9
    if [[ ! -x $PY_ROOT/usr/bin/python3 ]]; then
      log "building a Debian 12 root with python3 in $PY_ROOT (about a minute)"
      rm -rf "$PY_ROOT.tmp"
      debootstrap --variant=minbase --include=python3,python3-venv bookworm "$PY_ROOT.tmp" \
        "$BOOKWORM_MIRROR" >"$STATE/debootstrap-bookworm.log" 2>&1 ||
        die "debootstrap failed, see $STATE/debootstrap-bookworm.log"
      rm -rf "$PY_ROOT.tmp"/var/cache/apt/archives/*.deb "$PY_ROOT.tmp"/var/lib/apt/lists/*
      mv "$PY_ROOT.tmp" "$PY_ROOT"
    fi
    # pip in the build reaches PyPI as this host does: with the CAs this host trusts.
    mkdir -p "$PY_ROOT/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$PY_ROOT/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$PY_ROOT/etc/pip.conf"
    log "importing $PY_ROOT as $PYTHON_BASE"
    tar -C "$PY_ROOT" -c . | podman import -q - "$PYTHON_BASE" >/dev/null
  ) 9>"$PY_ROOT.lock"
}

# The sandbox's Asterisk root, as localhost/callmfa-asterisk-base:sid, without what the
# sandboxes wrote into it (their configuration, AMI secrets and signing keys, logs, state).
asterisk_base() {
  podman image exists "$ASTERISK_BASE" && return 0
  [[ $ASTERISK_BASE == localhost/callmfa-asterisk-base:* ]] || return 0
  bash "$here/sandbox/sandbox.sh" deps
  log "importing $AST_ROOT as $ASTERISK_BASE"
  tar -C "$AST_ROOT" -c --exclude='./etc/asterisk-*' --exclude='./var/lib/asterisk-*' \
    --exclude='./var/log/asterisk-*' --exclude='./var/spool/asterisk-*' \
    --exclude='./run/asterisk-*' --exclude='./usr/share/asterisk/sounds/*/callmfa' \
    --exclude='./var/cache/apt/archives/*.deb' . | podman import -q - "$ASTERISK_BASE" >/dev/null
}

deps
python_base
asterisk_base
cd "$repo"
log "building localhost/callmfa:$TAG on $PYTHON_BASE"
"${BUILD[@]}" --build-arg BASE="$PYTHON_BASE" -f docker/Dockerfile -t "localhost/callmfa:$TAG" . >/dev/null
log "building localhost/callmfa-asterisk:$TAG on $ASTERISK_BASE"
"${BUILD[@]}" --build-arg PYTHON_BASE="$PYTHON_BASE" --build-arg ASTERISK_BASE="$ASTERISK_BASE" \
  -f docker/asterisk/Dockerfile -t "localhost/callmfa-asterisk:$TAG" . >/dev/null
log "built localhost/callmfa:$TAG and localhost/callmfa-asterisk:$TAG"
