//! The HTTP/1.1 client under [`super::Upstream`]: hyper-util's pooled client over the
//! streams [`Connector`] opens, so that the calls of one refresh (and the next refreshes,
//! while the server keeps the connection) share a TCP and TLS session.
//!
//! What the library does for us, set where its defaults differ from what the agent wants:
//! - idle connections are kept for reuse, at most [`MAX_IDLE`] per host, and closed after
//!   [`IDLE_TIMEOUT`] (its pool timer reaps them; without one they would only be dropped
//!   when next looked at);
//! - a request that a reused connection could not even start (the server closed it in the
//!   meantime) is sent again on a new one (its default, stated here);
//! - `Host` is set from the URL, its port only when not the scheme's default, and an
//!   http proxy is sent the absolute URL, a server only the path.
//!
//! What stays ours: the connector (TCP with both address families raced, rustls with our
//! trust anchors, the environment's proxies with a `CONNECT` tunnel), the body size limit,
//! and errors that name the step that failed. Redirects are never followed (the library
//! has no redirect support: a redirect is an answer like any other status).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy;
use hyper_util::rt::TokioTimer;

use super::connect::Connector;

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At most this many idle connections are kept per host (the agent talks to one host or
/// two, one request at a time).
pub const MAX_IDLE: usize = 4;

/// A request that got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the request URL {uri} is not absolute")]
    NotAbsolute { uri: String },
    /// No connection could be opened: shown as the
    /// [`ConnectError`](super::connect::ConnectError) that says which step.
    #[error(transparent)]
    Connect(Cause),
    #[error("sending the request or reading the response head failed")]
    Send(#[source] Cause),
}

/// A response whose body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body failed")]
    Read(#[source] hyper::Error),
    #[error("response larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// An error of the library's client, shown as what caused it: its own layer ("client
/// error (Connect)") says nothing the variant holding it does not.
#[derive(Debug)]
pub struct Cause(legacy::Error);

/// A client; clones share the idle connections.
#[derive(Clone)]
pub struct Client {
    connector: Connector,
    inner: legacy::Client<Connector, Full<Bytes>>,
}

// Not derived: the connector's proxy URLs may hold credentials.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// Spawns the client's connection and pool tasks as [`crate::spawn::Boxed`] jobs.
#[derive(Clone, Copy, Debug)]
struct Spawner;

// === impl Client ===

impl Client {
    pub fn new(connector: Connector) -> Self {
        let inner = legacy::Client::builder(Spawner)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .retry_canceled_requests(true)
            .set_host(true)
            .build(connector.clone());
        Self { connector, inner }
    }

    /// The connector, asked for the proxy authorisation of plain-http requests.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends `req` (absolute URL) and reads the response body, up to `max_body` bytes.
    /// The head comes back even when the body cannot be read.
    ///
    /// # Errors
    /// See [`SendError`]: no response head was received.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Response<Result<Bytes, BodyError>>, SendError> {
        let uri = req.uri();
        if uri.scheme().is_none() || uri.host().is_none() {
            return Err(SendError::NotAbsolute {
                uri: uri.to_string(),
            });
        }
        let resp = self.inner.request(req).await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect(Cause(e))
            } else {
                SendError::Send(Cause(e))
            }
        })?;
        let (parts, body) = resp.into_parts();
        // A body read to the end gives the connection back to the pool; one over the limit
        // is dropped unread, and its connection with it.
        let body = read_limited(body, max_body).await;
        Ok(Response::from_parts(parts, body))
    }
}

// === impl Cause ===

impl Cause {
    /// The connector's error, when opening the connection is what failed (for tests).
    #[cfg(test)]
    fn connect(&self) -> Option<&super::connect::ConnectError> {
        std::error::Error::source(&self.0)?.downcast_ref()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::error::Error::source(&self.0) {
            Some(cause) => fmt::Display::fmt(cause, f),
            None => fmt::Display::fmt(&self.0, f),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)?.source()
    }
}

// === impl Spawner ===

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(crate::spawn::boxed(fut));
    }
}

