//! The Salesforce side (its wire types are in `wire::oauth`): the HTTPS client, subject-token grants, the device
//! flow, the token exchange and asset-token verification.

pub mod device;
pub mod error;
pub mod exchange;
pub mod subject;
pub mod upstream;
pub mod verify;

pub use error::{Class, Error, Step};
pub use upstream::Upstream;
