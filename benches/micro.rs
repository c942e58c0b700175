//! Micro-benchmarks of the bouncer's hot paths, run by `scripts/bench.sh micro` (which
//! copies the numbers into BENCHMARKS.md) or `cargo bench --bench micro`:
//! - `parse/stream_100k`: a 100 000-decision `/v1/decisions/stream` body, parsed and
//!   iterated (throughput in bytes);
//! - `canonicalise/values_100k`: 100 000 decision values to list items;
//! - `diff/items_100k`: desired state and list view of 100 000 items each, half shared,
//!   drained into batches of 1000;
//! - `restart/full_pull_100k`: the same body in 16 KiB chunks, as the daemon parses a
//!   stream while it arrives, into a new desired state;
//! - `restart/list_pages_200`: 200 answers of 500 items each in Cloudflare's shape, decoded
//!   into a list view and swapped in against that desired state.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cfbouncer::item::Item;
use cfbouncer::lapi::{StreamBody, StreamSink};
use cfbouncer::state::{DecisionRef, Desired, Policy, SyncState};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const N: usize = 100_000;

/// Decision values like a LAPI holds them: mostly IPv4 hosts, some ranges and IPv6.
fn values() -> Vec<String> {
    (0..N)
        .map(|i| {
            let (a, b, c) = ((i >> 16) as u8, (i >> 8) as u8, i as u8);
            match i % 20 {
                0 => format!("2001:db8:{a:x}{b:02x}::{c:x}"),
                1 => format!("{}.{a}.{b}.0/24", 60 + (c % 100)),
                _ => format!("{}.{a}.{b}.{c}", 11 + (i % 180)),
            }
        })
        .collect()
}

/// A `startup=true` body in LAPI 1.4.6's exact shape and key order (docs/lapi.md §4.1).
fn stream_body(values: &[String]) -> Bytes {
    let origins = ["crowdsec", "cscli", "CAPI", "lists"];
    let mut body = String::with_capacity(values.len() * 160);
    body.push_str("{\"deleted\":null,\"new\":[");
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let scope = if value.contains('/') { "Range" } else { "Ip" };
        body.push_str(&format!(
            "{{\"duration\":\"{}h{}m{}.{:09}s\",\"id\":{},\"origin\":\"{}\",\
             \"scenario\":\"crowdsecurity/http-probing\",\"scope\":\"{scope}\",\
             \"type\":\"ban\",\"value\":\"{value}\"}}",
            i % 168,
            i % 60,
            i % 59,
            (i * 7919) % 1_000_000_000,
            i + 1,
            origins[i % 4],
        ));
    }
    body.push_str("]}");
    Bytes::from(body)
}

fn parse(c: &mut Criterion) {
    let body = stream_body(&values());
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(10);
    group.bench_function("stream_100k", |b| {
        b.iter(|| {
            let stream_body = StreamBody::from_bytes(body.clone());
            let stream = stream_body.parse().expect("valid body");
            let mut n = 0usize;
            for decision in stream.new_decisions() {
                black_box(decision.value);
                n += 1;
            }
            assert_eq!(n, N);
        })
    });
    group.finish();
}

fn canonicalise(c: &mut Criterion) {
    let values = values();
    let mut group = c.benchmark_group("canonicalise");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function("values_100k", |b| {
        b.iter(|| {
            for value in &values {
                black_box(Item::from_decision(black_box(value), 64).expect("valid value"));
            }
        })
    });
    group.finish();
}

