#!/usr/bin/env bash
# Runs every benchmark and writes RESULTS.md (`make bench`). With TWILL_BENCH_SMOKE=1 it is
# the tiny run `make test` does so the harness cannot rot; its report goes to target/bench.
# Expects the Worker built (`make worker`).
set -euo pipefail
cd "$(dirname "$0")/.."
export WRANGLER_SEND_METRICS=false

OUT=target/bench
rm -rf "$OUT" && mkdir -p "$OUT"
export TWILL_BENCH_TARGETS="$OUT/targets.jsonl"
export TWILL_BENCH_CHARTS="$OUT/charts.jsonl"
if [ "${TWILL_BENCH_SMOKE:-0}" = 1 ]; then
  results="$OUT/RESULTS.smoke.md"
  cold_sizes=(1)
  # The smoke run only proves the harness works: the test profile's build (its
  # dependencies are already compiled by `cargo test`) saves a release build of turso.
  profile=(); bin=target/debug
else
  results=benches/RESULTS.md
  cold_sizes=(1 64 256)
  profile=(--release); bin=target/release
fi

started=$(date +%s)
cargo build "${profile[@]}" --quiet -p twill-benches
echo "bench: engine overhead (native)" >&2
"$bin/engine-overhead" > "$OUT/1-engine-overhead.md"
echo "bench: commit cost and contention (native, simulated latency)" >&2
"$bin/commit-cost" > "$OUT/2-commit-cost.md"
echo "bench: cold reads (native, in-memory object store)" >&2
"$bin/cold-read" "${cold_sizes[@]}" > "$OUT/3-cold-read.md"
echo "bench: history: forks, restores, import, export, storage (native)" >&2
"$bin/history" > "$OUT/4-history.md"
echo "bench: workerd (miniflare)" >&2
node benches/workerd/bench.mjs > "$OUT/5-workerd.md"
node benches/report.mjs "$OUT" "$results" "$(( $(date +%s) - started ))"
echo "bench: wrote $results" >&2
