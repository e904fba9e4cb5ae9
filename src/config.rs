//! The configuration tree (one serde tree, `deny_unknown_fields`), its embedded defaults
//! (`config/default.toml`) and the loading of the files it names (policy, keyring, node
//! key). Every problem is a [`ConfigError`] naming the file, the key and what was wrong.

use std::path::{Path, PathBuf};

use bizra_dataflows::bounds;
use bizra_dataflows::decode::Limits;
use bizra_dataflows::explain::Style;
use bizra_dataflows::policy::Policy;
use bizra_dataflows::verification::sampling::SampleKey;
use bizra_dataflows::verification::signature::{self, Keyring};
use bizra_dataflows::verification::VerifyConfig;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// The embedded defaults, documented in place.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub limits: LimitsConfig,
    pub verification: VerifyConfig,
    pub keys: KeysConfig,
    pub policy: PolicyConfig,
    pub pipeline: PipelineSettings,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub kafka: crate::kafka::KafkaConfig,
    #[serde(default)]
    pub stats: bizra_dataflows::stats::StatsConfig,
    #[serde(default)]
    pub health: crate::health::HealthConfig,
    #[serde(default)]
    pub archive: crate::archive::ArchiveConfig,
    #[serde(default)]
    pub consolidate: crate::consolidate::ConsolidateConfig,
    pub log: LogConfig,
}

/// The `[log]` section: the decision log (SPEC §3.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The deployment's name: its run id (`deployment_run`) and its checkpoints' origins.
    /// Stable across starts, so that each shard's commitments form one chain; two
    /// deployments that share topics need different names.
    pub deployment: String,
    /// How often each shard publishes a signed checkpoint of its log (if it grew), besides
    /// the one at a graceful stop.
    pub checkpoint_interval_ms: u64,
    /// A shard whose newest commitment cannot be read at start goes on from the newest one
    /// that can (logged) instead of stopping. Set only by `bizra run
    /// --resume-past-unreadable`, never by a file: it is a one-time decision.
    #[serde(skip)]
    pub resume_past_unreadable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest payload after base64 decoding.
    pub max_payload_bytes: usize,
    /// Largest input record; the reader cuts longer lines and dead-letters them.
    pub max_message_bytes: usize,
    /// Most elements of a `context` string list.
    pub max_context_items: usize,
    /// Largest context string, list element, `source`, `attestation` or `signature.key_id`.
    pub max_text_bytes: usize,
    /// Largest output record (verdict, commitment, dead letter); a verdict that would be
    /// larger is written as an `output_too_large` dead letter instead.
    pub max_output_bytes: usize,
}

impl Config {
    /// The pipeline's configuration: this tree's limits, verification, event-time clamp and
    /// explanation style, with the loaded policy, keyring and node key, under `run`.
    pub fn pipeline(
        &self,
        policy: Policy,
        keyring: Keyring,
        signing_key: SigningKey,
        sample_key: SampleKey,
    ) -> bizra_dataflows::pipeline::PipelineConfig {
        bizra_dataflows::pipeline::PipelineConfig {
            limits: self.limits.decode(),
            max_message_bytes: self.limits.max_message_bytes,
            max_future_ms: self.stats.max_future_ms,
            verify: self.verification.clone(),
            sample_key,
            replay: None,
            policy: std::sync::Arc::new(policy),
            keyring: std::sync::Arc::new(keyring),
            signing_key: std::sync::Arc::new(signing_key),
            run: bizra_dataflows::verification::commitment::deployment_run(&self.log.deployment),
            chains: Default::default(),
            explain: self.output.explain.style(),
        }
    }
}

