//! systemd integration: the `sd_notify(3)` protocol without libsystemd.
//!
//! - [`Notifier`]: the `sd_notify(3)` datagram protocol. systemd passes the address of its
//!   notification socket in `NOTIFY_SOCKET` (a path, or an abstract name written with a
//!   leading `@`); the service sends newline-separated `KEY=VALUE` assignments to it in one
//!   datagram each. The assignments are the `sd-notify` crate's [`NotifyState`]s; the
//!   sending is ours, on std's `UnixDatagram`, because that crate's `notify` cannot reach an
//!   abstract socket (it hands `@name` to `connect` as a file name) and blocks without a
//!   limit when systemd's queue is full. The tests show the first.
//! - [`watchdog_timeout`]: `WATCHDOG_USEC`/`WATCHDOG_PID`, as `sd_watchdog_enabled(3)`
//!   reads them. Not the crate's `watchdog_enabled`: it reports `WATCHDOG_USEC=0` as a
//!   watchdog of zero (pings in a busy loop) and an unreadable `WATCHDOG_PID` as ours,
//!   where libsystemd reports no watchdog for both (the tests show it).
//! - `supervisor`: the task that turns the refresh loop's state into `READY=1`,
//!   `STATUS=` and `WATCHDOG=1` (see its docs for the readiness and liveness rules).
//!
//! We never unset `NOTIFY_SOCKET` (libsystemd can): the agent starts no child processes
//! that could inherit it, and removing an environment variable is `unsafe` in Rust 2024.

pub(crate) mod supervisor;

use std::collections::HashMap;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

pub use supervisor::{Readiness, Resync, Supervisor, Why};

/// `NOTIFY_SOCKET`: where the service manager listens.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// `WATCHDOG_USEC`: the watchdog timeout in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// `WATCHDOG_PID`: the process the watchdog settings are meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// A send to the service manager blocks at most this long. The socket is a local datagram
/// socket, so a send only blocks when systemd's queue is full; waiting longer would stall
/// the runtime thread and, with it, the very liveness we report.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// `STATUS=` texts are cut to this many bytes: `systemctl status` shows one line.
const MAX_STATUS: usize = 400;

