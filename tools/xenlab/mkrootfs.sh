#!/bin/bash
# The Xen lab's dom0 root filesystem, from Debian's packages only: called by
# build.sh as `mkrootfs.sh ROOTFS REQUIREMENTS_FILE` (ROOTFS must not exist).
#
# debootstrap from the Debian mirror this host's apt already uses (read from
# `apt-get indextargets`, never written here), then in the chroot: Xen 4.17,
# its tools, qemu-system-xen, Debian's kernel and initramfs, python3 with a
# virtualenv at /opt/colod-venv holding exactly setup.cfg's install_requires
# (REQUIREMENTS_FILE, one requirement a line), busybox, iproute2, udev.
#
# The chroot's mounts (proc, sys, dev) live in a private mount namespace
# (unshare), so they vanish with it, even when this script is killed: nothing
# is left mounted under ROOTFS for a later `rm -rf` to walk into.
set -euo pipefail

SUITE=bookworm
# What dom0 needs beyond debootstrap's minbase.
PACKAGES="linux-image-amd64 initramfs-tools xen-hypervisor-4.17-amd64 xen-utils-4.17
          xen-utils-common qemu-system-xen python3 python3-venv busybox iproute2 udev
          procps kmod ca-certificates"

die() { echo "xenlab mkrootfs: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 ROOTFS REQUIREMENTS_FILE"
rootfs=$1
requirements=$2
[ ! -e "$rootfs" ] || die "$rootfs exists"
[ -s "$requirements" ] || die "$requirements is empty"

# The host's own Debian mirror and security mirror, as apt sees them.
targets=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' | sort -u)
if [ -z "$targets" ]; then
    apt-get update -q >&2
    targets=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' | sort -u)
fi
mirror=$(awk -v s="$SUITE" '$2 == s {print $1; exit}' <<<"$targets")
security=$(awk -v s="$SUITE-security" '$2 == s {print $1; exit}' <<<"$targets")
[ -n "$mirror" ] || die "this host's apt has no $SUITE source (apt-get indextargets lists none)"
[ -n "$security" ] || die "this host's apt has no $SUITE-security source (apt-get indextargets lists none)"

echo "xenlab mkrootfs: debootstrap $SUITE" >&2
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$mirror" >&2

cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
rm -f "$rootfs/etc/apt/sources.list"
# The host's settings for reaching that mirror (a snapshot mirror needs the
# Valid-Until check off; a proxy must be used in the chroot too).
apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' \
    > "$rootfs/etc/apt/apt.conf.d/90xenlab-host" || true
# No service starts in the chroot.
printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
install -m 644 "$requirements" "$rootfs/tmp/requirements.txt"
# pip trusts what this host trusts (a TLS-inspecting proxy's CA included), for the build only.
install -m 644 /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/host-ca.crt"

echo "xenlab mkrootfs: packages and /opt/colod-venv in the chroot" >&2
# shellcheck disable=SC2016 # expanded in the chroot
unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
    r=$1; packages=$2
    mount -t proc proc "$r/proc"
    mount -t sysfs sysfs "$r/sys"
    mount --rbind /dev "$r/dev"
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive chroot "$r" /bin/bash -euo pipefail -c "
        apt-get update -q
        apt-get install -y -q --no-install-recommends $packages
        python3 -m venv /opt/colod-venv
        /opt/colod-venv/bin/pip install -q --no-cache-dir --disable-pip-version-check \
            --cert /tmp/host-ca.crt -r /tmp/requirements.txt
        /opt/colod-venv/bin/pip freeze --disable-pip-version-check > /opt/colod-venv/installed.txt
        # The plugin cache of Twisted (dropin.cache): twistd in dom0 then imports no plugin it does not run.
        /opt/colod-venv/bin/python -c \"from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))\"
        test -f /opt/colod-venv/lib/python3*/site-packages/twisted/plugins/dropin.cache
        apt-get clean
        rm -rf /var/lib/apt/lists/* /tmp/requirements.txt /tmp/host-ca.crt
    "
' mkrootfs "$rootfs" "$(echo $PACKAGES)" >&2

rm -f "$rootfs/etc/resolv.conf" "$rootfs/usr/sbin/policy-rc.d"
echo xenlab-dom0 > "$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\txenlab-dom0\n' > "$rootfs/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$rootfs/etc/fstab"
mkdir -p "$rootfs/opt/colod-src" "$rootfs/opt/xenlab-spool"

# What the lab needs from the result; fail here rather than at boot.
for f in boot/xen-4.17-amd64.gz usr/lib/xen-4.17/bin/xl usr/lib/xen-4.17/bin/libxl-save-helper \
         opt/colod-venv/bin/twistd etc/init.d/xen; do
    [ -e "$rootfs/$f" ] || die "the chroot lacks /$f"
done
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-netback 9p 9pnet_virtio; do
    [ -n "$(find "$rootfs/lib/modules" -name "$m.ko*" -print -quit)" ] \
        || grep -qs "/$m\.ko\$" "$rootfs"/lib/modules/*/modules.builtin \
        || die "Debian's kernel has no $m module"
done
[ "$(find "$rootfs/boot" -name 'vmlinuz-*' | wc -l)" -eq 1 ] || die "expected one kernel in /boot"
[ "$(find "$rootfs/boot" -name 'initrd.img-*' | wc -l)" -eq 1 ] || die "expected one initramfs in /boot"
echo "xenlab mkrootfs: done" >&2
