//! A cluster follower's rules, without I/O: which frames of the followed
//! stream reach local receivers, and when a catch-up must be fetched from
//! the source's node. [`super::downlink`] feeds it the heads of the
//! messages it receives, fetch results and the time (milliseconds of the
//! relay's clock), and does what it answers.
//!
//! Local receivers hold a stream: the frames of one source session (an
//! epoch) up to some number. Rules:
//!
//! - Order: a frame of that stream is published only if it is the next
//!   one (its number is one past the last given); an older one (a
//!   duplicate, or one the catch-up included) is skipped.
//! - Gaps: a newer one means frames were lost (a fragment, a full queue):
//!   nothing more is published until a fetched catch-up has replaced what
//!   local receivers hold, so nobody applies a broken delta chain. Frames
//!   that arrive meanwhile are skipped.
//! - Trailing heartbeat: a heartbeat of the stream's epoch whose last
//!   number has not been given yet shows frames lost at the end of a burst
//!   (no next frame will show the gap): it is repaired the same way. A
//!   heartbeat of another epoch, or while not in step (no catch-up yet, or
//!   no source found), asks for a catch-up too.
//! - New epoch: a frame of another epoch numbered 1 is a new source
//!   session followed from its start: local receivers get a new stream
//!   ([`FrameAction::NewStream`]) and it is published. One of another
//!   epoch seen mid-way is joined with a catch-up.
//! - Catch-up: one is due at the start, and after a gap, a trailing
//!   heartbeat or an incomplete fragment set dropped. A fetched one (the
//!   state up to frame `seq` of `epoch`) sets the stream; the next frame
//!   published is `seq + 1`. When no node has the source, the follower
//!   waits for the first frame of a new session; any other sign that a
//!   source exists (a heartbeat, a frame of a session mid-way, that of
//!   the stream held included) asks for a catch-up again.
//! - Backoff: a failed fetch is retried after 100 ms, then 200 ms, 400 ms
//!   and so on, at most 2 s apart; a successful one resets the wait to
//!   100 ms.
//! - Local source: while the channel has a source on this node, frames
//!   and heartbeats from the cluster are ignored.

/// First wait after a failed fetch, in milliseconds.
pub(super) const BACKOFF_MIN_MS: u64 = 100;

/// Longest wait between failed fetches, in milliseconds.
pub(super) const BACKOFF_MAX_MS: u64 = 2_000;

/// Where local receivers stand with the followed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// They hold the stream up to and including frame `last` of the
    /// follower's epoch: frame `last + 1` is the next to publish.
    Synced {
        /// The last frame number given to local receivers.
        last: u64,
    },
    /// What they hold is stale or broken: a catch-up must be fetched.
    Fetch,
    /// The last fetch found no source: wait for a new session (or a
    /// sign that a source exists).
    AwaitSource,
}

/// A follower's state (see the module docs).
#[derive(Debug)]
pub(super) struct Follower {
    /// The source session local receivers' stream comes from, once known.
    epoch: Option<u64>,
    /// Whether local receivers are in step with it.
    sync: Sync,
    /// No fetch before this time (ms), after a failed one.
    retry_at: u64,
    /// The wait after the next failed fetch, in milliseconds.
    backoff_ms: u64,
}

/// What the driver does with a whole live frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameAction {
    /// Publish it to local receivers.
    Publish,
    /// Begin a new stream for local receivers (`channel.begin_stream()`),
    /// then publish it: a new source session, followed from its start.
    NewStream,
    /// Drop it: stale, a duplicate, a local source, or a catch-up awaited.
    Skip,
    /// Drop it: a stream seen mid-way (or while no source was found); a
    /// catch-up is now due.
    Fetch,
    /// Drop it: frames were lost before it; a catch-up is now due.
    Gap {
        /// The number that was expected.
        expected: u64,
    },
}

/// What a heartbeat means to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeartbeatAction {
    /// Nothing: local receivers are in step, or a catch-up is awaited.
    Ignore,
    /// A catch-up is now due (another epoch, or not in step).
    Fetch,
    /// Frames were lost at the end of a burst; a catch-up is now due.
    Trailing {
        /// The number that was expected next.
        expected: u64,
    },
}

impl Follower {
    /// A follower that knows nothing yet: a catch-up is due at once.
    pub(super) fn new() -> Self {
        Follower {
            epoch: None,
            sync: Sync::Fetch,
            retry_at: 0,
            backoff_ms: BACKOFF_MIN_MS,
        }
    }

