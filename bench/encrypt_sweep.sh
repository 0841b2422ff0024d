#!/usr/bin/env bash
# Issue 7's encryption budget across upload concurrency: one
# `MODE=encrypt bench/compare.sh` run per connection count, then a table of
# what encryption adds to Portcullis' CPU per MiB over its plain forwarding,
# against the raw seal measured in the same run (budget: plain + 1.1 x raw).
#
#   bench/encrypt_sweep.sh [BUILD_DIR]        (default build)
#
# Env: SWEEP_CONNS (upload connections per run, "8 16 32 64"), DURATION (5),
# ROUNDS (3), UPLOAD_MB (1), OUT (results dir, default
# bench/results/<UTC timestamp>-encrypt-sweep; each run in OUT/conns-N/),
# and compare.sh's other knobs, passed through.
# Writes OUT/sweep.json and prints the table; exits non-zero only if a run
# failed, never because a budget was missed (the table says which).
set -euo pipefail

BUILD_DIR=${1:-build}
HERE=$(cd "$(dirname "$0")" && pwd)
SWEEP_CONNS=${SWEEP_CONNS:-8 16 32 64}
export DURATION=${DURATION:-5} ROUNDS=${ROUNDS:-3} UPLOAD_MB=${UPLOAD_MB:-1}
OUT=${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)-encrypt-sweep}

for n in $SWEEP_CONNS; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "encrypt_sweep: SWEEP_CONNS: \"$n\" is not a positive integer" >&2; exit 2; }
done
mkdir -p "$OUT"

for n in $SWEEP_CONNS; do
  echo "== $n upload connections"
  # CONNS bounds compare.sh's other runs; the uploads use UPLOAD_CONNS.
  MODE=encrypt UPLOAD_CONNS=$n OUT="$OUT/conns-$n" "$HERE/compare.sh" "$BUILD_DIR" > "$OUT/conns-$n.log" 2>&1 || {
    echo "encrypt_sweep: compare.sh failed for $n connections; see $OUT/conns-$n.log" >&2
    exit 1
  }
  grep -E '^Encryption CPU|check:' "$OUT/conns-$n.log" || true
done

# shellcheck disable=SC2086  # one argument per connection count
python3 - "$OUT" $SWEEP_CONNS <<'EOF'
import json, sys
out, conns = sys.argv[1], sys.argv[2:]
rows = []
for n in conns:
    d = json.load(open(f"{out}/conns-{n}/results.json"))
    e = d.get("encryption", {})
    m = d["medians"]
    rows.append({
        "upload_connections": int(n),
        "encrypted_cpu_us_per_MiB": e.get("encrypted_cpu_us_per_MiB"),
        "plain_cpu_us_per_MiB": e.get("plain_cpu_us_per_MiB"),
        "raw_seal_us_per_MiB": e.get("raw_seal_us_per_MiB"),
        "extra_over_raw": e.get("extra_over_raw"),
        "within_budget": e.get("within_budget"),
        "encrypted_MBps": m.get("portcullis-enc", {}).get("upload_MBps"),
        "haproxy_MBps": m.get("haproxy", {}).get("upload_MBps"),
    })
json.dump({"schema": 1, "runs": rows, "machine": d.get("machine"), "settings": d.get("settings")},
          open(f"{out}/sweep.json", "w"), indent=1)
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
print()
print("Encryption budget by upload connections (CPU per plaintext MiB; budget: encrypted <= plain + 1.1 x raw seal)")
print(f"{'conns':>6} {'encrypted':>10} {'plain':>8} {'raw seal':>9} {'extra/raw':>10} {'budget':>7} {'enc MB/s / HAProxy':>19}")
for r in rows:
    ratio = (r["encrypted_MBps"] / r["haproxy_MBps"]) if r["encrypted_MBps"] and r["haproxy_MBps"] else None
    ok = {True: "met", False: "NOT met", None: "-"}[r["within_budget"]]
    print(f"{r['upload_connections']:>6} {f(r['encrypted_cpu_us_per_MiB'], '10.0f')} {f(r['plain_cpu_us_per_MiB'], '8.0f')} "
          f"{f(r['raw_seal_us_per_MiB'], '9.0f')} {f(r['extra_over_raw'], '9.2f')}x {ok:>7} {f(ratio, '18.2f')}x")
print(f"\nWrote {out}/sweep.json")
EOF