async fn read_limited(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::header::HOST;
    use hyper::service::service_fn;
    use hyper_util::client::proxy::matcher::Matcher;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::Barrier;

    use super::*;
    use crate::salesforce::connect::{ConnectError, TunnelError};

    fn client(proxies: Matcher) -> Client {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Client::new(Connector::new(tls, proxies))
    }

    /// What a test server saw: connections accepted, and connections that ended.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        closed: AtomicUsize,
    }

    impl Seen {
        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
        fn closed(&self) -> usize {
            self.closed.load(Ordering::SeqCst)
        }
    }

    /// A hyper server on 127.0.0.1:0 answering `body` (and `connection: close` when
    /// `keep_alive` is off), each answer once `gate` (if any) lets it through.
    async fn gated_server(
        body: &'static str,
        keep_alive: bool,
        gate: Option<Arc<Barrier>>,
    ) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let gate = gate.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let gate = gate.clone();
                    async move {
                        assert_eq!(req.uri(), "/path?q=1", "origin form");
                        assert!(req.headers().contains_key(HOST));
                        if let Some(gate) = gate {
                            gate.wait().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            body.as_bytes(),
                        ))))
                    }
                });
                let counts = counts.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    counts.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (url, seen)
    }

    async fn server(body: &'static str, keep_alive: bool) -> (String, Arc<Seen>) {
        gated_server(body, keep_alive, None).await
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::get(format!("{url}/path?q=1"))
            .body(Full::default())
            .unwrap()
    }

    /// Waits (a bounded number of turns) until `done` holds.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never happened: {what}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_reused() {
        let (url, seen) = server("hello", true).await;
        let c = client(Matcher::builder().build());
        for _ in 0..3 {
            let resp = c.send(get(&url), 1024).await.unwrap();
            assert_eq!(resp.into_body().unwrap(), "hello");
        }
        assert_eq!(seen.accepted(), 1);
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_reused() {
        let (url, seen) = server("bye", false).await;
        let c = client(Matcher::builder().build());
        for n in 1..=2 {
            let resp = c.send(get(&url), 1024).await.unwrap();
            assert_eq!(resp.headers()["connection"], "close");
            assert_eq!(resp.into_body().unwrap(), "bye");
            assert_eq!(seen.accepted(), n);
        }
    }

    /// A server that answers one request per connection, keep-alive by its headers, and
    /// then hangs up at once: the client learns of it only when it next uses the
    /// connection, or just before.
    async fn hanging_up_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await.unwrap();
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        let (url, accepted) = hanging_up_server().await;
        let c = client(Matcher::builder().build());
        let first = c.send(get(&url), 1024).await.unwrap();
        assert_eq!(first.into_body().unwrap(), "ok");
        // Long enough for the client to have seen the hang-up.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = c.send(get(&url), 1024).await.unwrap();
        assert_eq!(second.into_body().unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_too_long_is_closed_and_not_reused() {
        let (url, seen) = server("hello", true).await;
        let c = client(Matcher::builder().build());
        c.send(get(&url), 1024).await.unwrap().into_body().unwrap();
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        c.send(get(&url), 1024).await.unwrap().into_body().unwrap();
        assert_eq!(seen.accepted(), 1, "reused within the idle limit");
        assert_eq!(seen.closed(), 0);
        // The pool's timer looks every IDLE_TIMEOUT: a connection is closed at most twice
        // that long after its last use, with no request to notice it.
        tokio::time::sleep(2 * IDLE_TIMEOUT + Duration::from_secs(1)).await;
        eventually("the idle connection closed", || seen.closed() == 1).await;
        c.send(get(&url), 1024).await.unwrap().into_body().unwrap();
        assert_eq!(seen.accepted(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_past_the_idle_timeout_is_not_reused_before_the_timer_runs() {
        let (url, seen) = server("hello", true).await;
        let c = client(Matcher::builder().build());
        c.send(get(&url), 1024).await.unwrap().into_body().unwrap();
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        c.send(get(&url), 1024).await.unwrap().into_body().unwrap();
        assert_eq!(seen.accepted(), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_per_host_are_kept() {
        let n = MAX_IDLE + 1;
        let gate = Arc::new(Barrier::new(n));
        let (url, seen) = gated_server("hello", true, Some(gate)).await;
        let c = client(Matcher::builder().build());
        let round = || {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (c, url) = (c.clone(), url.clone());
                    tokio::spawn(async move {
                        c.send(get(&url), 1024).await.unwrap().into_body().unwrap()
                    })
                })
                .collect();
            async move {
                for t in tasks {
                    assert_eq!(t.await.unwrap(), "hello");
                }
            }
        };
        // n requests at once, each answered only once all n are in: n connections.
        round().await;
        assert_eq!(seen.accepted(), n);
        eventually("one connection over the limit closed", || {
            seen.closed() == 1
        })
        .await;
        // The next n reuse the MAX_IDLE kept and open one more.
        round().await;
        assert_eq!(seen.accepted(), n + 1);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_keeps_the_head_and_drops_the_connection() {
        // Larger than what one read takes in: the rest is never read.
        let body = "0123456789".repeat(100_000).leak();
        let (url, seen) = server(body, true).await;
        let c = client(Matcher::builder().build());
        let resp = c.send(get(&url), 4).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(matches!(
            resp.into_body(),
            Err(BodyError::TooLarge { limit: 4 })
        ));
        eventually("the connection closed", || seen.closed() == 1).await;
        let resp = c.send(get(&url), 1024 * 1024).await.unwrap();
        assert_eq!(resp.into_body().unwrap().len(), body.len());
        assert_eq!(seen.accepted(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_tcp_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = client(Matcher::builder().build());
        let err = c
            .send(get(&format!("http://{addr}")), 1024)
            .await
            .unwrap_err();
        let SendError::Connect(cause) = &err else {
            panic!("{err:?}");
        };
        assert!(
            matches!(cause.connect(), Some(ConnectError::Tcp { addr: a, .. }) if *a == addr),
            "{err:?}"
        );
        assert_eq!(err.to_string(), format!("TCP connect to {addr} failed"));
        // The chain goes on with the socket's error, not with the library's own layer.
        let next = std::error::Error::source(&err).unwrap();
        assert!(next.downcast_ref::<std::io::Error>().is_some(), "{next:?}");
    }

    #[tokio::test]
    async fn a_server_hanging_up_without_answer_is_a_send_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await.unwrap();
            // hang up without a response
        });
        let c = client(Matcher::builder().build());
        let err = c.send(get(&url), 1024).await.unwrap_err();
        assert!(matches!(err, SendError::Send(_)), "{err:?}");
        let chain = wire::report::chain_lines(&err);
        assert!(chain.contains("sending the request"), "{chain}");
        assert!(!chain.contains("client error"), "{chain}");
    }

    #[tokio::test]
    async fn a_proxy_asking_for_credentials_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await.unwrap();
            tcp.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await
                .unwrap();
        });
        let c = client(Matcher::builder().https(proxy.clone()).build());
        let err = c.send(get("https://org.invalid"), 1024).await.unwrap_err();
        let SendError::Connect(cause) = &err else {
            panic!("{err:?}");
        };
        let Some(ConnectError::Tunnel {
            proxy: named,
            source,
        }) = cause.connect()
        else {
            panic!("{err:?}");
        };
        assert_eq!(*named, proxy);
        assert!(matches!(source, TunnelError::AuthRequired), "{source:?}");
    }

    #[tokio::test]
    async fn a_relative_url_is_refused() {
        let c = client(Matcher::builder().build());
        let req = Request::get("/path").body(Full::default()).unwrap();
        let err = c.send(req, 1024).await.unwrap_err();
        assert!(matches!(err, SendError::NotAbsolute { .. }), "{err:?}");
    }

    /// The request head the client writes for `url`, sent through an http proxy (a bare
    /// socket) so that any host name can be used.
    async fn head_through_a_proxy(url: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed mid-head");
                head.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap().to_ascii_lowercase()
        });
        let c = client(Matcher::builder().http(proxy).build());
        let req = Request::get(url).body(Full::default()).unwrap();
        c.send(req, 1024).await.unwrap();
        server.await.unwrap()
    }

    #[tokio::test]
    async fn host_names_the_port_only_when_not_the_default() {
        let head = head_through_a_proxy("http://org.invalid:80/x").await;
        assert!(
            head.starts_with("get http://org.invalid:80/x http/1.1\r\n"),
            "the absolute URL as given: {head}"
        );
        assert!(head.contains("\r\nhost: org.invalid\r\n"), "{head}");
        let head = head_through_a_proxy("http://org.invalid:8080/x").await;
        assert!(head.contains("\r\nhost: org.invalid:8080\r\n"), "{head}");
        let head = head_through_a_proxy("http://[::1]:8080/x").await;
        assert!(head.contains("\r\nhost: [::1]:8080\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_redirect_is_an_answer_not_followed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let target = format!("{url}/elsewhere");
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await.unwrap();
                let reply = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                tcp.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let c = client(Matcher::builder().build());
        let resp = c.send(get(&url), 1024).await.unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
