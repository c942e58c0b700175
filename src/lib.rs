//! crowdsec-cloudflare-iplist-bouncer: keeps one Cloudflare account IP List in step with
//! the ban decisions of a CrowdSec Local API.
//!
//! # Layout
//! - [`config`]: the TOML file, validated into a typed [`config::Config`].
//! - [`lapi`]: the LAPI decision-stream client. [`cloudflare`]: the Lists API client.
//! - [`item`]: the canonical list item a decision maps to. [`godur`]: Go durations.
//! - [`state`]: desired state, list view and pending queue; pure, no IO.
//! - [`engine`]: the poller and writer tasks, `run` and `once`. [`check`]: pre-flight.
//! - [`lock`]: one writer per Cloudflare account on this host.
//! - [`net`]: what both HTTP clients share: no redirects, capped reads, `Retry-After`.
//! - [`progress`]: a long sync's progress, as a bar on a terminal or as log lines.
//! - [`telemetry`]: metrics and health. [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/status`.
//! - `crates/cf-lists-emulator`: a stateful Cloudflare Lists API emulator for tests and the demo.

pub mod admin;
pub mod budget;
pub mod check;
pub mod cloudflare;
pub mod config;
pub mod engine;
pub mod godur;
pub mod ha;
pub mod item;
pub mod lapi;
pub mod lock;
pub mod net;
pub mod progress;
pub mod state;
pub mod telemetry;

/// Installs the process-wide TLS crypto provider (ring) once; later calls do nothing.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
