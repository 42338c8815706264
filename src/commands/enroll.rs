//! `asset-agent enroll`: enrolls the device with the OAuth device flow and stores the
//! refresh token the agent then lives on.
//!
//! The user code and URL are printed prominently on stdout; progress goes to stderr. The
//! refresh token is written atomically, mode 0600, to `auth.refresh_token_file`; a running
//! agent waiting in `needs_enrollment` (or failing on a revoked token) reads it on its next
//! check, within [`ENROLLMENT_POLL`], without a restart. Run as root, the file is handed
//! to the owner of its directory (the service user), so the agent can read it.
//!
//! Exit codes: 0 enrolled; 1 runtime failure; 75 the code expired or was not approved in
//! time (run again); 77 access denied; 78 configuration to fix.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::load_config;
use crate::config::{AuthMethod, Config};
use crate::salesforce::device::{self, Authorization, Client, Event};
use crate::salesforce::{Upstream, upstream};
use crate::skew::Skew;
use crate::token::refresher::ENROLLMENT_POLL;
use crate::{agent, fsutil};
use wire::clock::Clock;

/// EX_TEMPFAIL: the code expired or was not approved in time; running again helps.
pub const EXIT_EXPIRED: u8 = 75;
/// EX_NOPERM: the person refused access.
pub const EXIT_DENIED: u8 = 77;

/// Enrollment failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "auth.method = \"{method}\" does not use a refresh token, so there is nothing to enroll; set auth.method = \"device_flow\" to enroll this device"
    )]
    WrongMethod { method: &'static str },
    #[error("could not set up the HTTPS client")]
    Http(#[source] upstream::BuildError),
    #[error("could not read the client secret")]
    ClientSecret(#[source] agent::Error),
    #[error("enrollment did not complete; run 'asset-agent enroll' again for a new code")]
    Incomplete(#[source] device::Error),
    #[error("enrollment failed")]
    Device(#[source] device::Error),
    #[error("could not store the refresh token in {}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: fsutil::Error,
    },
}

/// Knobs for tests; the command uses the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub clock: Clock,
    /// Give up waiting for approval after this long.
    pub max_wait: Duration,
}

/// What enrollment reports as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Show this to the person who approves the device.
    Code(&'a Authorization),
    /// A polling event.
    Poll(&'a Event),
}

/// A completed enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Where the refresh token is.
    pub path: PathBuf,
    /// Whether an earlier refresh token was replaced.
    pub replaced: bool,
    /// The owner the file was given, when run as root.
    pub owner: Option<(u32, u32)>,
}

// === impl Error ===

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Incomplete(device::Error::Denied { .. }) => EXIT_DENIED,
            Error::Incomplete(_) => EXIT_EXPIRED,
            Error::WrongMethod { .. } | Error::ClientSecret(_) => super::EXIT_CONFIG,
            Error::Http(_) => super::EXIT_CONFIG,
            Error::Device(e) if e.is_config() => super::EXIT_CONFIG,
            _ => super::EXIT_FAILURE,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Clock::system(),
            max_wait: device::DEFAULT_MAX_WAIT,
        }
    }
}

/// `asset-agent enroll`.
///
/// # Errors
/// See [`Error`]; configuration errors as [`super::Error::Config`].
pub async fn run(config_path: Option<PathBuf>) -> Result<(), super::Error> {
    let config = load_config(config_path)?;
    let enrolled = enroll(&config, Options::default(), print).await?;
    let path = enrolled.path.display();
    println!();
    println!("Enrolled. The refresh token is stored in {path} (mode 0600).");
    if let Some((uid, gid)) = enrolled.owner {
        println!(
            "It belongs to uid {uid}, gid {gid} (the owner of its directory), so the agent can read it."
        );
    }
    if enrolled.replaced {
        println!("It replaced the refresh token that was there.");
    }
    println!(
        "A running agent picks it up within {} s; otherwise start it (systemctl start asset-agent).",
        ENROLLMENT_POLL.as_secs()
    );
    Ok(())
}

/// Runs the device flow for `config` and stores the refresh token; `report` sees the code
/// to show and each polling event.
///
/// # Errors
/// See [`Error`].
pub async fn enroll(
    config: &Config,
    options: Options,
    mut report: impl FnMut(Progress<'_>),
) -> Result<Enrolled, Error> {
    let scope = match &config.auth.method {
        AuthMethod::DeviceFlow { scope } => scope.as_deref(),
        AuthMethod::RefreshToken => None,
        other => {
            return Err(Error::WrongMethod {
                method: other.name(),
            });
        }
    };
    crate::crypto::install();
    let sf = &config.salesforce;
    let up = Upstream::new(
        &sf.instance_url,
        sf.ca_file.as_deref(),
        sf.timeout,
        options.clock,
        Arc::new(Skew::default()),
    )
    .map_err(Error::Http)?;
    let client = Client {
        client_id: sf.client_id.clone(),
        client_secret: sf
            .client_secret_file
            .as_deref()
            .map(agent::read_client_secret)
            .transpose()
            .map_err(Error::ClientSecret)?,
    };
    let auth = device::start(&up, &client, scope)
        .await
        .map_err(Error::Device)?;
    report(Progress::Code(&auth));
    let resp = auth
        .wait(&up, &client, options.max_wait, |e| {
            report(Progress::Poll(e))
        })
        .await
        .map_err(|e| match e {
            device::Error::Denied { .. }
            | device::Error::Expired { .. }
            | device::Error::TimedOut { .. } => Error::Incomplete(e),
            e => Error::Device(e),
        })?;
    let Some(refresh) = resp.refresh_token else {
        return Err(Error::Device(device::Error::NoRefreshToken));
    };
    let path = config.auth.refresh_token_file.clone();
    let store_err = |source| Error::Store {
        path: path.clone(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fsutil::ensure_dir(dir, 0o700).map_err(store_err)?;
    let replaced = path.exists();
    let owner = owner_for(dir);
    fsutil::write_secret_atomic_as(&path, refresh.expose().as_bytes(), owner).map_err(store_err)?;
    tracing::info!(file = %path.display(), "device enrolled; refresh token stored");
    Ok(Enrolled {
        path,
        replaced,
        owner,
    })
}

/// Run as root, a file in a directory owned by someone else (the service user's state
/// directory) must be theirs, or the agent could not read its own refresh token.
fn owner_for(dir: &Path) -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let meta = std::fs::metadata(dir).ok()?;
    (meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

/// The command's output: the code and URL on stdout, framed so they stand out; progress
/// on stderr.
fn print(p: Progress<'_>) {
    match p {
        Progress::Code(auth) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "\nTo enroll this device, open this address in a browser (any computer or phone):\n\n    {}\n\nsign in, and enter the code:\n\n    {}\n",
                auth.verification_uri, auth.user_code
            );
            let _ = writeln!(
                out,
                "Waiting for approval (checking every {} s; Ctrl-C to give up)...",
                auth.interval.as_secs()
            );
            let _ = out.flush();
        }
        Progress::Poll(Event::Pending) => {}
        Progress::Poll(Event::SlowDown(interval)) => {
            eprintln!(
                "Salesforce asked to poll more slowly: now every {} s",
                interval.as_secs()
            );
        }
        Progress::Poll(Event::Retrying { reason, in_ }) => {
            eprintln!("{reason}; trying again in {} s", in_.as_secs());
        }
    }
}
