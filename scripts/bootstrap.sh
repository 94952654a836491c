#!/usr/bin/env bash
# Installs whatever the build and the tests need and is missing; fast when all is present.
# Used by `make dev` and `make test`. Safe to run again at any time.
#
# * Debian's rustc-web toolchain (Rust with std sources) and lld, for the wasm32 build:
#   rustup cannot download the wasm32 target on these machines, so the wasm32 standard
#   library is built once from Debian's sources and installed into Debian's sysroot.
# * wasm-bindgen-cli at exactly the version in Cargo.lock (a machine-wide tool cache).
# * the npm dependencies of ts/ (wrangler pinned to a release that runs on Node 20).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_DIR="${TWILL_TOOLS_DIR:-${HOME:-/root}/.cache/twilldb-tools}"
WASM_SYSROOT_LIB=/usr/lib/rustlib/wasm32-unknown-unknown/lib
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

log() { echo "bootstrap: $*" >&2; }

# 0. The patched turso crates the workspace builds with (see patches/).
bash scripts/patch-crates.sh

# 1. Debian's Rust toolchain with std sources, and the wasm linker.
if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library ] || ! command -v wasm-ld-19 >/dev/null; then
  log "installing Debian's rustc-web, cargo-web, rust-web-src and lld-19"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rustc-web cargo-web rust-web-src lld-19 >/dev/null
fi

# 2. The wasm32 standard library, built once from Debian's sources (with embedded
#    bitcode so LTO works) and installed into Debian's sysroot.
#    One change to the sources: on wasm32-unknown-unknown, std's clocks panic ("time not
#    implemented on this platform"), and turso_core reads them (its temp database's WAL,
#    datetime('now')). A panic would kill the isolate, so `Instant::now` and
#    `SystemTime::now` instead call `__twill_wasm_now_ms`, which the Worker defines (JS
#    `Date.now()`; see worker-engine/src/lib.rs). The stamp file names this change.
#    It is built for size (opt-level z, as the Worker is): LTO re-optimizes std's bitcode but
#    cannot undo the inlining and unrolling an opt-level 3 build already did.
STD_STAMP="wasm-time-shim-1-oz"
if ! ls "$WASM_SYSROOT_LIB"/libstd-*.rlib >/dev/null 2>&1 || [ "$(cat "$WASM_SYSROOT_LIB/.twill-std" 2>/dev/null)" != "$STD_STAMP" ]; then
  log "building the wasm32 standard library (about two minutes)"
  work=$(mktemp -d)
  cp -r /usr/lib/rustlib/src/rust/library "$work/library"
  python3 scripts/patch-wasm-std-time.py "$work/library/std/src/sys/time/unsupported.rs"
  (
    cd "$work"
    PATH=/usr/bin:$PATH /usr/bin/cargo init -q --lib --name twill_std_probe
    __CARGO_TESTS_ONLY_SRC_ROOT="$work/library" RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C embed-bitcode=yes" CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 PATH=/usr/bin:$PATH \
      /usr/bin/cargo build -q --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort
  )
  $SUDO rm -f "$WASM_SYSROOT_LIB"/lib*.rlib
  $SUDO mkdir -p "$WASM_SYSROOT_LIB"
  for f in "$work"/target/wasm32-unknown-unknown/release/deps/lib*.rlib; do
    case "$f" in *twill_std_probe*) ;; *) $SUDO cp "$f" "$WASM_SYSROOT_LIB/" ;; esac
  done
  echo "$STD_STAMP" | $SUDO tee "$WASM_SYSROOT_LIB/.twill-std" >/dev/null
  rm -rf "$work"
fi

# 3. wasm-bindgen-cli matching the wasm-bindgen crate in Cargo.lock exactly.
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$("$TOOLS_DIR/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  log "installing wasm-bindgen-cli $want into $TOOLS_DIR (a few minutes, once per machine)"
  cargo install -q wasm-bindgen-cli --version "$want" --root "$TOOLS_DIR"
fi

# 4. npm dependencies (wrangler, miniflare/workerd, test clients).
if [ ! -d ts/node_modules ] || [ ts/package-lock.json -nt ts/node_modules/.package-lock.json ]; then
  log "installing npm dependencies"
  (cd ts && npm ci --no-audit --no-fund --loglevel=error)
fi
