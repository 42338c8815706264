//! Per-server request bookkeeping for `/metrics`: requests by route and status, and
//! denials by the role that was missing.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use hyper::StatusCode;

use super::peer::Role;

/// Request and denial counters. Route labels are the fixed route paths (or `other`), so
/// the series set stays small whatever paths clients send.
#[derive(Debug, Default)]
pub struct Requests {
    by_route: Mutex<BTreeMap<(&'static str, u16), u64>>,
    denied: Mutex<BTreeMap<&'static str, u64>>,
}

// === impl Requests ===

impl Requests {
    pub fn count(&self, route: &'static str, status: StatusCode) {
        *lock(&self.by_route)
            .entry((route, status.as_u16()))
            .or_default() += 1;
    }

    /// A caller lacked `needs`.
    pub fn denied(&self, needs: Role) {
        *lock(&self.denied).entry(needs.as_str()).or_default() += 1;
    }

    /// `((route, status), count)`, sorted.
    pub fn by_route(&self) -> Vec<((&'static str, u16), u64)> {
        lock(&self.by_route).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// `(role needed, count)`, sorted.
    pub fn denials(&self) -> Vec<(&'static str, u64)> {
        lock(&self.denied).iter().map(|(k, v)| (*k, *v)).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
