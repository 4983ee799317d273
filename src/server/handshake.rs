//! The WebSocket opening handshake as a pure check of the request (RFC
//! 6455 §4.2.1): HTTP version, upgrade headers, WebSocket version, codec
//! and options. No I/O and no server state: auth, origin and the limits
//! are the admission steps that follow in [`super`].

use http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::protocol::Codec;

/// The one WebSocket version this server speaks; named in the answer to
/// any other (RFC 6455 §4.4).
pub const WEBSOCKET_VERSION: &str = "13";

/// What a valid upgrade request asked for.
#[derive(Debug)]
pub struct Handshake<'a> {
    /// The `Sec-WebSocket-Accept` value of the `101` answer.
    pub accept: HeaderValue,
    /// The codec named in `Sec-WebSocket-Protocol`, echoed in the answer;
    /// `None` when none was known (the connection is then JSON and no
    /// subprotocol is echoed).
    pub requested: Option<Codec>,
    /// Whether the client accepts `batch` frames (`?batch=1`).
    pub batch: bool,
    /// The token from `Authorization: Bearer`, else from `?token=`.
    pub token: Option<&'a str>,
}

impl Handshake<'_> {
    /// The connection's codec.
    pub fn codec(&self) -> Codec {
        self.requested.unwrap_or(Codec::Json)
    }
}

/// Why a request is not a WebSocket upgrade this server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Below HTTP/1.1, which the upgrade needs (RFC 6455 §4.1): refused
    /// before a `101` that the connection could not carry.
    OldHttp,
    /// No `Upgrade: websocket`, `Connection: upgrade` or key.
    NotWebSocket,
    /// A `Sec-WebSocket-Version` other than 13, or none.
    Version,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::OldHttp | Refusal::NotWebSocket => StatusCode::BAD_REQUEST,
            Refusal::Version => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// The `reason` label of `roomcast_upgrades_rejected_total`.
    pub fn reason(self) -> &'static str {
        "not_websocket"
    }

    /// The answer's body.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::OldHttp => "a WebSocket upgrade needs HTTP/1.1",
            Refusal::NotWebSocket => "expected a WebSocket upgrade",
            Refusal::Version => "unsupported WebSocket version; this server speaks 13",
        }
    }

    /// Headers the answer must carry: a 426 names the protocol and the
    /// version to use (RFC 9110 §15.5.22, RFC 6455 §4.4).
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Version => &[
                ("sec-websocket-version", WEBSOCKET_VERSION),
                ("upgrade", "websocket"),
            ],
            Refusal::OldHttp | Refusal::NotWebSocket => &[],
        }
    }
}

/// Checks an upgrade request's version, headers and query.
pub fn check<'a>(
    version: Version,
    headers: &'a HeaderMap,
    query: &'a str,
) -> Result<Handshake<'a>, Refusal> {
    if version < Version::HTTP_11 {
        return Err(Refusal::OldHttp);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| header_has(headers, header::UPGRADE, "websocket"))
        .filter(|_| header_has(headers, header::CONNECTION, "upgrade"))
        .filter(|k| is_websocket_key(k.as_bytes()))
        .ok_or(Refusal::NotWebSocket)?;
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != WEBSOCKET_VERSION)
    {
        return Err(Refusal::Version);
    }
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| Refusal::NotWebSocket)?;
    let requested = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Codec::from_subprotocols);
    let query = parse_query(query);
    Ok(Handshake {
        accept,
        requested,
        batch: query.batch,
        token: bearer(headers).or(query.token),
    })
}

/// Query parameters of the upgrade request. Parsed by hand because they are
/// few and a token must never be echoed in an error.
struct UpgradeQuery<'a> {
    token: Option<&'a str>,
    batch: bool,
}

