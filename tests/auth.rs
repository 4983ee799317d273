//! Authentication and origin checks happen before the upgrade: a refused
//! client gets a plain HTTP status, never a half-open socket.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ErrorCode, ServerEvent};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn signed(alg: Algorithm, key: EncodingKey, sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": now_s() + 600});
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("sign")
}

#[tokio::test]
async fn bad_expired_or_missing_tokens_get_401() {
    let server = Server::start(&[]).await;
    let status =
        |url: String| async move { upgrade_status(url.into_client_request().expect("req")).await };
    assert_eq!(status(server.url("")).await, Some(401));
    assert_eq!(status(server.url("?token=not.a.jwt")).await, Some(401));
    let wrong_key = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "eve", "exp": now_s() + 600}),
        &EncodingKey::from_secret(b"some other secret"),
    )
    .expect("sign");
    assert_eq!(
        status(server.url(&format!("?token={wrong_key}"))).await,
        Some(401)
    );
    let expired = token_with(json!({"sub": "old", "exp": now_s() - 3600}));
    assert_eq!(
        status(server.url(&format!("?token={expired}"))).await,
        Some(401)
    );
    let no_sub = token_with(json!({"name": "nobody"}));
    assert_eq!(
        status(server.url(&format!("?token={no_sub}"))).await,
        Some(401)
    );
    // The same server accepts a good token in the header as well as the query.
    let mut req = server.url("").into_client_request().expect("req");
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", token("alice"))).expect("header"),
    );
    let c = Client::connect_request(req, Codec::Json)
        .await
        .expect("bearer");
    assert!(matches!(c.welcome, Some(ServerEvent::Welcome { ref user, .. }) if user == "alice"));
    // A refused token is counted, never logged or labelled.
    let (_, text) = http_get(&server.http("/metrics")).await;
    assert!(
        metric(&text, "roomcast_upgrades_rejected_total") >= 5.0,
        "{text}"
    );
    assert!(!text.contains(&wrong_key));
}

#[tokio::test]
async fn rs256_and_eddsa_public_keys() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa_private.pem", "rsa_public.pem"),
        (
            Algorithm::EdDSA,
            "ed25519_private.pem",
            "ed25519_public.pem",
        ),
    ] {
        let public = key_path(public);
        let server = Server::start(&["--jwt-public-key", &public]).await;
        let pem = std::fs::read(key_path(private)).expect("key");
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("private key");
        let tok = signed(alg, key, "keyed");
        let c = Client::connect(&server.url(&format!("?token={tok}")), Codec::Json)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert!(
            matches!(c.welcome, Some(ServerEvent::Welcome { ref user, .. }) if user == "keyed")
        );
        // HS256 tokens still work beside the public key.
        server.connect("hs").await;
    }
}

#[tokio::test]
async fn anonymous_only_with_the_dev_flag() {
    let server = Server::start(&["--allow-anonymous"]).await;
    let c = Client::connect(&server.url(""), Codec::Json)
        .await
        .expect("anon");
    let user_of = |c: &Client| match &c.welcome {
        Some(ServerEvent::Welcome { user, conn, .. }) => (user.to_string(), conn.to_string()),
        other => panic!("{other:?}"),
    };
    // The name has the documented form (proto/schema.json), and its `n` is
    // the connection's number on its instance, the tail of `conn`.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/schema.json"))
            .expect("schema"),
    )
    .expect("schema is JSON");
    let pattern = schema["$defs"]["AnonymousUserId"]["pattern"]
        .as_str()
        .expect("schema defines AnonymousUserId");
    let pattern = regex_lite::Regex::new(pattern).expect("a valid pattern");
    let second = Client::connect(&server.url(""), Codec::MsgPack)
        .await
        .expect("anon");
    let mut tags = Vec::new();
    for c in [&c, &second] {
        let (user, conn) = user_of(c);
        assert!(pattern.is_match(&user), "{user} does not match {pattern}");
        let (tag, n) = user["anon-".len()..]
            .rsplit_once('-')
            .expect("anon-<tag>-<n>");
        assert_eq!(
            conn.rsplit_once(':').map(|(_, n)| n),
            Some(n),
            "{user} on {conn}"
        );
        tags.push(tag.to_owned());
    }
    assert_eq!(tags[0], tags[1], "one process tag per instance");
    assert_ne!(user_of(&c).0, user_of(&second).0, "one name per connection");
    // A token that is present must still be valid.
    let req = server
        .url("?token=garbage")
        .into_client_request()
        .expect("req");
    assert_eq!(upgrade_status(req).await, Some(401));
}

#[tokio::test]
async fn room_patterns_in_the_token_limit_joins() {
    let server = Server::start(&[]).await;
    let tok = token_with(json!({"sub": "player", "rooms": ["encounter:42", "campaign:7:*"]}));
    let mut c = Client::connect(&server.url(&format!("?token={tok}")), Codec::Json)
        .await
        .expect("connect");
    c.join("encounter:42").await;
    c.join("campaign:7:map").await;
    for room in ["encounter:43", "campaign:8:map", "lobby"] {
        let ev = c.request(ClientFrame::new("join").room(room)).await;
        assert!(
            matches!(
                ev,
                ServerEvent::Error {
                    code: ErrorCode::Forbidden,
                    ..
                }
            ),
            "{room}: {ev:?}"
        );
    }
}

