//! File sinks: the current asset token kept in files, for software that cannot use the
//! socket (a cron job, a vendor binary, a container with a bind mount).
//!
//! Each `[[sink]]` is one supervised task ([`Writer::run`]) that follows a published token
//! stream (a [`Current`] channel: the agent's own token today; any identity's stream could
//! feed one) and keeps its file in step:
//!
//! - **A new token** is written atomically (temporary file, fsync, rename in the same
//!   directory, directory fsync) with the sink's group and mode, so a reader sees the old
//!   token or the new one, never a torn mix. Then the rotation hook, if any, runs.
//! - **No valid token** (none yet, or the held one is about to expire with no replacement):
//!   the file is **removed**, [`EXPIRY_MARGIN`] before the token's expiry. A file that
//!   exists therefore always holds a token that is still valid; a reader that finds none
//!   retries later. The agent also removes its sink files when it stops (nothing would be
//!   left to remove them at expiry) and any stale one when it starts.
//! - **Off the runtime thread:** every write, removal and sweep runs on the file-work lane
//!   of the sink's directory ([`crate::filework`]); the loop awaits it, so a filesystem
//!   that stops answering holds this sink only (and the agent's stop for [`STOP_WAIT`] at
//!   most).
//! - **Status** ([`Status::present`]) is what the file holds: the last write or removal
//!   worked and its token has not expired. A file that cannot be removed is emptied if
//!   possible.
//! - **Demand:** a sink holds the refresh loop's demand ([`Handle::hold`]) for as long as it
//!   runs, so with `token.refresh = "on_demand"` an identity that has sinks is refreshed
//!   ahead of expiry exactly as under `eager`.
//!
//! [`Handle::hold`]: crate::token::refresher::Handle::hold

mod hook;
mod path;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

pub use hook::{Failure, MAX_LINE, MAX_LOG_LINES};
pub use path::{PathError, check as check_path};

use crate::config::{self, Group, Hook, SinkFormat};
use crate::error::chain;
use crate::filework::Lane;
use crate::metrics::{Collect, Writer as MetricsWriter};
use crate::token::refresher::DemandGuard;
use crate::token::{AssetToken, Current};

/// The file is removed this long before its token expires when no fresh token has
/// replaced it, so a reader never picks up a token in its last moment.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(1);
/// After a failed write, the next try comes this much later.
pub const RETRY_WRITE: Duration = Duration::from_secs(5);
/// At stop, how long the file's removal is waited for before the agent stops anyway.
pub const STOP_WAIT: Duration = Duration::from_secs(2);

/// A sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sink {} is refused", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: PathError,
    },
    #[error("sink {}: group {name:?} (sink.group) is not in /etc/group: create it or give a gid", path.display())]
    UnknownGroup { path: PathBuf, name: String },
    #[error("sink {}: the agent's user is not a member of group {gid} (sink.group), so it cannot give the file that group: add it (usermod -aG <group> <agent user>, or SupplementaryGroups= in a unit drop-in) or run as root", path.display())]
    NotMember { path: PathBuf, gid: u32 },
}

/// Whether users other than the agent's may create names in the directory holding
/// `path` (group- or other-writable, sticky or not).
fn shared_dir(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o022 != 0)
}

/// What one sink has done, for status and metrics.
#[derive(Debug)]
pub struct Stats {
    pub path: PathBuf,
    pub format: SinkFormat,
    /// `pid_file`, `unit` or `command`, when a hook is configured.
    pub hook: Option<&'static str>,
    /// Whether the last write or removal worked.
    ok: AtomicBool,
    /// When the token the file holds expires (`None`: no file, or an empty one).
    holds_until: Mutex<Option<Instant>>,
    writes: AtomicU64,
    write_failures: AtomicU64,
    removals: AtomicU64,
    hook_ok: AtomicU64,
    hook_failed: AtomicU64,
    hook_timeouts: AtomicU64,
    last_write: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    last_failure: Mutex<Option<Instant>>,
    last_hook_error: Mutex<Option<String>>,
}

