//! The one integration-test binary: each module proves one area of behaviour.

mod golden_stages;
mod merkle_vectors;
mod cli;
