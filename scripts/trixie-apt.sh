# Sourced, not run: a private apt configuration for Debian 13 (trixie), so
# that scripts can fetch its source and binary packages without touching
# the system's apt sources.  It reuses the mirrors the system already uses.
#
# Needs $CACHE and a die() function.  Sets APT_OPTS (use it unquoted) and
# provides trixie_apt_update_once, which runs 'apt-get update' only when
# the private package lists are missing or REFRESH=1.

command -v apt-get >/dev/null || die "apt-get not found: a Debian system is needed"
command -v dpkg-source >/dev/null || die "dpkg-source not found: apt-get install dpkg-dev"
trixie_keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$trixie_keyring" ] || die "$trixie_keyring missing: apt-get install debian-archive-keyring"

# $1: a pattern the URI of a configured source must match
trixie_mirror_for() {
    { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
          sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]*\).*/\2/p'
    } | sed 's,/*$,,' | grep -E "$1" | head -n 1
}
MIRROR=${MIRROR:-$(trixie_mirror_for '/debian$')}
SECMIRROR=${SECMIRROR:-$(trixie_mirror_for '/debian-security$')}
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
[ -n "$SECMIRROR" ] || SECMIRROR=http://deb.debian.org/debian-security

trixie_apt_dir=$CACHE/apt
mkdir -p "$trixie_apt_dir/lists/partial" "$trixie_apt_dir/cache/archives/partial"
cat > "$trixie_apt_dir/sources.list" <<SRC
deb-src [signed-by=$trixie_keyring] $MIRROR trixie main
deb-src [signed-by=$trixie_keyring] $SECMIRROR trixie-security main
deb [signed-by=$trixie_keyring] $MIRROR trixie main
SRC
APT_OPTS="-o Dir::Etc::SourceList=$trixie_apt_dir/sources.list
 -o Dir::Etc::SourceParts=/dev/null
 -o Dir::State::Lists=$trixie_apt_dir/lists -o Dir::Cache=$trixie_apt_dir/cache
 -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
 -o APT::Sandbox::User=root -o Debug::NoLocking=1"

trixie_apt_update_once() {
    if [ "${REFRESH:-0}" = 1 ] || ! ls "$trixie_apt_dir/lists/"*_Sources* >/dev/null 2>&1 ||
        ! ls "$trixie_apt_dir/lists/"*_Packages* >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        apt-get $APT_OPTS -qq update >&2 ||
            die "apt-get update with the private trixie sources ($MIRROR) failed"
    fi
}
