//! What the relay spends and counts: the memory budget ([`budget`]), the
//! low-priority lane for heavy work ([`bulk`]), the atomic counters
//! ([`stats`]) and the clock ([`clock`]).

pub(crate) mod budget;
pub(crate) mod bulk;
pub(crate) mod clock;
pub(crate) mod stats;
