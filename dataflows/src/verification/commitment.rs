//! Signed Merkle commitments (SPEC §1.3, §3.3): the record, the signed message, the per-(run,
//! shard) hash chain that seals batches, and the verifier an auditor runs over a commitment
//! topic. It does not batch verdicts, pick keys or publish anything.
//!
//! message = `"bizra/commitment/v1"` ‖ 0x00 ‖ run (8 bytes) ‖ u32be shard ‖ u64be seq ‖
//! u64be tree_size ‖ root ‖ prev, where prev = SHA3-256 of the previous message of this
//! (run, shard) and 32 zero bytes for seq 0.
//!
//! A chain outlives the process (SPEC §3.4): `run` names the deployment, not the start, and a
//! [`Chain`] resumes from a [`ChainStart`] — the last durable commitment and the decision
//! log's [`Frontier`] after it. Each sealed commitment carries the frontier after itself
//! ([`Commitment::log`]), which is what the drivers persist beside it.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

use super::merkle::{self, Hash, Tree};
use super::signature::key_id;
use super::tlog::Frontier;

/// Domain tag that opens every commitment message, followed by a 0x00 byte.
pub const DOMAIN: &[u8] = b"bizra/commitment/v1";

/// Length of a commitment message: tag, 0x00, run, shard, seq, tree_size, root, prev.
pub const MESSAGE_LEN: usize = DOMAIN.len() + 1 + 8 + 4 + 8 + 8 + 32 + 32;

/// One sealed verification batch, as published on `bizra.commitments` (SPEC §1.3). Two are
/// equal when their published fields are (`open_ms` and `log` are not on the wire).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Commitment {
    /// Shard = global worker index that sealed the batch.
    pub shard: u32,
    /// Position in this (run, shard) chain, from 0 without gaps.
    pub seq: u64,
    /// Hex of the 8-byte run id; a new run starts new chains.
    pub run: String,
    /// Number of leaves.
    pub tree_size: u64,
    /// Hex Merkle root of `leaves`.
    pub root: String,
    /// Hex SHA3-256 of the previous commitment message of this chain; zeros for seq 0.
    pub prev: String,
    /// Hex leaf hashes in tree order, so anyone can recompute the root and every proof.
    pub leaves: Vec<String>,
    /// [`key_id`] of the signing key.
    pub key_id: String,
    /// Standard base64 Ed25519 signature over [`message`].
    pub signature: String,
    /// How long the batch was open before it sealed (ms): for metrics, not on the wire.
    #[serde(skip)]
    pub open_ms: u64,
    /// The decision log's frontier after this commitment (leaves `0..=seq`, SPEC §3.4): not
    /// in the JSON; the drivers persist it beside the commitment (a Kafka header, the data
    /// dir) so that the next start can resume the log without reading all of it.
    #[serde(skip)]
    pub log: Vec<Hash>,
}

impl PartialEq for Commitment {
    fn eq(&self, o: &Commitment) -> bool {
        (
            self.shard,
            self.seq,
            &self.run,
            self.tree_size,
            &self.root,
            &self.prev,
            &self.leaves,
            &self.key_id,
            &self.signature,
        ) == (
            o.shard,
            o.seq,
            &o.run,
            o.tree_size,
            &o.root,
            &o.prev,
            &o.leaves,
            &o.key_id,
            &o.signature,
        )
    }
}

impl Commitment {
    /// The §3.3 signed message spelled by this commitment's fields; `None` if a field does
    /// not parse.
    pub fn message(&self) -> Option<Vec<u8>> {
        let mut kinds = Vec::new();
        let p = parse(self, &mut kinds)?;
        Some(message(
            &p.run,
            self.shard,
            self.seq,
            self.tree_size,
            &p.root,
            &p.prev,
        ))
    }

    /// The decision log's frontier after this commitment, as sealed.
    pub fn log_frontier(&self) -> Option<Frontier> {
        Frontier::from_parts(self.seq.checked_add(1)?, self.log.clone())
    }
}

/// The run id of a deployment: the first 8 bytes of SHA-256("bizra/deployment/v1" ‖ 0x00 ‖
/// name). Stable across starts, so that a shard's commitments form one chain.
pub fn deployment_run(name: &str) -> [u8; 8] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"bizra/deployment/v1\0");
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut run = [0u8; 8];
    run.copy_from_slice(&d[..8]);
    run
}

