//! Fuzz target `decision_log`: the decision log's outside formats — any text as a checkpoint
//! note (`verify_note`, `open_note`, `Checkpoint::parse_body`) and as a verifier key string,
//! and any bytes as a persisted log frontier (`Frontier::from_bytes`, the `bizra.log` header
//! a start resumes from). Errors are expected; a panic is a bug. Also checks that a body that
//! parses is written back byte for byte, and that a frontier that decodes encodes back to
//! its bytes.
#![no_main]

use bizra_dataflows::verification::checkpoint::{open_note, parse_verifier_key, verify_note, Checkpoint};
use bizra_dataflows::verification::tlog::Frontier;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(f) = Frontier::from_bytes(bytes) {
        assert_eq!(f.to_bytes(), bytes, "a frontier encodes back to its bytes");
        std::hint::black_box(f.root());
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let _ = verify_note(text, "bizra/bizra/shard/0", &key);
    let _ = open_note(text, "bizra/bizra/shard/0", &key);
    let _ = parse_verifier_key(text);
    if let Ok(c) = Checkpoint::parse_body(text) {
        assert_eq!(c.body(), text, "a checkpoint body is written back as it was read");
    }
});
