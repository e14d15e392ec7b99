#!/usr/bin/env bash
# The callmfa sandbox: a real Asterisk 22, a real redis-server and `callmfa serve`, all inside
# a private network namespace that holds only loopback. Needs root.
#
#   sandbox.sh deps      install the Debian packages and build the Asterisk root if missing
#   sandbox.sh up        start everything (safe to run twice) and write $SANDBOX_DIR/env
#   sandbox.sh down      stop exactly what `up` started, by pid, and remove the namespace
#   sandbox.sh status    print what runs
#   sandbox.sh exec CMD  run CMD inside the namespace with $SANDBOX_DIR/env loaded
#
# Settings (environment):
#   CALLMFA_NETNS           namespace name                  (default: callmfa)
#   CALLMFA_SANDBOX_DIR     state, env file and logs        (default: <repo>/.sandbox)
#   CALLMFA_ASTERISK_ROOT   the Debian sid root, reused     (default: /var/tmp/callmfa/asterisk-root)
#   CALLMFA_PHONE           where the simulated phone is    (default: 127.0.0.1:5070)
#   CALLMFA_SANDBOX_SERVE   0 to start no `callmfa serve`   (default: 1)
#   CALLMFA_ASTERISK_INSTANCES  2 adds a second Asterisk (AMI 5039, SIP 5061) (default: 1)
#   CALLMFA_ROLES           what the sandbox's serve runs   (default: originator,agi,api,radius)
#   CALLMFA_SANDBOX_REDIS   single: one redis-server; sentinel: a primary (6379), a replica
#                           (6380) and three redis-sentinel (26379-26381), with ACL users
#                           and passwords, callmfa finding the primary through them
#                           (default: single)
#   CALLMFA_SANDBOX_REDIS_SERVER  redis, or valkey: in sentinel mode, valkey-server and
#                           valkey-sentinel from the Debian sid root (installed there)
#                           (default: redis)
# Any other CALLMFA_* variable is passed to `callmfa serve`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
NS=${CALLMFA_NETNS:-callmfa}
SB=${CALLMFA_SANDBOX_DIR:-$repo/.sandbox}
ROOT=${CALLMFA_ASTERISK_ROOT:-/var/tmp/callmfa/asterisk-root}
PHONE=${CALLMFA_PHONE:-127.0.0.1:5070}
SERVE=${CALLMFA_SANDBOX_SERVE:-1}
# Not in $SB/env: a second serve started from it (tests/e2e) must not bind RADIUS again.
ROLES=${CALLMFA_ROLES:-originator,agi,api,radius}
VENV=${CALLMFA_VENV:-$repo/.venv}
SID_MIRROR=${CALLMFA_SID_MIRROR:-http://deb.debian.org/debian}
READY_SECS=${CALLMFA_SANDBOX_READY_SECS:-60}
INSTANCES=${CALLMFA_ASTERISK_INSTANCES:-1}
LDAP_PORT=3389
# Entra's EAM on the sandbox's API: Entra is the fake one tests/e2e/test_entra.py serves on
# this port (its discovery document, keys and redirect_uri); callmfa's key file is made by
# `callmfa keys rotate`.
ENTRA_PORT=4591
ENTRA_KEY_FILE=$SB/entra-keys.pem
LDAP_BIND_DN=cn=callmfa,ou=services,dc=callmfa,dc=test
REDIS_MODE=${CALLMFA_SANDBOX_REDIS:-single}
REDIS_SERVER=${CALLMFA_SANDBOX_REDIS_SERVER:-redis}
AST_CONF=/etc/asterisk-$NS/asterisk.conf
# The settings the classic AGI script reads (ivr.classic.SETTINGS_READ): its callmfa.env
# holds these and no other (Asterisk's group reads the file), and says it is AGI only.
CLASSIC_SETTINGS='CONNECT_TIMEOUT_S|EVENTS_MAXLEN|FRAUD_BLOCK_S|INPUT_TIMEOUT_S|MAX_ATTEMPTS|PIN_LOCKOUT_AFTER|PIN_LOCKOUT_S|PIN_PEPPER|PROMPT_OVERRIDE_DIR|REDIS_FAILOVER_S|REDIS_SENTINELS|REDIS_SENTINEL_PASSWORD|REDIS_SENTINEL_SERVICE|REDIS_SENTINEL_TLS|REDIS_SENTINEL_USER|REDIS_URL|REDIS_WAIT_REPLICAS|REDIS_WAIT_TIMEOUT_MS|RESULT_TTL_S|SIGNING_KEY|WEBHOOK_URL'
# Secrets serve reads from files, whose values go to the classic script's callmfa.env (the
# files may be unreadable to Asterisk's user, or outside its root). The signing key's value
# is in $SB/env already.
PEPPER_FILE=$SB/pin-pepper
SIGNING_FILE=
APT_PACKAGES=(redis-server redis-tools redis-sentinel sip-tester debootstrap iproute2 procps python3-venv make espeak-ng sox)
# curl and chromium: tests/e2e/test_api.py and test_demo.py drive the HTTP API and the
# demo page (headless Chromium).
APT_PACKAGES+=(curl chromium)
# The test LDAP server (slapd, run as a process of the sandbox), and what bonsai (the LDAP
# source's library, in the dev group) is built with.
APT_PACKAGES+=(slapd ldap-utils libldap2-dev libsasl2-dev gcc python3-dev)
# freeradius-utils (radclient), pamtester and libpam-radius-auth: the RADIUS front's NASes in
# tests/e2e/test_radius.py.
APT_PACKAGES+=(freeradius-utils pamtester libpam-radius-auth)
# Inside the Asterisk root, for the classic AGI script (agi_scripts/callmfa-verify.agi).
ROOT_PACKAGES=(python3 python3-redis python3-six)

log() { printf 'sandbox[%s]: %s\n' "$NS" "$*" >&2; }
die() { log "error: $*"; exit 1; }
in_ns() { ip netns exec "$NS" "$@"; }
ast() { chroot "$ROOT" /usr/sbin/asterisk -C "$AST_CONF" "$@"; }
# Instance 1 is "asterisk" (AMI 5038, SIP 5060); instance N is "asteriskN" on +N-1 ports.
inst_name() { if (($1 == 1)); then echo asterisk; else echo "asterisk$1"; fi; }
inst_key() { if (($1 == 1)); then echo "$NS"; else echo "$NS-$1"; fi; }

[[ $REDIS_SERVER == redis || $REDIS_SERVER == valkey ]] || { echo "CALLMFA_SANDBOX_REDIS_SERVER must be redis or valkey" >&2; exit 2; }
[[ $REDIS_MODE == single || $REDIS_MODE == sentinel ]] || { echo "CALLMFA_SANDBOX_REDIS must be single or sentinel" >&2; exit 2; }
[[ $(id -u) == 0 ]] || die "the sandbox needs root (network namespaces, chroot)"

# wait_for DESCRIPTION COMMAND...: poll COMMAND until it succeeds, up to READY_SECS.
wait_for() {
  local what=$1 deadline=$((SECONDS + READY_SECS))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what not ready after ${READY_SECS}s (logs: $SB/logs)"
    sleep 0.05
  done
}

# alive NAME: the process recorded in $SB/pids/NAME.pid runs and is still the one we started.
alive() {
  local pidfile=$SB/pids/$1.pid pid
  [[ -f $pidfile ]] || return 1
  read -r pid cmd <"$pidfile" || return 1
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$cmd"
}

# start NAME MATCH COMMAND...: start COMMAND in the background; MATCH identifies it in /proc.
start() {
  local name=$1 match=$2
  shift 2
  "$@" >>"$SB/logs/$name.log" 2>&1 </dev/null &
  echo "$! $match" >"$SB/pids/$name.pid"
}

stop() {
  local name=$1 pid cmd deadline
  alive "$name" || { rm -f "$SB/pids/$name.pid"; return 0; }
  read -r pid cmd <"$SB/pids/$name.pid"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop on SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$SB/pids/$name.pid"
}

cmd_deps() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    # The sandbox runs its own slapd: the package's system service must not start (a
    # policy-rc.d that refuses, only while installing, only if the host has none).
    local policy=
    if [[ " ${missing[*]} " == *" slapd "* && ! -e /usr/sbin/policy-rc.d ]]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -n $policy ]]; then
      rm -f "$policy"
      ! command -v systemctl >/dev/null || systemctl disable slapd >/dev/null 2>&1 || true
    fi
  fi
  if [[ ! -x $ROOT/usr/sbin/asterisk ]]; then
    mkdir -p "$(dirname "$ROOT")"
    (
      flock 9
      [[ -x $ROOT/usr/sbin/asterisk ]] && exit 0
      log "building the Debian sid root with Asterisk in $ROOT (about a minute)"
      rm -rf "$ROOT.tmp"
      debootstrap --variant=minbase --include=asterisk,asterisk-core-sounds-en-gsm \
        sid "$ROOT.tmp" "$SID_MIRROR" >"$(dirname "$ROOT")/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $(dirname "$ROOT")/debootstrap.log"
      mv "$ROOT.tmp" "$ROOT"
    ) 9>"$ROOT.lock"
  fi
  install_root_packages
  # No resolver inside the root: the sandbox has only loopback.
  : >"$ROOT/etc/resolv.conf"
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOT/etc/hosts"
}

