#!/usr/bin/env bash
# turn-bench.sh — relay throughput, loss and server CPU of our TURN server
# (chat-turn, as the turn-bench-server example, release build) against
# coturn's turnserver and against the bare `turn` crate (the same example
# with --bare: what our gate/filters/quotas cost), all on 127.0.0.1 on this
# machine, driven by coturn's turnutils_uclient (-y: each client relays to
# its twin through two allocations, so every peer is on loopback).
# Not a test: it prints numbers.
#
# Usage: scripts/turn-bench.sh            (defaults below)
#        CLIENTS=10 MSGS=2000 LEN=500 ROUNDS=3 scripts/turn-bench.sh
# Needs: coturn (apt-get install -y coturn), cargo, bc.
set -euo pipefail

CLIENTS=${CLIENTS:-10}      # uclient -m: client pairs' count
MSGS=${MSGS:-2000}          # uclient -n: messages per client
LEN=${LEN:-500}             # uclient -l: payload bytes
INTERVAL=${INTERVAL:-0}     # uclient -z: ms between sends (0 = as fast as it can)
ROUNDS=${ROUNDS:-6}         # runs per server, alternating order
PORT_OURS=${PORT_OURS:-34790}
PORT_COTURN=${PORT_COTURN:-34792}
PORT_BARE=${PORT_BARE:-34794}
SECRET=bench-secret-$$
HOST=127.0.0.1

for tool in turnserver turnutils_uclient bc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "turn-bench: '$tool' not found: install it (apt-get update && apt-get install -y coturn bc)" >&2
    exit 1
  fi
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d)
OURS_PID= COTURN_PID= BARE_PID=
cleanup() {
  [ -n "$OURS_PID" ] && kill -INT "$OURS_PID" 2>/dev/null || true
  [ -n "$BARE_PID" ] && kill -INT "$BARE_PID" 2>/dev/null || true
  [ -n "$COTURN_PID" ] && kill "$COTURN_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building turn-bench-server (release)..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --quiet --release -p chat-turn --example turn-bench-server)

"$TARGET/release/examples/turn-bench-server" "$PORT_OURS" "$SECRET" bench >"$WORK/ours.log" 2>&1 &
OURS_PID=$!
"$TARGET/release/examples/turn-bench-server" "$PORT_BARE" "$SECRET" bench --bare >"$WORK/bare.log" 2>&1 &
BARE_PID=$!
turnserver -n --listening-ip=$HOST --relay-ip=$HOST --listening-port="$PORT_COTURN" \
  --min-port=49152 --max-port=65535 --use-auth-secret --static-auth-secret="$SECRET" \
  --realm=bench --no-tls --no-dtls --allow-loopback-peers --no-cli --no-stdout-log \
  --log-file="$WORK/coturn.log" --simple-log --pidfile="$WORK/coturn.pid" >/dev/null 2>&1 &
COTURN_PID=$!

for _ in $(seq 50); do
  grep -q listening "$WORK/ours.log" 2>/dev/null && break
  sleep 0.1
done
grep -q listening "$WORK/ours.log" || { echo "our server did not start:" >&2; cat "$WORK/ours.log" >&2; exit 1; }
grep -q listening "$WORK/bare.log" || { echo "the bare server did not start:" >&2; cat "$WORK/bare.log" >&2; exit 1; }
sleep 1
kill -0 "$COTURN_PID" 2>/dev/null || { echo "coturn did not start" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)

# run NAME PORT PID -> appends "sent recv lost wall cpu_s" to $WORK/NAME
run() {
  local name=$1 port=$2 pid=$3 c0 c1 t0 t1 out sent recv
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  out=$(timeout 300 turnutils_uclient -y -c -m "$CLIENTS" -n "$MSGS" -l "$LEN" -z "$INTERVAL" \
        -e $HOST -L $HOST -p "$port" -W "$SECRET" -u bench $HOST 2>&1 || true)
  t1=$(date +%s.%N); c1=$(cpu_ticks "$pid")
  sent=$(echo "$out" | grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*$' | tail -1 | grep -o '[0-9]*' | head -1)
  recv=$(echo "$out" | grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*$' | tail -1 | grep -o '[0-9]*' | tail -1)
  echo "${sent:-0} ${recv:-0} $(echo "$t1 - $t0" | bc) $(echo "scale=3; ($c1 - $c0) / $TICKS" | bc)" >>"$WORK/$name"
  printf '  %-7s run: sent %6s received %6s  wall %6.2f s  server CPU %6.2f s\n' \
    "$name" "${sent:-0}" "${recv:-0}" "$(echo "$t1 - $t0" | bc)" "$(echo "scale=3; ($c1 - $c0) / $TICKS" | bc)"
}

echo "workload: $CLIENTS clients x $MSGS msgs x $LEN bytes, -z $INTERVAL ms, $ROUNDS rounds each, on $HOST"
for r in $(seq "$ROUNDS"); do
  case $((r % 3)) in
    1) run ours "$PORT_OURS" "$OURS_PID"; run coturn "$PORT_COTURN" "$COTURN_PID"; run bare "$PORT_BARE" "$BARE_PID" ;;
    2) run coturn "$PORT_COTURN" "$COTURN_PID"; run bare "$PORT_BARE" "$BARE_PID"; run ours "$PORT_OURS" "$OURS_PID" ;;
    0) run bare "$PORT_BARE" "$BARE_PID"; run ours "$PORT_OURS" "$OURS_PID"; run coturn "$PORT_COTURN" "$COTURN_PID" ;;
  esac
