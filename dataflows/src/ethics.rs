//! Consequential ethics (SPEC §2.4): five frameworks score the action an observation implies,
//! and their confidence-weighted mean sets the severity and whether the action is permitted,
//! with conditions. Pure; it allocates only the verdict's `conditions`. It keeps no evaluation
//! history and writes no reasoning trace (the reference's narrative text is not part of a
//! verdict).
//!
//! Inputs come from the observation's `context`: an absent key takes its default, a present
//! key is used as given, even when empty. The action's metadata is always non-empty (it is
//! the convergence result), so the "transparency" and "thoroughness" terms always hold.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::bounds::{clip, ECHO_BYTES};
use crate::observation::{EthicsContext, Text};
use crate::policy::{EthicsPolicy, SeverityThresholds};

/// How serious the ethical concerns are, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Exemplary,
    Acceptable,
    Concerning,
    Problematic,
    Prohibited,
}

impl Severity {
    /// Every severity, in code order.
    pub const ALL: [Severity; 5] = [
        Severity::Exemplary,
        Severity::Acceptable,
        Severity::Concerning,
        Severity::Problematic,
        Severity::Prohibited,
    ];

    /// The Merkle leaf code (SPEC §3.1): 0 exemplary … 4 prohibited.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Exemplary => "exemplary",
            Severity::Acceptable => "acceptable",
            Severity::Concerning => "concerning",
            Severity::Problematic => "problematic",
            Severity::Prohibited => "prohibited",
        }
    }

    /// The severity ladder: first match from the top, every bound strict.
    pub fn classify(overall: f64, consensus: f64, t: &SeverityThresholds) -> Severity {
        if overall > t.exemplary_overall_above && consensus > t.exemplary_consensus_above {
            Severity::Exemplary
        } else if overall > t.acceptable_above {
            Severity::Acceptable
        } else if overall > t.concerning_above {
            Severity::Concerning
        } else if overall > t.problematic_above {
            Severity::Problematic
        } else {
            Severity::Prohibited
        }
    }
}

/// One of the five ethical frameworks, in evaluation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framework {
    Utilitarian,
    Deontological,
    Virtue,
    Care,
    Ihsan,
}

impl Framework {
    /// Every framework in evaluation (and output) order.
    pub const ALL: [Framework; 5] = [
        Framework::Utilitarian,
        Framework::Deontological,
        Framework::Virtue,
        Framework::Care,
        Framework::Ihsan,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Utilitarian => "utilitarian",
            Framework::Deontological => "deontological",
            Framework::Virtue => "virtue",
            Framework::Care => "care",
            Framework::Ihsan => "ihsan",
        }
    }
}

/// One framework's judgement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameworkScore {
    /// Which framework judged.
    pub framework: Framework,
    /// Score, nominally in [−1, 1] (negative = harmful); deontology's can go below −1.
    pub score: f64,
    /// How complete the framework's information was; scales its weight.
    pub confidence: f64,
}

/// The ethics stage's verdict (SPEC §1.2 `ethics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EthicsVerdict {
    /// Σw·c·s / Σw·c over the frameworks; never clamped (many harms push it below −1).
    pub overall: f64,
    /// Severity from `overall` and `consensus`.
    pub severity: Severity,
    /// max(0, 1 − popstd(scores)): agreement between frameworks.
    pub consensus: f64,
    /// False only when PROHIBITED.
    pub permitted: bool,
    /// What the action is permitted under (or why not), with the first framework concerns.
    pub conditions: Vec<String>,
    /// Every framework's score, in [`Framework::ALL`] order.
    pub frameworks: [FrameworkScore; 5],
}

impl EthicsVerdict {
    /// The IHSAN framework's score in [−1, 1] (SNR's ihsan metric is (score + 1)/2).
    pub fn ihsan_score(&self) -> f64 {
        self.frameworks[Framework::Ihsan as usize].score
    }
}

