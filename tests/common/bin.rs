//! Running the real binary, as systemd or an operator would.

use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_crowdsec-cloudflare-iplist-bouncer");

/// The binary with `args`, without secrets from the test's environment.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("CROWDSEC_API_KEY")
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env("RUST_LOG", "info");
    command
}

/// Runs a command to its end off the async runtime.
pub async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("no panic")
}

/// Runs the binary with `args` to its end.
pub async fn run(args: &[&str]) -> Output {
    output(command(args)).await
}

/// Stdout then stderr, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
