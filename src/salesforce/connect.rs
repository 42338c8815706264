//! How [`super::Upstream`] reaches Salesforce: hyper's pooled HTTP/1.1 client over TCP,
//! rustls (ring) for https, and the proxy the environment names.
//!
//! Proxies are read once per client, as curl reads them: `HTTPS_PROXY`/`https_proxy` for
//! https URLs, `HTTP_PROXY`/`http_proxy` for http, `ALL_PROXY`/`all_proxy` for both, and
//! `NO_PROXY`/`no_proxy` for hosts to reach directly; `user:password@` in the proxy URL is
//! sent as basic proxy authorisation. An https URL goes through a `CONNECT` tunnel (TLS is
//! end to end with Salesforce); an http URL is sent to the proxy in absolute form. The
//! proxy itself is spoken to in plain http (an `https://` or `socks` proxy URL is refused
//! when a request would use it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper::header::HeaderValue;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection could not be opened (the source, when there is one, says more).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the URL has no host")]
    NoHost,
    #[error("{host:?} is not a valid TLS server name")]
    ServerName {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("the proxy {proxy} is not an http:// proxy; only plain-http proxies are supported")]
    ProxyScheme { proxy: String },
    #[error("could not connect to the proxy {proxy}")]
    Proxy {
        proxy: String,
        #[source]
        source: BoxError,
    },
    #[error("TCP connect failed")]
    Tcp(#[source] BoxError),
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
}

/// Opens connections for the pooled client: direct, through a `CONNECT` tunnel, or to an
/// http proxy; TLS for https.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: TlsConnector,
    proxies: Arc<Matcher>,
}

// Not derived: the proxy URLs may hold credentials.
impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(tls: rustls::ClientConfig, proxies: Matcher) -> Self {
        let mut tcp = HttpConnector::new();
        // The scheme is ours to handle (https is wrapped in TLS below).
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        Self {
            tcp,
            tls: TlsConnector::from(Arc::new(tls)),
            proxies: Arc::new(proxies),
        }
    }

    /// The `Proxy-Authorization` to send with a request to `uri`: only for plain-http
    /// requests through a proxy (a tunnel authenticates in its `CONNECT`).
    pub fn proxy_authorization(&self, uri: &Uri) -> Option<HeaderValue> {
        if uri.scheme_str() != Some("http") {
            return None;
        }
        self.proxies.intercept(uri)?.basic_auth().cloned()
    }

    async fn open(mut self, dst: Uri) -> Result<Conn, ConnectError> {
        let https = dst.scheme_str() == Some("https");
        let host = dst.host().ok_or(ConnectError::NoHost)?.to_owned();
        let proxy = self.proxies.intercept(&dst);
        if let Some(p) = &proxy
            && p.uri().scheme_str() != Some("http")
        {
            return Err(ConnectError::ProxyScheme {
                proxy: redacted(p.uri()),
            });
        }
        let (tcp, proxied) = match (proxy, https) {
            (None, _) => (self.tcp_to(dst).await?, false),
            (Some(p), false) => {
                let tcp = self
                    .tcp_to(p.uri().clone())
                    .await
                    .map_err(|e| ConnectError::Proxy {
                        proxy: redacted(p.uri()),
                        source: Box::new(e),
                    })?;
                (tcp, true)
            }
            (Some(p), true) => {
                let mut tunnel = Tunnel::new(p.uri().clone(), self.tcp.clone());
                if let Some(auth) = p.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tower_service::Service::call(&mut tunnel, dst)
                    .await
                    .map_err(|e| ConnectError::Proxy {
                        proxy: redacted(p.uri()),
                        source: Box::new(e),
                    })?;
                (io.into_inner(), false)
            }
        };
        let stream = if https {
            // An IPv6 literal comes bracketed in a URI, bare in a server name.
            let name = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = ServerName::try_from(name).map_err(|source| ConnectError::ServerName {
                host: host.clone(),
                source,
            })?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(ConnectError::Tls)?;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        Ok(Conn {
            io: TokioIo::new(stream),
            proxied,
        })
    }

    async fn tcp_to(&mut self, uri: Uri) -> Result<TcpStream, ConnectError> {
        let io = tower_service::Service::call(&mut self.tcp, uri)
            .await
            .map_err(|e| ConnectError::Tcp(Box::new(e)))?;
        Ok(io.into_inner())
    }
}

/// A proxy URI without its credentials, for messages.
fn redacted(uri: &Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(auth)) => {
            let hostport = auth.as_str().rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{hostport}")
        }
        _ => "(unparsable proxy URL)".to_owned(),
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        Box::pin(self.clone().open(dst))
    }
}

/// A TCP stream, in TLS for https.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One pooled connection, and whether it goes to an http proxy (requests on it are then
/// sent in absolute form).
pub struct Conn {
    io: TokioIo<Stream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_credentials_never_reach_messages() {
        let uri: Uri = "http://user:pw@proxy.local:3128".parse().unwrap();
        assert_eq!(redacted(&uri), "http://proxy.local:3128");
        let uri: Uri = "http://proxy.local:3128".parse().unwrap();
        assert_eq!(redacted(&uri), "http://proxy.local:3128");
    }

    #[test]
    fn basic_auth_only_for_plain_http_through_a_proxy() {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let proxies = Matcher::builder()
            .all("http://Aladdin:opensesame@proxy.local:3128")
            .no("direct.local")
            .build();
        let c = Connector::new(tls, proxies);
        let auth = c.proxy_authorization(&"http://org.local/x".parse().unwrap());
        assert_eq!(auth.unwrap(), "Basic QWxhZGRpbjpvcGVuc2VzYW1l");
        assert!(
            c.proxy_authorization(&"https://org.local/x".parse().unwrap())
                .is_none()
        );
        assert!(
            c.proxy_authorization(&"http://direct.local/x".parse().unwrap())
                .is_none()
        );
    }
}
