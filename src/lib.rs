//! bizra's runtime: command line, configuration, timely execution, and the file/stdin
//! adapters of the embedded mode. The stages and operators live in `bizra-dataflows`.
//!
//! # Layout
//! - `main.rs`: the CLI (`run`, `gen`, `keygen`, `verify`) and exit codes.
//! - `config`: the configuration tree, embedded defaults, policy/keyring/key loading.
//! - `gen`: the deterministic generator of realistic observations.
//! - `io`: reader thread (JSONL → raw records) and writer threads (lines → files/stdout).
//! - `kafka/`: Kafka mode — source, sinks, offset commits, circuit breaker.
//! - `run`: timely workers, the driver loop with bounded in-flight epochs, the summary.
//! - `verify_cmd`: the independent checker of verdicts against commitments.

pub mod config;
pub mod gen;
pub mod health;
pub mod http;
pub mod io;
pub mod kafka;
pub mod metrics;
pub mod run;
pub mod telemetry;
pub mod verify_cmd;
