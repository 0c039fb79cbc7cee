#!/usr/bin/env bash
# The benchmark suite in one command: payhostd beside bare Cap'n Proto, gRPC and the raw socket
# floor, interleaved, over TCP, unix sockets and TLS (certificates made with
# scripts/make-certs.sh, which needs the openssl CLI); then the payment flow through payhostd beside
# the same writes into SQLite directly and beside the same services as gRPC processes; then the
# plot.
#
#   bash bench/run.sh [BUILD_DIR] [payhost-bench-suite options...]
#
# BUILD_DIR defaults to ./build (configure with -DCMAKE_BUILD_TYPE=RelWithDebInfo; the gRPC
# baselines need libgrpc++-dev, protobuf-compiler-grpc and libprotobuf-dev, the plot gnuplot:
# scripts/install-deps.sh installs them). Writes bench/results/suite-DATE.json,
# bench/results/flow-DATE.json, bench/results/flow-grpc-DATE.json and
# bench/results/suite-DATE.png. Defaults: 5 rounds of 3 s per server and case, 4 connections in
# the multi-connection case, 1 payhostd shard; any option given here is passed on (e.g.
# `--rounds 3 --seconds 2`, `--shards 2`, `--connections 8`, `--case "64 in flight"`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build}"
if [[ $# -gt 0 && "$1" != --* ]]; then shift; fi
suite="$build/bench/payhost-bench-suite"
if [[ ! -x "$suite" ]]; then
  echo "run.sh: $suite not found; build it: ninja -C $build payhost-bench-suite payhostd card-processor payhost-bench-grpc-server payhost-flow-bench payhost-bench-grpc-flow fraud-screen fx ledger payments" >&2
  exit 2
fi
grpc=()
if [[ -x "$build/bench/grpc/payhost-bench-grpc-server" ]]; then
  grpc=(--grpc-server "$build/bench/grpc/payhost-bench-grpc-server")
fi
date="$(date -u +%Y-%m-%d)"
results="$here/results"
plotdata="$(mktemp -d /tmp/payhost-bench-plot-XXXXXX)"
trap 'rm -rf "$plotdata"' EXIT
# The TLS cases' certificates (CA, server, client CN=bench-client), made fresh for each run.
bash "$here/../scripts/make-certs.sh" "$plotdata/certs" bench-client > /dev/null
"$suite" --payhostd "$build/host/payhostd" \
  --plugin "$build/plugins/card-processor/card-processor.so" "${grpc[@]}" --certs "$plotdata/certs" \
  --json "$results/suite-$date.json" --plot-data "$plotdata" "$@"
# The payment flow (payhost-flow-bench) with the suite's --rounds and --seconds: first against
# the same writes into SQLite directly, one durable transaction per payment (the default FX share:
# a fifth of the purchases settled in another currency), then against the same services as gRPC
# processes (--versus grpc); their JSON beside the suite's, the gRPC comparison's panel in the plot.
flow="$build/bench/payhost-flow-bench"
grpcflow="$build/bench/grpc/payhost-bench-grpc-flow"
flowargs=(--rounds 5 --seconds 3)
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --rounds) flowargs[1]="${args[i+1]}" ;;
    --seconds) flowargs[3]="${args[i+1]}" ;;
  esac
done
if [[ -x "$flow" ]]; then
  echo
  "$flow" --payhostd "$build/host/payhostd" --plugins "$build/plugins" "${flowargs[@]}" \
    --json "$results/flow-$date.json"
else
  echo "run.sh: payment flow not measured (build payhost-flow-bench fraud-screen fx ledger" \
    "payments)" >&2
fi
if [[ -x "$flow" && -x "$grpcflow" && ${#grpc[@]} -gt 0 ]]; then
  echo
  "$flow" --payhostd "$build/host/payhostd" --plugins "$build/plugins" --versus grpc \
    --grpc-flow "$grpcflow" --grpc-card "$build/bench/grpc/payhost-bench-grpc-server" \
    "${flowargs[@]}" --json "$results/flow-grpc-$date.json" --plot-data "$plotdata"
else
  echo "run.sh: payment flow vs gRPC not measured (build payhost-flow-bench payhost-bench-grpc-flow" \
    "payhost-bench-grpc-server fraud-screen fx ledger payments)" >&2
fi
if command -v gnuplot > /dev/null; then
  gnuplot -e "data='$plotdata'; output='$results/suite-$date.png'; subtitle='$(nproc) CPUs, $date'" \
    "$here/plot.gp"
  echo "plot written to $results/suite-$date.png"
else
  echo "run.sh: gnuplot not installed (apt-get install gnuplot-nox); no plot" >&2
fi
