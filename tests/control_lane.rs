//! The egress control lane end to end: a receiver with megabytes queued,
//! reading slowly but steadily, still gets the relay's pings in time (they
//! go ahead of the queued bulk frames) and is not dropped by keepalive.
//! Without the lane each ping would wait behind the whole queue, far longer
//! than the keepalive timeout.

mod common;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bitstream_relay::client::Client;
use bitstream_relay::protocol::{self, FrameType};
use common::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, Sleep};

/// A TCP stream whose reads are paced to `rate` bytes per second.
struct Paced {
    inner: TcpStream,
    rate: f64,
    next: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if Instant::now() < me.next {
            let next = me.next;
            me.sleep.as_mut().reset(next);
            if me.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let room = buf.remaining().min(16 * 1024);
        let mut small = ReadBuf::new(&mut buf.initialize_unfilled()[..room]);
        match Pin::new(&mut me.inner).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                let n = small.filled().len();
                buf.advance(n);
                me.next = Instant::now().max(me.next) + Duration::from_secs_f64(n as f64 / me.rate);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Paced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

use std::future::Future;

/// Megabytes queued for the slow receiver.
const FRAMES: usize = 48;
const FRAME: usize = 1 << 20;
/// The slow receiver's read rate: the whole queue takes ~6 s, one socket
/// buffer's worth well under the keepalive timeout.
const RATE: f64 = 8.0 * 1024.0 * 1024.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_overtake_queued_bulk_so_a_slow_steady_receiver_is_kept() {
    let t = start(&[
        "--egress-queue",
        "200000000",
        "--ping-interval-ms",
        "200",
        "--keepalive-timeout-ms",
        "2500",
        "--slow-timeout-ms",
        "60000",
    ])
    .await;
    // The slow receiver: a small receive buffer, reads paced.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = within(sock.connect(t.addr)).await.unwrap();
    let paced = Paced {
        inner: tcp,
        rate: RATE,
        next: Instant::now(),
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let mut slow = within(Client::handshake_over(
        paced,
        t.addr,
        7,
        "127.0.0.1",
        "/stream/lane",
        &[],
        64 << 20,
    ))
    .await
    .expect("handshake");
    wait_receivers(&t, "lane", 1).await;

    let mut src = connect(&t.url("/source/lane")).await;
    for i in 0..FRAMES {
        let payload = vec![i as u8; FRAME];
        let m = protocol::frame(
            FrameType::CompressedPixels,
            0,
            i as u16,
            0,
            (0, 0),
            &payload,
        );
        src.send(&m).await.unwrap();
    }
    // The source answers its own pings meanwhile.
    let src_task = tokio::spawn(async move {
        let _ = src.recv().await;
    });
    // Megabytes are held for the slow receiver now (large frames are
    // charged to the memory budget until the last queue lets them go).
    eventually("megabytes queued", || {
        t.relay.summary().memory_bytes > 8 * FRAME
    })
    .await;

    // Read everything, slowly; the client answers pings as it reads them.
    let read_all = async {
        for i in 0..FRAMES {
            let m = slow
                .recv_binary()
                .await
                .expect("the slow receiver was dropped");
            assert_eq!(m.len(), 16 + FRAME);
            assert!(m[16..].iter().all(|b| *b == i as u8), "frame {i} intact");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read_all)
        .await
        .expect("timed out");
    assert_eq!(t.relay.summary().keepalive_drops, 0, "kept by keepalive");
    assert_eq!(t.relay.channel("lane").unwrap().traffic.slow_skips, 0);
    src_task.abort();
}
