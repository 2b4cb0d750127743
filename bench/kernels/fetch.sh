#!/usr/bin/env bash
# bench/kernels/fetch.sh: fetch Debian kernel images (vmlinuz) for bench/kernels.sh.
#
# Shaped around a PRIVATE apt state (its own sources list, lists, cache; dpkg status /dev/null),
# so the host's sources and package database are never read or written, and around Debian's
# metapackages: a spec names a suite, and the kernel is whatever that suite's
# linux-image-<flavour> metapackage depends on today. No ABI name is written down anywhere, so the
# matrix follows the archive as it moves.
#
# Usage: fetch.sh CACHE_DIR SPEC...
#   SPEC = SUITE          the kernel the suite's linux-image-<flavour> metapackage points to
#        | SUITE:SERIES   the newest linux-image-SERIES.*-<flavour> package in SUITE (for a series
#                         the metapackage has moved past, e.g. trixie-backports:6.18)
#   SUITE may be any Debian suite; *-security suites come from the security archive.
# Env: KERNEL_FLAVOUR (default cloud-amd64: boots with no modules), DEBIAN_MIRROR,
#      DEBIAN_SECURITY_MIRROR, APT_MAX_AGE_MIN (re-run apt-get update when lists are older).
# Prints one line per spec on stdout: SPEC<TAB>RELEASE<TAB>PATH-TO-VMLINUZ<TAB>PACKAGE=VERSION.
# A spec that cannot be resolved or fetched prints SPEC<TAB>-<TAB>-<TAB>reason and the script
# goes on with the others (exit 1 at the end if any failed).
set -uo pipefail

cache=${1:?usage: fetch.sh CACHE_DIR SPEC...}
shift
flavour=${KERNEL_FLAVOUR:-cloud-amd64}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
sec_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
max_age=${APT_MAX_AGE_MIN:-720}

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/empty" \
    "$cache/debs" "$cache/kernels"

# The private sources list: one line per distinct suite among the specs, plus the suites it
# already had (so asking for a subset does not throw the other suites' lists away).
suites=$({
    for s in "$@"; do echo "${s%%:*}"; done
    [ -f "$apt_dir/sources.list" ] && awk '{print $4}' "$apt_dir/sources.list"
} | sort -u)
{
    for suite in $suites; do
        case $suite in
            *-security) echo "deb [signed-by=$keyring] $sec_mirror $suite main" ;;
            *) echo "deb [signed-by=$keyring] $mirror $suite main" ;;
        esac
    done
} > "$apt_dir/sources.list.new"

apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/empty"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=$apt_dir/empty"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures=amd64"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
    -o "APT::Sandbox::User=root"
)

# apt-get update when the suites changed or the lists are stale.
if ! cmp -s "$apt_dir/sources.list.new" "$apt_dir/sources.list" ||
    [ -z "$(find "$apt_dir/lists" -maxdepth 1 -name '*_Packages*' -mmin "-$max_age" -print -quit)" ]; then
    mv "$apt_dir/sources.list.new" "$apt_dir/sources.list"
    echo "fetch: apt-get update (private state in $apt_dir) for: ${suites//$'\n'/ }" >&2
    if ! apt-get "${apt_opts[@]}" -qq update >&2; then
        echo "fetch: apt-get update failed" >&2
    fi
else
    rm -f "$apt_dir/sources.list.new"
fi

acache() { apt-cache "${apt_opts[@]}" "$@" 2>/dev/null; }

# madison_in SUITE PKG: the version of PKG in SUITE (empty if none).
madison_in() {
    acache madison "$2" | awk -F'|' -v s=" $1/" '
        index($3, s) { gsub(/ /, "", $2); print $2 }' | sort -V | tail -n 1
}

