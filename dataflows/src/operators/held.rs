//! The `held` operator: the last operator before an external system that acknowledges writes
//! (the Kafka producer, the episode archive). It hands each record to an [`Acknowledged`]
//! outbox under its tick and holds that tick's capability until the outbox has no
//! unacknowledged record of it, so the frontier after it means "acknowledged". It does no
//! I/O: the outbox's owner hands records over and applies acknowledgements, and wakes the
//! operator through the activator it is given.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::scheduling::Activator;

/// Where the `held` operator puts records, and what it asks about their ticks.
pub trait Acknowledged<D> {
    /// Takes `record`, produced at `tick`, as unacknowledged.
    fn push(&mut self, tick: u64, record: D);
    /// True while some record of `tick` is not acknowledged.
    fn pending(&self, tick: u64) -> bool;
    /// The operator's activator: wake it when acknowledgements arrive.
    fn set_activator(&mut self, activator: Activator);
}

/// Hands every record of `stream` to `outbox` and holds each tick until it is acknowledged.
pub fn held<'s, D: 'static, O: Acknowledged<D> + 'static>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    outbox: Rc<RefCell<O>>,
) -> StreamVec<'s, u64, ()> {
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, name, move |cap, info| {
        drop(cap);
        outbox
            .borrow_mut()
            .set_activator(scope.activator_for(info.address.clone()));
        let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        move |(input, frontier), _output| {
            let mut ob = outbox.borrow_mut();
            input.for_each(|cap, data: &mut Vec<D>| {
                if let Some(cap) = cap.retain_least(0) {
                    let t = *cap.time();
                    for d in data.drain(..) {
                        ob.push(t, d);
                    }
                    held.entry(t).or_insert(cap);
                }
            });
            // A tick is done once no more records can come for it and none is unacknowledged.
            held.retain(|t, _| frontier.frontier().less_equal(t) || ob.pending(*t));
        }
    })
}
