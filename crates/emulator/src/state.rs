//! The emulated org's tables: sessions (access tokens), refresh tokens, device
//! authorisations, Assets, AssetTokenEvents, JWT-bearer certificates and seen actor `jti`s.
//!
//! One `State` lives behind a std `Mutex` in the server; every method here is synchronous
//! and short, so the lock is never held across an `.await`. Times are Unix milliseconds
//! from the emulator clock, passed in by the caller, so this module never reads a clock.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::device_auth::DeviceAuth;
use wire::jose::RsaPublicJwk;
use wire::oauth::AssetFields;

/// The user every emulated session belongs to (Salesforce user ids start with `005`).
pub const USER_ID: &str = "005EM0000000001AAA";
/// The emulated org's id (`00D` prefix).
pub const ORG_ID: &str = "00DEM0000000001EAA";

/// An Asset record, with the Salesforce API names on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "SerialNumber", default)]
    pub serial_number: Option<String>,
    #[serde(rename = "AccountId", default)]
    pub account_id: Option<String>,
    #[serde(rename = "ContactId", default)]
    pub contact_id: Option<String>,
    /// The `did` of the device last registered to this Asset.
    #[serde(rename = "DeviceId")]
    pub device_id: String,
    /// RFC 7638 thumbprint of the device key last bound to this Asset.
    #[serde(rename = "DeviceKeyThumbprint")]
    pub device_key_thumbprint: String,
    #[serde(rename = "CreatedDate")]
    pub created_date: String,
}

/// How an exchange found its Asset (spec §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// A new Asset was created from the actor token's `Asset` fields.
    Created,
    /// An existing Asset was found by `Asset.Id` or `Asset.SerialNumber`.
    Linked,
}

/// One `AssetTokenEvent` platform event, fields named as in Salesforce's object reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetTokenEvent {
    /// Position in the event stream, from 1.
    #[serde(rename = "ReplayId")]
    pub replay_id: u64,
    /// The asset token's display name (the actor token's `Name`).
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "AssetId")]
    pub asset_id: String,
    #[serde(rename = "AssetName")]
    pub asset_name: String,
    #[serde(rename = "AssetSerialNumber")]
    pub asset_serial_number: Option<String>,
    #[serde(rename = "DeviceId")]
    pub device_id: String,
    /// The device public key from `cnf.jwk`, as an SPKI PEM.
    #[serde(rename = "DeviceKey")]
    pub device_key: String,
    /// The actor token's claims, as JSON text.
    #[serde(rename = "ActorTokenPayload")]
    pub actor_token_payload: String,
    #[serde(rename = "ConnectedAppId")]
    pub connected_app_id: String,
    /// The connected app's consumer key (`client_id`).
    #[serde(rename = "ConnectedAppName")]
    pub connected_app_name: String,
    /// When the issued asset token expires (RFC 3339).
    #[serde(rename = "Expiration")]
    pub expiration: String,
    #[serde(rename = "UserId")]
    pub user_id: String,
    #[serde(rename = "CreatedDate")]
    pub created_date: String,
    /// Emulator extra: whether the Asset was created or linked.
    #[serde(rename = "Registration")]
    pub registration: Registration,
}

/// A live access token's session.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub user_id: String,
    pub expires_at_ms: i64,
}

/// What a presented access token is.
#[derive(Debug)]
pub(crate) enum SessionCheck<'a> {
    Live(&'a Session),
    Expired,
    Unknown,
}

/// Why an actor token's `Asset` could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegisterError {
    #[error("Asset.Id {0} does not exist")]
    UnknownId(String),
    #[error("Asset.Name is required to create a new Asset")]
    MissingName,
}

/// The emulated org.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Access token → session.
    sessions: HashMap<String, Session>,
    /// Refresh token → username. Rotation and revocation remove entries.
    refresh_tokens: HashMap<String, String>,
    /// Device code → pending authorisation.
    pub devices: HashMap<String, DeviceAuth>,
    assets: Vec<Asset>,
    events: Vec<AssetTokenEvent>,
    jwt_bearer_keys: Vec<RsaPublicJwk>,
    /// Actor `jti` → its `exp`, kept until it expires (replay protection).
    seen_jti: HashMap<String, i64>,
    next_asset: u64,
}

