//! `asset-agent-demo`: the whole flow, live, with no org needed.
//!
//! Starts the built-in emulator on a free loopback port and a real agent against it in a
//! private temp directory, then narrates each step as the agent takes it, from the progress
//! events the flow publishes (the same code path as `asset-agent run`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use asset_agent::agent::{self, Options};
use asset_agent::config::{self, Config, LoadOptions};
use asset_agent::token::flow::Progress;
use clap::Parser as _;
use emulator::{Emulator, Registration};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use wire::clock;

/// Start the built-in Salesforce emulator and an agent against it in a temp dir, and show
/// the token flow live.
#[derive(Debug, clap::Parser)]
#[command(name = "asset-agent-demo", version)]
struct DemoArgs {
    /// Stop after this many seconds (headless runs, tests); default: until Ctrl-C.
    #[arg(long = "for", value_name = "SECS")]
    for_secs: Option<u64>,
    /// Asset token lifetime the emulator issues.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    token_lifetime: u64,
    /// Run as a gateway with this many child Assets (each its own key, Asset and token).
    #[arg(long, value_name = "N", default_value_t = 0)]
    children: u16,
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("could not start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("could not bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the emulator failed")]
    Emulator(#[source] emulator::Error),
    #[error("invalid demo configuration")]
    Config(#[source] Box<config::Error>),
    #[error("could not start the agent")]
    Agent(#[source] agent::Error),
    #[error("could not set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

fn main() -> ExitCode {
    let args = DemoArgs::parse();
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

async fn run(args: DemoArgs) -> Result<(), Error> {
    asset_agent::logging::init("warn", config::LogFormat::Text);
    let dir = TempDir::create()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| Error::Bind {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let emu_config = emulator::Config {
        asset_token_lifetime: Duration::from_secs(args.token_lifetime.max(5)),
        ..emulator::Config::default()
    };
    say("starting the Salesforce emulator (generating its signing key)...");
    let emu = Emulator::start(emu_config, listener)
        .await
        .map_err(Error::Emulator)?;
    say(&format!("emulator listening at {}", emu.base_url()));

    let refresh = emu.mint_refresh_token().map_err(Error::Emulator)?;
    asset_agent::fsutil::write_secret_atomic(
        &dir.0.join("refresh-token"),
        refresh.expose().as_bytes(),
    )
    .map_err(|e| Error::Failed(format!("could not write the demo refresh token: {e}")))?;
    let config = demo_config(&dir.0, emu.base_url(), args.children)?;
    say(&format!(
        "agent config written to {} (refresh-token grant, JWKS verification)",
        dir.0.join("agent.toml").display()
    ));

    let (progress, rx) = broadcast::channel(64);
    let cancel = CancellationToken::new();
    let options = Options {
        progress,
        ..Options::default()
    };
    let running = agent::start(&config, options, cancel.clone())
        .await
        .map_err(Error::Agent)?;
    say(&format!(
        "device key {} at {} (RSA {} bits, thumbprint {})",
        if running.key_created {
            "created"
        } else {
            "loaded"
        },
        config.key,
        config.key.bits,
        running.key.public_jwk().kid
    ));
    if !config.children.is_empty() {
        say(&format!(
            "gateway mode: {} child assets, each with its own key (generated now), Asset and token at /v1/assets/NAME/token",
            config.children.len()
        ));
        let children = running.children.clone();
        let want = config.children.len();
        tokio::spawn(async move {
            let mut shown = std::collections::BTreeSet::new();
            while shown.len() < want {
                for c in children.all() {
                    if let Some(t) = asset_agent::token::live(&c.identity.tokens.current)
                        && shown.insert(c.name().to_owned())
                    {
                        say(&format!(
                            "child {}: asset token for Asset {} (device {}, key {})",
                            c.name(),
                            t.asset_id().unwrap_or("-"),
                            c.identity.info.device_id,
                            c.identity.info.key_thumbprint
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    let narrator = narrate(rx, &emu, &config.api.socket);
    let stop = async {
        match args.for_secs {
            Some(secs) => {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok("time limit")
            }
            None => wire::report::stop_signal().await.map_err(Error::Signals),
        }
    };
    let why = tokio::select! {
        r = stop => r?,
        () = narrator => "narration ended",
    };
    say(&format!("stopping ({why})"));
    cancel.cancel();
    running.wait().await;
    emu.shutdown().await;
    let assets = refresh_summary(&running.tokens);
    say(&format!("done: {assets}; removed {}", dir.0.display()));
    Ok(())
}

fn refresh_summary(tokens: &asset_agent::token::refresher::Handle) -> String {
    let s = tokens.snapshot();
    format!(
        "{} refreshes succeeded, {} failed",
        s.refreshes_ok, s.refreshes_failed
    )
}

async fn narrate(mut rx: broadcast::Receiver<Progress>, emu: &Emulator, socket: &Path) {
    let mut first = true;
    loop {
        let p = match rx.recv().await {
            Ok(p) => p,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        match p {
            Progress::AccessTokenObtained { method } => {
                say(&format!("access token obtained ({method} grant)"));
            }
            Progress::AccessTokenRejected => {
                say("the access token was rejected; getting a new one")
            }
            Progress::ActorMinted { claims } => {
                let asset = serde_json::to_string(&claims.asset).unwrap_or_default();
                say(&format!(
                    "actor token minted: did={} Name={:?} Asset={asset} cnf.jwk.kid={} valid {}s",
                    claims.did,
                    claims.name,
                    claims.cnf.jwk.kid,
                    claims.exp - claims.iat
                ));
            }
            Progress::AssetTokenIssued { claims, lifetime } => {
                if let Some(ev) = emu.events().last() {
                    let how = match ev.registration {
                        Registration::Created => "registered a NEW Asset",
                        Registration::Linked => "linked the existing Asset",
                    };
                    say(&format!(
                        "Salesforce {how} {} (Name {:?}, SerialNumber {:?}); AssetTokenEvent #{} published",
                        ev.asset_id,
                        ev.asset_name,
                        ev.asset_serial_number.as_deref().unwrap_or("-"),
                        ev.replay_id
                    ));
                }
                say(&format!(
                    "asset token issued and verified: sub={} aud={:?} iss={} expires {} ({}s)",
                    claims.sub.as_deref().unwrap_or("-"),
                    claims.aud,
                    claims.iss.as_deref().unwrap_or("-"),
                    clock::rfc3339(claims.exp),
                    lifetime.as_secs()
                ));
            }
            Progress::RefreshScheduled { in_ } => {
                say(&format!("next refresh in {}s", in_.as_secs()));
                if first {
                    first = false;
                    println!();
                    println!("  Try it from another terminal:");
                    println!(
                        "    curl --unix-socket {} http://localhost/v1/token",
                        socket.display()
                    );
                    println!("    asset-agent token --raw --socket {}", socket.display());
                    println!("    asset-agent status --socket {}", socket.display());
                    println!("  Ctrl-C ends the demo.");
                    println!();
                }
            }
            Progress::RefreshFailed { reason, retry_in } => {
                say(&format!(
                    "refresh failed ({reason}); retrying in {}s",
                    retry_in.as_secs()
                ));
            }
        }
    }
}

fn say(line: &str) {
    let now = humantime::format_rfc3339_seconds(clock::Clock::system().now()).to_string();
    let time = now.get(11..19).unwrap_or(&now);
    println!("[{time}] {line}");
}

fn demo_config(dir: &Path, instance_url: &str, children: u16) -> Result<Config, Error> {
    let mut toml = format!(
        r#"# Written by `asset-agent-demo`.
[salesforce]
instance_url = "{instance_url}"
client_id = "{client_id}"

[auth]
method = "refresh_token"
refresh_token_file = "{dir}/refresh-token"

[asset]
device_id = "demo-device-0001"
name = "Demo Pump"
serial_number = "DEMO-0001"

[key]
path = "{dir}/device-key.pem"

[state]
dir = "{dir}"

[token]
verify = "jwks"
audience = ["{audience}"]
issuer = "{instance_url}"

[api]
socket = "{dir}/run/agent.sock"
"#,
        client_id = emulator::DEFAULT_CLIENT_ID,
        audience = emulator::DEFAULT_AUDIENCE,
        dir = dir.display(),
    );
    for i in 1..=children {
        toml.push_str(&format!(
            "\n[children.meter-{i}]\ndevice_id = \"demo-meter-{i:04}\"\nname = \"Demo Meter {i}\"\nserial_number = \"DEMO-M-{i:04}\"\n"
        ));
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml)
        .map_err(|e| Error::Failed(format!("could not write {}: {e}", path.display())))?;
    Config::load(&LoadOptions::new(Some(path), HashMap::new()))
        .map_err(|e| Error::Config(Box::new(e)))
}

/// A private (0700) directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt as _;
        let suffix = wire::jose::new_jti();
        let dir = std::env::temp_dir().join(format!(
            "asset-agent-demo-{}",
            suffix.get(..8).unwrap_or(&suffix)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Failed(format!("could not create {}: {e}", dir.display())))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
