//! `wss://` and `https://` on the relay's port (`--tls-cert`, `--tls-key`):
//! byte-exact frames through TLS, plain HTTP and stalled handshakes on the
//! TLS port hurting nobody, SIGHUP reloading the certificate, and bad files
//! as startup errors. Certificates are made at test time (rcgen).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitstream_relay::client::{Client, ClientError};
use bitstream_relay::protocol::{self, Header, HEADER_LEN};
use bitstream_relay::Refusal;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A self-signed certificate for `localhost`: PEM files and the DER the
/// client trusts.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "relay-tls-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn make_cert() -> Cert {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (temp_path("cert.pem"), temp_path("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        der: made.cert.der().clone(),
    }
}

/// A TLS client configuration trusting only `der`.
fn trusting(der: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS stream to `addr` for `localhost`.
async fn tls_connect(
    tcp: TcpStream,
    trust: &Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(trust.clone())
        .connect(name, tcp)
        .await
}

/// A WebSocket client over TLS (`wss://localhost/path`).
async fn wss(
    addr: std::net::SocketAddr,
    path: &str,
    trust: &Arc<rustls::ClientConfig>,
) -> Result<Client, ClientError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let seed = tcp.local_addr()?.port() as u32 * 7919;
    let tls = tls_connect(tcp, trust).await?;
    Client::handshake_over(tls, addr, seed, "localhost", path, &[], 64 << 20).await
}

