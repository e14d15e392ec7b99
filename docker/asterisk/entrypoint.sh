#!/usr/bin/env bash
# The Asterisk image's start-up: the very steps of install_asterisk_config in
# docker/sandbox/sandbox.sh, with the root at / (tests/unit/test_docker.py compares them).
set -euo pipefail
ROOT=/
NS=${CALLMFA_NETNS:-callmfa}
PHONE=${CALLMFA_PHONE:-127.0.0.1:5070}
AST_CONF=/etc/asterisk-$NS/asterisk.conf
[[ -r $CALLMFA_AMI_SECRET_FILE ]] || { echo "no AMI secret at $CALLMFA_AMI_SECRET_FILE" >&2; exit 1; }

# --- install_asterisk_config
  etc=$ROOT/etc/asterisk-$NS
  rm -rf "$etc"
  mkdir -p "$etc"
  cp /opt/callmfa/asterisk/*.conf /opt/callmfa/dialplan/*.conf "$etc/"
  cp "$ROOT/etc/asterisk/indications.conf" "$ROOT/etc/asterisk/amd.conf" "$ROOT/etc/asterisk/acl.conf" "$etc/"
  sed -i "s/@NS@/$NS/g" "$etc/asterisk.conf"
  sed -i "s/@PHONE@/$PHONE/g" "$etc/pjsip.conf"
  secret=$(cat "$CALLMFA_AMI_SECRET_FILE")
  sed -i "s/^secret = .*/secret = $secret/" "$etc/manager_callmfa.conf"
  chmod 640 "$etc/manager_callmfa.conf"
  for d in "/run/asterisk-$NS" "/var/log/asterisk-$NS" "/var/lib/asterisk-$NS" "/var/spool/asterisk-$NS"; do
    mkdir -p "$ROOT$d"
  done
  : >"$ROOT/var/log/asterisk-$NS/messages.log"
  chroot "$ROOT" chown -R asterisk:asterisk "/etc/asterisk-$NS" "/run/asterisk-$NS" \
    "/var/log/asterisk-$NS" "/var/lib/asterisk-$NS" "/var/spool/asterisk-$NS"
# --- end

exec /usr/sbin/asterisk -f -n -C "$AST_CONF" -U asterisk -G asterisk
