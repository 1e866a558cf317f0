#!/usr/bin/env bash
# Runs every fuzz target of proxy/fuzz for a bounded time each.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]   (default: 60, all)
#
# Installs cargo-fuzz if missing (`cargo install cargo-fuzz`). cargo-fuzz
# needs nightly-only rustc flags (sanitizers, -Zsanitizer-coverage); on a
# stable toolchain RUSTC_BOOTSTRAP=1 unlocks them, which this script sets.
#
# Build flags come from FUZZ_BUILD_FLAGS, default `--dev -s none`: the dev
# profile (debug assertions and overflow checks on, much faster to compile
# than an instrumented release build) with libFuzzer's coverage but no
# AddressSanitizer (the code under test is safe Rust). For a deeper run,
# e.g. FUZZ_BUILD_FLAGS="--release -s address". The same flags go to
# `cargo fuzz run`, which would otherwise rebuild.
# Builds into proxy/fuzz/target (gitignored; the fuzz crate is a workspace
# of its own). New inputs found while fuzzing go to
# proxy/fuzz/target/corpus/<target>, so the seed corpora in proxy/fuzz/corpus
# stay small; crashes are written to proxy/fuzz/artifacts/<target>
# (gitignored) and make the script fail.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
fuzz_dir="$root/proxy/fuzz"
target_dir="$fuzz_dir/target"
read -r -a build_flags <<<"${FUZZ_BUILD_FLAGS:---dev -s none}"
all_targets=(config_yaml xds_response trace_context protocol_detect authz_match path_normalize)
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=("${all_targets[@]}")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

cd "$fuzz_dir"
echo "fuzz.sh: building ${targets[*]}"
if [ "$#" -eq 0 ]; then
  cargo fuzz build "${build_flags[@]}" --target-dir "$target_dir"
else
  for t in "${targets[@]}"; do
    cargo fuzz build "${build_flags[@]}" --target-dir "$target_dir" "$t"
  done
fi

failed=()
for t in "${targets[@]}"; do
  work="$target_dir/corpus/$t"
  mkdir -p "$work" "$fuzz_dir/artifacts/$t"
  echo "fuzz.sh: $t for ${seconds}s"
  # The first corpus dir receives new inputs; the seeds are read only.
  if cargo fuzz run "${build_flags[@]}" --target-dir "$target_dir" "$t" "$work" "$fuzz_dir/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      2>&1 | tee "$target_dir/$t.log" | grep -E '^(#[0-9]+[[:space:]]+(DONE|INITED)|stat::number_of_executed_units|==[0-9]+==|SUMMARY|Done )'; then
    :
  fi
  if grep -qE 'SUMMARY: |panicked at|Test unit written to' "$target_dir/$t.log"; then
    failed+=("$t")
    echo "fuzz.sh: $t FOUND A CRASH; see $target_dir/$t.log and $fuzz_dir/artifacts/$t"
  else
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$target_dir/$t.log" | grep -oE '[0-9]+$' || echo '?')
    echo "fuzz.sh: $t ok: $runs runs in ${seconds}s, no crash"
  fi
done

if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz.sh: crashes in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds}s each without a crash"
