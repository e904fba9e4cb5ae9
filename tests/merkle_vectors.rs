//! SPEC §3 golden vectors (`tests/data/merkle.json`): every leaf hash, root, audit path, leaf
//! encoding, the observation signature, the test key and the commitment chain must come out
//! of `bizra_dataflows::verification` byte for byte. It does not test batching or the tiers.

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bizra_dataflows::verification::commitment::{self, verify_commitments, Chain, Commitment, ProblemKind};
use bizra_dataflows::verification::leaf::LeafFields;
use bizra_dataflows::verification::merkle::{self, Hash, Tree};
use bizra_dataflows::verification::signature::{
    self, key_id, observation_message, parse_public_key, verify_batch, verify_one, Keyring, SigCheck,
};
use bizra_dataflows::verification::Tier;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/merkle.json");

const SEVERITIES: [&str; 5] = [
    "exemplary",
    "acceptable",
    "concerning",
    "problematic",
    "prohibited",
];

#[derive(Deserialize)]
struct Golden {
    empty_tree_root: String,
    leaves: Vec<LeafVector>,
    roots: Vec<RootVector>,
    audit_paths: Vec<PathVector>,
    leaf_encodings: Vec<EncodingVector>,
    observation_signature: SignatureVector,
    commitments: Vec<CommitmentVector>,
    test_key: TestKey,
}

#[derive(Deserialize)]
struct LeafVector {
    index: usize,
    leaf_input_utf8: String,
    leaf_input_hex: String,
    leaf_hash: String,
}

#[derive(Deserialize)]
struct RootVector {
    n: usize,
    root: String,
}

#[derive(Deserialize)]
struct PathVector {
    n: usize,
    index: usize,
    leaf_hash: String,
    root: String,
    path: Vec<String>,
}

#[derive(Deserialize)]
struct EncodingVector {
    id: String,
    id_utf8_hex: String,
    payload_hex: String,
    payload_sha256: String,
    tier: Tier,
    tier_code: u8,
    valid: bool,
    severity: String,
    severity_code: u8,
    permitted: bool,
    overall: f64,
    value: f64,
    clarity: f64,
    leaf_input_hex: String,
    leaf_hash: String,
}

#[derive(Deserialize)]
struct SignatureVector {
    id: String,
    payload_utf8: String,
    message_hex: String,
    key_id: String,
    sig_b64: String,
}

#[derive(Deserialize)]
struct CommitmentVector {
    #[serde(flatten)]
    commitment: Commitment,
    message_hex: String,
}

#[derive(Deserialize)]
struct TestKey {
    seed_hex: String,
    public_key_b64: String,
    public_key_hex: String,
    key_id: String,
}

fn golden() -> Result<Golden> {
    let text = std::fs::read_to_string(GOLDEN).with_context(|| format!("reading {GOLDEN}"))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {GOLDEN}"))
}

fn hash(text: &str) -> Result<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).with_context(|| format!("32-byte hex: {text:?}"))?;
    Ok(out)
}

fn hashes(texts: &[String]) -> Result<Vec<Hash>> {
    texts.iter().map(|t| hash(t)).collect()
}

fn sig64(b64: &str) -> Result<[u8; 64]> {
    let bytes = STANDARD.decode(b64).context("signature base64")?;
    <[u8; 64]>::try_from(bytes.as_slice()).context("signature length")
}

/// The golden test key, derived from its documented seed rather than read from the file.
fn test_key() -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(b"bizra/golden/test-key/v1").into();
    SigningKey::from_bytes(&seed)
}

/// Leaf hashes of the `leaf-i` inputs, recomputed from the inputs.
fn leaf_hashes(g: &Golden) -> Vec<Hash> {
    g.leaves
        .iter()
        .map(|l| merkle::leaf_hash(l.leaf_input_utf8.as_bytes()))
        .collect()
}

#[test]
fn merkle_leaf_hashes_match_every_vector() -> Result<()> {
    let g = golden()?;
    ensure!(
        g.leaves.len() == 20,
        "expected 20 leaves, found {}",
        g.leaves.len()
    );
    for (i, l) in g.leaves.iter().enumerate() {
        ensure!(l.index == i && l.leaf_input_utf8 == format!("leaf-{i}"));
        ensure!(hex::encode(l.leaf_input_utf8.as_bytes()) == l.leaf_input_hex);
        let got = hex::encode(merkle::leaf_hash(l.leaf_input_utf8.as_bytes()));
        ensure!(
            got == l.leaf_hash,
            "leaf {i}: expected {}, found {got}",
            l.leaf_hash
        );
    }
    Ok(())
}

