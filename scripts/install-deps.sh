#!/bin/sh
# Install the Debian packages the series needs to build, test and benchmark.
# Runs apt-get only for what is missing, so a second run is quick and quiet.
set -eu

# Build of the QEMU base and of the series; gcc-multilib for the x86 option
# ROM that boots a guest's -kernel, seabios for q35's BIOS, e2fsprogs for the
# test guest's disks (scripts/build-guest.py).
# libcurl is the OpenSSL flavour: only it keeps the parsed CA store for the
# next connections, which made the first read of an https image complete
# 0.17 s after open instead of 0.83 s (README.rst, "libcurl's TLS flavour").
BUILD_PKGS="build-essential ninja-build pkg-config dpkg-dev debian-archive-keyring
 python3 python3-venv libglib2.0-dev libcurl4-openssl-dev zlib1g-dev libzstd-dev
 libaio-dev libpixman-1-dev libfdt-dev xz-utils ca-certificates
 gcc-multilib seabios e2fsprogs"
# The test harness: nginx over HTTPS, FTP servers (pyftpdlib, and vsftpd, the
# one most Linux hosts run), certificates.
TEST_PKGS="nginx-light openssl curl python3-pyftpdlib python3-openssl util-linux vsftpd"
# The benchmark: reference downloaders and the plot.
BENCH_PKGS="aria2 gnuplot-nox time autoconf automake libtool libgnutls28-dev"

case "${1:-test}" in
build) pkgs=$BUILD_PKGS ;;
test) pkgs="$BUILD_PKGS $TEST_PKGS" ;;
bench) pkgs="$BUILD_PKGS $TEST_PKGS $BENCH_PKGS" ;;
*) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac

missing=
for p in $pkgs; do
    st=$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "error: missing Debian packages:$missing" >&2
        echo "run as root, or: apt-get install$missing" >&2
        exit 1
    fi
else
    SUDO=
fi
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
