//! `asset-agent exec [--env NAME] [--file PATH] -- CMD ARGS...`: run a program with the
//! current asset token, as the calling user, through the socket (it needs no privileges
//! beyond reading tokens).
//!
//! The token comes from `GET /v1/token/watch`, so a rotation is seen as it happens. It is
//! given to the child in an environment variable and/or a private file (0600, the
//! caller's, written atomically). On rotation the file is rewritten and, as
//! `--on-rotation` says, the child is sent a signal, restarted (SIGTERM, then SIGKILL after
//! [`STOP_GRACE`]) with the new token, or left alone. When no valid token is held the file
//! is removed (as a sink's is), [`EXPIRY_MARGIN`] before the old token's expiry at the
//! latest. If the agent goes away, exec reconnects with backoff and the child keeps
//! running. SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to the
//! child; exec exits with the child's status (128 + N when a signal N ended it) and removes
//! the file. No failure leaves the file behind: one that cannot be rewritten on rotation is
//! removed (and the command keeps running); a command that cannot be started (or
//! restarted) ends exec with an error after the file is removed.
//!
//! **When exec itself is killed** (SIGKILL, an OOM kill), a small guard process cleans up:
//! exec starts its own binary as `asset-agent __exec-guard PATH` (in a process group of its
//! own, so a signal to exec's group spares it) with a pipe on its stdin whose only writer
//! is exec, and tells it the child's pid and the file's identity (device, inode) as they
//! change. When the pipe closes without a word from exec (exec is gone, however it died),
//! the guard removes the file if it is still the one exec wrote, sends the child SIGTERM
//! and, after [`STOP_GRACE`], SIGKILL. What remains: killing the guard and exec together
//! (a SIGKILL to both, a whole cgroup killed at once) leaves the file until the token in it
//! expires and the next exec with the same `--file` replaces it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use hyper::StatusCode;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};

use super::Error;
use super::client::{refused, socket};
use crate::cli::{ExecArgs, OnRotation};
use crate::client::{self, Lines};
use crate::config::Signal;
use crate::sink::EXPIRY_MARGIN;
use wire::Secret;

/// The environment variable the token goes into when neither `--env` nor `--file` is given.
pub const DEFAULT_ENV: &str = "ASSET_TOKEN";
/// How long a child asked to stop (restart, or exec's own end) gets before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest wait between reconnection attempts while the agent is away.
const MAX_RECONNECT: Duration = Duration::from_secs(30);

/// One line of the watch stream.
#[derive(serde::Deserialize)]
struct Event {
    token: Option<Secret>,
    expires_in: Option<u64>,
    reason: Option<String>,
}

/// What exec holds: the token and when to stop offering it.
struct Held {
    jwt: Secret,
    until: Instant,
}

