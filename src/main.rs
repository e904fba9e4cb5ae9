//! The `bizra` command line. Parses flags, loads configuration (exit 2 on any start-up
//! problem, naming the file and key), and dispatches to the runtime.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use bizra::config::{self, Config, ConfigError};
use bizra::gen::{GenConfig, Generator};
use bizra::io::{InputSpec, OutputSpec};
use bizra::run::{self, Cluster, Outputs, Source};
use bizra::sign_cmd::{keyring_entry, Signer};
use bizra_dataflows::observation::Urgency;
use bizra_dataflows::verification::sampling::SampleKey;
use bizra_dataflows::verification::signature::{self, Keyring};
use clap::{Args, Parser, Subcommand};
use ed25519_dalek::SigningKey;

/// Records and verdicts are many small allocations across threads: mimalloc's per-thread
/// heaps keep that off the glibc arenas (measured in docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory is returned to the OS only after it stayed unused this long (10 s, the
/// decay jemalloc uses). mimalloc's 10 ms default, and still 1 s, make the steady churn of
/// records fault fresh (transparent huge) pages in over and over: at 1 s, ~16,000 page
/// faults and ~18 % of the CPU zeroing pages in a 400,000-record run, against ~750 faults at
/// 10 s, for 0.90× the CPU (docs/BENCHMARKS.md, issue 16). RSS stays bounded by the in-flight
/// byte budget either way; memory still goes back ten seconds after a burst.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide integer option; no pointers are involved.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}