/// Evaluates the action implied by an observation with this context and convergence clarity.
pub fn evaluate(ctx: &EthicsContext, clarity: f64, p: &EthicsPolicy) -> EthicsVerdict {
    let a = Action::new(ctx, clarity, p);
    let mut concerns = Concerns::default();
    let frameworks = [
        utilitarian(&a, &mut concerns),
        deontological(&a, &mut concerns),
        virtue(&a, &mut concerns),
        care(&a, &mut concerns),
        ihsan(&a, &p.dignity_harm_keywords, &mut concerns),
    ];
    let w = &p.weights;
    let weights = [w.utilitarian, w.deontological, w.virtue, w.care, w.ihsan];
    let (mut weighted, mut total) = (0.0, 0.0);
    for (f, w) in frameworks.iter().zip(weights) {
        let effective = w * f.confidence;
        weighted += f.score * effective;
        total += effective;
    }
    let overall = if total > 0.0 { weighted / total } else { 0.0 };
    let consensus = consensus(&frameworks.map(|f| f.score));
    let severity = Severity::classify(overall, consensus, &p.severity);
    EthicsVerdict {
        overall,
        severity,
        consensus,
        permitted: severity != Severity::Prohibited,
        conditions: conditions(severity, &concerns, &a),
        frameworks,
    }
}

/// max(0, 1 − popstd(scores)), summed left to right.
fn consensus(scores: &[f64; 5]) -> f64 {
    let mean = scores.iter().sum::<f64>() / 5.0;
    let variance = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / 5.0;
    (1.0 - variance.sqrt()).max(0.0)
}

const DEFAULT_STAKEHOLDERS: &[&str] = &["system", "user"];
const DEFAULT_AFFECTED: &[&str] = &["user"];
const DEFAULT_BENEFITS: &[&str] = &["Accurate response", "Value creation"];
const UNCERTAINTY_HARMS: &[&str] = &["Uncertainty risk"];
const DEFAULT_REVERSIBILITY: f64 = 0.8;
const DEFAULT_INTENDED_OUTCOME: &str = "Optimal convergence response";
const UNIVERSAL_CULTURE: &str = "universal";

/// A list of strings, either from the context or a built-in default, without copying.
#[derive(Clone, Copy)]
enum Strs<'a> {
    Given(&'a [Text]),
    Default(&'static [&'static str]),
}