/// Where a shard's chain continues: after its last durable commitment.
#[derive(Clone, Debug)]
pub struct ChainStart {
    /// The seq of the next commitment: the last durable one's + 1.
    pub next_seq: u64,
    /// SHA3-256 of the last durable commitment's message.
    pub prev: Hash,
    /// The decision log's frontier after it (size `next_seq`).
    pub log: Frontier,
}

impl ChainStart {
    /// The start after `c`, given the log frontier persisted with it.
    pub fn after(c: &Commitment, log: Frontier) -> Result<ChainStart, String> {
        let msg = c.message().ok_or_else(|| {
            format!(
                "commitment shard {} seq {}: a field does not parse",
                c.shard, c.seq
            )
        })?;
        ChainStart::from_message(&msg, log)
    }

    /// The start after the commitment whose §3.3 message is `msg`, given the log frontier
    /// after it.
    pub fn from_message(msg: &[u8], log: Frontier) -> Result<ChainStart, String> {
        if msg.len() != MESSAGE_LEN || !msg.starts_with(DOMAIN) || msg[DOMAIN.len()] != 0 {
            return Err(format!(
                "expected a {MESSAGE_LEN}-byte commitment message, found {} bytes",
                msg.len()
            ));
        }
        let at = DOMAIN.len() + 1 + 8 + 4;
        let seq = u64::from_be_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
        if log.size() != seq + 1 {
            return Err(format!(
                "commitment seq {seq}: expected a log frontier of size {}, found size {}",
                seq + 1,
                log.size()
            ));
        }
        Ok(ChainStart {
            next_seq: seq + 1,
            prev: Sha3_256::digest(msg).into(),
            log,
        })
    }
}

/// The §3.3 signed message.
pub fn message(run: &[u8; 8], shard: u32, seq: u64, tree_size: u64, root: &Hash, prev: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(MESSAGE_LEN);
    m.extend_from_slice(DOMAIN);
    m.push(0x00);
    m.extend_from_slice(run);
    m.extend_from_slice(&shard.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&tree_size.to_be_bytes());
    m.extend_from_slice(root);
    m.extend_from_slice(prev);
    m
}

/// Lowercase hex of a run id, as in [`Commitment::run`].
pub fn run_id_hex(run: &[u8; 8]) -> String {
    hex::encode(run)
}

/// The sealing side of one (run, shard) chain: numbers batches and links each to the last.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Run id, fixed for the life of the process.
    run: [u8; 8],
    /// Shard this chain belongs to.
    shard: u32,
    /// The seq the next seal must carry.
    next_seq: u64,
    /// SHA3-256 of the last sealed message (zeros before the first).
    prev: Hash,
    /// The decision log over this chain's messages (SPEC §3.4).
    log: Frontier,
}

impl Chain {
    /// A chain that has sealed nothing yet: next seq 0, prev all zeros.
    pub fn new(run: [u8; 8], shard: u32) -> Chain {
        Chain {
            run,
            shard,
            next_seq: 0,
            prev: [0; 32],
            log: Frontier::new(),
        }
    }

    /// A chain that continues after its last durable commitment, or a new one.
    pub fn resume(run: [u8; 8], shard: u32, start: Option<&ChainStart>) -> Chain {
        match start {
            Some(s) => Chain {
                run,
                shard,
                next_seq: s.next_seq,
                prev: s.prev,
                log: s.log.clone(),
            },
            None => Chain::new(run, shard),
        }
    }

    /// The seq the next [`Chain::seal`] must be given.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// SHA3-256 of the last sealed message, zeros before the first seal.
    pub fn prev(&self) -> Hash {
        self.prev
    }

    /// Seals a batch of leaf hashes: computes the root, signs, and advances the chain.
    ///
    /// # Panics
    /// If `seq` is not [`Chain::next_seq`]: sealing out of order would fork the chain.
    pub fn seal(&mut self, seq: u64, leaves: &[Hash], key: &SigningKey) -> Commitment {
        self.seal_with_root(seq, leaves, merkle::root(leaves), key)
    }

    /// As [`Chain::seal`], reusing a [`Tree`] the caller also takes audit paths from.
    ///
    /// # Panics
    /// As [`Chain::seal`].
    pub fn seal_tree(&mut self, seq: u64, tree: &Tree, key: &SigningKey) -> Commitment {
        self.seal_with_root(seq, tree.leaves(), tree.root(), key)
    }

