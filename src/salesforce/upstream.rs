//! The HTTPS client for Salesforce: rustls with ring, trust anchors that work on devices
//! without a CA store, a timeout on every call, and the server's clock read from `Date`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Url;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, CONTENT_TYPE, DATE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::client::proxy::matcher::Matcher;
use serde::de::DeserializeOwned;

use super::connect::Connector;
use super::error::{Error, Step};
use super::http::{BodyError, Client};
use crate::metrics::Registry;
use crate::skew::Skew;
use crate::tls::{RootsError, root_store};
use wire::clock;
use wire::oauth::OAuthError;

/// Responses larger than this are refused: token responses are a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error("could not set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("{url} has no host")]
    NoHost { url: String },
}

/// An HTTP client bound to one Salesforce instance (My Domain or site URL).
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client,
    /// Sent with every request (the same for every request, so built once).
    user_agent: HeaderValue,
    base: String,
    timeout: Duration,
    clock: clock::Clock,
    skew: Arc<Skew>,
    /// Where call latencies are counted: the agent's registry once [`Upstream::with_metrics`]
    /// names it, else one of this client's own.
    metrics: Arc<Registry>,
}

// === impl Upstream ===

impl Upstream {
    /// A client for `instance_url` (a path prefix, as Experience Cloud sites have, is kept).
    ///
    /// # Errors
    /// When the CA file is unusable or TLS cannot be set up.
    pub fn new(
        instance_url: &Url,
        ca_file: Option<&Path>,
        timeout: Duration,
        clock: clock::Clock,
        skew: Arc<Skew>,
    ) -> Result<Self, BuildError> {
        Self::with_proxies(
            instance_url,
            ca_file,
            timeout,
            clock,
            skew,
            Matcher::from_system(),
        )
    }

