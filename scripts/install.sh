#!/usr/bin/env bash
# Install crowdsec-cloudflare-iplist-bouncer on a host: the binary, the systemd unit and,
# if there is none yet, the configuration. Registers the bouncer with the local LAPI when
# cscli is available and the configuration has no key yet.
#
#   scripts/install.sh [BINARY]
#
# BINARY defaults to the binary next to this script's directory (as in the release tarball),
# else target/release/crowdsec-cloudflare-iplist-bouncer (build it with
# `cargo build --release --locked`). Run as root. Re-running it upgrades the binary and the
# unit and never touches an existing configuration, except to fill in a missing LAPI key.
#
# Environment:
#   ROOT=/tmp/x   install under this prefix (a staging tree, like DESTDIR); then systemctl
#                 is never called and cscli is used only if CSCLI is set
#   CSCLI=PATH    the cscli to register with (default: `cscli` on PATH); empty: don't register
#   CONFIG_EXAMPLE=FILE  the template for a new configuration (default: config.toml.example)
#   SYSTEMD_VERSION=N  pick the unit for this systemd version (default: `systemctl --version`;
#                 under ROOT without it, the unit for the newest): 250 and later get
#                 systemd/NAME.service, 247-249 and 245-246 the ones in systemd/fallback/
#
# Files: /usr/local/bin/crowdsec-cloudflare-iplist-bouncer,
# /etc/systemd/system/crowdsec-cloudflare-iplist-bouncer.service,
# /etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml (0600, root) and, after a
# registration, the bouncer's name in ….toml.id (scripts/uninstall.sh deletes it from LAPI).
set -euo pipefail

NAME=crowdsec-cloudflare-iplist-bouncer
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${ROOT:-}"
ROOT="${ROOT%/}"

if [ -n "${1:-}" ]; then
    bin_src="$1"
elif [ -f "$repo/$NAME" ]; then
    bin_src="$repo/$NAME"
else
    bin_src="$repo/target/release/$NAME"
fi
example="${CONFIG_EXAMPLE:-$repo/config.toml.example}"

bin_dst="$ROOT/usr/local/bin/$NAME"
unit_dst="$ROOT/etc/systemd/system/$NAME.service"
cfg="$ROOT/etc/crowdsec/bouncers/$NAME.toml"

# A placeholder or empty `api_key = "..."` line: the configuration has no LAPI key yet.
NO_KEY_RE='^[[:space:]]*api_key[[:space:]]*=[[:space:]]*"(<[^"]*>)?"[[:space:]]*(#.*)?$'

say() { echo "install: $*"; }
die() {
    echo "install: ERROR: $*" >&2
    exit 1
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# The systemd version the unit is for: SYSTEMD_VERSION, else systemctl's, else (staging, or
# no systemd here) the newest.
systemd_version() {
    local v="${SYSTEMD_VERSION:-}"
    if [ -z "$v" ] && [ -z "$ROOT" ] && command -v systemctl >/dev/null; then
        v="$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')"
    fi
    v="${v%%[!0-9]*}"
    printf '%s' "${v:-999}"
}

# The unit file for systemd version $1 (see systemd/fallback/).
unit_for() {
    if [ "$1" -ge 250 ]; then
        printf '%s' "$repo/systemd/$NAME.service"
    elif [ "$1" -ge 247 ]; then
        printf '%s' "$repo/systemd/fallback/systemd-247/$NAME.service"
    elif [ "$1" -ge 245 ]; then
        printf '%s' "$repo/systemd/fallback/systemd-245/$NAME.service"
    else
        die "systemd $1 is too old: the unit needs systemd 245 or later"
    fi
}

# The cscli to use, or nothing.
find_cscli() {
    if [ -n "${CSCLI+set}" ]; then
        printf '%s' "$CSCLI"
    elif [ -z "$ROOT" ]; then
        command -v cscli || true
    fi
}

# Replaces the first no-key `api_key` line of the configuration with the key, atomically,
# keeping the file private.
write_key() {
    local key="$1" tmp
    tmp="$(mktemp "$cfg.XXXXXX")"
    awk -v key="$key" -v re="$NO_KEY_RE" '
        !done && $0 ~ re { sub(/=.*/, "= \"" key "\""); done = 1 }
        { print }' "$cfg" >"$tmp"
    chmod 0600 "$tmp"
    [ "$(id -u)" -ne 0 ] || chown root:root "$tmp"
    mv -f "$tmp" "$cfg"
}

# The port LAPI listens on, from cscli; nothing if unknown.
lapi_port() {
    local listen
    listen="$("$1" config show -oraw --key Config.API.Server.ListenURI 2>/dev/null || true)"
    listen="${listen##*:}"
    case "$listen" in "" | *[!0-9]*) ;; *) printf '%s' "$listen" ;; esac
}

