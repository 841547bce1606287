#!/usr/bin/env bash
# A short run of every fuzz target, for CI: builds them (nightly, cargo-fuzz) and runs each
# for FUZZ_SECONDS (default 30) from a scratch corpus; the config target starts from the
# project's examples and the brief's seed configs. Not a substitute for the minutes-long runs
# in docs/testing.md: it catches targets that no longer build, and crashes the first few
# thousand inputs reach. Exits non-zero on the first crash, leak or timeout libFuzzer reports.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-30}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz smoke: no nightly toolchain; install it with: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz smoke: installing cargo-fuzz (crates.io)"
  cargo install --locked cargo-fuzz --version 0.13.2
fi

cargo +nightly fuzz build -O
scratch=$(mktemp -d /tmp/tripline-fuzz-smoke.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
for target in config h2_server client_h1 upstream_h1 sni; do
  mkdir -p "$scratch/$target"
  seeds=()
  max_len=2048
  if [ "$target" = config ]; then
    max_len=8192 # the seed configs are up to a few KiB
    seeds=(../examples)
    shared=${TRIPLINE_SHARED:-../../shared}
    if [ -d "$shared/examples/seeds" ]; then
      seeds+=("$shared/examples/seeds")
    elif [ "${CI:-}" = true ]; then
      echo "fuzz smoke: no seed configs in $shared/examples/seeds (CI=true requires them; set TRIPLINE_SHARED)" >&2
      exit 1
    else
      echo "fuzz smoke: no seed configs in $shared/examples/seeds; the config target starts from examples/ only"
    fi
  fi
  echo "== fuzz smoke: $target, ${SECONDS_EACH}s"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run -O "$target" "$scratch/$target" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_EACH" -timeout=20 -max_len="$max_len" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "fuzz smoke: $target FAILED (the input is in fuzz/artifacts/$target; decode it with" \
      "cargo +nightly fuzz fmt $target <file>)" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" | tr '\n' ' ' || true
  echo
done
echo "fuzz smoke: all targets ran ${SECONDS_EACH}s without a finding"
