#!/usr/bin/env bash
# Installs what payhost needs from Debian 12's packages, skipping what is already there.
# Run as root (apt-get). Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git binutils
  openssl                         # the CLI: demo certificates (make-certs.sh), TLS tests (s_client)
  capnproto libcapnp-dev          # RPC, schemas, KJ event loops, KJ's TLS (libkj-tls)
  libboost-dev                    # Boost.DLL (plugin loading)
  libssl-dev                      # OpenSSL: TLS, package and audit hashes, key handles
  libtomlplusplus-dev             # config files
  libcli11-dev                    # command lines
  libspdlog-dev libfmt-dev        # the host's log sink
  libsqlite3-dev libpq-dev        # database pools (Context::sql)
  postgresql                      # the PostgreSQL server the database pool tests start
  libgtest-dev libgmock-dev       # tests
  libbenchmark-dev                # micro-benchmarks
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
                                  # the gRPC baseline of the benchmark suite (bench/grpc; optional:
                                  # the build skips it when they are missing)
  gnuplot-nox                     # the benchmark suite's plot (bench/run.sh only)
  clang-format clang-tidy         # formatting and lint checks
  clang-14 libclang-rt-14-dev     # libFuzzer with ASan/UBSan for tests/fuzz (scripts/fuzz.sh)
)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "payhost: all build dependencies are installed"
  exit 0
fi
echo "payhost: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
