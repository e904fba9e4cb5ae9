//! Observation signatures (SPEC §3.2): the signed message, key ids, the keyring, key parsing,
//! the signing-key file, and single and batch Ed25519 checks. It does not choose which
//! observations to check (the tiers in `verification/mod.rs` do) nor read files or config.
//!
//! Checks are ed25519-dalek's cofactorless `verify`, or the same check on a signature decoded
//! once for a batch ([`verify_batch`]); batches use the cofactorless equation of dalek's batch
//! verifier, so a batch and a single check judge a signature alike (DECISIONS: but for one
//! crafted by a key's holder with a small-order component).

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
    below_le(sig[32..].try_into().expect("32 bytes"), &ORDER_LE)
}

/// Whether the little-endian number `x` is below `bound`.
fn below_le(x: &[u8; 32], bound: &[u8; 32]) -> bool {
    (0..32)
        .rev()
        .find(|&i| x[i] != bound[i])
        .is_some_and(|i| x[i] < bound[i])
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
/// Each signature is decoded and hashed once ([`prepare`]); one whose bytes are no valid
/// encoding (s not reduced, R not the canonical encoding of a point) is bad without further
/// work. The rest go through Ed25519 batch equations over chunks; only when one fails are
/// halves checked (recursively) to locate the bad ones, and every signature judged bad was
/// judged so by a check of its own. The chunk size follows the share of bad signatures this
/// thread has seen lately ([`chunk_for`]): it decides the cost, never a result.
pub fn verify_batch(items: &[(&VerifyingKey, &[u8], &[u8; 64])]) -> Vec<bool> {
    let mut ok = vec![false; items.len()];
    if items.is_empty() {
        return ok;
    }
    let (at, prepared): (Vec<usize>, Vec<Prepared>) = items
        .iter()
        .enumerate()
        .filter_map(|(i, &(pk, m, s))| prepare(pk, m, s).map(|p| (i, p)))
        .unzip();
    if prepared.is_empty() {
        return ok;
    }
    let mut settled = vec![false; prepared.len()];
    let chunk = chunk_for(BAD_SHARE.get());
    for (c, o) in prepared.chunks(chunk).zip(settled.chunks_mut(chunk)) {
        locate(c, o, false);
    }
    let bad = settled.iter().filter(|o| !**o).count();
    let weight = (prepared.len() as f64 / 1024.0).min(1.0);
    BAD_SHARE.set(BAD_SHARE.get() + weight * (bad as f64 / prepared.len() as f64 - BAD_SHARE.get()));
    for (i, s) in at.into_iter().zip(settled) {
        ok[i] = s;
    }
    ok
}

thread_local! {
    /// The share of bad signatures among the last ~1,000 prepared ones this thread checked
    /// (an exponentially weighted mean over calls, each weighted by its size). Encodings
    /// refused while preparing cost nothing and do not count: a sender could otherwise make
    /// every honest signature a single check by mixing in free garbage.
    static BAD_SHARE: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

#[cfg(test)]
thread_local! {
    /// Signature checks done on this thread, in the units of [`chunk_for`]'s cost model.
    static WORK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Most signatures in one batch equation: beyond 64 a batch gains little (BENCHMARKS, issue
/// 16) and a bad signature's bisection grows with it.
const MAX_CHUNK: usize = 64;

/// The cost model behind [`chunk_for`], in units of one signature's term in a batch
/// equation (~4.4 µs on the 2-core test machine, as much as decompressing its R; BENCHMARKS,
/// issue 16, "Prepared signatures"): an equation of n prepared signatures costs
/// `BATCH_FIXED` + n (the fixed part is mostly its 256 doublings), a single check `SINGLE`.
const BATCH_FIXED: usize = 5;
const SINGLE: usize = 6;

/// The chunk size with the least expected cost per signature when a share `bad` of them
/// fails: a chunk of n ≥ 2 costs 1 + F/n per signature, and each bad one a bisection of
/// about F·log₂n + n + S (F = [`BATCH_FIXED`], S = [`SINGLE`]); a chunk of 1 is a single
/// check, S. Powers of two up to [`MAX_CHUNK`]: 64 for a clean stream, 16 at 1 % bad, 4 at
/// 10 %, and single checks once about a fifth are bad.
pub fn chunk_for(bad: f64) -> usize {
    let (f, s) = (BATCH_FIXED as f64, SINGLE as f64);
    let cost = |n: usize| {
        if n == 1 {
            return s;
        }
        let n_f = n as f64;
        1.0 + f / n_f + bad * (f * n_f.log2() + n_f + s)
    };
    let mut best = 1;
    let mut n = 2;
    while n <= MAX_CHUNK {
        if cost(n) < cost(best) {
            best = n;
        }
        n *= 2;
    }
    best
}

/// A signature ready for the batch equation: the parts that do not depend on the equation's
/// random weights, computed once however often the bisection checks it again.
struct Prepared<'a> {
    key: &'a VerifyingKey,
    /// R, decompressed (the costliest part: a square root).
    r: curve25519_dalek::EdwardsPoint,
    s: curve25519_dalek::Scalar,
    /// h = SHA-512(R ‖ A ‖ M) mod ℓ.
    h: curve25519_dalek::Scalar,
}

/// Decodes and hashes one signature, or `None` if its bytes cannot verify under any key: s
/// not reduced, or R not the canonical encoding of a curve point. These are exactly the
/// encodings ed25519-dalek's `verify` can never accept (it compares R's bytes with a
/// canonical encoding), so a prepared signature is judged as `verify` would judge it.
fn prepare<'a>(key: &'a VerifyingKey, message: &[u8], sig: &[u8; 64]) -> Option<Prepared<'a>> {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::scalar::Scalar;
    use sha2::Sha512;

    let (r_bytes, s_bytes) = sig.split_at(32);
    let r_bytes: [u8; 32] = r_bytes.try_into().expect("32 bytes");
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(
        s_bytes.try_into().expect("32 bytes"),
    ))?;
    if !r_is_canonical(sig) {
        return None;
    }
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    let h = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key.as_bytes())
            .chain_update(message)
            .finalize()
            .into(),
    );
    Some(Prepared { key, r, s, h })
}

