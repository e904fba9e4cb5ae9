//! The persisted form of the replay guard (SPEC §2.2: "the window survives restarts"): a log
//! of records, each a *delta* (the sightings one shard recorded in one epoch, in order) or a
//! *snapshot* (one bucket's whole window). The runtime appends them to a topic or a file as
//! outputs, acknowledged before the input offsets they cover are committed; this file owns
//! the binary format and the restore, and does no I/O.
//!
//! A restore replays the log from a point where every bucket has been written whole: a
//! snapshot resets its bucket, a delta appends. Every start writes every bucket whole, and a
//! bucket is written whole again after two windows of sightings, so a restore reads at most
//! about three windows. Records carry the public name of the bucket key they were made under;
//! if the key changed (an ephemeral secret), the restored sightings are placed in the new
//! buckets in log order.
//!
//! ```text
//! record  = b"BZR1" | kind u8 (0 delta, 1 snapshot) | key id [8] | shard u32 | bucket u8
//!           | count u32 | count × sighting                      (little-endian)
//! sighting = bucket u8 | fingerprint u64 | tag u64 (provenance, low bit = replay) | at_ms i64
//! ```
//! In a file each record is framed as `len u32 | check [4] | record`, `check` the first four
//! bytes of BLAKE3(record), so that a record torn by a crash is recognised and dropped.

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::replay::{Sighting, BUCKETS};
use super::sampling::SampleKey;

const MAGIC: &[u8; 4] = b"BZR1";
const HEADER: usize = 4 + 1 + 8 + 4 + 1 + 4;
const SIGHTING: usize = 1 + 8 + 8 + 8;
/// Sightings per record at most, so a snapshot or a delta fits any sink's message limit
/// (16,384 × 25 bytes ≈ 400 KiB).
pub const MAX_SIGHTINGS: usize = 16_384;
/// The largest record's bytes.
pub const MAX_RECORD_BYTES: usize = HEADER + MAX_SIGHTINGS * SIGHTING;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Sightings recorded by one shard, in order, each with its bucket.
    Delta,
    /// The whole window of one bucket, oldest first (a bucket's snapshot may span several
    /// records: the first resets the bucket, the rest, marked `Kind::More`, append).
    Snapshot,
    /// The continuation of a snapshot too long for one record.
    More,
}

/// One record of the replay log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayRecord {
    pub kind: Kind,
    /// [`SampleKey::id`] of the key whose buckets the sightings are in.
    pub key_id: [u8; 8],
    /// The shard (global worker index) that wrote it; informational.
    pub shard: u32,
    /// The bucket of a snapshot; 0 for a delta.
    pub bucket: u8,
    /// The sightings, each with its bucket (for a snapshot, always `bucket`).
    pub sightings: Vec<(u8, Sighting)>,
}

impl ReplayRecord {
    /// Records holding `sightings` (one shard's new sightings of an epoch), at most
    /// [`MAX_SIGHTINGS`] each.
    pub fn deltas(key_id: [u8; 8], shard: u32, sightings: Vec<(u8, Sighting)>) -> Vec<ReplayRecord> {
        sightings
            .chunks(MAX_SIGHTINGS)
            .map(|c| ReplayRecord {
                kind: Kind::Delta,
                key_id,
                shard,
                bucket: 0,
                sightings: c.to_vec(),
            })
            .collect()
    }

    /// Records holding the whole window of `bucket` (oldest first): one, or several when it
    /// is longer than [`MAX_SIGHTINGS`]. An empty window is one empty record.
    pub fn snapshot(key_id: [u8; 8], shard: u32, bucket: u8, window: &[Sighting]) -> Vec<ReplayRecord> {
        let mut out: Vec<ReplayRecord> = window
            .chunks(MAX_SIGHTINGS)
            .enumerate()
            .map(|(i, c)| ReplayRecord {
                kind: if i == 0 { Kind::Snapshot } else { Kind::More },
                key_id,
                shard,
                bucket,
                sightings: c.iter().map(|s| (bucket, *s)).collect(),
            })
            .collect();
        if out.is_empty() {
            out.push(ReplayRecord {
                kind: Kind::Snapshot,
                key_id,
                shard,
                bucket,
                sightings: Vec::new(),
            });
        }
        out
    }

