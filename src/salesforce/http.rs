//! The HTTP/1.1 client under [`super::Upstream`]: hyper's connection API over the streams
//! [`Connector`] opens, and idle connections kept for reuse, so that the calls of one
//! refresh (and the next refreshes, while the server keeps the connection) share a TCP and
//! TLS session.
//!
//! A connection goes back to the idle list only once its response has been read to the end
//! and hyper reports it ready for the next request; it is taken again only if still ready
//! and open, and dropped after [`IDLE_TIMEOUT`]. A request that a reused connection could
//! not even start (the server closed it in the meantime) is sent again on a new one.
//! Redirects are never followed (a redirect is an answer like any other status).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::connect::{ConnectError, Connector};

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At most this many idle connections are kept (the agent talks to one host or two).
const MAX_IDLE: usize = 4;

/// A request that got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the request URL {uri} is not absolute")]
    NotAbsolute { uri: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("sending the request or reading the response head failed")]
    Send(#[source] hyper::Error),
}

/// A response whose body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body failed")]
    Read(#[source] hyper::Error),
    #[error("response larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Which requests may share a connection.
type Key = (Scheme, Authority);

/// A connection waiting for its next request.
struct Idle {
    key: Key,
    sender: SendRequest<Full<Bytes>>,
    /// Requests on it are sent in absolute form (it goes to an http proxy).
    proxied: bool,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Idle>,
    /// A task is running that drops connections once idle too long.
    reaping: bool,
}

/// A client; clones share the idle connections.
#[derive(Clone)]
pub struct Client {
    connector: Connector,
    pool: Arc<Mutex<Pool>>,
}

// Not derived: the connector's proxy URLs may hold credentials.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

// === impl Client ===

impl Client {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            pool: Arc::default(),
        }
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
        mut req: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Response<Result<Bytes, BodyError>>, SendError> {
        let uri = req.uri().clone();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::NotAbsolute {
                uri: uri.to_string(),
            });
        };
        let key = (scheme.clone(), authority.clone());
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, host_header(&uri)?);
        }
        loop {
            let (mut sender, proxied, reused) = match self.checkout(&key) {
                Some(idle) => {
                    tracing::trace!(host = %key.1, "reusing an idle connection");
                    (idle.sender, idle.proxied, true)
                }
                None => {
                    tracing::trace!(host = %key.1, "opening a connection");
                    let (sender, proxied) = self.connect(&uri).await?;
                    (sender, proxied, false)
                }
            };
            // An http proxy is sent the absolute URL; a server only the path.
            *req.uri_mut() = if proxied {
                uri.clone()
            } else {
                origin_form(&uri)
            };
            let resp = match sender.try_send_request(req).await {
                Ok(resp) => resp,
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!("an idle connection was closed; sending on a new one");
                        req = unsent;
                        continue;
                    }
                    _ => return Err(SendError::Send(e.into_error())),
                },
            };
            let (parts, body) = resp.into_parts();
            let body = read_limited(body, max_body).await;
            if body.is_ok() {
                self.checkin(key, sender, proxied);
            }
            return Ok(Response::from_parts(parts, body));
        }
    }

    /// A new connection for `uri`'s scheme and authority, its hyper task spawned.
    async fn connect(&self, uri: &Uri) -> Result<(SendRequest<Full<Bytes>>, bool), SendError> {
        let conn = self.connector.open(uri).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(conn.stream))
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(crate::spawn::boxed(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a connection to Salesforce ended");
            }
        }));
        Ok((sender, conn.proxied))
    }

    /// The most recently used idle connection for `key` that is still usable; those
    /// closed or idle too long are dropped on the way.
    fn checkout(&self, key: &Key) -> Option<Idle> {
        let mut pool = lock(&self.pool);
        let now = Instant::now();
        pool.idle.retain(|i| usable(i, now));
        let at = pool.idle.iter().rposition(|i| i.key == *key)?;
        Some(pool.idle.remove(at))
    }

    /// Keeps `sender` for the next request to `key` once hyper has finished the last
    /// exchange on it (at once, usually: the body has been read).
    fn checkin(&self, key: Key, sender: SendRequest<Full<Bytes>>, proxied: bool) {
        if sender.is_ready() {
            put(&self.pool, key, sender, proxied);
        } else if !sender.is_closed() {
            let pool = Arc::downgrade(&self.pool);
            tokio::spawn(crate::spawn::boxed(async move {
                let mut sender = sender;
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    put(&pool, key, sender, proxied);
                }
            }));
        }
    }

    /// How many idle connections are kept (for tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        lock(&self.pool).idle.len()
    }
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // The list stays consistent even if a holder panicked: every change is one Vec call.
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

fn usable(idle: &Idle, now: Instant) -> bool {
    now.duration_since(idle.since) < IDLE_TIMEOUT && idle.sender.is_ready()
}