/// The notification socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "NOTIFY_SOCKET={value:?} is not a supported address (expected an absolute path or @abstract-name)"
    )]
    Address { value: String },
    #[error("NOTIFY_SOCKET={value:?} is not a valid socket address")]
    BadAddress {
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("could not create a datagram socket for sd_notify")]
    Socket(#[source] io::Error),
    #[error("could not send {what} to the service manager")]
    Send {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Whether `READY=1` was sent: reload notifications only make sense after it, and a
    /// `READY=1` sent to end a reload must never be the first one (it would declare the
    /// service started before it holds a token).
    ready: AtomicBool,
}

// === impl Notifier ===

impl Notifier {
    /// The notifier for this process: `None` when `NOTIFY_SOCKET` is unset or empty (not
    /// started by systemd with `Type=notify`).
    ///
    /// # Errors
    /// An address we cannot use (e.g. `vsock:`), or no socket could be created.
    pub fn from_env() -> Result<Option<Self>, Error> {
        match std::env::var(NOTIFY_SOCKET) {
            Ok(v) if !v.is_empty() => Self::connect(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for the address `value`, as `NOTIFY_SOCKET` writes it.
    ///
    /// # Errors
    /// See [`Notifier::from_env`].
    pub fn connect(value: &str) -> Result<Self, Error> {
        let addr = parse_address(value)?;
        let socket = UnixDatagram::unbound().map_err(Error::Socket)?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(Error::Socket)?;
        Ok(Self {
            socket,
            addr,
            ready: AtomicBool::new(false),
        })
    }

    /// Sends `states`, one `KEY=VALUE` line each, in one datagram.
    ///
    /// # Errors
    /// [`Error::Send`] when the datagram could not be delivered.
    pub fn notify(&self, states: &[NotifyState<'_>]) -> Result<(), Error> {
        let lines: Vec<String> = states.iter().map(ToString::to_string).collect();
        let datagram = lines.join("\n");
        self.socket
            .send_to_addr(datagram.as_bytes(), &self.addr)
            .map(drop)
            .map_err(|source| Error::Send {
                what: lines.first().cloned().unwrap_or_default(),
                source,
            })
    }

    /// `READY=1` with a `STATUS=`: start-up is complete. Later calls are no-ops.
    ///
    /// # Errors
    /// See [`Notifier::notify`].
    pub fn ready(&self, status: &str) -> Result<(), Error> {
        if self.ready.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.notify(&[NotifyState::Ready, NotifyState::Status(&sanitize(status))])
    }

    /// Whether `READY=1` has been sent.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// `STATUS=`: a one-line description `systemctl status` shows.
    ///
    /// # Errors
    /// See [`Notifier::notify`].
    pub fn status(&self, status: &str) -> Result<(), Error> {
        self.notify(&[NotifyState::Status(&sanitize(status))])
    }

    /// `WATCHDOG=1`, plus, before `READY=1`, `EXTEND_TIMEOUT_USEC=` so a start that waits
    /// for a token (enrollment, an outage) is not killed while it is alive; see the unit.
    ///
    /// # Errors
    /// See [`Notifier::notify`].
    pub fn watchdog(&self, extend_start_by: Duration) -> Result<(), Error> {
        if self.is_ready() {
            self.notify(&[NotifyState::Watchdog])
        } else {
            // The crate's field is a u32 of microseconds: at most ~71 minutes.
            let usec = u32::try_from(extend_start_by.as_micros()).unwrap_or(u32::MAX);
            self.notify(&[NotifyState::Watchdog, NotifyState::ExtendTimeoutUsec(usec)])
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    ///
    /// # Errors
    /// See [`Notifier::notify`].
    pub fn stopping(&self, status: &str) -> Result<(), Error> {
        self.notify(&[
            NotifyState::Stopping,
            NotifyState::Status(&sanitize(status)),
        ])
    }

    /// `RELOADING=1` when the service is ready (systemd then waits for [`Notifier::reloaded`]);
    /// nothing before that, because the `READY=1` ending a reload must not be the first.
    ///
    /// # Errors
    /// See [`Notifier::notify`].
    pub fn reloading(&self) -> Result<(), Error> {
        if self.is_ready() {
            self.notify(&[
                NotifyState::Reloading,
                NotifyState::Status("reloading the configuration"),
            ])
        } else {
            Ok(())
        }
    }

    /// Ends a reload: `READY=1` again, only if it was sent before. The outcome goes to the
    /// log and to whoever asked; `STATUS=` goes back to the agent's state (the supervisor
    /// resends it), so it does not keep showing a reload long after.
    ///
    /// # Errors
    /// See [`Notifier::notify`].
    pub fn reloaded(&self) -> Result<(), Error> {
        if self.is_ready() {
            self.notify(&[NotifyState::Ready])
        } else {
            Ok(())
        }
    }
}

/// `@name` is an abstract socket (the leading `@` stands for the NUL byte); anything else
/// must be an absolute path. `vsock:` addresses (systemd 254+, for VMs) are not supported.
fn parse_address(value: &str) -> Result<SocketAddr, Error> {
    let bad = |source| Error::BadAddress {
        value: value.to_owned(),
        source,
    };
    if let Some(name) = value.strip_prefix('@') {
        return SocketAddr::from_abstract_name(name.as_bytes()).map_err(bad);
    }
    if value.starts_with('/') {
        return SocketAddr::from_pathname(value).map_err(bad);
    }
    Err(Error::Address {
        value: value.to_owned(),
    })
}

/// A `STATUS=` value must stay on one line: a newline would start a new assignment, so a
/// server-supplied error text containing "\nREADY=1" could otherwise declare us ready.
pub fn sanitize(status: &str) -> String {
    let mut out: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_STATUS {
        let mut cut = MAX_STATUS;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The watchdog timeout systemd expects pings within, if it is meant for this process:
/// `WATCHDOG_USEC` set and non-zero, and `WATCHDOG_PID` either unset or our pid (it is set
/// when the variable could leak to a child that is not the main process).
pub fn watchdog_timeout(env: &HashMap<String, String>) -> Option<Duration> {
    if let Some(pid) = env.get(WATCHDOG_PID)
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = env.get(WATCHDOG_USEC)?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// [`watchdog_timeout`] for the process environment.
pub fn watchdog_timeout_from_env() -> Option<Duration> {
    let env: HashMap<String, String> = [WATCHDOG_USEC, WATCHDOG_PID]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
        .collect();
    watchdog_timeout(&env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.status("starting").unwrap();
        assert_eq!(recv(&server), "STATUS=starting");
        assert!(!n.is_ready());
        n.reloading().unwrap(); // not ready: nothing is sent
        n.watchdog(Duration::from_secs(30)).unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1\nEXTEND_TIMEOUT_USEC=30000000");
        n.ready("ready: x").unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=ready: x");
        n.ready("again").unwrap(); // only once
        n.watchdog(Duration::from_secs(30)).unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1");
        n.reloading().unwrap();
        assert_eq!(
            recv(&server),
            "RELOADING=1\nSTATUS=reloading the configuration"
        );
        n.reloaded().unwrap();
        assert_eq!(recv(&server), "READY=1");
        n.stopping("bye").unwrap();
        assert_eq!(recv(&server), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("asset-agent-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.notify(&[NotifyState::Watchdog]).unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1");
    }

    /// Set in the environment of this test binary run again as a child (the `sd-notify`
    /// crate reads only the process environment, which a test cannot change safely).
    const PROBE: &str = "ASSET_AGENT_SD_NOTIFY_PROBE";

    /// In the child: what the `sd-notify` crate answers, printed for the parent.
    #[test]
    #[ignore = "run as a child by the sd_notify_crate tests"]
    fn sd_notify_crate_probe() {
        match std::env::var(PROBE).as_deref() {
            Ok("notify") => {
                let sent = sd_notify::notify(&[NotifyState::Watchdog]);
                println!("probe: {}", if sent.is_ok() { "sent" } else { "failed" });
            }
            Ok("watchdog") => println!("probe: {:?}", sd_notify::watchdog_enabled()),
            _ => {}
        }
    }

    /// This test binary run as a child with `env`, running only the probe of `what`.
    fn probe(what: &str, env: &[(&str, &str)]) -> String {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "systemd::tests::sd_notify_crate_probe",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env_remove(NOTIFY_SOCKET)
            .env_remove(WATCHDOG_USEC)
            .env_remove(WATCHDOG_PID)
            .env(PROBE, what)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("probe: "))
            .unwrap_or(&stdout)
            .to_owned()
    }

    /// Why the sending is ours: the crate's `notify` gives `@name` to `connect` as a file
    /// name, so systemd's abstract notification socket never hears from it. (When this
    /// fails, the crate has learnt abstract sockets and could do the sending.)
    #[test]
    fn the_sd_notify_crate_cannot_reach_an_abstract_socket() {
        let name = format!("asset-agent-probe-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        server.set_nonblocking(true).unwrap();
        let at = format!("@{name}");
        assert_eq!(probe("notify", &[(NOTIFY_SOCKET, at.as_str())]), "failed");
        assert!(server.recv(&mut [0u8; 64]).is_err(), "the crate reached it");
        // The same address through ours arrives.
        Notifier::connect(&at)
            .unwrap()
            .notify(&[NotifyState::Watchdog])
            .unwrap();
        server.set_nonblocking(false).unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1");
    }

    /// Why the watchdog settings are read by ours: where libsystemd (and
    /// [`watchdog_timeout`]) see no watchdog, the crate sees one.
    #[test]
    fn the_sd_notify_crate_reads_a_watchdog_where_there_is_none() {
        let zero = [(WATCHDOG_USEC, "0")];
        assert_eq!(probe("watchdog", &zero), "Some(0ns)");
        let env: HashMap<String, String> = zero
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(watchdog_timeout(&env), None);
        let unreadable_pid = [(WATCHDOG_USEC, "500000"), (WATCHDOG_PID, "x")];
        assert_eq!(probe("watchdog", &unreadable_pid), "Some(500ms)");
        let env: HashMap<String, String> = unreadable_pid
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(watchdog_timeout(&env), None);
    }

    #[test]
    fn rejects_unsupported_addresses() {
        for bad in ["relative/path", "vsock:2:1234"] {
            assert!(matches!(Notifier::connect(bad), Err(Error::Address { .. })));
        }
    }

    #[test]
    fn a_gone_manager_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::connect(dir.path().join("absent").to_str().unwrap()).unwrap();
        let err = n.notify(&[NotifyState::Ready]).unwrap_err();
        assert!(err.to_string().contains("READY=1"), "{err}");
    }

    #[test]
    fn status_cannot_inject_assignments() {
        assert_eq!(sanitize("bad\nREADY=1"), "bad READY=1");
        let long = "é".repeat(400);
        let s = sanitize(&long);
        assert!(s.len() <= MAX_STATUS + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }

    #[test]
    fn watchdog_env() {
        let env = |pairs: &[(&str, String)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        let me = std::process::id().to_string();
        let rows = [
            (env(&[]), None),
            (env(&[(WATCHDOG_USEC, "0".into())]), None),
            (env(&[(WATCHDOG_USEC, "x".into())]), None),
            (
                env(&[(WATCHDOG_USEC, "30000000".into())]),
                Some(Duration::from_secs(30)),
            ),
            (
                env(&[(WATCHDOG_USEC, "500000".into()), (WATCHDOG_PID, me)]),
                Some(Duration::from_millis(500)),
            ),
            (
                env(&[(WATCHDOG_USEC, "500000".into()), (WATCHDOG_PID, "1".into())]),
                None,
            ),
        ];
        for (e, want) in rows {
            assert_eq!(watchdog_timeout(&e), want, "{e:?}");
        }
    }
}
