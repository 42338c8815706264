//! The Salesforce side: wire types, the HTTPS client, subject-token grants, the token
//! exchange and asset-token verification.

pub mod wire;
