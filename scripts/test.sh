#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs what is missing,
# then configures, builds and runs every test twice: a normal build with warnings as errors,
# and an AddressSanitizer + UndefinedBehaviorSanitizer build.
#
#   bash scripts/test.sh            # both builds
#   PAYHOST_TEST_BUILDS=release bash scripts/test.sh   # only the normal build
#
# Then each libFuzzer target (10 of them) runs for PAYHOST_FUZZ_SECONDS (8) in its own clang build
# (scripts/fuzz.sh; PAYHOST_FUZZ_SECONDS=0 skips it). A longer run: bash scripts/fuzz.sh 600
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

jobs=${PAYHOST_JOBS:-2}
builds=${PAYHOST_TEST_BUILDS:-release asan}
start=$(date +%s)
status=0
for build in $builds; do
  case $build in
    release) dir=build/test flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
    asan) dir=build/asan flags=(-DCMAKE_BUILD_TYPE=Debug -DPAYHOST_SANITIZE=ON
                                -DPAYHOST_BUILD_BENCH=OFF) ;;
    *) echo "unknown build '$build' (release, asan)"; exit 2 ;;
  esac
  echo "=== [$build] configure and build in $dir"
  cmake -S . -B "$dir" -G Ninja -DPAYHOST_WERROR=ON "${flags[@]}" > /dev/null
  cmake --build "$dir" -j "$jobs"
  echo "=== [$build] test"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  if ! ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 900; then
    status=1
  fi
done
fuzzSeconds=${PAYHOST_FUZZ_SECONDS:-8}
if [[ $fuzzSeconds != 0 ]]; then
  echo "=== [fuzz] libFuzzer targets, $fuzzSeconds s each"
  if ! bash scripts/fuzz.sh "$fuzzSeconds"; then
    status=1
  fi
fi
echo "=== done in $(( $(date +%s) - start ))s, builds: $builds"
exit $status