    /// True when the driver should fetch a catch-up at `now` (ms).
    pub(super) fn fetch_due(&self, now: u64) -> bool {
        self.sync == Sync::Fetch && now >= self.retry_at
    }

    /// A whole live frame numbered `seq` of session `epoch` came;
    /// `has_local_source` tells whether the channel has a source here.
    pub(super) fn on_frame(&mut self, epoch: u64, seq: u64, has_local_source: bool) -> FrameAction {
        if has_local_source {
            return FrameAction::Skip;
        }
        if self.epoch != Some(epoch) {
            if seq == 1 {
                self.epoch = Some(epoch);
                self.sync = Sync::Synced { last: 1 };
                return FrameAction::NewStream;
            }
            self.sync = Sync::Fetch;
            return FrameAction::Fetch;
        }
        let last = match self.sync {
            Sync::Synced { last } => last,
            Sync::Fetch => return FrameAction::Skip,
            // The source is there after all (its responder was briefly
            // away): without a catch-up nothing of it would be published
            // until it idles long enough to send a heartbeat.
            Sync::AwaitSource => {
                self.sync = Sync::Fetch;
                return FrameAction::Fetch;
            }
        };
        if seq <= last {
            return FrameAction::Skip;
        }
        match last.checked_add(1) {
            Some(next) if next == seq => {
                self.sync = Sync::Synced { last: seq };
                FrameAction::Publish
            }
            _ => {
                self.sync = Sync::Fetch;
                FrameAction::Gap {
                    expected: last.saturating_add(1),
                }
            }
        }
    }

    /// A heartbeat of session `epoch` came, `last` being the number of
    /// the last frame its source handled.
    pub(super) fn on_heartbeat(
        &mut self,
        epoch: u64,
        last: u64,
        has_local_source: bool,
    ) -> HeartbeatAction {
        if self.sync == Sync::Fetch || has_local_source {
            return HeartbeatAction::Ignore;
        }
        match self.sync {
            Sync::Synced { last: given } if self.epoch == Some(epoch) => {
                if last > given {
                    self.sync = Sync::Fetch;
                    HeartbeatAction::Trailing {
                        expected: given.saturating_add(1),
                    }
                } else {
                    HeartbeatAction::Ignore
                }
            }
            _ => {
                self.sync = Sync::Fetch;
                HeartbeatAction::Fetch
            }
        }
    }

    /// A catch-up was fetched, the state up to frame `seq` of `epoch`,
    /// and given to local receivers (after `channel.clear_cache()`).
    pub(super) fn on_fetched(&mut self, epoch: u64, seq: u64) {
        self.epoch = Some(epoch);
        self.sync = Sync::Synced { last: seq };
        self.backoff_ms = BACKOFF_MIN_MS;
    }

    /// No node had the channel's source: wait for a new session's first
    /// frame (or a heartbeat or frame mid-way, which shows a source
    /// exists).
    pub(super) fn on_no_source(&mut self) {
        self.sync = Sync::AwaitSource;
    }

