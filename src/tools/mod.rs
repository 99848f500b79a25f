//! The binary's tools besides serving: a test source (`pattern`), a
//! receiver that measures (`watch`), and both with a relay in one process
//! (`demo`).

pub(crate) mod demo;
pub(crate) mod meter;
pub(crate) mod pattern;
pub(crate) mod picture;
pub(crate) mod watch;

/// Signal-state key of the pattern's tick (counts up once a second).
pub(crate) const SIGNAL_TICK: &str = "tick";

/// Signal-state key of the Unix time, in milliseconds, of the source's
/// header timestamp 0: with it, `watch` measures absolute latency.
pub(crate) const SIGNAL_CLOCK_ORIGIN: &str = "clock_origin_unix_ms";
