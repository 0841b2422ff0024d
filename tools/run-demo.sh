#!/usr/bin/env bash
# run-demo.sh — the demo behind `make run`.
#
#   ./tools/run-demo.sh BUILD_DIR CONFIG      (e.g. build conf/portcullis.toml)
#
# Creates the demo environment under var/ on first use, starts the bundled
# demo backend on 127.0.0.1:9000 and the proxy on CONFIG, waits until the
# proxy answers, prints curl commands to try, and then runs until Ctrl-C
# (SIGINT) or SIGTERM, which stop both processes and exit 0. If either process
# dies on its own, the other is stopped and the script exits non-zero.
#
# Output of both processes goes to var/log/demo-backend.log and
# var/log/portcullis.out (the proxy's access and audit logs are wherever CONFIG
# puts them, var/log/ in conf/portcullis.toml).
#
# The first run generates the demo secrets under var/demo/ (kept across runs,
# never committed): a self-signed ECDSA P-256 certificate for 127.0.0.1 and
# localhost with its key (mode 0600), the upload encryption keyring (0600) and
# a demo token (printed exactly once).

set -euo pipefail

usage() {
  echo "usage: $0 BUILD_DIR CONFIG" >&2
  exit 2
}
[[ $# -eq 2 ]] || usage

# Resolve the arguments against the caller's directory, then work from the
# repository root so the relative paths in the config (var/...) land there.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
BUILD_DIR=$(abspath "$1")
CONFIG=$(abspath "$2")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PROXY_BIN="$BUILD_DIR/bin/portcullis"
BACKEND_BIN="$BUILD_DIR/bin/demo-backend"
CTL_BIN="$BUILD_DIR/bin/portcullisctl"
for bin in "$PROXY_BIN" "$BACKEND_BIN" "$CTL_BIN"; do
  if [[ ! -x "$bin" ]]; then
    echo "run-demo: $bin is missing; build first (make build)" >&2
    exit 1
  fi
done
if [[ ! -r "$CONFIG" ]]; then
  echo "run-demo: cannot read config $CONFIG" >&2
  exit 1
fi

BACKEND_ADDR=127.0.0.1:9000

# Reads a quoted string key from the config's [server] table; falls back to $2.
config_addr() {
  local key=$1 fallback=$2 value
  value=$(sed -n "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" "$CONFIG" | head -n 1)
  [[ -n "$value" ]] || value=$fallback
  # A wildcard or empty host is reached through loopback.
  case "$value" in
    :*) value="127.0.0.1$value" ;;
    0.0.0.0:*) value="127.0.0.1:${value#0.0.0.0:}" ;;
    "[::]:"*) value="[::1]:${value#\[::\]:}" ;;
  esac
  printf '%s\n' "$value"
}
PROXY_ADDR=$(config_addr listen_https 127.0.0.1:8443)
ADMIN_ADDR=$(config_addr admin_listen 127.0.0.1:9901)
PROXY_URL="https://$PROXY_ADDR"
CURL="curl --cacert var/demo/server.crt"
ADMIN_URL="http://$ADMIN_ADDR"

# --- demo environment (first use) -------------------------------------------
if [[ ! -d var/demo ]]; then
  echo "run-demo: creating the demo environment under var/demo/"
fi
mkdir -p var/demo/uploads var/log var/state
if [[ ! -f var/demo/sample.csv ]]; then
  printf 'id,item,qty\n1,widget,2\n2,gadget,5\n3,sprocket,11\n' > var/demo/sample.csv
fi
if [[ ! -f var/demo/server.key || ! -f var/demo/server.crt ]]; then
  echo "run-demo: generating a self-signed certificate for 127.0.0.1 (var/demo/server.crt)"
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout var/demo/server.key -out var/demo/server.crt -days 365 -subj "/CN=localhost" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null) ||
    { echo "run-demo: openssl could not create the certificate" >&2; exit 1; }
  chmod 600 var/demo/server.key
  chmod 644 var/demo/server.crt
fi
# The upload encryption keyring: one random master key, active.
if [[ ! -f var/demo/keyring.toml ]]; then
  "$CTL_BIN" keys gen --keyring var/demo/keyring.toml --id k1 --activate >/dev/null ||
    { echo "run-demo: could not create the keyring" >&2; exit 1; }
fi
# The demo token: issued once into a fresh store (mode 0600) and printed once;
# the store keeps only its SHA-256. Lost it? Issue another with portcullisctl.
TOKEN=""
if [[ ! -f var/demo/tokens.toml ]]; then
  TOKEN=$("$CTL_BIN" token issue --store var/demo/tokens.toml --account demo \
          --role reader --role writer --role uploader --label "make run demo") ||
    { echo "run-demo: could not issue the demo token" >&2; exit 1; }
fi

if $CURL -s -o /dev/null --max-time 1 "$PROXY_URL/" 2>/dev/null; then
  echo "run-demo: something already answers on $PROXY_URL; is another demo running?" >&2
  exit 1
fi

# --- processes ---------------------------------------------------------------
BACKEND_PID=""
PROXY_PID=""
STOPPING=0

stop_all() {
  local pid
  for pid in "$PROXY_PID" "$BACKEND_PID"; do
    if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  # The proxy drains for up to server.shutdown_grace_ms; give both 15 s.
  for _ in $(seq 150); do
    local alive=0
    for pid in "$PROXY_PID" "$BACKEND_PID"; do
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive=1
    done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  for pid in "$PROXY_PID" "$BACKEND_PID"; do
    if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
}

