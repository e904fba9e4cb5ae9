//! Offset bookkeeping: which input offsets each epoch consumed, and what may be committed
//! once the dataflow says every output of those epochs is acknowledged. Pure; the consumer
//! calls are in `source.rs`.
//!
//! Kafka's convention: the committed offset of a partition is the offset of the *next*
//! record to read, so after processing offset `o` we commit `o + 1`.

use std::collections::{BTreeMap, HashMap};

/// Consumed offsets per epoch, per partition (the highest one of each).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    by_epoch: BTreeMap<u64, HashMap<i32, i64>>,
    /// What was last committed (the next offset to read), per partition.
    committed: HashMap<i32, i64>,
}

impl OffsetTracker {
    /// Records that `offset` of `partition` was read in `epoch`.
    pub fn consumed(&mut self, epoch: u64, partition: i32, offset: i64) {
        let e = self.by_epoch.entry(epoch).or_default();
        let o = e.entry(partition).or_insert(offset);
        *o = (*o).max(offset);
    }

    /// The offsets to commit now that every epoch before `frontier` is fully delivered:
    /// for each partition, its highest consumed offset in those epochs, plus one. Only
    /// partitions that moved forward are returned.
    pub fn ready(&mut self, frontier: u64) -> Vec<(i32, i64)> {
        let later = self.by_epoch.split_off(&frontier);
        let done = std::mem::replace(&mut self.by_epoch, later);
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (_, parts) in done {
            for (p, o) in parts {
                let n = next.entry(p).or_insert(o + 1);
                *n = (*n).max(o + 1);
            }
        }
        let mut out: Vec<(i32, i64)> = next
            .into_iter()
            .filter(|(p, n)| self.committed.get(p).is_none_or(|c| n > c))
            .collect();
        out.sort();
        for &(p, n) in &out {
            self.committed.insert(p, n);
        }
        out
    }

    /// Epochs consumed but not yet committable.
    pub fn pending_epochs(&self) -> usize {
        self.by_epoch.len()
    }

    /// The last committed next-offset of `partition`.
    pub fn committed(&self, partition: i32) -> Option<i64> {
        self.committed.get(&partition).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_the_offset_after_the_last_processed_one() {
        let mut t = OffsetTracker::default();
        t.consumed(0, 3, 10);
        t.consumed(0, 3, 11);
        assert_eq!(t.ready(1), vec![(3, 12)]);
        assert_eq!(t.committed(3), Some(12));
    }

    #[test]
    fn only_epochs_before_the_frontier_are_committed() {
        let mut t = OffsetTracker::default();
        t.consumed(0, 0, 5);
        t.consumed(1, 0, 6);
        t.consumed(2, 1, 0);
        assert_eq!(t.ready(1), vec![(0, 6)]);
        assert_eq!(t.pending_epochs(), 2);
        assert_eq!(t.ready(3), vec![(0, 7), (1, 1)]);
        assert_eq!(t.ready(3), vec![]);
    }

    #[test]
    fn never_moves_backwards() {
        let mut t = OffsetTracker::default();
        t.consumed(5, 0, 100);
        assert_eq!(t.ready(6), vec![(0, 101)]);
        // A redelivered older record (e.g. after a seek) does not rewind the commit.
        t.consumed(6, 0, 50);
        assert_eq!(t.ready(7), vec![]);
        assert_eq!(t.committed(0), Some(101));
    }
}
