//! The device key inside a PKCS#11 token: an HSM, a secure element, or a TPM 2.0 through
//! tpm2-pkcs11. The private key is generated on the token and never leaves it.
//!
//! - **Module.** Loaded at run time with `cryptoki` (nothing to link at build time, so the
//!   cross builds stay as they are). PKCS#11 lets a process initialise a module once
//!   (`C_Initialize`), so the loaded modules are the one thing kept per process: a table
//!   from module path to module, shared by every key that names it. Everything else (the
//!   session, the key handles) belongs to one [`Pkcs11Key`], so several keys, on the same
//!   token or not, coexist.
//! - **Creation.** On first start the key pair is generated on the token (`CKA_TOKEN`,
//!   `CKA_PRIVATE`, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, `CKA_SIGN`), labelled with the
//!   URI's `object` and with its `id` (or one derived from the label). Two agents starting
//!   at once serialise on a lock file (`flock`) in the state directory and look again once
//!   they hold it, so only one of them generates.
//! - **Signing.** One session per key, behind a mutex: a token does one operation per
//!   session at a time. When the token or module resets (a TPM resource manager restart,
//!   an HSM unplugged and back, the session dropped) the next signature re-initialises the
//!   module if nobody has yet, opens a new session, logs in and finds the key again, then
//!   tries once more. A refused PIN is never retried: the key remembers it and fails fast
//!   until the agent restarts, and the module remembers it for the token (as a digest), so
//!   no other key on that token (a gateway's children sharing a PIN file) is offered the
//!   same PIN again: the agent alone cannot lock the token.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11 as Context};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{RawAuthPin, Ulong};
use zeroize::Zeroizing;

use super::{SignError, Signer};
use crate::config::Pkcs11;
use crate::secure_path::{self, Trust};
use wire::jose::RsaPublicJwk;

/// Why a token key could not be opened, created or used. Each message names the module,
/// the URI and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the key {uri} is in a PKCS#11 token (module {module}), but this asset-agent is a statically linked build (the musl tarball), and a static binary cannot load a PKCS#11 module: it has no dynamic loader. Install the glibc build instead (the .deb, asset-agent_<version>-1_<arch>.deb, for Debian 11+, Ubuntu 20.04+, Raspberry Pi OS bullseye+ and Jetson L4T 35+, or `cargo build --release` on the device's distribution), or keep the device key in a file instead (key.backend = \"file\", key.path)"
    )]
    StaticBinary { module: String, uri: String },
    #[error(
        "could not load the PKCS#11 module {module} for {uri}: check that key.module names the token's library and that its package is installed (softhsm2, libtpm2-pkcs11-1, or the vendor's)"
    )]
    LoadModule {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
    #[error(
        "the PKCS#11 module {module} failed to initialise (for {uri}): check that the token is present (plugged in; for a TPM, that the TPM and its resource manager or TCTI are up) and that the module's own configuration is readable"
    )]
    Initialize {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
    #[error("could not list the tokens of the PKCS#11 module {module} (for {uri})")]
    Slots {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
    #[error(
        "no token matches {uri} in the PKCS#11 module {module} (tokens present: {present}); plug the token in or initialise it, or fix token= in key.uri"
    )]
    NoToken {
        module: String,
        uri: String,
        present: String,
    },
    #[error("the PIN file for {uri} is unusable")]
    PinFile {
        uri: String,
        #[source]
        source: secure_path::Error,
    },
    #[error("the PIN file {} for {uri} is empty: write the token's user PIN into it", path.display())]
    PinEmpty { uri: String, path: PathBuf },
    #[error(
        "the token {uri} (module {module}) refused the PIN in {} (CKR_PIN_INCORRECT); it was tried once and is not retried, so the agent does not lock the token: put the token's user PIN into {} and restart the agent",
        pin_file.display(), pin_file.display()
    )]
    WrongPin {
        module: String,
        uri: String,
        pin_file: PathBuf,
    },
    #[error(
        "the user PIN of the token {uri} (module {module}) is locked (CKR_PIN_LOCKED): unlock or reset it with the security officer PIN, then restart the agent"
    )]
    PinLocked { module: String, uri: String },
    #[error("could not open a session with the token {uri} (module {module})")]
    Session {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
    #[error("could not log in to the token {uri} (module {module})")]
    Login {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
    #[error("could not look up the device key {uri} on its token (module {module})")]
    Find {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
    #[error(
        "the token has no private key {uri} (module {module}): it was deleted or never created; run `asset-agent key generate` to create one on the token (the Asset then links again through its serial number)"
    )]
    NoKey { module: String, uri: String },
    #[error(
        "the token holds {count} private keys matching {uri} (module {module}); remove the extra ones or give key.uri an id="
    )]
    Ambiguous {
        module: String,
        uri: String,
        count: usize,
    },
    #[error(
        "the key {uri} (module {module}) is not an RSA key of 2048 to 8192 bits; Salesforce asset tokens need RSA: point object= at an RSA key or at a free label to generate one"
    )]
    NotRsa { module: String, uri: String },
    #[error("could not read the public half of {uri} (module {module})")]
    PublicKey {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
    #[error(
        "could not generate a {bits}-bit RSA key pair on the token {uri} (module {module}); check that the token supports RSA-{bits} (most TPMs only do 2048) and has room"
    )]
    Generate {
        module: String,
        uri: String,
        bits: usize,
        #[source]
        source: Ck,
    },
    #[error(
        "key.bits = {bits} does not fit the PKCS#11 interface of this platform (CK_ULONG, at most {max}): set key.bits to 2048, 3072 or 4096 (for {uri}, module {module})",
        max = std::ffi::c_ulong::MAX
    )]
    Bits {
        module: String,
        uri: String,
        bits: usize,
    },
    #[error("could not take the key creation lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the token {uri} (module {module}) could not sign")]
    Sign {
        module: String,
        uri: String,
        #[source]
        source: Ck,
    },
}

