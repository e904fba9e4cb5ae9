//! Fuzz target `policy`: `Policy::from_toml` on any UTF-8 text, and, for every policy it
//! accepts, the scoring stages (convergence, value, ethics, SNR, the verdict's assembly, its
//! wire form and explanations) on a few fixed observations, to find policy values that pass
//! validation and still break a stage: a panic, or a verdict number that is not finite (it
//! would be written as `null`, which SPEC §1.2 has no place for). It does not check the
//! numbers' values; the golden vectors do.
#![no_main]

use std::sync::OnceLock;

use bizra_dataflows::convergence::converge;
use bizra_dataflows::decode::{decode, Limits};
use bizra_dataflows::ethics::evaluate;
use bizra_dataflows::explain::{explain, Style};
use bizra_dataflows::observation::Observation;
use bizra_dataflows::policy::Policy;
use bizra_dataflows::snr::{consistency, score};
use bizra_dataflows::testing;
use bizra_dataflows::value::{assess, Provenance};
use bizra_dataflows::verdict::{self, Verdict};
use bizra_dataflows::verification::{BatchRef, Tier};
use bizra_dataflows::wire::write_verdict;
use libfuzzer_sys::fuzz_target;

/// Observations that take different paths through the stages: no context (default harms by
/// clarity), a full context with features and a dignity keyword, empty lists, and a signed,
/// attested one.
const OBSERVATIONS: [&str; 4] = [
    r#"{"id":"a","data":"hello"}"#,
    r#"{"id":"b","data":"noise signal price request","urgency":"real_time","features":[0.1,-2.5,3e5,0],"context":{"stakeholders":["public","patients"],"affected":["users"],"domain":"health","potential_benefits":["Education","Time saved"],"potential_harms":["Potential to EXPLOIT data subjects","Privacy risk"],"reversibility":0.1,"intended_outcome":"help","constraints":{"gdpr":true},"history":[1],"cultural_context":"eu","hidden_agenda":true}}"#,
    r#"{"id":"c","data_b64":"AAAA","urgency":"batch","features":[1e-300],"context":{"stakeholders":[],"affected":[],"potential_benefits":[],"potential_harms":[],"reversibility":1,"constraints":{},"history":[]}}"#,
    r#"{"id":"d","data":"","source":"s","attestation":"att","urgency":"deferred","context":{"reversibility":0,"hidden_agenda":false}}"#,
];

fn observations() -> &'static [Observation] {
    static OBS: OnceLock<Vec<Observation>> = OnceLock::new();
    OBS.get_or_init(|| {
        OBSERVATIONS
            .iter()
            .map(|json| decode(json.as_bytes(), &Limits::default()).expect("a fixed observation decodes"))
            .collect()
    })
}

fuzz_target!(|text: &str| {
    let Ok(policy) = Policy::from_toml(text) else {
        return;
    };
    let version = policy.version();
    for obs in observations() {
        let c = converge(obs, &policy.convergence);
        for bit in 0..2 {
            let prov = Provenance {
                source: bit == 1,
                verified: bit == 1,
                attestation: bit == 1,
            };
            let v = assess(&c, prov, &policy.value);
            let e = evaluate(&obs.context, c.clarity, &policy.ethics);
            let k = consistency(c.clarity, v.value, e.overall);
            std::hint::black_box(score(&c, k, v.disagreement, e.ihsan_score(), &policy.snr));
        }
    }
    for (i, json) in OBSERVATIONS.iter().enumerate() {
        let checked = testing::checked(
            json.as_bytes(),
            None,
            0,
            &policy,
            testing::verification(Tier::ALL[i % 3], i % 2 == 0, 0.9, i == 3),
            BatchRef {
                shard: 0,
                seq: i as u64,
                leaf_index: 0,
            },
        );
        let v = verdict::assess(checked, &policy, &version).verdict;
        for style in Style::ALL {
            std::hint::black_box(explain(&v, style));
        }
        let mut out = Vec::new();
        write_verdict(&mut out, &v);
        if let Some(field) = non_finite(&v) {
            panic!(
                "policy passes validation but verdict {} has a non-finite {field}: {}",
                v.id,
                String::from_utf8_lossy(&out)
            );
        }
    }
});

/// The first wire float of `v` that is not finite.
fn non_finite(v: &Verdict) -> Option<&'static str> {
    let c = &v.convergence;
    let (val, e, s) = (&v.value, &v.ethics, &v.snr);
    let mut xs = vec![
        ("convergence.clarity", c.clarity),
        ("convergence.mutual_information", c.mutual_information),
        ("convergence.entropy", c.entropy),
        ("convergence.synergy", c.synergy),
        ("convergence.quantization_error", c.quantization_error),
        ("verification.confidence", v.verification.confidence),
        ("value.value", val.value),
        ("value.confidence", val.confidence),
        ("value.disagreement", val.disagreement),
        ("ethics.overall", e.overall),
        ("ethics.consensus", e.consensus),
        ("snr.score", s.score),
        ("snr.ihsan", s.ihsan),
        ("snr.confidence", s.confidence),
        ("consistency", v.consistency),
    ];
    for sig in &val.signals {
        xs.push(("value.signals[].value", sig.value));
        xs.push(("value.signals[].confidence", sig.confidence));
    }
    for f in &e.frameworks {
        xs.push(("ethics.frameworks[].score", f.score));
        xs.push(("ethics.frameworks[].confidence", f.confidence));
    }
    xs.into_iter().find(|(_, x)| !x.is_finite()).map(|(name, _)| name)
}
