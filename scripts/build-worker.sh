#!/usr/bin/env bash
# Builds the Worker into build/worker/: the engine as wasm (Debian's toolchain, see
# bootstrap.sh), its wasm-bindgen glue, and the entry module bundled by esbuild.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_DIR="${TWILL_TOOLS_DIR:-${HOME:-/root}/.cache/twilldb-tools}"
OUT=build/worker
TARGET_DIR=target/wasm
# release (shipped, measured) or wasm-dev (quick local iteration; see Cargo.toml).
PROFILE="${TWILL_WASM_PROFILE:-release}"

PATH=/usr/bin:$PATH \
RUSTFLAGS='--cfg getrandom_backend="wasm_js"' \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 \
CARGO_TARGET_DIR=$TARGET_DIR \
  /usr/bin/cargo build --profile "$PROFILE" --target wasm32-unknown-unknown -p worker-engine

rm -rf "$OUT" && mkdir -p "$OUT"
"$TOOLS_DIR/bin/wasm-bindgen" --target web --out-dir "$OUT" --out-name worker_engine \
  "$TARGET_DIR/wasm32-unknown-unknown/$PROFILE/worker_engine.wasm"
# Shrink the module (npm's binaryen; Debian's is too old for this output). The free plan
# allows 3 MB gzip for the whole Worker. TWILL_WASM_OPT=0 skips it for quick local builds.
# A second -Oz round finds about 4 kB more (gzip) for half a minute; more rounds find little.
# --low-memory-unused (about 14 kB gzip) lets binaryen fold constant offsets under 1 KiB into
# loads and stores; that changes nothing unless the code reaches the first KiB of memory
# through an address that wrapped around 2^32. Rust's wasm32 layout puts the 1 MiB stack
# first (data starts at 1 MiB) and addresses the stack from its pointer upwards, so the first
# KiB is only the bottom of a nearly exhausted stack, reached without wrapping.
# --one-caller-inline-max-function-size=20: binaryen otherwise inlines every function that has
# one caller, whatever its size, and V8 compiles a wasm function whole on its first call. Turso's
# translate_inner grew from 91 to 235 kB that way (ALTER TABLE's and INSERT's translators inside
# it), so a cold isolate's first SELECT compiled them. Kept apart (with patch item 18), the
# first point query compiles about 30% less wasm, and the module is about 0.1 MB smaller gzip.
# Warm reads measured the same (benches/NOTES.md, "Compiled per function").
if [ "${TWILL_WASM_OPT:-1}" != 0 ]; then
  ts/node_modules/.bin/wasm-opt -Oz -Oz --one-caller-inline-max-function-size=20 \
    --low-memory-unused --strip-debug --strip-producers \
    --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$OUT/worker_engine_bg.wasm" -o "$OUT/worker_engine_bg.opt.wasm"
  mv "$OUT/worker_engine_bg.opt.wasm" "$OUT/worker_engine_bg.wasm"
fi

# Bundle the entry together with the glue; the wasm stays a separate CompiledWasm module.
cp ts/src/worker-entry.ts "$OUT/entry.ts"
ts/node_modules/.bin/esbuild "$OUT/entry.ts" --bundle --format=esm --platform=neutral \
  --external:cloudflare:workers --external:*.wasm \
  --outfile="$OUT/index.mjs" --log-level=warning
rm "$OUT/entry.ts" "$OUT/worker_engine.js" "$OUT"/*.d.ts
raw=$(stat -c %s "$OUT/worker_engine_bg.wasm")
gz=$(gzip -9 -c "$OUT/worker_engine_bg.wasm" | wc -c)
mkdir -p target && echo "worker wasm: $raw bytes raw, $gz bytes gzip -9" | tee target/worker-size.txt
