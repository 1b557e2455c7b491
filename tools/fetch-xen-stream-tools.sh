#!/bin/sh
# Unpack Debian's xen-utils-4.17 into DEST, for the cross-check of colod's
# stream codec against Xen's own verify-stream-v2.  Nothing is installed
# system-wide: the .deb is fetched with `apt-get download` into a temporary
# folder and unpacked with `dpkg -x`.  Does nothing if DEST already has the
# tool.  Prints the tool's path; its modules are in
# DEST/usr/lib/xen-4.17/lib/python (set PYTHONPATH to that).
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
tool=usr/lib/xen-4.17/bin/verify-stream-v2

if [ ! -f "$dest/$tool" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # apt drops root to _apt while downloading; let it write here.
    chmod 0777 "$tmp"
    (cd "$tmp" && apt-get download -q xen-utils-4.17)
    mkdir -p "$dest"
    dpkg -x "$tmp"/xen-utils-4.17_*.deb "$dest"
fi
test -f "$dest/$tool"
echo "$dest/$tool"
