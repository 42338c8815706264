//! Local checks: the device key, the credentials `auth.method` needs, the state and
//! runtime directories, and the socket path.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::Finding;
use crate::agent;
use crate::config::{AuthMethod, Config};
use crate::error::chain;
use crate::keys::{FileKey, LoadError, Signer as _};
use crate::salesforce::subject::{self, read_refresh_token_trusting};
use crate::secure_path::{self, Trust};

/// Where an installed socket unit may live, in systemd's order of precedence.
const SOCKET_UNITS: [&str; 3] = [
    "/etc/systemd/system/asset-agent.socket",
    "/usr/lib/systemd/system/asset-agent.socket",
    "/lib/systemd/system/asset-agent.socket",
];

pub(super) fn check(config: &Config) -> Vec<Finding> {
    let trust = trust(config);
    let mut out = vec![key(config, &trust)];
    out.extend(credentials(config, &trust));
    out.extend(state_files(config, &trust));
    out.push(directory(
        "state_dir",
        &config.state.dir,
        "the device key, refresh token and token cache",
    ));
    match config.api.socket.parent() {
        Some(dir) => out.push(directory("runtime_dir", dir, "the socket")),
        None => out.push(Finding::error(
            "runtime_dir",
            format!(
                "api.socket {} has no directory",
                config.api.socket.display()
            ),
            "set api.socket to an absolute path such as /run/asset-agent/agent.sock",
        )),
    }
    out.extend(socket(config));
    out
}

/// Who may own the secrets: this user and root, and, when the check runs as root, the
/// owner of the state directory (the service user, whose files these are).
fn trust(config: &Config) -> Trust {
    let trust = Trust::process();
    if rustix::process::geteuid().is_root()
        && let Ok(meta) = fs::metadata(&config.state.dir)
    {
        return trust.and(meta.uid());
    }
    trust
}

/// The rule `run` applies to every secret and state file ([`agent::unsafe_paths`]), for
/// the files the key and credentials findings do not already cover: the token cache, and
/// files not created yet in a directory others can write.
fn state_files(config: &Config, trust: &Trust) -> Vec<Finding> {
    let mut out = Vec::new();
    for (what, path) in agent::secret_paths(config) {
        let covered = what != "token cache" && fs::symlink_metadata(&path).is_ok();
        if covered {
            continue;
        }
        match secure_path::check(what, &path, trust) {
            Err(e) if agent::discardable(&e) => out.push(Finding::warning(
                "permissions",
                e.to_string(),
                "nothing: the agent discards this cache at start and fetches a fresh token",
            )),
            Err(e) => out.push(unsafe_finding("permissions", &e)),
            Ok(_) => {}
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            "permissions",
            "every secret and state file and the directories above them are private to the service user",
        ));
    }
    out
}

/// A finding for a refused path: the message, and the fix the error names.
fn unsafe_finding(check: &'static str, e: &secure_path::Error) -> Finding {
    let text = e.to_string();
    match text.split_once("; fix it with: ") {
        Some((message, fix)) => Finding::error(check, message, fix),
        None => Finding::error(
            check,
            text.clone(),
            "make it a private regular file of the service user",
        ),
    }
}

fn key(config: &Config, trust: &Trust) -> Finding {
    let Some(path) = config.key.file() else {
        return token_key(config, trust);
    };
    if matches!(fs::symlink_metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound) {
        return Finding::warning(
            "key",
            format!("no device key yet at {}", path.display()),
            "on a first install nothing: `asset-agent run` generates it on first start (then `asset-agent key show` to register it); if this device had a key before, restore it from backup",
        );
    }
    if let Some(f) = foreign_owner("key", path, &config.state.dir) {
        return f;
    }
    match FileKey::load_trusting(path, trust) {
        Ok(k) => Finding::ok(
            "key",
            format!(
                "{}: RSA {} bits, owner-only, thumbprint {}",
                path.display(),
                k.bits(),
                k.public_jwk().kid
            ),
        ),
        Err(e) => {
            let p = path.display();
            let fix = match &e {
                LoadError::Permissions { .. } => format!("chmod 600 {p}"),
                LoadError::Read { source, .. }
                    if source.kind() == io::ErrorKind::PermissionDenied =>
                {
                    format!(
                        "run the check as the service user or root; the service user must own it: chown asset-agent: {p} && chmod 600 {p}"
                    )
                }
                LoadError::Unsafe(u) => return unsafe_finding("key", u),
                LoadError::Pkcs1 { .. } => format!(
                    "convert it: openssl pkcs8 -topk8 -nocrypt -in {p} -out {p}.p8 && mv {p}.p8 {p}"
                ),
                _ => format!(
                    "move {p} away and run `asset-agent key generate` (or restart the agent); the Asset links again through its serial number"
                ),
            };
            Finding::error("key", chain(&e), fix)
        }
    }
}

