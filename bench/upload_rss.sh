#!/usr/bin/env bash
# Is the proxy's memory flat while it encrypts one large upload?
#
#   bench/upload_rss.sh [BUILD_DIR] [MIB]          (default build, 1024 = 1 GiB)
#
# Starts demo-backend (hashes and discards bodies, answers with body_bytes) and
# one Portcullis worker whose /upload route has encrypt_body = true (a fresh
# keyring, key k1), then streams MIB MiB through it with curl from a sparse
# file (reads as zeros, takes no disk space), while sampling the proxy's VmRSS
# (/proc/PID/status) and the bytes it has read so far (rchar, /proc/PID/io)
# every 100 ms. Reports RSS before the upload, after the first MiB was read,
# the peak, and at the end, and the growth peak - after-first-MiB (target:
# < 1 MiB). Checks that the backend received exactly the pcx1 ciphertext
# length. Every process it starts and its temp dir are removed on exit.
set -euo pipefail
BUILD=${1:-build}
MIB=${2:-1024}
[[ $MIB =~ ^[0-9]+$ ]] && [ "$MIB" -ge 2 ] || { echo "upload_rss.sh: MIB must be a whole number >= 2" >&2; exit 1; }
BIN=$(cd "$BUILD/bin" && pwd)
for b in portcullis portcullisctl demo-backend; do
  [ -x "$BIN/$b" ] || { echo "upload_rss.sh: $BIN/$b not built" >&2; exit 1; }
done
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-rss.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PP=$(port); AP=$(port)

BYTES=$(( MIB * 1048576 ))
KEY_ID=k1 SEG=65536
CT_BYTES=$(( 4 + 2 + 4 + 1 + ${#KEY_ID} + 12 + 48 + 7 + BYTES + 16 * ((BYTES + SEG - 1) / SEG) ))

(umask 077 && "$BIN/portcullisctl" keys gen --keyring "$TMP/keyring.toml" --id "$KEY_ID" --activate > "$TMP/keygen.out" 2>&1) \
  || { echo "upload_rss.sh: portcullisctl keys gen failed: $(cat "$TMP/keygen.out")" >&2; exit 1; }
"$BIN/demo-backend" --listen 127.0.0.1:0 --port-file "$TMP/backend.port" --quiet > "$TMP/backend.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$TMP/backend.port" ] && break; sleep 0.1; done
[ -s "$TMP/backend.port" ] || { echo "upload_rss.sh: demo-backend did not start" >&2; exit 1; }
BP=$(cat "$TMP/backend.port")

mkdir -p "$TMP/state"
cat > "$TMP/p.toml" <<TOML
[server]
workers = 1
listen_http = "127.0.0.1:$PP"
admin_listen = "127.0.0.1:$AP"
state_dir = "$TMP/state"
[https]
plaintext = "allow"
[log]
access = "$TMP/access.log"
audit = "$TMP/audit.log"
[encryption]
keyring = "$TMP/keyring.toml"
segment_bytes = $SEG
[[upstream]]
name = "origin"
servers = ["127.0.0.1:$BP"]
[[route]]
prefix = "/upload"
upstream = "origin"
auth = false
max_body_bytes = $BYTES
encrypt_body = true
TOML
"$BIN/portcullis" -c "$TMP/p.toml" > "$TMP/px.log" 2>&1 &
PX=$!
PIDS+=($PX)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AP/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$AP/readyz" >/dev/null || { echo "upload_rss.sh: portcullis not ready: $(tail -3 "$TMP/px.log")" >&2; exit 1; }

# One small upload first, so RSS "before" includes a connection that has
# carried an encrypted body (buffers, TLS-free upstream connection, pools).
head -c 1048576 /dev/zero > "$TMP/warm.bin"
curl -sf -o /dev/null -H 'Expect:' -H 'Content-Type: application/octet-stream' \
  --data-binary "@$TMP/warm.bin" "http://127.0.0.1:$PP/upload" || { echo "upload_rss.sh: warm-up upload failed" >&2; exit 1; }
rm -f "$TMP/warm.bin"
sleep 0.5

truncate -s "$BYTES" "$TMP/body.sparse"   # sparse: no disk blocks, reads as zeros
T0=$(date +%s.%N)
curl -s -o "$TMP/reply.json" -w '%{http_code}\n' -X POST -T "$TMP/body.sparse" -H 'Expect:' \
  -H 'Content-Type: application/octet-stream' "http://127.0.0.1:$PP/upload" > "$TMP/code.txt" 2> "$TMP/curl.err" &
CURL=$!
PIDS+=($CURL)

# Sampler: every 100 ms, "seconds VmRSS_kiB rchar" of the proxy until curl exits.
python3 - "$PX" "$CURL" "$TMP/samples.tsv" <<'PY'
import os, sys, time
px, curl, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def sample():
    rss = None
    for line in open(f"/proc/{px}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    rchar = None
    for line in open(f"/proc/{px}/io"):
        if line.startswith("rchar:"):
            rchar = int(line.split()[1])
    return rss, rchar
t0 = time.monotonic()
with open(out, "w") as f:
    while True:
        rss, rchar = sample()
        f.write(f"{time.monotonic() - t0:.3f}\t{rss}\t{rchar}\n")
        try:
            with open(f"/proc/{curl}/stat") as s:
                if s.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    time.sleep(0.3)  # one sample after the reply
    rss, rchar = sample()
    f.write(f"{time.monotonic() - t0:.3f}\t{rss}\t{rchar}\n")
PY
wait "$CURL" || true
T1=$(date +%s.%N)
CODE=$(cat "$TMP/code.txt")
GOT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("body_bytes", -1))' "$TMP/reply.json" 2>/dev/null || echo -1)

python3 - "$TMP/samples.tsv" "$MIB" "$CODE" "$GOT" "$CT_BYTES" "$T0" "$T1" <<'PY'
import sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
rows = [(float(t), int(r), int(c)) for t, r, c in rows]
mib, code, got, ct, t0, t1 = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
start_rss, start_rchar = rows[0][1], rows[0][2]
after = next((r for t, r, c in rows if c - start_rchar >= 1048576), rows[0][1])
peak = max(r for _, r, _ in rows[:-1]) if len(rows) > 1 else rows[0][1]
end = rows[-1][1]
secs = t1 - t0
print(f"upload_rss: {mib} MiB through encrypt_body in {secs:.1f} s ({mib * 1048576 / secs / 1e6:,.0f} MB/s plaintext),"
      f" HTTP {code}, backend got {got:,} bytes (pcx1 ciphertext expected {ct:,}: {'ok' if got == ct else 'MISMATCH'})")
print(f"  proxy VmRSS: start {start_rss / 1024:.1f} MiB, after the first MiB {after / 1024:.1f} MiB,"
      f" peak {peak / 1024:.1f} MiB, end {end / 1024:.1f} MiB ({len(rows)} samples every 100 ms)")
growth = (peak - after) / 1024
print(f"  growth after the first MiB: {growth:.2f} MiB (peak - after first MiB); end - start: {(end - start_rss) / 1024:.2f} MiB;"
      f" target < 1 MiB: {'met' if growth < 1 else 'NOT met'}")
sys.exit(0 if code == "200" and got == ct else 1)
PY
