//! `POST /input/{name}`: inputs by plain HTTP reach the channel's source
//! in order, and every refusal has its status.

mod common;

use bitstream_relay::client::Client;
use bitstream_relay::protocol::{self, InputType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{connect, start, within, TestRelay};

/// Sends a raw request (head lines after the request line, then `body`);
/// returns the status and the whole response.
async fn raw(t: &TestRelay, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    (out[9..12].parse().unwrap(), out)
}

async fn post(t: &TestRelay, path: &str, body: &[u8]) -> (u16, String) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    raw(t, &head, body).await
}

/// The next input the source gets.
async fn next_input(src: &mut Client) -> Vec<u8> {
    within(src.recv_binary())
        .await
        .expect("source connection")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inputs_arrive_at_the_source_in_order() {
    let t = start(&["--input-burst", "1000"]).await;
    let mut src = connect(&t.url("/source/in")).await;
    let mut sent = Vec::new();
    for i in 0..300u16 {
        let msg = protocol::pointer_input(InputType::Pointer, i, 0, i, i / 2, 1);
        let (status, resp) = post(&t, "/input/in", &msg).await;
        assert_eq!(status, 202, "{resp}");
        assert!(resp.contains("Access-Control-Allow-Origin: *") || !resp.contains("Origin"));
        sent.push(msg);
    }
    for (i, want) in sent.iter().enumerate() {
        assert_eq!(&next_input(&mut src).await, want, "input {i}");
    }
    assert_eq!(t.relay.channel("in").unwrap().traffic.inputs, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_http_input_gets_its_status() {
    let t = start(&["--max-input-message", "64"]).await;
    let good = protocol::key_input(true, 1, 0, 65, 0);
    // No channel, then a channel without a source.
    assert_eq!(post(&t, "/input/nobody", &good).await.0, 404);
    let rx = connect(&t.url("/stream/half")).await;
    assert_eq!(post(&t, "/input/half", &good).await.0, 404);
    drop(rx);

    let mut src = connect(&t.url("/source/err")).await;
    // Malformed: a frame type, a wrong payload size, garbage.
    let frame = protocol::signal(true, 0, 0, b"{}");
    assert_eq!(post(&t, "/input/err", &frame).await.0, 400);
    let mut short = good.clone();
    short.pop();
    assert_eq!(post(&t, "/input/err", &short).await.0, 400);
    // Too large: refused from its Content-Length, before reading it.
    let big = vec![0u8; 65];
    let (status, _) = post(&t, "/input/err", &big).await;
    assert_eq!(status, 413);
    // No Content-Length, or a chunked body.
    let (status, _) = raw(&t, "POST /input/err HTTP/1.1\r\nHost: x\r\n\r\n", b"").await;
    assert_eq!(status, 411);
    let chunked = "POST /input/err HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(raw(&t, chunked, b"0\r\n\r\n").await.0, 411);
    // The wrong method.
    assert_eq!(common::http_get(&t, "/input/err").await.0, 405);
    // A preflight.
    let (status, resp) = raw(
        &t,
        "OPTIONS /input/err HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 204, "{resp}");
    assert!(resp.contains("Access-Control-Allow-Methods: GET, POST, OPTIONS"));

    // A valid one still goes through.
    assert_eq!(post(&t, "/input/err", &good).await.0, 202);
    assert_eq!(next_input(&mut src).await, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inputs_over_the_rate_get_429() {
    let t = start(&["--input-rate", "1", "--input-burst", "3"]).await;
    let mut src = connect(&t.url("/source/rate")).await;
    let good = protocol::key_input(true, 1, 0, 65, 0);
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..10 {
        match post(&t, "/input/rate", &good).await.0 {
            202 => accepted += 1,
            429 => limited += 1,
            s => panic!("status {s}"),
        }
    }
    assert!(
        accepted >= 3 && limited >= 1,
        "{accepted} accepted, {limited} limited"
    );
    for _ in 0..accepted {
        assert_eq!(next_input(&mut src).await, good);
    }
    assert!(t.relay.channel("rate").unwrap().traffic.dropped >= limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out() {
    let t = start(&["--handshake-timeout-ms", "300"]).await;
    let _src = connect(&t.url("/source/slow")).await;
    let (status, _) = raw(
        &t,
        "POST /input/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 21\r\n\r\n",
        b"short",
    )
    .await;
    assert_eq!(status, 408);
}
