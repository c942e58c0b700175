//! Every figure README quotes from a benchmark is traceable to BENCHMARKS.json.
//!
//! In README, such a figure is followed by a marker naming its key under `scenarios` in
//! BENCHMARKS.json, e.g. `0.44 s<!-- bench: cold100k.values.cpu_s --> of CPU`. The
//! number right before the marker must equal the key's value rounded to as many
//! decimals as README shows (`37 MiB` for 36.625). A figure in MiB, of CPU, or a p50/p95
//! with no marker is an untraceable figure and fails too.
//!
//! After a new benchmark run (`scripts/bench.sh` rewrites BENCHMARKS.json), run
//! `cargo test --test figures`: each failure names the README line, the key and the new
//! value. Change the figure in README to the new value (and in CHANGELOG if quoted
//! there); if a key was renamed, change the marker.

use std::path::Path;

const MARKER: &str = "<!-- bench: ";

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// README's prose: fenced code blocks left out, backticked spans blanked.
fn prose_lines(readme: &str) -> Vec<(usize, String)> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for (n, line) in readme.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut out = String::with_capacity(line.len());
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                out.push(' ');
            } else {
                out.push(if in_code { ' ' } else { c });
            }
        }
        lines.push((n + 1, out));
    }
    lines
}

/// The last number in `text`: digits with an optional decimal part, thousands written
/// in groups of three after a space (`100 000`). Returns the number and its decimals.
fn last_number(text: &str) -> Option<(f64, usize)> {
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    while end > 0 && !bytes[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && (bytes[start - 1].is_ascii_digit() || bytes[start - 1] == b'.') {
        start -= 1;
    }
    // Thousands groups: "100 000" is one number.
    while start >= 2
        && bytes[start - 1] == b' '
        && bytes[start - 2].is_ascii_digit()
        && text[start..end]
            .split('.')
            .next()
            .is_some_and(|g| g.len() == 3)
    {
        let mut s = start - 1;
        while s > 0 && bytes[s - 1].is_ascii_digit() {
            s -= 1;
        }
        if s > 0 && (bytes[s - 1] == b'.' || bytes[s - 1] == b'p') {
            break;
        }
        start = s;
    }
    let written: String = text[start..end].chars().filter(|c| *c != ' ').collect();
    let decimals = written.split_once('.').map_or(0, |(_, d)| d.len());
    written.parse().ok().map(|n| (n, decimals))
}

fn lookup<'a>(json: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    key.split('.')
        .try_fold(&json["scenarios"], |value, part| value.get(part))
}

/// A marker-less figure in `line` that looks like a measurement: a number in MiB not
/// followed by a marker, a number of seconds "of CPU" (a marked one has its marker
/// between), or a p50/p95 on a line with no marker for one.
fn untraceable(line: &str) -> Option<String> {
    let context = |at: usize| {
        let from = line[..at]
            .char_indices()
            .rev()
            .nth(20)
            .map_or(0, |(i, _)| i);
        format!("…{}", &line[from..])
    };
    for (at, _) in line.match_indices(" MiB") {
        if line[..at].ends_with(|c: char| c.is_ascii_digit())
            && !line[at + " MiB".len()..].starts_with(MARKER)
        {
            return Some(context(at));
        }
    }
    for (at, _) in line.match_indices(" s of CPU") {
        if line[..at].ends_with(|c: char| c.is_ascii_digit()) {
            return Some(context(at));
        }
    }
    for quantile in ["p50", "p95"] {
        let marked = line.split(MARKER).skip(1).any(|part| {
            part.split("-->")
                .next()
                .is_some_and(|key| key.contains(quantile))
        });
        // A quantile named without a number of seconds on the line (a panel that shows
        // "p50 and p95") quotes no figure.
        let quotes_seconds = line
            .match_indices(" s")
            .any(|(at, _)| line[..at].ends_with(|c: char| c.is_ascii_digit()));
        if let Some(at) = line.find(quantile).filter(|_| !marked && quotes_seconds) {
            return Some(context(at));
        }
    }
    None
}

#[test]
fn readme_figures_match_benchmarks_json() {
    let readme = read("README.md");
    let json: serde_json::Value =
        serde_json::from_str(&read("BENCHMARKS.json")).expect("BENCHMARKS.json is JSON");
    let mut problems = Vec::new();
    let mut checked = 0;
    for (n, line) in prose_lines(&readme) {
        if let Some(figure) = untraceable(&line) {
            problems.push(format!(
                "README.md:{n}: a figure without a `{MARKER}KEY -->` marker: {figure}"
            ));
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find(MARKER) {
            let before = &rest[..at];
            let after = &rest[at + MARKER.len()..];
            let Some((key, tail)) = after.split_once("-->") else {
                problems.push(format!("README.md:{n}: unclosed marker"));
                break;
            };
            let key = key.trim();
            match (
                last_number(before),
                lookup(&json, key).and_then(|v| v.as_f64()),
            ) {
                (None, _) => problems.push(format!("README.md:{n}: no number before {key}")),
                (_, None) => problems.push(format!(
                    "README.md:{n}: {key} is not a number in BENCHMARKS.json"
                )),
                (Some((written, decimals)), Some(value)) => {
                    let scale = 10f64.powi(decimals as i32);
                    let rounded = (value * scale).round() / scale;
                    if (rounded - written).abs() > 1e-9 * written.abs().max(1.0) {
                        problems.push(format!(
                            "README.md:{n}: README says {written}, BENCHMARKS.json has {key} = {value} (write {rounded})"
                        ));
                    }
                    checked += 1;
                }
            }
            // The next figure's text starts after this marker.
            rest = tail;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 10, "only {checked} figures are marked in README");
}

#[test]
fn the_checker_finds_numbers_and_unmarked_figures() {
    assert_eq!(last_number("sync with 0.44 s"), Some((0.44, 2)));
    assert_eq!(last_number("10 000 new decisions take 10"), Some((10.0, 0)));
    assert_eq!(last_number("a million (the 500 000"), Some((500_000.0, 0)));
    assert_eq!(last_number("(p50; p95 2.4 s"), Some((2.4, 1)));
    assert_eq!(last_number("no figure"), None);
    assert!(untraceable("a peak of 14 MiB RSS").is_some());
    assert!(untraceable("with 3 s of CPU").is_some());
    assert!(untraceable("a 37 MiB<!-- bench: cold100k.values.peak_rss_mib --> peak").is_none());
    assert!(untraceable("0.44 s<!-- bench: cold100k.values.cpu_s --> of CPU").is_none());
    assert!(untraceable("in 1.5 s (p50)").is_some());
    assert!(untraceable("bulk operation p50 and p95; duration (heatmap)").is_none());
    assert!(untraceable("1.5 s<!-- bench: latency.values.add_p50_s --> (p50)").is_none());
    assert!(untraceable("limit 128Mi, 64 KiB caps").is_none());
}
