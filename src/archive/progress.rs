//! Progress of a read over many segments (`bizra audit`), logged at most every few seconds so
//! that a long scan of a large archive shows it is moving.

use std::time::{Duration, Instant};

/// How often a long read logs where it is.
const EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Progress {
    what: &'static str,
    total: usize,
    done: usize,
    every: Duration,
    started: Instant,
    last: Instant,
}

impl Progress {
    /// A read of `total` segments, described as `what` in the log.
    pub(crate) fn new(what: &'static str, total: usize) -> Progress {
        Progress::every(what, total, EVERY)
    }

    fn every(what: &'static str, total: usize, every: Duration) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            every,
            started: now,
            last: now,
        }
    }

    /// Counts one more segment started, and logs (and returns) a progress line if the last
    /// one is `every` old.
    pub(crate) fn segment(&mut self) -> Option<String> {
        self.done += 1;
        let now = Instant::now();
        if now.duration_since(self.last) < self.every {
            return None;
        }
        self.last = now;
        let line = format!(
            "{}: segment {} of {} after {:.0} s",
            self.what,
            self.done,
            self.total,
            now.duration_since(self.started).as_secs_f64()
        );
        tracing::info!("{line}");
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_every_segment_when_due_and_none_before() {
        let mut due = Progress::every("audit get", 3, Duration::ZERO);
        assert_eq!(
            due.segment().as_deref(),
            Some("audit get: segment 1 of 3 after 0 s")
        );
        assert_eq!(
            due.segment().as_deref(),
            Some("audit get: segment 2 of 3 after 0 s")
        );
        let mut quiet = Progress::every("audit get", 3, Duration::from_secs(3600));
        assert_eq!(quiet.segment(), None);
        assert_eq!(quiet.segment(), None);
    }
}
