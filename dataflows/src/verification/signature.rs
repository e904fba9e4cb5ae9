//! Observation signatures (SPEC §3.2): the signed message, key ids, the keyring, key parsing,
//! the signing-key file, and single and batch Ed25519 checks. It does not choose which
//! observations to check (the tiers in `verification/mod.rs` do) nor read files or config.
//!
//! Checks use ed25519-dalek's cofactorless `verify`, the same equation its batch verifier uses,
//! so a batch and the single-check fallback judge a signature alike.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::leaf::id_len_be;

/// Domain tag that opens every observation message, followed by a 0x00 byte.
pub const DOMAIN: &[u8] = b"bizra/observation/v1";

/// The §3.2 message: `"bizra/observation/v1"` ‖ 0x00 ‖ u16be(len id) ‖ id ‖ SHA-256(payload).
///
/// # Panics
/// If the id is longer than 65 535 bytes (decode caps ids at 256).
pub fn observation_message(id: &str, payload_sha256: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::new();
    observation_message_into(&mut out, id, payload_sha256);
    out
}

/// Clears `out` and writes the §3.2 message into it, so one buffer serves many observations.
///
/// # Panics
/// As [`observation_message`].
pub fn observation_message_into(out: &mut Vec<u8>, id: &str, payload_sha256: &[u8; 32]) {
    out.clear();
    out.reserve(DOMAIN.len() + 1 + 2 + id.len() + 32);
    out.extend_from_slice(DOMAIN);
    out.push(0x00);
    out.extend_from_slice(&id_len_be(id));
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(payload_sha256);
}

/// Hex of the first 8 bytes of SHA-256 of the raw 32-byte public key (SPEC §3.3): the name a
/// commitment gives its signer, and the conventional name of a keyring entry.
pub fn key_id(pk: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(pk.as_bytes())[..8])
}

/// A key that could not be loaded. `entry` names where it came from (a keyring entry, a
/// public key, the signing-key file); secret material never appears in a message.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard padded base64.
    #[error("{entry}: expected standard padded base64 of 32 key bytes, found text that does not decode ({source})")]
    Base64 {
        entry: String,
        source: base64::DecodeError,
    },
    /// The base64 decodes to the wrong number of bytes.
    #[error("{entry}: expected 32 key bytes, found {found}")]
    Length { entry: String, found: usize },
    /// The 32 bytes are not a compressed Edwards point.
    #[error("{entry}: expected an Ed25519 public key (a compressed Edwards point), found 32 bytes that are not a valid point")]
    NotAPoint { entry: String },
    /// The point has small order: anyone could forge signatures under it.
    #[error("{entry}: expected an Ed25519 public key of full order, found a small-order (weak) point under which signatures can be forged")]
    WeakKey { entry: String },
    /// The same keyring name appears twice.
    #[error("{entry}: expected each keyring name once, found it again")]
    Duplicate { entry: String },
}

/// Trusted observation keys by name; an observation's `signature.key_id` selects its key.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// Name → key. Names are free-form, conventionally [`key_id`] of the key.
    keys: HashMap<String, VerifyingKey>,
}

impl Keyring {
    /// An empty keyring: every signed observation checks as [`SigCheck::UnknownKey`].
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Loads `(name, standard base64 of the raw 32-byte key)` entries, refusing bad base64,
    /// wrong lengths, invalid or weak points and duplicate names.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, String)>) -> Result<Keyring, KeyError> {
        let mut ring = Keyring::new();
        for (name, text) in entries {
            let entry = format!("keyring entry {name:?}");
            let key = parse_key(&entry, &text)?;
            if ring.keys.contains_key(&name) {
                return Err(KeyError::Duplicate { entry });
            }
            ring.keys.insert(name, key);
        }
        Ok(ring)
    }

    /// Adds or replaces a key, returning the one it replaced. The caller vouches for the key;
    /// keys from text should come through [`parse_public_key`], which refuses weak points.
    pub fn insert(&mut self, name: impl Into<String>, key: VerifyingKey) -> Option<VerifyingKey> {
        self.keys.insert(name.into(), key)
    }

    /// The key registered under `name`.
    pub fn get(&self, name: &str) -> Option<&VerifyingKey> {
        self.keys.get(name)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is registered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses a public key: standard padded base64 of the raw 32 bytes (the `/pubkey` format).
/// Refuses invalid and small-order points.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    parse_key("public key", text)
}

