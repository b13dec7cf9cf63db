#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build Debian 13's nbdkit (1.42.x) privately, for the benchmark's
# "nbdkit curl plugin" contender.  Like scripts/fetch-base.sh, the source
# package comes through a private apt configuration (trixie deb-src) that
# leaves the system's apt sources untouched, with the same cache directory
# and mirrors.  Nothing is installed: nbdkit runs from its build tree.
#
#   tests/bench/build-nbdkit.sh     prints the path of the nbdkit wrapper
#
# Cached: a second run only prints the path.  $CACHE defaults to
# ~/.cache/qemu-curl; the source lands in $CACHE/nbdkit-src.
set -eu

CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qemu-curl}
JOBS=${JOBS:-2}
say() { echo "build-nbdkit: $*" >&2; }
die() { echo "build-nbdkit: error: $*" >&2; exit 1; }

top=$CACHE/nbdkit-src
stamp=$top/.built
if [ -f "$stamp" ]; then
    tree=$(cat "$stamp")
    if [ -x "$tree/nbdkit" ] && [ -f "$tree/plugins/curl/.libs/nbdkit-curl-plugin.so" ]; then
        echo "$tree/nbdkit"
        exit 0
    fi
fi

for t in autoconf automake libtoolize make cc pkg-config; do
    command -v $t >/dev/null ||
        die "$t not found: apt-get install autoconf automake libtool build-essential pkg-config"
done
pkg-config --exists libcurl || die "libcurl headers missing: apt-get install libcurl4-gnutls-dev"
# shellcheck source=scripts/trixie-apt.sh
. "$(dirname "$0")/../../scripts/trixie-apt.sh"
mkdir -p "$top"

src=$(find "$top" -mindepth 1 -maxdepth 1 -type d -name 'nbdkit-1.*' | sort -V | tail -n 1)
if [ -z "$src" ] || [ ! -f "$src/.complete" ]; then
    trixie_apt_update_once
    say "downloading Debian 13's nbdkit source package"
    rm -rf "$top/tmp"
    mkdir -p "$top/tmp"
    # shellcheck disable=SC2086
    (cd "$top/tmp" && apt-get $APT_OPTS -qq source nbdkit >&2) ||
        die "apt-get source nbdkit failed"
    new=$(find "$top/tmp" -mindepth 1 -maxdepth 1 -type d -name 'nbdkit-1.*' | head -n 1)
    [ -n "$new" ] && [ -f "$new/configure.ac" ] || die "unpacked nbdkit source not found"
    src=$top/$(basename "$new")
    rm -rf "$src"
    mv "$new" "$src"
    mkdir -p "$top/dl"
    mv "$top/tmp"/* "$top/dl/" 2>/dev/null || true
    rm -rf "$top/tmp"
    touch "$src/.complete"
fi

say "building $(basename "$src") (about a minute)"
cd "$src"
log=$top/build.log
: > "$log"
# Debian's patches touch configure.ac: regenerate the build system once,
# with the local autotools (as dh_autoreconf does)
if [ ! -f .autoreconf-done ]; then
    autoreconf -fi >> "$log" 2>&1 || { tail -n 30 "$log" >&2; die "autoreconf failed (see $log)"; }
    touch .autoreconf-done
fi
./configure --disable-perl --disable-python --disable-ocaml --disable-rust \
    --disable-ruby --disable-tcl --disable-lua --disable-golang \
    --disable-libguestfs-tests --without-libvirt --without-libguestfs \
    --without-ext2 --without-iso --without-ssh --without-libnbd \
    --disable-valgrind >> "$log" 2>&1 ||
    { tail -n 30 "$log" >&2; die "configure failed (see $log)"; }
make -j"$JOBS" >> "$log" 2>&1 || { tail -n 30 "$log" >&2; die "make failed (see $log)"; }
[ -x "$src/nbdkit" ] || die "no nbdkit wrapper in $src"
[ -f "$src/plugins/curl/.libs/nbdkit-curl-plugin.so" ] ||
    die "the curl plugin was not built (see $log)"
printf '%s\n' "$src" > "$stamp"
echo "$src/nbdkit"
