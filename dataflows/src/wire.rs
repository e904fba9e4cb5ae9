//! The verdict's JSON (SPEC §1.2), written by hand: byte for byte what `serde_json` writes for
//! [`Verdict`]'s `Serialize` impl, in about half the time.
//!
//! Why by hand: serializing verdicts was the largest single cost of the Kafka pipeline
//! (15 % of bizra's CPU in `perf`), and a third of that was `serde_json` escaping every
//! key and every hex string byte by byte. Here keys are literals, enum names and our own hex
//! strings are copied as they are, and only strings that can come from input (`id`, topic,
//! conditions, reason, explanation) go through the escaper, which copies clean runs whole.
//! Numbers use the same formatters as `serde_json` (`zmij`, `itoa`; non-finite → `null`).
//! The equality with `serde_json` is tested on generated and on adversarial verdicts.

use crate::operators::commit::Output;
use crate::verdict::Verdict;
use crate::verification::DigestCheck;

/// Appends one output record to `out`: verdicts through [`write_verdict`], commitments, dead
/// letters and rollbacks as JSON through serde, a replay-log record in its binary form (no
/// JSON: it is state, read back only by bizra). Returns the record's length.
pub fn write_output(out: &mut Vec<u8>, o: &Output) -> usize {
    let start = out.len();
    match o {
        Output::Verdict(v) => write_verdict(out, v),
        Output::Commitment(c) => serde_json::to_writer(&mut *out, c).expect("commitments serialize"),
        Output::DeadLetter(d) => serde_json::to_writer(&mut *out, d).expect("dead letters serialize"),
        Output::Rollback(r) => serde_json::to_writer(&mut *out, r).expect("rollbacks serialize"),
        Output::Replay(r) => r.encode(out),
    }
    out.len() - start
}