    fn seal_with_root(&mut self, seq: u64, leaves: &[Hash], root: Hash, key: &SigningKey) -> Commitment {
        assert_eq!(
            seq,
            self.next_seq,
            "commitment chain run {} shard {}: expected seq {}, found {seq}",
            run_id_hex(&self.run),
            self.shard,
            self.next_seq
        );
        let tree_size = leaves.len() as u64;
        let msg = message(&self.run, self.shard, seq, tree_size, &root, &self.prev);
        let signature = key.sign(&msg);
        let commitment = Commitment {
            shard: self.shard,
            seq,
            run: run_id_hex(&self.run),
            tree_size,
            root: super::to_hex(&root),
            prev: super::to_hex(&self.prev),
            leaves: leaves.iter().map(|l| super::to_hex(l)).collect(),
            key_id: key_id(&key.verifying_key()),
            signature: STANDARD.encode(signature.to_bytes()),
            open_ms: 0,
            log: Vec::new(),
        };
        self.log.push(merkle::leaf_hash(&msg));
        let commitment = Commitment {
            log: self.log.hashes().to_vec(),
            ..commitment
        };
        self.prev = Sha3_256::digest(&msg).into();
        self.next_seq += 1;
        commitment
    }
}

/// One thing wrong with one commitment, located by run, shard and seq.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("commitment run {run} shard {shard} seq {seq}: {kind}")]
pub struct CommitmentProblem {
    /// `run` as found in the commitment.
    pub run: String,
    /// `shard` as found.
    pub shard: u32,
    /// `seq` as found.
    pub seq: u64,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What is wrong with a commitment; each says what was expected and what was found.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProblemKind {
    /// A field does not parse, so the message cannot be rebuilt.
    #[error("field {field}: expected {expected}, found {found:?}")]
    Malformed {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    /// The chain skips seqs (or, for the first one seen, does not start at 0).
    #[error("expected seq {expected}, found {found}")]
    Seq { expected: u64, found: u64 },
    /// Another commitment with the same (run, shard, seq) but different content: a fork.
    #[error("expected one commitment per seq, found a second with different content")]
    Fork,
    /// `prev` does not hash the previous message.
    #[error("expected prev {expected}, found {found}")]
    Prev { expected: String, found: String },
    /// `tree_size` differs from the number of leaves listed.
    #[error("expected tree_size {expected} (the number of leaves), found {found}")]
    TreeSize { expected: u64, found: u64 },
    /// `root` is not the Merkle root of the leaves listed.
    #[error("expected root {expected} (over the leaves), found {found}")]
    Root { expected: String, found: String },
    /// Signed by another key than the one being verified against.
    #[error("expected key_id {expected}, found {found}")]
    KeyId { expected: String, found: String },
    /// The signature does not verify over the message built from the commitment's fields.
    #[error(
        "expected a valid Ed25519 signature over the commitment message, found one that does not verify"
    )]
    BadSignature,
}

/// Checks commitments one chain at a time, in seq order, remembering where each (run, shard)
/// chain stands. Feed it a topic in order; [`verify_commitments`] sorts a set first.
#[derive(Clone, Debug)]
pub struct ChainVerifier<'k> {
    /// The node key every commitment must verify under.
    pk: &'k VerifyingKey,
    /// `key_id(pk)`, computed once.
    key_id: String,
    /// (run, shard) → where that chain stands.
    chains: BTreeMap<(String, u32), Tip>,
}

/// The last commitment checked on one chain.
#[derive(Clone, Debug)]
struct Tip {
    /// Seq the next commitment should carry.
    next_seq: u64,
    /// SHA3-256 of the last message, if it could be rebuilt.
    prev: Option<Hash>,
    /// The last commitment, to tell a redelivered duplicate from a fork.
    last: Commitment,
}

/// The parsed binary fields of a commitment.
struct Parsed {
    run: [u8; 8],
    root: Hash,
    prev: Hash,
    leaves: Vec<Hash>,
    signature: [u8; 64],
}

