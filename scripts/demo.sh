#!/usr/bin/env bash
# The main job on an embedded default, on one machine, with nothing to configure:
#   a real CrowdSec LAPI (Debian's crowdsec, API-only, in a temp dir)
#   + the Cloudflare Lists API emulator (cf-lists-emulator)
#   + the bouncer, registered with `cscli bouncers add`,
# then decisions are added and removed with cscli and the emulated list is shown as it
# follows them. With --follow, it keeps running afterwards: add your own decisions with
# the cscli command it prints, and watch the list; Ctrl-C stops everything.
#
# Usage: scripts/demo.sh [--follow]
set -euo pipefail

follow=0
[ "${1:-}" = "--follow" ] && follow=1

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Installing what the demo needs (crowdsec binaries, unpacked locally) and building"
bash scripts/install-crowdsec.sh
cargo build --quiet --workspace --bins
bin="$repo/target/debug"
cs="$repo/target/crowdsec/usr/bin"

work="$(mktemp -d -t cfbouncer-demo-XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "demo stopped; logs were in $work (removed)"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- a real LAPI, API-only, everything in $work/lapi (docs/lapi.md §2) ---
lapi_port="$(free_port)"
lapi="$work/lapi"
mkdir -p "$lapi/data" "$lapi/hub" "$lapi/notifications"
cat >"$lapi/config.yaml" <<EOF
common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: .
config_paths:
  config_dir: $lapi/
  data_dir: $lapi/data/
  simulation_path: $lapi/simulation.yaml
  hub_dir: $lapi/hub/
  index_path: $lapi/hub/.index.json
  notification_dir: $lapi/notifications/
  plugin_dir: $repo/target/crowdsec/usr/lib/crowdsec/plugins/
cscli:
  output: human
  color: "no"
db_config:
  log_level: warning
  type: sqlite
  db_path: $lapi/data/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: $lapi/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:$lapi_port
    profiles_path: $lapi/profiles.yaml
    trusted_ips:
      - 127.0.0.1
      - "::1"
prometheus:
  enabled: false
EOF
printf 'name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == "Ip"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n' >"$lapi/profiles.yaml"
echo "simulation: off" >"$lapi/simulation.yaml"
cscli() { "$cs/cscli" -c "$lapi/config.yaml" --error "$@"; }
cscli machines add demo-machine --auto --force -f "$lapi/local_api_credentials.yaml" \
    --url "http://127.0.0.1:$lapi_port/" >/dev/null
key="$(cscli bouncers add crowdsec-cloudflare-iplist-bouncer -o raw)"

say "Starting LAPI on 127.0.0.1:$lapi_port (SQLite in $lapi)"
"$cs/crowdsec" -c "$lapi/config.yaml" -no-cs -no-capi >"$work/lapi.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    python3 - "$lapi_port" <<'PY' 2>/dev/null && break
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1) as r:
    sys.exit(0 if b'"up"' in r.read() else 1)
PY
    sleep 0.1
done

# --- the Cloudflare emulator: bulk operations finish in 0.3-1.2 s, like Cloudflare's ---
say "Starting the Cloudflare Lists API emulator"
emu_port="$(free_port)"
"$bin/cf-lists-emulator" --listen "127.0.0.1:$emu_port" --list-name crowdsec_ban \
    --list-name crowdsec_challenge --op-latency-ms 300..1200 >"$work/emulator.out" 2>"$work/emulator.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/emulator.out" ] && break; sleep 0.1; done
line="$(head -n1 "$work/emulator.out")"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
echo "$line"

# --- the bouncer ---
admin_port="$(free_port)"
cat >"$work/bouncer.toml" <<EOF
[crowdsec]
api_url = "http://127.0.0.1:$lapi_port/"
api_key = "$key"
update_frequency = "1s"

[cloudflare]
api_url = "$(field url)"
api_token = "$(field token)"
account_id = "$(field account_id)"
exclude_hosts = ["auth.example.com"]