/// Runs the command; see the module docs.
///
/// # Errors
/// [`Error::Exit`] with the child's status once it ends; any failure before it started.
pub async fn run(config: Option<PathBuf>, args: ExecArgs) -> Result<(), Error> {
    let socket = socket(config, args.socket)?;
    let env = match (&args.env, &args.file) {
        (None, None) => Some(DEFAULT_ENV.to_owned()),
        (env, _) => env.clone(),
    };
    let on_rotation = args.on_rotation.unwrap_or(if env.is_some() {
        OnRotation::Restart
    } else {
        OnRotation::None
    });
    let rotation_signal = Signal::parse(&args.signal).ok_or_else(|| {
        Error::Failed(format!(
            "--signal {:?} is not a signal this command sends (HUP, USR1, USR2, TERM, INT, QUIT, WINCH, ALRM, CONT)",
            args.signal
        ))
    })?;
    let spec = Spec {
        argv: args.command,
        env,
        file: args.file,
        guard: Guard::none(),
    };

    // The first token, waited for at most `--wait`.
    let deadline = Instant::now() + args.wait;
    let mut lines = open(&socket).await?;
    let mut held = loop {
        let next = tokio::time::timeout_at(deadline, lines.next_line()).await;
        let line = match next {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                return Err(Error::Failed(format!(
                    "the agent at {} closed the stream before a token came",
                    socket.display()
                )));
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(Error::Failed(format!(
                    "no asset token within {} (--wait); see asset-agent status",
                    humantime::format_duration(args.wait)
                )));
            }
        };
        let event = parse(&line)?;
        match held_from(&event) {
            Some(h) => break h,
            None => tracing::warn!(
                reason = event.reason.as_deref().unwrap_or("-"),
                "waiting for an asset token"
            ),
        }
    };
    // From here on no way out leaves the token file behind or the command unsupervised.
    let mut signals = Signals::new()?;
    let guard = Guard::start(spec.file.as_deref())?;
    let spec = Spec { guard, ..spec };
    spec.write_file(held.jwt.expose())?;
    let mut child = spec
        .spawn(held.jwt.expose())
        .inspect_err(|_| spec.remove_file())?;
    let mut lines = Some(lines);
    let mut holding = true;
    let mut reconnect_at: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);

    loop {
        let expiry = holding.then_some(held.until);
        tokio::select! {
            status = child.wait() => {
                spec.remove_file();
                spec.guard.tell("done");
                let status = status.map_err(|e| Error::Failed(format!("could not wait for the command: {e}")))?;
                return Err(Error::Exit(exit_code(status)));
            }
            Some(sig) = signals.recv() => forward(&child, sig),
            line = next_line(&mut lines) => match line {
                Ok(Some(line)) => {
                    backoff = Duration::from_secs(1);
                    let event = match parse(&line) {
                        Ok(event) => event,
                        Err(e) => {
                            // Not what the agent sends: read the stream afresh.
                            tracing::warn!(error = %crate::error::chain(&e), "reconnecting");
                            lines = None;
                            reconnect_at = Some(Instant::now() + backoff);
                            continue;
                        }
                    };
                    match held_from(&event) {
                        Some(new) if holding && new.jwt.expose() == held.jwt.expose() => held = new,
                        Some(new) => {
                            held = new;
                            holding = true;
                            if let Err(e) = spec.write_file(held.jwt.expose()) {
                                // The file would keep the old token past its expiry (the
                                // timer follows the new one): it goes; the command stays.
                                tracing::warn!(error = %crate::error::chain(&e),
                                    "could not rewrite the token file; it is removed until the next rotation");
                                spec.remove_file();
                            }
                            match on_rotation {
                                OnRotation::Signal => forward(&child, rotation_signal.number()),
                                OnRotation::Restart => {
                                    stop(&mut child).await;
                                    child = spec
                                        .spawn(held.jwt.expose())
                                        .inspect_err(|_| {
                                            spec.remove_file();
                                            spec.guard.tell("done");
                                        })?;
                                }
                                OnRotation::None => {}
                            }
                        }
                        None => {
                            holding = false;
                            spec.remove_file();
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(socket = %socket.display(), "lost the agent's token stream; reconnecting");
                    lines = None;
                    reconnect_at = Some(Instant::now() + backoff);
                }
            },
            () = sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                holding = false;
                spec.remove_file();
            }
            () = sleep_until(reconnect_at.unwrap_or_else(Instant::now)), if reconnect_at.is_some() => {
                reconnect_at = None;
                match open(&socket).await {
                    Ok(l) => lines = Some(l),
                    Err(e) => {
                        tracing::debug!(error = %crate::error::chain(&e), "agent not reachable yet");
                        backoff = (backoff * 2).min(MAX_RECONNECT);
                        reconnect_at = Some(Instant::now() + backoff);
                    }
                }
            }
        }
    }
}

/// The child's command line and where its token goes.
struct Spec {
    argv: Vec<OsString>,
    env: Option<String>,
    file: Option<PathBuf>,
    /// Cleans up if exec dies (see the module docs).
    guard: Guard,
}

// === impl Spec ===

impl Spec {
    fn spawn(&self, jwt: &str) -> Result<Child, Error> {
        let Some((program, args)) = self.argv.split_first() else {
            return Err(Error::Failed("no command given after --".to_owned()));
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(name) = &self.env {
            cmd.env(name, jwt);
        }
        let child = cmd.spawn().map_err(|e| {
            Error::Failed(format!(
                "could not start {}: {e}",
                Path::new(program).display()
            ))
        })?;
        if let Some(pid) = child.id() {
            self.guard.tell(&format!("child {pid}"));
        }
        Ok(child)
    }

    fn write_file(&self, jwt: &str) -> Result<(), Error> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        crate::fsutil::write_secret_atomic(path, jwt.as_bytes())
            .map_err(|e| Error::Failed(crate::error::chain(&e)))?;
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::MetadataExt as _;
            self.guard.tell(&format!("file {} {}", m.dev(), m.ino()));
        }
        Ok(())
    }

    fn remove_file(&self) {
        if let Some(path) = &self.file
            && let Err(e) = crate::fsutil::remove_synced(path)
        {
            tracing::warn!(error = %crate::error::chain(&e), "could not remove the token file");
        }
    }
}

/// exec's end of the pipe to its guard process (see the module docs); `None` without one.
struct Guard(Option<std::fs::File>);

/// The hidden command line of the guard process.
pub const GUARD_ARG: &str = "__exec-guard";

// === impl Guard ===

impl Guard {
    fn none() -> Self {
        Self(None)
    }