# The classic AGI script runs inside the root: it needs python3 and redis-py there.
install_root_packages() {
  chroot "$ROOT" python3 -c "import redis, six" >/dev/null 2>&1 && return 0
  (
    flock 9
    chroot "$ROOT" python3 -c "import redis, six" >/dev/null 2>&1 && exit 0
    log "installing ${ROOT_PACKAGES[*]} into $ROOT"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    chroot "$ROOT" apt-get -o Acquire::Check-Valid-Until=false update -qq >>"$(dirname "$ROOT")/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -qq --no-install-recommends \
        "${ROOT_PACKAGES[@]}" >>"$(dirname "$ROOT")/apt.log" 2>&1 ||
      die "apt-get in $ROOT failed, see $(dirname "$ROOT")/apt.log"
    : >"$ROOT/etc/resolv.conf"
  ) 9>"$ROOT.lock"
}

install_asterisk_config() {
  local n=$1 key etc secret line
  key=$(inst_key "$n")
  etc=$ROOT/etc/asterisk-$key
  rm -rf "$etc"
  mkdir -p "$etc"
  cp "$here"/asterisk/*.conf "$repo"/dialplan/*.conf "$etc/"
  cp "$ROOT/etc/asterisk/indications.conf" "$ROOT/etc/asterisk/amd.conf" "$ROOT/etc/asterisk/acl.conf" "$etc/"
  sed -i "s/@NS@/$key/g" "$etc/asterisk.conf"
  # Each instance its own ports (AMI, SIP) and RTP range.
  sed -i "s/^port = 5038/port = $((5037 + n))/" "$etc/manager.conf"
  sed -i "s/^bind = 127.0.0.1:5060/bind = 127.0.0.1:$((5059 + n))/" "$etc/pjsip.conf"
  sed -i "s/^rtpstart = .*/rtpstart = $((15000 + 5000 * n))/; s/^rtpend = .*/rtpend = $((19999 + 5000 * n))/" "$etc/rtp.conf"
  sed -i "s/@PHONE@/$PHONE/g" "$etc/pjsip.conf"
  secret=$(<"$SB/ami-secret")
  (umask 077 && while IFS= read -r line; do [[ $line == "secret = "* ]] && line="secret = $secret"; printf '%s\n' "$line"; done <"$etc/manager_callmfa.conf" >"$etc/manager_callmfa.conf.new")
  mv "$etc/manager_callmfa.conf.new" "$etc/manager_callmfa.conf"
  chmod 640 "$etc/manager_callmfa.conf"
  for d in "/run/asterisk-$key" "/var/log/asterisk-$key" "/var/lib/asterisk-$key" "/var/spool/asterisk-$key"; do
    mkdir -p "$ROOT$d"
  done
  : >"$ROOT/var/log/asterisk-$key/messages.log"
  chroot "$ROOT" chown -R asterisk:asterisk "/etc/asterisk-$key" "/run/asterisk-$key" \
    "/var/log/asterisk-$key" "/var/lib/asterisk-$key" "/var/spool/asterisk-$key"
  ln -sfn "$ROOT/var/log/asterisk-$key/messages.log" "$SB/logs/$(inst_name "$n").log"
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

# The classic AGI script and what it imports (ivr, pyst2's asterisk package) in this
# instance's astagidir; redis-py comes from the root's python3-redis.
install_classic_agi() {
  local key=$1 agi site
  agi=$ROOT/var/lib/asterisk-$key/agi-bin
  site=$("$VENV/bin/python" -c 'import asterisk, os; print(os.path.dirname(os.path.dirname(asterisk.__file__)))')
  rm -rf "$agi"
  mkdir -p "$agi/callmfa-lib"
  install -m 755 "$repo/agi_scripts/callmfa-verify.agi" "$agi/"
  cp -r "$repo/ivr" "$site/asterisk" "$agi/callmfa-lib/"
  find "$agi" -name __pycache__ -prune -exec rm -rf {} +
  chroot "$ROOT" python3 -m compileall -q "/var/lib/asterisk-$key/agi-bin/callmfa-lib" >/dev/null
  # The script's settings: those it reads of this sandbox's, and the PIN pepper's value (the
  # file it names is outside the root). 0640 root:asterisk.
  (umask 077 && { echo "export CALLMFA_ROLES=agi"; { cat "$SB/env"; env | grep '^CALLMFA_' | sed 's/^\([^=]*\)=\(.*\)$/export \1="\2"/'; } \
      | grep -E "^export CALLMFA_($CLASSIC_SETTINGS)=" || true
    [[ -z $PEPPER_FILE ]] || printf 'export CALLMFA_PIN_PEPPER="%s"\n' "$(file_secret "$PEPPER_FILE")"
    [[ -z $SIGNING_FILE ]] || printf 'export CALLMFA_SIGNING_KEY="%s"\n' "$(file_secret "$SIGNING_FILE")"; } >"$ROOT/etc/asterisk-$key/callmfa.env")
  chroot "$ROOT" chown -R asterisk:asterisk "/var/lib/asterisk-$key/agi-bin"
  chroot "$ROOT" chown root:asterisk "/etc/asterisk-$key/callmfa.env"
  chmod 640 "$ROOT/etc/asterisk-$key/callmfa.env"
}

# callmfa's own prompts (make prompts) into the root's sounds directory.
install_prompts() {
  "$VENV/bin/python" -m ivr.ops.promptgen "$repo/build/prompts" >/dev/null
  local dir lang target f
  for dir in "$repo"/build/prompts/*/callmfa; do
    lang=$(basename "$(dirname "$dir")")
    # sounds/en is an absolute symlink inside the root: resolve it there.
    target=$(chroot "$ROOT" sh -c "mkdir -p /usr/share/asterisk/sounds/$lang/callmfa && readlink -f /usr/share/asterisk/sounds/$lang/callmfa")
    # Other sandboxes share this root and may be playing these files right now: a file
    # rewritten in place is read truncated ("format_wav.c: Read failed"). Replace each one
    # by a rename, and only when it changed.
    for f in "$dir"/*.wav; do
      cmp -s "$f" "$ROOT$target/${f##*/}" && continue
      cp "$f" "$ROOT$target/.${f##*/}.$$" && mv -f "$ROOT$target/.${f##*/}.$$" "$ROOT$target/${f##*/}"
    done
  done
}