impl<'a> Strs<'a> {
    fn given_or(given: &'a Option<Vec<Text>>, default: &'static [&'static str]) -> Strs<'a> {
        match given {
            Some(v) => Strs::Given(v),
            None => Strs::Default(default),
        }
    }

    fn len(self) -> usize {
        match self {
            Strs::Given(v) => v.len(),
            Strs::Default(v) => v.len(),
        }
    }

    fn is_empty(self) -> bool {
        self.len() == 0
    }

    fn iter(self) -> impl Iterator<Item = &'a str> + Clone {
        let (given, default): (&'a [Text], &'static [&'static str]) = match self {
            Strs::Given(v) => (v, &[]),
            Strs::Default(v) => (&[], v),
        };
        given.iter().map(Text::as_str).chain(default.iter().copied())
    }
}

/// The action and context after defaults, with the counts the frameworks read.
struct Action<'a> {
    stakeholders: Strs<'a>,
    affected: Strs<'a>,
    benefits: Strs<'a>,
    harms: Strs<'a>,
    reversibility: f64,
    has_intent: bool,
    has_constraints: bool,
    has_history: bool,
    non_universal_culture: bool,
    hidden_agenda: bool,
}

impl<'a> Action<'a> {
    fn new(ctx: &'a EthicsContext, clarity: f64, p: &EthicsPolicy) -> Action<'a> {
        let default_harms: &'static [&'static str] = if clarity > p.uncertainty_harm_max_clarity {
            &[]
        } else {
            UNCERTAINTY_HARMS
        };
        Action {
            stakeholders: Strs::given_or(&ctx.stakeholders, DEFAULT_STAKEHOLDERS),
            affected: Strs::given_or(&ctx.affected, DEFAULT_AFFECTED),
            benefits: Strs::given_or(&ctx.potential_benefits, DEFAULT_BENEFITS),
            harms: Strs::given_or(&ctx.potential_harms, default_harms),
            reversibility: ctx.reversibility.unwrap_or(DEFAULT_REVERSIBILITY),
            has_intent: !ctx
                .intended_outcome
                .as_deref()
                .unwrap_or(DEFAULT_INTENDED_OUTCOME)
                .is_empty(),
            has_constraints: ctx.constraints_nonempty.unwrap_or(false),
            has_history: ctx.history_nonempty.unwrap_or(false),
            non_universal_culture: ctx.cultural_context.as_deref().unwrap_or(UNIVERSAL_CULTURE)
                != UNIVERSAL_CULTURE,
            hidden_agenda: ctx.hidden_agenda.unwrap_or(false),
        }
    }
}

/// Net benefit minus harm; confidence from how much is known.
fn utilitarian(a: &Action, concerns: &mut Concerns) -> FrameworkScore {
    let benefit = if a.benefits.is_empty() {
        0.0
    } else {
        let beneficiaries = (a.affected.len() as f64 / 10.0).min(1.0);
        (beneficiaries * (a.benefits.len() as f64 * 0.2)).min(1.0)
    };
    let harm = if a.harms.is_empty() {
        0.0
    } else {
        ((1.0 - a.reversibility) * (a.harms.len() as f64 * 0.3)).min(1.0)
    };
    if harm > 0.5 {
        concerns.push(Concern::SignificantHarm);
    }
    let has_outcomes = !a.benefits.is_empty() || !a.harms.is_empty();
    FrameworkScore {
        framework: Framework::Utilitarian,
        score: (benefit - harm).clamp(-1.0, 1.0),
        confidence: 0.4 * flag(has_outcomes)
            + 0.3 * flag(!a.stakeholders.is_empty())
            + 0.3 * flag(a.has_history),
    }
}

/// Universalisability, respect for persons and five duties. The "prevent harm" duty
/// 1 − 0.2·#harms has no lower bound, as in the reference.
fn deontological(a: &Action, concerns: &mut Concerns) -> FrameworkScore {
    let harms = a.harms.len() as f64;
    let universalizable = (1.0 - harms * 0.15).max(0.0);
    let respects_persons = if a.stakeholders.is_empty() {
        0.5
    } else {
        let transparency = if a.has_intent { 0.3 } else { 0.0 };
        (0.4 + a.reversibility * 0.3 + transparency).min(1.0)
    };
    // respect autonomy, keep promises, avoid deception, prevent harm, provide transparency
    // (the metadata is never empty).
    let avoid_deception = if a.has_intent { 1.0 } else { 0.5 };
    let duties = [0.7, 0.7, avoid_deception, 1.0 - harms * 0.2, 0.8];
    let duty = duties.iter().sum::<f64>() / 5.0;
    if universalizable < 0.5 {
        concerns.push(Concern::NotUniversalizable);
    }
    if respects_persons < 0.5 {
        concerns.push(Concern::AutonomyViolation);
    }
    let score = 0.4 * universalizable + 0.3 * respects_persons + 0.3 * duty;
    FrameworkScore {
        framework: Framework::Deontological,
        score: score * 2.0 - 1.0,
        confidence: 0.85,
    }
}

/// Six weighted virtues.
fn virtue(a: &Action, concerns: &mut Concerns) -> FrameworkScore {
    let (benefits, harms) = (a.benefits.len(), a.harms.len());
    let context_awareness: f64 = if a.has_constraints { 0.5 } else { 0.3 };
    let history_awareness = if a.has_history { 0.5 } else { 0.3 };
    let wisdom = (context_awareness + history_awareness).min(1.0);
    let courage = 0.5 + (1.0 - a.reversibility) * 0.3;
    let temperance = if benefits == 0 && harms == 0 {
        0.5
    } else {
        1.0 - benefits.abs_diff(harms) as f64 / (benefits + harms + 1) as f64
    };
    let justice = 0.4 + (a.stakeholders.len() as f64 / 5.0).min(1.0) * 0.6;
    // Honesty needs a stated outcome and metadata; the metadata is never empty.
    let honesty = if a.has_intent { 0.8 } else { 0.5 };
    let compassion = if benefits == 0 {
        0.4
    } else {
        (0.5 + benefits as f64 * 0.15).min(1.0)
    };
    let virtues = [
        ("wisdom", wisdom, 0.20),
        ("courage", courage, 0.15),
        ("temperance", temperance, 0.15),
        ("justice", justice, 0.20),
        ("honesty", honesty, 0.15),
        ("compassion", compassion, 0.15),
    ];
    let mut total = 0.0;
    for (name, score, weight) in virtues {
        total += score * weight;
        if score < 0.4 {
            concerns.push(Concern::LowVirtue(name, score));
        }
    }
    FrameworkScore {
        framework: Framework::Virtue,
        score: total * 2.0 - 1.0,
        confidence: 0.75,
    }
}

/// Relationships, responsiveness to needs, sensitivity to context.
fn care(a: &Action, concerns: &mut Concerns) -> FrameworkScore {
    let relationships = if a.stakeholders.is_empty() && a.affected.is_empty() {
        0.3
    } else {
        let parties = distinct_capped(a.stakeholders.iter().chain(a.affected.iter()));
        (0.4 + parties as f64 * 0.1).min(1.0)
    };
    let needs = (0.3 + a.benefits.len() as f64 * 0.2).min(1.0);
    let context = 0.3
        + 0.25 * flag(a.non_universal_culture)
        + 0.25 * flag(a.has_constraints)
        + 0.20 * flag(a.has_history);
    if relationships < 0.4 {
        concerns.push(Concern::InsufficientRelationships);
    }
    let score = 0.35 * relationships + 0.35 * needs + 0.30 * context;
    FrameworkScore {
        framework: Framework::Care,
        score: score * 2.0 - 1.0,
        confidence: 0.70,
    }
}

/// Relationship scores saturate at 0.4 + 6·0.1 ≥ 1, so distinct parties are counted up to 6:
/// exact for what the formula can tell apart, linear time and no allocation for any list size.
const PARTIES_SATURATE_AT: usize = 6;

fn distinct_capped<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    let mut seen = [""; PARTIES_SATURATE_AT];
    let mut n = 0;
    for name in names {
        if !seen[..n].contains(&name) {
            seen[n] = name;
            n += 1;
            if n == PARTIES_SATURATE_AT {
                break;
            }
        }
    }
    n
}

