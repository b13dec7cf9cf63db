#!/bin/sh
# The main job: convert a qcow2 image from an https:// URL with the series'
# qemu-img and check the result.  See scripts/convert.py --help.
#
# Runs with the test CA trusted, so that the local sample server's
# certificate verifies; a public URL verifies against the system's CAs
# as usual.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
case "$BUILD" in /*) ;; *) BUILD=$top/$BUILD ;; esac
export QCURL_BUILD="$BUILD"
exec "$top/scripts/with-test-ca.sh" "$BUILD/test-ca" \
    /usr/bin/python3 "$top/scripts/convert.py" "$@"