# Bans on the ban list, captchas on a challenge list (a suspicion is never a hard block),
# AS bans on a list of kind asn.
[[cloudflare.lists]]
name = "crowdsec_ban"
decision_types = ["ban"]
[[cloudflare.lists]]
name = "crowdsec_challenge"
decision_types = ["captcha"]
[[cloudflare.lists]]
name = "crowdsec_asn_ban"
decision_types = ["ban"]
scope = "as"

[admin]
listen = "127.0.0.1:$admin_port"

[sync]
reconcile_interval = "1m"
EOF
chmod 600 "$work/bouncer.toml"
say "Creating the missing list and each zone's rules (setup; one custom rule per list)"
"$bin/crowdsec-cloudflare-iplist-bouncer" -c "$work/bouncer.toml" setup \
    --zone 0123456789abcdef0123456789abcd01 | sed 's/^/   /'
say "Checking the bouncer's configuration and both APIs"
"$bin/crowdsec-cloudflare-iplist-bouncer" -c "$work/bouncer.toml" check
say "Starting the bouncer (its log: $work/bouncer.log)"
"$bin/crowdsec-cloudflare-iplist-bouncer" -c "$work/bouncer.toml" run >"$work/bouncer.log" 2>&1 &
pids+=($!)

show_list() {
    python3 - "$emu_port" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/__emulator/state", timeout=2) as r:
    state = json.load(r)
c = state["counters"]
print(f"   Cloudflare (requests {c['requests']}, bulk writes {c['writes']}, "
      f"writes while pending {c['writes_while_pending']})")
for lst in state["lists"]:
    print(f"   list {lst['name']} (kind {lst['kind']}): {len(lst['items'])} items")
    for item in lst["items"]:
        value = item["ip"] if "ip" in item else f"AS{item['asn']}"
        print(f"     {value:<24} {item.get('comment') or ''}")
PY
}

# Waits until the lists hold exactly the given LIST:ITEM entries (or 15 s), then shows them.
expect() {
    local want
    want="$(printf '%s\n' "$@" | sort | tr '\n' ' ')"
    for _ in $(seq 150); do
        got="$(python3 - "$emu_port" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/__emulator/state", timeout=2) as r:
    lists = json.load(r)["lists"]
entries = [f"{l['name']}:{i['ip'] if 'ip' in i else 'AS' + str(i['asn'])}" for l in lists for i in l["items"]]
print(" ".join(sorted(entries)), end=" ")
PY
)"
        [ "$got" = "$want" ] && break
        sleep 0.1
    done
    show_list
    [ "$got" = "$want" ] || { echo "   expected: $want" >&2; tail -n 20 "$work/bouncer.log" >&2; exit 1; }
}

step() { printf '\n\033[36m$ cscli %s\033[0m\n' "$*"; cscli "$@" >/dev/null; }

say "Banning an IP, a range and an IPv6 host; a captcha goes to the challenge list, a Country decision stays off the edge"
step decisions add --ip 192.0.2.10 --duration 1h --reason crowdsecurity/ssh-bf
step decisions add --range 198.51.100.0/24 --duration 1h --reason crowdsecurity/http-probing
step decisions add --ip 2001:db8::1 --duration 1h
step decisions add --ip 203.0.113.5 --duration 1h --type captcha
step decisions add --scope Country --value FR --duration 1h
B=crowdsec_ban C=crowdsec_challenge A=crowdsec_asn_ban
expect $B:192.0.2.10 $B:198.51.100.0/24 $B:2001:db8::/64 $C:203.0.113.5

say "An AS ban goes to the ASN list"
step decisions add --scope AS --value 64496 --duration 1h --reason crowdsecurity/http-probing
expect $B:192.0.2.10 $B:198.51.100.0/24 $B:2001:db8::/64 $C:203.0.113.5 $A:AS64496