/// A key in a PKCS#11 token: the module loads, the token is found, the PIN logs in, the
/// key is there, and a test signature verifies with its public key (checked with ring, not
/// by the token). Never creates a key.
fn token_key(config: &Config, trust: &Trust) -> Finding {
    use crate::keys::{Mode, OpenError, Pkcs11Error as P};
    let opened = match crate::keys::open_trusting(&config.key, Mode::Existing, trust) {
        Ok(k) => k,
        Err(e) => {
            let fix = match &e {
                OpenError::Pkcs11(P::LoadModule { .. }) => {
                    "install the token's PKCS#11 module and name it in key.module"
                }
                OpenError::Pkcs11(P::Initialize { .. } | P::Slots { .. } | P::NoToken { .. }) => {
                    "plug in or initialise the token (softhsm2-util --show-slots, pkcs11-tool -L), or fix token= in key.uri"
                }
                OpenError::Pkcs11(P::PinFile { source, .. }) => {
                    return unsafe_finding("key", source);
                }
                OpenError::Pkcs11(P::PinEmpty { .. } | P::WrongPin { .. }) => {
                    "put the token's user PIN into key.pin_file (owner-only); the agent offers it once and never retries a refused PIN"
                }
                OpenError::Pkcs11(P::PinLocked { .. }) => {
                    "unlock the user PIN with the security officer PIN (pkcs11-tool --init-pin --login --login-type so)"
                }
                OpenError::Pkcs11(P::NoKey { .. }) => {
                    "on a first install nothing: `asset-agent run` generates the key on the token on first start; otherwise run `asset-agent key generate`"
                }
                _ => "see the message; `asset-agent key show` repeats the same steps",
            };
            return Finding::error("key", chain(&e), fix);
        }
    };
    let jwk = opened.signer.public_jwk();
    let probe = b"asset-agent check: test signature";
    match opened.signer.sign_rs256(probe) {
        Ok(sig) if jwk.verify_rs256(probe, &sig) => Finding::ok(
            "key",
            format!(
                "{}: module loaded, token found, logged in, RSA {} bits, test signature verified, thumbprint {}",
                opened.location,
                opened.signer.bits(),
                jwk.kid
            ),
        ),
        Ok(_) => Finding::error(
            "key",
            format!(
                "{}: the token's test signature does not verify with the key's public half",
                opened.location
            ),
            "the object's public key and private key do not belong together: move the key away and run `asset-agent key generate`",
        ),
        Err(e) => Finding::error(
            "key",
            format!("{}: {}", opened.location, chain(&e)),
            "check that the token allows CKM_SHA256_RSA_PKCS signatures with this key (CKA_SIGN)",
        ),
    }
}

fn credentials(config: &Config, trust: &Trust) -> Vec<Finding> {
    let mut out = Vec::new();
    match &config.auth.method {
        AuthMethod::RefreshToken | AuthMethod::DeviceFlow { .. } => {
            out.push(refresh_token(config, trust));
        }
        AuthMethod::JwtBearer(jb) => {
            let p = jb.assertion_key_file.display();
            out.push(match FileKey::load_trusting(&jb.assertion_key_file, trust) {
                Err(LoadError::Unsafe(u)) => unsafe_finding("credentials", &u),
                Ok(_) => Finding::ok("credentials", format!("JWT-bearer assertion key {p} is usable")),
                Err(e) => Finding::error(
                    "credentials",
                    format!("the JWT-bearer assertion key is unusable: {}", chain(&e)),
                    format!("give the service user an owner-only (0600) PKCS#8 RSA key at {p}, whose certificate is uploaded to the connected app"),
                ),
            });
        }
        AuthMethod::ClientCredentials => {}
    }
    if let Some(path) = &config.salesforce.client_secret_file {
        out.push(client_secret(path, trust));
    }
    out
}

