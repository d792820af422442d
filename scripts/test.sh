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
if ((${#missing[@]})); then
  echo "== installing ${missing[*]} (apt-get)"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing; run this script as root or install them with apt-get" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rust-toolchain.toml names the target; say it explicitly for older rustups.
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip2 >/dev/null
fi

echo "== cargo test (workspace: host, turn, policy examples, sigload)"
# sigload's smoke test runs against the host binary cargo builds here; in
# this script a missing host is a failure, not a skip.
export SIGLOAD_REQUIRE_HOST=1
cargo test --workspace

echo "== web: unit tests (vitest)"
(cd web && npm ci --no-audit --no-fund --prefer-offline >/dev/null && npm test)

echo "== web: end-to-end tests (chromium + real host)"
(cd web && HOST_BIN="$PWD/../target/debug/host" npm run e2e)

echo "== all tests passed"
