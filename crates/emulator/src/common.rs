//! Pieces every emulator handler uses: the RFC 6749 §5.2 rejection, read-only access to a
//! form body, random identifiers and a poison-tolerant lock.
//!
//! Handlers return `Result<Reply, Rejection>` so that every failure path produces the same
//! `{"error", "error_description"}` body Salesforce sends, and so unit tests can assert on
//! the error code without going through HTTP.

use std::sync::{Mutex, MutexGuard, PoisonError};

use hyper::StatusCode;
use ring::rand::{SecureRandom as _, SystemRandom};

use wire::http::{self, Reply};
use wire::jose::b64url;

/// An OAuth error answer: status, RFC 6749 §5.2 code and a description for humans.
///
/// Descriptions name fields and rules, never token or secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

/// A form body (`application/x-www-form-urlencoded`), in the order it was sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Form {
    pairs: Vec<(String, String)>,
}

// === impl Rejection ===

impl Rejection {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_client", description)
    }

    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            description,
        )
    }

    /// A failure on our side (randomness, signing): 500 without detail.
    pub fn server_error(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            description,
        )
    }

    /// The JSON error response.
    pub fn into_reply(self) -> Reply {
        http::json(
            self.status,
            &wire::oauth::OAuthError {
                error: self.error.to_owned(),
                error_description: Some(self.description),
            },
        )
    }
}

// === impl Form ===

impl Form {
    /// Parses a form body; undecodable input yields an empty form, which then fails on the
    /// first required field with a message naming it.
    pub fn parse(body: &[u8]) -> Self {
        Self {
            pairs: http::form_urlencoded_pairs(body),
        }
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self {
            pairs: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, which must be present and non-empty.
    ///
    /// # Errors
    /// `invalid_request` naming the field.
    pub fn require(&self, name: &str) -> Result<&str, Rejection> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Rejection::invalid_request(format!("{name} is missing"))),
        }
    }

    /// How many times `name` occurs.
    pub fn count(&self, name: &str) -> usize {
        self.pairs.iter().filter(|(k, _)| k == name).count()
    }

    /// Field names in order, duplicates included.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(k, _)| k.as_str())
    }
}

/// `bytes` random bytes as base64url.
///
/// # Errors
/// `server_error` if the system RNG fails (it does not on Linux, but we do not panic).
pub(crate) fn random_b64url(bytes: usize) -> Result<String, Rejection> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Rejection::server_error("random generator failed"))?;
    Ok(b64url(&buf))
}

/// A random number below `bound` (bias is irrelevant for display codes).
///
/// # Errors
/// As [`random_b64url`].
pub(crate) fn random_below(bound: u32) -> Result<u32, Rejection> {
    let mut buf = [0u8; 4];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Rejection::server_error("random generator failed"))?;
    Ok(u32::from_le_bytes(buf) % bound.max(1))
}

/// Locks `m`, recovering from poisoning: every critical section leaves the tables
/// consistent, and a panicked test thread must not wedge the emulator.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Compares secrets without an early exit on the first differing byte: digests are
/// compared instead, so timing reveals nothing about the expected value.
pub(crate) fn secrets_equal(a: &str, b: &str) -> bool {
    use ring::digest::{SHA256, digest};
    digest(&SHA256, a.as_bytes()).as_ref() == digest(&SHA256, b.as_bytes()).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_require_names_missing_and_empty_fields() {
        let f = Form::from_pairs(&[("a", "1"), ("b", ""), ("a", "2")]);
        assert_eq!(f.require("a").unwrap(), "1");
        assert_eq!(f.count("a"), 2);
        let err = f.require("b").unwrap_err();
        assert_eq!(err.error, "invalid_request");
        assert_eq!(err.description, "b is missing");
        assert!(f.require("c").is_err());
        assert_eq!(f.keys().collect::<Vec<_>>(), ["a", "b", "a"]);
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_b64url(16).unwrap(), random_b64url(16).unwrap());
        assert!(random_below(10).unwrap() < 10);
        assert!(secrets_equal("x", "x"));
        assert!(!secrets_equal("x", "y"));
    }
}
