//! `GET /turn`: coturn `use-auth-secret` credentials, checked with the
//! HMAC computed here; 404 when not configured; a token when tokens are on.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha1::Sha1;

use common::{http_get, start};

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-turn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn expected_credential(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_validate_with_the_shared_secret() {
    let secret = temp_file("secret", "north-wind-7\n");
    let t = start(&[
        "--turn-secret-file",
        secret.to_str().unwrap(),
        "--turn-uris",
        "turn:turn.example:3478,turns:turn.example:5349",
        "--turn-ttl",
        "3600",
    ])
    .await;
    let (status, body) = http_get(&t, "/turn").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let username = v["username"].as_str().unwrap();
    let (expiry, id) = username.split_once(':').unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        expiry >= now + 3500 && expiry <= now + 3700,
        "{expiry} vs {now}"
    );
    assert!(!id.is_empty());
    assert_eq!(
        v["credential"].as_str().unwrap(),
        expected_credential(b"north-wind-7", username),
        "trailing whitespace of the file is not part of the secret"
    );
    assert_eq!(v["ttl"], 3600);
    assert_eq!(
        v["uris"],
        serde_json::json!(["turn:turn.example:3478", "turns:turn.example:5349"])
    );
    let (_, again) = http_get(&t, "/turn").await;
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_ne!(again["username"], v["username"], "a fresh id each time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_is_404_unless_configured() {
    let t = start(&[]).await;
    assert_eq!(http_get(&t, "/turn").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_needs_a_token_when_tokens_are_on() {
    let secret = temp_file("turn2", "s3cret");
    let jwt = temp_file("jwt", "jwt-secret-for-turn-0123456789abcdef");
    let t = start(&[
        "--turn-secret-file",
        secret.to_str().unwrap(),
        "--turn-uris",
        "turn:t.example:3478",
        "--jwt-secret-file",
        jwt.to_str().unwrap(),
    ])
    .await;
    assert_eq!(http_get(&t, "/turn").await.0, 401);
    assert_eq!(http_get(&t, "/turn?token=nope").await.0, 401);
    let cfg = bitstream_relay::Config {
        jwt_secret_file: Some(jwt.clone()),
        ..bitstream_relay::Config::default()
    };
    let token = bitstream_relay::mint_token(
        &cfg,
        &bitstream_relay::TokenArgs {
            channels: vec!["somewhere".into()],
            roles: vec!["signal".into()],
            ttl: Duration::from_secs(600),
            sub: Some("alice:1".into()),
        },
    )
    .unwrap();
    let (status, body) = http_get(&t, &format!("/turn?token={token}")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let username = v["username"].as_str().unwrap();
    assert!(username.ends_with(":alice_1"), "{username}");
    assert_eq!(
        v["credential"].as_str().unwrap(),
        expected_credential(b"s3cret", username)
    );
}

#[test]
fn a_missing_turn_secret_stops_the_relay_from_starting() {
    use clap::Parser;
    let cfg = bitstream_relay::Config::parse_from([
        "x",
        "--addr",
        "127.0.0.1:0",
        "--turn-secret-file",
        "/nonexistent/turn-secret",
        "--turn-uris",
        "turn:t:3478",
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(bitstream_relay::Server::bind(cfg))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("TURN"), "{err}");
}
