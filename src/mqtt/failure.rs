//! Sorting failed connects: a refused token (which a refresh may fix) versus everything
//! else (network, TLS, timeouts), which only waiting fixes.

use rumqttc::{ConnectReturnCode, ConnectionError};

/// Whether a failed connect looks like the broker refusing the token: an explicit CONNACK
/// refusal, or the connection dropped during the MQTT handshake (after TCP and TLS
/// succeeded), which is how rumqttd and some cloud brokers refuse.
pub fn is_refused_login(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionRefused(code) => matches!(
            code,
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
        ),
        ConnectionError::MqttState(_) => !is_tls_failure(e),
        _ => false,
    }
}

/// Whether a TLS alert caused `e`. With TLS 1.3 a server that rejects the client
/// certificate says so only after the client considers the handshake done, so the alert
/// surfaces while reading the CONNACK and must not be taken for a refused token.
pub fn is_tls_failure(e: &ConnectionError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io;

    use rumqttc::StateError;

    use super::*;

    #[test]
    fn refusals_and_other_failures() {
        let refused = [
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            // rumqttd and some cloud brokers just close the connection after CONNECT.
            ConnectionError::MqttState(StateError::ConnectionAborted),
            ConnectionError::MqttState(StateError::Io(io::Error::from(
                io::ErrorKind::ConnectionReset,
            ))),
        ];
        for e in &refused {
            assert!(is_refused_login(e), "{e}");
        }
        let tls_alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let other = [
            ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable),
            ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            ConnectionError::NetworkTimeout,
            ConnectionError::MqttState(StateError::Io(tls_alert)),
        ];
        for e in &other {
            assert!(!is_refused_login(e), "{e}");
        }
    }
}
