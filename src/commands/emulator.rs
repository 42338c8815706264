//! `asset-agent emulator`: the Salesforce emulator on its own, for developing device
//! software without an org.

use std::time::Duration;

use super::{Error, shutdown_signal};
use crate::cli::EmulatorArgs;
use crate::emulator::{self, Emulator};

pub async fn run(args: EmulatorArgs) -> Result<(), Error> {
    crate::logging::init("info", crate::config::LogFormat::Text);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen.to_string(),
            source,
        })?;
    let client_id = args.client_id.clone();
    let mut config = emulator::Config::new(args.client_id);
    config.asset_token_lifetime = Duration::from_secs(args.token_lifetime.max(1));
    config.rotate_refresh_tokens = args.rotate_refresh_tokens;
    let emu = Emulator::start(config, listener)
        .await
        .map_err(Error::Emulator)?;
    let refresh = emu.mint_refresh_token().map_err(Error::Emulator)?;
    println!("Salesforce emulator listening at {}", emu.base_url());
    println!();
    println!("A refresh token for the agent (store it 0600 in auth.refresh_token_file):");
    // Deliberately printed: the emulator's tokens are throw-away test credentials.
    println!("  {}", refresh.expose());
    println!();
    println!("Agent config to use it:");
    println!("  [salesforce]");
    println!("  instance_url = \"{}\"", emu.base_url());
    println!("  client_id = \"{client_id}\"");
    println!();
    println!(
        "Inspect: {base}{p}/assets  {base}{p}/events  {base}{p}/stats",
        base = emu.base_url(),
        p = emulator::CONTROL_PREFIX
    );
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "emulator stopping");
    emu.shutdown().await;
    Ok(())
}
