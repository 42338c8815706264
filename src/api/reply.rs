//! Reply helpers every route uses: the error body, `Retry-After`, probe answers.

use std::time::Duration;

use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER};
use serde::Serialize;
use wire::http::{self, Reply};

/// `{"error": code, "reason": text}` with `status`.
pub fn error(status: StatusCode, code: &str, reason: &str) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        reason: &'a str,
    }
    http::json(
        status,
        &Body {
            error: code,
            reason,
        },
    )
}

/// Adds `Retry-After: <whole seconds, at least 1>`.
pub fn with_retry_after(mut r: Reply, after: Duration) -> Reply {
    let secs = after.as_secs().max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

/// `{"ok": bool, "reason": text}`: 200 when `ok`, else 503.
pub fn probe(ok: bool, yes: &str, no: &str) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        ok: bool,
        reason: &'a str,
    }
    let (status, reason) = if ok {
        (StatusCode::OK, yes)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, no)
    };
    http::json(status, &Body { ok, reason })
}
