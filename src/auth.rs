//! Token verification: JWT with HS256 (secret) or RS256/EdDSA (public key).
//! Runs before the WebSocket upgrade, so a bad token is an HTTP 401 and
//! never a half-open socket. Tokens are never logged.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
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

fn identity(c: Claims) -> Result<Identity, AuthError> {
    if c.sub.is_empty() || c.sub.len() > 256 {
        return Err(AuthError::Invalid("sub must be 1 to 256 bytes".into()));
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
