#!/usr/bin/env bash
# Side-by-side load comparison: Portcullis, nginx and HAProxy (one worker each) in
# front of the same nginx origin, plus wrk straight at the origin ("direct").
# MODE=plain runs Portcullis twice from portcullis.toml.tmpl: "portcullis" with
# no access log, like for like with the nginx and HAProxy contenders (access_log
# off, no log), and "portcullis-log", the same with its JSON access log on.
#
#   bench/compare.sh [BUILD_DIR]          (default: build)
#   MODE=tls bench/compare.sh [BUILD_DIR] (HTTPS: keep-alive, full and resumed handshakes)
#   MODE=encrypt bench/compare.sh [BUILD_DIR] (uploads only: Portcullis with
#                                  encrypt_body = true vs plain forwarding)
#   MODE=limits bench/compare.sh [BUILD_DIR]   (Portcullis only, rate limits off vs on)
#   MODE=validate bench/compare.sh [BUILD_DIR] (Portcullis only, route validators off vs on)
#   MODE=auth bench/compare.sh [BUILD_DIR]     (Portcullis only, token check + RBAC off vs on)
#
# Env knobs: DURATION (s per run, 10), CONNS (64), ROUNDS (3), UPLOAD_MB (1),
# OUT (results dir, bench/results/<UTC timestamp>), PIN (0; 1 = proxy on cpu 0,
# wrk + origin on cpu 1), WARMUP (s per contender before round 1, 1; 0 = none),
# SYSCALLS (0; 1 = MODE=plain also counts each proxy's system calls per GET /tiny
# in one extra 3 s run per contender, with `perf stat` syscall tracepoints:
# OUT/syscalls.txt; needs perf, Debian package linux-perf),
# FLOOR (0; 1 = MODE=plain also runs "floor", build/bin/floor_forwarder: one libuv
# loop with llhttp finding message ends and nothing else, Portcullis's system
# calls, no feature; the least any libuv + llhttp proxy can spend per request,
# so that Portcullis's distance from it is measured in the same run; GET /tiny
# only; with liburing installed also "floor-uring", build/bin/floor_uring: the
# same forwarding with every receive and send an io_uring request, a batch per
# io_uring_enter, so that what the libuv/epoll system-call pattern itself costs
# shows beside it),
# UPLOAD_CONNS (connections for the upload run, default CONNS), MODE (plain; tls =
# the proxies terminate TLS with one ECDSA P-256 certificate), HS_CONNS (MODE=tls:
# connections for the new-connection-per-request runs, default CONNS). MODE=encrypt
# adds "portcullis-enc" (encrypt_body = true on /upload, pcx1 AES-256-GCM), runs
# only the upload test, then build/bin/pcx1_bench for the raw sealing cost;
# there UPLOAD_CONNS defaults to 256 / UPLOAD_MB, clamped to 4 .. CONNS.
# MODE=limits and MODE=validate ("A/B modes") measure what one feature costs:
# two Portcullis instances, "portcullis" (off) and "portcullis-on" (on), from one
# template (portcullis-limits.toml.tmpl, portcullis-validate.toml.tmpl) whose
# lines marked #@ON@ only the second keeps; keep-alive GET /tiny only, no other
# contenders, the order alternating every round; reports both, the on/off ratios
# (median and per round) against the 0.97 target, and checks that the feature
# was really on and refused nothing during the runs.
#
# Writes OUT/results.json, OUT/chart.png, OUT/raw/ (wrk output per run) and
# OUT/configs/ (the exact configs used). See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")

BUILD_DIR=${1:-build}
if [ ! -d "$BUILD_DIR" ] && [ -d "$ROOT/$BUILD_DIR" ]; then BUILD_DIR=$ROOT/$BUILD_DIR; fi
BUILD_DIR=$(cd "$BUILD_DIR" 2>/dev/null && pwd || echo "$BUILD_DIR")

DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
UPLOAD_MB=${UPLOAD_MB:-1}
MODE=${MODE:-plain}
if [ -z "${UPLOAD_CONNS:-}" ] && [ "$MODE" = encrypt ] && [[ ${UPLOAD_MB} =~ ^[0-9]+([.][0-9]+)?$ ]] && [[ $CONNS =~ ^[0-9]+$ ]]; then
  # Large bodies: fewer connections, so each run completes enough requests and the
  # origin (which holds every body in memory) stays at a few hundred MiB.
  UPLOAD_CONNS=$(awk -v m="$UPLOAD_MB" -v c="$CONNS" 'BEGIN { n = int(256 / m); if (n < 4) n = 4; if (n > c) n = c; print n }')
fi
UPLOAD_CONNS=${UPLOAD_CONNS:-$CONNS}
PIN=${PIN:-0}
WARMUP=${WARMUP:-1}
OUT=${OUT:-$BENCH_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)}
HS_CONNS=${HS_CONNS:-$CONNS}
SYSCALLS=${SYSCALLS:-0}
FLOOR=${FLOOR:-0}

die() { echo "compare.sh: $*" >&2; exit 1; }
note() { echo "compare.sh: note: $*" >&2; }

case $MODE in plain|tls|encrypt|limits|validate|auth) ;;
  *) die "MODE must be plain, tls, encrypt, limits, validate or auth (got '$MODE')" ;; esac
AB=0   # MODE=limits / validate: Portcullis off vs on, nothing else
case $MODE in limits|validate|auth) AB=1 ;; esac
for v in DURATION CONNS ROUNDS UPLOAD_CONNS WARMUP HS_CONNS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[ "$DURATION" -ge 1 ] && [ "$CONNS" -ge 1 ] && [ "$ROUNDS" -ge 1 ] && [ "$UPLOAD_CONNS" -ge 1 ] && [ "$HS_CONNS" -ge 1 ] \
  || die "DURATION, CONNS, ROUNDS, UPLOAD_CONNS and HS_CONNS must be at least 1"
[[ $UPLOAD_MB =~ ^[0-9]+([.][0-9]+)?$ ]] || die "UPLOAD_MB must be a number of MiB (got '$UPLOAD_MB')"
UPLOAD_BYTES=$(awk -v m="$UPLOAD_MB" 'BEGIN { printf "%d", m * 1048576 }')
[ "$UPLOAD_BYTES" -ge 1 ] || die "UPLOAD_MB is too small"

# --- tools -------------------------------------------------------------------
for t in nginx wrk curl python3 awk; do
  command -v "$t" >/dev/null || die "'$t' not found; run tools/install-deps.sh --bench"
done
ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
[ -f "$ECHO_MODULE" ] || die "$ECHO_MODULE missing (Debian package libnginx-mod-http-echo, pulled in by nginx-light)"
if [ "$MODE" = tls ]; then
  # openssl makes the certificate; cc builds the wrk shim (wrk_tls_shim.c).
  for t in openssl cc; do
    command -v "$t" >/dev/null || die "MODE=tls needs '$t' (Debian: openssl, gcc)"
  done
fi

# The chart needs matplotlib; a pyenv/venv python3 first on PATH may lack the
# Debian package, so also try the system interpreter.
CHART_PY=""
for py in "${PYTHON:-python3}" /usr/bin/python3; do
  if command -v "$py" >/dev/null && "$py" -c 'import matplotlib' 2>/dev/null; then CHART_PY=$py; break; fi
done

if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
  if [ "$(nproc)" -lt 2 ]; then note "PIN=1 needs 2 CPUs; running unpinned"; PIN=0; fi
fi
CPU_PROXY=0
CPU_LOAD=1

CLK_TCK=$(getconf CLK_TCK)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- temp dir, process bookkeeping, cleanup ------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
declare -A STARTED=()  # pids this script started and has not reaped; stopped on exit
declare -A PID=()      # contender/origin name -> pid

# alive PID: the process runs and is still this shell's child. Checking the parent
# means a pid recycled by an unrelated process after ours died is never signalled.
alive() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }          # drop "pid (comm) "; now: state ppid ...
  set -- $s
  [ "$1" != Z ] && [ "$2" = "$$" ]
}

stop_pid() {  # stop_pid PID -- TERM, up to 3 s grace, KILL; then reap
  local pid=$1
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "STARTED[$pid]"
}

cleanup() {
  local rc=$? pid left f
  trap "" INT TERM   # a second Ctrl-C must not cut the cleanup short
  trap - EXIT
  for pid in "${!STARTED[@]}"; do alive "$pid" && kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 30); do
    left=0
    for pid in "${!STARTED[@]}"; do alive "$pid" && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${!STARTED[@]}"; do stop_pid "$pid"; done
  if [ -d "$OUT" ]; then  # keep configs and error output with the results, not bulk logs
    mkdir -p "$OUT/configs"
    cp "$TMP"/*.conf "$TMP"/*.cfg "$TMP"/*-error.log "$OUT/configs/" 2>/dev/null || true
    for f in "$TMP"/*.toml; do  # configs only: the run's keyring and token store are secrets
      case ${f##*/} in keyring.toml|tokens.toml) ;; *) cp "$f" "$OUT/configs/" 2>/dev/null || true ;; esac
    done
    for f in "$TMP"/*.out; do [ -s "$f" ] && tail -c 65536 "$f" > "$OUT/configs/${f##*/}"; done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT
trap 'echo "compare.sh: terminated" >&2; exit 143' TERM

free_ports() {  # free_ports N -> N distinct free loopback ports, one per line
  python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
for s in socks: print(s.getsockname()[1])' "$1"
}

render() {  # render TEMPLATE OUTFILE -- fills @NAME@ placeholders from the env below
  # R_VARIANT=off drops the lines marked #@ON@ (A/B templates) and keeps
  # those marked #@OFF@; otherwise the reverse. Markers are removed.
  local onoff='s/[[:space:]]*#@ON@$//' offon='/#@OFF@$/d'
  if [ "${R_VARIANT:-}" = off ]; then onoff='/#@ON@$/d'; offon='s/[[:space:]]*#@OFF@$//'; fi
  sed -e "$onoff" -e "$offon" -e "s#@TMP@#$TMP#g" -e "s#@PORT@#${R_PORT:-}#g" -e "s#@ADMIN_PORT@#${R_ADMIN_PORT:-}#g" \
      -e "s#@ORIGIN_PORT@#$ORIGIN_PORT#g" -e "s#@TINY_BODY@#$TINY_BODY#g" \
      -e "s#@BODY_BUFFER@#$BODY_BUFFER#g" -e "s#@ECHO_MODULE@#$ECHO_MODULE#g" \
      -e "s#@CERT@#${TLS_CERT:-}#g" -e "s#@KEY@#${TLS_KEY:-}#g" -e "s#@PEM@#${TLS_PEM:-}#g" \
      -e "s#@STATE@#${R_STATE:-}#g" -e "s#@LOG@#${R_LOG:-}#g" -e "s#@KEYRING@#${R_KEYRING:-}#g" \
      -e "s#@SEGMENT@#${ENC_SEGMENT:-65536}#g" \
      "$BENCH_DIR/$1" > "$2"
}

start() {  # start NAME CPU CMD... -- background process, output to TMP/NAME.out
  local name=$1 cpu=$2; shift 2
  if [ "$PIN" = 1 ]; then set -- taskset -c "$cpu" "$@"; fi
  "$@" > "$TMP/$name.out" 2>&1 &
  PID[$name]=$!
  STARTED[$!]=1
}

