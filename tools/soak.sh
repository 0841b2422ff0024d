#!/usr/bin/env bash
# Soak test: one Portcullis under SECONDS of mixed, realistic traffic. Does it
# stay up, keep its memory and file descriptors flat, and keep its audit chain
# intact?
#
#   tools/soak.sh [BUILD_DIR] [SECONDS]            (default build, 600)
#
# Starts demo-backend (bodies hashed and discarded, nothing stored) and one
# Portcullis (2 workers) with a realistic security config, all in a temp dir
# on loopback: an HTTPS listener (self-signed P-256 certificate made with
# openssl, key 0600) and a plaintext listener (plaintext = "allow", so wrk can
# drive plain HTTP; revoke_tokens_seen_in_plaintext = false since the soak
# token travels in the clear on loopback), [auth] with a token store from
# `portcullisctl token issue`, [rate_limit] with ip/token limits far above the
# good traffic and auth_failures on (max 20 / 60 s, ban 20 s), [encryption]
# (keyring from `portcullisctl keys gen`), an /upload route with encrypt_body,
# a JSON /api/ route with validate_json, access + audit logs, [detect]
# defaults, request_header_ms = 2000. Then, concurrently, for SECONDS:
#   - wrk GET /tiny with a valid token (-t1 -c32, 30 s chunks), plain HTTP;
#   - 2 loops of encrypted uploads (curl POST of 256 KiB .. 4 MiB, half of them
#     chunked, alternating HTTP/HTTPS); the backend must get exactly the pcx1
#     ciphertext length for Content-Length bodies;
#   - HTTPS requests (curl --cacert): GET /tiny, GET /bytes/65536, a valid JSON
#     POST, and a forbidden (403) and an unrouted (404) request;
#   - bad tokens, sent from 127.0.0.2 so the brute-force ban they trigger
#     (401 then 429) never hits the good traffic from 127.0.0.1;
#   - malformed requests over raw sockets from 127.0.0.3 (bad chunk size,
#     CL+TE, obfuscated TE, garbage, bare LF, oversized head, bad HTTP
#     version, dot-dot target, invalid JSON body);
#   - slow clients (slowloris: a partial head trickled a byte every 500 ms;
#     the proxy must answer 408 and close after request_header_ms);
#   - upstream restarts: every 60 s the demo-backend is stopped for 1 s and
#     restarted on the same port; the proxy must serve 200 again within 30 s;
#   - access-log rotation (mv + SIGUSR1) every 60 s, the rotated file deleted
#     (bounds disk use; the audit log is kept whole for the final verify).
# Every 2 s it samples the proxy's VmRSS (/proc/PID/status) and open fds
# (/proc/PID/fd). At the end it prints the duration, requests by kind (ok /
# refused by status), errors by kind, proxy-side counts by status (/metrics),
# RSS after warm-up (the sample at 10 % of the run), peak and end (the last
# sample under load), end / after-warm-up, fds at start and after the traffic,
# whether the proxy is alive, its exit status on SIGTERM, and
# `portcullisctl audit verify` on the audit log; writes a JSON summary to
# $OUT (default bench/results/<UTC timestamp>-soak.json).
# Exit status 1 if the proxy died, audit verify failed, RSS end > 1.10 x
# after-warm-up, or the proxy did not recover from an upstream restart.
# Every process it starts and its temp dir are removed on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-build}
[ -d "$BUILD" ] || BUILD=$ROOT/$BUILD
SECONDS_TOTAL=${2:-600}
[[ $SECONDS_TOTAL =~ ^[0-9]+$ ]] && [ "$SECONDS_TOTAL" -ge 20 ] || { echo "soak.sh: SECONDS must be a whole number >= 20" >&2; exit 1; }
BIN=$(cd "$BUILD/bin" 2>/dev/null && pwd) || { echo "soak.sh: $BUILD/bin not found; build first" >&2; exit 1; }
for b in portcullis portcullisctl demo-backend; do
  [ -x "$BIN/$b" ] || { echo "soak.sh: $BIN/$b not built" >&2; exit 1; }