on_signal() {
  [[ $STOPPING -eq 1 ]] && return
  STOPPING=1
  echo
  echo "run-demo: stopping the proxy and the demo backend"
  stop_all
  exit 0
}
trap on_signal INT TERM

# Stops everything after a failure, showing the end of the failed log.
fail() {
  local msg=$1 log=${2:-}
  trap - INT TERM
  echo "run-demo: $msg" >&2
  if [[ -n "$log" && -s "$log" ]]; then
    echo "---- last lines of $log ----" >&2
    tail -n 20 "$log" >&2
  fi
  stop_all
  exit 1
}

rm -f var/demo/backend.port
"$BACKEND_BIN" --listen "$BACKEND_ADDR" --upload-dir var/demo/uploads \
  --port-file var/demo/backend.port >var/log/demo-backend.log 2>&1 &
BACKEND_PID=$!

for _ in $(seq 50); do
  [[ -s var/demo/backend.port ]] && break
  kill -0 "$BACKEND_PID" 2>/dev/null ||
    fail "demo-backend exited at start (is $BACKEND_ADDR in use?)" var/log/demo-backend.log
  sleep 0.1
done
[[ -s var/demo/backend.port ]] || fail "demo-backend did not start listening within 5 s" var/log/demo-backend.log

"$PROXY_BIN" -c "$CONFIG" >var/log/portcullis.out 2>&1 &
PROXY_PID=$!

ready=0
for _ in $(seq 100); do
  kill -0 "$PROXY_PID" 2>/dev/null || fail "portcullis exited at start" var/log/portcullis.out
  # Any HTTP answer (even a 404) means the listener is up.
  if $CURL -s -o /dev/null --max-time 1 "$PROXY_URL/" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ $ready -eq 1 ]] || fail "portcullis did not answer on $PROXY_URL within 10 s" var/log/portcullis.out

if [[ -n "$TOKEN" ]]; then
  TOKEN_SHOWN=$TOKEN
  TOKEN_NOTE="Demo token (shown this once; the store keeps only its hash):
  $TOKEN
"
else
  TOKEN_SHOWN="<your token>"
  TOKEN_NOTE="The demo token was printed on the first run. To get a new one:
  $CTL_BIN token issue --store var/demo/tokens.toml --account demo --role reader --role writer --role uploader
"
fi

cat <<EOF

Portcullis demo is running
  proxy          $PROXY_URL      (pid $PROXY_PID, config ${CONFIG#"$ROOT"/})
  admin          $ADMIN_URL      (metrics and health, loopback only)
  demo backend   http://$BACKEND_ADDR   (pid $BACKEND_PID)
  logs           var/log/  (portcullis.out, demo-backend.log, access.log, audit.log)

$TOKEN_NOTE
Try (the demo backend echoes each request it receives as JSON, including the
identity headers the proxy derives from the token):

  export TOKEN=$TOKEN_SHOWN
  $CURL -i $PROXY_URL/v1/hello -H "Authorization: Bearer \$TOKEN"

  # without a token: 401 with WWW-Authenticate: Bearer
  $CURL -i $PROXY_URL/v1/hello

  $CURL -i $PROXY_URL/v1/orders -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: application/json' -d '{"item": "widget", "qty": 2}'

  # malformed JSON is stopped at the proxy (400) and never reaches the backend
  $CURL -i $PROXY_URL/v1/orders -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: application/json' -d '{"item": '

  # streamed CSV upload, checked as it streams, then encrypted (pcx1): the
  # echo shows X-Portcullis-Encryption and the ciphertext length the backend got
  $CURL -i $PROXY_URL/v1/accounts/demo/uploads -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: text/csv' --data-binary @var/demo/sample.csv

  # another tenant's path: 403
  $CURL -i $PROXY_URL/v1/accounts/other/uploads -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: text/csv' --data-binary @var/demo/sample.csv

  # tokens: list (never shows secrets), revoke (takes effect within 1 s)
  $CTL_BIN token list --store var/demo/tokens.toml --state-dir var/state

  # the backend alone stores uploads in var/demo/uploads/
  curl -i 'http://$BACKEND_ADDR/upload?name=sample.csv' --data-binary @var/demo/sample.csv

  # decrypt what a backend received; check the audit trail
  $CTL_BIN decrypt --keyring var/demo/keyring.toml < FILE.pcx1 > FILE
  $CTL_BIN audit verify --keyring var/demo/keyring.toml var/log/audit.log

  curl -s $ADMIN_URL/metrics
  curl -i $ADMIN_URL/healthz
  curl -i $ADMIN_URL/readyz

Press Ctrl-C to stop.
EOF

# Wait until a signal arrives or one of the two processes exits.
while :; do
  set +e
  wait -n "$BACKEND_PID" "$PROXY_PID"
  rc=$?
  set -e
  [[ $STOPPING -eq 1 ]] && exit 0
  if [[ $rc -eq 0 ]]; then
    # A clean exit: Ctrl-C reaches the whole process group, and a child can
    # finish its own shutdown before this shell runs its trap.
    on_signal
  fi
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    PROXY_PID=""
    fail "portcullis exited unexpectedly; stopping the demo backend" var/log/portcullis.out
  fi
  if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
    BACKEND_PID=""
    fail "demo-backend exited unexpectedly; stopping the proxy" var/log/demo-backend.log
  fi
done
