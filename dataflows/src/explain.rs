//! Human-readable explanations of a verdict (config `output.explain`): three styles, each a
//! pure function of the verdict's own fields. Owns only the wording: it computes no score,
//! reads no policy or clock, and every number it prints is a field of the verdict. It is not
//! part of the Merkle leaf (see docs/DECISIONS.md).
//!
//! ```
//! use bizra_dataflows::explain::{explain, Style};
//! use bizra_dataflows::verdict::Verdict;
//!
//! fn fill(v: &mut Verdict, style: Option<Style>) {
//!     v.explanation = style.map(|s| explain(v, s));
//! }
//! ```

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::ethics::FrameworkScore;
use crate::value::OracleSignal;
use crate::verdict::{Decision, Verdict};
use crate::verification::DigestCheck;

/// Conditions quoted by the technical style; Concerning and Problematic verdicts start with
/// their fixed requirements, so three reach the first framework concern.
const SHOWN_CONDITIONS: usize = 3;

/// Who an explanation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// Engineers: one dense line with every stage's numbers to 3 decimals.
    Technical,
    /// Decision makers: two plain sentences, the decision with its main reason, then value.
    Executive,
    /// Auditors: provenance, check results and batch position; numbers printed exactly
    /// (Rust's shortest round-trip form), so the leaf-committed ones (SPEC §3.1) can be
    /// compared bit for bit.
    Audit,
}

impl Style {
    /// Every style.
    pub const ALL: [Style; 3] = [Style::Technical, Style::Executive, Style::Audit];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Technical => "technical",
            Style::Executive => "executive",
            Style::Audit => "audit",
        }
    }
}

/// Explains `v` in `style`: one allocation, sized up front for the text it will hold.
pub fn explain(v: &Verdict, style: Style) -> String {
    let mut s = String::with_capacity(capacity(v, style));
    // Writing into a String cannot fail.
    let _ = match style {
        Style::Technical => technical(v, &mut s),
        Style::Executive => executive(v, &mut s),
        Style::Audit => audit(v, &mut s),
    };
    s
}

/// Bytes reserved for `v` in `style`: the fixed text and numbers, plus the strings copied in.
fn capacity(v: &Verdict, style: Style) -> usize {
    let reason = v.verification.reason.as_ref().map_or(0, String::len);
    match style {
        Style::Technical => {
            // Quoting at most doubles a condition (its user text is already escaped).
            let quoted: usize = v
                .ethics
                .conditions
                .iter()
                .take(SHOWN_CONDITIONS)
                .map(|c| 2 * c.len() + 4)
                .sum();
            600 + reason + quoted
        }
        Style::Executive => 192 + reason,
        Style::Audit => {
            let topic = v.input.as_ref().map_or(0, |i| i.topic.len());
            // Quoting escapes a byte into at most 6 (`\u{7f}`).
            576 + reason + v.payload_digest.len() + v.policy_version.len() + 6 * (v.id.len() + topic)
        }
    }
}

/// `x` to `N` decimals, as `{:.N}` prints it but several times faster (this runs per
/// record): it rounds x·10^N once in binary (ties to even, as `{:.N}` does) instead of
/// expanding x exactly, so only a value within an ulp of a tie can round the other way.
/// Non-finite values and values too large for the fast path use `{:.N}`.
struct Fixed<const N: u32>(f64);

fn d3(x: f64) -> Fixed<3> {
    Fixed(x)
}

fn d2(x: f64) -> Fixed<2> {
    Fixed(x)
}

impl<const N: u32> fmt::Display for Fixed<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scaled = (self.0 * 10f64.powi(N as i32)).round_ties_even();
        if !scaled.is_finite() || scaled.abs() >= 1e15 {
            return write!(f, "{:.*}", N as usize, self.0);
        }
        // Written from the right: N decimals, the point, the integer part, the sign.
        let unit = 10u64.pow(N);
        let (mut int, mut frac) = (scaled.abs() as u64 / unit, scaled.abs() as u64 % unit);
        let mut buf = [0u8; 24];
        let mut at = buf.len();
        for _ in 0..N {
            at -= 1;
            buf[at] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        if N > 0 {
            at -= 1;
            buf[at] = b'.';
        }
        loop {
            at -= 1;
            buf[at] = b'0' + (int % 10) as u8;
            int /= 10;
            if int == 0 {
                break;
            }
        }
        if scaled.is_sign_negative() {
            at -= 1;
            buf[at] = b'-';
        }
        f.write_str(std::str::from_utf8(&buf[at..]).expect("ASCII digits"))
    }
}

