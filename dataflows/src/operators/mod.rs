//! Timely operators: thin wrappers that hold per-worker state and call the pure stages.
//! One operator per file; none does I/O or blocks.

pub mod commit;
pub mod verify;

/// Milliseconds on a monotonic clock private to one operator.
pub(crate) struct Clock(std::time::Instant);

impl Clock {
    pub(crate) fn new() -> Self {
        Clock(std::time::Instant::now())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
