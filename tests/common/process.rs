//! The agent's binary as a process: spawning `run`, running the CLI, watching pids.

use std::path::Path;
use std::process::Stdio;

/// The agent binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_asset-agent");

/// The agent binary with an empty environment but `PATH` and `ASSET_AGENT_LOG=level`, its
/// stderr to `log`, stdout discarded, killed when dropped.
pub fn command(level: &str, log: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ASSET_AGENT_LOG", level)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    c
}

/// `asset-agent run --config config`, logging at `level` to `log` (see [`command`]).
pub fn spawn_run(config: &Path, level: &str, log: &Path) -> tokio::process::Child {
    command(level, log)
        .args(["run", "--config"])
        .arg(config)
        .spawn()
        .unwrap()
}

/// Runs `cmd` to its end: (exit code, stdout, stderr).
pub fn output(cmd: &mut std::process::Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}
