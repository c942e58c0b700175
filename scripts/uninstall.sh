#!/usr/bin/env bash
# Remove what scripts/install.sh installed.
#
#   scripts/uninstall.sh [--purge]
#
# Stops and disables the service, and removes the binary and the unit. It deletes the LAPI
# registration only when install.sh made it (its name is in ….toml.id) and cscli is on this
# host; a bouncer registered by hand is left registered, and the script says how to
# delete it. The configuration is kept; the LAPI key install.sh wrote into it is reset to
# the placeholder once that bouncer is deleted, so a later install registers a fresh one.
# --purge also removes the configuration and the .id file.
#
# It does not touch Cloudflare: to empty the list and remove what setup made, run
#   crowdsec-cloudflare-iplist-bouncer cleanup --rules --zone ZONE_ID --delete-list
# first (see README, "Removing everything").
#
# Environment: ROOT and CSCLI as for scripts/install.sh.
set -euo pipefail

NAME=crowdsec-cloudflare-iplist-bouncer
ROOT="${ROOT:-}"
ROOT="${ROOT%/}"

bin_dst="$ROOT/usr/local/bin/$NAME"
unit_dst="$ROOT/etc/systemd/system/$NAME.service"
cfg="$ROOT/etc/crowdsec/bouncers/$NAME.toml"

say() { echo "uninstall: $*"; }
die() {
    echo "uninstall: ERROR: $*" >&2
    exit 1
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

find_cscli() {
    if [ -n "${CSCLI+set}" ]; then
        printf '%s' "$CSCLI"
    elif [ -z "$ROOT" ]; then
        command -v cscli || true
    fi
}

# Puts the placeholder back in place of the key install.sh wrote.
forget_key() {
    local tmp
    [ -f "$cfg" ] || return 0
    tmp="$(mktemp "$cfg.XXXXXX")"
    awk '
        !done && /^[[:space:]]*api_key[[:space:]]*=/ { sub(/=.*/, "= \"<LAPI bouncer key>\""); done = 1 }
        { print }' "$cfg" >"$tmp"
    chmod 0600 "$tmp"
    [ "$(id -u)" -ne 0 ] || chown root:root "$tmp"
    mv -f "$tmp" "$cfg"
}

purge=0
case "${1:-}" in
"") ;;
--purge) purge=1 ;;
*) die "usage: $0 [--purge]" ;;
esac
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or set ROOT=/some/dir)"
fi
umask 077

if systemd_running; then
    systemctl disable --now "$NAME.service" 2>/dev/null || true
fi

if [ -f "$cfg.id" ]; then
    name="$(cat "$cfg.id")"
    cscli="$(find_cscli)"
    if [ -n "$cscli" ] && "$cscli" bouncers delete "$name"; then
        say "deleted bouncer $name from LAPI"
        rm -f "$cfg.id"
        [ "$purge" = 1 ] || forget_key
    else
        say "bouncer $name is still registered: on the LAPI host run 'cscli bouncers delete $name'"
    fi
elif [ -f "$cfg" ]; then
    say "no registration made by install.sh (no $cfg.id): if you registered the bouncer by hand, run 'cscli bouncers delete <name>' on the LAPI host ('cscli bouncers list' shows it)"
fi

rm -f "$bin_dst" "$unit_dst"
say "removed $bin_dst and $unit_dst"
if systemd_running; then
    systemctl daemon-reload
fi

if [ "$purge" = 1 ]; then
    rm -f "$cfg" "$cfg.id"
    say "removed $cfg"
elif [ -f "$cfg" ]; then
    say "kept $cfg (remove it with --purge)"
fi