#[tokio::test]
async fn origin_allow_list() {
    let server = Server::start(&[
        "--allowed-origins",
        "https://game.example,https://tracker.example",
    ])
    .await;
    let with_origin = |origin: Option<&'static str>| {
        let mut req = server
            .url(&format!("?token={}", token("u")))
            .into_client_request()
            .expect("req");
        if let Some(o) = origin {
            req.headers_mut()
                .insert("Origin", HeaderValue::from_static(o));
        }
        req
    };
    assert_eq!(
        upgrade_status(with_origin(Some("https://evil.example"))).await,
        Some(403)
    );
    assert_eq!(
        upgrade_status(with_origin(Some("https://game.example"))).await,
        None
    );
    assert_eq!(
        upgrade_status(with_origin(Some("https://tracker.example"))).await,
        None
    );
    // Non-browser clients send no Origin.
    assert_eq!(upgrade_status(with_origin(None)).await, None);
}

/// Runs `roomcast token` with `args` and `envs` (and no secret or config
/// file from this test's own environment): exit code, stdout, stderr.
fn token_cmd(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.arg("token")
        .args(args)
        .env_remove("ROOMCAST_JWT_SECRET")
        .env_remove("ROOMCAST_CONFIG")
        // A backtrace would show here if an error path panicked or printed one.
        .env("RUST_BACKTRACE", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run roomcast token");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).expect("utf8"),
        String::from_utf8(out.stderr).expect("utf8"),
    )
}

#[tokio::test]
async fn token_subcommand_mints_tokens_the_server_accepts() {
    let server = Server::start(&[]).await;
    let (code, out, err) = token_cmd(
        &[
            "--sub",
            "bob",
            "--roles",
            "admin,gm",
            "--rooms",
            "encounter:42,campaign:7:*",
            "--tenant",
            "acme",
            "--ttl",
            "1h",
        ],
        &[("ROOMCAST_JWT_SECRET", SECRET)],
    );
    assert_eq!(code, 0, "{err}");
    // Only the token, on one line.
    let tok = out.strip_suffix('\n').expect("one line");
    assert!(
        !tok.contains(char::is_whitespace) && tok.split('.').count() == 3,
        "{out:?}"
    );
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        tok,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(Algorithm::HS256),
    )
    .expect("an HS256 JWT signed with the secret")
    .claims;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["roles"], json!(["admin", "gm"]));
    assert_eq!(claims["rooms"], json!(["encounter:42", "campaign:7:*"]));
    assert_eq!(claims["tenant"], "acme");
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(exp.abs_diff(now_s() + 3600) <= 5, "exp {exp}");

    let mut c = Client::connect(&server.url(&format!("?token={tok}")), Codec::Json)
        .await
        .expect("the minted token is accepted");
    assert!(matches!(c.welcome, Some(ServerEvent::Welcome { ref user, .. }) if user == "bob"));
    c.join("campaign:7:map").await;
    let ev = c.request(ClientFrame::new("join").room("lobby")).await;
    assert!(
        matches!(
            ev,
            ServerEvent::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{ev:?}"
    );
    // The tenant scopes rooms: bob of acme and a default-tenant user in
    // `campaign:7:map` do not see each other.
    let mut other = server.connect("carol").await;
    other.join("campaign:7:map").await;
    c.publish("campaign:7:map", json!("acme only")).await;
    other
        .expect_none(std::time::Duration::from_millis(300), |e| {
            matches!(e, ServerEvent::Message { .. })
        })
        .await;

    // The secret from a flag beats the environment's, and a server config
    // file (with settings of `serve` beside it) supplies one when neither
    // gives it.
    let dir = std::env::temp_dir().join(format!("roomcast-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("roomcast.env");
    std::fs::write(
        &file,
        format!("# server settings\nROOMCAST_LISTEN=127.0.0.1:0\nROOMCAST_JWT_SECRET={SECRET}\n"),
    )
    .expect("write");
    let path = file.to_string_lossy().to_string();
    for (args, envs) in [
        (
            vec!["--sub", "dave", "--jwt-secret", SECRET],
            vec![("ROOMCAST_JWT_SECRET", "not the server's")],
        ),
        (vec!["--sub", "dave", "--config", path.as_str()], vec![]),
        (
            vec!["--sub", "dave"],
            vec![("ROOMCAST_CONFIG", path.as_str())],
        ),
    ] {
        let (code, out, err) = token_cmd(&args, &envs);
        assert_eq!(code, 0, "{args:?}: {err}");
        let c = Client::connect(&server.url(&format!("?token={}", out.trim())), Codec::Json)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(matches!(c.welcome, Some(ServerEvent::Welcome { ref user, .. }) if user == "dave"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_subcommand_errors_are_one_clear_line() {
    let secret = [("ROOMCAST_JWT_SECRET", SECRET)];
    for (args, envs, says) in [
        (vec!["--sub", "bob"], &[][..], "ROOMCAST_JWT_SECRET"),
        (vec!["--sub", "bob", "--ttl", "1w"], &secret[..], "--ttl"),
        (vec!["--sub", "bob", "--ttl", "0"], &secret[..], "--ttl"),
        (vec!["--roles", "admin"], &secret[..], "--sub"),
        (vec!["--sub", ""], &secret[..], "sub must be 1 to 256 bytes"),
        (
            vec!["--sub", "bob", "--tenant", "a/b"],
            &secret[..],
            "tenant",
        ),
        (
            vec!["--sub", "bob", "--rooms", "lobby,a b"],
            &secret[..],
            "\"a b\"",
        ),
    ] {
        let (code, out, err) = token_cmd(&args, envs);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace") && !err.contains("Backtrace"),
            "{args:?}: {err}"
        );
    }
}
