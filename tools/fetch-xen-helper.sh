#!/bin/sh
# Unpack Debian's libxl-save-helper and the Xen libraries it links against
# into DEST, for the tests that run the real helper on a host without Xen.
# The helper comes in xen-utils-4.17, which fetch-xen-stream-tools.sh
# unpacks; the libraries are fetched the same way: `apt-get download` into a
# temporary folder, `dpkg -x`, nothing installed system-wide.  Does nothing
# that is already done.  Prints the helper's path, then the folder to put in
# LD_LIBRARY_PATH; fails, naming them, if `ldd` still finds libraries missing.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
helper=$dest/usr/lib/xen-4.17/bin/libxl-save-helper
# What `ldd` of the helper names, and what those libraries name in turn;
# libc, liblzma, libz and libzstd come with every Debian system.
packages="libxenmisc4.17 libxentoollog1 libxentoolcore1 libxencall1 libxenevtchn1
          libxengnttab1 libxenforeignmemory1 libxendevicemodel1"

"$(dirname "$0")/fetch-xen-stream-tools.sh" "$dest" >&2

find_libdir() {
    lib=$(find "$dest/usr/lib" -name libxenguest.so.4.17 -print 2>/dev/null | head -n 1)
    [ -n "$lib" ] && dirname "$lib"
}

if ! libdir=$(find_libdir); then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # apt drops root to _apt while downloading; let it write here.
    chmod 0777 "$tmp"
    # shellcheck disable=SC2086 # one word per package
    (cd "$tmp" && apt-get download -q $packages) >&2
    for deb in "$tmp"/*.deb; do
        dpkg -x "$deb" "$dest"
    done
    libdir=$(find_libdir)
fi

missing=$(LD_LIBRARY_PATH=$libdir ldd "$helper" | grep "not found" || true)
if [ -n "$missing" ]; then
    echo "$0: $helper still lacks libraries:" >&2
    echo "$missing" >&2
    exit 1
fi
echo "$helper"
echo "$libdir"