impl LimitsConfig {
    /// The limits the decoder applies.
    pub fn decode(&self) -> Limits {
        Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_context_items: self.max_context_items,
            max_text_bytes: self.max_text_bytes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Keyring of observation signers ("" = empty keyring).
    pub keyring_path: String,
    /// Commitment signing key ("" = ephemeral).
    pub signing_key_path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policy TOML ("" = embedded reference policy).
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Records per epoch: small enough for latency, large enough to amortise progress.
    pub epoch_records: usize,
    /// Epochs the source may run ahead of the written output.
    pub max_inflight_epochs: u64,
    /// Bytes of input the sources of one process may have in flight (read, and not yet
    /// written and acknowledged), each record counted as its length plus
    /// [`RECORD_OVERHEAD_BYTES`]: the bound on memory that holds for any mix of record sizes.
    pub max_inflight_bytes: usize,
    /// How long the processes of a timely cluster may take to connect to each other; a
    /// process whose peers are not all there by then ends with an error instead of waiting
    /// for ever (a peer that died before the cluster formed).
    pub cluster_timeout_ms: u64,
}

/// What a record costs in flight beyond its bytes: its verdict (about 2 KB of JSON, more as a
/// struct with conditions), the decoded observation and the bookkeeping. Charging it makes
/// the byte budget also bound a stream of tiny records.
pub const RECORD_OVERHEAD_BYTES: usize = 4096;

impl PipelineSettings {
    /// What a record of `len` bytes counts against `max_inflight_bytes`.
    pub fn cost(len: usize) -> usize {
        len + RECORD_OVERHEAD_BYTES
    }
}

/// The `[output]` section: what verdicts carry beyond SPEC §1.2.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Style of each verdict's `explanation`; off by default because it is formatting work
    /// per record and bytes per verdict that machine readers do not need.
    pub explain: Explain,
}

/// The `output.explain` values: `off` or one of the [`Style`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Explain {
    #[default]
    Off,
    Technical,
    Executive,
    Audit,
}

impl Explain {
    /// The style the pipeline uses, `None` when off.
    pub fn style(self) -> Option<Style> {
        match self {
            Explain::Off => None,
            Explain::Technical => Some(Style::Technical),
            Explain::Executive => Some(Style::Executive),
            Explain::Audit => Some(Style::Audit),
        }
    }
}

