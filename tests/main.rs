//! The one integration-test binary: each module proves one area of behaviour.

mod archive;
mod attacks;
mod broker;
mod chaos;
mod cli;
mod common;
mod decision_log;
mod decode_props;
mod golden_stages;
mod hardening;
mod kafka;
mod kafka_faults;
mod log_audit;
mod merkle_vectors;
mod proxy;
mod replay_audit;
mod restarts;
mod sign;
mod state;
