#!/bin/sh
# Build libcurl 8 (Debian 13's curl source package, with Debian's patches)
# into a private prefix, so that the series can be built and tested against
# the libcurl that current distributions ship, not only Debian 12's 7.88.
#
#   scripts/build-libcurl8.sh     prints the path of the prefix
#
# The prefix is $CACHE/libcurl8/<version> (CACHE defaults to
# ~/.cache/qemu-curl): lib/libcurl.so*, lib/pkgconfig/libcurl.pc,
# include/curl, bin/curl-config.  A second run with the same version does
# nothing.  REFRESH=1 asks the mirror again for a newer 8.x.
#
# Only libcurl is built, and only with what the driver uses: OpenSSL (the
# flavour the series recommends, README.rst), nghttp2, zlib, and Debian's
# CA defaults (a bundle and a directory, as Debian's own libcurl: the
# driver's curl_trust_bundle_only() looks at both).  LDAP, RTMP, SSH,
# Kerberos, IDN, brotli, zstd, HTTP/3 and the curl tool's manual are left
# out; libpsl is used when its headers are there (install-deps.sh curl8).
#
# A shared library, not a static one: QEMU finds libcurl with pkg-config
# and links it with -lcurl only, so a static libcurl would need its private
# dependencies spelt out, and a shared one is what users run; the binaries
# load it from the prefix through their rpath (scripts/build.sh --curl8).
set -eu

CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qemu-curl}
REFRESH=${REFRESH:-0}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

say() { echo "build-libcurl8: $*" >&2; }
die() { echo "build-libcurl8: error: $*" >&2; exit 1; }

# shellcheck source=scripts/trixie-apt.sh
. "$(dirname "$0")/trixie-apt.sh"
for t in cc make pkg-config; do
    command -v "$t" >/dev/null || die "$t not found: scripts/install-deps.sh curl8"
done
pkg-config --exists openssl || die "OpenSSL headers not found: apt-get install libssl-dev"
pkg-config --exists libnghttp2 || die "nghttp2 headers not found: apt-get install libnghttp2-dev"

top=$CACHE/libcurl8
mkdir -p "$top"
stamp=$top/version
src_of() { echo "$top/src-$1"; }
if [ "$REFRESH" = 1 ] || [ ! -s "$stamp" ] || [ ! -f "$(src_of "$(cat "$stamp")")/.complete" ]; then
    say "asking $MIRROR for Debian 13's curl source package"
    REFRESH=1 trixie_apt_update_once
    # The newest 8.x whose files the mirror has: a mirror may list a
    # version (a security update, say) before its files are there.
    # shellcheck disable=SC2086
    vers=$(apt-cache $APT_OPTS showsrc curl | sed -n 's/^Version: //p' |
           grep -E '^8\.' | sort -V -u -r)
    [ -n "$vers" ] || die "no curl 8.x source package found in trixie on $MIRROR"
    got=
    for ver in $vers; do
        src=$(src_of "$ver")
        [ -f "$src/.complete" ] && { got=$ver; break; }
        say "downloading curl=$ver (about 4 MB)"
        rm -rf "$src" "$src.tmp"
        mkdir -p "$src.tmp"
        # apt-get source verifies the .dsc signature and applies
        # debian/patches.
        # shellcheck disable=SC2086
        if ! (cd "$src.tmp" && apt-get $APT_OPTS -qq source "curl=$ver" >&2); then
            say "the mirror has no files for curl=$ver; trying an older one"
            rm -rf "$src.tmp"
            continue
        fi
        d=$(find "$src.tmp" -mindepth 1 -maxdepth 1 -type d -name 'curl-*' | head -n 1)
        [ -n "$d" ] && [ -f "$d/include/curl/curlver.h" ] || die "unpacked source not found in $src.tmp"
        mv "$d" "$src"
        rm -rf "$src.tmp"
        touch "$src/.complete"
        got=$ver
        break
    done
    [ -n "$got" ] || die "could not download any of: $(echo $vers)"
    printf '%s\n' "$got" > "$stamp.new"
    mv "$stamp.new" "$stamp"
fi
ver=$(cat "$stamp")
src=$(src_of "$ver")
prefix=$top/$ver
if [ -f "$prefix/.complete" ]; then
    echo "$prefix"
    exit 0
fi

# Debian's patches touch configure.ac and Makefile.am; regenerate the build
# system when they did, as Debian's rules do, else use the shipped one.
obj=$top/obj-$ver
rm -rf "$obj" "$prefix"
mkdir -p "$obj"
if [ ! -x "$src/configure" ] || [ "$src/configure.ac" -nt "$src/configure" ]; then
    command -v autoreconf >/dev/null || die "autoreconf not found: apt-get install autoconf automake libtool"
    say "regenerating curl's build system"
    (cd "$src" && autoreconf -fi > "$obj/autoreconf.log" 2>&1) ||
        { tail -n 20 "$obj/autoreconf.log" >&2; die "autoreconf failed (see $obj/autoreconf.log)"; }
fi
psl=--without-libpsl
pkg-config --exists libpsl && psl=--with-libpsl
say "configuring curl $ver for $prefix"
(cd "$obj" && "$src/configure" --prefix="$prefix" --enable-shared --disable-static \
    --enable-versioned-symbols --enable-threaded-resolver --disable-dependency-tracking \
    --with-openssl --with-nghttp2 --with-zlib "$psl" \
    --without-libidn2 --without-brotli --without-zstd --without-libssh2 \
    --without-libssh --without-librtmp --without-gssapi --without-nghttp3 \
    --without-ngtcp2 --disable-ldap --disable-ldaps --disable-rtsp \
    --disable-dict --disable-telnet --disable-tftp --disable-pop3 \
    --disable-imap --disable-smb --disable-smtp --disable-gopher --disable-mqtt \
    --disable-manual --disable-docs --without-libgsasl \
    --with-ca-bundle=/etc/ssl/certs/ca-certificates.crt \
    --with-ca-path=/etc/ssl/certs \
    > configure.log 2>&1) ||
    { tail -n 30 "$obj/configure.log" >&2; die "curl's configure failed (see $obj/configure.log)"; }
say "building libcurl"
make -C "$obj/lib" -j "$JOBS" > "$obj/make.log" 2>&1 ||
    { tail -n 30 "$obj/make.log" >&2; die "libcurl's build failed (see $obj/make.log)"; }
# The library, its headers, pkg-config file and curl-config; not the tool.
for d in lib include; do
    make -C "$obj/$d" install > "$obj/install-$d.log" 2>&1 ||
        die "installing curl's $d failed (see $obj/install-$d.log)"
done
make -C "$obj" install-pkgconfigDATA install-binSCRIPTS > "$obj/install.log" 2>&1 ||
    die "installing libcurl.pc and curl-config failed (see $obj/install.log)"
[ -f "$prefix/lib/pkgconfig/libcurl.pc" ] || die "$prefix/lib/pkgconfig/libcurl.pc missing"
got=$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --modversion libcurl)
case "$got" in 8.*) ;; *) die "the prefix has libcurl $got, not 8.x" ;; esac
printf '%s\n' "$ver" > "$prefix/.debian-version"
touch "$prefix/.complete"
rm -rf "$obj"
say "libcurl $got in $prefix"
echo "$prefix"
