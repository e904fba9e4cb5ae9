//! Timely operators: thin wrappers that hold per-worker state and call the pure stages.
//! One operator per file; none does I/O or blocks.

pub mod commit;
pub mod episodes;
pub mod held;
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

/// The stages of the pipeline, for per-stage latency metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Decode,
    Score,
    Verify,
    Assess,
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Decode,
        Stage::Score,
        Stage::Verify,
        Stage::Assess,
        Stage::Commit,
    ];

    /// Label value: `decode`, `score`, `verify`, `assess`, `commit`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Score => "score",
            Stage::Verify => "verify",
            Stage::Assess => "assess",
            Stage::Commit => "commit",
        }
    }
}

/// The bounded structures a worker holds, dataflow and runtime alike: their sizes are
/// exported (`bizra_state_entries{structure}`) so ops and the long-run test can see that
/// none grows with the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// Ids remembered by the replay guard (capped by `verify.replay_window_ids`).
    ReplayGuard,
    /// Records waiting in `verify` for their epoch to complete.
    VerifyStash,
    /// Records of open batches in `commit` (leaves, and full-tier verdicts held for proofs).
    CommitBatches,
    /// Window-statistics aggregates (differential state and pre-aggregation).
    StatsWindows,
    /// Outputs queued for the sink (Kafka outbox, or the embedded writer's queue).
    SinkQueue,
    /// Epochs whose input offsets wait for their outputs to be acknowledged (Kafka).
    OffsetEpochs,
    /// Samples kept by the health monitor.
    HealthHistory,
    /// Episodes waiting for room in the archive writer's queue.
    ArchiveQueue,
    /// Statistical-tier verdicts emitted `sampled_out` whose signature check waits for their
    /// batch's seal (at most `verification.batch_size` per worker).
    DeferredChecks,
}

impl Structure {
    pub const ALL: [Structure; 9] = [
        Structure::ReplayGuard,
        Structure::VerifyStash,
        Structure::CommitBatches,
        Structure::StatsWindows,
        Structure::SinkQueue,
        Structure::OffsetEpochs,
        Structure::HealthHistory,
        Structure::ArchiveQueue,
        Structure::DeferredChecks,
    ];

    /// Label value of the `structure` label.
    pub fn name(self) -> &'static str {
        match self {
            Structure::ReplayGuard => "replay_guard",
            Structure::VerifyStash => "verify_stash",
            Structure::CommitBatches => "commit_batches",
            Structure::StatsWindows => "stats_windows",
            Structure::SinkQueue => "sink_queue",
            Structure::OffsetEpochs => "offset_epochs",
            Structure::HealthHistory => "health_history",
            Structure::ArchiveQueue => "archive_queue",
            Structure::DeferredChecks => "deferred_checks",
        }
    }
}

/// Told how long a stage spent on each batch of records it handled (one operator
/// activation): every record of that batch waited that long in the stage; and how large the
/// operators' bounded structures are after each activation, and the lag of the statistical
/// tier's later signature checks. Implemented by the runtime's
/// metrics; the dataflow only measures.
pub trait StageObserver {
    fn observe(&self, stage: Stage, elapsed: std::time::Duration);
    fn state(&self, structure: Structure, entries: usize);
    /// A `sampled_out` signature was checked this long after its verdict was emitted.
    fn deferred_check(&self, lag: std::time::Duration);
}

/// A worker's stage observer, if metrics are on.
pub type Observer = Option<std::rc::Rc<dyn StageObserver>>;

/// Times `f` for the observer, if there is one.
pub(crate) fn timed<R>(observer: &Observer, stage: Stage, f: impl FnOnce() -> R) -> R {
    match observer {
        None => f(),
        Some(o) => {
            let start = std::time::Instant::now();
            let r = f();
            o.observe(stage, start.elapsed());
            r
        }
    }
}

/// Reports the size of `structure` to the observer, if there is one.
pub(crate) fn report(observer: &Observer, structure: Structure, entries: impl FnOnce() -> usize) {
    if let Some(o) = observer {
        o.state(structure, entries());
    }
}

/// `map` that reports the time spent per batch of records as `stage`.
pub fn timed_map<'s, D: 'static, E: 'static>(
    stream: timely::dataflow::StreamVec<'s, u64, D>,
    stage: Stage,
    observer: Observer,
    mut f: impl FnMut(D) -> E + 'static,
) -> timely::dataflow::StreamVec<'s, u64, E> {
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    stream.unary(Pipeline, stage.name(), move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let mut session = output.session(&cap);
                for batch in data {
                    timed(&observer, stage, || {
                        session.give_iterator(batch.drain(..).map(&mut f))
                    });
                }
            })
        }
    })
}
