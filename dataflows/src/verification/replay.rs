//! The replay guard (SPEC §2.2): has this observation id been seen recently in this shard?
//! Memory is bounded by construction — a fixed-size FIFO window per bucket. It does not route
//! records to buckets (the dataflow does, by [`bucket`]) nor persist anything across restarts.
//!
//! Ids are reduced to a 128-bit hash: its low 8 bits pick the bucket, the high 64 bits are
//! the fingerprint the window keeps. The 256 buckets are the unit of routing: every bucket lives on exactly one worker
//! whatever the worker count, so a guard's answers do not depend on how many workers run.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Number of buckets an id hash is routed by.
pub const BUCKETS: usize = 256;

/// The 128-bit id hash: the first 16 bytes of blake3(id), little-endian.
pub fn id_hash(id: &str) -> u128 {
    let digest = blake3::hash(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// The bucket of an id hash: its low 8 bits.
pub fn bucket(h: u128) -> u16 {
    (h % BUCKETS as u128) as u16
}

/// A hasher for keys that are already uniformly random u128s: it passes the high 64 bits
/// through. Not the low bits — inside one bucket those 8 bits are all equal, and the table
/// indexes by low bits. Deterministic, and nothing to gain from `RandomState` here.
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

    /// Only reached by keys other than u128; an FNV-1a fold keeps it total and deterministic.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// [`IdHasher`] as a `BuildHasher`.
pub type BuildIdHasher = BuildHasherDefault<IdHasher>;

/// One bucket's window: a ring of the last sightings and a count per fingerprint.
#[derive(Clone, Debug, Default)]
struct Window {
    /// Fingerprints (the high 64 bits of the id hash; the low bits name the bucket), oldest at
    /// `head` once the ring is full. Allocated on the bucket's first sighting, never grown past
    /// the cap.
    ring: Vec<u64>,
    /// Event times parallel to `ring`; kept only when a time limit is set.
    times: Vec<i64>,
    /// Next slot to overwrite once `ring` is full.
    head: usize,
    /// Fingerprint → number of its sightings in `ring`, for O(1) "seen at all?".
    counts: HashMap<u64, u32, BuildIdHasher>,
}

/// Remembers the most recent ids of each bucket to flag replays, in about 28 bytes per id.
#[derive(Clone, Debug)]
pub struct ReplayGuard {
    /// Sightings kept per bucket: `window_ids / 256`, at least 1.
    per_bucket: usize,
    /// Time limit in ms; 0 = only the id window counts.
    window_ms: i64,
    /// One window per bucket; a bucket this worker never sees never allocates.
    buckets: Vec<Window>,
}

impl ReplayGuard {
    /// A guard remembering about `window_ids` ids (`window_ids / 256` per bucket, at least 1)
    /// and, when `window_ms > 0`, calling a repeat a replay only within `window_ms` of event
    /// time. A negative `window_ms` counts as 0.
    pub fn new(window_ids: usize, window_ms: i64) -> ReplayGuard {
        ReplayGuard {
            per_bucket: (window_ids / BUCKETS).max(1),
            window_ms: window_ms.max(0),
            buckets: vec![Window::default(); BUCKETS],
        }
    }

    /// Sightings kept per bucket.
    pub fn per_bucket(&self) -> usize {
        self.per_bucket
    }

    /// True if `h` is a replay: in its bucket's window and, with a time limit, seen at an event
    /// time no more than `window_ms` away from `event_ms` (either side: a replay cannot escape
    /// by backdating its timestamp). Always records this sighting, evicting the bucket's oldest
    /// when full.
    ///
    /// Ids are compared by the 64 bits of their hash above the bucket bits: within a window of
    /// n ids a false replay has probability about n/2⁶⁴ per check.
    pub fn check_and_insert(&mut self, h: u128, event_ms: i64) -> bool {
        let per_bucket = self.per_bucket;
        let window_ms = self.window_ms;
        let timed = window_ms > 0;
        let fp = (h >> 64) as u64;
        let w = &mut self.buckets[usize::from(bucket(h))];
        if w.ring.capacity() == 0 {
            w.ring.reserve_exact(per_bucket);
            if timed {
                w.times.reserve_exact(per_bucket);
            }
            w.counts.reserve(per_bucket);
        }
        let seen = w.counts.contains_key(&fp)
            && (!timed
                || w.ring
                    .iter()
                    .zip(&w.times)
                    .any(|(&id, &t)| id == fp && t.abs_diff(event_ms) <= window_ms.unsigned_abs()));
        if w.ring.len() < per_bucket {
            w.ring.push(fp);
            if timed {
                w.times.push(event_ms);
            }
        } else {
            let old = std::mem::replace(&mut w.ring[w.head], fp);
            if timed {
                w.times[w.head] = event_ms;
            }
            w.head = (w.head + 1) % per_bucket;
            if let Entry::Occupied(mut e) = w.counts.entry(old) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        *w.counts.entry(fp).or_insert(0) += 1;
        seen
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

    /// An id hash in bucket `b` with distinct high bits `n`.
    fn in_bucket(b: u8, n: u64) -> u128 {
        (u128::from(n) << 64) | (u128::from(n) << 8) | u128::from(b)
    }

    #[test]
    fn id_hash_is_the_first_16_bytes_of_blake3_little_endian() {
        let d = blake3::hash(b"obs-1");
        let mut want = [0u8; 16];
        want.copy_from_slice(&d.as_bytes()[..16]);
        assert_eq!(id_hash("obs-1"), u128::from_le_bytes(want));
        assert_eq!(bucket(id_hash("obs-1")), u16::from(d.as_bytes()[0]));
        assert_ne!(id_hash("obs-1"), id_hash("obs-2"));
    }

    #[test]
    fn a_repeat_within_the_window_is_a_replay() {
        let mut g = ReplayGuard::new(256 * 4, 0);
        let h = id_hash("a");
        assert!(!g.check_and_insert(h, 0));
        assert!(g.check_and_insert(h, 1_000_000));
        assert!(!g.check_and_insert(id_hash("b"), 0));
    }

    #[test]
    fn an_id_evicted_from_its_bucket_window_is_no_longer_a_replay() {
        let mut g = ReplayGuard::new(256 * 3, 0);
        assert_eq!(g.per_bucket(), 3);
        let first = in_bucket(7, 1);
        assert!(!g.check_and_insert(first, 0));
        for n in 2..=3 {
            assert!(!g.check_and_insert(in_bucket(7, n), 0));
        }
        assert!(g.check_and_insert(first, 0), "still in window, and re-recorded");
        for n in 4..=6 {
            assert!(!g.check_and_insert(in_bucket(7, n), 0));
        }
        assert!(!g.check_and_insert(first, 0), "pushed out by three newer ids");
        // Other buckets do not push this one's ids out.
        let mut g = ReplayGuard::new(256 * 3, 0);
        g.check_and_insert(first, 0);
        for n in 0..100 {
            g.check_and_insert(in_bucket(8, n), 0);
        }
        assert!(g.check_and_insert(first, 0));
    }

    #[test]
    fn with_a_time_limit_only_sightings_close_in_event_time_count() {
        let mut g = ReplayGuard::new(10_000, 1_000);
        let h = id_hash("t");
        assert!(!g.check_and_insert(h, 10_000));
        assert!(g.check_and_insert(h, 11_000), "exactly window_ms later");
        assert!(!g.check_and_insert(h, 20_000), "9 s after the last sighting");
        assert!(g.check_and_insert(h, 19_500), "backdated by 0.5 s");
        assert!(!g.check_and_insert(id_hash("u"), i64::MIN));
        assert!(!g.check_and_insert(id_hash("u"), i64::MAX), "no overflow");
    }

    #[test]
    fn memory_stays_at_the_bound_after_ten_windows_of_inserts() {
        let window = 256 * 8;
        let mut g = ReplayGuard::new(window, 0);
        for i in 0..10 * window {
            g.check_and_insert(id_hash(&format!("id-{i}")), i as i64);
        }
        // ~80 random ids per bucket against a cap of 8: every bucket is full, none is over.
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
            g.check_and_insert(in_bucket(0, n % 5), 0);
        }
        assert_eq!(g.buckets[0].ring.len(), g.per_bucket());
        assert_eq!(g.buckets[0].counts.len(), 5);
        assert_eq!(g.len(), window);
    }

    #[test]
    fn a_tiny_window_keeps_one_id_per_bucket() {
        let mut g = ReplayGuard::new(0, 0);
        assert_eq!(g.per_bucket(), 1);
        let (a, b) = (in_bucket(1, 1), in_bucket(1, 2));
        assert!(!g.check_and_insert(a, 0));
        assert!(g.check_and_insert(a, 0));
        assert!(!g.check_and_insert(b, 0));
        assert!(!g.check_and_insert(a, 0));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn id_hasher_uses_the_high_bits() {
        use std::hash::BuildHasher;
        let build = BuildIdHasher::default();
        let hash = |v: u128| build.hash_one(v);
        assert_eq!(hash(in_bucket(3, 9)), 9);
        assert_ne!(hash(in_bucket(3, 9)), hash(in_bucket(3, 10)));
    }
}
