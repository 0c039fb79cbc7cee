#!/usr/bin/env bash
# Issues a private CA, a server certificate for payhostd and client certificates, with the
# openssl CLI (ECDSA P-256, SHA-256), for the demo and for trying TLS locally:
#
#   bash scripts/make-certs.sh DIR [CLIENT ...]     # default client: merchant-a
#
# Writes DIR/ca.pem (+ ca.key), DIR/server.pem + server.key (CN and SAN localhost, 127.0.0.1,
# ::1) and DIR/CLIENT.pem + CLIENT.key for each CLIENT: subject CN=CLIENT (the identity payhostd
# grants with [[access]] identity = "CLIENT" under the default [tls] identity = "cn"), and the
# SANs URI:spiffe://payhost.demo/CLIENT ("san-uri") and DNS:CLIENT.clients.payhost.demo
# ("san-dns"). A client certificate also serves a payhostd as its identity towards a remote
# ([remotes.NAME] tls). Private keys are mode 0600. Valid 30 days. For production, use your own
# PKI: payhostd only needs the PEM files named in [tls] and [remotes.NAME] tls.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [CLIENT ...]}
shift
clients=("$@")
[[ ${#clients[@]} -gt 0 ]] || clients=(merchant-a)
mkdir -p "$dir"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2> /dev/null; }

key "$dir/ca.key"
openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 30 -subj "/CN=payhost demo CA" \
  -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$dir/ca.pem"

issue() {  # issue NAME EXTENSIONS
  local name=$1 extensions=$2
  key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "/CN=$3" -out "$dir/$name.csr"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -sha256 -days 30 -extfile <(printf '%s\n' "$extensions") \
    -out "$dir/$name.pem" 2> /dev/null
  rm -f "$dir/$name.csr"
}
issue server "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth" localhost
for client in "${clients[@]}"; do
  issue "$client" "subjectAltName=URI:spiffe://payhost.demo/$client,DNS:$client.clients.payhost.demo
extendedKeyUsage=clientAuth" "$client"
done
chmod 644 "$dir"/*.pem
echo "certificates in $dir: ca.pem server.pem ${clients[*]/%/.pem}"