/// A per-sink metrics family: name, type, help, and the value from a status entry.
type Family = (&'static str, &'static str, &'static str, fn(&Status) -> u64);

/// Every sink's [`Stats`]: status and `/metrics` read them.
#[derive(Debug, Default)]
pub struct Sinks(pub Vec<Arc<Stats>>);

/// One sink in `GET /v1/status`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub path: String,
    pub format: String,
    /// Whether the file holds a valid token now: the last write (or removal) worked and
    /// the token it left has not expired.
    pub present: bool,
    /// Seconds until the token the file holds expires (0: expired, still there because
    /// it could not be removed); absent when there is no file.
    pub expires_in_s: Option<u64>,
    pub writes: u64,
    pub write_failures: u64,
    /// Times the file was removed because no valid token was held.
    pub removals: u64,
    /// Seconds since the last successful write.
    pub last_write_s: Option<u64>,
    pub last_error: Option<String>,
    /// Seconds since the last failed write or removal (kept after a later success).
    pub last_error_s: Option<u64>,
    /// `pid_file`, `unit` or `command`; absent without a hook.
    pub hook: Option<String>,
    pub hook_runs_ok: u64,
    /// Failed runs, time-outs included.
    pub hook_failures: u64,
    pub hook_timeouts: u64,
    pub last_hook_error: Option<String>,
}

/// One sink's task; see the module docs.
pub struct Writer {
    files: Arc<Files>,
    lane: Lane,
}

/// What a sink's file work needs, shared with the file-work thread.
struct Files {
    sink: config::Sink,
    gid: Option<u32>,
    device_id: String,
    stats: Arc<Stats>,
}

// === impl Writer ===

impl Writer {
    /// Checks the sink's path and group for a process with effective uid `euid`.
    ///
    /// # Errors
    /// See [`Error`]: each names the path and the fix.
    pub fn new(sink: config::Sink, device_id: String) -> Result<Self, Error> {
        let euid = rustix::process::geteuid().as_raw();
        match check_path(&sink.path, &[euid, 0]) {
            Ok(()) => {}
            // Something at the file's own name (a link, a FIFO, another user's file) in a
            // directory others may write (a sticky shared one, or the sink's group's) is
            // what they can plant at any time, and the agent removes its file at stop, so
            // the name is free at every start. Each write refuses it and status shows
            // that; it must not keep the agent, and every other identity, from starting.
            // In a directory only the agent's user writes, it is a configuration mistake.
            Err(
                source @ (PathError::Symlink { .. }
                | PathError::NotFile { .. }
                | PathError::Owner { .. }),
            ) if shared_dir(&sink.path) => {
                let error = chain(&source);
                tracing::warn!(sink = %sink.path.display(), %error, "the sink's file is refused until it is fixed");
            }
            Err(source) => {
                return Err(Error::Path {
                    path: sink.path.clone(),
                    source,
                });
            }
        }
        // The PID file belongs to the application, whose user may change it and the
        // links on its way at any time: the hook checks all of it each time it runs and
        // signals nothing it refuses. At start a refusal is only reported (`check` makes
        // it an error), so that user cannot keep the agent from starting.
        if let Some(Hook::PidFile { path, .. }) = &sink.hook {
            match crate::secure_path::open_through_trusted_links(
                "PID file",
                path,
                &crate::secure_path::Trust::process(),
            ) {
                Ok(_) | Err(crate::secure_path::Error::Inspect { .. }) => {}
                Err(source) => {
                    let error = chain(&source);
                    tracing::warn!(sink = %sink.path.display(), pid_file = %path.display(), %error, "sink.pid_file is refused: point it at a path with no symbolic link in a directory others control; the hook signals nothing until then");
                }
            }
        }
        let gid = sink
            .group
            .as_ref()
            .map(|g| resolve_group(g, &sink.path))
            .transpose()?;
        if let Some(gid) = gid
            && euid != 0
            && !member_of(gid)
        {
            return Err(Error::NotMember {
                path: sink.path.clone(),
                gid,
            });
        }
        let stats = Arc::new(Stats::new(&sink));
        let lane = Lane::for_file(&sink.path);
        Ok(Self {
            files: Arc::new(Files {
                sink,
                gid,
                device_id,
                stats,
            }),
            lane,
        })
    }

