//! The relay's one monotonic clock, in milliseconds since it was first read.
//! It is read at the edges (admission, sessions, the GC thread) and passed
//! into channel and GC logic, so their tests use made-up times, not sleeps.
//!
//! It is tokio's clock, the one sessions, timers and the cluster follower
//! read: on a paused test runtime (`start_paused`, `time::advance`) every
//! part of the relay moves together. Off a runtime (the GC thread) and in
//! release builds it is the monotonic system clock.

use std::sync::OnceLock;

use tokio::time::Instant;

/// Milliseconds since the relay's clock started.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let now = Instant::now();
    let epoch = *EPOCH.get_or_init(|| now);
    now.saturating_duration_since(epoch).as_millis() as u64
}

/// A random 64-bit number: the standard hasher's per-process random keys
/// over the wall clock's nanoseconds (ids and epochs, not cryptography).
pub(crate) fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A paused runtime's `advance` moves the relay's clock as it moves
    /// tokio's timers (a test on a paused clock moves both).
    #[tokio::test(start_paused = true)]
    async fn the_clock_is_tokios() {
        let before = now_ms();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = now_ms();
        assert!(after >= before + 3_600_000, "{before} -> {after}");
    }
}