/// A PKCS#11 failure as the cause line of an [`Error`]: `C_Login returned PinIncorrect`.
///
/// cryptoki's own `Display` adds the specification's paragraph about each return value:
/// ~20 KB of text in the binary for a sentence the user does not need. The function and
/// the return value's name are what a token's documentation and a search engine know.
#[derive(Debug)]
pub struct Ck(pub CkError);

impl fmt::Display for Ck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            CkError::Pkcs11(rv, function) => write!(f, "C_{function:?} returned {rv:?}"),
            CkError::LibraryLoading(e) => write!(f, "{e}"),
            // (Not cryptoki's Display: its match links the return values' paragraphs.)
            other => write!(f, "{other:?}"),
        }
    }
}

// No `source()`: the line above already says everything its inner error would.
impl std::error::Error for Ck {}

impl Error {
    /// Whether the token or its module may simply not be there yet (an HSM enumerated
    /// late at boot, a TPM resource manager still starting): the agent exits 1 and systemd
    /// starts it again, instead of 78 (a configuration to fix). A wrong or locked PIN, an
    /// unusable PIN file, a missing library and a wrong key are not transient.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Initialize { .. }
                | Error::Slots { .. }
                | Error::NoToken { .. }
                | Error::Session { .. }
                | Error::Login { .. }
                | Error::Find { .. }
        )
    }
}

/// A device key held in a PKCS#11 token.
pub struct Pkcs11Key {
    module: Arc<Module>,
    config: Pkcs11,
    /// The URI as shown in messages (canonical, without the module path).
    uri: String,
    trust: Trust,
    jwk: RsaPublicJwk,
    bits: usize,
    /// The signing session; `None` after a failure, so the next signature opens a new one.
    live: Mutex<Option<Live>>,
    /// Set once the token refused the PIN: it is never offered again by this key.
    pin_refused: Mutex<bool>,
}

/// An open, logged-in session and the key's handle in it.
struct Live {
    session: Session,
    key: ObjectHandle,
    /// The module generation the session was opened under.
    generation: u64,
}

/// A loaded, initialised module, shared by every key that names its path.
struct Module {
    path: PathBuf,
    ctx: Context,
    /// Bumped by every re-initialisation, so concurrent recoveries re-initialise once.
    generation: Mutex<u64>,
    /// PINs a token refused, as SHA-256 of the token's identity and the PIN: never offered
    /// to that token again by this process.
    refused: Mutex<Vec<[u8; 32]>>,
}

// === impl Pkcs11Key ===