/// Ihsan's five dimensions: sincerity, dignity, justice, excellence, sustainability.
fn ihsan(a: &Action, dignity_keywords: &[String], concerns: &mut Concerns) -> FrameworkScore {
    let ikhlas = 0.5 * flag(a.has_intent) + 0.5 * flag(!a.hidden_agenda);
    let karama = if a.affected.is_empty() {
        0.7
    } else {
        let violations = a
            .harms
            .iter()
            .filter(|h| dignity_keywords.iter().any(|k| contains_ignoring_case(h, k)))
            .count();
        (1.0 - violations as f64 * 0.3).max(0.0)
    };
    let adl = if a.stakeholders.is_empty() {
        0.6
    } else {
        let coverage = (a.stakeholders.len() as f64 / 5.0).min(1.0);
        let distribution = if a.benefits.is_empty() { 0.3 } else { 0.5 };
        0.4 * coverage + 0.6 * distribution
    };
    // Thoroughness (non-empty metadata) always holds.
    let kamal = 0.3 * flag(!a.benefits.is_empty()) + 0.35 * 1.0 + 0.35 * flag(a.has_intent);
    let (benefits, harms) = (a.benefits.len(), a.harms.len());
    let balance = if benefits == 0 && harms == 0 {
        0.5
    } else {
        benefits as f64 / (benefits + harms + 1) as f64
    };
    let istidama = a.reversibility * 0.5 + balance * 0.5;
    let dimensions = [
        ("IKHLAS", ikhlas, 0.30),
        ("KARAMA", karama, 0.20),
        ("ADL", adl, 0.20),
        ("KAMAL", kamal, 0.20),
        ("ISTIDAMA", istidama, 0.10),
    ];
    let mut total = 0.0;
    for (name, score, weight) in dimensions {
        total += score * weight;
        if score < 0.4 {
            concerns.push(Concern::LowIhsan(name, score));
        }
    }
    FrameworkScore {
        framework: Framework::Ihsan,
        score: total * 2.0 - 1.0,
        confidence: 0.90,
    }
}

