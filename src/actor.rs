//! The actor token (spec §3): a JWT the device signs to describe itself and its Asset.
//!
//! Salesforce registers a new Asset or links an existing one from these claims, and binds
//! the device's public key (`cnf.jwk`, RFC 7800) to the asset token it issues.

use crate::keys::Signer;
use wire::Secret;
use wire::jose::{jws, new_jti};
use wire::oauth::{ActorClaims, AssetFields, Confirmation};

/// How long an actor token is valid: long enough for one exchange on a slow link, short
/// enough that a captured one is useless soon after.
pub const LIFETIME_SECS: i64 = 300;

/// What the actor token says about the device, from `[asset]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `did`: the device id (becomes `AssetTokenEvent.DeviceId`).
    pub device_id: String,
    /// `Name`: the asset token's display name.
    pub token_name: String,
    /// `Asset`: only the configured fields.
    pub asset: AssetFields,
}

impl Identity {
    /// The identity an `[asset]` table (or a gateway child's) describes.
    pub fn of(asset: &crate::config::Asset) -> Self {
        Self {
            device_id: asset.device_id.clone(),
            token_name: asset.token_name.clone(),
            asset: AssetFields {
                id: asset.id.clone(),
                name: Some(asset.name.clone()),
                serial_number: Some(asset.serial_number.clone()),
                account_id: asset.account_id.clone(),
                contact_id: asset.contact_id.clone(),
            },
        }
    }
}

/// A minted actor token: the compact JWS and the claims in it.
#[derive(Debug)]
pub struct Minted {
    pub jwt: Secret,
    pub claims: ActorClaims,
}

/// Mints an actor token at `now` (Unix seconds, already skew-corrected by the caller).
///
/// # Errors
/// When randomness or signing fails.
pub fn mint(signer: &dyn Signer, identity: &Identity, now: i64) -> Result<Minted, jws::Error> {
    let claims = ActorClaims {
        did: identity.device_id.clone(),
        name: identity.token_name.clone(),
        asset: identity.asset.clone(),
        cnf: Confirmation {
            jwk: signer.public_jwk().clone(),
        },
        iat: now,
        exp: now + LIFETIME_SECS,
        jti: new_jti(),
    };
    let jwt = jws::sign(signer, &claims)?;
    Ok(Minted {
        jwt: Secret::new(jwt),
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::FileKey;
    use serde_json::Value;

    fn key() -> FileKey {
        FileKey::from_pem(
            std::path::Path::new("test"),
            include_bytes!("../tests/data/device-key.pem"),
        )
        .unwrap()
    }

    fn identity() -> Identity {
        Identity {
            device_id: "a531798d".into(),
            token_name: "Asset Token: a531798d".into(),
            asset: AssetFields {
                name: Some("Pump 7".into()),
                serial_number: Some("00123".into()),
                account_id: Some("0011i000006kiTc".into()),
                ..AssetFields::default()
            },
        }
    }

    #[test]
    fn actor_token_matches_spec_and_verifies_with_its_own_cnf_jwk() {
        let key = key();
        let minted = mint(&key, &identity(), 1_700_000_000).unwrap();
        let parts: jws::Parts<Value, Value> = jws::decode_unverified(minted.jwt.expose()).unwrap();
        // Header: alg RS256, typ JWT, kid = RFC 7638 thumbprint = cnf.jwk.kid.
        assert_eq!(parts.header["alg"], "RS256");
        assert_eq!(parts.header["typ"], "JWT");
        let kid = key.public_jwk().thumbprint();
        assert_eq!(parts.header["kid"], kid.as_str());
        let c = &parts.claims;
        assert_eq!(c["did"], "a531798d");
        assert_eq!(c["Name"], "Asset Token: a531798d");
        assert_eq!(
            c["Asset"],
            serde_json::json!({"Name":"Pump 7","SerialNumber":"00123","AccountId":"0011i000006kiTc"})
        );
        assert_eq!(c["cnf"]["jwk"]["kid"], kid.as_str());
        assert_eq!(c["cnf"]["jwk"]["kty"], "RSA");
        assert_eq!(
            c["cnf"]["jwk"].as_object().unwrap().len(),
            4,
            "cnf.jwk carries exactly kty, kid, n, e"
        );
        assert_eq!(c["iat"], 1_700_000_000);
        assert_eq!(c["exp"], 1_700_000_000 + 300);
        assert_eq!(c["jti"].as_str().unwrap().len(), 22);
        // Verify with ring against the key carried in the token itself.
        let jwk: wire::jose::RsaPublicJwk =
            serde_json::from_value(c["cnf"]["jwk"].clone()).unwrap();
        assert!(jwk.verify_rs256(parts.signing_input.as_bytes(), &parts.signature));
        let mut tampered = parts.signing_input.clone();
        tampered.push('x');
        assert!(!jwk.verify_rs256(tampered.as_bytes(), &parts.signature));
    }

    #[test]
    fn jti_is_unique() {
        assert_ne!(new_jti(), new_jti());
    }
}
