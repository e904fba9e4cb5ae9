//! Offset bookkeeping: which input offsets each epoch consumed, what may be committed once
//! the dataflow says every output of those epochs is acknowledged, and the commits in
//! flight: an offset counts as committed only once the broker confirms it, and a failed
//! commit is retried with back-off. Pure (time is passed in); the consumer calls are in
//! `source.rs`.
//!
//! Kafka's convention: the committed offset of a partition is the offset of the *next*
//! record to read, so after processing offset `o` we commit `o + 1`.

use std::collections::{BTreeMap, HashMap};

/// Consumed offsets per epoch, per partition (the highest one of each).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    by_epoch: BTreeMap<u64, HashMap<i32, i64>>,
    /// The next offset to read, per partition, of everything whose outputs are delivered.
    done: BTreeMap<i32, i64>,
    /// What the broker confirmed as committed, per partition.
    confirmed: HashMap<i32, i64>,
}

impl OffsetTracker {
    /// Records that `offset` of `partition` was read in `epoch`.
    pub fn consumed(&mut self, epoch: u64, partition: i32, offset: i64) {
        let e = self.by_epoch.entry(epoch).or_default();
        let o = e.entry(partition).or_insert(offset);
        *o = (*o).max(offset);
    }

    /// Every epoch before `frontier` is fully delivered: its offsets may be committed.
    pub fn complete(&mut self, frontier: u64) {
        let later = self.by_epoch.split_off(&frontier);
        let done = std::mem::replace(&mut self.by_epoch, later);
        for (_, parts) in done {
            for (p, o) in parts {
                let n = self.done.entry(p).or_insert(o + 1);
                *n = (*n).max(o + 1);
            }
        }
    }

    /// The offsets to commit: for each partition whose delivered offset is ahead of what the
    /// broker confirmed, that offset. Never backwards.
    pub fn uncommitted(&self) -> Vec<(i32, i64)> {
        self.done
            .iter()
            .filter(|(p, n)| self.confirmed.get(p).is_none_or(|c| *n > c))
            .map(|(&p, &n)| (p, n))
            .collect()
    }

    /// The broker confirmed `offsets`.
    pub fn confirmed(&mut self, offsets: &[(i32, i64)]) {
        for &(p, n) in offsets {
            let c = self.confirmed.entry(p).or_insert(n);
            *c = (*c).max(n);
        }
    }

    /// Epochs consumed but not yet committable.
    pub fn pending_epochs(&self) -> usize {
        self.by_epoch.len()
    }

    /// The last confirmed next-offset of `partition`.
    pub fn committed(&self, partition: i32) -> Option<i64> {
        self.confirmed.get(&partition).copied()
    }
}

/// When to send the next asynchronous commit: one at a time, and after a failure only once
/// its back-off is over (100 ms, doubling to 5 s).
#[derive(Debug, Default)]
pub struct Committer {
    /// The commit sent and not answered yet, and when it was sent.
    in_flight: Option<(Vec<(i32, i64)>, u64)>,
    /// No commit before this time (after a failure).
    retry_at_ms: u64,
    backoff_ms: u64,
    /// Failed commits so far.
    pub failures: u64,
}

/// A commit not answered within this long is taken as failed (the broker is away).
const ANSWER_TIMEOUT_MS: u64 = 30_000;
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;

impl Committer {
    /// The offsets to commit now, if any: marks them in flight until [`Committer::answered`].
    pub fn next(&mut self, tracker: &OffsetTracker, now_ms: u64) -> Option<Vec<(i32, i64)>> {
        if let Some((_, sent)) = &self.in_flight {
            if now_ms.saturating_sub(*sent) < ANSWER_TIMEOUT_MS {
                return None;
            }
            self.fail(now_ms);
        }
        if now_ms < self.retry_at_ms {
            return None;
        }
        let offsets = tracker.uncommitted();
        if offsets.is_empty() {
            return None;
        }
        self.in_flight = Some((offsets.clone(), now_ms));
        Some(offsets)
    }

    /// The broker answered a commit of `offsets` (`ok`: it took them). An answer to an
    /// earlier commit, given up on after the timeout, still confirms what it took, but leaves
    /// the commit in flight waiting for its own answer.
    pub fn answered(&mut self, tracker: &mut OffsetTracker, offsets: &[(i32, i64)], ok: bool, now_ms: u64) {
        if ok {
            tracker.confirmed(offsets);
        }
        let ours = self.in_flight.as_ref().is_some_and(|(sent, _)| sent == offsets);
        if !ours {
            return;
        }
        self.in_flight = None;
        if ok {
            self.backoff_ms = 0;
        } else {
            self.fail(now_ms);
        }
    }