fn diff(c: &mut Criterion) {
    let values = values();
    let duration = "3h59m54.447176566s";
    let decisions: Vec<DecisionRef<'_>> = values
        .iter()
        .map(|value| DecisionRef {
            scope: if value.contains('/') { "Range" } else { "Ip" },
            value,
            kind: "ban",
            origin: "crowdsec",
            scenario: "crowdsecurity/http-probing",
            duration,
        })
        .collect();
    // The list shares half of the desired items; the other half is stale.
    let listed: Vec<(Item, Box<str>)> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let item = if i % 2 == 0 {
                Item::from_decision(value, 64).expect("valid value")
            } else {
                Item::from_cloudflare(&format!(
                    "{}.{}.{}.{}",
                    200 + i % 20,
                    i >> 16,
                    (i >> 8) % 256,
                    i % 256
                ))
                .expect("valid item")
            };
            (item, format!("{i:032x}").into_boxed_str())
        })
        .collect();
    let mut group = c.benchmark_group("diff");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function("items_100k", |b| {
        b.iter_batched(
            || listed.clone(),
            |listed| {
                let now = Instant::now();
                let mut state = SyncState::new(Policy::new(vec!["ban".into()], 64));
                state.replace_desired(decisions.iter().copied(), now);
                state.replace_list(
                    listed
                        .into_iter()
                        .map(|(item, id)| (item, id, Some("crowdsec crowdsec: x"))),
                );
                let mut batches = 0usize;
                while let Some(batch) = state.take_batch(1000) {
                    black_box(batch.len());
                    batches += 1;
                }
                batches
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Hands out a body in chunks of 16 KiB, as a response arrives.
struct Chunks<'a>(&'a [u8]);

impl std::io::Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(16 * 1024);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// What a full pull does with each decision: a new desired state.
struct IntoDesired<'p> {
    policy: &'p Policy,
    desired: Desired,
    now: Instant,
}

impl StreamSink for IntoDesired<'_> {
    fn new_decision(&mut self, decision: DecisionRef<'_>) {
        self.desired.insert(self.policy, &decision, self.now);
    }
    fn deleted_decision(&mut self, _: DecisionRef<'_>) {}
}

/// 200 answers of 500 items in Cloudflare's shape, holding `values`' items.
fn list_pages(values: &[String]) -> Vec<Vec<u8>> {
    values
        .chunks(cfbouncer::cloudflare::MAX_PER_PAGE)
        .enumerate()
        .map(|(page, chunk)| {
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    let item = Item::from_decision(value, 64).expect("valid value");
                    serde_json::json!({
                        "id": format!("{:032x}", page * 1000 + i),
                        "ip": item.to_string(),
                        "comment": "crowdsec crowdsec: crowdsecurity/http-probing (crowdsec-cloudflare-iplist-bouncer)",
                        "created_on": "2026-12-01T08:00:00Z",
                        "modified_on": "2026-12-01T08:00:00Z",
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({
                "result": items, "success": true, "errors": [], "messages": [],
                "result_info": {"cursors": {"after": format!("cursor{page}"), "before": "x"}},
            }))
            .expect("serialises")
        })
        .collect()
}

fn restart(c: &mut Criterion) {
    let values = values();
    let body = stream_body(&values);
    let pages = list_pages(&values);
    let policy = Policy::new(vec!["ban".into()], 64);
    let mut group = c.benchmark_group("restart");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("full_pull_100k", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut sink = IntoDesired {
                policy: &policy,
                desired: Desired::new(now, 64),
                now,
            };
            cfbouncer::lapi::parse_reader(Chunks(&body), &mut sink).expect("valid body");
            sink.desired
        })
    });
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("list_pages_200", |b| {
        let now = Instant::now();
        let mut state = SyncState::new(policy.clone());
        state.replace_desired(
            values.iter().map(|value| DecisionRef {
                scope: if value.contains('/') { "Range" } else { "Ip" },
                value,
                kind: "ban",
                origin: "crowdsec",
                scenario: "crowdsecurity/http-probing",
                duration: "3h59m54.447176566s",
            }),
            now,
        );
        b.iter(|| {
            let mut view = state.new_list_view();
            for page in &pages {
                cfbouncer::cloudflare::decode_items_page(page, |listed| {
                    if let Some(item) = Item::from_cloudflare(listed.ip) {
                        view.insert(item, listed.id, listed.comment);
                    }
                })
                .expect("a page");
            }
            black_box(state.replace_list_with(view))
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = micro;
    config = config();
    targets = parse, canonicalise, diff, restart
}
criterion_main!(micro);