#[derive(Parser)]
#[command(
    name = "bizra",
    version,
    about = "Streaming decision engine: observations in, signed verdicts out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the decision pipeline (embedded mode: JSONL file, stdin or the generator).
    Run(Box<RunArgs>),
    /// Write generated observations as JSONL to stdout.
    Gen(GenArgs),
    /// Make a node signing key (prints its public key, standard base64 of the raw 32 bytes),
    /// or with --sampling the deployment's sampling secret (prints its public id).
    Keygen {
        /// Where to write the key (created with mode 0600; an existing file is kept unless
        /// --force; a symbolic link is refused).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
        /// Make the secret of the statistical sample and the replay buckets
        /// (`verification.sampling_key_path`), not a signing key.
        #[arg(long)]
        sampling: bool,
    },
    /// Sign observations as a producer: set each one's `digest` and SPEC §3.2 `signature`
    /// under a key made by `bizra keygen`; exit 1 at the first line that is not an observation.
    Sign {
        /// The producer's key file (made by `bizra keygen`; readable by its owner only).
        #[arg(long)]
        key: PathBuf,
        /// JSONL observations to sign; `-` is stdin.
        #[arg(long, default_value = "-")]
        input: String,
        /// Where the signed observations go; `-` is stdout.
        #[arg(long, default_value = "-")]
        output: String,
    },
    /// Read the episodic audit archive written by `bizra run --data-dir`.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Audit a deployment's history: verdicts and rollbacks against commitments, the
    /// commitments' chains, and the signed checkpoints of each shard's decision log, from
    /// files or (--brokers) from the topics; exit 1 on any failure.
    Verify {
        /// Verdicts (JSONL, SPEC §1.2) to check; leave out to audit the log alone.
        #[arg(long, value_name = "FILE")]
        verdicts: Option<PathBuf>,
        /// Commitments (JSONL, SPEC §1.3): each shard's decision log. Required without
        /// --brokers.
        #[arg(long, value_name = "FILE")]
        commitments: Option<PathBuf>,
        /// Rollbacks (JSONL, SPEC §1.6) to check too: their leaves, proofs and the verdicts
        /// they name.
        #[arg(long, value_name = "FILE")]
        rollbacks: Option<PathBuf>,
        /// Signed checkpoints (JSONL, as `bizra run --checkpoints` writes them): each is
        /// checked against the log and the earlier ones, and every commitment must be covered
        /// by one.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// The node's public key: standard base64, or a file holding it.
        #[arg(long)]
        pubkey: String,
        /// The deployment (`log.deployment`) whose checkpoints to expect: their origins are
        /// `<NAME>/bizra/shard/<k>`. Default: `log.deployment` of --config, else "bizra".
        #[arg(long, value_name = "NAME")]
        deployment: Option<String>,
        /// Read the verdicts, rollbacks, checkpoints and commitments topics from their
        /// beginning instead of files (topic names and security settings from --config).
        #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["verdicts", "commitments", "rollbacks", "checkpoints"])]
        brokers: Option<String>,
        /// Configuration file (TOML): `[kafka]` topics and client settings, `log.deployment`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// With --brokers: keep checking new records as they arrive, until SIGTERM/SIGINT.
        #[arg(long, requires = "brokers")]
        follow: bool,
        /// With --follow: serve /metrics (bizra_audit_*), /healthz, /readyz on this address.
        #[arg(long, value_name = "ADDR", requires = "follow")]
        http: Option<String>,
        /// With --brokers: records younger than this (by their Kafka timestamp) may still be
        /// completed by records on their way (a commitment, a checkpoint), so they are judged
        /// only once older.
        #[arg(long, value_name = "MS", default_value_t = 60_000)]
        grace_ms: u64,
        /// With --follow: what was judged and arrived longer ago than this is dropped, so
        /// memory stays about 300 bytes × verdicts per second × this. At least --grace-ms.
        #[arg(long, value_name = "MS", default_value_t = 120_000, requires = "follow")]
        retain_ms: u64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print every stored episode holding observation ID (JSON lines); exit 1 if none.
    Get {
        id: String,
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Replay every shard's hash chain; print the report, exit 1 at the first break.
    Verify {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Print a proof over one shard's decision log, read from a commitments file: with
    /// `--index I`, that commitment seq I is in the log of size `--size N` (a checkpoint's);
    /// with `--old M`, that the log of size M is a prefix of the log of size N. One JSON
    /// line with the roots, for RFC 9162 §2.1.3.2 / §2.1.4.2 verification.
    Prove {
        #[arg(long, value_name = "FILE")]
        commitments: PathBuf,
        #[arg(long)]
        shard: u32,
        /// The deployment (`log.deployment`) whose chain to read.
        #[arg(long, default_value = "bizra")]
        deployment: String,
        /// Tree size of the (newer) checkpoint; default: the whole log in the file.
        #[arg(long)]
        size: Option<u64>,
        #[arg(long, conflicts_with = "old", required_unless_present = "old")]
        index: Option<u64>,
        #[arg(long)]
        old: Option<u64>,
    },
    /// Print the K records whose features are nearest to record ID's (JSON lines).
    Similar {
        id: String,
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Records indexed at most (the last ones with features): bounds memory and time.
        #[arg(long, default_value_t = 20_000)]
        max_points: usize,
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Recompute every verdict of a range of input with bizra's own dataflow and compare its
    /// Merkle leaf with the committed one, by input position. Prints one line per difference
    /// and a summary; exit 1 on any differing or missing verdict, 2 if the policy is not the
    /// one the verdicts carry.
    Replay(Box<ReplayArgs>),
}

/// `bizra audit replay`'s flags (boxed: the other audit commands are small).
#[derive(Args)]
struct ReplayArgs {
    /// Commitments (JSONL, SPEC §1.3): the committed leaves.
    #[arg(long, value_name = "FILE")]
    commitments: PathBuf,
    /// Committed verdicts (JSONL, SPEC §1.2): which input position each leaf decides.
    #[arg(long, value_name = "FILE")]
    verdicts: PathBuf,
    /// The run's rollbacks (JSONL): a statistical verdict emitted `sampled_out` whose
    /// signature is bad passes only if a committed rollback names it.
    #[arg(long, value_name = "FILE")]
    rollbacks: Option<PathBuf>,
    /// The run's dead letters (JSONL): with them, a record with no committed output at
    /// all is missing even where the recomputation dead-letters it.
    #[arg(long, value_name = "FILE")]
    dlq: Option<PathBuf>,
    /// The JSONL input the run read (offset = 0-based line number, partition 0).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "brokers",
        conflicts_with = "brokers"
    )]
    input: Option<PathBuf>,
    /// Read the input topic (`kafka.input_topic` of --config) instead, up to the high
    /// watermarks seen at the start.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// With --brokers: start every partition at this offset (default: the earliest held).
    #[arg(long, value_name = "N", requires = "brokers", conflicts_with_all = ["from_time", "input"])]
    from_offset: Option<i64>,
    /// With --brokers: start every partition at its first message at or after this time
    /// (RFC 3339, or ms since the Unix epoch).
    #[arg(long, value_name = "TIME", requires = "brokers", conflicts_with = "input")]
    from_time: Option<String>,
    /// Match only the committed verdicts whose `input.topic` is NAME (needed when the
    /// verdicts file holds several inputs' verdicts).
    #[arg(long, value_name = "NAME")]
    topic: Option<String>,
    /// The deployment's configuration file (limits, verification, pipeline, `[kafka]`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Policy file; default: config `policy.path`, else the reference policy. Its version
    /// must be the verdicts' `policy_version`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Keyring file; default: config `keys.keyring_path`.
    #[arg(long, value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// The deployment's sampling secret; default: config `verification.sampling_key_path`.
    #[arg(long, value_name = "FILE")]
    sampling_key: Option<PathBuf>,
    /// Worker threads of the recomputation.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Args)]
struct RunArgs {
    /// JSONL observations to read; `-` is stdin.
    #[arg(long, default_value = "-")]
    input: String,
    /// Where verdicts go; `-` is stdout.
    #[arg(long, default_value = "-")]
    output: String,
    /// Write commitments (JSONL) here; without it they are counted, not written.
    #[arg(long)]
    commitments: Option<PathBuf>,
    /// Write dead letters (JSONL) here; without it they are counted, not written.
    #[arg(long)]
    dlq: Option<PathBuf>,
    /// Write window statistics (JSONL, SPEC §1.5) here; without it they are computed for
    /// the metrics only. In Kafka mode they go to `kafka.stats_topic`.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Serve /metrics, /healthz, /readyz, /pubkey and /episodes/{id} on this address
    /// (e.g. 0.0.0.0:9100).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Keep the episodic audit archive (one xz-compressed, hash-chained episode per sealed
    /// batch) in DIR/archive; config `[archive]`. Without it nothing is archived.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Generate N observations in-process instead of reading input.
    #[arg(long, value_name = "N")]
    gen: Option<u64>,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generator: fraction of bad records.
    #[arg(long, default_value_t = 0.0)]
    bad_fraction: f64,
    /// Generator: fraction of good records that are signed.
    #[arg(long, default_value_t = 0.5)]
    signed_fraction: f64,
    /// Generator: give every record this urgency (real_time, near_real_time, batch, deferred).
    #[arg(long, value_parser = parse_urgency)]
    urgency: Option<Urgency>,
    /// Generator: fraction of good records that repeat a recent record's id.
    #[arg(long, default_value_t = 0.002)]
    replay_fraction: f64,
    /// Configuration file (overrides the embedded defaults key by key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Policy file (TOML); default: config `policy.path`, else the reference policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Keyring file (TOML); default: config `keys.keyring_path`.
    #[arg(long)]
    keyring: Option<PathBuf>,
    /// Node signing key for commitments; default: config `keys.signing_key_path`, else ephemeral.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// The deployment's sampling secret (`bizra keygen --sampling`); default: config
    /// `verification.sampling_key_path`, else a random one for this run.
    #[arg(long, value_name = "FILE")]
    sampling_key: Option<PathBuf>,
    /// Write rollbacks (JSONL, SPEC §1.6) here; without it they are counted, not written.
    /// In Kafka mode they go to `kafka.rollbacks_topic`.
    #[arg(long, value_name = "FILE")]
    rollbacks: Option<PathBuf>,
    /// Write the decision log's signed checkpoints (JSONL, `docs/FORMATS.md`) here; without
    /// it they are made (and served at `/checkpoint`) but not written. In Kafka mode they go
    /// to `kafka.checkpoints_topic`. In a cluster each process writes its own shards'.
    #[arg(long, value_name = "FILE")]
    checkpoints: Option<PathBuf>,
    /// A shard whose newest commitment cannot be read at start (a damaged record in
    /// `kafka.commitments_topic`, a damaged line in `--data-dir`) goes on from the newest one
    /// that can, with a warning, instead of stopping start-up. For once, after deciding that
    /// record is lost: an auditor sees a gap or fork there.
    #[arg(long)]
    resume_past_unreadable: bool,
    /// Worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// Number of processes.
    #[arg(short = 'n', long, default_value_t = 1)]
    processes: usize,
    /// This process's index.
    #[arg(short = 'p', long, default_value_t = 0)]
    process: usize,
    /// One host:port per process, in process order.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Kafka bootstrap servers: selects Kafka mode (default: config `kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Kafka consumer group (default: config `kafka.group_id`, `bizra`).
    #[arg(long)]
    group: Option<String>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Args)]
struct GenArgs {
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 0.0)]
    bad_fraction: f64,
    /// Fraction of good records that are signed.
    #[arg(long, default_value_t = 0.5)]
    signed_fraction: f64,
    /// Give every record this urgency.
    #[arg(long, value_parser = parse_urgency)]
    urgency: Option<Urgency>,
    /// Fraction of good records that repeat a recent record's id.
    #[arg(long, default_value_t = 0.002)]
    replay_fraction: f64,
    /// Sign with the key in this file (made by `bizra keygen`); without it a key derived from
    /// the seed is used.
    #[arg(long)]
    sign_key: Option<PathBuf>,
    /// Also write a keyring (TOML) holding the signing key's public half.
    #[arg(long)]
    keyring_out: Option<PathBuf>,
}

