//! Fuzz target `verdict_writer`: the hand-written verdict JSON (`wire::write_verdict`) against
//! `serde_json::to_vec` on verdicts built from the input, with every string drawn from
//! unicode biased to what needs escaping and every float from the specials (NaN, ±inf, −0.0,
//! subnormals) or any bit pattern. The bytes must be equal, and a verdict whose bytes parse
//! back must write the same bytes again (bytes, not structs: NaN ≠ NaN, and non-finite floats
//! are written as `null`). It does not check that verdicts are meaningful; the stages make
//! those.
#![no_main]

use std::sync::OnceLock;

use bizra_dataflows::convergence::Quality;
use bizra_dataflows::ethics::{Framework, Severity};
use bizra_dataflows::observation::InputRef;
use bizra_dataflows::policy::Policy;
use bizra_dataflows::snr::SnrLevel;
use bizra_dataflows::testing;
use bizra_dataflows::value::Oracle;
use bizra_dataflows::verdict::{self, Decision, Proof, Verdict};
use bizra_dataflows::verification::{BatchRef, DigestCheck, SignatureCheck, Tier};
use bizra_dataflows::wire::write_verdict;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// A verdict made by the real stages, whose every wire field the builder then overwrites: the
/// fields that are not on the wire keep their values, so new ones need no change here.
fn template() -> &'static Verdict {
    static TEMPLATE: OnceLock<Verdict> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let policy = Policy::reference();
        let checked = testing::checked(
            br#"{"id":"t","data":"x"}"#,
            None,
            0,
            &policy,
            testing::verification(Tier::Full, true, 1.0, false),
            BatchRef {
                shard: 0,
                seq: 0,
                leaf_index: 0,
            },
        );
        *verdict::assess(checked, &policy, "template").verdict
    })
}

/// Characters that exercise the escaper: controls, `"`, `\`, DEL, multi-byte and separators.
const SPECIAL_CHARS: [char; 14] = [
    '\0', '\u{8}', '\t', '\n', '\u{c}', '\r', '\u{1f}', '"', '\\', '\u{7f}', 'é', '中', '😀', '\u{2028}',
];

fn text(u: &mut Unstructured) -> Result<String> {
    // Mostly short, sometimes past the escaper's 8-byte words many times over.
    let len = if u.ratio(1, 8)? {
        u.int_in_range(0..=300)?
    } else {
        u.int_in_range(0..=24)?
    };
    let mut s = String::new();
    for _ in 0..len {
        if u.is_empty() {
            break;
        }
        let c = match u.int_in_range(0..=3u8)? {
            0 => *u.choose(&SPECIAL_CHARS)?,
            1 => char::from(u.int_in_range(0..=0x7fu8)?),
            2 => u.arbitrary::<char>()?,
            _ => char::from(u.int_in_range(b'a'..=b'z')?),
        };
        s.push(c);
    }
    Ok(s)
}

/// Specials first (as `Unstructured` reads an exhausted input as zeros), then any bits.
fn float(u: &mut Unstructured) -> Result<f64> {
    const SPECIALS: [f64; 16] = [
        0.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        5e-324,
        -2.225073858507201e-308,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        0.1 + 0.2,
        1e16,
        1e-7,
        0.5,
        -1.0,
    ];
    Ok(match u.int_in_range(0..=2u8)? {
        0 => *u.choose(&SPECIALS)?,
        1 => f64::from_bits(u.arbitrary()?),
        // Subnormals and zeros (exponent bits zero) of either sign.
        _ => f64::from_bits(u.arbitrary::<u64>()? & 0x800f_ffff_ffff_ffff),
    })
}

fn texts(u: &mut Unstructured, max: usize) -> Result<Vec<String>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| text(u)).collect()
}

