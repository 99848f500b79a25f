//! Atomic counters for the relay and each channel.
//!
//! Every counter sits on its own cache line (`CachePadded`) so the source
//! task of one channel and the receiver tasks of another never false-share.
//! Nothing on the hot path takes a lock: a frame costs a handful of relaxed
//! atomic adds per channel, never one per receiver.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

/// One padded relaxed counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(CachePadded<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Adds one.
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    /// Subtracts `n` (for gauges).
    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Relaxed);
    }
    /// Current value.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Traffic counters kept per channel; the relay-wide totals are the sum over
/// live channels plus what retired (garbage-collected) channels counted.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// Valid frames received from sources.
    pub(crate) frames_in: Counter,
    /// Bytes of valid frames received from sources (protocol message bytes).
    pub(crate) bytes_in: Counter,
    /// Pictures among `frames_in` (pixels, deltas, keyframes, neural
    /// frames): what a frame rate counts, signal and audio left out.
    pub(crate) pictures_in: Counter,
    /// Frame deliveries to receivers (one per frame per receiver).
    pub(crate) frames_out: Counter,
    /// Bytes delivered to receivers (protocol message bytes).
    pub(crate) bytes_out: Counter,
    /// Inputs forwarded from receivers to sources.
    pub(crate) inputs: Counter,
    /// Messages refused by validation (never forwarded or cached).
    pub(crate) invalid: Counter,
    /// Messages dropped for a peer (queue full, no source, rate limit).
    pub(crate) dropped: Counter,
    /// Full catch-ups sent (joins and resynchronizations).
    pub(crate) catchups: Counter,
    /// Receivers resumed from the replay ring (`?resume=`) instead of a
    /// full catch-up.
    pub(crate) resumes: Counter,
    /// Slow receivers skipped forward (queue overflow → resync).
    pub(crate) slow_skips: Counter,
    /// Slow receivers closed.
    pub(crate) slow_closes: Counter,
    /// Signaling text messages broadcast.
    pub(crate) signal_messages: Counter,
    /// Frame deliveries the socket did not take at once (queued for the
    /// receiver's task to finish).
    pub(crate) queued: Counter,
    /// Times the channel's cached state was dropped to stay within
    /// `--max-cache-memory`.
    pub(crate) cache_sheds: Counter,
    /// Times the source's next message waited for its receivers (more
    /// than half of them held queued frames; see `--pace-wait-ms`).
    pub(crate) source_waits: Counter,
    /// Microseconds the source's messages waited so, in all.
    pub(crate) source_wait_us: Counter,
}

/// A plain copy of a channel's (or the relay's) traffic counters at one
/// instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrafficSnapshot {
    /// Valid frames received from sources.
    pub frames_in: u64,
    /// Bytes of valid frames received from sources (protocol message bytes).
    pub bytes_in: u64,
    /// Pictures among `frames_in` (pixels, deltas, keyframes, neural
    /// frames): what a frame rate counts, signal and audio left out.
    pub pictures_in: u64,
    /// Frame deliveries to receivers (one per frame per receiver).
    pub frames_out: u64,
    /// Bytes delivered to receivers (protocol message bytes).
    pub bytes_out: u64,
    /// Inputs forwarded from receivers to sources.
    pub inputs: u64,
    /// Messages refused by validation (never forwarded or cached).
    pub invalid: u64,
    /// Messages dropped for a peer (queue full, no source, rate limit).
    pub dropped: u64,
    /// Full catch-ups sent (joins and resynchronizations).
    pub catchups: u64,
    /// Receivers resumed from the replay ring (`?resume=`) instead of a
    /// full catch-up.
    pub resumes: u64,
    /// Slow receivers skipped forward (queue overflow → resync).
    pub slow_skips: u64,
    /// Slow receivers closed.
    pub slow_closes: u64,
    /// Signaling text messages broadcast.
    pub signal_messages: u64,
    /// Frame deliveries the socket did not take at once (queued for the
    /// receiver's task to finish).
    pub queued: u64,
    /// Times the channel's cached state was dropped to stay within
    /// `--max-cache-memory`.
    pub cache_sheds: u64,
    /// Times the source's next message waited for its receivers.
    pub source_waits: u64,
    /// Microseconds the source's messages waited for their receivers.
    pub source_wait_us: u64,
}

