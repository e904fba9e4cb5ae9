//! Fuzz target `keyring`: `parse_keyring` (a `[keys]` table of base64 Ed25519 public keys) on
//! any UTF-8 text. Errors are expected; a panic is a bug. It does not check which keys are
//! accepted.
#![no_main]

use std::path::Path;

use bizra::config::parse_keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(ring) = parse_keyring(text, Path::new("keyring.toml")) {
        std::hint::black_box(ring.len());
    }
});
