#!/usr/bin/env bash
# clang-format and clang-tidy over payhost's own sources (configs: .clang-format, .clang-tidy).
#   bash scripts/lint.sh          # check formatting, then run clang-tidy on every source file
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.cpp' '*.h' | grep -v '^tests/fixtures/')
echo "== clang-format"
clang-format --dry-run -Werror $files
echo "== clang-tidy (build/lint)"
cmake -S . -B build/lint -G Ninja -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > /dev/null
cmake --build build/lint -j "${PAYHOST_JOBS:-2}" --target payhost-schemas > /dev/null
git ls-files '*.cpp' | grep -vE '^(tests/fixtures|examples/hello-plugin)/' |
  xargs -P "${PAYHOST_JOBS:-2}" -n 4 clang-tidy -p build/lint --quiet
