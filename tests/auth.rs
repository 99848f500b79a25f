//! Tokens, origins and trusted proxies at the handshake, over real sockets:
//! who may publish, watch or signal, and what everyone else is told.

mod common;

use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use bitstream_relay::client::{Client, ClientError};
use bitstream_relay::protocol;
use bitstream_relay::Refusal;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test secret: 32 bytes or more, honestly";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with these claims.
fn hs256(claims: serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        claims,
    )
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

/// A token for `ch`/`role` valid for an hour.
fn token(ch: &str, role: &str) -> String {
    hs256(json!({"ch": ch, "role": role, "exp": now() + 3600, "sub": "tester"}))
}

/// A relay requiring HS256 tokens, with extra flags.
async fn start_secured(flags: &[&str]) -> TestRelay {
    let secret = temp_file("secret", format!("{SECRET}\n").as_bytes());
    let mut args = vec!["--jwt-secret-file", secret.to_str().unwrap()];
    args.extend_from_slice(flags);
    start(&args).await
}

/// The HTTP status a refused handshake got.
fn status_of(e: ClientError) -> u16 {
    match e {
        ClientError::Refused { status, .. } => status,
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_bad_and_expired_tokens_get_401_before_any_upgrade() {
    let t = start_secured(&[]).await;
    assert_eq!(status_of(connect_err(&t.url("/source/cam")).await), 401);
    assert_eq!(
        status_of(connect_err(&t.url("/stream/cam?token=")).await),
        401
    );
    let garbage = connect_err(&t.url("/stream/cam?token=not.a.jwt")).await;
    assert_eq!(status_of(garbage), 401);
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"some other secret entirely").unwrap(),
        json!({"ch": "cam", "role": "receiver", "exp": now() + 3600}),
    );
    let e = connect_err(&t.url(&format!("/stream/cam?token={forged}"))).await;
    assert_eq!(status_of(e), 401);
    let expired = hs256(json!({"ch": "cam", "role": "receiver", "exp": now() - 10}));
    let e = connect_err(&t.url(&format!("/stream/cam?token={expired}"))).await;
    assert_eq!(status_of(e), 401);
    let no_exp = hs256(json!({"ch": "cam", "role": "receiver"}));
    let e = connect_err(&t.url(&format!("/stream/cam?token={no_exp}"))).await;
    assert_eq!(status_of(e), 401);
    let bearer_expired = format!("Bearer {expired}");
    let e = within(Client::connect_with_headers(
        &t.url("/signal/cam"),
        &[("Authorization", &bearer_expired)],
        1 << 20,
    ))
    .await
    .err()
    .expect("refused");
    assert_eq!(status_of(e), 401);

    let s = t.relay.summary();
    assert_eq!(s.refused(Refusal::TokenMissing), 2);
    assert_eq!(s.refused(Refusal::TokenInvalid), 3);
    assert_eq!(s.refused(Refusal::TokenExpired), 2);
    assert!(t.relay.channel("cam").is_none(), "no channel was touched");
    let (_, metrics) = http_get(&t, "/metrics").await;
    assert!(
        metrics.contains(r#"relay_refused_total{reason="token_invalid"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"relay_refused_total{reason="token_expired"} 2"#));
}

#[tokio::test]
async fn a_token_for_another_channel_or_role_gets_403() {
    let t = start_secured(&[]).await;
    let rx = token("cam", "receiver");
    for path in [
        format!("/source/cam?token={rx}"),
        format!("/signal/cam?token={rx}"),
        format!("/stream/other?token={rx}"),
    ] {
        assert_eq!(status_of(connect_err(&t.url(&path)).await), 403, "{path}");
    }
    let list = hs256(json!({"ch": ["a", "b"], "role": ["source", "signal"], "exp": now() + 60}));
    assert_eq!(
        status_of(connect_err(&t.url(&format!("/stream/a?token={list}"))).await),
        403
    );
    assert_eq!(
        status_of(connect_err(&t.url(&format!("/source/c?token={list}"))).await),
        403
    );
    assert_eq!(t.relay.summary().refused(Refusal::TokenForbidden), 5);
    // The same token is good for what it grants.
    let _src = connect(&t.url(&format!("/source/b?token={list}"))).await;
    let _sig = connect(&t.url(&format!("/signal/a?token={list}"))).await;
}

#[tokio::test]
async fn a_right_token_is_accepted_in_the_query_and_in_the_header() {
    let t = start_secured(&[]).await;
    let bearer = format!("Bearer {}", token("cam", "receiver"));
    let mut rx = within(Client::connect_with_headers(
        &t.url("/stream/cam"),
        &[("Authorization", &bearer)],
        64 << 20,
    ))
    .await
    .expect("receiver with a Bearer token");
    wait_receivers(&t, "cam", 1).await;
    let mut src = connect(&t.url(&format!("/source/cam?token={}", token("cam", "source")))).await;
    let frame = noise(64 * 48 * 4, 3);
    let msg = protocol::pixels_keyframe(1, 0, 64, 48, &frame);
    src.send(&msg).await.unwrap();
    let got = within(rx.recv_binary()).await.unwrap();
    assert_eq!(&got[..], &msg[..], "byte-exact");
    // `*` grants every channel.
    let any = hs256(json!({"ch": "*", "role": "receiver", "exp": now() + 60}));
    let _r2 = connect(&t.url(&format!("/stream/cam?token={any}"))).await;
    wait_receivers(&t, "cam", 2).await;
}

#[tokio::test]
async fn the_legacy_path_publishes_only_with_a_source_token() {
    let t = start_secured(&[]).await;
    // No source yet: the legacy rule would make this the source, but its
    // token only lets it watch.
    let _watcher = connect(&t.url(&format!("/?token={}", token("default", "receiver")))).await;
    wait_receivers(&t, "default", 1).await;
    assert!(!t.relay.channel("default").unwrap().source);
    let _src = connect(&t.url(&format!("/?token={}", token("default", "source")))).await;
    eventually("legacy source", || {
        t.relay.channel("default").is_some_and(|c| c.source)
    })
    .await;
    // A source-only token cannot fall back to receiving.
    let e = connect_err(&t.url(&format!("/?token={}", token("default", "source")))).await;
    assert_eq!(status_of(e), 409);
}

#[tokio::test]
async fn an_open_connection_is_closed_when_its_token_expires() {
    let t = start_secured(&[]).await;
    let short = hs256(json!({"ch": "cam", "role": "receiver", "exp": now() + 2, "sub": "brief"}));
    let long = token("cam", "receiver");
    let mut brief = connect(&t.url(&format!("/stream/cam?token={short}"))).await;
    let mut lasting = connect(&t.url(&format!("/stream/cam?token={long}"))).await;
    wait_receivers(&t, "cam", 2).await;
    match within(brief.recv()).await {
        Err(ClientError::Closed(code, reason)) => {
            assert_eq!(code, 4401);
            assert_eq!(reason, "token expired");
        }
        other => panic!("expected a 4401 close, got {other:?}"),
    }
    wait_receivers(&t, "cam", 1).await;
    // The other receiver is untouched.
    let mut src = connect(&t.url(&format!("/source/cam?token={}", token("cam", "source")))).await;
    let msg = protocol::pixels_keyframe(1, 0, 2, 2, &[7; 16]);
    src.send(&msg).await.unwrap();
    assert_eq!(&within(lasting.recv_binary()).await.unwrap()[..], &msg[..]);
}

#[tokio::test]
async fn public_key_tokens_verify_beside_the_secret() {
    for (alg, rcgen_alg) in [
        (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
    ] {
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let public = temp_file("public.pem", pair.public_key_pem().as_bytes());
        let private = pair.serialize_pem();
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        };
        let t = start_secured(&["--jwt-public-key-file", public.to_str().unwrap()]).await;
        let signed = sign(
            alg,
            &key,
            json!({"ch": "cam", "role": "receiver", "exp": now() + 60}),
        );
        let _rx = connect(&t.url(&format!("/stream/cam?token={signed}"))).await;
        // The HS256 secret still works beside the public key.
        let _rx2 =
            connect(&t.url(&format!("/stream/cam?token={}", token("cam", "receiver")))).await;
        wait_receivers(&t, "cam", 2).await;
        // A key the relay does not hold.
        let other = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let other_key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(other.serialize_pem().as_bytes()),
            _ => EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()),
        }
        .unwrap();
        let forged = sign(
            alg,
            &other_key,
            json!({"ch": "cam", "role": "receiver", "exp": now() + 60}),
        );
        let e = connect_err(&t.url(&format!("/stream/cam?token={forged}"))).await;
        assert_eq!(status_of(e), 401, "{alg:?}");
    }
}

