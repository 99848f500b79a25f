//! A WebRTC signaling peer on `/signal/{name}`: text messages it sends go
//! to every other peer of the channel. Reconnects with backoff and jitter.

use crate::conn::{ClientError, Message};
use crate::reconnect::Link;

/// Largest signaling message a peer accepts.
const MAX_MESSAGE: usize = 1 << 20;

/// A signaling peer. See the module docs.
pub struct SignalPeer {
    link: Link,
}

impl SignalPeer {
    /// Connects to a `/signal/{name}` URL.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_any(&[url]).await
    }

    /// Connects to the first of `urls` (the same channel's `/signal/{name}`
    /// on several relays of a cluster) that answers, trying them in order;
    /// after a loss each reconnection goes to the next one, wrapping around.
    pub async fn connect_any<S: AsRef<str>>(urls: &[S]) -> Result<Self, ClientError> {
        Ok(Self {
            link: Link::connect_any(urls, MAX_MESSAGE).await?,
        })
    }

    /// The relay URL in use, or tried next while disconnected.
    pub fn current_url(&self) -> &str {
        self.link.current_url()
    }

    /// Sends a text message (SDP, ICE candidate…) to the other peers.
    pub async fn send(&mut self, text: &str) -> Result<(), ClientError> {
        self.link.ensure().await;
        self.link.send_text(text).await
    }

    /// Receives the next text message from another peer.
    pub async fn recv(&mut self) -> String {
        loop {
            self.link.ensure().await;
            if let Ok(Message::Text(t)) = self.link.recv().await {
                return t;
            }
        }
    }
}
