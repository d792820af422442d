#!/usr/bin/env bash
# bench.sh — signaling throughput, latency, room scaling and idle memory of
# the host, driven by tools/sigload over WSS on 127.0.0.1. Not a test: it
# prints numbers (and keeps each run's JSON report in $OUT).
#
# Usage: scripts/bench.sh                       (builds release host + sigload)
#        DURATION=5 SCENARIOS="throughput light" scripts/bench.sh
#        SKIP_BUILD=1 HOST_BIN=target/debug/host scripts/bench.sh
# Scenarios (default: all, in this order):
#   throughput  20 rooms x 5 clients, 300-byte candidates, 8 in flight per client
#   light       20 rooms x 5 clients, 5 msg/s per client, realistic mix (SDP ~4 KB)
#   rooms       1 / 10 / 100 / 1000 rooms x $ROOMS_CLIENTS clients, as throughput
#   idle        10 000 sessions (1000 rooms x 10) joined and held: server RSS per session
#   reload      hot reload: a policy dropped into plugins/ (atomic rename) until the
#               host serves it, $RELOADS times (the first compiles, later ones hit the cache)
#   cluster     (not in the default list) a real redis-server and two hosts sharing it:
#               light (as above), pairs (20 rooms x 2, 5 msg/s) and throughput (as above),
#               each once with every client on host 1 ("-1h": local deliveries) and once
#               spread over both ("-2h": client i of a room on host i mod 2, so frames
#               cross hosts through Redis). Needs redis-server.
# Each scenario gets a fresh host. With taskset and >= 2 CPUs the host runs
# on CPU 0 and sigload on the others, so one can tell who saturates
# (PIN=0: no pinning, both share every CPU).
# Needs: cargo, jq (for the summary table).
set -euo pipefail

