//! crowdsec-cloudflare-iplist-bouncer: keeps one Cloudflare account IP List in step with
//! the ban decisions of a CrowdSec Local API.

pub mod cloudflare;
pub mod config;
pub mod emulator;
pub mod godur;
pub mod item;
pub mod lapi;
pub mod state;
