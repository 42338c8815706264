//! The device key as a PKCS#8 PEM file: generated on first start, checked on every load.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{SignError, Signer};
use crate::fsutil;
use crate::secure_path::{self, Trust};
use wire::jose::{RsaKey, RsaPublicJwk, der};

/// Below this, keys are refused: Salesforce and ring both require at least 2048 bits.
pub const MIN_BITS: usize = 2048;
/// ring verifies up to 8192 bits; larger keys would sign tokens nobody can check.
pub const MAX_BITS: usize = 8192;

/// Why the device key could not be loaded or created. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("could not read the device key {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the device key {} is readable or writable by others (mode {mode:04o}); fix it with: chmod 600 {}",
        path.display(), path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "the device key {} is not a PEM file ({reason}); expected '-----BEGIN PRIVATE KEY-----' (PKCS#8). Move it away and run 'asset-agent key generate'",
        path.display()
    )]
    NotPem { path: PathBuf, reason: String },
    #[error(
        "the device key {} is a PKCS#1 'RSA PRIVATE KEY'; convert it to PKCS#8 with: openssl pkcs8 -topk8 -nocrypt -in {} -out {}.p8 && mv {}.p8 {}",
        path.display(), path.display(), path.display(), path.display(), path.display()
    )]
    Pkcs1 { path: PathBuf },
    #[error(
        "the device key {} is a PEM '{label}', expected an unencrypted PKCS#8 'PRIVATE KEY'",
        path.display()
    )]
    WrongLabel { path: PathBuf, label: String },
    #[error(
        "the device key {} is not an RSA key (algorithm {oid}); Salesforce asset tokens need RSA. Move it away and run 'asset-agent key generate'",
        path.display()
    )]
    NotRsa { path: PathBuf, oid: String },
    #[error(
        "the device key {} has {bits} bits; at least {MIN_BITS} are required. Move it away and run 'asset-agent key generate'",
        path.display()
    )]
    TooSmall { path: PathBuf, bits: usize },
    #[error(
        "the device key {} has {bits} bits; at most {MAX_BITS} are supported",
        path.display()
    )]
    TooLarge { path: PathBuf, bits: usize },
    #[error("the device key {} is malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("key size {bits} is not supported: use {MIN_BITS}..={MAX_BITS} bits")]
    BadSize { bits: usize },
    #[error("could not generate a {bits}-bit RSA key")]
    Generate {
        bits: usize,
        #[source]
        source: rsa::Error,
    },
    #[error("could not encode the new device key")]
    Encode,
    #[error("could not store the new device key")]
    Store(#[source] fsutil::Error),
    #[error("the key file is not safe to use")]
    Unsafe(#[source] secure_path::Error),
}

/// A PKCS#8 RSA key loaded from a file, signing with ring.
pub struct FileKey {
    key: RsaKey,
    path: PathBuf,
}

// === impl FileKey ===

impl FileKey {
    /// Loads and checks the key at `path`: owner-only permissions, PKCS#8, RSA, 2048+ bits.
    ///
    /// # Errors
    /// A [`LoadError`] that names the file and says how to fix it.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_trusting(path, &Trust::process())
    }

    /// As [`FileKey::load`], with the file and its directories judged by
    /// [`secure_path`]'s rule for the uids in `trust`.
    ///
    /// # Errors
    /// As [`FileKey::load`]; [`LoadError::Unsafe`] when another user could read or replace it.
    pub fn load_trusting(path: &Path, trust: &Trust) -> Result<Self, LoadError> {
        let pem = secure_path::read("key", path, trust).map_err(|e| match e {
            secure_path::Error::Mode { path, mode, .. } => LoadError::Permissions { path, mode },
            secure_path::Error::Inspect { path, source, .. } => LoadError::Read { path, source },
            other => LoadError::Unsafe(other),
        })?;
        Self::from_pem(path, &pem)
    }

    /// Loads the key at `path`, generating it first if the file does not exist.
    /// Returns whether it was created.
    ///
    /// # Errors
    /// As [`FileKey::load`] and [`FileKey::generate`].
    pub fn load_or_generate(path: &Path, bits: usize) -> Result<(Self, bool), LoadError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            for stale in fsutil::remove_stale_temps(dir) {
                tracing::warn!(file = %stale.display(), "removed a temporary file a killed writer left behind");
            }
        }
        match fs::symlink_metadata(path) {
            Ok(_) => Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::generate(path, bits)?;
                Ok((Self::load(path)?, true))
            }
            Err(source) => Err(LoadError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Generates a new RSA key of `bits` and stores it at `path` (0600, atomically). The
    /// parent directory is created 0700 if missing. Overwrites nothing: callers check first.
    ///
    /// # Errors
    /// When the size is unsupported, generation fails or the file cannot be written.
    pub fn generate(path: &Path, bits: usize) -> Result<(), LoadError> {
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(LoadError::BadSize { bits });
        }
        let key = new_rsa_key(bits).map_err(|source| LoadError::Generate { bits, source })?;
        let pem = pkcs8_pem(&key).ok_or(LoadError::Encode)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fsutil::ensure_dir(dir, 0o700).map_err(LoadError::Store)?;
        }
        // Key material must never be left under another name by a kill mid-write.
        fsutil::create_secret(path, pem.as_bytes()).map_err(LoadError::Store)
    }

    /// Parses a PKCS#8 PEM; `path` is only used in messages.
    ///
    /// # Errors
    /// As [`FileKey::load`], minus the permission check.
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Self, LoadError> {
        use rustls::pki_types::pem::{self, PemObject as _, SectionKind};
        let p = || path.to_owned();
        let (kind, der) = match <(SectionKind, Vec<u8>)>::from_pem_slice(pem) {
            Ok((kind, der)) => (kind, Zeroizing::new(der)),
            Err(pem::Error::NoItemsFound) => {
                return Err(LoadError::NotPem {
                    path: p(),
                    reason: "no PEM section found".to_owned(),
                });
            }
            Err(e) => {
                return Err(LoadError::NotPem {
                    path: p(),
                    reason: e.to_string(),
                });
            }
        };
        let label = match kind {
            SectionKind::PrivateKey => None,
            SectionKind::RsaPrivateKey => return Err(LoadError::Pkcs1 { path: p() }),
            SectionKind::Certificate => Some("CERTIFICATE"),
            SectionKind::PublicKey => Some("PUBLIC KEY"),
            SectionKind::EcPrivateKey => Some("EC PRIVATE KEY"),
            SectionKind::Crl => Some("X509 CRL"),
            SectionKind::Csr => Some("CERTIFICATE REQUEST"),
            SectionKind::EchConfigList => Some("ECHCONFIG"),
            _ => Some("(another kind)"),
        };
        if let Some(label) = label {
            return Err(LoadError::WrongLabel {
                path: p(),
                label: label.to_owned(),
            });
        }
        let malformed = |reason: String| LoadError::Malformed { path: p(), reason };
        let bits = match der::read_pkcs8(&der).map_err(|e| malformed(e.to_string()))? {
            der::Pkcs8::Rsa { bits } => bits,
            der::Pkcs8::Other { oid } => return Err(LoadError::NotRsa { path: p(), oid }),
        };
        if bits < MIN_BITS {
            return Err(LoadError::TooSmall { path: p(), bits });
        }
        if bits > MAX_BITS {
            return Err(LoadError::TooLarge { path: p(), bits });
        }
        // ring checks the key itself: every component, and that they belong together.
        let key = RsaKey::from_pkcs8(&der).map_err(|e| malformed(e.to_string()))?;
        Ok(Self {
            key,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A new RSA key of exactly `bits` bits (e = 65537, two primes), from the OS's random
/// source. rsa's generator retries until the modulus has exactly `bits` bits and checks the
/// key it builds; ring checks it again when the stored file is loaded.
fn new_rsa_key(bits: usize) -> Result<rsa::RsaPrivateKey, rsa::Error> {
    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
}

/// The PKCS#8 PEM of `key`, written by rsa's encoder (pkcs8 and pkcs1), which keeps every
/// buffer that holds key material in a wiping wrapper; `None` when it cannot encode it.
fn pkcs8_pem(key: &rsa::RsaPrivateKey) -> Option<Zeroizing<String>> {
    rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(key, rsa::pkcs8::LineEnding::LF).ok()
}

impl Signer for FileKey {
    fn public_jwk(&self) -> &RsaPublicJwk {
        self.key.public_jwk()
    }

    fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.key.sign_rs256(message)
    }

    fn bits(&self) -> usize {
        self.key.bits()
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKey")
            .field("path", &self.path)
            .field("kid", &self.key.public_jwk().kid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    pub(crate) const TEST_KEY: &str = include_str!("../../tests/data/device-key.pem");

    fn write(dir: &Path, name: &str, body: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn loads_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "k.pem", TEST_KEY.as_bytes(), 0o600);
        let key = FileKey::load(&p).unwrap();
        assert_eq!(key.bits(), 2048);
        let sig = key.sign_rs256(b"hello").unwrap();
        assert!(key.public_jwk().verify_rs256(b"hello", &sig));
        assert!(!key.public_jwk().verify_rs256(b"hellO", &sig));
        assert!(
            key.public_key_pem()
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        assert_eq!(key.public_jwk().kid, key.public_jwk().thumbprint());
    }

    #[test]
    fn refuses_group_readable_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "k.pem", TEST_KEY.as_bytes(), 0o640);
        let err = FileKey::load(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains("k.pem"), "{err}");
    }

    #[test]
    fn refuses_non_rsa_pkcs1_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let ec = include_str!("../../tests/data/ec-key.pem");
        let p = write(dir.path(), "ec.pem", ec.as_bytes(), 0o600);
        assert!(matches!(FileKey::load(&p), Err(LoadError::NotRsa { .. })));
        let pkcs1 = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let p = write(dir.path(), "p1.pem", pkcs1.as_bytes(), 0o600);
        assert!(matches!(FileKey::load(&p), Err(LoadError::Pkcs1 { .. })));
        let p = write(dir.path(), "junk.pem", b"not a key", 0o600);
        assert!(matches!(FileKey::load(&p), Err(LoadError::NotPem { .. })));
    }

    #[test]
    fn refuses_small_keys() {
        let dir = tempfile::tempdir().unwrap();
        let small = include_str!("../../tests/data/rsa1024-key.pem");
        let p = write(dir.path(), "small.pem", small.as_bytes(), 0o600);
        let err = FileKey::load(&p).unwrap_err();
        assert!(
            matches!(err, LoadError::TooSmall { bits: 1024, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("key generate"));
    }

    #[test]
    fn generates_0600_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/device-key.pem");
        let (key, created) = FileKey::load_or_generate(&p, 2048).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, created) = FileKey::load_or_generate(&p, 2048).unwrap();
        assert!(!created);
        assert_eq!(key.public_jwk(), again.public_jwk());
    }

    #[test]
    fn new_keys_have_exactly_the_asked_size_and_sign_with_ring() {
        use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
        for bits in [2048, 3072] {
            let key = new_rsa_key(bits).unwrap();
            assert_eq!(key.n().bits(), bits);
            assert_eq!(key.e(), &rsa::BigUint::from(65_537_u32));
            assert_eq!(key.primes().len(), 2);
            // ring checks every component when it loads the key, then signs with it.
            let pem = pkcs8_pem(&key).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let loaded = FileKey::from_pem(Path::new("k.pem"), pem.as_bytes()).unwrap();
            assert_eq!(loaded.bits(), bits);
            assert_eq!(
                loaded.public_jwk(),
                &RsaPublicJwk::from_components(&key.n().to_bytes_be(), &key.e().to_bytes_be())
            );
            let sig = loaded.sign_rs256(b"message").unwrap();
            assert_eq!(sig.len(), bits / 8);
            assert!(loaded.public_jwk().verify_rs256(b"message", &sig));
            assert!(!loaded.public_jwk().verify_rs256(b"messagE", &sig));
        }
    }
}
