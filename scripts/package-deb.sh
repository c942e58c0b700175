#!/usr/bin/env bash
# Builds the Debian package with `cargo deb` from a clone:
#
#   scripts/package-deb.sh        # -> target/debian/crowdsec-cloudflare-iplist-bouncer_<version>_<arch>.deb
#
# Installs cargo-deb (pinned, `cargo install --locked`) when it is missing, builds the
# release binary (reusing target/), writes the units with the package's /usr/bin path to
# target/deb-units/, then packages without building again. Prints the .deb's path last.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

NAME=crowdsec-cloudflare-iplist-bouncer
CARGO_DEB_VERSION=3.8.0

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package-deb: installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION" >&2
fi

cargo build --release --locked --bin "$NAME" >&2

units=target/deb-units
rm -rf "$units"
mkdir -p "$units/systemd-247" "$units/systemd-245"
to_usr_bin() { sed "s#/usr/local/bin/$NAME#/usr/bin/$NAME#g" "$1" >"$2"; }
to_usr_bin "systemd/$NAME.service" "$units/$NAME.service"
for v in 247 245; do
    to_usr_bin "systemd/fallback/systemd-$v/$NAME.service" "$units/systemd-$v/$NAME.service"
done

cargo deb --no-build --locked --quiet >&2
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
deb="target/debian/${NAME}_${version}-1_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || { echo "package-deb: cargo deb made no $deb" >&2; ls target/debian >&2; exit 1; }
echo "$repo/$deb"