# slapd with the small tree of ldap/tree.ldif on 127.0.0.1:$LDAP_PORT, from a config of the
# sandbox's own (slapd -f, never the system service): the database is loaded afresh with
# slapadd (offline, a few ms) each time slapd starts.
start_ldap() {
  local dir=$SB/ldap bind_hash user_hash
  alive ldap && return 0
  mkdir -p "$dir"
  for f in ldap-bind-password ldap-user-password; do
    [[ -s $SB/$f ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >"$SB/$f")
  done
  bind_hash=$(slappasswd -T "$SB/ldap-bind-password")
  user_hash=$(slappasswd -T "$SB/ldap-user-password")
  rm -rf "$dir/db" && mkdir -p "$dir/db"
  (umask 077 && sed "s|@SB@|$SB|g" "$here/ldap/slapd.conf" >"$dir/slapd.conf")
  (umask 077 && sed -e "s|@BIND_HASH@|$bind_hash|" -e "s|@ALICE_HASH@|$user_hash|" \
    -e "s|@BOB_HASH@|$user_hash|" "$here/ldap/tree.ldif" >"$dir/tree.ldif")
  slapadd -q -f "$dir/slapd.conf" -l "$dir/tree.ldif" >>"$SB/logs/ldap.log" 2>&1 ||
    die "slapadd failed (logs: $SB/logs/ldap.log)"
  # -d 0: in the foreground (start() keeps its pid), logging to stderr: the log file.
  start ldap "slapd -f $dir/slapd.conf" ip netns exec "$NS" slapd -f "$dir/slapd.conf" \
    -h "ldap://127.0.0.1:$LDAP_PORT/" -d 0
  wait_for "slapd" in_ns ldapwhoami -x -H "ldap://127.0.0.1:$LDAP_PORT/" \
    -D "$LDAP_BIND_DN" -y "$SB/ldap-bind-password"
}

# --- Sentinel mode: two data nodes and three Sentinels, all with ACL users ---
# $RD holds the nodes' and Sentinels' files as this script sees them, $RD_IN as the servers
# do: valkey runs inside the sid root (Debian 12 has no valkey), so its files are there.
if [[ $REDIS_SERVER == valkey ]]; then
  RD=$ROOT/var/lib/callmfa-$NS-valkey
  RD_IN=/var/lib/callmfa-$NS-valkey
  RUN_NODE=(chroot --userspec=valkey:valkey "$ROOT" valkey-server)
  RUN_SENTINEL=(chroot --userspec=valkey:valkey "$ROOT" valkey-sentinel)
else
  RD=$SB/redis
  RD_IN=$SB/redis
  RUN_NODE=(redis-server)
  RUN_SENTINEL=(redis-sentinel)
fi

# valkey-server and valkey-sentinel in the sid root, once (no service started there).
install_valkey() {
  chroot "$ROOT" sh -c 'command -v valkey-server && command -v valkey-sentinel' >/dev/null 2>&1 && return 0
  (
    flock 9
    chroot "$ROOT" sh -c 'command -v valkey-server && command -v valkey-sentinel' >/dev/null 2>&1 && exit 0
    log "installing valkey-server valkey-sentinel into $ROOT"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # No service may start inside the root; the packages' systemd-tmpfiles calls need /proc.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    trap 'umount "$ROOT/proc" 2>/dev/null; rm -f "$ROOT/usr/sbin/policy-rc.d"' EXIT
    chroot "$ROOT" apt-get -o Acquire::Check-Valid-Until=false update -qq >>"$(dirname "$ROOT")/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -qq --no-install-recommends \
        valkey-server valkey-sentinel >>"$(dirname "$ROOT")/apt.log" 2>&1 ||
      die "apt-get in $ROOT failed, see $(dirname "$ROOT")/apt.log"
    : >"$ROOT/etc/resolv.conf"
  ) 9>"$ROOT.lock"
}
SENTINEL_PORTS=(26379 26380 26381)
# A password of its own for each ACL user, kept in $SB/redis/passwords/<user>.
secret_of() {
  local f=$SB/redis/passwords/$1
  [[ -s $f ]] || (umask 077 && mkdir -p "$SB/redis/passwords" && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$f")
  cat "$f"
}

# data_node_conf PORT [REPLICAOF_PORT]: a config file the node (and Sentinel, by CONFIG
# REWRITE) may rewrite; written once, so that a restarted node keeps what Sentinel made it.
data_node_conf() {
  local port=$1 of=${2:-} conf=$RD/node-$1/redis.conf
  [[ -f $conf ]] && return 0
  mkdir -p "$RD/node-$port"
  (umask 077 && cat >"$conf" <<EOF
bind 127.0.0.1
port $port
protected-mode yes
dir $RD_IN/node-$port
save ""
appendonly yes
appendfsync everysec
replica-announce-ip 127.0.0.1
# callmfa (and the tests) use "callmfa"; replication uses "replica"; Sentinel uses
# "sentinel" with the commands redis.io's Sentinel ACL guide lists.
user default off
user callmfa on >$(secret_of callmfa) ~* &* +@all
user replica on >$(secret_of replica) +psync +replconf +ping
user sentinel on >$(secret_of sentinel) allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill
masteruser replica
masterauth $(secret_of replica)
EOF
  )
  [[ -z $of ]] || echo "replicaof 127.0.0.1 $of" >>"$conf"
}

sentinel_conf() {
  local port=$1 conf=$RD/sentinel-$1/sentinel.conf
  [[ -f $conf ]] && return 0
  mkdir -p "$RD/sentinel-$port"
  (umask 077 && cat >"$conf" <<EOF
bind 127.0.0.1
port $port
protected-mode yes
dir $RD_IN/sentinel-$port
sentinel announce-ip 127.0.0.1
sentinel monitor callmfa 127.0.0.1 6379 2
sentinel down-after-milliseconds callmfa 1000
sentinel failover-timeout callmfa 10000
sentinel parallel-syncs callmfa 1
sentinel auth-user callmfa sentinel
sentinel auth-pass callmfa $(secret_of sentinel)
# The Sentinels' own users: the peers talk as "peer"; callmfa may only ask.
user default off
user peer on >$(secret_of peer) allchannels +@all
user callmfa on >$(secret_of sentinel-client) allchannels -@all +ping +hello +auth +client|setname +sentinel|masters +sentinel|master +sentinel|slaves +sentinel|replicas +sentinel|sentinels +sentinel|ckquorum +sentinel|get-master-addr-by-name +subscribe +unsubscribe +psubscribe +punsubscribe
sentinel sentinel-user peer
sentinel sentinel-pass $(secret_of peer)
EOF
  )
}

start_sentinel_mode() {
  local port n=0
  data_node_conf 6379
  data_node_conf 6380 6379
  if [[ $REDIS_SERVER == valkey ]]; then
    install_valkey
    chroot "$ROOT" chown -R valkey:valkey "${RD#"$ROOT"}"
  fi
  alive redis || start redis 127.0.0.1:6379 ip netns exec "$NS" "${RUN_NODE[@]}" "$RD_IN/node-6379/redis.conf"
  alive redis2 || start redis2 127.0.0.1:6380 ip netns exec "$NS" "${RUN_NODE[@]}" "$RD_IN/node-6380/redis.conf"
  for port in 6379 6380; do
    wait_for "redis-server :$port" env REDISCLI_AUTH="$(secret_of callmfa)" sh -c "ip netns exec '$NS' redis-cli -p $port --user callmfa ping | grep -q PONG"
  done
  for port in "${SENTINEL_PORTS[@]}"; do
    n=$((n + 1))
    sentinel_conf "$port"
    [[ $REDIS_SERVER != valkey ]] || chroot "$ROOT" chown -R valkey:valkey "${RD#"$ROOT"}"
    alive "sentinel$n" || start "sentinel$n" "127.0.0.1:$port" ip netns exec "$NS" "${RUN_SENTINEL[@]}" "$RD_IN/sentinel-$port/sentinel.conf"
  done
  # Ready: every Sentinel knows the primary, one replica and the two other Sentinels, and
  # has seen the replica's link to the primary up (its INFO, asked every 10 s: a replica
  # still syncing shows "err" until then, and `callmfa check` says so).
  for port in "${SENTINEL_PORTS[@]}"; do
    wait_for "redis-sentinel :$port" env REDISCLI_AUTH="$(secret_of sentinel-client)" sh -c "ip netns exec '$NS' redis-cli -p $port --user callmfa sentinel master callmfa | tr '\\n' ' ' | grep -q 'num-slaves 1 .*num-other-sentinels 2 '"
    wait_for "redis-sentinel :$port (replica link)" env REDISCLI_AUTH="$(secret_of sentinel-client)" sh -c "ip netns exec '$NS' redis-cli -p $port --user callmfa sentinel replicas callmfa | tr '\\n' ' ' | grep -q 'master-link-status ok'"
  done
}

write_env() {
  # It holds the signing key (the classic script's callmfa.env is made from it): root only.
  (umask 077 && rm -f "$SB/env" && : >"$SB/env")  # rm: an older env file may be 0644
  cat >"$SB/env" <<EOF
# Written by sandbox.sh up; load with: source $SB/env
export CALLMFA_NETNS=$NS
export CALLMFA_SANDBOX_DIR=$SB
export CALLMFA_REDIS_URL=redis://127.0.0.1:6379/0
export CALLMFA_AMI_HOST=127.0.0.1
export CALLMFA_AMI_PORT=5038
export CALLMFA_AMI_USER=callmfa
export CALLMFA_AMI_SECRET_FILE=$SB/ami-secret
export CALLMFA_SIGNING_KEY=$(cat "$SB/signing-key")
export CALLMFA_PIN_PEPPER_FILE=$PEPPER_FILE
export CALLMFA_AGI_HOST=127.0.0.1
export CALLMFA_AGI_PORT=4573
export CALLMFA_DIAL_TEMPLATE='PJSIP/{number}@callmfa-phone'
export CALLMFA_PHONE=$PHONE
export CALLMFA_ASTERISK_ROOT=$ROOT
export CALLMFA_ASTERISK_CONF=$AST_CONF
export CALLMFA_ROLES=originator,agi,api
export CALLMFA_API_HOST=127.0.0.1
export CALLMFA_API_PORT=4581
export CALLMFA_API_DEMO=on
export CALLMFA_LDAP_URL=ldap://127.0.0.1:$LDAP_PORT
export CALLMFA_LDAP_BIND_DN=$LDAP_BIND_DN
export CALLMFA_LDAP_BIND_PASSWORD_FILE=$SB/ldap-bind-password
export CALLMFA_LDAP_BASE_DN=ou=people,dc=callmfa,dc=test
export CALLMFA_LDAP_USER_FILTER='(uid={user})'
export CALLMFA_RADIUS_HOST=127.0.0.1
export CALLMFA_RADIUS_PORT=1812
export CALLMFA_RADIUS_CLIENTS_FILE=$SB/radius-clients
export CALLMFA_RADIUS_SECRET_FILE=$SB/radius-secret
export CALLMFA_PROVIDER_PRIVACYIDEA_TOKEN_FILE=$SB/provider-token
export CALLMFA_PROVIDER_AUTHENTIK_TOKEN_FILE=$SB/provider-token
export CALLMFA_PROVIDER_OKTA_TOKEN_FILE=$SB/provider-token
export CALLMFA_PROVIDER_OKTA_AUTH_HEADER=X-Okta-Hook-Secret
export CALLMFA_PROVIDER_LINOTP_TOKEN_FILE=$SB/provider-token
export CALLMFA_ENTRA_ISSUER=https://mfa.example.com/entra
export CALLMFA_ENTRA_CLIENT_ID=callmfa-sandbox-eam
export CALLMFA_ENTRA_SIGNING_KEY_FILE=$ENTRA_KEY_FILE
export CALLMFA_ENTRA_DISCOVERY_URL=http://127.0.0.1:$ENTRA_PORT/common/v2.0/.well-known/openid-configuration
export CALLMFA_ENTRA_REDIRECT_URIS=https://login.microsoftonline.com/common/federation/externalauthprovider,http://127.0.0.1:$ENTRA_PORT/common/federation/externalauthprovider
EOF
  if [[ $REDIS_MODE == sentinel ]]; then
    # The data nodes' user and password (the Sentinels give the address).
    printf 'export %s=%s\n' CALLMFA_REDIS_URL "redis://callmfa:$(secret_of callmfa)@127.0.0.1:6379/0" >>"$SB/env"
    cat >>"$SB/env" <<EOF
export CALLMFA_REDIS_SENTINELS=127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381
export CALLMFA_REDIS_SENTINEL_SERVICE=callmfa
export CALLMFA_REDIS_SENTINEL_USER=callmfa
export CALLMFA_REDIS_SENTINEL_PASSWORD=$(secret_of sentinel-client)
export CALLMFA_REDIS_WAIT_REPLICAS=1
export CALLMFA_SANDBOX_REDIS=sentinel
export CALLMFA_SANDBOX_REDIS_SERVER=$REDIS_SERVER
EOF
  fi
  if ((INSTANCES > 1)); then
    local endpoints=127.0.0.1:5038 n
    for ((n = 2; n <= INSTANCES; n++)); do endpoints+=",127.0.0.1:$((5037 + n))"; done
    echo "export CALLMFA_AMI_ENDPOINTS=$endpoints" >>"$SB/env"
  fi
}

# A `verify` token for the HTTP API in $SB/api-token (0600), made again only when Redis no
# longer knows it (a fresh Redis): restarts of serve keep it.
ensure_api_token() {
  local digest token
  if [[ -s $SB/api-token ]]; then
    digest=$(tr -d '\n' <"$SB/api-token" | sha256sum | cut -d' ' -f1)
    [[ $(in_ns redis-cli -p 6379 exists "callmfa:token:$digest") == 1 ]] && return 0
  fi
  in_ns bash -c "source '$SB/env' && exec '$VENV/bin/callmfa' token revoke sandbox" >/dev/null 2>&1 || true
  token=$(in_ns bash -c "source '$SB/env' && exec '$VENV/bin/callmfa' token create sandbox --scope verify" | tail -n 1)
  [[ $token == cmfa_* ]] || die "callmfa token create failed"
  (umask 077 && printf '%s\n' "$token" >"$SB/api-token.new")
  mv "$SB/api-token.new" "$SB/api-token"
}

# The EAM's first signing key (and its certificate), made once by the real CLI: a restart,
# or a `callmfa keys rotate` of a test, keeps the file.
ensure_entra_keys() {
  [[ -s $ENTRA_KEY_FILE ]] && return 0
  bash -c "source '$SB/env' && exec '$VENV/bin/callmfa' keys rotate" >/dev/null ||
    die "callmfa keys rotate failed"
}

cmd_up() {
  cmd_deps
  mkdir -p "$SB/logs" "$SB/pids" "$SB/redis"
  if [[ ! -s $SB/ami-secret ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$SB/ami-secret")
  fi
  # Outcomes are signed (callmfa serve refuses to start without a key of 32 bytes or more).
  if [[ ! -s $SB/signing-key ]]; then
    (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '/+=' >"$SB/signing-key")
  fi
  if [[ ! -s $PEPPER_FILE ]]; then
    (umask 077 && head -c 32 /dev/urandom | base64 >"$PEPPER_FILE")
  fi
  # RADIUS: the NAS on 127.0.0.1 (radclient) shares a random secret; 127.0.0.2 is a NAS that
  # sends no Message-Authenticator (pam_radius_auth 2.0, Debian 12's), listed as such.
  # The identity providers' endpoints (/providers/<vendor> on the API): one token for all.
  if [[ ! -s $SB/provider-token ]]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$SB/provider-token")
  fi
  if [[ ! -s $SB/radius-secret ]]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$SB/radius-secret")
  fi
  (umask 077 && printf '%s\n' "# Written by sandbox.sh up: the NAS clients of the RADIUS front." \
    "127.0.0.1 file:$SB/radius-secret sandbox" \
    "127.0.0.2 file:$SB/radius-secret pam require_message_authenticator=no" >"$SB/radius-clients")
  ip netns list | grep -qw "^$NS" || ip netns add "$NS"
  in_ns ip link set lo up
  write_env

  if [[ $REDIS_MODE == sentinel ]]; then
    start_sentinel_mode
  else
    if ! alive redis; then
      # AOF, as production needs: a restarted Redis keeps the queue and the outcomes.
      start redis redis-server ip netns exec "$NS" redis-server --bind 127.0.0.1 --port 6379 --save '' \
        --appendonly yes --appendfsync everysec --dir "$SB/redis" --protected-mode yes
    fi
    wait_for "redis-server" sh -c "ip netns exec '$NS' redis-cli -p 6379 ping | grep -q PONG"
  fi
  start_ldap

  local n name key
  for ((n = 1; n <= INSTANCES; n++)); do
    name=$(inst_name "$n")
    key=$(inst_key "$n")
    if ! alive "$name"; then
      install_asterisk_config "$n"
      start "$name" /usr/sbin/asterisk ip netns exec "$NS" chroot "$ROOT" /usr/sbin/asterisk \
        -f -n -C "/etc/asterisk-$key/asterisk.conf" -U asterisk -G asterisk
    fi
    wait_for "Asterisk $n" chroot "$ROOT" /usr/sbin/asterisk -C "/etc/asterisk-$key/asterisk.conf" \
      -rx 'core waitfullybooted'
  done

  [[ ! -x $VENV/bin/callmfa ]] || { ensure_api_token && ensure_entra_keys; }

  if [[ $SERVE != 0 ]] && ! alive callmfa; then
    [[ -x $VENV/bin/callmfa ]] || die "no $VENV/bin/callmfa: run 'make venv' first"
    : >"$SB/logs/callmfa.log"
    # shellcheck disable=SC1091
    start callmfa "callmfa serve" ip netns exec "$NS" bash -c "source '$SB/env' && CALLMFA_ROLES='$ROLES' exec '$VENV/bin/callmfa' serve"
    wait_for "callmfa serve" sh -c "grep -q '\"service_ready\"' '$SB/logs/callmfa.log' && kill -0 \$(cut -d' ' -f1 '$SB/pids/callmfa.pid')"
  fi
  log "up: redis 127.0.0.1:6379, slapd 127.0.0.1:$LDAP_PORT, AMI 127.0.0.1:5038, SIP 127.0.0.1:5060, phone $PHONE, FastAGI 127.0.0.1:4573, RADIUS 127.0.0.1:1812, API 127.0.0.1:4581 (token in $SB/api-token; demo /demo; Entra EAM /entra, Entra expected on 127.0.0.1:$ENTRA_PORT) (namespace $NS; env in $SB/env)"
}

cmd_down() {
  if [[ -d $SB/pids ]]; then
    stop callmfa
    for f in "$SB"/pids/phone*.pid; do [[ -e $f ]] && stop "$(basename "$f" .pid)"; done
    for f in "$SB"/pids/asterisk*.pid; do
      [[ -e $f ]] && stop "$(basename "$f" .pid)"
    done
    for f in "$SB"/pids/sentinel*.pid; do [[ -e $f ]] && stop "$(basename "$f" .pid)"; done
    stop redis2
    stop redis
    stop ldap
  fi
  if ip netns list | grep -qw "^$NS"; then ip netns del "$NS"; fi
  log "down"
}

cmd_status() {
  local rc=0
  local extra
  extra=$(for f in "$SB"/pids/asterisk?*.pid; do [[ -e $f ]] && basename "$f" .pid; done || true)
  [[ ! -f $RD/node-6380/redis.conf ]] || extra+=" redis2 sentinel1 sentinel2 sentinel3"
  for name in redis ldap asterisk $extra callmfa; do
    if alive "$name"; then echo "$name: running (pid $(cut -d' ' -f1 "$SB/pids/$name.pid"))"; else echo "$name: stopped"; rc=3; fi
  done
  ip netns list | grep -qw "^$NS" && echo "namespace $NS: present" || echo "namespace $NS: absent"
  return $rc
}

cmd_exec() {
  [[ -f $SB/env ]] || die "the sandbox is not up: run '$0 up' first"
  exec ip netns exec "$NS" bash -c 'source "$1" && shift && exec "$@"' _ "$SB/env" "$@"
}

case ${1:-} in
  deps) cmd_deps ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  exec) shift; cmd_exec "$@" ;;
  *) echo "usage: $0 {deps|up|down|status|exec CMD...}" >&2; exit 2 ;;
esac
