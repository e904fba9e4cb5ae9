//! The id filter of a finished segment: a Bloom filter over the observation ids of its
//! records, in a sidecar file `seg-N.ids` next to `seg-N.xz`, so that `audit get` decodes only
//! the segments that may hold an id. It is derived data, outside the hash chain: a segment
//! without a valid filter (the open one, one cut short by a crash, a damaged file) is simply
//! scanned. A filter never says "absent" for an id it was built with; it says "maybe" for
//! about 1 % of the others.
//!
//! File: `b"BZI1"` | hashes u32 | bits u64 | the bit array, little-endian u64 words |
//! BLAKE3 of everything before it (32 bytes).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bizra_dataflows::verification::replay::id_hash;

const MAGIC: &[u8; 4] = b"BZI1";
/// Bits per id and hash functions: about 0.8 % false positives.
const BITS_PER_ID: u64 = 10;
const HASHES: u32 = 7;

/// The two 64-bit halves of the id's routing hash (`replay::id_hash`, 128 bits of its
/// BLAKE3), from which every probe is derived.
pub(crate) fn id_key(id: &str) -> [u64; 2] {
    let h = id_hash(id);
    [h as u64, (h >> 64) as u64]
}

/// The sidecar of the segment at `segment`.
pub(crate) fn sidecar(segment: &Path) -> PathBuf {
    segment.with_extension("ids")
}

/// The `hashes` bit positions of `key` among `bits` (double hashing).
fn probes(hashes: u32, bits: u64, [h1, h2]: [u64; 2]) -> impl Iterator<Item = u64> {
    (0..u64::from(hashes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2 | 1)) % bits)
}

#[derive(Debug, PartialEq)]
pub(crate) struct IdFilter {
    hashes: u32,
    words: Vec<u64>,
}

impl IdFilter {
    /// A filter holding `keys`.
    pub(crate) fn build(keys: &[[u64; 2]]) -> IdFilter {
        let bits = (keys.len() as u64 * BITS_PER_ID).max(64);
        let mut f = IdFilter {
            hashes: HASHES,
            words: vec![0; bits.div_ceil(64) as usize],
        };
        let bits = f.words.len() as u64 * 64;
        for key in keys {
            for bit in probes(HASHES, bits, *key) {
                f.words[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        f
    }

    /// False only if no id with this key was put in.
    pub(crate) fn may_contain(&self, key: [u64; 2]) -> bool {
        probes(self.hashes, self.words.len() as u64 * 64, key)
            .all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.words.len() * 8 + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.hashes.to_le_bytes());
        out.extend_from_slice(&(self.words.len() as u64 * 64).to_le_bytes());
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes());
        out
    }

    /// The filter in `bytes`, or `None` unless they are exactly a well-formed, intact filter.
    fn from_bytes(bytes: &[u8]) -> Option<IdFilter> {
        let (body, check) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != check || body.get(..4)? != MAGIC {
            return None;
        }
        let hashes = u32::from_le_bytes(body.get(4..8)?.try_into().ok()?);
        let bits = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
        let words: Vec<u64> = body[16..]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let whole = body[16..].len() % 8 == 0 && words.len() as u64 * 64 == bits;
        (whole && bits > 0 && (1..=64).contains(&hashes)).then_some(IdFilter { hashes, words })
    }

    /// Writes the sidecar of `segment` (through a temporary file and a rename, so a reader
    /// sees the whole filter or none).
    pub(crate) fn write(&self, segment: &Path) -> std::io::Result<()> {
        let path = sidecar(segment);
        let tmp = path.with_extension("ids.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&self.to_bytes())?;
        drop(f);
        fs::rename(&tmp, &path)
    }

    /// The sidecar of `segment`, if it exists and is intact.
    pub(crate) fn read(segment: &Path) -> Option<IdFilter> {
        IdFilter::from_bytes(&fs::read(sidecar(segment)).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize, tag: &str) -> Vec<[u64; 2]> {
        (0..n).map(|i| id_key(&format!("{tag}-{i}"))).collect()
    }

    #[test]
    fn every_id_put_in_is_found_and_few_others_are() {
        let ins = keys(20_000, "in");
        let f = IdFilter::build(&ins);
        assert!(ins.iter().all(|k| f.may_contain(*k)));
        let false_positives = keys(20_000, "out").iter().filter(|k| f.may_contain(**k)).count();
        assert!(false_positives < 400, "{false_positives} of 20000");
        assert!(!IdFilter::build(&[]).may_contain(id_key("x")));
    }

    #[test]
    fn round_trips_through_its_sidecar_and_refuses_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("seg-000000000000.xz");
        assert_eq!(IdFilter::read(&seg), None);
        let f = IdFilter::build(&keys(100, "a"));
        f.write(&seg).unwrap();
        assert_eq!(IdFilter::read(&seg), Some(f));
        let path = sidecar(&seg);
        let mut bytes = fs::read(&path).unwrap();
        for at in [0, 5, 20, bytes.len() - 1] {
            bytes[at] ^= 1;
            assert_eq!(IdFilter::from_bytes(&bytes), None, "flipped byte {at}");
            bytes[at] ^= 1;
        }
        assert_eq!(IdFilter::from_bytes(&bytes[..bytes.len() - 1]), None);
        assert_eq!(IdFilter::from_bytes(&[]), None);
    }
}
