//! Request counters, so tests can assert how often the agent called, retried and was
//! answered with an injected fault.
//!
//! Control routes (`/__emulator/...`) are counted apart from `total`: a test that inspects
//! the emulator must not change the numbers it is asserting on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The Salesforce-facing endpoints the emulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /services/oauth2/token`: every grant, the device flow and the exchange.
    Token,
    /// `GET /id/keys`.
    Jwks,
    /// Any other path or method (answered 404/405).
    Other,
}

/// What a token-endpoint request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    RefreshToken,
    ClientCredentials,
    JwtBearer,
    /// Start of the device flow (`response_type=device_code`).
    DeviceCode,
    /// Device-flow poll (`grant_type=device`).
    Device,
    TokenExchange,
    /// Missing or unknown `grant_type`.
    Unsupported,
}

/// The kinds of injected fault, as counted in [`Stats::faults`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// An injected error status (500/503/429...).
    Status,
    MalformedJson,
    WrongIssuedTokenType,
    BadSignature,
    /// A response held back by an injected delay (still answered normally).
    Delay,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests to Salesforce-facing paths (token, JWKS, unknown), control routes excluded.
    pub total: u64,
    /// Requests per endpoint.
    pub endpoints: BTreeMap<Endpoint, u64>,
    /// Token-endpoint requests per grant, faulted or not.
    pub grants: BTreeMap<Grant, u64>,
    /// Token-endpoint requests per grant answered 200 without a fault that spoils the body.
    pub successes: BTreeMap<Grant, u64>,
    /// Responses altered by an injected fault (delays excluded).
    pub faulted: u64,
    /// Injected faults by kind, delays included.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Requests to `/__emulator/...` control routes.
    pub control: u64,
}

// === impl Grant ===

impl Grant {
    /// Classifies a token-endpoint form by `grant_type` (or `response_type=device_code`).
    pub(crate) fn classify(grant_type: Option<&str>, response_type: Option<&str>) -> Self {
        match grant_type {
            Some(wire::oauth::GRANT_REFRESH_TOKEN) => Self::RefreshToken,
            Some(wire::oauth::GRANT_CLIENT_CREDENTIALS) => Self::ClientCredentials,
            Some(wire::oauth::GRANT_JWT_BEARER) => Self::JwtBearer,
            Some(wire::oauth::GRANT_DEVICE) => Self::Device,
            Some(wire::oauth::GRANT_TOKEN_EXCHANGE) => Self::TokenExchange,
            None if response_type == Some("device_code") => Self::DeviceCode,
            _ => Self::Unsupported,
        }
    }
}

// === impl Stats ===

impl Stats {
    /// Requests seen on `endpoint`.
    pub fn endpoint(&self, endpoint: Endpoint) -> u64 {
        self.endpoints.get(&endpoint).copied().unwrap_or(0)
    }

    /// Token requests seen for `grant`.
    pub fn grant(&self, grant: Grant) -> u64 {
        self.grants.get(&grant).copied().unwrap_or(0)
    }

    /// Successful (200, unspoilt) answers for `grant`.
    pub fn success(&self, grant: Grant) -> u64 {
        self.successes.get(&grant).copied().unwrap_or(0)
    }

    /// Injected faults of `kind`.
    pub fn fault(&self, kind: FaultKind) -> u64 {
        self.faults.get(&kind).copied().unwrap_or(0)
    }

    pub(crate) fn record_request(&mut self, endpoint: Endpoint) {
        self.total += 1;
        *self.endpoints.entry(endpoint).or_default() += 1;
    }

    pub(crate) fn record_grant(&mut self, grant: Grant) {
        *self.grants.entry(grant).or_default() += 1;
    }

    pub(crate) fn record_success(&mut self, grant: Grant) {
        *self.successes.entry(grant).or_default() += 1;
    }

    pub(crate) fn record_fault(&mut self, kind: FaultKind) {
        if kind != FaultKind::Delay {
            self.faulted += 1;
        }
        *self.faults.entry(kind).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_grants() {
        assert_eq!(
            Grant::classify(Some(wire::oauth::GRANT_TOKEN_EXCHANGE), None),
            Grant::TokenExchange
        );
        assert_eq!(Grant::classify(Some("device"), None), Grant::Device);
        assert_eq!(
            Grant::classify(None, Some("device_code")),
            Grant::DeviceCode
        );
        assert_eq!(Grant::classify(None, None), Grant::Unsupported);
        assert_eq!(Grant::classify(Some("password"), None), Grant::Unsupported);
    }

    #[test]
    fn counters_and_json_shape() {
        let mut s = Stats::default();
        s.record_request(Endpoint::Token);
        s.record_grant(Grant::RefreshToken);
        s.record_fault(FaultKind::Status);
        s.record_fault(FaultKind::Delay);
        assert_eq!(s.endpoint(Endpoint::Token), 1);
        assert_eq!(s.grant(Grant::RefreshToken), 1);
        assert_eq!(s.faulted, 1);
        assert_eq!(s.fault(FaultKind::Delay), 1);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["endpoints"]["token"], 1);
        assert_eq!(json["grants"]["refresh_token"], 1);
    }
}
