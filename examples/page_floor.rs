//! The HTTP floor of a list read, for the benchmarks (`scripts/bench`, restart100k).
//!
//! Fetches every page of one list (500 items a page, following the cursor) with the
//! bouncer's own client settings, reads each body whole and drops it: no JSON decoding,
//! no list view, no pacing. Then prints one JSON line with the number of pages, the
//! bytes read and its own CPU time (user + system, from `getrusage`). What the bouncer
//! spends on a list read beyond this figure is its own work.
//!
//! Usage: `page_floor API_URL ACCOUNT_ID LIST_ID` with the token in `CF_API_TOKEN`.

use std::time::{Duration, Instant};

const PER_PAGE: usize = 500;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: page_floor API_URL ACCOUNT_ID LIST_ID (token in CF_API_TOKEN)";
    let (Some(api), Some(account), Some(list)) = (args.next(), args.next(), args.next()) else {
        return Err(usage.into());
    };
    let token = std::env::var("CF_API_TOKEN").map_err(|_| usage)?;
    let cpu0 = cpu_seconds()?;
    let started = Instant::now();
    cfbouncer::install_tls_provider();
    let http = cfbouncer::net::client_builder(Duration::from_secs(60)).build()?;
    let url = format!("{api}/accounts/{account}/rules/lists/{list}/items");
    let (mut pages, mut bytes, mut cursor) = (0usize, 0usize, None::<String>);
    loop {
        let mut request = http
            .get(&url)
            .bearer_auth(&token)
            .query(&[("per_page", PER_PAGE.to_string())]);
        if let Some(after) = &cursor {
            request = request.query(&[("cursor", after)]);
        }
        let response = request.send().await?.error_for_status()?;
        let body = response.bytes().await?;
        pages += 1;
        bytes += body.len();
        cursor = after_cursor(&body);
        if cursor.is_none() {
            break;
        }
    }
    let cpu = cpu_seconds()? - cpu0;
    println!(
        "{{\"pages\": {pages}, \"bytes\": {bytes}, \"cpu_s\": {cpu:.4}, \"seconds\": {:.3}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `result_info.cursors.after`, found by its key near the end of the page (the items
/// carry no such key), without decoding the page.
fn after_cursor(body: &[u8]) -> Option<String> {
    let key = b"\"after\":\"";
    let tail = &body[body.len().saturating_sub(512)..];
    let start = tail.windows(key.len()).rposition(|w| w == key)? + key.len();
    let end = tail[start..].iter().position(|&b| b == b'"')?;
    String::from_utf8(tail[start..start + end].to_vec()).ok()
}

/// This process's CPU time so far (user + system, all threads, ended ones included).
fn cpu_seconds() -> Result<f64, std::io::Error> {
    // SAFETY: `getrusage` writes into the zeroed struct it is given and keeps no pointer.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}
