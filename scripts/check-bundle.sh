#!/usr/bin/env bash
# Builds the bundle `wrangler deploy` would upload (--dry-run, nothing leaves the machine)
# and checks it: every module in it is one the Worker loads, and its compressed size is
# within the budget (TWILL_SIZE_BUDGET bytes, default 1,985,000: what the bundle has come
# down to, 1.96 MB, plus a little room; the free plan's limit is 3,000,000). The budget only
# ever goes down: growing past it is a decision made here, in review, not by accident.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/deploy
BUDGET="${TWILL_SIZE_BUDGET:-1985000}"
rm -rf "$OUT"
(cd ts && WRANGLER_SEND_METRICS=false npx wrangler deploy --dry-run --outdir "../$OUT" --config ../wrangler.toml > ../target/deploy.log 2>&1) || {
  cat target/deploy.log
  echo "bundle-check: wrangler deploy --dry-run failed" >&2
  exit 1
}
unexpected=$(cd "$OUT" && find . -type f ! -name 'index.mjs' ! -name '*.wasm' ! -path './snippets/*' ! -name '*.map' ! -name 'README.md' | sort)
if [ -n "$unexpected" ]; then
  echo "bundle-check: the bundle holds files the Worker never loads:" >&2
  echo "$unexpected" >&2
  exit 1
fi
total=$(cd "$OUT" && find . -type f ! -name '*.map' ! -name 'README.md' -print0 | xargs -0 cat | gzip -9 | wc -c)
wasm=$(gzip -9 -c "$OUT"/*.wasm | wc -c)
echo "bundle-check: $(cd "$OUT" && find . -type f | wc -l) files; wasm $wasm bytes gzip, whole bundle $total bytes gzip (budget $BUDGET)"
if [ "$total" -gt "$BUDGET" ]; then
  echo "bundle-check: the bundle is over its size budget ($total > $BUDGET bytes gzip)" >&2
  exit 1
fi
