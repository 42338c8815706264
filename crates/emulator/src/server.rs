//! The HTTP side: the accept loop (which the stop-accepting fault can close and re-open),
//! one hyper HTTP/1.1 connection task per client, and the request pipeline for the
//! Salesforce-facing routes: count → read form → injected delay/failure → handler →
//! malformed-JSON fault → `Date` from the emulator clock.
//!
//! hyper's own `Date` header is switched off (`auto_date_header(false)`; hyper also skips
//! it when a handler sets one): it would come from the system clock, and a test that
//! skews the emulator clock must see the skewed time there too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{DATE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::armed::Spoiled;
use super::common::{Form, Rejection, lock};
use super::stats::{Endpoint, FaultKind, Grant};
use super::{CONTROL_PREFIX, Error, Shared, inspect, token_endpoint};
use wire::http::{self, BodyError, Reply};
use wire::oauth::{JWKS_PATH, TOKEN_PATH};

/// Token requests are small forms; anything bigger is refused.
const MAX_BODY: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// What a malformed-JSON fault answers instead of the real body: cut off mid-string.
const MALFORMED_BODY: &[u8] = br#"{"access_token":"00DEM0000000001!AQ4AQ"#;

/// Whether the server should listen (requested by faults) and whether it does (reported
/// by the accept loop), each with a sequence number so a caller waits for the loop to act
/// on its own request and not on an older state.
pub(crate) struct ListenControl {
    want: watch::Sender<(bool, u64)>,
    status: watch::Sender<ListenStatus>,
}

#[derive(Clone, Debug, Default)]
struct ListenStatus {
    listening: bool,
    /// The last request sequence number acted on.
    seq: u64,
    /// Why the last re-bind failed, if it did.
    error: Option<(std::io::ErrorKind, String)>,
    shut_down: bool,
}

// === impl ListenControl ===

impl ListenControl {
    pub fn new() -> Self {
        Self {
            want: watch::Sender::new((true, 0)),
            status: watch::Sender::new(ListenStatus {
                listening: true,
                ..ListenStatus::default()
            }),
        }
    }

    pub fn is_accepting(&self) -> bool {
        self.status.borrow().listening
    }

    /// Asks the loop to close the listener; returns once it has.
    pub async fn stop(&self) {
        let _ = self.request(false).await;
    }

    /// Asks the loop to listen on `addr` again; returns once it does or failed to.
    pub async fn resume(&self, addr: SocketAddr) -> Result<(), Error> {
        let status = self.request(true).await;
        if status.shut_down {
            return Err(Error::Stopped);
        }
        match status.error {
            Some((kind, msg)) if !status.listening => Err(Error::Rebind {
                addr,
                source: std::io::Error::new(kind, msg),
            }),
            _ => Ok(()),
        }
    }

    async fn request(&self, listen: bool) -> ListenStatus {
        let mut seq = 0;
        let mut rx = self.status.subscribe();
        self.want.send_modify(|w| {
            w.0 = listen;
            w.1 += 1;
            seq = w.1;
        });
        match rx.wait_for(|s| s.seq >= seq || s.shut_down).await {
            Ok(s) => s.clone(),
            Err(_) => ListenStatus {
                shut_down: true,
                ..ListenStatus::default()
            },
        }
    }
}

/// The accept loop: serves until shutdown, closing and re-binding the listener when the
/// stop-accepting fault asks. Closing also ends open connections (gracefully, so an
/// in-flight response is still written), or a pooled keep-alive connection would hide
/// the outage from the client.
pub(crate) async fn run(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    let mut want = shared.listen.want.subscribe();
    let mut listener = Some(listener);
    let mut epoch = shutdown.child_token();
    loop {
        let (wanted, seq) = *want.borrow_and_update();
        let mut error = None;
        if !wanted && listener.is_some() {
            listener = None;
            epoch.cancel();
            epoch = shutdown.child_token();
            tracing::debug!(addr = %shared.addr, "emulator stopped accepting connections");
        } else if wanted && listener.is_none() {
            match TcpListener::bind(shared.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    tracing::debug!(addr = %shared.addr, "emulator accepting connections again");
                }
                Err(e) => error = Some((e.kind(), e.to_string())),
            }
        }
        let listening = listener.is_some();
        shared.listen.status.send_if_modified(|s| {
            let changed = s.seq != seq || s.listening != listening || error.is_some();
            *s = ListenStatus {
                listening,
                seq,
                error: error.take(),
                shut_down: false,
            };
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = want.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((stream, _peer)) => spawn_connection(&shared, stream, epoch.clone()),
                Err(e) => {
                    tracing::debug!(error = %e, "emulator accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    epoch.cancel();
    shared.listen.status.send_modify(|s| {
        s.listening = false;
        s.shut_down = true;
    });
    tracing::debug!(addr = %shared.addr, "emulator shut down");
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream, epoch: CancellationToken) {
    let for_service = shared.clone();
    shared.tracker.spawn(async move {
        let service = service_fn(move |req| {
            let shared = for_service.clone();
            async move { Ok::<_, Infallible>(handle(shared, req).await) }
        });
        let mut builder = http1::Builder::new();
        builder.auto_date_header(false);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "emulator connection ended with an error");
                }
            }
            () = epoch.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    });
}

/// Every request: control routes bypass counting and faults; all replies get `Date`.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path();
    let is_control = path == CONTROL_PREFIX
        || path
            .strip_prefix(CONTROL_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'));
    let mut reply = if is_control {
        lock(&shared.stats).control += 1;
        inspect::handle(&shared, req).await
    } else {
        salesforce(&shared, req).await
    };
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(shared.now())) {
        reply.headers_mut().insert(DATE, date);
    }
    reply
}

