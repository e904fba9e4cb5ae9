//! Golden stage vectors (SPEC §2.1, §2.3–§2.5): every line of `tests/data/stages.jsonl`, decoded
//! as a wire observation, must give the expected convergence, value, ethics, SNR and consistency
//! to 1e-9 with exact enum spellings. It does not cover verification, Merkle proofs or the
//! dataflow (other modules do); `signature_ok` is injected as the value stage's `verified`.

use bizra_dataflows::convergence::converge;
use bizra_dataflows::decode::{decode, Limits};
use bizra_dataflows::ethics::{evaluate, Severity};
use bizra_dataflows::policy::Policy;
use bizra_dataflows::snr::{consistency, score};
use bizra_dataflows::value::{assess, Provenance};
use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

const STAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/stages.jsonl");
const LINES: usize = 300;
const TOLERANCE: f64 = 1e-9;

/// One golden line; the observation is kept as its original text so the real decoder reads it.
#[derive(Deserialize)]
struct Case<'a> {
    #[serde(borrow)]
    observation: &'a RawValue,
    signature_ok: bool,
    expected: Value,
}

/// Collects every mismatch of one line as `line N: field: …`.
struct Checker<'a> {
    line: usize,
    failures: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn fail(&mut self, field: &str, what: String) {
        self.failures.push(format!("line {}: {field}: {what}", self.line));
    }

    fn num(&mut self, field: &str, actual: f64, expected: &Value) {
        match expected.as_f64() {
            Some(e) if (actual - e).abs() <= TOLERANCE => {}
            Some(e) => self.fail(field, format!("got {actual:?}, expected {e:?}")),
            None => self.fail(field, format!("expected value is not a number: {expected}")),
        }
    }

    /// Compares an enum's wire spelling (its serde form) with the expected string.
    fn spelling(&mut self, field: &str, actual: impl Serialize, expected: &Value) {
        let actual = serde_json::to_value(actual).unwrap_or(Value::Null);
        if &actual != expected {
            self.fail(field, format!("got {actual}, expected {expected}"));
        }
    }

    fn same<T: PartialEq + std::fmt::Debug>(&mut self, field: &str, actual: T, expected: T) {
        if actual != expected {
            self.fail(field, format!("got {actual:?}, expected {expected:?}"));
        }
    }
}

#[test]
fn every_golden_stage_vector_matches_to_1e9() {
    let text = std::fs::read_to_string(STAGES).expect("tests/data/stages.jsonl is readable");
    let policy = Policy::reference();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut severities_seen = [false; 5];
    let mut features_lines = 0;

    for (i, line) in text.lines().enumerate() {
        let mut check = Checker {
            line: i + 1,
            failures: &mut failures,
        };
        let case: Case = match serde_json::from_str(line) {
            Ok(case) => case,
            Err(e) => {
                check.fail("line", format!("not a golden case: {e}"));
                continue;
            }
        };
        let obs = match decode(case.observation.get().as_bytes(), &Limits::default()) {
            Ok(obs) => obs,
            Err(e) => {
                check.fail("observation", format!("does not decode: {e:?}"));
                continue;
            }
        };
        features_lines += usize::from(obs.features.is_some());
        let e = &case.expected;

        let c = converge(&obs, &policy.convergence);
        let ec = &e["convergence"];
        check.num("convergence.clarity", c.clarity, &ec["clarity"]);
        check.num(
            "convergence.mutual_information",
            c.mutual_information,
            &ec["mutual_information"],
        );
        check.num("convergence.entropy", c.entropy, &ec["entropy"]);
        check.num("convergence.synergy", c.synergy, &ec["synergy"]);
        check.num(
            "convergence.quantization_error",
            c.quantization_error,
            &ec["quantization_error"],
        );
        check.spelling("convergence.quality", c.quality, &ec["quality"]);

        let provenance = Provenance {
            source: obs.source.is_some(),
            verified: case.signature_ok,
            attestation: obs.attestation.is_some(),
        };
        let v = assess(&c, provenance, &policy.value);
        let ev = &e["value"];
        check.num("value.value", v.value, &ev["value"]);
        check.num("value.confidence", v.confidence, &ev["confidence"]);
        check.num("value.disagreement", v.disagreement, &ev["disagreement"]);
        let signals = ev["signals"].as_array().map_or(&[][..], Vec::as_slice);
        check.same("value.signals.len", v.signals.len(), signals.len());
        for (k, (s, es)) in v.signals.iter().zip(signals).enumerate() {
            check.spelling(&format!("value.signals[{k}].oracle"), s.oracle, &es["oracle"]);
            check.num(&format!("value.signals[{k}].value"), s.value, &es["value"]);
            check.num(
                &format!("value.signals[{k}].confidence"),
                s.confidence,
                &es["confidence"],
            );
        }

        let eth = evaluate(&obs.context, c.clarity, &policy.ethics);
        let ee = &e["ethics"];
        check.num("ethics.overall", eth.overall, &ee["overall"]);
        check.num("ethics.consensus", eth.consensus, &ee["consensus"]);
        check.spelling("ethics.severity", eth.severity, &ee["severity"]);
        check.same("ethics.permitted", Some(eth.permitted), ee["permitted"].as_bool());
        check.same(
            "ethics.n_conditions",
            Some(eth.conditions.len() as u64),
            ee["n_conditions"].as_u64(),
        );
        let frameworks = ee["frameworks"].as_array().map_or(&[][..], Vec::as_slice);
        check.same("ethics.frameworks.len", eth.frameworks.len(), frameworks.len());
        for (k, (f, ef)) in eth.frameworks.iter().zip(frameworks).enumerate() {
            check.spelling(
                &format!("ethics.frameworks[{k}].framework"),
                f.framework,
                &ef["framework"],
            );
            check.num(&format!("ethics.frameworks[{k}].score"), f.score, &ef["score"]);
            check.num(
                &format!("ethics.frameworks[{k}].confidence"),
                f.confidence,
                &ef["confidence"],
            );
        }
        severities_seen[usize::from(eth.severity.code())] = true;

        let k = consistency(c.clarity, v.value, eth.overall);
        check.num("consistency", k, &e["consistency"]);
        let s = score(&c, k, v.disagreement, eth.ihsan_score(), &policy.snr);
        let es = &e["snr"];
        check.num("snr.score", s.score, &es["score"]);
        check.spelling("snr.level", s.level, &es["level"]);
        check.num("snr.ihsan", s.ihsan, &es["ihsan"]);
        check.num("snr.confidence", s.confidence, &es["confidence"]);

        checked += 1;
    }

    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, LINES, "every golden line is checked");
    // The vectors exercise both convergence paths and the whole severity ladder.
    assert!(features_lines > 0, "no line used the features path");
    for (seen, severity) in severities_seen.iter().zip(Severity::ALL) {
        assert!(seen, "no line reached {}", severity.as_str());
    }
}
