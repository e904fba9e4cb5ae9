//! The replay guard (SPEC §2.2): has this observation id been seen recently in this shard?
//! Memory is bounded by construction — a fixed-size FIFO window per bucket. It does not route
//! records to buckets (the dataflow does, by the keyed [`SampleKey::bucket`]), and it does
//! no I/O: with a journal on, it lists what changed so that the runtime can persist it
//! (`replay_log.rs` has the record format and the restore).
//!
//! Ids are reduced to a public 128-bit hash ([`id_hash`]) whose high 64 bits are the
//! fingerprint the window keeps. The bucket of a fingerprint is a keyed hash under the
//! deployment's secret, so no sender can choose ids that share a bucket and flush it. The
//! 256 buckets are the unit of routing: every bucket lives on exactly one worker whatever the
//! worker count, so a guard's answers do not depend on how many workers run.
//!
//! Each sighting keeps a provenance tag (input, position, payload) and the answer it got. A
//! record read again from the same place with the same bytes — input re-read after a crash,
//! or the same file run again — is the same record, not a replay of itself: it gets the
//! answer it got the first time, and is not recorded twice.
//!
//! [`SampleKey::bucket`]: super::sampling::SampleKey::bucket

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::observation::InputRef;

/// Number of buckets an id is routed by.
pub const BUCKETS: usize = 256;

/// Sightings kept per bucket for a window of `window_ids` ids: `window_ids / 256`, at least 1.
pub fn per_bucket(window_ids: usize) -> usize {
    (window_ids / BUCKETS).max(1)
}

