//! The Rust client: a `Receiver` rebuilds the source's picture and signal
//! state, and both ends reconnect and resynchronize when the relay restarts.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bitstream_relay::client::{Event, Receiver, SignalPeer, Source};
use common::*;
use serde_json::{json, Map, Value};

fn pattern(w: u16, h: u16, t: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(w as usize * h as usize * 4);
    for y in 0..h as u32 {
        for x in 0..w as u32 {
            let on = ((x + t) / 8 + y / 8).is_multiple_of(2);
            v.extend_from_slice(&[
                if on { 255 } else { (x * 3) as u8 },
                (y * 5) as u8,
                t as u8,
                255,
            ]);
        }
    }
    v
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Reads until the receiver's picture and signal state equal the wanted ones.
async fn until_state(r: &mut Receiver, picture: &[u8], signal: &Map<String, Value>) {
    within(async {
        while r.picture().map(|p| p.rgba.as_slice()) != Some(picture) || r.signal() != signal {
            r.next().await;
        }
    })
    .await;
}

#[tokio::test]
async fn receiver_rebuilds_pictures_and_signal_state() {
    let t = start(&[]).await;
    let mut r = Receiver::connect(&t.url("/stream/c")).await.unwrap();
    wait_receivers(&t, "c", 1).await;
    let mut s = Source::connect(&t.url("/source/c")).await.unwrap();
    s.keyframe_interval = 10;
    let (w, h) = (96, 64);
    for i in 0..40 {
        s.send_picture(w, h, &pattern(w, h, i)).await.unwrap();
        s.send_signal_diff(&obj(json!({ "frame": i, format!("k{}", i % 3): i })))
            .await
            .unwrap();
    }
    until_state(&mut r, &pattern(w, h, 39), s.signal()).await;
    assert_eq!(r.undecodable, 0);
    assert_eq!(r.picture().unwrap().width, 96);
}

struct Relay(Child);

impl Relay {
    fn spawn(port: u16) -> Self {
        Self(
            Command::new(env!("CARGO_BIN_EXE_bitstream-relay"))
                .args([
                    "--addr",
                    &format!("127.0.0.1:{port}"),
                    "--stats-interval-ms",
                    "0",
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn relay"),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_reconnect_and_resync_after_a_relay_restart() {
    let port = free_port();
    let relay = Relay::spawn(port);
    let base = format!("ws://127.0.0.1:{port}");
    let (w, h) = (64, 48);
    let mut s = within(async {
        loop {
            match Source::connect(&format!("{base}/source/rc")).await {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    let mut r = Receiver::connect(&format!("{base}/stream/rc"))
        .await
        .unwrap();
    s.send_picture(w, h, &pattern(w, h, 1)).await.unwrap();
    s.send_signal_diff(&obj(json!({"score": 1}))).await.unwrap();
    until_state(&mut r, &pattern(w, h, 1), s.signal()).await;

    // Kill the relay outright (no close frames) and start a fresh one.
    drop(relay);
    let _relay = Relay::spawn(port);
    // The source notices on its next sends, reconnects, re-sends its state,
    // then continues with new pictures and signal.
    s.send_picture(w, h, &pattern(w, h, 2)).await.ok();
    s.send_picture(w, h, &pattern(w, h, 3)).await.unwrap();
    s.send_signal_diff(&obj(json!({"score": 2, "level": "b"})))
        .await
        .unwrap();
    let mut saw_reconnect = false;
    within(async {
        while r.picture().map(|p| p.rgba.clone()) != Some(pattern(w, h, 3))
            || r.signal() != s.signal()
        {
            if r.next().await == Event::Reconnected {
                saw_reconnect = true;
            }
        }
    })
    .await;
    assert!(saw_reconnect);
    assert!(s.reconnects() >= 1);
    assert_eq!(r.signal(), &obj(json!({"score": 2, "level": "b"})));
}

#[tokio::test]
async fn signal_peers_exchange_text() {
    let t = start(&[]).await;
    let mut a = SignalPeer::connect(&t.url("/signal/call")).await.unwrap();
    let mut b = SignalPeer::connect(&t.url("/signal/call")).await.unwrap();
    eventually("2 signal peers", || {
        t.relay.channel("call").is_some_and(|c| c.signal_peers == 2)
    })
    .await;
    a.send(r#"{"type":"offer"}"#).await.unwrap();
    assert_eq!(within(b.recv()).await, r#"{"type":"offer"}"#);
    b.send(r#"{"type":"answer"}"#).await.unwrap();
    assert_eq!(within(a.recv()).await, r#"{"type":"answer"}"#);
}