/// Appends `text` in double quotes with `"` and `\` escaped. Conditions need no more: the
/// user text in them (harm names) is already escaped by the ethics stage.
fn quote(s: &mut String, text: &str) {
    s.push('"');
    let mut from = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b'"' || b == b'\\' {
            s.push_str(&text[from..i]);
            s.push('\\');
            from = i;
        }
    }
    s.push_str(&text[from..]);
    s.push('"');
}

/// The wire spelling of a digest check (`verification.checks.digest`).
fn digest_str(d: DigestCheck) -> &'static str {
    match d {
        DigestCheck::Ok => "ok",
        DigestCheck::Mismatch => "mismatch",
        DigestCheck::Absent => "absent",
    }
}

/// The oracles with the highest and the lowest value (the first one on ties).
fn oracle_extremes(signals: &[OracleSignal; 5]) -> (&OracleSignal, &OracleSignal) {
    let (mut hi, mut lo) = (&signals[0], &signals[0]);
    for s in &signals[1..] {
        if s.value > hi.value {
            hi = s;
        }
        if s.value < lo.value {
            lo = s;
        }
    }
    (hi, lo)
}

/// The framework with the lowest score (the first one on ties).
fn lowest_framework(frameworks: &[FrameworkScore; 5]) -> &FrameworkScore {
    frameworks
        .iter()
        .fold(&frameworks[0], |lo, f| if f.score < lo.score { f } else { lo })
}

fn technical(v: &Verdict, s: &mut String) -> fmt::Result {
    let (ver, val, eth, c) = (&v.verification, &v.value, &v.ethics, &v.convergence);
    write!(s, "decision={} permitted={}", v.decision.as_str(), v.permitted)?;
    write!(
        s,
        " | verification tier={} valid={} confidence={} digest={} signature={} replay={} reason={}",
        ver.tier.as_str(),
        ver.valid,
        d3(ver.confidence),
        digest_str(ver.checks.digest),
        ver.checks.signature.as_str(),
        ver.checks.replay,
        ver.reason.as_deref().unwrap_or("none"),
    )?;
    let (hi, lo) = oracle_extremes(&val.signals);
    write!(
        s,
        " | value={} confidence={} disagreement={} strongest={}({}@{}) weakest={}({}@{})",
        d3(val.value),
        d3(val.confidence),
        d3(val.disagreement),
        hi.oracle.as_str(),
        d3(hi.value),
        d3(hi.confidence),
        lo.oracle.as_str(),
        d3(lo.value),
        d3(lo.confidence),
    )?;
    let low = lowest_framework(&eth.frameworks);
    write!(
        s,
        " | ethics overall={} severity={} consensus={} permitted={} lowest={}({}@{}) conditions={}",
        d3(eth.overall),
        eth.severity.as_str(),
        d3(eth.consensus),
        eth.permitted,
        low.framework.as_str(),
        d3(low.score),
        d3(low.confidence),
        eth.conditions.len(),
    )?;
    for (i, cond) in eth.conditions.iter().take(SHOWN_CONDITIONS).enumerate() {
        s.push_str(if i == 0 { " [" } else { "; " });
        quote(s, cond);
    }
    if !eth.conditions.is_empty() {
        s.push(']');
    }
    write!(
        s,
        " | snr={} level={} ihsan={} confidence={} | clarity={} quality={} synergy={} entropy={} consistency={}",
        d3(v.snr.score),
        v.snr.level.as_str(),
        d3(v.snr.ihsan),
        d3(v.snr.confidence),
        d3(c.clarity),
        c.quality.as_str(),
        d3(c.synergy),
        d3(c.entropy),
        d3(v.consistency),
    )
}