#[test]
fn merkle_roots_match_for_every_tree_size() -> Result<()> {
    let g = golden()?;
    let d = leaf_hashes(&g);
    ensure!(hex::encode(merkle::root(&[])) == g.empty_tree_root);
    ensure!(hex::encode(merkle::empty_root()) == g.empty_tree_root);
    let sizes: Vec<usize> = g.roots.iter().map(|r| r.n).collect();
    ensure!(sizes == (1..=20).collect::<Vec<_>>(), "root sizes {sizes:?}");
    for r in &g.roots {
        let want = hash(&r.root)?;
        ensure!(merkle::root(&d[..r.n]) == want, "root n={}", r.n);
        ensure!(Tree::new(d[..r.n].to_vec()).root() == want, "tree root n={}", r.n);
    }
    Ok(())
}

#[test]
fn merkle_audit_paths_match_verify_and_reject_tampering() -> Result<()> {
    let g = golden()?;
    let d = leaf_hashes(&g);
    let mut covered = std::collections::BTreeMap::<usize, usize>::new();
    for v in &g.audit_paths {
        let (n, i) = (v.n, v.index);
        let ctx = format!("path n={n} index={i}");
        let (leaf, root, want) = (hash(&v.leaf_hash)?, hash(&v.root)?, hashes(&v.path)?);
        ensure!(leaf == d[i], "{ctx}: leaf hash");
        ensure!(root == merkle::root(&d[..n]), "{ctx}: root");

        ensure!(Tree::new(d[..n].to_vec()).path(i) == want, "{ctx}: Tree::path");
        ensure!(merkle::audit_path(&d[..n], i) == want, "{ctx}: audit_path");
        let (iu, nu) = (i as u64, n as u64);
        ensure!(
            merkle::verify_path(&leaf, iu, nu, &want, &root),
            "{ctx}: verifies"
        );

        for j in 0..want.len() {
            let mut bad = want.clone();
            bad[j][31] ^= 0x80;
            ensure!(
                !merkle::verify_path(&leaf, iu, nu, &bad, &root),
                "{ctx}: flipped {j}"
            );
        }
        if n > 1 {
            let wrong = (iu + 1) % nu;
            ensure!(
                !merkle::verify_path(&leaf, wrong, nu, &want, &root),
                "{ctx}: wrong index"
            );
        }
        ensure!(
            !merkle::verify_path(&leaf, nu, nu, &want, &root),
            "{ctx}: index = size"
        );
        *covered.entry(n).or_default() += 1;
    }
    // Every index of every listed size is present.
    let want: Vec<(usize, usize)> = [1, 2, 3, 5, 7, 8, 13, 20].iter().map(|&n| (n, n)).collect();
    ensure!(covered.into_iter().collect::<Vec<_>>() == want, "path coverage");
    Ok(())
}

#[test]
fn merkle_leaf_encodings_match_the_spec_layout() -> Result<()> {
    let g = golden()?;
    ensure!(g.leaf_encodings.len() == 3);
    for e in &g.leaf_encodings {
        let payload = hex::decode(&e.payload_hex)?;
        let digest: [u8; 32] = Sha256::digest(&payload).into();
        ensure!(
            hex::encode(digest) == e.payload_sha256,
            "{}: payload digest",
            e.id
        );
        ensure!(
            hex::encode(e.id.as_bytes()) == e.id_utf8_hex,
            "{}: id bytes",
            e.id
        );
        ensure!(e.tier.code() == e.tier_code, "{}: tier code", e.id);
        let severity = SEVERITIES.iter().position(|s| *s == e.severity);
        ensure!(
            severity == Some(usize::from(e.severity_code)),
            "{}: severity",
            e.id
        );

        let fields = LeafFields {
            id: &e.id,
            payload_sha256: &digest,
            tier: e.tier.code(),
            valid: e.valid,
            severity: e.severity_code,
            permitted: e.permitted,
            overall: e.overall,
            value: e.value,
            clarity: e.clarity,
        };
        let input = hex::encode(fields.encode());
        ensure!(
            input == e.leaf_input_hex,
            "{}: expected {}, found {input}",
            e.id,
            e.leaf_input_hex
        );
        ensure!(hex::encode(fields.hash()) == e.leaf_hash, "{}: leaf hash", e.id);
        ensure!(
            fields.hash() == merkle::leaf_hash(&fields.encode()),
            "{}: streamed hash",
            e.id
        );
    }
    Ok(())
}

#[test]
fn merkle_test_key_derives_from_its_documented_seed() -> Result<()> {
    let g = golden()?;
    let sk = test_key();
    let pk = sk.verifying_key();
    ensure!(hex::encode(sk.to_bytes()) == g.test_key.seed_hex, "seed");
    ensure!(
        hex::encode(pk.as_bytes()) == g.test_key.public_key_hex,
        "public key hex"
    );
    ensure!(
        STANDARD.encode(pk.as_bytes()) == g.test_key.public_key_b64,
        "public key b64"
    );
    ensure!(key_id(&pk) == g.test_key.key_id, "key id");
    ensure!(
        parse_public_key(&g.test_key.public_key_b64)? == pk,
        "parse_public_key"
    );
    let file = signature::signing_key_to_file_text(&sk);
    ensure!(
        signature::signing_key_from_file_text(&file)? == sk,
        "key file round trip"
    );
    Ok(())
}

