#!/bin/sh
# Build the series: the patched QEMU (qemu-img, qemu-io, qemu-nbd,
# qemu-storage-daemon, a small qemu-system-x86_64 and the unit tests), the
# stock qemu-img, qemu-io and qemu-system-x86_64 from the same base, for
# comparison, the firmware that boots a guest with -kernel, and the test
# guest (scripts/build-guest.py).
#
#   scripts/build.sh [--asan] [--curl8 | --curl8-only]
#
# --asan also builds the patched binaries and the unit tests with
# AddressSanitizer and UndefinedBehaviorSanitizer in $BUILD/qemu-asan, from
# the same tree, and makes $BUILD/asan: a build folder for the tests
# (QCURL_BUILD) whose patched binaries are those, the rest (the stock
# binaries, the guest, the firmware, the tree) the ones of $BUILD.  See
# scripts/check-asan.sh.
#
# --curl8 also builds the patched qemu-img, qemu-io, qemu-nbd,
# qemu-storage-daemon and qemu-system-x86_64 against libcurl 8 (Debian 13's,
# built by scripts/build-libcurl8.sh into a private prefix) in
# $BUILD/qemu-curl8, and makes $BUILD/curl8, the tests' build folder for
# them (see build_curl8 below and scripts/check-curl8.sh).  --curl8-only
# builds that part alone (the overlay, then $BUILD/qemu-curl8), for a
# machine where $BUILD is built already.
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

asan=
curl8=
for arg in "$@"; do
    case "$arg" in
    --asan) asan=1 ;;
    --curl8) curl8=1 ;;
    --curl8-only) curl8=only ;;
    *) die "unknown argument '$arg' (usage: $0 [--asan] [--curl8 | --curl8-only])" ;;
    esac
done

[ -x "$PY" ] || die "$PY not found: apt-get install python3"
command -v ninja >/dev/null || die "ninja not found: apt-get install ninja-build"
command -v cc >/dev/null || die "no C compiler: apt-get install build-essential"
pkg-config --exists libcurl 2>/dev/null || die "libcurl headers not found: apt-get install libcurl4-openssl-dev"
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

# The x86 option ROMs (see the firmware below) need a compiler that makes
# 32-bit code; without one, configure silently leaves them out.
mtmp=$(mktemp -d)
printf 'int x;\n' > "$mtmp/t.c"
if ! { cc -m32 -c -o "$mtmp/t.o" "$mtmp/t.c" &&
       cc -m32 -r -nostdlib -o "$mtmp/t2.o" "$mtmp/t.o" -lgcc; } >/dev/null 2>&1; then
    rm -rf "$mtmp"
    die "the C compiler cannot make 32-bit code for the x86 option ROMs: apt-get install gcc-multilib"
fi
rm -rf "$mtmp"

mkdir -p "$BUILD"
"$top/scripts/overlay.sh" "$base" "$BUILD/src" "$top"

COMMON_OPTS="--python=$PY --enable-curl --enable-tools --disable-docs
 --disable-werror --disable-download --disable-install-blobs --disable-sdl
 --disable-gtk --disable-vnc --disable-opengl --disable-spice --disable-curses
 --disable-libusb --disable-usb-redir --disable-xen --disable-gio"
# The system emulator: machine "none" for -drive and QMP, and "q35" to boot
# the test guest with -kernel/-initrd under TCG, with PCI virtio-blk and the
# 8250 serial port that q35 brings.  virtio-blk also because Python iotests
# refuse to run without it (they check "-device help").  Then what libvirt
# (Debian 12's 9.0, tests/e2e/test_libvirt.py) adds to a plain q35 domain,
# and the two devices virt-install adds for a Linux guest, so that such a
# domain needs no workaround:
#   PCIE_PORT      pcie-root-port: libvirt puts each PCIe device of a q35
#                  domain behind one (it takes ioh3420 only without it)
#   USB_XHCI_PCI   qemu-xhci, the USB controller libvirt adds to q35
#   VIRTIO_BALLOON virtio-balloon-pci, the default <memballoon>
#   VIRTIO_RNG     virtio-rng-pci, the <rng> virt-install adds
#   VIRTIO_SERIAL  virtio-serial-pci, for the qemu-ga <channel> it adds
# QEMU takes a device list from its own tree only, so it goes into the
# working copies of the base.
DEVICES=qemu-curl
write_devices() {  # write_devices SRC
    ddir=$1/configs/devices/x86_64-softmmu
    mkdir -p "$ddir"
    cat > "$ddir/$DEVICES.mak.new" <<MAK
# Written by the curl series' scripts/build.sh: see there
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_BLK=y
CONFIG_Q35=y
CONFIG_VIRTIO_PCI=y
CONFIG_PCIE_PORT=y
CONFIG_USB_XHCI_PCI=y
CONFIG_VIRTIO_BALLOON=y
CONFIG_VIRTIO_RNG=y
CONFIG_VIRTIO_SERIAL=y
MAK
    if cmp -s "$ddir/$DEVICES.mak.new" "$ddir/$DEVICES.mak"; then
        rm "$ddir/$DEVICES.mak.new"
    else
        mv "$ddir/$DEVICES.mak.new" "$ddir/$DEVICES.mak"
    fi
}
write_devices "$BUILD/src"

