//! Fuzz target `config`: `Config::parse` (the embedded defaults overridden by a config file's
//! keys, then validated) on any UTF-8 text. Errors are expected; a panic is a bug. It does not
//! check which texts are accepted.
#![no_main]

use std::path::Path;

use bizra::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = std::hint::black_box(Config::parse(text, Path::new("fuzz.toml")));
});
