//! The Salesforce side (its wire types are in `wire::oauth`): the HTTPS client, subject-token grants, the device
//! flow, the token exchange and asset-token verification.

pub(crate) mod connect;
pub(crate) mod device;
pub(crate) mod error;
pub(crate) mod exchange;
pub(crate) mod http;
pub mod subject;
pub(crate) mod upstream;
pub mod verify;

pub use error::{Class, Error, Step};
pub use upstream::Upstream;
