//! Rotation hooks: what a sink does after it wrote a new token.
//!
//! A hook runs beside the sink's writer, never in the refresh loop's way: rotations that
//! arrive while a hook still runs are coalesced into one more run after it. A command hook
//! runs without a shell in its own process group, with stdin closed and its output logged
//! line by line (at most [`MAX_LOG_LINES`] lines of [`MAX_LINE`] bytes per run, anything
//! token-shaped replaced by its length: see [`redact`]). When the hook exits, at its time
//! limit, and when the agent stops, the whole group is killed, so whatever it started in
//! the background (a daemon) goes with it instead of piling up, one per rotation.
//!
//! A `pid_file` hook reads its file on a file-work thread ([`crate::filework`]), opened
//! without blocking and refused unless it is a regular file: a FIFO put in its place
//! cannot hold the agent.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::{Hook, Signal};

/// Output lines logged per hook run; the rest are counted.
pub const MAX_LOG_LINES: usize = 20;
/// Longest output line logged; longer ones are cut.
pub const MAX_LINE: usize = 512;

/// How one hook run ended, when not well.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the hook command did not finish within {}; its process group was killed", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("the hook command exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("could not start the hook command {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read PID file {}", path.display())]
    PidFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PID file {} is not trusted: {why}", path.display())]
    PidFileUnsafe {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("could not send SIG{} to pid {pid}", signal.name())]
    Kill {
        signal: Signal,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent is stopping")]
    Cancelled,
}

// === impl Failure ===

impl Failure {
    /// Whether it hit the time limit (counted apart in metrics).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOut(_))
    }
}

/// Runs `hook` once for the sink at `sink`.
///
/// # Errors
/// How it failed; see [`Failure`].
pub async fn run(hook: &Hook, sink: &Path, cancel: &CancellationToken) -> Result<(), Failure> {
    match hook {
        Hook::Command { argv, timeout } => command(argv, *timeout, sink, cancel).await,
        Hook::Unit { unit, signal } => {
            let argv = [
                "systemctl".to_owned(),
                "kill".to_owned(),
                "--kill-who=main".to_owned(),
                format!("--signal=SIG{}", signal.name()),
                "--".to_owned(),
                unit.clone(),
            ];
            command(&argv, Duration::from_secs(30), sink, cancel).await
        }
        Hook::PidFile { path, signal } => {
            let (path, signal) = (path.clone(), *signal);
            let lane = crate::filework::Lane::for_file(&path);
            let read = lane.run(move || signal_pid_file(&path, signal));
            tokio::select! {
                done = read => done.unwrap_or(Err(Failure::Cancelled)),
                () = cancel.cancelled() => Err(Failure::Cancelled),
            }
        }
    }
}

/// Sends `signal` to the process `path` names. The PID file must be a regular file (not a
/// link) owned by root or the agent's user and writable by nobody else (group included):
/// whoever can write it chooses which process the agent signals.
fn signal_pid_file(path: &Path, signal: Signal) -> Result<(), Failure> {
    use std::io::Read as _;
    let read_err = |source| Failure::PidFile {
        path: path.to_owned(),
        source,
    };
    let unsafe_file = |why: String| Failure::PidFileUnsafe {
        path: path.to_owned(),
        why,
    };
    let trust = crate::secure_path::Trust::process();
    let f =
        crate::secure_path::open_through_trusted_links("PID file", path, &trust).map_err(|e| {
            match e {
                crate::secure_path::Error::Inspect { source, .. } => read_err(source),
                crate::secure_path::Error::Symlink { .. } => {
                    unsafe_file("it is a symbolic link".to_owned())
                }
                other => unsafe_file(format!(
                    "{other}; fix sink.pid_file or the directory it names"
                )),
            }
        })?;
    let meta = f.metadata().map_err(read_err)?;
    let euid = rustix::process::geteuid().as_raw();
    if !meta.is_file() {
        return Err(unsafe_file("it is not a regular file".to_owned()));
    }
    // A second name for another process's PID file, made where its writer could not
    // otherwise reach (a hard link, when the kernel allows one).
    if meta.nlink() > 1 {
        return Err(unsafe_file(format!(
            "it has {} names (hard links); point sink.pid_file at a PID file with one",
            meta.nlink()
        )));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(unsafe_file(format!(
            "it belongs to uid {}, neither root nor the agent's user",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_file(format!(
            "others can write it (mode {:04o}) and so choose the process the agent signals; fix it with: chmod go-w {}",
            meta.mode() & 0o7777,
            path.display()
        )));
    }
    let mut text = String::new();
    f.take(64).read_to_string(&mut text).map_err(read_err)?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| unsafe_file(format!("it does not hold a process id ({:?})", text.trim())))?;
    let sig = rustix::process::Signal::from_named_raw(signal.number())
        .ok_or_else(|| unsafe_file("unsupported signal".to_owned()))?;
    let target = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| unsafe_file(format!("{pid} is not a process id")))?;
    rustix::process::kill_process(target, sig).map_err(|e| Failure::Kill {
        signal,
        pid,
        source: e.into(),
    })
}

