//! The one reconnection policy of the client: a [`Link`] holds a connection
//! to one of a list of relay URLs and, once it is lost, makes a new one
//! after an exponentially growing, jittered wait ([`Backoff`]). Source,
//! receiver and signaling peer all reconnect through it and decide only
//! what to do on a fresh link.
//!
//! With several URLs (the nodes of a cluster) the first connection tries
//! them in order until one answers; every later attempt, after a loss or a
//! failed attempt, goes to the next one in the list, wrapping around
//! ([`Relays`]), so a dead node costs one backoff step.

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

/// The relay URLs of a [`Link`] and which one is in use (see the module
/// docs): pure bookkeeping, no sockets.
#[derive(Debug, Clone)]
pub(crate) struct Relays {
    urls: Vec<String>,
    at: usize,
}

impl Relays {
    /// The URLs in the order they are tried; at least one.
    pub(crate) fn new<S: AsRef<str>>(urls: &[S]) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::NoUrl);
        }
        Ok(Self {
            urls: urls.iter().map(|u| u.as_ref().to_owned()).collect(),
            at: 0,
        })
    }

    /// The URL in use (or tried next).
    pub(crate) fn current(&self) -> &str {
        &self.urls[self.at]
    }

    /// Moves on to the next URL, wrapping around.
    pub(crate) fn advance(&mut self) {
        self.at = (self.at + 1) % self.urls.len();
    }

    /// How many URLs there are.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }
}

/// `url` with `query` (`key=value`) added to its query string.
pub(crate) fn with_query(url: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}{q}")
        }
        None => url.to_owned(),
    }
}

/// A connection to one of several URLs that comes back after it is lost.
pub(crate) struct Link {
    relays: Relays,
    /// Added to the URL of every later connection (a receiver's `resume=`).
    query: Option<String>,
    max_message: usize,
    client: Option<Client>,
    backoff: Backoff,
    /// New connections made after the first.
    pub(crate) reconnects: u64,
}

impl Link {
    /// Connects for the first time, trying `urls` in order until one
    /// answers; the last error if none does.
    pub(crate) async fn connect_any<S: AsRef<str>>(
        urls: &[S],
        max_message: usize,
    ) -> Result<Self, ClientError> {
        Self::connect_any_with(urls, max_message, None).await
    }

    /// [`Link::connect_any`] with `query` (`key=value`) added to the URL,
    /// this time and every later one until [`Link::set_query`] changes it.
    pub(crate) async fn connect_any_with<S: AsRef<str>>(
        urls: &[S],
        max_message: usize,
        query: Option<String>,
    ) -> Result<Self, ClientError> {
        let mut relays = Relays::new(urls)?;
        let mut last = ClientError::NoUrl;
        for _ in 0..relays.len() {
            let url = with_query(relays.current(), query.as_deref());
            match Client::connect(&url, max_message).await {
                Ok(c) => {
                    return Ok(Self {
                        relays,
                        query,
                        max_message,
                        client: Some(c),
                        backoff: Backoff::new(BACKOFF_BASE, BACKOFF_MAX),
                        reconnects: 0,
                    })
                }
                Err(e) => {
                    last = e;
                    relays.advance();
                }
            }
        }
        Err(last)
    }

    /// True while a connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// The URL in use, or tried next while disconnected (without the query
    /// [`Link::set_query`] adds).
    pub(crate) fn current_url(&self) -> &str {
        self.relays.current()
    }

    /// A query parameter (`key=value`) later connections add to the URL.
    pub(crate) fn set_query(&mut self, query: Option<String>) {
        self.query = query;
    }

    /// Waits until connected, reconnecting with backoff if the link is
    /// down, each attempt to the next URL; true if a new connection was
    /// made (the caller resynchronizes).
    pub(crate) async fn ensure(&mut self) -> bool {
        let mut fresh = false;
        while self.client.is_none() {
            tokio::time::sleep(self.backoff.next_delay()).await;
            let url = with_query(self.relays.current(), self.query.as_deref());
            if let Ok(c) = Client::connect(&url, self.max_message).await {
                self.client = Some(c);
                self.backoff.reset();
                self.reconnects += 1;
                fresh = true;
            } else {
                self.relays.advance();
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
        if r.is_err() && self.client.take().is_some() {
            // The relay in use is gone or broke the connection: the next
            // attempt goes to the next one.
            self.relays.advance();
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

    #[test]
    fn relays_are_tried_in_order_and_wrap_around() {
        let mut r = Relays::new(&["ws://a/stream/x", "ws://b/stream/x", "ws://c/stream/x"])
            .expect("three URLs");
        assert_eq!(r.len(), 3);
        let mut seen = vec![r.current().to_owned()];
        for _ in 0..4 {
            r.advance();
            seen.push(r.current().to_owned());
        }
        assert_eq!(
            seen,
            [
                "ws://a/stream/x",
                "ws://b/stream/x",
                "ws://c/stream/x",
                "ws://a/stream/x",
                "ws://b/stream/x"
            ]
        );
    }

    #[test]
    fn one_relay_stays_and_none_is_an_error() {
        let mut r = Relays::new(&["ws://a/x"]).expect("one URL");
        r.advance();
        assert_eq!(r.current(), "ws://a/x");
        assert!(matches!(Relays::new::<&str>(&[]), Err(ClientError::NoUrl)));
    }

    #[test]
    fn a_query_goes_after_the_urls_own() {
        assert_eq!(with_query("ws://a/stream/x", None), "ws://a/stream/x");
        assert_eq!(
            with_query("ws://a/stream/x", Some("resume=7")),
            "ws://a/stream/x?resume=7"
        );
        assert_eq!(
            with_query("ws://a/stream/x?token=t", Some("resume=7")),
            "ws://a/stream/x?token=t&resume=7"
        );
    }

    /// A port nobody listens on (bound, then closed).
    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        format!("ws://127.0.0.1:{port}/stream/x")
    }

    #[tokio::test]
    async fn the_first_connection_fails_only_when_every_url_does() {
        let urls = [dead_url(), dead_url()];
        match Link::connect_any(&urls, 1 << 20).await {
            Err(ClientError::Io(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("connected to a port nobody listens on"),
        }
        assert!(matches!(
            Link::connect_any::<String>(&[], 1 << 20).await,
            Err(ClientError::NoUrl)
        ));
    }
}
