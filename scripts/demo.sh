#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine (as root): installs what is missing, builds
# payhost, installs the SDK into build/demo/sdk and builds the out-of-tree example plugin against
# it, signs every plugin with a demo key, issues a demo CA and certificates
# (scripts/make-certs.sh), starts payhostd with the card processor, that plugin and the payment
# flow (fraud-screen, fx, ledger, payments over SQLite in build/demo/data) serving TLS with client
# certificates, runs a short live demo through the example client (as merchant-a: the card
# processor, the fraud screen, then payments through `payments.payments` and the ledger's
# balances, which must add up; then a refused merchant-b) and payhostctl, then stops the daemon
# with SIGTERM.
#
#   bash scripts/demo.sh               # serves on 127.0.0.1:7400 (PAYHOST_DEMO_PORT to change)
#   PAYHOST_DEMO_KEEP=1 bash scripts/demo.sh   # leave the daemon running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

jobs=${PAYHOST_JOBS:-2}
port=${PAYHOST_DEMO_PORT:-7400}
build=build/release
demo=$PWD/build/demo
echo "=== building payhost in $build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPAYHOST_BUILD_TESTS=OFF > /dev/null
flow_plugins="card-processor fraud-screen fx ledger payments"
# shellcheck disable=SC2086  # the list is meant to split
cmake --build "$build" -j "$jobs" --target payhostd payhostctl payhost-client $flow_plugins \
  payhost-sdk payhost-sdk-testing

echo "=== installing the SDK into $demo/sdk and building examples/hello-plugin against it"
rm -rf "$demo" && mkdir -p "$demo"
cmake --install "$build" --prefix "$demo/sdk" > /dev/null
cmake -S examples/hello-plugin -B "$demo/limit-screen" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$demo/sdk" > /dev/null
cmake --build "$demo/limit-screen" --target limit-screen

echo "=== issuing a demo CA, payhostd's certificate and client certificates into $demo/certs"
bash scripts/make-certs.sh "$demo/certs" merchant-a merchant-b

echo "=== signing the plugins with a demo key ($demo/signing.key; payhostd trusts signing.pub)"
ctl() { "$build/host/payhostctl" --socket "$demo/admin.sock" "$@"; }
ctl keygen "$demo/signing"
for plugin in $flow_plugins; do
  ctl sign --key "$demo/signing.key" "$build/plugins/$plugin/$plugin.so" --name "$plugin" \
    --version 1.0.0
done
ctl sign --key "$demo/signing.key" "$demo/limit-screen/limit-screen.so" \
  --name limit-screen --version 1.0.0

sed -e "s|@PORT@|$port|" -e "s|@DEMO@|$demo|" -e "s|@BUILD@|$PWD/$build|" \
  examples/config/payhostd-demo.toml > "$demo/payhostd.toml"
echo "=== starting payhostd --config $demo/payhostd.toml"
"$build/host/payhostd" --config "$demo/payhostd.toml" 2> "$demo/payhostd.log" &
pid=$!
stop() { kill -TERM $pid 2>/dev/null && wait $pid || true; }
trap stop EXIT
for _ in $(seq 200); do
  grep -q 'event=host.ready' "$demo/payhostd.log" && break
  kill -0 $pid 2>/dev/null || { cat "$demo/payhostd.log"; exit 1; }
  sleep 0.05
done
cat "$demo/payhostd.log"

# Over TLS, as merchant-a (its certificate's CN); `as NAME` picks another client certificate.
as() {
  local who=$1
  shift
  "$build/examples/client/payhost-client" --connect "127.0.0.1:$port" --ca "$demo/certs/ca.pem" \
    --cert "$demo/certs/$who.pem" --key "$demo/certs/$who.key" "$@"
}
client() { as merchant-a "$@"; }
echo; echo "=== payhostctl list"; ctl list
echo; echo "=== payhost-client list"; client list
echo; echo "=== payhost-client demo (payments.card)"; client demo
echo; echo "=== payhost-client screen (payments.screen, the out-of-tree plugin)"
client --service payments.screen screen --amount 1250 --currency EUR --token tok_visa_approve \
  --card-country DE --ip-country DE
client --service payments.screen screen --amount 900000 --currency EUR --token tok_visa_approve \
  --card-country DE --ip-country BR
echo; echo "=== payhost-client flow (payments.payments: fraud screen, card, FX, ledger; then the ledger)"
client flow --merchant merchant-a
echo; echo "=== merchant-b may not authorize (refused, logged as access.denied, counted)"
as merchant-b authorize --amount 100 --currency EUR --key demo-b-1 || true
echo; echo "=== no client certificate: refused during the TLS handshake"
"$build/examples/client/payhost-client" --connect "127.0.0.1:$port" --ca "$demo/certs/ca.pem" \
  list || true
echo; echo "=== payhostctl status"; ctl status
echo; echo "=== payhostctl audit verify (the audit log's hash chain and head)"
ctl audit verify --config "$demo/payhostd.toml"

if [[ -n ${PAYHOST_DEMO_KEEP:-} ]]; then
  trap - EXIT
  echo; echo "payhostd keeps running as pid $pid (log: $demo/payhostd.log); stop it with kill -TERM $pid"
  exit 0
fi
echo; echo "=== stopping payhostd (SIGTERM)"
stop
trap - EXIT
grep -E 'event=(host.draining|host.drained|plugin.unloaded|host.stopped)' "$demo/payhostd.log"
