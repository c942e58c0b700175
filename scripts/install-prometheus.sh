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

# shellcheck source=lib/unpack-deb.sh
. "$repo/scripts/lib/unpack-deb.sh"
unpack_deb prometheus "$dest"

works || die "unpacked $UNPACKED_DEB but $bin/prometheus --version or promtool --version does not run"
echo "install-prometheus: unpacked $UNPACKED_DEB into $dest (no system install, no service)"
