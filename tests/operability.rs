//! HTTP on the relay's port: /metrics, /healthz, /channels, the page.

mod common;

use bitstream_relay::protocol::{self, FrameType};
use common::*;

#[tokio::test]
async fn metrics_move_with_traffic() {
    let t = start(&[]).await;
    let (status, before) = http_get(&t, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&before, "relay_frames_in_total"), 0);
    let mut r = connect(&t.url("/stream/m")).await;
    wait_receivers(&t, "m", 1).await;
    let mut src = connect(&t.url("/source/m")).await;
    for i in 0..5 {
        src.send(&protocol::frame(
            FrameType::Haptic,
            0,
            i,
            0,
            (0, 0),
            b"12345",
        ))
        .await
        .unwrap();
    }
    for _ in 0..5 {
        within(r.recv_binary()).await.unwrap();
    }
    let _ = connect_err(&t.url("/stream/bad%20name")).await;
    let (_, after) = http_get(&t, "/metrics").await;
    assert_eq!(metric(&after, "relay_frames_in_total"), 5);
    assert_eq!(metric(&after, "relay_frames_out_total"), 5);
    assert_eq!(metric(&after, "relay_bytes_out_total"), 5 * 21);
    assert_eq!(
        metric(&after, "relay_channel_frames_in_total{channel=\"m\"}"),
        5
    );
    assert_eq!(metric(&after, "relay_connections{role=\"receiver\"}"), 1);
    assert_eq!(metric(&after, "relay_connections{role=\"source\"}"), 1);
    assert_eq!(
        metric(&after, "relay_refused_total{reason=\"bad_name\"}"),
        1
    );
    assert_eq!(metric(&after, "relay_catchups_total"), 1);
    // The process's RSS beside the budget's own figure.
    let rss = metric(&after, "relay_process_resident_bytes");
    assert!(rss > metric(&after, "relay_memory_bytes"), "{rss}");
    assert!(rss > 1 << 20, "{rss}");
}

#[tokio::test]
async fn channels_lists_every_channel() {
    let t = start(&[]).await;
    let _r = connect(&t.url("/stream/list")).await;
    wait_receivers(&t, "list", 1).await;
    let mut src = connect(&t.url("/source/list")).await;
    src.send(&protocol::pixels_keyframe(0, 0, 2, 2, &[9u8; 16]))
        .await
        .unwrap();
    eventually("frame counted", || t.relay.summary().traffic.frames_in == 1).await;
    let (status, body) = http_get(&t, "/channels").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ch = &v.as_array().unwrap()[0];
    assert_eq!(ch["name"], "list");
    assert_eq!(ch["source"], true);
    assert_eq!(ch["receivers"], 1);
    assert_eq!(ch["frames_in"], 1);
    assert!(ch["cached_bytes"].as_u64().unwrap() >= 32);
}

#[tokio::test]
async fn health_turns_503_while_shutting_down() {
    let t = start(&["--shutdown-grace-ms", "3000"]).await;
    let (status, body) = http_get(&t, "/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"ok\""));
    // A receiver that does not answer the close keeps the relay draining a while.
    let _r = connect(&t.url("/stream/h")).await;
    wait_receivers(&t, "h", 1).await;
    t.relay.begin_shutdown();
    let (status, body) = http_get(&t, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains("shutting_down"));
    match connect_err(&t.url("/stream/h")).await {
        bitstream_relay::client::ClientError::Refused { status, .. } => assert_eq!(status, 503),
        e => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn the_page_and_its_module_are_served() {
    let t = start(&[]).await;
    let (status, body) = http_get(&t, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("client.js"));
    let (status, _) = http_get(&t, "/client.js").await;
    assert_eq!(status, 200);
}