# The stock build's copy of the base: hard links (the base stays pristine,
# and a copy costs nothing), plus the device list.
stock_src=$BUILD/stock-src
if [ "$(cat "$stock_src/.stock-base" 2>/dev/null)" != "$base" ]; then
    say "linking the base tree to $stock_src"
    rm -rf "$stock_src"
    if ! cp -al "$base" "$stock_src" 2>/dev/null; then
        rm -rf "$stock_src"
        mkdir -p "$stock_src"
        tar -C "$base" --exclude=./.git --exclude=./build -cf - . | tar -C "$stock_src" -xf -
    fi
    echo "$base" > "$stock_src/.stock-base"
fi
write_devices "$stock_src"

SYSTEM_OPTS="$COMMON_OPTS --target-list=x86_64-softmmu --without-default-devices
 --with-devices-x86_64=$DEVICES"

# configure_tree SRC DIR OPTS: configure DIR from SRC unless it already is,
# with the same options.
configure_tree() {
    # (a change of libcurl flavour, say GnuTLS to OpenSSL, reconfigures too)
    want="$1 $3 $(readlink -f "$(pkg-config --variable=libdir libcurl)/libcurl.so")"
    # (the option ROMs are set up only if configure found a compiler for them)
    if [ -f "$2/build.ninja" ] && [ "$(cat "$2/.series-configured" 2>/dev/null)" = "$want" ] &&
        [ -f "$2/pc-bios/optionrom/config.mak" ]; then
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

# ---- libcurl 8 (--curl8): a part of its own, run at the end ----
# The patched binaries, from the same tree and options, linked against
# libcurl 8 from the prefix of scripts/build-libcurl8.sh, with that prefix
# in their rpath so that they load it at run time.  pkg-config finds it
# first through PKG_CONFIG_PATH, which configure_tree's key then names (a
# new libcurl is a new prefix, and reconfigures).  $BUILD/curl8 is the
# build folder for the tests, as $BUILD/asan: these binaries, and the rest
# (stock binaries, guest, firmware, tree) those of $BUILD.
CURL8_TARGETS="qemu-img qemu-io qemu-nbd storage-daemon/qemu-storage-daemon
 qemu-system-x86_64"
build_curl8() {
    prefix=$("$top/scripts/build-libcurl8.sh") || die "could not build libcurl 8"
    (
        export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
        configure_tree "$BUILD/src" "$BUILD/qemu-curl8" \
            "$SYSTEM_OPTS --extra-ldflags=-Wl,-rpath,$prefix/lib"
        say "building the patched QEMU against libcurl 8 in $BUILD/qemu-curl8"
        # shellcheck disable=SC2086
        ninja -C "$BUILD/qemu-curl8" -j "$JOBS" $CURL8_TARGETS ||
            die "build of the patched QEMU against libcurl 8 failed"
    ) || exit 1
    view=$BUILD/curl8
    mkdir -p "$view"
    for b in qemu-img qemu-io qemu-nbd qemu-system-x86_64; do
        ln -sfn "../qemu-curl8/$b" "$view/$b"
    done
    ln -sfn ../qemu-curl8/storage-daemon/qemu-storage-daemon "$view/qemu-storage-daemon"
    ln -sfn ../qemu-curl8 "$view/qemu"
    for d in src stock guest firmware base-version; do
        ln -sfn "../$d" "$view/$d"
    done
    # Each binary must load the prefix's libcurl, and that one be 8.x.
    for b in qemu-img qemu-io qemu-nbd qemu-storage-daemon qemu-system-x86_64; do
        v=$("$PY" "$top/scripts/libcurl-of.py" --expect "$prefix/lib" --major 8 "$view/$b") ||
            die "$view/$b does not use the libcurl 8 of $prefix"
    done
    say "done: $view/qemu-img (patched, $v)"
}
if [ "$curl8" = only ]; then
    build_curl8
    exit 0
fi
# ---- end of the libcurl 8 part ----

configure_tree "$BUILD/src" "$BUILD/qemu" "$SYSTEM_OPTS"
configure_tree "$stock_src" "$BUILD/stock" "$SYSTEM_OPTS"

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
say "building the stock qemu-img, qemu-io and qemu-system-x86_64"
ninja -C "$BUILD/stock" -j "$JOBS" qemu-img qemu-io qemu-system-x86_64 ||
    die "build of the stock QEMU failed"

# Firmware for q35, found with -L $BUILD/firmware: Debian's SeaBIOS, and the
# option ROM that boots -kernel, built from the base's own pc-bios/optionrom
# (configure sets that up when the compiler can make 32-bit code).
say "building the firmware in $BUILD/firmware"
rom=$BUILD/qemu/pc-bios/optionrom
[ -f "$rom/config.mak" ] ||
    die "configure found no compiler for the x86 option ROMs: apt-get install gcc-multilib"
make -s -C "$rom" PYTHON="$PY" linuxboot_dma.bin >/dev/null ||
    die "build of the option ROM linuxboot_dma.bin failed"
seabios=/usr/share/seabios/bios-256k.bin
[ -f "$seabios" ] || die "$seabios not found: apt-get install seabios"
mkdir -p "$BUILD/firmware"
for f in "$rom/linuxboot_dma.bin" "$seabios"; do
    cmp -s "$f" "$BUILD/firmware/${f##*/}" || cp "$f" "$BUILD/firmware/"
done
# bundle_firmware DIR: the same files where the emulator built in $BUILD/DIR
# looks without -L (libvirt passes none): QEMU run from its build folder
# takes its data directory from DIR/qemu-bundle/<datadir> (util/cutils.c,
# get_relocated_path).
bundle_firmware() {
    datadir=$(sed -n 's/^#define CONFIG_QEMU_DATADIR "\(.*\)"$/\1/p' "$BUILD/$1/config-host.h")
    [ -n "$datadir" ] || die "no CONFIG_QEMU_DATADIR in $BUILD/$1/config-host.h"
    mkdir -p "$BUILD/$1/qemu-bundle$datadir"
    for f in linuxboot_dma.bin bios-256k.bin; do
        ln -sfn "$BUILD/firmware/$f" "$BUILD/$1/qemu-bundle$datadir/$f"
    done
}
bundle_firmware qemu
bundle_firmware stock

# The test guest: kernel, initramfs and the test disk, cached in $CACHE.
BUILD=$BUILD "$PY" "$top/scripts/build-guest.py" || die "could not make the test guest"

for b in qemu-img qemu-io qemu-nbd qemu-system-x86_64; do
    ln -sfn "qemu/$b" "$BUILD/$b"
done
ln -sfn qemu/storage-daemon/qemu-storage-daemon "$BUILD/qemu-storage-daemon"
echo "$(cat "$base/VERSION") ($origin)" > "$BUILD/base-version"

if [ -n "$asan" ]; then
    # The same configuration with both sanitizers, and frame pointers, so
    # that ASan's fast unwinder sees QEMU's frames at least, if one asks for
    # it (scripts/with-sanitizers.sh uses the slow one).
    configure_tree "$BUILD/src" "$BUILD/qemu-asan" "$SYSTEM_OPTS --enable-asan
 --enable-ubsan --extra-cflags=-fno-omit-frame-pointer"
    say "building the patched QEMU with ASan and UBSan in $BUILD/qemu-asan"
    # shellcheck disable=SC2086
    ninja -C "$BUILD/qemu-asan" -j "$JOBS" $PATCHED_TARGETS ||
        die "build of the sanitized QEMU failed"
    bundle_firmware qemu-asan
    view=$BUILD/asan
    mkdir -p "$view"
    for b in qemu-img qemu-io qemu-nbd qemu-system-x86_64; do
        ln -sfn "../qemu-asan/$b" "$view/$b"
    done
    ln -sfn ../qemu-asan/storage-daemon/qemu-storage-daemon "$view/qemu-storage-daemon"
    # The unit tests and the iotests' check script are found under qemu/.
    ln -sfn ../qemu-asan "$view/qemu"
    for d in src stock guest firmware base-version; do
        ln -sfn "../$d" "$view/$d"
    done
    say "done: $view/qemu-img (patched, ASan and UBSan)"
fi
[ -z "$curl8" ] || build_curl8  # the libcurl 8 part, above
say "done: $BUILD/qemu-img (patched), $BUILD/stock/qemu-img (stock), $BUILD/guest"
