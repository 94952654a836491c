#!/usr/bin/env bash
# Makes the patched crates that Cargo.toml's [patch.crates-io] points at: for each
# patches/<crate>-<version>.patch, the crate's published source (checked against its known
# SHA-256) with the patch applied, in .patched-crates/<crate>-<version>/. Each patch file
# says what it changes and why. Fast when nothing changed; run by scripts/bootstrap.sh
# before any cargo command (cargo cannot resolve the workspace without these directories).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.patched-crates
# The published crates the patches apply to, as their .crate archives hash.
declare -A SHA256=(
  [turso_core-0.8.3]=810ee7b139fd6aa9304cb2fa278c1be0bb964c92457e2a24c1d384196ce5e217
  [turso_parser-0.8.3]=a69bb856ec8306ad7ed1c13fc61de6a79452bf646ca53d99bb4cc646d5bfc4ff
)

mkdir -p "$OUT"
for patch in patches/*.patch; do
  id=$(basename "$patch" .patch)          # e.g. turso_core-0.8.3
  name=${id%-*}
  version=${id##*-}
  want=${SHA256[$id]:?"no known checksum for $id in scripts/patch-crates.sh"}
  stamp="$OUT/$id/.twill-patch"
  have_stamp=$(cat "$stamp" 2>/dev/null || true)
  now_stamp=$(sha256sum "$patch" | cut -c1-64)
  if [ "$have_stamp" = "$now_stamp" ]; then
    continue
  fi
  echo "patch-crates: $id" >&2
  archive=""
  for cached in "${CARGO_HOME:-${HOME:-/root}/.cargo}"/registry/cache/*/"$id.crate"; do
    [ -f "$cached" ] && archive="$cached" && break
  done
  if [ -z "$archive" ]; then
    archive=$(mktemp)
    curl -fsSL --retry 3 "https://static.crates.io/crates/$name/$id.crate" -o "$archive"
  fi
  got=$(sha256sum "$archive" | cut -c1-64)
  if [ "$got" != "$want" ]; then
    echo "patch-crates: $id archive has SHA-256 $got, expected $want" >&2
    exit 1
  fi
  rm -rf "${OUT:?}/$id"
  tar -xzf "$archive" -C "$OUT"
  (cd "$OUT" && patch -s -p1 --no-backup-if-mismatch < "../$patch")
  # Registry crates build with their warnings silenced; a path crate would print them all.
  lib=$(awk '/^\[lib\]/{l=1} l && /^path *=/{gsub(/"|path *= */,""); print; exit}' "$OUT/$id/Cargo.toml")
  sed -i '1i #![allow(warnings)]' "$OUT/$id/${lib:-src/lib.rs}"
  echo "$now_stamp" > "$stamp"
done