fn parse_key(entry: &str, text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_32(entry, text)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotAPoint {
        entry: entry.to_owned(),
    })?;
    if key.is_weak() {
        return Err(KeyError::WeakKey {
            entry: entry.to_owned(),
        });
    }
    Ok(key)
}

fn decode_32(entry: &str, text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|source| KeyError::Base64 {
        entry: entry.to_owned(),
        source,
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
        entry: entry.to_owned(),
        found: bytes.len(),
    })
}

/// Reads the signing-key file written by `bizra keygen`.
///
/// File format: one line holding the standard padded base64 of the 32-byte Ed25519 secret seed
/// (RFC 8032 private key), optionally followed by a newline. Surrounding whitespace is ignored.
pub fn signing_key_from_file_text(text: &str) -> Result<SigningKey, KeyError> {
    let seed = decode_32("signing key file", text)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes the signing-key file format read by [`signing_key_from_file_text`]: the base64 seed
/// and a newline. The text is secret; store it with owner-only permissions.
pub fn signing_key_to_file_text(key: &SigningKey) -> String {
    let mut text = STANDARD.encode(key.as_bytes());
    text.push('\n');
    text
}

/// Outcome of one signature check, as reported in `verification.checks.signature`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigCheck {
    /// The signature verifies under the named key.
    Ok,
    /// The named key is known but the signature does not verify.
    Bad,
    /// No key of that name in the keyring.
    UnknownKey,
}

impl SigCheck {
    /// Wire spelling: `ok`, `bad`, `unknown_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigCheck::Ok => "ok",
            SigCheck::Bad => "bad",
            SigCheck::UnknownKey => "unknown_key",
        }
    }
}

/// The group order ℓ = 2²⁵² + 27742317777372353535851937790883648493, little-endian.
pub(crate) const ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Whether the signature's `s` half (bytes 32..64, little-endian) is reduced mod ℓ, as
/// RFC 8032 §5.1.7 requires. A signature whose `s` is not can never verify; telling so costs
/// 32 byte comparisons, so it is checked on every item, sampled or not (SPEC §2.2).
pub fn s_is_canonical(sig: &[u8; 64]) -> bool {
    for i in (0..32).rev() {
        let (b, l) = (sig[32 + i], ORDER_LE[i]);
        if b != l {
            return b < l;
        }
    }
    false
}

/// Checks one signature over `message` under the keyring's key `key_id`.
pub fn verify_one(keyring: &Keyring, key_id: &str, message: &[u8], sig: &[u8; 64]) -> SigCheck {
    match keyring.get(key_id) {
        None => SigCheck::UnknownKey,
        Some(pk) if verify_single(pk, message, sig) => SigCheck::Ok,
        Some(_) => SigCheck::Bad,
    }
}

/// Checks `(key, message, signature)` items together; `result[i]` says whether item i verifies.
///
/// Ed25519 batch equations over chunks of the items; only when one fails are halves checked
/// (recursively, down to single checks) to locate the bad ones. Signature bytes that are no
/// valid encoding (s not reduced) count as bad. The chunk size follows the share of bad
/// signatures this thread has seen lately ([`chunk_for`]): it decides the cost, never a result.
pub fn verify_batch(items: &[(&VerifyingKey, &[u8], &[u8; 64])]) -> Vec<bool> {
    let mut ok = vec![false; items.len()];
    if items.is_empty() {
        return ok;
    }
    let chunk = chunk_for(BAD_SHARE.get());
    for (c, o) in items.chunks(chunk).zip(ok.chunks_mut(chunk)) {
        locate(c, o, false);
    }
    let bad = ok.iter().filter(|o| !**o).count();
    let weight = (items.len() as f64 / 1024.0).min(1.0);
    BAD_SHARE.set(BAD_SHARE.get() + weight * (bad as f64 / items.len() as f64 - BAD_SHARE.get()));
    ok
}