impl Traffic {
    /// Reads every counter.
    pub(crate) fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            frames_in: self.frames_in.get(),
            bytes_in: self.bytes_in.get(),
            pictures_in: self.pictures_in.get(),
            frames_out: self.frames_out.get(),
            bytes_out: self.bytes_out.get(),
            inputs: self.inputs.get(),
            invalid: self.invalid.get(),
            dropped: self.dropped.get(),
            catchups: self.catchups.get(),
            resumes: self.resumes.get(),
            slow_skips: self.slow_skips.get(),
            slow_closes: self.slow_closes.get(),
            signal_messages: self.signal_messages.get(),
            queued: self.queued.get(),
            cache_sheds: self.cache_sheds.get(),
            source_waits: self.source_waits.get(),
            source_wait_us: self.source_wait_us.get(),
        }
    }

    /// Adds a snapshot into these counters (used when a channel retires).
    pub(crate) fn absorb(&self, s: &TrafficSnapshot) {
        self.frames_in.add(s.frames_in);
        self.bytes_in.add(s.bytes_in);
        self.pictures_in.add(s.pictures_in);
        self.frames_out.add(s.frames_out);
        self.bytes_out.add(s.bytes_out);
        self.inputs.add(s.inputs);
        self.invalid.add(s.invalid);
        self.dropped.add(s.dropped);
        self.catchups.add(s.catchups);
        self.resumes.add(s.resumes);
        self.slow_skips.add(s.slow_skips);
        self.slow_closes.add(s.slow_closes);
        self.signal_messages.add(s.signal_messages);
        self.queued.add(s.queued);
        self.cache_sheds.add(s.cache_sheds);
        self.source_waits.add(s.source_waits);
        self.source_wait_us.add(s.source_wait_us);
    }
}

impl std::ops::AddAssign for TrafficSnapshot {
    fn add_assign(&mut self, o: Self) {
        self.frames_in += o.frames_in;
        self.bytes_in += o.bytes_in;
        self.pictures_in += o.pictures_in;
        self.frames_out += o.frames_out;
        self.bytes_out += o.bytes_out;
        self.inputs += o.inputs;
        self.invalid += o.invalid;
        self.dropped += o.dropped;
        self.catchups += o.catchups;
        self.slow_skips += o.slow_skips;
        self.slow_closes += o.slow_closes;
        self.signal_messages += o.signal_messages;
        self.queued += o.queued;
        self.cache_sheds += o.cache_sheds;
        self.source_waits += o.source_waits;
        self.source_wait_us += o.source_wait_us;
    }
}

/// Why a connection was refused; indexes the relay's refusal counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Channel name breaks the PROTOCOL.md rule.
    BadName = 0,
    /// Unknown path or not a WebSocket upgrade.
    BadRequest = 1,
    /// The channel already has a source.
    SourceTaken = 2,
    /// `--max-receivers` reached on the channel.
    ReceiverLimit = 3,
    /// `--max-channels` reached.
    ChannelLimit = 4,
    /// `--max-connections` reached.
    ConnectionLimit = 5,
    /// Handshake not completed within `--handshake-timeout`.
    HandshakeTimeout = 6,
    /// The relay is shutting down.
    ShuttingDown = 7,
    /// `--max-connections-per-ip` reached.
    PerIpLimit = 8,
    /// `--max-channels-per-ip` reached.
    ChannelsPerIpLimit = 9,
    /// Tokens are required and the request carried none (401).
    TokenMissing = 10,
    /// A malformed or badly signed token (401).
    TokenInvalid = 11,
    /// An expired token (401).
    TokenExpired = 12,
    /// A valid token for another channel or role (403).
    TokenForbidden = 13,
    /// An `Origin` not in `--allowed-origins` (403).
    OriginForbidden = 14,
    /// Plain text (not a TLS handshake) on the TLS port (400).
    TlsPlaintext = 15,
    /// A TLS handshake that failed.
    TlsFailed = 16,
    /// A TLS handshake not completed within `--handshake-timeout-ms`.
    TlsTimeout = 17,
    /// Cluster mode: a source's claim could not be checked (NATS unreachable).
    Backplane = 18,
}

