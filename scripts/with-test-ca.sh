#!/bin/sh
# Run a command that trusts a throwaway test CA, without touching the system.
#
#   scripts/with-test-ca.sh DIR COMMAND [ARG...]
#
# Creates (once) in DIR a CA (ca.pem) and a certificate for 127.0.0.1 and
# localhost signed by it (server.pem, server.key), plus a second, untrusted
# self-signed certificate (untrusted.pem, untrusted.key) for negative tests.
# COMMAND then runs in a private mount namespace in which /etc/ssl/certs,
# where libcurl (GnuTLS or OpenSSL) looks for trusted CAs, also holds the
# test CA.  QCURL_CA_DIR=DIR is exported to COMMAND.
set -eu

die() { echo "with-test-ca: error: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 DIR COMMAND [ARG...]"
dir=$1
shift
command -v openssl >/dev/null || die "openssl not found: apt-get install openssl"
command -v unshare >/dev/null || die "unshare not found: apt-get install util-linux"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -f "$dir/.complete" ]; then
    (
        cd "$dir"
        umask 077
        q() { "$@" > openssl.log 2>&1 || { cat openssl.log >&2; exit 1; }; }
        q openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
            -subj "/CN=qemu-curl test CA" -keyout ca.key -out ca.pem \
            -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign,cRLSign
        q openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=127.0.0.1" \
            -keyout server.key -out server.csr
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            "basicConstraints=CA:FALSE" "extendedKeyUsage=serverAuth" > server.ext
        q openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key \
            -CAcreateserial -days 3650 -sha256 -extfile server.ext -out server.pem
        q openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
            -subj "/CN=127.0.0.1" -addext subjectAltName=IP:127.0.0.1 \
            -keyout untrusted.key -out untrusted.pem
        chmod 644 ca.pem server.pem untrusted.pem
        chmod 600 ca.key
        chmod 644 server.key untrusted.key   # nginx workers must read them
        rm -f server.csr server.ext openssl.log
    ) || die "could not create the test CA in $dir"
    touch "$dir/.complete"
fi

# The trust store seen by the command: the system's plus the test CA.
certs=$dir/certs
if [ ! -f "$certs/.complete" ] || [ /etc/ssl/certs/ca-certificates.crt -nt "$certs/.complete" ]; then
    rm -rf "$certs"
    mkdir -p "$certs"
    cp -P /etc/ssl/certs/* "$certs/" 2>/dev/null || true
    rm -f "$certs/ca-certificates.crt"
    cat /etc/ssl/certs/ca-certificates.crt "$dir/ca.pem" > "$certs/ca-certificates.crt" 2>/dev/null ||
        cp "$dir/ca.pem" "$certs/ca-certificates.crt"
    cp "$dir/ca.pem" "$certs/qemu-curl-test-ca.pem"
    ln -sf qemu-curl-test-ca.pem "$certs/$(openssl x509 -hash -noout -in "$dir/ca.pem").0"
    touch "$certs/.complete"
fi

export QCURL_CA_DIR="$dir"
if [ "$(id -u)" -eq 0 ]; then
    ns="unshare --mount --propagation private"
else
    # Unprivileged: a user namespace lets us mount in our own mount namespace.
    ns="unshare --map-root-user --mount --propagation private"
fi
# shellcheck disable=SC2016
exec $ns sh -c 'mount --bind "$0" /etc/ssl/certs || exit 125; exec "$@"' "$certs" "$@"
