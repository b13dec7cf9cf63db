#!/bin/sh
# Run the curl8 layer of scripts/check.py alone: the e2e tests it names
# (CURL8_E2E) against the patched binaries linked to libcurl 8, which
# "scripts/build.sh --curl8" builds in $BUILD/qemu-curl8 against Debian
# 13's libcurl (scripts/build-libcurl8.sh).  make check runs this layer
# too, after the others.
#
# The tests use $BUILD/curl8 as their build folder (QCURL_BUILD): there
# qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon and qemu-system-x86_64
# are those of $BUILD/qemu-curl8; the stock binaries, the guest and the
# firmware those of $BUILD.  Their first test (test_libcurl) fails unless
# every one of them loads libcurl 8.x.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
case "$BUILD" in /*) ;; *) BUILD=$top/$BUILD ;; esac
view=$BUILD/curl8

die() { echo "check-curl8: error: $*" >&2; exit 1; }
for b in qemu-img qemu-io qemu-nbd qemu-storage-daemon qemu-system-x86_64; do
    [ -x "$view/$b" ] || die "$view/$b missing: run make check-curl8 (or scripts/build.sh --curl8)"
done
BUILD=$BUILD exec "$top/scripts/check.sh" --only curl8 "$@"
