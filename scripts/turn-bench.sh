#!/usr/bin/env bash
# turn-bench.sh — our TURN server (chat-turn, as the turn-bench-server
# example, release build) side by side with coturn's turnserver under the
# same load, on 127.0.0.1: CPU per relayed packet, packets/s, loss and p99
# added latency, and the relay ceiling per core that the CPU cost implies.
# Not a test: it prints numbers.
#
# Load: coturn's turnutils_uclient -y (each client relays to its twin, so
# every peer is one of the server's own relayed addresses), RTP and RTCP
# channels per client, each session sending 2,000 x 500-byte messages as
# fast as it can (-z 0), over channels
# (ChannelData). -m 16 -y: 16 uclient sessions paired into 8 clients of
# 4 allocations each (RTP + RTCP on both sides), 32 in all. Ours is authenticated with a live session's credential
# (the bench server starts session "bench"; uclient -W makes the TURN REST
# username <expiry>:bench), coturn with the same REST secret
# (use-auth-secret). During each run turn-bench-probe relays small packets
# through one more allocation to an echo socket and back (p50/p99 round
# trip), then the same directly (no relay): added latency = relay p99 -
# direct p99.
#
# Usage: scripts/turn-bench.sh            (defaults below)
#        CLIENTS=8 MSGS=2000 LEN=500 ROUNDS=3 scripts/turn-bench.sh
#        BARE=1 also runs the plain `turn` crate (--bare) for comparison;
#        PAR=N runs N uclient processes at once (closer to saturation);
#        UDP_SOCKETS=N gives our server N UDP sockets (default: one per core).
#        SAT=0 skips the saturation part (below).
#
# Saturation: uclient cannot load either server to the full, so a second
# part measures it. Each server runs alone on CPU 1 (taskset; ours with
# one UDP socket) and turn-bench-load, on CPU 0, drives SAT_PAIRS pairs of
# allocations relay to relay with LEN-byte ChannelData in bursts of
# SAT_BURST packets per client (as a video frame's packets leave; a burst
# costs the generator one segmented send), at each rate of SAT_RATES for
# SAT_SECS seconds: delivered packets/s, loss (and how much of it the
# generator's own sockets dropped), the server's share of its core and CPU
# per packet at each step. Packets/s at saturation is the most delivered
# at any step (the plateau), with the highest offered rate still under 1 %
# loss: one core's relay ceiling, measured. Needs 2 cores.
# Needs: coturn (apt-get install -y coturn), cargo, bc, taskset.
set -euo pipefail

CLIENTS=${CLIENTS:-16}      # uclient -m: sending clients, 2 allocations each (RTP + RTCP);
                            # with -y they pair up: 16 = 8 pairs x 4 allocations
