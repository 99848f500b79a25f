//! Input rate limits: a token bucket per receiver (pure: the caller passes
//! the time, so it is deterministic to test), and per client address for
//! `POST /input`, which has no session to hold one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::relay::net::proxy::ip_key;

/// Refills `rate` tokens per second up to `burst`; each input takes one.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    window_start: Instant,
    dropped_in_window: u64,
}

/// What the bucket says about one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forward it.
    Allow,
    /// Drop it (over the rate).
    Drop,
    /// Drop it, and the sender has exceeded the flood threshold: close it.
    Abuse,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_sec: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate_per_sec as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
            window_start: now,
            dropped_in_window: 0,
        }
    }

    /// When a token was last asked for.
    pub(crate) fn last_used(&self) -> Instant {
        self.last
    }

    /// Takes a token for one input at `now`; `flood_drops` is how many drops
    /// within one second make the sender an abuser.
    pub(crate) fn take(&mut self, now: Instant, flood_drops: u64) -> Verdict {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.dropped_in_window = 0;
        }
        self.dropped_in_window += 1;
        if self.dropped_in_window > flood_drops {
            Verdict::Abuse
        } else {
            Verdict::Drop
        }
    }
}

/// Buckets idle this long are forgotten when the map is pruned (by then a
/// bucket is full again, so forgetting it changes nothing).
const IDLE: Duration = Duration::from_secs(60);

/// Buckets at which the map is pruned of idle ones.
const PRUNE_AT: usize = 4096;

/// Per-address token buckets for `POST /input`.
#[derive(Debug, Default)]
pub(crate) struct InputBuckets {
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
    last_prune: Mutex<Option<Instant>>,
}

impl InputBuckets {
    /// Takes a token for one input from `ip` at `now`: true if allowed.
    pub(crate) fn take(&self, ip: IpAddr, rate: u64, burst: u64, now: Instant) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= PRUNE_AT {
            let mut last = self.last_prune.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
                map.retain(|_, b| now.saturating_duration_since(b.last_used()) < IDLE);
                *last = Some(now);
            }
        }
        let bucket = map
            .entry(ip_key(ip))
            .or_insert_with(|| TokenBucket::new(rate, burst, now));
        // No flood closing: there is no connection to close.
        bucket.take(now, u64::MAX) == Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 10, t0);
        let allowed = (0..50)
            .filter(|_| b.take(t0, 1000) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 10);
        // 0.1 s later: 10 more tokens.
        let t1 = t0 + Duration::from_millis(100);
        let allowed = (0..50)
            .filter(|_| b.take(t1, 1000) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn flags_a_flood() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 1, t0);
        assert_eq!(b.take(t0, 5), Verdict::Allow);
        for _ in 0..5 {
            assert_eq!(b.take(t0, 5), Verdict::Drop);
        }
        assert_eq!(b.take(t0, 5), Verdict::Abuse);
        // A new window forgives.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.take(t1, 5), Verdict::Allow);
        assert_eq!(b.take(t1, 5), Verdict::Drop);
    }

    #[test]
    fn buckets_are_per_address() {
        let b = InputBuckets::default();
        let now = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let c: IpAddr = [10, 0, 0, 2].into();
        assert!(b.take(a, 1, 2, now));
        assert!(b.take(a, 1, 2, now));
        assert!(!b.take(a, 1, 2, now));
        assert!(b.take(c, 1, 2, now));
        assert!(b.take(a, 1, 2, now + Duration::from_secs(1)));
    }
}