fn put(pool: &Arc<Mutex<Pool>>, key: Key, sender: SendRequest<Full<Bytes>>, proxied: bool) {
    tracing::trace!(host = %key.1, "keeping the connection for reuse");
    let mut guard = lock(pool);
    if guard.idle.len() >= MAX_IDLE {
        guard.idle.remove(0); // the longest idle
    }
    guard.idle.push(Idle {
        key,
        sender,
        proxied,
        since: Instant::now(),
    });
    if !guard.reaping {
        guard.reaping = true;
        tokio::spawn(crate::spawn::boxed(reap(Arc::downgrade(pool))));
    }
}

/// Drops connections idle for [`IDLE_TIMEOUT`] (closing them) until none is left; ends
/// with the client.
async fn reap(pool: Weak<Mutex<Pool>>) {
    // Also when the task is dropped with its runtime: the next check-in starts another.
    let _done = Reaping(pool.clone());
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut guard = lock(&pool);
            let now = Instant::now();
            guard.idle.retain(|i| usable(i, now));
            match guard.idle.iter().map(|i| i.since).min() {
                Some(oldest) => oldest + IDLE_TIMEOUT,
                None => return,
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Clears [`Pool::reaping`] when the reaper ends.
struct Reaping(Weak<Mutex<Pool>>);

impl Drop for Reaping {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            lock(&pool).reaping = false;
        }
    }
}

/// `Host`: the authority without user info, the port only when not the scheme's default.
fn host_header(uri: &Uri) -> Result<HeaderValue, SendError> {
    let not_absolute = || SendError::NotAbsolute {
        uri: uri.to_string(),
    };
    let host = uri.host().ok_or_else(not_absolute)?;
    let default = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let value = match uri.port_u16() {
        Some(port) if Some(port) != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).map_err(|_| not_absolute())
}

/// The path and query of `uri`, as sent to the server itself.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use hyper_util::client::proxy::matcher::Matcher;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::salesforce::connect::TunnelError;

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

    /// A hyper server on 127.0.0.1:0 answering `body` (and `connection: close` when
    /// `keep_alive` is off); counts the connections it accepted.
    async fn server(body: &'static str, keep_alive: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    assert_eq!(req.uri(), "/path?q=1", "origin form");
                    assert!(req.headers().contains_key(HOST));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        body.as_bytes(),
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (url, accepted)
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::get(format!("{url}/path?q=1"))
            .body(Full::default())
            .unwrap()
    }

    #[tokio::test]
    async fn an_idle_connection_is_reused() {
        let (url, accepted) = server("hello", true).await;
        let c = client(Matcher::builder().build());
        for _ in 0..3 {
            let resp = c.send(get(&url), 1024).await.unwrap();
            assert_eq!(resp.into_body().unwrap(), "hello");
            assert_eq!(c.idle(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_reused() {
        let (url, accepted) = server("bye", false).await;
        let c = client(Matcher::builder().build());
        for n in 1..=2 {
            let resp = c.send(get(&url), 1024).await.unwrap();
            assert_eq!(resp.headers()["connection"], "close");
            assert_eq!(resp.into_body().unwrap(), "bye");
            assert_eq!(c.idle(), 0);
            assert_eq!(accepted.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
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
                // Keep-alive by its headers, then closed at once.
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        let c = client(Matcher::builder().build());
        let first = c.send(get(&url), 1024).await.unwrap();
        assert_eq!(first.into_body().unwrap(), "ok");
        // Wait until the client has seen the hang-up (the entry may be gone already).
        for _ in 0..1000 {
            if lock(&c.pool).idle.iter().all(|i| i.sender.is_closed()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let second = c.send(get(&url), 1024).await.unwrap();
        assert_eq!(second.into_body().unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_too_long_is_dropped() {
        let (url, accepted) = server("hello", true).await;
        let c = client(Matcher::builder().build());
        c.send(get(&url), 1024).await.unwrap().into_body().unwrap();
        assert_eq!(c.idle(), 1);
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(c.idle(), 1, "still within the idle limit");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.idle(), 0, "the reaper dropped it");
        c.send(get(&url), 1024).await.unwrap().into_body().unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_keeps_the_head_and_drops_the_connection() {
        let (url, _) = server("0123456789", true).await;
        let c = client(Matcher::builder().build());
        let resp = c.send(get(&url), 4).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(matches!(
            resp.into_body(),
            Err(BodyError::TooLarge { limit: 4 })
        ));
        assert_eq!(c.idle(), 0);
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
        assert!(
            matches!(&err, SendError::Connect(ConnectError::Tcp { addr: a, .. }) if *a == addr),
            "{err:?}"
        );
        assert_eq!(err.to_string(), format!("TCP connect to {addr} failed"));
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
        let SendError::Connect(ConnectError::Tunnel {
            proxy: named,
            source,
        }) = &err
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

    #[test]
    fn host_header_names_the_port_only_when_not_the_default() {
        let h = |u: &str| host_header(&u.parse().unwrap()).unwrap();
        assert_eq!(h("https://org.example:443/x"), "org.example");
        assert_eq!(h("https://org.example:8443/x"), "org.example:8443");
        assert_eq!(h("http://org.example/x"), "org.example");
        assert_eq!(h("http://[::1]:8080/x"), "[::1]:8080");
    }
}
