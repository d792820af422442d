#!/usr/bin/env bash
# Builds a policy crate for wasm32-wasip2 and drops it into a plugins
# directory, atomically (write, then rename), so a running host picks it up.
#   scripts/install-policy.sh password-rooms            # → plugins/50-password-rooms.wasm
#   scripts/install-policy.sh moderation /srv/plugins 20
set -euo pipefail
cd "$(dirname "$0")/.."
crate=${1:?usage: install-policy.sh CRATE [PLUGINS_DIR] [ORDER]}
dir=${2:-plugins}
order=${3:-50}
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "installing the wasm32-wasip2 target with rustup (policies are built for it)"
  rustup target add wasm32-wasip2
fi
cargo build --quiet --release --target wasm32-wasip2 -p "$crate" --target-dir target/policy-build \
  --config profile.release.debug=false --config profile.release.strip=true --config profile.release.lto=true
src="target/policy-build/wasm32-wasip2/release/${crate//-/_}.wasm"
mkdir -p "$dir"
dest="$dir/$order-$crate.wasm"
cp "$src" "$dest.part"
mv -f "$dest.part" "$dest"
echo "installed $dest"