done

# summary NAME -> "best_recv_per_s loss_pct cpu_us_per_pkt cpu_s best_mbit_s lossy_runs/runs"
# (rates: the best run, since a run with any loss makes uclient wait ~10 s
# more and the machine's other load comes and goes; loss and CPU: all runs
# added up)
summary() {
  local best
  best=$(awk '$3 > 0 {print $2 / $3}' "$WORK/$1" | sort -n | tail -1)
  awk -v len="$LEN" -v best="${best:-0}" '{s+=$1; r+=$2; c+=$4; n++; if ($2 < $1) l++}
    END { if (r == 0) { print "0 100 0 0 0 -"; exit }
          printf "%.0f %.3f %.2f %.2f %.2f %d/%d\n", best, (s-r)*100/s, c*1e6/r, c, best*len*8/1e6, l, n }' "$WORK/$1"
}

read -r O_RATE O_LOSS O_CPU O_CPUS O_MBIT O_LR <<<"$(summary ours)"
read -r C_RATE C_LOSS C_CPU C_CPUS C_MBIT C_LR <<<"$(summary coturn)"
read -r B_RATE B_LOSS B_CPU B_CPUS B_MBIT B_LR <<<"$(summary bare)"
echo
F='%-10s %14s %8s %8s %11s %13s %12s\n'
printf "$F" server "relayed pkt/s" "Mbit/s" "loss %" "lossy runs" "CPU us / pkt" "CPU s total"
printf "$F" chat-turn "$O_RATE" "$O_MBIT" "$O_LOSS" "$O_LR" "$O_CPU" "$O_CPUS"
printf "$F" coturn "$C_RATE" "$C_MBIT" "$C_LOSS" "$C_LR" "$C_CPU" "$C_CPUS"
printf "$F" turn-bare "$B_RATE" "$B_MBIT" "$B_LOSS" "$B_LR" "$B_CPU" "$B_CPUS"
echo
echo "throughput ratio chat-turn/coturn: $(echo "scale=2; $O_RATE / $C_RATE" | bc)"
echo "CPU per packet ratio chat-turn/coturn: $(echo "scale=2; $O_CPU / $C_CPU" | bc) (lower is better)"
echo "CPU per packet ratio chat-turn/bare turn crate: $(echo "scale=2; $O_CPU / $B_CPU" | bc) (the cost of our layers)"
echo "(pkt/s and Mbit/s: best run, over wall time including uclient's ~4 s of set-up:"
echo " uclient, not the servers, sets that pace; compare CPU per packet first)"
