//! Fatal errors (SPEC §4, "fail fast"): an error that no record can cure ends the process
//! within seconds, with exit code 1 and one line on stderr naming the cause. Owns that exit
//! and the panic hook; deciding *what* is fatal is done where each failure enters bizra.
//!
//! # How bizra classifies failures
//! Each failure is classified once, at the boundary where it enters:
//!
//! - **Per-record** (this input, or its output, cannot be processed): a dead letter with the
//!   input's provenance, and the pipeline goes on. Bad input of any kind (`decode.rs`); an
//!   output larger than its sink takes (`output_too_large`, both sinks); a record the broker
//!   refuses for good (`produce_refused`: the per-record codes in `kafka/sink.rs`, after the
//!   record was resent on its own to rule out a refused neighbour).
//! - **Transient** (waiting cures it): retried, with reading paused meanwhile and the count
//!   exported. A full producer queue, a slow or absent broker, the circuit breaker open
//!   (`kafka/sink.rs`, `kafka/breaker.rs`); a failed offset commit (`kafka/offsets.rs`,
//!   retried with back-off); a full archive queue or writer channel (backpressure); a
//!   metadata refresh that fails (`kafka/source.rs`, tried again at the next interval); a
//!   checkpoint the broker refuses for a reason that is not fatal (the next one covers it).
//! - **Fatal** (nothing will cure it): [`halt`]. An I/O error writing an output file or the
//!   archive (disk full, permissions), or reading the input; an archive writer that died; a
//!   broker error that is not about one record (authorisation, a deleted topic, the
//!   idempotent producer's fatal state, TLS or SASL the broker does not accept, an unknown
//!   code); a commitment or dead letter the sink refuses (it has no input to stand for); a
//!   rollback or replay-state record the sink refuses (a rollback stands for a verdict that
//!   is out already; the replay state is what the next start needs); a replay state that
//!   cannot be read back at start (a missing replay topic, an unreadable file, a record that
//!   does not decode), or written (`replay_state.rs`); a commitment chain that cannot be
//!   continued at start (a missing commitments or checkpoints topic, a chain signed by
//!   another key than this node's, an unreadable `--data-dir` log state: `kafka/chains.rs`,
//!   `decision_log.rs`) or whose state cannot be written; a process of the timely cluster that
//!   is gone; a graceful stop that cannot drain or commit in time; and any panic, in any
//!   thread.
//!
//! Why exit at once instead of unwinding: a timely worker that stops holds capabilities, so
//! every other worker of the cluster would wait for it forever; the broker and the archive
//! may be what failed, so nothing more can be acknowledged. At-least-once delivery needs
//! nothing else: offsets are committed only for epochs whose outputs were all acknowledged,
//! so everything after the last commit is read again on restart, and exiting commits nothing
//! unfinished.

use std::fmt::Display;
use std::io::Write;

/// The exit code of a fatal error.
pub const EXIT_CODE: i32 = 1;

/// Ends the process now: one line `bizra: fatal: <cause>` on stderr, exit code 1. Nothing
/// is flushed or committed: see the module documentation for why that loses nothing.
pub fn halt(cause: impl Display) -> ! {
    let line = one_line(&cause.to_string());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "bizra: fatal: {line}");
    let _ = err.flush();
    std::process::exit(EXIT_CODE)
}

/// Makes a panic in any thread fatal: the worker that panicked would otherwise leave the
/// others of the cluster waiting for its capabilities, and a panicking reader, writer or
/// communication thread would stall the pipeline silently. A process of the cluster that is
/// gone shows up here too, as timely's "socket closed" panic in a network thread.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let hint = if message.contains("timely communication error") {
            "a process of the timely cluster is gone: "
        } else {
            ""
        };
        halt(format_args!("{hint}thread '{name}' panicked{at}: {message}"));
    }));
}

/// The text with its line breaks turned into spaces, so that the cause is one line.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_becomes_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }
}
