#!/usr/bin/env bash
# The SDK as a stranger gets it: install payhost into a fresh prefix, build the out-of-tree
# example plugin against that prefix with find_package(payhost-sdk), run its unit tests, then
# load it into payhostd and call it through the Gateway.
#
# usage: check-installed-sdk.sh BUILD_DIR SOURCE_DIR PAYHOSTD CLIENT WORK_DIR [CXX_FLAGS]
set -euo pipefail
build=$1 source=$2 payhostd=$3 client=$4 work=$5 flags=${6:-}

rm -rf "$work" && mkdir -p "$work"
echo "== installing the SDK into $work/prefix"
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"

echo "== building examples/hello-plugin against the installed SDK"
cmake -S "$source/examples/hello-plugin" -B "$work/plugin" -G Ninja \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_MODULE_LINKER_FLAGS="$flags" > "$work/configure.log"
cmake --build "$work/plugin"
ctest --test-dir "$work/plugin" --output-on-failure

# What <payhost/shared-state.h> (one registry per loaded copy of a library) and unloading rely on.
echo "== checking that payhost_add_plugin() builds with hidden visibility and -fno-gnu-unique (GCC)"
commands=$(ninja -C "$work/plugin" -t commands limit-screen.so)
grep -q -- '-fvisibility=hidden' <<< "$commands" || {
  echo "limit-screen.so was not compiled with -fvisibility=hidden"; exit 1; }
if grep -rqs 'CMAKE_CXX_COMPILER_ID "GNU"' "$work/plugin/CMakeFiles"; then
  grep -q -- '-fno-gnu-unique' <<< "$commands" || {
    echo "limit-screen.so was not compiled with -fno-gnu-unique"; exit 1; }
fi

echo "== loading limit-screen.so into payhostd"
cat > "$work/payhostd.toml" <<CONFIG
[host]
shards = 1
[listen]
unix = [{ path = "$work/data.sock", insecure = true }]
[admin]
socket = "$work/admin.sock"
[security]
allow_unsigned = true
[[access]]
identity = "anonymous"
services = ["*"]
[[plugin]]
path = "$work/plugin/limit-screen.so"
[plugin.config]
max_amount = 10000
CONFIG
"$payhostd" --config "$work/payhostd.toml" 2> "$work/payhostd.log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  grep -q 'event=host.ready' "$work/payhostd.log" && break
  kill -0 $pid 2>/dev/null || { cat "$work/payhostd.log"; echo "payhostd exited early"; exit 1; }
  sleep 0.05
done
grep -q 'event=plugin.loaded plugin=limit-screen' "$work/payhostd.log" || {
  cat "$work/payhostd.log"; echo "limit-screen was not loaded"; exit 1; }

verdict=$("$client" --connect "unix:$work/data.sock" --service payments.screen screen \
  --amount 20000 --currency EUR --token tok_test)
echo "verdict: $verdict"
[[ $verdict == "decision=deny score=1000 rules=amount-limit" ]] || { echo "unexpected verdict"; exit 1; }

kill -TERM $pid
wait $pid
trap - EXIT
grep -q 'event=plugin.unloaded plugin=limit-screen version=1.0.0 result=unmapped' \
  "$work/payhostd.log" || { cat "$work/payhostd.log"; echo "plugin not unmapped"; exit 1; }
echo "ok: installed SDK builds, tests and serves an out-of-tree plugin"