impl Pkcs11Key {
    /// Opens the key `config` names: loads the module, finds the token, logs in with the
    /// PIN from the PIN file and finds the key. With `create`, a missing key is generated
    /// on the token (under the lock in `lock_dir`). Returns whether it was created.
    ///
    /// # Errors
    /// An [`Error`] naming the module, the URI and the fix.
    pub fn open(
        config: &Pkcs11,
        bits: usize,
        create: bool,
        lock_dir: &Path,
        trust: &Trust,
    ) -> Result<(Self, bool), Error> {
        let uri = config.uri.to_string();
        loadable(STATIC_BINARY, &config.module, &uri)?;
        // Whoever may create the key holds the lock for the whole open, so a second agent
        // starting at once neither generates a second key nor reads the token while the
        // first is still writing it (SoftHSM's file store is not safe to read mid-write).
        let _lock = match create {
            true => Some(CreationLock::take(
                lock_dir,
                &lock_name(&config.module, &uri),
            )?),
            false => None,
        };
        let module = Module::load(&config.module, &uri)?;
        let mut key = Self {
            module,
            config: config.clone(),
            uri,
            trust: trust.clone(),
            jwk: RsaPublicJwk::from_components(&[], &[]),
            bits: 0,
            live: Mutex::new(None),
            pin_refused: Mutex::new(false),
        };
        let generation = key.module.generation();
        let session = key.login(generation)?;
        let (handle, created) = match key.find(&session)? {
            Some(h) => (h, false),
            None if create => (key.create(&session, bits)?, true),
            None => return Err(key.no_key()),
        };
        let (n, e) = key.public_parts(&session, handle)?;
        key.bits = wire::jose::der::bit_length(&n);
        if !(super::file::MIN_BITS..=super::file::MAX_BITS).contains(&key.bits) {
            return Err(Error::NotRsa {
                module: key.module_name(),
                uri: key.uri.clone(),
            });
        }
        key.jwk = RsaPublicJwk::from_components(&n, &e);
        *lock(&key.live) = Some(Live {
            session,
            key: handle,
            generation,
        });
        Ok((key, created))
    }

    /// The URI and module, for messages.
    pub fn location(&self) -> String {
        format!("{} (module {})", self.uri, self.module_name())
    }

    fn module_name(&self) -> String {
        self.module.path.display().to_string()
    }

    fn no_key(&self) -> Error {
        Error::NoKey {
            module: self.module_name(),
            uri: self.uri.clone(),
        }
    }

    /// The slot whose token matches the URI.
    fn slot(&self) -> Result<Slot, Error> {
        let (module, uri) = (self.module_name(), self.uri.clone());
        let slots = self
            .module
            .ctx
            .get_slots_with_token()
            .map_err(|source| Error::Slots {
                module: module.clone(),
                uri: uri.clone(),
                source: Ck(source),
            })?;
        let want = &self.config.uri;
        let mut present = Vec::new();
        for slot in slots {
            let Ok(info) = self.module.ctx.get_token_info(slot) else {
                continue;
            };
            let label = info.label().trim_end();
            present.push(format!("{label:?}"));
            let same = |want: &Option<String>, have: &str| {
                want.as_deref().is_none_or(|w| w == have.trim_end())
            };
            if same(&want.token, label)
                && same(&want.manufacturer, info.manufacturer_id())
                && same(&want.model, info.model())
                && same(&want.serial, info.serial_number())
                && want.slot_id.is_none_or(|id| id == slot.id())
            {
                return Ok(slot);
            }
        }
        Err(Error::NoToken {
            module,
            uri,
            present: if present.is_empty() {
                "none".to_owned()
            } else {
                present.join(", ")
            },
        })
    }