    /// Starts the guard for `file` (none: it only looks after the child).
    fn start(file: Option<&Path>) -> Result<Self, Error> {
        let (reader, writer) = std::io::pipe().map_err(|e| {
            Error::Failed(format!(
                "could not create a pipe for exec's guard process: {e}"
            ))
        })?;
        use std::os::unix::process::CommandExt as _;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg(GUARD_ARG);
        if let Some(f) = file {
            cmd.arg(f);
        }
        cmd.stdin(reader)
            .stdout(std::process::Stdio::null())
            .process_group(0);
        let guard = cmd.spawn().map_err(|e| {
            Error::Failed(format!(
                "could not start exec's guard process (/proc/self/exe {GUARD_ARG}): {e}"
            ))
        })?;
        // Reaped by nobody we wait for: it exits when the pipe closes, after exec.
        drop(guard);
        Ok(Self(Some(std::fs::File::from(std::os::fd::OwnedFd::from(
            writer,
        )))))
    }

    /// Sends the guard one line (a pipe write of a few bytes: it does not block).
    fn tell(&self, line: &str) {
        use std::io::Write as _;
        if let Some(mut pipe) = self.0.as_ref() {
            let _ = pipe.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// The guard process's whole life (`asset-agent __exec-guard [PATH]`, stdin a pipe from
/// exec): follow what exec says until the pipe closes; if exec did not say "done", remove
/// the file it wrote last and stop the child. Returns the exit code.
pub fn guard_main(file: Option<PathBuf>) -> u8 {
    use std::io::BufRead as _;
    use std::os::unix::fs::MetadataExt as _;
    let mut child: Option<(i32, std::os::fd::OwnedFd)> = None;
    let mut written: Option<(u64, u64)> = None;
    let mut done = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("done"), _, _) => done = true,
            (Some("child"), Some(pid), _) => {
                child = pid
                    .parse::<i32>()
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                    .and_then(|p| {
                        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                            .ok()
                            .map(|fd| (p.as_raw_nonzero().get(), fd))
                    });
            }
            (Some("file"), Some(dev), Some(ino)) => {
                written = dev.parse().ok().zip(ino.parse().ok());
            }
            _ => {}
        }
    }
    if done {
        return 0;
    }
    if let (Some(path), Some((dev, ino))) = (&file, written) {
        let same = std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.is_file() && m.dev() == dev && m.ino() == ino);
        if same {
            let _ = crate::fsutil::remove_synced(path);
        }
    }
    if let Some((pid, fd)) = child {
        let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::TERM);
        let gone = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        while !gone(pid) && waited < STOP_GRACE {
            // A process of its own with nothing else to do: no runtime to stall.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(step);
            waited += step;
        }
        if !gone(pid) {
            let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
        }
    }
    0
}

/// The signals forwarded to the child.
struct Signals(Vec<(i32, tokio::signal::unix::Signal)>);

// === impl Signals ===

impl Signals {
    fn new() -> Result<Self, Error> {
        let kinds = [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ];
        let mut all = Vec::new();
        for n in kinds {
            all.push((n, signal(SignalKind::from_raw(n)).map_err(Error::Signals)?));
        }
        Ok(Self(all))
    }

    /// The next signal received.
    async fn recv(&mut self) -> Option<i32> {
        let waits = self.0.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move { s.recv().await.map(|()| n) })
        });
        futures_select_all(waits).await
    }
}

/// The first of `futs` to finish (a tiny `select_all`; `futures` is not a dependency).
async fn futures_select_all<F>(futs: impl Iterator<Item = F>) -> Option<i32>
where
    F: std::future::Future<Output = Option<i32>> + Unpin,
{
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(|cx| {
        for f in &mut futs {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn open(socket: &Path) -> Result<Lines, Error> {
    let mut lines = client::watch(socket).await?;
    if lines.status != StatusCode::OK {
        let body = lines.next_line().await?.unwrap_or_default();
        let resp = client::Response {
            status: lines.status,
            headers: lines.headers.clone(),
            body,
        };
        return Err(refused(socket, &resp));
    }
    Ok(lines)
}

async fn next_line(lines: &mut Option<Lines>) -> Result<Option<bytes::Bytes>, client::Error> {
    match lines {
        Some(l) => l.next_line().await,
        None => std::future::pending().await,
    }
}

fn parse(line: &[u8]) -> Result<Event, Error> {
    serde_json::from_slice(line)
        .map_err(|e| Error::Failed(format!("unexpected line from the agent: {e}")))
}

fn held_from(e: &Event) -> Option<Held> {
    let jwt = e.token.clone()?;
    let left = Duration::from_secs(e.expires_in.unwrap_or(0));
    let until = (Instant::now() + left).checked_sub(EXPIRY_MARGIN)?;
    Some(Held { jwt, until })
}

fn forward(child: &Child, sig: i32) {
    let target = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let (Some(pid), Some(sig)) = (target, rustix::process::Signal::from_named_raw(sig)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]; waits for the child either way.
async fn stop(child: &mut Child) {
    forward(child, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// The shell's convention: the exit code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