DURATION=${DURATION:-10}            # seconds of load per run
WARMUP=${WARMUP:-2}                 # seconds not counted
SCENARIOS=${SCENARIOS:-"throughput light rooms idle reload"}
RELOADS=${RELOADS:-5}
ROOMS_LIST=${ROOMS_LIST:-"1 10 100 1000"}
ROOMS_CLIENTS=${ROOMS_CLIENTS:-3}
IDLE_ROOMS=${IDLE_ROOMS:-1000}
IDLE_CLIENTS=${IDLE_CLIENTS:-10}
IDLE_HOLD=${IDLE_HOLD:-10}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/sigload-bench}
mkdir -p "$OUT"
WORK=$(mktemp -d)
HOST_PID=
CLUSTER_PIDS=()
cleanup() {
  if [ -n "$HOST_PID" ]; then kill -INT "$HOST_PID" 2>/dev/null || true; wait "$HOST_PID" 2>/dev/null || true; fi
  local p
  for p in "${CLUSTER_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "building host and sigload (release)..." >&2
  (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --quiet --release -p host -p sigload)
fi
HOST_BIN=${HOST_BIN:-$TARGET/release/host}
SIGLOAD_BIN=${SIGLOAD_BIN:-$TARGET/release/sigload}
for b in "$HOST_BIN" "$SIGLOAD_BIN"; do
  [ -x "$b" ] || { echo "bench: $b not found (build it, or set HOST_BIN / SIGLOAD_BIN)" >&2; exit 1; }
done

# Many sockets: raise the open-files limit for both processes.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Limits the host may have: turn them off, passing only the flags it lists.
HELP=$("$HOST_BIN" --help 2>&1 || true)
HOST_FLAGS=()
has_flag() { grep -q -- "$1" <<<"$HELP"; }
has_flag '--rate-limit ' && HOST_FLAGS+=(--rate-limit 0)
has_flag '--max-conns-per-ip' && HOST_FLAGS+=(--max-conns-per-ip 0)
has_flag '--max-sessions' && HOST_FLAGS+=(--max-sessions 0)
has_flag '--max-rooms' && HOST_FLAGS+=(--max-rooms 0)
# Nothing else the bench does not need, and no fixed ports to collide on.
has_flag '--metrics-addr' && HOST_FLAGS+=(--metrics-addr off)
has_flag '--no-turn' && HOST_FLAGS+=(--no-turn)
# Extra host flags for experiments, e.g. HOST_EXTRA="--policy-deadline-ms 100".
read -r -a EXTRA <<<"${HOST_EXTRA:-}"
HOST_FLAGS+=("${EXTRA[@]}")

HOST_CPUS= TOOL_CPUS=
NCPU=$(nproc 2>/dev/null || echo 1)
if [ "${PIN:-1}" != 0 ] && command -v taskset >/dev/null 2>&1 && [ "$NCPU" -ge 2 ]; then
  HOST_CPUS=0
  if [ "$NCPU" -eq 2 ]; then TOOL_CPUS=1; else TOOL_CPUS=1-$((NCPU - 1)); fi
fi
pin() { # pin CPUS cmd...
  local cpus=$1; shift
  if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# launch_host NAME extra-flags... : starts a host with its own dirs and log
# ($WORK/NAME, $WORK/NAME.log); sets LAUNCHED_PID and LAUNCHED_PORT.
launch_host() {
  local name=$1; shift
  rm -rf "${WORK:?}/$name" && mkdir -p "$WORK/$name/ssl" "$WORK/$name/plugins"
  local cmd=("$HOST_BIN" --bind 127.0.0.1 --https-port 0 \
    --ssl-dir "$WORK/$name/ssl" --plugins-dir "$WORK/$name/plugins" "${HOST_FLAGS[@]}" "$@")
  # taskset execs the host, so $! is the host's own PID (not a subshell's).
  [ -n "$HOST_CPUS" ] && cmd=(taskset -c "$HOST_CPUS" "${cmd[@]}")
  "${cmd[@]}" >"$WORK/$name.log" 2>&1 &
  LAUNCHED_PID=$!
  LAUNCHED_PORT=
  for _ in $(seq 300); do
    LAUNCHED_PORT=$(grep -o 'https://localhost:[0-9]*' "$WORK/$name.log" 2>/dev/null | head -1 | sed 's/.*://') || true
    [ -n "$LAUNCHED_PORT" ] && break
    kill -0 "$LAUNCHED_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$LAUNCHED_PORT" ] || { echo "bench: the host $name did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1; }
  sleep 0.5
}

start_host() {
  launch_host host
  HOST_PID=$LAUNCHED_PID PORT=$LAUNCHED_PORT
}

# stop_pid PID: SIGINT, 5 s to exit, then SIGKILL.
stop_pid() {
  kill -INT "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

stop_host() {
  stop_pid "$HOST_PID"
  HOST_PID=
}

# run NAME sigload-args... : fresh host, one sigload run, JSON kept in $OUT/NAME.json
# (a failed run is shown with the host's log and tried once more)
run() {
  local name=$1 try; shift
  for try in 1 2; do
    start_host
    echo "== $name: sigload $*" >&2
    if pin "$TOOL_CPUS" "$SIGLOAD_BIN" --url "wss://127.0.0.1:$PORT/ws" --insecure \
      --server-pid "$HOST_PID" --json "$@" >"$OUT/$name.json"; then
      stop_host
      break
    fi
    echo "bench: $name failed (try $try); host $(kill -0 "$HOST_PID" 2>/dev/null && echo running || echo exited), its log:" >&2
    tail -n 20 "$WORK/host.log" >&2
    stop_host
  done
  NAMES+=("$name")
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# wait_log TEXT N: until the host's log holds TEXT at least N times (10 s at most).
wait_log() {
  local deadline=$(($(now_ms) + 10000))
  while [ "$(grep -cF -- "$1" "$WORK/host.log" 2>/dev/null || true)" -lt "$2" ]; do
    [ "$(now_ms)" -lt "$deadline" ] || return 1
    sleep 0.002
  done
}

# Hot reload, file event -> serving: the moderation example policy is
# renamed into the plugins directory of a running host (what
# scripts/install-policy.sh does), timed until the host logs the new chain
# (it logs it after compiling, linking, the canary call and the swap),
# then removed again. Polled every 2 ms.
reload_bench() {
  local stage="$WORK/stage" times=() i t0 t1
  if [ -z "${SKIP_BUILD:-}" ] || [ ! -s "$stage/40-moderation.wasm" ]; then
    "$ROOT/scripts/install-policy.sh" moderation "$stage" 40 >/dev/null
  fi
  start_host
  for i in $(seq "$RELOADS"); do
    cp "$stage/40-moderation.wasm" "$WORK/host/plugins/.40-moderation.part"
    t0=$(now_ms)
    mv "$WORK/host/plugins/.40-moderation.part" "$WORK/host/plugins/40-moderation.wasm"
    wait_log "policy chain: 40-moderation → default" "$i" || { echo "bench: reload $i not seen; host log:" >&2; tail -n 20 "$WORK/host.log" >&2; break; }
    t1=$(now_ms)
    times+=($((t1 - t0)))
    rm -f "$WORK/host/plugins/40-moderation.wasm"
    wait_log "policy chain: default" "$((i + 1))" || break
  done
  stop_host
  echo "hot reload, file renamed in -> new chain serving (ms, $(stat -c %s "$stage/40-moderation.wasm") B policy; first compiles, the rest from the cache): ${times[*]}" >"$OUT/reload.txt"
}

# ---- cluster: a real redis-server and two hosts sharing it (docs/cluster.md) ----
# The same loads against host 1 of the cluster alone (every delivery local:
# the room's owner writes to its own sockets) and spread over both hosts
# (sigload's client i of a room on host i mod 2, so frames go edge -> owner
# and owner -> edge through Redis pub/sub). Redis and both hosts run on the
# host CPUs, sigload on the others, as above.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
free_port() { # a loopback port nobody listens on (redis-server cannot take port 0)
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  return 1
}
redis_ping() { # in a subshell: (redis_ping PORT)
  local l
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'PING\r\n' >&3
  IFS= read -r -t 1 l <&3 || return 1
  [ "${l%$'\r'}" = +PONG ]
}
start_cluster() {
  command -v redis-server >/dev/null 2>&1 || { echo "bench: the cluster scenario needs redis-server (Debian: apt-get install redis-server)" >&2; exit 1; }
  local try ok= cmd
  for try in 1 2 3; do
    REDIS_PORT=$(free_port) || break
    rm -rf "$WORK/redis" && mkdir -p "$WORK/redis"
    cmd=(redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --protected-mode no --dir "$WORK/redis")
    [ -n "$HOST_CPUS" ] && cmd=(taskset -c "$HOST_CPUS" "${cmd[@]}")
    "${cmd[@]}" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do
      if (redis_ping "$REDIS_PORT") 2>/dev/null; then ok=1; break; fi
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$ok" ] && break
    stop_pid "$REDIS_PID"
  done
  [ -n "$ok" ] || { echo "bench: redis-server did not start:" >&2; cat "$WORK/redis.log" >&2; exit 1; }
  CLUSTER_PIDS=("$REDIS_PID")
  local flags=(--redis-url "redis://127.0.0.1:$REDIS_PORT/0")
  has_flag '--no-turn' || flags+=(--turn-secret bench-cluster-secret)
  CLUSTER_PORTS=()
  for h in c1 c2; do
    launch_host "$h" "${flags[@]}"
    CLUSTER_PIDS+=("$LAUNCHED_PID")
    CLUSTER_PORTS+=("$LAUNCHED_PORT")
    local deadline=$(($(now_ms) + 30000))
    until grep -qF "cluster: Redis reachable" "$WORK/$h.log"; do
      [ "$(now_ms)" -lt "$deadline" ] || { echo "bench: host $h did not reach Redis:" >&2; tail -n 20 "$WORK/$h.log" >&2; exit 1; }
      sleep 0.1
    done
  done
  sleep 1
}
stop_cluster() {
  local i
  for ((i = ${#CLUSTER_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${CLUSTER_PIDS[i]}"; done
  CLUSTER_PIDS=()
}
# cluster_run NAME "HOST_INDEXES" sigload-args... : one sigload run with a
# --url per listed host (0 = c1, 1 = c2); --server-pid is c1. CPU seconds of
# redis and each host over the whole run go to $OUT/cluster-cpu.txt.
cluster_run() {
  local name=$1 hosts=$2 h i; shift 2
  local urls=() before=() t0 t1 line
  for h in $hosts; do urls+=(--url "wss://127.0.0.1:${CLUSTER_PORTS[h]}/ws"); done
  for i in "${!CLUSTER_PIDS[@]}"; do before[i]=$(cpu_ticks "${CLUSTER_PIDS[i]}"); done
  echo "== $name: sigload ${urls[*]} $*" >&2
  t0=$(now_ms)
  if ! pin "$TOOL_CPUS" "$SIGLOAD_BIN" "${urls[@]}" --insecure --server-pid "${CLUSTER_PIDS[1]}" \
    --json "$@" >"$OUT/$name.json"; then
    echo "bench: $name failed; host logs:" >&2
    tail -n 10 "$WORK/c1.log" "$WORK/c2.log" >&2
  fi
  t1=$(now_ms)
  line="$name: $(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.1f", d / 1000}') s wall; CPU s"
  local labels=(redis host1 host2) tck
  tck=$(getconf CLK_TCK)
  for i in "${!CLUSTER_PIDS[@]}"; do
    line+=" ${labels[i]} $(awk -v a="${before[i]}" -v b="$(cpu_ticks "${CLUSTER_PIDS[i]}")" -v t="$tck" 'BEGIN{printf "%.2f", (b - a) / t}')"
  done
  echo "$line" >>"$OUT/cluster-cpu.txt"
  NAMES+=("$name")
}
cluster_bench() {
  rm -f "$OUT/cluster-cpu.txt"
  start_cluster
  local light=(--rooms 20 --clients 5 --rate 5 --offer-fanout 0.25 --duration "$DURATION" --warmup "$WARMUP")
  local pairs=(--rooms 20 --clients 2 --rate 5 --duration "$DURATION" --warmup "$WARMUP")
  local thr=(--rooms 20 --clients 5 --mix candidate --candidate-bytes 300 --inflight 8
    --duration "$DURATION" --warmup "$WARMUP")
  cluster_run cl-light-1h "0" "${light[@]}"
  cluster_run cl-light-2h "0 1" "${light[@]}"
  cluster_run cl-pairs-1h "0" "${pairs[@]}"
  cluster_run cl-pairs-2h "0 1" "${pairs[@]}"
  cluster_run cl-thru-1h "0" "${thr[@]}"
  cluster_run cl-thru-2h "0 1" "${thr[@]}"
  stop_cluster
}

NAMES=()
for s in $SCENARIOS; do
  case $s in
    throughput)
      run throughput --rooms 20 --clients 5 --mix candidate --candidate-bytes 300 --inflight 8 \
        --duration "$DURATION" --warmup "$WARMUP" ;;
    light)
      run light --rooms 20 --clients 5 --rate 5 --offer-fanout 0.25 \
        --duration "$DURATION" --warmup "$WARMUP" ;;
    rooms)
      for r in $ROOMS_LIST; do
        run "rooms-$r" --rooms "$r" --clients "$ROOMS_CLIENTS" --mix candidate --candidate-bytes 300 \
          --inflight 8 --duration "$DURATION" --warmup "$WARMUP"
      done ;;
    idle)
      run idle-$((IDLE_ROOMS * IDLE_CLIENTS)) --idle --rooms "$IDLE_ROOMS" --clients "$IDLE_CLIENTS" \
        --duration "$IDLE_HOLD" --settle 3 --connect-concurrency 32 ;;
    reload)
      rm -f "$OUT/reload.txt"; reload_bench ;;
    cluster)
      cluster_bench ;;
    *) echo "bench: unknown scenario $s" >&2; exit 2 ;;
  esac