/// The input to [`State::register`].
pub(crate) struct Registrant<'a> {
    pub fields: &'a AssetFields,
    pub did: &'a str,
    pub thumbprint: String,
    pub created_date: String,
}

// === impl State ===

impl State {
    pub fn add_session(&mut self, token: String, session: Session) {
        self.sessions.insert(token, session);
    }

    pub fn session(&self, token: &str, now_ms: i64) -> SessionCheck<'_> {
        match self.sessions.get(token) {
            Some(s) if now_ms < s.expires_at_ms => SessionCheck::Live(s),
            Some(_) => SessionCheck::Expired,
            None => SessionCheck::Unknown,
        }
    }

    /// Every access token issued so far, live or not.
    pub fn access_tokens(&self) -> impl Iterator<Item = &str> {
        self.sessions.keys().map(String::as_str)
    }

    /// Ends every session now; returns how many were live.
    pub fn expire_sessions(&mut self, now_ms: i64) -> usize {
        let mut live = 0;
        for s in self.sessions.values_mut() {
            if now_ms < s.expires_at_ms {
                live += 1;
            }
            s.expires_at_ms = i64::MIN;
        }
        live
    }

    pub fn add_refresh_token(&mut self, token: String, username: String) {
        self.refresh_tokens.insert(token, username);
    }

    /// The username a refresh token belongs to, if it is live.
    pub fn refresh_token(&self, token: &str) -> Option<&str> {
        self.refresh_tokens.get(token).map(String::as_str)
    }

    /// Kills a refresh token; true if it was live.
    pub fn revoke_refresh_token(&mut self, token: &str) -> bool {
        self.refresh_tokens.remove(token).is_some()
    }

    /// Kills every refresh token; returns how many were live.
    pub fn revoke_all_refresh_tokens(&mut self) -> usize {
        let n = self.refresh_tokens.len();
        self.refresh_tokens.clear();
        n
    }

    pub fn jwt_bearer_keys(&self) -> &[RsaPublicJwk] {
        &self.jwt_bearer_keys
    }

    /// Registers a JWT-bearer verification key (idempotent by thumbprint).
    pub fn add_jwt_bearer_key(&mut self, jwk: RsaPublicJwk) {
        let tp = jwk.thumbprint();
        if !self.jwt_bearer_keys.iter().any(|k| k.thumbprint() == tp) {
            self.jwt_bearer_keys.push(jwk);
        }
    }

    /// Records an actor `jti`; false if it was already used and has not expired yet.
    pub fn use_jti(&mut self, jti: &str, exp: i64, now: i64) -> bool {
        self.seen_jti.retain(|_, e| *e >= now);
        if self.seen_jti.contains_key(jti) {
            return false;
        }
        self.seen_jti.insert(jti.to_owned(), exp);
        true
    }

    /// Finds or creates the Asset an actor token describes, in the order of spec §3:
    /// `Asset.Id` (must exist), then `Asset.SerialNumber`, then a new record. A linked Asset
    /// records the presenting device's id and key.
    ///
    /// # Errors
    /// An `Asset.Id` that does not exist; a new Asset without `Asset.Name`.
    pub fn register(&mut self, r: Registrant<'_>) -> Result<(Asset, Registration), RegisterError> {
        let f = r.fields;
        let found = if let Some(id) = f.id.as_deref().filter(|s| !s.is_empty()) {
            let pos = self.assets.iter().position(|a| a.id == id);
            Some(pos.ok_or_else(|| RegisterError::UnknownId(id.to_owned()))?)
        } else if let Some(serial) = f.serial_number.as_deref().filter(|s| !s.is_empty()) {
            self.assets
                .iter()
                .position(|a| a.serial_number.as_deref() == Some(serial))
        } else {
            None
        };
        if let Some(pos) = found
            && let Some(asset) = self.assets.get_mut(pos)
        {
            asset.device_id = r.did.to_owned();
            asset.device_key_thumbprint = r.thumbprint;
            return Ok((asset.clone(), Registration::Linked));
        }
        let name = f
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(RegisterError::MissingName)?;
        self.next_asset += 1;
        let asset = Asset {
            // 18 characters with the Asset key prefix 02i, like a Salesforce record id.
            id: format!("02iEM{:010}AAA", self.next_asset),
            name,
            serial_number: f.serial_number.clone().filter(|s| !s.is_empty()),
            account_id: f.account_id.clone(),
            contact_id: f.contact_id.clone(),
            device_id: r.did.to_owned(),
            device_key_thumbprint: r.thumbprint,
            created_date: r.created_date,
        };
        self.assets.push(asset.clone());
        Ok((asset, Registration::Created))
    }

    pub fn assets(&self) -> &[Asset] {
        &self.assets
    }

    /// Appends an event, assigning its `ReplayId`.
    pub fn push_event(&mut self, mut event: AssetTokenEvent) {
        event.replay_id = self.events.len() as u64 + 1;
        self.events.push(event);
    }

    pub fn events(&self) -> &[AssetTokenEvent] {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg<'a>(fields: &'a AssetFields, did: &'a str) -> Registrant<'a> {
        Registrant {
            fields,
            did,
            thumbprint: format!("tp-{did}"),
            created_date: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn fields(id: Option<&str>, name: Option<&str>, serial: Option<&str>) -> AssetFields {
        AssetFields {
            id: id.map(Into::into),
            name: name.map(Into::into),
            serial_number: serial.map(Into::into),
            ..AssetFields::default()
        }
    }

    #[test]
    fn registration_order_id_then_serial_then_create() {
        let mut st = State::default();
        // Create.
        let (a, how) = st
            .register(reg(&fields(None, Some("Pump"), Some("SN1")), "d1"))
            .unwrap();
        assert_eq!(how, Registration::Created);
        assert_eq!(a.id.len(), 18);
        assert!(a.id.starts_with("02i"));
        // Serial number links, and records the new device.
        let (b, how) = st
            .register(reg(&fields(None, Some("Other"), Some("SN1")), "d2"))
            .unwrap();
        assert_eq!(
            (how, b.id.as_str(), b.name.as_str()),
            (Registration::Linked, a.id.as_str(), "Pump")
        );
        assert_eq!(st.assets()[0].device_id, "d2");
        // Id wins over a serial number of another asset.
        let (c, _) = st
            .register(reg(&fields(None, Some("Fan"), Some("SN2")), "d3"))
            .unwrap();
        let (d, how) = st
            .register(reg(&fields(Some(&a.id), None, Some("SN2")), "d4"))
            .unwrap();
        assert_eq!((how, d.id.as_str()), (Registration::Linked, a.id.as_str()));
        assert_ne!(c.id, a.id);
        assert_eq!(st.assets().len(), 2);
    }

    #[test]
    fn unknown_id_and_nameless_create_are_refused() {
        let mut st = State::default();
        let err = st
            .register(reg(&fields(Some("02iNOPE"), Some("x"), None), "d"))
            .unwrap_err();
        assert_eq!(err, RegisterError::UnknownId("02iNOPE".into()));
        let err = st
            .register(reg(&fields(None, None, Some("SN")), "d"))
            .unwrap_err();
        assert_eq!(err, RegisterError::MissingName);
        assert!(st.assets().is_empty());
    }

    #[test]
    fn sessions_expire_and_refresh_tokens_revoke() {
        let mut st = State::default();
        let s = Session {
            user_id: USER_ID.into(),
            expires_at_ms: 1_000,
        };
        st.add_session("at".into(), s);
        assert!(matches!(st.session("at", 999), SessionCheck::Live(_)));
        assert!(matches!(st.session("at", 1_000), SessionCheck::Expired));
        assert!(matches!(st.session("nope", 0), SessionCheck::Unknown));
        assert_eq!(st.expire_sessions(0), 1);
        assert!(matches!(st.session("at", 0), SessionCheck::Expired));

        st.add_refresh_token("rt1".into(), "u".into());
        st.add_refresh_token("rt2".into(), "u".into());
        assert_eq!(st.refresh_token("rt1"), Some("u"));
        assert!(st.revoke_refresh_token("rt1"));
        assert!(!st.revoke_refresh_token("rt1"));
        assert_eq!(st.revoke_all_refresh_tokens(), 1);
        assert_eq!(st.refresh_token("rt2"), None);
    }

    #[test]
    fn jti_replay_is_refused_until_expiry() {
        let mut st = State::default();
        assert!(st.use_jti("j", 100, 0));
        assert!(!st.use_jti("j", 100, 50));
        assert!(st.use_jti("j", 200, 101));
    }
}
