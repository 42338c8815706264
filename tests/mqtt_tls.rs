//! `mqtts://` with a private CA and a client certificate: the agent's rustls (ring) client
//! against a TLS terminator that requires a client certificate, in front of the embedded
//! rumqttd (which checks the asset token as usual).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asset_agent::config::{Config, LoadOptions};
use asset_agent::mqtt;
use common::mqtt::{MqttBroker, eventually};
use common::{Agent, Device, emulator};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rumqttc::tokio_rustls::TlsAcceptor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use wire::clock::Clock;

/// A CA, a server certificate for localhost and a client certificate, all PEM.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    client_pem: (String, String),
    client_der: CertificateDer<'static>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["device-0001".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        server: (
            server.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        ),
        client_pem: (client.pem(), client_key.serialize_pem()),
        client_der: client.der().clone(),
    }
}

/// Terminates TLS (client certificate required) and forwards to `upstream`; records the
/// client certificates it saw.
async fn tls_terminator(pki: &Pki, upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(certs) = tls.get_ref().1.peer_certificates() {
                    seen.lock().unwrap().push(certs[0].to_vec());
                }
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, seen)
}

fn config(dev: &Device, emu: &emulator::Emulator, mqtt: &str) -> Config {
    let path = dev.write_config(emu, "", "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n[mqtt]\n{mqtt}\n"));
    std::fs::write(&path, text).unwrap();
    Config::load(&LoadOptions::new(Some(path), HashMap::new())).unwrap()
}

#[tokio::test]
async fn mqtts_with_private_ca_and_client_certificate() {
    let pki = pki();
    let emu = emulator(Clock::system(), |_| {}).await;
    let broker = MqttBroker::start(emu.jwks());
    let (addr, seen) = tls_terminator(&pki, broker.addr).await;
    let dev = Device::new(&emu);
    let ca = dev.path("broker-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (cert, key) = (dev.path("client.crt"), dev.path("client.key"));
    std::fs::write(&cert, &pki.client_pem.0).unwrap();
    common::write_0600(&key, pki.client_pem.1.as_bytes());
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = format!("url = \"mqtts://localhost:{}\"", addr.port());

    // Without the client certificate the handshake fails: a TLS failure, not a refused
    // login, so no token refresh is forced.
    let bare = config(
        &dev,
        &emu,
        &format!("{url}\nca_file = \"{}\"", ca.display()),
    );
    let agent = Agent::start(&bare, Clock::system()).await;
    let h = agent.running.shared.mqtt.clone().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            h.stats().connect_failures.load(Ordering::Relaxed) >= 1
        })
        .await
    );
    assert_eq!(
        h.stats().auth_refusals.load(Ordering::Relaxed),
        0,
        "{:?}",
        h.status().last_error
    );
    assert_eq!(h.stats().forced_refreshes.load(Ordering::Relaxed), 0);
    let err = h.status().last_error.unwrap();
    eprintln!("without a client certificate: {err}");
    agent.stop().await;
    assert!(broker.accepted().is_empty());

    // With it: the broker behind the terminator sees the asset token.
    let full = config(
        &dev,
        &emu,
        &format!(
            "{url}\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            ca.display(),
            cert.display(),
            key.display()
        ),
    );
    let agent = Agent::start(&full, Clock::system()).await;
    let h = agent.running.shared.mqtt.clone().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || h.stats().state()
            == mqtt::State::Connected)
        .await,
        "{:?}",
        h.status()
    );
    assert_eq!(broker.accepted().len(), 1);
    assert!(seen.lock().unwrap().contains(&pki.client_der.to_vec()));
    agent.stop().await;
}