#[test]
fn merkle_observation_signature_verifies_under_the_test_key() -> Result<()> {
    let g = golden()?;
    let o = &g.observation_signature;
    let digest: [u8; 32] = Sha256::digest(o.payload_utf8.as_bytes()).into();
    let msg = observation_message(&o.id, &digest);
    ensure!(hex::encode(&msg) == o.message_hex, "message");

    let pk = test_key().verifying_key();
    ensure!(o.key_id == key_id(&pk), "key id");
    let sig = sig64(&o.sig_b64)?;
    let ring = Keyring::from_entries([(o.key_id.clone(), g.test_key.public_key_b64.clone())])?;
    ensure!(
        verify_one(&ring, &o.key_id, &msg, &sig) == SigCheck::Ok,
        "verify_one"
    );
    ensure!(verify_one(&ring, "32a92d17325513e7", &msg, &sig) == SigCheck::UnknownKey);
    let mut bad = sig;
    bad[5] ^= 1;
    ensure!(
        verify_one(&ring, &o.key_id, &msg, &bad) == SigCheck::Bad,
        "corrupted"
    );
    let batch = verify_batch(&[
        (&pk, &msg[..], &sig),
        (&pk, &msg[..], &bad),
        (&pk, &msg[..], &sig),
    ]);
    ensure!(batch == vec![true, false, true], "batch {batch:?}");
    Ok(())
}

#[test]
fn merkle_commitment_chain_matches_and_reseals_identically() -> Result<()> {
    let g = golden()?;
    let sk = test_key();
    let pk: VerifyingKey = sk.verifying_key();
    ensure!(g.commitments.len() == 3);
    let first = &g.commitments[0].commitment;
    let mut run = [0u8; 8];
    hex::decode_to_slice(&first.run, &mut run)?;
    ensure!(commitment::run_id_hex(&run) == first.run);
    let mut chain = Chain::new(run, first.shard);
    let mut prev = [0u8; 32];

    for (i, v) in g.commitments.iter().enumerate() {
        let c = &v.commitment;
        ensure!(c.seq == i as u64 && c.shard == first.shard && c.run == first.run);
        ensure!(
            hash(&c.prev)? == prev,
            "seq {i}: prev chains to the previous message"
        );
        let leaves = hashes(&c.leaves)?;
        ensure!(c.tree_size == leaves.len() as u64, "seq {i}: tree_size");
        let root = hash(&c.root)?;
        ensure!(merkle::root(&leaves) == root, "seq {i}: root");
        let msg = commitment::message(&run, c.shard, c.seq, c.tree_size, &root, &prev);
        ensure!(hex::encode(&msg) == v.message_hex, "seq {i}: message");
        ensure!(c.key_id == key_id(&pk), "seq {i}: key id");
        let sig = Signature::from_bytes(&sig64(&c.signature)?);
        pk.verify_strict(&msg, &sig)
            .with_context(|| format!("seq {i}: signature"))?;

        let resealed = chain.seal(c.seq, &leaves, &sk);
        ensure!(resealed == *c, "seq {i}: reseal differs\n{resealed:?}\n{c:?}");
        prev = chain.prev();
    }
    Ok(())
}

#[test]
fn merkle_commitment_verifier_accepts_the_chain_and_catches_an_altered_leaf() -> Result<()> {
    let g = golden()?;
    let pk = test_key().verifying_key();
    let chain: Vec<Commitment> = g.commitments.iter().map(|v| v.commitment.clone()).collect();
    let problems = verify_commitments(&chain, &pk);
    ensure!(problems.is_empty(), "{problems:?}");

    let mut altered = chain.clone();
    altered[1].leaves[2] = hex::encode(merkle::leaf_hash(b"not leaf-2"));
    let problems = verify_commitments(&altered, &pk);
    ensure!(problems.len() == 1, "{problems:?}");
    let p = &problems[0];
    ensure!(
        (p.run.as_str(), p.shard, p.seq) == ("0123456789abcdef", 3, 1),
        "{p}"
    );
    ensure!(matches!(p.kind, ProblemKind::Root { .. }), "{p}");

    let mut dropped = chain;
    dropped.remove(1);
    let problems = verify_commitments(&dropped, &pk);
    ensure!(
        problems.iter().any(|p| p.kind
            == ProblemKind::Seq {
                expected: 1,
                found: 2
            }),
        "{problems:?}"
    );
    Ok(())
}