/// Appends the verdict's JSON to `out`, exactly as `serde_json::to_writer(out, v)` would.
pub fn write_verdict(out: &mut Vec<u8>, v: &Verdict) {
    out.reserve(2048);
    out.extend_from_slice(b"{\"id\":");
    string(out, &v.id);
    out.extend_from_slice(b",\"input\":");
    match &v.input {
        Some(i) => {
            out.extend_from_slice(b"{\"topic\":");
            string(out, &i.topic);
            out.extend_from_slice(b",\"partition\":");
            int(out, i.partition);
            out.extend_from_slice(b",\"offset\":");
            int(out, i.offset);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"policy_version\":");
    string(out, &v.policy_version);
    out.extend_from_slice(b",\"decision\":");
    name(out, v.decision.as_str());
    out.extend_from_slice(b",\"permitted\":");
    boolean(out, v.permitted);

    let c = &v.convergence;
    out.extend_from_slice(b",\"convergence\":{\"clarity\":");
    float(out, c.clarity);
    out.extend_from_slice(b",\"mutual_information\":");
    float(out, c.mutual_information);
    out.extend_from_slice(b",\"entropy\":");
    float(out, c.entropy);
    out.extend_from_slice(b",\"synergy\":");
    float(out, c.synergy);
    out.extend_from_slice(b",\"quantization_error\":");
    float(out, c.quantization_error);
    out.extend_from_slice(b",\"quality\":");
    name(out, c.quality.as_str());

    let ver = &v.verification;
    out.extend_from_slice(b"},\"verification\":{\"tier\":");
    name(out, ver.tier.as_str());
    out.extend_from_slice(b",\"valid\":");
    boolean(out, ver.valid);
    out.extend_from_slice(b",\"confidence\":");
    float(out, ver.confidence);
    out.extend_from_slice(b",\"checks\":{\"digest\":");
    name(out, digest_name(ver.checks.digest));
    out.extend_from_slice(b",\"signature\":");
    name(out, ver.checks.signature.as_str());
    out.extend_from_slice(b",\"replay\":");
    boolean(out, ver.checks.replay);
    out.extend_from_slice(b"},\"reason\":");
    optional_string(out, ver.reason.as_deref());

    let val = &v.value;
    out.extend_from_slice(b"},\"value\":{\"value\":");
    float(out, val.value);
    out.extend_from_slice(b",\"confidence\":");
    float(out, val.confidence);
    out.extend_from_slice(b",\"disagreement\":");
    float(out, val.disagreement);
    out.extend_from_slice(b",\"signals\":[");
    separated(out, &val.signals, |out, s| {
        scored(
            out,
            b"{\"oracle\":",
            s.oracle.as_str(),
            b",\"value\":",
            s.value,
            s.confidence,
        )
    });

    let e = &v.ethics;
    out.extend_from_slice(b"]},\"ethics\":{\"overall\":");
    float(out, e.overall);
    out.extend_from_slice(b",\"severity\":");
    name(out, e.severity.as_str());
    out.extend_from_slice(b",\"consensus\":");
    float(out, e.consensus);
    out.extend_from_slice(b",\"permitted\":");
    boolean(out, e.permitted);
    out.extend_from_slice(b",\"conditions\":[");
    separated(out, &e.conditions, |out, c| string(out, c));
    out.extend_from_slice(b"],\"frameworks\":[");
    separated(out, &e.frameworks, |out, f| {
        let framework = f.framework.as_str();
        scored(
            out,
            b"{\"framework\":",
            framework,
            b",\"score\":",
            f.score,
            f.confidence,
        )
    });

    let s = &v.snr;
    out.extend_from_slice(b"]},\"snr\":{\"score\":");
    float(out, s.score);
    out.extend_from_slice(b",\"level\":");
    name(out, s.level.as_str());
    out.extend_from_slice(b",\"ihsan\":");
    float(out, s.ihsan);
    out.extend_from_slice(b",\"confidence\":");
    float(out, s.confidence);
    out.extend_from_slice(b"},\"consistency\":");
    float(out, v.consistency);

    let b = &v.batch;
    out.extend_from_slice(b",\"batch\":{\"shard\":");
    int(out, b.shard);
    out.extend_from_slice(b",\"seq\":");
    int(out, b.seq);
    out.extend_from_slice(b",\"leaf_index\":");
    int(out, b.leaf_index);
    out.extend_from_slice(b"},\"proof\":");
    match &v.proof {
        Some(p) => {
            out.extend_from_slice(b"{\"tree_size\":");
            int(out, p.tree_size);
            out.extend_from_slice(b",\"root\":");
            string(out, &p.root);
            out.extend_from_slice(b",\"path\":[");
            separated(out, &p.path, |out, h| string(out, h));
            out.extend_from_slice(b"]}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"latency_ms\":");
    float(out, v.latency_ms);
    out.extend_from_slice(b",\"payload_digest\":");
    string(out, &v.payload_digest);
    if let Some(x) = &v.explanation {
        out.extend_from_slice(b",\"explanation\":");
        string(out, x);
    }
    out.push(b'}');
}

/// The items written by `each`, separated by commas.
fn separated<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
}

/// An oracle signal or a framework score: `{"<kind>":name,"<score>":x,"confidence":c}`, where
/// `kind` and `score` are given with their punctuation.
fn scored(out: &mut Vec<u8>, kind: &[u8], label: &'static str, score: &[u8], x: f64, confidence: f64) {
    out.extend_from_slice(kind);
    name(out, label);
    out.extend_from_slice(score);
    float(out, x);
    out.extend_from_slice(b",\"confidence\":");
    float(out, confidence);
    out.push(b'}');
}

fn digest_name(d: DigestCheck) -> &'static str {
    match d {
        DigestCheck::Ok => "ok",
        DigestCheck::Mismatch => "mismatch",
        DigestCheck::Absent => "absent",
    }
}

/// One of our own snake_case names, which never needs escaping.
#[inline]
fn name(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(!s.bytes().any(needs_escape));
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

#[inline]
fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

#[inline]
fn int<I: itoa::Integer>(out: &mut Vec<u8>, i: I) {
    out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
}

/// As `serde_json`: shortest round-trip form from `zmij`, `null` for NaN and infinities.
#[inline]
fn float(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte is a control character, `"` or `\`, tested a word at a time with the
/// exact "has a byte less than n / equal to c" bit tricks.
fn any_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH != 0;
    let has_less_than_0x20 = |w: u64| w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
    let mut words = bytes.chunks_exact(8);
    for c in &mut words {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        if has_less_than_0x20(w) || has_zero(w ^ (ONES * 0x22)) || has_zero(w ^ (ONES * 0x5c)) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| needs_escape(b))
}

/// A JSON string with `serde_json`'s escapes: `\"`, `\\`, `\b \t \n \f \r`, and `\u00xx`
/// (lower-case hex) for the other control characters; everything else as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most strings need no escape: check that eight bytes at a time, then copy them whole.
    if !any_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convergence::{Convergence, Quality};
    use crate::ethics::{EthicsVerdict, Framework, FrameworkScore, Severity};
    use crate::observation::InputRef;
    use crate::snr::{Snr, SnrLevel};
    use crate::value::{Oracle, OracleSignal, ValueAssessment};
    use crate::verdict::{Decision, Proof};
    use crate::verification::{BatchRef, Checks, SignatureCheck, Tier, Verification};
    use proptest::prelude::*;

    fn same_as_serde(v: &Verdict) {
        let mut ours = Vec::new();
        write_verdict(&mut ours, v);
        let theirs = serde_json::to_vec(v).unwrap();
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
    }

    /// A verdict with every field set from the given pieces.
    #[allow(clippy::too_many_arguments)]
    fn verdict(
        id: String,
        topic: Option<String>,
        text: String,
        xs: [f64; 8],
        n: u64,
        flags: u8,
        proof_len: usize,
    ) -> Verdict {
        let f = |i: usize| xs[i % xs.len()];
        Verdict {
            id: id.into(),
            input: topic.map(|topic| InputRef {
                topic: topic.into(),
                partition: (n % 97) as i32 - 3,
                offset: n as i64 - 7,
            }),
            policy_version: "808880f304fda341".into(),
            decision: Decision::ALL[(flags % 3) as usize],
            permitted: flags & 1 == 0,
            convergence: Convergence {
                clarity: f(0),
                mutual_information: f(1),
                entropy: f(2),
                synergy: f(3),
                quantization_error: f(4),
                quality: Quality::ALL[(flags % 5) as usize],
            },
            verification: Verification {
                tier: Tier::ALL[(flags % 3) as usize],
                valid: flags & 2 == 0,
                confidence: f(5),
                checks: Checks {
                    digest: [DigestCheck::Ok, DigestCheck::Mismatch, DigestCheck::Absent]
                        [(flags % 3) as usize],
                    signature: SignatureCheck::ALL[(flags % 6) as usize],
                    replay: flags & 4 != 0,
                },
                reason: (flags & 8 != 0).then(|| text.clone()),
            },
            value: ValueAssessment {
                value: f(6),
                confidence: f(7),
                disagreement: f(0) - f(1),
                signals: [0, 1, 2, 3, 4].map(|i| OracleSignal {
                    oracle: Oracle::ALL[i],
                    value: f(i),
                    confidence: f(i + 3),
                }),
            },
            ethics: EthicsVerdict {
                overall: f(2) * -3.0,
                severity: Severity::ALL[(flags % 5) as usize],
                consensus: f(4),
                permitted: flags & 16 == 0,
                conditions: (0..(flags % 4)).map(|i| format!("{text}{i}")).collect(),
                frameworks: [0, 1, 2, 3, 4].map(|i| FrameworkScore {
                    framework: Framework::ALL[i],
                    score: f(i + 1),
                    confidence: f(i + 2),
                }),
            },
            snr: Snr {
                score: f(3) * 10.0,
                level: SnrLevel::ALL[(flags % 4) as usize],
                ihsan: f(5),
                confidence: f(6),
            },
            consistency: f(7),
            batch: BatchRef {
                shard: (n % 13) as u32,
                seq: n,
                leaf_index: (n % 64) as u32,
            },
            proof: (proof_len > 0).then(|| Proof {
                tree_size: n + 1,
                root: hex::encode([flags; 32]),
                path: (0..proof_len).map(|i| hex::encode([i as u8; 32])).collect(),
            }),
            latency_ms: f(1) * 1000.0,
            payload_digest: format!("sha256:{}", hex::encode([7u8; 32])),
            explanation: (flags & 32 != 0).then(|| format!("because {text}")),
            event_ms: 0,
            future_dated: false,
            domain: None,
            features: None,
        }
    }

    #[test]
    fn escapes_like_serde_json() {
        let nasty: String = (0u8..0x80)
            .map(char::from)
            .chain("é中😀\u{2028}".chars())
            .collect();
        for flags in [0, 8, 15, 40, 63] {
            let xs = [0.0, -0.0, 1.0, 1e300, 5e-324, f64::NAN, f64::INFINITY, 0.1 + 0.2];
            same_as_serde(&verdict(
                nasty.clone(),
                Some(nasty.clone()),
                nasty.clone(),
                xs,
                0,
                flags,
                6,
            ));
            same_as_serde(&verdict("\"".into(), None, "\\".into(), xs, u64::MAX, flags, 0));
        }
    }

    #[test]
    fn any_escape_finds_every_escaped_byte_at_every_position() {
        for len in 0..20 {
            for pos in 0..len {
                for b in 0u8..=255 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    assert_eq!(any_escape(&v), needs_escape(b), "byte {b:#x} at {pos} of {len}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn equals_serde_json(
            id in any::<String>(),
            topic in proptest::option::of(any::<String>()),
            text in any::<String>(),
            xs in proptest::array::uniform8(any::<f64>()),
            n in any::<u64>(),
            flags in any::<u8>(),
            proof_len in 0usize..12,
        ) {
            same_as_serde(&verdict(id, topic, text, xs, n, flags, proof_len));
        }
    }
}
