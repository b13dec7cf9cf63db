#!/bin/sh
# Build the series: the patched QEMU (qemu-img, qemu-io, qemu-nbd,
# qemu-storage-daemon, a minimal qemu-system-x86_64 and the unit tests) and
# the stock qemu-img and qemu-io from the same base, for comparison.
#
# Environment: QEMU_SRC (a QEMU tree to use as the base instead of Debian
# 13's source package), CACHE, BUILD (default: build), JOBS.
# Safe to run again: only what changed is rebuilt.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
case "$BUILD" in /*) ;; *) BUILD=$top/$BUILD ;; esac
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
export CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qemu-curl}
PY=/usr/bin/python3

say() { echo "build: $*"; }
die() { echo "build: error: $*" >&2; exit 1; }

[ -x "$PY" ] || die "$PY not found: apt-get install python3"
command -v ninja >/dev/null || die "ninja not found: apt-get install ninja-build"
command -v cc >/dev/null || die "no C compiler: apt-get install build-essential"
pkg-config --exists libcurl 2>/dev/null || die "libcurl headers not found: apt-get install libcurl4-gnutls-dev"
pkg-config --exists glib-2.0 2>/dev/null || die "glib headers not found: apt-get install libglib2.0-dev"

# The base tree.
if [ -n "${QEMU_SRC:-}" ]; then
    base=$QEMU_SRC
    [ -f "$base/VERSION" ] || die "QEMU_SRC=$base is not a QEMU source tree"
    origin="the tree at $base"
else
    base=$("$top/scripts/fetch-base.sh" qemu) || die "could not fetch the QEMU base tree"
    origin="Debian 13 source package qemu $(cat "$base/.debian-version")"
fi
say "base: QEMU $(cat "$base/VERSION"), $origin"

# meson >= 1.5 (Debian 12 has 1.0): the system's if new enough, else Debian 13's.
if ! $PY -c 'import mesonbuild.coredata as c, sys
v = tuple(int(x) for x in c.version.split(".")[:2])
sys.exit(0 if v >= (1, 5) else 1)' 2>/dev/null; then
    mpath=$("$top/scripts/fetch-base.sh" meson) || die "could not fetch meson >= 1.5"
    export PYTHONPATH="$mpath${PYTHONPATH:+:$PYTHONPATH}"
fi

mkdir -p "$BUILD"
"$top/scripts/overlay.sh" "$base" "$BUILD/src" "$top"

COMMON_OPTS="--python=$PY --enable-curl --enable-tools --disable-docs
 --disable-werror --disable-download --disable-install-blobs --disable-sdl
 --disable-gtk --disable-vnc --disable-opengl --disable-spice --disable-curses
 --disable-libusb --disable-usb-redir --disable-xen --disable-gio"
# The system emulator only has to accept -drive and QMP: machine "none" and
# no default devices.  virtio-blk is in because Python iotests refuse to run
# without it (they check "-device help").  QEMU takes a device list from its
# own tree only, so it goes into the working copy.
DEVICES=qemu-curl-minimal
mkdir -p "$BUILD/src/configs/devices/x86_64-softmmu"
cat > "$BUILD/src/configs/devices/x86_64-softmmu/$DEVICES.mak.new" <<MAK
# Written by the curl series' scripts/build.sh: see there
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_BLK=y
MAK
if cmp -s "$BUILD/src/configs/devices/x86_64-softmmu/$DEVICES.mak.new" \
        "$BUILD/src/configs/devices/x86_64-softmmu/$DEVICES.mak"; then
    rm "$BUILD/src/configs/devices/x86_64-softmmu/$DEVICES.mak.new"
else
    mv "$BUILD/src/configs/devices/x86_64-softmmu/$DEVICES.mak.new" \
        "$BUILD/src/configs/devices/x86_64-softmmu/$DEVICES.mak"
fi
PATCHED_OPTS="$COMMON_OPTS --target-list=x86_64-softmmu --without-default-devices
 --with-devices-x86_64=$DEVICES"
STOCK_OPTS="$COMMON_OPTS --target-list= --disable-system --disable-user"

# configure_tree SRC DIR OPTS: configure DIR from SRC unless it already is,
# with the same options.
configure_tree() {
    want="$1 $3"
    if [ -f "$2/build.ninja" ] && [ "$(cat "$2/.series-configured" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    say "configuring $2"
    rm -rf "$2"
    mkdir -p "$2"
    # shellcheck disable=SC2086
    (cd "$2" && "$1/configure" $3 > configure.log 2>&1) ||
        { tail -n 30 "$2/configure.log" >&2; die "configure failed in $2 (see $2/configure.log)"; }
    # Let meson re-run later without our PYTHONPATH.
    if [ -n "${mpath:-}" ]; then
        for sp in "$2"/pyvenv/lib/python3*/site-packages; do
            echo "$mpath" > "$sp/qemu-curl-meson.pth"
        done
    fi
    echo "$want" > "$2/.series-configured"
}

configure_tree "$BUILD/src" "$BUILD/qemu" "$PATCHED_OPTS"
configure_tree "$base" "$BUILD/stock" "$STOCK_OPTS"

PATCHED_TARGETS="qemu-img qemu-io qemu-nbd storage-daemon/qemu-storage-daemon
 qemu-system-x86_64"
# Unit tests the series adds (listed in tests/unit/meson.build by its patch).
for t in "$top"/tests/unit/test-*.c; do
    [ -f "$t" ] || continue
    n=$(basename "$t" .c)
    PATCHED_TARGETS="$PATCHED_TARGETS tests/unit/$n"
done

say "building the patched QEMU"
# shellcheck disable=SC2086
ninja -C "$BUILD/qemu" -j "$JOBS" $PATCHED_TARGETS || die "build of the patched QEMU failed"
say "building the stock qemu-img and qemu-io"
ninja -C "$BUILD/stock" -j "$JOBS" qemu-img qemu-io || die "build of the stock QEMU failed"

for b in qemu-img qemu-io qemu-nbd qemu-system-x86_64; do
    ln -sfn "qemu/$b" "$BUILD/$b"
done
ln -sfn qemu/storage-daemon/qemu-storage-daemon "$BUILD/qemu-storage-daemon"
echo "$(cat "$base/VERSION") ($origin)" > "$BUILD/base-version"
say "done: $BUILD/qemu-img (patched), $BUILD/stock/qemu-img (stock)"