    fn fail(&mut self, now_ms: u64) {
        self.in_flight = None;
        self.failures += 1;
        self.backoff_ms = (self.backoff_ms * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        self.retry_at_ms = now_ms + self.backoff_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(t: &mut OffsetTracker, frontier: u64) -> Vec<(i32, i64)> {
        t.complete(frontier);
        let out = t.uncommitted();
        t.confirmed(&out);
        out
    }

    #[test]
    fn commits_the_offset_after_the_last_processed_one() {
        let mut t = OffsetTracker::default();
        t.consumed(0, 3, 10);
        t.consumed(0, 3, 11);
        assert_eq!(ready(&mut t, 1), vec![(3, 12)]);
        assert_eq!(t.committed(3), Some(12));
    }

    #[test]
    fn only_epochs_before_the_frontier_are_committed() {
        let mut t = OffsetTracker::default();
        t.consumed(0, 0, 5);
        t.consumed(1, 0, 6);
        t.consumed(2, 1, 0);
        assert_eq!(ready(&mut t, 1), vec![(0, 6)]);
        assert_eq!(t.pending_epochs(), 2);
        assert_eq!(ready(&mut t, 3), vec![(0, 7), (1, 1)]);
        assert_eq!(ready(&mut t, 3), vec![]);
    }

    #[test]
    fn never_moves_backwards() {
        let mut t = OffsetTracker::default();
        t.consumed(5, 0, 100);
        assert_eq!(ready(&mut t, 6), vec![(0, 101)]);
        // A redelivered older record (e.g. after a seek) does not rewind the commit.
        t.consumed(6, 0, 50);
        assert_eq!(ready(&mut t, 7), vec![]);
        assert_eq!(t.committed(0), Some(101));
    }

    #[test]
    fn an_offset_is_committed_only_once_the_broker_confirms_it() {
        let mut t = OffsetTracker::default();
        let mut c = Committer::default();
        t.consumed(0, 0, 9);
        t.complete(1);
        assert_eq!(c.next(&t, 0), Some(vec![(0, 10)]));
        assert_eq!(c.next(&t, 1), None, "one commit in flight at a time");
        assert_eq!(t.committed(0), None, "not confirmed yet");
        c.answered(&mut t, &[(0, 10)], true, 2);
        assert_eq!(t.committed(0), Some(10));
        assert_eq!(c.next(&t, 3), None, "nothing new to commit");
    }

    #[test]
    fn a_failed_commit_is_retried_after_its_back_off_and_counted() {
        let mut t = OffsetTracker::default();
        let mut c = Committer::default();
        t.consumed(0, 0, 9);
        t.complete(1);
        c.next(&t, 0).unwrap();
        c.answered(&mut t, &[(0, 10)], false, 10);
        assert_eq!(c.failures, 1);
        assert_eq!(t.committed(0), None);
        assert_eq!(c.next(&t, 50), None, "backing off");
        // Meanwhile more was delivered: the retry carries the newest offset.
        t.consumed(1, 0, 20);
        t.complete(2);
        assert_eq!(c.next(&t, 110), Some(vec![(0, 21)]));
        c.answered(&mut t, &[(0, 21)], false, 120);
        assert_eq!(c.next(&t, 300), None, "the back-off doubled to 200 ms");
        assert_eq!(c.next(&t, 320), Some(vec![(0, 21)]));
        c.answered(&mut t, &[(0, 21)], true, 330);
        assert_eq!(t.committed(0), Some(21));
        assert_eq!(c.failures, 2);
    }

    #[test]
    fn an_unanswered_commit_counts_as_failed_after_the_timeout() {
        let mut t = OffsetTracker::default();
        let mut c = Committer::default();
        t.consumed(0, 0, 1);
        t.complete(1);
        assert_eq!(c.next(&t, 0), Some(vec![(0, 2)]));
        assert_eq!(c.next(&t, ANSWER_TIMEOUT_MS - 1), None);
        assert_eq!(c.next(&t, ANSWER_TIMEOUT_MS), None, "failed, now backing off");
        assert_eq!(c.failures, 1);
        t.consumed(1, 0, 10);
        t.complete(2);
        assert_eq!(
            c.next(&t, ANSWER_TIMEOUT_MS + BACKOFF_MIN_MS),
            Some(vec![(0, 11)])
        );
        // The late answer to the first commit confirms what it took, and the second commit
        // still waits for its own answer.
        c.answered(&mut t, &[(0, 2)], true, ANSWER_TIMEOUT_MS + 200);
        assert_eq!(t.committed(0), Some(2));
        assert_eq!(
            c.next(&t, ANSWER_TIMEOUT_MS + 300),
            None,
            "the second is in flight"
        );
        c.answered(&mut t, &[(0, 11)], true, ANSWER_TIMEOUT_MS + 400);
        assert_eq!(t.committed(0), Some(11));
    }
}