done
for t in wrk curl python3 openssl; do command -v "$t" >/dev/null || { echo "soak.sh: '$t' not found; run tools/install-deps.sh --bench" >&2; exit 1; }; done
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-soak.json}
WORKERS=${WORKERS:-2}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-soak.XXXXXX")
# The audit log is kept whole for the final verify: about 15 MB/s at full wrk speed.
FREE_MB=$(df -Pm "$TMP" | awk 'NR == 2 {print $4}')
NEED_MB=$(( SECONDS_TOTAL * 20 + 1024 ))
[ "$FREE_MB" -ge "$NEED_MB" ] || { rmdir "$TMP"; echo "soak.sh: $FREE_MB MB free under ${TMPDIR:-/tmp}, need about $NEED_MB MB (audit log); set TMPDIR" >&2; exit 1; }
PIDS=()
WAITING=""
cleanup() {
  local rc=$? p kids
  trap "" INT TERM
  # Loops first (so they start nothing new), then whatever they had running.
  for p in $WAITING "${PIDS[@]}"; do
    kids=$(pgrep -P "$p" 2>/dev/null || true)
    kill "$p" 2>/dev/null || true
    for k in $kids; do kill "$k" 2>/dev/null || true; done
  done
  [ -s "$TMP/backend.pid" ] && kill "$(cat "$TMP/backend.pid")" 2>/dev/null || true
  for p in $WAITING "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { echo "soak.sh: $*" >&2; exit 1; }
now() { echo "$EPOCHREALTIME"; }
mapfile -t P < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
for s in ss: print(s.getsockname()[1])')
BP=${P[0]} PP=${P[1]} PS=${P[2]} AP=${P[3]}

# --- secrets -----------------------------------------------------------------
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
   -keyout "$TMP/server.key" -out "$TMP/server.crt" -days 2 -subj "/CN=localhost" \
   -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$TMP/openssl.out" 2>&1) \
  || die "openssl failed: $(cat "$TMP/openssl.out")"
chmod 600 "$TMP/server.key"
(umask 077 && "$BIN/portcullisctl" token issue --store "$TMP/tokens.toml" --account soak --role soak \
   --label soak > "$TMP/token" 2> "$TMP/issue.err") || die "token issue failed: $(cat "$TMP/issue.err")"
TOKEN=$(cat "$TMP/token")
(umask 077 && "$BIN/portcullisctl" keys gen --keyring "$TMP/keyring.toml" --id k1 --activate > "$TMP/keygen.out" 2>&1) \
  || die "keys gen failed: $(cat "$TMP/keygen.out")"
SEG=65536
# The body the uploads are cut from: random, so nothing compresses or repeats.
head -c 4194304 /dev/urandom > "$TMP/up.bin"

# --- backend -------------------------------------------------------------------
start_backend() {  # on the fixed port BP; records its pid in backend.pid
  rm -f "$TMP/backend.port"
  "$BIN/demo-backend" --listen "127.0.0.1:$BP" --port-file "$TMP/backend.port" --quiet >> "$TMP/backend.out" 2>&1 &
  echo $! > "$TMP/backend.pid"
  for _ in $(seq 100); do [ -s "$TMP/backend.port" ] && return 0; sleep 0.05; done
  return 1
}
start_backend || die "demo-backend did not start: $(tail -3 "$TMP/backend.out")"

# --- proxy ---------------------------------------------------------------------
mkdir -p "$TMP/state"
cat > "$TMP/p.toml" <<TOML
[server]
workers = $WORKERS
listen_http = "127.0.0.1:$PP"
listen_https = "127.0.0.1:$PS"
admin_listen = "127.0.0.1:$AP"
state_dir = "$TMP/state"
shutdown_grace_ms = 5000

[tls]
cert = "$TMP/server.crt"
key = "$TMP/server.key"

[https]
plaintext = "allow"                       # wrk drives plain HTTP
revoke_tokens_seen_in_plaintext = false   # the soak token travels in the clear on loopback

[timeouts]
request_header_ms = 2000                  # slow clients get 408 quickly
upstream_connect_ms = 1000

[auth]
token_store = "$TMP/tokens.toml"

[[role]]
name = "soak"
allow = ["GET /tiny", "HEAD /tiny", "GET /bytes/*", "GET /delay/*", "POST /upload", "POST /api/*"]

[rate_limit]
ip = { rps = 1000000, burst = 1000000 }
token = { rps = 1000000, burst = 1000000 }
auth_failures = { max = 20, window_s = 60, ban_s = 20 }   # bad tokens come from 127.0.0.2 only

[encryption]
keyring = "$TMP/keyring.toml"
segment_bytes = $SEG

[log]
access = "$TMP/access.log"
audit = "$TMP/audit.log"

[detect]

[[upstream]]
name = "origin"
servers = ["127.0.0.1:$BP"]
health_check = { path = "/healthz", interval_ms = 1000, timeout_ms = 500 }
fail_timeout_ms = 1000

[[route]]
prefix = "/tiny"
upstream = "origin"
methods = ["GET", "HEAD"]

[[route]]
prefix = "/bytes/"
upstream = "origin"
methods = ["GET", "HEAD"]

[[route]]
prefix = "/status/"
upstream = "origin"

[[route]]
prefix = "/upload"
upstream = "origin"
methods = ["POST"]
content_types = ["application/octet-stream"]
max_body_bytes = 8388608
encrypt_body = true

[[route]]
prefix = "/api/"
upstream = "origin"
methods = ["POST"]
content_types = ["application/json"]
max_body_bytes = 65536
validate_json = true
TOML
"$BIN/portcullis" -t -c "$TMP/p.toml" > "$TMP/check.out" 2>&1 || die "config refused: $(cat "$TMP/check.out")"
"$BIN/portcullis" -c "$TMP/p.toml" > "$TMP/px.log" 2>&1 &
PX=$!
PIDS+=($PX)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$AP/readyz" >/dev/null || die "portcullis not ready: $(tail -3 "$TMP/px.log")"
AUTH="Authorization: Bearer $TOKEN"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TMP/server.crt" -H "$AUTH" "https://127.0.0.1:$PS/tiny")
[ "$code" = 200 ] || die "HTTPS GET /tiny through the proxy answered $code"

FD_START=$(ls "/proc/$PX/fd" | wc -l)
T0=$EPOCHREALTIME
END_I=$(( ${T0%.*} + SECONDS_TOTAL ))
END=$END_I
running() { [ "$EPOCHSECONDS" -lt "$END_I" ]; }
left() { local l=$(( END_I - EPOCHSECONDS )); echo $(( l < 0 ? 0 : l )); }
ev() {  # KIND OUTCOME FILE; errors are also logged with their time and size
  printf '%s\t%s\n' "$1" "$2" >> "$TMP/events.$3.tsv"
  case $2 in error:*) printf '%6.1f s  %s  %s %s\n' "$(python3 -c "print($EPOCHREALTIME - $T0)")" "$1" "$2" "${4:-}" >> "$TMP/errors.log" ;; esac
}

