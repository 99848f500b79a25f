//! A list of peers that the fan-out reads without a lock and that changes
//! copy-on-write in pieces. Peers sit in blocks of at most [`BLOCK`]; a join
//! copies the last block and the short list of blocks, a leave copies one
//! block (merged with a neighbour when both fit in one), so joins and leaves
//! on a 20,000-receiver channel cost a few hundred pointer copies, not
//! 20,000. Blocks stay at least half full on average, so the list of blocks
//! stays short.
//!
//! Writers serialize on the channel's membership lock; readers load a
//! snapshot (`ArcSwap`) and walk it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::relay::channel::peer::Peer;

/// Most peers in one block.
pub(crate) const BLOCK: usize = 256;

/// One block of peers.
type Block = Arc<Vec<Arc<Peer>>>;

/// A snapshot of the roster: its blocks, in order.
pub(crate) type Snapshot = Arc<Vec<Block>>;

/// The roster. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    blocks: ArcSwap<Vec<Block>>,
}

impl Roster {
    /// The current peers, block by block.
    pub(crate) fn load(&self) -> Snapshot {
        self.blocks.load_full()
    }

    /// Calls `f` for every peer of the current snapshot.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<Peer>)) {
        for block in self.blocks.load().iter() {
            block.iter().for_each(&mut f);
        }
    }

    /// Appends `peer`. The caller holds the membership lock.
    pub(crate) fn push(&self, peer: &Arc<Peer>) {
        let cur = self.blocks.load();
        let mut next: Vec<Block> = Vec::with_capacity(cur.len() + 1);
        next.extend(cur.iter().cloned());
        match next.last_mut() {
            Some(last) if last.len() < BLOCK => {
                let mut grown = Vec::with_capacity(last.len() + 1);
                grown.extend(last.iter().cloned());
                grown.push(peer.clone());
                *last = Arc::new(grown);
            }
            _ => next.push(Arc::new(vec![peer.clone()])),
        }
        self.blocks.store(Arc::new(next));
    }

    /// Removes `peer`; false if it is not here. The caller holds the
    /// membership lock.
    pub(crate) fn remove(&self, peer: &Arc<Peer>) -> bool {
        let cur = self.blocks.load();
        let Some(b) = cur
            .iter()
            .position(|block| block.iter().any(|p| Arc::ptr_eq(p, peer)))
        else {
            return false;
        };
        let mut next: Vec<Block> = cur.iter().cloned().collect();
        let shrunk: Vec<Arc<Peer>> = next[b]
            .iter()
            .filter(|p| !Arc::ptr_eq(p, peer))
            .cloned()
            .collect();
        // Merge with a neighbour when both fit in one block.
        let neighbour = [b + 1, b.wrapping_sub(1)]
            .into_iter()
            .find(|&n| n < next.len() && next[n].len() + shrunk.len() <= BLOCK);
        match neighbour {
            Some(n) => {
                let (first, second) = if n < b {
                    (next[n].as_slice(), shrunk.as_slice())
                } else {
                    (shrunk.as_slice(), next[n].as_slice())
                };
                let merged: Vec<Arc<Peer>> = first.iter().chain(second).cloned().collect();
                let keep = b.min(n);
                next[keep] = Arc::new(merged);
                next.remove(b.max(n));
            }
            None if shrunk.is_empty() => {
                next.remove(b);
            }
            None => next[b] = Arc::new(shrunk),
        }
        self.blocks.store(Arc::new(next));
        true
    }

    /// Peers now (walks the blocks; for small rosters and tests).
    pub(crate) fn len(&self) -> usize {
        self.blocks.load().iter().map(|b| b.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::egress::Egress;
    use proptest::prelude::*;

    /// Peers with no socket behind them (rosters never touch the egress).
    fn peers(n: usize) -> Vec<Arc<Peer>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = rt.enter();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let stream = Arc::new(tokio::net::TcpStream::from_std(std_stream).unwrap());
        (0..n as u64)
            .map(|id| {
                Arc::new(Peer {
                    id,
                    egress: Egress::new(
                        stream.clone(),
                        1024,
                        Default::default(),
                        Arc::new(crate::relay::resources::budget::Budget::new(usize::MAX)),
                    ),
                    marks: false,
                })
            })
            .collect()
    }

    fn ids(r: &Roster) -> Vec<u64> {
        let mut v = Vec::new();
        r.for_each(|p| v.push(p.id));
        v
    }

    #[test]
    fn a_join_copies_one_block_and_shares_the_others() {
        let all = peers(20_000);
        let r = Roster::default();
        for p in &all {
            r.push(p);
        }
        assert_eq!(r.len(), 20_000);
        let before = r.load();
        let extra = peers(1);
        r.push(&extra[0]);
        let after = r.load();
        assert_eq!(after.len(), before.len(), "the last block had room");
        let shared = before
            .iter()
            .zip(after.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, before.len() - 1, "only the last block was copied");
        // A leave copies one block (or merges two), never the others.
        r.remove(&all[5000]);
        let gone = r.load();
        let untouched = after
            .iter()
            .filter(|b| gone.iter().any(|g| Arc::ptr_eq(b, g)))
            .count();
        assert!(
            untouched >= after.len() - 2,
            "{untouched} of {} blocks shared",
            after.len()
        );
    }

    proptest! {
        /// Any sequence of joins and leaves leaves every present peer in
        /// the roster exactly once, and the blocks at most BLOCK each and
        /// few enough (at most 2 per BLOCK peers, plus one).
        #[test]
        fn churn_keeps_every_peer_once_in_few_blocks(ops in proptest::collection::vec((any::<bool>(), 0usize..600), 1..1500)) {
            let pool = peers(600);
            let r = Roster::default();
            let mut present = std::collections::BTreeSet::new();
            for (join, i) in ops {
                if join && present.insert(i) {
                    r.push(&pool[i]);
                } else if !join {
                    prop_assert_eq!(r.remove(&pool[i]), present.remove(&i));
                }
            }
            let mut got = ids(&r);
            got.sort_unstable();
            prop_assert_eq!(got, present.iter().map(|&i| i as u64).collect::<Vec<_>>());
            let blocks = r.load();
            prop_assert!(blocks.iter().all(|b| !b.is_empty() && b.len() <= BLOCK));
            prop_assert!(blocks.len() <= 2 * present.len() / BLOCK + 1, "{} blocks for {} peers", blocks.len(), present.len());
        }
    }
}
