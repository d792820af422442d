#!/usr/bin/env bash
# bench-ab.sh — compares two host binaries by interleaved rounds of one
# bench.sh scenario (A, B, A, B, …), because one run says little: the
# throughput figure moves by ±10 % between back-to-back runs of the same
# binary, and a busy machine moves it more. Prints each round and the
# range and median of deliveries/s and host CPU µs per delivered message.
# Not a test.
#
# Usage: scripts/bench-ab.sh OLD_HOST_BIN NEW_HOST_BIN
#        ROUNDS=6 DURATION=12 SCENARIO=throughput scripts/bench-ab.sh a/host b/host
# An old binary can be built from any commit with its own target dir:
#   git worktree add /tmp/base COMMIT && (cd /tmp/base && cargo build --release -p host)
# Needs: jq, and sigload (built here unless SIGLOAD_BIN is set).
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,14p "$0" >&2; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
ROUNDS=${ROUNDS:-4}
SCENARIO=${SCENARIO:-throughput}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${SIGLOAD_BIN:-}" ]; then
  (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --quiet --release -p sigload)
  SIGLOAD_BIN=$TARGET/release/sigload
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
printf '%-5s %-4s %10s %8s %8s %5s\n' round bin deliv/s us/msg p99_ms lost
for r in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    SKIP_BUILD=1 HOST_BIN=$bin SIGLOAD_BIN=$SIGLOAD_BIN SCENARIOS=$SCENARIO \
      OUT="$OUT/$side$r" "$ROOT/scripts/bench.sh" >/dev/null 2>"$OUT/$side$r.err" ||
      { echo "bench-ab: round $r ($side) failed:" >&2; tail -n 20 "$OUT/$side$r.err" >&2; exit 1; }
    jq -r --arg r "$r" --arg s "$side" \
      '[$r, $s, (.load.delivered_per_s|round), .server.cpu_us_per_delivered, (.load.latency.p99_us/1000), .load.tally.lost] | @tsv' \
      "$OUT/$side$r/$SCENARIO.json" | tee -a "$OUT/rounds.tsv" |
      awk -F'\t' '{ printf "%-5s %-4s %10s %8s %8.2f %5s\n", $1, $2, $3, $4, $5, $6 }'
  done
done
for side in A B; do
  bin=$A; [ "$side" = B ] && bin=$B
  awk -F'\t' -v s="$side" -v bin="$bin" 'BEGIN { n = 0 } $2 == s { d[n] = $3; u[n] = $4; lost += $6; n++ }
    function med(a, n,   i, j, t) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2 }
    END { md = med(d, n); mu = med(u, n)
      printf "%s (%s): deliv/s median %d; us/msg median %.2f (range %.2f-%.2f); lost %d\n", s, bin, md, mu, u[0], u[n - 1], lost }' "$OUT/rounds.tsv"
done