    /// The sink's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.files.stats
    }

    /// Keeps the file in step with `tokens` until `cancel` fires, then removes it. `demand`
    /// is held throughout (see the module docs).
    pub async fn run(
        self,
        tokens: Current,
        demand: Option<DemandGuard>,
        cancel: CancellationToken,
    ) {
        let _demand = demand;
        let (rotated, rotations) = watch::channel(0u64);
        let hooks = async {
            if let Some(hook) = &self.files.sink.hook {
                self.hooks(hook, rotations, &cancel).await;
            }
        };
        tokio::join!(self.write_loop(tokens, rotated, &cancel), hooks);
        // The file goes with the agent; on a filesystem that does not answer, the removal
        // stays queued and the agent stops anyway.
        let files = self.files.clone();
        let removed = self.lane.submit(move || files.remove());
        if tokio::time::timeout(STOP_WAIT, removed).await.is_err() {
            tracing::warn!(sink = %self.files.sink.path.display(),
                "the sink's filesystem did not answer within {} s; the file may stay until it does", STOP_WAIT.as_secs());
        }
    }

    /// Runs `op` on the sink's file-work lane; `None` when the agent stops first.
    async fn on_lane<T: Send + 'static>(
        &self,
        op: fn(&Files, &Option<Arc<AssetToken>>) -> T,
        token: Option<Arc<AssetToken>>,
        cancel: &CancellationToken,
    ) -> Option<T> {
        let files = self.files.clone();
        let done = self.lane.submit(move || op(&files, &token));
        tokio::select! {
            r = done => r.ok(),
            () = cancel.cancelled() => None,
        }
    }

    async fn write_loop(
        &self,
        mut tokens: Current,
        rotated: watch::Sender<u64>,
        cancel: &CancellationToken,
    ) {
        // A file from an earlier run is not trusted to be current, nor are the
        // temporaries a killed agent left (this file's own only: others may share the
        // directory).
        let swept = self
            .on_lane(
                |f, _| {
                    crate::fsutil::remove_stale_temps_of(&f.sink.path);
                    f.remove();
                },
                None,
                cancel,
            )
            .await;
        if swept.is_none() {
            return;
        }
        // What the file holds (`None`: no file) and when to try again after a failure.
        let mut held: Option<Arc<AssetToken>> = None;
        let mut retry: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let want = tokens
                .borrow_and_update()
                .as_ref()
                .filter(|t| now + EXPIRY_MARGIN < t.expires)
                .cloned();
            let same = match (&held, &want) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same && retry.is_none_or(|r| now >= r) {
                retry = None;
                match &want {
                    Some(token) => {
                        let Some(ok) = self
                            .on_lane(
                                |f, t| t.as_ref().is_some_and(|t| f.write(t)),
                                want.clone(),
                                cancel,
                            )
                            .await
                        else {
                            break;
                        };
                        if ok {
                            held = Some(token.clone());
                            rotated.send_modify(|n| *n += 1);
                        } else {
                            retry = Some(Instant::now() + RETRY_WRITE);
                        }
                    }
                    None => {
                        if self
                            .on_lane(|f, _| f.remove(), None, cancel)
                            .await
                            .is_none()
                        {
                            break;
                        }
                        held = None;
                    }
                }
            }
            // A held token that was not replaced in time still has to go.
            if held
                .as_ref()
                .is_some_and(|t| Instant::now() + EXPIRY_MARGIN >= t.expires)
            {
                if self
                    .on_lane(|f, _| f.remove(), None, cancel)
                    .await
                    .is_none()
                {
                    break;
                }
                held = None;
            }
            let now = Instant::now();
            let expiry = held.as_ref().map(|t| t.expires - EXPIRY_MARGIN);
            let wake = match (expiry, retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                changed = tokens.changed() => if changed.is_err() { break },
                () = sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
                () = cancel.cancelled() => break,
            }
        }
    }

    /// Runs `hook` once per rotation (coalescing rotations that come while it runs).
    async fn hooks(
        &self,
        hook: &Hook,
        mut rotations: watch::Receiver<u64>,
        cancel: &CancellationToken,
    ) {
        loop {
            tokio::select! {
                changed = rotations.changed() => if changed.is_err() { return },
                () = cancel.cancelled() => return,
            }
            rotations.borrow_and_update();
            let s = &self.files.stats;
            match hook::run(hook, &self.files.sink.path, cancel).await {
                Ok(()) => {
                    s.hook_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(Failure::Cancelled) => return,
                Err(e) => {
                    if e.is_timeout() {
                        s.hook_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    s.hook_failed.fetch_add(1, Ordering::Relaxed);
                    let error = chain(&e);
                    tracing::warn!(sink = %self.files.sink.path.display(), %error, "rotation hook failed");
                    *lock(&s.last_hook_error) = Some(error);
                }
            }
        }
    }
}

// === impl Files ===

impl Files {
    /// Writes `token` (on a file-work thread); false (logged and counted) when it failed.
    fn write(&self, token: &AssetToken) -> bool {
        let bytes = match self.sink.format {
            SinkFormat::Jwt => token.jwt.expose().as_bytes().to_vec(),
            SinkFormat::Json => {
                let body = crate::token::body::TokenBody::of(&self.device_id, token);
                let mut b = serde_json::to_vec(&body).unwrap_or_default();
                b.push(b'\n');
                b
            }
        };
        let euid = rustix::process::geteuid().as_raw();
        let written = check_path(&self.sink.path, &[euid, 0])
            .map_err(|e| chain(&e))
            .and_then(|()| {
                crate::fsutil::write_atomic(&self.sink.path, &bytes, self.sink.mode, None, self.gid)
                    .map_err(|e| chain(&e))
            });
        let s = &self.stats;
        match written {
            Ok(()) => {
                s.writes.fetch_add(1, Ordering::Relaxed);
                *lock(&s.holds_until) = Some(token.expires);
                *lock(&s.last_write) = Some(Instant::now());
                *lock(&s.last_error) = None;
                s.ok.store(true, Ordering::Relaxed);
                tracing::debug!(sink = %self.sink.path.display(), "sink written");
                true
            }
            Err(error) => {
                s.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %self.sink.path.display(), %error, "could not write the token to the sink");
                s.failed(error);
                false
            }
        }
    }

    /// Removes the file (no valid token to offer). Where the filesystem refuses removal
    /// (read-only, a directory the agent can no longer write), the file is emptied instead
    /// if it can be, so no reader picks up a token that is about to expire or has.
    fn remove(&self) {
        let s = &self.stats;
        match crate::fsutil::remove_synced(&self.sink.path) {
            Ok(removed) => {
                *lock(&s.holds_until) = None;
                s.ok.store(true, Ordering::Relaxed);
                if removed {
                    s.removals.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(sink = %self.sink.path.display(), "sink file removed: no valid token to offer");
                }
            }
            Err(e) => {
                let error = chain(&e);
                let emptied = self.truncate();
                if emptied {
                    *lock(&s.holds_until) = None;
                }
                tracing::warn!(sink = %self.sink.path.display(), %error, emptied,
                    "could not remove the sink file");
                s.failed(error);
            }
        }
    }

    /// Empties the sink file in place (not through a link, only a regular file of ours);
    /// whether it worked.
    fn truncate(&self) -> bool {
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        let euid = rustix::process::geteuid().as_raw();
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.sink.path)
            .and_then(|f| {
                let m = f.metadata()?;
                if !m.is_file() || (m.uid() != euid && m.uid() != 0) {
                    return Err(std::io::ErrorKind::InvalidInput.into());
                }
                f.set_len(0)?;
                f.sync_all()
            })
            .is_ok()
    }
}