register() {
    local cscli="$1" name key old port
    if [ -f "$cfg.id" ]; then
        old="$(cat "$cfg.id")"
        say "the configuration has no key but $old was registered before: deleting it"
        "$cscli" bouncers delete "$old" >/dev/null 2>&1 || say "could not delete $old (run: cscli bouncers delete $old)"
    fi
    name="$NAME-$(date +%s)"
    key="$("$cscli" -oraw bouncers add "$name")" || die "'$cscli -oraw bouncers add $name' failed; is crowdsec running?"
    key="$(printf '%s' "$key" | tr -d '[:space:]')"
    case "$key" in
    "" | *[!A-Za-z0-9+/=._-]*)
        die "cscli printed an unexpected key for $name; delete it with 'cscli bouncers delete $name'"
        ;;
    esac
    write_key "$key"
    printf '%s\n' "$name" >"$cfg.id"
    chmod 0600 "$cfg.id"
    say "registered bouncer $name with LAPI; its key is in $cfg"
    port="$(lapi_port "$cscli")"
    if [ "$created" = 1 ] && [ -n "$port" ] && [ "$port" != 8080 ]; then
        sed -i -E "s#^([[:space:]]*api_url[[:space:]]*=[[:space:]]*\"https?://127\.0\.0\.1):8080/#\1:$port/#" "$cfg"
        say "LAPI listens on port $port: api_url updated"
    fi
}

version="$(systemd_version)"
unit_src="$(unit_for "$version")"
[ -f "$bin_src" ] || die "no binary at $bin_src: build it with 'cargo build --release --locked' or pass its path"
[ -x "$bin_src" ] || die "$bin_src is not executable"
[ -f "$unit_src" ] || die "no unit file at $unit_src"
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or set ROOT=/some/dir to stage the files)"
fi
# Directories get the usual 0755; every file this script creates is private unless chmod'ed.
(umask 022 && mkdir -p "$(dirname "$bin_dst")" "$(dirname "$unit_dst")" "$(dirname "$cfg")")
umask 077

# Binary and unit: replaced on every run (through a temp file, so a running daemon's
# executable is never written in place).
install -m 0755 "$bin_src" "$bin_dst.new"
mv -f "$bin_dst.new" "$bin_dst"
install -m 0644 "$unit_src" "$unit_dst.new"
mv -f "$unit_dst.new" "$unit_dst"
say "installed $bin_dst and $unit_dst (from ${unit_src#"$repo"/})"

# Configuration: created once, never overwritten.
created=0
if [ -e "$cfg" ]; then
    say "keeping the existing configuration $cfg"
    case "$(stat -c %a "$cfg")" in
    600 | 400) ;;
    *) say "WARNING: $cfg holds secrets; make it private with 'chmod 600 $cfg'" ;;
    esac
else
    [ -f "$example" ] || die "no configuration template at $example (set CONFIG_EXAMPLE)"
    install -m 0600 "$example" "$cfg"
    [ "$(id -u)" -ne 0 ] || chown root:root "$cfg"
    created=1
    say "created $cfg from $(basename "$example")"
fi

if grep -Eq "$NO_KEY_RE" "$cfg"; then
    cscli="$(find_cscli)"
    if [ -n "$cscli" ]; then
        register "$cscli"
    else
        say "no cscli here: on the LAPI host run 'cscli bouncers add $NAME' and put the key in crowdsec.api_key"
    fi
fi

if systemd_running; then
    systemctl daemon-reload
    # An upgrade takes effect now if the service runs; a stopped one stays stopped.
    systemctl try-restart "$NAME.service"
fi

cat <<EOF
install: done. Next:
  1. Fill in cloudflare.api_token, cloudflare.account_id and the list in $cfg
  2. $NAME -c $cfg check
  3. systemctl enable --now $NAME
EOF