    /// A fetch failed at `now` (ms): retry after the backoff, doubled for
    /// the next time up to [`BACKOFF_MAX_MS`].
    pub(super) fn on_fetch_failed(&mut self, now: u64) {
        self.retry_at = now.saturating_add(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
    }

    /// An incomplete fragment set was dropped: a frame was lost.
    pub(super) fn on_incomplete_dropped(&mut self) {
        self.sync = Sync::Fetch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A follower in step with frame `seq` of `epoch`.
    fn synced(epoch: u64, seq: u64) -> Follower {
        let mut f = Follower::new();
        f.on_fetched(epoch, seq);
        f
    }

    /// A catch-up is due at once, and frames before it are not published,
    /// except the first frame of a session, which starts a new stream.
    #[test]
    fn a_new_follower_fetches_first() {
        let mut f = Follower::new();
        assert!(f.fetch_due(0));
        assert_eq!(f.on_frame(7, 5, false), FrameAction::Fetch);
        assert_eq!(f.on_frame(7, 6, false), FrameAction::Fetch);
        assert!(f.fetch_due(0));
        assert_eq!(f.on_frame(8, 1, false), FrameAction::NewStream);
        assert!(!f.fetch_due(0));
        assert_eq!(f.on_frame(8, 2, false), FrameAction::Publish);
    }

    /// After a catch-up up to `seq`, frames `seq + 1`, `seq + 2`... are
    /// published once each; older ones and duplicates are skipped.
    #[test]
    fn frames_after_a_catch_up_are_published_in_order_once() {
        let mut f = synced(7, 10);
        assert!(!f.fetch_due(0));
        assert_eq!(f.on_frame(7, 9, false), FrameAction::Skip);
        assert_eq!(f.on_frame(7, 10, false), FrameAction::Skip);
        assert_eq!(f.on_frame(7, 11, false), FrameAction::Publish);
        assert_eq!(f.on_frame(7, 11, false), FrameAction::Skip);
        assert_eq!(f.on_frame(7, 12, false), FrameAction::Publish);
        assert_eq!(f.on_frame(7, 1, false), FrameAction::Skip);
    }

    /// A gap stops publishing until a catch-up was fetched, late frames
    /// included.
    #[test]
    fn a_gap_stops_publishing_until_a_catch_up() {
        let mut f = synced(7, 10);
        assert_eq!(f.on_frame(7, 12, false), FrameAction::Gap { expected: 11 });
        assert!(f.fetch_due(0));
        assert_eq!(f.on_frame(7, 11, false), FrameAction::Skip);
        assert_eq!(f.on_frame(7, 13, false), FrameAction::Skip);
        f.on_fetched(7, 13);
        assert_eq!(f.on_frame(7, 13, false), FrameAction::Skip);
        assert_eq!(f.on_frame(7, 14, false), FrameAction::Publish);
    }

    /// A new session is followed from its first frame; one seen mid-way
    /// is joined with a catch-up.
    #[test]
    fn a_new_epoch_from_1_is_a_new_stream_mid_way_a_catch_up() {
        let mut f = synced(7, 10);
        assert_eq!(f.on_frame(9, 1, false), FrameAction::NewStream);
        assert_eq!(f.on_frame(9, 2, false), FrameAction::Publish);
        assert_eq!(f.on_frame(7, 11, false), FrameAction::Fetch);
        assert!(f.fetch_due(0));
        // A pending catch-up is not needed when a session starts.
        assert_eq!(f.on_frame(7, 1, false), FrameAction::NewStream);
        assert!(!f.fetch_due(0));
        // The first frame of the current session again is a duplicate.
        assert_eq!(f.on_frame(7, 1, false), FrameAction::Skip);
    }

    /// A heartbeat whose last frame was given is nothing; one showing
    /// frames not given yet is a trailing loss; one of another epoch asks
    /// for a catch-up.
    #[test]
    fn heartbeats_show_trailing_losses_and_other_epochs() {
        let mut f = synced(7, 10);
        assert_eq!(f.on_heartbeat(7, 10, false), HeartbeatAction::Ignore);
        assert_eq!(f.on_heartbeat(7, 9, false), HeartbeatAction::Ignore);
        assert_eq!(
            f.on_heartbeat(7, 11, false),
            HeartbeatAction::Trailing { expected: 11 }
        );
        assert!(f.fetch_due(0));
        // A catch-up is already due.
        assert_eq!(f.on_heartbeat(7, 12, false), HeartbeatAction::Ignore);
        let mut f = synced(7, 10);
        assert_eq!(f.on_heartbeat(8, 3, false), HeartbeatAction::Fetch);
        assert!(f.fetch_due(0));
    }

    /// With no source anywhere the follower waits for a new session; a
    /// heartbeat, or a frame of a session mid-way, shows one exists and
    /// asks for a catch-up.
    #[test]
    fn with_no_source_a_new_session_or_a_sign_of_one_ends_the_wait() {
        let mut f = Follower::new();
        f.on_no_source();
        assert!(!f.fetch_due(0));
        assert_eq!(f.on_frame(4, 1, false), FrameAction::NewStream);
        f.on_no_source();
        assert_eq!(f.on_heartbeat(4, 2, false), HeartbeatAction::Fetch);
        assert!(f.fetch_due(0));
        f.on_no_source();
        assert_eq!(f.on_frame(5, 3, false), FrameAction::Fetch);
        f.on_no_source();
        // Even a frame of the stream held: its source is back (nothing
        // would be published until it idles and sends a heartbeat).
        assert_eq!(f.on_frame(4, 2, true), FrameAction::Skip);
        assert_eq!(f.on_frame(4, 2, false), FrameAction::Fetch);
        assert!(f.fetch_due(0));
        assert_eq!(f.on_frame(4, 3, false), FrameAction::Skip);
    }

    /// While a source is here, the cluster's frames and heartbeats change
    /// nothing.
    #[test]
    fn a_local_source_silences_the_cluster() {
        let mut f = synced(7, 10);
        assert_eq!(f.on_frame(7, 11, true), FrameAction::Skip);
        assert_eq!(f.on_frame(8, 1, true), FrameAction::Skip);
        assert_eq!(f.on_frame(7, 20, true), FrameAction::Skip);
        assert_eq!(f.on_heartbeat(7, 30, true), HeartbeatAction::Ignore);
        assert!(!f.fetch_due(0));
        assert_eq!(f.on_frame(7, 11, false), FrameAction::Publish);
    }

    /// A dropped incomplete fragment set is a lost frame.
    #[test]
    fn an_incomplete_set_dropped_asks_for_a_catch_up() {
        let mut f = synced(7, 10);
        f.on_incomplete_dropped();
        assert!(f.fetch_due(0));
        assert_eq!(f.on_frame(7, 11, false), FrameAction::Skip);
    }

    /// Failed fetches wait 100 ms, 200 ms, ... at most 2 s; a success
    /// resets the wait.
    #[test]
    fn failed_fetches_back_off_to_2s_and_success_resets() {
        let mut f = Follower::new();
        let mut now = 1_000;
        for wait in [100, 200, 400, 800, 1_600, 2_000, 2_000] {
            assert!(f.fetch_due(now));
            f.on_fetch_failed(now);
            assert!(!f.fetch_due(now + wait - 1));
            now += wait;
        }
        assert!(f.fetch_due(now));
        f.on_fetched(7, 10);
        assert_eq!(f.on_frame(7, 12, false), FrameAction::Gap { expected: 11 });
        assert!(f.fetch_due(now));
        f.on_fetch_failed(now);
        assert!(!f.fetch_due(now + 99));
        assert!(f.fetch_due(now + 100));
    }

    /// Numbers at the end of the range neither overflow nor publish twice.
    #[test]
    fn the_largest_numbers_are_safe() {
        let mut f = synced(7, u64::MAX);
        assert_eq!(f.on_frame(7, u64::MAX, false), FrameAction::Skip);
        assert_eq!(f.on_heartbeat(7, u64::MAX, false), HeartbeatAction::Ignore);
        let mut f = synced(7, u64::MAX - 1);
        assert_eq!(f.on_frame(7, u64::MAX, false), FrameAction::Publish);
        f.on_fetch_failed(u64::MAX);
        assert!(!f.fetch_due(u64::MAX));
    }

    /// One event the driver can feed a follower, from the sources of
    /// [`Run`] (`src` picks one).
    #[derive(Debug, Clone)]
    enum Ev {
        /// A frame of source `src`, `shift` from its next number: 0 in
        /// order, below a duplicate or late one, above a gap.
        Frame { src: usize, shift: i8, local: bool },
        /// A frame of any epoch and number.
        Raw { epoch: u64, seq: u64, local: bool },
        /// A heartbeat of source `src`, `shift` from its last number.
        Heartbeat { src: usize, shift: i8, local: bool },
        /// Source `src` starts a new session (it may reuse an epoch).
        Restart { src: usize, epoch: u64 },
        /// Time passes (ms).
        Advance(u64),
        /// A due fetch answers source `src`'s state.
        Fetched { src: usize },
        /// A due fetch fails.
        Failed,
        /// A due fetch finds no source.
        NoSource,
        /// An incomplete fragment set is dropped.
        Dropped,
    }

    /// Any event, mostly in-order frames.
    fn event() -> impl Strategy<Value = Ev> {
        let shift = prop_oneof![6 => Just(0i8), 1 => -3i8..0, 1 => 1i8..3];
        prop_oneof![
            12 => (0usize..3, shift, prop::bool::weighted(0.1))
                .prop_map(|(src, shift, local)| Ev::Frame { src, shift, local }),
            1 => (1u64..5, 0u64..6, prop::bool::weighted(0.1))
                .prop_map(|(epoch, seq, local)| Ev::Raw { epoch, seq, local }),
            2 => (0usize..3, -1i8..2, prop::bool::weighted(0.1))
                .prop_map(|(src, shift, local)| Ev::Heartbeat { src, shift, local }),
            1 => (0usize..3, 1u64..8).prop_map(|(src, epoch)| Ev::Restart { src, epoch }),
            3 => prop_oneof![0u64..150, 0u64..2_500].prop_map(Ev::Advance),
            2 => (0usize..3).prop_map(|src| Ev::Fetched { src }),
            2 => Just(Ev::Failed),
            1 => Just(Ev::NoSource),
            1 => Just(Ev::Dropped),
        ]
    }

    /// A follower, the sources around it, and what local receivers were
    /// given, checked after every event against the module's rules.
    struct Run {
        f: Follower,
        now: u64,
        /// Each source's (epoch, last number sent).
        sources: [(u64, u64); 3],
        /// The stream local receivers hold: (epoch, last number given),
        /// set only by a new stream or a catch-up.
        stream: Option<(u64, u64)>,
        /// More frames of `stream` may be given: no loss seen since it
        /// was set, and a source found.
        live: bool,
        /// A catch-up is wanted.
        pending: bool,
        /// No fetch before this time.
        retry_at: u64,
        /// The wait after the next failure.
        backoff: u64,
    }

    impl Run {
        /// A follower among three sources, each some frames into its
        /// session.
        fn new() -> Self {
            Run {
                f: Follower::new(),
                now: 0,
                sources: [(1, 0), (2, 5), (3, 9)],
                stream: None,
                live: false,
                pending: true,
                retry_at: 0,
                backoff: BACKOFF_MIN_MS,
            }
        }

        /// The epoch local receivers' stream comes from.
        fn epoch(&self) -> Option<u64> {
            self.stream.map(|(e, _)| e)
        }

        /// Feeds a frame and checks what the follower answered.
        fn frame(&mut self, epoch: u64, seq: u64, local: bool) -> Result<(), TestCaseError> {
            let a = self.f.on_frame(epoch, seq, local);
            let next = self.stream.and_then(|(e, l)| Some((e, l.checked_add(1)?)));
            match a {
                FrameAction::Publish => {
                    prop_assert!(!local, "published with a local source");
                    prop_assert!(self.live && !self.pending, "published while not in step");
                    prop_assert_eq!(next, Some((epoch, seq)), "published out of order");
                    self.stream = Some((epoch, seq));
                }
                FrameAction::NewStream => {
                    prop_assert!(!local, "new stream with a local source");
                    prop_assert_eq!(seq, 1);
                    prop_assert_ne!(self.epoch(), Some(epoch), "new stream of the same epoch");
                    (self.stream, self.live, self.pending) = (Some((epoch, 1)), true, false);
                }
                FrameAction::Gap { expected } => {
                    prop_assert!(!local && self.live);
                    prop_assert_eq!(next, Some((epoch, expected)));
                    prop_assert!(seq > expected);
                    (self.live, self.pending) = (false, true);
                }
                FrameAction::Fetch => {
                    // A stream seen mid-way, or any sign of a source after
                    // none was found.
                    let ours = self.epoch() == Some(epoch);
                    let waiting = !self.live && !self.pending;
                    prop_assert!(!local && ((!ours && seq != 1) || (ours && waiting)));
                    (self.live, self.pending) = (false, true);
                }
                FrameAction::Skip => {
                    // Nothing publishable, or that starts a stream or
                    // shows a loss, is skipped.
                    let ours = self.epoch() == Some(epoch);
                    let behind = self.stream.is_some_and(|(_, l)| seq <= l);
                    prop_assert!(
                        local || (ours && (self.pending || (self.live && behind))),
                        "{a:?} for {epoch}/{seq}"
                    );
                }
            }
            Ok(())
        }

        /// Feeds a heartbeat and checks what the follower answered.
        fn heartbeat(&mut self, epoch: u64, last: u64, local: bool) -> Result<(), TestCaseError> {
            let a = self.f.on_heartbeat(epoch, last, local);
            let ours = self.epoch() == Some(epoch);
            match a {
                HeartbeatAction::Trailing { expected } => {
                    prop_assert!(!local && !self.pending && self.live && ours);
                    prop_assert_eq!(self.stream.map(|(_, l)| l + 1), Some(expected));
                    prop_assert!(last >= expected);
                    (self.live, self.pending) = (false, true);
                }
                HeartbeatAction::Fetch => {
                    prop_assert!(!local && !self.pending && (!self.live || !ours));
                    (self.live, self.pending) = (false, true);
                }
                HeartbeatAction::Ignore => {
                    let caught_up = self.stream.is_some_and(|(_, l)| last <= l);
                    prop_assert!(local || self.pending || (self.live && ours && caught_up));
                }
            }
            Ok(())
        }

        /// Feeds one event, as the driver would, and checks the follower.
        fn step(&mut self, ev: Ev) -> Result<(), TestCaseError> {
            let due = self.f.fetch_due(self.now);
            match ev {
                Ev::Frame { src, shift, local } => {
                    let (epoch, last) = self.sources[src];
                    let seq = (last + 1).saturating_add_signed(shift.into());
                    self.sources[src].1 = last.max(seq);
                    self.frame(epoch, seq, local)?;
                }
                Ev::Raw { epoch, seq, local } => self.frame(epoch, seq, local)?,
                Ev::Heartbeat { src, shift, local } => {
                    let (epoch, last) = self.sources[src];
                    self.heartbeat(epoch, last.saturating_add_signed(shift.into()), local)?;
                }
                Ev::Restart { src, epoch } => self.sources[src] = (epoch, 0),
                Ev::Advance(ms) => self.now += ms,
                // The driver fetches only when a fetch is due.
                Ev::Fetched { .. } | Ev::Failed | Ev::NoSource if !due => {}
                Ev::Fetched { src } => {
                    let (epoch, seq) = self.sources[src];
                    self.f.on_fetched(epoch, seq);
                    self.stream = Some((epoch, seq));
                    (self.live, self.pending, self.backoff) = (true, false, BACKOFF_MIN_MS);
                }
                Ev::Failed => {
                    self.f.on_fetch_failed(self.now);
                    self.retry_at = self.now + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX_MS);
                }
                Ev::NoSource => {
                    self.f.on_no_source();
                    (self.live, self.pending) = (false, false);
                }
                Ev::Dropped => {
                    self.f.on_incomplete_dropped();
                    (self.live, self.pending) = (false, true);
                }
            }
            // A loss makes a fetch due at once, unless a failed one is
            // backing off; then exactly when the wait is over.
            prop_assert_eq!(
                self.f.fetch_due(self.now),
                self.pending && self.now >= self.retry_at,
                "fetch due at {} (pending {}, retry at {})",
                self.now,
                self.pending,
                self.retry_at
            );
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        /// Whatever the frames (duplicates, reorders, gaps, new epochs),
        /// heartbeats, fetch results and time: per stream, local
        /// receivers get consecutive frames from the catch-up's number + 1
        /// or from 1, never one twice, out of order or across epochs
        /// without a new stream or catch-up; nothing after a loss until a
        /// catch-up or a new session; nothing while a source is here; a
        /// catch-up due after each loss, on the backoff's schedule; and
        /// nothing publishable skipped.
        #[test]
        fn the_rules_hold_for_any_events(events in prop::collection::vec(event(), 0..300)) {
            let mut run = Run::new();
            for ev in events {
                run.step(ev)?;
            }
        }

        /// Any run of failed fetches waits 100 ms doubling up to 2 s
        /// between them, however late each one is made; a success
        /// resets the wait.
        #[test]
        fn failed_fetches_follow_the_backoff_schedule(
            lates in prop::collection::vec(0u64..3_000, 1..12),
            then in 0u64..3_000,
        ) {
            let mut f = Follower::new();
            let mut now = 5;
            for (i, late) in lates.iter().enumerate() {
                prop_assert!(f.fetch_due(now));
                f.on_fetch_failed(now);
                let wait = (BACKOFF_MIN_MS << i.min(5)).min(BACKOFF_MAX_MS);
                prop_assert!(!f.fetch_due(now + wait - 1));
                prop_assert!(f.fetch_due(now + wait));
                now += wait + late;
            }
            f.on_fetched(3, 4);
            prop_assert!(!f.fetch_due(now));
            f.on_incomplete_dropped();
            now += then;
            prop_assert!(f.fetch_due(now));
            f.on_fetch_failed(now);
            prop_assert!(!f.fetch_due(now + BACKOFF_MIN_MS - 1));
            prop_assert!(f.fetch_due(now + BACKOFF_MIN_MS));
        }
    }
}