// === impl Stats ===

impl Stats {
    fn new(sink: &config::Sink) -> Self {
        Self {
            path: sink.path.clone(),
            format: sink.format,
            hook: sink.hook.as_ref().map(|h| match h {
                Hook::PidFile { .. } => "pid_file",
                Hook::Unit { .. } => "unit",
                Hook::Command { .. } => "command",
            }),
            ok: AtomicBool::new(true),
            holds_until: Mutex::new(None),
            writes: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            removals: AtomicU64::new(0),
            hook_ok: AtomicU64::new(0),
            hook_failed: AtomicU64::new(0),
            hook_timeouts: AtomicU64::new(0),
            last_write: Mutex::new(None),
            last_error: Mutex::new(None),
            last_failure: Mutex::new(None),
            last_hook_error: Mutex::new(None),
        }
    }

    /// Records a failed write or removal.
    fn failed(&self, error: String) {
        self.ok.store(false, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error);
        *lock(&self.last_failure) = Some(Instant::now());
    }

    /// The status entry.
    pub fn status(&self) -> Status {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now = Instant::now();
        let holds_until = *lock(&self.holds_until);
        let valid = holds_until.is_some_and(|t| now < t);
        Status {
            path: self.path.display().to_string(),
            format: self.format.name().to_owned(),
            present: valid && self.ok.load(Ordering::Relaxed),
            expires_in_s: holds_until.map(|t| t.saturating_duration_since(now).as_secs()),
            writes: n(&self.writes),
            write_failures: n(&self.write_failures),
            removals: n(&self.removals),
            last_write_s: lock(&self.last_write).map(|t| t.elapsed().as_secs()),
            last_error: lock(&self.last_error).clone(),
            last_error_s: lock(&self.last_failure).map(|t| t.elapsed().as_secs()),
            hook: self.hook.map(str::to_owned),
            hook_runs_ok: n(&self.hook_ok),
            hook_failures: n(&self.hook_failed),
            hook_timeouts: n(&self.hook_timeouts),
            last_hook_error: lock(&self.last_hook_error).clone(),
        }
    }
}

