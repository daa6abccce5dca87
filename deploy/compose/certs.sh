#!/usr/bin/env bash
# Writes a throwaway CA and the certificates of compose.mtls.yaml into a
# directory (default: deploy/compose/certs): one server certificate for both
# control-plane replicas, one client certificate per agent naming its agent
# id. For trying mTLS out; use your own CA for anything real.
#
#   deploy/compose/certs.sh [DIR]
set -euo pipefail
dir=${1:-"$(dirname "$0")/certs"}
mkdir -p "$dir"
cd "$dir"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=shepherd example CA" -keyout ca-key.pem -out ca.pem 2>/dev/null

# issue NAME SAN: a key and a certificate signed by the CA.
issue() {
  local name=$1 san=$2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$name" -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days 90 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue control-plane "DNS:control-plane-1,DNS:control-plane-2,DNS:localhost,IP:127.0.0.1"
issue agent-1 "DNS:agent-1"
issue agent-2 "DNS:agent-2"
rm -f ca.srl
# The containers run as a non-root user.
chmod 644 ./*.pem
echo "certificates written to $dir"
