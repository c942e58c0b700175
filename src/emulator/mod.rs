//! A stateful emulator of the Cloudflare Lists API (placeholder, being written).