/// Whether `keyword` occurs in `text` once both are lowercased (Unicode-aware), without
/// allocating. ASCII on both sides (the usual case) is a byte-window compare; otherwise the
/// lowercased character streams are searched, since a non-ASCII character may lowercase to
/// ASCII (KELVIN SIGN → `k`).
fn contains_ignoring_case(text: &str, keyword: &str) -> bool {
    if text.is_ascii() && keyword.is_ascii() {
        let k = keyword.as_bytes();
        return k.is_empty()
            || text
                .as_bytes()
                .windows(k.len())
                .any(|w| w.eq_ignore_ascii_case(k));
    }
    let hay = text.chars().flat_map(char::to_lowercase);
    let needle = keyword.chars().flat_map(char::to_lowercase);
    let mut start = hay.clone();
    loop {
        let mut h = start.clone();
        if needle.clone().all(|c| h.next() == Some(c)) {
            return true;
        }
        if start.next().is_none() {
            return false;
        }
    }
}

/// A framework concern, in the order the frameworks raised it; rendered to text only when it
/// becomes a condition.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Concern {
    SignificantHarm,
    NotUniversalizable,
    AutonomyViolation,
    LowVirtue(&'static str, f64),
    InsufficientRelationships,
    LowIhsan(&'static str, f64),
}

/// Harms named in the "Significant potential harm" condition; the rest are counted.
const HARMS_LISTED: usize = 8;

/// The concerns of one evaluation: at most 1 + 2 + 6 + 1 + 5 = 15.
struct Concerns {
    items: [Concern; 15],
    len: usize,
}

impl Default for Concerns {
    fn default() -> Self {
        Concerns {
            items: [Concern::SignificantHarm; 15],
            len: 0,
        }
    }
}

impl Concerns {
    fn push(&mut self, c: Concern) {
        self.items[self.len] = c;
        self.len += 1;
    }

    fn first(&self, n: usize) -> &[Concern] {
        &self.items[..self.len.min(n)]
    }

    fn render(c: Concern, a: &Action) -> String {
        match c {
            Concern::SignificantHarm => {
                // The list and each harm's text are capped so that a verdict stays small
                // whatever the input.
                let mut s = String::from("Significant potential harm: [");
                for (i, h) in a.harms.iter().take(HARMS_LISTED).enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(s, "{sep}{:?}", clip(h, ECHO_BYTES));
                }
                if a.harms.len() > HARMS_LISTED {
                    let _ = write!(s, ", … {} more", a.harms.len() - HARMS_LISTED);
                }
                s.push(']');
                s
            }
            Concern::NotUniversalizable => "Action may not be universalizable".into(),
            Concern::AutonomyViolation => "Potential violation of autonomy".into(),
            Concern::LowVirtue(name, score) => format!("Low {name}: {score:.2}"),
            Concern::InsufficientRelationships => "Insufficient relationship consideration".into(),
            Concern::LowIhsan(name, score) => format!("Low {name}: {score:.2}"),
        }
    }
}