impl Refusal {
    /// Every refusal reason, in index order.
    pub const ALL: [Refusal; 19] = [
        Refusal::BadName,
        Refusal::BadRequest,
        Refusal::SourceTaken,
        Refusal::ReceiverLimit,
        Refusal::ChannelLimit,
        Refusal::ConnectionLimit,
        Refusal::HandshakeTimeout,
        Refusal::ShuttingDown,
        Refusal::PerIpLimit,
        Refusal::ChannelsPerIpLimit,
        Refusal::TokenMissing,
        Refusal::TokenInvalid,
        Refusal::TokenExpired,
        Refusal::TokenForbidden,
        Refusal::OriginForbidden,
        Refusal::TlsPlaintext,
        Refusal::TlsFailed,
        Refusal::TlsTimeout,
        Refusal::Backplane,
    ];

    /// The HTTP status a refusal of this kind is answered with (a few
    /// bad requests answer a more precise one: see `Refused::with_status`).
    pub(crate) fn status(self) -> u16 {
        match self {
            Refusal::BadName | Refusal::BadRequest | Refusal::TlsPlaintext => 400,
            Refusal::TlsFailed => 400,
            Refusal::TokenMissing | Refusal::TokenInvalid | Refusal::TokenExpired => 401,
            Refusal::TokenForbidden | Refusal::OriginForbidden => 403,
            Refusal::HandshakeTimeout | Refusal::TlsTimeout => 408,
            Refusal::SourceTaken => 409,
            Refusal::ReceiverLimit
            | Refusal::ChannelLimit
            | Refusal::ConnectionLimit
            | Refusal::ShuttingDown
            | Refusal::PerIpLimit
            | Refusal::ChannelsPerIpLimit
            | Refusal::Backplane => 503,
        }
    }

    /// What a client refused this way is told, when nothing more precise
    /// is known.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Refusal::BadName => "invalid channel name",
            Refusal::BadRequest => "bad request",
            Refusal::SourceTaken => "channel already has a source",
            Refusal::ReceiverLimit => "receiver limit reached on this channel",
            Refusal::ChannelLimit => "channel limit reached",
            Refusal::ConnectionLimit => "connection limit reached",
            Refusal::HandshakeTimeout => "handshake timed out",
            Refusal::ShuttingDown => "relay shutting down",
            Refusal::PerIpLimit => "connection limit for your address reached",
            Refusal::ChannelsPerIpLimit => "channel limit for your address reached",
            Refusal::TokenMissing => "token required",
            Refusal::TokenInvalid => "invalid token",
            Refusal::TokenExpired => "token expired",
            Refusal::TokenForbidden => "token does not allow this",
            Refusal::OriginForbidden => "origin not allowed",
            Refusal::TlsPlaintext => "this port speaks TLS",
            Refusal::TlsFailed => "TLS handshake failed",
            Refusal::TlsTimeout => "TLS handshake timed out",
            Refusal::Backplane => "cluster backplane unavailable",
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadName => "bad_name",
            Refusal::BadRequest => "bad_request",
            Refusal::SourceTaken => "source_taken",
            Refusal::ReceiverLimit => "receiver_limit",
            Refusal::ChannelLimit => "channel_limit",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::PerIpLimit => "per_ip_limit",
            Refusal::ChannelsPerIpLimit => "channels_per_ip_limit",
            Refusal::TokenMissing => "token_missing",
            Refusal::TokenInvalid => "token_invalid",
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenForbidden => "token_forbidden",
            Refusal::OriginForbidden => "origin_forbidden",
            Refusal::TlsPlaintext => "tls_plaintext",
            Refusal::TlsFailed => "tls_failed",
            Refusal::TlsTimeout => "tls_timeout",
            Refusal::Backplane => "backplane_unavailable",
        }
    }
}

