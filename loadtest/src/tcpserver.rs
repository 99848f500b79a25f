//! The plain-TCP fan-out reference (`loadtest tcp-server`): what the kernel
//! and one core can do with no WebSocket and no validation.
//!
//! A client's first line names its role and channel: `S name\n` (source) or
//! `R name\n` (receiver), answered with [`JOINED`] once it has joined the
//! channel (before that answer, a fast source's first frames could reach
//! the channel before a receiver was in it: 2 of 8 whole-message runs lost
//! ~790 of 1,166 frames per receiver to that). A source then sends messages
//! as `u32 LE length + bytes`; each one is read into one shared buffer and
//! handed, prefix included, to every receiver's writer task, which writes
//! it from that same buffer. A receiver's queue holds at most
//! [`QUEUE_FRAMES`] messages; the source waits while one is full, so
//! nothing is dropped and TCP backpressure is the only limit, but one
//! socket that is momentarily full does not idle the others (as writing to
//! each receiver in turn did). Receivers' sockets get the relay's default
//! `TCP_NOTSENT_LOWAT`. Runs on a current-thread runtime, so pinning the
//! process pins all of it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::peer::write_all;

/// The answer to a role line once the connection has joined its channel
/// (the analogue of the WebSocket 101): a client that starts its source
/// after every receiver's answer loses no frame to the join.
pub const JOINED: &[u8] = b"OK\r\n\r\n";

/// Messages queued per receiver before the source waits for it.
const QUEUE_FRAMES: usize = 8;

/// Unsent bytes a receiver's socket holds in the kernel
/// (`TCP_NOTSENT_LOWAT`): the relay's default `--tcp-notsent-lowat`, so the
/// reference pays for the same kernel depth (unbounded, it read 8-10 %
/// slower: 812 / 786 / 795 frames against 923 / 864 / 857 in 10 s runs).
const NOTSENT_LOWAT: libc::c_int = 1024 * 1024;

/// One receiver's queue, by channel name.
type Channels = Rc<RefCell<HashMap<String, Vec<mpsc::Sender<Rc<[u8]>>>>>>;

/// Serves forever on `addr`.
pub fn serve(addr: &str) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("tcp-server listening on {}", listener.local_addr()?);
        let channels: Channels = Rc::default();
        loop {
            let (s, _) = listener.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::task::spawn_local(handle(s, channels.clone()));
        }
    })
}

async fn handle(stream: TcpStream, channels: Channels) {
    let mut br = BufReader::with_capacity(256, stream);
    let mut line = String::new();
    if br.read_line(&mut line).await.is_err() {
        return;
    }
    let (role, name) = line.trim_end().split_once(' ').unwrap_or(("?", ""));
    let name = name.to_owned();
    match role {
        "R" => {
            let s = Rc::new(br.into_inner());
            set_notsent_lowat(&s, NOTSENT_LOWAT);
            let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
            channels
                .borrow_mut()
                .entry(name.clone())
                .or_default()
                .push(tx.clone());
            // Joined once registered; a peer gone before the answer is
            // unregistered below like any other.
            let joined = write_all(&s, JOINED).await.is_ok();
            let writer = joined.then(|| tokio::task::spawn_local(write_queue(s.clone(), rx)));
            if joined {
                hold_until_gone(&s).await;
            }
            if let Some(v) = channels.borrow_mut().get_mut(&name) {
                v.retain(|x| !x.same_channel(&tx));
            }
            if let Some(w) = writer {
                w.abort();
            }
        }
        "S" => {
            if write_all(br.get_ref(), JOINED).await.is_err() {
                return;
            }
            let mut r = br;
            loop {
                let mut len = [0u8; 4];
                if r.read_exact(&mut len).await.is_err() {
                    return;
                }
                let n = u32::from_le_bytes(len) as usize;
                let mut frame = vec![0u8; 4 + n];
                frame[..4].copy_from_slice(&len);
                if r.read_exact(&mut frame[4..]).await.is_err() {
                    return;
                }
                let frame: Rc<[u8]> = frame.into();
                let targets = channels.borrow().get(&name).cloned().unwrap_or_default();
                for t in targets {
                    let _ = t.send(frame.clone()).await;
                }
            }
        }
        _ => {}
    }
}

/// Reads (and drops) what a receiver sends until it goes away (EOF or an
/// error).
async fn hold_until_gone(s: &TcpStream) {
    let mut b = [0u8; 64];
    loop {
        let _ = s.readable().await;
        match s.try_read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Writes a receiver's queued messages in order until its socket fails or
/// its queue closes.
async fn write_queue(s: Rc<TcpStream>, mut rx: mpsc::Receiver<Rc<[u8]>>) {
    while let Some(frame) = rx.recv().await {
        if write_all(&s, &frame).await.is_err() {
            return;
        }
    }
}

/// Bounds the bytes `s` holds unsent in the kernel (best effort: a kernel
/// without the option keeps its default).
fn set_notsent_lowat(s: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor and a c_int option value of the
    // size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
