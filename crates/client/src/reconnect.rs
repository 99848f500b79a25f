//! The one reconnection policy of the client: a [`Link`] holds a connection
//! to one URL and, once it is lost, makes a new one after an exponentially
//! growing, jittered wait ([`Backoff`]). Source, receiver and signaling peer
//! all reconnect through it and decide only what to do on a fresh link.

use std::time::Duration;

use crate::conn::{Client, ClientError, Message};

/// First wait before reconnecting.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff with jitter for reconnection: the n-th wait is a
/// random duration in `[d/2, d]` where `d = min(base * 2^n, max)`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// A backoff starting at `base` and capped at `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED)
            | 1;
        Self {
            base,
            max,
            attempt: 0,
            seed,
        }
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = d / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1))
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A connection to one URL that comes back after it is lost.
pub(crate) struct Link {
    url: String,
    max_message: usize,
    client: Option<Client>,
    backoff: Backoff,
    /// New connections made after the first.
    pub(crate) reconnects: u64,
}

impl Link {
    /// Connects for the first time; this one must succeed.
    pub(crate) async fn connect(url: &str, max_message: usize) -> Result<Self, ClientError> {
        Ok(Self {
            client: Some(Client::connect(url, max_message).await?),
            url: url.to_owned(),
            max_message,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_MAX),
            reconnects: 0,
        })
    }

    /// True while a connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// The URL later reconnections use.
    pub(crate) fn set_url(&mut self, url: String) {
        self.url = url;
    }

    /// Waits until connected, reconnecting with backoff if the link is
    /// down; true if a new connection was made (the caller resynchronizes).
    pub(crate) async fn ensure(&mut self) -> bool {
        let mut fresh = false;
        while self.client.is_none() {
            tokio::time::sleep(self.backoff.next_delay()).await;
            if let Ok(c) = Client::connect(&self.url, self.max_message).await {
                self.client = Some(c);
                self.backoff.reset();
                self.reconnects += 1;
                fresh = true;
            }
        }
        fresh
    }

    /// Sends a binary message; a failure drops the connection.
    pub(crate) async fn send(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        let r = match self.client.as_mut() {
            Some(c) => c.send(msg).await,
            None => Err(not_connected()),
        };
        self.drop_on_error(r)
    }

    /// Sends a text message; a failure drops the connection.
    pub(crate) async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        let r = match self.client.as_mut() {
            Some(c) => c.send_text(text).await,
            None => Err(not_connected()),
        };
        self.drop_on_error(r)
    }

    /// Receives the next message; a failure drops the connection.
    pub(crate) async fn recv(&mut self) -> Result<Message, ClientError> {
        let r = match self.client.as_mut() {
            Some(c) => c.recv().await,
            None => Err(not_connected()),
        };
        self.drop_on_error(r)
    }

    fn drop_on_error<T>(&mut self, r: Result<T, ClientError>) -> Result<T, ClientError> {
        if r.is_err() {
            self.client = None;
        }
        r
    }
}

fn not_connected() -> ClientError {
    ClientError::Io(std::io::ErrorKind::NotConnected.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
