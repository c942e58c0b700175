#!/usr/bin/env bash
# Make Debian's `prometheus` and `promtool` binaries available for the tests (the alert
# rules' unit tests, and a real Prometheus scraping a running bouncer) WITHOUT installing
# the package system-wide: no maintainer scripts, no service started, no /etc changes.
# The .deb is unpacked into <repo>/target/prometheus/ (usr/bin/prometheus, usr/bin/promtool),
# as scripts/install-crowdsec.sh does for crowdsec.
# Idempotent: does nothing if those binaries already exist and run.
set -euo pipefail

die() {
    echo "install-prometheus: ERROR: $*" >&2
    exit 1
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/target/prometheus"
bin="$dest/usr/bin"

works() {
    [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ] &&
        "$bin/prometheus" --version >/dev/null 2>&1 &&
        "$bin/promtool" --version >/dev/null 2>&1
}

version() {
    "$bin/prometheus" --version 2>&1 | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p' | head -n1
}

if works; then
    echo "install-prometheus: already present: $bin/{prometheus,promtool} ($(version))"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found (this script needs Debian/Ubuntu)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# As root, `apt-get download` may warn that the _apt sandbox cannot write to the
# directory, which is harmless; a world-writable temp dir avoids the warning.
chmod 0777 "$tmp"
download() {
    (cd "$tmp" && apt-get download -q prometheus >"$tmp/download.log" 2>&1)
}

if ! download; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -q >"$tmp/update.log" 2>&1 || {
            cat "$tmp/update.log" >&2
            die "apt-get update failed"
        }
        download || {
            cat "$tmp/download.log" >&2
            die "apt-get download prometheus failed even after apt-get update"
        }
    else
        cat "$tmp/download.log" >&2
        die "apt-get download prometheus failed (not root, so apt-get update was not tried)"
    fi
fi

deb="$(ls "$tmp"/prometheus_*.deb 2>/dev/null | head -n1)"
[ -n "$deb" ] || die "apt-get download produced no prometheus_*.deb"

rm -rf "$dest"
mkdir -p "$dest"
dpkg-deb -x "$deb" "$dest" || die "dpkg-deb -x $deb failed"

works || die "unpacked $(basename "$deb") but $bin/prometheus --version or promtool --version does not run"
echo "install-prometheus: unpacked $(basename "$deb") into $dest (no system install, no service)"
