#!/usr/bin/env bash
# The Asterisk image's start-up: the sandbox's first Asterisk (docker/sandbox/sandbox.sh,
# instance 1), with the root at / and the repository's files under /opt/callmfa. The
# functions below are sandbox.sh's, step for step: tests/unit/test_docker.py compares them
# and names every line that differs (SANDBOX_ONLY). Edit both files together.
set -euo pipefail
ROOT=/
here=/opt/callmfa  # the sandbox's directory: asterisk/*.conf
repo=/opt/callmfa  # the repository: dialplan/, agi_scripts/, ivr/ and the prompts in build/
NS=${CALLMFA_NETNS:-callmfa}
PHONE=${CALLMFA_PHONE:-127.0.0.1:5070}
# The settings the classic AGI script reads (ivr.classic.SETTINGS_READ): its callmfa.env
# holds these and no other (Asterisk's group reads the file), and says it is AGI only.
CLASSIC_SETTINGS='CONNECT_TIMEOUT_S|EVENTS_MAXLEN|FRAUD_BLOCK_S|INPUT_TIMEOUT_S|MAX_ATTEMPTS|PIN_LOCKOUT_AFTER|PIN_LOCKOUT_S|PIN_PEPPER|PROMPT_OVERRIDE_DIR|REDIS_FAILOVER_S|REDIS_SENTINELS|REDIS_SENTINEL_PASSWORD|REDIS_SENTINEL_SERVICE|REDIS_SENTINEL_TLS|REDIS_SENTINEL_USER|REDIS_URL|REDIS_WAIT_REPLICAS|REDIS_WAIT_TIMEOUT_MS|RESULT_TTL_S|SIGNING_KEY|WEBHOOK_URL'
# Secrets given as files (Docker secrets, readable by root only): their values go to the
# classic script's callmfa.env, which Asterisk's user can read.
PEPPER_FILE=${CALLMFA_PIN_PEPPER_FILE:-}
SIGNING_FILE=${CALLMFA_SIGNING_KEY_FILE:-}
for f in "$PEPPER_FILE" "$SIGNING_FILE"; do
  [[ -z $f || -r $f ]] || { echo "callmfa-asterisk: cannot read the secret file $f" >&2; exit 1; }
done
[[ -r ${CALLMFA_AMI_SECRET_FILE:-} ]] || {
  echo "callmfa-asterisk: no readable AMI secret at CALLMFA_AMI_SECRET_FILE=${CALLMFA_AMI_SECRET_FILE:-}" >&2
  exit 1
}

inst_key() { if (($1 == 1)); then echo "$NS"; else echo "$NS-$1"; fi; }

install_asterisk_config() {
  local n=$1 key etc secret line
  key=$(inst_key "$n")
  etc=$ROOT/etc/asterisk-$key
  rm -rf "$etc"
  mkdir -p "$etc"
  cp "$here"/asterisk/*.conf "$repo"/dialplan/*.conf "$etc/"
  cp "$ROOT/etc/asterisk/indications.conf" "$ROOT/etc/asterisk/amd.conf" "$ROOT/etc/asterisk/acl.conf" "$etc/"
  sed -i "s/@NS@/$key/g" "$etc/asterisk.conf"
  sed -i "s/^port = 5038/port = $((5037 + n))/" "$etc/manager.conf"
  sed -i "s/^bind = 127.0.0.1:5060/bind = 127.0.0.1:$((5059 + n))/" "$etc/pjsip.conf"
  sed -i "s/^rtpstart = .*/rtpstart = $((15000 + 5000 * n))/; s/^rtpend = .*/rtpend = $((19999 + 5000 * n))/" "$etc/rtp.conf"
  sed -i "s/@PHONE@/$PHONE/g" "$etc/pjsip.conf"
  secret=$(<"$CALLMFA_AMI_SECRET_FILE")
  (umask 077 && while IFS= read -r line; do [[ $line == "secret = "* ]] && line="secret = $secret"; printf '%s\n' "$line"; done <"$etc/manager_callmfa.conf" >"$etc/manager_callmfa.conf.new")
  mv "$etc/manager_callmfa.conf.new" "$etc/manager_callmfa.conf"
  chmod 640 "$etc/manager_callmfa.conf"
  for d in "/run/asterisk-$key" "/var/log/asterisk-$key" "/var/lib/asterisk-$key" "/var/spool/asterisk-$key"; do
    mkdir -p "$ROOT$d"
  done
  : >"$ROOT/var/log/asterisk-$key/messages.log"
  chroot "$ROOT" chown -R asterisk:asterisk "/etc/asterisk-$key" "/run/asterisk-$key" \
    "/var/log/asterisk-$key" "/var/lib/asterisk-$key" "/var/spool/asterisk-$key"
  install_classic_agi "$key"
  install_prompts
}

