//! Supervised tasks: every long-running part of the agent (the refresh loop, the socket
//! server, the MQTT uplink, the systemd notifier) runs under one [`Tasks`] tracker.
//!
//! A task is expected to run until the agent's cancel token fires. If one ends before
//! that (it returned, failed, or panicked), [`Tasks::failed`] reports which and why, so
//! `run` can log it, stop the rest and exit non-zero: systemd then restarts the agent
//! rather than leaving a daemon that looks alive with a dead part inside. (The shipped
//! build has `panic = "abort"`, so a panic there ends the process at once anyway; tests
//! run with unwinding and see the panic reported here.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a task ended before the agent was stopping.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    #[error("it returned")]
    Returned,
    #[error("it failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("it panicked")]
    Panicked,
}

/// A task that ended while the agent was not stopping.
#[derive(Debug, thiserror::Error)]
#[error("the {task} task ended unexpectedly")]
pub struct Unexpected {
    pub task: &'static str,
    #[source]
    pub why: Ended,
}

/// What a task's future may return: nothing (it only ends when cancelled) or a `Result`.
pub trait Outcome: Send + 'static {
    /// `Err` when the task failed.
    ///
    /// # Errors
    /// The task's own error.
    fn into_result(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl Outcome for () {
    fn into_result(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> Outcome for Result<(), E> {
    fn into_result(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.map_err(|e| Box::new(e) as _)
    }
}

/// A spawned task, as [`Tasks`] runs it.
type Task =
    Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send>>;

/// The agent's task tracker.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    first_exit: Arc<watch::Sender<Option<Arc<Unexpected>>>>,
}

// === impl Tasks ===

impl Tasks {
    /// Tasks that are expected to run until `cancel` fires.
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            cancel,
            first_exit: Arc::new(watch::channel(None).0),
        }
    }

    /// Spawns `task` (named `name` in logs and errors) under supervision.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        self.spawn_until(name, task, self.cancel.clone());
    }

    /// Like [`Tasks::spawn`], for a task that may also be stopped on its own: when
    /// `stop` (a child of the agent's token) has fired, returning is expected.
    pub fn spawn_until<F>(&self, name: &'static str, task: F, stop: CancellationToken)
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        // Boxed to one type: tokio's task machinery and the supervisor below are compiled
        // once for every task instead of once per task type (a few KB each).
        let task: Task = Box::pin(async move { task.await.into_result() });
        self.spawn_boxed(name, task, stop);
    }

    fn spawn_boxed(&self, name: &'static str, task: Task, cancel: CancellationToken) {
        let first_exit = self.first_exit.clone();
        let inner = tokio::spawn(task);
        self.tracker.spawn(async move {
            let why = match inner.await {
                Ok(outcome) => match outcome {
                    Ok(()) if cancel.is_cancelled() => return,
                    Ok(()) => Ended::Returned,
                    Err(e) => Ended::Failed(e),
                },
                Err(e) if e.is_panic() => Ended::Panicked,
                // Cancelled through its JoinHandle: only the runtime shutting down does that.
                Err(_) => return,
            };
            let exit = Unexpected { task: name, why };
            tracing::error!(error = %crate::error::chain(&exit), "a task of the agent stopped");
            first_exit.send_if_modified(|slot| {
                if slot.is_none() {
                    *slot = Some(Arc::new(exit));
                    true
                } else {
                    false
                }
            });
        });
    }

    /// Resolves with the first task that ended unexpectedly (never, while all run).
    pub async fn failed(&self) -> Arc<Unexpected> {
        let mut rx = self.first_exit.subscribe();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: unreachable while we borrow it.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until every task has stopped (after the cancel token fired).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("running", &self.tracker.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_early_is_reported_with_its_name() {
        let cancel = CancellationToken::new();
        let tasks = Tasks::new(cancel.clone());
        tasks.spawn("forever", std::future::pending::<()>());
        tasks.spawn("quitter", async {
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        let exit = tasks.failed().await;
        assert_eq!(exit.task, "quitter");
        assert!(matches!(exit.why, Ended::Returned));
        assert_eq!(exit.to_string(), "the quitter task ended unexpectedly");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_and_panics_are_reported() {
        let tasks = Tasks::new(CancellationToken::new());
        tasks.spawn("failing", async { Err::<(), _>(Boom) });
        let exit = tasks.failed().await;
        assert!(matches!(&exit.why, Ended::Failed(e) if e.to_string() == "boom"));

        let tasks = Tasks::new(CancellationToken::new());
        let on_purpose = true;
        #[allow(clippy::panic)]
        tasks.spawn("panicking", async move {
            if on_purpose {
                panic!("on purpose");
            }
        });
        assert!(matches!(tasks.failed().await.why, Ended::Panicked));
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_ending_on_cancel_are_not_failures() {
        let cancel = CancellationToken::new();
        let tasks = Tasks::new(cancel.clone());
        let c = cancel.clone();
        tasks.spawn("loop", async move { c.cancelled().await });
        cancel.cancel();
        tasks.wait().await;
        let failed = tokio::time::timeout(Duration::from_secs(60), tasks.failed()).await;
        assert!(failed.is_err(), "a cancelled task was reported as failed");
    }
}