# --- sampler (every 2 s) and access-log rotation (every 60 s) ------------------
(
  set +e
  n=0
  while :; do
    t=$(now)
    if [ -r "/proc/$PX/status" ] && [ "$(awk '{print $3}' "/proc/$PX/stat" 2>/dev/null)" != Z ]; then
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PX/status")
      fds=$(ls "/proc/$PX/fd" 2>/dev/null | wc -l)
      printf '%s\t%s\t%s\n' "$t" "$rss" "$fds" >> "$TMP/samples.tsv"
    else
      printf '%s\tdead\tdead\n' "$t" >> "$TMP/samples.tsv"
    fi
    n=$((n + 1))
    if [ $((n % 30)) = 0 ] && [ -f "$TMP/access.log" ]; then
      mv "$TMP/access.log" "$TMP/access.log.1"
      kill -USR1 "$PX" 2>/dev/null || true
      sleep 0.5
      wc -l < "$TMP/access.log.1" >> "$TMP/access_lines.txt"
      rm -f "$TMP/access.log.1"
    fi
    sleep 2
  done
) &
SAMPLER=$!
PIDS+=($SAMPLER)

# --- encrypted uploads -----------------------------------------------------------
CT_OVERHEAD=$(( 4 + 2 + 4 + 1 + 2 + 12 + 48 + 7 ))   # pcx1 header for key id "k1"
upload_loop() {  # ID
  set +e
  local id=$1 i=0 size url kind code got want rc body=$TMP/body$1
  while running; do
    i=$((i + 1))
    size=$(( 262144 + (RANDOM * 32768 + RANDOM) % (4194304 - 262144 + 1) ))
    if [ $((i % 2)) = 0 ]; then url="https://127.0.0.1:$PS/upload"; else url="http://127.0.0.1:$PP/upload"; fi
    head -c "$size" "$TMP/up.bin" > "$body"
    if [ $(((i / 2) % 2)) = 0 ]; then kind=upload te=(); else kind=upload_chunked te=(-H 'Transfer-Encoding: chunked'); fi
    rm -f "$TMP/up$id.json"
    rc=0; code=$(curl -s --max-time 30 --cacert "$TMP/server.crt" -o "$TMP/up$id.json" -w '%{http_code}' \
      -H "$AUTH" -H 'Expect:' -H 'Content-Type: application/octet-stream' "${te[@]}" \
      --data-binary "@$body" "$url" 2>/dev/null) || rc=$?
    if [ "$rc" != 0 ]; then
      # An upload in flight when the backend is killed loses its connection
      # (curl 52/55/56): expected within a few seconds of a restart.
      if [[ $rc =~ ^(52|55|56)$ ]] && [ -s "$TMP/restart_at" ] && [ $((EPOCHSECONDS - $(cat "$TMP/restart_at"))) -le 5 ]; then
        ev "$kind" "refused:aborted_at_restart" "up$id"
      else
        ev "$kind" "error:curl_exit_$rc" "up$id" "size $size $url"
      fi
      continue
    fi
    case $code in
      200)
        got=$(grep -o '"body_bytes":[0-9]*' "$TMP/up$id.json" 2>/dev/null | cut -d: -f2)
        want=$(( CT_OVERHEAD + size + 16 * ((size + SEG - 1) / SEG) ))
        if [ "$got" = "$want" ]; then ev "$kind" ok "up$id"
        else ev "$kind" "error:backend_got_${got:-none}_bytes" "up$id"; echo "upload $kind size $size: backend got $got, pcx1 length $want" >> "$TMP/mismatch.txt"; fi ;;
      502|503|504) ev "$kind" "refused:$code" "up$id" ;;
      *) ev "$kind" "error:status_$code" "up$id" ;;
    esac
  done
}
upload_loop 1 & PIDS+=($!)
upload_loop 2 & PIDS+=($!)

