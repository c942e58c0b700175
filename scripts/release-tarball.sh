#!/usr/bin/env bash
# Builds the release tarball, for hosts without dpkg:
#
#   scripts/release-tarball.sh [BINARY]   # -> target/dist/crowdsec-cloudflare-iplist-bouncer-<version>-<arch>.tar.gz
#
# BINARY defaults to a fresh `cargo build --release --locked`. The tarball holds one
# directory with the binary, scripts/install.sh and scripts/uninstall.sh (install.sh picks
# the binary next to scripts/ and the unit for the host's systemd), systemd/ with its
# fallback units, config.toml.example, LICENSE, README.md and CHANGELOG.md. Unpack it and
# run `sudo ./scripts/install.sh` inside. Prints the tarball's path last.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

NAME=crowdsec-cloudflare-iplist-bouncer
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"

if [ -n "${1:-}" ]; then
    bin="$1"
else
    cargo build --release --locked --bin "$NAME" >&2
    bin="target/release/$NAME"
fi
[ -x "$bin" ] || { echo "release-tarball: $bin is not an executable" >&2; exit 1; }
arch="$(uname -m)"

top="$NAME-$version"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$top/scripts"
install -m 0755 "$bin" "$stage/$top/$NAME"
install -m 0755 scripts/install.sh scripts/uninstall.sh "$stage/$top/scripts/"
cp -R systemd "$stage/$top/"
install -m 0644 config.toml.example LICENSE README.md CHANGELOG.md "$stage/$top/"

mkdir -p target/dist
out="$repo/target/dist/$top-$arch.tar.gz"
# Reproducible: fixed owner, order and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$stage" -czf "$out" "$top"
echo "$out"