fn build(u: &mut Unstructured) -> Result<Verdict> {
    let mut v = template().clone();
    v.id = text(u)?.into();
    v.input = if u.arbitrary()? {
        Some(InputRef {
            topic: text(u)?.into(),
            partition: u.arbitrary()?,
            offset: u.arbitrary()?,
        })
    } else {
        None
    };
    v.policy_version = text(u)?.into();
    v.decision = *u.choose(&Decision::ALL)?;
    v.permitted = u.arbitrary()?;

    let c = &mut v.convergence;
    c.clarity = float(u)?;
    c.mutual_information = float(u)?;
    c.entropy = float(u)?;
    c.synergy = float(u)?;
    c.quantization_error = float(u)?;
    c.quality = *u.choose(&Quality::ALL)?;

    let ver = &mut v.verification;
    ver.tier = *u.choose(&Tier::ALL)?;
    ver.valid = u.arbitrary()?;
    ver.confidence = float(u)?;
    ver.checks.digest = *u.choose(&[DigestCheck::Ok, DigestCheck::Mismatch, DigestCheck::Absent])?;
    ver.checks.signature = *u.choose(&SignatureCheck::ALL)?;
    ver.checks.replay = u.arbitrary()?;
    ver.reason = if u.arbitrary()? { Some(text(u)?) } else { None };

    let val = &mut v.value;
    val.value = float(u)?;
    val.confidence = float(u)?;
    val.disagreement = float(u)?;
    for s in &mut val.signals {
        s.oracle = *u.choose(&Oracle::ALL)?;
        s.value = float(u)?;
        s.confidence = float(u)?;
    }

    let e = &mut v.ethics;
    e.overall = float(u)?;
    e.severity = *u.choose(&Severity::ALL)?;
    e.consensus = float(u)?;
    e.permitted = u.arbitrary()?;
    e.conditions = texts(u, 8)?;
    for f in &mut e.frameworks {
        f.framework = *u.choose(&Framework::ALL)?;
        f.score = float(u)?;
        f.confidence = float(u)?;
    }

    let s = &mut v.snr;
    s.score = float(u)?;
    s.level = *u.choose(&SnrLevel::ALL)?;
    s.ihsan = float(u)?;
    s.confidence = float(u)?;
    v.consistency = float(u)?;

    v.batch = BatchRef {
        shard: u.arbitrary()?,
        seq: u.arbitrary()?,
        leaf_index: u.arbitrary()?,
    };
    v.proof = if u.arbitrary()? {
        Some(Proof {
            tree_size: u.arbitrary()?,
            root: text(u)?,
            path: texts(u, 12)?,
        })
    } else {
        None
    };
    v.latency_ms = float(u)?;
    v.payload_digest = text(u)?;
    v.explanation = if u.arbitrary()? { Some(text(u)?) } else { None };
    Ok(v)
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = build(&mut Unstructured::new(data)) else {
        return;
    };
    let mut ours = Vec::new();
    write_verdict(&mut ours, &v);
    let theirs = serde_json::to_vec(&v).expect("a verdict serializes");
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs),
        "write_verdict and serde_json differ"
    );
    // `null` (a non-finite float) does not deserialize as f64, so only verdicts with finite
    // numbers are expected to read back.
    match serde_json::from_slice::<Verdict>(&ours) {
        Ok(back) => {
            let mut again = Vec::new();
            write_verdict(&mut again, &back);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&again),
                "the parsed-back verdict writes different bytes"
            );
        }
        Err(e) => assert!(
            !all_finite(&v),
            "a verdict of finite numbers does not parse back: {e}"
        ),
    }
});

/// Whether every float of the verdict's wire fields is finite.
fn all_finite(v: &Verdict) -> bool {
    let c = &v.convergence;
    let (val, e, s) = (&v.value, &v.ethics, &v.snr);
    let mut xs = vec![
        c.clarity,
        c.mutual_information,
        c.entropy,
        c.synergy,
        c.quantization_error,
        v.verification.confidence,
        val.value,
        val.confidence,
        val.disagreement,
        e.overall,
        e.consensus,
        s.score,
        s.ihsan,
        s.confidence,
        v.consistency,
        v.latency_ms,
    ];
    xs.extend(val.signals.iter().flat_map(|s| [s.value, s.confidence]));
    xs.extend(e.frameworks.iter().flat_map(|f| [f.score, f.confidence]));
    xs.iter().all(|x| x.is_finite())
}