MSGS=${MSGS:-2000}          # uclient -n: messages per client
LEN=${LEN:-500}             # uclient -l: payload bytes
INTERVAL=${INTERVAL:-0}     # uclient -z: ms between sends (0 = as fast as it can)
ROUNDS=${ROUNDS:-3}         # runs per server, alternating order
PROBES=${PROBES:-300}       # latency probes per run, one every PROBE_MS,
PROBE_MS=${PROBE_MS:-10}    # starting PROBE_DELAY s after uclient (its set-up
PROBE_DELAY=${PROBE_DELAY:-2} # takes a few seconds)
BARE=${BARE:-0}
SAT=${SAT:-1}
SAT_RATES=${SAT_RATES:-50000,75000,100000,150000,200000,300000,400000,500000,600000}
SAT_SECS=${SAT_SECS:-2}
SAT_PAIRS=${SAT_PAIRS:-8}
SAT_BURST=${SAT_BURST:-8}
PORT_SAT=${PORT_SAT:-34796}
PAR=${PAR:-1}               # uclient processes run at once (more load)
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
OURS_PID= COTURN_PID= BARE_PID= SAT_PID=
cleanup() {
  [ -n "$SAT_PID" ] && kill -INT "$SAT_PID" 2>/dev/null || true
  [ -n "$OURS_PID" ] && kill -INT "$OURS_PID" 2>/dev/null || true
  [ -n "$BARE_PID" ] && kill -INT "$BARE_PID" 2>/dev/null || true
  [ -n "$COTURN_PID" ] && kill "$COTURN_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building turn-bench-server, turn-bench-probe and turn-bench-load (release)..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --quiet --release -p chat-turn \
  --example turn-bench-server --example turn-bench-probe --example turn-bench-load)
PROBE="$TARGET/release/examples/turn-bench-probe"
LOAD="$TARGET/release/examples/turn-bench-load"

TURN_UDP_SOCKETS=${UDP_SOCKETS:-0} "$TARGET/release/examples/turn-bench-server" \
  "$PORT_OURS" "$SECRET" bench >"$WORK/ours.log" 2>&1 &
OURS_PID=$!
if [ "$BARE" = 1 ]; then
  "$TARGET/release/examples/turn-bench-server" "$PORT_BARE" "$SECRET" bench --bare >"$WORK/bare.log" 2>&1 &
  BARE_PID=$!
fi
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
if [ "$BARE" = 1 ]; then
  grep -q listening "$WORK/bare.log" || { echo "the bare server did not start:" >&2; cat "$WORK/bare.log" >&2; exit 1; }
fi
sleep 1
kill -0 "$COTURN_PID" 2>/dev/null || { echo "coturn did not start" >&2; exit 1; }

# CPU time of every thread of a process, in ns (schedstat: finer than the
# 10 ms ticks of /proc/PID/stat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
# UDP datagrams the kernel dropped for a full receive buffer, any socket on
# this machine (uclient's, the server's): where lost packets went.
rcvbuf_drops() { awk '/^Udp:/ {n++} n == 2 {print $6; exit}' /proc/net/snmp; }

# run NAME PORT PID -> appends "sent recv tx_s cpu_s relay_p99 added_p99 probe_lost probe_recv"
run() {
  local name=$1 port=$2 pid=$3 c0 c1 d0 d1 out sent recv tx cpu probe p99 added plost precv
  c0=$(cpu_ns "$pid"); d0=$(rcvbuf_drops)
  (sleep "$PROBE_DELAY"; exec "$PROBE" "$HOST:$port" "$SECRET" bench "$PROBES" "$PROBE_MS") >"$WORK/probe.out" 2>&1 &
  local probe_pid=$!
  local i pids=()
  for i in $(seq "$PAR"); do
    timeout 300 turnutils_uclient -y -m "$CLIENTS" -n "$MSGS" -l "$LEN" -z "$INTERVAL" \
      -e $HOST -L $HOST -p "$port" -W "$SECRET" -u bench $HOST >"$WORK/uclient.$i" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  wait "$probe_pid" || true
  c1=$(cpu_ns "$pid"); d1=$(rcvbuf_drops)
  sent=0 recv=0 tx=0
  for i in $(seq "$PAR"); do
    out=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*$' "$WORK/uclient.$i" | tail -1 || true)
    sent=$((sent + $(echo "$out" | grep -o '[0-9]*' | head -1 || echo 0)))
    recv=$((recv + $(echo "$out" | grep -o '[0-9]*' | tail -1 || echo 0)))
    t=$(grep -o 'Total transmit time is [0-9]*' "$WORK/uclient.$i" | tail -1 | grep -o '[0-9]*$' || echo 0)
    [ "${t:-0}" -gt "$tx" ] && tx=$t
  done
  probe=$(grep '^probe ' "$WORK/probe.out" || true)
  p99=$(echo "$probe" | grep -o 'relay_p99_us=[0-9]*' | cut -d= -f2)
  added=$(echo "$probe" | grep -o 'added_p99_us=[0-9]*' | cut -d= -f2)
  plost=$(echo "$probe" | grep -o 'lost=[0-9]*' | cut -d= -f2)
  [ -n "$probe" ] || { echo "  probe failed: $(tail -2 "$WORK/probe.out")" >&2; plost=$PROBES; }
  precv=$((PROBES - ${plost:-$PROBES}))
  cpu=$(echo "scale=4; ($c1 - $c0) / 1000000000" | bc)
  echo "${sent:-0} ${recv:-0} ${tx:-0} $cpu ${p99:-0} ${added:-0} ${plost:-0} $precv $((d1 - d0))" >>"$WORK/$name"
  printf '  %-7s run: sent %6s received %6s  transmit %3s s  server CPU %6.2f s  probe p99 %6s us (added %6s us, lost %s)  rcvbuf drops %s\n' \
    "$name" "${sent:-0}" "${recv:-0}" "${tx:-?}" "$cpu" "${p99:-?}" "${added:-?}" "${plost:-?}" "$((d1 - d0))"
}

echo "workload: $PAR x uclient -y -m $CLIENTS ($((CLIENTS * 2)) allocations, RTP+RTCP), $MSGS msgs x $LEN bytes each, -z $INTERVAL ms,"
echo "          $ROUNDS rounds per server, $PROBES latency probes every $PROBE_MS ms during each run, on $HOST"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
SERVERS="ours coturn"
[ "$BARE" = 1 ] && SERVERS="ours coturn bare"
for r in $(seq "$ROUNDS"); do
  order=$SERVERS
  [ $((r % 2)) = 0 ] && order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for s in $order; do
    case $s in
      ours) run ours "$PORT_OURS" "$OURS_PID" ;;
      coturn) run coturn "$PORT_COTURN" "$COTURN_PID" ;;
      bare) run bare "$PORT_BARE" "$BARE_PID" ;;
    esac
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# summary NAME -> "best_pkt_s loss_pct cpu_us_per_pkt cpu_s lossy/runs p99_added_us_median ceiling_per_core"
# Relayed packets: uclient's received messages (each crossed two
# allocations, relay to relay) plus the probe's (two per round trip).
# pkt/s: the best run's received messages over uclient's transmit time
# (whole seconds; set-up excluded). Added latency: the median run's.
summary() {
  local best added
  best=$(awk '$3 > 0 {print $2 / $3}' "$WORK/$1" | sort -n | tail -1)
  added=$(awk '{print $6}' "$WORK/$1" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  awk -v best="${best:-0}" -v added="${added:-0}" '{s+=$1; r+=$2; c+=$4; p+=2*$8; d+=$9; n++; if ($2 < $1) l++}
    END { if (r == 0) { print "0 100 0 0 -/- 0 0 0"; exit }
          us = c*1e6/(r+p);
          printf "%.0f %.3f %.2f %.2f %d/%d %d %.0f %d\n", best, (s-r)*100/s, us, c, l, n, added, 1e6/us, d }' "$WORK/$1"
}

echo
F='%-10s %13s %8s %11s %13s %12s %16s %18s %13s\n'
printf "$F" server "relayed pkt/s" "loss %" "lossy runs" "CPU us / pkt" "CPU s total" "p99 added (us)" "ceiling pkt/s/core" "rcvbuf drops"
for s in $SERVERS; do
  read -r RATE LOSS CPU CPUS LR ADDED CEIL DROPS <<<"$(summary "$s")"
  label=$s; [ "$s" = ours ] && label=chat-turn; [ "$s" = bare ] && label=turn-bare
  printf "$F" "$label" "$RATE" "$LOSS" "$LR" "$CPU" "$CPUS" "$ADDED" "$CEIL" "$DROPS"
  eval "${s}_CPU=$CPU ${s}_RATE=$RATE"
done
echo
echo "CPU per packet ratio chat-turn/coturn: $(echo "scale=2; $ours_CPU / $coturn_CPU" | bc) (lower is better; target <= 0.5)"
echo "throughput ratio chat-turn/coturn: $(echo "scale=2; $ours_RATE / $coturn_RATE" | bc)"
[ "$BARE" = 1 ] && echo "CPU per packet ratio chat-turn/bare turn crate: $(echo "scale=2; $ours_CPU / $bare_CPU" | bc)"
echo "(ceiling per core = 1 s / CPU per packet: what one fully busy core would relay;"
echo " pkt/s is what uclient reached, which paces itself: compare CPU per packet first;"
echo " rcvbuf drops: datagrams the kernel dropped for a full socket receive buffer during"
echo " the runs, any socket on the machine -- uclient's own included)"
kill -INT "$OURS_PID" 2>/dev/null && wait "$OURS_PID" 2>/dev/null || true
OURS_PID=
echo "chat-turn's own counters (all runs): $(grep '^stats' "$WORK/ours.log" | cut -d' ' -f2-)"

# --- Saturation: each server alone on CPU 1, the load generator on CPU 0.
if [ "$SAT" = 0 ]; then exit 0; fi
if [ "$(nproc)" -lt 2 ] || ! command -v taskset >/dev/null 2>&1; then
  echo "saturation part skipped: it needs 2 cores and taskset (util-linux)"
  exit 0
fi
kill "$COTURN_PID" 2>/dev/null && wait "$COTURN_PID" 2>/dev/null || true
COTURN_PID=
echo
echo "saturation: one server core (CPU 1), turn-bench-load on CPU 0: $SAT_PAIRS pairs relay to relay,"
echo "            $LEN-byte ChannelData in bursts of $SAT_BURST per client, $SAT_SECS s per rate"
# saturate NAME PORT PID: the generator's lines, as a table; sets SAT_BEST
saturate() {
  local out
  if ! out=$(taskset -c 0 "$LOAD" "$HOST:$2" "$SECRET" bench "$3" "$SAT_RATES" "$SAT_SECS" \
      "$SAT_PAIRS" "$LEN" "$SAT_BURST" 2>"$WORK/load.err"); then
    echo "  $1: turn-bench-load failed: $(tail -2 "$WORK/load.err")" >&2
    SAT_BEST="0 0 0"
    return
  fi
  echo "$out" | awk -v name="$1" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "  %-9s offered %8d  delivered %8d pkt/s  loss %6.2f %% (%d at the generator)  server CPU %5.1f %% of a core  %5.2f us/pkt%s\n",
        name, v["offered"], v["delivered_pps"], v["loss_pct"], v["client_drops"], v["server_cpu_pct"], v["cpu_us_per_pkt"],
        (v["sent"] < 0.95 * v["offered"] * v["secs"]) ? "  (generator-bound)" : "" }'
  # max delivered (the plateau), its step's loss and us/pkt, whether the
  # generator fell short there, and the highest step with under 1 % loss
  SAT_BEST=$(echo "$out" | awk '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      if (v["delivered_pps"] > max) { max = v["delivered_pps"]; loss = v["loss_pct"]; us = v["cpu_us_per_pkt"];
        short = (v["sent"] < 0.95 * v["offered"] * v["secs"]) }
      if (v["loss_pct"] < 1 && v["offered"] > clean) clean = v["offered"] }
      END { printf "%d %s %s %d %d\n", max, loss, us, short, clean }')
}
TURN_UDP_SOCKETS=1 taskset -c 1 "$TARGET/release/examples/turn-bench-server" \
  "$PORT_SAT" "$SECRET" bench >"$WORK/sat.log" 2>&1 &
