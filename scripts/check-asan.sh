#!/bin/sh
# Run the tests (scripts/check.sh, same arguments) against the patched
# binaries built with AddressSanitizer and UndefinedBehaviorSanitizer by
# "scripts/build.sh --asan", and fail on any sanitizer report.
#
# The tests use $BUILD/asan as their build folder: there qemu-img, qemu-io,
# qemu-nbd, qemu-storage-daemon, qemu-system-x86_64, the unit tests and the
# iotests' check script are those of $BUILD/qemu-asan; the stock binaries,
# the guest and the firmware those of $BUILD.  The reports go to
# $BUILD/asan/sanitizer-logs, emptied first (scripts/with-sanitizers.sh);
# scripts/check.py prints each one and fails the layer that ran it.
#
# The sanitized binaries run 2 to 10 times slower: one e2e test may take
# up to 20 minutes (QCURL_E2E_TEST_TIMEOUT) instead of 5.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
case "$BUILD" in /*) ;; *) BUILD=$top/$BUILD ;; esac
view=$BUILD/asan

die() { echo "check-asan: error: $*" >&2; exit 1; }
for b in qemu-img qemu-io qemu-nbd qemu-storage-daemon qemu-system-x86_64; do
    [ -x "$view/$b" ] || die "$view/$b missing: run make check-asan (or scripts/build.sh --asan)"
done

logs=$view/sanitizer-logs
rm -rf "$logs"
export QCURL_E2E_TEST_TIMEOUT=${QCURL_E2E_TEST_TIMEOUT:-1200}
BUILD=$view exec "$top/scripts/with-sanitizers.sh" "$logs" "$top/scripts/check.sh" "$@"
