//! `asset-agent run`: the daemon.
//!
//! Signals: SIGTERM and SIGINT drain (stop accepting, let in-flight requests finish for
//! up to [`GRACE`], stop the refresh loop) and exit 0, telling systemd `STOPPING=1` first.
//! SIGHUP and `POST /v1/reload` reload the configuration all-or-nothing (`crate::reload`);
//! a socket request gets the outcome back. The handlers are installed before anything
//! else, because SIGHUP's default action would kill us.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{Error, load_config};
use crate::agent::{self, Options};
use crate::config::Config;
use crate::error::chain;
use crate::systemd::{self, Notifier, Readiness, Supervisor};

/// In-flight requests get this long to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

pub async fn run(config_path: Option<PathBuf>) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let mut signals = Signals::install()?;
    let notifier = notifier();
    let mut config = match load_config(config_path.clone()) {
        Ok(c) => c,
        Err(e) => {
            tell(
                notifier.as_deref(),
                &format!("invalid configuration: {}", chain(&e)),
            );
            return Err(e);
        }
    };
    crate::logging::init(&config.log.level, config.log.format);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "asset-agent starting");
    tracing::info!("effective config: {}", config.redacted_summary());
    for var in &config.ignored_env {
        tracing::warn!(variable = %var, "ignored: not a config key (config keys look like ASSET_AGENT_SECTION__KEY)");
    }
    // The process holds the device key: no core dumps, no ptrace by other processes of
    // the same user.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
    let cancel = CancellationToken::new();
    let (requests, mut reloads) = crate::api::routes::reload::channel();
    let options = Options {
        reload: requests,
        ..Options::default()
    };
    let running = match agent::start(&config, options, cancel.clone()).await {
        Ok(r) => r,
        Err(e) => {
            tell(
                notifier.as_deref(),
                &format!("could not start: {}", chain(&e)),
            );
            return Err(Error::Agent(e));
        }
    };
    let readiness = Readiness {
        started,
        timeout: config.token.ready_timeout,
        refresh_at: config.token.refresh_at,
    };
    let mut resync = None;
    if let Some(n) = notifier.clone() {
        let watchdog = systemd::watchdog_timeout_from_env();
        if let Some(w) = watchdog {
            tracing::info!(timeout_ms = w.as_millis(), "systemd watchdog enabled");
        }
        let supervisor = Supervisor::new(n, running.tokens.clone(), watchdog, readiness);
        resync = Some(supervisor.resync());
        running
            .tasks()
            .spawn("systemd notifier", supervisor.run(cancel.child_token()));
    }

    let stop = loop {
        tokio::select! {
            received = signals.next() => match received {
                Received::Reload => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // systemd learns of a reload it did not start (a manual `kill -HUP`).
                    if let Some(n) = &notifier {
                        let _ = n.reloading();
                    }
                    reload(&mut config, config_path.clone(), &running).await;
                    if let Some(n) = &notifier {
                        let _ = n.reloaded();
                    }
                }
                Received::Stop(name) => break Ok(name),
            },
            Some(pending) = reloads.recv() => {
                // `asset-agent reload` (the unit's ExecReload=): systemd is already in its
                // reload state and waits for that command, which reports the outcome.
                tracing::info!("reload requested over the socket");
                let report = reload(&mut config, config_path.clone(), &running).await;
                let _ = pending.send(report);
            }
            exit = running.failed() => break Err(exit),
        }
        // STATUS= goes back to the agent's state, whatever the reload set.
        if let Some(r) = &resync {
            r.now();
        }
    };
    let signal = match &stop {
        Ok(name) => *name,
        Err(exit) => {
            tell(
                notifier.as_deref(),
                &format!("failed: {}", chain(exit.as_ref())),
            );
            "a failed task"
        }
    };
    tracing::info!(signal, "shutting down");
    if let Some(n) = &notifier
        && let Err(e) = n.stopping("stopping: draining requests")
    {
        tracing::debug!(error = %chain(&e), "could not send STOPPING=1");
    }
    cancel.cancel();
    if tokio::time::timeout(GRACE, running.wait()).await.is_err() {
        tracing::warn!(grace_s = GRACE.as_secs(), "some tasks did not stop in time");
    }
    tracing::info!("stopped");
    // A task that died takes the process down with it, non-zero, so systemd restarts us.
    stop.map(|_| ()).map_err(Error::Task)
}

/// The systemd notifier, if started by systemd with `Type=notify`.
fn notifier() -> Option<Arc<Notifier>> {
    match Notifier::from_env() {
        Ok(n) => n.map(Arc::new),
        Err(e) => {
            // Logging is not set up yet; stderr reaches the journal anyway.
            eprintln!("warning: {}; not notifying systemd", chain(&e));
            None
        }
    }
}

/// Best-effort `STATUS=` before exiting with an error, so `systemctl status` shows why.
fn tell(notifier: Option<&Notifier>, status: &str) {
    if let Some(n) = notifier {
        let _ = n.status(status);
    }
}

/// Reloads and logs the outcome; see `crate::reload`.
async fn reload(
    config: &mut Config,
    path: Option<PathBuf>,
    running: &agent::Running,
) -> crate::api::routes::reload::Report {
    let outcome = crate::reload::reload(config, || {
        Config::load(&crate::config::LoadOptions::from_process(path))
    });
    let mut summary = outcome.summary();
    // Unchanged too: children that could not be started (a key that would not open) are
    // tried again, the running ones are left alone.
    if matches!(
        outcome,
        crate::reload::Outcome::Applied { .. } | crate::reload::Outcome::Unchanged
    ) {
        let changes = running.apply_children(config).await;
        if let Some(line) = changes.summary() {
            summary.push_str("; ");
            summary.push_str(&line);
        }
    }
    match outcome {
        crate::reload::Outcome::Invalid(_) | crate::reload::Outcome::NeedsRestart { .. } => {
            tracing::error!("{summary}");
        }
        _ => tracing::info!("{summary}"),
    }
    let mut report = outcome.report();
    report.summary = summary;
    report
}

/// The signals `run` reacts to.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

enum Received {
    Stop(&'static str),
    Reload,
}

impl Signals {
    fn install() -> Result<Self, Error> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(Error::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(Error::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(Error::Signals)?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop("SIGTERM"),
            _ = self.int.recv() => Received::Stop("SIGINT"),
            _ = self.hup.recv() => Received::Reload,
        }
    }
}