async fn start_tls(cert: &Cert, flags: &[&str]) -> TestRelay {
    let mut args = vec![
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    start(&args).await
}

/// A plain `GET path` over TLS: the whole response.
async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    trust: &Arc<rustls::ClientConfig>,
) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = within(tls_connect(tcp, trust)).await.unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    // The relay ends with close_notify: a clean end of stream.
    within(tls.read_to_end(&mut out)).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_frames_arrive_byte_exact_and_https_answers() {
    let cert = make_cert();
    let t = start_tls(&cert, &[]).await;
    let trust = trusting(&cert.der);
    let mut receivers = Vec::new();
    for _ in 0..3 {
        receivers.push(within(wss(t.addr, "/stream/cam", &trust)).await.unwrap());
    }
    wait_receivers(&t, "cam", 3).await;
    let mut src = within(wss(t.addr, "/source/cam", &trust)).await.unwrap();
    // Large keyframes (many TLS records each) and small frames between them.
    let mut sent = Vec::new();
    for i in 0..12u16 {
        let msg = if i % 3 == 0 {
            protocol::pixels_keyframe(i, i as u32, 640, 360, &noise(640 * 360 * 4, i as u64))
        } else {
            protocol::pixels_keyframe(i, i as u32, 4, 4, &noise(64, i as u64))
        };
        src.send(&msg).await.unwrap();
        sent.push(msg);
    }
    for rx in &mut receivers {
        for msg in &sent {
            let got = within(rx.recv_binary()).await.unwrap();
            assert_eq!(got.len(), msg.len());
            assert!(
                got[..] == msg[..],
                "frame {} differs",
                Header::parse(msg).unwrap().seq
            );
        }
    }
    // Inputs go back over TLS too.
    let input = protocol::key_input(true, 1, 0, 65, 0);
    receivers[0].send(&input).await.unwrap();
    assert_eq!(&within(src.recv_binary()).await.unwrap()[..], &input[..]);

    let health = https_get(t.addr, "/healthz", &trust).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = https_get(t.addr, "/metrics", &trust).await;
    assert!(metrics.contains("relay_frames_in_total 12"), "{metrics}");

    // A client that does not trust the certificate never gets in.
    let other = make_cert();
    assert!(wss(t.addr, "/stream/cam", &trusting(&other.der))
        .await
        .is_err());
    eventually("the failed handshake is counted", || {
        t.relay.summary().refused(Refusal::TlsFailed) >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_stalled_handshakes_on_the_tls_port_hurt_nobody() {
    let cert = make_cert();
    let t = start_tls(
        &cert,
        &["--handshake-timeout-ms", "500", "--slow-timeout-ms", "2000"],
    )
    .await;
    let trust = trusting(&cert.der);
    let mut healthy = within(wss(t.addr, "/stream/hd", &trust)).await.unwrap();
    // A TLS receiver that never reads, on a small window.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = within(sock.connect(t.addr)).await.unwrap();
    let stuck_tls = within(tls_connect(tcp, &trust)).await.unwrap();
    let stuck = within(Client::handshake_over(
        stuck_tls,
        t.addr,
        99,
        "localhost",
        "/stream/hd",
        &[],
        1 << 20,
    ))
    .await
    .unwrap();
    wait_receivers(&t, "hd", 2).await;
    let mut src = within(wss(t.addr, "/source/hd", &trust)).await.unwrap();
    let frames = 40u16;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < frames as usize {
            let m = healthy.recv_binary().await.expect("healthy receiver");
            assert_eq!(m.len(), HEADER_LEN + 320 * 240 * 4);
            seqs.push(Header::parse(&m).unwrap().seq);
        }
        seqs
    });
    let pixels = noise(320 * 240 * 4, 5);
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    let mut stallers = Vec::new();
    for i in 0..frames {
        tick.tick().await;
        src.send(&protocol::pixels_keyframe(i, i as u32, 320, 240, &pixels))
            .await
            .unwrap();
        if i == 5 {
            // Plain HTTP to the TLS port: told so, in plain HTTP.
            let mut plain = TcpStream::connect(t.addr).await.unwrap();
            plain
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            within(plain.read_to_string(&mut answer)).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
            assert!(answer.contains("TLS"), "{answer}");
        }
        if i == 8 {
            // Stallers: silent, and mid-handshake (a record head, no more).
            stallers.push(TcpStream::connect(t.addr).await.unwrap());
            let mut mid = TcpStream::connect(t.addr).await.unwrap();
            mid.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
            stallers.push(mid);
        }
    }
    let seqs = within(reader).await.unwrap();
    assert_eq!(
        seqs,
        (0..frames).collect::<Vec<_>>(),
        "every frame, in order"
    );
    eventually("stallers refused and counted", || {
        let s = t.relay.summary();
        s.refused(Refusal::TlsTimeout) >= 2 && s.refused(Refusal::TlsPlaintext) == 1
    })
    .await;
    // The stallers were closed.
    for mut s in stallers {
        let mut buf = [0u8; 64];
        let n = within(s.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    // The stuck TLS receiver is closed as slow (or skipped); the fan-out
    // never waited for it.
    eventually("stuck TLS receiver dealt with", || {
        t.relay
            .channel("hd")
            .is_some_and(|c| c.traffic.slow_closes + c.traffic.slow_skips >= 1)
    })
    .await;
    drop(stuck);
}

fn spawn_relay(port: u16, cert: &Cert) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bitstream-relay"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", cert.cert.to_str().unwrap()])
        .args(["--tls-key", cert.key.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        // The failed reload below logs an error on purpose.
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    let first = make_cert();
    let port = free_port();
    let mut child = spawn_relay(port, &first);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let trust_first = trusting(&first.der);
    let start = Instant::now();
    let mut old_rx = loop {
        match wss(addr, "/stream/cam", &trust_first).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() < DEADLINE => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("relay never came up: {e}"),
        }
    };
    // New files in place of the old ones, then SIGHUP.
    let second = make_cert();
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let trust_second = trusting(&second.der);
    let start = Instant::now();
    let mut src = loop {
        match wss(addr, "/source/cam", &trust_second).await {
            Ok(c) => break c,
            Err(_) if start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the new certificate was never served: {e}"),
        }
    };
    assert!(
        wss(addr, "/stream/cam", &trust_first).await.is_err(),
        "new connections get the new certificate"
    );
    // The connection made before the reload is still open and served.
    let msg = protocol::pixels_keyframe(1, 0, 8, 8, &noise(256, 1));
    src.send(&msg).await.unwrap();
    assert_eq!(&within(old_rx.recv_binary()).await.unwrap()[..], &msg[..]);
    // A bad file on reload keeps the current pair.
    std::fs::write(&first.cert, b"not a certificate").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _rx2 = within(wss(addr, "/stream/cam", &trust_second))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bad_tls_files_are_startup_errors() {
    let bin = env!("CARGO_BIN_EXE_bitstream-relay");
    let good = make_cert();
    let other = make_cert();
    let junk = temp_path("junk.pem");
    std::fs::write(&junk, b"hello").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                good.key.to_str().unwrap(),
            ],
            "cannot read /nonexistent/cert.pem",
        ),
        (
            &[
                "--tls-cert",
                junk.to_str().unwrap(),
                "--tls-key",
                good.key.to_str().unwrap(),
            ],
            "no PEM certificate",
        ),
        (
            &[
                "--tls-cert",
                good.cert.to_str().unwrap(),
                "--tls-key",
                junk.to_str().unwrap(),
            ],
            "no PEM private key",
        ),
        (
            &[
                "--tls-cert",
                good.cert.to_str().unwrap(),
                "--tls-key",
                other.key.to_str().unwrap(),
            ],
            "TLS:",
        ),
    ];
    for (args, expect) in cases {
        let out = Command::new(bin)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // One without the other is a usage error.
    let out = Command::new(bin)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            good.cert.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}