    /// The record's bytes (see the module documentation).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER + self.sightings.len() * SIGHTING);
        out.extend_from_slice(MAGIC);
        out.push(match self.kind {
            Kind::Delta => 0,
            Kind::Snapshot => 1,
            Kind::More => 2,
        });
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.push(self.bucket);
        out.extend_from_slice(&(self.sightings.len() as u32).to_le_bytes());
        for (b, s) in &self.sightings {
            out.push(*b);
            out.extend_from_slice(&s.fp.to_le_bytes());
            out.extend_from_slice(&s.tag.to_le_bytes());
            out.extend_from_slice(&s.at_ms.to_le_bytes());
        }
    }

    /// The record whose bytes are `bytes`; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<ReplayRecord, String> {
        if bytes.len() < HEADER {
            return Err(format!(
                "a replay record is at least {HEADER} bytes, found {}",
                bytes.len()
            ));
        }
        if &bytes[..4] != MAGIC {
            return Err(format!(
                "expected the magic \"BZR1\", found {:?}",
                bytes[..4].escape_ascii().to_string()
            ));
        }
        let kind = match bytes[4] {
            0 => Kind::Delta,
            1 => Kind::Snapshot,
            2 => Kind::More,
            k => return Err(format!("unknown record kind {k}")),
        };
        let key_id: [u8; 8] = bytes[5..13].try_into().expect("8 bytes");
        let shard = u32::from_le_bytes(bytes[13..17].try_into().expect("4 bytes"));
        let bucket = bytes[17];
        let count = u32::from_le_bytes(bytes[18..22].try_into().expect("4 bytes")) as usize;
        let body = &bytes[HEADER..];
        if body.len() != count.saturating_mul(SIGHTING) {
            return Err(format!(
                "{count} sightings take {} bytes, found {}",
                count.saturating_mul(SIGHTING),
                body.len()
            ));
        }
        let sightings = body
            .chunks_exact(SIGHTING)
            .map(|c| {
                let u = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().expect("8 bytes"));
                (
                    c[0],
                    Sighting {
                        fp: u(1),
                        tag: u(9),
                        at_ms: u(17) as i64,
                    },
                )
            })
            .collect();
        Ok(ReplayRecord {
            kind,
            key_id,
            shard,
            bucket,
            sightings,
        })
    }

    /// The record framed for a file: `len u32 | check [4] | record`.
    pub fn frame(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        self.encode(out);
        let len = (out.len() - start - 8) as u32;
        let check = blake3::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&check.as_bytes()[..4]);
    }
}

/// Reads framed records from the start of `bytes`: the records, and the length of the prefix
/// that holds them. Reading stops at the first frame that is short or fails its check (the
/// tail a crash tore), so the prefix is where the next record may be appended.
pub fn unframe(bytes: &[u8]) -> (Vec<ReplayRecord>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= 8 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if blake3::hash(body).as_bytes()[..4] != bytes[pos + 4..pos + 8] {
            break;
        }
        match ReplayRecord::decode(body) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        pos += 8 + len;
    }
    (out, pos)
}

/// Where a restore must start reading, given the tail of the log (records in log order,
/// each with its position): the least position of the latest snapshot of every bucket, for
/// the newest key that has a snapshot of all 256 buckets in `tail`. `None` when no key has
/// one yet (read further back; from the log's start everything counts).
pub fn restore_start(tail: &[(u64, &ReplayRecord)]) -> Option<u64> {
    // key → bucket → position of its latest snapshot; keys by their latest appearance.
    let mut latest: BTreeMap<[u8; 8], BTreeMap<u8, u64>> = BTreeMap::new();
    let mut newest: Vec<[u8; 8]> = Vec::new();
    for (pos, r) in tail.iter().rev() {
        if !newest.contains(&r.key_id) {
            newest.push(r.key_id);
        }
        if r.kind == Kind::Snapshot {
            latest
                .entry(r.key_id)
                .or_default()
                .entry(r.bucket)
                .or_insert(*pos);
        }
    }
    newest.into_iter().find_map(|k| {
        let b = latest.get(&k)?;
        (b.len() == BUCKETS).then(|| *b.values().min().expect("256 buckets"))
    })
}

