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

/// A random 64-bit number: the standard hasher's per-process random keys
/// over the wall clock's nanoseconds (ids and epochs, not cryptography).
pub(crate) fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one(nanos)
}
