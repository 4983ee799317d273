//! Token verification: JWT with HS256 (secret) or RS256/EdDSA (public key).
//! Runs before the WebSocket upgrade, so a bad token is an HTTP 401 and
//! never a half-open socket. Tokens are never logged. `mint_hs256` signs
//! development tokens (`roomcast token`) with the same claims.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::AuthConfig;

/// Who a connection is, as proven by its token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `sub` claim, or `anon-<process tag>-<n>` for anonymous development use.
    pub user: Arc<str>,
    /// The `tenant` claim; empty when the token has none.
    pub tenant: Arc<str>,
    pub roles: Vec<String>,
    /// Room patterns the user may join; `None` allows every room.
    pub rooms: Option<Vec<String>>,
}

impl Identity {
    pub fn anonymous(user: String) -> Self {
        Identity {
            user: user.into(),
            tenant: "".into(),
            roles: Vec::new(),
            rooms: None,
        }
    }

    /// Whether the token carries role `admin`.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// Whether the token allows joining `room`.
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p, room)),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[allow(dead_code)]
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("cannot load key: {0}")]
    Key(String),
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    /// Each key with the validation for its algorithm; a token is accepted
    /// when any of them verifies it.
    keys: Vec<(DecodingKey, Validation)>,
    allow_anonymous: bool,
}

impl Verifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.jwt_secret {
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        if let Some(path) = &cfg.jwt_public_key {
            let pem = std::fs::read(path)
                .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((key, validation(Algorithm::RS256)));
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                keys.push((key, validation(Algorithm::EdDSA)));
            } else {
                return Err(AuthError::Key(format!(
                    "{} is neither an RSA nor an Ed25519 public key in PEM",
                    path.display()
                )));
            }
        }
        Ok(Verifier {
            keys,
            allow_anonymous: cfg.allow_anonymous,
        })
    }

    /// Verifies a token. `Ok(None)` means anonymous use is allowed and no
    /// token was given; a token that is present must always be valid.
    pub fn verify(&self, token: Option<&str>) -> Result<Option<Identity>, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.allow_anonymous {
                Ok(None)
            } else {
                Err(AuthError::Missing)
            };
        };
        let mut last = AuthError::Invalid("no key configured".into());
        for (key, validation) in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return identity(data.claims).map(Some),
                Err(e) => last = AuthError::Invalid(e.kind_text()),
            }
        }
        Err(last)
    }
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for jsonwebtoken::errors::Error {
    /// The error kind only: the token itself never reaches a log line.
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp", "sub"]);
    v.leeway = 30;
    v.validate_aud = false;
    v
}

/// User ids starting with this are the server's own senders (`$admin`,
/// `$server`); no token may claim one.
pub const RESERVED_SENDER_PREFIX: char = '$';

fn identity(c: Claims) -> Result<Identity, AuthError> {
    if c.sub.is_empty() || c.sub.len() > 256 {
        return Err(AuthError::Invalid("sub must be 1 to 256 bytes".into()));
    }
    if c.sub.starts_with(RESERVED_SENDER_PREFIX) {
        // `$admin` and `$server` mark messages the server itself sends.
        return Err(AuthError::Invalid("sub must not start with '$'".into()));
    }
    let tenant = c.tenant.unwrap_or_default();
    if !tenant.is_empty() && !crate::session::valid_room_name(&tenant) {
        return Err(AuthError::Invalid(
            "tenant must follow the room name rules".into(),
        ));
    }
    Ok(Identity {
        user: c.sub.into(),
        tenant: tenant.into(),
        roles: c.roles,
        rooms: c.rooms,
    })
}

/// What a minted token grants: the claims `Verifier` reads, and its lifetime.
#[derive(Debug, Clone)]
pub struct Grant {
    pub sub: String,
    pub roles: Vec<String>,
    /// Room patterns; `None` allows every room.
    pub rooms: Option<Vec<String>>,
    /// `None` is the default tenant.
    pub tenant: Option<String>,
    pub ttl: Duration,
}

#[derive(Debug, Error)]
pub enum MintError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// The claims as written; optional ones are left out when empty, as a
/// token issuer would.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
}

/// Signs an HS256 token for `grant`, expiring `grant.ttl` after `now`.
/// The claims pass the checks `Verifier` applies, so a token that is
/// minted is one the server accepts until it expires.
pub fn mint_hs256(secret: &str, grant: &Grant, now: SystemTime) -> Result<String, MintError> {
    if secret.is_empty() {
        return Err(MintError::Invalid("the secret is empty".into()));
    }
    if grant.ttl.is_zero() {
        return Err(MintError::Invalid("ttl must be greater than 0".into()));
    }
    if let Some(bad) = grant
        .rooms
        .iter()
        .flatten()
        .find(|p| !valid_room_pattern(p))
    {
        return Err(MintError::Invalid(format!(
            "room pattern {bad:?} must be 1 to {} bytes of A-Z a-z 0-9 : _ - . and *",
            crate::session::MAX_ROOM_LEN
        )));
    }
    if grant.roles.iter().any(String::is_empty) {
        return Err(MintError::Invalid("roles must not be empty".into()));
    }
    // The verifier's own claim checks (sub, tenant), so the two cannot differ.
    identity(Claims {
        sub: grant.sub.clone(),
        exp: 0,
        roles: Vec::new(),
        rooms: None,
        tenant: grant.tenant.clone(),
    })
    .map_err(|e| match e {
        AuthError::Invalid(text) => MintError::Invalid(text),
        other => MintError::Invalid(other.to_string()),
    })?;
    let exp = now
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| since.checked_add(grant.ttl))
        .map(|at| at.as_secs())
        .ok_or_else(|| MintError::Invalid("ttl is too long".into()))?;
    let claims = MintedClaims {
        sub: &grant.sub,
        exp,
        roles: &grant.roles,
        rooms: grant.rooms.as_deref(),
        tenant: grant.tenant.as_deref().filter(|t| !t.is_empty()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| MintError::Sign(e.kind_text()))
}

