//! Chaos: for a bounded time, decisions come and go while random faults hit both LAPI
//! (through the fault proxy) and Cloudflare (emulator switches). Then the faults stop and
//! the list must equal LAPI's bans, with no write ever sent while an operation was pending.
//! The seed is printed; `CHAOS_SEED=N` replays a run.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::lapi::NewDecision;
use common::proxy::{Fault, FaultProxy};
use common::world::{eventually, World};

const CHAOS_FOR: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_while_decisions_flow_end_in_step() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos seed {seed} (replay with CHAOS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut world = World::start("t-chaos").await;
    let proxy = FaultProxy::start(&world.lapi.url()).await;
    world.lapi_via = Some(proxy.url());
    world.crowdsec_extra = "request_timeout = \"2s\"\n".into();
    world.cloudflare_extra = "request_timeout = \"2s\"\nbatch_size = 4\n".into();
    world.sync_extra = "reconcile_interval = \"5s\"\nshutdown_grace = \"5s\"\n".into();
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await,
        "the bouncer starts before the storm"
    );

    let mut banned: BTreeSet<String> = BTreeSet::new();
    let started = Instant::now();
    let mut step = 0u32;
    while started.elapsed() < CHAOS_FOR {
        step += 1;
        match rng.u8(0..10) {
            0..=3 => {
                let n = rng.usize(1..4);
                let ips: Vec<String> = (0..n)
                    .map(|_| format!("10.40.{}.{}", rng.u8(0..4), rng.u8(1..255)))
                    .collect();
                let decisions: Vec<NewDecision> =
                    ips.iter().map(|ip| NewDecision::ban_ip(ip)).collect();
                world.lapi.add_decisions(&decisions).await;
                banned.extend(ips);
            }
            4 if !banned.is_empty() => {
                let ip = banned
                    .iter()
                    .nth(rng.usize(0..banned.len()))
                    .cloned()
                    .unwrap_or_default();
                world.lapi.cscli_ok(&["decisions", "delete", "--ip", &ip]);
                banned.remove(&ip);
            }
            5 => {
                let fault = match rng.u8(0..6) {
                    0 => Fault::Status(503),
                    1 => Fault::Garbage,
                    2 => Fault::Truncated,
                    3 => Fault::Down,
                    4 => Fault::ForwardThenDrop,
                    _ => Fault::Slow(Duration::from_secs(3)),
                };
                proxy.set_for(fault, rng.u32(1..4));
            }
            6 => world
                .cf
                .fail_next_requests(rng.u32(1..3), [500, 502, 503][rng.usize(0..3)]),
            7 => match rng.u8(0..4) {
                0 => world.cf.reset_next_requests(1),
                1 => world.cf.malformed_next_requests(1),
                2 => world.cf.lose_next_write_responses(1),
                _ => world.cf.slow_next_requests(1, Duration::from_secs(3)),
            },
            8 => match rng.u8(0..2) {
                0 => world.cf.fail_next_operations(1, "chaos"),
                _ => world.cf.stick_next_operations(1, Duration::from_secs(3)),
            },
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(100..400))).await;
    }
    // The storm ends.
    proxy.set(Fault::None);
    world.cf.fail_next_requests(0, 500);
    world.cf.fail_next_operations(0, "");
    world.cf.reset_next_requests(0);
    world.cf.malformed_next_requests(0);
    world.cf.lose_next_write_responses(0);
    world.cf.slow_next_requests(0, Duration::ZERO);
    world.cf.stick_next_operations(0, Duration::ZERO);
    let want: Vec<&str> = banned.iter().map(String::as_str).collect();
    let mut got = Vec::new();
    let calm = Instant::now();
    let converged = eventually(Duration::from_secs(90), || {
        got = world.listed();
        got.sort();
        let mut want_sorted: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want_sorted.sort();
        std::future::ready(got == want_sorted)
    })
    .await;
    assert!(
        converged,
        "seed {seed}: after {step} steps the list never matched LAPI's {} bans; last seen {} items",
        want.len(),
        got.len()
    );
    bouncer.stop().await;
    let counters = world.assert_well_behaved();
    eprintln!(
        "chaos: {step} steps, in step {:?} after the storm, {} bans, LAPI requests {} ({} faulted), {counters:?}",
        calm.elapsed(),
        want.len(),
        proxy.requests(),
        proxy.faulted()
    );
}