fn refresh_token(config: &Config, trust: &Trust) -> Finding {
    let path = &config.auth.refresh_token_file;
    let p = path.display();
    if let Some(f) = foreign_owner("credentials", path, &config.state.dir) {
        return f;
    }
    match read_refresh_token_trusting(path, trust) {
        Ok(_) => Finding::ok("credentials", format!("refresh token present in {p}")),
        Err(subject::Error::UnsafeRefreshToken(u)) => unsafe_finding("credentials", &u),
        Err(subject::Error::NoRefreshToken { .. }) => Finding::warning(
            "credentials",
            format!("not enrolled yet: no refresh token in {p}; the agent runs but waits"),
            format!(
                "run `asset-agent enroll` (device flow), or store the connected app's refresh token in {p} (owner-only, owned by the service user)"
            ),
        ),
        Err(e @ subject::Error::RefreshTokenPermissions { .. }) => {
            Finding::error("credentials", chain(&e), format!("chmod 600 {p}"))
        }
        Err(e) => Finding::error(
            "credentials",
            chain(&e),
            format!("make {p} a readable file owned by the service user (chown asset-agent: {p})"),
        ),
    }
}

fn client_secret(path: &Path, trust: &Trust) -> Finding {
    let p = path.display();
    let fix = format!("put the consumer secret in {p}, owned by the service user, mode 0600");
    if let Err(
        e @ (secure_path::Error::Symlink { .. }
        | secure_path::Error::OpenDir { .. }
        | secure_path::Error::DirOwner { .. }
        | secure_path::Error::Owner { .. }
        | secure_path::Error::NotFile { .. }),
    ) = secure_path::check("client secret file", path, trust)
    {
        return unsafe_finding("credentials", &e);
    }
    match fs::metadata(path) {
        Err(e) => Finding::error(
            "credentials",
            format!("cannot read the client secret file {p}: {e}"),
            fix,
        ),
        Ok(m) if m.mode() & 0o077 != 0 => Finding::error(
            "credentials",
            format!(
                "the client secret file {p} is readable by others (mode {:04o})",
                m.mode() & 0o7777
            ),
            format!("chmod 600 {p}"),
        ),
        Ok(_) => match fs::read_to_string(path) {
            Ok(s) if s.trim().is_empty() => Finding::error(
                "credentials",
                format!("the client secret file {p} is empty"),
                fix,
            ),
            Ok(_) => Finding::ok("credentials", format!("client secret file {p} is usable")),
            Err(e) => Finding::error(
                "credentials",
                format!("cannot read the client secret file {p}: {e}"),
                fix,
            ),
        },
    }
}

/// Run as root, `path` would be readable whoever owns it; the service would not. The
/// state directory's owner is the service user (systemd's `StateDirectory=` makes it so),
/// so a secret inside it owned by anyone else (root, after a command run as root) is a
/// file the service cannot read.
fn foreign_owner(check: &'static str, path: &Path, state_dir: &Path) -> Option<Finding> {
    if rustix::process::geteuid().as_raw() != 0 {
        return None;
    }
    let dir_uid = fs::metadata(state_dir).ok()?.uid();
    let file_uid = fs::metadata(path).ok()?.uid();
    if dir_uid == 0 || file_uid == dir_uid || !path.starts_with(state_dir) {
        return None;
    }
    Some(Finding::error(
        check,
        format!(
            "{} is owned by uid {file_uid}, but the state directory {} belongs to uid {dir_uid} (the service user), which cannot read it",
            path.display(),
            state_dir.display()
        ),
        format!("chown {dir_uid}: {}", path.display()),
    ))
}