/// The replay state a log describes, in `key`'s buckets, each bucket's sightings oldest
/// first and at most `per_bucket` of them.
///
/// `records` are read in log order from a start [`restore_start`] gave (or the log's
/// start). Per (key id, bucket): a snapshot resets it, a delta appends, and only the newest
/// `per_bucket` are kept. Buckets of other keys are taken apart and their sightings placed
/// in `key`'s buckets in log order; a sighting present twice (a bucket written whole under
/// two keys) is kept once, at its first place.
pub fn restore(
    records: impl IntoIterator<Item = ReplayRecord>,
    key: &SampleKey,
    per_bucket: usize,
) -> Vec<Vec<Sighting>> {
    // (key id, bucket) → its newest sightings with their log order, oldest first. A list
    // never holds more than a window: a restore's memory is bounded by the window, not by
    // how far back it reads.
    type Lists = BTreeMap<([u8; 8], u8), VecDeque<(u64, Sighting)>>;
    let mut lists: Lists = BTreeMap::new();
    let mut order = 0u64;
    for r in records {
        if r.kind == Kind::Snapshot {
            lists.insert((r.key_id, r.bucket), VecDeque::new());
        }
        for (b, s) in r.sightings {
            let b = if r.kind == Kind::Delta { b } else { r.bucket };
            let list = lists.entry((r.key_id, b)).or_default();
            if list.len() == per_bucket {
                list.pop_front();
            }
            if per_bucket > 0 {
                list.push_back((order, s));
            }
            order += 1;
        }
    }
    let mut out = vec![Vec::new(); BUCKETS];
    if lists.keys().all(|(k, _)| *k == key.id()) {
        // The usual case, the same key: each list is its bucket's window.
        for ((_, b), list) in lists {
            out[usize::from(b)] = list.into_iter().map(|(_, s)| s).collect();
        }
        return out;
    }
    let mut placed: Vec<(u8, u64, Sighting)> = Vec::new();
    for ((k, b), list) in lists {
        let bucket = |s: &Sighting| if k == key.id() { b } else { key.bucket(s.fp) };
        placed.extend(list.into_iter().map(|(o, s)| (bucket(&s), o, s)));
    }
    placed.sort_unstable_by_key(|&(b, o, _)| (b, o));
    let mut seen = HashSet::new();
    for (b, _, s) in placed {
        if seen.insert((s.fp, s.provenance())) {
            out[usize::from(b)].push(s);
        }
    }
    for w in &mut out {
        let extra = w.len().saturating_sub(per_bucket);
        w.drain(..extra);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verification::replay::{provenance, ReplayGuard};

    fn s(fp: u64, n: u64) -> Sighting {
        Sighting::new(fp, provenance(None, n, &[0; 32]), n as i64, n % 2 == 1)
    }

    #[test]
    fn records_round_trip_and_frames_survive_a_torn_tail() {
        let d = ReplayRecord::deltas([1; 8], 3, vec![(4, s(9, 1)), (200, s(10, 2))]).remove(0);
        let mut bytes = Vec::new();
        d.encode(&mut bytes);
        assert_eq!(bytes.len(), HEADER + 2 * SIGHTING);
        assert_eq!(ReplayRecord::decode(&bytes).unwrap(), d);
        assert!(ReplayRecord::decode(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .contains("sightings take"));
        assert!(ReplayRecord::decode(b"BZR2aaaaaaaaaaaaaaaaaaaaaa")
            .unwrap_err()
            .contains("magic"));

        let snap = ReplayRecord::snapshot([1; 8], 0, 7, &[s(1, 1)]);
        let mut file = Vec::new();
        d.frame(&mut file);
        snap[0].frame(&mut file);
        let whole = file.len();
        d.frame(&mut file);
        for cut in [whole, whole + 3, whole + 20, file.len() - 1] {
            let (got, used) = unframe(&file[..cut]);
            assert_eq!(got, vec![d.clone(), snap[0].clone()], "cut at {cut}");
            assert_eq!(used, whole);
        }
        let mut flipped = file.clone();
        flipped[whole + 12] ^= 1;
        assert_eq!(
            unframe(&flipped).1,
            whole,
            "a frame that fails its check ends the log"
        );
        assert_eq!(unframe(&file).0.len(), 3);
    }

    #[test]
    fn long_windows_are_split_and_empty_ones_still_written() {
        let w: Vec<_> = (0..MAX_SIGHTINGS as u64 + 5).map(|n| s(n, n)).collect();
        let recs = ReplayRecord::snapshot([2; 8], 1, 9, &w);
        assert_eq!(
            recs.iter().map(|r| r.kind).collect::<Vec<_>>(),
            [Kind::Snapshot, Kind::More]
        );
        let key = SampleKey::from_secret(&[0; 32]);
        let key_id = key.id();
        let recs = ReplayRecord::snapshot(key_id, 1, 9, &w);
        let got = restore(recs, &key, usize::MAX);
        assert_eq!(got[9], w);
        let empty = ReplayRecord::snapshot(key_id, 1, 9, &[]);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].kind, Kind::Snapshot);
    }

    /// A guard run through a journal, logged as a shard would, restores to the same windows.
    #[test]
    fn a_restored_guard_equals_the_guard_that_wrote_the_log() {
        let key = SampleKey::from_secret(&[5; 32]);
        let mut g = ReplayGuard::new(256 * 4, 0).with_journal();
        let mut log = Vec::new();
        for b in 0..=255u8 {
            log.extend(ReplayRecord::snapshot(key.id(), 0, b, &[]));
        }
        for epoch in 0..50u64 {
            for i in 0..200 {
                let n = epoch * 200 + i;
                let fp = n % 3000; // repeats
                g.check(key.bucket(fp), fp, provenance(None, n, &[0; 32]), n as i64);
            }
            log.extend(ReplayRecord::deltas(key.id(), 0, g.drain_journal()));
            for b in g.due_snapshots() {
                log.extend(ReplayRecord::snapshot(key.id(), 0, b, &g.bucket_sightings(b)));
            }
        }
        let positions: Vec<(u64, &ReplayRecord)> =
            log.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
        let start = restore_start(&positions).expect("the start snapshots are complete");
        // Later snapshots moved the start past the initial ones.
        assert!(start > 255, "{start}");
        let got = restore(log[start as usize..].iter().cloned(), &key, g.per_bucket());
        for b in 0..=255u8 {
            assert_eq!(got[usize::from(b)], g.bucket_sightings(b), "bucket {b}");
        }
        // From the very start it is the same.
        let all = restore(log.iter().cloned(), &key, g.per_bucket());
        assert_eq!(all, got);
    }

    #[test]
    fn restore_start_needs_a_whole_set_of_one_key() {
        let mut log: Vec<ReplayRecord> = (0..255u8)
            .flat_map(|b| ReplayRecord::snapshot([1; 8], 0, b, &[]))
            .collect();
        let at = |log: &[ReplayRecord]| {
            let p: Vec<(u64, &ReplayRecord)> =
                log.iter().enumerate().map(|(i, r)| (i as u64 + 100, r)).collect();
            restore_start(&p)
        };
        assert_eq!(at(&log), None, "bucket 255 missing");
        log.extend(ReplayRecord::snapshot([1; 8], 0, 255, &[]));
        assert_eq!(at(&log), Some(100));
        // A newer key without a whole set does not count; the older key's set still does.
        log.extend(ReplayRecord::snapshot([2; 8], 0, 0, &[]));
        assert_eq!(at(&log), Some(100));
    }

    #[test]
    fn sightings_of_another_key_are_placed_in_the_new_buckets_in_log_order() {
        let old = SampleKey::from_secret(&[1; 32]);
        let new = SampleKey::from_secret(&[2; 32]);
        let sightings: Vec<Sighting> = (0..2_000).map(|n| s(n * 7919, n)).collect();
        let delta = ReplayRecord::deltas(
            old.id(),
            0,
            sightings.iter().map(|x| (old.bucket(x.fp), *x)).collect(),
        );
        // The new key's start snapshot of one bucket repeats some of them: kept once.
        let b0 = new.bucket(sightings[0].fp);
        let again: Vec<Sighting> = sightings
            .iter()
            .filter(|x| new.bucket(x.fp) == b0)
            .copied()
            .collect();
        let mut log = delta;
        log.extend(ReplayRecord::snapshot(new.id(), 0, b0, &again));
        let got = restore(log, &new, usize::MAX);
        assert_eq!(got.iter().map(Vec::len).sum::<usize>(), sightings.len());
        for (b, w) in got.iter().enumerate() {
            let want: Vec<Sighting> = sightings
                .iter()
                .filter(|x| usize::from(new.bucket(x.fp)) == b)
                .copied()
                .collect();
            assert_eq!(w, &want, "bucket {b}");
        }
        // The cap keeps the newest.
        let capped = restore(
            ReplayRecord::deltas(new.id(), 0, sightings.iter().map(|x| (0, *x)).collect()),
            &new,
            10,
        );
        assert_eq!(capped[0], sightings[1990..]);
    }
}
