//! Verification tried as an attacker would (issue 14): forged, unknown-key and garbage
//! signatures in every tier, unsigned records under `require_signatures`, ids chosen against
//! the public hash, timestamps chosen to escape the replay window, and replays across a
//! restart. Each must be flagged in its verdict, or in a committed rollback that `bizra
//! verify` checks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bizra_dataflows::verification::signature::{key_id, observation_message};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cli::{bizra, keygen, ok, read_jsonl};

/// A sampling key with fixed bytes, so that which items are sampled is the same every run.
fn fixed_sampling_key(dir: &Path) -> PathBuf {
    let path = dir.join("fixed-sampling.key");
    let text = bizra_dataflows::verification::signature::signing_key_to_file_text(&SigningKey::from_bytes(
        &[0x42; 32],
    ));
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// The producer's key, and a keyring that trusts it.
fn producer(dir: &Path) -> (SigningKey, PathBuf) {
    let key = SigningKey::from_bytes(&[0x17; 32]);
    let path = dir.join("keyring.toml");
    let pk = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    std::fs::write(
        &path,
        format!("[keys]\n{} = \"{pk}\"\n", key_id(&key.verifying_key())),
    )
    .unwrap();
    (key, path)
}

/// How an observation is signed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sig {
    Genuine,
    /// Signed by another key, naming the trusted key's id: a forgery.
    Forged,
    /// Signed by another key under its own id, which the keyring does not hold.
    UnknownKey,
    /// 64 bytes that are no signature, under the trusted key's id.
    Garbage,
    Unsigned,
}

fn observation(key: &SigningKey, id: &str, urgency: &str, sig: Sig) -> Value {
    let data = format!("payload of {id}");
    let digest: [u8; 32] = Sha256::digest(data.as_bytes()).into();
    let msg = observation_message(id, &digest);
    let other = SigningKey::from_bytes(&[0x99; 32]);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let trusted = key_id(&key.verifying_key());
    let signature = match sig {
        Sig::Genuine => Some((trusted, b64(&key.sign(&msg).to_bytes()))),
        Sig::Forged => Some((trusted, b64(&other.sign(&msg).to_bytes()))),
        Sig::UnknownKey => Some((key_id(&other.verifying_key()), b64(&other.sign(&msg).to_bytes()))),
        Sig::Garbage => {
            let mut g = [0u8; 64];
            for (i, b) in g.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(37) ^ id.len() as u8;
            }
            g[63] &= 0x0f; // s below ℓ: passes the cheap check, fails Ed25519
            Some((trusted, b64(&g)))
        }
        Sig::Unsigned => None,
    };
    let mut o = json!({
        "id": id,
        "data": data,
        "urgency": urgency,
        "digest": format!("sha256:{}", hex::encode(digest)),
    });
    if let Some((key_id, sig)) = signature {
        o["signature"] = json!({"key_id": key_id, "sig": sig});
    }
    o
}

fn write_lines(path: &Path, values: &[Value]) {
    let text: String = values.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(path, text).unwrap();
}

struct Run {
    verdicts: PathBuf,
    commitments: PathBuf,
    rollbacks: PathBuf,
}

/// `bizra run` on `input` with the test's keys; `config` is added as a config file.
fn run(dir: &Path, name: &str, input: &Path, keyring: &Path, config: &str, extra: &[&str]) -> Run {
    let node = dir.join("node.key");
    if !node.exists() {
        keygen(dir);
    }
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let r = Run {
        verdicts: dir.join(format!("{name}.verdicts.jsonl")),
        commitments: dir.join(format!("{name}.commitments.jsonl")),
        rollbacks: dir.join(format!("{name}.rollbacks.jsonl")),
    };
    ok(bizra()
        .args(["run", "-q", "--input"])
        .arg(input)
        .arg("--keyring")
        .arg(keyring)
        .arg("--signing-key")
        .arg(node)
        .arg("--sampling-key")
        .arg(fixed_sampling_key(dir))
        .arg("--config")
        .arg(&cfg)
        .arg("--output")
        .arg(&r.verdicts)
        .arg("--commitments")
        .arg(&r.commitments)
        .arg("--rollbacks")
        .arg(&r.rollbacks)
        .args(extra)
        .output()
        .unwrap());
    r
}

