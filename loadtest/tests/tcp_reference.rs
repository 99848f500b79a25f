//! End to end: the plain-TCP fan-out reference (`loadtest tcp-server`)
//! carries every frame, byte-exact and in order, to every receiver: through
//! `loadtest saturate --start tcp` at full speed, and when its receivers
//! stop reading for a while (their queues fill and the source must wait,
//! not drop). The ceiling `loadtest compare` holds the relays to must not
//! drop what it is credited with.

mod common;

use common::run_with_results;
use std::ffi::OsStr;
use std::time::Duration;

#[test]
fn the_plain_tcp_reference_delivers_every_frame_at_full_speed() {
    let args = [
        "saturate",
        "--start",
        "tcp",
        "--receivers",
        "8",
        "--width",
        "256",
        "--height",
        "256",
        "--duration",
        "1",
        "--drain",
        "5",
    ]
    .map(OsStr::new);
    // A hung driver or server fails the test; nothing judges the duration.
    let (code, stderr, json) = run_with_results(&args, "tcp-ref", Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&json.unwrap_or_else(|| panic!("no JSON result\n{stderr}")))
            .unwrap();
    let sent = v["source"]["frames_sent"].as_u64().unwrap();
    let d = &v["delivery"];
    // The source ran: more messages than a receiver's queue (8) holds,
    // twice over. A count, not a speed (a debug build sends ~100).
    assert!(sent > 16, "only {sent} frames sent:\n{stderr}");
    assert_eq!(d["delivered_frames"].as_u64(), Some(sent * 8), "{d}");
    assert_eq!(d["missing_frames"].as_u64(), Some(0), "{d}");
    assert_eq!(d["corrupted"].as_u64(), Some(0), "{d}");
    assert_eq!(d["out_of_order"].as_u64(), Some(0), "{d}");
}

/// A `loadtest tcp-server` child on a free port, killed when dropped.
struct Server {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Server {
    fn start() -> Server {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["tcp-server", "--addr", &addr.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start loadtest tcp-server");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tcp-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, addr }
    }

    /// A connection in `role` ("S" or "R") of channel `ch`, once joined.
    fn join(&self, role: &str, ch: &str) -> std::net::TcpStream {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("{role} {ch}\n").as_bytes()).unwrap();
        let mut ok = [0u8; 6];
        s.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"OK\r\n\r\n");
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn receivers_that_stop_reading_hold_the_source_and_lose_nothing() {
    use std::io::{Read, Write};
    const FRAMES: u32 = 64;
    const SIZE: usize = 256 * 1024;
    let server = Server::start();
    let mut receivers: Vec<_> = (0..2).map(|_| server.join("R", "held")).collect();
    let mut src = server.join("S", "held");
    // 16 MiB per receiver while neither reads: far past its queue (8
    // messages) and its socket buffers, so the source must wait for them.
    let source = std::thread::spawn(move || {
        for i in 0..FRAMES {
            let mut msg = (SIZE as u32).to_le_bytes().to_vec();
            msg.extend(std::iter::repeat_n(i as u8, SIZE));
            src.write_all(&msg).unwrap();
        }
        src
    });
    std::thread::sleep(Duration::from_millis(500));
    // Then both read at once (the source waits for the slower of them).
    let readers: Vec<_> = receivers
        .drain(..)
        .map(|mut r| {
            std::thread::spawn(move || {
                for i in 0..FRAMES {
                    let mut len = [0u8; 4];
                    r.read_exact(&mut len).unwrap();
                    assert_eq!(u32::from_le_bytes(len) as usize, SIZE, "frame {i}");
                    let mut body = vec![0u8; SIZE];
                    r.read_exact(&mut body).unwrap();
                    assert!(body.iter().all(|&b| b == i as u8), "frame {i} intact");
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    drop(source.join().unwrap());
}
