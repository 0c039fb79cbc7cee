#!/usr/bin/env bash
# The libFuzzer targets (tests/fuzz), each built with clang and -fsanitize=fuzzer,address,undefined
# in build/fuzz (its own build directory: the main builds use g++), then run over its checked-in
# seed corpus (tests/fuzz/corpus/<target>) for SECONDS each:
#   config             payhostd's config parser
#   package-signature  the plugin package check (signature file, trust, digest, manifest)
#   card-rpc, screen-rpc, fraud-rpc, fx-rpc, vault-rpc
#                      a service's RPC entry, its plugin compiled in, through the SDK's test host
#   ledger-rpc, payments-rpc
#                      a service's RPC entry in payhostd's call path: the real .so files loaded by
#                      the host into its ShardServices, over SQLite (payments with the services
#                      it calls behind it)
#   gateway-rpc        payhostd's client entry: RPC frames into a connection served by the Gateway
#
#   bash scripts/fuzz.sh                    # 8 s per target (what scripts/test.sh runs)
#   bash scripts/fuzz.sh 600                # the long run: 10 minutes per target
#   bash scripts/fuzz.sh 600 gateway-rpc    # one target (a ctest regex on the target names)
#   bash scripts/fuzz.sh --seeds            # rewrite the RPC targets' seed corpora from code
#
# PAYHOST_FUZZ_BUILD_DIR builds elsewhere than build/fuzz.
# A finding stops that target and leaves crash-*/leak-*/timeout-* files in build/fuzz/findings;
# new interesting inputs are kept in build/fuzz/tests/fuzz/corpus/<target> (emptied first by a
# run shorter than 60 s per target). Reproduce one with
# `build/fuzz/tests/fuzz/<target>-fuzz build/fuzz/findings/crash-...`.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=false
if [[ ${1:-} == --seeds ]]; then
  seeds=true
  shift
fi
seconds=${1:-8}
only=${2:-}
jobs=${PAYHOST_JOBS:-2}
dir=${PAYHOST_FUZZ_BUILD_DIR:-build/fuzz}
rpcTargets=(card-rpc screen-rpc fraud-rpc fx-rpc vault-rpc ledger-rpc payments-rpc gateway-rpc)
targets=(config package-signature "${rpcTargets[@]}")
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DPAYHOST_FUZZ=ON \
  -DPAYHOST_BUILD_TESTS=OFF -DPAYHOST_BUILD_BENCH=OFF -DPAYHOST_WERROR=OFF \
  -DPAYHOST_FUZZ_SECONDS="$seconds" > /dev/null
cmake --build "$dir" -j "$jobs" --target "${targets[@]/%/-fuzz}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if $seeds; then
  # Each RPC target writes one valid call (or session) per case from its own code and exits.
  for target in "${rpcTargets[@]}"; do
    rm -rf "tests/fuzz/corpus/$target"
    mkdir -p "tests/fuzz/corpus/$target"
    PAYHOST_FUZZ_WRITE_SEEDS="$PWD/tests/fuzz/corpus/$target" "$dir/tests/fuzz/$target-fuzz"
  done
  exit 0
fi
# A short run (the suite's) starts from the checked-in seeds only: libFuzzer runs every input it
# loads before it looks at the clock, so a corpus grown by earlier runs would make each run longer
# than the last. A long run (60 s or more per target) keeps and extends what earlier runs found.
if (( seconds < 60 )); then
  find "$dir/tests/fuzz/corpus" -mindepth 2 -type f -delete
fi
ctest --test-dir "$dir" -R "^fuzz\.${only:-.*}" --output-on-failure
