//! The archive sink operator: hands each episode to its worker's [`Lane`] and holds the
//! capability of its tick until the archive acknowledges the write, so the frontier after it
//! means "archived" — an epoch's input counts as done (and its Kafka offsets are committed) only
//! once its episodes are in the archive. A full writer queue is backpressure: episodes wait in
//! the [`ArchiveOutbox`] and the driver stops reading while any wait. It does no I/O itself.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use bizra_dataflows::episode::Episode;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
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
    }
}

/// Submits every episode of `stream` to the archive, holding each tick's capability until all
/// of its episodes are written.
pub fn archive_sink<'s>(
    stream: StreamVec<'s, u64, Episode>,
    outbox: Rc<RefCell<ArchiveOutbox>>,
) -> StreamVec<'s, u64, ()> {
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "archive-sink",
        move |cap, info| {
            drop(cap);
            outbox.borrow_mut().activator = Some(scope.activator_for(info.address.clone()));
            let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            move |(input, frontier), _output| {
                let mut ob = outbox.borrow_mut();
                input.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(0) {
                        let t = *cap.time();
                        for e in data.drain(..) {
                            *ob.unacked.entry(t).or_default() += 1;
                            ob.queue.push_back((t, e));
                        }
                        held.entry(t).or_insert(cap);
                    }
                });
                ob.pump();
                // A tick is archived once no more episodes can come for it and none is unacked.
                held.retain(|t, _| frontier.frontier().less_equal(t) || ob.unacked.contains_key(t));
            }
        },
    )
}