fn parse_urgency(s: &str) -> Result<Urgency, String> {
    Urgency::parse(s)
        .ok_or_else(|| format!("expected real_time, near_real_time, batch or deferred, found {s:?}"))
}

fn main() -> ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run(*a),
        Command::Gen(a) => cmd_gen(a),
        Command::Keygen { out, force, sampling } => cmd_keygen(&out, force, sampling),
        Command::Sign { key, input, output } => cmd_sign(&key, &input, &output),
        Command::Audit { command } => cmd_audit(command),
        c @ Command::Verify { .. } => cmd_verify(c),
    };
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("bizra: configuration error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("bizra: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_audit(c: AuditCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let ok = match c {
        AuditCommand::Get { id, data_dir } => {
            let found = bizra::audit_cmd::get(&data_dir, &id, &mut out)?;
            if !found {
                eprintln!("bizra: no stored episode holds {id:?}");
            }
            found
        }
        AuditCommand::Verify { data_dir } => bizra::audit_cmd::verify(&data_dir, &mut out)?,
        AuditCommand::Prove {
            commitments,
            shard,
            deployment,
            size,
            index,
            old,
        } => {
            let run = bizra_dataflows::verification::commitment::deployment_run(&deployment);
            let log = bizra::audit_cmd::shard_log(&commitments, &hex::encode(run), shard)?;
            let size = size.unwrap_or(log.len());
            let req = match (index, old) {
                (Some(index), _) => bizra::audit_cmd::ProofRequest::Inclusion { index, size },
                (None, Some(old)) => bizra::audit_cmd::ProofRequest::Consistency { old, size },
                (None, None) => unreachable!("clap requires --index or --old"),
            };
            bizra::audit_cmd::prove(&log, shard, req, &mut out)?;
            true
        }
        AuditCommand::Similar {
            id,
            k,
            max_points,
            data_dir,
        } => {
            bizra::audit_cmd::similar_to(&data_dir, &id, k, max_points, &mut out)?;
            true
        }
        AuditCommand::Replay(a) => {
            let ReplayArgs {
                commitments,
                verdicts,
                rollbacks,
                dlq,
                input,
                brokers,
                from_offset,
                from_time,
                topic,
                config,
                policy,
                keyring,
                sampling_key,
                workers,
                quiet,
            } = *a;
            use bizra::kafka::replay_input::Start;
            use bizra::replay_audit::{Input, Options, Refused};
            use std::io::Write;
            bizra::fatal::install_panic_hook();
            let start = match (from_offset, from_time) {
                (Some(n), _) => Start::Offset(n),
                (None, Some(t)) => Start::TimeMs(
                    t.parse()
                        .ok()
                        .or_else(|| bizra_dataflows::decode::parse_rfc3339_ms(&t))
                        .with_context(|| format!("--from-time: expected RFC 3339 or ms, found {t:?}"))?,
                ),
                (None, None) => Start::Earliest,
            };
            let input = match (input, brokers) {
                (Some(path), _) => Input::File(path),
                (None, Some(brokers)) => Input::Kafka { brokers, start },
                (None, None) => unreachable!("clap requires --input or --brokers"),
            };
            let opts = Options {
                commitments,
                verdicts,
                rollbacks,
                dlq,
                input,
                topic,
                config,
                policy,
                keyring,
                sampling_key,
                workers,
                quiet,
            };
            // The comparison writes from a thread of its own: not through this thread's lock.
            drop(out);
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let result = bizra::replay_audit::replay(&opts, &mut out);
            out.flush()?;
            match result {
                Ok(report) => {
                    writeln!(out, "{}", report.summary())?;
                    writeln!(out, "{}", report.rate())?;
                    out.flush()?;
                    !report.failed()
                }
                Err(e) if e.downcast_ref::<Refused>().is_some() => {
                    eprintln!("bizra: {e}");
                    return Ok(ExitCode::from(2));
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn keyring_text(name: &str, key: &SigningKey) -> String {
    format!("[keys]\n{}\n", keyring_entry(name, &key.verifying_key()))
}

fn cmd_gen(a: GenArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let key = a.sign_key.as_deref().map(config::load_signing_key).transpose()?;
    let cfg = GenConfig {
        signed_fraction: a.signed_fraction,
        urgency: a.urgency,
        replay_fraction: a.replay_fraction,
        ..GenConfig::new(a.seed, a.bad_fraction)
    };
    let g = Generator::new(cfg, key);
    if let Some(p) = &a.keyring_out {
        std::fs::write(p, keyring_text(g.key_id(), g.key()))
            .with_context(|| format!("{}: cannot write keyring", p.display()))?;
    }
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    for i in 0..a.count {
        w.write_all(&g.record(i))?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_sign(key: &Path, input: &str, output: &str) -> anyhow::Result<ExitCode> {
    let signer = Signer::new(config::load_signing_key(key)?);
    eprintln!(
        "key_id: {} (keyring line: {})",
        signer.key_id(),
        signer.keyring_line()
    );
    bizra::sign_cmd::sign(&signer, input, output)?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_keygen(out: &Path, force: bool, sampling: bool) -> anyhow::Result<ExitCode> {
    // A sampling secret is 32 random bytes in the node key's file format.
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    write_secret(out, &signature::signing_key_to_file_text(&key), force)?;
    if sampling {
        let id = SampleKey::from_secret(&key.to_bytes()).id();
        println!("sampling key {}", hex::encode(id));
    } else {
        println!(
            "{}",
            base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The node key of a data dir without `--signing-key`: `DIR/node.key`, made by the first run
/// (mode 0600, like `bizra keygen`) and used by every later one, since the data dir's
/// commitment chains continue under the key that began them.
fn data_dir_node_key(dir: &Path) -> anyhow::Result<SigningKey> {
    let path = dir.join("node.key");
    if std::fs::symlink_metadata(&path).is_err() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        write_secret(&path, &signature::signing_key_to_file_text(&key), false)?;
        tracing::info!(
            file = %path.display(),
            public_key = %base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes()),
            "made the data dir's commitment key"
        );
    }
    Ok(config::load_signing_key(&path)?)
}

/// Writes a secret file atomically with mode 0600: into a new temporary file beside it
/// (created exclusively, so never through a link), then moved into place. An existing file
/// is kept unless `force`; a symbolic link at `path` is refused either way, since writing
/// through it would put the key wherever it points.
fn write_secret(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            anyhow::bail!(
                "{}: is a symbolic link; refusing to write a key through it",
                path.display()
            );
        }
        if !force {
            anyhow::bail!(
                "{}: already exists; refusing to overwrite a key (pass --force to replace it)",
                path.display()
            );
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| -> anyhow::Result<()> {
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("{}: cannot create key file", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if force {
            std::fs::rename(&tmp, path)
        } else {
            // A hard link fails if the name appeared meanwhile: never replaces a file.
            std::fs::hard_link(&tmp, path)
        }
        .with_context(|| format!("{}: cannot create key file", path.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

fn cmd_verify(c: Command) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let Command::Verify {
        verdicts,
        commitments,
        rollbacks,
        checkpoints,
        pubkey,
        deployment,
        brokers,
        config,
        follow,
        http,
        grace_ms,
        retain_ms,
    } = c
    else {
        unreachable!("cmd_verify is called with Command::Verify")
    };
    let text = if Path::new(&pubkey).is_file() {
        std::fs::read_to_string(&pubkey).with_context(|| format!("{pubkey}: cannot read"))?
    } else {
        pubkey.clone()
    };
    let pk = signature::parse_public_key(text.trim()).map_err(|e| anyhow::anyhow!("--pubkey: {e}"))?;
    let cfg = config.as_deref().map(|p| Config::load(Some(p))).transpose()?;
    let deployment = deployment
        .or_else(|| cfg.as_ref().map(|c| c.log.deployment.clone()))
        .unwrap_or_else(|| "bizra".to_owned());
    // Usage errors exit 2, as clap's do: exit 1 means the audit found failures.
    let usage = |m: String| {
        eprintln!("bizra: {m}");
        Ok(ExitCode::from(2))
    };
    if !bizra_dataflows::verification::checkpoint::valid_deployment_name(&deployment) {
        return usage(format!(
            "--deployment: expected a name without spaces or '+', found {deployment:?}"
        ));
    }
    if retain_ms < grace_ms {
        return usage(format!(
            "--retain-ms ({retain_ms}) must be at least --grace-ms ({grace_ms}): what is still being judged cannot be dropped"
        ));
    }
    if follow && brokers.is_none() {
        return usage("--follow follows the topics: give --brokers instead of files".into());
    }
    if brokers.is_none() && commitments.is_none() {
        return usage("--commitments FILE is required (or --brokers)".into());
    }
    let mut out = std::io::stdout().lock();
    let report = match brokers {
        None => {
            let commitments = commitments.expect("checked above");
            let files = bizra::verify_cmd::Files {
                verdicts: verdicts.as_deref(),
                commitments: &commitments,
                rollbacks: rollbacks.as_deref(),
                checkpoints: checkpoints.as_deref(),
            };
            bizra::verify_cmd::verify_files(&files, &pk, &deployment)?
        }
        Some(brokers) => {
            use bizra::verify_cmd::{kafka, AuditConfig};
            let mut kcfg = cfg.map(|c| c.kafka).unwrap_or_default();
            kcfg.brokers = brokers;
            let audit = AuditConfig {
                deployment,
                coverage: true,
                grace_ms: Some(grace_ms),
                retain_ms: follow.then_some(retain_ms),
            };
            let opts = kafka::Options {
                follow,
                http: http.as_deref(),
                pubkey: text.trim().to_owned(),
            };
            kafka::verify(&kcfg, &pk, audit, &opts, &mut out)?
        }
    };
    bizra::verify_cmd::print_lines(&report.failures, &report.notes, &mut out)?;
    writeln!(out, "{}", report.summary())?;
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_run(a: RunArgs) -> anyhow::Result<ExitCode> {
    bizra::fatal::install_panic_hook();
    let mut cfg = Config::load(a.config.as_deref())?;
    cfg.log.resume_past_unreadable = a.resume_past_unreadable;
    let nonempty = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let policy_path = a.policy.clone().or_else(|| nonempty(&cfg.policy.path));
    let policy = config::load_policy(policy_path.as_deref())?;
    let keyring_path = a.keyring.clone().or_else(|| nonempty(&cfg.keys.keyring_path));
    let mut keyring = match &keyring_path {
        Some(p) => config::load_keyring(p)?,
        None => Keyring::new(),
    };
    // The archive before any work: a missing, unwritable or busy --data-dir fails start-up.
    // The lock is held until this function returns, after the last episode is written.
    let _data_dir_lock = a
        .data_dir
        .as_deref()
        .map(|dir| {
            bizra::data_dir::DataDirLock::acquire(dir)
                .with_context(|| format!("--data-dir {}", dir.display()))
        })
        .transpose()?;
    let key_path = a
        .signing_key
        .clone()
        .or_else(|| nonempty(&cfg.keys.signing_key_path));
    let signing_key = match (&key_path, &a.data_dir) {
        (Some(p), _) => config::load_signing_key(p)?,
        // A data dir keeps its chains, so it keeps the key they continue under too.
        (None, Some(dir)) => data_dir_node_key(dir)?,
        (None, None) => {
            let k = SigningKey::generate(&mut rand::rngs::OsRng);
            tracing::info!(
                public_key = %base64::engine::general_purpose::STANDARD.encode(k.verifying_key().as_bytes()),
                key_id = %signature::key_id(&k.verifying_key()),
                "ephemeral commitment key"
            );
            k
        }
    };
    let sample_key = sampling_key(&a, &cfg)?;
    let source = match a.gen {
        Some(count) => {
            let cfg = GenConfig {
                signed_fraction: a.signed_fraction,
                urgency: a.urgency,
                replay_fraction: a.replay_fraction,
                ..GenConfig::new(a.seed, a.bad_fraction)
            };
            let g = Generator::new(cfg, None);
            keyring.insert(g.key_id().to_owned(), g.key().verifying_key());
            Source::Gen {
                count,
                generator: Arc::new(g),
            }
        }
        None => Source::Lines(InputSpec::parse(&a.input)),
    };
    let pubkey = base64::engine::general_purpose::STANDARD.encode(signing_key.verifying_key().as_bytes());
    let (archive, recent) = match &a.data_dir {
        Some(dir) => {
            let acfg = bizra::archive::ArchiveConfig {
                dir: bizra::audit_cmd::archive_dir(dir),
                ..cfg.archive.clone()
            };
            let recent = Arc::new(bizra::recall::RecentEpisodes::new(
                acfg.recall_episodes,
                acfg.recall_bytes,
            ));
            let handle = bizra::archive::ArchiveWriter::spawn_with_recall(acfg, Some(recent.clone()))
                .with_context(|| format!("--data-dir {}", dir.display()))?;
            (Some(handle), Some(recent))
        }
        None => (None, None),
    };
    let compressor = a
        .data_dir
        .as_ref()
        .map(|dir| bizra::consolidate::Compressor::spawn(&cfg.consolidate, Some(dir.join("summaries.xz"))))
        .transpose()
        .context("--data-dir: starting the summary compressor")?;
    let memory = bizra::telemetry::MemoryStats {
        archive: archive.as_ref().map(|h| h.stats().clone()),
        compression: compressor.as_ref().map(|c| c.stats().clone()),
    };
    let lanes = archive.as_ref().map(|h| -> bizra::archive::Lanes {
        Arc::new(std::sync::Mutex::new(
            (0..a.workers.max(1)).map(|_| h.lane()).collect(),
        ))
    });
    let checkpoints: bizra::decision_log::Latest = Default::default();
    // Ops endpoints first: a bad --http fails before any work starts.
    let started: bizra::telemetry::Ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics = match &a.http {
        Some(addr) => {
            let registry = prometheus::Registry::new();
            let mut domains = cfg.stats.domains.clone();
            domains.push(bizra_dataflows::stats::OTHER_DOMAIN.into());
            let metrics = Arc::new(
                bizra::metrics::Metrics::register(&registry, &domains, &policy.version())
                    .context("registering metrics")?,
            );
            let ops = bizra::http::Ops::new(registry, pubkey.clone(), recent.clone(), checkpoints.clone());
            let _ = ops.circuit.set(metrics.circuit_state.clone());
            bizra::http::serve(addr, ops.clone())?;
            bizra::telemetry::spawn_ops_thread(
                ops,
                metrics.clone(),
                cfg.health.clone(),
                started.clone(),
                memory.clone(),
            );
            Some(metrics)
        }
        None => None,
    };
    let mut telemetry = bizra::telemetry::Telemetry::new(metrics, cfg.stats.clone());
    telemetry.consolidate = compressor.as_ref().map(|c| (cfg.consolidate.clone(), c.sender()));
    let mut pipeline = cfg.pipeline(policy, keyring, signing_key, sample_key);
    let cluster = Cluster {
        workers: a.workers.max(1),
        processes: a.processes.max(1),
        process: a.process,
        hostfile: a.hostfile.clone(),
    };
    let progress = Arc::new(AtomicU64::new(0));
    let mut kafka = cfg.kafka.clone();
    if let Some(b) = &a.brokers {
        kafka.brokers = b.clone();
    }
    if let Some(g) = &a.group {
        kafka.group_id = g.clone();
    }
    let bar = progress_bar(a.gen, a.quiet || !kafka.brokers.is_empty(), progress.clone());
    let services = run::Services {
        progress,
        telemetry,
        archive: lanes,
        log: cfg.log.clone(),
        checkpoints: checkpoints.clone(),
    };
    let summary = if kafka.brokers.is_empty() {
        // With --data-dir the replay guard's window continues the last run's.
        if let Some(dir) = &a.data_dir {
            // Each shard's commitment chain continues the last run's (SPEC §3.4).
            let pk = pipeline.signing_key.verifying_key();
            pipeline.chains = Arc::new(
                bizra::decision_log::load(dir, &pk, a.resume_past_unreadable)
                    .with_context(|| format!("--data-dir {}: the decision log", dir.display()))?,
            );
        }
        let replay = match &a.data_dir {
            Some(dir) => {
                let per_bucket =
                    bizra_dataflows::verification::replay::per_bucket(cfg.verification.replay_window_ids);
                let (state, intact) = bizra::replay_state::load(dir, &pipeline.sample_key, per_bucket)
                    .with_context(|| format!("--data-dir {}: the replay state", dir.display()))?;
                pipeline.replay = Some(state);
                let compact = bizra::replay_state::compact_bytes(cfg.verification.replay_window_ids);
                Some(bizra::replay_state::spawn_writer(
                    dir,
                    intact,
                    pipeline.sample_key.clone(),
                    per_bucket,
                    compact,
                )?)
            }
            None => None,
        };
        let outputs = Outputs {
            verdicts: if a.output == "-" {
                OutputSpec::Stdout
            } else {
                OutputSpec::File(a.output.clone().into())
            },
            commitments: a
                .commitments
                .clone()
                .map_or(OutputSpec::Discard, OutputSpec::File),
            dead_letters: a.dlq.clone().map_or(OutputSpec::Discard, OutputSpec::File),
            stats: a.stats.clone().map_or(OutputSpec::Discard, OutputSpec::File),
            rollbacks: a.rollbacks.clone().map_or(OutputSpec::Discard, OutputSpec::File),
            replay,
            checkpoints: a
                .checkpoints
                .clone()
                .map_or(OutputSpec::Discard, OutputSpec::File),
            data_dir: a.data_dir.clone(),
            verdict_tap: None,
        };
        started.store(true, Ordering::Relaxed);
        run::run(
            cluster,
            pipeline,
            cfg.pipeline.clone(),
            cfg.limits.max_output_bytes,
            source,
            outputs,
            services,
        )
    } else {
        if a.gen.is_some()
            || a.input != "-"
            || a.stats.is_some()
            || a.rollbacks.is_some()
            || a.checkpoints.is_some()
        {
            anyhow::bail!(
                "--gen, --input, --stats, --rollbacks and --checkpoints are for local files; with --brokers, statistics go to kafka.stats_topic, rollbacks to kafka.rollbacks_topic and checkpoints to kafka.checkpoints_topic"
            );
        }
        let shutdown = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, shutdown.clone()).context("installing signal handlers")?;
        }
        let bounds = bizra::kafka::Bounds {
            pacing: cfg.pipeline.clone(),
            limits: cfg.limits.clone(),
        };
        bizra::kafka::run(cluster, pipeline, kafka, bounds, shutdown, started, services)
    };
    if let Some(h) = archive {
        // Every episode was acknowledged before the run ended; this finishes the segments.
        h.close();
    }
    if let Some(c) = compressor {
        c.close();
    }
    if let Some((bar, stop, handle)) = bar {
        stop.store(u64::MAX, Ordering::Relaxed);
        let _ = handle.join();
        bar.finish_and_clear();
    }
    let summary = summary?;
    if a.process == 0 && !a.quiet {
        eprint!("{}", summary.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// The deployment's sampling secret: `--sampling-key`, else `verification.sampling_key_path`,
/// else (one process only) a random one for this run, logged as such.
fn sampling_key(a: &RunArgs, cfg: &Config) -> anyhow::Result<SampleKey> {
    let path = a.sampling_key.clone().or_else(|| {
        (!cfg.verification.sampling_key_path.is_empty())
            .then(|| cfg.verification.sampling_key_path.clone().into())
    });
    match &path {
        Some(p) => Ok(config::load_sampling_key(p)?),
        None if a.processes > 1 => Err(ConfigError::Invalid {
            path: "verification.sampling_key_path".into(),
            message: "a cluster (-n > 1) needs a sampling key that every process shares: make one with `bizra keygen --sampling --out FILE` and give it with --sampling-key FILE".into(),
        }
        .into()),
        None => {
            let mut secret = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            let k = SampleKey::from_secret(&secret);
            tracing::warn!(
                id = %hex::encode(k.id()),
                "ephemeral sampling key: the statistical sample and the replay buckets change at every start; set verification.sampling_key_path (bizra keygen --sampling)"
            );
            Ok(k)
        }
    }
}

type Bar = (
    indicatif::ProgressBar,
    Arc<AtomicU64>,
    std::thread::JoinHandle<()>,
);

/// A progress bar on stderr, fed from the workers' counter by a thread of its own.
fn progress_bar(total: Option<u64>, quiet: bool, counter: Arc<AtomicU64>) -> Option<Bar> {
    if quiet {
        return None;
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} observations ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let stop = Arc::new(AtomicU64::new(0));
    let (b, s) = (bar.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        while s.load(Ordering::Relaxed) == 0 {
            b.set_position(counter.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    Some((bar, stop, handle))
}
