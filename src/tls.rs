//! TLS trust for every outbound connection (Salesforce and the MQTT broker): the system CA
//! store, else Mozilla's roots bundled in the binary (many device images ship without
//! ca-certificates), plus an optional extra CA file.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

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

/// Where TLS trust comes from.
pub fn root_store(ca_file: Option<&Path>) -> Result<(RootCertStore, &'static str), RootsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    let mut source = "system CA store";
    if added == 0 {
        // Many device images ship without ca-certificates: fall back to Mozilla's roots.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        source = "bundled webpki roots";
    }
    if let Some(path) = ca_file {
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
        for cert in certs {
            roots
                .add(cert)
                .map_err(|source| RootsError::BadCertificate {
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    Ok((roots, source))
}
