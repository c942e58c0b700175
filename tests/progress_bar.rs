//! Syncs of 10 000 decisions, run as the real binary: `once`, and the daemon's start-up
//! sync, with stderr on a pseudo-terminal draw a progress bar that moves; `cleanup` with
//! stderr on a pipe (journald, containers) logs the plain progress lines instead, and
//! draws nothing. All of them drain through the same progress code (src/progress.rs).

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cf_lists_emulator::Settings;
use common::bin::{command, output, text};
use common::lapi::NewDecision;
use common::world::{eventually, World};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The binary running with stdin, stdout and stderr on a pseudo-terminal of its own.
struct InTerminal {
    pid: Pid,
    /// What it has written so far.
    seen: Arc<Mutex<Vec<u8>>>,
    /// Its exit success and everything it wrote to the terminal, once it has exited.
    screen: tokio::task::JoinHandle<(bool, String)>,
}

impl InTerminal {
    /// Starts `command` on a new pseudo-terminal of 120 columns.
    fn start(mut command: Command) -> InTerminal {
        let size = Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).expect("a pseudo-terminal");
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
        command
            .env("TERM", "xterm")
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave));
        let mut child = command.spawn().expect("the binary runs");
        // Only the child holds the terminal now: reading ends when it exits.
        drop(command);
        drop(pty.slave);
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let screen = tokio::task::spawn_blocking({
            let seen = seen.clone();
            move || {
                let mut master = std::fs::File::from(pty.master);
                let mut chunk = [0u8; 8192];
                // Linux answers EIO once the last holder of the terminal has closed it.
                while let Ok(n @ 1..) = master.read(&mut chunk) {
                    seen.lock()
                        .expect("not poisoned")
                        .extend_from_slice(&chunk[..n]);
                }
                let status = child.wait().expect("the binary exits");
                let screen =
                    String::from_utf8_lossy(&seen.lock().expect("not poisoned")).into_owned();
                (status.success(), screen)
            }
        });
        InTerminal { pid, seen, screen }
    }

    /// Waits until it has written `text`; false if it has not within `timeout`.
    async fn shows(&self, text: &str, timeout: Duration) -> bool {
        eventually(timeout, || {
            let seen = self.seen.lock().expect("not poisoned");
            std::future::ready(String::from_utf8_lossy(&seen).contains(text))
        })
        .await
    }

    /// Waits for it to exit.
    async fn screen(self) -> (bool, String) {
        self.screen.await.expect("no panic")
    }
}

/// Runs `command` on a pseudo-terminal to its end.
async fn in_terminal(command: Command) -> (bool, String) {
    InTerminal::start(command).screen().await
}

/// The counts the bar showed, in order, each once: "1000/10000 items" → 1000.
fn bar_counts(screen: &str) -> Vec<u64> {
    let mut counts: Vec<u64> = Vec::new();
    for (at, _) in screen.match_indices("/10000 items") {
        let digits: String = screen[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if let Ok(n) = digits.parse() {
            if counts.last() != Some(&n) {
                counts.push(n);
            }
        }
    }
    counts
}

/// Asserts the bar was drawn again and again with a count growing to 10 000.
fn assert_moving_bar(what: &str, screen: &str) {
    let counts = bar_counts(screen);
    assert!(
        counts.len() >= 4,
        "{what}: the bar showed {counts:?}, not several growing counts:\n{screen}"
    );
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{what}: {counts:?}");
    assert_eq!(counts.last(), Some(&10_000), "{what}: {counts:?}");
    assert!(screen.contains("bulk operations, "), "{what}:\n{screen}");
    // Redrawn in place: the cursor goes back over the bar's line.
    assert!(
        screen.contains('\r') || screen.contains("\u{1b}["),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bar_moves_on_a_terminal_and_plain_lines_are_logged_on_a_pipe() {
    // Ten operations of 1 000 items (batches kept from growing) of 0.6–0.8 s each: over
    // 6 s, long enough for the bar to move and for the plain lines, logged every 5 s, to
    // show.
    let settings = Settings {
        op_latency: (Duration::from_millis(600), Duration::from_millis(800)),
        ..Settings::default()
    };
    let mut world = World::with_settings("t-progress", settings).await;
    world.sync_extra =
        "reconcile_interval = \"1h\"\nshutdown_grace = \"5s\"\nmax_batch = 1000\n".into();
    let decisions: Vec<NewDecision> = (0..10_000u32)
        .map(|i| NewDecision::ban_ip(&format!("100.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)))
        .collect();
    world.lapi.add_decisions(&decisions).await;
    let config = world.config_file();
    let config = config.to_str().expect("UTF-8 path");

    let (ok, screen) = in_terminal(command(&["-c", config, "once"])).await;
    assert!(ok, "once in a terminal:\n{screen}");
    assert_moving_bar("once", &screen);
    assert!(
        screen.contains("in step: the list holds the 10000 items"),
        "{screen}"
    );
    assert!(
        !screen.contains("syncing done="),
        "no plain lines under the bar:\n{screen}"
    );
    // The finished bar stays as a summary; the next log line starts below it.
    let last = screen.rfind("/10000 items").expect("a bar");
    let after = &screen[last..];
    let (newline, next_log) = (after.find('\n'), after.find("INFO"));
    assert!(newline.is_some() && newline < next_log, "{after}");
    assert_eq!(world.cf.items(&world.list_id).len(), 10_000);

    // Not a terminal: the plain lines, and nothing drawn.
    let mut piped = command(&["-c", config, "cleanup"]);
    piped.stdin(Stdio::null());
    let out = output(piped).await;
    let log = text(&out);
    assert!(out.status.success(), "cleanup on a pipe:\n{log}");
    assert!(log.contains("removed 10000 items"), "{log}");
    assert!(log.contains("syncing done="), "a progress line:\n{log}");
    assert!(log.contains("total=10000"), "{log}");
    assert!(log.contains("sync caught up items=10000"), "{log}");
    assert!(bar_counts(&log).is_empty(), "no bar on a pipe:\n{log}");
    assert!(
        !log.contains('\r') && !log.contains("\u{1b}["),
        "no terminal codes:\n{log}"
    );
    assert_eq!(world.cf.items(&world.list_id).len(), 0);

    // The daemon's start-up sync, in a terminal: a bar too, until it has caught up.
    let daemon = InTerminal::start(command(&["-c", config, "run"]));
    // The bar reaches its end once the last operation is confirmed.
    let synced = daemon
        .shows("10000/10000 items", Duration::from_secs(60))
        .await;
    kill(daemon.pid, Signal::SIGTERM).expect("SIGTERM");
    let (ok, screen) = daemon.screen().await;
    assert!(synced && ok, "run in a terminal:\n{screen}");
    assert_moving_bar("run", &screen);
    assert_eq!(world.cf.items(&world.list_id).len(), 10_000);
    assert!(screen.contains("shutdown requested"), "{screen}");
    world.assert_well_behaved();
}
