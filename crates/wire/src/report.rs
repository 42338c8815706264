//! How the workspace's binaries (the agent, the emulator, the demo) report a failure (the
//! error on one line, then each cause on its own, once) and wait to be stopped.

use std::fmt::Write as _;

/// `error: <err>` followed by one `  caused by: <cause>` line per source, newline-terminated.
pub fn chain_lines(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("error: {err}\n");
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = writeln!(out, "  caused by: {cause}");
        source = cause.source();
    }
    out
}

/// Waits for SIGTERM or SIGINT and names which came.
///
/// # Errors
/// When the handlers cannot be installed.
pub async fn stop_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Prints [`chain_lines`] to stderr.
pub fn eprint_chain(err: &(dyn std::error::Error + 'static)) {
    eprint!("{}", chain_lines(err));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("could not start")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_on_its_own_line() {
        let err = Outer(std::io::Error::other("disk full"));
        assert_eq!(
            chain_lines(&err),
            "error: could not start\n  caused by: disk full\n"
        );
    }
}
