//! The archive sink operator: hands each episode to its worker's [`Lane`] and holds the
//! capability of its tick until the archive acknowledges the write, so the frontier after it
//! means "archived" — an epoch's input counts as done (and its Kafka offsets are committed) only
//! once its episodes are in the archive. A full writer queue is backpressure: episodes wait in
//! the [`ArchiveOutbox`] and the driver stops reading while any wait. It does no I/O itself.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use bizra_dataflows::episode::Episode;
use bizra_dataflows::operators::commit::Output;
use bizra_dataflows::operators::episodes::with_episodes;
use bizra_dataflows::operators::held::{held, Acknowledged};
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::scheduling::Activator;

use super::Lane;

/// Per-worker state shared by the archive sink operator and the worker loop.
pub struct ArchiveOutbox {
    lane: Lane,
    /// Episodes the writer queue had no room for yet, with their ticks.
    queue: VecDeque<(u64, Episode)>,
    /// Unacknowledged episodes per tick (queued here or in the pool).
    unacked: BTreeMap<u64, u64>,
    activator: Option<Activator>,
    /// A write failed: the driver stops, and nothing after it counts as done.
    pub failed: Option<String>,
}

impl ArchiveOutbox {
    /// The outbox of one worker, on a lane taken from `lanes`.
    pub fn from_lanes(lanes: &super::Lanes) -> Rc<RefCell<ArchiveOutbox>> {
        let lane = lanes.lock().expect("lanes lock").pop();
        Self::new(lane.expect("a lane per worker"))
    }

    pub fn new(lane: Lane) -> Rc<RefCell<ArchiveOutbox>> {
        Rc::new(RefCell::new(ArchiveOutbox {
            lane,
            queue: VecDeque::new(),
            unacked: BTreeMap::new(),
            activator: None,
            failed: None,
        }))
    }

    /// Episodes waiting for room in the writer queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Hands waiting episodes to the pool until its queue is full, then applies the
    /// acknowledgements that arrived; wakes the sink operator when some did. Never blocks.
    pub fn pump(&mut self) {
        while let Some((tick, episode)) = self.queue.pop_front() {
            if let Err(back) = self.lane.try_submit(episode, tick) {
                self.queue.push_front((tick, back));
                break;
            }
        }
        let mut acked = false;
        for ack in self.lane.try_acks() {
            acked = true;
            if let Err(e) = ack.result {
                self.failed
                    .get_or_insert_with(|| format!("archiving an episode of shard {}: {e}", ack.shard));
                continue;
            }
            if let Some(n) = self.unacked.get_mut(&ack.ticket) {
                *n -= 1;
                if *n == 0 {
                    self.unacked.remove(&ack.ticket);
                }
            }
        }
        if acked {
            if let Some(a) = &self.activator {
                a.activate();
            }
        }
        if self.failed.is_none() && self.lane.writer_stopped() {
            self.failed = Some(
                "an archive writer thread died (see the log above); the episodes it held are not written"
                    .into(),
            );
        }
    }
}

impl Acknowledged<Episode> for ArchiveOutbox {
    fn push(&mut self, tick: u64, episode: Episode) {
        *self.unacked.entry(tick).or_default() += 1;
        self.queue.push_back((tick, episode));
    }

    fn pending(&self, tick: u64) -> bool {
        self.unacked.contains_key(&tick)
    }

    fn set_activator(&mut self, activator: Activator) {
        self.activator = Some(activator);
    }
}

/// Archives the episodes of `outputs` when `outbox` is given, and passes the outputs on.
/// Each episode is submitted to the archive (through [`ArchiveOutbox::pump`], which the worker
/// loop calls), and each tick's capability is held until all of its episodes are written; the
/// sink joins `probe`, so the probe's frontier waits for the archive too.
pub fn archived<'s>(
    outputs: StreamVec<'s, u64, Output>,
    outbox: Option<&Rc<RefCell<ArchiveOutbox>>>,
    probe: &ProbeHandle<u64>,
) -> StreamVec<'s, u64, Output> {
    let Some(outbox) = outbox else {
        return outputs;
    };
    let (outputs, episodes) = with_episodes(outputs);
    held(episodes, "archive-sink", outbox.clone()).probe_with(probe);
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_writer_thread_fails_the_outbox_instead_of_stalling_it() {
        let outbox = ArchiveOutbox::new(Lane::with_dead_writer());
        let mut o = outbox.borrow_mut();
        o.push(1, crate::archive::test_util::episode(0, 0, &["a"]));
        o.pump();
        let failed = o.failed.clone().expect("the outbox reports the dead writer");
        assert!(failed.contains("writer thread died"), "{failed}");
        assert!(o.pending(1), "its tick is not done");
    }
}
