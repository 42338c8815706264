//! Building rumqttc's `MqttOptions` from `[mqtt]`: broker, client id, Last Will, limits
//! and TLS (rustls with ring; system or bundled roots plus an optional CA; optional client
//! certificate).
//!
//! `MqttOptions`' `Debug` prints the password, which is the asset token: nothing in this
//! module or the session ever formats the options.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::presence;
use super::topics::Topics;
use crate::config;
use crate::tls::{RootsError, root_store};

/// The largest payload a local app may publish.
pub const MAX_PAYLOAD: usize = 128 * 1024;
/// Largest incoming packet: commands are small; anything bigger is a broker mistake.
const MAX_INCOMING_PACKET: usize = 64 * 1024;
/// Largest outgoing packet: a maximal payload plus topic and header.
const MAX_OUTGOING_PACKET: usize = MAX_PAYLOAD + super::topics::MAX_TOPIC_LEN + 64;
/// Unacknowledged QoS 1 messages allowed on the wire at once.
pub const MAX_INFLIGHT: u16 = 32;
/// Capacity of rumqttc's request channel, used only by the agent's own messages
/// (presence, heartbeat, command answers, subscribe): local apps have their own queue.
pub const REQUEST_CHANNEL: usize = 32;

/// TLS for the broker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not load the broker's trust anchors")]
    Roots(#[source] RootsError),
    #[error("could not set up TLS for the broker")]
    Tls(#[source] rustls::Error),
    #[error("could not read the MQTT client certificate {}", path.display())]
    ClientCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the MQTT client certificate file {} holds no certificate", path.display())]
    ClientCertEmpty { path: PathBuf },
    #[error("could not read the MQTT client key {}", path.display())]
    ClientKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
}

/// Options for `config` with the Last Will on `topics.status`; credentials are set by the
/// session from the current token before every connect.
///
/// # Errors
/// See [`Error`].
pub fn build(config: &config::Mqtt, topics: &Topics) -> Result<MqttOptions, Error> {
    let mut o = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    o.set_keep_alive(config.keep_alive)
        // A persistent session keeps the command subscription (and commands sent while
        // the agent was reconnecting) across reconnects; the session resubscribes when the
        // broker says it kept nothing.
        .set_clean_session(false)
        .set_last_will(LastWill::new(
            topics.status.clone(),
            presence::OFFLINE,
            QoS::AtLeastOnce,
            true,
        ))
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_inflight(MAX_INFLIGHT)
        .set_request_channel_capacity(REQUEST_CHANNEL);
    if config.tls {
        let tls = tls_config(config.ca_file.as_deref(), config.client_cert.as_ref())?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(o)
}

/// A rustls client config on the ring provider.
fn tls_config(
    ca_file: Option<&Path>,
    client_cert: Option<&config::ClientCert>,
) -> Result<rustls::ClientConfig, Error> {
    let (roots, source) = root_store(ca_file).map_err(Error::Roots)?;
    tracing::debug!(trust = source, extra_ca = ?ca_file, "MQTT TLS trust anchors loaded");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(Error::Tls)?
    .with_root_certificates(roots);
    let Some(cc) = client_cert else {
        return Ok(builder.with_no_client_auth());
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cc.cert_file)
        .and_then(|it| it.collect())
        .map_err(|source| Error::ClientCert {
            path: cc.cert_file.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::ClientCertEmpty {
            path: cc.cert_file.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&cc.key_file).map_err(|source| Error::ClientKey {
        path: cc.key_file.clone(),
        source,
    })?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(Error::Tls)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn mqtt(tls: bool) -> config::Mqtt {
        config::Mqtt {
            url: crate::config::Url::parse("mqtts://broker.example.com").unwrap(),
            host: "broker.example.com".into(),
            port: 8883,
            tls,
            client_id: "dev-1".into(),
            username: "dev-1".into(),
            topic_prefix: "devices".into(),
            publish_prefix: "devices/dev-1/".into(),
            ca_file: None,
            client_cert: None,
            keep_alive: Duration::from_secs(30),
            reconnect_margin: Duration::from_secs(10),
            reconnect_on_rotation: false,
            heartbeat: Duration::from_secs(60),
            queue: 8,
            backoff_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn options_carry_identity_and_will() {
        let topics = Topics::new("devices", "dev-1", "devices/dev-1/");
        for tls in [false, true] {
            let o = build(&mqtt(tls), &topics).unwrap();
            assert_eq!(o.client_id(), "dev-1");
            assert_eq!(o.broker_address(), ("broker.example.com".to_owned(), 8883));
            assert!(!o.clean_session());
            assert!(o.credentials().is_none());
            let will = o.last_will().unwrap();
            assert_eq!(will.topic, "devices/dev-1/agent/status");
            assert!(will.retain);
            assert_eq!(
                matches!(o.transport(), Transport::Tls(_)),
                tls,
                "tls = {tls}"
            );
        }
    }

    #[test]
    fn unreadable_client_cert_is_named() {
        let mut m = mqtt(true);
        m.client_cert = Some(config::ClientCert {
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
        });
        let topics = Topics::new("devices", "dev-1", "devices/dev-1/");
        let err = build(&m, &topics).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