fn verify(dir: &Path, r: &Run) -> String {
    let (_, pubkey) = keygen_pub(dir);
    let out = bizra()
        .arg("verify")
        .arg("--verdicts")
        .arg(&r.verdicts)
        .arg("--commitments")
        .arg(&r.commitments)
        .arg("--rollbacks")
        .arg(&r.rollbacks)
        .args(["--pubkey", &pubkey])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The public half of `dir/node.key` (made by `keygen`), as `bizra verify` takes it.
fn keygen_pub(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("node.key");
    let key = bizra::config::load_signing_key(&path).unwrap();
    let pk = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    (path, pk)
}

/// Every forged, unknown-key and garbage signature, and with `require_signatures` every
/// unsigned record, is invalid in its verdict or rolled back by a committed rollback that
/// names that verdict; in the statistical tier some are rolled back (the sample missed them).
#[test]
fn bad_signatures_are_flagged_at_once_or_rolled_back_in_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let (key, keyring) = producer(dir.path());
    let mut obs = Vec::new();
    let mut bad: HashMap<String, Sig> = HashMap::new();
    for urgency in ["real_time", "near_real_time", "batch"] {
        for i in 0..1_600 {
            // Rare enough that the statistical sample misses some of them (a sampled failure
            // escalates its batch), so the later check and its rollback are exercised.
            let sig = match i % 80 {
                7 => Sig::Forged,
                23 => Sig::UnknownKey,
                41 => Sig::Garbage,
                59 => Sig::Unsigned,
                _ => Sig::Genuine,
            };
            let id = format!("{urgency}-{i}");
            if sig != Sig::Genuine {
                bad.insert(id.clone(), sig);
            }
            obs.push(observation(&key, &id, urgency, sig));
        }
    }
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &obs);
    let r = run(
        dir.path(),
        "attack",
        &input,
        &keyring,
        "[verification]\nrequire_signatures = true\n",
        &["-w", "2"],
    );
    let verdicts: BTreeMap<String, Value> = read_jsonl(&r.verdicts)
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_eq!(verdicts.len(), obs.len());
    let rollbacks: HashMap<String, Value> = read_jsonl(&r.rollbacks)
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect();
    let mut rolled_back = 0;
    for (id, sig) in &bad {
        let v = &verdicts[id];
        let flagged_now = v["verification"]["valid"] == false && v["permitted"] == false;
        match rollbacks.get(id) {
            Some(rb) => {
                rolled_back += 1;
                assert!(
                    matches!(sig, Sig::Forged | Sig::Garbage),
                    "{id} ({sig:?}): an unknown key or a missing signature is caught at once"
                );
                assert_eq!(v["verification"]["tier"], "statistical", "{id}");
                assert_eq!(v["verification"]["checks"]["signature"], "sampled_out", "{id}");
                assert_eq!(
                    rb["verdict_batch"], v["batch"],
                    "{id}: the rollback names its verdict"
                );
                assert_eq!(rb["reason"], "signature_bad");
            }
            None => assert!(
                flagged_now,
                "{id} ({sig:?}) is neither invalid nor rolled back: {v}"
            ),
        }
    }
    for (id, v) in &verdicts {
        if !bad.contains_key(id) {
            assert!(
                v["verification"]["valid"] == true,
                "{id}: a genuine record is valid: {v}"
            );
            assert!(
                !rollbacks.contains_key(id),
                "{id}: a genuine record is never rolled back"
            );
        }
    }
    assert!(
        rolled_back > 0,
        "no forgery reached the later check: the test exercises nothing"
    );
    // Every verdict and rollback is in its committed batch, with a proof for each rollback.
    let report = verify(dir.path(), &r);
    assert!(report.contains(" 0 failures"), "{report}");
    assert!(report.contains(&format!("{rolled_back} rollbacks")), "{report}");

    // An edited rollback fails the check.
    let text = std::fs::read_to_string(&r.rollbacks).unwrap();
    let edited = text.replacen("signature_bad", "unknown_key", 1);
    std::fs::write(&r.rollbacks, edited).unwrap();
    let report = verify(dir.path(), &r);
    assert!(
        report.contains("FAIL rollbacks:1") && !report.contains(" 0 failures"),
        "{report}"
    );
}

