//! How a long sync shows its progress: a bar on a terminal, plain log lines elsewhere.
//!
//! `once`, `cleanup` and the daemon's start-up sync report the items they write. When
//! the binary has said that stderr is a terminal ([`use_terminal`]), that is an
//! `indicatif` bar: items written of items to write, bulk operations, rate. Otherwise
//! (journald, containers, tests) it is an `info` line every few seconds and one at the
//! end of a long sync. While a bar is drawn, log lines written through [`LogWriter`]
//! clear it, print, and draw it again, so neither garbles the other.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

/// How often a long sync logs a plain progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often the bar redraws on its own (spinner, rate) between writes.
const TICK: Duration = Duration::from_millis(200);

/// Whether progress may be drawn as a bar: stderr is a terminal and logs are text.
static TERMINAL: AtomicBool = AtomicBool::new(false);
/// The bar being drawn, for [`LogWriter`].
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Lets progress be drawn as a bar from now on (the binary calls it when stderr is a
/// terminal and logs are text), or not.
pub fn use_terminal(on: bool) {
    TERMINAL.store(on, Ordering::Relaxed);
}

fn drawn() -> MutexGuard<'static, Option<ProgressBar>> {
    // A panic while holding the lock leaves at worst a stale bar handle.
    BAR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The progress of one sync: items taken for writing, items written, operations.
pub struct Progress {
    started: Option<Instant>,
    last_line: Option<Instant>,
    /// Items taken for writing (a failed write's items are taken again later).
    taken: usize,
    written: usize,
    operations: usize,
    bar: Option<ProgressBar>,
    /// Whether this sync may draw a bar: the daemon draws one for its start-up sync only.
    bar_allowed: bool,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// Progress drawn as a bar if [`use_terminal`] allowed it, else as log lines.
    pub fn new() -> Progress {
        Progress {
            started: None,
            last_line: None,
            taken: 0,
            written: 0,
            operations: 0,
            bar: None,
            bar_allowed: TERMINAL.load(Ordering::Relaxed),
        }
    }

    /// A batch of `items` is about to be written, with `still_queued` behind it.
    pub fn batch(&mut self, items: usize, still_queued: usize) {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        let last = *self.last_line.get_or_insert(now);
        self.taken += items;
        let total = self.taken + still_queued;
        if self.bar_allowed {
            let bar = self.bar.get_or_insert_with(|| start_bar(total));
            bar.set_length(total as u64);
            return;
        }
        if now.duration_since(last) < PROGRESS_EVERY {
            return;
        }
        self.last_line = Some(now);
        let elapsed = now.duration_since(started).as_secs_f64().max(0.001);
        let rate = self.taken as f64 / elapsed;
        let left = if rate > 0.0 {
            still_queued as f64 / rate
        } else {
            0.0
        };
        info!(
            done = self.taken,
            total,
            items_per_s = rate.round() as u64,
            eta_s = left.round() as u64,
            "syncing"
        );
    }

    /// The batch's write ended, with `items` written (0 if it failed).
    pub fn written(&mut self, items: usize) {
        if items == 0 {
            return;
        }
        self.written += items;
        self.operations += 1;
        if let (Some(bar), Some(started)) = (&self.bar, self.started) {
            bar.set_position(self.written as u64);
            bar.set_message(summary(self.operations, self.written, started.elapsed()));
        }
    }

    /// The queue is empty: the sync caught up. Ready for the next one, without a bar.
    pub fn finish(&mut self) {
        let Some(started) = self.started else {
            return;
        };
        if let Some(bar) = self.bar.take() {
            bar.set_message(summary(self.operations, self.written, started.elapsed()));
            bar.finish();
            *drawn() = None;
            // What follows goes below the bar, which stays as the sync's summary.
            if !bar.is_hidden() {
                eprintln!();
            }
        } else if started.elapsed() >= PROGRESS_EVERY {
            info!(
                items = self.taken,
                elapsed_s = started.elapsed().as_secs(),
                "sync caught up"
            );
        }
        *self = Progress::new();
        self.bar_allowed = false;
    }
}

impl Drop for Progress {
    /// A sync stopped by an error leaves its bar where it was, and log lines go on below.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
            *drawn() = None;
        }
    }
}

