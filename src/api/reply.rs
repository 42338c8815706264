//! Reply helpers every route uses: the error body, `Retry-After`, probe answers, and
//! [`Answer`], what the routes the fast path serves give back.

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER};
use serde::Serialize;
use wire::http::{self, Reply};

/// A route's answer to a request answered from its head alone.
#[derive(Debug)]
pub enum Answer {
    /// 200 with one field (its content type) and a whole body: a served token. The fast
    /// path writes it as it is, and hyper gets it as [`http::with_type`] builds it.
    Whole {
        content_type: &'static str,
        body: Bytes,
    },
    /// Anything else, built.
    Built(Reply),
}

// === impl Answer ===

impl Answer {
    /// 200 with `body` of `content_type`.
    pub fn ok(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self::Whole {
            content_type,
            body: body.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Whole { .. } => StatusCode::OK,
            Self::Built(reply) => reply.status(),
        }
    }

    /// The answer as hyper sends it.
    pub fn into_reply(self) -> Reply {
        match self {
            Self::Whole { content_type, body } => {
                http::with_type(StatusCode::OK, content_type, body)
            }
            Self::Built(reply) => reply,
        }
    }
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Self {
        Self::Built(reply)
    }
}

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
