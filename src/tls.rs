//! TLS trust for every outbound connection (Salesforce and the MQTT broker): the system CA
//! store, else Mozilla's roots bundled in the binary (many device images ship without
//! ca-certificates), plus an optional extra CA file.
//!
//! The system store is parsed once per process, on first use, and shared (one `Arc`) by
//! every client that adds no CA file of its own. Where it comes from follows OpenSSL:
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` when either is set; else the distribution's bundle
//! file; else its certificate directory. Every file is read as a stream: each certificate
//! becomes a trust anchor as it is parsed and its DER is dropped at once. Only one of the
//! bundle and the directory is read, because on Debian `/etc/ssl/certs` holds the bundle's
//! certificates a second time, one per file: reading both doubled the parsing at start-up
//! and the heap's high-water mark for the process's whole life.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Where distributions keep their CA bundle (the paths OpenSSL's probe also tries).
const BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// The trust anchors could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("could not read the CA file {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the CA file {} holds a certificate rustls cannot use", path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the CA file {} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
}

/// Where TLS trust comes from: the system (or bundled) anchors, plus those of `ca_file`.
///
/// # Errors
/// When `ca_file` cannot be read or holds no usable certificate.
pub fn root_store(
    ca_file: Option<&Path>,
) -> Result<(Arc<RootCertStore>, &'static str), RootsError> {
    let (system, source) = system();
    let Some(path) = ca_file else {
        return Ok((system.clone(), source));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|source| RootsError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(RootsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    let mut roots = RootCertStore::clone(system);
    for cert in certs {
        roots
            .add(cert)
            .map_err(|source| RootsError::BadCertificate {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok((Arc::new(roots), source))
}

/// Certificate directories (OpenSSL's CAdir, one file per certificate), read when no bundle
/// file exists.
const CERT_DIRS: [&str; 6] = [
    "/etc/ssl/certs",
    "/etc/pki/tls/certs",
    "/usr/lib/ssl/certs",
    "/usr/local/ssl/certs",
    "/etc/openssl/certs",
    "/etc/certs",
];

/// The system's anchors, else the bundled ones; parsed on the first call only.
fn system() -> &'static (Arc<RootCertStore>, &'static str) {
    static SYSTEM: OnceLock<(Arc<RootCertStore>, &'static str)> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        add_system(
            &mut roots,
            std::env::var_os("SSL_CERT_FILE"),
            std::env::var_os("SSL_CERT_DIR"),
        );
        if roots.is_empty() {
            // Many device images ship without ca-certificates: fall back to Mozilla's roots.
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            return (Arc::new(roots), "bundled webpki roots");
        }
        (Arc::new(roots), "system CA store")
    })
}

/// OpenSSL's rule: when `SSL_CERT_FILE` or `SSL_CERT_DIR` (a colon-separated list) is set,
/// only what they name; else the distribution's bundle file; else its certificate
/// directories.
fn add_system(roots: &mut RootCertStore, file: Option<OsString>, dirs: Option<OsString>) {
    let mut seen = HashSet::new();
    if file.is_some() || dirs.is_some() {
        if let Some(file) = file {
            add_bundle(roots, Path::new(&file));
        }
        for dir in dirs.iter().flat_map(std::env::split_paths) {
            add_dir(roots, &dir, &mut seen);
        }
    } else if let Some(bundle) = BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        add_bundle(roots, bundle);
    } else {
        for dir in CERT_DIRS {
            add_dir(roots, Path::new(dir), &mut seen);
        }
    }
}

/// Adds the certificates of every file in `dir`. `openssl rehash` links each certificate
/// under its hash beside the original: a file already `seen` (device and inode) is skipped.
fn add_dir(roots: &mut RootCertStore, dir: &Path, seen: &mut HashSet<(u64, u64)>) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Follows the links: a dangling one is skipped.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && seen.insert((m.dev(), m.ino())) => add_bundle(roots, &path),
            _ => {}
        }
    }
}

/// Adds every usable certificate of the PEM bundle at `path`, one at a time; what cannot be
/// read or parsed is skipped, as the generic loader does.
fn add_bundle(roots: &mut RootCertStore, path: &Path) {
    let Ok(certs) = CertificateDer::pem_file_iter(path) else {
        return;
    };
    for cert in certs.flatten() {
        let _ = roots.add(cert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_store_is_parsed_once_and_shared() {
        let (a, _) = root_store(None).unwrap();
        let (b, _) = root_store(None).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!a.is_empty());
    }

    #[test]
    fn a_bundle_is_read_certificate_by_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let pem: String = test_pem(2) + "garbage between\n";
        std::fs::write(&path, pem).unwrap();
        let mut roots = RootCertStore::empty();
        add_bundle(&mut roots, &path);
        assert_eq!(roots.len(), 2);
        let mut none = RootCertStore::empty();
        add_bundle(&mut none, &dir.path().join("missing.pem"));
        assert!(none.is_empty());
    }

    #[test]
    fn ssl_cert_file_and_dir_replace_the_system_locations() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("one.pem");
        std::fs::write(&file, test_pem(1)).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("ca.pem"), test_pem(2)).unwrap();
        // `openssl rehash` links: the same file under its hash, read once; a dangling one.
        std::os::unix::fs::symlink(a.join("ca.pem"), a.join("5ed36f99.0")).unwrap();
        std::os::unix::fs::symlink(a.join("gone.pem"), a.join("deadbeef.0")).unwrap();
        std::fs::write(b.join("ca.pem"), test_pem(1)).unwrap();
        std::fs::write(b.join("README"), "not a certificate\n").unwrap();

        let count = |file: Option<&Path>, dirs: Option<String>| {
            let mut roots = RootCertStore::empty();
            add_system(&mut roots, file.map(Into::into), dirs.map(Into::into));
            roots.len()
        };
        assert_eq!(count(Some(&file), None), 1);
        let both = format!("{}:{}", a.display(), b.display());
        assert_eq!(count(None, Some(both.clone())), 3);
        assert_eq!(count(Some(&file), Some(both)), 4);
        // Set but naming nothing usable: no system locations (the caller then bundles).
        assert_eq!(count(Some(&dir.path().join("missing.pem")), None), 0);
    }

    #[test]
    fn an_extra_ca_file_adds_to_the_system_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.pem");
        std::fs::write(&path, test_pem(1)).unwrap();
        let (system, _) = root_store(None).unwrap();
        let (with, _) = root_store(Some(&path)).unwrap();
        assert!(!Arc::ptr_eq(&system, &with));
        assert_eq!(with.len(), system.len() + 1);
    }

    /// `n` self-signed test certificates as PEM.
    fn test_pem(n: usize) -> String {
        (0..n)
            .map(|i| {
                rcgen::generate_simple_self_signed(vec![format!("ca{i}.example")])
                    .unwrap()
                    .cert
                    .pem()
            })
            .collect()
    }
}