/// Which Salesforce endpoint `path` names, under the site prefix.
fn route(prefix: &str, path: &str) -> Endpoint {
    match path.strip_prefix(prefix) {
        Some(TOKEN_PATH) => Endpoint::Token,
        Some(JWKS_PATH) => Endpoint::Jwks,
        _ => Endpoint::Other,
    }
}

async fn salesforce(shared: &Shared, req: Request<Incoming>) -> Reply {
    let endpoint = route(&shared.config.site_prefix, req.uri().path());
    lock(&shared.stats).record_request(endpoint);
    let method = req.method().clone();
    let headers = req.headers().clone();
    let mut parsed = None;
    if endpoint == Endpoint::Token && method == Method::POST {
        let body = match http::read_body(req, MAX_BODY).await {
            Ok(body) => body,
            Err(e) => {
                let status = match e {
                    BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    BodyError::Read => StatusCode::BAD_REQUEST,
                };
                return Rejection::new(status, "invalid_request", e.to_string()).into_reply();
            }
        };
        let form = Form::parse(&body);
        let grant = Grant::classify(form.get("grant_type"), form.get("response_type"));
        lock(&shared.stats).record_grant(grant);
        parsed = Some((form, grant));
    }
    let grant = parsed.as_ref().map(|(_, g)| *g);

    let delay = lock(&shared.faults).take_delay(endpoint, grant);
    if let Some(delay) = delay {
        lock(&shared.stats).record_fault(FaultKind::Delay);
        tokio::time::sleep(delay).await;
    }
    let failure = lock(&shared.faults).take_failure(endpoint, grant);
    if let Some((status, retry_after)) = failure {
        lock(&shared.stats).record_fault(FaultKind::Status);
        tracing::debug!(?endpoint, ?grant, %status, "emulator injected a failure");
        return failure_reply(status, retry_after);
    }

    match (endpoint, parsed) {
        (Endpoint::Token, Some((form, grant))) => {
            let reply = token_endpoint::answer(shared, grant, &form, &headers).await;
            spoil_or_count(shared, grant, reply)
        }
        (Endpoint::Jwks, _) if method == Method::GET => {
            http::json(StatusCode::OK, shared.keys.jwks())
        }
        (Endpoint::Token | Endpoint::Jwks, _) => Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            format!("method {method} not allowed here"),
        )
        .into_reply(),
        (Endpoint::Other, _) => {
            Rejection::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_reply()
        }
    }
}

/// Applies the malformed-JSON fault to a successful token response, or counts the success.
fn spoil_or_count(shared: &Shared, grant: Grant, reply: Reply) -> Reply {
    if reply.status() != StatusCode::OK {
        return reply;
    }
    if lock(&shared.faults).take_malformed(Some(grant)) {
        lock(&shared.stats).record_fault(FaultKind::MalformedJson);
        tracing::debug!(?grant, "emulator spoilt a token response");
        return http::with_type(StatusCode::OK, "application/json", MALFORMED_BODY);
    }
    if reply.extensions().get::<Spoiled>().is_none() {
        lock(&shared.stats).record_success(grant);
    }
    reply
}

/// An injected failure: RFC 6749-style body, `Retry-After` when configured.
fn failure_reply(status: StatusCode, retry_after: Option<u64>) -> Reply {
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            "temporarily_unavailable"
        }
        s if s.is_server_error() => "server_error",
        _ => "invalid_request",
    };
    let mut reply = Rejection::new(status, code, "injected fault").into_reply();
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        reply.headers_mut().insert(RETRY_AFTER, v);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_respect_the_site_prefix() {
        assert_eq!(route("", "/services/oauth2/token"), Endpoint::Token);
        assert_eq!(route("", "/id/keys"), Endpoint::Jwks);
        assert_eq!(
            route("/support", "/support/services/oauth2/token"),
            Endpoint::Token
        );
        assert_eq!(route("/support", "/services/oauth2/token"), Endpoint::Other);
        assert_eq!(route("", "/services/oauth2/token/"), Endpoint::Other);
    }

    #[test]
    fn failure_reply_has_retry_after() {
        let r = failure_reply(StatusCode::TOO_MANY_REQUESTS, Some(7));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "7");
        assert!(
            failure_reply(StatusCode::INTERNAL_SERVER_ERROR, None)
                .headers()
                .get(RETRY_AFTER)
                .is_none()
        );
    }
}