# MODE=tls: curl talks to the proxies over https and accepts the self-signed certificate.
CURL_TLS=()
[ "$MODE" = tls ] && CURL_TLS=(-k)
http_code() { curl -s "${CURL_TLS[@]}" -o /dev/null -w '%{http_code}' --max-time 2 "$@" 2>/dev/null || true; }

wait_http() {  # wait_http NAME URL SECONDS -- until URL answers 200 while NAME lives
  local name=$1 url=$2
  for _ in $(seq $(( $3 * 10 ))); do
    alive "${PID[$name]}" || return 1
    [ "$(http_code "$url")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

stop() {  # stop NAME -- used when a contender is dropped
  [ -n "${PID[$1]:-}" ] || return 0
  stop_pid "${PID[$1]}"
  unset "PID[$1]"
}

# --- setup -------------------------------------------------------------------
mkdir -p "$OUT/raw"
: > "$OUT/runs.jsonl"
STATUS=$TMP/contenders.tsv   # name <TAB> ok|skipped <TAB> detail
: > "$STATUS"

TINY_BODY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef   # 64 bytes
BODY_BUFFER=$(( UPLOAD_BYTES / 1024 + 64 ))k   # whole body in origin memory, no temp file
head -c "$UPLOAD_BYTES" /dev/zero > "$TMP/body.bin"

mapfile -t PORTS < <(free_ports 13)
ORIGIN_PORT=${PORTS[0]}
declare -A PORT=([direct]=$ORIGIN_PORT [nginx]=${PORTS[1]} [haproxy]=${PORTS[2]} [portcullis]=${PORTS[3]}
                 [portcullis-enc]=${PORTS[5]} [portcullis-on]=${PORTS[7]} [floor]=${PORTS[9]} [portcullis-log]=${PORTS[10]}
                 [floor-uring]=${PORTS[12]})
declare -A ADMIN_PORT=([portcullis]=${PORTS[4]} [portcullis-enc]=${PORTS[6]} [portcullis-on]=${PORTS[8]}
                       [portcullis-log]=${PORTS[11]})

# MODE=encrypt: what the origin must receive from portcullis-enc for one upload:
# the pcx1 ciphertext (SPEC section 7) of the UPLOAD_BYTES-byte body, key id "k1",
# 64 KiB segments: header 4+2+4+1+len(key_id)+12+48+7 bytes, then the body and a
# 16-byte tag per started segment (one empty segment for an empty body).
ENC_KEY_ID=k1
ENC_SEGMENT=65536
ENC_HEADER=$(( 4 + 2 + 4 + 1 + ${#ENC_KEY_ID} + 12 + 48 + 7 ))
ENC_SEGMENTS=$(( (UPLOAD_BYTES + ENC_SEGMENT - 1) / ENC_SEGMENT ))
[ "$ENC_SEGMENTS" -ge 1 ] || ENC_SEGMENTS=1
ENC_BYTES=$(( ENC_HEADER + UPLOAD_BYTES + 16 * ENC_SEGMENTS ))

if [ "$MODE" = tls ]; then
  echo "Portcullis bench (TLS): DURATION=${DURATION}s CONNS=$CONNS HS_CONNS=$HS_CONNS ROUNDS=$ROUNDS PIN=$PIN  ->  $OUT"
elif [ "$MODE" = encrypt ]; then
  echo "Portcullis bench (encrypt_body uploads): DURATION=${DURATION}s ROUNDS=$ROUNDS UPLOAD_MB=$UPLOAD_MB" \
       "UPLOAD_CONNS=$UPLOAD_CONNS PIN=$PIN  ->  $OUT"
elif [ "$AB" = 1 ]; then
  echo "Portcullis bench (MODE=$MODE: Portcullis $MODE off vs on, GET /tiny): DURATION=${DURATION}s CONNS=$CONNS" \
       "ROUNDS=$ROUNDS PIN=$PIN  ->  $OUT"
else
  echo "Portcullis bench: DURATION=${DURATION}s CONNS=$CONNS ROUNDS=$ROUNDS UPLOAD_MB=$UPLOAD_MB" \
       "UPLOAD_CONNS=$UPLOAD_CONNS PIN=$PIN  ->  $OUT"
fi

# Proxies listen with this scheme; the origin (and "direct") is always plain HTTP.
SCHEME=http
if [ "$MODE" = tls ]; then
  SCHEME=https
  # One ECDSA P-256 self-signed certificate for all three proxies, in a 0700
  # directory inside TMP; the key is 0600 (Portcullis refuses a readable key).
  # HAProxy reads certificate and key from one PEM.
  TLS_DIR=$TMP/tls
  (umask 077 && mkdir "$TLS_DIR")
  TLS_CERT=$TLS_DIR/cert.pem TLS_KEY=$TLS_DIR/key.pem TLS_PEM=$TLS_DIR/haproxy.pem
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
     -keyout "$TLS_KEY" -out "$TLS_CERT" -days 7 -subj /CN=localhost \
     -addext subjectAltName=DNS:localhost,IP:127.0.0.1 > "$TMP/openssl.out" 2>&1) \
    || die "openssl could not make the certificate: $(tail -3 "$TMP/openssl.out")"
  chmod 600 "$TLS_KEY"
  (umask 077 && cat "$TLS_CERT" "$TLS_KEY" > "$TLS_PEM")
  # wrk resumes TLS sessions when it reconnects (SSL_clear keeps the session), so
  # a preloaded shim drops the session for the full-handshake runs and counts
  # handshakes and resumptions in every https run (see wrk_tls_shim.c).
  WRK_SHIM=$TMP/wrk_tls_shim.so
  cc -O2 -shared -fPIC -o "$WRK_SHIM" "$BENCH_DIR/wrk_tls_shim.c" -ldl > "$TMP/shim-cc.out" 2>&1 \
    || die "could not build the wrk shim: $(tail -3 "$TMP/shim-cc.out")"
fi

# Origin.
render origin-nginx.conf.tmpl "$TMP/origin-nginx.conf"
start origin "$CPU_LOAD" nginx -e "$TMP/origin-error.log" -p "$TMP" -c "$TMP/origin-nginx.conf"
wait_http origin "http://127.0.0.1:$ORIGIN_PORT/tiny" 10 \
  || die "origin nginx did not start: $(tail -5 "$TMP/origin.out" "$TMP/origin-error.log" 2>/dev/null)"
[ "$AB" = 1 ] || printf 'direct\tok\twrk straight at the origin\n' >> "$STATUS"

why() {  # why FILE... -- the last error-looking lines of startup output, on one line
  local lines
  lines=$(grep -hiE 'alert|emerg|error|fatal|fail' "$@" 2>/dev/null | tail -2)
  [ -n "$lines" ] || lines=$(tail -qn 3 "$@" 2>/dev/null)
  echo "$lines" | tr -s '\n\t ' ' '
}

drop() {  # drop NAME REASON -- contender will not be measured
  note "$1 skipped: $2"
  stop "$1"
  printf '%s\tskipped\t%s\n' "$1" "$2" >> "$STATUS"
}

# nginx.
# Templates: nginx.conf.tmpl etc.; MODE=tls uses the *-tls.* variants.
T=""
[ "$MODE" = tls ] && T=-tls
if [ "$AB" = 0 ]; then   # A/B modes measure Portcullis against itself only
R_PORT=${PORT[nginx]} render "nginx$T.conf.tmpl" "$TMP/nginx.conf"
start nginx "$CPU_PROXY" nginx -e "$TMP/nginx-error.log" -p "$TMP" -c "$TMP/nginx.conf"
if wait_http nginx "$SCHEME://127.0.0.1:${PORT[nginx]}/tiny" 10; then
  printf 'nginx\tok\t%s\n' "$(nginx -v 2>&1 | sed 's/^nginx version: //')" >> "$STATUS"
else
  drop nginx "did not start: $(why "$TMP/nginx.out" "$TMP/nginx-error.log")"
fi

# HAProxy.
if command -v haproxy >/dev/null; then
  R_PORT=${PORT[haproxy]} render "haproxy$T.cfg.tmpl" "$TMP/haproxy.cfg"
  start haproxy "$CPU_PROXY" haproxy -db -f "$TMP/haproxy.cfg"
  if wait_http haproxy "$SCHEME://127.0.0.1:${PORT[haproxy]}/tiny" 10; then
    printf 'haproxy\tok\t%s\n' "$(haproxy -v 2>/dev/null | head -1)" >> "$STATUS"
  else
    drop haproxy "did not start: $(why "$TMP/haproxy.out")"
  fi
else
  printf 'haproxy\tskipped\thaproxy not installed\n' >> "$STATUS"; note "haproxy not installed; skipped"
fi
fi  # AB = 0

# Portcullis. MODE=encrypt starts a second instance, portcullis-enc, from
# portcullis-enc.toml.tmpl: the same settings plus [encryption] (a fresh keyring
# with one key, k1) and encrypt_body = true on /upload.
PORTCULLIS_BIN=$BUILD_DIR/bin/portcullis
PORTCULLISCTL_BIN=$BUILD_DIR/bin/portcullisctl
start_portcullis() {  # start_portcullis NAME TEMPLATE [VARIANT] -- VARIANT off drops the #@ON@ lines
  local name=$1 tmpl=$2 variant=${3:-}
  mkdir -p "$TMP/state" "$TMP/$name-state"   # portcullis.toml.tmpl uses TMP/state
  R_PORT=${PORT[$name]} R_ADMIN_PORT=${ADMIN_PORT[$name]} R_STATE=$TMP/$name-state R_LOG=$TMP/$name \
    R_KEYRING=$TMP/keyring.toml R_VARIANT=$variant render "$tmpl" "$TMP/$name.toml"
  if ! timeout 10 "$PORTCULLIS_BIN" -t -c "$TMP/$name.toml" > "$TMP/$name-check.out" 2>&1; then
    drop "$name" "config check (portcullis -t) failed: $(why "$TMP/$name-check.out")"
  else
    start "$name" "$CPU_PROXY" "$PORTCULLIS_BIN" -c "$TMP/$name.toml"
  fi
  if [ -z "${PID[$name]:-}" ]; then
    :
  elif wait_http "$name" "http://127.0.0.1:${ADMIN_PORT[$name]}/readyz" 15; then
    printf '%s\tok\t%s\n' "$name" "${PORTCULLIS_VERSION:-$PORTCULLIS_BIN}" >> "$STATUS"
  elif alive "${PID[$name]}"; then
    drop "$name" "admin /readyz not 200 within 15 s: $(why "$TMP/$name.out")"
  else
    drop "$name" "exited at startup: $(why "$TMP/$name.out")"
  fi
}
if [ -x "$PORTCULLIS_BIN" ]; then
  PORTCULLIS_VERSION=$( (timeout 5 "$PORTCULLIS_BIN" --version 2>/dev/null || true) | head -1)
  if [ "$AB" = 1 ]; then
    # The same template twice: "portcullis" without the #@ON@ lines, "portcullis-on" with them.
    if [ "$MODE" = limits ] || [ "$MODE" = auth ]; then
      (umask 077 && "$PORTCULLISCTL_BIN" token issue --store "$TMP/tokens.toml" --account bench --role bench \
         > "$TMP/token" 2> "$TMP/token-issue.out") || die "portcullisctl token issue failed: $(why "$TMP/token-issue.out")"
      AB_TOKEN=$(cat "$TMP/token")
      [[ $AB_TOKEN == pct_* ]] || die "portcullisctl token issue printed no token"
    fi
    start_portcullis portcullis "portcullis-$MODE.toml.tmpl" off
    start_portcullis portcullis-on "portcullis-$MODE.toml.tmpl" on
  elif [ "$MODE" = plain ]; then
    # Like for like with nginx and HAProxy (no access log); portcullis-log is
    # the same with the JSON access log on (portcullis.toml.tmpl).
    start_portcullis portcullis portcullis.toml.tmpl off
    start_portcullis portcullis-log portcullis.toml.tmpl on
  else
    start_portcullis portcullis "portcullis$T.toml.tmpl"
  fi
  if [ "$MODE" = encrypt ]; then
    if (umask 077 && "$PORTCULLISCTL_BIN" keys gen --keyring "$TMP/keyring.toml" --id "$ENC_KEY_ID" --activate \
          > "$TMP/keygen.out" 2>&1); then
      start_portcullis portcullis-enc portcullis-enc.toml.tmpl
    else
      printf 'portcullis-enc\tskipped\tportcullisctl keys gen failed: %s\n' "$(why "$TMP/keygen.out")" >> "$STATUS"
      note "portcullis-enc skipped: portcullisctl keys gen failed"
    fi
  fi
else
  [ "$AB" = 0 ] || die "MODE=$MODE measures Portcullis only, and $PORTCULLIS_BIN is not built"
  printf 'portcullis\tskipped\t%s not built\n' "$PORTCULLIS_BIN" >> "$STATUS"
  note "$PORTCULLIS_BIN not found; measuring the others only"
fi

# The floor (FLOOR=1, MODE=plain): see the header.
if [ "$FLOOR" = 1 ] && [ "$MODE" = plain ]; then
  FLOOR_BIN=$BUILD_DIR/bin/floor_forwarder
  if [ -x "$FLOOR_BIN" ]; then
    start floor "$CPU_PROXY" "$FLOOR_BIN" "${PORT[floor]}" "$ORIGIN_PORT"
    if wait_http floor "http://127.0.0.1:${PORT[floor]}/tiny" 10; then
      printf 'floor\tok\t%s\n' "libuv + llhttp, no features (bench/floor_forwarder.c)" >> "$STATUS"
    else
      drop floor "did not start: $(why "$TMP/floor.out")"
    fi
  else
    printf 'floor\tskipped\t%s not built\n' "$FLOOR_BIN" >> "$STATUS"; note "$FLOOR_BIN not found; floor skipped"
  fi
  FLOOR_URING_BIN=$BUILD_DIR/bin/floor_uring
  if [ -x "$FLOOR_URING_BIN" ]; then
    start floor-uring "$CPU_PROXY" "$FLOOR_URING_BIN" "${PORT[floor-uring]}" "$ORIGIN_PORT"
    if wait_http floor-uring "http://127.0.0.1:${PORT[floor-uring]}/tiny" 10; then
      printf 'floor-uring\tok\t%s\n' "io_uring + llhttp, no features (bench/floor_uring.c)" >> "$STATUS"
    else
      drop floor-uring "did not start: $(why "$TMP/floor-uring.out")"
    fi
  else
    printf 'floor-uring\tskipped\t%s not built (needs liburing-dev)\n' "$FLOOR_URING_BIN" >> "$STATUS"
    note "$FLOOR_URING_BIN not found (install liburing-dev and rebuild); floor-uring skipped"
  fi
fi

# Sanity: every contender returns the exact 64-byte body and carries a whole
# upload to the origin. The origin logs "$status $request_length $content_length
# $http_x_portcullis_encryption" for /upload only (the origin answers 200 only
# after the last body byte). A plain upload counts when $request_length (head +
# body) >= UPLOAD_BYTES; an encrypted one (portcullis-enc) when the body was
# exactly the pcx1 ciphertext length, carried the pcx1 header and arrived whole.
upload_lines() {  # upload_lines CONTENDER -> whole bodies of its kind in the origin log
  awk -v n="$UPLOAD_BYTES" -v ct="$ENC_BYTES" -v enc="$([ "${1:-}" = portcullis-enc ] && echo 1 || echo 0)" '
    $1 != 200 { next }
    enc == 1 && $3 == ct && $2 >= ct && $4 ~ /^pcx1;/ { c++ }
    enc == 0 && $2 >= n { c++ }
    END { print c + 0 }' "$TMP/origin-upload.log" 2>/dev/null || echo 0
}
ALL_CONTENDERS=(direct nginx haproxy portcullis)
[ "$MODE" = plain ] && ALL_CONTENDERS+=(portcullis-log)
[ "$MODE" = encrypt ] && ALL_CONTENDERS+=(portcullis-enc)
[ "$FLOOR" = 1 ] && [ "$MODE" = plain ] && ALL_CONTENDERS+=(floor floor-uring)
[ "$AB" = 1 ] && ALL_CONTENDERS=(portcullis portcullis-on)
# MODE=limits: every request (wrk's too) carries the bench token.
AUTH_HDR=()
case $MODE in limits|auth) AUTH_HDR=(-H "Authorization: Bearer ${AB_TOKEN:-}") ;; esac
CONTENDERS=()
for c in "${ALL_CONTENDERS[@]}"; do
  [ -n "${PID[$c]:-}" ] || [ "$c" = direct ] || continue
  base="$SCHEME://127.0.0.1:${PORT[$c]}"
  [ "$c" = direct ] && base="http://127.0.0.1:${PORT[$c]}"
  body=$(curl -s "${CURL_TLS[@]}" "${AUTH_HDR[@]}" --max-time 5 "$base/tiny" || true)
  if [ "$AB" = 1 ]; then   # GET only in the A/B modes; their own checks follow below
    [ "$body" = "$TINY_BODY" ] || die "$c: GET /tiny did not return the 64-byte origin body (MODE=$MODE compares two Portcullis instances; both must work)"
    CONTENDERS+=("$c")
    continue
  fi
  before=$(upload_lines "$c")
  code=$(http_code --max-time 60 -H 'Expect:' -H 'Content-Type: application/octet-stream' \
           --data-binary "@$TMP/body.bin" "$base/upload")
  after=$(upload_lines "$c")
  if [ "$body" != "$TINY_BODY" ]; then
    [ "$c" = direct ] && die "origin returned a wrong /tiny body"
    drop "$c" "GET /tiny did not return the 64-byte origin body"; continue
  fi
  if [ "$code" != 200 ] || [ "$after" -le "$before" ]; then
    [ "$c" = direct ] && die "origin upload check failed (HTTP $code)"
    drop "$c" "POST /upload of $UPLOAD_BYTES bytes: HTTP $code, origin saw $(( after - before )) whole bodies$(
      [ "$c" = portcullis-enc ] && echo " of $ENC_BYTES ciphertext bytes")"; continue
  fi
  CONTENDERS+=("$c")
  if [ "$MODE" = tls ] && [ "$c" != direct ]; then
    # What wrk's OpenSSL negotiates with this proxy (protocol, cipher, key
    # exchange), and whether responses carry HSTS; recorded in results.json.
    neg=$(timeout 5 openssl s_client -connect "127.0.0.1:${PORT[$c]}" -servername localhost </dev/null 2>/dev/null \
            | awk -F': ' '/^New, / { sub(/^New, /, ""); sub(/, Cipher is /, " "); p = $0 }
                          /^Server Temp Key/ { k = $2; sub(/,.*/, "", k) } END { print p, k }')
    hsts=$(curl -s -k -o /dev/null -D - --max-time 5 "$base/tiny" | tr -d '\r' | awk -F': ' 'tolower($1) == "strict-transport-security" { print $2 }')
    printf '%s\t%s\t%s\n' "$c" "${neg:-unknown}" "${hsts:-none}" >> "$TMP/tls-info.tsv"
  fi
done

# A/B modes: the feature must really be on in portcullis-on and off in
# portcullis, or the ratio would mean nothing. Each check is recorded (in
# results.json) and a mismatch stops the script.
AB_CHECKS=$TMP/ab-checks.tsv
: > "$AB_CHECKS"
ab_check() {  # ab_check CONTENDER WHAT EXPECTED ACTUAL
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$AB_CHECKS"
  [ "$3" = "$4" ] || die "MODE=$MODE: $1 is not what the comparison needs: $2: expected $3, got $4"
}
policies() {  # policies URL CURL_ARGS... -> the RateLimit-Policy names of a GET, sorted, comma-separated ("none")
  local url=$1 p; shift
  p=$(curl -s -o /dev/null -D - --max-time 5 "$@" "$url" | tr -d '\r' \
        | awk -F': ' 'tolower($1) == "ratelimit-policy" { n = split($2, m, ", "); for (i = 1; i <= n; i++) { split(m[i], a, "\""); print a[2] } }' \
        | sort | paste -sd, -)
  echo "${p:-none}"
}
metrics_to() {  # metrics_to CONTENDER FILE -- the admin /metrics text
  curl -s --max-time 5 "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" > "$2" || die "$1: admin /metrics unreachable"
}
if [ "$AB" = 1 ]; then
  [ ${#CONTENDERS[@]} = 2 ] || die "MODE=$MODE needs both portcullis and portcullis-on running"
  for c in portcullis portcullis-on; do
    base="http://127.0.0.1:${PORT[$c]}"
    on=0; [ "$c" = portcullis-on ] && on=1
    if [ "$MODE" = auth ]; then
      # The token check + RBAC only in -on: without a token 401 there, 200 in the other.
      ab_check "$c" "GET /tiny without a token" "$([ $on = 1 ] && echo 401 || echo 200)" "$(http_code "$base/tiny")"
      ab_check "$c" "GET /tiny with the bench token" 200 "$(http_code "${AUTH_HDR[@]}" "$base/tiny")"
      ab_check "$c" "GET /other with the token (RBAC; the origin has no /other)" "$([ $on = 1 ] && echo 403 || echo 404)" \
        "$(http_code "${AUTH_HDR[@]}" "$base/other")"
    elif [ "$MODE" = limits ]; then
      # Authentication is on in both (so the token limit applies); limits only in -on.
      ab_check "$c" "GET /tiny without a token" 401 "$(http_code "$base/tiny")"
      ab_check "$c" "RateLimit-Policy names on an allowed GET" "$([ $on = 1 ] && echo ip,route,token || echo none)" \
        "$(policies "$base/tiny" "${AUTH_HDR[@]}")"
    else
      json=(-H 'Content-Type: application/json' --data-binary)
      ab_check "$c" "DELETE /tiny (methods)" "$([ $on = 1 ] && echo 405 || echo 200)" "$(http_code -X DELETE "$base/tiny")"
      ab_check "$c" "POST text/plain (content_types)" "$([ $on = 1 ] && echo 415 || echo 200)" \
        "$(http_code -H 'Content-Type: text/plain' --data-binary 'hello' "$base/tiny")"
      ab_check "$c" "POST bad JSON (validate_json)" "$([ $on = 1 ] && echo 400 || echo 200)" \
        "$(http_code "${json[@]}" '{"a":[1,2' "$base/tiny")"
      ab_check "$c" "POST good JSON" 200 "$(http_code "${json[@]}" '{"a":[1,2]}' "$base/tiny")"
      ab_check "$c" "GET /tiny" 200 "$(http_code "$base/tiny")"
    fi
    metrics_to "$c" "$TMP/ab-$c-metrics-before.txt"
  done
fi

# --- measurement -------------------------------------------------------------
proc_ticks() {  # utime+stime (fields 14, 15 of /proc/PID/stat), clock ticks
  local s
  [ -n "${1:-}" ] || { echo null; return; }
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo null; return; }
  s=${s##*) }          # drop "pid (comm) "; field 3 (state) is now $1
  set -- $s
  echo $(( ${12} + ${13} ))
}
host_ticks() {  # all-CPU "user nice system idle iowait irq softirq steal" ticks, as a JSON list
  awk '/^cpu / { printf "[%s,%s,%s,%s,%s,%s,%s,%s]", $2, $3, $4, $5, $6, $7, $8, $9; exit }' /proc/stat
}
# CPU (user+sys) of this shell's reaped children, in ms, from a saved `times`
# output. `times` must run in this shell (not in $(...)) to see wrk.
children_ms() {
  awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /m|s/); t += a[1] * 60 + a[2] } printf "%d", t * 1000 }' "$1"
}

# run_wrk CONTENDER ROUND TEST -- ROUND 0 = warm-up (not recorded)
# TEST: tiny (GET /tiny, keep-alive), upload (POST /upload; plain mode only),
# full / resumed (MODE=tls: GET /tiny with "Connection: close", so every request
# is a new TLS connection; full drops wrk's saved session, resumed keeps it).
run_wrk() {
  local c=$1 round=$2 test=$3 conns=$CONNS dur=$DURATION script=$BENCH_DIR/report.lua path=/tiny
  if [ "$test" = upload ]; then conns=$UPLOAD_CONNS; script=$BENCH_DIR/upload.lua; path=/upload; fi
  [ "$round" = 0 ] && dur=$WARMUP
  local ppid="" raw="$OUT/raw/r${round}-$c-$test.txt"
  [ "$c" = direct ] || ppid=${PID[$c]}
  [ "$round" = 0 ] && raw=$TMP/warmup.txt

  local scheme=http hdr=() envs=(UPLOAD_BYTES="$UPLOAD_BYTES")
  if [ "$MODE" = tls ] && [ "$c" != direct ]; then
    scheme=https
    envs+=(LD_PRELOAD="$WRK_SHIM" PCBENCH_TLS_FULL=0)
    case $test in
      full) conns=$HS_CONNS; hdr=(-H "Connection: close"); envs+=(PCBENCH_TLS_FULL=1) ;;
      resumed) conns=$HS_CONNS; hdr=(-H "Connection: close") ;;
    esac
  fi
  hdr+=("${AUTH_HDR[@]}")
  local p0 o0 h0 w0 u0 p1 o1 h1 w1 u1 cmd=(wrk -t1 -c"$conns" -d"${dur}s" --latency --timeout 10s "${hdr[@]}" -s "$script" "$scheme://127.0.0.1:${PORT[$c]}$path")
  [ "$PIN" = 1 ] && cmd=(taskset -c "$CPU_LOAD" "${cmd[@]}")
  cmd=(env "${envs[@]}" "${cmd[@]}")
  u0=$(upload_lines "$c"); times > "$TMP/times0"; h0=$(host_ticks); o0=$(proc_ticks "${PID[origin]}"); p0=$(proc_ticks "$ppid")
  "${cmd[@]}" > "$raw" 2>&1 &
  local wpid=$! wrc=0
  STARTED[$wpid]=1
  wait "$wpid" || wrc=$?
  unset "STARTED[$wpid]"
  p1=$(proc_ticks "$ppid"); o1=$(proc_ticks "${PID[origin]}"); h1=$(host_ticks); times > "$TMP/times1"; u1=$(upload_lines "$c")
  w0=$(children_ms "$TMP/times0"); w1=$(children_ms "$TMP/times1")
  [ "$round" = 0 ] && return 0

  local line tls=null
  line=$(grep -m1 '^PCBENCH ' "$raw" | cut -d' ' -f2-) || true
  if [ "$scheme" = https ]; then tls=$(grep -m1 '^PCTLS ' "$raw" | cut -d' ' -f2-) || true; [ -n "$tls" ] || tls=null; fi
  if [ -z "$line" ]; then
    note "wrk failed for $c $test round $round (exit $wrc); see $raw"
    line=null
  fi
  alive "${PID[origin]}" || die "the origin exited during the $c $test run: $(why "$TMP/origin.out" "$TMP/origin-error.log")"
  if [ -n "$ppid" ] && ! alive "$ppid"; then
    note "$c exited during the $test run of round $round; dropping it"
    printf '%s\tskipped\texited during round %s (%s)\n' "$c" "$round" "$(why "$TMP/$c.out" "$TMP/$c-error.log")" >> "$STATUS"
    unset "PID[$c]"
  fi
  local pd=null od=null
  [ "$p0" != null ] && [ "$p1" != null ] && pd=$(( p1 - p0 ))
  [ "$o0" != null ] && [ "$o1" != null ] && od=$(( o1 - o0 ))
  if [ "$MODE" = tls ]; then
    printf '{"contender":"%s","round":%d,"test":"%s","scheme":"%s","connections":%d,"proxy_ticks":%s,"origin_ticks":%s,"wrk_cpu_ms":%d,"host_stat_before":%s,"host_stat_after":%s,"origin_whole_uploads":%d,"tls_client":%s,"wrk":%s}\n' \
      "$c" "$round" "$test" "$scheme" "$conns" "$pd" "$od" $(( w1 - w0 )) "$h0" "$h1" $(( u1 - u0 )) "$tls" "$line" >> "$OUT/runs.jsonl"
  else
    printf '{"contender":"%s","round":%d,"test":"%s","connections":%d,"proxy_ticks":%s,"origin_ticks":%s,"wrk_cpu_ms":%d,"host_stat_before":%s,"host_stat_after":%s,"origin_whole_uploads":%d,"wrk":%s}\n' \
      "$c" "$round" "$test" "$conns" "$pd" "$od" $(( w1 - w0 )) "$h0" "$h1" $(( u1 - u0 )) "$line" >> "$OUT/runs.jsonl"
  fi

  # One progress line.
  [ "$line" = null ] && return 0
  awk -v c="$c" -v r="$round" -v t="$test" -v pd="$pd" -v hz="$CLK_TCK" -v ub="$UPLOAD_BYTES" -v j="$line" -v R="$ROUNDS" '
    function get(k,  m) { if (match(j, "\"" k "\":[0-9.]+")) { m = substr(j, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0 } return 0 }
    BEGIN {
      n = get("requests"); d = get("duration_us") / 1e6; rps = d > 0 ? n / d : 0
      if (t == "full" || t == "resumed")
        s = sprintf("  round %d/%d  %-14s %-7s %8.0f conn/s  p50 %6d us  p99 %6d us", r, R, c, t, rps, get("p50_us"), get("p99_us"))
      else
        s = sprintf("  round %d/%d  %-14s %-6s %9.0f req/s  p50 %6d us  p99 %6d us", r, R, c, t, rps, get("p50_us"), get("p99_us"))
      if (t == "upload") s = s sprintf("  %7.0f MB/s", rps * ub / 1e6)
      if (pd != "null" && n > 0) s = s sprintf("  proxy CPU %6.1f us/%s", pd * 1e6 / hz / n, (t == "full" || t == "resumed") ? "conn" : "req")
      e = get("err_connect") + get("err_read") + get("err_write") + get("err_timeout") + get("err_status")
      if (e > 0) s = s sprintf("  (%d errors)", e)
      print s
    }'
}

[ ${#CONTENDERS[@]} -ge 1 ] || die "nothing to measure"
if [ "$MODE" = tls ]; then
  # direct: plain keep-alive GET only (the origin has no TLS); proxies: keep-alive
  # HTTPS, then one new TLS connection per request, full and resumed handshakes.
  echo "Contenders: ${CONTENDERS[*]}  (~$(( (${#CONTENDERS[@]} * 3 - 2) * (DURATION * ROUNDS + WARMUP) )) s)"
  if [ "$WARMUP" -gt 0 ]; then
    for c in "${CONTENDERS[@]}"; do
      run_wrk "$c" 0 tiny
      [ "$c" = direct ] || { run_wrk "$c" 0 full; run_wrk "$c" 0 resumed; }
    done
  fi
  for round in $(seq "$ROUNDS"); do
    for c in "${CONTENDERS[@]}"; do
      for test in tiny full resumed; do
        [ "$c" = direct ] || [ -n "${PID[$c]:-}" ] || continue 2   # dropped mid-way
        [ "$c" = direct ] && [ "$test" != tiny ] && continue
        run_wrk "$c" "$round" "$test"
      done
    done
  done
elif [ "$MODE" = encrypt ]; then
  # Uploads only: plain forwarding (direct, nginx, HAProxy, portcullis) vs
  # portcullis-enc sealing every body into pcx1; the order reverses every other
  # round so slow drift hits everybody alike.
  echo "Contenders: ${CONTENDERS[*]}  (~$(( ${#CONTENDERS[@]} * (DURATION * ROUNDS + WARMUP) + 15 )) s)"
  if [ "$WARMUP" -gt 0 ]; then
    for c in "${CONTENDERS[@]}"; do run_wrk "$c" 0 upload; done
  fi
  for round in $(seq "$ROUNDS"); do
    order=("${CONTENDERS[@]}")
    if [ $(( round % 2 )) = 0 ]; then
      order=(); for (( i = ${#CONTENDERS[@]} - 1; i >= 0; i-- )); do order+=("${CONTENDERS[$i]}"); done
    fi
    for c in "${order[@]}"; do
      [ "$c" = direct ] || [ -n "${PID[$c]:-}" ] || continue   # dropped mid-way
      run_wrk "$c" "$round" upload
    done
  done
  # The raw sealing cost in the same session: BoringSSL AES-256-GCM on 64 KiB
  # (in place, and over an 8 MiB body into a segment buffer) and the two pcx1
  # sealers fed 16 KiB slices into 64 KiB segments (the sized one, in place, is
  # what the proxy runs for a Content-Length body; the buffered one for chunked). Google Benchmark's bytes_per_second
  # is per CPU second of the benchmark thread.
  PCX1_BENCH=$BUILD_DIR/bin/pcx1_bench
  if [ -x "$PCX1_BENCH" ]; then
    echo "  pcx1_bench (raw sealing cost) ..."
    cmd=("$PCX1_BENCH" '--benchmark_filter=^BM_(RawAes256GcmSeal/65536|RawAes256GcmSealBody/65536|Pcx1SealerStream/65536/16384|Pcx1SizedSealerInPlace/65536/16384)$'
         --benchmark_min_time=0.5 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
         --benchmark_out_format=json "--benchmark_out=$OUT/pcx1_bench.json")
    [ "$PIN" = 1 ] && cmd=(taskset -c "$CPU_PROXY" "${cmd[@]}")
    "${cmd[@]}" > "$OUT/raw/pcx1_bench.txt" 2>&1 &
    bpid=$!; STARTED[$bpid]=1
    wait "$bpid" || note "pcx1_bench failed; see $OUT/raw/pcx1_bench.txt"
    unset "STARTED[$bpid]"
  else
    note "$PCX1_BENCH not built (configure with -DPORTCULLIS_BENCH=ON); no raw sealing cost"
  fi
elif [ "$AB" = 1 ]; then
  # portcullis (off) and portcullis-on back to back, the order reversed every
  # other round so slow drift in the host's load hits both alike.
  echo "Contenders: portcullis ($MODE off), portcullis-on ($MODE on)  (~$(( 2 * (DURATION * ROUNDS + WARMUP) )) s)"
  if [ "$WARMUP" -gt 0 ]; then
    for c in "${CONTENDERS[@]}"; do run_wrk "$c" 0 tiny; done
  fi
  for round in $(seq "$ROUNDS"); do
    order=(portcullis portcullis-on)
    [ $(( round % 2 )) = 0 ] && order=(portcullis-on portcullis)
    for c in "${order[@]}"; do
      [ -n "${PID[$c]:-}" ] || die "$c exited during the runs: $(why "$TMP/$c.out")"
      run_wrk "$c" "$round" tiny
    done
  done
  for c in "${CONTENDERS[@]}"; do
    [ -n "${PID[$c]:-}" ] || die "$c exited during the runs: $(why "$TMP/$c.out")"
    metrics_to "$c" "$TMP/ab-$c-metrics-after.txt"
  done
elif [ "$WARMUP" -gt 0 ]; then
  for c in "${CONTENDERS[@]}"; do run_wrk "$c" 0 tiny; [[ $c = floor* ]] || run_wrk "$c" 0 upload; done
fi
if [ "$MODE" = plain ]; then
for round in $(seq "$ROUNDS"); do
  for c in "${CONTENDERS[@]}"; do
    [ "$c" = direct ] || [ -n "${PID[$c]:-}" ] || continue   # dropped mid-way
    run_wrk "$c" "$round" tiny
    [ "$c" = direct ] || [ -n "${PID[$c]:-}" ] || continue
    [[ $c = floor* ]] && continue   # a yardstick for per-request cost only: no upload flow control worth measuring
    run_wrk "$c" "$round" upload
  done
done
fi

# --- system calls per request (SYSCALLS=1) --------------------------------------
# The proxies' kernel work per keep-alive GET: a 3 s wrk run like the
# rounds' while `perf stat` counts every sys_enter tracepoint in the proxy's
# threads (from just before the run to just after it). Not timed: perf's
# tracing slows the proxy.
if [ "$SYSCALLS" = 1 ] && [ "$MODE" = plain ]; then
  if ! command -v perf > /dev/null; then
    note "SYSCALLS=1 needs perf (Debian package linux-perf); skipped"
  else
    : > "$OUT/syscalls.txt"
    for c in "${CONTENDERS[@]}"; do
      [ "$c" = direct ] || [ -z "${PID[$c]:-}" ] && continue
      stat=$TMP/syscalls-$c.csv raw=$OUT/raw/syscalls-$c.txt
      perf stat -x, -e 'syscalls:sys_enter_*' -o "$stat" -p "${PID[$c]}" -- sleep 3.5 > /dev/null 2>&1 &
      spid=$!
      STARTED[$spid]=1
      sleep 0.2  # perf attached before the load starts
      wrk -t1 -c"$CONNS" -d3s "${AUTH_HDR[@]}" "http://127.0.0.1:${PORT[$c]}/tiny" > "$raw" 2>&1 || true
      wait "$spid" || true
      unset "STARTED[$spid]"
      n=$(awk '/requests in/ { print $1; exit }' "$raw")
      if [ -z "$n" ] || [ ! -s "$stat" ]; then note "no system call count for $c (see $raw)"; continue; fi
      awk -F, -v c="$c" -v n="$n" '$1 ~ /^[0-9]+$/ && $1 > 0 {
          sub(/^syscalls:sys_enter_/, "", $3); per[$3] = $1 / n }
        END { line = sprintf("%-12s %9d requests:", c, n)
          # largest first, those above 0.01 per request
          while (1) { best = ""; for (k in per) if (best == "" || per[k] > per[best]) best = k
            if (best == "" || per[best] < 0.01) break
            line = line sprintf(" %s %.2f", best, per[best]); delete per[best] }
          print line }' "$stat" >> "$OUT/syscalls.txt"
    done
    echo "System calls per GET /tiny (perf stat, one 3 s run each, $CONNS connections):"
    sed 's/^/  /' "$OUT/syscalls.txt"
  fi
fi

# --- results.json, table, chart ------------------------------------------------
META_NPROC=$(nproc) \
META_CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) \
META_KERNEL=$(uname -sr) \
META_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) \
META_NGINX=$(nginx -v 2>&1 | sed 's/^nginx version: //') \
META_HAPROXY=$( (haproxy -v 2>/dev/null || true) | head -1) \
META_WRK=$( (wrk -v 2>&1 || true) | head -1 | awk '{ print $1, $2 }') \
META_PORTCULLIS=${PORTCULLIS_VERSION:-} \
META_GIT=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) \
META_LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg) \
S_DURATION=$DURATION S_CONNS=$CONNS S_UPLOAD_CONNS=$UPLOAD_CONNS S_ROUNDS=$ROUNDS S_UPLOAD_MB=$UPLOAD_MB \
S_UPLOAD_BYTES=$UPLOAD_BYTES S_PIN=$PIN S_WARMUP=$WARMUP S_CLK_TCK=$CLK_TCK S_BUILD_DIR=$BUILD_DIR \
S_MODE=$MODE S_HS_CONNS=$HS_CONNS S_TLS_INFO=$TMP/tls-info.tsv \
S_ENC_BYTES=$ENC_BYTES S_ENC_SEGMENT=$ENC_SEGMENT S_ENC_KEY_ID=$ENC_KEY_ID \
S_AB_CHECKS=$AB_CHECKS S_AB_METRICS=$TMP/ab- \
python3 - "$OUT" "$STATUS" <<'PY'
import json, math, os, statistics, sys

out, status_file = sys.argv[1], sys.argv[2]
E = os.environ
order = ["direct", "nginx", "haproxy", "portcullis"]
hz = int(E["S_CLK_TCK"])
upload_bytes = int(E["S_UPLOAD_BYTES"])
mode = E["S_MODE"]
tls = mode == "tls"
enc = mode == "encrypt"
if enc:
    order.append("portcullis-enc")
ab = mode in ("limits", "validate", "auth")  # Portcullis with one feature off vs on
if ab:
    order = ["portcullis", "portcullis-on"]
# FLOOR=1: the featureless forwarders that ran too (libuv + llhttp; io_uring + llhttp)
ran = {line.split("\t", 1)[0] for line in open(status_file)}
floors = [f for f in ("floor", "floor-uring") if f in ran]
if not (ab or enc or tls):
    order.append("portcullis-log")  # the same Portcullis with its access log on
    order += floors
HS_TESTS = ("full", "resumed")  # MODE=tls: one new TLS connection per request

contenders = {}
for line in open(status_file):
    name, state, detail = line.rstrip("\n").split("\t", 2)
    if state == "ok":
        contenders[name] = {"status": "ok", "detail": detail}
    else:  # a later "skipped" (e.g. died mid-run) overrides "ok"
        contenders[name] = {"status": "skipped", "reason": detail}

runs = []
for line in open(os.path.join(out, "runs.jsonl")):
    r = json.loads(line)
    w = r.pop("wrk")
    if w is None or w["requests"] == 0:
        r["wrk"] = w
        r["failed"] = True
        runs.append(r)
        continue
    n, dur = w["requests"], w["duration_us"] / 1e6
    rec = {
        "contender": r["contender"], "round": r["round"], "test": r["test"],
        "connections": r["connections"], "requests": n, "duration_s": round(dur, 3),
        "rps": n / dur if dur else 0.0,
        "p50_us": w["p50_us"], "p90_us": w["p90_us"], "p99_us": w["p99_us"],
        "p999_us": w["p999_us"], "mean_us": w["lat_mean_us"], "max_us": w["lat_max_us"],
        "response_bytes_per_req": w["bytes"] / n if n else None,
        "errors": {k[4:]: w[k] for k in w if k.startswith("err_")},
        "proxy_cpu_s": r["proxy_ticks"] / hz if r["proxy_ticks"] is not None else None,
        "origin_cpu_s": r["origin_ticks"] / hz if r["origin_ticks"] is not None else None,
        "wrk_cpu_s": r["wrk_cpu_ms"] / 1000,
    }
    rec["proxy_cpu_us_per_req"] = rec["proxy_cpu_s"] * 1e6 / n if n and rec["proxy_cpu_s"] is not None else None
    rec["origin_cpu_us_per_req"] = rec["origin_cpu_s"] * 1e6 / n if n and rec["origin_cpu_s"] is not None else None
    # Host-wide CPU during the run, in % of one core. irq+softirq time (loopback
    # packet processing) is not charged to any process; "other" is process time
    # outside proxy, origin and wrk (concurrent builds, ...): the noise indicator.
    d = [b - a for a, b in zip(r["host_stat_before"], r["host_stat_after"])]
    user, nice, system, idle, iowait, irq, softirq, steal = d
    wall = sum(d) / int(E["META_NPROC"]) / hz  # seconds
    known = sum(x or 0 for x in (rec["proxy_cpu_s"], rec["origin_cpu_s"], rec["wrk_cpu_s"]))
    pct = (lambda t: round(100 * t / wall, 1)) if wall else (lambda t: None)
    rec["host_cpu_pct_of_core"] = {
        "busy": pct((user + nice + system + irq + softirq + steal) / hz),
        "irq_softirq": pct((irq + softirq) / hz), "steal": pct(steal / hz)}
    rec["other_cpu_pct_of_core"] = pct(max(0.0, (user + nice + system) / hz - known))
    if tls:
        rec["scheme"] = r["scheme"]
        rec["tls_client"] = r.get("tls_client")  # handshakes wrk completed / resumed (wrk_tls_shim.c)
        if r["test"] in HS_TESTS:
            rec["conn_per_s"] = rec["rps"]
            rec["proxy_cpu_us_per_conn"] = rec["proxy_cpu_us_per_req"]
    if r["test"] == "upload":
        mib = upload_bytes / 1048576
        rec["upload_bytes"] = upload_bytes
        rec["upload_MBps"] = rec["rps"] * upload_bytes / 1e6
        rec["proxy_cpu_us_per_MiB"] = rec["proxy_cpu_us_per_req"] / mib if rec["proxy_cpu_us_per_req"] is not None else None
        rec["origin_cpu_us_per_MiB"] = rec["origin_cpu_us_per_req"] / mib if rec["origin_cpu_us_per_req"] is not None else None
        # The origin only answers after the last body byte, so every upload wrk
        # counts as done must appear here as a whole body at the origin.
        rec["origin_whole_uploads"] = r["origin_whole_uploads"]
        ok = n - w["err_status"]
        rec["origin_saw_every_upload"] = r["origin_whole_uploads"] >= ok
    runs.append(rec)

def med(c, test, key):
    xs = [r[key] for r in runs if r["contender"] == c and r["test"] == test
          and not r.get("failed") and r.get(key) is not None]
    return statistics.median(xs) if xs else None

def spread(c, test, key):
    xs = [r[key] for r in runs if r["contender"] == c and r["test"] == test and r.get(key) is not None]
    return [min(xs), max(xs)] if xs else None

measured = [c for c in order if any(r["contender"] == c and not r.get("failed") for r in runs)]
medians = {}
for c in measured if tls else []:
    d = medians[c] = {
        "rps": med(c, "tiny", "rps"), "rps_range": spread(c, "tiny", "rps"),
        "p50_us": med(c, "tiny", "p50_us"), "p99_us": med(c, "tiny", "p99_us"),
        "proxy_cpu_us_per_req": med(c, "tiny", "proxy_cpu_us_per_req"),
        "origin_cpu_us_per_req": med(c, "tiny", "origin_cpu_us_per_req"),
        "other_cpu_pct_of_core": med(c, "tiny", "other_cpu_pct_of_core"),
    }
    for t in HS_TESTS:
        d[t + "_conn_per_s"] = med(c, t, "conn_per_s")
        d[t + "_conn_per_s_range"] = spread(c, t, "conn_per_s")
        d[t + "_p50_us"] = med(c, t, "p50_us")
        d[t + "_p99_us"] = med(c, t, "p99_us")
        d[t + "_proxy_cpu_us_per_conn"] = med(c, t, "proxy_cpu_us_per_conn")
        # CPU of the handshake itself, roughly: a new connection with one request
        # minus one request on a kept-alive connection.
        a, b = d[t + "_proxy_cpu_us_per_conn"], d["proxy_cpu_us_per_req"]
        d[t + "_handshake_cpu_us"] = a - b if a is not None and b is not None else None
for c in measured if enc else []:
    medians[c] = {
        "upload_MBps": med(c, "upload", "upload_MBps"),
        "upload_MBps_range": spread(c, "upload", "upload_MBps"),
        "upload_p50_us": med(c, "upload", "p50_us"), "upload_p99_us": med(c, "upload", "p99_us"),
        "upload_proxy_cpu_us_per_MiB": med(c, "upload", "proxy_cpu_us_per_MiB"),
        "upload_origin_cpu_us_per_MiB": med(c, "upload", "origin_cpu_us_per_MiB"),
        "other_cpu_pct_of_core": med(c, "upload", "other_cpu_pct_of_core"),
    }
for c in measured if ab else []:
    medians[c] = {
        "rps": med(c, "tiny", "rps"), "rps_range": spread(c, "tiny", "rps"),
        "p50_us": med(c, "tiny", "p50_us"), "p99_us": med(c, "tiny", "p99_us"),
        "proxy_cpu_us_per_req": med(c, "tiny", "proxy_cpu_us_per_req"),
        "origin_cpu_us_per_req": med(c, "tiny", "origin_cpu_us_per_req"),
        "other_cpu_pct_of_core": med(c, "tiny", "other_cpu_pct_of_core"),
    }
for c in [] if tls or enc or ab else measured:
    medians[c] = {
        "rps": med(c, "tiny", "rps"), "rps_range": spread(c, "tiny", "rps"),
        "p50_us": med(c, "tiny", "p50_us"), "p99_us": med(c, "tiny", "p99_us"),
        "proxy_cpu_us_per_req": med(c, "tiny", "proxy_cpu_us_per_req"),
        "origin_cpu_us_per_req": med(c, "tiny", "origin_cpu_us_per_req"),
        "upload_MBps": med(c, "upload", "upload_MBps"),
        "upload_MBps_range": spread(c, "upload", "upload_MBps"),
        "upload_p99_us": med(c, "upload", "p99_us"),
        "upload_proxy_cpu_us_per_MiB": med(c, "upload", "proxy_cpu_us_per_MiB"),
        "other_cpu_pct_of_core": med(c, "tiny", "other_cpu_pct_of_core"),
    }

def ratio(a, b, key):
    if a in medians and b in medians and medians[a][key] and medians[b][key]:
        return medians[a][key] / medians[b][key]
    return None

ratio_keys = ["rps", "proxy_cpu_us_per_req", "p99_us", "upload_MBps"]
if tls:
    ratio_keys = ["rps", "proxy_cpu_us_per_req", "p99_us", "full_proxy_cpu_us_per_conn",
                  "full_handshake_cpu_us", "full_conn_per_s", "resumed_proxy_cpu_us_per_conn"]
pairs = [("portcullis", "nginx"), ("portcullis", "haproxy"), ("haproxy", "nginx")]
if "portcullis-log" in order:
    pairs += [("portcullis-log", "nginx"), ("portcullis-log", "haproxy"), ("portcullis-log", "portcullis")]
for f in ("floor", "floor-uring"):
    if f in order:
        pairs += [("portcullis", f), (f, "nginx"), (f, "haproxy")]
if "floor" in order and "floor-uring" in order:
    pairs += [("floor-uring", "floor")]
if ab:
    ratio_keys = ["rps", "proxy_cpu_us_per_req", "p99_us"]
    pairs = [("portcullis-on", "portcullis")]
if enc:
    ratio_keys = ["upload_MBps", "upload_proxy_cpu_us_per_MiB", "upload_p99_us"]
    pairs = [("portcullis-enc", "haproxy"), ("portcullis-enc", "nginx"), ("portcullis-enc", "portcullis")] + pairs
ratios = {}
for a, b in pairs:
    ratios[f"{a}/{b}"] = {k: ratio(a, b, k) for k in ratio_keys}

# MODE=encrypt: the raw sealing cost from pcx1_bench (same session) and the check
# CPU per encrypted MiB <= plain CPU per MiB + 1.1 x raw sealing cost per MiB.
sealing = None
if enc:
    sealing = {"benchmarks": {}}
    bench_json = os.path.join(out, "pcx1_bench.json")
    if os.path.exists(bench_json):
        for b in json.load(open(bench_json)).get("benchmarks", []):
            if b.get("aggregate_name", "median") != "median" or "bytes_per_second" not in b:
                continue
            name = b.get("run_name", b["name"])
            # bytes_per_second is per CPU second (no UseRealTime in pcx1_bench).
            sealing["benchmarks"][name] = {"MBps": b["bytes_per_second"] / 1e6,
                                           "cpu_us_per_MiB": 1048576 / b["bytes_per_second"] * 1e6}
    bm = sealing["benchmarks"]
    raw = bm.get("BM_RawAes256GcmSeal/65536", {}).get("cpu_us_per_MiB")
    raw_body = bm.get("BM_RawAes256GcmSealBody/65536", {}).get("cpu_us_per_MiB")
    sealer = bm.get("BM_Pcx1SealerStream/65536/16384", {}).get("cpu_us_per_MiB")
    sized = bm.get("BM_Pcx1SizedSealerInPlace/65536/16384", {}).get("cpu_us_per_MiB")
    e_cpu = medians.get("portcullis-enc", {}).get("upload_proxy_cpu_us_per_MiB")
    p_cpu = medians.get("portcullis", {}).get("upload_proxy_cpu_us_per_MiB")
    sealing.update({
        "raw_seal_us_per_MiB": raw, "raw_seal_body_us_per_MiB": raw_body, "pcx1_sealer_us_per_MiB": sealer,
        "pcx1_sized_sealer_us_per_MiB": sized,
        "encrypted_cpu_us_per_MiB": e_cpu, "plain_cpu_us_per_MiB": p_cpu,
        "extra_cpu_us_per_MiB": e_cpu - p_cpu if e_cpu is not None and p_cpu is not None else None,
    })
    if None not in (raw, e_cpu, p_cpu):
        sealing["budget_us_per_MiB"] = p_cpu + 1.1 * raw
        sealing["extra_over_raw"] = (e_cpu - p_cpu) / raw
        sealing["within_budget"] = e_cpu <= p_cpu + 1.1 * raw
    if None not in (raw_body, e_cpu, p_cpu):
        sealing["budget_body_us_per_MiB"] = p_cpu + 1.1 * raw_body
        sealing["within_budget_body"] = e_cpu <= p_cpu + 1.1 * raw_body
# A/B modes: what the feature costs (on/off ratios, median and per round) and
# whether the comparison is valid: the feature was on (checks made before the
# runs) and refused nothing during them (admin metrics of both instances,
# before and after the runs, warm-up included).
ab_result = None
if ab:
    def prom(path):
        vals = {}
        if os.path.exists(path):
            for line in open(path):
                if line.startswith("#") or " " not in line:
                    continue
                k, v = line.rsplit(" ", 1)
                try:
                    vals[k] = float(v)
                except ValueError:
                    pass
        return vals

    def delta(c):
        a, b = prom(E["S_AB_METRICS"] + c + "-metrics-before.txt"), prom(E["S_AB_METRICS"] + c + "-metrics-after.txt")
        d = {k: b[k] - a.get(k, 0.0) for k in b}
        def total(pred):
            return int(sum(v for k, v in d.items() if pred(k)))
        req = lambda k: k.startswith("portcullis_requests_total{")
        res = {
            "answered": total(req),
            "answered_2xx": total(lambda k: req(k) and 'status="2' in k),
            "answered_429": total(lambda k: req(k) and 'status="429"' in k),
            "refused_by_filters": total(lambda k: k.startswith("portcullis_refusals_total{")),
        }
        res["auth_success"] = total(lambda k: k == "portcullis_auth_success_total")
        if mode == "limits":
            res["ratelimit_allowed"] = {k.split('kind="')[1].rstrip('"}'): int(v) for k, v in d.items()
                                        if k.startswith("portcullis_ratelimit_allowed_total{")}
            res["ratelimit_fallbacks"] = total(lambda k: k == "portcullis_ratelimit_fallbacks_total")
        return res

    paired = []
    for rnd in sorted({r["round"] for r in runs}):
        on = [r["rps"] for r in runs if r["contender"] == "portcullis-on" and r["round"] == rnd and not r.get("failed")]
        off = [r["rps"] for r in runs if r["contender"] == "portcullis" and r["round"] == rnd and not r.get("failed")]
        if on and off and off[0]:
            paired.append(on[0] / off[0])
    checks = []
    for line in open(E["S_AB_CHECKS"]):
        c, what, want, got = line.rstrip("\n").split("\t", 3)
        checks.append({"contender": c, "check": what, "expected": want, "got": got, "ok": want == got})
    during = {c: delta(c) for c in ("portcullis", "portcullis-on") if c in medians}
    problems = []
    for c, d in during.items():
        if d["answered"] != d["answered_2xx"]:
            problems.append(f"{c}: {d['answered'] - d['answered_2xx']} of {d['answered']} requests during the runs were not answered 2xx"
                            f" ({d['answered_429']} with 429)")
        if d["refused_by_filters"]:
            problems.append(f"{c}: {d['refused_by_filters']} requests refused by a filter during the runs")
    on_d = during.get("portcullis-on")
    if mode == "limits" and on_d is not None:
        for kind in ("ip", "token", "route"):
            n = on_d["ratelimit_allowed"].get(kind, 0)
            if n != on_d["answered_2xx"]:
                problems.append(f"portcullis-on: {n} '{kind}' rate-limit decisions for {on_d['answered_2xx']} requests: the limit did not check every request")
    if mode == "auth" and on_d is not None and on_d["auth_success"] != on_d["answered_2xx"]:
        problems.append(f"portcullis-on: {on_d['auth_success']} token checks passed for {on_d['answered_2xx']} requests: auth did not check every request")
    target = 0.95 if mode == "auth" else 0.97  # issue 4: auth on >= 0.95x off; issues 5, 6: 0.97x
    r = ratios.get("portcullis-on/portcullis", {})
    ab_result = {
        "feature": mode,
        "off": "portcullis: portcullis-%s.toml.tmpl without the #@ON@ lines" % mode,
        "on": "portcullis-on: portcullis-%s.toml.tmpl with them" % mode,
        "ratio_on_off": r,
        "paired_rps_ratio_per_round": paired,
        "target_rps_ratio": target,
        "target_met": (r.get("rps") or 0) >= target,
        "checks_before_runs": checks,
        "during_runs": during,
        "valid": not problems and all(x["ok"] for x in checks),
        "problems": problems,
    }

if tls:  # keep-alive HTTPS through the proxy vs plain HTTP straight at the origin
    fraction_of_direct = {c: {"rps": ratio(c, "direct", "rps")} for c in ("nginx", "haproxy", "portcullis")}
elif ab:
    fraction_of_direct = {}
elif enc:
    fraction_of_direct = {c: {"upload_MBps": ratio(c, "direct", "upload_MBps")}
                          for c in ("nginx", "haproxy", "portcullis", "portcullis-enc")}
else:
    fraction_of_direct = {c: {"rps": ratio(c, "direct", "rps"), "upload_MBps": ratio(c, "direct", "upload_MBps")}
                          for c in ("nginx", "haproxy", "portcullis") + (("portcullis-log",) if "portcullis-log" in order else ())
                          + tuple(f for f in ("floor", "floor-uring") if f in order)}

for c in order:
    contenders.setdefault(c, {"status": "skipped", "reason": "not started"})
if tls and os.path.exists(E["S_TLS_INFO"]):
    for line in open(E["S_TLS_INFO"]):
        name, negotiated, hsts = line.rstrip("\n").split("\t", 2)
        contenders[name]["tls"] = {"negotiated_with_openssl_client": negotiated,
                                   "strict_transport_security": None if hsts == "none" else hsts}

results = {
    "schema": 1,
    "mode": mode,
    "machine": {
        "nproc": int(E["META_NPROC"]), "cpu_model": E["META_CPU"], "kernel": E["META_KERNEL"],
        "date_utc": E["META_DATE"], "loadavg_at_end": E["META_LOADAVG"], "git": E["META_GIT"],
        "versions": {"nginx": E["META_NGINX"], "haproxy": E["META_HAPROXY"], "wrk": E["META_WRK"],
                     "portcullis": E["META_PORTCULLIS"] or None},
    },
    "settings": {
        "duration_s": int(E["S_DURATION"]), "connections": int(E["S_CONNS"]),
        "upload_connections": int(E["S_UPLOAD_CONNS"]), "rounds": int(E["S_ROUNDS"]),
        "upload_mib": float(E["S_UPLOAD_MB"]), "upload_bytes": upload_bytes,
        "pin": E["S_PIN"] == "1", "warmup_s": int(E["S_WARMUP"]), "wrk_threads": 1,
        "build_dir": E["S_BUILD_DIR"], "clk_tck": hz,
        "origin": "nginx, 1 worker: GET /tiny -> 64-byte body; POST /upload -> echo_read_request_body then 200",
        "units": "latency us; CPU us of proxy process time (utime+stime) per request; MB/s = 10^6 bytes/s of request body",
    },
    "contenders": contenders,
    "runs": runs,
    "medians": medians,
    "ratios": ratios,
    "fraction_of_direct": fraction_of_direct,
}
if enc:
    results["encryption"] = sealing
    st = results["settings"]
    st.update({
        "mode": "encrypt", "tests": {"upload": "POST /upload of upload_bytes bytes, keep-alive"},
        "encrypted_body_bytes": int(E["S_ENC_BYTES"]), "segment_bytes": int(E["S_ENC_SEGMENT"]),
        "key_id": E["S_ENC_KEY_ID"],
        "portcullis_enc": "portcullis-enc.toml.tmpl: portcullis.toml.tmpl + [encryption] + encrypt_body = true on /upload",
        "units": "MB/s = 10^6 bytes/s of plaintext request body; CPU us of proxy process time (utime+stime) per MiB of plaintext",
    })
if ab:
    results["ab"] = ab_result
    st = results["settings"]
    for k in ("upload_connections", "upload_mib", "upload_bytes"):
        st.pop(k)  # no upload runs in the A/B modes
    st.update({
        "mode": mode,
        "tests": {"tiny": "GET /tiny over keep-alive HTTP" + (" with the bench token" if mode in ("limits", "auth") else "")},
        "feature_on": {
            "limits": "[rate_limit] ip and token { rps = 10000000, burst = 10000000 }, auth_failures lockout, "
                      "route rate { rps = 10000000, burst = 10000000 }: three GCRA decisions per request, none refusing",
            "validate": "route methods = [GET, HEAD, POST], content_types = [application/json], validate_json = true",
            "auth": "route auth = true: Bearer token check (store lookup, constant-time hash compare, expiry/revocation) + RBAC",
        }[mode],
        "both": "one worker, plain HTTP, no access or audit log, same origin"
                + ("; authenticated route (token check + RBAC), one token from portcullisctl" if mode == "limits"
                   else "; the same route public in portcullis (the token is sent and ignored)" if mode == "auth" else "; public route"),
    })
if tls:
    st = results["settings"]
    for k in ("upload_connections", "upload_mib", "upload_bytes"):
        st.pop(k)  # no upload runs in MODE=tls
    st.update({
        "mode": "tls", "handshake_connections": int(E["S_HS_CONNS"]),
        "certificate": "one self-signed ECDSA P-256 (prime256v1) certificate + key for all proxies, made per run with openssl req",
        "proxy_tls": "Portcullis [tls] defaults (TLS 1.2/1.3); nginx ssl_protocols TLSv1.2 TLSv1.3, tickets on, no session cache; "
                     "HAProxy ssl-min-ver TLSv1.2, its defaults (tickets, session cache)",
        "tests": {"tiny": "GET /tiny over keep-alive HTTPS (direct: plain HTTP to the origin)",
                  "full": "GET /tiny with Connection: close, wrk's TLS session dropped before each reconnect: one full handshake per request",
                  "resumed": "GET /tiny with Connection: close, wrk resumes its last session (TLS 1.3 ticket): one resumed handshake per request"},
        "units": "latency us; CPU us of proxy process time (utime+stime) per request or per new connection; "
                 "handshake_cpu_us = CPU per new connection - CPU per keep-alive request",
    })
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")

# ---- table ----
def fmt(x, spec="{:,.0f}", none="-"):
    return none if x is None else spec.format(x)

s = results["settings"]; m = results["machine"]
if ab:
    a = results["ab"]
    what = {"limits": "rate limits", "validate": "route validators", "auth": "token check + RBAC"}[mode]
    print()
    print(f"Results, MODE={mode}: Portcullis {what} off vs on ({m['nproc']} CPUs {m['cpu_model']}, {m['kernel']};"
          f" {s['duration_s']} s x {s['rounds']} alternating rounds, {s['connections']} keep-alive conns"
          f"{', pinned' if s['pin'] else ''}; medians)")
    hdr = f"{'':<26}{'req/s':>9}{'range':>17}{'p50 us':>8}{'p99 us':>8}{'CPU us/req':>11}{'origin us':>10}"
    print(hdr)
    print("-" * len(hdr))
    for c, label in (("portcullis", f"portcullis ({mode} off)"), ("portcullis-on", f"portcullis-on ({mode} on)")):
        if c not in medians:
            print(f"{label:<26}  not measured: {contenders[c].get('reason', 'no successful run')[:90]}")
            continue
        d = medians[c]
        rng = f"{d['rps_range'][0]:,.0f}-{d['rps_range'][1]:,.0f}" if d["rps_range"] else "-"
        print(f"{label:<26}{fmt(d['rps']):>9}{rng:>17}{fmt(d['p50_us']):>8}{fmt(d['p99_us']):>8}"
              f"{fmt(d['proxy_cpu_us_per_req'], '{:.2f}'):>11}{fmt(d['origin_cpu_us_per_req'], '{:.1f}'):>10}")
    q = a["ratio_on_off"]
    print()
    verdict = ("met" if a["target_met"] else "NOT met") if a["valid"] else "comparison NOT valid, see below"
    print(f"on/off: req/s {fmt(q.get('rps'), '{:.3f}')} (target >= {a['target_rps_ratio']}: {verdict}),"
          f" CPU/req {fmt(q.get('proxy_cpu_us_per_req'), '{:.3f}')}, p99 {fmt(q.get('p99_us'), '{:.3f}')};"
          f" per round req/s on/off: " + ", ".join(f"{x:.3f}" for x in a["paired_rps_ratio_per_round"]))
    pr = a["paired_rps_ratio_per_round"]
    if pr:
        # Drift-robust views (the host's speed can drift within a run; each
        # round's pair ran back to back): median and geometric mean of the
        # per-round ratios. Reported beside the target ratio, not instead of it.
        gm = math.exp(sum(math.log(x) for x in pr) / len(pr))
        print(f"  per-round ratios: median {statistics.median(pr):.3f}, geometric mean {gm:.3f} ({len(pr)} rounds)")
    print(f"  on = {s['feature_on']}; both: {s['both']}")
    print("Checks before the runs: " + "; ".join(
        f"{x['contender']} {x['check']} -> {x['got']}{'' if x['ok'] else ' (expected ' + x['expected'] + ')'}"
        for x in a["checks_before_runs"]))
    for c, d in a["during_runs"].items():
        line = (f"During the runs ({c}, admin metrics, warm-up included): {d['answered']:,} answered, {d['answered_2xx']:,} 2xx,"
                f" {d['answered_429']} with 429, {d['refused_by_filters']} refused by any filter")
        if d.get("ratelimit_allowed"):
            line += ("; rate-limit decisions allowed: " + ", ".join(f"{k} {v:,}" for k, v in sorted(d["ratelimit_allowed"].items()))
                     + f"; table fallbacks {d['ratelimit_fallbacks']}")
        elif "ratelimit_allowed" in d:
            line += "; no rate-limit decisions (limits off)"
        print(line)
    print("Comparison valid: " + ("yes" if a["valid"] else "NO: " + "; ".join(a["problems"])))
elif tls:
    print()
    print(f"Results, TLS ({m['nproc']} CPUs {m['cpu_model']}, {m['kernel']}; {s['duration_s']} s x {s['rounds']} rounds,"
          f" {s['connections']} keep-alive conns, {s['handshake_connections']} conns for new-connection runs"
          f"{', pinned' if s['pin'] else ''}; medians)")
    hdr = (f"{'':<11}{'req/s':>8}{'p50 us':>8}{'p99 us':>8}{'CPU us/req':>11}{'origin us':>10}"
           f" |{'full conn/s':>12}{'p99 us':>8}{'CPU us/conn':>12}{'~hs us':>8}"
           f" |{'resumed conn/s':>15}{'CPU us/conn':>12}{'~hs us':>8}")
    print(f"{'':<11}{'keep-alive GET /tiny over HTTPS':<45} |{'full handshake, 1 request each':<40} |{'resumed (ticket), 1 request each'}")
    print(hdr)
    print("-" * len(hdr))
    for c in order:
        if c not in medians:
            why = contenders[c].get("reason", "no successful run")
            print(f"{c:<11}  not measured: {why[:90]}")
            continue
        d = medians[c]
        print(f"{c if c != 'direct' else 'direct/http':<11}{fmt(d['rps']):>8}{fmt(d['p50_us']):>8}{fmt(d['p99_us']):>8}"
              f"{fmt(d['proxy_cpu_us_per_req'], '{:.1f}'):>11}{fmt(d['origin_cpu_us_per_req'], '{:.1f}'):>10}"
              f" |{fmt(d.get('full_conn_per_s')):>12}{fmt(d.get('full_p99_us')):>8}"
              f"{fmt(d.get('full_proxy_cpu_us_per_conn'), '{:.0f}'):>12}{fmt(d.get('full_handshake_cpu_us'), '{:.0f}'):>8}"
              f" |{fmt(d.get('resumed_conn_per_s')):>15}"
              f"{fmt(d.get('resumed_proxy_cpu_us_per_conn'), '{:.0f}'):>12}{fmt(d.get('resumed_handshake_cpu_us'), '{:.0f}'):>8}")
    print("  CPU us/req, us/conn = proxy process CPU per request, per new TLS connection (accept, handshake, one request,"
          " close);\n  ~hs us = CPU us/conn - CPU us/req; direct/http = plain HTTP straight at the origin (the ceiling).")
    for c in order:
        t = contenders[c].get("tls")
        if t:
            print(f"  {c}: {t['negotiated_with_openssl_client']}; HSTS: {t['strict_transport_security'] or 'none'}")
    print()
    print(f"{'Ratios':<22}{'req/s':>8}{'CPU/req':>9}{'p99':>8}{'full CPU/conn':>15}{'~hs CPU':>9}{'full conn/s':>13}{'resumed CPU/conn':>18}")
    for k, v in ratios.items():
        print(f"{k:<22}{fmt(v['rps'], '{:.2f}'):>8}{fmt(v['proxy_cpu_us_per_req'], '{:.2f}'):>9}{fmt(v['p99_us'], '{:.2f}'):>8}"
              f"{fmt(v['full_proxy_cpu_us_per_conn'], '{:.2f}'):>15}{fmt(v['full_handshake_cpu_us'], '{:.2f}'):>9}"
              f"{fmt(v['full_conn_per_s'], '{:.2f}'):>13}{fmt(v['resumed_proxy_cpu_us_per_conn'], '{:.2f}'):>18}")
    print("  (req/s, conn/s: higher is better for the first; CPU and p99: lower is better)")
    print("Fraction of direct (HTTPS via proxy / plain HTTP to origin):  " + "   ".join(
        f"{c} {fmt(v['rps'], '{:.2f}')} req/s" for c, v in fraction_of_direct.items() if c in medians))
elif enc:
    print()
    print(f"Results, encrypt_body uploads ({m['nproc']} CPUs {m['cpu_model']}, {m['kernel']}; {s['duration_s']} s x"
          f" {s['rounds']} rounds, {s['upload_connections']} conns, {s['upload_mib']:g} MiB uploads"
          f"{', pinned' if s['pin'] else ''}; medians)")
    hdr = (f"{'':<15}{'upload MB/s':>12}{'range':>15}{'p50 us':>10}{'p99 us':>10}{'CPU us/MiB':>11}"
           f"{'origin us/MiB':>14}")
    print(hdr)
    print("-" * len(hdr))
    for c in order:
        if c not in medians:
            why = contenders[c].get("reason", "no successful run")
            print(f"{c:<15}  not measured: {why[:90]}")
            continue
        d = medians[c]
        rng = f"{d['upload_MBps_range'][0]:,.0f}-{d['upload_MBps_range'][1]:,.0f}" if d["upload_MBps_range"] else "-"
        print(f"{c:<15}{fmt(d['upload_MBps']):>12}{rng:>15}{fmt(d['upload_p50_us']):>10}{fmt(d['upload_p99_us']):>10}"
              f"{fmt(d['upload_proxy_cpu_us_per_MiB'], '{:.0f}'):>11}{fmt(d['upload_origin_cpu_us_per_MiB'], '{:.0f}'):>14}")
    print("  MB/s = plaintext MB/s (10^6 bytes/s); CPU us/MiB = proxy process CPU per plaintext MiB;"
          " portcullis-enc = encrypt_body = true (pcx1, AES-256-GCM, 64 KiB segments).")
    print(f"  Each encrypted upload reached the origin as {s['encrypted_body_bytes']:,} bytes of pcx1 ciphertext"
          f" for {s['upload_bytes']:,} bytes of plaintext.")
    print()
    print(f"{'Ratios':<28}{'upload MB/s':>12}{'CPU/MiB':>9}{'p99':>8}")
    for k, v in ratios.items():
        print(f"{k:<28}{fmt(v['upload_MBps'], '{:.2f}'):>12}{fmt(v['upload_proxy_cpu_us_per_MiB'], '{:.2f}'):>9}"
              f"{fmt(v['upload_p99_us'], '{:.2f}'):>8}")
    print("  (MB/s: higher is better for the first; CPU/MiB and p99: lower is better)")
    print("Fraction of direct (MB/s):  " + "   ".join(
        f"{c} {fmt(v['upload_MBps'], '{:.2f}')}" for c, v in fraction_of_direct.items() if c in medians))
    e = results["encryption"]
    print()
    if e["benchmarks"]:
        print("Raw sealing cost (pcx1_bench, same session, CPU per MiB of plaintext):  " + "   ".join(
            f"{n.replace('BM_', '')} {v['cpu_us_per_MiB']:.0f} us ({v['MBps']:,.0f} MB/s)" for n, v in e["benchmarks"].items()))
    if e.get("within_budget") is not None:
        print(f"Encryption CPU: encrypted {e['encrypted_cpu_us_per_MiB']:.0f} us/MiB vs plain {e['plain_cpu_us_per_MiB']:.0f} us/MiB:"
              f" +{e['extra_cpu_us_per_MiB']:.0f} us/MiB = {e['extra_over_raw']:.2f} x raw seal ({e['raw_seal_us_per_MiB']:.0f} us/MiB)")
        print(f"  check: encrypted <= plain + 1.1 x raw seal = {e['budget_us_per_MiB']:.0f} us/MiB:"
              f" {'yes' if e['within_budget'] else 'NO'}"
              + (f"   (with the 8 MiB-body raw seal, {e['raw_seal_body_us_per_MiB']:.0f} us/MiB:"
                 f" budget {e['budget_body_us_per_MiB']:.0f}, {'yes' if e['within_budget_body'] else 'NO'})"
                 if e.get("within_budget_body") is not None else ""))
    else:
        print("Encryption CPU check: not computed (missing portcullis, portcullis-enc or pcx1_bench figures)")
else:
    print()
    print(f"Results ({m['nproc']} CPUs {m['cpu_model']}, {m['kernel']}; {s['duration_s']} s x {s['rounds']} rounds,"
          f" {s['connections']} conns, {s['upload_mib']:g} MiB uploads{', pinned' if s['pin'] else ''}; medians)")
    hdr = f"{'':<14}{'req/s':>9}{'range':>17}{'p50 us':>8}{'p99 us':>8}{'CPU us/req':>11}{'origin us':>10}{'upload MB/s':>12}{'CPU us/MiB':>11}"
    print(hdr)
    print("-" * len(hdr))
    for c in order:
        if c not in medians:
            why = contenders[c].get("reason", "no successful run")
            print(f"{c:<14}  not measured: {why[:90]}")
            continue
        d = medians[c]
        rng = f"{d['rps_range'][0]:,.0f}-{d['rps_range'][1]:,.0f}" if d["rps_range"] else "-"
        print(f"{c:<14}{fmt(d['rps']):>9}{rng:>17}{fmt(d['p50_us']):>8}{fmt(d['p99_us']):>8}"
              f"{fmt(d['proxy_cpu_us_per_req'], '{:.1f}'):>11}{fmt(d['origin_cpu_us_per_req'], '{:.1f}'):>10}"
              f"{fmt(d['upload_MBps']):>12}{fmt(d['upload_proxy_cpu_us_per_MiB'], '{:.0f}'):>11}")
    print("  CPU us/req = proxy process CPU per GET /tiny; origin us = origin CPU per request;"
          " CPU us/MiB = proxy CPU per MiB uploaded.")
    if "floor" in order:
        print("  floor = bench/floor_forwarder.c: libuv + llhttp framing only, no feature (a yardstick, not a proxy).")
    if "floor-uring" in order:
        print("  floor-uring = bench/floor_uring.c: the same forwarding on io_uring (batched submissions), not libuv/epoll.")

    print()
    print(f"{'Ratios':<26}{'req/s':>8}{'CPU/req':>9}{'p99':>8}{'upload MB/s':>13}")
    for k, v in ratios.items():
        print(f"{k:<26}" + f"{fmt(v['rps'], '{:.2f}'):>8}{fmt(v['proxy_cpu_us_per_req'], '{:.2f}'):>9}"
              f"{fmt(v['p99_us'], '{:.2f}'):>8}{fmt(v['upload_MBps'], '{:.2f}'):>13}")
    print("  (req/s and MB/s: higher is better for the first; CPU/req and p99: lower is better)")
    print("Fraction of direct:  " + "   ".join(
        f"{c} {fmt(v['rps'], '{:.2f}')} req/s, {fmt(v['upload_MBps'], '{:.2f}')} MB/s" for c, v in fraction_of_direct.items()
        if c in medians))

warn = []
for r in runs:
    tag = f"{r['contender']} {r['test']} round {r['round']}"
    if r.get("failed"):
        warn.append(f"{tag}: wrk produced no result"); continue
    errs = sum(r["errors"].values())
    if errs:
        warn.append(f"{tag}: {errs} wrk errors {r['errors']}")
    if r["test"] == "upload" and not r["origin_saw_every_upload"]:
        warn.append(f"{tag}: origin saw {r['origin_whole_uploads']} whole bodies for {r['requests']} answered uploads")
    t = r.get("tls_client")
    if r["test"] in HS_TESTS and not t:
        warn.append(f"{tag}: no handshake count from wrk_tls_shim (was it preloaded?)")
    elif r["test"] == "full" and t["resumed"]:
        warn.append(f"{tag}: {t['resumed']} of {t['handshakes']} handshakes were resumed, not full")
    elif r["test"] == "resumed" and t["resumed"] < 0.9 * t["handshakes"]:
        warn.append(f"{tag}: only {t['resumed']} of {t['handshakes']} handshakes were resumed")
    o = r.get("other_cpu_pct_of_core")
    if o is not None and o > 25:
        warn.append(f"{tag}: other load on the host used {o:.0f}% of a core (noisy)")
if ab and not results["ab"]["valid"]:
    warn = [f"MODE={mode}: " + p for p in results["ab"]["problems"]] + warn
if warn:
    print()
    print("Warnings:")
    for w in warn[:20]:
        print("  " + w)
    if len(warn) > 20:
        print(f"  ... {len(warn) - 20} more in results.json")
PY

if [ -n "$CHART_PY" ]; then
  "$CHART_PY" "$BENCH_DIR/chart.py" "$OUT/results.json" "$OUT/chart.png" \
    || note "chart.py failed; results.json is complete"
else
  note "matplotlib not available (python3-matplotlib); chart skipped"
fi
echo
echo "Wrote $OUT/results.json${CHART_PY:+ and $OUT/chart.png}"
# A/B modes: a comparison in which the feature refused requests (or was not on)
# measured something else; say so with the exit status too.
if [ "$AB" = 1 ] && ! python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["ab"]["valid"] else 1)' \
     "$OUT/results.json"; then
  die "MODE=$MODE: the comparison is not valid (see \"Comparison valid\" above)"
fi
