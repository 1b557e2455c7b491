#!/bin/bash
# Builds the Xen lab that colod/testing/xenlab.py boots: Xen 4.17 with a Debian 12
# dom0, everything from Debian's packages, cached outside the clone.
#
# usage: tools/xenlab/build.sh            build what is not current, then print "cached" or "built"
#        tools/xenlab/build.sh --status   print "current" or "stale" (exit 0 or 1); builds nothing
#        tools/xenlab/build.sh --force    rebuild the image even if current (the rootfs only if stale)
#
# The cache, $XENLAB_CACHE (default /var/cache/colod-xenlab), holds:
#   rootfs/, rootfs.key   the chroot made by mkrootfs.sh (debootstrap, apt-get, the
#                         venv): the slow part, keyed by mkrootfs.sh and setup.cfg's
#                         install_requires
#   image/                what QEMU boots: xen (the hypervisor, decompressed: QEMU's
#                         -kernel takes its multiboot header), vmlinuz and initrd.img
#                         (dom0's), dom0.img (ext4 of the rootfs plus this folder's
#                         init, runner and guest), manifest.txt (versions), key
# The image's key hashes the rootfs key, every file in this folder but *.md
# (names, modes, contents) and the host's busybox-static version (the guest's
# busybox), so any change here rebuilds it; an unchanged key makes this a
# no-op that takes a second.  Builds take a lock on the cache; a build
# assembles everything in *.new and moves it into place at the end, so an
# interrupted build leaves the previous image usable.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$here/../.." && pwd)
cache=${XENLAB_CACHE:-/var/cache/colod-xenlab}
HOST_PACKAGES="debootstrap cpio busybox-static e2fsprogs qemu-system-x86"
# Free space a build needs in the cache's filesystem (rootfs, image, staging).
BUILD_SPACE_GIB=6
IMAGE_SIZE=4G

die() { echo "xenlab build: $*" >&2; exit 1; }
say() { echo "xenlab build: $*" >&2; }

# setup.cfg's install_requires, one requirement a line.
requirements() {
    python3 - "$tree/setup.cfg" <<'EOF'
import configparser
import sys

cfg = configparser.ConfigParser(interpolation=None)
cfg.read(sys.argv[1])
for line in cfg["options"]["install_requires"].splitlines():
    if line.strip():
        print(line.strip())
EOF
}

rootfs_key() {
    { sha256sum < "$here/mkrootfs.sh"; requirements; } | sha256sum | cut -d' ' -f1
}

