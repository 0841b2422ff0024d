#!/usr/bin/env bash
# Measures what idle keep-alive client connections cost the proxy in RSS.
#
#   bench/idle_memory.sh [BUILD_DIR] [CONNECTIONS]      (default build, 20000)
#
# Starts demo-backend and one Portcullis worker on loopback, opens N client
# connections, sends one GET on each (so every connection has carried a
# request and holds whatever a served connection keeps), waits for all
# responses, leaves them idle, and reports the proxy's VmRSS growth per
# connection and extrapolated to 10,000. The client and the proxy each need
# one descriptor per connection: the script raises RLIMIT_NOFILE to N + 1024
# (the hard limit too, given CAP_SYS_RESOURCE; otherwise N is capped to
# what the hard limit allows, with a note).
set -euo pipefail
BUILD=${1:-build}
N=${2:-20000}
WANT=$((N + 1024))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$WANT" ]; then
  ulimit -Hn "$WANT" 2>/dev/null || true
fi
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt "$WANT" ]; then
  echo "idle_memory.sh: RLIMIT_NOFILE hard limit $HARD < $WANT (raising it needs CAP_SYS_RESOURCE): measuring $((HARD - 1024)) connections" >&2
  N=$((HARD - 1024))
fi
ulimit -n "$(ulimit -Hn)"
BIN=$(cd "$BUILD/bin" && pwd)
TMP=$(mktemp -d)
cleanup() { kill "${PX:-}" "${BE:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(port); PP=$(port); AP=$(port)
cat > "$TMP/p.toml" <<TOML
[server]
workers = 1
listen_http = "127.0.0.1:$PP"
admin_listen = "127.0.0.1:$AP"
state_dir = "$TMP/state"
max_connections_per_ip = 100000   # every client here is 127.0.0.1
[https]
plaintext = "allow"
[log]
access = "$TMP/access.log"
[[upstream]]
name = "origin"
servers = ["127.0.0.1:$BP"]
[[route]]
prefix = "/"
upstream = "origin"
auth = false
TOML
"$BIN/demo-backend" --listen "127.0.0.1:$BP" --quiet & BE=$!
"$BIN/portcullis" -c "$TMP/p.toml" 2>"$TMP/px.log" & PX=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$AP/readyz" >/dev/null && break; sleep 0.1; done
python3 - "$PX" "$N" "$PP" <<'PY'
import resource, socket, sys, time
pid, n, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
base = rss_kib()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /tiny HTTP/1.1\r\nHost: bench\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf or len(buf.split(b"\r\n\r\n", 1)[1]) < 64:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed early")
        buf += chunk
    socks.append(s)
time.sleep(1)
after = rss_kib()
per = (after - base) * 1024 / n
print(f"idle keep-alive connections: {n}; proxy RSS {base/1024:.1f} -> {after/1024:.1f} MiB; "
      f"{per:.0f} bytes per connection; 10,000 connections = {per*10000/2**20:.1f} MiB; "
      f"{n:,} held = {(after - base)/1024:.1f} MiB")
PY