thread_local! {
    /// The share of bad signatures among the last ~1,000 this thread batch-checked (an
    /// exponentially weighted mean over calls, each weighted by its size).
    static BAD_SHARE: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

#[cfg(test)]
thread_local! {
    /// Signature checks done on this thread, in batch units (a single check counts 2).
    static WORK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Most signatures in one batch equation. Batches beyond 32 gained nothing measurable, and a
/// bad signature costs about twice its chunk in bisection, so the cap bounds what one forgery
/// costs on a clean stream.
const MAX_CHUNK: usize = 64;

/// The chunk size that minimises the expected cost per signature when a share `bad` of them
/// fails. A chunk of n costs about (1 + k/n) batch units per signature (k ≈ 3: the equation's
/// fixed part) plus 1.5·n per bad one (the bisection); the minimum is at n = √(2/bad), taken as
/// a power of two between 2 (below 4 every signature is checked alone) and [`MAX_CHUNK`].
/// Measured (BENCHMARKS, issue 16, "Forged signatures"): at 1.5 % bad, chunks of 8–16 run in
/// 0.83× the CPU of whole-batch checks; at 10 %, chunks of 4 in 0.67×; clean, 16–64 alike.
pub fn chunk_for(bad: f64) -> usize {
    if bad <= 2.0 / (MAX_CHUNK * MAX_CHUNK) as f64 {
        return MAX_CHUNK;
    }
    let n = (2.0 / bad).sqrt();
    let pow2 = 1usize << (n.max(1.0).log2().floor() as u32);
    pow2.clamp(2, MAX_CHUNK)
}

/// Below this size a failed batch is settled one signature at a time.
const BISECT_MIN: usize = 4;

/// Settles `items` into `ok` and returns whether all verify. Batch-verifies them (unless
/// `known_bad`: the caller knows one fails); on failure checks the left half, and if that
/// half verifies, the right half is known to hold a bad one and is split without its own
/// batch check. k bad signatures among n cost about k·log2(n) batch checks.
fn locate(items: &[(&VerifyingKey, &[u8], &[u8; 64])], ok: &mut [bool], known_bad: bool) -> bool {
    if items.len() < BISECT_MIN {
        for (o, (pk, m, s)) in ok.iter_mut().zip(items) {
            *o = verify_single(pk, m, s);
        }
        // A single check costs about two signatures' share of a batch equation.
        #[cfg(test)]
        WORK.set(WORK.get() + 2 * items.len());
        return ok.iter().all(|o| *o);
    }
    if !known_bad {
        #[cfg(test)]
        WORK.set(WORK.get() + items.len());
        if batch_holds(items) {
            ok.fill(true);
            return true;
        }
    }
    let mid = items.len() / 2;
    let (left, right) = ok.split_at_mut(mid);
    let left_ok = locate(&items[..mid], left, false);
    locate(&items[mid..], right, left_ok);
    false
}

/// Whether the Ed25519 batch equation holds for all `items`: the equation of
/// `ed25519_dalek::verify_batch` — the same hashes h = SHA-512(R ‖ A ‖ M), the same
/// cofactorless check `[−Σ zᵢsᵢ]B + Σ zᵢRᵢ + Σ (zᵢhᵢ)Aᵢ = 0` with random 128-bit zᵢ — except
/// that the terms of equal keys are added before the multiplication: (Σ zᵢhᵢ)·A is the same
/// point as Σ (zᵢhᵢ)·A, and a stream signed by a few keys needs n + k + 1 terms instead of
/// 2n + 1. An s that is not reduced or an R that is not a point fails it, as in dalek.
/// The zᵢ come from the thread's CSPRNG (dalek derives them from a transcript of the
/// inputs); either way a batch holding a bad signature passes with probability 2⁻¹²⁸.
fn batch_holds(items: &[(&VerifyingKey, &[u8], &[u8; 64])]) -> bool {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use rand::Rng as _;
    use sha2::{Digest as _, Sha512};

    let mut rng = rand::thread_rng();
    let mut scalars = Vec::with_capacity(items.len() + 2);
    let mut points = Vec::with_capacity(items.len() + 2);
    let mut keys: Vec<(&VerifyingKey, Scalar)> = Vec::new();
    let mut b = Scalar::ZERO;
    for (pk, message, sig) in items {
        let (r_bytes, s_bytes) = sig.split_at(32);
        let r_bytes: [u8; 32] = r_bytes.try_into().expect("32 bytes");
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(
            s_bytes.try_into().expect("32 bytes"),
        )) else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        let h = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r_bytes)
                .chain_update(pk.as_bytes())
                .chain_update(message)
                .finalize()
                .into(),
        );
        let z = Scalar::from(rng.gen::<u128>());
        b += z * s;
        scalars.push(z);
        points.push(r);
        match keys.iter_mut().find(|(k, _)| k == pk) {
            Some((_, c)) => *c += z * h,
            None => keys.push((pk, z * h)),
        }
    }
    scalars.push(-b);
    points.push(ED25519_BASEPOINT_POINT);
    for (k, c) in keys {
        scalars.push(c);
        points.push(k.to_edwards());
    }
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
}