/// A room name in which `*` may stand for any run of characters.
fn valid_room_pattern(pattern: &str) -> bool {
    let literal = pattern.replace('*', "a");
    crate::session::valid_room_name(&literal)
}

/// Matches `text` against `pattern`, where `*` stands for any run of
/// characters (including none) and everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;

    fn verifier(secret: &str) -> Verifier {
        Verifier::from_config(&AuthConfig {
            jwt_secret: Some(secret.into()),
            jwt_public_key: None,
            allow_anonymous: false,
            allowed_origins: Vec::new(),
        })
        .expect("verifier")
    }

    fn raw_claims(token: &str) -> serde_json::Value {
        jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_secret(b"s3cret"),
            &validation(Algorithm::HS256),
        )
        .expect("decode")
        .claims
    }

    fn grant(sub: &str) -> Grant {
        Grant {
            sub: sub.into(),
            roles: Vec::new(),
            rooms: None,
            tenant: None,
            ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_minted_token_verifies_with_every_claim() {
        let g = Grant {
            roles: vec!["admin".into(), "gm".into()],
            rooms: Some(vec!["encounter:42".into(), "campaign:7:*".into()]),
            tenant: Some("acme".into()),
            ttl: Duration::from_secs(90),
            ..grant("bob")
        };
        let now = SystemTime::now();
        let token = mint_hs256("s3cret", &g, now).expect("mint");
        let id = verifier("s3cret")
            .verify(Some(&token))
            .expect("valid")
            .expect("not anonymous");
        assert_eq!(&*id.user, "bob");
        assert_eq!(&*id.tenant, "acme");
        assert_eq!(id.roles, ["admin", "gm"]);
        assert_eq!(
            id.rooms.as_deref(),
            Some(&["encounter:42".to_owned(), "campaign:7:*".to_owned()][..])
        );
        assert!(id.may_join("campaign:7:map") && !id.may_join("lobby"));
        // `exp` is the ttl after `now` (Identity does not carry it).
        let since = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
        assert_eq!(raw_claims(&token)["exp"], since + 90);
        // Another secret does not verify it.
        assert!(verifier("other").verify(Some(&token)).is_err());
    }

    #[test]
    fn reserved_senders_cannot_be_claimed() {
        // Neither minted nor verified: a user must not pose as the server.
        assert!(mint_hs256("s3cret", &grant("$admin"), SystemTime::now()).is_err());
        let claims = serde_json::json!({"sub": "$server", "exp": u64::MAX / 2});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode");
        assert!(verifier("s3cret").verify(Some(&token)).is_err());
        // `$` inside a user id is fine.
        assert!(mint_hs256("s3cret", &grant("bob$1"), SystemTime::now()).is_ok());
    }

    #[test]
    fn a_minimal_token_leaves_optional_claims_out() {
        let token = mint_hs256("s3cret", &grant("alice"), SystemTime::now()).expect("mint");
        let id = verifier("s3cret")
            .verify(Some(&token))
            .expect("valid")
            .expect("not anonymous");
        assert_eq!(&*id.user, "alice");
        assert_eq!(&*id.tenant, "");
        assert!(id.roles.is_empty());
        assert!(id.rooms.is_none() && id.may_join("anything"));
        let raw = raw_claims(&token);
        let mut keys: Vec<&str> = raw
            .as_object()
            .expect("claims object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["exp", "sub"]);
    }

    #[test]
    fn minting_refuses_what_the_verifier_would() {
        let now = SystemTime::now();
        let refused = |g: Grant| match mint_hs256("s3cret", &g, now) {
            Err(MintError::Invalid(text)) => text,
            other => panic!("{g:?}: {other:?}"),
        };
        assert!(refused(grant("")).contains("sub"));
        assert!(refused(grant(&"x".repeat(257))).contains("sub"));
        let bad_tenant = Grant {
            tenant: Some("a b".into()),
            ..grant("bob")
        };
        assert!(refused(bad_tenant).contains("tenant"));
        let bad_room = Grant {
            rooms: Some(vec!["lobby".into(), "no space".into()]),
            ..grant("bob")
        };
        assert!(refused(bad_room).contains("\"no space\""));
        let empty_role = Grant {
            roles: vec![String::new()],
            ..grant("bob")
        };
        assert!(refused(empty_role).contains("roles"));
        let no_ttl = Grant {
            ttl: Duration::ZERO,
            ..grant("bob")
        };
        assert!(refused(no_ttl).contains("ttl"));
        let forever = Grant {
            ttl: Duration::MAX,
            ..grant("bob")
        };
        assert!(refused(forever).contains("ttl"));
        assert!(matches!(
            mint_hs256("", &grant("bob"), now),
            Err(MintError::Invalid(_))
        ));
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("encounter:42", "encounter:42"));
        assert!(!glob_match("encounter:42", "encounter:421"));
        assert!(glob_match("campaign:7:*", "campaign:7:map"));
        assert!(glob_match("campaign:7:*", "campaign:7:"));
        assert!(!glob_match("campaign:7:*", "campaign:8:map"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }
}