    /// A new read-write session on the token, logged in as the user. The PIN is offered
    /// at most once per call and never again after the token refused it.
    fn login(&self, generation: u64) -> Result<Session, Error> {
        let (module, uri) = (self.module_name(), self.uri.clone());
        if *lock(&self.pin_refused) {
            return Err(self.wrong_pin());
        }
        let slot = self.slot()?;
        let session = self
            .module
            .ctx
            .open_rw_session(slot)
            .map_err(|source| Error::Session {
                module: module.clone(),
                uri: uri.clone(),
                source: Ck(source),
            })?;
        let token = self
            .module
            .ctx
            .get_token_info(slot)
            .map(|t| format!("{}\n{}", t.serial_number(), t.label()))
            .unwrap_or_else(|_| slot.id().to_string());
        let (pin, digest) = self.read_pin(&token)?;
        if lock(&self.module.refused).contains(&digest) {
            *lock(&self.pin_refused) = true;
            return Err(self.wrong_pin());
        }
        tracing::debug!(key = %self.location(), "offering the user PIN to the token");
        match session.login_with_raw(UserType::User, &pin) {
            Ok(()) => {}
            // Login state is per token and process: another key on it already logged in.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                *lock(&self.pin_refused) = true;
                lock(&self.module.refused).push(digest);
                return Err(self.wrong_pin());
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                *lock(&self.pin_refused) = true;
                lock(&self.module.refused).push(digest);
                return Err(Error::PinLocked { module, uri });
            }
            Err(source) => {
                return Err(Error::Login {
                    module,
                    uri,
                    source: Ck(source),
                });
            }
        }
        tracing::debug!(key = %self.location(), generation, "logged in to the token");
        Ok(session)
    }

    fn wrong_pin(&self) -> Error {
        Error::WrongPin {
            module: self.module_name(),
            uri: self.uri.clone(),
            pin_file: self.config.pin_file.clone(),
        }
    }

    /// The PIN from the PIN file, and its digest for `token` (see [`Module::refused`]).
    fn read_pin(&self, token: &str) -> Result<(RawAuthPin, [u8; 32]), Error> {
        let raw = secure_path::read("PKCS#11 PIN file", &self.config.pin_file, &self.trust)
            .map_err(|source| Error::PinFile {
                uri: self.uri.clone(),
                source,
            })?;
        let mut pin = Zeroizing::new(raw.to_vec());
        while matches!(pin.last(), Some(b'\n' | b'\r')) {
            pin.pop();
        }
        if pin.is_empty() {
            return Err(Error::PinEmpty {
                uri: self.uri.clone(),
                path: self.config.pin_file.clone(),
            });
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(token.as_bytes());
        ctx.update(&[0]);
        ctx.update(&pin);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ctx.finish().as_ref());
        Ok((RawAuthPin::new(Box::new(pin.to_vec())), digest))
    }

    /// `CKA_ID`: the URI's `id=`, else the first 16 bytes of SHA-256 of the label, so the
    /// same object name always gives the same id.
    fn id(&self) -> Vec<u8> {
        match &self.config.uri.id {
            Some(id) => id.clone(),
            None => {
                let d =
                    ring::digest::digest(&ring::digest::SHA256, self.config.uri.object.as_bytes());
                d.as_ref().iter().take(16).copied().collect()
            }
        }
    }

    /// The private key with the URI's label (and id, when the URI gives one).
    fn find(&self, session: &Session) -> Result<Option<ObjectHandle>, Error> {
        let mut template = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(self.config.uri.object.as_bytes().to_vec()),
        ];
        if let Some(id) = &self.config.uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = session
            .find_objects(&template)
            .map_err(|source| Error::Find {
                module: self.module_name(),
                uri: self.uri.clone(),
                source: Ck(source),
            })?;
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            more => Err(Error::Ambiguous {
                module: self.module_name(),
                uri: self.uri.clone(),
                count: more.len(),
            }),
        }
    }

    /// Generates the key pair on the token (the caller holds the creation lock and has
    /// looked for it under the lock) and returns the private key's handle.
    fn create(&self, session: &Session, bits: usize) -> Result<ObjectHandle, Error> {
        let label = self.config.uri.object.as_bytes().to_vec();
        let id = self.id();
        let modulus_bits = modulus_bits(bits, &self.module_name(), &self.uri)?;
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::ModulusBits(modulus_bits),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label),
            Attribute::Id(id),
        ];
        let (_, private) = session
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
            .map_err(|source| Error::Generate {
                module: self.module_name(),
                uri: self.uri.clone(),
                bits,
                source: Ck(source),
            })?;
        tracing::info!(key = %self.location(), bits, "generated the device key on the token");
        Ok(private)
    }

    /// Modulus and public exponent, read from the private key (PKCS#11 makes them
    /// readable on RSA private keys even when sensitive).
    fn public_parts(
        &self,
        session: &Session,
        key: ObjectHandle,
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let attrs = session
            .get_attributes(
                key,
                &[
                    AttributeType::KeyType,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(|source| Error::PublicKey {
                module: self.module_name(),
                uri: self.uri.clone(),
                source: Ck(source),
            })?;
        let (mut rsa, mut n, mut e) = (false, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => rsa = t == KeyType::RSA,
                Attribute::Modulus(m) => n = Some(m),
                Attribute::PublicExponent(x) => e = Some(x),
                _ => {}
            }
        }
        match (rsa, n, e) {
            (true, Some(n), Some(e)) => Ok((n, e)),
            _ => Err(Error::NotRsa {
                module: self.module_name(),
                uri: self.uri.clone(),
            }),
        }
    }

    /// Signs in `live`'s session, opening one first when there is none.
    fn sign_once(&self, live: &mut Option<Live>, message: &[u8]) -> Result<Vec<u8>, Error> {
        if live.is_none() {
            let generation = self.module.generation();
            let session = self.login(generation)?;
            let key = self.find(&session)?.ok_or_else(|| self.no_key())?;
            let (n, e) = self.public_parts(&session, key)?;
            if RsaPublicJwk::from_components(&n, &e).kid != self.jwk.kid {
                // A different key under the same label: signing with it would break every
                // token bound to the old thumbprint.
                return Err(self.no_key());
            }
            *live = Some(Live {
                session,
                key,
                generation,
            });
        }
        let Some(l) = live.as_ref() else {
            return Err(self.no_key());
        };
        l.session
            .sign(&Mechanism::Sha256RsaPkcs, l.key, message)
            .map_err(|source| Error::Sign {
                module: self.module_name(),
                uri: self.uri.clone(),
                source: Ck(source),
            })
    }

    fn sign_serialised(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let mut live = lock(&self.live);
        match self.sign_once(&mut live, message) {
            Ok(sig) => Ok(sig),
            Err(e) if recoverable(&e) => {
                tracing::warn!(key = %self.location(), error = %crate::error::chain(&e),
                    "the token session failed; re-opening it and trying once more");
                let seen = live
                    .take()
                    .map_or_else(|| self.module.generation(), |l| l.generation);
                self.module
                    .reinitialize(seen)
                    .map_err(|source| Error::Initialize {
                        module: self.module_name(),
                        uri: self.uri.clone(),
                        source: Ck(source),
                    })?;
                self.sign_once(&mut live, message).inspect_err(|_| {
                    *live = None;
                })
            }
            Err(e) => {
                *live = None;
                Err(e)
            }
        }
    }
}