/// A start-up error: the process exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Merges `over` into `base` key by key (tables recursively).
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) if bv.is_table() && v.is_table() => merge(bv, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl Config {
    /// The embedded defaults.
    pub fn default_config() -> Config {
        toml::from_str(DEFAULT_TOML).expect("embedded default config is valid")
    }

    /// Defaults overridden by the keys of `path`, if given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::parse(&read(path)?, path),
            None => Ok(Config::default_config()),
        }
    }

    /// Defaults overridden by the keys of `text`, the contents of `path` (which errors name).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(DEFAULT_TOML).expect("embedded default config is valid");
        let over: toml::Value = toml::from_str(text).map_err(|e| invalid(path, e.to_string()))?;
        merge(&mut value, over);
        let cfg: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| invalid(path, e.to_string()))?;
        cfg.validate().map_err(|m| invalid(path, m))?;
        Ok(cfg)
    }

    /// Range checks serde cannot express.
    fn validate(&self) -> Result<(), String> {
        let v = &self.verification;
        if v.batch_size == 0 {
            return Err("verification.batch_size: expected at least 1, found 0".into());
        }
        if !(0.0 < v.statistical_confidence && v.statistical_confidence < 1.0) {
            return Err(format!(
                "verification.statistical_confidence: expected a number in (0, 1), found {}",
                v.statistical_confidence
            ));
        }
        if !(0.0 < v.statistical_max_defect_rate && v.statistical_max_defect_rate < 1.0) {
            return Err(format!(
                "verification.statistical_max_defect_rate: expected a number in (0, 1), found {}",
                v.statistical_max_defect_rate
            ));
        }
        if self.pipeline.epoch_records == 0 || self.pipeline.max_inflight_epochs == 0 {
            return Err(
                "pipeline.epoch_records and pipeline.max_inflight_epochs: expected at least 1".into(),
            );
        }
        self.check_sizes()?;
        self.log.validate()?;
        self.stats.validate().map_err(|m| format!("stats: {m}"))?;
        self.archive.validate().map_err(|m| format!("archive.{m}"))?;
        self.consolidate.validate().map_err(|e| e.to_string())?;
        if let Some(k) = self.kafka.protected_option() {
            return Err(format!(
                "kafka options \"{k}\": bizra sets this librdkafka option itself for its delivery guarantee; use the [kafka] keys instead"
            ));
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), String> {
        let d = &self.deployment;
        let ok = !d.is_empty()
            && d.len() <= 64
            && d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(format!(
                "log.deployment: expected 1 to 64 characters of A-Z a-z 0-9 . _ - (it names the checkpoints' origin and signing key), found {d:?}"
            ));
        }
        if self.checkpoint_interval_ms < 100 {
            return Err(format!(
                "log.checkpoint_interval_ms: expected at least 100, found {}",
                self.checkpoint_interval_ms
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The size limits against each other: the in-flight budget holds a largest record, and
    /// every dead letter and commitment fits the output limit (a verdict that does not is
    /// dead-lettered; a dead letter or commitment that did not would have no way out).
    fn check_sizes(&self) -> Result<(), String> {
        let l = &self.limits;
        let p = &self.pipeline;
        if l.max_message_bytes == 0 || l.max_payload_bytes == 0 || l.max_text_bytes == 0 {
            return Err(
                "limits: max_message_bytes, max_payload_bytes and max_text_bytes: expected at least 1".into(),
            );
        }
        let largest = PipelineSettings::cost(l.max_message_bytes);
        if p.max_inflight_bytes < 2 * largest {
            return Err(format!(
                "pipeline.max_inflight_bytes: expected at least twice the cost of a largest record (limits.max_message_bytes {} + {RECORD_OVERHEAD_BYTES}, doubled: {}), found {}",
                l.max_message_bytes,
                2 * largest,
                p.max_inflight_bytes
            ));
        }
        let dead_letter = bounds::dead_letter_max_bytes(MAX_TOPIC_BYTES);
        if l.max_output_bytes < dead_letter {
            return Err(format!(
                "limits.max_output_bytes: expected at least {dead_letter} (the largest dead letter), found {}",
                l.max_output_bytes
            ));
        }
        // A batch holds its verdicts and as many rollbacks at most.
        let commitment = bounds::commitment_max_bytes(2 * self.verification.batch_size);
        if l.max_output_bytes < commitment {
            return Err(format!(
                "limits.max_output_bytes: expected at least {commitment} (the commitment of a batch of verification.batch_size = {} leaves and as many rollbacks), found {}",
                self.verification.batch_size, l.max_output_bytes
            ));
        }
        let others = [
            (
                "a rollback",
                bounds::rollback_max_bytes(self.verification.batch_size, MAX_TOPIC_BYTES),
            ),
            ("a replay-log record", bounds::REPLAY_RECORD_MAX_BYTES),
        ];
        for (what, bytes) in others {
            if l.max_output_bytes < bytes {
                return Err(format!(
                    "limits.max_output_bytes: expected at least {bytes} (the largest {what}), found {}",
                    l.max_output_bytes
                ));
            }
        }
        Ok(())
    }
}

/// Longest input topic name an output names: Kafka's topic names have at most 249
/// characters, and embedded mode names the input file, whose path the operator chose (a
/// longer one is checked at start, `run`).
pub const MAX_TOPIC_BYTES: usize = 4096;

/// Loads the policy file, or the embedded reference policy.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, ConfigError> {
    match path {
        None => Ok(Policy::reference()),
        Some(p) => Policy::from_toml(&read(p)?).map_err(|e| invalid(p, e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    keys: std::collections::BTreeMap<String, String>,
}

/// Loads a keyring file: `[keys]` then `<key_id> = "<base64 public key>"` lines.
pub fn load_keyring(path: &Path) -> Result<Keyring, ConfigError> {
    parse_keyring(&read(path)?, path)
}

/// Parses the text of a keyring file (`path` is for the errors).
pub fn parse_keyring(text: &str, path: &Path) -> Result<Keyring, ConfigError> {
    let file: KeyringFile = toml::from_str(text).map_err(|e| invalid(path, e.to_string()))?;
    Keyring::from_entries(file.keys).map_err(|e| invalid(path, e.to_string()))
}

/// Loads a node signing key written by `bizra keygen`. A key file that others may read is
/// refused, as ssh refuses a private key: the key signs every commitment, and whoever reads
/// it can sign commitments that verify ([`check_private`] states the rule).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, ConfigError> {
    check_private(path)?;
    signature::signing_key_from_file_text(&read(path)?).map_err(|e| invalid(path, e.to_string()))
}

/// Loads the sampling secret written by `bizra keygen --sampling` (the node key's file
/// format: one line of standard base64 of 32 bytes), refused if others may read it: whoever
/// knows it can pick ids the statistical sample skips and ids that share a replay bucket.
pub fn load_sampling_key(path: &Path) -> Result<SampleKey, ConfigError> {
    check_private(path)?;
    let seed =
        signature::signing_key_from_file_text(&read(path)?).map_err(|e| invalid(path, e.to_string()))?;
    Ok(SampleKey::from_secret(&seed.to_bytes()))
}

/// Refuses a secret file that anyone but its owner may read or write; a root-owned file may
/// also be read by its group.
pub fn check_private(path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        // As PostgreSQL does for its TLS key: a file owned by root may be group-readable
        // (0640, 0440), which is how a Kubernetes Secret reaches a non-root pod (fsGroup);
        // otherwise only the owner may read it.
        let allowed = if meta.uid() == 0 { 0o740 } else { 0o700 };
        if mode & !allowed != 0 {
            return Err(invalid(
                path,
                format!(
                    "the key file has mode {mode:04o}, readable or writable by others than its owner; it must be readable by its owner only (chmod 600 {}), or, owned by root, by its group too (0640)",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_key_file_may_be_read_by_its_owner_and_by_the_group_of_root() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "x").unwrap();
        let root = std::fs::metadata(&path).unwrap().uid() == 0;
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, root),
            (0o440, root),
            (0o660, false),
            (0o604, false),
            (0o644, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_private(&path).is_ok(), ok, "mode {mode:o}");
        }
    }

    #[test]
    fn embedded_defaults_parse_and_match_the_verifier_defaults() {
        let c = Config::default_config();
        assert_eq!(c.verification, VerifyConfig::default());
        assert_eq!(c.limits.max_payload_bytes, 1 << 20);
        assert_eq!(c.output, OutputConfig::default());
        assert_eq!(c.output.explain.style(), None);
    }

    #[test]
    fn output_explain_takes_off_or_a_style_and_names_a_bad_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for style in Style::ALL {
            std::fs::write(&p, format!("[output]\nexplain = \"{}\"\n", style.as_str())).unwrap();
            assert_eq!(
                Config::load(Some(&p)).unwrap().output.explain.style(),
                Some(style)
            );
        }
        std::fs::write(&p, "[output]\nexplain = \"off\"\n").unwrap();
        assert_eq!(Config::load(Some(&p)).unwrap().output.explain.style(), None);
        std::fs::write(&p, "[output]\nexplain = \"verbose\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("c.toml") && e.contains("verbose") && e.contains("technical"),
            "{e}"
        );
        std::fs::write(&p, "[output]\nexplian = \"audit\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("explian"), "{e}");
    }

    #[test]
    fn a_file_overrides_only_the_keys_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[verification]\nbatch_size = 8\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.verification.batch_size, 8);
        assert_eq!(c.verification.max_wait_ms, 100);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[verification]\nbatch_sise = 8\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("batch_sise"), "{e}");
        std::fs::write(&p, "[verification]\nbatch_size = 0\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
        std::fs::write(&p, "[kafka.producer_options]\n\"acks\" = \"1\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("\"acks\"") && e.contains("delivery guarantee"), "{e}");
    }

    #[test]
    fn a_deployment_name_must_be_a_safe_origin_and_the_override_cannot_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let name = |n: &str| format!("[log]\ndeployment = {n:?}\n");
        for bad in ["", "a b", "a/b", "a\nb", "dépl", &"x".repeat(65)] {
            std::fs::write(&p, name(bad)).unwrap();
            let e = Config::load(Some(&p)).unwrap_err().to_string();
            assert!(e.contains("log.deployment"), "{bad:?}: {e}");
        }
        for good in ["bizra", "prod-eu.1_b", &"x".repeat(64)] {
            std::fs::write(&p, name(good)).unwrap();
            assert_eq!(Config::load(Some(&p)).unwrap().log.deployment, good);
        }
        std::fs::write(&p, "[log]\ncheckpoint_interval_ms = 99\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("checkpoint_interval_ms"), "{e}");
        std::fs::write(&p, "[log]\nresume_past_unreadable = true\n").unwrap();
        assert!(Config::load(Some(&p)).is_err(), "only the command line sets it");
    }
}