// === impl Sinks ===

impl Sinks {
    /// Every sink's status entry.
    pub fn status(&self) -> Vec<Status> {
        self.0.iter().map(|s| s.status()).collect()
    }
}

impl Collect for Sinks {
    fn collect(&self, w: &mut MetricsWriter) {
        if self.0.is_empty() {
            return;
        }
        let all = self.status();
        let families: [Family; 4] = [
            (
                "asset_agent_sink_present",
                "gauge",
                "1 while the sink file holds a valid token.",
                |s| u64::from(s.present),
            ),
            (
                "asset_agent_sink_writes_total",
                "counter",
                "Tokens written to the sink file.",
                |s| s.writes,
            ),
            (
                "asset_agent_sink_write_failures_total",
                "counter",
                "Failed writes to the sink file.",
                |s| s.write_failures,
            ),
            (
                "asset_agent_sink_removals_total",
                "counter",
                "Times the sink file was removed for want of a valid token.",
                |s| s.removals,
            ),
        ];
        for (name, kind, help, value) in families {
            w.family(name, kind, help);
            for s in &all {
                w.sample(name, &[("path", &s.path)], value(s));
            }
        }
        let name = "asset_agent_sink_hook_runs_total";
        w.family(
            name,
            "counter",
            "Rotation hook runs by result (ok, failed, timeout; timeouts are not counted as failed).",
        );
        for s in all.iter().filter(|s| s.hook.is_some()) {
            let failed = s.hook_failures.saturating_sub(s.hook_timeouts);
            for (result, n) in [
                ("ok", s.hook_runs_ok),
                ("failed", failed),
                ("timeout", s.hook_timeouts),
            ] {
                w.sample(name, &[("path", &s.path), ("result", result)], n);
            }
        }
    }
}

/// The gid of `group`: a gid as is, a name from /etc/group (no NSS: a device's groups are
/// local).
fn resolve_group(group: &Group, sink: &Path) -> Result<u32, Error> {
    match group {
        Group::Id(gid) => Ok(*gid),
        Group::Name(name) => group_by_name(name).ok_or_else(|| Error::UnknownGroup {
            path: sink.to_owned(),
            name: name.clone(),
        }),
    }
}

/// Looks `name` up in /etc/group.
pub fn group_by_name(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut f = line.split(':');
        let (n, _, id) = (f.next()?, f.next()?, f.next()?);
        (n == name).then(|| id.parse().ok()).flatten()
    })
}

/// Whether this process may give files group `gid`.
fn member_of(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups().is_ok_and(|gs| gs.iter().any(|g| g.as_raw() == gid))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
