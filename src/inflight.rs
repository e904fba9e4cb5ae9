//! The byte budget of a source (config `pipeline.max_inflight_bytes`): what it has read and
//! not yet seen written, per epoch, so that it stops reading while the budget is used up.
//! Counts alone bound nothing when one record may be 2 MiB; bytes alone bound nothing when a
//! 100-byte record makes a 2 KB verdict, so each record costs its length plus a fixed
//! overhead ([`crate::config::PipelineSettings::cost`]). Pure bookkeeping: the drivers tell
//! it what they read and how far the dataflow's frontier is.

use std::collections::VecDeque;

use crate::config::PipelineSettings;

/// Bytes in flight of one source, by epoch.
#[derive(Debug)]
pub struct Inflight {
    budget: usize,
    /// (epoch, cost of the records read in it), epochs ascending.
    epochs: VecDeque<(u64, usize)>,
    total: usize,
}

impl Inflight {
    /// A source allowed `budget` bytes in flight.
    pub fn new(budget: usize) -> Inflight {
        Inflight {
            budget,
            epochs: VecDeque::new(),
            total: 0,
        }
    }

    /// Counts a record of `len` bytes read in `epoch` (epochs never go backwards).
    pub fn read(&mut self, epoch: u64, len: usize) {
        let cost = PipelineSettings::cost(len);
        self.total += cost;
        match self.epochs.back_mut() {
            Some((e, c)) if *e == epoch => *c += cost,
            _ => self.epochs.push_back((epoch, cost)),
        }
    }

    /// Forgets the epochs before `frontier`: everything derived from them is written.
    pub fn complete(&mut self, frontier: u64) {
        while let Some(&(e, c)) = self.epochs.front() {
            if e >= frontier {
                break;
            }
            self.total -= c;
            self.epochs.pop_front();
        }
    }

    /// Whether the source may read more. Nothing in flight always leaves room, so that a
    /// record larger than the budget still goes through (alone); otherwise reading may
    /// overshoot the budget by at most one record.
    pub fn room(&self) -> bool {
        self.total < self.budget || self.total == 0
    }

    /// Whether `cost` more bytes fit (for sources that know a chunk's size before reading it).
    pub fn fits(&self, len: usize) -> bool {
        self.total == 0 || self.total + len <= self.budget
    }

    /// Bytes in flight.
    pub fn bytes(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RECORD_OVERHEAD_BYTES;

    #[test]
    fn reading_stops_at_the_budget_and_resumes_as_epochs_complete() {
        let mut f = Inflight::new(3 * (1000 + RECORD_OVERHEAD_BYTES));
        assert!(f.room());
        f.read(1, 1000);
        f.read(1, 1000);
        f.read(2, 1000);
        assert!(!f.room(), "three records of 1000 bytes fill it");
        f.complete(2);
        assert!(f.room());
        assert_eq!(f.bytes(), 1000 + RECORD_OVERHEAD_BYTES);
        f.complete(3);
        assert_eq!(f.bytes(), 0);
    }

    #[test]
    fn a_record_larger_than_the_budget_goes_through_alone() {
        let mut f = Inflight::new(10);
        assert!(f.room() && f.fits(1 << 20));
        f.read(0, 1 << 20);
        assert!(!f.room() && !f.fits(1));
    }

    #[test]
    fn tiny_records_are_bounded_by_their_overhead() {
        let mut f = Inflight::new(100 * RECORD_OVERHEAD_BYTES);
        let mut n = 0;
        while f.room() {
            f.read(0, 1);
            n += 1;
        }
        assert!(n <= 100, "{n} one-byte records admitted");
    }
}
