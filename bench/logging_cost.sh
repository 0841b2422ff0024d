#!/usr/bin/env bash
# What do the audit and access logs cost? GET /tiny on an authenticated route
# through two Portcullis instances that differ only in logging:
#
#   logs-on:  [log] access + audit, [encryption] keyring (keys the audit HMAC
#             chain); every request writes an access line and an auth.success
#             audit record
#   logs-off: [log] access = "", no [encryption] (so no audit log)
#
#   bench/logging_cost.sh [BUILD_DIR]              (default build)
#
# Env: DURATION (s per wrk run, 10), CONNS (64), ROUNDS (3; the order reverses
# every round), PIN (0; 1 = proxies on cpu 0, wrk and origin on cpu 1), OUT
# (results dir, default bench/results/<UTC timestamp>-logging), VARIANTS ("on off";
# add "access" = access log only and/or "audit" = audit log only, to split the cost;
# "noauth" = logs off and the route public (auth = false): off vs noauth is the
# cost of the token check + RBAC; "limits" = logs off with every rate limit on,
# set far above the load: limits vs off is the limiter's cost).
# Both use one worker, plaintext HTTP (plaintext = "allow",
# revoke_tokens_seen_in_plaintext = false: the token is sent in the clear on
# loopback), no [rate_limit], detection on (default), one token from
# `portcullisctl token issue` with a role allowing GET /tiny, and the same nginx
# origin returning 64 bytes. Reports req/s and proxy CPU per request for both and
# the ratios (target: logs on costs <= 5 % throughput) and each thread's CPU per
# request (OUT/threads.tsv); checks that logs-on wrote
# one access line and one auth.success record per request, and verifies the
# audit chain (portcullisctl audit verify). Every process it starts and its temp
# dir (logs included) are removed on exit.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${1:-build}
[ -d "$BUILD" ] || BUILD=$(dirname "$BENCH_DIR")/$BUILD
BIN=$(cd "$BUILD/bin" && pwd)
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
PIN=${PIN:-0}
read -r -a VARIANTS <<< "${VARIANTS:-on off}"
for v in "${VARIANTS[@]}"; do
  case $v in on|off|access|audit|noauth|limits) ;; *) echo "logging_cost.sh: VARIANTS: unknown '$v' (on off access audit noauth limits)" >&2; exit 1 ;; esac
done
[[ " ${VARIANTS[*]} " == *" on "* && " ${VARIANTS[*]} " == *" off "* ]] || { echo "logging_cost.sh: VARIANTS must include on and off" >&2; exit 1; }
OUT=${OUT:-$BENCH_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)-logging}
for v in DURATION CONNS ROUNDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "logging_cost.sh: $v must be a whole number >= 1" >&2; exit 1; }
done
for t in nginx wrk curl python3; do command -v "$t" >/dev/null || { echo "logging_cost.sh: '$t' not found; run tools/install-deps.sh --bench" >&2; exit 1; }; done
for b in portcullis portcullisctl; do [ -x "$BIN/$b" ] || { echo "logging_cost.sh: $BIN/$b not built" >&2; exit 1; }; done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-logcost.XXXXXX")
declare -A PID=()
PIDS=()
cleanup() {
  local rc=$? p
  trap "" INT TERM
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { echo "logging_cost.sh: $*" >&2; exit 1; }
start() {  # start NAME CPU CMD...
  local name=$1 cpu=$2; shift 2
  [ "$PIN" = 1 ] && set -- taskset -c "$cpu" "$@"
  "$@" > "$TMP/$name.out" 2>&1 &
  PID[$name]=$!
  PIDS+=($!)
}
mapfile -t P < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(13)]
for s in ss: s.bind(("127.0.0.1", 0))
for s in ss: print(s.getsockname()[1])')
ORIGIN=${P[0]}
declare -A PORT=([on]=${P[1]} [off]=${P[2]} [access]=${P[5]} [audit]=${P[6]} [noauth]=${P[9]} [limits]=${P[11]})
declare -A ADMIN=([on]=${P[3]} [off]=${P[4]} [access]=${P[7]} [audit]=${P[8]} [noauth]=${P[10]} [limits]=${P[12]})

# Origin: nginx, one worker, GET /tiny -> 64 bytes (as in compare.sh).
TINY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
cat > "$TMP/origin.conf" <<NGX
daemon off; master_process off; worker_processes 1;
pid $TMP/origin.pid; error_log $TMP/origin-error.log warn; worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off; server_tokens off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $TMP/ob; proxy_temp_path $TMP/op; fastcgi_temp_path $TMP/of;
  uwsgi_temp_path $TMP/ou; scgi_temp_path $TMP/os;
  server { listen 127.0.0.1:$ORIGIN backlog=4096;
           location = /tiny { default_type text/plain; return 200 "$TINY"; } }
}
NGX
start origin 1 nginx -e "$TMP/origin-error.log" -p "$TMP" -c "$TMP/origin.conf"