SAT_PID=$!
for _ in $(seq 50); do grep -q listening "$WORK/sat.log" 2>/dev/null && break; sleep 0.1; done
saturate chat-turn "$PORT_SAT" "$SAT_PID"
read -r OURS_SAT OURS_SAT_LOSS OURS_SAT_US OURS_SAT_SHORT OURS_CLEAN <<<"$SAT_BEST"
kill -INT "$SAT_PID" 2>/dev/null && wait "$SAT_PID" 2>/dev/null || true
SAT_PID=
# one relay thread: coturn sizes its threads by the online CPUs, and it
# has one here
taskset -c 1 turnserver -n --relay-threads=1 --listening-ip=$HOST --relay-ip=$HOST --listening-port="$PORT_COTURN" \
  --min-port=49152 --max-port=65535 --use-auth-secret --static-auth-secret="$SECRET" \
  --realm=bench --no-tls --no-dtls --allow-loopback-peers --no-cli --no-stdout-log \
  --log-file="$WORK/coturn-sat.log" --simple-log --pidfile="$WORK/coturn-sat.pid" >/dev/null 2>&1 &
COTURN_PID=$!
sleep 1.5
saturate coturn "$PORT_COTURN" "$COTURN_PID"
read -r COTURN_SAT COTURN_SAT_LOSS COTURN_SAT_US COTURN_SAT_SHORT COTURN_CLEAN <<<"$SAT_BEST"
echo
echo "packets/s at saturation on one core (the most delivered at any rate; >= when the generator fell short there):"
for n in OURS COTURN; do
  eval "v=\$${n}_SAT loss=\$${n}_SAT_LOSS us=\$${n}_SAT_US short=\$${n}_SAT_SHORT clean=\$${n}_CLEAN"
  label=chat-turn; [ "$n" = COTURN ] && label=coturn
  ge=; [ "$short" = 1 ] && ge=">= "
  printf '  %-9s %s%d pkt/s (loss %s %%, %s us/pkt there); highest rate offered with < 1 %% loss: %d pkt/s\n' \
    "$label" "$ge" "$v" "$loss" "$us" "$clean"
done
if [ "${COTURN_SAT:-0}" -gt 0 ]; then
  echo "  saturation throughput ratio chat-turn/coturn: $(echo "scale=2; $OURS_SAT / $COTURN_SAT" | bc)"
fi
echo "  (127.0.0.1, relay to relay, bursts of $SAT_BURST equal-size packets: the kernel's receive path for"
echo "   what a server reads runs on the generator's core; a segmented send crosses the stack once)"
