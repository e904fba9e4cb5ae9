//! The `verify` operator: routes records to their shard by keyed id bucket, waits until an
//! epoch is complete, and hands it to the shard's [`ShardVerifier`] in input order. Holds one
//! capability per open batch so that nothing downstream (offset commits included) passes an
//! epoch before its batch is sealed — and, for the statistical tier, before the later check
//! of its `sampled_out` signatures and their rollbacks; seals by time through timer
//! activations, never sleeps. With persistence on, the replay guard's records leave at the
//! epoch that made them (its start snapshots at time 0).
//!
//! ```
//! use std::sync::Arc;
//! use timely::dataflow::operators::{Inspect, ToStream};
//! use bizra_dataflows::operators::verify::verify;
//! use bizra_dataflows::verification::{signature::Keyring, VerifyConfig};
//!
//! timely::example(|scope| {
//!     let none: Vec<bizra_dataflows::record::Scored> = Vec::new();
//!     let key = bizra_dataflows::verification::sampling::SampleKey::from_secret(&[0; 32]);
//!     let chains = Arc::default(); // every shard starts a new chain
//!     verify(none.to_stream(scope).container::<Vec<_>>(), VerifyConfig::default(), Arc::new(Keyring::new()), key, None, chains, None)
//!         .inspect(|event| panic!("no input, no output: {event:?}"));
//! });
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession};
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use super::{report, timed, Clock, Observer, Stage, Structure};
use crate::record::{BatchEvent, Checked, Scored};
use crate::verification::batcher::Restored;
use crate::verification::commitment::ChainStart;
use crate::verification::sampling::SampleKey;
use crate::verification::signature::Keyring;
use crate::verification::{ShardVerifier, Tier, VerifyConfig};

/// Verifies `scored` records; emits items, rollbacks, seals and (with `restored`, the
/// persisted replay state to start from) replay-log records per shard (= global worker index).
pub fn verify<'s>(
    scored: StreamVec<'s, u64, Scored>,
    cfg: VerifyConfig,
    keyring: Arc<Keyring>,
    key: SampleKey,
    restored: Option<Restored>,
    chains: Arc<BTreeMap<u32, ChainStart>>,
    observer: Observer,
) -> StreamVec<'s, u64, BatchEvent<Checked>> {
    let scope = scored.scope();
    let shard = scope.index() as u32;
    let peers = scope.peers();
    let route = Exchange::new(|s: &Scored| u64::from(s.decoded.bucket));
    scored.unary_frontier::<Builder, _, _, _>(route, "verify", move |initial, info| {
        let activator = scope.activator_for(info.address.clone());
        let clock = Clock::new();
        // Batches are numbered on from the shard's last durable commitment.
        let first_seq = chains.get(&shard).map_or(0, |c| c.next_seq);
        let mut verifier =
            ShardVerifier::new(shard, peers, cfg, keyring, key, restored.as_ref()).starting_at(first_seq);
        // Held until the first activation, to send the start snapshots at time 0.
        let mut initial = Some(initial);
        let mut stash: BTreeMap<u64, (Capability<u64>, Vec<Scored>)> = BTreeMap::new();
        // The capability of each tier's open batch, with the batch's seq.
        let mut held: [Option<(u64, Capability<u64>)>; 3] = [None, None, None];
        let mut timer_at: Option<u64> = None;
        let mut events = Vec::new();

        move |(input, frontier), output| {
            if let Some(cap) = initial.take() {
                let mut session = output.session(&cap);
                for r in verifier.take_replay_records() {
                    session.give(BatchEvent::Replay(r));
                }
            }
            input.for_each(|cap, data| {
                if let Some(cap) = cap.retain_least(0) {
                    let t = *cap.time();
                    stash.entry(t).or_insert_with(|| (cap, Vec::new())).1.append(data);
                }
            });
            let now = clock.now_ms();

            // Epochs the frontier has passed are complete: verify them in time order.
            while let Some(entry) = stash.first_entry() {
                if frontier.frontier().less_equal(entry.key()) {
                    break;
                }
                let (cap, items) = entry.remove();
                timed(&observer, Stage::Verify, || {
                    verifier.process(items, now, &mut events)
                });
                events.extend(verifier.take_replay_records().into_iter().map(BatchEvent::Replay));
                emit(&mut events, &mut held, Some(&cap), output);
                for tier in Tier::ALL {
                    let open = verifier.open_seq(tier);
                    let slot = &mut held[tier as usize];
                    if open.is_some() && slot.as_ref().map(|(s, _)| *s) != open {
                        *slot = open.map(|seq| (seq, cap.clone()));
                    }
                }
            }

            if frontier.frontier().is_empty() {
                verifier.seal_all(&mut events);
            } else {
                verifier.seal_due(now, &mut events);
            }
            emit(&mut events, &mut held, None, output);

            report(&observer, Structure::ReplayGuard, || verifier.replay_len());
            report(&observer, Structure::DeferredChecks, || verifier.deferred_len());
            if let Some(o) = &observer {
                for lag in verifier.take_check_lags() {
                    o.deferred_check(Duration::from_millis(lag));
                }
            }
            report(&observer, Structure::VerifyStash, || {
                stash.values().map(|(_, items)| items.len()).sum()
            });

            match verifier.next_deadline_ms() {
                Some(deadline) if timer_at.is_none_or(|t| t <= now || deadline < t) => {
                    activator.activate_after(Duration::from_millis(deadline.saturating_sub(now)));
                    timer_at = Some(deadline);
                }
                None => timer_at = None,
                _ => {}
            }
        }
    })
}

