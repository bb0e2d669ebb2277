# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts sourcing this
# Shared helpers for the local-services scripts. Sourced, never executed.
#
# Layout (see README.md):
#   $ROOT   project root (two levels above this directory)
#   $STATE  ${CITYSENSE_STATE_DIR:-$ROOT/.state}; logs in $STATE/logs

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"
STATE="${CITYSENSE_STATE_DIR:-$ROOT/.state}"
LOGS="$STATE/logs"

PG_PORT="${CITYSENSE_PG_PORT:-55432}"
MQTT_PORT="${CITYSENSE_MQTT_PORT:-18830}"
# Devices' TLS listener; by default 3 above the plain port, so several local sets never collide.
MQTT_TLS_PORT="${CITYSENSE_MQTT_TLS_PORT:-$((MQTT_PORT + 3))}"
# Devices' TLS listener that logs them in by client certificate (CN = device id).
MQTT_TLS_CERT_PORT="${CITYSENSE_MQTT_TLS_CERT_PORT:-$((MQTT_PORT + 4))}"
KAFKA_PORT="${CITYSENSE_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${CITYSENSE_KAFKA_CONTROLLER_PORT:-19093}"

SECRETS_FILE="$STATE/secrets.env"
ENV_FILE="$STATE/env"

info() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root (directly if we already are).
as_root() {
  if is_root; then "$@"; else sudo "$@"; fi
}

# Run a command as OS user $1 when we are root (daemons that refuse root or
# drop to their own user); otherwise run it as ourselves.
as_user() {
  local user="$1"; shift
  if is_root; then runuser -u "$user" -- "$@"; else "$@"; fi
}

# apt-get install, running `apt-get update` at most once per process.
_APT_UPDATED=0
apt_install() {
  if [ "$_APT_UPDATED" -eq 0 ]; then
    info "apt-get update"
    as_root apt-get update -qq
    _APT_UPDATED=1
  fi
  info "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# mkdir -p the state + log dirs and any extra dirs given.
ensure_dirs() {
  mkdir -p "$STATE" "$LOGS" "$@"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_answers() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Print the pid from pid file $1 if that process is alive and its command line
# contains $2 (guards against a recycled pid); fail otherwise.
pid_alive() {
  local pidfile="$1" pattern="$2" pid
  [ -r "$pidfile" ] || return 1
  pid="$(head -n1 "$pidfile" 2>/dev/null | tr -dc '0-9')"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern" || return 1
  printf '%s\n' "$pid"
}

# True if process $1 owns a listening TCP socket on port $2 (tcp or tcp6:
# the JVM binds 127.0.0.1 through a dual-stack socket), so "our pid is alive" + "the port answers" cannot be satisfied by
# two different processes. Falls back to a plain connect when we may not
# read the process's fds (not root, someone else's process).
pid_listens() {
  local pid="$1" port="$2" hex inode
  [ -r "/proc/$pid/fd" ] || { port_answers "$port"; return; }
  hex="$(printf '%04X' "$port")"
  # /proc/net/tcp: local_address is IP:PORT in hex, st 0A = LISTEN, field 10 = inode
  while read -r inode; do
    if find "/proc/$pid/fd" -maxdepth 1 -lname "socket:?$inode?" -print -quit 2>/dev/null | grep -q .; then
      return 0
    fi
  done < <(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
             /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  return 1
}

# True if the daemon in pid file $1 (cmdline matching $2) is alive and
# listening on port $3.
daemon_up() {
  local pid
  pid="$(pid_alive "$1" "$2")" && pid_listens "$pid" "$3"
}

# Fail with the standard message if our port is taken by someone else.
require_port_free() {
  local port="$1" svc="$2" var="$3"
  if port_answers "$port"; then
    die "port $port ($svc) is already in use by another process; set $var or stop it"
  fi
}

# Wait up to $2 seconds for $1 to stop; SIGKILL after that.
stop_pid() {
  local pid="$1" timeout="${2:-30}" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < timeout * 10; i++)); do
    [ -d "/proc/$pid" ] || return 0
    sleep 0.1
  done
  warn "pid $pid did not stop within ${timeout}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# Make $STATE reachable for a daemon that runs as another OS user: every
# parent directory must be searchable by it.
require_traversable() {
  local user="$1" dir="$2"
  is_root || return 0
  if ! runuser -u "$user" -- test -x "$dir"; then
    die "OS user '$user' cannot reach $dir (a parent directory is not searchable); use a CITYSENSE_STATE_DIR outside private directories"
  fi
}

# --- secrets ---------------------------------------------------------------

_gen_hex() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 16
  else
    python3 -c 'import secrets; print(secrets.token_hex(16))'
  fi
}

# Resolve the secrets: env var of the same name wins, then the value
# persisted in $SECRETS_FILE, else a fresh random one. The effective values
# are (re)written to $SECRETS_FILE so later runs reuse them.
load_secrets() {
  local name cur file_val changed=0
  ensure_dirs "$STATE"
  for name in CITYSENSE_DB_PASSWORD CITYSENSE_MQTT_BRIDGE_PASSWORD CITYSENSE_MQTT_LOADGEN_PASSWORD CITYSENSE_DEVICE_SECRET; do
    cur="${!name:-}"
    file_val=""
    if [ -r "$SECRETS_FILE" ]; then
      file_val="$(sed -n "s/^$name=//p" "$SECRETS_FILE" | tail -n1)"
    fi
    if [ -z "$cur" ]; then cur="${file_val:-$(_gen_hex)}"; fi
    # These two appear verbatim in the unquoted, sourceable $ENV_FILE.
    if [ "$name" != CITYSENSE_DB_PASSWORD ]; then
      case "$cur" in
        *[!A-Za-z0-9._~+/=@%:,-]*) die "$name contains characters that are unsafe in $ENV_FILE (allowed: A-Za-z0-9._~+/=@%:,-)" ;;
      esac
    fi
    [ "$cur" = "$file_val" ] || changed=1
    # Global, deliberately not exported: daemons we start must not inherit it.
    printf -v "$name" '%s' "$cur"
  done
  if [ "$changed" -eq 1 ]; then
    _write_private "$SECRETS_FILE" <<EOF
CITYSENSE_DB_PASSWORD=$CITYSENSE_DB_PASSWORD
CITYSENSE_MQTT_BRIDGE_PASSWORD=$CITYSENSE_MQTT_BRIDGE_PASSWORD
CITYSENSE_MQTT_LOADGEN_PASSWORD=$CITYSENSE_MQTT_LOADGEN_PASSWORD
CITYSENSE_DEVICE_SECRET=$CITYSENSE_DEVICE_SECRET
EOF
  fi
}