# resolve SPEC -> "PACKAGE VERSION" of the image package.
resolve() {
    local spec=$1 suite series ver dep pkg best=
    suite=${spec%%:*}
    if [ "$spec" = "$suite" ]; then
        ver=$(madison_in "$suite" "linux-image-$flavour")
        [ -n "$ver" ] || { echo "no linux-image-$flavour in $suite"; return 1; }
        dep=$(acache show "linux-image-$flavour=$ver" | sed -n 's/^Depends: //p' | head -n 1 |
            tr ',' '\n' | sed 's/^ *//' | grep -E "^linux-image-[0-9].*-$flavour( |$)" | head -n 1)
        pkg=${dep%% *}
        [ -n "$pkg" ] || { echo "linux-image-$flavour=$ver names no image package"; return 1; }
        ver=$(madison_in "$suite" "$pkg")
        [ -n "$ver" ] || { echo "$pkg (from the metapackage) is not in $suite"; return 1; }
        echo "$pkg $ver"
    else
        series=${spec#*:}
        for pkg in $(acache pkgnames "linux-image-$series" |
            grep -E "^linux-image-${series//./\\.}[.-][^ ]*-$flavour\$" | sort -V -r); do
            ver=$(madison_in "$suite" "$pkg")
            if [ -n "$ver" ]; then best="$pkg $ver"; break; fi
        done
        [ -n "$best" ] || { echo "no linux-image-$series*-$flavour in $suite"; return 1; }
        echo "$best"
    fi
}

# download PKG VERSION into the deb cache (apt-get download writes to the current directory).
download() {
    local f want="$cache/debs/${1}_${2//:/%3a}_amd64.deb"
    if [ ! -f "$want" ]; then
        (cd "$cache/debs" && apt-get "${apt_opts[@]}" -qq download "$1=$2" >&2) || return 1
    fi
    for f in "$want" "$cache/debs/${1}_${2//:/%3a}_all.deb"; do
        [ -f "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

failed=0
for spec in "$@"; do
    if ! r=$(resolve "$spec"); then
        echo "fetch: $spec: $r" >&2
        printf '%s\t-\t-\t%s\n' "$spec" "$r"
        failed=1
        continue
    fi
    read -r pkg ver <<< "$r"
    out=$cache/kernels/$pkg=$ver
    vmlinuz=$(ls "$out"/boot/vmlinuz-* 2>/dev/null | head -n 1)
    if [ -z "$vmlinuz" ]; then
        echo "fetch: $spec -> $pkg $ver: downloading" >&2
        rm -rf "$out.tmp"
        mkdir -p "$out.tmp"
        ok=1
        deb=$(download "$pkg" "$ver") && dpkg-deb -x "$deb" "$out.tmp" || ok=0
        # Split packaging (7.x): the image package is a shell whose linux-binary-* dependency
        # carries the kernel, at usr/lib/modules/RELEASE/vmlinuz.
        if [ $ok = 1 ] && ! ls "$out.tmp"/boot/vmlinuz-* > /dev/null 2>&1; then
            for dep in $(acache show "$pkg=$ver" | sed -n 's/^Depends: //p' | head -n 1 |
                tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -E '^linux-binary-'); do
                dver=$(madison_in "${spec%%:*}" "$dep")
                [ -n "$dver" ] || dver=$ver
                deb=$(download "$dep" "$dver") && dpkg-deb -x "$deb" "$out.tmp" || ok=0
            done
        fi
        for v in "$out.tmp"/usr/lib/modules/*/vmlinuz; do
            [ -f "$v" ] || continue
            r=${v%/vmlinuz}
            mkdir -p "$out.tmp/boot"
            mv "$v" "$out.tmp/boot/vmlinuz-${r##*/}"
        done
        vmlinuz=$(ls "$out.tmp"/boot/vmlinuz-* 2>/dev/null | head -n 1)
        if [ $ok = 0 ] || [ -z "$vmlinuz" ]; then
            echo "fetch: $spec -> $pkg $ver: no vmlinuz after download" >&2
            printf '%s\t-\t-\t%s\n' "$spec" "download of $pkg=$ver failed or held no vmlinuz"
            rm -rf "$out.tmp"
            failed=1
            continue
        fi
        # Keep only the kernel image: modules are not needed by the cloud flavour.
        mkdir -p "$out/boot"
        mv "$vmlinuz" "$out/boot/"
        cp "$out.tmp"/boot/config-* "$out/boot/" 2>/dev/null || true
        rm -rf "$out.tmp"
        rm -f "$cache/debs/"*.deb  # the extracted kernel is the cache; the .debs are not needed
        vmlinuz=$(ls "$out"/boot/vmlinuz-* | head -n 1)
    fi
    release=${vmlinuz##*/vmlinuz-}
    printf '%s\t%s\t%s\t%s\n' "$spec" "$release" "$vmlinuz" "$pkg=$ver"
done
exit $failed