fn start_bar(total: usize) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{spinner} syncing [{bar:30}] {pos}/{len} items, {msg} ({elapsed})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(style);
    bar.set_message(summary(0, 0, Duration::ZERO));
    bar.enable_steady_tick(TICK);
    *drawn() = Some(bar.clone());
    bar
}

/// "3 bulk operations, 1250 items/s".
fn summary(operations: usize, written: usize, elapsed: Duration) -> String {
    let rate = written as f64 / elapsed.as_secs_f64().max(0.001);
    let plural = if operations == 1 { "" } else { "s" };
    format!(
        "{operations} bulk operation{plural}, {} items/s",
        rate.round() as u64
    )
}

/// Where log lines go: stderr, around the bar when one is drawn.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

impl Write for LogWriter {
    /// Writes the whole line (the formatter hands over one event at a time).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = drawn().clone();
        write_around(bar.as_ref(), buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Writes `buf` to stderr, the bar (if any) cleared around it. stderr is locked inside
/// `suspend`, which holds the bar's state: the bar's ticker takes the two in that order
/// too. Locked the other way round, a log line and a tick could each hold one and wait
/// for the other, for ever.
fn write_around(bar: Option<&ProgressBar>, buf: &[u8]) -> std::io::Result<()> {
    let write = || std::io::stderr().lock().write_all(buf);
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While the bar's state is held (as its ticker holds it to draw, then locking stderr),
    /// a log line must not hold stderr waiting for the bar: the ticker would wait on it.
    #[test]
    fn a_log_line_waits_for_the_bar_without_holding_stderr() {
        let bar = ProgressBar::with_draw_target(Some(10), ProgressDrawTarget::hidden());
        let stderr_free = bar.suspend(|| {
            // The bar's state is held here, as during a tick.
            let logger = std::thread::spawn({
                let bar = bar.clone();
                move || write_around(Some(&bar), b"")
            });
            std::thread::sleep(Duration::from_millis(200)); // the line waits for the bar
            let (sent, got) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _stderr = std::io::stderr().lock();
                let _ = sent.send(());
            });
            let free = got.recv_timeout(Duration::from_secs(2)).is_ok();
            (free, logger)
        });
        let (free, logger) = stderr_free;
        assert!(logger.join().is_ok_and(|written| written.is_ok()));
        assert!(free, "a log line held stderr while it waited for the bar");
    }

    #[test]
    fn summary_counts_operations_and_rate() {
        assert_eq!(
            summary(1, 1000, Duration::from_millis(500)),
            "1 bulk operation, 2000 items/s"
        );
        assert_eq!(
            summary(10, 10_000, Duration::from_secs(8)),
            "10 bulk operations, 1250 items/s"
        );
    }

    #[test]
    fn without_a_terminal_no_bar_is_drawn_and_the_counts_add_up() {
        let mut progress = Progress::new();
        progress.bar_allowed = false;
        progress.batch(1000, 9000);
        progress.written(1000);
        progress.batch(1000, 8000);
        progress.written(0);
        assert!(progress.bar.is_none());
        assert_eq!(
            (progress.taken, progress.written, progress.operations),
            (2000, 1000, 1)
        );
        progress.finish();
        assert_eq!((progress.taken, progress.started), (0, None));
        assert!(!progress.bar_allowed);
    }

    #[test]
    fn a_bar_follows_what_is_written_and_only_the_first_sync_gets_one() {
        let mut progress = Progress::new();
        progress.bar_allowed = true;
        progress.finish();
        assert!(
            progress.bar_allowed,
            "nothing synced yet: the bar is still allowed"
        );
        progress.batch(1000, 9000);
        progress.written(1000);
        let bar = progress.bar.clone().expect("a bar");
        assert_eq!((bar.position(), bar.length()), (1000, Some(10_000)));
        progress.batch(1000, 8000);
        progress.written(1000);
        assert_eq!((bar.position(), bar.length()), (2000, Some(10_000)));
        assert!(
            bar.message().starts_with("2 bulk operations, "),
            "{}",
            bar.message()
        );
        progress.finish();
        assert!(bar.is_finished());
        assert!(drawn().is_none());
        assert!(!progress.bar_allowed, "later syncs log lines");
    }
}
