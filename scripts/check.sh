#!/bin/sh
# Run every test of the series (see scripts/check.py) with the test CA
# trusted, so that HTTPS tests verify certificates for real.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
case "$BUILD" in /*) ;; *) BUILD=$top/$BUILD ;; esac
export QCURL_BUILD="$BUILD"
exec "$top/scripts/with-test-ca.sh" "$BUILD/test-ca" \
    /usr/bin/python3 "$top/scripts/check.py" "$@"
