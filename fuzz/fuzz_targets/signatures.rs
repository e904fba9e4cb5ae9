//! Fuzz target `signatures`: up to 16 signatures over fuzzer messages, made by two keys and
//! then damaged by the fuzzer (bytes flipped, R or s replaced whole), through
//! `signature::verify_batch`, whose answer must be ed25519-dalek's `verify` for every item
//! (the chunk size and the bisection may not change a result). Also, for the fuzzer's R
//! bytes: `r_is_canonical` says yes exactly when they decode to a point whose compression
//! gives them back. Signatures with a small-order component, where a batch and `verify` may
//! disagree (DECISIONS), need a key's secret and cannot come out of the damage done here.
#![no_main]

use bizra_dataflows::verification::signature::{r_is_canonical, verify_batch};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = [SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32])];
    let public: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
    // Each item: [key and damage kind][position][value][message length][message...].
    let mut items: Vec<(usize, Vec<u8>, [u8; 64])> = Vec::new();
    let mut rest = data;
    while items.len() < 16 {
        let [head, pos, value, len, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(*len % 32).min(tail.len());
        let (message, tail) = tail.split_at(len);
        let key = usize::from(head & 1);
        let mut sig = keys[key].sign(message).to_bytes();
        match (head >> 1) % 8 {
            0 | 1 | 2 => {}
            3 => sig[usize::from(*pos % 64)] ^= value | 1,
            4 | 5 => {
                // R or s replaced by fuzzer bytes, when there are enough.
                if let Some(bytes) = tail.get(..32) {
                    let at = if head & 0x80 == 0 { 0 } else { 32 };
                    sig[at..at + 32].copy_from_slice(bytes);
                }
            }
            6 => sig[31] ^= 0x80,         // R's sign bit
            _ => sig[63] |= value & 0xf0, // s, perhaps no longer reduced
        }
        items.push((key, message.to_vec(), sig));
        rest = tail;
    }
    let refs: Vec<(&VerifyingKey, &[u8], &[u8; 64])> = items
        .iter()
        .map(|(k, m, s)| (&public[*k], m.as_slice(), s))
        .collect();
    let got = verify_batch(&refs);
    for (i, (k, m, s)) in items.iter().enumerate() {
        let want = public[*k].verify(m, &Signature::from_bytes(s)).is_ok();
        assert_eq!(got[i], want, "item {i} of {}", items.len());
        let r: [u8; 32] = s[..32].try_into().unwrap();
        if let Some(p) = curve25519_dalek::edwards::CompressedEdwardsY(r).decompress() {
            assert_eq!(r_is_canonical(s), p.compress().to_bytes() == r, "R {r:02x?}");
        }
    }
});
