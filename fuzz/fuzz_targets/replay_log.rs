//! Fuzz target `replay_log`: the replay guard's persisted state as bizra reads it back at start
//! (`verification::replay_log`), from a file (`unframe`) or a topic (`ReplayRecord::decode`),
//! then restored. Checks that nothing panics, that every record read encodes back to the bytes
//! it came from, that `unframe` stops at the first bad frame and reports a prefix that reads
//! the same, and that a restore never keeps more than its window per bucket.
#![no_main]

use bizra_dataflows::verification::replay_log::{restore, restore_start, unframe, ReplayRecord};
use bizra_dataflows::verification::sampling::SampleKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(r) = ReplayRecord::decode(bytes) {
        let mut again = Vec::new();
        r.encode(&mut again);
        assert_eq!(again, bytes, "a decoded record encodes back to its bytes");
    }
    let (records, used) = unframe(bytes);
    assert!(used <= bytes.len());
    let (prefix, used_again) = unframe(&bytes[..used]);
    assert_eq!((prefix.len(), used_again), (records.len(), used));
    let positions: Vec<(u64, &ReplayRecord)> =
        records.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
    let start = restore_start(&positions).unwrap_or(0) as usize;
    assert!(start <= records.len());
    let key = SampleKey::from_secret(&[7; 32]);
    for window in restore(records[start..].iter().cloned(), &key, 3) {
        assert!(window.len() <= 3);
    }
});
