#!/bin/sh
# Fetch and unpack the QEMU base tree: the newest QEMU 10.0.x source package
# of Debian 13 (trixie), with Debian's own patches applied, through a private
# apt configuration that leaves the system's apt sources untouched.  Also
# fetches Debian 13's meson (QEMU 10.0 needs meson >= 1.5, Debian 12 has 1.0).
#
# Everything lands in $CACHE (default ~/.cache/qemu-curl) so that a second
# build downloads nothing.
#
#   scripts/fetch-base.sh qemu    prints the path of the unpacked QEMU tree
#   scripts/fetch-base.sh meson   prints a PYTHONPATH entry with meson >= 1.5
set -eu

what=${1:-qemu}
case "$what" in
qemu|meson) ;;
*) echo "usage: $0 [qemu|meson]" >&2; exit 2 ;;
esac

CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qemu-curl}
REFRESH=${REFRESH:-0}   # 1: ask the mirror again for a newer 10.0.x

say() { echo "fetch-base: $*" >&2; }
die() { echo "fetch-base: error: $*" >&2; exit 1; }

# shellcheck source=scripts/trixie-apt.sh
. "$(dirname "$0")/trixie-apt.sh"
mkdir -p "$CACHE/base"

if [ "$what" = meson ]; then
    mdir=$CACHE/meson
    if [ ! -d "$mdir/usr/lib/python3/dist-packages/mesonbuild" ]; then
        say "downloading Debian 13's meson"
        trixie_apt_update_once
        rm -rf "$mdir" "$mdir.tmp"
        mkdir -p "$mdir.tmp"
        # shellcheck disable=SC2086
        (cd "$mdir.tmp" && apt-get $APT_OPTS -qq download meson >&2) || die "apt-get download meson failed"
        dpkg -x "$mdir.tmp"/meson_*.deb "$mdir.tmp/root" || die "dpkg -x meson failed"
        mv "$mdir.tmp/root" "$mdir"
        rm -rf "$mdir.tmp"
    fi
    echo "$mdir/usr/lib/python3/dist-packages"
    exit 0
fi

# The version we used last time, unless asked to look again.
stamp=$CACHE/base/version
# Paths carry the version without its epoch: a ':' in a path upsets PATH-like
# variables and some tools.
tree_of() { echo "$CACHE/base/tree-${1#*:}"; }
if [ "$REFRESH" = 1 ] || [ ! -s "$stamp" ] || [ ! -f "$(tree_of "$(cat "$stamp")")/.complete" ]; then
    say "asking $MIRROR for Debian 13's QEMU source package"
    REFRESH=1 trixie_apt_update_once
    # shellcheck disable=SC2086
    ver=$(apt-cache $APT_OPTS showsrc qemu | sed -n 's/^Version: //p' |
          grep -E '^1:10\.0\.' | sort -V | tail -n 1)
    [ -n "$ver" ] || die "no QEMU 10.0.x source package found in trixie on $MIRROR"
    printf '%s\n' "$ver" > "$stamp.new"
    mv "$stamp.new" "$stamp"
fi
ver=$(cat "$stamp")
tree=$(tree_of "$ver")

if [ ! -f "$tree/.complete" ]; then
    say "downloading qemu=$ver (about 40 MB)"
    rm -rf "$tree" "$tree.tmp"
    mkdir -p "$tree.tmp"
    # apt-get source verifies the .dsc signature and applies debian/patches.
    # shellcheck disable=SC2086
    (cd "$tree.tmp" && apt-get $APT_OPTS -qq source "qemu=$ver" >&2) ||
        die "apt-get source qemu=$ver failed"
    src=$(find "$tree.tmp" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -n 1)
    [ -n "$src" ] && [ -f "$src/VERSION" ] || die "unpacked source not found in $tree.tmp"
    mv "$src" "$tree"
    mkdir -p "$CACHE/base/dl"
    mv "$tree.tmp"/* "$CACHE/base/dl/" 2>/dev/null || true
    rm -rf "$tree.tmp"
    printf '%s\n' "$ver" > "$tree/.debian-version"
    touch "$tree/.complete"
fi

echo "$tree"
