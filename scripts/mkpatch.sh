#!/bin/sh
# Make or refresh the overlay patch of a file QEMU owns.
#
#   scripts/mkpatch.sh PATH
#
# PATH is relative to the QEMU tree (e.g. qapi/block-core.json).  Edit the
# file in the working copy (build/src/PATH) first; this writes the
# difference to the base tree as PATH.patch in the repository.  Remember to
# list a new patch in 'series'.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
[ $# -eq 1 ] || { echo "usage: $0 PATH" >&2; exit 2; }
f=$1
base=$(sed -n 1p "$BUILD/src/.overlay-base" 2>/dev/null) ||
    { echo "mkpatch: no working copy in $BUILD/src; run make first" >&2; exit 1; }
[ -f "$base/$f" ] || { echo "mkpatch: $f is not in the base tree $base" >&2; exit 1; }
mkdir -p "$top/$(dirname "$f")"
if diff -u --label "a/$f" --label "b/$f" "$base/$f" "$BUILD/src/$f" > "$top/$f.patch.new"; then
    rm -f "$top/$f.patch.new" "$top/$f.patch"
    echo "mkpatch: $f is unchanged; no patch"
else
    mv "$top/$f.patch.new" "$top/$f.patch"
    echo "mkpatch: wrote $f.patch"
fi
