//! Who is calling, and what they may see: bearer tokens of people and teams, checked against the
//! SHA-256 digests the coordinator's config file holds (never the tokens themselves).
//!
//! Rules:
//! - a farm whose config declares no token is open: every caller is an admin of [`DEFAULT_TEAM`]
//!   (loopback development; the binary warns);
//! - otherwise every API call except the workers' own carries `authorization: Bearer TOKEN`; a
//!   missing or unknown token is refused as unauthenticated;
//! - a caller sees, watches, cancels and reads the logs of its own team's builds only; an admin
//!   sees every team's and may drain any worker;
//! - the tokens can be replaced while the coordinator runs (SIGHUP reloads the config file), so a
//!   token is revoked by deleting its entry.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::scheduler::DEFAULT_TEAM;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (a person or a team), recorded as a build's `submitted_by`.
    pub name: String,
    /// The team its builds belong to.
    pub team: String,
    /// Sees every team's builds and manages workers.
    pub admin: bool,
}

impl Caller {
    /// The caller of an open farm (no tokens configured).
    pub fn anonymous() -> Self {
        Self {
            name: String::new(),
            team: DEFAULT_TEAM.to_owned(),
            admin: true,
        }
    }

    /// Whether this caller may see builds of `team`.
    pub fn sees(&self, team: &str) -> bool {
        self.admin || self.team == team
    }
}

/// A token entry of the config file: who it is, and the hex SHA-256 of the token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Name of the person or team holding it.
    pub name: String,
    /// Team its builds belong to; admins may leave it out.
    #[serde(default)]
    pub team: Option<String>,
    /// Sees all teams and manages workers.
    #[serde(default)]
    pub admin: bool,
    /// Hex SHA-256 of the token, as `manifold-coordinator issue-token` prints it.
    pub sha256: String,
}

/// Why a request is refused before it reaches the farm.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    /// No `authorization` header.
    #[error(
        "this farm requires a token and the request carried none: pass --token, set MANIFOLD_TOKEN, or put token = \"...\" in ~/.config/manifold/config.toml"
    )]
    Missing,
    /// Not `Bearer TOKEN`.
    #[error("the authorization header is not `Bearer TOKEN`")]
    Malformed,
    /// Not a token of this farm (the token is never echoed).
    #[error(
        "the token is not valid for this farm (unknown or revoked); ask an admin for one (`manifold-coordinator issue-token`)"
    )]
    Unknown,
}

/// The tokens a coordinator accepts. Clones share them: [`Access::replace_with`] on one changes
/// what every clone accepts.
#[derive(Clone, Debug, Default)]
pub struct Access {
    by_digest: Arc<RwLock<HashMap<String, Caller>>>,
}

impl Access {
    /// Accepts every caller as [`Caller::anonymous`].
    pub fn open() -> Self {
        Self::default()
    }

    /// Accepts the tokens whose digests `entries` hold. Checked by the config loader: digests are
    /// 64 hex digits, names unique, non-admin tokens name a declared team.
    pub fn new(entries: &[TokenEntry]) -> Self {
        let by_digest = entries
            .iter()
            .map(|e| {
                (
                    e.sha256.to_ascii_lowercase(),
                    Caller {
                        name: e.name.clone(),
                        team: e.team.clone().unwrap_or_else(|| DEFAULT_TEAM.to_owned()),
                        admin: e.admin,
                    },
                )
            })
            .collect();
        Self {
            by_digest: Arc::new(RwLock::new(by_digest)),
        }
    }

    /// Accepts `other`'s tokens from now on, in this handle and all its clones (a config reload).
    pub fn replace_with(&self, other: &Access) {
        let tokens = other.tokens().clone();
        *self.by_digest.write().expect("token table lock poisoned") = tokens;
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Caller>> {
        self.by_digest.read().expect("token table lock poisoned")
    }

    /// Whether every caller is accepted (no token configured).
    pub fn is_open(&self) -> bool {
        self.tokens().is_empty()
    }

    /// The caller presenting this `authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AccessError> {
        if self.is_open() {
            return Ok(Caller::anonymous());
        }
        let header = authorization.ok_or(AccessError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AccessError::Malformed)?;
        self.tokens()
            .get(&token_digest(token))
            .cloned()
            .ok_or(AccessError::Unknown)
    }
}

/// The hex SHA-256 of a token: what the config file stores.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `mft_` and 43 characters of base64url (256 bits from the OS's generator).
pub fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the OS random generator is available");
    format!(
        "mft_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> (Access, String, String) {
        let (alice, root) = (new_token(), new_token());
        let access = Access::new(&[
            TokenEntry {
                name: "alice".into(),
                team: Some("mobile".into()),
                admin: false,
                sha256: token_digest(&alice),
            },
            TokenEntry {
                name: "root".into(),
                team: None,
                admin: true,
                sha256: token_digest(&root).to_uppercase(),
            },
        ]);
        (access, alice, root)
    }

    #[test]
    fn a_known_token_names_its_holder_and_team() {
        let (access, alice, root) = access();
        let caller = access
            .authenticate(Some(&format!("Bearer {alice}")))
            .unwrap();
        assert_eq!(caller.name, "alice");
        assert_eq!(caller.team, "mobile");
        assert!(!caller.admin);
        assert!(caller.sees("mobile") && !caller.sees("platform"));
        let admin = access
            .authenticate(Some(&format!("Bearer {root}")))
            .unwrap();
        assert!(admin.admin && admin.sees("platform"));
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_refused_without_echoing_them() {
        let (access, alice, _) = access();
        assert_eq!(access.authenticate(None), Err(AccessError::Missing));
        assert_eq!(
            access.authenticate(Some(&alice)),
            Err(AccessError::Malformed)
        );
        let wrong = format!("{alice}x");
        let err = access
            .authenticate(Some(&format!("Bearer {wrong}")))
            .unwrap_err();
        assert_eq!(err, AccessError::Unknown);
        assert!(!err.to_string().contains(&wrong));
    }

    #[test]
    fn a_reload_revokes_and_adds_tokens_for_every_clone() {
        let (access, alice, root) = access();
        let api_side = access.clone();
        let carol = new_token();
        access.replace_with(&Access::new(&[TokenEntry {
            name: "carol".into(),
            team: Some("mobile".into()),
            admin: false,
            sha256: token_digest(&carol),
        }]));
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(
            api_side.authenticate(Some(&bearer(&alice))),
            Err(AccessError::Unknown)
        );
        assert_eq!(
            api_side.authenticate(Some(&bearer(&root))),
            Err(AccessError::Unknown)
        );
        assert_eq!(
            api_side.authenticate(Some(&bearer(&carol))).unwrap().name,
            "carol"
        );
    }

    #[test]
    fn an_open_farm_takes_everyone_as_admin() {
        let access = Access::open();
        assert!(access.is_open());
        assert_eq!(access.authenticate(None), Ok(Caller::anonymous()));
    }

    #[test]
    fn new_tokens_are_distinct_and_digests_are_sha256_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43);
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
