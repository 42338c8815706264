//! How [`super::Upstream`] reaches Salesforce: TCP (both address families raced, as
//! browsers do), rustls (ring) for https, and the proxy the environment names.
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
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::header::HeaderValue;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long the first address family has before the other one is tried alongside it
/// (RFC 8305's "connection attempt delay").
const FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// A proxy's answer to `CONNECT` longer than this is refused.
const MAX_TUNNEL_HEAD: usize = 8192;

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
        source: Box<ConnectError>,
    },
    #[error("the proxy {proxy} did not open a tunnel")]
    Tunnel {
        proxy: String,
        #[source]
        source: TunnelError,
    },
    #[error("could not resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("TCP connect to {addr} failed")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
}

/// Why a proxy did not open a `CONNECT` tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("sending CONNECT failed")]
    Write(#[source] io::Error),
    #[error("reading the proxy's answer failed")]
    Read(#[source] io::Error),
    #[error("the proxy closed the connection without answering")]
    Eof,
    #[error("the proxy's answer is longer than {MAX_TUNNEL_HEAD} bytes")]
    TooLong,
    #[error("the proxy's answer is not HTTP/1")]
    NotHttp,
    #[error(
        "the proxy asks for credentials (HTTP 407): put user:password@ in the proxy URL \
         (HTTPS_PROXY or ALL_PROXY)"
    )]
    AuthRequired,
    #[error("the proxy refused with HTTP {status}")]
    Refused { status: u16 },
}

/// Opens connections for [`super::http::Client`]: direct, through a `CONNECT` tunnel, or
/// to an http proxy; TLS for https. The client calls it as a `tower` service.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    proxies: Arc<Matcher>,
}

// Not derived: the proxy URLs may hold credentials.
impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

/// An open connection, and whether it goes to an http proxy (requests on it are then sent
/// in absolute form).
pub struct Conn {
    pub stream: Stream,
    pub proxied: bool,
}

/// What [`Connector::open`] returns to the client.
type Opening = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, ConnectError>> + Send>>;

// === impl Connector ===

impl Connector {
    pub fn new(tls: rustls::ClientConfig, proxies: Matcher) -> Self {
        Self {
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

    /// A connection for requests to `dst` (scheme and authority; the path is ignored).
    ///
    /// # Errors
    /// See [`ConnectError`]: each variant names the step that failed.
    pub async fn open(&self, dst: &Uri) -> Result<Conn, ConnectError> {
        let https = dst.scheme_str() == Some("https");
        let host = dst.host().ok_or(ConnectError::NoHost)?;
        let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
        let proxy = self.proxies.intercept(dst);
        if let Some(p) = &proxy
            && p.uri().scheme_str() != Some("http")
        {
            return Err(ConnectError::ProxyScheme {
                proxy: redacted(p.uri()),
            });
        }
        let (tcp, proxied) = match proxy {
            None => (tcp_connect(host, port).await?, false),
            Some(p) => {
                let proxy_host = p.uri().host().ok_or(ConnectError::NoHost);
                let proxy_port = p.uri().port_u16().unwrap_or(80);
                let opened = match proxy_host {
                    Ok(proxy_host) => tcp_connect(proxy_host, proxy_port).await,
                    Err(e) => Err(e),
                };
                let mut tcp = opened.map_err(|e| ConnectError::Proxy {
                    proxy: redacted(p.uri()),
                    source: Box::new(e),
                })?;
                if https {
                    tunnel(&mut tcp, host, port, p.basic_auth())
                        .await
                        .map_err(|source| ConnectError::Tunnel {
                            proxy: redacted(p.uri()),
                            source,
                        })?;
                    (tcp, false)
                } else {
                    (tcp, true)
                }
            }
        };
        let stream = if https {
            // An IPv6 literal comes bracketed in a URI, bare in a server name.
            let name = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = ServerName::try_from(name).map_err(|source| ConnectError::ServerName {
                host: host.to_owned(),
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
        Ok(Conn { stream, proxied })
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Opening;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Opening {
        let this = self.clone();
        Box::pin(async move { this.open(&dst).await.map(TokioIo::new) })
    }
}

/// A TCP connection to `host:port`, with no delay. When the name has addresses of both
/// families, those of the family listed first are tried in turn, and after
/// [`FALLBACK_DELAY`] the others in parallel; the first to connect wins.
async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    let first_v6 =
        addrs
            .first()
            .map(SocketAddr::is_ipv6)
            .ok_or_else(|| ConnectError::NoAddress {
                host: host.to_owned(),
            })?;
    let (preferred, fallback): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let tcp = if fallback.is_empty() {
        try_in_turn(host, &preferred).await?
    } else {
        let first = try_in_turn(host, &preferred);
        let second = async {
            tokio::time::sleep(FALLBACK_DELAY).await;
            try_in_turn(host, &fallback).await
        };
        tokio::pin!(first, second);
        tokio::select! {
            r = &mut first => match r {
                Ok(tcp) => tcp,
                Err(_) => second.await?,
            },
            r = &mut second => match r {
                Ok(tcp) => tcp,
                Err(_) => first.await?,
            },
        }
    };
    // Best effort: a socket that refuses it still works, only slower.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Connects to each address in turn; the last failure if none answers.
async fn try_in_turn(host: &str, addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(source) => last = Some(ConnectError::Tcp { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::NoAddress {
        host: host.to_owned(),
    }))
}

/// Asks the proxy on `tcp` for a tunnel to `host:port` and reads its answer.
async fn tunnel(
    tcp: &mut TcpStream,
    host: &str,
    port: u16,
    auth: Option<&HeaderValue>,
) -> Result<(), TunnelError> {
    let mut head =
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n").into_bytes();
    if let Some(auth) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    tcp.write_all(&head).await.map_err(TunnelError::Write)?;

    // The answer's head. Reading in chunks cannot swallow bytes of the TLS handshake: the
    // client speaks first in TLS, so the proxy sends nothing after its head until then.
    let mut buf = vec![0u8; MAX_TUNNEL_HEAD];
    let mut len = 0;
    loop {
        let n = tcp.read(&mut buf[len..]).await.map_err(TunnelError::Read)?;
        if n == 0 {
            return Err(TunnelError::Eof);
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if len == buf.len() {
            return Err(TunnelError::TooLong);
        }
    }
    match status_code(&buf[..len]).ok_or(TunnelError::NotHttp)? {
        200..=299 => Ok(()),
        407 => Err(TunnelError::AuthRequired),
        status => Err(TunnelError::Refused { status }),
    }
}

/// The status of an HTTP/1 response head (`HTTP/1.x NNN ...`).
fn status_code(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ' && b != b'\r')
    {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
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

// === impl Conn ===

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
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
    fn tunnel_status_lines() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(status_code(b"HTTP/1.0 407\r\n\r\n"), Some(407));
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n\r\n"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
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
