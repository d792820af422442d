#!/usr/bin/env bash
# Builds a policy and drops it into a plugins directory, atomically (write,
# then rename), so a running host picks it up:
#   scripts/install-policy.sh password-rooms                       # a workspace crate → plugins/50-password-rooms.wasm
#   scripts/install-policy.sh plugins/moderation /srv/plugins 20   # a crate directory
#   scripts/install-policy.sh plugins/unique-names/unique-names.js # JavaScript (componentize-qjs)
#   scripts/install-policy.sh plugins/room-sizes/room_sizes.py     # Python (componentize-py)
# JavaScript and Python toolchains are pinned (sdk/js/package-lock.json,
# sdk/python/requirements.txt) and installed on first use into .toolchains/
# of this checkout, from the npm registry and PyPI; nothing is installed
# globally. Set WEBRTC_CHAT_TOOLCHAINS to keep them elsewhere.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: install-policy.sh SOURCE [PLUGINS_DIR] [ORDER]   (SOURCE: crate name, crate directory, .js or .py file)"
source=${1:?$usage}
dir=${2:-$ROOT/plugins}
order=${3:-50}
toolchains=${WEBRTC_CHAT_TOOLCHAINS:-$ROOT/.toolchains}
wit=$ROOT/wit/policy.wit

die() { echo "install-policy: $*" >&2; exit 1; }

[[ $order =~ ^[0-9]{1,4}$ ]] || die "ORDER must be a number like 20 or 50 (policies run in file-name order), not '$order'"

# Installs a pinned toolchain once, under a lock (tests may build several
# policies at the same time); a stamp of the pin file says it is complete.
with_toolchain_lock() {
  mkdir -p "$toolchains"
  exec 9>"$toolchains/.lock"
  flock 9
}

js_toolchain() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || die "JavaScript policies need Node.js 20+ and npm: install them (Debian: apt-get install nodejs npm) and run this again"
  local dest=$toolchains/js pins=$ROOT/sdk/js
  local stamp; stamp=$(sha256sum "$pins/package-lock.json" | cut -c1-16)
  with_toolchain_lock
  if [ "$(cat "$dest/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "install-policy: installing componentize-qjs (pinned in sdk/js) into $dest" >&2
    rm -rf "$dest" && mkdir -p "$dest"
    cp "$pins/package.json" "$pins/package-lock.json" "$dest/"
    (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || die "npm could not install the JavaScript toolchain (see above); check access to the npm registry"
    echo "$stamp" >"$dest/.stamp"
  fi
  flock -u 9
  JS_COMPILER=$dest/node_modules/.bin/componentize-qjs
}

py_toolchain() {
  local python
  python=$(command -v python3 || true)
  [ -n "$python" ] && "$python" -c 'import venv, ensurepip' 2>/dev/null \
    || die "Python policies need Python 3.10+ with venv and pip: install them (Debian: apt-get install python3 python3-venv) and run this again"
  local dest=$toolchains/py pins=$ROOT/sdk/python/requirements.txt
  local stamp; stamp=$(sha256sum "$pins" | cut -c1-16)
  with_toolchain_lock
  if [ "$(cat "$dest/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "install-policy: installing componentize-py (pinned in sdk/python) into $dest" >&2
    rm -rf "$dest"
    "$python" -m venv "$dest" || die "python3 -m venv failed (see above): install python3-venv"
    "$dest/bin/pip" install --quiet --disable-pip-version-check -r "$pins" \
      || die "pip could not install the Python toolchain (see above); check access to PyPI"
    echo "$stamp" >"$dest/.stamp"
  fi
  flock -u 9
  PY_COMPILER=$dest/bin/componentize-py
}

mkdir -p "$dir" || die "cannot create the plugins directory $dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$work/policy.wasm

case $source in
  *.js|*.mjs)
    [ -f "$source" ] || die "no such JavaScript file: $source"
    name=$(basename "$source"); name=${name%.*}
    js_toolchain
    # --sync: this host runs components without component-model async;
    # --stub-wasi: a policy gets no files, sockets or clocks anyway, and the
    # host refuses imports it does not provide.
    "$JS_COMPILER" --sync --stub-wasi --wit "$wit" --js "$source" -o "$out" >"$work/log" 2>&1 \
      || { cat "$work/log" >&2; die "componentize-qjs could not build $source (see above)"; }
    ;;
  *.py)
    [ -f "$source" ] || die "no such Python file: $source"
    module=$(basename "$source" .py)
    name=${module//_/-}
    [[ $module =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "a Python policy's file name must be a module name (letters, digits, _): $source"
    [ "$module" != wit_world ] || die "wit_world is the name of the generated bindings: rename $source"
    py_toolchain
    PYTHONDONTWRITEBYTECODE=1 "$PY_COMPILER" -d "$wit" -w policy componentize --stub-wasi -p "$(dirname "$source")" -o "$out" "$module" >"$work/log" 2>&1 \
      || { cat "$work/log" >&2; die "componentize-py could not build $source (see above)"; }
    ;;
  *)
    # A workspace crate, by name or by directory.
    if [ -f "$source/Cargo.toml" ]; then
      crate=$(cargo metadata --no-deps --format-version 1 --manifest-path "$source/Cargo.toml" \
        | python3 -c 'import json,sys,os; m=json.load(sys.stdin); p=os.path.realpath(sys.argv[1]); print(next(x["name"] for x in m["packages"] if os.path.dirname(os.path.realpath(x["manifest_path"]))==p))' "$source") \
        || die "$source/Cargo.toml is not a package of this workspace"
    else
      [[ $source != */* && $source != *.* ]] || die "no such crate directory, .js or .py file: $source"
      crate=$source
    fi
    name=$crate
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
      echo "install-policy: installing the wasm32-wasip2 target with rustup (policies are built for it)" >&2
      rustup target add wasm32-wasip2
    fi
    (cd "$ROOT" && cargo build --quiet --release --target wasm32-wasip2 -p "$crate" --target-dir target/policy-build \
      --config profile.release.debug=false --config profile.release.strip=true --config profile.release.lto=true) \
      || die "building the crate $crate failed (see above)"
    cp "$ROOT/target/policy-build/wasm32-wasip2/release/${crate//-/_}.wasm" "$out"
    ;;
esac

dest="$dir/$order-$name.wasm"
cp "$out" "$dest.part"
mv -f "$dest.part" "$dest"
echo "installed $dest ($(( $(stat -c %s "$dest") / 1024 )) KiB)"