fn parse_query(query: &str) -> UpgradeQuery<'_> {
    let mut q = UpgradeQuery {
        token: None,
        batch: false,
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "token" => q.token = Some(v),
            "batch" => q.batch = matches!(v, "1" | "true" | ""),
            _ => {}
        }
    }
    q
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether a comma-separated header lists `token` (case-insensitive).
pub fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether a `Sec-WebSocket-Key` is 16 bytes in base64 (RFC 6455 4.1):
/// 22 base64 digits and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    let digit = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24 && key[..22].iter().all(digit) && &key[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request of RFC 6455 §1.3, with the given extra headers.
    fn request(extra: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn accepts_the_rfc_example_and_derives_its_accept_key() {
        let h = request(&[]);
        let hs = check(Version::HTTP_11, &h, "").expect("valid");
        assert_eq!(hs.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(hs.requested, None);
        assert_eq!(hs.codec(), Codec::Json);
        assert!(!hs.batch);
        assert_eq!(hs.token, None);
    }

    #[test]
    fn refuses_http_below_1_1_before_looking_further() {
        let h = request(&[]);
        for v in [Version::HTTP_10, Version::HTTP_09] {
            let refusal = check(v, &h, "").expect_err("old HTTP");
            assert_eq!(refusal, Refusal::OldHttp);
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
        }
        assert_eq!(
            check(Version::HTTP_10, &HeaderMap::new(), "").err(),
            Some(Refusal::OldHttp)
        );
    }

    #[test]
    fn other_websocket_versions_get_426_naming_13() {
        for v in ["8", "14", "13, 8", ""] {
            let h = request(&[("sec-websocket-version", v)]);
            let refusal = check(Version::HTTP_11, &h, "").expect_err(v);
            assert_eq!(refusal, Refusal::Version, "{v:?}");
            assert_eq!(refusal.status(), StatusCode::UPGRADE_REQUIRED);
            assert!(refusal.headers().contains(&("sec-websocket-version", "13")));
        }
        let mut h = request(&[]);
        h.remove(header::SEC_WEBSOCKET_VERSION);
        assert_eq!(
            check(Version::HTTP_11, &h, "").err(),
            Some(Refusal::Version)
        );
    }

    #[test]
    fn missing_upgrade_headers_are_not_a_websocket_request() {
        for name in [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_KEY,
        ] {
            let mut h = request(&[]);
            h.remove(&name);
            let refusal = check(Version::HTTP_11, &h, "").expect_err(name.as_str());
            assert_eq!(refusal, Refusal::NotWebSocket);
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
            assert!(refusal.headers().is_empty());
        }
        for key in [
            "",
            "c2hvcnQ=",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ!=",
            "dGhlIHNhbXBsZSBub25jZQ==x",
        ] {
            let h = request(&[("sec-websocket-key", key)]);
            assert_eq!(
                check(Version::HTTP_11, &h, "").err(),
                Some(Refusal::NotWebSocket),
                "{key:?}"
            );
        }
        let h = request(&[("upgrade", "h2c")]);
        assert_eq!(
            check(Version::HTTP_11, &h, "").err(),
            Some(Refusal::NotWebSocket)
        );
    }

    #[test]
    fn picks_the_first_known_codec_and_reads_the_options() {
        let h = request(&[
            (
                "sec-websocket-protocol",
                "x.v9, roomcast.v1.msgpack, roomcast.v1.json",
            ),
            ("authorization", "Bearer  abc "),
        ]);
        let hs = check(Version::HTTP_11, &h, "token=zzz&batch").expect("valid");
        assert_eq!(hs.requested, Some(Codec::MsgPack));
        assert!(hs.batch);
        // The header wins over the query.
        assert_eq!(hs.token, Some("abc"));

        let h = request(&[("sec-websocket-protocol", "x.v9")]);
        let hs = check(Version::HTTP_11, &h, "batch=0&token=q").expect("valid");
        assert_eq!(hs.requested, None);
        assert_eq!(hs.codec(), Codec::Json);
        assert!(!hs.batch);
        assert_eq!(hs.token, Some("q"));
    }
}
