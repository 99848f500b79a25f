//! The relay's one monotonic clock, in milliseconds since it was first read.
//! It is read at the edges (admission, sessions, the GC thread) and passed
//! into channel and GC logic, so their tests use made-up times, not sleeps.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the relay's clock started.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
