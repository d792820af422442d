#!/usr/bin/env bash
# Soak run (not part of CI): thousands of sessions exchanging signaling for
# ten minutes against a release host, with the host's RSS sampled every
# 30 s. Passes when nothing was lost or duplicated; prints the RSS series
# so "flat" can be read off. Loopback only.
#   scripts/soak.sh                         # 200 rooms x 10 = 2000 sessions, 600 s
#   ROOMS=500 CLIENTS=10 DURATION=600 RATE=2 scripts/soak.sh
set -euo pipefail
ROOMS=${ROOMS:-200}
CLIENTS=${CLIENTS:-10}
DURATION=${DURATION:-600}
RATE=${RATE:-2}                 # messages/s per client
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --quiet --release -p host -p sigload)
fi
WORK=$(mktemp -d)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$WORK/ssl" "$WORK/plugins"
"$TARGET/release/host" --bind 127.0.0.1 --https-port 0 --ssl-dir "$WORK/ssl" --plugins-dir "$WORK/plugins" \
  --rate-limit 0 --max-conns-per-ip 0 --metrics-addr off --no-turn >"$WORK/host.log" 2>&1 &
HOST_PID=$!
trap 'kill -INT $HOST_PID 2>/dev/null; wait $HOST_PID 2>/dev/null; rm -rf "$WORK"' EXIT
PORT=
for _ in $(seq 300); do
  PORT=$(grep -o 'https://localhost:[0-9]*' "$WORK/host.log" | head -1 | sed 's/.*://') || true
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || { cat "$WORK/host.log" >&2; exit 1; }

rss() { awk '/VmRSS/{print $2}' "/proc/$HOST_PID/status"; }
(
  for _ in $(seq $((DURATION / 30 + 2))); do
    echo "$(date +%T) host RSS $(( $(rss) / 1024 )) MiB"
    sleep 30
  done
) &
SAMPLER=$!
"$TARGET/release/sigload" --url "wss://127.0.0.1:$PORT/ws" --insecure --server-pid "$HOST_PID" \
  --rooms "$ROOMS" --clients "$CLIENTS" --rate "$RATE" --duration "$DURATION" --warmup 5 \
  --json >"$WORK/soak.json"
kill "$SAMPLER" 2>/dev/null || true
if command -v jq >/dev/null; then
  jq '{sessions: .sessions.joined, connect_failures: .sessions.connect_failures,
       delivered: .load.tally.delivered, lost: .load.tally.lost, duplicated: .load.tally.duplicated,
       p99_ms: (.load.latency.p99_us / 1000), server_rss_start_kb: .server.rss_start_kb,
       server_rss_peak_kb: .server.rss_peak_kb, server_rss_end_kb: .server.rss_end_kb}' "$WORK/soak.json"
fi
jq -e '.load.tally.lost == 0 and .load.tally.duplicated == 0' "$WORK/soak.json" >/dev/null