impl Signer for Pkcs11Key {
    fn public_jwk(&self) -> &RsaPublicJwk {
        &self.jwk
    }

    fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_serialised(message).map_err(SignError::caused_by)
    }

    fn bits(&self) -> usize {
        self.bits
    }

    fn may_block(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("uri", &self.uri)
            .field("module", &self.module.path)
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

/// Whether a new session (after re-initialising the module) may cure `e`: the token or
/// module was reset, the session or handle went stale. Never a PIN problem.
fn recoverable(e: &Error) -> bool {
    let source = match e {
        Error::Sign { source, .. }
        | Error::Session { source, .. }
        | Error::Login { source, .. }
        | Error::Find { source, .. }
        | Error::PublicKey { source, .. }
        | Error::Slots { source, .. } => source,
        Error::NoToken { .. } => return true,
        _ => return false,
    };
    matches!(
        source.0,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::SlotIdInvalid
                | RvError::GeneralError
                | RvError::FunctionFailed,
            _
        )
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while signing aborts the process (panic = "abort"); a poisoned lock can only
    // be seen in tests, and its data is still consistent (a session or a flag).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl Module ===

impl Module {
    /// The module at `path`, loaded and initialised on first use in this process.
    fn load(path: &Path, uri: &str) -> Result<Arc<Self>, Error> {
        static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
        let mut modules = lock(MODULES.get_or_init(Mutex::default));
        if let Some(m) = modules.get(path) {
            return Ok(m.clone());
        }
        let name = path.display().to_string();
        let ctx = Context::new(path).map_err(|source| Error::LoadModule {
            module: name.clone(),
            uri: uri.to_owned(),
            source: Ck(source),
        })?;
        match ctx.initialize(init_args()) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(source) => {
                return Err(Error::Initialize {
                    module: name,
                    uri: uri.to_owned(),
                    source: Ck(source),
                });
            }
        }
        let m = Arc::new(Module {
            path: path.to_owned(),
            ctx,
            generation: Mutex::new(0),
            refused: Mutex::new(Vec::new()),
        });
        modules.insert(path.to_owned(), m.clone());
        Ok(m)
    }

    fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    /// Finalises and initialises the module again, unless someone already did since
    /// generation `seen`: a module that lost its token (unplugged, resource manager
    /// restarted) only sees it again after `C_Initialize`. Every session of the module,
    /// other keys' too, ends; they reopen on their next signature.
    ///
    /// A failed initialisation leaves the generation as it was, so the next signature
    /// tries again (once per signature, never in a loop).
    fn reinitialize(&self, seen: u64) -> Result<(), CkError> {
        let mut generation = lock(&self.generation);
        if *generation != seen {
            return Ok(());
        }
        let _ = self.ctx.clone().finalize();
        match self.ctx.initialize(init_args()) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                *generation += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The creation lock's file name: one per module and URI, so unrelated keys never wait
/// for each other.
fn lock_name(module: &Path, uri: &str) -> String {
    let what = format!("{}\n{uri}", module.display());
    let d = ring::digest::digest(&ring::digest::SHA256, what.as_bytes());
    let hex: String = d
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(".pkcs11-create-{hex}.lock")
}

/// Whether this binary is statically linked (the musl tarballs). A static binary has no
/// dynamic loader (`dlopen` always fails), so it cannot load any PKCS#11 module.
const STATIC_BINARY: bool = cfg!(target_feature = "crt-static");

/// Refuses a PKCS#11 key up front in a static binary, with the artifact to use instead,
/// rather than letting `dlopen` fail with a hint about installing the module.
fn loadable(static_binary: bool, module: &Path, uri: &str) -> Result<(), Error> {
    match static_binary {
        true => Err(Error::StaticBinary {
            module: module.display().to_string(),
            uri: uri.to_owned(),
        }),
        false => Ok(()),
    }
}

/// `bits` as a CK_ULONG, which is 32 bits on 32-bit ARM: never truncated.
fn modulus_bits(bits: usize, module: &str, uri: &str) -> Result<Ulong, Error> {
    Ulong::try_from(bits).map_err(|_| Error::Bits {
        module: module.to_owned(),
        uri: uri.to_owned(),
        bits,
    })
}

fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

/// An exclusive `flock` on a file in the state directory, held while a key is created.
struct CreationLock {
    _file: File,
}

impl CreationLock {
    fn take(dir: &Path, name: &str) -> Result<Self, Error> {
        let path = dir.join(name);
        let err = |source| Error::Lock {
            path: path.clone(),
            source,
        };
        crate::fsutil::ensure_dir(dir, 0o700).map_err(|e| err(io::Error::other(e)))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(err)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err(e.into()))?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use cryptoki::context::Function;

    use super::*;

    #[test]
    fn a_failure_names_the_function_and_the_return_value_in_one_line() {
        let e = Ck(CkError::Pkcs11(RvError::PinIncorrect, Function::Login));
        assert_eq!(e.to_string(), "C_Login returned PinIncorrect");
        assert!(std::error::Error::source(&e).is_none());
        let e = Ck(CkError::NotSupported);
        assert_eq!(e.to_string(), "NotSupported");
    }

    #[test]
    fn a_static_binary_refuses_a_token_key_and_names_the_build_to_use() {
        let module = Path::new("/usr/lib/softhsm/libsofthsm2.so");
        let uri = "pkcs11:token=agent;object=device";
        assert!(loadable(false, module, uri).is_ok());
        let e = loadable(true, module, uri).unwrap_err();
        assert!(matches!(e, Error::StaticBinary { .. }), "{e:?}");
        assert!(!e.is_transient(), "retrying cannot help a static binary");
        let msg = e.to_string();
        for part in [
            uri,
            "/usr/lib/softhsm/libsofthsm2.so",
            "statically linked",
            "cannot load a PKCS#11 module",
            "the .deb",
            "key.path",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        // Nothing about installing the module: it may well be installed.
        assert!(!msg.contains("package is installed"), "{msg}");
    }

    #[test]
    fn static_means_the_musl_build_here() {
        // The shipped static builds are the musl targets; every glibc build loads modules.
        assert_eq!(STATIC_BINARY, cfg!(target_env = "musl"));
    }

    #[test]
    fn key_sizes_pass_to_the_token_unchanged() {
        for bits in [2048, 3072, 4096, 8192] {
            let got = modulus_bits(bits, "m", "u").unwrap();
            assert_eq!(got.to_string(), bits.to_string());
        }
    }
}