    /// [`Upstream::new`] with the proxies named by `proxies` instead of the environment.
    pub(crate) fn with_proxies(
        instance_url: &Url,
        ca_file: Option<&Path>,
        timeout: Duration,
        clock: clock::Clock,
        skew: Arc<Skew>,
        proxies: Matcher,
    ) -> Result<Self, BuildError> {
        if instance_url.host_str().is_none() {
            return Err(BuildError::NoHost {
                url: instance_url.to_string(),
            });
        }
        let (roots, source) = root_store(ca_file)?;
        tracing::debug!(trust = source, extra_ca = ?ca_file, "TLS trust anchors loaded");
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(BuildError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // HTTP/1.1 with idle connections kept for reuse (90 s); redirects are never
        // followed (a redirect is an answer like any other status).
        let client = Client::new(Connector::new(tls, proxies));
        Ok(Self {
            client,
            user_agent: HeaderValue::from_static(concat!(
                "asset-agent/",
                env!("CARGO_PKG_VERSION")
            )),
            base: instance_url.as_str().trim_end_matches('/').to_owned(),
            timeout,
            clock,
            skew,
            metrics: Arc::default(),
        })
    }

    /// `{instance_url}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The clock-skew estimate fed by every response's `Date` header.
    /// Counts this client's calls in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Registry>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The registry this client counts in.
    pub fn metrics(&self) -> &Arc<Registry> {
        &self.metrics
    }

    pub fn skew(&self) -> &Arc<Skew> {
        &self.skew
    }

    /// POSTs a form to `path` and parses a JSON success body.
    ///
    /// # Errors
    /// See [`Error`]: transport, timeout, HTTP status (with the OAuth error body) or a
    /// malformed success body.
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        step: Step,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<T, Error> {
        let body = serde_urlencoded::to_string(form).map_err(|e| Error::Transport {
            step,
            source: Box::new(e),
        })?;
        let form_type = HeaderValue::from_static("application/x-www-form-urlencoded");
        self.send(step, Method::POST, path, Some((form_type, body)))
            .await
    }

    /// GETs `path` and parses a JSON success body.
    ///
    /// # Errors
    /// As [`Upstream::post_form`].
    pub async fn get_json<T: DeserializeOwned>(&self, step: Step, path: &str) -> Result<T, Error> {
        self.send(step, Method::GET, path, None).await
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(HeaderValue, String)>,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let uri: hyper::Uri = self.url(path).parse()?;
        let mut req = Request::builder()
            .method(method)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, self.user_agent.clone());
        if let Some(auth) = self.client.connector().proxy_authorization(&uri) {
            req = req.header(hyper::header::PROXY_AUTHORIZATION, auth);
        }
        let body = match body {
            Some((content_type, body)) => {
                req = req.header(CONTENT_TYPE, content_type);
                Full::new(Bytes::from(body))
            }
            None => Full::default(),
        };
        req.uri(uri).body(body)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        step: Step,
        method: Method,
        path: &str,
        body: Option<(HeaderValue, String)>,
    ) -> Result<T, Error> {
        let req = self
            .request(method, path, body)
            .map_err(|e| Error::Transport {
                step,
                source: Box::new(e),
            })?;
        let call = async {
            let resp = self
                .client
                .send(req, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| Error::Transport {
                    step,
                    source: Box::new(e),
                })?;
            let (parts, body) = resp.into_parts();
            self.observe_date(&parts.headers);
            let body = body.map_err(|e| Error::Malformed {
                step,
                reason: match e {
                    BodyError::Read(e) => format!("error reading the response body: {e}"),
                    BodyError::TooLarge { .. } => e.to_string(),
                },
            })?;
            Ok::<_, Error>((parts.status, parts.headers, body))
        };
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(self.timeout, call).await;
        self.metrics
            .counters()
            .upstream_call(step.label(), started.elapsed());
        let (status, headers, body) = outcome.map_err(|_| Error::Timeout {
            step,
            timeout: self.timeout,
        })??;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| Error::Malformed {
                step,
                reason: e.to_string(),
            });
        }
        Err(Error::Status {
            step,
            status,
            oauth: serde_json::from_slice::<OAuthError>(&body).ok(),
            retry_after: retry_after(&headers, self.clock.now()),
        })
    }

    fn observe_date(&self, headers: &HeaderMap) {
        let server = headers
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        if let Some(server) = server {
            self.skew
                .observe(clock::unix_seconds(server) - self.clock.unix());
        }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = clock::from_unix(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(clock::from_unix(1_700_000_030));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn site_prefix_is_kept() {
        crate::crypto::install();
        let url = Url::parse("https://acme.my.site.com/support/").unwrap();
        let up = Upstream::new(
            &url,
            None,
            Duration::from_secs(10),
            clock::Clock::system(),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(
            up.url("/services/oauth2/token"),
            "https://acme.my.site.com/support/services/oauth2/token"
        );
    }

    /// A one-connection stand-in for a proxy: records the request head, answers `reply`.
    async fn proxy(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed mid-head");
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(reply.as_bytes()).await.unwrap();
            conn.shutdown().await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (format!("http://user:secret@{addr}"), task)
    }

    fn through(instance: &str, proxies: Matcher) -> Upstream {
        crate::crypto::install();
        Upstream::with_proxies(
            &Url::parse(instance).unwrap(),
            None,
            Duration::from_secs(10),
            clock::Clock::system(),
            Arc::default(),
            proxies,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn plain_http_goes_to_the_proxy_in_absolute_form() {
        let (proxy_url, head) = proxy(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}",
        )
        .await;
        // `.invalid` never resolves: only the proxy can have answered.
        let up = through(
            "http://org.invalid",
            Matcher::builder().http(proxy_url).build(),
        );
        let v: serde_json::Value = up.get_json(Step::Jwks, "/id/keys").await.unwrap();
        assert_eq!(v["ok"], true);
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get http://org.invalid/id/keys http/1.1\r\n"),
            "{head}"
        );
        // user:secret
        assert!(
            head.contains("proxy-authorization: basic dxnlcjpzzwnyzxq="),
            "{head}"
        );
        assert!(head.contains("user-agent: asset-agent/"), "{head}");
    }

    #[tokio::test]
    async fn https_is_tunnelled_with_connect() {
        // The proxy accepts the tunnel and hangs up: the TLS handshake then fails.
        let (proxy_url, head) = proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let up = through(
            "https://org.invalid",
            Matcher::builder().https(proxy_url).build(),
        );
        let err = up
            .get_json::<serde_json::Value>(Step::Jwks, "/id/keys")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("connect org.invalid:443 http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("proxy-authorization: basic dxnlcjpzzwnyzxq="),
            "{head}"
        );
    }

    #[tokio::test]
    async fn no_proxy_hosts_are_reached_directly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener); // nothing listens there: a direct connection is refused
        let proxies = Matcher::builder()
            .http("http://127.0.0.1:1")
            .no("127.0.0.1")
            .build();
        let up = through(&format!("http://127.0.0.1:{port}"), proxies);
        let err = up
            .get_json::<serde_json::Value>(Step::Jwks, "/id/keys")
            .await
            .unwrap_err();
        let chain = wire::report::chain_lines(&err);
        assert!(!chain.contains("proxy"), "{chain}");
        assert!(chain.contains("could not reach Salesforce"), "{chain}");
    }

    #[test]
    fn bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "nothing here").unwrap();
        let err = root_store(Some(&p)).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
