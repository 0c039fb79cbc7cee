#!/usr/bin/env bash
# The libFuzzer targets (tests/fuzz): payhostd's config parser, the plugin package/signature
# check and the RPC entries of the card-processor and limit-screen services, each built with clang and
# -fsanitize=fuzzer,address,undefined in build/fuzz (its own build directory: the main builds
# use g++), then run over its checked-in seed corpus for SECONDS each.
#
#   bash scripts/fuzz.sh          # 10 s per target (what scripts/test.sh runs)
#   bash scripts/fuzz.sh 600      # a longer run: 10 minutes per target
#
# A finding stops that target and leaves crash-*/leak-*/timeout-* files in build/fuzz/findings;
# new interesting inputs are kept in build/fuzz/tests/fuzz/corpus/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
jobs=${PAYHOST_JOBS:-2}
dir=build/fuzz
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DPAYHOST_FUZZ=ON \
  -DPAYHOST_BUILD_TESTS=OFF -DPAYHOST_BUILD_BENCH=OFF -DPAYHOST_WERROR=OFF \
  -DPAYHOST_FUZZ_SECONDS="$seconds" > /dev/null
cmake --build "$dir" -j "$jobs" --target config-fuzz package-signature-fuzz card-rpc-fuzz \
  screen-rpc-fuzz
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$dir" -R '^fuzz\.' --output-on-failure