/// p = 2²⁵⁵ − 19, little-endian.
const P_LE: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// 1 and p − 1, little-endian: the two y whose x is 0.
const ONE_LE: [u8; 32] = {
    let mut one = [0u8; 32];
    one[0] = 1;
    one
};
const P_MINUS_ONE_LE: [u8; 32] = {
    let mut p = P_LE;
    p[0] -= 1;
    p
};

/// Whether the signature's `R` half (bytes 0..32) is the one encoding of its point that
/// compression produces: y (the low 255 bits) below p, and the sign bit clear when x is 0
/// (y = 1 or y = p − 1). ed25519-dalek's `verify` compares R's bytes with a compression, so
/// a signature whose R is not canonical can never verify; like [`s_is_canonical`], telling
/// so costs a few byte comparisons, so it is checked on every item, sampled or not.
pub fn r_is_canonical(sig: &[u8; 64]) -> bool {
    let r = &sig[..32];
    let mut y: [u8; 32] = r.try_into().expect("32 bytes");
    y[31] &= 0x7f;
    let x_is_zero = y == ONE_LE || y == P_MINUS_ONE_LE;
    below_le(&y, &P_LE) && !(x_is_zero && r[31] & 0x80 != 0)
}

/// Settles `items` into `ok` and returns whether all verify. Batch-checks them (unless
/// `known_bad`: the caller knows one fails); on failure checks the left half, and if that
/// half verifies, the right half is known to hold a bad one and is split without its own
/// batch check. A single signature always gets a check of its own ([`single_holds`]), so a
/// good one is never judged bad for sharing equations with a bad one. k bad signatures among
/// n cost about k·log₂n batch checks.
fn locate(items: &[Prepared], ok: &mut [bool], known_bad: bool) -> bool {
    if let [one] = items {
        ok[0] = single_holds(one);
        #[cfg(test)]
        WORK.set(WORK.get() + SINGLE);
        return ok[0];
    }
    if !known_bad {
        #[cfg(test)]
        WORK.set(WORK.get() + BATCH_FIXED + items.len());
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

/// ed25519-dalek's `verify` for a prepared signature: R = [s]B − [h]A, compared as points
/// (R's encoding is canonical, so this is the byte comparison `verify` makes).
fn single_holds(p: &Prepared) -> bool {
    use curve25519_dalek::edwards::EdwardsPoint;
    EdwardsPoint::vartime_double_scalar_mul_basepoint(&p.h, &-p.key.to_edwards(), &p.s) == p.r
}

/// Whether the Ed25519 batch equation holds for all `items`: the equation of
/// `ed25519_dalek::verify_batch` — the same hashes h = SHA-512(R ‖ A ‖ M), the same
/// cofactorless check `[−Σ zᵢsᵢ]B + Σ zᵢRᵢ + Σ (zᵢhᵢ)Aᵢ = 0` with random 128-bit zᵢ — except
/// that the terms of equal keys are added before the multiplication: (Σ zᵢhᵢ)·A is the same
/// point as Σ (zᵢhᵢ)·A, and a stream signed by a few keys needs n + k + 1 terms instead of
/// 2n + 1. The zᵢ come from the thread's CSPRNG (dalek derives them from a transcript of the
/// inputs); either way a batch holding a bad signature passes with probability 2⁻¹²⁸.
fn batch_holds(items: &[Prepared]) -> bool {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use rand::Rng as _;

    let mut rng = rand::thread_rng();
    let mut scalars = Vec::with_capacity(items.len() + 2);
    let mut points = Vec::with_capacity(items.len() + 2);
    let mut keys: Vec<(&VerifyingKey, Scalar)> = Vec::new();
    let mut b = Scalar::ZERO;
    for p in items {
        let z = Scalar::from(rng.gen::<u128>());
        b += z * p.s;
        scalars.push(z);
        points.push(p.r);
        match keys.iter_mut().find(|(k, _)| *k == p.key) {
            Some((_, c)) => *c += z * p.h,
            None => keys.push((p.key, z * p.h)),
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

    /// One item of a `verify_batch` call.
    type Item<'a> = (&'a VerifyingKey, &'a [u8], &'a [u8; 64]);

    /// `items` as `verify_batch` takes them, all under `pk`.
    fn under<'a>(pk: &'a VerifyingKey, items: &'a [Signed]) -> Vec<Item<'a>> {
        items.iter().map(|(m, s)| (pk, m.as_slice(), s)).collect()
    }

    /// How many of `outcomes` are true and how many false.
    fn both_ways(outcomes: &[bool]) -> (usize, usize) {
        let yes = outcomes.iter().filter(|o| **o).count();
        (yes, outcomes.len() - yes)
    }

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
        assert_eq!(chunk_for(0.01), 16);
        assert_eq!(chunk_for(0.015), 16);
        assert_eq!(chunk_for(0.1), 4);
        // A flood of forgeries is cheapest checked one signature at a time.
        assert_eq!(chunk_for(0.6), 1);
        assert_eq!(chunk_for(1.0), 1);
        let sizes: Vec<usize> = (0..=100).map(|p| chunk_for(f64::from(p) / 100.0)).collect();
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
    }

    #[test]
    fn batch_results_match_single_checks_whatever_the_chunk() {
        // Clean, then clustered forgeries, then many: the chunk size changes between calls.
        let shapes: [&dyn Fn(usize) -> bool; 3] = [&|_| false, &|i| (40..52).contains(&i), &|i| i % 3 == 0];
        for shape in shapes {
            let (pk, items) = signed(150, shape);
            let refs = under(&pk, &items);
            let got = verify_batch(&refs);
            let want: Vec<bool> = items.iter().map(|(m, s)| verify_single(&pk, m, s)).collect();
            assert_eq!(got, want);
            assert_eq!(
                got.iter().filter(|o| !**o).count(),
                (0..150).filter(|i| shape(*i)).count()
            );
        }
    }

    /// Work per signature (in [`chunk_for`]'s units) of `verify_batch` over `refs` in calls of
    /// 64, after 12 calls to learn the share, and of whole 64-signature equations instead.
    fn work_per_signature(refs: &[Item]) -> (f64, f64) {
        BAD_SHARE.set(0.0);
        for call in refs.chunks(64).take(12) {
            verify_batch(call);
        }
        let measured = refs.len() as f64 - 64.0 * 12.0;
        WORK.set(0);
        for call in refs.chunks(64).skip(12) {
            verify_batch(call);
        }
        let chunked = WORK.get() as f64 / measured;
        WORK.set(0);
        for call in refs.chunks(64).skip(12) {
            let prepared: Vec<Prepared> = call.iter().filter_map(|&(k, m, s)| prepare(k, m, s)).collect();
            locate(&prepared, &mut vec![false; prepared.len()], false);
        }
        (chunked, WORK.get() as f64 / measured)
    }

    /// Signatures refused while preparing do not move the chunk size; forgeries that reach
    /// the equation do. Here nine in ten carry an R of 32 bytes 0xff (no canonical encoding;
    /// their s is reduced, so they pass the pipeline's cheap checks): counted, they made every
    /// honest signature a single check.
    #[test]
    fn only_signatures_that_reach_the_equation_set_the_chunk_size() {
        let (pk, mut items) = signed(64 * 16, |i| i % 10 == 3);
        BAD_SHARE.set(0.0);
        for (i, (_, s)) in items.iter_mut().enumerate() {
            if i % 10 != 0 {
                s[..32].copy_from_slice(&[0xff; 32]);
            }
        }
        let refs = under(&pk, &items);
        let got: Vec<bool> = refs.chunks(64).flat_map(verify_batch).collect();
        let want: Vec<bool> = (0..refs.len()).map(|i| i % 10 == 0).collect();
        assert_eq!(got, want);
        assert_eq!(chunk_for(BAD_SHARE.get()), MAX_CHUNK, "share {}", BAD_SHARE.get());
        let (pk, items) = signed(64 * 16, |i| i % 10 == 3);
        let refs = under(&pk, &items);
        for call in refs.chunks(64) {
            verify_batch(call);
        }
        assert!(chunk_for(BAD_SHARE.get()) <= 8, "share {}", BAD_SHARE.get());
    }

    /// A producer that forges one signature in ten must not make each cost many: whole
    /// equations of 64 cost ~8.6 units per signature here, chunks that follow the share of
    /// bad ones ~4.9 (one forgery in a hundred: ~2.5 and ~2.0; a clean stream ~1.1 either
    /// way). A single check alone would cost 6.
    #[test]
    fn a_stream_of_forgeries_costs_a_bounded_amount_of_work() {
        // (one bad in, most units per signature, most of the whole equations' cost)
        for (every, bound, share) in [(10, 5.5, 0.7), (100, 2.3, 0.9), (usize::MAX, 1.15, 1.0)] {
            let (pk, items) = signed(64 * 24, |i| i % every == 3);
            let refs = under(&pk, &items);
            let (chunked, whole) = work_per_signature(&refs);
            assert!(
                chunked < bound,
                "one in {every}: {chunked:.2} units per signature"
            );
            assert!(
                chunked <= share * whole,
                "one in {every}: {chunked:.2} against {whole:.2} with whole equations"
            );
        }
    }

    /// A secret scalar and its public key, for signatures no honest signer makes.
    fn raw_key(n: u64) -> (curve25519_dalek::Scalar, VerifyingKey) {
        let a = curve25519_dalek::Scalar::from(n) * curve25519_dalek::Scalar::from(0x9e37_79b9_7f4a_7c15u64);
        (
            a,
            VerifyingKey::from(curve25519_dalek::EdwardsPoint::mul_base(&a)),
        )
    }

    /// A signature over `m` under secret `a` whose R is given as `r_bytes` (any encoding of
    /// some point) with `s = r + h·a`: it satisfies the batch equation whenever R's bytes
    /// decode to rB + T, where T is what the equation is left with.
    fn crafted(
        a: &curve25519_dalek::Scalar,
        pk: &VerifyingKey,
        m: &[u8],
        r_bytes: [u8; 32],
        r: curve25519_dalek::Scalar,
    ) -> [u8; 64] {
        use sha2::Sha512;
        let h = curve25519_dalek::Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r_bytes)
                .chain_update(pk.as_bytes())
                .chain_update(m)
                .finalize()
                .into(),
        );
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice((r + h * a).as_bytes());
        sig
    }

    /// A signature whose R half is `r` (and s zero).
    fn with_r(r: [u8; 32]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig
    }

    #[test]
    fn r_is_canonical_accepts_exactly_what_compression_produces() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::{EdwardsPoint, Scalar};
        let order4 = CompressedEdwardsY([0; 32])
            .decompress()
            .expect("y = 0 is a point");
        assert!(order4.is_small_order());
        for p in (1..50u64)
            .map(|i| EdwardsPoint::mul_base(&Scalar::from(i * 7919)))
            .chain([EdwardsPoint::default(), order4, -order4, order4 + order4])
        {
            assert!(r_is_canonical(&with_r(p.compress().to_bytes())), "{p:?}");
        }
        let with = |y0: u8, last: u8| {
            let mut b = P_LE;
            b[0] = y0;
            b[31] = last;
            b
        };
        let mut identity_signed = [0u8; 32];
        identity_signed[0] = 1;
        identity_signed[31] = 0x80;
        for (name, bytes) in [
            ("y = p", P_LE),
            ("y = p + 1 (the identity again)", with(0xee, 0x7f)),
            ("y = 2²⁵⁵ − 1", with(0xff, 0x7f)),
            ("x = 0 with the sign bit (identity)", identity_signed),
            ("x = 0 with the sign bit (y = p − 1)", with(0xec, 0xff)),
        ] {
            assert!(!r_is_canonical(&with_r(bytes)), "{name}");
        }
        // dalek decodes such bytes anyway, which is why the check is needed.
        assert_eq!(
            CompressedEdwardsY(with(0xee, 0x7f)).decompress(),
            Some(EdwardsPoint::default())
        );
    }

    /// A key holder can encode R = identity as y = p + 1 with s = h·a: dalek's batch equation
    /// holds for it, its `verify` refuses it (the bytes are not compression's). bizra refuses
    /// it in a batch too, and its neighbours stay good.
    #[test]
    fn a_non_canonical_r_is_bad_in_a_batch_as_alone() {
        let (a, pk) = raw_key(3);
        let mut r_bytes = P_LE;
        r_bytes[0] = 0xee;
        let m = b"chosen".to_vec();
        let sig = crafted(&a, &pk, &m, r_bytes, curve25519_dalek::Scalar::ZERO);
        assert!(!verify_single(&pk, &m, &sig));
        assert!(ed25519_dalek::verify_batch(&[m.as_slice()], &[Signature::from_bytes(&sig)], &[pk]).is_ok());
        let good: Vec<(Vec<u8>, [u8; 64])> = (0..7u64)
            .map(|i| {
                let mi = format!("m{i}").into_bytes();
                let s = crafted(
                    &a,
                    &pk,
                    &mi,
                    curve25519_dalek::EdwardsPoint::mul_base(&curve25519_dalek::Scalar::from(i + 5))
                        .compress()
                        .to_bytes(),
                    curve25519_dalek::Scalar::from(i + 5),
                );
                (mi, s)
            })
            .collect();
        let mut items: Vec<Item> = good.iter().map(|(mi, s)| (&pk, mi.as_slice(), s)).collect();
        items.insert(3, (&pk, m.as_slice(), &sig));
        BAD_SHARE.set(0.0);
        let mut want = vec![true; 8];
        want[3] = false;
        assert_eq!(verify_batch(&items), want);
    }

    /// A key holder's signature whose R carries a small-order component fails its own check
    /// but passes a batch equation whenever the random weight kills the component (here 1 in
    /// 4). It may go either way in a batch (DECISIONS), but it never makes a good signature
    /// that shares its equations bad.
    #[test]
    fn a_small_order_component_never_makes_a_good_signature_bad() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::{EdwardsPoint, Scalar};
        let t = CompressedEdwardsY([0; 32])
            .decompress()
            .expect("a point of order 4");
        let (a, pk) = raw_key(4);
        let r = Scalar::from(77u64);
        let m = b"torsion".to_vec();
        let sig = crafted(
            &a,
            &pk,
            &m,
            (EdwardsPoint::mul_base(&r) + t).compress().to_bytes(),
            r,
        );
        assert!(!verify_single(&pk, &m, &sig));
        let k = key(4);
        let good: Vec<(Vec<u8>, [u8; 64])> = (0..7)
            .map(|i| {
                let mi = format!("g{i}").into_bytes();
                let s = k.sign(&mi).to_bytes();
                (mi, s)
            })
            .collect();
        let kpk = k.verifying_key();
        let mut crafted_ok = Vec::new();
        for round in 0..200 {
            let mut items: Vec<Item> = good.iter().map(|(mi, s)| (&kpk, mi.as_slice(), s)).collect();
            items.insert(round % 8, (&pk, m.as_slice(), &sig));
            BAD_SHARE.set(0.0);
            let ok = verify_batch(&items);
            for (i, o) in ok.iter().enumerate() {
                assert!(
                    *o || i == round % 8,
                    "round {round}: a good signature judged bad: {ok:?}"
                );
            }
            crafted_ok.push(ok[round % 8]);
        }
        let (accepted, refused) = both_ways(&crafted_ok);
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    /// The check a prepared signature gets alone is ed25519-dalek's `verify`, for good
    /// signatures and every kind of bad one.
    #[test]
    fn a_prepared_single_check_is_dalek_verify() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(61);
        let k = key(9);
        let pk = k.verifying_key();
        let mut bad = 0;
        for i in 0..300 {
            let m = format!("m{i}").into_bytes();
            let mut sig = k.sign(&m).to_bytes();
            match rng.gen_range(0..6) {
                0 => sig = k.sign(b"another").to_bytes(),
                1 => sig[rng.gen_range(0..32)] ^= 1 << rng.gen_range(0..8),
                2 => sig[32 + rng.gen_range(0..31)] ^= 1 << rng.gen_range(0..8),
                3 => sig[63] |= 0x80,
                _ => {}
            }
            let want = verify_single(&pk, &m, &sig);
            bad += usize::from(!want);
            assert_eq!(
                prepare(&pk, &m, &sig).is_some_and(|p| single_holds(&p)),
                want,
                "item {i}"
            );
        }
        assert!(bad > 150 && bad < 250, "{bad} bad");
    }

    /// The short form of the `signatures` fuzz target: batches of 1–40 signatures by two
    /// keys, damaged in every way the target damages them, get `verify`'s answer for every
    /// item from `verify_batch`, at whatever chunk size the earlier batches left.
    #[test]
    fn verify_batch_is_verify_for_every_kind_of_damage() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let keys = [key(31), key(32)];
        let mut all = Vec::new();
        for round in 0..60 {
            let n = rng.gen_range(1..=40);
            let damage_share = [0.0, 0.05, 0.3, 0.9][round % 4];
            let batch: Vec<(usize, Vec<u8>, [u8; 64])> = (0..n)
                .map(|i| {
                    let k = rng.gen_range(0..2);
                    let m = format!("r{round}-{i}").into_bytes();
                    let mut sig = keys[k].sign(&m).to_bytes();
                    if rng.gen_bool(damage_share) {
                        match rng.gen_range(0..5) {
                            0 => sig[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8),
                            1 => rng.fill(&mut sig[..32]),
                            2 => rng.fill(&mut sig[32..]),
                            3 => sig[31] ^= 0x80,
                            _ => sig[63] |= 0x10 << rng.gen_range(0..4),
                        }
                    }
                    (k, m, sig)
                })
                .collect();
            let public: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
            let items: Vec<Item> = batch
                .iter()
                .map(|(k, m, s)| (&public[*k], m.as_slice(), s))
                .collect();
            let want: Vec<bool> = items.iter().map(|(k, m, s)| verify_single(k, m, s)).collect();
            assert_eq!(verify_batch(&items), want, "round {round}");
            all.extend(want);
        }
        let (good, bad) = both_ways(&all);
        assert!(good > 300 && bad > 200, "{good} good, {bad} bad");
    }

    /// `batch_holds` against ed25519-dalek's own `verify_batch` on random batches: several
    /// keys, repeated keys, and every kind of bad item (another message, a changed R, an R
    /// that is no point, an unreduced s, a changed s). They must agree on every batch.
    #[test]
    fn the_merged_batch_equation_agrees_with_dalek() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let keys: Vec<SigningKey> = (1..=5).map(key).collect();
        let mut outcomes = Vec::new();
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
            let items: Vec<Item> = batch.iter().map(|(k, m, s)| (k, m.as_slice(), s)).collect();
            let messages: Vec<&[u8]> = batch.iter().map(|(_, m, _)| m.as_slice()).collect();
            let sigs: Vec<Signature> = batch.iter().map(|(_, _, s)| Signature::from_bytes(s)).collect();
            let vks: Vec<VerifyingKey> = batch.iter().map(|(k, _, _)| *k).collect();
            let dalek = ed25519_dalek::verify_batch(&messages, &sigs, &vks).is_ok();
            let prepared: Option<Vec<Prepared>> = items.iter().map(|&(k, m, s)| prepare(k, m, s)).collect();
            assert_eq!(prepared.is_some_and(|p| batch_holds(&p)), dalek, "batch of {n}");
            outcomes.push(dalek);
        }
        let (holds, fails) = both_ways(&outcomes);
        assert!(
            holds > 50 && fails > 50,
            "both outcomes exercised: {holds} hold, {fails} fail"
        );
    }
}
