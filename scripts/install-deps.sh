#!/bin/sh
# Install the Debian packages the series needs to build, test and benchmark.
# Runs apt-get only for what is missing, so a second run is quick and quiet.
set -eu

# Build of the QEMU base and of the series; gcc-multilib for the x86 option
# ROM that boots a guest's -kernel, seabios for q35's BIOS, e2fsprogs for the
# test guest's disks (scripts/build-guest.py).
# libcurl is the OpenSSL flavour: only it keeps the parsed CA store for the
# next connections, which made the first read of an https image complete
# 0.17 s after open instead of 0.83 s (README.rst, "libcurl's TLS flavour").
BUILD_PKGS="build-essential ninja-build pkg-config dpkg-dev debian-archive-keyring
 python3 python3-venv libglib2.0-dev libcurl4-openssl-dev zlib1g-dev libzstd-dev
 libaio-dev libpixman-1-dev libfdt-dev xz-utils ca-certificates
 gcc-multilib seabios e2fsprogs"
# The test harness: nginx over HTTPS, FTP servers (pyftpdlib, and vsftpd, the
# one most Linux hosts run), certificates; the real servers of
# tests/e2e/servers.py: Apache (apache2-bin: the server and its modules,
# without Debian's service), lighttpd with TLS, Varnish, Squid; nghttpd, a
# server that speaks only HTTP/2 (tests/e2e/test_http2.py).  The tests
# start their own instances: the packages' services are neither started nor
# needed (see SERVICES below).
TEST_PKGS="nginx-light openssl curl python3-pyftpdlib python3-openssl util-linux vsftpd
 apache2-bin lighttpd lighttpd-mod-openssl varnish squid nghttp2-server"
# Packages whose postinst would start a system service
SERVICES="nginx-light:nginx vsftpd:vsftpd lighttpd:lighttpd varnish:varnish squid:squid"
# libcurl 8 from Debian 13's source (scripts/build-libcurl8.sh), which
# make check also tests: OpenSSL, nghttp2 and libpsl headers, and the
# autotools to regenerate its build system after Debian's patches.
CURL8_PKGS="libssl-dev libnghttp2-dev libpsl-dev autoconf automake libtool"
# The libvirt test (tests/e2e/test_libvirt.py): Debian's libvirtd with its
# QEMU driver, and virsh; not libvirt-daemon-system, whose service, user and
# configuration the test does without (it starts a private libvirtd, see
# tests/e2e/libvirtd.py).
LIBVIRT_PKGS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
# The benchmark: reference downloaders and the plot.
BENCH_PKGS="aria2 gnuplot-nox time autoconf automake libtool libgnutls28-dev"

case "${1:-test}" in
build) pkgs=$BUILD_PKGS ;;
curl8) pkgs="$BUILD_PKGS $CURL8_PKGS" ;;
test) pkgs="$BUILD_PKGS $TEST_PKGS $CURL8_PKGS $LIBVIRT_PKGS" ;;
bench) pkgs="$BUILD_PKGS $TEST_PKGS $CURL8_PKGS $LIBVIRT_PKGS $BENCH_PKGS" ;;
*) echo "usage: $0 [build|curl8|test|bench]" >&2; exit 2 ;;
esac

missing=
for p in $pkgs; do
    st=$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "error: missing Debian packages:$missing" >&2
        echo "run as root, or: apt-get install$missing" >&2
        exit 1
    fi
else
    SUDO=
fi
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
# invoke-rc.d starts no service while a policy-rc.d says 101 ("action
# forbidden"): the tests run their own servers on free ports, and a system
# service would only take port 80, 21 or 3128.  An existing policy-rc.d
# (a container's) is left as it is.
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/install-deps.sh: start no service\nexit 101\n' |
        $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    own_policy=1
fi
status=0
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing || status=$?
[ -z "$own_policy" ] || $SUDO rm -f "$policy"
[ "$status" -eq 0 ] || exit "$status"
# Nor do they start at the next boot, where systemd runs
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for entry in $SERVICES; do
        case " $missing " in
        *" ${entry%%:*} "*) $SUDO systemctl disable --now "${entry#*:}" >/dev/null 2>&1 || true ;;
        esac
    done
fi
