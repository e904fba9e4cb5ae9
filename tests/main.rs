//! The one integration-test binary: each module proves one area of behaviour.

mod archive;
mod broker;
mod cli;
mod common;
mod decode_props;
mod golden_stages;
mod kafka;
mod merkle_vectors;
mod state;
