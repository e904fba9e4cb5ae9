//! bizra's runtime: command line, configuration, timely execution, and the file/stdin
//! adapters of the embedded mode. The stages and operators live in `bizra-dataflows`.
//!
//! # Layout
//! - `main.rs`: the CLI (`run`, `gen`, `keygen`, `sign`, `verify`, `audit`) and exit codes.
//! - `archive/`: the episodic audit archive — xz segments, hash chain per shard, writer pool,
//!   retention, verify and lookup.
//! - `config`: the configuration tree, embedded defaults, policy/keyring/key loading.
//! - `consolidate`: working-memory (L2) summaries per window, their novelty and xz compression.
//! - `data_dir`: the `--data-dir` lock (one process per data directory).
//! - `decision_log`: signed checkpoints of each shard's log, and where each chain stands in
//!   `--data-dir` (SPEC §3.4).
//! - `fatal`: how a fatal error ends the process, the panic hook, and the list of which
//!   failures are per-record, transient or fatal.
//! - `faults`: faults the fail-fast tests inject (`BIZRA_FAULTS`).
//! - `inflight`: the sources' byte budget (`pipeline.max_inflight_bytes`).
//! - `gen`: the deterministic generator of realistic observations.
//! - `io`: reader thread (JSONL → raw records) and writer threads (lines → files/stdout).
//! - `kafka/`: Kafka mode — source, sinks, offset commits, circuit breaker, and the restore
//!   of the replay state and of the commitment chains from their topics.
//! - `recall`: recent episodes by observation id (bounded LRU), similar-episode search (HNSW).
//! - `replay_audit`: `bizra audit replay`: recomputes verdicts from their input, compares leaves.
//! - `replay_state`: the replay guard's state in `--data-dir`: restored at start, appended
//!   and compacted by a writer thread.
//! - `run`: timely workers, the driver loop with bounded in-flight epochs, the summary.
//! - `sign_cmd`: `bizra sign`, a producer's signer: sets each observation's digest and
//!   §3.2 signature.
//! - `verify_cmd/`: `bizra verify`, the auditor of a whole history — verdicts, rollbacks,
//!   commitment chains and checkpoints — fed from files or the topics (`verify_cmd/kafka.rs`,
//!   also `--follow`).
//! - `audit_cmd`: `bizra audit get|verify|similar` over the episode archive, and `audit
//!   prove` over a shard's decision log.

pub mod archive;
pub mod audit_cmd;
pub mod config;
pub mod consolidate;
pub mod data_dir;
pub mod decision_log;
pub mod fatal;
pub mod faults;
pub mod gen;
pub mod health;
pub mod http;
pub mod inflight;
pub mod io;
pub mod kafka;
pub mod metrics;
pub mod recall;
pub mod replay_audit;
pub mod replay_state;
pub mod run;
pub mod sign_cmd;
pub mod telemetry;
pub mod verify_cmd;