# Token and keyring.
(umask 077 && "$BIN/portcullisctl" token issue --store "$TMP/tokens.toml" --account bench --role r \
   > "$TMP/token" 2> "$TMP/issue.err") || die "token issue failed: $(cat "$TMP/issue.err")"
TOKEN=$(cat "$TMP/token")
(umask 077 && "$BIN/portcullisctl" keys gen --keyring "$TMP/keyring.toml" --id k1 --activate > "$TMP/keygen.out" 2>&1) \
  || die "keys gen failed: $(cat "$TMP/keygen.out")"

for v in "${VARIANTS[@]}"; do
  mkdir -p "$TMP/$v-state"
  {
    cat <<TOML
[server]
workers = 1
listen_http = "127.0.0.1:${PORT[$v]}"
admin_listen = "127.0.0.1:${ADMIN[$v]}"
state_dir = "$TMP/$v-state"

[https]
plaintext = "allow"
revoke_tokens_seen_in_plaintext = false   # the bench token travels in the clear on loopback

[auth]
token_store = "$TMP/tokens.toml"

[[role]]
name = "r"
allow = ["GET /tiny"]

[[upstream]]
name = "origin"
servers = ["127.0.0.1:$ORIGIN"]

[[route]]
prefix = "/"
upstream = "origin"
auth = $([ "$v" = noauth ] && echo false || echo true)

TOML
    if [ "$v" = on ] || [ "$v" = audit ]; then
      cat <<TOML
[encryption]
keyring = "$TMP/keyring.toml"   # keys the audit log's HMAC chain

[log]
access = "$([ "$v" = on ] && echo "$TMP/$v-access.log")"
audit = "$TMP/$v-audit.log"
TOML
    elif [ "$v" = access ]; then
      cat <<TOML
[log]
access = "$TMP/$v-access.log"   # no [encryption], so no audit log
TOML
    else
      cat <<TOML
[log]
access = ""                     # access log off; no [encryption], so no audit log
TOML
    fi
    if [ "$v" = limits ]; then
      cat <<TOML

[rate_limit]                    # every limit on, far above the offered load
ip = { rps = 10000000, burst = 10000000 }
token = { rps = 10000000, burst = 10000000 }
auth_failures = { max = 1000000, window_s = 60, ban_s = 1 }
TOML
    fi
  } > "$TMP/$v.toml"
  "$BIN/portcullis" -t -c "$TMP/$v.toml" > "$TMP/$v-check.out" 2>&1 || die "logs-$v config: $(cat "$TMP/$v-check.out")"
  start "$v" 0 "$BIN/portcullis" -c "$TMP/$v.toml"
done
for v in origin "${VARIANTS[@]}"; do
  url="http://127.0.0.1:${ADMIN[$v]:-$ORIGIN}/readyz"; [ "$v" = origin ] && url="http://127.0.0.1:$ORIGIN/tiny"
  for _ in $(seq 150); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ] && break; sleep 0.1; done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ] || die "$v did not start: $(tail -3 "$TMP/$v.out")"
done
for v in "${VARIANTS[@]}"; do
  body=$(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${PORT[$v]}/tiny")
  [ "$body" = "$TINY" ] || die "logs-$v: authenticated GET /tiny did not return the origin body: $body"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$v]}/tiny")
  want=401; [ "$v" = noauth ] && want=200   # the public route needs no token
  [ "$code" = "$want" ] || die "logs-$v: GET /tiny without a token got $code, not $want"
done

ticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo $(( ${12} + ${13} )); }
# Per thread: "name ticks" for every thread of process $1 (utime + stime), so
# that the table can say which thread a logged request's extra CPU lands on.
thread_ticks() {
  local t s c
  for t in /proc/"$1"/task/*; do
    s=$(cat "$t/stat" 2>/dev/null) && c=$(cat "$t/comm" 2>/dev/null) || continue
    s=${s##*) }; set -- $s; echo "$c $(( ${12} + ${13} ))"
  done
}
mkdir -p "$OUT/raw"
: > "$OUT/runs.tsv"
: > "$OUT/threads.tsv"
echo "logging_cost: DURATION=${DURATION}s CONNS=$CONNS ROUNDS=$ROUNDS PIN=$PIN  ->  $OUT"
run() {  # run VARIANT ROUND (ROUND 0 = warm-up)
  local v=$1 r=$2 d=$DURATION raw="$OUT/raw/r$2-logs-$1.txt" t0 t1 line
  [ "$r" = 0 ] && { d=1; raw=$TMP/warm.txt; }
  local cmd=(wrk -t1 -c"$CONNS" -d"${d}s" --latency --timeout 10s -H "Authorization: Bearer $TOKEN"
             -s "$BENCH_DIR/report.lua" "http://127.0.0.1:${PORT[$v]}/tiny")
  [ "$PIN" = 1 ] && cmd=(taskset -c 1 "${cmd[@]}")
  local tt0 tt1
  tt0=$(thread_ticks "${PID[$v]}")
  t0=$(ticks "${PID[$v]}")
  "${cmd[@]}" > "$raw" 2>&1 & local w=$!; PIDS+=($w); wait "$w" || true
  t1=$(ticks "${PID[$v]}")
  tt1=$(thread_ticks "${PID[$v]}")
  [ "$r" = 0 ] && return 0
  # variant, round, thread name, ticks spent during the run (threads of one
  # name summed; a thread that started or ended mid-run counts what it has).
  awk -v v="$v" -v r="$r" 'NR == FNR { a[$1] += $2; next } { b[$1] += $2 }
    END { for (k in b) { d = b[k] - a[k]; if (d > 0) printf "%s\t%s\t%s\t%d\n", v, r, k, d } }' \
    <(echo "$tt0") <(echo "$tt1") >> "$OUT/threads.tsv"
  line=$(grep -m1 '^PCBENCH ' "$raw" | cut -d' ' -f2-) || die "wrk gave no result for logs-$v round $r; see $raw"
  printf '%s\t%s\t%s\t%s\n' "$v" "$r" "$(( t1 - t0 ))" "$line" >> "$OUT/runs.tsv"
  python3 -c '
import json, sys
v, r, t, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[5]); w = json.loads(sys.argv[4])
n = w["requests"]; rps = n / (w["duration_us"] / 1e6)
errs = sum(w[k] for k in w if k.startswith("err_"))
p99 = w["p99_us"]
print(f"  round {r}  logs-{v:<7} {rps:9,.0f} req/s  p99 {p99:6d} us  proxy CPU {t * 1e6 / hz / n:5.1f} us/req"
      + (f"  ({errs} errors)" if errs else ""))' "$v" "$r" "$(( t1 - t0 ))" "$line" "$CLK_TCK"
}
for v in "${VARIANTS[@]}"; do run "$v" 0; done
for r in $(seq "$ROUNDS"); do
  if [ $(( r % 2 )) = 1 ]; then order=("${VARIANTS[@]}")
  else order=(); for (( i = ${#VARIANTS[@]} - 1; i >= 0; i-- )); do order+=("${VARIANTS[$i]}"); done; fi
  for v in "${order[@]}"; do run "$v" "$r"; done
done

# Did logs-on really log every request?
sleep 1.5   # the log thread flushes asynchronously
ACCESS_LINES=$(wc -l < "$TMP/on-access.log" 2>/dev/null || echo 0)
AUDIT_SUCCESS=$(grep -c '"auth.success"' "$TMP/on-audit.log" 2>/dev/null || echo 0)
VERIFY=$( (timeout 120 "$BIN/portcullisctl" audit verify --keyring "$TMP/keyring.toml" "$TMP/on-audit.log" 2>&1 || echo "exit $?") | tail -1)
AUDIT_BYTES=$(stat -c %s "$TMP/on-audit.log" 2>/dev/null || echo 0)
ACCESS_BYTES=$(stat -c %s "$TMP/on-access.log" 2>/dev/null || echo 0)

python3 - "$OUT" "$CLK_TCK" "$ACCESS_LINES" "$AUDIT_SUCCESS" "$VERIFY" "$AUDIT_BYTES" "$ACCESS_BYTES" \
  "$(nproc)" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$DURATION" "$CONNS" "$ROUNDS" "${VARIANTS[*]}" <<'PY'
import json, math, statistics, sys, time
out, hz = sys.argv[1], int(sys.argv[2])
access_lines, audit_success, verify = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
audit_bytes, access_bytes = int(sys.argv[6]), int(sys.argv[7])
runs = []
for line in open(f"{out}/runs.tsv"):
    v, r, t, j = line.rstrip("\n").split("\t", 3)
    w = json.loads(j)
    n = w["requests"]
    runs.append({"variant": v, "round": int(r), "requests": n, "rps": n / (w["duration_us"] / 1e6),
                 "p50_us": w["p50_us"], "p99_us": w["p99_us"], "proxy_cpu_us_per_req": int(t) * 1e6 / hz / n,
                 "errors": sum(w[k] for k in w if k.startswith("err_"))})
variants = sys.argv[13].split()
# CPU per request by thread name, median over rounds (a round where a thread
# spent nothing counts as 0).
requests_of = {(x["variant"], x["round"]): x["requests"] for x in runs}
per_thread = {}
for line in open(f"{out}/threads.tsv"):
    v, r, name, t = line.rstrip("\n").split("\t")
    per_thread.setdefault(v, {}).setdefault(name, {})[int(r)] = int(t) * 1e6 / hz / requests_of[(v, int(r))]
threads = {v: {name: statistics.median([by_round.get(x["round"], 0.0) for x in runs if x["variant"] == v])
               for name, by_round in per_thread.get(v, {}).items()} for v in variants}
med = {v: {k: statistics.median(x[k] for x in runs if x["variant"] == v) for k in ("rps", "p99_us", "proxy_cpu_us_per_req")}
       for v in variants}
rounds = sorted({x["round"] for x in runs})
paired = [next(x["rps"] for x in runs if x["variant"] == "on" and x["round"] == r) /
          next(x["rps"] for x in runs if x["variant"] == "off" and x["round"] == r) for r in rounds]
on_requests = sum(x["requests"] for x in runs if x["variant"] == "on")
res = {
    "machine": {"nproc": int(sys.argv[8]), "cpu_model": sys.argv[9], "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    "settings": {"duration_s": int(sys.argv[10]), "connections": int(sys.argv[11]), "rounds": int(sys.argv[12])},
    "runs": runs, "medians": med, "thread_cpu_us_per_req": threads,
    "ratio_on_off": {k: med["on"][k] / med["off"][k] for k in med["on"]},
    "ratio_to_off": {v: {k: med[v][k] / med["off"][k] for k in med[v]} for v in variants},
    "paired_rps_ratio_per_round": paired,
    "logs_on_check": {"requests_incl_warmup_excluded": on_requests, "access_lines": access_lines,
                      "audit_auth_success": audit_success, "audit_bytes": audit_bytes, "access_bytes": access_bytes,
                      "audit_verify": verify},
}
json.dump(res, open(f"{out}/results.json", "w"), indent=2)
r = res["ratio_on_off"]
print()
print(f"Logging cost ({res['machine']['nproc']} CPUs {res['machine']['cpu_model']}; {sys.argv[10]} s x {len(rounds)} rounds, "
      f"{sys.argv[11]} conns; authenticated GET /tiny; medians)")
print(f"{'':<12}{'req/s':>10}{'p99 us':>9}{'CPU us/req':>12}")
names = {"on": "access + audit", "off": "no logs", "access": "access log only", "audit": "audit log only",
         "noauth": "no logs, public route: no token check",
         "limits": "no logs, rate limits on (not triggered)"}
for v in variants:
    q = res["ratio_to_off"][v]
    print(f"logs-{v:<7}{med[v]['rps']:>10,.0f}{med[v]['p99_us']:>9,.0f}{med[v]['proxy_cpu_us_per_req']:>12.2f}"
          f"   vs off: req/s {q['rps']:.3f}, CPU/req {q['proxy_cpu_us_per_req']:.3f}  ({names[v]})")
print("  CPU us/req by thread (medians): " + "; ".join(
    f"logs-{v} " + ", ".join(f"{n} {u:.2f}" for n, u in sorted(threads[v].items(), key=lambda kv: -kv[1]) if u >= 0.005)
    for v in variants))
print(f"  per-round req/s ratio on/off: " + ", ".join(f"{x:.3f}" for x in paired))
if paired:
    gm = math.exp(sum(math.log(x) for x in paired) / len(paired))
    print(f"  per-round ratios (drift-robust): median {statistics.median(paired):.3f}, geometric mean {gm:.3f}")
if "limits" in variants:
    a = med["limits"]["rps"] / med["off"]["rps"]
    print(f"  rate limits on vs off: req/s {a:.3f} (target >= 0.97: {'met' if a >= 0.97 else 'NOT met'}),"
          f" CPU/req {med['limits']['proxy_cpu_us_per_req'] / med['off']['proxy_cpu_us_per_req']:.3f}")
if "noauth" in variants:
    a = med["off"]["rps"] / med["noauth"]["rps"]
    print(f"  token check + RBAC: off vs noauth req/s {a:.3f} (target >= 0.95: {'met' if a >= 0.95 else 'NOT met'}),"
          f" CPU/req {med['off']['proxy_cpu_us_per_req'] / med['noauth']['proxy_cpu_us_per_req']:.3f}")
cost = 1 - r["rps"]
print(f"  throughput cost of audit + access logging: {cost * 100:.1f} % (target <= 5 %: {'met' if cost <= 0.05 else 'NOT met'});"
      f" CPU per request +{(r['proxy_cpu_us_per_req'] - 1) * 100:.1f} %")
print(f"  logs-on wrote {access_lines:,} access lines ({access_bytes / max(access_lines, 1):.0f} B each) and {audit_success:,}"
      f" auth.success records ({audit_bytes / max(audit_success, 1):.0f} B each) for {on_requests:,} measured requests"
      f" (+ warm-up and checks); audit verify: {verify}")
PY