impl<'k> ChainVerifier<'k> {
    /// A verifier for commitments signed by `pk`.
    pub fn new(pk: &'k VerifyingKey) -> ChainVerifier<'k> {
        ChainVerifier {
            pk,
            key_id: key_id(pk),
            chains: BTreeMap::new(),
        }
    }

    /// Checks the next commitment of its chain and returns what is wrong with it (empty when
    /// nothing is). An exact repeat of the chain's last commitment — at-least-once delivery —
    /// is accepted silently; a different one with a seq already passed is a [`ProblemKind::Fork`]
    /// or a [`ProblemKind::Seq`] problem.
    pub fn check(&mut self, c: &Commitment) -> Vec<CommitmentProblem> {
        let mut kinds = Vec::new();
        let chain_key = (c.run.clone(), c.shard);
        let tip = self.chains.get(&chain_key);
        if tip.is_some_and(|t| t.last == *c) {
            return Vec::new();
        }
        let expected_seq = tip.map_or(0, |t| t.next_seq);
        let expected_prev = match tip {
            _ if c.seq == 0 => Some([0; 32]),
            Some(t) if c.seq == expected_seq => t.prev,
            _ => None,
        };
        if c.seq != expected_seq {
            let fork = tip.is_some_and(|t| t.last.seq == c.seq);
            kinds.push(if fork {
                ProblemKind::Fork
            } else {
                ProblemKind::Seq {
                    expected: expected_seq,
                    found: c.seq,
                }
            });
        }
        let this_hash = parse(c, &mut kinds).map(|p| self.check_parsed(c, &p, expected_prev, &mut kinds));
        // Only a commitment that moves the chain forward becomes its tip: after a fork or a
        // step back, the chain continues from what was seen first.
        if c.seq >= expected_seq {
            self.chains.insert(
                chain_key,
                Tip {
                    next_seq: c.seq.saturating_add(1),
                    prev: this_hash,
                    last: c.clone(),
                },
            );
        }
        kinds
            .into_iter()
            .map(|kind| CommitmentProblem {
                run: c.run.clone(),
                shard: c.shard,
                seq: c.seq,
                kind,
            })
            .collect()
    }

    /// Checks everything but seq; returns SHA3-256 of the message the fields spell.
    fn check_parsed(
        &self,
        c: &Commitment,
        p: &Parsed,
        expected_prev: Option<Hash>,
        kinds: &mut Vec<ProblemKind>,
    ) -> Hash {
        if let Some(want) = expected_prev.filter(|want| *want != p.prev) {
            kinds.push(ProblemKind::Prev {
                expected: hex::encode(want),
                found: c.prev.clone(),
            });
        }
        if c.tree_size != p.leaves.len() as u64 {
            kinds.push(ProblemKind::TreeSize {
                expected: p.leaves.len() as u64,
                found: c.tree_size,
            });
        }
        let root = merkle::root(&p.leaves);
        if root != p.root {
            kinds.push(ProblemKind::Root {
                expected: hex::encode(root),
                found: c.root.clone(),
            });
        }
        if c.key_id != self.key_id {
            kinds.push(ProblemKind::KeyId {
                expected: self.key_id.clone(),
                found: c.key_id.clone(),
            });
        }
        let msg = message(&p.run, c.shard, c.seq, c.tree_size, &p.root, &p.prev);
        let sig = Signature::from_bytes(&p.signature);
        if self.pk.verify(&msg, &sig).is_err() {
            kinds.push(ProblemKind::BadSignature);
        }
        Sha3_256::digest(&msg).into()
    }
}

/// Parses the hex and base64 fields, recording each one that does not parse.
fn parse(c: &Commitment, kinds: &mut Vec<ProblemKind>) -> Option<Parsed> {
    let run = parse_hex::<8>("run", "16 hex digits", &c.run, kinds);
    let root = parse_hex::<32>("root", "64 hex digits", &c.root, kinds);
    let prev = parse_hex::<32>("prev", "64 hex digits", &c.prev, kinds);
    let leaves: Option<Vec<Hash>> = c
        .leaves
        .iter()
        .map(|l| parse_hex::<32>("leaves", "64 hex digits per leaf", l, kinds))
        .collect();
    let signature = STANDARD
        .decode(&c.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok());
    if signature.is_none() {
        kinds.push(ProblemKind::Malformed {
            field: "signature",
            expected: "standard base64 of 64 bytes",
            found: c.signature.clone(),
        });
    }
    Some(Parsed {
        run: run?,
        root: root?,
        prev: prev?,
        leaves: leaves?,
        signature: signature?,
    })
}

fn parse_hex<const N: usize>(
    field: &'static str,
    expected: &'static str,
    text: &str,
    kinds: &mut Vec<ProblemKind>,
) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    match hex::decode_to_slice(text, &mut out) {
        Ok(()) => Some(out),
        Err(_) => {
            kinds.push(ProblemKind::Malformed {
                field,
                expected,
                found: text.to_owned(),
            });
            None
        }
    }
}

