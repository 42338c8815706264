//! File work off the runtime thread: every write, fsync, removal, directory sweep and PID
//! file read the running agent does goes through a [`Lane`], never on the runtime's one
//! thread, so a frozen filesystem or a slow SD card holds only the work for that
//! destination, not the socket API or the refresh loop.
//!
//! - **One lane per directory**, shared by everything that writes there ([`Lane::for_dir`]):
//!   the state directory (refresh token, token cache) is one lane, each sink's directory
//!   another. Jobs on a lane run one at a time, in the order they were queued, so a later
//!   write never overtakes an earlier one to the same file.
//! - **Bounded threads:** a job runs on tokio's blocking pool, and at most
//!   [`FILE_THREADS`] jobs of all lanes run at once (a semaphore), while `main` sizes the
//!   pool at that plus the signing threads: however many filesystems hang, RSA signing
//!   (actor tokens, `POST /v1/sign`) still has its own threads. A stuck job holds one
//!   thread and its lane; the waiters queue as futures, not threads.
//! - **Never waited on blindly:** callers that are not allowed to stall (a sink's stop, a
//!   rotated refresh token's first write) wait with a bound and go on; the job itself
//!   cannot be cancelled and completes when the filesystem comes back.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Semaphore;

/// Blocking-pool threads file work may hold at once, over all lanes.
pub const FILE_THREADS: usize = 4;

/// Limits the blocking threads file work holds (see [`FILE_THREADS`]).
static PERMITS: Semaphore = Semaphore::const_new(FILE_THREADS);

/// The live lanes, by directory.
static LANES: Mutex<Vec<(PathBuf, Weak<Shared>)>> = Mutex::new(Vec::new());

/// A lane whose job has run this long is stalled (see [`Lane::is_stalled`]).
pub const STALLED: std::time::Duration = std::time::Duration::from_millis(500);

/// The file work could not run: the runtime is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the file work for {} did not run: the agent is stopping", dir.display())]
pub struct Stopped {
    pub dir: PathBuf,
}

/// Ordered file work for one directory; see the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lane {
    dir: PathBuf,
    shared: Arc<Shared>,
}

/// What every handle of one directory's lane shares.
#[derive(Debug, Default)]
struct Shared {
    /// Held by the job that runs (or waits for a permit); the rest queue on it in order.
    order: tokio::sync::Mutex<()>,
    /// When the running job started.
    since: Mutex<Option<tokio::time::Instant>>,
}

// === impl Lane ===

impl Lane {
    /// The lane for `dir` (the same one for every caller while any holds it).
    pub fn for_dir(dir: &Path) -> Self {
        let mut lanes = LANES.lock().unwrap_or_else(PoisonError::into_inner);
        lanes.retain(|(_, l)| l.strong_count() > 0);
        let found = lanes
            .iter()
            .find(|(d, _)| d == dir)
            .and_then(|(_, l)| l.upgrade());
        let shared = found.unwrap_or_else(|| {
            let shared = Arc::new(Shared::default());
            lanes.push((dir.to_owned(), Arc::downgrade(&shared)));
            shared
        });
        Self {
            dir: dir.to_owned(),
            shared,
        }
    }

    /// The lane for the directory that holds `file`.
    pub fn for_file(file: &Path) -> Self {
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Self::for_dir(dir)
    }

    /// The directory this lane serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the job running on this lane has run for [`STALLED`] or longer: a caller
    /// that would wait for a new job with a bound then does not wait at all (a frozen
    /// filesystem delays only the first of its callers).
    pub fn is_stalled(&self) -> bool {
        let since = *self
            .shared
            .since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        since.is_some_and(|t| t.elapsed() >= STALLED)
    }

    /// Runs `job` on a blocking thread after the lane's earlier jobs.
    ///
    /// # Errors
    /// [`Stopped`] when the runtime is shutting down (the job may not have run).
    pub async fn run<T, F>(&self, job: F) -> Result<T, Stopped>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.run_boxed(Box::new(move || {
            let _ = tx.send(job());
        }))
        .await?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Queues `job` and returns at once; it runs in the lane's order, whoever waits.
    /// Returns a future that resolves when it has run (dropping it does not cancel it).
    pub fn submit<T, F>(&self, job: F) -> impl Future<Output = Result<T, Stopped>> + use<T, F>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let lane = self.clone();
        let stopped = self.stopped();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        // Spawned now, so the lane's order is that of `submit` calls.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(crate::spawn::boxed(async move {
                let _ = lane.run_boxed(job).await;
            }));
        }
        async move { rx.await.map_err(|_| stopped) }
    }

    /// The one way a job reaches a thread: in turn on the lane, within the permits (one
    /// boxed job type, so tokio's blocking-task code is compiled once for all).
    async fn run_boxed(&self, job: Job) -> Result<(), Stopped> {
        let _turn = self.shared.order.lock().await;
        let _permit = PERMITS.acquire().await.map_err(|_| self.stopped())?;
        let since = |at| {
            *self
                .shared
                .since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = at
        };
        since(Some(tokio::time::Instant::now()));
        let done = tokio::task::spawn_blocking(job).await;
        since(None);
        done.map_err(|_| self.stopped())
    }

    fn stopped(&self) -> Stopped {
        Stopped {
            dir: self.dir.clone(),
        }
    }
}

/// A job as the one type the lanes run.
type Job = Box<dyn FnOnce() + Send>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_on_a_lane_keep_their_order_and_a_stuck_lane_holds_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lane::for_dir(&dir.path().join("a"));
        let b = Lane::for_dir(&dir.path().join("b"));
        assert!(Arc::ptr_eq(
            &a.shared,
            &Lane::for_file(&dir.path().join("a/file")).shared
        ));
        // Lane a is stuck until `release` is sent.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let blocked = a.submit(move || stuck.recv().is_ok());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut later = Vec::new();
        for i in 0..5 {
            let seen = seen.clone();
            later.push(a.submit(move || seen.lock().unwrap().push(i)));
        }
        // Another directory's lane goes on meanwhile, and so does the runtime.
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let ran = ran.clone();
            tokio::time::timeout(
                Duration::from_secs(5),
                b.run(move || ran.fetch_add(1, Ordering::Relaxed)),
            )
            .await
            .expect("lane b is not held by lane a")
            .unwrap();
        }
        assert_eq!(ran.load(Ordering::Relaxed), 3);
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing overtook the stuck job"
        );
        release.send(()).unwrap();
        assert!(blocked.await.unwrap());
        for f in later {
            f.await.unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
