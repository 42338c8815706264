//! `asset-agent-emulator`: the Salesforce emulator on its own, for developing device
//! software without an org. It prints a refresh token and the agent config that uses it.

use std::process::ExitCode;
use std::time::Duration;

use asset_agent_emulator::{self as emulator, Emulator};
use clap::Parser as _;

/// Run the Salesforce emulator on its own (develop device software without an org).
#[derive(Debug, clap::Parser)]
#[command(name = "asset-agent-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// The connected app's consumer key the emulator accepts.
    #[arg(long, default_value = emulator::DEFAULT_CLIENT_ID)]
    client_id: String,
    /// Asset token lifetime in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    token_lifetime: u64,
    /// Rotate refresh tokens on every use.
    #[arg(long)]
    rotate_refresh_tokens: bool,
    /// Access token (session) lifetime in seconds; the default keeps the library's.
    #[arg(long, value_name = "SECS")]
    session_lifetime: Option<u64>,
}

/// Why the emulator could not run.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("could not start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("could not bind {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the emulator failed")]
    Emulator(#[source] emulator::Error),
    #[error("could not set up signal handling")]
    Signals(#[source] std::io::Error),
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            wire::report::eprint_chain(&err);
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    let client_id = args.client_id.clone();
    let mut config = emulator::Config::new(args.client_id);
    config.asset_token_lifetime = Duration::from_secs(args.token_lifetime.max(1));
    config.rotate_refresh_tokens = args.rotate_refresh_tokens;
    if let Some(secs) = args.session_lifetime {
        config.session_lifetime = Duration::from_secs(secs.max(1));
    }
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
    let signal = wire::report::stop_signal().await.map_err(Error::Signals)?;
    tracing::info!(signal, "emulator stopping");
    emu.shutdown().await;
    Ok(())
}
