# Sourced by scripts/install-*.sh: download a Debian package with apt-get and unpack it
# under a directory WITHOUT installing it: no maintainer scripts, no service, no /etc
# changes. The caller defines `die` (its own message prefix) before sourcing this.

# unpack_deb PACKAGE DEST: downloads PACKAGE's .deb (running `apt-get update` once, as
# root, if the first download fails) and unpacks it into DEST, replacing DEST.
unpack_deb() {
    local package="$1" dest="$2" tmp deb
    command -v apt-get >/dev/null || die "apt-get not found (this script needs Debian/Ubuntu)"
    command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    # `apt-get download` writes into the current directory; as root it may warn that the
    # _apt sandbox cannot access it, which is harmless: a world-writable directory avoids it.
    chmod 0777 "$tmp"
    if ! (cd "$tmp" && apt-get download -q "$package" >"$tmp/download.log" 2>&1); then
        if [ "$(id -u)" -eq 0 ]; then
            apt-get update -q >"$tmp/update.log" 2>&1 || {
                cat "$tmp/update.log" >&2
                die "apt-get update failed"
            }
            (cd "$tmp" && apt-get download -q "$package" >"$tmp/download.log" 2>&1) || {
                cat "$tmp/download.log" >&2
                die "apt-get download $package failed even after apt-get update"
            }
        else
            cat "$tmp/download.log" >&2
            die "apt-get download $package failed (not root, so apt-get update was not tried)"
        fi
    fi
    deb="$(ls "$tmp"/"${package}"_*.deb 2>/dev/null | head -n1)"
    [ -n "$deb" ] || die "apt-get download produced no ${package}_*.deb"
    rm -rf "$dest"
    mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest" || die "dpkg-deb -x $deb failed"
    UNPACKED_DEB="$(basename "$deb")"
}
