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

# shellcheck source=lib/unpack-deb.sh
. "$repo/scripts/lib/unpack-deb.sh"
unpack_deb crowdsec "$dest"

works || die "unpacked $UNPACKED_DEB but $bin/crowdsec -version or cscli version does not run"
echo "install-crowdsec: unpacked $UNPACKED_DEB into $dest (no system install, no maintainer scripts)"
