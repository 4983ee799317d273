//! Who may call the server API: `Authorization: Bearer <credential>`, where
//! the credential is one of the configured API keys (compared in constant
//! time, every key every time) or a JWT carrying the role `server`. A JWT
//! with a `tenant` claim acts only inside that tenant; an API key, or a
//! server JWT without a tenant, may name any tenant in the request.
//! Credentials are never logged.

use std::sync::Arc;

use http::{HeaderMap, header};

use super::error::ApiError;
use crate::node::Node;
use crate::session::valid_room_name;

/// The role a JWT needs for the server API.
pub const SERVER_ROLE: &str = "server";

/// Where a caller may act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any tenant, named in the request (the default tenant when not).
    Any,
    /// Only this tenant ("" is the default tenant).
    Tenant(Arc<str>),
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub scope: Scope,
}

impl Caller {
    /// The tenant a request acts in: the one it names, if the caller may.
    pub fn tenant(&self, named: Option<&str>) -> Result<Arc<str>, ApiError> {
        if let Some(t) = named
            && !t.is_empty()
            && !valid_room_name(t)
        {
            return Err(ApiError::bad(
                "invalid_tenant",
                "tenant names follow the room name rules",
            ));
        }
        match (&self.scope, named) {
            (Scope::Any, named) => Ok(named.unwrap_or("").into()),
            (Scope::Tenant(own), None) => Ok(own.clone()),
            (Scope::Tenant(own), Some(t)) if **own == *t => Ok(own.clone()),
            (Scope::Tenant(_), Some(_)) => Err(ApiError::forbidden(
                "tenant_forbidden",
                "this token acts only inside its own tenant",
            )),
        }
    }

    /// The scope as part of an idempotency record's name: callers of
    /// different tenants never share keys.
    pub fn key_scope(&self) -> String {
        match &self.scope {
            Scope::Any => "*".to_owned(),
            Scope::Tenant(t) => format!("t={t}"),
        }
    }
}

/// Checks the request's credential.
pub fn authenticate(node: &Node, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer credential"))?;
    let credential = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <credential>"))?;
    if key_matches(&node.config.api.keys.0, credential.as_bytes()) {
        return Ok(Caller { scope: Scope::Any });
    }
    let identity = match node.verifier.verify(Some(credential)) {
        Ok(Some(identity)) => identity,
        Ok(None) | Err(_) => {
            return Err(ApiError::unauthorized(
                "unknown API key, or an invalid or expired token",
            ));
        }
    };
    if !identity.roles.iter().any(|r| r == SERVER_ROLE) {
        return Err(ApiError::forbidden(
            "forbidden",
            "the server API needs an API key or a token with the role `server`",
        ));
    }
    let scope = if identity.tenant.is_empty() {
        Scope::Any
    } else {
        Scope::Tenant(identity.tenant)
    };
    Ok(Caller { scope })
}

/// Whether `given` equals one of `keys`. Every key is compared, each over
/// the whole of the longer of the two, so the time taken does not depend on
/// where (or whether) a key matched.
pub fn key_matches(keys: &[String], given: &[u8]) -> bool {
    keys.iter()
        .fold(false, |found, key| found | ct_eq(key.as_bytes(), given))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let keys = vec![
            "k1-0123456789abcdef".to_owned(),
            "k2-0123456789abcdef".to_owned(),
        ];
        assert!(key_matches(&keys, b"k1-0123456789abcdef"));
        assert!(key_matches(&keys, b"k2-0123456789abcdef"));
        assert!(!key_matches(&keys, b"k2-0123456789abcde"));
        assert!(!key_matches(&keys, b"k2-0123456789abcdef0"));
        assert!(!key_matches(&keys, b""));
        assert!(!key_matches(&[], b"k1-0123456789abcdef"));
    }

    #[test]
    fn tenant_scoped_callers_stay_in_their_tenant() {
        let any = Caller { scope: Scope::Any };
        assert_eq!(&*any.tenant(None).expect("default"), "");
        assert_eq!(&*any.tenant(Some("t1")).expect("named"), "t1");
        assert_eq!(
            any.tenant(Some("a/b")).map_err(|e| e.code),
            Err("invalid_tenant")
        );
        let t1 = Caller {
            scope: Scope::Tenant("t1".into()),
        };
        assert_eq!(&*t1.tenant(None).expect("own"), "t1");
        assert_eq!(&*t1.tenant(Some("t1")).expect("own"), "t1");
        assert_eq!(
            t1.tenant(Some("t2")).map_err(|e| e.code),
            Err("tenant_forbidden")
        );
        assert_eq!(
            t1.tenant(Some("")).map_err(|e| e.code),
            Err("tenant_forbidden")
        );
    }
}