/// Checks a set of commitments signed by `pk`: groups them by (run, shard), orders each group
/// by seq, and checks seq contiguity from 0, prev chaining, tree_size, root, key_id and
/// signature. Problems come grouped by (run, shard), in seq order; empty means all is well.
/// The set cannot show a missing tail: a chain's last commitments may be absent unnoticed.
pub fn verify_commitments(commitments: &[Commitment], pk: &VerifyingKey) -> Vec<CommitmentProblem> {
    let mut ordered: Vec<&Commitment> = commitments.iter().collect();
    ordered.sort_by(|a, b| (&a.run, a.shard, a.seq).cmp(&(&b.run, b.shard, b.seq)));
    let mut verifier = ChainVerifier::new(pk);
    ordered.into_iter().flat_map(|c| verifier.check(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[42; 32])
    }

    fn leaves(tag: &str, n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| merkle::leaf_hash(format!("{tag}-{i}").as_bytes()))
            .collect()
    }

    /// Three commitments on shard 3 and two on shard 4, sealed in order.
    fn sealed() -> Vec<Commitment> {
        let sk = key();
        let mut a = Chain::new(RUN, 3);
        let mut b = Chain::new(RUN, 4);
        vec![
            a.seal(0, &leaves("a0", 3), &sk),
            b.seal(0, &leaves("b0", 1), &sk),
            a.seal(1, &leaves("a1", 5), &sk),
            a.seal_tree(2, &Tree::new(leaves("a2", 2)), &sk),
            b.seal(1, &leaves("b1", 64), &sk),
        ]
    }

    fn kinds(problems: &[CommitmentProblem]) -> Vec<(u32, u64, ProblemKind)> {
        problems
            .iter()
            .map(|p| (p.shard, p.seq, p.kind.clone()))
            .collect()
    }

    #[test]
    fn message_has_the_spec_layout_and_length() {
        let m = message(&RUN, 3, 1, 5, &[0xaa; 32], &[0xbb; 32]);
        assert_eq!(m.len(), MESSAGE_LEN);
        let mut want = b"bizra/commitment/v1\x00".to_vec();
        want.extend_from_slice(&RUN);
        want.extend_from_slice(&[0, 0, 0, 3]);
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&5u64.to_be_bytes());
        want.extend_from_slice(&[0xaa; 32]);
        want.extend_from_slice(&[0xbb; 32]);
        assert_eq!(m, want);
        assert_eq!(run_id_hex(&RUN), "0123456789abcdef");
    }

    #[test]
    fn seal_chains_prev_to_the_hash_of_the_previous_message() {
        let sk = key();
        let mut chain = Chain::new(RUN, 3);
        let first = chain.seal(0, &leaves("x", 3), &sk);
        assert_eq!(first.prev, hex::encode([0u8; 32]));
        let root0 = merkle::root(&leaves("x", 3));
        let m0 = message(&RUN, 3, 0, 3, &root0, &[0; 32]);
        let h0: Hash = Sha3_256::digest(&m0).into();
        assert_eq!(chain.prev(), h0);
        assert_eq!(chain.next_seq(), 1);
        let second = chain.seal(1, &leaves("y", 2), &sk);
        assert_eq!(second.prev, hex::encode(h0));
        assert_eq!(second.tree_size, 2);
        assert_eq!(second.key_id, key_id(&sk.verifying_key()));
    }

    #[test]
    fn seal_tree_and_seal_agree() {
        let sk = key();
        let l = leaves("z", 7);
        let by_slice = Chain::new(RUN, 1).seal(0, &l, &sk);
        let by_tree = Chain::new(RUN, 1).seal_tree(0, &Tree::new(l), &sk);
        assert_eq!(by_slice, by_tree);
    }

    #[test]
    #[should_panic(expected = "expected seq 0, found 1")]
    fn sealing_out_of_order_panics() {
        Chain::new(RUN, 0).seal(1, &leaves("x", 1), &key());
    }

    #[test]
    fn an_honest_chain_in_any_order_has_no_problem() {
        let mut cs = sealed();
        let pk = key().verifying_key();
        assert_eq!(verify_commitments(&cs, &pk), Vec::new());
        cs.reverse();
        assert_eq!(verify_commitments(&cs, &pk), Vec::new());
    }

    #[test]
    fn redelivered_duplicates_are_not_problems_but_forks_are() {
        let pk = key().verifying_key();
        let mut cs = sealed();
        cs.push(cs[2].clone());
        assert_eq!(verify_commitments(&cs, &pk), Vec::new());

        let mut fork = cs[2].clone();
        fork.leaves.pop();
        fork.tree_size -= 1;
        cs.push(fork);
        let found = kinds(&verify_commitments(&cs, &pk));
        assert_eq!(found[0], (3, 1, ProblemKind::Fork), "{found:?}");
        assert!(
            found.iter().all(|(_, seq, _)| *seq == 1),
            "seq 2 still chains to the first seq 1: {found:?}"
        );
    }

    #[test]
    fn an_altered_leaf_is_reported_as_a_root_mismatch() {
        let pk = key().verifying_key();
        let mut cs = sealed();
        cs[2].leaves[1] = hex::encode([0u8; 32]);
        let problems = verify_commitments(&cs, &pk);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(matches!(problems[0].kind, ProblemKind::Root { .. }));
        assert_eq!((problems[0].shard, problems[0].seq), (3, 1));
        let text = problems[0].to_string();
        assert!(text.starts_with("commitment run 0123456789abcdef shard 3 seq 1: expected root "));
    }

    #[test]
    fn a_missing_commitment_breaks_seq_and_a_tampered_prev_breaks_chain_and_signature() {
        let pk = key().verifying_key();
        let mut cs = sealed();
        cs.remove(2); // shard 3 seq 1
        assert_eq!(
            kinds(&verify_commitments(&cs, &pk)),
            vec![(
                3,
                2,
                ProblemKind::Seq {
                    expected: 1,
                    found: 2
                }
            )]
        );

        let mut cs = sealed();
        cs[3].prev = hex::encode([1u8; 32]);
        let found = kinds(&verify_commitments(&cs, &pk));
        assert!(matches!(found[0], (3, 2, ProblemKind::Prev { .. })), "{found:?}");
        assert_eq!(found[1], (3, 2, ProblemKind::BadSignature));
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn wrong_tree_size_key_and_signature_are_each_named() {
        let pk = key().verifying_key();
        let mut cs = sealed();
        cs[0].tree_size = 4;
        let found = kinds(&verify_commitments(&cs[..1], &pk));
        assert_eq!(
            found,
            vec![
                (
                    3,
                    0,
                    ProblemKind::TreeSize {
                        expected: 3,
                        found: 4
                    }
                ),
                (3, 0, ProblemKind::BadSignature)
            ]
        );

        let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let found = kinds(&verify_commitments(&sealed()[..1], &other));
        assert!(matches!(found[0].2, ProblemKind::KeyId { .. }));
        assert_eq!(found[1].2, ProblemKind::BadSignature);
    }

    #[test]
    fn malformed_fields_are_reported_not_panicked_on() {
        let pk = key().verifying_key();
        let mut c = sealed().remove(0);
        c.run = "xyz".into();
        c.signature = "!!".into();
        c.leaves[0] = "00".into();
        let found = kinds(&verify_commitments(&[c], &pk));
        let fields: Vec<&str> = found
            .iter()
            .map(|(_, _, k)| match k {
                ProblemKind::Malformed { field, .. } => *field,
                _ => "other",
            })
            .collect();
        assert_eq!(fields, vec!["run", "leaves", "signature"]);
    }

    #[test]
    fn a_chain_not_starting_at_zero_is_reported() {
        let pk = key().verifying_key();
        let cs = sealed();
        assert_eq!(
            kinds(&verify_commitments(&cs[2..4], &pk)),
            vec![(
                3,
                1,
                ProblemKind::Seq {
                    expected: 0,
                    found: 1
                }
            )]
        );
    }

    #[test]
    fn commitment_serialises_with_spec_field_order() {
        let c = sealed().remove(0);
        let json = serde_json::to_string(&c).unwrap();
        let keys = [
            "shard",
            "seq",
            "run",
            "tree_size",
            "root",
            "prev",
            "leaves",
            "key_id",
            "signature",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| json.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert_eq!(serde_json::from_str::<Commitment>(&json).unwrap(), c);
    }
}
