#!/bin/sh
# Lay the series over a copy of the QEMU base tree.
#
#   scripts/overlay.sh BASE SRC OVERLAY
#   scripts/overlay.sh --list OVERLAY
#
# BASE is the pristine QEMU tree (never written), SRC the working copy that
# is built, OVERLAY this repository.  Under OVERLAY's block/ include/ qapi/ docs/
# tests/, a plain file replaces the file at the same path in QEMU, and
# FILE.patch is a unified diff against QEMU's FILE; so is MAINTAINERS.patch at
# the top.  The project's own test and benchmark harness (tests/e2e,
# tests/bench, tests/harness, and the list
# tests/expected-skips) is not part of the series and stays out of the tree.
# The patches are applied in the order OVERLAY/series lists them; a patch that is not listed, a listed
# patch that is missing, or one that does not apply exactly (no fuzz) stops
# the build with its name.
#
# A file in SRC is rewritten only when its content changes, so that ninja
# rebuilds only what an edit touched.  Files the overlay stopped providing
# are restored from BASE.
set -eu

die() { echo "overlay: error: $*" >&2; exit 1; }

DIRS="block include qapi docs tests MAINTAINERS.patch"
PROJECT_ONLY="tests/e2e tests/bench tests/harness tests/expected-skips"

# What the overlay provides, as paths relative to the QEMU tree: in a git
# checkout the files git tracks or would track (so caches and editor files
# listed in .gitignore stay out), elsewhere every file.
list_files() {
    if git -C "$OVERLAY" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        git -C "$OVERLAY" ls-files --cached --others --exclude-standard -- $DIRS |
            while read -r f; do [ -f "$OVERLAY/$f" ] && echo "$f"; done
    else
        # shellcheck disable=SC2086
        (cd "$OVERLAY" && find $DIRS -type f 2>/dev/null)
    fi | grep -v -e '\.orig$' -e '\.rej$' -e '~$' -e '/__pycache__/' | {
        # shellcheck disable=SC2086
        for d in $PROJECT_ONLY; do set -- "$@" -e "^$d/" -e "^$d\$"; done
        if [ $# -gt 0 ]; then grep -v "$@"; else cat; fi
    } | LC_ALL=C sort
}
# scripts/overlay.sh --list OVERLAY: only print what the overlay provides
if [ "${1:-}" = --list ]; then
    [ $# -eq 2 ] || die "usage: $0 --list OVERLAY"
    OVERLAY=$2
    list_files
    exit 0
fi

[ $# -eq 3 ] || die "usage: $0 BASE SRC OVERLAY"
BASE=$1 SRC=$2 OVERLAY=$3

[ -f "$BASE/VERSION" ] || die "$BASE is not a QEMU tree"

# A fresh working copy when there is none or when the base changed.
stamp=$SRC/.overlay-base
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$BASE" ]; then
    echo "overlay: copying the base tree $BASE to $SRC"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    # Leave out a git checkout's history and any in-tree build folder.
    tar -C "$BASE" --exclude=./.git --exclude=./build -cf - . | tar -C "$SRC" -xf -
    : > "$SRC/.overlay-files"
    echo "$BASE" > "$stamp"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

list_files > "$tmp/all"
grep -v '\.patch$' "$tmp/all" > "$tmp/plain" || true
grep '\.patch$' "$tmp/all" > "$tmp/patches" || true
series=$OVERLAY/series
if [ -f "$series" ]; then
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$series" > "$tmp/series"
else
    : > "$tmp/series"
fi
dup=$(LC_ALL=C sort "$tmp/series" | uniq -d)
[ -z "$dup" ] || die "series lists $dup twice"
LC_ALL=C sort -u "$tmp/series" > "$tmp/series.sorted"
unlisted=$(LC_ALL=C comm -23 "$tmp/patches" "$tmp/series.sorted")
[ -z "$unlisted" ] || die "patch not listed in series: $unlisted"
while read -r p; do
    [ -f "$OVERLAY/$p" ] || die "series lists $p, which does not exist"
done < "$tmp/series"

# Build every target's new content in $tmp/out, starting from BASE's copy.
mkdir -p "$tmp/out"
while read -r p; do
    target=${p%.patch}
    if [ ! -f "$tmp/out/$target" ]; then
        grep -qxF "$target" "$tmp/plain" &&
            die "$p patches $target, which the overlay also provides whole"
        [ -f "$BASE/$target" ] || die "$p: $target does not exist in the base tree"
        mkdir -p "$(dirname "$tmp/out/$target")"
        cp "$BASE/$target" "$tmp/out/$target"
    fi
    if ! patch --quiet --force --fuzz=0 --no-backup-if-mismatch -r - \
            -i "$OVERLAY/$p" "$tmp/out/$target" > "$tmp/patch.log" 2>&1; then
        cat "$tmp/patch.log" >&2
        die "$p no longer applies to $target of the base tree"
    fi
    echo "$target" >> "$tmp/patched"
done < "$tmp/series"
touch "$tmp/patched"
while read -r f; do
    mkdir -p "$(dirname "$tmp/out/$f")"
    cp "$OVERLAY/$f" "$tmp/out/$f"
done < "$tmp/plain"

# Install what changed.
LC_ALL=C sort -u "$tmp/plain" "$tmp/patched" > "$tmp/files"
changed=0
while read -r f; do
    if ! cmp -s "$tmp/out/$f" "$SRC/$f"; then
        mkdir -p "$(dirname "$SRC/$f")"
        cp "$tmp/out/$f" "$SRC/$f.overlay-new"
        # Keep the execute bit of scripts such as iotests.
        if [ -x "$OVERLAY/$f" ] || { [ -f "$BASE/$f" ] && [ -x "$BASE/$f" ]; }; then
            chmod +x "$SRC/$f.overlay-new"
        fi
        mv "$SRC/$f.overlay-new" "$SRC/$f"
        changed=$((changed + 1))
    fi
done < "$tmp/files"

# Restore what the overlay no longer provides.
LC_ALL=C sort -u "$SRC/.overlay-files" > "$tmp/old"
LC_ALL=C comm -23 "$tmp/old" "$tmp/files" > "$tmp/gone"
while read -r f; do
    if [ -f "$BASE/$f" ]; then
        cp -p "$BASE/$f" "$SRC/$f"
        echo "overlay: restored $f from the base tree"
    else
        rm -f "$SRC/$f"
    fi
done < "$tmp/gone"
[ ! -s "$tmp/gone" ] || echo "overlay: $(wc -l < "$tmp/gone") files the series no longer provides are gone"
cp "$tmp/files" "$SRC/.overlay-files"
echo "overlay: $(wc -l < "$tmp/files") files from the series, $changed updated"
