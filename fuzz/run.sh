#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and fails on any finding.
# Usage: fuzz/run.sh [SECONDS]      (needs the nightly toolchain and `cargo install cargo-fuzz`)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
for target in request_path frame_roundtrip publish_request; do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  echo "== fuzz $target for ${secs}s"
  cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | grep -E '^(Done|#[0-9]+ *DONE)|SUMMARY|panicked|Failing input' || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz $target found a failing input:"; ls "artifacts/$target"; exit 1
  fi
done