image_key() {
    {
        echo "rootfs $(rootfs_key)"
        for f in "$here"/*; do
            case $f in *.md) continue ;; esac
            [ -f "$f" ] || continue
            echo "file $(basename "$f") $(stat -c %a "$f") $(sha256sum < "$f")"
        done
        echo "busybox-static $(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null || echo none)"
    } | sha256sum | cut -d' ' -f1
}

image_current() {
    local f
    for f in key xen vmlinuz initrd.img dom0.img; do
        [ -s "$cache/image/$f" ] || return 1
    done
    [ "$(cat "$cache/image/key")" = "$(image_key)" ]
}

# rm -rf, refusing a folder with anything mounted in it.
safe_rm() {
    local d p
    for d in "$@"; do
        [ -e "$d" ] || continue
        p=$(realpath "$d")
        if awk -v p="$p" '$2 == p || index($2, p "/") == 1 {found = 1} END {exit !found}' /proc/self/mounts
        then
            die "something is mounted under $p; not removing it"
        fi
        rm -rf "$p"
    done
}

mode=build
case ${1:-} in
    "") ;;
    --status) mode=status ;;
    --force) mode=force ;;
    *) die "usage: $0 [--status|--force]" ;;
esac

if [ $mode = status ]; then
    if image_current; then echo current; exit 0; else echo stale; exit 1; fi
fi

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, apt-get); run it as root"
mkdir -p "$cache" || die "cannot create the cache folder $cache (set XENLAB_CACHE)"
exec 9> "$cache/lock"
flock -w 3600 9 || die "another build has held $cache/lock for an hour"

if [ $mode = build ] && image_current; then
    echo cached
    exit 0
fi

free_gib=$(( $(df -B1 --output=avail "$cache" | tail -n1) >> 30 ))
[ "$free_gib" -ge $BUILD_SPACE_GIB ] \
    || die "only $free_gib GiB free in $cache's filesystem; a build needs $BUILD_SPACE_GIB GiB (set XENLAB_CACHE elsewhere)"

# shellcheck disable=SC2086 # one word per package
if ! dpkg-query -W $HOST_PACKAGES >/dev/null 2>&1; then
    say "installing $HOST_PACKAGES with apt-get"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $HOST_PACKAGES >&2 \
        || die "apt-get could not install $HOST_PACKAGES"
fi
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "/bin/busybox is not busybox-static's static binary"

# Stage 1: the rootfs (minutes), only when mkrootfs.sh or the requirements changed.
rkey=$(rootfs_key)
if [ "$(cat "$cache/rootfs.key" 2>/dev/null)" != "$rkey" ] || [ ! -d "$cache/rootfs" ]; then
    say "building the dom0 rootfs (debootstrap, apt-get, pip: a few minutes)"
    started=$SECONDS
    safe_rm "$cache/rootfs.new" "$cache/requirements.txt"
    requirements > "$cache/requirements.txt"
    "$here/mkrootfs.sh" "$cache/rootfs.new" "$cache/requirements.txt"
    rm -f "$cache/rootfs.key"
    safe_rm "$cache/rootfs"
    mv "$cache/rootfs.new" "$cache/rootfs"
    echo "$rkey" > "$cache/rootfs.key"
    say "rootfs built in $((SECONDS - started)) s"
fi

# Stage 2: the image (seconds): the rootfs plus this folder's files, as ext4.
say "assembling the dom0 image"
ikey=$(image_key)
new=$cache/image.new
stage=$cache/stage
safe_rm "$new" "$stage"
mkdir -p "$new"
# Hard links: only new paths are added below, so the rootfs stays untouched.
cp -al "$cache/rootfs" "$stage"
install -D -m 755 "$here/dom0-init" "$stage/sbin/xenlab-init"
install -D -m 755 "$here/dom0-runner.py" "$stage/usr/local/sbin/xenlab-runner"
install -D -m 644 "$here/guest.cfg" "$stage/etc/xenlab/guest.cfg"

guest=$cache/guest-initramfs
safe_rm "$guest"
mkdir -p "$guest/bin" "$guest/dev" "$guest/proc" "$guest/sys"
cp /bin/busybox "$guest/bin/busybox"
install -m 755 "$here/guest-init" "$guest/init"
mkdir -p "$stage/var/lib/xenlab/guest"
(cd "$guest" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$stage/var/lib/xenlab/guest/initrd.gz"
safe_rm "$guest"
cp "$stage"/boot/vmlinuz-* "$stage/var/lib/xenlab/guest/vmlinuz"

zcat "$stage/boot/xen-4.17-amd64.gz" > "$new/xen"
cp "$stage"/boot/vmlinuz-* "$new/vmlinuz"
cp "$stage"/boot/initrd.img-* "$new/initrd.img"
truncate -s $IMAGE_SIZE "$new/dom0.img"
mkfs.ext4 -q -F -L xenlab-dom0 -d "$stage" "$new/dom0.img"
{
    echo "kernel $(basename "$stage"/boot/vmlinuz-* | sed 's/^vmlinuz-//')"
    dpkg-query --admindir="$stage/var/lib/dpkg" -W xen-hypervisor-4.17-amd64 xen-utils-4.17 \
        qemu-system-xen linux-image-amd64 python3
    echo "busybox-static $(dpkg-query -W -f '${Version}' busybox-static)"
    sed 's/^/venv /' "$stage/opt/colod-venv/installed.txt"
} > "$new/manifest.txt"
safe_rm "$stage"
echo "$ikey" > "$new/key"

safe_rm "$cache/image.old"
if [ -d "$cache/image" ]; then mv "$cache/image" "$cache/image.old"; fi
mv "$new" "$cache/image"
safe_rm "$cache/image.old"
say "image ready in $cache/image"
echo built