type Held = [Option<(u64, Capability<u64>)>; 3];
type Builder = CapacityContainerBuilder<Vec<BatchEvent<Checked>>>;

/// Sends verifier events: items of the statistical and incremental tiers and replay records
/// at the current epoch; full-tier items, rollbacks and seals at their batch's held
/// capability (released on seal). Consecutive events at one time go out in one session: a
/// session sends what it holds when it ends, so one per event would make a container (and
/// a message downstream) per event.
fn emit(
    events: &mut Vec<BatchEvent<Checked>>,
    held: &mut Held,
    current: Option<&Capability<u64>>,
    output: &mut OutputBuilderSession<'_, u64, Builder>,
) {
    let mut run: Vec<BatchEvent<Checked>> = Vec::new();
    let mut run_cap: Option<Capability<u64>> = None;
    for event in events.drain(..) {
        let batch_cap = |tier: Tier, seq: u64| {
            held[tier as usize]
                .as_ref()
                .filter(|(held_seq, _)| *held_seq == seq)
                .map(|(_, c)| c)
        };
        let cap = match &event {
            // Replay records are made while an epoch is processed.
            BatchEvent::Replay(_) => current,
            BatchEvent::Item(c) if c.verification.tier != Tier::Full => {
                current.or(batch_cap(c.verification.tier, c.batch.seq))
            }
            BatchEvent::Item(c) => batch_cap(Tier::Full, c.batch.seq).or(current),
            BatchEvent::Rollback(r) => batch_cap(Tier::Statistical, r.batch.seq).or(current),
            BatchEvent::Seal(s) => batch_cap(s.tier, s.seq).or(current),
        }
        .expect("an event has a capability: its epoch's or its open batch's");
        if run_cap.as_ref().is_none_or(|c| c.time() != cap.time()) {
            if let Some(c) = run_cap.replace(cap.clone()) {
                output.session(&c).give_iterator(run.drain(..));
            }
        }
        let sealed = match &event {
            BatchEvent::Seal(s) => Some(s.tier),
            _ => None,
        };
        run.push(event);
        if let Some(tier) = sealed {
            held[tier as usize] = None;
        }
    }
    if let Some(c) = run_cap {
        output.session(&c).give_iterator(run.drain(..));
    }
}