# Atomically write stdin to $1 with mode 600.
_write_private() {
  local dest="$1" tmp
  tmp="$(umask 077 && mktemp "$dest.XXXXXX")"
  cat >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$dest"
}

_urlencode() {
  case "$1" in
    *[!A-Za-z0-9._~-]*)
      python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1" ;;
    *) printf '%s\n' "$1" ;;
  esac
}

# (Re)write $STATE/env: the sourceable connection settings for the app/tests.
write_env_file() {
  local pw new
  load_secrets
  pw="$(_urlencode "$CITYSENSE_DB_PASSWORD")"
  new="CITYSENSE_DATABASE_URL=postgresql://citysense:$pw@127.0.0.1:$PG_PORT/citysense
CITYSENSE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
CITYSENSE_MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
CITYSENSE_MQTT_TLS_URL=mqtts://127.0.0.1:$MQTT_TLS_PORT
CITYSENSE_MQTT_TLS_CERT_URL=mqtts://127.0.0.1:$MQTT_TLS_CERT_PORT
CITYSENSE_MQTT_CA_FILE=$STATE/mosquitto/tls/ca.crt
CITYSENSE_MQTT_BRIDGE_USERNAME=citysense-bridge
CITYSENSE_MQTT_BRIDGE_PASSWORD=$CITYSENSE_MQTT_BRIDGE_PASSWORD
CITYSENSE_MQTT_LOADGEN_USERNAME=citysense-loadgen
CITYSENSE_MQTT_LOADGEN_PASSWORD=$CITYSENSE_MQTT_LOADGEN_PASSWORD
CITYSENSE_DEVICE_SECRET=$CITYSENSE_DEVICE_SECRET"
  # Skip the rewrite when nothing changed (keeps the fast path fast and the
  # file's mtime stable for anything watching it).
  if [ -r "$ENV_FILE" ] && [ "$(cat "$ENV_FILE")" = "$new" ]; then
    chmod 600 "$ENV_FILE"
    return 0
  fi
  printf '%s\n' "$new" | _write_private "$ENV_FILE"
}

# Common verb dispatch for the per-service scripts: each defines
# svc_install, svc_up, svc_down, svc_status (+ optional extras).
dispatch() {
  local svc="$1" verb="${2:-}"
  case "$verb" in
    install) svc_install ;;
    up) svc_up ;;
    down) svc_down ;;
    status) svc_status ;;
    *)
      if [ -n "$verb" ] && declare -F "svc_$verb" >/dev/null; then
        "svc_$verb"
      else
        printf 'usage: %s install|up|down|status%s\n' "$svc.sh" "${EXTRA_VERBS:-}" >&2
        exit 2
      fi ;;
  esac
}
