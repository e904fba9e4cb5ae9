//! The `episodes` operator: gathers each sealed batch's verdicts into one [`Episode`] for the
//! audit archive. A batch's verdicts and its commitment all leave `commit` on the worker that
//! sealed it, in any order (statistical verdicts before the seal, full-tier ones with it), so
//! the operator keeps the compact records of open batches and emits the episode once the
//! commitment and all `tree_size` records have passed. It does no I/O: writing is the
//! runtime's archive sink.

use std::collections::HashMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use super::commit::Output;
use crate::episode::{Conditions, Episode, EpisodeRecord, RollbackLeaf};
use crate::verification::commitment::Commitment;

/// A batch whose episode is not complete yet.
#[derive(Default)]
struct Gathering {
    records: Vec<EpisodeRecord>,
    rollbacks: Vec<RollbackLeaf>,
    conditions: Conditions,
    commitment: Option<Commitment>,
}

impl Gathering {
    fn complete(&self) -> bool {
        self.commitment
            .as_ref()
            .is_some_and(|c| c.tree_size == (self.records.len() + self.rollbacks.len()) as u64)
    }
}

/// Passes `outputs` on unchanged and, beside them, one episode per sealed batch, at the time
/// of the output that completed it. The records are built from each verdict by reference as
/// it passes, so the verdicts are not copied (a second consumer of `outputs` would get a deep
/// copy of every verdict from timely).
// The `Result` is a pair of streams in one container, split at once by `ok_err`; its `Err`
// is an episode, not an error, so its size is no concern.
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub fn with_episodes<'s>(
    outputs: StreamVec<'s, u64, Output>,
) -> (StreamVec<'s, u64, Output>, StreamVec<'s, u64, Episode>) {
    outputs
        .unary::<CapacityContainerBuilder<Vec<Result<Output, Episode>>>, _, _, _>(
            Pipeline,
            "episodes",
            |_, _| {
                // (shard, seq) → what has passed of that batch.
                let mut open: HashMap<(u32, u64), Gathering> = HashMap::new();
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for o in data.drain(..) {
                            let done = match &o {
                                Output::Verdict(v) => {
                                    let key = (v.batch.shard, v.batch.seq);
                                    let g = open.entry(key).or_default();
                                    let r = EpisodeRecord::from_verdict(v, &mut g.conditions);
                                    g.records.push(r);
                                    g.complete().then_some(key)
                                }
                                Output::Commitment(c) => {
                                    let key = (c.shard, c.seq);
                                    let g = open.entry(key).or_default();
                                    g.commitment = Some(c.clone());
                                    g.complete().then_some(key)
                                }
                                Output::Rollback(r) => {
                                    let key = (r.batch.shard, r.batch.seq);
                                    let g = open.entry(key).or_default();
                                    g.rollbacks.push(RollbackLeaf::from_rollback(r));
                                    g.complete().then_some(key)
                                }
                                Output::DeadLetter(_) | Output::Replay(_) => None,
                            };
                            session.give(Ok(o));
                            if let Some(key) = done {
                                let g = open.remove(&key).expect("present");
                                let c = g.commitment.expect("complete");
                                session.give(Err(Episode::new(&c, g.conditions, g.records, g.rollbacks)));
                            }
                        }
                    });
                }
            },
        )
        .ok_err(|r| r)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ed25519_dalek::SigningKey;
    use timely::dataflow::operators::{Input, Inspect};

    use super::*;
    use crate::pipeline::{self, PipelineConfig, RawRecord};
    use crate::policy::Policy;
    use crate::verification::signature::Keyring;

    fn raw(i: usize) -> RawRecord {
        let urgency = ["real_time", "near_real_time", "batch"][i % 3];
        RawRecord {
            bytes: format!(r#"{{"id":"e{i}","data":"payload {i}","context":{{"urgency":"{urgency}"}}}}"#)
                .into_bytes(),
            input: None,
            position: i as u64,
            ingest_ms: 0,
            message_ms: None,
            broker_ms: None,
            oversize: None,
        }
    }

    fn config() -> PipelineConfig {
        PipelineConfig {
            limits: Default::default(),
            max_message_bytes: 1 << 20,
            max_future_ms: u64::MAX,
            verify: Default::default(),
            sample_key: crate::testing::test_key(),
            replay: None,
            policy: Arc::new(Policy::reference()),
            keyring: Arc::new(Keyring::new()),
            signing_key: Arc::new(SigningKey::from_bytes(&[7; 32])),
            chains: Default::default(),
            run: [1; 8],
            explain: None,
        }
    }

    /// Every sealed batch becomes exactly one episode whose records rebuild the signed root,
    /// and every verdict lands in exactly one episode.
    #[test]
    fn each_sealed_batch_becomes_one_episode_matching_its_commitment() {
        let got = Arc::new(Mutex::new((Vec::new(), 0usize, 0usize)));
        let sink = got.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            let sink = sink.clone();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (handle, raw) = scope.new_input();
                let out = pipeline::build(raw, &config(), None);
                // Count what passes through, so that the test also shows nothing is lost.
                let (out, episodes) = with_episodes(out);
                let counts = sink.clone();
                out.inspect(move |o| {
                    let mut g = counts.lock().unwrap();
                    match o {
                        Output::Verdict(_) => g.1 += 1,
                        Output::Commitment(_) => g.2 += 1,
                        Output::DeadLetter(_) | Output::Rollback(_) | Output::Replay(_) => {}
                    }
                });
                let eps = sink.clone();
                episodes.inspect(move |e| eps.lock().unwrap().0.push(e.clone()));
                handle
            });
            if worker.index() == 0 {
                for i in 0..500 {
                    input.send(raw(i));
                    if i % 100 == 99 {
                        input.advance_to(input.time() + 1);
                    }
                }
            }
        })
        .unwrap();
        let (eps, verdicts, commitments) = Arc::try_unwrap(got).unwrap().into_inner().unwrap();
        assert_eq!(verdicts, 500, "every verdict passes through");
        assert_eq!(eps.len(), commitments);
        assert!(eps.len() > 3, "several batches");
        assert_eq!(eps.iter().map(|e| e.records.len()).sum::<usize>(), verdicts);
        for e in &eps {
            assert!(
                e.matches_root(),
                "episode {}/{} rebuilds its root",
                e.shard,
                e.seq
            );
        }
    }
}
