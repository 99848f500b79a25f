//! A [`DirectPeer`] on a real UDP socket, driven by a tokio task: the I/O
//! half of the WebRTC upgrade for Rust sources and receivers
//! (`docs/webrtc.md`). A source [answers](DirectLink::answer) a receiver's
//! offer (a browser page's or a Rust [`DirectLink::offer`]) and
//! [sends pictures](DirectLink::send_picture); a receiver takes whole
//! messages from [`DirectLink::next_event`].

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::direct_peer::{DirectError, DirectEvent, DirectPeer};

/// Commands queued for the driver task before it drops pictures.
const COMMAND_QUEUE: usize = 64;
/// Events queued for the owner.
const EVENT_QUEUE: usize = 1024;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 2048;

enum Command {
    Picture(Vec<u8>, Option<u16>),
    Answer(String),
    Close,
}

/// One direct peer connection on its own UDP socket. Closed on drop.
pub struct DirectLink {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<DirectEvent>,
    task: JoinHandle<()>,
    local: SocketAddr,
}

impl DirectLink {
    /// Binds a UDP socket on `ip` (a concrete address such as 127.0.0.1:
    /// it becomes the host candidate) and answers `offer_sdp`; returns the
    /// link and the answer SDP.
    pub async fn answer(ip: IpAddr, offer_sdp: &str) -> Result<(Self, String), DirectError> {
        let socket = bind(ip).await?;
        let local = socket
            .local_addr()
            .map_err(|_| DirectError::Candidate(SocketAddr::new(ip, 0)))?;
        let (peer, answer) = DirectPeer::answer(local, offer_sdp, Instant::now())?;
        Ok((Self::spawn(peer, socket, local), answer))
    }

    /// Binds a UDP socket on `ip` and offers the picture channel; returns
    /// the link and the offer SDP. Give it the answer with
    /// [`DirectLink::accept_answer`].
    pub async fn offer(ip: IpAddr) -> Result<(Self, String), DirectError> {
        let socket = bind(ip).await?;
        let local = socket
            .local_addr()
            .map_err(|_| DirectError::Candidate(SocketAddr::new(ip, 0)))?;
        let (peer, offer) = DirectPeer::offer(local, Instant::now())?;
        Ok((Self::spawn(peer, socket, local), offer))
    }

    /// The local UDP address (the host candidate).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Hands the source's answer to an offering link; false if it is gone.
    pub async fn accept_answer(&self, sdp: &str) -> bool {
        self.commands
            .send(Command::Answer(sdp.to_owned()))
            .await
            .is_ok()
    }

    /// Queues one pixel frame for the DataChannel (see
    /// [`DirectPeer::send_picture`]); false if the queue is full or the
    /// link is gone (the receiver then takes the relay's copy).
    pub fn send_picture(&self, message: &[u8], base: Option<u16>) -> bool {
        self.commands
            .try_send(Command::Picture(message.to_vec(), base))
            .is_ok()
    }

    /// The next event; `None` once the link is gone.
    pub async fn next_event(&mut self) -> Option<DirectEvent> {
        self.events.recv().await
    }

    /// Closes the peer connection (the other side sees its channel close).
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::Close).await;
        let _ = (&mut self.task).await;
    }

    fn spawn(peer: DirectPeer, socket: UdpSocket, local: SocketAddr) -> Self {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            if let Err(err) = drive(peer, socket, local, command_rx, &event_tx).await {
                tracing::debug!(%err, "direct peer connection ended");
            }
            let _ = event_tx.send(DirectEvent::Closed).await;
        });
        Self {
            commands,
            events,
            task,
            local,
        }
    }
}

impl Drop for DirectLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind(ip: IpAddr) -> Result<UdpSocket, DirectError> {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(|_| DirectError::Candidate(SocketAddr::new(ip, 0)))
}

/// The driver: sends what the peer has to send, hands out its events, and
/// waits for a datagram, a command or the peer's deadline.
async fn drive(
    mut peer: DirectPeer,
    socket: UdpSocket,
    local: SocketAddr,
    mut commands: mpsc::Receiver<Command>,
    events: &mpsc::Sender<DirectEvent>,
) -> Result<(), DirectError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        for t in peer.take_transmits() {
            if let Err(err) = socket.send_to(&t.bytes, t.to).await {
                tracing::debug!(%err, to = %t.to, "datagram not sent");
            }
        }
        for e in peer.take_events() {
            if e == DirectEvent::Closed {
                return Ok(());
            }
            if events.send(e).await.is_err() {
                return Ok(());
            }
        }
        let deadline = tokio::time::Instant::from_std(peer.deadline());
        tokio::select! {
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => peer.receive(Instant::now(), from, local, &buf[..n])?,
                Err(err) => tracing::debug!(%err, "datagram not received"),
            },
            cmd = commands.recv() => match cmd {
                Some(Command::Picture(msg, base)) => {
                    peer.send_picture(&msg, base)?;
                }
                Some(Command::Answer(sdp)) => peer.accept_answer(&sdp)?,
                Some(Command::Close) | None => {
                    peer.close()?;
                    for t in peer.take_transmits() {
                        let _ = socket.send_to(&t.bytes, t.to).await;
                    }
                    return Ok(());
                }
            },
            _ = tokio::time::sleep_until(deadline) => peer.timeout(Instant::now())?,
        }
    }
}