/// The 128-bit public id hash: the first 16 bytes of blake3(id), little-endian.
pub fn id_hash(id: &str) -> u128 {
    let digest = blake3::hash(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// The fingerprint the guard keeps of an id hash: its high 64 bits.
pub fn fingerprint(h: u128) -> u64 {
    (h >> 64) as u64
}

/// The provenance tag of a record: where it was read (input, position) and what it carried
/// (the first 8 bytes of its payload's SHA-256), mixed into 64 bits, the low bit cleared
/// (the guard stores the answer there). Two reads of the same input position with the same
/// payload have the same tag; a sender cannot give another position's tag to its record,
/// since that would take a payload whose SHA-256 starts with chosen bits.
pub fn provenance(input: Option<&InputRef>, position: u64, payload_sha256: &[u8; 32]) -> u64 {
    let mut topic = 0xcbf2_9ce4_8422_2325u64;
    if let Some(i) = input {
        for &b in i.topic.as_bytes() {
            topic = (topic ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        topic ^= mix(u64::from(i.partition as u32) << 32 ^ 0x5bd1_e995);
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&payload_sha256[..8]);
    (mix(mix(position) ^ topic) ^ u64::from_le_bytes(first)) & !1
}

/// splitmix64's finaliser: a bijection on u64 that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hasher for keys that are already uniformly random u64s (fingerprints): it passes them
/// through. Deterministic, and nothing to gain from `RandomState` here.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = (v >> 64) as u64;
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    /// Only reached by keys other than integers; an FNV-1a fold keeps it total and deterministic.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// [`IdHasher`] as a `BuildHasher`.
pub type BuildIdHasher = BuildHasherDefault<IdHasher>;

/// One sighting of an id: its fingerprint, the record's provenance tag with the answer it
/// got in the low bit, and its arrival time (broker time, else ingest time; never the
/// sender's). 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sighting {
    pub fp: u64,
    pub tag: u64,
    pub at_ms: i64,
}

impl Sighting {
    /// A sighting of the record tagged `provenance` (low bit ignored) that got `replay`.
    pub fn new(fp: u64, provenance: u64, at_ms: i64, replay: bool) -> Sighting {
        Sighting {
            fp,
            tag: (provenance & !1) | u64::from(replay),
            at_ms,
        }
    }

    /// The answer this sighting got.
    pub fn replay(&self) -> bool {
        self.tag & 1 == 1
    }

    /// The provenance tag without the answer bit.
    pub fn provenance(&self) -> u64 {
        self.tag & !1
    }
}

/// One bucket's window: a ring of the last sightings and a count per fingerprint.
#[derive(Clone, Debug, Default)]
struct Window {
    /// Sightings, oldest at `head` once the ring is full. Grows by doubling as the bucket
    /// sees ids, never past the cap.
    ring: Vec<Sighting>,
    /// Next slot to overwrite once `ring` is full.
    head: usize,
    /// Fingerprint → number of its sightings in `ring`, for O(1) "seen at all?".
    counts: HashMap<u64, u32, BuildIdHasher>,
    /// Sightings recorded since this bucket's state was last written whole (journal only).
    since_snapshot: usize,
}

impl Window {
    /// The sightings, oldest first.
    fn in_order(&self) -> impl Iterator<Item = &Sighting> {
        let (newer, older) = self.ring.split_at(self.head);
        older.iter().chain(newer)
    }

    fn push(&mut self, s: Sighting, cap: usize) {
        if self.ring.len() < cap {
            if self.ring.len() == self.ring.capacity() {
                // Doubling, but never past the cap: memory follows what the bucket has seen.
                let grown = (2 * self.ring.len()).max(64).min(cap);
                self.ring.reserve_exact(grown - self.ring.len());
            }
            self.ring.push(s);
        } else {
            let old = std::mem::replace(&mut self.ring[self.head], s);
            self.head = (self.head + 1) % cap;
            if let Entry::Occupied(mut e) = self.counts.entry(old.fp) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        *self.counts.entry(s.fp).or_insert(0) += 1;
    }
}

/// Remembers the most recent ids of each bucket to flag replays, in about 40 bytes per id.
#[derive(Clone, Debug)]
pub struct ReplayGuard {
    /// Sightings kept per bucket: `window_ids / 256`, at least 1.
    per_bucket: usize,
    /// Time limit in ms; 0 = only the id window counts.
    window_ms: i64,
    /// One window per bucket; a bucket this worker never sees never allocates.
    buckets: Vec<Window>,
    /// With persistence on: the sightings recorded since the last [`ReplayGuard::drain_journal`],
    /// in order, with their buckets.
    journal: Option<Vec<(u8, Sighting)>>,
}

impl ReplayGuard {
    /// A guard remembering about `window_ids` ids (`window_ids / 256` per bucket, at least 1)
    /// and, when `window_ms > 0`, calling a repeat a replay only within `window_ms` of arrival
    /// time. A negative `window_ms` counts as 0.
    pub fn new(window_ids: usize, window_ms: i64) -> ReplayGuard {
        ReplayGuard {
            per_bucket: per_bucket(window_ids),
            window_ms: window_ms.max(0),
            buckets: vec![Window::default(); BUCKETS],
            journal: None,
        }
    }

    /// Keeps a journal of new sightings for persistence (see [`ReplayGuard::drain_journal`]).
    pub fn with_journal(mut self) -> ReplayGuard {
        self.journal = Some(Vec::new());
        self
    }

    /// Sightings kept per bucket.
    pub fn per_bucket(&self) -> usize {
        self.per_bucket
    }

    /// True if the record (fingerprint `fp` in `bucket`, provenance tag `provenance`, arrival
    /// `at_ms`) is a replay: its id is in its bucket's window and, with a time limit, was seen
    /// no more than `window_ms` away in arrival time (either side). A record seen before from
    /// the same provenance gets the answer it got then and is not recorded again; any other is
    /// recorded, evicting the bucket's oldest sighting when full.
    ///
    /// Ids are compared by 64-bit fingerprints: within a window of n ids a false replay has
    /// probability about n/2⁶⁴ per check, and a sender cannot aim it at another's id.
    pub fn check(&mut self, bucket: u8, fp: u64, provenance: u64, at_ms: i64) -> bool {
        let w = &mut self.buckets[usize::from(bucket)];
        let mut seen = false;
        if w.counts.contains_key(&fp) {
            // A repeated id: rare, so scanning the bucket's window is affordable.
            let limit = self.window_ms.unsigned_abs();
            for s in w.ring.iter().filter(|s| s.fp == fp) {
                if s.provenance() == provenance & !1 {
                    return s.replay();
                }
                seen |= self.window_ms == 0 || s.at_ms.abs_diff(at_ms) <= limit;
            }
        }
        let s = Sighting::new(fp, provenance, at_ms, seen);
        w.push(s, self.per_bucket);
        if let Some(j) = &mut self.journal {
            w.since_snapshot += 1;
            j.push((bucket, s));
        }
        seen
    }

    /// Takes the sightings recorded since the last call, in order (empty without a journal).
    pub fn drain_journal(&mut self) -> Vec<(u8, Sighting)> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Buckets that have recorded at least twice their window since they were last written
    /// whole, so that a restore never reads more than about three windows per bucket; marks
    /// them written. Empty without a journal.
    pub fn due_snapshots(&mut self) -> Vec<u8> {
        if self.journal.is_none() {
            return Vec::new();
        }
        let due = 2 * self.per_bucket;
        let mut out = Vec::new();
        for (b, w) in self.buckets.iter_mut().enumerate() {
            if w.since_snapshot >= due {
                w.since_snapshot = 0;
                out.push(b as u8);
            }
        }
        out
    }

    /// The sightings of `bucket`, oldest first.
    pub fn bucket_sightings(&self, bucket: u8) -> Vec<Sighting> {
        self.buckets[usize::from(bucket)].in_order().copied().collect()
    }

    /// Replaces `bucket`'s window with `sightings` (oldest first; only the newest that fit
    /// are kept), as restored from a persisted state.
    pub fn restore_bucket(&mut self, bucket: u8, sightings: &[Sighting]) {
        let w = &mut self.buckets[usize::from(bucket)];
        *w = Window::default();
        let keep = sightings.len().saturating_sub(self.per_bucket);
        for s in &sightings[keep..] {
            w.push(*s, self.per_bucket);
        }
    }

    /// Number of sightings remembered, over all buckets.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|w| w.ring.len()).sum()
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh record's provenance: position `n` of no input, payload bytes all `n`.
    fn tag(n: u64) -> u64 {
        provenance(None, n, &[n as u8; 32])
    }

    #[test]
    fn id_hash_is_the_first_16_bytes_of_blake3_little_endian() {
        let d = blake3::hash(b"obs-1");
        let mut want = [0u8; 16];
        want.copy_from_slice(&d.as_bytes()[..16]);
        assert_eq!(id_hash("obs-1"), u128::from_le_bytes(want));
        assert_eq!(
            fingerprint(id_hash("obs-1")),
            u64::from_le_bytes(want[8..].try_into().unwrap())
        );
        assert_ne!(id_hash("obs-1"), id_hash("obs-2"));
    }

    #[test]
    fn a_repeat_within_the_window_is_a_replay() {
        let mut g = ReplayGuard::new(256 * 4, 0);
        assert!(!g.check(0, 1, tag(1), 0));
        assert!(g.check(0, 1, tag(2), 1_000_000));
        assert!(!g.check(0, 2, tag(3), 0));
    }

    #[test]
    fn the_same_record_read_again_gets_its_first_answer_and_is_not_recorded_twice() {
        let mut g = ReplayGuard::new(256 * 4, 0);
        assert!(!g.check(3, 7, tag(1), 0), "first sighting");
        assert!(g.check(3, 7, tag(2), 5), "a replay from elsewhere");
        assert!(
            !g.check(3, 7, tag(1), 9),
            "record 1 read again: still not a replay"
        );
        assert!(g.check(3, 7, tag(2), 9), "record 2 read again: still a replay");
        assert_eq!(g.len(), 2);
        // Same position, other payload: another record, so a replay.
        assert!(g.check(3, 7, provenance(None, 1, &[9; 32]), 9));
    }

    #[test]
    fn provenance_tells_positions_inputs_and_payloads_apart() {
        let input = |topic: &str, partition: i32, offset: i64| InputRef {
            topic: topic.into(),
            partition,
            offset,
        };
        let p = [5u8; 32];
        let a = provenance(Some(&input("t", 0, 1)), 1, &p);
        assert_eq!(a, provenance(Some(&input("t", 0, 1)), 1, &p));
        assert_eq!(a & 1, 0);
        for other in [
            provenance(Some(&input("t", 0, 2)), 2, &p),
            provenance(Some(&input("u", 0, 1)), 1, &p),
            provenance(Some(&input("t", 1, 1)), 1, &p),
            provenance(Some(&input("t", 0, 1)), 1, &[6; 32]),
            provenance(None, 1, &p),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn an_id_evicted_from_its_bucket_window_is_no_longer_a_replay() {
        let mut g = ReplayGuard::new(256 * 3, 0);
        assert_eq!(g.per_bucket(), 3);
        assert!(!g.check(7, 1, tag(1), 0));
        for n in 2..=3 {
            assert!(!g.check(7, n, tag(n), 0));
        }
        assert!(g.check(7, 1, tag(4), 0), "still in window, and recorded again");
        for n in 5..=7 {
            assert!(!g.check(7, n, tag(n), 0));
        }
        assert!(!g.check(7, 1, tag(8), 0), "pushed out by three newer ids");
        // Other buckets do not push this one's ids out.
        let mut g = ReplayGuard::new(256 * 3, 0);
        g.check(7, 1, tag(1), 0);
        for n in 0..100 {
            g.check(8, 100 + n, tag(100 + n), 0);
        }
        assert!(g.check(7, 1, tag(2), 0));
    }

    #[test]
    fn with_a_time_limit_only_sightings_close_in_arrival_time_count() {
        let mut g = ReplayGuard::new(10_000, 1_000);
        assert!(!g.check(0, 1, tag(1), 10_000));
        assert!(g.check(0, 1, tag(2), 11_000), "exactly window_ms later");
        assert!(!g.check(0, 1, tag(3), 20_000), "9 s after the last sighting");
        assert!(g.check(0, 1, tag(4), 19_500), "0.5 s earlier than the last");
        assert!(!g.check(0, 2, tag(5), i64::MIN));
        assert!(!g.check(0, 2, tag(6), i64::MAX), "no overflow");
    }

    /// A guard of the default million ids that has seen a thousand holds room for about a
    /// thousand, not for a million (a fresh process used to reserve every bucket's whole
    /// window at its first id: ~70 MB of the ~115 MB a tiny run took).
    #[test]
    fn memory_follows_the_ids_seen_up_to_the_bound() {
        let mut g = ReplayGuard::new(1 << 20, 0);
        for i in 0..1000u64 {
            g.check((i % 256) as u8, mix(i), tag(i), i as i64);
        }
        let ring: usize = g.buckets.iter().map(|w| w.ring.capacity()).sum();
        let table: usize = g.buckets.iter().map(|w| w.counts.capacity()).sum();
        assert!(ring <= 256 * 64, "ring room for {ring} sightings");
        assert!(table <= 256 * 64, "table room for {table} fingerprints");
        assert_eq!(g.len(), 1000);
    }

    #[test]
    fn memory_stays_at_the_bound_after_ten_windows_of_inserts() {
        let window = 256 * 8;
        let mut g = ReplayGuard::new(window, 0);
        for i in 0..10 * window as u64 {
            g.check((i % 256) as u8, mix(i), tag(i), i as i64);
        }
        assert_eq!(g.len(), window);
        for w in &g.buckets {
            assert!(w.ring.len() <= g.per_bucket());
            assert!(
                w.ring.capacity() <= g.per_bucket(),
                "the ring never grows past its cap"
            );
            assert_eq!(
                w.counts.values().map(|&c| c as usize).sum::<usize>(),
                w.ring.len()
            );
        }
        // Repeats and a single hot bucket do not grow it either.
        for n in 0..10 * window as u64 {
            g.check(0, n % 5, tag(1_000_000 + n), 0);
        }
        assert_eq!(g.buckets[0].ring.len(), g.per_bucket());
        assert_eq!(g.buckets[0].counts.len(), 5);
        assert_eq!(g.len(), window);
    }

    #[test]
    fn a_tiny_window_keeps_one_id_per_bucket() {
        let mut g = ReplayGuard::new(0, 0);
        assert_eq!(g.per_bucket(), 1);
        assert!(!g.check(1, 1, tag(1), 0));
        assert!(g.check(1, 1, tag(2), 0));
        assert!(!g.check(1, 2, tag(3), 0));
        assert!(!g.check(1, 1, tag(4), 0));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn the_journal_lists_new_sightings_and_a_restored_bucket_answers_alike() {
        let mut g = ReplayGuard::new(256 * 4, 0).with_journal();
        g.check(2, 10, tag(1), 1);
        g.check(2, 11, tag(2), 2);
        g.check(2, 10, tag(3), 3);
        g.check(2, 10, tag(1), 4); // read again: not journaled
        let j = g.drain_journal();
        assert_eq!(j.len(), 3);
        assert!(j.iter().all(|(b, _)| *b == 2));
        assert_eq!(j[2].1, Sighting::new(10, tag(3), 3, true));
        assert!(g.drain_journal().is_empty());

        let mut h = ReplayGuard::new(256 * 4, 0);
        h.restore_bucket(2, &g.bucket_sightings(2));
        assert_eq!(h.bucket_sightings(2), g.bucket_sightings(2));
        assert!(
            h.check(2, 11, tag(9), 5),
            "an id of the restored window is a replay"
        );
        assert!(!h.check(2, 11, tag(2), 5), "its first record read again is not");
        // Restoring more than fits keeps the newest.
        let many: Vec<_> = (0..10).map(|n| Sighting::new(n, tag(n), 0, false)).collect();
        h.restore_bucket(5, &many);
        assert_eq!(h.bucket_sightings(5), many[6..]);
    }

    #[test]
    fn a_bucket_is_due_for_a_snapshot_after_two_windows_of_sightings() {
        let mut g = ReplayGuard::new(256 * 2, 0).with_journal();
        for n in 0..3 {
            g.check(9, n, tag(n), 0);
        }
        assert!(g.due_snapshots().is_empty());
        g.check(9, 3, tag(3), 0);
        assert_eq!(g.due_snapshots(), vec![9]);
        assert!(g.due_snapshots().is_empty(), "marked as written");
        assert!(
            ReplayGuard::new(256, 0).due_snapshots().is_empty(),
            "no journal, no snapshots"
        );
    }
}