#[tokio::test]
async fn http_requests_for_channel_data_need_a_token() {
    let t = start_secured(&[]).await;
    assert_eq!(http_get(&t, "/channels").await.0, 401);
    let one = token("cam", "receiver");
    assert_eq!(http_get(&t, &format!("/channels?token={one}")).await.0, 403);
    let every = hs256(json!({"ch": "*", "role": "receiver", "exp": now() + 60}));
    assert_eq!(
        http_get(&t, &format!("/channels?token={every}")).await.0,
        200
    );
    // A channel's path without an upgrade: the token first, then 426.
    assert_eq!(http_get(&t, "/stream/cam").await.0, 401);
    assert_eq!(
        http_get(&t, &format!("/stream/cam?token={one}")).await.0,
        426
    );
    // Health, metrics and the page stay open.
    assert_eq!(http_get(&t, "/healthz").await.0, 200);
    assert_eq!(http_get(&t, "/metrics").await.0, 200);
    assert_eq!(http_get(&t, "/").await.0, 200);
}

/// A plain `GET path` with an `Authorization` header: status and body.
async fn http_get_with_auth(t: &TestRelay, path: &str, auth: &str) -> (u16, String) {
    http_get_with(t, path, &[("Authorization", auth)]).await
}

#[tokio::test]
async fn metrics_name_channels_only_for_an_every_channel_token() {
    let t = start_secured(&[]).await;
    let mut src = connect(&t.url(&format!(
        "/source/secret-cam?token={}",
        token("secret-cam", "source")
    )))
    .await;
    src.send(&protocol::pixels_keyframe(1, 0, 2, 2, &[9u8; 16]))
        .await
        .unwrap();
    eventually("the frame counted", || {
        t.relay
            .channel("secret-cam")
            .is_some_and(|c| c.traffic.frames_in == 1)
    })
    .await;
    let series = r#"relay_channel_frames_in_total{channel="secret-cam"} 1"#;
    // No token, a single-channel token, a bad one: the relay-wide series
    // (so a scraper of totals keeps working), no channel name.
    let one = token("secret-cam", "receiver");
    for path in [
        "/metrics".to_owned(),
        format!("/metrics?token={one}"),
        "/metrics?token=not.a.jwt".to_owned(),
    ] {
        let (status, body) = http_get(&t, &path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            !body.contains("secret-cam"),
            "{path} names the channel:\n{body}"
        );
        assert!(body.contains("relay_frames_in_total 1"), "{path}:\n{body}");
        assert!(
            body.contains(r#"relay_connections{role="source"} 1"#),
            "{path}:\n{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{path}");
    }
    let (_, body) = http_get_with_auth(&t, "/metrics", &format!("Bearer {one}")).await;
    assert!(!body.contains("secret-cam"), "{body}");
    // A `*` token, in the query or as a Bearer header: the channel's series too.
    let every = hs256(json!({"ch": "*", "role": "receiver", "exp": now() + 60}));
    let (status, body) = http_get(&t, &format!("/metrics?token={every}")).await;
    assert_eq!(status, 200);
    assert!(body.contains(series), "{body}");
    assert!(body.contains("relay_frames_in_total 1"), "{body}");
    let (_, body) = http_get_with_auth(&t, "/metrics", &format!("Bearer {every}")).await;
    assert!(body.contains(series), "{body}");
}

#[test]
fn the_token_subcommand_prints_a_token_the_relay_accepts() {
    let secret = temp_file("secret", SECRET.as_bytes());
    let bin = env!("CARGO_BIN_EXE_bitstream-relay");
    let out = Command::new(bin)
        .args([
            "token",
            "--channel",
            "cam",
            "--role",
            "source",
            "--ttl",
            "1h",
            "--sub",
            "op",
        ])
        .env("RELAY_JWT_SECRET_FILE", &secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let token = printed.trim();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &validation,
    )
    .expect("the printed token verifies with the secret");
    let c = data.claims;
    assert_eq!(
        (c["ch"].as_str(), c["role"].as_str(), c["sub"].as_str()),
        (Some("cam"), Some("source"), Some("op"))
    );
    let exp = c["exp"].as_u64().unwrap();
    assert!((now() + 3500..=now() + 3700).contains(&exp), "exp {exp}");

    // The flag works after the subcommand too; lists and other lifetimes.
    let out = Command::new(bin)
        .args(["token", "--jwt-secret-file", secret.to_str().unwrap()])
        .args([
            "--channel",
            "a,b",
            "--role",
            "receiver",
            "--role",
            "signal",
            "--ttl",
            "90s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let c = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(c["ch"], json!(["a", "b"]));
    assert_eq!(c["role"], json!(["receiver", "signal"]));

    // It accepts the token at the handshake.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = start(&["--jwt-secret-file", secret.to_str().unwrap()]).await;
        let _sig = connect(&t.url(&format!("/signal/b?token={token}"))).await;
        let e = connect_err(&t.url(&format!("/source/b?token={token}"))).await;
        assert_eq!(status_of(e), 403);
    });

    // Without a secret it says what is missing.
    let out = Command::new(bin)
        .args(["token", "--channel", "cam", "--role", "source"])
        .env_remove("RELAY_JWT_SECRET_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-secret-file"));
}

