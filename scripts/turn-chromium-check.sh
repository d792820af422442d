#!/usr/bin/env bash
# turn-chromium-check.sh — a real browser through our TURN server: headless
# Chromium opens two relay-only RTCPeerConnections (iceTransportPolicy
# "relay") whose only ICE server is chat-turn (the turn-bench-server
# example) on 127.0.0.1, over turn:?transport=udp, turn:?transport=tcp and
# turns: (self-signed certificate; Chromium runs with
# --ignore-certificate-errors), and checks a data channel ping/pong.
# Everything stays on 127.0.0.1, on ports the OS picks (read from the
# server's `listening` line; PORT / TLS_PORT choose them instead).
# Then relay-only peers meeting: in a network namespace of its own
# (unshare -n; root or CAP_SYS_ADMIN) whose only addresses are loopback and
# 10.77.0.1 on a veth interface, the server listens and relays on
# 10.77.0.1 — neither loopback nor allow-listed, loopback peers refused —
# and the two relay-only peers reach each other relay to relay (each
# one's peer is the other's relayed address on the server). Nothing in that
# namespace can reach any other host.
# scripts/test.sh runs it; prints PASS/FAIL per check and exits non-zero
# on any failure.
# Needs: chromium, openssl, cargo, iproute2 (ip), util-linux (unshare).
set -euo pipefail

PORT=${PORT:-0}
TLS_PORT=${TLS_PORT:-0}
SECRET=check-secret-$$
# Set (to the address) when this script runs itself inside its namespace.
NETNS_ADDR=${TURN_CHECK_NETNS_ADDR:-}
if [ -n "$NETNS_ADDR" ]; then
  ip link set lo up
  ip link add tcc0 type veth peer name tcc1
  ip addr add "$NETNS_ADDR/24" dev tcc0
  ip link set tcc0 up
  ip link set tcc1 up
fi
for tool in chromium openssl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "turn-chromium-check: '$tool' not found (apt-get install -y $tool)" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill -INT "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

[ -n "$NETNS_ADDR" ] || (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --quiet -p chat-turn --example turn-bench-server)
LISTEN=${NETNS_ADDR:-127.0.0.1}
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 1 \
  -subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null
TURN_LISTEN="$LISTEN" TURN_TLS_CERT="$WORK/cert.pem" TURN_TLS_KEY="$WORK/key.pem" TURN_TLS_PORT="$TLS_PORT" \
  "$TARGET/debug/examples/turn-bench-server" "$PORT" "$SECRET" chromium >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do grep -q listening "$WORK/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$WORK/server.log" || { cat "$WORK/server.log" >&2; exit 1; }
# The ports actually bound: `listening udp=ADDR:P tcp=ADDR:P tls=ADDR:T`.
PORT=$(sed -n 's/^listening udp=[^ ]*:\([0-9]*\) .*/\1/p' "$WORK/server.log")
TLS_PORT=$(sed -n 's/^listening .* tls=[^ ]*:\([0-9]*\)$/\1/p' "$WORK/server.log")
[ -n "$PORT" ] && [ -n "$TLS_PORT" ] || { echo "turn-chromium-check: no ports in: $(cat "$WORK/server.log")" >&2; exit 1; }

USER_NAME="$(( $(date +%s) + 3600 )):chromium"
PASSWORD=$(printf '%s' "$USER_NAME" | openssl dgst -sha1 -hmac "$SECRET" -binary | base64)

page() { # NAME URL
  cat >"$WORK/$1.html" <<EOF
<!doctype html><html><body><script>
const log = (m) => console.log("TURNCHECK $1 " + m);
(async () => {
  const cfg = { iceTransportPolicy: "relay",
                iceServers: [{ urls: ["$2"], username: "$USER_NAME", credential: "$PASSWORD" }] };
  const a = new RTCPeerConnection(cfg), b = new RTCPeerConnection(cfg);
  a.onicecandidate = e => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = e => e.candidate && a.addIceCandidate(e.candidate);
  a.onicecandidateerror = e => log("candidate-error " + e.errorCode + " " + e.errorText);
  const ch = a.createDataChannel("t");
  b.ondatachannel = e => { e.channel.onmessage = m => e.channel.send("pong:" + m.data); };
  ch.onopen = () => ch.send("ping");
  ch.onmessage = async m => {
    let relay = "", addr = "";
    (await a.getStats()).forEach(s => { if (s.type === "local-candidate" && s.candidateType === "relay") { relay = s.relayProtocol; addr = s.address; } });
    log("RESULT " + m.data + " relayProtocol=" + relay + " relayAddress=" + addr);
  };
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
})().catch(e => log("error " + e));
</script></body></html>
EOF
}

fail=0
check() { # NAME URL EXPECTED_RELAY_PROTOCOL
  page "$1" "$2"
  local out browser
  # The page stays open: stop Chromium once it has logged a result (20 s at most).
  timeout 20 chromium --headless=new --no-sandbox --disable-gpu --ignore-certificate-errors \
    --enable-logging=stderr --v=0 --user-data-dir="$WORK/profile-$1" "file://$WORK/$1.html" \
    >"$WORK/$1.log" 2>&1 &
  browser=$!
  for _ in $(seq 200); do
    grep -q "TURNCHECK $1 RESULT" "$WORK/$1.log" 2>/dev/null && break
    kill -0 "$browser" 2>/dev/null || break
    sleep 0.1
  done
  kill "$browser" 2>/dev/null || true
  wait "$browser" 2>/dev/null || true
  out=$(grep -o "TURNCHECK $1 .*" "$WORK/$1.log" | sed 's/", source.*//' || true)
  if echo "$out" | grep -q "RESULT pong:ping relayProtocol=$3"; then
    echo "PASS $1 ($2)"
  else
    echo "FAIL $1 ($2)"; echo "$out" | sed 's/^/  /'; fail=1
  fi
}
# The server's own counters once it stopped (turn-bench-server prints them
# on SIGINT): FASTPATH=1 also requires packets on the relay fast path.
server_counters() {
  kill -INT "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  local stats
  stats=$(grep '^stats' "$WORK/server.log" | cut -d' ' -f2-)
  echo "server counters ($1): $stats"
  if [ "${2:-}" = FASTPATH ] && ! echo "$stats" | grep -q 'fast_packets_to_peers=[1-9]'; then
    echo "FAIL $1: no packet took the relay fast path"; fail=1
  fi
}
if [ -n "$NETNS_ADDR" ]; then
  check relay-to-relay "turn:$NETNS_ADDR:$PORT?transport=udp" "udp relayAddress=$NETNS_ADDR"
  server_counters relay-to-relay FASTPATH
  exit $fail
fi
check udp "turn:127.0.0.1:$PORT?transport=udp" udp
check tcp "turn:127.0.0.1:$PORT?transport=tcp" tcp
check tls "turns:127.0.0.1:$TLS_PORT?transport=tcp" tls
server_counters "udp, tcp, tls"
# Relay to relay on a non-loopback address, in a namespace of our own.
if command -v unshare >/dev/null 2>&1 && unshare -n true 2>/dev/null; then
  TURN_CHECK_NETNS_ADDR=10.77.0.1 CARGO_TARGET_DIR="$TARGET" unshare -n bash "$0" || fail=1
else
  echo "FAIL relay-to-relay: cannot create a network namespace (unshare -n needs root or CAP_SYS_ADMIN, and util-linux)"; fail=1
fi
exit $fail