/// The sender picks `timestamp`; the replay window's age test uses the arrival time.
#[test]
fn a_senders_timestamp_cannot_move_a_replay_out_of_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (key, keyring) = producer(dir.path());
    let mut obs = vec![observation(&key, "again", "near_real_time", Sig::Genuine)];
    for ts in ["2999-01-01T00:00:00Z", "1970-01-01T00:00:00Z"] {
        let mut o = observation(&key, "again", "near_real_time", Sig::Genuine);
        o["timestamp"] = json!(ts);
        obs.push(o);
    }
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &obs);
    let r = run(
        dir.path(),
        "ts",
        &input,
        &keyring,
        "[verification]\nreplay_window_ms = 60000\n",
        &[],
    );
    let replays: Vec<Value> = read_jsonl(&r.verdicts)
        .iter()
        .map(|v| v["verification"]["checks"]["replay"].clone())
        .collect();
    assert_eq!(replays, [json!(false), json!(true), json!(true)]);
}

/// Ids whose public hash shares the target's bucket — the bucket before it was keyed — do
/// not flush the target from a small window (64 ids per bucket, where 64 such ids would
/// have): the keyed buckets spread them over all 256.
#[test]
fn ids_chosen_against_the_public_hash_do_not_flush_the_replay_window() {
    let dir = tempfile::tempdir().unwrap();
    let (key, keyring) = producer(dir.path());
    let public = |id: &str| blake3::hash(id.as_bytes()).as_bytes()[0];
    let target = "target";
    let flood: Vec<String> = (0u64..)
        .map(|i| format!("flood-{i}"))
        .filter(|id| public(id) == public(target))
        .take(2_000)
        .collect();
    let mut obs = vec![observation(&key, target, "near_real_time", Sig::Unsigned)];
    obs.extend(
        flood
            .iter()
            .map(|id| observation(&key, id, "near_real_time", Sig::Unsigned)),
    );
    obs.push(observation(&key, target, "near_real_time", Sig::Unsigned));
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &obs);
    let r = run(
        dir.path(),
        "flood",
        &input,
        &keyring,
        "[verification]\nreplay_window_ids = 16384\n",
        &["-w", "2"],
    );
    let verdicts = read_jsonl(&r.verdicts);
    let last = verdicts.iter().rev().find(|v| v["id"] == target).unwrap();
    assert_eq!(last["verification"]["checks"]["replay"], true, "{last}");
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| v["verification"]["checks"]["replay"] == true)
            .count(),
        1
    );
}

/// With `--data-dir`, a run continues the last one's replay window: an id seen in the first
/// run is a replay in the second. Reading the first input again is reading the same records
/// again: they get the verdicts they got the first time.
#[test]
fn a_replay_across_a_restart_is_flagged_and_the_same_input_again_is_judged_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (key, keyring) = producer(dir.path());
    let data = dir.path().join("data");
    let first: Vec<Value> = (0..300)
        .map(|i| observation(&key, &format!("a{}", i % 250), "near_real_time", Sig::Genuine))
        .collect();
    let a = dir.path().join("a.jsonl");
    write_lines(&a, &first);
    let data_arg = ["--data-dir", data.to_str().unwrap()];
    let one = run(dir.path(), "one", &a, &keyring, "", &data_arg);
    let replays = |r: &Run| -> Vec<bool> {
        read_jsonl(&r.verdicts)
            .iter()
            .map(|v| v["verification"]["checks"]["replay"].as_bool().unwrap())
            .collect()
    };
    let want: Vec<bool> = (0..300).map(|i| i >= 250).collect();
    assert_eq!(replays(&one), want);

    let b = dir.path().join("b.jsonl");
    write_lines(
        &b,
        &[
            observation(&key, "a7", "batch", Sig::Genuine),
            observation(&key, "new", "batch", Sig::Genuine),
        ],
    );
    let two = run(dir.path(), "two", &b, &keyring, "", &data_arg);
    assert_eq!(replays(&two), [true, false], "a7 was seen by the first run");

    let three = run(dir.path(), "three", &a, &keyring, "", &data_arg);
    let stable = |r: &Run| -> Vec<Value> {
        read_jsonl(&r.verdicts)
            .iter()
            .map(crate::common::stable)
            .collect()
    };
    assert_eq!(
        stable(&three),
        stable(&one),
        "the first input read again gets its first verdicts"
    );
}

/// The processes of a cluster must share the secret: with a key per process, an id read by
/// two of them could go to two buckets and never meet the replay guard that knows it.
#[test]
fn a_cluster_without_a_shared_sampling_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = crate::common::two_process_hostfile(dir.path());
    let out = bizra()
        .args(["run", "-q", "--gen", "10", "-n", "2", "-p", "0", "--hostfile"])
        .arg(&hostfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sampling_key_path") && err.contains("keygen --sampling"),
        "{err}"
    );
}
