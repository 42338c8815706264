//! `asset-agent run`: the daemon.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Error, load_config, shutdown_signal};
use crate::agent::{self, Options};

/// In-flight requests get this long to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

pub async fn run(config_path: Option<PathBuf>) -> Result<(), Error> {
    let config = load_config(config_path)?;
    crate::logging::init(&config.log.level, config.log.format);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "asset-agent starting");
    tracing::info!("effective config: {}", config.redacted_summary());
    for var in &config.ignored_env {
        tracing::warn!(variable = %var, "ignored: not a config key (config keys look like ASSET_AGENT_SECTION__KEY)");
    }
    let cancel = CancellationToken::new();
    let running = agent::start(&config, Options::default(), cancel.clone())
        .await
        .map_err(Error::Agent)?;
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    cancel.cancel();
    if tokio::time::timeout(GRACE, running.wait()).await.is_err() {
        tracing::warn!(grace_s = GRACE.as_secs(), "some tasks did not stop in time");
    }
    tracing::info!("stopped");
    Ok(())
}
