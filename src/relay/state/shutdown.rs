//! The relay's shutdown, in one place: a flag every task can read cheaply,
//! a wait for its start (sessions, SSE streams, the server), and a wait for
//! the last session to end, woken by that session's guard as it drops
//! rather than by polling counters.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    begun: AtomicBool,
    /// Woken once, when shutdown begins.
    started: Notify,
    /// WebSocket sessions running now.
    sessions: AtomicUsize,
    /// Woken when the last session ends.
    ended: Notify,
}

impl Shutdown {
    /// Begins shutting down: every waiter on [`Shutdown::begun`] and every
    /// [`Shutdown::notified`] wakes.
    pub(crate) fn begin(&self) {
        self.begun.store(true, Ordering::SeqCst);
        self.started.notify_waiters();
    }

    /// True once shutdown has begun.
    pub(crate) fn is_begun(&self) -> bool {
        self.begun.load(Ordering::SeqCst)
    }

    /// A waiter woken when shutdown begins, for hand-written futures (one
    /// pinned `Notified`). Enable it (or poll it) before checking
    /// [`Shutdown::is_begun`], so a shutdown between the two is not missed.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.started.notified()
    }

    /// Resolves once shutdown has begun, including when it began before.
    pub(crate) async fn begun(&self) {
        let mut wait = pin!(self.started.notified());
        wait.as_mut().enable();
        if !self.is_begun() {
            wait.await;
        }
    }

    /// Counts a session as running until [`Shutdown::session_ended`].
    pub(crate) fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
    }

    /// A session ended (its guard dropped); the last one wakes
    /// [`Shutdown::drained`].
    pub(crate) fn session_ended(&self) {
        if self.sessions.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.ended.notify_waiters();
        }
    }

    /// Sessions running now.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Resolves when no session is running (at once if none is).
    pub(crate) async fn drained(&self) {
        loop {
            let mut wait = pin!(self.ended.notified());
            wait.as_mut().enable();
            if self.sessions() == 0 {
                return;
            }
            wait.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn begun_resolves_for_waiters_before_and_after() {
        let s = Arc::new(Shutdown::default());
        let early = tokio::spawn({
            let s = s.clone();
            async move { s.begun().await }
        });
        tokio::task::yield_now().await;
        assert!(!s.is_begun());
        s.begin();
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("an early waiter wakes")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.begun())
            .await
            .expect("a late waiter does not wait");
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_session_only() {
        let s = Arc::new(Shutdown::default());
        s.drained().await;
        s.session_started();
        s.session_started();
        let wait = tokio::spawn({
            let s = s.clone();
            async move { s.drained().await }
        });
        s.session_ended();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!wait.is_finished(), "one session is still running");
        s.session_ended();
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the last session's end wakes the wait")
            .unwrap();
        assert_eq!(s.sessions(), 0);
    }
}