# --- HTTPS requests ------------------------------------------------------------
https_req() {  # KIND EXPECT CURL_ARGS...
  local kind=$1 expect=$2 code rc=0; shift 2
  code=$(curl -s --max-time 10 --cacert "$TMP/server.crt" -o /dev/null -w '%{http_code}' "$@" 2>/dev/null) || rc=$?
  if [ "$rc" != 0 ]; then ev "$kind" "error:curl_exit_$rc" https; return; fi
  if [ "$code" = "$expect" ]; then ev "$kind" ok https
  elif [ "$expect" = 200 ] && [[ $code =~ ^50[234]$ ]]; then ev "$kind" "refused:$code" https
  else ev "$kind" "error:status_$code" https; fi
}
(
  set +e
  U=https://127.0.0.1:$PS
  while running; do
    https_req https_get 200 -H "$AUTH" "$U/tiny"
    https_req https_get_64k 200 -H "$AUTH" "$U/bytes/65536"
    https_req https_json 200 -H "$AUTH" -H 'Content-Type: application/json' \
      --data-binary '{"order":{"id":42,"items":[1,2,3],"note":"soak \u00e9"}}' "$U/api/orders"
    https_req https_forbidden 403 -H "$AUTH" "$U/status/200"
    https_req https_not_found 404 -H "$AUTH" "$U/nope"
    sleep 0.2
  done
) & PIDS+=($!)

# --- bad tokens, from 127.0.0.2 ----------------------------------------------------
(
  set +e
  i=0
  while running; do
    i=$((i + 1))
    rc=0; code=$(curl -s --max-time 10 --interface 127.0.0.2 -o /dev/null -w '%{http_code}' \
      -H "Authorization: Bearer pcx_bad${i}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" "http://127.0.0.1:$PP/tiny" 2>/dev/null) || rc=$?
    if [ "$rc" != 0 ]; then ev bad_token "error:curl_exit_$rc" bad
    elif [ "$code" = 401 ] || [ "$code" = 429 ]; then ev bad_token "refused:$code" bad
    else ev bad_token "error:status_$code" bad; fi
    sleep 0.1
  done
) & PIDS+=($!)

# --- malformed requests and slow clients (python, raw sockets) ---------------------
cat > "$TMP/chaos.py" <<'PY'
import socket, sys, threading, time, random
port, token, end, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
f = open(out, "a", buffering=1)
def ev(kind, outcome):
    with lock:
        f.write(f"{kind}\t{outcome}\n")
H = "Host: 127.0.0.1\r\n"
A = f"Authorization: Bearer {token}\r\n"
CASES = {
    "bad_chunk_size": f"POST /api/x HTTP/1.1\r\n{H}{A}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n",
    "cl_and_te": f"POST /api/x HTTP/1.1\r\n{H}{A}Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
    "te_obfuscated": f"POST /api/x HTTP/1.1\r\n{H}{A}Content-Type: application/json\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
    "garbage": "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "bare_lf": f"GET /tiny HTTP/1.1\nHost: 127.0.0.1\n{A.strip()}\n\n",
    "huge_head": f"GET /tiny HTTP/1.1\r\n{H}{A}X-Big: {'a' * 20000}\r\n\r\n",
    "bad_version": f"GET /tiny HTTP/7.1\r\n{H}{A}\r\n",
    "dot_dot": f"GET /tiny/../../etc/passwd HTTP/1.1\r\n{H}{A}\r\n",
    "bad_json": f"POST /api/x HTTP/1.1\r\n{H}{A}Content-Type: application/json\r\nContent-Length: 12\r\n\r\n{{\"a\":[1,2,}}",
}
def status_of(data):
    if data.startswith(b"HTTP/1.") and len(data) >= 12:
        return data[9:12].decode("ascii", "replace")
    return None