/// What the action is permitted under: PROHIBITED names the prohibition; PROBLEMATIC and
/// CONCERNING list their requirements and then the first 3 or 2 concerns; otherwise a note
/// counts the concerns, if any.
fn conditions(severity: Severity, concerns: &Concerns, a: &Action) -> Vec<String> {
    let (fixed, shown): (&[&str], usize) = match severity {
        Severity::Prohibited => {
            return vec!["Action prohibited: severe ethical violations".into()];
        }
        Severity::Problematic => (
            &[
                "Requires explicit stakeholder consent",
                "Must implement harm mitigation measures",
                "Subject to enhanced monitoring",
            ],
            3,
        ),
        Severity::Concerning => (
            &[
                "Review recommended before proceeding",
                "Consider alternative approaches",
            ],
            2,
        ),
        Severity::Exemplary | Severity::Acceptable => {
            return match concerns.len {
                0 => Vec::new(),
                n => vec![format!("Note: {n} minor concerns identified")],
            };
        }
    };
    let listed = concerns.first(shown);
    let mut out = Vec::with_capacity(fixed.len() + listed.len());
    out.extend(fixed.iter().map(|s| s.to_string()));
    out.extend(listed.iter().map(|&c| Concerns::render(c, a)));
    out
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn policy() -> EthicsPolicy {
        Policy::reference().ethics
    }

    fn strings(v: &[&str]) -> Option<Vec<Text>> {
        Some(v.iter().map(|&s| s.into()).collect())
    }

    #[test]
    fn spec_line_one_hello_vector() {
        let v = evaluate(&EthicsContext::default(), 0.7085169165705499, &policy());
        assert_eq!(v.overall, 0.485692789968652);
        assert_eq!(v.consensus, 0.6599261779488983);
        assert_eq!(v.severity, Severity::Acceptable);
        assert!(v.permitted);
        assert_eq!(v.conditions.len(), 1, "{:?}", v.conditions);
        let expected = [
            (0.04000000000000001, 0.7),
            (0.8679999999999999, 0.85),
            (0.244, 0.75),
            (0.08999999999999986, 0.7),
            (0.7306666666666666, 0.9),
        ];
        for ((f, (score, confidence)), framework) in v.frameworks.iter().zip(expected).zip(Framework::ALL) {
            assert_eq!(f.framework, framework);
            assert_eq!((f.score, f.confidence), (score, confidence), "{framework:?}");
        }
        assert_eq!(v.ihsan_score(), 0.7306666666666666);
    }

    #[test]
    fn severity_ladder_bounds_are_strict() {
        let t = policy().severity;
        let at = |overall, consensus| Severity::classify(overall, consensus, &t);
        assert_eq!(at(0.71, 0.71), Severity::Exemplary);
        assert_eq!(at(0.7, 0.99), Severity::Acceptable);
        assert_eq!(at(0.99, 0.7), Severity::Acceptable);
        assert_eq!(at(0.30000001, 0.0), Severity::Acceptable);
        assert_eq!(at(0.3, 0.99), Severity::Concerning);
        assert_eq!(at(-0.2, 0.99), Severity::Problematic);
        assert_eq!(at(-0.6, 0.99), Severity::Prohibited);
        assert_eq!(at(-5.0, 0.0), Severity::Prohibited);
    }

    #[test]
    fn severity_codes_and_spellings() {
        for (i, s) in Severity::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(s.code()), i);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    /// The record that once made a 1.2 MB verdict: two long harms, nothing reversible.
    #[test]
    fn long_harms_are_echoed_clipped_with_their_length() {
        let long = "h".repeat(600_000);
        let ctx = EthicsContext {
            potential_harms: strings(&[&long, &long]),
            reversibility: Some(0.0),
            ..EthicsContext::default()
        };
        let v = evaluate(&ctx, 0.5, &policy());
        let harm = v
            .conditions
            .iter()
            .find(|c| c.starts_with("Significant potential harm"))
            .expect("the harm condition is listed");
        assert!(harm.contains("truncated, 600000 bytes"), "{harm}");
        let total: usize = v.conditions.iter().map(String::len).sum();
        assert!(total < 1024, "conditions take {total} bytes");
    }

    /// Contexts that land on each severity, with the conditions count the reference gives.
    #[test]
    fn conditions_count_per_severity() {
        let p = policy();
        let harms = |n: usize| Some(vec![Text::from("Data loss"); n]);

        // Reversible, well-informed, widely beneficial: every framework agrees it is good.
        let exemplary = EthicsContext {
            stakeholders: strings(&["a", "b", "c", "d", "e"]),
            affected: Some((0..10).map(|i| compact_str::format_compact!("p{i}")).collect()),
            potential_benefits: strings(&["x", "y", "z"]),
            potential_harms: strings(&["minor delay"]),
            reversibility: Some(1.0),
            constraints_nonempty: Some(true),
            history_nonempty: Some(true),
            cultural_context: Some("local".into()),
            ..EthicsContext::default()
        };
        let v = evaluate(&exemplary, 0.9, &p);
        assert_eq!(v.severity, Severity::Exemplary, "{v:?}");
        assert!(v.conditions.is_empty(), "{:?}", v.conditions);

        // Defaults (the SPEC line-1 case): temperance 1 − 2/3 < 0.4 is the one concern, noted.
        let v = evaluate(&EthicsContext::default(), 0.9, &p);
        assert_eq!(v.severity, Severity::Acceptable, "{v:?}");
        assert_eq!(v.conditions, ["Note: 1 minor concerns identified"]);

        let concerning = EthicsContext {
            potential_harms: harms(4),
            reversibility: Some(0.2),
            ..EthicsContext::default()
        };
        let v = evaluate(&concerning, 0.9, &p);
        assert_eq!(v.severity, Severity::Concerning, "{v:?}");
        assert_eq!(v.conditions.len(), 4, "{:?}", v.conditions);
        assert_eq!(
            v.conditions[2],
            "Significant potential harm: [\"Data loss\", \"Data loss\", \"Data loss\", \"Data loss\"]"
        );

        let many = EthicsContext {
            potential_harms: harms(11),
            reversibility: Some(0.2),
            ..EthicsContext::default()
        };
        let v = evaluate(&many, 0.9, &p);
        let listed = v
            .conditions
            .iter()
            .find(|c| c.starts_with("Significant"))
            .unwrap();
        assert!(listed.ends_with("\"Data loss\", … 3 more]"), "{listed}");

        let problematic = EthicsContext {
            potential_harms: harms(30),
            potential_benefits: Some(vec![]),
            reversibility: Some(0.0),
            ..EthicsContext::default()
        };
        let v = evaluate(&problematic, 0.9, &p);
        assert_eq!(v.severity, Severity::Problematic, "{v:?}");
        assert_eq!(v.conditions.len(), 6, "{:?}", v.conditions);
        assert!(v.permitted);

        let prohibited = EthicsContext {
            potential_harms: harms(200),
            ..problematic
        };
        let v = evaluate(&prohibited, 0.9, &p);
        assert_eq!(v.severity, Severity::Prohibited, "{v:?}");
        assert!(!v.permitted);
        assert_eq!(v.conditions.len(), 1);
    }

    #[test]
    fn overall_is_not_clamped() {
        let ctx = EthicsContext {
            potential_harms: Some(vec![Text::from("harm"); 500]),
            ..EthicsContext::default()
        };
        assert!(evaluate(&ctx, 0.9, &policy()).overall < -1.0);
    }

    #[test]
    fn dignity_keywords_match_case_insensitively_as_substrings() {
        assert!(contains_ignoring_case("Would HUMILIATE users", "humiliate"));
        assert!(contains_ignoring_case("self-exploitation", "exploit"));
        assert!(contains_ignoring_case("degrade", "degrade"));
        assert!(!contains_ignoring_case("degrad", "degrade"));
        assert!(!contains_ignoring_case("", "exploit"));
        assert!(contains_ignoring_case("ΣxploitΣ ÉXPLOIT", "éxploit"));
        assert!(!contains_ignoring_case("ÉXPLOIT", "exploit"), "é is not e");
        assert!(
            contains_ignoring_case("Ｘ \u{212A}nock", "knock"),
            "KELVIN SIGN lowercases to k"
        );
        assert!(!contains_ignoring_case("ex", "exploit"));

        let p = policy();
        let with = |harm: &str| EthicsContext {
            potential_harms: strings(&[harm]),
            ..EthicsContext::default()
        };
        let plain = evaluate(&with("Delay"), 0.9, &p).ihsan_score();
        let dignity = evaluate(&with("May Degrade trust"), 0.9, &p).ihsan_score();
        assert!(dignity < plain);
    }

    #[test]
    fn distinct_parties_count_saturates_where_the_score_does() {
        assert!(0.4 + PARTIES_SATURATE_AT as f64 * 0.1 >= 1.0);
        assert_eq!(distinct_capped(["a", "b", "a", "c"].into_iter()), 3);
        assert_eq!(distinct_capped(["a"; 1000].into_iter()), 1);
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(distinct_capped(many.iter().map(String::as_str)), 6);
    }

    #[test]
    fn present_but_empty_keys_are_used_as_given() {
        let p = policy();
        let base = evaluate(&EthicsContext::default(), 0.9, &p);
        let empty = EthicsContext {
            stakeholders: Some(vec![]),
            affected: Some(vec![]),
            potential_benefits: Some(vec![]),
            intended_outcome: Some(Text::default()),
            cultural_context: Some(Text::default()),
            ..EthicsContext::default()
        };
        let v = evaluate(&empty, 0.9, &p);
        assert_ne!(v.overall, base.overall);
        assert_eq!(
            v.frameworks[0].confidence, 0.0,
            "no outcomes, no stakeholders, no history"
        );
    }
}
