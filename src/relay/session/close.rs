//! Ending a connection cleanly: the close frame after whatever is queued,
//! a bounded flush, and a half-close that waits for the peer's close.

use std::time::Duration;

use tokio::time::Instant;

use crate::relay::channel::peer::Peer;
use crate::relay::egress::Drain;
use crate::relay::net::conn::Conn;
use crate::relay::session::ingress::Ingress;

/// How long a closing peer gets to take its close frame and answer it.
const CLOSE_LINGER: Duration = Duration::from_millis(1000);

/// Sends `close` (after a partly written frame and queued control frames,
/// ahead of and instead of queued bulk frames), flushes within the linger time, and
/// waits for the peer to close its side.
pub(super) async fn close_gracefully(
    peer: &Peer,
    reader: &mut Ingress,
    close: Option<bytes::Bytes>,
) {
    let stream = peer.egress.stream().clone();
    if let Some(frame) = close {
        // On the control lane: ahead of queued bulk, which it drops.
        peer.egress.send_control(&frame, true);
    }
    let deadline = Instant::now() + CLOSE_LINGER;
    while peer.egress.drain() == Drain::Pending {
        tokio::select! {
            r = stream.writable() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
    // Half-close, then read and discard until the peer closes too: closing
    // a socket with unread input makes the kernel send a reset, which can
    // overtake the close frame still in flight (e.g. after garbage input).
    stream.shutdown_write();
    reader.discard();
    loop {
        tokio::select! {
            r = stream.readable() => {
                if r.is_err() || discard_input(&stream) {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Reads and drops whatever the socket has; true once the peer has closed
/// (or the socket failed). A plain function, so its buffer lives on the
/// stack and not in every session's future.
fn discard_input(stream: &Conn) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match stream.try_read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}