def malformed():
    while time.time() < end:
        for kind, req in CASES.items():
            s = socket.socket()
            s.settimeout(5)
            try:
                s.bind(("127.0.0.3", 0))
                s.connect(("127.0.0.1", port))
                s.sendall(req.encode("latin-1"))
                data = b""
                while len(data) < 16:
                    b = s.recv(4096)
                    if not b:
                        break
                    data += b
                st = status_of(data)
                if st is None:
                    ev("malformed:" + kind, "refused:closed" if not data else "error:not_http")
                elif st.startswith("2"):
                    ev("malformed:" + kind, "error:accepted_" + st)
                else:
                    ev("malformed:" + kind, "refused:" + st)
            except socket.timeout:
                ev("malformed:" + kind, "error:no_answer_5s")
            except OSError as e:
                ev("malformed:" + kind, "error:" + type(e).__name__)
            finally:
                s.close()
        time.sleep(0.2)
def slow_one():
    s = socket.socket()
    t0 = time.time()
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /tiny HTTP/1.1\r\n{H}X-Slow: ".encode())
        s.settimeout(0.5)
        data = b""
        while time.time() - t0 < 10:
            try:
                b = s.recv(4096)
                if not b:
                    break
                data += b
            except socket.timeout:
                try:
                    s.send(b"a")
                except OSError:
                    break
        secs = time.time() - t0
        st = status_of(data)
        if time.time() - t0 >= 10:
            ev("slow_client", "error:still_open_after_10s")
        elif st == "408":
            ev("slow_client", "refused:408")
        else:
            ev("slow_client", f"error:status_{st or 'none'}")
        with lock:
            slow_secs.append(secs)
    except OSError as e:
        ev("slow_client", "error:" + type(e).__name__)
    finally:
        s.close()
slow_secs = []
def slow():
    ts = []
    while time.time() < end:
        ts = [t for t in ts if t.is_alive()]
        if len(ts) < 4:
            t = threading.Thread(target=slow_one, daemon=True)
            t.start()
            ts.append(t)
        time.sleep(0.75)
    for t in ts:
        t.join()
threads = [threading.Thread(target=malformed), threading.Thread(target=slow)]
for t in threads: t.start()
for t in threads: t.join()
if slow_secs:
    with open(out + ".slow", "w") as g:
        g.write(f"{min(slow_secs):.2f}\t{sum(slow_secs)/len(slow_secs):.2f}\t{max(slow_secs):.2f}\n")
PY
python3 "$TMP/chaos.py" "$PP" "$TOKEN" "$END" "$TMP/events.chaos.tsv" > "$TMP/chaos.out" 2>&1 & PIDS+=($!)

# --- upstream restarts every 60 s -------------------------------------------------
(
  set +e
  k=1
  while :; do
    next=$(python3 -c "print($T0 + 60 * $k)")
    python3 -c "import sys; sys.exit(0 if $next < $END - 5 else 1)" || break
    python3 -c "import time; time.sleep(max(0, $next - time.time()))"
    k=$((k + 1))
    old=$(cat "$TMP/backend.pid")
    echo "$EPOCHSECONDS" > "$TMP/restart_at"
    kill "$old" 2>/dev/null || true
    for _ in $(seq 100); do  # until it has exited (or is a zombie of the main shell)
      [ -r "/proc/$old/stat" ] && [ "$(awk '{print $3}' "/proc/$old/stat" 2>/dev/null)" != Z ] || break
      sleep 0.05
    done
    sleep 1
    t_up=$(now)
    if ! start_backend; then ev restart "error:backend_did_not_restart" restart; continue; fi
    ok=0
    for _ in $(seq 300); do
      code=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' -H "$AUTH" "http://127.0.0.1:$PP/tiny" 2>/dev/null || true)
      [ "$code" = 200 ] && { ok=1; break; }
      sleep 0.1
    done
    ms=$(python3 -c "import time; print(int((time.time() - $t_up) * 1000))")
    if [ $ok = 1 ]; then ev restart ok restart; echo "$ms" >> "$TMP/recovery_ms.txt"
    else ev restart "error:no_200_within_30s" restart; fi
  done
) & PIDS+=($!)

