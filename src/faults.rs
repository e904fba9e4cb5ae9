//! Injected faults, for the tests that prove bizra fails fast: `BIZRA_FAULTS` names the
//! faults to inject, comma-separated. Read once; with the variable unset (always, outside
//! those tests) every check is one load of a cached empty list.
//!
//! Only faults that cannot be caused from outside are here: a full disk, a refusing broker
//! and a dead process are caused for real by the tests; one slow worker among fast ones
//! cannot be.

use std::sync::OnceLock;

/// The archive writer thread panics when it is handed its first episodes.
pub const ARCHIVE_WRITER_PANIC: &str = "archive_writer_panic";

/// Worker 1 of a Kafka process sleeps 5 ms after every pass of its loop: a worker whose
/// loop runs slower than the others' (more work per pass, a busier core), which must not
/// hold back the records of the others (`kafka/epochs.rs`).
pub const SLOW_WORKER: &str = "slow_worker";

/// The producer is not idempotent. Not a fault but a concession to the test broker: tansu
/// 0.6 answers the sequence gap that a refused batch leaves with UNKNOWN_SERVER_ERROR, where
/// Apache Kafka answers OUT_OF_ORDER_SEQUENCE_NUMBER and librdkafka bumps the producer epoch
/// and renumbers (KIP-360). Only the test of a refusing broker sets it (docs/DECISIONS.md).
pub const PRODUCER_NOT_IDEMPOTENT: &str = "producer_not_idempotent";

/// Whether the fault `name` is to be injected.
pub fn armed(name: &str) -> bool {
    static FAULTS: OnceLock<Vec<String>> = OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var("BIZRA_FAULTS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .iter()
        .any(|f| f == name)
}