/// Runs `argv` in its own process group with `ASSET_AGENT_SINK` set to the sink's path,
/// killing the group at `timeout` (or when the agent stops).
async fn command(
    argv: &[String],
    timeout: Duration,
    sink: &Path,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut child = Command::new(program)
        .args(args)
        .env("ASSET_AGENT_SINK", sink)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Failure::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = child.id();
    let out = child.stdout.take();
    let err = child.stderr.take();
    let logged = async {
        tokio::join!(
            log_lines(out, program, "stdout"),
            log_lines(err, program, "stderr")
        );
    };
    // When the hook itself exits, what it left running in its group goes too (that also
    // closes the output pipes a background child inherited, so the logging ends).
    let waited = async {
        let status = child.wait().await;
        kill_group(pid);
        status
    };
    let finished = async { tokio::join!(waited, logged).0 };
    let outcome = tokio::select! {
        status = finished => Some(status),
        () = tokio::time::sleep(timeout) => None,
        () = cancel.cancelled() => None,
    };
    match outcome {
        Some(Ok(status)) if status.success() => Ok(()),
        Some(Ok(status)) => Err(Failure::Exit(status)),
        Some(Err(source)) => Err(Failure::Spawn {
            program: program.clone(),
            source,
        }),
        None => {
            kill_group(pid);
            let _ = child.wait().await;
            if cancel.is_cancelled() {
                Err(Failure::Cancelled)
            } else {
                Err(Failure::TimedOut(timeout))
            }
        }
    }
}

/// Kills the process group a hook ran in. The group id is the hook's pid
/// (`process_group(0)`): this reaches whatever the hook started too, unless it left the
/// group on purpose (setsid).
fn kill_group(pid: Option<u32>) {
    if let Some(pgid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
}

/// Shortest run of token characters [`redact`] hides.
const TOKEN_MIN: usize = 24;

/// `line` with anything token-shaped replaced by `[redacted: N characters]`: a run of at
/// least [`TOKEN_MIN`] characters of the alphabets tokens use (base64url, `.`, `!`, `+`,
/// `~`) that mixes letters and digits. That covers a JWT (`xxx.yyy.zzz`), a Salesforce
/// access token (`00D…!AQ…`) and a refresh token, whatever a hook prints: the token file
/// it was handed, an environment dump, a curl trace. A path (`/`) or prose is left as is.
pub fn redact(line: &str) -> std::borrow::Cow<'_, str> {
    let is_token_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '!' | '+' | '~');
    let secret = |run: &str| {
        run.len() >= TOKEN_MIN
            && run.bytes().any(|b| b.is_ascii_digit())
            && run.bytes().any(|b| b.is_ascii_alphabetic())
    };
    let mut out = String::new();
    let mut last = 0;
    let mut start = None;
    for (i, c) in line
        .char_indices()
        .chain(std::iter::once((line.len(), ' ')))
    {
        match (is_token_char(c) && i < line.len(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if secret(&line[s..i]) {
                    out.push_str(&line[last..s]);
                    out.push_str(&format!("[redacted: {} characters]", i - s));
                    last = i;
                }
                start = None;
            }
            _ => {}
        }
    }
    if last == 0 {
        return std::borrow::Cow::Borrowed(line);
    }
    out.push_str(&line[last..]);
    std::borrow::Cow::Owned(out)
}

