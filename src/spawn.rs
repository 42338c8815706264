//! Background jobs as one future type.
//!
//! tokio compiles its task machinery (the harness that polls, completes and frees a task)
//! once per spawned future type: a few KB each. A job spawned as [`boxed`] shares one copy
//! with every other. Not for the socket API's per-connection task, where the extra
//! allocation would be paid on every connection.

use std::future::Future;
use std::pin::Pin;

/// A future boxed to the one type spawned with [`boxed`].
pub type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// `fut` as a [`Boxed`].
pub fn boxed(fut: impl Future<Output = ()> + Send + 'static) -> Boxed {
    Box::pin(fut)
}