/// Relay-wide connection counters.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    /// TCP connections accepted.
    pub(crate) accepted: Counter,
    /// Connections open now (all roles, including handshakes in progress).
    pub(crate) open: Counter,
    /// Sources connected now.
    pub(crate) sources: Counter,
    /// Receivers connected now.
    pub(crate) receivers: Counter,
    /// Signaling peers connected now.
    pub(crate) signal_peers: Counter,
    /// Server-Sent Events clients of signal state connected now.
    pub(crate) sse_clients: Counter,
    /// Dashboards (`/stats/events` streams) connected now; each is one of
    /// the `open` connections.
    pub(crate) dashboards: Counter,
    /// Peers dropped for not answering pings.
    pub(crate) keepalive_drops: Counter,
    /// Peers closed for sending an over-size message.
    pub(crate) too_big: Counter,
    /// Refusals by [`Refusal`] index.
    pub(crate) refused: [Counter; Refusal::ALL.len()],
}

impl Connections {
    /// Counts one refusal.
    pub(crate) fn refuse(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }
}

/// The relay process's resident memory (RSS) now, in bytes, from
/// `/proc/self/statm`; `None` where that is unreadable. Exported beside the
/// budget's own figure (`--max-memory`), so the gap between what the relay
/// charges and what the system counts (allocator caches, pages freed
/// lazily, read buffers) is visible.
pub(crate) fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.checked_mul(u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fresh pages from the kernel (not the allocator, which may hand back
    /// pages another test just freed and that are still resident) are
    /// counted once touched.
    #[test]
    fn the_process_rss_is_read_and_plausible() {
        const LEN: usize = 64 << 20;
        let rss = process_rss_bytes().expect("/proc/self/statm");
        // SAFETY: a private anonymous mapping, written only within its
        // length and unmapped below; no other code sees it.
        let after = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            std::ptr::write_bytes(p.cast::<u8>(), 1, LEN);
            let after = process_rss_bytes().expect("/proc/self/statm");
            libc::munmap(p, LEN);
            after
        };
        assert!(rss > 1 << 20, "{rss}");
        assert!(
            after >= rss + (48 << 20),
            "64 MiB touched: {rss} -> {after}"
        );
    }

    #[test]
    fn absorb_adds_snapshots() {
        let a = Traffic::default();
        a.frames_in.add(3);
        a.bytes_out.add(10);
        let b = Traffic::default();
        b.absorb(&a.snapshot());
        b.absorb(&a.snapshot());
        assert_eq!(b.snapshot().frames_in, 6);
        assert_eq!(b.snapshot().bytes_out, 20);
        let mut s = a.snapshot();
        s += b.snapshot();
        assert_eq!(s.frames_in, 9);
    }

    #[test]
    fn refusals_count_by_reason() {
        let c = Connections::default();
        c.refuse(Refusal::BadName);
        c.refuse(Refusal::BadName);
        c.refuse(Refusal::PerIpLimit);
        assert_eq!(c.refused[Refusal::BadName as usize].get(), 2);
        assert_eq!(c.refused.iter().map(Counter::get).sum::<u64>(), 3);
        assert_eq!(Refusal::ALL[8].label(), "per_ip_limit");
        for (i, why) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i, "ALL is in index order");
        }
    }
}
