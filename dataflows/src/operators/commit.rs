//! The `commit` operator: collects each batch's leaves, and when a batch is sealed builds
//! its Merkle tree, attaches inclusion proofs to held full-tier verdicts and to rollbacks,
//! and signs the shard's commitments in seq order (a batch whose predecessor is still open
//! waits, holding its capability, so no epoch completes before its commitment is out).
//! Statistical and incremental verdicts, and replay-log records, pass straight through.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use super::{report, wall_ms, Observer, Stage, Structure};
use crate::dead_letter::{rfc3339_ms, DeadLetter};
use crate::record::{Assessed, BatchEvent};
use crate::rollback::Rollback;
use crate::verdict::{Proof, Verdict};
use crate::verification::commitment::{Chain, ChainStart, Commitment};
use crate::verification::merkle::{Hash, Tree};
use crate::verification::replay_log::ReplayRecord;
use crate::verification::{to_hex, Tier};

/// Everything bizra writes, one variant per output topic/file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Output {
    Verdict(Box<Verdict>),
    Commitment(Commitment),
    DeadLetter(DeadLetter),
    Rollback(Box<Rollback>),
    /// A record of the replay guard's persisted state (binary; `replay_log.rs`).
    Replay(ReplayRecord),
}

/// A batch being collected.
struct Pending {
    tier: Tier,
    leaves: Vec<Option<Hash>>,
    have: u32,
    /// Full-tier verdicts waiting for their proof.
    #[allow(clippy::vec_box)] // the verdicts arrive boxed and leave boxed: no re-boxing
    held: Vec<Box<Verdict>>,
    /// Rollbacks waiting for their proof.
    #[allow(clippy::vec_box)]
    rollbacks: Vec<Box<Rollback>>,
    /// Set by the batch's seal.
    size: Option<u32>,
    /// How long the batch was open, from its seal.
    open_ms: u64,
    /// The least capability seen for this batch.
    cap: Capability<u64>,
}

/// Turns assessed items and seals into verdicts and signed commitments.
pub fn commit<'s>(
    events: StreamVec<'s, u64, BatchEvent<Assessed>>,
    run: [u8; 8],
    chains: Arc<BTreeMap<u32, ChainStart>>,
    key: Arc<SigningKey>,
    observer: Observer,
) -> StreamVec<'s, u64, Output> {
    let shard = events.scope().index() as u32;
    events.unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
        Pipeline,
        "commit",
        move |initial, _info| {
            drop(initial);
            let mut chain = Chain::resume(run, shard, chains.get(&shard));
            let mut pending: HashMap<u64, Pending> = HashMap::new();
            let mut ready: BTreeMap<u64, (Tree, Capability<u64>, u64)> = BTreeMap::new();
            let mut done = Vec::new();
            // The verdicts and replay records of one input batch, sent in one session (one
            // session per record would send a container per record).
            let mut now_out: Vec<Output> = Vec::new();

            move |input, output| {
                let started = observer.as_ref().map(|_| std::time::Instant::now());
                let mut worked = false;
                input.for_each(|cap, data| {
                    worked = true;
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let now = wall_ms();
                    for event in data.drain(..) {
                        let seq = match &event {
                            BatchEvent::Item(a) => a.verdict.batch.seq,
                            BatchEvent::Rollback(r) => r.batch.seq,
                            BatchEvent::Seal(s) => s.seq,
                            BatchEvent::Replay(_) => {
                                let BatchEvent::Replay(r) = event else {
                                    unreachable!()
                                };
                                now_out.push(Output::Replay(r));
                                continue;
                            }
                        };
                        let p = pending.entry(seq).or_insert_with(|| Pending {
                            tier: Tier::Statistical,
                            leaves: Vec::new(),
                            have: 0,
                            held: Vec::new(),
                            rollbacks: Vec::new(),
                            size: None,
                            open_ms: 0,
                            cap: cap.clone(),
                        });
                        if cap.time() < p.cap.time() {
                            p.cap = cap.clone();
                        }
                        match event {
                            BatchEvent::Item(a) => {
                                let mut v = a.verdict;
                                let i = v.batch.leaf_index as usize;
                                if p.leaves.len() <= i {
                                    p.leaves.resize(i + 1, None);
                                }
                                p.leaves[i] = Some(a.leaf);
                                p.have += 1;
                                p.tier = v.verification.tier;
                                v.latency_ms = (now - a.ingest_ms).max(0) as f64;
                                if p.tier == Tier::Full {
                                    p.held.push(v);
                                } else {
                                    now_out.push(Output::Verdict(v));
                                }
                            }
                            BatchEvent::Rollback(r) => {
                                let i = r.batch.leaf_index as usize;
                                if p.leaves.len() <= i {
                                    p.leaves.resize(i + 1, None);
                                }
                                p.leaves[i] = Some(r.leaf().expect("the verifier writes the digest"));
                                p.have += 1;
                                p.rollbacks.push(r);
                            }
                            BatchEvent::Seal(s) => {
                                p.size = Some(s.size);
                                p.open_ms = s.open_ms;
                                p.tier = s.tier;
                            }
                            BatchEvent::Replay(_) => unreachable!("passed on above"),
                        }
                        if p.size == Some(p.have) {
                            done.push(seq);
                        }
                    }
                    if !now_out.is_empty() {
                        output.session(&cap).give_iterator(now_out.drain(..));
                    }
                });

                for seq in done.drain(..) {
                    let Some(p) = pending.remove(&seq) else {
                        continue;
                    };
                    let leaves: Vec<Hash> = p
                        .leaves
                        .into_iter()
                        .map(|l| l.expect("sealed batch has every leaf"))
                        .collect();
                    let tree = Tree::new(leaves);
                    let root = to_hex(&tree.root());
                    let proof = |leaf_index: u32| Proof {
                        tree_size: tree.len() as u64,
                        root: root.clone(),
                        path: tree.path(leaf_index as usize).iter().map(|h| to_hex(h)).collect(),
                    };
                    let mut session = output.session(&p.cap);
                    for mut v in p.held {
                        v.proof = Some(proof(v.batch.leaf_index));
                        session.give(Output::Verdict(v));
                    }
                    if !p.rollbacks.is_empty() {
                        let at = rfc3339_ms(wall_ms());
                        for mut r in p.rollbacks {
                            r.proof = Some(proof(r.batch.leaf_index));
                            r.at = at.clone();
                            session.give(Output::Rollback(r));
                        }
                    }
                    drop(session);
                    ready.insert(seq, (tree, p.cap, p.open_ms));
                }

                // Chain commitments in seq order.
                while let Some(entry) = ready.first_entry() {
                    if *entry.key() != chain.next_seq() {
                        break;
                    }
                    let seq = *entry.key();
                    let (tree, cap, open_ms) = entry.remove();
                    let mut c = chain.seal_tree(seq, &tree, &key);
                    c.open_ms = open_ms;
                    output.session(&cap).give(Output::Commitment(c));
                }
                if let (Some(o), Some(t), true) = (&observer, started, worked) {
                    o.observe(Stage::Commit, t.elapsed());
                }
                report(&observer, Structure::CommitBatches, || {
                    pending.values().map(|p| p.leaves.len()).sum::<usize>()
                        + ready.values().map(|(t, _, _)| t.len()).sum::<usize>()
                });
            }
        },
    )
}