# --- wrk in 30 s chunks (foreground) ------------------------------------------------
cat > "$TMP/status.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local agg = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do agg[k] = (agg[k] or 0) + v end
  end
  for k, v in pairs(agg) do io.write(string.format("SOAKSTATUS %d %d\n", k, v)) end
  local e = summary.errors
  io.write(string.format("SOAKERR %d %d %d %d\n", e.connect, e.read, e.write, e.timeout))
  io.write(string.format("SOAKLAT %d %d\n", latency:percentile(50), latency:percentile(99)))
end
LUA
echo "soak.sh: proxy pid $PX (workers $WORKERS), backend :$BP, http :$PP, https :$PS; running $SECONDS_TOTAL s"
chunk=0
while :; do
  l=$(left)
  [ "$l" -ge 2 ] || break
  d=$(( l < 30 ? l : 30 ))
  chunk=$((chunk + 1))
  wrk -t1 -c32 -d"${d}s" --timeout 10s -H "$AUTH" -s "$TMP/status.lua" "http://127.0.0.1:$PP/tiny" \
    > "$TMP/wrk.$chunk.out" 2>&1 &
  WAITING=$!
  wait "$WAITING" || echo "wrk chunk $chunk exited non-zero" >> "$TMP/wrk_failures.txt"
  WAITING=""
  printf 'soak.sh: %4ds  %s\n' "$(python3 -c "print(int($(now) - $T0))")" \
    "$(tail -1 "$TMP/samples.tsv" | awk -F'\t' '{printf "VmRSS %s kB, fds %s", $2, $3}')"
done
# Let the loops finish their last request (each checks the clock before starting one).
for p in "${PIDS[@]}"; do
  [ "$p" = "$PX" ] || [ "$p" = "$SAMPLER" ] && continue
  WAITING=$p; wait "$p" 2>/dev/null || true; WAITING=""
done
T1=$(now)
sleep 2
ALIVE=0
if [ -r "/proc/$PX/status" ] && [ "$(awk '{print $3}' "/proc/$PX/stat")" != Z ] \
   && curl -sf --max-time 5 "http://127.0.0.1:$AP/readyz" >/dev/null; then ALIVE=1; fi
FD_END=dead RSS_IDLE=dead
if [ $ALIVE = 1 ]; then
  FD_END=$(ls "/proc/$PX/fd" | wc -l)
  RSS_IDLE=$(awk '/^VmRSS:/ {print $2}' "/proc/$PX/status")
  curl -s --max-time 5 "http://127.0.0.1:$AP/metrics" > "$TMP/metrics.txt" || true
fi
kids=$(pgrep -P "$SAMPLER" || true); kill "$SAMPLER" 2>/dev/null || true
for k in $kids; do kill "$k" 2>/dev/null || true; done
wait "$SAMPLER" 2>/dev/null || true
# Stop the proxy as an operator would; then the audit log is complete.
PX_RC=dead
if [ $ALIVE = 1 ]; then
  kill -TERM "$PX"
  PX_RC=0; wait "$PX" || PX_RC=$?
fi
AUDIT_BYTES=$(stat -c %s "$TMP/audit.log" 2>/dev/null || echo 0)
AUDIT_RC=0
"$BIN/portcullisctl" audit verify --keyring "$TMP/keyring.toml" "$TMP/audit.log" > "$TMP/verify.out" 2>&1 || AUDIT_RC=$?
[ -f "$TMP/access.log" ] && wc -l < "$TMP/access.log" >> "$TMP/access_lines.txt"
grep -E 'alert|error|fatal|abort' -i "$TMP/px.log" | grep -vi 'auth_failures\|scanning\|forbidden\|ban' | tail -5 > "$TMP/px_notable.txt" || true

mkdir -p "$(dirname "$OUT")"
python3 - "$TMP" "$T0" "$T1" "$SECONDS_TOTAL" "$WORKERS" "$ALIVE" "$PX_RC" "$AUDIT_RC" "$FD_START" "$FD_END" \
  "$RSS_IDLE" "$AUDIT_BYTES" "$OUT" <<'PY'
import glob, json, os, re, sys
from collections import Counter, defaultdict
tmp, t0, t1, secs, workers, alive, px_rc, audit_rc, fd_start, fd_end, rss_idle, audit_bytes, out = sys.argv[1:]
t0, t1, secs = float(t0), float(t1), int(secs)
alive = alive == "1"

