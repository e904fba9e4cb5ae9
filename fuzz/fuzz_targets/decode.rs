//! Fuzz target `decode`: any bytes through `decode::decode` (SPEC §1.1). It must not panic; an
//! observation it returns must satisfy the wire rules (id of 1–256 bytes, features of 1–4096
//! finite values); and the one-pass path must agree with the field-by-field slow path
//! (`decode_field_by_field`), as `tests/decode_props.rs` asserts on near-valid observations.
//! It does not check which error kind a dead letter has; the property tests do.
//!
//! Found so far: the one-pass path skipped the bytes of keys it ignores inside `context`
//! without checking their UTF-8 (`corpus/decode/context-invalid-utf8`; fixed, unit test in
//! `dataflows/src/decode.rs`).
#![no_main]

use bizra_dataflows::decode::{decode, decode_field_by_field, Limits, MAX_FEATURES, MAX_ID_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let limits = Limits::default();
    let fast = decode(bytes, &limits);
    if let Ok(obs) = &fast {
        assert!(
            (1..=MAX_ID_BYTES).contains(&obs.id.len()),
            "id of {} bytes",
            obs.id.len()
        );
        if let Some(features) = &obs.features {
            assert!(
                (1..=MAX_FEATURES).contains(&features.len()),
                "{} features",
                features.len()
            );
            assert!(
                features.iter().all(|f| f.is_finite()),
                "non-finite feature: {features:?}"
            );
        }
    }
    let slow = decode_field_by_field(bytes, &limits);
    assert_eq!(fast, slow, "decode and decode_field_by_field disagree");
});
