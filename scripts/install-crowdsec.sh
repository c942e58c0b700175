#!/usr/bin/env bash
# Make Debian's `crowdsec` and `cscli` binaries available for the integration tests
# WITHOUT installing the package system-wide: no maintainer scripts, no /etc changes.
# The .deb is unpacked into <repo>/target/crowdsec/ (usr/bin/crowdsec, usr/bin/cscli).
# Idempotent: does nothing if those binaries already exist and run.
# See docs/lapi.md §1.1 for why a plain `apt-get install crowdsec` fails offline.
set -euo pipefail

die() {
    echo "install-crowdsec: ERROR: $*" >&2
    exit 1
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/target/crowdsec"
bin="$dest/usr/bin"

as_root() {
    [ "$(id -u)" -eq 0 ]
}

# Runtime library: the binaries link libsqlite3.so.0 dynamically.
if ! ldconfig -p 2>/dev/null | grep -q 'libsqlite3\.so\.0'; then
    if as_root; then
        echo "install-crowdsec: installing libsqlite3-0 (runtime dependency)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q libsqlite3-0 >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libsqlite3-0 >/dev/null; } ||
            die "could not install libsqlite3-0 with apt-get"
    else
        die "libsqlite3.so.0 is missing and this script is not root: run 'apt-get install libsqlite3-0'"
    fi
fi

works() {
    [ -x "$bin/crowdsec" ] && [ -x "$bin/cscli" ] &&
        "$bin/crowdsec" -version >/dev/null 2>&1 &&
        "$bin/cscli" version >/dev/null 2>&1
}

if works; then
    echo "install-crowdsec: already present: $bin/{crowdsec,cscli} ($("$bin/crowdsec" -version 2>&1 | sed -n "s/.*version: //p" | head -n1))"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found (this script needs Debian/Ubuntu)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# `apt-get download` runs as the invoking user and writes into the current directory;
# as root it may warn that the _apt sandbox cannot access it, which is harmless, so
# make the temp dir world-readable/writable to avoid that.
chmod 0777 "$tmp"
download() {
    (cd "$tmp" && apt-get download -q crowdsec >"$tmp/download.log" 2>&1)
}

if ! download; then
    if as_root; then
        apt-get update -q >"$tmp/update.log" 2>&1 || {
            cat "$tmp/update.log" >&2
            die "apt-get update failed"
        }
        download || {
            cat "$tmp/download.log" >&2
            die "apt-get download crowdsec failed even after apt-get update"
        }
    else
        cat "$tmp/download.log" >&2
        die "apt-get download crowdsec failed (not root, so apt-get update was not tried)"
    fi
fi

deb="$(ls "$tmp"/crowdsec_*.deb 2>/dev/null | head -n1)"
[ -n "$deb" ] || die "apt-get download produced no crowdsec_*.deb"

rm -rf "$dest"
mkdir -p "$dest"
dpkg-deb -x "$deb" "$dest" || die "dpkg-deb -x $deb failed"

works || die "unpacked $(basename "$deb") but $bin/crowdsec -version or cscli version does not run"
echo "install-crowdsec: unpacked $(basename "$deb") into $dest (no system install, no maintainer scripts)"
