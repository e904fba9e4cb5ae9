//! Size bounds of what bizra writes (SPEC §4, "no poison pills"): how much of an input text an
//! output may echo, and the largest dead letter and commitment any accepted input can make.
//! Verdicts echo input only through [`clip`]ped texts, so their size is bounded too; the sinks
//! still measure every output against their limit and turn one that does not fit into an
//! `output_too_large` dead letter. Owns no I/O and no configuration.

use std::borrow::Cow;

use crate::dead_letter::{DeadLetter, ErrorKind};
use crate::operators::commit::Output;

/// Bytes of one input text (a harm, a field value) that an output echoes at most.
pub const ECHO_BYTES: usize = 64;

/// Bytes of a dead letter's `message` at most.
pub const MESSAGE_BYTES: usize = 1024;

/// `s` if it has at most `max` bytes; else its first bytes (cut at a character boundary, at
/// most `max`) followed by a marker with the original length: `abc…[truncated, 5000 bytes]`.
///
/// ```
/// use bizra_dataflows::bounds::clip;
/// assert_eq!(clip("short", 64), "short");
/// assert_eq!(clip(&"é".repeat(10), 5), "éé…[truncated, 20 bytes]");
/// ```
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[truncated, {} bytes]", &s[..end], s.len()))
}

/// Largest JSON size of a string of `bytes` bytes: every byte may need a six-byte `\u00XX`
/// escape, plus the quotes.
pub const fn json_string_max(bytes: usize) -> usize {
    6 * bytes + 2
}

/// Largest JSON size of a dead letter whose input topic name has at most `topic_bytes` bytes
/// (the raw bytes are base64 of at most [`crate::dead_letter::RAW_KEEP_BYTES`], the message
/// is clipped to [`MESSAGE_BYTES`] plus its marker).
pub const fn dead_letter_max_bytes(topic_bytes: usize) -> usize {
    let raw_b64 = crate::dead_letter::RAW_KEEP_BYTES.div_ceil(3) * 4 + 2;
    let message = json_string_max(MESSAGE_BYTES + 64);
    // Keys, the kind, partition, offset and the RFC 3339 time.
    let fixed = 256;
    raw_b64 + message + json_string_max(topic_bytes) + fixed
}

/// Largest JSON size of a commitment (SPEC §1.3) of a batch of `batch_size` leaves.
pub const fn commitment_max_bytes(batch_size: usize) -> usize {
    // Each leaf is 64 hex digits, quoted, with a comma; the rest is keys, numbers of at most
    // 20 digits, `run`/`key_id` (16 hex), `root`/`prev` (64 hex) and the base64 signature.
    batch_size * 67 + 512
}

/// Largest JSON size of a rollback (SPEC §1.6) in a batch of `batch_size` verdicts, whose
/// input topic name has at most `topic_bytes` bytes: an id of at most 256 bytes (escaped, up
/// to 6 bytes each), the topic, the payload digest, two batch positions, the time and a proof
/// of a tree of at most twice `batch_size` leaves (a verdict and its rollback each).
pub const fn rollback_max_bytes(batch_size: usize, topic_bytes: usize) -> usize {
    let depth = (usize::BITS - (2 * batch_size).leading_zeros()) as usize;
    json_string_max(256) + json_string_max(topic_bytes) + depth * 67 + 512
}

/// Largest replay-log record (binary, `verification::replay_log`).
pub const REPLAY_RECORD_MAX_BYTES: usize = crate::verification::replay_log::MAX_RECORD_BYTES;

/// What becomes of an output that its sink refused (too large for it, or refused by the
/// broker for good): a verdict is replaced by a dead letter of `kind` carrying its input's
/// provenance; a commitment or dead letter has no input to stand for, so the refusal is fatal
/// and this returns the message to stop with.
pub fn refused(o: &Output, kind: ErrorKind, why: &str, at_ms: i64) -> Result<DeadLetter, String> {
    match o {
        Output::Verdict(v) => Ok(DeadLetter::refused(
            kind,
            format!(
                "the verdict of observation {:?} was not written: {why}",
                clip(&v.id, ECHO_BYTES)
            ),
            v.input.clone(),
            at_ms,
        )),
        Output::Commitment(c) => Err(format!(
            "the commitment of shard {} seq {} was not written: {why}",
            c.shard, c.seq
        )),
        Output::DeadLetter(d) => Err(format!(
            "a {} dead letter was not written: {why}",
            d.error.as_str()
        )),
        // A rollback stands for a verdict already out; losing it would leave that verdict
        // standing. The replay log is the state the next start needs.
        Output::Rollback(r) => Err(format!(
            "the rollback of observation {:?} was not written: {why}",
            clip(&r.id, ECHO_BYTES)
        )),
        Output::Replay(r) => Err(format!(
            "a replay-log record of shard {} ({} sightings) was not written: {why}",
            r.shard,
            r.sightings.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_texts_and_marks_long_ones_with_their_length() {
        assert!(matches!(clip("abc", 3), Cow::Borrowed("abc")));
        assert_eq!(clip("abcd", 3), "abc…[truncated, 4 bytes]");
        // A cut inside a multi-byte character moves back to its start.
        assert_eq!(clip("aé", 2), "a…[truncated, 3 bytes]");
        assert_eq!(clip("ééé", 0), "…[truncated, 6 bytes]");
    }

    #[test]
    fn clipped_texts_stay_within_their_bound() {
        let long = "x".repeat(1 << 20);
        assert!(clip(&long, ECHO_BYTES).len() <= ECHO_BYTES + 40);
    }
}
