//! Serde types for what crosses the wire to Salesforce (spec §2-§5), shared by the agent's
//! client and the built-in emulator so the two cannot drift apart.
//!
//! Response types are liberal (unknown fields ignored, optional where Salesforce may omit a
//! member); request forms are built field by field in the client, strict in what we send.

use serde::{Deserialize, Serialize};

use crate::jose::RsaPublicJwk;
use crate::secret::Secret;

/// The token endpoint: every grant, the device flow and the exchange (spec §2, §5).
pub const TOKEN_PATH: &str = "/services/oauth2/token";
/// The org's JWKS, which includes the asset-token signing key (spec §4).
pub const JWKS_PATH: &str = "/id/keys";

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// Salesforce's non-standard device-flow poll grant (RFC 8628 calls it device_code).
pub const GRANT_DEVICE: &str = "device";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A successful OAuth grant (refresh token, JWT bearer, client credentials, device poll).
/// Salesforce sends no `expires_in`: the session lasts until it is rejected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthTokenResponse {
    pub access_token: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The RFC 8693 token-exchange response carrying the asset token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeResponse {
    pub access_token: Secret,
    pub issued_token_type: String,
    pub token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// An RFC 6749 §5.2 error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// The start of the device flow (`response_type=device_code`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceCodeResponse {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default = "default_interval")]
    pub interval: u64,
}

fn default_interval() -> u64 {
    5
}

/// A JSON Web Key Set. Entries are kept loose: non-RSA keys are skipped by the reader.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<JwksEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwksEntry {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// The actor token's claims (spec §3). Field names are Salesforce's, hence the renames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorClaims {
    pub did: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Asset")]
    pub asset: AssetFields,
    pub cnf: Confirmation,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Fields of the Salesforce Asset object, by API name. Only configured ones are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetFields {
    #[serde(rename = "Id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "Name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        rename = "SerialNumber",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub serial_number: Option<String>,
    #[serde(rename = "AccountId", default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(rename = "ContactId", default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
}

/// RFC 7800 confirmation: the key the token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub jwk: RsaPublicJwk,
}

/// The asset token's claims as the agent reads them (spec §4). `aud` may be a string or an
/// array; `sub` carries the Asset record id (the emulator's choice, see the spec).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssetTokenClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
    #[serde(rename = "Name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// `aud` as a string or an array of strings (RFC 7519 §4.1.3).
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aud_accepts_string_or_array() {
        let c: AssetTokenClaims = serde_json::from_str(r#"{"exp":1,"aud":"a"}"#).unwrap();
        assert_eq!(c.aud, vec!["a"]);
        let c: AssetTokenClaims = serde_json::from_str(r#"{"exp":1,"aud":["a","b"]}"#).unwrap();
        assert_eq!(c.aud, vec!["a", "b"]);
        let c: AssetTokenClaims = serde_json::from_str(r#"{"exp":1}"#).unwrap();
        assert!(c.aud.is_empty());
    }

    #[test]
    fn asset_fields_use_salesforce_names_and_skip_unset() {
        let f = AssetFields {
            serial_number: Some("00123".into()),
            name: Some("Pump 7".into()),
            ..AssetFields::default()
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"Name":"Pump 7","SerialNumber":"00123"}"#
        );
    }

    #[test]
    fn exchange_response_parses_sample() {
        let r: ExchangeResponse = serde_json::from_str(
            r#"{"access_token":"a.b.c","issued_token_type":"urn:ietf:params:oauth:token-type:jwt","token_type":"Bearer","expires_in":60}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Some(60));
        assert_eq!(r.issued_token_type, TOKEN_TYPE_JWT);
    }
}
