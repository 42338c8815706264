//! `GET /metrics`: the agent's `metrics::Registry` in the Prometheus text
//! exposition format (version 0.0.4). Everything is computed when scraped.

use hyper::StatusCode;

use crate::api::Shared;
use crate::metrics::CONTENT_TYPE;
use wire::http::{self, Reply};

/// Answers `GET /metrics`.
pub fn reply(shared: &Shared) -> Reply {
    http::with_type(StatusCode::OK, CONTENT_TYPE, shared.metrics.render())
}
