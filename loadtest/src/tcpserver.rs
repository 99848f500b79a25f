//! The plain-TCP fan-out reference (`loadtest tcp-server`): what the kernel
//! and one core can do with no WebSocket, no validation and no queues.
//!
//! A client's first line names its role and channel: `S name\n` (source) or
//! `R name\n` (receiver). A source then sends messages as `u32 LE length +
//! bytes`; each one is read into one buffer and written, prefix included,
//! from that same buffer to every receiver of the channel in turn (the
//! source's task awaits each socket: TCP backpressure is the only limit).
//! Runs on a current-thread runtime, so pinning the process pins all of it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::peer::write_all;

type Channels = Rc<RefCell<HashMap<String, Vec<Rc<TcpStream>>>>>;

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
            channels
                .borrow_mut()
                .entry(name.clone())
                .or_default()
                .push(s.clone());
            // Hold the socket until the peer goes away (EOF or error).
            let mut b = [0u8; 64];
            loop {
                let _ = s.readable().await;
                match s.try_read(&mut b) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            let mut ch = channels.borrow_mut();
            if let Some(v) = ch.get_mut(&name) {
                v.retain(|x| !Rc::ptr_eq(x, &s));
            }
        }
        "S" => {
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
                let targets: Vec<Rc<TcpStream>> =
                    channels.borrow().get(&name).cloned().unwrap_or_default();
                for t in targets {
                    let _ = write_all(&t, &frame).await;
                }
            }
        }
        _ => {}
    }
}