done

echo
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB;" \
  "host on CPU ${HOST_CPUS:-any}, sigload on CPU ${TOOL_CPUS:-any}; host flags: ${HOST_FLAGS[*]:-none}"
echo "reports: $OUT"
if ! command -v jq >/dev/null 2>&1; then
  echo "(install jq for the summary table)"; exit 0
fi
# srv/tool_cpu%: CPU time over the measured phase (100 = one core busy);
# srv/tool_oth: CPU seconds OTHER processes used on the CPUs the host / the
# tool runs on during that phase (high = a busy machine, numbers pessimistic).
FMT='%-12s %8s %8s %7s %7s %7s %8s %5s %4s %8s %8s %7s %7s %7s %7s\n'
printf "$FMT" scenario sessions deliv/s p50_ms p90_ms p99_ms max_ms lost dup srv_cpu% tool_cpu% us/msg srv_MiB srv_oth tool_oth
for n in "${NAMES[@]}"; do
  f=$OUT/$n.json
  [ -s "$f" ] || { printf '%-12s (no report)\n' "$n"; continue; }
  jq -r --arg n "$n" '
    def ms: if . == null then "-" else (. / 1000 * 100 | round / 100 | tostring) end;
    [ $n,
      (.sessions.joined|tostring),
      (if .load then (.load.delivered_per_s|round|tostring) else "-" end),
      (.load.latency.p50_us|ms), (.load.latency.p90_us|ms), (.load.latency.p99_us|ms), (.load.latency.max_us|ms),
      (if .load then (.load.tally.lost|tostring) else "-" end),
      (if .load then (.load.tally.duplicated|tostring) else "-" end),
      ((.server.cpu_pct // "-")|tostring), (.tool.cpu_pct|tostring),
      ((.server.cpu_us_per_delivered // "-")|tostring),
      ((.server.rss_peak_kb // 0) / 1024 | round | tostring),
      ((.server.others_cpu_s // "-")|tostring), (.tool.others_cpu_s|tostring)
    ] | @tsv' "$f" | while IFS=$'\t' read -r -a c; do
      # shellcheck disable=SC2059
      printf "$FMT" "${c[@]}"
    done
done
for n in "${NAMES[@]}"; do
  f=$OUT/$n.json
  [ -s "$f" ] || continue
  jq -r --arg n "$n" 'select(.idle) | "\($n): \(.sessions.joined) sessions joined (\(.sessions.connect_failures) failed) in \(.sessions.connect_phase_s*10|round/10) s; server RSS \(.idle.server_rss_before_kb/1024|round) -> \(.idle.server_rss_after_kb/1024|round) MiB = \(.idle.server_rss_per_session_kb) KiB per session; tool \(.idle.tool_rss_per_session_kb) KiB per session"' "$f"
  jq -r --arg n "$n" '.notes[]? | "\($n): note: \(.)"' "$f"
  jq -r --arg n "$n" 'select(.load and (.load.error_frames|length) > 0) | "\($n): error frames \(.load.error_frames)"' "$f"
done
if [[ " $SCENARIOS " == *" reload "* ]] && [ -s "$OUT/reload.txt" ]; then
  cat "$OUT/reload.txt"
fi
if [[ " $SCENARIOS " == *" cluster "* ]] && [ -s "$OUT/cluster-cpu.txt" ]; then
  echo "cluster (srv_* columns above are host1's; redis and both hosts over each whole run):"
  cat "$OUT/cluster-cpu.txt"
fi
