#!/usr/bin/env bash
# The one test command: installs what a fresh machine lacks (Debian's
# chromium and coturn, Node.js/npm), then runs every test — Rust unit and
# integration tests, the policy examples, the web client's unit tests and
# the end-to-end tests in a real browser against the real host.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v turnutils_uclient >/dev/null 2>&1 || missing+=(coturn)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Python policies are built in a venv (scripts/install-policy.sh).
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]} (apt-get)"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing; run this script as root or install them with apt-get" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# No `rustup target add` here: the build installs the wasm32-wasip2 target
# itself when it is missing (host/build.rs), as a newcomer's first
# `cargo run -p host` must. CI removes the target first to prove it.

echo "== docs: every relative link resolves inside the repository"
python3 scripts/check-links.py

echo "== cargo test (workspace: host, turn, policy examples in Rust, JavaScript and Python, sigload)"
# The JavaScript and Python examples are built by scripts/install-policy.sh,
# which installs its pinned toolchains into .toolchains/ on first use.
# sigload's smoke test runs against the host binary cargo builds here (a
# missing host binary fails it).
cargo test --workspace

echo "== cargo: a second build with nothing changed compiles nothing"
# A build script that re-runs on every build (a watched file that does not
# exist, say) recompiles the host each time; cargo's JSON says which
# artifacts were not fresh.
stale=$(cargo test --workspace --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and not m.get("fresh"):
        print(m["target"]["name"], m["target"]["kind"])')
if [ -n "$stale" ]; then
  echo "error: rebuilt with nothing changed: $stale" >&2
  exit 1
fi

echo "== cargo: a policy crate tests without Node.js (host without its web feature)"
# PATH without node/npm/npx: testing a policy must not need them.
nonode=$(mktemp -d)
trap 'rm -rf "$nonode"' EXIT
for dir in /usr/local/bin /usr/bin; do
  for f in "$dir"/*; do
    case "$(basename "$f")" in node|nodejs|npm|npx|corepack) continue ;; esac
    [ -e "$nonode/$(basename "$f")" ] || ln -s "$f" "$nonode/$(basename "$f")"
  done
done
PATH="$(dirname "$(command -v cargo)"):$nonode" cargo test -p password-rooms

echo "== web: unit tests (vitest)"
(cd web && npm ci --no-audit --no-fund --prefer-offline >/dev/null && npm test)

echo "== web: end-to-end tests (chromium + real host)"
(cd web && HOST_BIN="$PWD/../target/debug/host" npm run e2e)

echo "== TURN from Chromium: relay-only data channels over UDP, TCP and TLS"
scripts/turn-chromium-check.sh

echo "== all tests passed"
