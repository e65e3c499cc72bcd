#!/bin/sh
# Makes the throwaway certificates and keys of the kube client's tests (run
# once; the files are committed). Valid for 100 years.
#   ca.crt                  EC P-256 test CA (its key is not kept)
#   client.crt, client.key  CN=kube-test-admin, O=system:masters, signed by ca.crt;
#                           the key as PKCS#8, and as SEC1 in client-sec1.key
#   client-rsa.crt, .key    CN=kube-test-rsa, RSA 2048, the key as PKCS#1
#   client-v1.crt           client.key's certificate as X.509 v1 (no extensions)
#   other.key               an EC key that matches no certificate
#   sa.key                  the API server's service account signing key (EC)
set -eu
cd "$(dirname "$0")"
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
o() { openssl "$@" 2>/dev/null; }
ext() { printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$t/ext"; }
o ecparam -name prime256v1 -genkey -noout -out "$t/ca.key"
o req -x509 -new -key "$t/ca.key" -sha256 -days 36500 -subj "/CN=kubelet-plugin-test-ca" -out ca.crt \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
ext
o ecparam -name prime256v1 -genkey -noout -out client-sec1.key
o pkcs8 -topk8 -nocrypt -in client-sec1.key -out client.key
o req -new -key client.key -subj "/O=system:masters/CN=kube-test-admin" -out "$t/client.csr"
o x509 -req -in "$t/client.csr" -CA ca.crt -CAkey "$t/ca.key" -CAcreateserial -CAserial "$t/serial" \
  -days 36500 -sha256 -extfile "$t/ext" -out client.crt
o x509 -req -in "$t/client.csr" -CA ca.crt -CAkey "$t/ca.key" -CAserial "$t/serial" -days 36500 -sha256 -out client-v1.crt
o genrsa -out "$t/rsa.key" 2048
o rsa -in "$t/rsa.key" -traditional -out client-rsa.key
o req -new -key client-rsa.key -subj "/O=system:masters/CN=kube-test-rsa" -out "$t/rsa.csr"
o x509 -req -in "$t/rsa.csr" -CA ca.crt -CAkey "$t/ca.key" -CAserial "$t/serial" -days 36500 -sha256 \
  -extfile "$t/ext" -out client-rsa.crt
o ecparam -name prime256v1 -genkey -noout -out other.key
o ecparam -name prime256v1 -genkey -noout -out sa.key
chmod 644 ./*.crt ./*.key