fn executive(v: &Verdict, s: &mut String) -> fmt::Result {
    let (ver, eth) = (&v.verification, &v.ethics);
    let low = lowest_framework(&eth.frameworks);
    let severity = eth.severity.as_str();
    match v.decision {
        Decision::Permit => write!(
            s,
            "Permitted: ethics rated the action {severity} (overall {}) and verification passed on the {} tier.",
            d2(eth.overall),
            ver.tier.as_str(),
        )?,
        Decision::Review => write!(
            s,
            "Needs review: ethics rated the action {severity} (overall {}), with {} lowest at {}.",
            d2(eth.overall),
            low.framework.as_str(),
            d2(low.score),
        )?,
        Decision::Deny if !ver.valid => write!(
            s,
            "Denied: verification failed on the {} tier ({}).",
            ver.tier.as_str(),
            ver.reason.as_deref().unwrap_or("no reason recorded"),
        )?,
        Decision::Deny => write!(
            s,
            "Denied: ethics rated the action {severity} (overall {}), with {} lowest at {}.",
            d2(eth.overall),
            low.framework.as_str(),
            d2(low.score),
        )?,
    }
    write!(
        s,
        " Estimated value is {} with confidence {}.",
        d2(v.value.value),
        d2(v.value.confidence)
    )
}