ok, refused, errors = Counter(), defaultdict(Counter), defaultdict(Counter)
def add(kind, outcome, n=1):
    if outcome == "ok":
        ok[kind] += n
    elif outcome.startswith("refused:"):
        refused[kind][outcome[8:]] += n
    else:
        errors[kind][outcome.split(":", 1)[1] if ":" in outcome else outcome] += n
for fn in glob.glob(os.path.join(tmp, "events.*.tsv")):
    for line in open(fn):
        if "\t" in line:
            k, o = line.rstrip("\n").split("\t", 1)
            add(k, o)

# wrk chunks: 200 ok, 502/503/504 refused (upstream restarts), anything else an error.
lat = []
for fn in sorted(glob.glob(os.path.join(tmp, "wrk.*.out"))):
    txt = open(fn).read()
    for code, n in re.findall(r"^SOAKSTATUS (\d+) (\d+)$", txt, re.M):
        n = int(n)
        if code == "200": add("wrk_get", "ok", n)
        elif code in ("502", "503", "504"): add("wrk_get", "refused:" + code, n)
        else: add("wrk_get", "error:status_" + code, n)
    m = re.search(r"^SOAKERR (\d+) (\d+) (\d+) (\d+)$", txt, re.M)
    if m:
        for name, v in zip(("connect", "read", "write", "timeout"), map(int, m.groups())):
            if v: add("wrk_get", "error:socket_" + name, v)
    else:
        add("wrk_get", "error:no_summary", 1)
    m = re.search(r"^SOAKLAT (\d+) (\d+)$", txt, re.M)
    if m: lat.append((int(m.group(1)), int(m.group(2))))

samples = []
dead_at = None
for line in open(os.path.join(tmp, "samples.tsv")):
    t, rss, fds = line.rstrip("\n").split("\t")
    if rss == "dead":
        dead_at = dead_at or float(t) - t0
        continue
    samples.append((float(t) - t0, int(rss), int(fds)))
load = [s for s in samples if s[0] <= t1 - t0] or samples
def at(frac):
    target = frac * secs
    return min(load, key=lambda s: abs(s[0] - target))
warm = at(0.10)
end = load[-1]
peak = max(load, key=lambda s: s[1])
ratio = end[1] / warm[1]

metrics = Counter()
mp = os.path.join(tmp, "metrics.txt")
if os.path.exists(mp):
    for line in open(mp):
        m = re.match(r'^portcullis_requests_total\{([^}]*)\} (\S+)', line)
        if m:
            st = re.search(r'status="(\d+)"', m.group(1))
            metrics[st.group(1) if st else "?"] += int(float(m.group(2)))
rec = [int(x) for x in open(os.path.join(tmp, "recovery_ms.txt"))] if os.path.exists(os.path.join(tmp, "recovery_ms.txt")) else []
access_lines = sum(int(x) for x in open(os.path.join(tmp, "access_lines.txt"))) if os.path.exists(os.path.join(tmp, "access_lines.txt")) else 0
slow = open(os.path.join(tmp, "events.chaos.tsv.slow")).read().split() if os.path.exists(os.path.join(tmp, "events.chaos.tsv.slow")) else []
verify = open(os.path.join(tmp, "verify.out")).read().strip()
mismatch = open(os.path.join(tmp, "mismatch.txt")).read().splitlines()[:5] if os.path.exists(os.path.join(tmp, "mismatch.txt")) else []
notable = open(os.path.join(tmp, "px_notable.txt")).read().splitlines()
errlog = open(os.path.join(tmp, "errors.log")).read().splitlines() if os.path.exists(os.path.join(tmp, "errors.log")) else []

restart_err = sum(errors["restart"].values())
failures = []
if not alive: failures.append("proxy died" + (f" (first missing sample at {dead_at:.0f} s)" if dead_at else "") + " or /readyz failed")
if audit_rc != "0": failures.append("audit verify failed")
if ratio > 1.10: failures.append(f"RSS end {ratio:.3f} x after warm-up > 1.10")
if restart_err: failures.append("proxy did not recover from an upstream restart")