say "The challenged address is banned too: the stronger remedy wins, it moves to the ban list"
step decisions add --ip 203.0.113.5 --duration 1h
expect $B:192.0.2.10 $B:198.51.100.0/24 $B:2001:db8::/64 $B:203.0.113.5 $A:AS64496
say "The ban ends: back to the challenge its captcha asks for"
step decisions delete --ip 203.0.113.5 --type ban
expect $B:192.0.2.10 $B:198.51.100.0/24 $B:2001:db8::/64 $C:203.0.113.5 $A:AS64496

say "A second IPv6 host in the same /64 shares the item; a short ban expires by itself"
step decisions add --ip 2001:db8::2 --duration 1h
step decisions add --ip 192.0.2.99 --duration 6s
expect $B:192.0.2.10 $B:192.0.2.99 $B:198.51.100.0/24 $B:2001:db8::/64 $C:203.0.113.5 $A:AS64496
step decisions delete --ip 2001:db8::1
sleep 2  # two polls later, the /64 is still there: 2001:db8::2 holds it
expect $B:192.0.2.10 $B:192.0.2.99 $B:198.51.100.0/24 $B:2001:db8::/64 $C:203.0.113.5 $A:AS64496
echo "   (waiting for 192.0.2.99 to expire)"
expect $B:192.0.2.10 $B:198.51.100.0/24 $B:2001:db8::/64 $C:203.0.113.5 $A:AS64496

say "Unbanning"
step decisions delete --ip 192.0.2.10
step decisions delete --value 64496
expect $B:198.51.100.0/24 $B:2001:db8::/64 $C:203.0.113.5

say "What the bouncer logged"
grep -E "bulk operation|full pull|read the list|using Cloudflare" "$work/bouncer.log" | sed 's/^/   /' | tail -n 12

say "What it reports (crowdsec-cloudflare-iplist-bouncer status; metrics at http://127.0.0.1:$admin_port/metrics)"
"$bin/crowdsec-cloudflare-iplist-bouncer" -c "$work/bouncer.toml" status | sed 's/^/   /'

if [ "$follow" = 1 ]; then
    say "A Prometheus scraping the bouncer, with the alert rules of deploy/prometheus/ loaded"
    bash scripts/install-prometheus.sh
    prom_port="$(free_port)"
    mkdir -p "$work/prometheus"
    cat >"$work/prometheus/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: ['$repo/deploy/prometheus/alerts.yaml']
scrape_configs:
  - job_name: cf-iplist-bouncer
    static_configs: [{targets: ['127.0.0.1:$admin_port']}]
EOF
    "$repo/target/prometheus/usr/bin/prometheus" --config.file="$work/prometheus/prometheus.yml" \
        --storage.tsdb.path="$work/prometheus/data" --web.listen-address="127.0.0.1:$prom_port" \
        >"$work/prometheus.log" 2>&1 &
    pids+=($!)
    echo "   Prometheus: http://127.0.0.1:$prom_port/ (Debian's build serves the API, not the web UI)"
    echo "   curl -s 'http://127.0.0.1:$prom_port/api/v1/query?query=cf_iplist_bouncer_list_items'"
    echo "   curl -s 'http://127.0.0.1:$prom_port/api/v1/alerts'"
    echo "   A Grafana with this Prometheus as a data source can import deploy/grafana/dashboard.json."

    say "Still running. In another terminal, add decisions with:"
    echo "   $cs/cscli -c $lapi/config.yaml decisions add --ip 192.0.2.50 --duration 10m"
    echo "   Ctrl-C stops LAPI, the emulator and the bouncer."
    last=""
    while sleep 1; do
        now="$(show_list)"
        [ "$now" != "$last" ] && { echo; echo "$now"; last="$now"; }
    done
fi
say "Done: decisions flowed from LAPI to the emulated Cloudflare list. Run with --follow to keep it running."
