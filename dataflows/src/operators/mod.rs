//! Timely operators: thin wrappers that hold per-worker state and call the pure stages.
//! One operator per file; none does I/O or blocks.

pub mod commit;
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

/// Told how long a stage spent on each batch of records it handled (one operator
/// activation): every record of that batch waited that long in the stage. Implemented by the
/// runtime's metrics; the dataflow only measures.
pub trait StageObserver {
    fn observe(&self, stage: Stage, elapsed: std::time::Duration);
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