# A secret file's value as callmfa's settings read it (stripped): without the blanks, CRs
# and newlines around it. Bash builtins only: a secret is never a program's argument.
file_secret() {
  local secret
  secret=$(<"$1")
  secret=${secret#"${secret%%[![:space:]]*}"}
  printf '%s' "${secret%"${secret##*[![:space:]]}"}"
}

install_classic_agi() {
  local key=$1 agi site
  agi=$ROOT/var/lib/asterisk-$key/agi-bin
  site=/opt/callmfa/site
  rm -rf "$agi"
  mkdir -p "$agi/callmfa-lib"
  install -m 755 "$repo/agi_scripts/callmfa-verify.agi" "$agi/"
  cp -r "$repo/ivr" "$site/asterisk" "$agi/callmfa-lib/"
  find "$agi" -name __pycache__ -prune -exec rm -rf {} +
  chroot "$ROOT" python3 -m compileall -q "/var/lib/asterisk-$key/agi-bin/callmfa-lib" >/dev/null
  (umask 077 && { echo "export CALLMFA_ROLES=agi"; env | grep '^CALLMFA_' | sed 's/^\([^=]*\)=\(.*\)$/export \1="\2"/' \
      | grep -E "^export CALLMFA_($CLASSIC_SETTINGS)=" || true
    [[ -z $PEPPER_FILE ]] || printf 'export CALLMFA_PIN_PEPPER="%s"\n' "$(file_secret "$PEPPER_FILE")"
    [[ -z $SIGNING_FILE ]] || printf 'export CALLMFA_SIGNING_KEY="%s"\n' "$(file_secret "$SIGNING_FILE")"; } >"$ROOT/etc/asterisk-$key/callmfa.env")
  chroot "$ROOT" chown -R asterisk:asterisk "/var/lib/asterisk-$key/agi-bin"
  chroot "$ROOT" chown root:asterisk "/etc/asterisk-$key/callmfa.env"
  chmod 640 "$ROOT/etc/asterisk-$key/callmfa.env"
}

install_prompts() {
  local dir lang target f
  for dir in "$repo"/build/prompts/*/callmfa; do
    lang=$(basename "$(dirname "$dir")")
    target=$(chroot "$ROOT" sh -c "mkdir -p /usr/share/asterisk/sounds/$lang/callmfa && readlink -f /usr/share/asterisk/sounds/$lang/callmfa")
    for f in "$dir"/*.wav; do
      cmp -s "$f" "$ROOT$target/${f##*/}" && continue
      cp "$f" "$ROOT$target/.${f##*/}.$$" && mv -f "$ROOT$target/.${f##*/}.$$" "$ROOT$target/${f##*/}"
    done
  done
}

# One Asterisk per container: instance 1 (AMI 5038, SIP 5060); more PBXs, more containers.
n=1
key=$(inst_key "$n")
install_asterisk_config "$n"
exec /usr/sbin/asterisk -f -n -C "/etc/asterisk-$key/asterisk.conf" -U asterisk -G asterisk