#[test]
fn an_open_relay_warns_once_and_bad_key_files_are_startup_errors() {
    let bin = env!("CARGO_BIN_EXE_bitstream-relay");
    // A missing key file: a clear error and exit 1, before listening.
    let out = Command::new(bin)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--jwt-public-key-file",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/key.pem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let not_a_key = temp_file(
        "junk.pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    let out = Command::new(bin)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--jwt-public-key-file",
            not_a_key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an RSA, EC P-256 or Ed25519"));

    // Without keys: one warning line that the relay is open.
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn,bitstream_relay=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        use std::io::BufRead;
        if err.read_line(&mut line).unwrap_or(0) == 0 || line.contains("relay listening") {
            break;
        }
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    let open: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("the relay is open"))
        .collect();
    assert_eq!(open.len(), 1, "{lines:?}");
    assert!(open[0].contains("WARN"), "{lines:?}");
}

#[tokio::test]
async fn a_handshake_from_an_origin_not_listed_gets_403() {
    let t = start(&["--allowed-origins", "https://a.example,https://b.example"]).await;
    let from = |origin: &'static str| {
        let url = t.url("/stream/cam");
        async move {
            within(Client::connect_with_headers(
                &url,
                &[("Origin", origin)],
                1 << 20,
            ))
            .await
        }
    };
    let e = from("https://evil.example").await.err().expect("refused");
    assert_eq!(status_of(e), 403);
    let e = from("http://a.example").await.err().expect("refused");
    assert_eq!(status_of(e), 403);
    assert_eq!(t.relay.summary().refused(Refusal::OriginForbidden), 2);
    let _a = from("https://a.example").await.expect("listed origin");
    let _b = from("https://b.example").await.expect("listed origin");
    // Not a browser: no Origin, no check.
    let _c = connect(&t.url("/stream/cam")).await;
    wait_receivers(&t, "cam", 3).await;
    let (_, metrics) = http_get(&t, "/metrics").await;
    assert!(metrics.contains(r#"relay_refused_total{reason="origin_forbidden"} 2"#));

    // Without the flag every origin is allowed.
    let open = start(&[]).await;
    let url = open.url("/stream/cam");
    let _d = within(Client::connect_with_headers(
        &url,
        &[("Origin", "https://evil.example")],
        1 << 20,
    ))
    .await
    .expect("every origin allowed by default");
}

/// Connects a receiver as if through a proxy that forwards for `client`.
async fn via_proxy(t: &TestRelay, header: &str, client: &str) -> Result<Client, ClientError> {
    let url = t.url("/stream/cam");
    within(Client::connect_with_headers(
        &url,
        &[(header, client)],
        1 << 20,
    ))
    .await
}

#[tokio::test]
async fn trusted_proxies_decide_the_per_ip_key() {
    let t = start(&[
        "--trusted-proxies",
        "127.0.0.0/8,::1",
        "--max-connections-per-ip",
        "1",
    ])
    .await;
    let _a = via_proxy(&t, "X-Forwarded-For", "203.0.113.1")
        .await
        .expect("first client");
    let _b = via_proxy(&t, "X-Forwarded-For", "203.0.113.2")
        .await
        .expect("another client");
    // A client's own entry left of what the proxy appended counts for nothing.
    let _c = via_proxy(&t, "X-Forwarded-For", "203.0.113.1, 198.51.100.7")
        .await
        .expect("the proxy saw 198.51.100.7");
    let _d = via_proxy(&t, "Forwarded", r#"for="[2001:db8::1]:4711""#)
        .await
        .expect("Forwarded");
    wait_receivers(&t, "cam", 4).await;
    let e = via_proxy(&t, "X-Forwarded-For", "203.0.113.1")
        .await
        .err()
        .expect("over the cap");
    assert_eq!(status_of(e), 503);
    // Same /64.
    let e = via_proxy(&t, "Forwarded", "for=\"[2001:db8::2]\"")
        .await
        .err()
        .expect("over the cap");
    assert_eq!(status_of(e), 503);
    assert_eq!(t.relay.summary().refused(Refusal::PerIpLimit), 2);
    drop(_a);
    eventually("the first client's slot is given back", || {
        t.relay.channel("cam").map_or(0, |c| c.receivers) == 3
    })
    .await;
    let _again = via_proxy(&t, "X-Forwarded-For", "203.0.113.1")
        .await
        .expect("slot given back");

    // Not trusted (the default, or another range): the socket address counts,
    // whatever the header says.
    for flags in [&[][..], &["--trusted-proxies", "10.0.0.0/8"][..]] {
        let mut args = vec!["--max-connections-per-ip", "1"];
        args.extend_from_slice(flags);
        let t = start(&args).await;
        let _a = via_proxy(&t, "X-Forwarded-For", "203.0.113.1")
            .await
            .expect("first");
        wait_receivers(&t, "cam", 1).await;
        let e = via_proxy(&t, "X-Forwarded-For", "203.0.113.2")
            .await
            .err()
            .expect("one address");
        assert_eq!(status_of(e), 503, "{flags:?}");
    }
}

#[tokio::test]
async fn rs256_tokens_verify_with_the_public_key() {
    // A fixed key pair made for this test only (RSA key generation is too
    // slow in a debug build to do at test time).
    let private = include_bytes!("data/rs256-test-only.key.pem");
    let public = temp_file(
        "rsa.pub.pem",
        include_bytes!("data/rs256-test-only.pub.pem"),
    );
    let t = start(&["--jwt-public-key-file", public.to_str().unwrap()]).await;
    let key = EncodingKey::from_rsa_pem(private).unwrap();
    let signed = sign(
        Algorithm::RS256,
        &key,
        json!({"ch": "cam", "role": "source", "exp": now() + 60, "sub": "rsa"}),
    );
    let _src = connect(&t.url(&format!("/source/cam?token={signed}"))).await;
    // Only RS256 with this key: an HS256 token has no key here.
    let e = connect_err(&t.url(&format!("/stream/cam?token={}", token("cam", "receiver")))).await;
    assert_eq!(status_of(e), 401);
}

/// A token with `exp` = 2^64-1 (an issuer's "never") panicked the handshake
/// after it took the source claim and receiver places, which then leaked:
/// the next source got 409, receivers stayed counted, `/events` never
/// answered. Now it never expires, and everything is given back.
#[tokio::test]
async fn a_token_that_never_expires_is_accepted_and_leaks_nothing() {
    let t = start_secured(&[]).await;
    let forever = |role: &str| hs256(json!({"ch": "inf", "role": role, "exp": u64::MAX}));
    let src_url = t.url(&format!("/source/inf?token={}", forever("source")));
    let mut src = connect(&src_url).await;
    let mut rxs = Vec::new();
    for _ in 0..10 {
        rxs.push(connect(&t.url(&format!("/stream/inf?token={}", forever("receiver")))).await);
    }
    wait_receivers(&t, "inf", 10).await;
    let msg = protocol::pixels_keyframe(1, 0, 2, 2, &[9; 16]);
    src.send(&msg).await.unwrap();
    for rx in &mut rxs {
        let got = within(rx.recv_binary()).await.expect("open and fed");
        assert_eq!(&got[..], &msg[..]);
    }
    // Server-Sent Events with the same token answer.
    let (status, _) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        let req = format!(
            "GET /events/inf?token={} HTTP/1.1\r\nHost: x\r\n\r\n",
            forever("receiver")
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 12];
        within(s.read_exact(&mut head)).await.unwrap();
        (String::from_utf8_lossy(&head[9..12]).into_owned(), ())
    };
    assert_eq!(status, "200");
    drop(rxs);
    drop(src);
    eventually("every place given back", || {
        t.relay
            .channel("inf")
            .is_none_or(|c| !c.source && c.receivers == 0)
    })
    .await;
    let _again = connect(&src_url).await;
}