fn verify_single(pk: &VerifyingKey, message: &[u8], sig: &[u8; 64]) -> bool {
    pk.verify(message, &Signature::from_bytes(sig)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn b64(pk: &VerifyingKey) -> String {
        STANDARD.encode(pk.as_bytes())
    }

    #[test]
    fn s_is_canonical_compares_s_with_the_group_order() {
        let sig = key(1).sign(b"m").to_bytes();
        assert!(s_is_canonical(&sig), "a real signature's s is reduced");
        let with_s = |s_le: [u8; 32]| {
            let mut x = sig;
            x[32..].copy_from_slice(&s_le);
            x
        };
        assert!(!s_is_canonical(&with_s(ORDER_LE)), "s = ℓ");
        let mut below = ORDER_LE;
        below[0] -= 1;
        assert!(s_is_canonical(&with_s(below)), "s = ℓ − 1");
        assert!(!s_is_canonical(&with_s([0xff; 32])));
        assert!(s_is_canonical(&with_s([0; 32])));
        // ed25519-dalek agrees: an unreduced s never verifies.
        let pk = key(1).verifying_key();
        let mut forged = sig;
        forged[32..].copy_from_slice(&ORDER_LE);
        assert!(pk.verify_strict(b"m", &Signature::from_bytes(&forged)).is_err());
    }

    #[test]
    fn observation_message_matches_the_spec_layout() {
        let msg = observation_message("g-hello", &[9; 32]);
        let mut want = b"bizra/observation/v1\x00\x00\x07g-hello".to_vec();
        want.extend_from_slice(&[9; 32]);
        assert_eq!(msg, want);
        let mut buf = b"old".to_vec();
        observation_message_into(&mut buf, "g-hello", &[9; 32]);
        assert_eq!(buf, want);
    }

    #[test]
    fn key_id_is_hex_of_the_first_8_bytes_of_sha256_of_the_key() {
        let pk = key(1).verifying_key();
        let id = key_id(&pk);
        assert_eq!(id.len(), 16);
        assert_eq!(id, hex::encode(&Sha256::digest(pk.to_bytes())[..8]));
    }

    #[test]
    fn keyring_loads_good_entries_and_names_the_bad_one() {
        let pk = key(1).verifying_key();
        let ring = Keyring::from_entries([("a".to_owned(), b64(&pk))]).unwrap();
        assert_eq!(ring.get("a"), Some(&pk));
        assert_eq!(ring.len(), 1);
        assert!(ring.get("b").is_none());

        let err = Keyring::from_entries([
            ("a".to_owned(), b64(&pk)),
            ("broken".to_owned(), "not base64!".to_owned()),
        ])
        .unwrap_err();
        assert!(matches!(err, KeyError::Base64 { .. }));
        assert!(err.to_string().contains("\"broken\""), "{err}");

        let err = Keyring::from_entries([("short".to_owned(), STANDARD.encode([1u8; 31]))]).unwrap_err();
        assert!(matches!(err, KeyError::Length { found: 31, .. }), "{err}");
        assert!(
            err.to_string().contains("expected 32 key bytes, found 31"),
            "{err}"
        );

        let err =
            Keyring::from_entries([("a".to_owned(), b64(&pk)), ("a".to_owned(), b64(&pk))]).unwrap_err();
        assert!(matches!(err, KeyError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn bytes_that_are_not_a_point_are_refused() {
        // y = 2 has no x on the curve; no valid compressed point encodes it.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert!(VerifyingKey::from_bytes(&bytes).is_err());
        let err = parse_public_key(&STANDARD.encode(bytes)).unwrap_err();
        assert!(matches!(err, KeyError::NotAPoint { .. }), "{err}");
    }

    #[test]
    fn small_order_keys_are_refused() {
        // The identity point (y = 1) has order 1: a forgeable key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let err = parse_public_key(&STANDARD.encode(identity)).unwrap_err();
        assert!(matches!(err, KeyError::WeakKey { .. }), "{err}");
    }

    #[test]
    fn public_key_text_round_trips_and_unpadded_base64_is_refused() {
        let pk = key(3).verifying_key();
        assert_eq!(parse_public_key(&b64(&pk)).unwrap(), pk);
        let unpadded = b64(&pk).trim_end_matches('=').to_owned();
        assert!(matches!(
            parse_public_key(&unpadded),
            Err(KeyError::Base64 { .. })
        ));
    }

    #[test]
    fn signing_key_file_round_trips_and_errors_do_not_echo_the_text() {
        let sk = key(4);
        let text = signing_key_to_file_text(&sk);
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        assert_eq!(signing_key_from_file_text(&text).unwrap(), sk);
        assert_eq!(signing_key_from_file_text(text.trim()).unwrap(), sk);

        let long = STANDARD.encode([5u8; 64]);
        let err = signing_key_from_file_text(&long).unwrap_err();
        assert!(matches!(err, KeyError::Length { found: 64, .. }));
        assert!(!err.to_string().contains(&long));
        assert!(signing_key_from_file_text("").is_err());
    }

    #[test]
    fn verify_one_distinguishes_ok_bad_and_unknown_key() {
        let sk = key(6);
        let mut ring = Keyring::new();
        ring.insert("k", sk.verifying_key());
        let msg = observation_message("id", &[0; 32]);
        let sig = sk.sign(&msg).to_bytes();
        assert_eq!(verify_one(&ring, "k", &msg, &sig), SigCheck::Ok);
        assert_eq!(verify_one(&ring, "k", b"other", &sig), SigCheck::Bad);
        assert_eq!(verify_one(&ring, "nobody", &msg, &sig), SigCheck::UnknownKey);
        assert_eq!(SigCheck::UnknownKey.as_str(), "unknown_key");
    }

    #[test]
    fn batch_verification_locates_each_bad_item() {
        let keys: Vec<SigningKey> = (10..16).map(key).collect();
        let pks: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
        let msgs: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; 40]).collect();
        let mut sigs: Vec<[u8; 64]> = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| k.sign(m).to_bytes())
            .collect();

        let items = |sigs: &[[u8; 64]]| -> Vec<bool> {
            let it: Vec<_> = (0..6).map(|i| (&pks[i], msgs[i].as_slice(), &sigs[i])).collect();
            verify_batch(&it)
        };
        assert_eq!(items(&sigs), vec![true; 6]);

        sigs[1][0] ^= 1; // corrupt R
        sigs[4][63] = 0xff; // s not reduced: no valid encoding
        assert_eq!(items(&sigs), vec![true, false, true, true, false, true]);
    }

    #[test]
    fn batch_of_zero_or_one_item_works() {
        assert!(verify_batch(&[]).is_empty());
        let sk = key(20);
        let pk = sk.verifying_key();
        let sig = sk.sign(b"m").to_bytes();
        assert_eq!(verify_batch(&[(&pk, b"m".as_slice(), &sig)]), vec![true]);
        assert_eq!(verify_batch(&[(&pk, b"n".as_slice(), &sig)]), vec![false]);
    }

    /// A message and its signature.
    type Signed = (Vec<u8>, [u8; 64]);

    /// `n` items signed by one key; those with `bad(i)` carry a signature of another message.
    fn signed(n: usize, bad: impl Fn(usize) -> bool) -> (VerifyingKey, Vec<Signed>) {
        let k = key(7);
        let items = (0..n)
            .map(|i| {
                let m = format!("message {i}").into_bytes();
                let signed_over = if bad(i) {
                    b"something else".to_vec()
                } else {
                    m.clone()
                };
                (m, k.sign(&signed_over).to_bytes())
            })
            .collect();
        (k.verifying_key(), items)
    }

    #[test]
    fn chunks_shrink_as_the_share_of_bad_signatures_grows() {
        assert_eq!(chunk_for(0.0), MAX_CHUNK);
        assert_eq!(chunk_for(0.0001), MAX_CHUNK);
        assert_eq!(chunk_for(0.015), 8);
        assert_eq!(chunk_for(0.1), 4);
        assert_eq!(chunk_for(0.6), 2);
        assert_eq!(chunk_for(1.0), 2);
    }

    #[test]
    fn batch_results_match_single_checks_whatever_the_chunk() {
        // Clean, then clustered forgeries, then many: the chunk size changes between calls.
        let shapes: [&dyn Fn(usize) -> bool; 3] = [&|_| false, &|i| (40..52).contains(&i), &|i| i % 3 == 0];
        for shape in shapes {
            let (pk, items) = signed(150, shape);
            let refs: Vec<(&VerifyingKey, &[u8], &[u8; 64])> =
                items.iter().map(|(m, s)| (&pk, m.as_slice(), s)).collect();
            let got = verify_batch(&refs);
            let want: Vec<bool> = items.iter().map(|(m, s)| verify_single(&pk, m, s)).collect();
            assert_eq!(got, want);
            assert_eq!(
                got.iter().filter(|o| !**o).count(),
                (0..150).filter(|i| shape(*i)).count()
            );
        }
    }

    /// A producer that forges one signature in ten must not make each cost dozens: with whole
    /// batches of 64 the bisection did ~5 units of work per signature here; chunks that follow
    /// the share of bad ones do under 3 (a clean stream does ~1).
    #[test]
    fn a_stream_of_forgeries_costs_a_bounded_amount_of_work() {
        let (pk, items) = signed(64 * 24, |i| i % 10 == 3);
        let refs: Vec<(&VerifyingKey, &[u8], &[u8; 64])> =
            items.iter().map(|(m, s)| (&pk, m.as_slice(), s)).collect();
        BAD_SHARE.set(0.0);
        for call in refs.chunks(64).take(12) {
            verify_batch(call);
        }
        WORK.set(0);
        for call in refs.chunks(64).skip(12) {
            verify_batch(call);
        }
        let per_signature = WORK.get() as f64 / (64.0 * 12.0);
        assert!(
            per_signature < 3.0,
            "{per_signature:.2} batch units per signature"
        );
    }

    /// `batch_holds` against ed25519-dalek's own `verify_batch` on random batches: several
    /// keys, repeated keys, and every kind of bad item (another message, a changed R, an R
    /// that is no point, an unreduced s, a changed s). They must agree on every batch.
    #[test]
    fn the_merged_batch_equation_agrees_with_dalek() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let keys: Vec<SigningKey> = (1..=5).map(key).collect();
        let (mut holds, mut fails) = (0, 0);
        for _ in 0..400 {
            let n = rng.gen_range(1..40);
            let mut batch: Vec<(VerifyingKey, Vec<u8>, [u8; 64])> = Vec::new();
            for i in 0..n {
                let distinct = rng.gen_range(1..=keys.len());
                let k = &keys[rng.gen_range(0..distinct)];
                let m = format!("m{i}-{}", rng.gen::<u32>()).into_bytes();
                let mut sig = k.sign(&m).to_bytes();
                if rng.gen_bool(0.04) {
                    match rng.gen_range(0..5) {
                        0 => sig = k.sign(b"another message").to_bytes(),
                        1 => sig[rng.gen_range(0..32)] ^= 1 << rng.gen_range(0..8),
                        2 => sig[..32].copy_from_slice(&[0xff; 32]),
                        3 => {
                            // s + l: the same residue, unreduced.
                            let mut carry = 0u16;
                            for j in 0..32 {
                                let v = u16::from(sig[32 + j]) + u16::from(ORDER_LE[j]) + carry;
                                sig[32 + j] = v as u8;
                                carry = v >> 8;
                            }
                        }
                        _ => sig[32 + rng.gen_range(0..31)] ^= 1 << rng.gen_range(0..8),
                    }
                }
                batch.push((k.verifying_key(), m, sig));
            }
            let items: Vec<(&VerifyingKey, &[u8], &[u8; 64])> =
                batch.iter().map(|(k, m, s)| (k, m.as_slice(), s)).collect();
            let messages: Vec<&[u8]> = batch.iter().map(|(_, m, _)| m.as_slice()).collect();
            let sigs: Vec<Signature> = batch.iter().map(|(_, _, s)| Signature::from_bytes(s)).collect();
            let vks: Vec<VerifyingKey> = batch.iter().map(|(k, _, _)| *k).collect();
            let dalek = ed25519_dalek::verify_batch(&messages, &sigs, &vks).is_ok();
            assert_eq!(batch_holds(&items), dalek, "batch of {n}");
            if dalek {
                holds += 1
            } else {
                fails += 1
            }
        }
        assert!(
            holds > 50 && fails > 50,
            "both outcomes exercised: {holds} hold, {fails} fail"
        );
    }
}
