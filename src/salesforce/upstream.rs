//! The HTTPS client for Salesforce: rustls with ring, trust anchors that work on devices
//! without a CA store, a timeout on every call, and the server's clock read from `Date`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{DATE, HeaderMap, RETRY_AFTER};
use serde::de::DeserializeOwned;

use super::error::{Error, Step};
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
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("{url} cannot be a base URL")]
    BadBase { url: String },
}

/// An HTTP client bound to one Salesforce instance (My Domain or site URL).
#[derive(Clone, Debug)]
pub struct Upstream {
    client: reqwest::Client,
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
        if instance_url.cannot_be_a_base() {
            return Err(BuildError::BadBase {
                url: instance_url.to_string(),
            });
        }
        let (roots, source) = root_store(ca_file)?;
        tracing::debug!(trust = source, extra_ca = ?ca_file, "TLS trust anchors loaded");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(BuildError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .user_agent(concat!("asset-agent/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(BuildError::Client)?;
        Ok(Self {
            client,
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
        let req = self.client.post(self.url(path)).form(form);
        self.send(step, req).await
    }

    /// GETs `path` and parses a JSON success body.
    ///
    /// # Errors
    /// As [`Upstream::post_form`].
    pub async fn get_json<T: DeserializeOwned>(&self, step: Step, path: &str) -> Result<T, Error> {
        let req = self.client.get(self.url(path));
        self.send(step, req).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        step: Step,
        req: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let call = async {
            let resp = req
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|source| Error::Transport { step, source })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            self.observe_date(&headers);
            let body = read_limited(resp)
                .await
                .map_err(|reason| Error::Malformed { step, reason })?;
            Ok::<_, Error>((status, headers, body))
        };
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(self.timeout, call).await;
        self.metrics
            .counters()
            .upstream_call(step, started.elapsed());
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

async fn read_limited(mut resp: reqwest::Response) -> Result<Bytes, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
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
    use reqwest::header::HeaderValue;

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

    #[test]
    fn bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "nothing here").unwrap();
        let err = root_store(Some(&p)).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
