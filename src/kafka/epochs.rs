//! How a Kafka worker's input epochs advance.
//!
//! Epochs are logical: each worker counts its own, one per `kafka.tick_ms` of its loop, and no
//! wall clock is compared between processes. But loops do not run at one rate: a worker with
//! more work per pass, or one whose park overshoots, counts more slowly, and the counts drift
//! apart. A record is verified once the frontier (the slowest worker's epoch) has passed its
//! epoch, so a record read by the fastest worker waits for the slowest to count up to it:
//! measured on the 2-core machine, after 20 s at 20,000 obs/s the two workers of one process
//! were ~150 epochs apart and half of the verdicts waited ~400 ms for it.
//!
//! So every worker announces each epoch it opens to every worker of the cluster (a broadcast
//! of one number, in a dataflow of its own), and a worker that finds another ahead of it
//! jumps to that epoch at once. Epochs then move at the pace of the fastest loop, still only
//! by counting, still never more than `max_inflight_ticks` past the frontier.

use std::cell::Cell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Inspect};
use timely::dataflow::InputHandle;

/// The epoch a worker's input moves to from `own`, or `None` to stay: at once to `highest`
/// (the highest epoch another worker has announced) when that is ahead, else one past its
/// own when a tick is due; never more than `ahead` past `frontier`.
pub fn next_epoch(own: u64, highest: u64, frontier: u64, ahead: u64, tick_due: bool) -> Option<u64> {
    let wanted = if highest > own {
        highest
    } else if tick_due {
        own + 1
    } else {
        return None;
    };
    let next = wanted.min(frontier.saturating_add(ahead));
    (next > own).then_some(next)
}

/// One worker's side of the announcements: what it sends, and the highest epoch it has heard.
pub struct Announcements {
    input: Option<InputHandle<u64, CapacityContainerBuilder<Vec<u64>>>>,
    highest: Rc<Cell<u64>>,
}

impl Announcements {
    /// Builds the announcement dataflow in `worker` (every worker of the cluster must).
    pub fn new(worker: &mut timely::worker::Worker) -> Announcements {
        let mut input = InputHandle::new();
        let highest = Rc::new(Cell::new(0));
        let heard = highest.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .broadcast()
                .inspect(move |e: &u64| heard.set(heard.get().max(*e)));
        });
        Announcements {
            input: Some(input),
            highest,
        }
    }

    /// Tells every worker that this one has opened `epoch`.
    pub fn announce(&mut self, epoch: u64) {
        if let Some(i) = self.input.as_mut() {
            i.send(epoch);
            i.flush();
        }
    }

    /// The highest epoch announced by any worker (this one's included) heard so far.
    pub fn highest(&self) -> u64 {
        self.highest.get()
    }

    /// Ends the announcements, so that the dataflow completes and the worker can stop.
    pub fn close(&mut self) {
        self.input = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_advances_once_per_tick_and_jumps_to_a_faster_one() {
        // Alone: one per tick, none without one.
        assert_eq!(next_epoch(10, 10, 5, 250, true), Some(11));
        assert_eq!(next_epoch(10, 10, 5, 250, false), None);
        // Behind another worker: at once to its epoch, tick or not.
        assert_eq!(next_epoch(10, 160, 9, 250, false), Some(160));
        assert_eq!(next_epoch(10, 160, 9, 250, true), Some(160));
        // Never more than `ahead` past the frontier, whoever is ahead.
        assert_eq!(next_epoch(10, 400, 9, 250, false), Some(259));
        assert_eq!(next_epoch(259, 259, 9, 250, true), None);
        assert_eq!(next_epoch(10, 10, 0, 10, true), None);
    }

    #[test]
    fn announcements_reach_every_worker() {
        // Worker 1 opens 100 epochs; worker 0, which opens none, hears the highest.
        let heard = timely::execute(timely::Config::process(2), |worker| {
            let mut a = Announcements::new(worker);
            if worker.index() == 1 {
                for e in 1..=100 {
                    a.announce(e);
                }
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while a.highest() < 100 && std::time::Instant::now() < deadline {
                worker.step();
            }
            a.close();
            a.highest()
        })
        .unwrap()
        .join()
        .into_iter()
        .map(Result::unwrap)
        .collect::<Vec<_>>();
        assert_eq!(heard, vec![100, 100]);
    }
}