fn audit(v: &Verdict, s: &mut String) -> fmt::Result {
    let (ver, eth) = (&v.verification, &v.ethics);
    write!(s, "verdict id={:?}", v.id)?;
    match &v.input {
        Some(i) => write!(
            s,
            "; input topic={:?} partition={} offset={}",
            i.topic, i.partition, i.offset
        )?,
        None => s.push_str("; input none"),
    }
    write!(
        s,
        "; policy_version={}; payload_digest={}",
        v.policy_version, v.payload_digest
    )?;
    write!(
        s,
        "; batch shard={} seq={} leaf_index={}",
        v.batch.shard, v.batch.seq, v.batch.leaf_index
    )?;
    write!(
        s,
        "; verification tier={} valid={} confidence={:?} checks digest={} signature={} replay={} reason={}",
        ver.tier.as_str(),
        ver.valid,
        ver.confidence,
        digest_str(ver.checks.digest),
        ver.checks.signature.as_str(),
        ver.checks.replay,
        ver.reason.as_deref().unwrap_or("none"),
    )?;
    write!(
        s,
        "; ethics severity={} overall={:?} consensus={:?} permitted={} conditions={}",
        eth.severity.as_str(),
        eth.overall,
        eth.consensus,
        eth.permitted,
        eth.conditions.len(),
    )?;
    write!(
        s,
        "; value={:?} clarity={:?}; decision={} permitted={} (ethics.permitted={} and verification.valid={})",
        v.value.value,
        v.convergence.clarity,
        v.decision.as_str(),
        v.permitted,
        eth.permitted,
        ver.valid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::InputRef;
    use crate::pipeline::assess_record;
    use crate::policy::Policy;
    use crate::record::Assessed;
    use crate::testing::{checked, verification};
    use crate::verification::{BatchRef, Tier};

    /// `json` decoded, scored and assessed into a real verdict; `invalid` makes it a replay.
    fn assessed(json: &str, offset: i64, invalid: bool, explain: Option<Style>) -> Assessed {
        let input = InputRef {
            topic: "bizra.observations".into(),
            partition: 3,
            offset,
        };
        let confidence = if invalid { 0.0 } else { 0.85 };
        let outcome = verification(Tier::Incremental, !invalid, confidence, invalid);
        let batch = BatchRef {
            shard: 1,
            seq: 7,
            leaf_index: offset as u32,
        };
        let policy = Policy::reference();
        let checked = checked(json.as_bytes(), Some(input), 0, &policy, outcome, batch);
        assess_record(checked, &policy, &policy.version(), explain)
    }

    fn verdict_with(json: &str, offset: i64, invalid: bool, explain: Option<Style>) -> Verdict {
        *assessed(json, offset, invalid, explain).verdict
    }

    fn verdict(json: &str, offset: i64, invalid: bool) -> Verdict {
        verdict_with(json, offset, invalid, None)
    }

    /// One verdict per decision, and one denied by verification.
    fn verdicts() -> Vec<Verdict> {
        let harms = |n: usize| format!("[{}]", vec!["\"Data loss\""; n].join(","));
        let vs = vec![
            verdict(r#"{"id":"permit-1","data":"hello"}"#, 11, false),
            verdict(
                &format!(
                    r#"{{"id":"review-1","data":"hello","context":{{"potential_harms":{},"reversibility":0.2}}}}"#,
                    harms(4)
                ),
                12,
                false,
            ),
            verdict(
                &format!(
                    r#"{{"id":"deny-ethics","data":"x","context":{{"potential_harms":{},"potential_benefits":[],"reversibility":0.0}}}}"#,
                    harms(200)
                ),
                13,
                false,
            ),
            verdict(r#"{"id":"deny \"replay\"","data":"hello"}"#, 14, true),
        ];
        let decisions: Vec<_> = vs.iter().map(|v| v.decision).collect();
        use Decision::*;
        assert_eq!(
            decisions,
            [Permit, Review, Deny, Deny],
            "the fixtures cover every decision"
        );
        assert!(vs[2].verification.valid && !vs[2].ethics.permitted);
        vs
    }

    /// The number right after `key` in `text` (`key` must occur).
    fn number_after(text: &str, key: &str) -> f64 {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("{key:?} not in {text:?}"))
            + key.len();
        let digits: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e'))
            .collect();
        let digits = digits.trim_end_matches('.');
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number after {key:?} in {text:?}"))
    }

    fn close(text: &str, key: &str, expected: f64, decimals: i32) {
        let got = number_after(text, key);
        let tolerance = 0.5 * 10f64.powi(-decimals) + 1e-12;
        assert!(
            (got - expected).abs() <= tolerance,
            "{key}: printed {got}, verdict has {expected}\n{text}"
        );
    }

    /// Every number in `text` outside quoted strings, with its count of decimals.
    fn numbers(text: &str) -> Vec<(f64, i32)> {
        let mut unquoted = String::new();
        let mut quoted = false;
        let mut escaped = false;
        for c in text.chars() {
            match (quoted, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => quoted = !quoted,
                (false, _, c) => unquoted.push(c),
                _ => {}
            }
        }
        unquoted
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'))
            .map(|t| t.trim_end_matches('.'))
            .filter_map(|t| {
                let decimals = t.split_once('.').map_or(0, |(_, d)| d.len() as i32);
                t.parse::<f64>().ok().map(|x| (x, decimals))
            })
            .collect()
    }

    /// Every number the verdict holds, the only numbers an explanation may print.
    fn verdict_numbers(v: &Verdict) -> Vec<f64> {
        let c = &v.convergence;
        let mut n = vec![
            c.clarity,
            c.mutual_information,
            c.entropy,
            c.synergy,
            c.quantization_error,
            v.verification.confidence,
            v.value.value,
            v.value.confidence,
            v.value.disagreement,
            v.ethics.overall,
            v.ethics.consensus,
            v.ethics.conditions.len() as f64,
            v.snr.score,
            v.snr.ihsan,
            v.snr.confidence,
            v.consistency,
            v.batch.shard as f64,
            v.batch.seq as f64,
            v.batch.leaf_index as f64,
        ];
        n.extend(v.value.signals.iter().flat_map(|s| [s.value, s.confidence]));
        n.extend(v.ethics.frameworks.iter().flat_map(|f| [f.score, f.confidence]));
        if let Some(i) = &v.input {
            n.extend([i.partition as f64, i.offset as f64]);
        }
        n
    }

    #[test]
    fn every_number_printed_is_one_of_the_verdicts_own() {
        for v in verdicts() {
            let allowed = verdict_numbers(&v);
            for style in Style::ALL {
                let text = explain(&v, style);
                let printed = numbers(&text);
                assert!(printed.len() >= 2, "{style:?} prints numbers: {text}");
                for (x, decimals) in printed {
                    let tolerance = 0.5 * 10f64.powi(-decimals) + 1e-12;
                    assert!(
                        allowed.iter().any(|a| (a - x).abs() <= tolerance),
                        "{style:?} printed {x}, which is no field of the verdict:\n{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn technical_names_the_decision_and_prints_each_stage_to_3_decimals() {
        for v in verdicts() {
            let t = explain(&v, Style::Technical);
            assert!(
                t.starts_with(&format!(
                    "decision={} permitted={}",
                    v.decision.as_str(),
                    v.permitted
                )),
                "{t}"
            );
            close(&t, "confidence=", v.verification.confidence, 3);
            close(&t, " | value=", v.value.value, 3);
            close(&t, "disagreement=", v.value.disagreement, 3);
            close(&t, "ethics overall=", v.ethics.overall, 3);
            close(&t, "consensus=", v.ethics.consensus, 3);
            close(&t, "snr=", v.snr.score, 3);
            close(&t, "ihsan=", v.snr.ihsan, 3);
            close(&t, "clarity=", v.convergence.clarity, 3);
            close(&t, "consistency=", v.consistency, 3);
            let (hi, lo) = oracle_extremes(&v.value.signals);
            assert!(v
                .value
                .signals
                .iter()
                .all(|s| hi.value >= s.value && lo.value <= s.value));
            close(&t, &format!("strongest={}(", hi.oracle.as_str()), hi.value, 3);
            close(&t, &format!("weakest={}(", lo.oracle.as_str()), lo.value, 3);
            let low = lowest_framework(&v.ethics.frameworks);
            assert!(v.ethics.frameworks.iter().all(|f| low.score <= f.score));
            close(&t, &format!("lowest={}(", low.framework.as_str()), low.score, 3);
            assert!(
                t.contains(&format!("severity={}", v.ethics.severity.as_str())),
                "{t}"
            );
            assert!(t.contains(&format!("level={}", v.snr.level.as_str())), "{t}");
            if let Some(first) = v.ethics.conditions.first() {
                assert!(t.contains(&format!("[{first:?}")), "{t}");
            }
        }
    }

    #[test]
    fn executive_is_two_sentences_with_the_decision_and_its_main_reason() {
        for v in verdicts() {
            let t = explain(&v, Style::Executive);
            let opening = match v.decision {
                Decision::Permit => "Permitted:",
                Decision::Review => "Needs review:",
                Decision::Deny => "Denied:",
            };
            assert!(t.starts_with(opening), "{t}");
            assert_eq!(t.matches(". ").count() + 1, 2, "two sentences: {t}");
            if v.verification.valid {
                close(&t, "(overall ", v.ethics.overall, 2);
                assert!(t.contains(v.ethics.severity.as_str()), "{t}");
            } else {
                assert!(t.contains("verification failed") && t.contains("(replay)"), "{t}");
            }
            close(&t, "value is ", v.value.value, 2);
            close(&t, "with confidence ", v.value.confidence, 2);
        }
    }

    #[test]
    fn audit_gives_provenance_and_the_leaf_numbers_exactly() {
        for v in verdicts() {
            let t = explain(&v, Style::Audit);
            let i = v.input.as_ref().unwrap();
            for fact in [
                format!("verdict id={:?}", v.id),
                format!(
                    "input topic={:?} partition={} offset={}",
                    i.topic, i.partition, i.offset
                ),
                format!("policy_version={}", v.policy_version),
                format!("payload_digest={}", v.payload_digest),
                format!(
                    "batch shard={} seq={} leaf_index={}",
                    v.batch.shard, v.batch.seq, v.batch.leaf_index
                ),
                format!(
                    "tier={} valid={}",
                    v.verification.tier.as_str(),
                    v.verification.valid
                ),
                format!(
                    "checks digest={} signature={} replay={}",
                    digest_str(v.verification.checks.digest),
                    v.verification.checks.signature.as_str(),
                    v.verification.checks.replay
                ),
                format!("decision={} permitted={}", v.decision.as_str(), v.permitted),
            ] {
                assert!(t.contains(&fact), "{fact:?} missing from {t}");
            }
            assert_eq!(number_after(&t, " overall="), v.ethics.overall, "{t}");
            assert_eq!(number_after(&t, "; value="), v.value.value, "{t}");
            assert_eq!(number_after(&t, " clarity="), v.convergence.clarity, "{t}");
            assert_eq!(number_after(&t, " confidence="), v.verification.confidence, "{t}");
        }
    }

    #[test]
    fn different_verdicts_give_different_explanations() {
        let vs = verdicts();
        for style in Style::ALL {
            let texts: std::collections::BTreeSet<String> = vs.iter().map(|v| explain(v, style)).collect();
            assert_eq!(texts.len(), vs.len(), "{style:?}");
        }
        // One number apart is enough.
        let a = &vs[0];
        let mut b = a.clone();
        b.value.value += 0.25;
        for style in Style::ALL {
            assert_ne!(explain(a, style), explain(&b, style), "{style:?}");
        }
    }

    #[test]
    fn explanations_are_deterministic_and_read_only_wire_fields() {
        for v in verdicts() {
            let wire: Verdict = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            let mut other = wire.clone();
            other.event_ms = 42;
            other.domain = Some("finance".into());
            other.features = Some(vec![1.0]);
            for style in Style::ALL {
                let text = explain(&v, style);
                assert_eq!(text, explain(&v, style));
                assert_eq!(text, explain(&wire, style), "{style:?} survives the wire");
                assert_eq!(text, explain(&other, style), "{style:?} ignores off-wire fields");
            }
        }
    }

    #[test]
    fn explanations_fit_the_capacity_they_reserve() {
        let long_id = format!(r#"{{"id":"{}","data":"hello"}}"#, r#"\u0001é\\\""#.repeat(50));
        let mut vs = verdicts();
        vs.push(verdict(&long_id, 99, false));
        for v in vs {
            for style in Style::ALL {
                let text = explain(&v, style);
                assert_eq!(
                    text.capacity(),
                    capacity(&v, style),
                    "{style:?} grew: {} bytes",
                    text.len()
                );
            }
        }
    }

    #[test]
    fn explanation_is_on_the_wire_only_when_enabled_and_never_in_the_leaf() {
        let json = r#"{"id":"wire","data":"hello"}"#;
        let off = assessed(json, 1, false, None);
        let leaf = off.leaf;
        let off = serde_json::to_value(&*off.verdict).unwrap();
        assert!(off.get("explanation").is_none(), "{off}");
        for style in Style::ALL {
            let a = assessed(json, 1, false, Some(style));
            assert_eq!(a.leaf, leaf, "{style:?} leaves the Merkle leaf as it is");
            let v = *a.verdict;
            let on = serde_json::to_value(&v).unwrap();
            let mut plain = v.clone();
            plain.explanation = None;
            assert_eq!(on["explanation"], explain(&plain, style).as_str(), "{style:?}");
            let mut without = on.clone();
            without.as_object_mut().unwrap().remove("explanation");
            assert_eq!(without, off, "{style:?} adds only `explanation`");
        }
    }

    #[test]
    fn fixed_prints_what_std_fixed_precision_prints() {
        // Every multiple of 1/4096 in [-3, 3] (exact ties at 3 and 2 decimals among them), a
        // pseudo-random sweep, and the edges.
        let dyadic = (-12_288..=12_288).map(|k| f64::from(k) / 4096.0);
        let mut z: u64 = 0x9E37_79B9_7F4A_7C15;
        let sweep = std::iter::repeat_with(move || {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2000.0 - 1000.0
        })
        .take(100_000);
        let edges = [
            0.0,
            -0.0,
            -1e-9,
            0.99951,
            999.9996,
            1e15,
            -1e300,
            f64::NAN,
            f64::INFINITY,
        ];
        for x in dyadic.chain(sweep).chain(edges) {
            assert_eq!(d3(x).to_string(), format!("{x:.3}"), "{x:?}");
            assert_eq!(d2(x).to_string(), format!("{x:.2}"), "{x:?}");
        }
    }

    #[test]
    fn quote_escapes_quotes_and_backslashes() {
        let text = r#"harm: ["a\"b", "c"]"#;
        let mut s = String::new();
        quote(&mut s, text);
        assert_eq!(s, r#""harm: [\"a\\\"b\", \"c\"]""#);
        assert_eq!(s, format!("{text:?}"), "as Debug quotes printable text");
    }

    #[test]
    fn styles_and_checks_use_their_wire_spellings() {
        for style in Style::ALL {
            let json = format!("\"{}\"", style.as_str());
            assert_eq!(serde_json::from_str::<Style>(&json).unwrap(), style);
        }
        assert!(serde_json::from_str::<Style>("\"Technical\"").is_err());
        for d in [DigestCheck::Ok, DigestCheck::Mismatch, DigestCheck::Absent] {
            assert_eq!(serde_json::to_value(d).unwrap(), digest_str(d));
        }
    }
}