kinds = sorted(set(ok) | set(refused) | set(errors))
total_ok = sum(ok.values()); total_ref = sum(sum(c.values()) for c in refused.values())
total_err = sum(sum(c.values()) for c in errors.values())
mib = lambda kb: kb / 1024
print(f"\nsoak: {t1 - t0:.0f} s of mixed traffic (asked {secs} s), 1 Portcullis with {workers} workers")
print(f"  requests: {total_ok + total_ref + total_err:,} ({total_ok:,} ok, {total_ref:,} refused as expected, {total_err:,} errors)")
print(f"  {'kind':<28} {'ok':>10}  refused (status: count)        errors")
for k in kinds:
    r = ", ".join(f"{s}: {n:,}" for s, n in sorted(refused[k].items())) or "-"
    e = ", ".join(f"{s}: {n:,}" for s, n in sorted(errors[k].items())) or "-"
    print(f"  {k:<28} {ok[k]:>10,}  {r:<30} {e}")
if metrics:
    print("  proxy /metrics requests by status: " + ", ".join(f"{s}: {n:,}" for s, n in sorted(metrics.items())))
if lat:
    print(f"  wrk GET /tiny latency per 30 s chunk: p50 {min(l[0] for l in lat)}..{max(l[0] for l in lat)} us,"
          f" p99 {min(l[1] for l in lat)}..{max(l[1] for l in lat)} us")
if rec:
    print(f"  upstream restarts: {len(rec)} recovered, first 200 after {min(rec)}..{max(rec)} ms")
if slow:
    print(f"  slow clients closed after {slow[0]}..{slow[2]} s (mean {slow[1]} s; request_header_ms = 2000)")
if mismatch:
    print("  upload length mismatches: " + "; ".join(mismatch))
print(f"  proxy VmRSS: after warm-up (t={warm[0]:.0f} s) {mib(warm[1]):.1f} MiB, peak {mib(peak[1]):.1f} MiB (t={peak[0]:.0f} s),"
      f" end (t={end[0]:.0f} s) {mib(end[1]):.1f} MiB; idle after traffic "
      + (f"{mib(int(rss_idle)):.1f} MiB" if rss_idle != "dead" else "n/a") + f"; {len(samples)} samples every 2 s")
print(f"  end / after-warm-up: {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
print(f"  open fds: start {fd_start}, peak under load {max(s[2] for s in load)}, end under load {end[2]}, after traffic {fd_end}")
print(f"  access log lines: {access_lines:,} (rotated every 60 s); audit log: {int(audit_bytes) / 1048576:.1f} MiB")
print(f"  proxy alive at the end: {'yes' if alive else 'NO'}; exit status on SIGTERM: {px_rc}")
print(f"  audit verify: {'ok' if audit_rc == '0' else 'FAILED (exit ' + audit_rc + ')'}: {verify.splitlines()[-1] if verify else ''}")
for n in notable:
    print("  proxy stderr: " + n[:200])
if errlog:
    print(f"  client errors (first 20 of {len(errlog)}, seconds since start):")
    for n in errlog[:20]:
        print("    " + n)
print("soak: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
summary = {
    "duration_s": round(t1 - t0, 1), "requested_s": secs, "workers": int(workers),
    "ok": dict(ok), "refused": {k: dict(v) for k, v in refused.items()},
    "errors": {k: dict(v) for k, v in errors.items() if v},
    "totals": {"ok": total_ok, "refused": total_ref, "errors": total_err},
    "proxy_requests_by_status": dict(metrics),
    "wrk_latency_us_per_chunk": [{"p50": a, "p99": b} for a, b in lat],
    "upstream_restart_recovery_ms": rec,
    "slow_client_close_s": {"min": float(slow[0]), "mean": float(slow[1]), "max": float(slow[2])} if slow else None,
    "rss_kib": {"after_warmup": warm[1], "after_warmup_t_s": round(warm[0], 1), "peak": peak[1], "end": end[1],
                "end_t_s": round(end[0], 1), "idle_after": None if rss_idle == "dead" else int(rss_idle),
                "end_over_warmup": round(ratio, 4)},
    "fds": {"start": int(fd_start), "peak": max(s[2] for s in load), "end_under_load": end[2],
            "after_traffic": None if fd_end == "dead" else int(fd_end)},
    "samples": [[round(t, 1), r, f] for t, r, f in samples],
    "access_log_lines": access_lines, "audit_log_bytes": int(audit_bytes),
    "proxy_alive": alive, "proxy_exit_status": px_rc, "audit_verify_ok": audit_rc == "0", "audit_verify": verify,
    "client_errors": errlog[:1000], "proxy_stderr_notable": notable,
    "failures": failures, "pass": not failures,
}
json.dump(summary, open(out, "w"), indent=1)
print(f"  summary JSON: {out}")
sys.exit(1 if failures else 0)
PY