/// Logs what `stream` says, line by line, within the caps, tokens redacted.
async fn log_lines(stream: Option<impl AsyncRead + Unpin>, program: &str, name: &str) {
    let Some(mut stream) = stream else { return };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut logged = 0usize;
    let mut dropped = 0usize;
    let mut emit = |line: &[u8]| {
        if logged < MAX_LOG_LINES {
            let text = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
            tracing::info!(hook = program, stream = name, "{}", redact(text.trim_end()));
            logged += 1;
        } else {
            dropped += 1;
        }
    };
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                emit(&buf);
                buf.clear();
            } else if buf.len() < MAX_LINE {
                buf.push(b);
            }
        }
    }
    if !buf.is_empty() {
        emit(&buf);
    }
    if dropped > 0 {
        tracing::info!(
            hook = program,
            stream = name,
            "{dropped} more lines not logged"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A child process killed however the test ends, so a failure leaves none behind.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_pid_file_its_group_or_others_can_write_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        let target = Reaped(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap(),
        );
        std::fs::write(&pid_file, target.0.id().to_string()).unwrap();
        for mode in [0o664, 0o646, 0o620] {
            std::fs::set_permissions(&pid_file, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = signal_pid_file(&pid_file, Signal::Cont).unwrap_err();
            assert!(
                matches!(err, Failure::PidFileUnsafe { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod go-w"), "{err}");
        }
        std::fs::set_permissions(&pid_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        signal_pid_file(&pid_file, Signal::Cont).unwrap();
    }

    /// A root-owned PID file reached through a symlink in a directory another user owns is
    /// not followed: that user could re-point the link at any root process's PID file. The
    /// application's own PID directory may still be the application's (the README's
    /// `/run/nodered/nodered.pid`) when nothing on the way is a link it controls; a second
    /// name (hard link) is refused too. Root only (chown).
    #[test]
    fn a_pid_file_through_another_users_link_is_not_followed() {
        testkit::require!(
            testkit::ROOT,
            testkit::is_root(),
            "root, to chown: run the tests as root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root_run = base.join("root-run");
        std::fs::create_dir(&root_run).unwrap();
        let app = base.join("app");
        std::fs::create_dir(&app).unwrap();
        std::os::unix::fs::chown(&app, Some(1001), Some(1001)).unwrap();
        // A "root process" and its root-owned PID file.
        let target = Reaped(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap(),
        );
        std::fs::write(root_run.join("daemon.pid"), target.0.id().to_string()).unwrap();
        std::os::unix::fs::symlink(&root_run, app.join("run")).unwrap();
        let err = signal_pid_file(&app.join("run/daemon.pid"), Signal::Cont).unwrap_err();
        assert!(matches!(err, Failure::PidFileUnsafe { .. }), "{err}");
        assert!(
            err.to_string().contains(&app.display().to_string()),
            "{err}"
        );
        // In the application's own directory, with no link on the way: signalled.
        std::fs::write(app.join("app.pid"), target.0.id().to_string()).unwrap();
        signal_pid_file(&app.join("app.pid"), Signal::Cont).unwrap();
        // A hard link to the root process's PID file is a second name: refused.
        std::fs::hard_link(root_run.join("daemon.pid"), app.join("linked.pid")).unwrap();
        let err = signal_pid_file(&app.join("linked.pid"), Signal::Cont).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
    }

    /// A FIFO put where the PID file was (its directory's owner can do that) is refused at
    /// once; a blocking open would wait for a writer for ever.
    #[test]
    fn a_fifo_at_the_pid_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&pid_file)
                .status()
                .unwrap()
                .success()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pid_file.clone();
        // On a thread of its own, so a hang fails the test instead of stopping it.
        std::thread::spawn(move || {
            let _ = tx.send(signal_pid_file(&p, Signal::Cont));
        });
        let outcome = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reading a FIFO PID file hung");
        let err = outcome.unwrap_err();
        assert!(matches!(err, Failure::PidFileUnsafe { .. }), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn token_shaped_output_is_redacted() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIwMDVYWDAwMDAwMDAwMDEifQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU";
        let line = format!("token={jwt} written to /run/app/token.jwt");
        let out = redact(&line);
        assert!(!out.contains("eyJ"), "{out}");
        assert!(
            out.contains(&format!("[redacted: {} characters]", jwt.len())),
            "{out}"
        );
        assert!(out.ends_with(" written to /run/app/token.jwt"), "{out}");
        let access = "00DXX0000000001!AQ4AQFtdQ3F9pJzFQ8vS8g7mKqDqHkM6.bEXAMPLE";
        assert!(!redact(access).contains("AQ4AQ"));
        let refresh = "5Aep861TSESvWeug_ztpnAk6BGQxRdovMLhHso6aVjwnQYV9ZF0V3F5JcLm1P3pnWv8L2lD8Jv";
        assert!(!redact(&format!("[{refresh}]")).contains("5Aep"));
        for plain in [
            "reloading the configuration of /etc/app/config.yaml",
            "pid 1234 got SIGHUP after 0.5 s",
            "",
        ] {
            assert_eq!(redact(plain), plain);
        }
    }
}
