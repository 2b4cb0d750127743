#!/usr/bin/env bash
# bench/kernels/mkinitramfs.sh: build the guest initramfs for bench/kernels.sh.
#
# Everything in it is static (busybox-static from apt, ringcast and ringcast-loadgen built with
# +crt-static), so one image boots on every kernel, with no modules and no libc to match: the
# cloud-amd64 kernels have serial, devtmpfs, loopback and io_uring built in. Binaries are
# stripped and the archive gzipped (every Debian kernel can unpack gzip) to keep the boot cheap
# under TCG, where unpacking a large initramfs costs seconds.
#
# Usage: mkinitramfs.sh OUT.cpio.gz RINGCAST RINGCAST_LOADGEN
set -euo pipefail

out=${1:?usage: mkinitramfs.sh OUT.cpio.gz RINGCAST RINGCAST_LOADGEN}
server=${2:?}
loadgen=${3:?}
here=$(cd "$(dirname "$0")" && pwd)

# Static: ldd says "not a dynamic executable" (exit 1) or, for static-pie, "statically linked".
is_static() { ! ldd "$1" > /dev/null 2>&1 || ldd "$1" 2>&1 | grep -q 'statically linked'; }
busybox=
for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ] && is_static "$b"; then busybox=$b; break; fi
done
if [ -z "$busybox" ]; then
    echo "mkinitramfs: no static busybox (apt-get install busybox-static)" >&2
    exit 1
fi
for b in "$server" "$loadgen"; do
    if ! is_static "$b"; then
        echo "mkinitramfs: $b is dynamically linked; the guest has no libc (build with +crt-static)" >&2
        exit 1
    fi
done
command -v cpio > /dev/null || { echo "mkinitramfs: no cpio (apt-get install cpio)" >&2; exit 1; }

stage=$(mktemp -d /tmp/ringcast-initramfs.XXXXXX)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,etc}
cp "$busybox" "$stage/bin/busybox"
cp "$server" "$stage/bin/ringcast"
cp "$loadgen" "$stage/bin/ringcast-loadgen"
strip "$stage/bin/ringcast" "$stage/bin/ringcast-loadgen" 2> /dev/null || true
cp "$here/init.sh" "$stage/init"
chmod 755 "$stage/init" "$stage"/bin/*
ln -s busybox "$stage/bin/sh"
# The kernel opens /dev/console before /init runs (and before devtmpfs is mounted).
mknod -m 600 "$stage/dev/console" c 5 1 2> /dev/null || true
mknod -m 666 "$stage/dev/null" c 1 3 2> /dev/null || true
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -6 > "$out.tmp"
mv "$out.tmp" "$out"
echo "mkinitramfs: $out ($(du -h "$out" | cut -f1))" >&2