/// Whether the agent could write in `dir`, by creating and removing a probe file; a
/// missing directory must be creatable from its nearest existing ancestor.
fn directory(check: &'static str, dir: &Path, holds: &str) -> Finding {
    let d = dir.display();
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Finding::error(
            check,
            format!("{d} exists and is not a directory"),
            format!(
                "remove it, or point the setting elsewhere; it must be a directory for {holds}"
            ),
        ),
        Ok(_) => match probe(dir) {
            Ok(()) => Finding::ok(check, format!("{d} is writable")),
            Err(e) => Finding::error(
                check,
                format!(
                    "{d} is not writable by uid {}: {e}",
                    rustix::process::geteuid().as_raw()
                ),
                format!(
                    "the service user must own it: chown asset-agent: {d} (systemd's StateDirectory=/RuntimeDirectory= do this); on a read-only root filesystem, point it at writable storage"
                ),
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let ancestor = nearest_existing(dir);
            match ancestor.as_deref().map(probe) {
                Some(Ok(())) => Finding::info(
                    check,
                    format!(
                        "{d} does not exist yet; the agent (or systemd, from the unit) will create it"
                    ),
                ),
                Some(Err(err)) => Finding::error(
                    check,
                    format!(
                        "{d} does not exist and cannot be created: {} is not writable ({err})",
                        ancestor.as_deref().unwrap_or(dir).display()
                    ),
                    format!(
                        "create it for the service user: install -d -o asset-agent -g asset-agent -m 0700 {d}"
                    ),
                ),
                None => Finding::error(
                    check,
                    format!("{d} does not exist and has no existing parent"),
                    format!("create it: install -d -o asset-agent -g asset-agent -m 0700 {d}"),
                ),
            }
        }
        Err(e) => Finding::error(
            check,
            format!("cannot inspect {d}: {e}"),
            "make the directory reachable by the service user".to_owned(),
        ),
    }
}

fn probe(dir: &Path) -> io::Result<()> {
    let p = dir.join(format!(".asset-agent-check-{}", std::process::id()));
    let _ = fs::remove_file(&p);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)?;
    fs::remove_file(&p)
}

fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .skip(1)
        .find(|a| fs::metadata(a).is_ok())
        .map(Path::to_path_buf)
}

fn socket(config: &Config) -> Vec<Finding> {
    let path = &config.api.socket;
    let p = path.display();
    let mut out = vec![match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Finding::ok("socket", format!("{p} is free"))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Finding::error(
            "socket",
            format!(
                "uid {} cannot reach {p}: {e}",
                rustix::process::geteuid().as_raw()
            ),
            "apps reach the socket through the asset-agent group: usermod -aG asset-agent USER (then log in again), or run the check as the service user",
        ),
        Err(e) => Finding::error(
            "socket",
            format!("cannot inspect {p}: {e}"),
            "make its directory reachable by the service user",
        ),
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Finding::info(
                "socket",
                format!("an agent (or asset-agent.socket) is serving {p}"),
            ),
            Err(_) => Finding::warning(
                "socket",
                format!("{p} is a stale socket: nothing listens on it"),
                "nothing to fix: the agent removes a stale socket when it starts",
            ),
        },
        Ok(_) => Finding::error(
            "socket",
            format!("{p} exists and is not a socket; the agent refuses to replace it"),
            format!("remove {p}, or set api.socket to another path"),
        ),
    }];
    if let Some((unit, listen)) = SOCKET_UNITS
        .iter()
        .find_map(|u| listen_stream(Path::new(u)))
        && Path::new(&listen) != path.as_path()
    {
        out.push(Finding::warning(
            "socket",
            format!("{unit} listens on {listen}, but api.socket is {p}"),
            "make ListenStream= and api.socket the same path (or leave api.socket unset under systemd)",
        ));
    }
    out
}

/// The unit path and its `ListenStream=` value, if the unit exists and has one.
fn listen_stream(unit: &Path) -> Option<(String, String)> {
    let text = fs::read_to_string(unit).ok()?;
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ListenStream="))?
        .trim()
        .to_owned();
    Some((unit.display().to_string(), value))
}
