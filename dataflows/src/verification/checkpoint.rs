//! Signed checkpoints of the decision log (SPEC §3.4): the C2SP `tlog-checkpoint` body (origin,
//! tree size, base64 root, extension lines) inside a C2SP `signed-note` with an Ed25519
//! signature, bizra's origin names, and the note key strings an auditor configures. It does not
//! compute roots or proofs (`tlog.rs`), choose when to sign, nor load keys.
//!
//! A note is its text (ending in a newline), a blank line, then signature lines
//! `— <key name> <base64(key hash ‖ signature)>` with an EM DASH (U+2014); the key hash is the
//! first 4 bytes of SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key). This is the encoding of
//! `golang.org/x/mod/sumdb/note`, whose published example the tests open and reproduce.
//! bizra signs with the node key under the key name = the checkpoint's origin.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// Signature type byte of Ed25519 note signatures (C2SP signed-note).
pub const ED25519_TYPE: u8 = 0x01;

/// Most signature lines read from one note, as `golang.org/x/mod/sumdb/note` (the C2SP format
/// asks verifiers to accept at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Opens every signature line: EM DASH (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// A checkpoint or note that cannot be made, read or trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Note text (or a checkpoint body) must end in a newline.
    #[error("expected text ending in a newline, found it ending in {found:?}")]
    NoFinalNewline {
        /// The end of the text.
        found: String,
    },
    /// A checkpoint body has origin, size and root lines at least.
    #[error("checkpoint body: expected at least 3 lines (origin, tree size, root hash), found {found}")]
    TooFewLines {
        /// Lines found.
        found: usize,
    },
    /// The origin line is empty.
    #[error("checkpoint body: expected a non-empty origin on line 1, found an empty line")]
    EmptyOrigin,
    /// The tree size line is not canonical decimal.
    #[error(
        "checkpoint body: expected the tree size in decimal without leading zeros on line 2, found {found:?}"
    )]
    Size {
        /// The line found.
        found: String,
    },
    /// The root line is not a 32-byte hash in standard padded base64.
    #[error(
        "checkpoint body: expected the standard padded base64 of a 32-byte root on line 3, found {found:?}"
    )]
    Root {
        /// The line found.
        found: String,
    },
    /// Extension lines may not be empty.
    #[error("checkpoint body: expected a non-empty extension line, found line {line} empty")]
    EmptyExtension {
        /// 1-based line number.
        line: usize,
    },
    /// The checkpoint names another log than the key name it was opened with.
    #[error("expected a checkpoint of origin {expected:?} (the key name), found origin {found:?}")]
    OriginMismatch {
        /// The key name asked for.
        expected: String,
        /// The body's origin.
        found: String,
    },
    /// Key names are non-empty and have no Unicode spaces and no '+'.
    #[error("key name: expected non-empty text without spaces or '+', found {found:?}")]
    KeyName {
        /// The name given.
        found: String,
    },
    /// Notes carry no control characters but newlines.
    #[error("signed note: expected no control characters but newline, found {found:?} at byte {at}")]
    ControlCharacter {
        /// Byte offset in the note.
        at: usize,
        /// The character.
        found: char,
    },
    /// No blank line followed by signature lines ending in a newline.
    #[error("signed note: expected text, a blank line and signature lines ending in a newline, found {found:?} at the end")]
    NoSignatureBlock {
        /// The end of the note.
        found: String,
    },
    /// A line of the signature block that is not a signature line.
    #[error("signed note: expected a signature line `\u{2014} <key name> <base64 of key hash and signature>`, found {found:?}")]
    SignatureLine {
        /// The line (shortened).
        found: String,
    },
    /// More signature lines than [`MAX_SIGNATURES`].
    #[error("signed note: expected at most {MAX_SIGNATURES} signature lines, found more")]
    TooManySignatures,
    /// A signature line of the trusted key that does not verify.
    #[error("signed note: expected a valid signature by {name}+{key_hash} over the text, found one that does not verify")]
    BadSignature {
        /// The key name.
        name: String,
        /// Hex of the key hash.
        key_hash: String,
    },
    /// No signature line of the trusted key.
    #[error("signed note: expected a signature by {name}+{key_hash}, found signatures by [{found}]")]
    NoSignature {
        /// The key name.
        name: String,
        /// Hex of the key hash.
        key_hash: String,
        /// `name+hash` of the signature lines present.
        found: String,
    },
    /// A verifier key string that cannot be used.
    #[error("verifier key: expected <name>+<8 hex digits>+<base64 of 0x01 and a 32-byte Ed25519 key>, found {found:?} ({reason})")]
    VerifierKey {
        /// The key string (shortened).
        found: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One checkpoint body (C2SP tlog-checkpoint): a log's tree head at some size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name; bizra's are made by [`origin`]. Also the note key name.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 6962 root (SHA3-256, SPEC §3.1) over the first `size` leaves.
    pub root: Hash,
    /// Opaque extra lines, each non-empty; bizra writes none (C2SP advises against them).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text: origin, size in decimal, standard base64 root, then the extension lines,
    /// each ending in a newline.
    pub fn body(&self) -> String {
        let mut out = format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root));
        for line in &self.extensions {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Reads a body strictly: a final newline, a non-empty origin, a size without sign or
    /// leading zeros ("0" only for the empty tree), a root of exactly 32 bytes in canonical
    /// padded base64, and non-empty extension lines.
    pub fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let text = body
            .strip_suffix('\n')
            .ok_or_else(|| CheckpointError::NoFinalNewline { found: tail(body) })?;
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(CheckpointError::TooFewLines { found: lines.len() });
        };
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        if let Some(i) = extensions.iter().position(|l| l.is_empty()) {
            return Err(CheckpointError::EmptyExtension { line: 4 + i });
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size: parse_size(size).ok_or_else(|| CheckpointError::Size { found: shorten(size) })?,
            root: parse_root(root).ok_or_else(|| CheckpointError::Root { found: shorten(root) })?,
            extensions: extensions.iter().map(|l| l.to_string()).collect(),
        })
    }

    /// The signed note of this checkpoint under key name = its origin.
    pub fn sign(&self, key: &SigningKey) -> Result<String, CheckpointError> {
        sign_note(&self.body(), &self.origin, key)
    }
}

/// The origin (and note key name) of a bizra shard's log: `<deployment>/bizra/shard/<shard>`.
///
/// C2SP asks for a schema-less URL that no other log uses, so the deployment comes first and
/// should be a DNS name its operator controls (`decisions.example.org/bizra/shard/3`); the
/// rest names the log within it. `deployment` must pass [`valid_deployment_name`], otherwise
/// the origin is no valid key name and signing fails.
pub fn origin(deployment: &str, shard: u32) -> String {
    format!("{deployment}/bizra/shard/{shard}")
}

/// True when `name` can start an [`origin`]: non-empty, no Unicode spaces, no '+' (both are
/// forbidden in note key names) and no control characters (forbidden in notes).
pub fn valid_deployment_name(name: &str) -> bool {
    valid_key_name(name) && !name.chars().any(char::is_control)
}

/// True for a note key name: non-empty, without Unicode spaces or '+' (C2SP signed-note).
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The note key hash: the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
pub fn key_hash(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519_TYPE]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The verifier key string an auditor configures: `<name>+<hex key hash>+<base64(0x01 ‖ key)>`,
/// as `note.NewEd25519VerifierKey` writes it.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut typed = vec![ED25519_TYPE];
    typed.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(key_hash(name, key)),
        STANDARD.encode(typed)
    )
}

/// Reads a verifier key string back into its name and Ed25519 key, checking the key hash.
pub fn parse_verifier_key(vkey: &str) -> Result<(String, VerifyingKey), CheckpointError> {
    let bad = |reason| CheckpointError::VerifierKey {
        found: shorten(vkey),
        reason,
    };
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(hash), Some(key64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not three '+'-separated parts"));
    };
    if !valid_key_name(name) {
        return Err(bad("invalid key name"));
    }
    let mut hash_bytes = [0u8; 4];
    if hash.len() != 8 || hex::decode_to_slice(hash, &mut hash_bytes).is_err() {
        return Err(bad("key hash is not 8 hex digits"));
    }
    let typed = STANDARD
        .decode(key64)
        .map_err(|_| bad("key is not standard padded base64"))?;
    let Some((&ED25519_TYPE, raw)) = typed.split_first() else {
        return Err(bad("key type is not 0x01 (Ed25519)"));
    };
    let raw: &[u8; 32] = raw.try_into().map_err(|_| bad("key is not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(raw).map_err(|_| bad("key is not an Ed25519 point"))?;
    if key_hash(name, &key) != hash_bytes {
        return Err(bad("key hash does not match the name and key"));
    }
    Ok((name.to_string(), key))
}

/// Signs `text` as a note: the text, a blank line and one signature line by `key` under `name`.
/// The text must end in a newline and hold no control characters but newlines.
pub fn sign_note(text: &str, name: &str, key: &SigningKey) -> Result<String, CheckpointError> {
    if !valid_key_name(name) {
        return Err(CheckpointError::KeyName {
            found: name.to_string(),
        });
    }
    if !text.ends_with('\n') {
        return Err(CheckpointError::NoFinalNewline { found: tail(text) });
    }
    check_characters(text)?;
    let mut sig = key_hash(name, &key.verifying_key()).to_vec();
    sig.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
    Ok(format!("{text}\n{SIG_PREFIX}{name} {}\n", STANDARD.encode(sig)))
}

/// Verifies a note for one trusted key and returns its text (with the final newline).
///
/// Lines of other keys (another name or key hash) are skipped, as C2SP requires; every line of
/// the trusted key must verify, and at least one must be present. Any malformed line rejects
/// the note.
pub fn verify_note<'a>(note: &'a str, name: &str, key: &VerifyingKey) -> Result<&'a str, CheckpointError> {
    if !valid_key_name(name) {
        return Err(CheckpointError::KeyName {
            found: name.to_string(),
        });
    }
    check_characters(note)?;
    let no_block = || CheckpointError::NoSignatureBlock { found: tail(note) };
    let split = note.rfind("\n\n").ok_or_else(no_block)?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    let sigs = sigs
        .strip_suffix('\n')
        .filter(|s| !s.is_empty())
        .ok_or_else(no_block)?;
    let want = key_hash(name, key);
    let (mut verified, mut others) = (0usize, Vec::new());
    for (i, line) in sigs.split('\n').enumerate() {
        if i == MAX_SIGNATURES {
            return Err(CheckpointError::TooManySignatures);
        }
        let (line_name, raw) = parse_signature_line(line)?;
        let (hash, sig) = raw.split_at(4);
        if line_name != name || hash != want {
            others.push(format!("{line_name}+{}", hex::encode(hash)));
            continue;
        }
        let bad = || CheckpointError::BadSignature {
            name: name.to_string(),
            key_hash: hex::encode(want),
        };
        let sig = Signature::from_slice(sig).map_err(|_| bad())?;
        key.verify(text.as_bytes(), &sig).map_err(|_| bad())?;
        verified += 1;
    }
    if verified == 0 {
        return Err(CheckpointError::NoSignature {
            name: name.to_string(),
            key_hash: hex::encode(want),
            found: others.join(", "),
        });
    }
    Ok(text)
}

/// Verifies a checkpoint note for one trusted key (see [`verify_note`]) and parses its body,
/// whose origin must be the key name, as bizra signs them.
pub fn open_note(note: &str, name: &str, key: &VerifyingKey) -> Result<Checkpoint, CheckpointError> {
    let checkpoint = Checkpoint::parse_body(verify_note(note, name, key)?)?;
    if checkpoint.origin != name {
        return Err(CheckpointError::OriginMismatch {
            expected: name.to_string(),
            found: checkpoint.origin,
        });
    }
    Ok(checkpoint)
}

/// `— <name> <base64>` → the name and the decoded key hash ‖ signature (at least 5 bytes).
fn parse_signature_line(line: &str) -> Result<(&str, Vec<u8>), CheckpointError> {
    let bad = || CheckpointError::SignatureLine { found: shorten(line) };
    let (name, b64) = line
        .strip_prefix(SIG_PREFIX)
        .and_then(|l| l.split_once(' '))
        .ok_or_else(bad)?;
    let raw = STANDARD.decode(b64).map_err(|_| bad())?;
    if !valid_key_name(name) || raw.len() < 5 {
        return Err(bad());
    }
    Ok((name, raw))
}

/// Rejects control characters other than newline (C2SP signed-note).
fn check_characters(text: &str) -> Result<(), CheckpointError> {
    match text.char_indices().find(|&(_, c)| c < ' ' && c != '\n') {
        Some((at, found)) => Err(CheckpointError::ControlCharacter { at, found }),
        None => Ok(()),
    }
}

/// Canonical decimal: digits only, no leading zero but in "0", within u64.
fn parse_size(line: &str) -> Option<u64> {
    let digits = !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit());
    let canonical = digits && (line == "0" || !line.starts_with('0'));
    canonical.then(|| line.parse().ok()).flatten()
}

/// Standard padded base64 of exactly 32 bytes; the engine rejects non-canonical trailing bits.
fn parse_root(line: &str) -> Option<Hash> {
    STANDARD.decode(line).ok()?.try_into().ok()
}

/// At most 80 characters of `s`, for error messages.
fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The last 20 characters of `s`, for error messages about its end.
fn tail(s: &str) -> String {
    let n = s.chars().count();
    s.chars().skip(n.saturating_sub(20)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `golang.org/x/mod/sumdb/note`'s package example (note.go doc, note_test.go).
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_TEXT: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    /// The same package's second signer of that text.
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";
    /// The C2SP signed-note specification's example key and note.
    const FOO_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const FOO_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
    /// The C2SP tlog-checkpoint specification's example body.
    const SOFA_BODY: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: origin("decisions.example.org", 3),
            size: 1_000_001,
            root: std::array::from_fn(|i| (i * 7 + 1) as u8),
            extensions: Vec::new(),
        }
    }

    /// Decodes a note's last signature line, lets `f` change the raw bytes, writes it back.
    fn mangle_signature(note: &str, f: impl Fn(&mut Vec<u8>)) -> String {
        let (head, b64) = note.trim_end_matches('\n').rsplit_once(' ').unwrap();
        let mut raw = STANDARD.decode(b64).unwrap();
        f(&mut raw);
        format!("{head} {}\n", STANDARD.encode(raw))
    }

    #[test]
    fn body_is_origin_size_root_and_extensions_each_ending_in_newline() {
        let mut cp = checkpoint();
        let root64 = STANDARD.encode(cp.root);
        assert_eq!(
            cp.body(),
            format!("decisions.example.org/bizra/shard/3\n1000001\n{root64}\n")
        );
        cp.extensions = vec!["ext one".into(), "two".into()];
        assert_eq!(
            cp.body(),
            format!("decisions.example.org/bizra/shard/3\n1000001\n{root64}\next one\ntwo\n")
        );
        assert_eq!(Checkpoint::parse_body(&cp.body()), Ok(cp));
    }

    #[test]
    fn parse_body_reads_the_c2sp_example() {
        let cp = Checkpoint::parse_body(SOFA_BODY).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20_852_163);
        assert_eq!(
            STANDARD.encode(cp.root),
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
        );
        assert!(cp.extensions.is_empty());
        assert_eq!(cp.body(), SOFA_BODY);
        let empty = format!("log\n0\n{}\n", STANDARD.encode([0u8; 32]));
        assert_eq!(Checkpoint::parse_body(&empty).unwrap().size, 0);
    }

    #[test]
    fn parse_body_rejects_malformed_bodies_saying_what_it_found() {
        let r = STANDARD.encode([9u8; 32]);
        let size = |s: &str| CheckpointError::Size { found: s.into() };
        let root = |s: &str| CheckpointError::Root { found: s.into() };
        let cases = [
            (
                format!("log\n5\n{r}"),
                CheckpointError::NoFinalNewline {
                    found: r[r.len() - 20..].into(),
                },
            ),
            ("log\n5\n".to_string(), CheckpointError::TooFewLines { found: 2 }),
            (format!("\n5\n{r}\n"), CheckpointError::EmptyOrigin),
            (format!("log\n05\n{r}\n"), size("05")),
            (format!("log\n00\n{r}\n"), size("00")),
            (format!("log\n+5\n{r}\n"), size("+5")),
            (format!("log\n-1\n{r}\n"), size("-1")),
            (format!("log\n 5\n{r}\n"), size(" 5")),
            (format!("log\n\n{r}\n"), size("")),
            (
                format!("log\n18446744073709551616\n{r}\n"),
                size("18446744073709551616"),
            ),
            ("log\n5\nAAAA\n".to_string(), root("AAAA")),
            (
                format!("log\n5\n{}\n", r.trim_end_matches('=')),
                root(r.trim_end_matches('=')),
            ),
            (
                format!("log\n5\n{}\n", STANDARD.encode([9u8; 33])),
                root(&STANDARD.encode([9u8; 33])),
            ),
            ("log\n5\nnot base64!\n".to_string(), root("not base64!")),
            (
                format!("log\n5\n{r}\next\n\nmore\n"),
                CheckpointError::EmptyExtension { line: 5 },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(Checkpoint::parse_body(&body), Err(want), "{body:?}");
        }
        let msg = Checkpoint::parse_body(&format!("log\n05\n{r}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("without leading zeros") && msg.contains("\"05\""),
            "{msg}"
        );
        // Non-canonical trailing bits in the last base64 digit.
        let mut loose = r.clone();
        loose.replace_range(42..43, "B");
        assert_ne!(loose, r);
        assert!(matches!(
            Checkpoint::parse_body(&format!("log\n5\n{loose}\n")),
            Err(CheckpointError::Root { .. })
        ));
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_origin() {
        let k = key(1);
        let mut cp = checkpoint();
        let note = cp.sign(&k).unwrap();
        let sig_line = format!("{SIG_PREFIX}{} ", cp.origin);
        assert!(note.starts_with(&format!("{}\n{sig_line}", cp.body())), "{note}");
        assert_eq!(open_note(&note, &cp.origin, &k.verifying_key()), Ok(cp.clone()));
        cp.extensions.push("an extension".into());
        let note = cp.sign(&k).unwrap();
        assert_eq!(open_note(&note, &cp.origin, &k.verifying_key()), Ok(cp));
    }

    #[test]
    fn a_flipped_byte_in_body_or_signature_fails() {
        let (k, cp) = (key(1), checkpoint());
        let vk = k.verifying_key();
        let note = cp.sign(&k).unwrap();
        let bad = Err(CheckpointError::BadSignature {
            name: cp.origin.clone(),
            key_hash: hex::encode(key_hash(&cp.origin, &vk)),
        });
        let body_len = cp.body().len();
        for i in 0..body_len - 1 {
            let mut bytes = note.clone().into_bytes();
            if bytes[i] == b'\n' {
                continue;
            }
            bytes[i] ^= 0x01;
            let Ok(flipped) = String::from_utf8(bytes) else {
                continue;
            };
            assert_eq!(open_note(&flipped, &cp.origin, &vk), bad, "body byte {i}");
        }
        for i in 4..68 {
            let flipped = mangle_signature(&note, |raw| raw[i] ^= 0x10);
            assert_eq!(open_note(&flipped, &cp.origin, &vk), bad, "signature byte {i}");
        }
        let truncated = mangle_signature(&note, |raw| raw.truncate(67));
        assert_eq!(open_note(&truncated, &cp.origin, &vk), bad, "short signature");
        // A flipped key hash makes it another key's line: ours is then missing.
        let other_hash = mangle_signature(&note, |raw| raw[0] ^= 0x01);
        assert!(matches!(
            open_note(&other_hash, &cp.origin, &vk),
            Err(CheckpointError::NoSignature { .. })
        ));
    }

    #[test]
    fn another_key_or_name_does_not_open_the_note() {
        let (k, cp) = (key(1), checkpoint());
        let note = cp.sign(&k).unwrap();
        let other = key(2).verifying_key();
        let err = open_note(&note, &cp.origin, &other).unwrap_err();
        let ours = format!(
            "{}+{}",
            cp.origin,
            hex::encode(key_hash(&cp.origin, &k.verifying_key()))
        );
        assert_eq!(
            err,
            CheckpointError::NoSignature {
                name: cp.origin.clone(),
                key_hash: hex::encode(key_hash(&cp.origin, &other)),
                found: ours.clone(),
            }
        );
        assert!(err.to_string().contains(&ours), "{err}");
        let shard4 = origin("decisions.example.org", 4);
        assert!(matches!(
            open_note(&note, &shard4, &k.verifying_key()),
            Err(CheckpointError::NoSignature { .. })
        ));
        // Signed under a name that is not its origin: the signature holds, the origin does not.
        let misnamed = sign_note(&cp.body(), &shard4, &k).unwrap();
        assert_eq!(
            open_note(&misnamed, &shard4, &k.verifying_key()),
            Err(CheckpointError::OriginMismatch {
                expected: shard4.clone(),
                found: cp.origin.clone()
            })
        );
    }

    #[test]
    fn signatures_of_other_keys_are_skipped_but_a_bad_one_of_ours_is_not() {
        let (k, cp) = (key(1), checkpoint());
        let vk = k.verifying_key();
        let note = cp.sign(&k).unwrap();
        let witness = sign_note(&cp.body(), "witness.example/w1", &key(3)).unwrap();
        let witness_line = &witness[cp.body().len() + 1..];
        // A cosignature before and after ours; either key opens the note.
        for both in [
            format!("{}{witness_line}", note),
            note.replacen(SIG_PREFIX, &format!("{witness_line}{SIG_PREFIX}"), 1),
        ] {
            assert_eq!(open_note(&both, &cp.origin, &vk), Ok(cp.clone()));
            assert_eq!(
                verify_note(&both, "witness.example/w1", &key(3).verifying_key()),
                Ok(cp.body().as_str())
            );
        }
        // A second, broken line of our key rejects the note although the first verifies.
        let our_line = &note[cp.body().len() + 1..];
        let broken = mangle_signature(&note, |raw| raw[10] ^= 1);
        let twice = format!("{note}{}", &broken[cp.body().len() + 1..]);
        assert_ne!(&broken[cp.body().len() + 1..], our_line);
        assert!(matches!(
            open_note(&twice, &cp.origin, &vk),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    #[test]
    fn malformed_notes_are_rejected_before_any_signature_is_checked() {
        let (k, cp) = (key(1), checkpoint());
        let vk = k.verifying_key();
        let note = cp.sign(&k).unwrap();
        let o = &cp.origin;
        assert!(matches!(
            open_note(&note.replace('\n', "\r\n"), o, &vk),
            Err(CheckpointError::ControlCharacter { found: '\r', .. })
        ));
        assert!(matches!(
            open_note(note.trim_end(), o, &vk),
            Err(CheckpointError::NoSignatureBlock { .. })
        ));
        assert!(matches!(
            open_note(&cp.body(), o, &vk),
            Err(CheckpointError::NoSignatureBlock { .. })
        ));
        assert!(matches!(
            open_note(&format!("{}\n\n", cp.body()), o, &vk),
            Err(CheckpointError::NoSignatureBlock { .. })
        ));
        let hyphen = note.replace(SIG_PREFIX, "- ");
        assert!(matches!(
            open_note(&hyphen, o, &vk),
            Err(CheckpointError::SignatureLine { .. })
        ));
        let extra = format!("{note}\u{2014} other notbase64!\n");
        assert!(matches!(
            open_note(&extra, o, &vk),
            Err(CheckpointError::SignatureLine { .. })
        ));
        let plus = format!("{note}\u{2014} a+b AAAAAAA=\n");
        assert!(matches!(
            open_note(&plus, o, &vk),
            Err(CheckpointError::SignatureLine { .. })
        ));
        let line = &note[cp.body().len() + 1..];
        let many = format!("{}\n{}", cp.body(), line.repeat(MAX_SIGNATURES + 1));
        assert_eq!(open_note(&many, o, &vk), Err(CheckpointError::TooManySignatures));
        let enough = format!("{}\n{}", cp.body(), line.repeat(MAX_SIGNATURES));
        assert_eq!(open_note(&enough, o, &vk), Ok(cp.clone()));
        assert_eq!(
            open_note(&note, "a name", &vk),
            Err(CheckpointError::KeyName {
                found: "a name".into()
            })
        );
    }

    #[test]
    fn sign_note_refuses_what_no_verifier_could_open() {
        let k = key(1);
        assert_eq!(
            sign_note("x\n", "", &k),
            Err(CheckpointError::KeyName { found: String::new() })
        );
        assert_eq!(
            sign_note("x\n", "a+b", &k),
            Err(CheckpointError::KeyName { found: "a+b".into() })
        );
        assert_eq!(
            sign_note("x\n", "a\u{a0}b", &k),
            Err(CheckpointError::KeyName {
                found: "a\u{a0}b".into()
            })
        );
        assert_eq!(
            sign_note("x", "a", &k),
            Err(CheckpointError::NoFinalNewline { found: "x".into() })
        );
        assert_eq!(
            sign_note("x\ty\n", "a", &k),
            Err(CheckpointError::ControlCharacter { at: 1, found: '\t' })
        );
        let bad_origin = Checkpoint {
            origin: origin("my deployment", 0),
            ..checkpoint()
        };
        assert!(matches!(
            bad_origin.sign(&k),
            Err(CheckpointError::KeyName { .. })
        ));
    }

    #[test]
    fn go_note_example_verifies_and_signing_reproduces_it() {
        let (name, vk) = parse_verifier_key(PETER_VKEY).unwrap();
        assert_eq!(name, "PeterNeumann");
        assert_eq!(hex::encode(key_hash(&name, &vk)), "c74f20a3");
        assert_eq!(verifier_key(&name, &vk), PETER_VKEY);
        let note = format!("{PETER_TEXT}\n{PETER_SIG}");
        assert_eq!(verify_note(&note, &name, &vk), Ok(PETER_TEXT));
        // Ed25519 is deterministic: the published signing key (PRIVATE+KEY+<name>+<hash>+
        // <base64 of 0x01 and the seed>) reproduces the note exactly.
        let typed = STANDARD
            .decode(PETER_SKEY.splitn(5, '+').nth(4).unwrap())
            .unwrap();
        assert_eq!(typed[0], ED25519_TYPE);
        let sk = SigningKey::from_bytes(typed[1..].try_into().unwrap());
        assert_eq!(sk.verifying_key(), vk);
        assert_eq!(sign_note(PETER_TEXT, &name, &sk), Ok(note.clone()));
        // The text is no checkpoint: the signature passes, the body does not.
        assert_eq!(
            open_note(&note, &name, &vk),
            Err(CheckpointError::TooFewLines { found: 2 })
        );
    }

    #[test]
    fn go_note_doubly_signed_example_opens_with_either_key() {
        let note = format!("{PETER_TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        for vkey in [PETER_VKEY, ENOCH_VKEY] {
            let (name, vk) = parse_verifier_key(vkey).unwrap();
            assert_eq!(verify_note(&note, &name, &vk), Ok(PETER_TEXT), "{name}");
        }
    }

    #[test]
    fn c2sp_signed_note_example_verifies() {
        let (name, vk) = parse_verifier_key(FOO_VKEY).unwrap();
        assert_eq!(name, "example.com/foo");
        assert_eq!(
            verify_note(FOO_NOTE, &name, &vk),
            Ok("This is an example message.\n")
        );
        let (_, peter) = parse_verifier_key(PETER_VKEY).unwrap();
        assert!(matches!(
            verify_note(FOO_NOTE, &name, &peter),
            Err(CheckpointError::NoSignature { .. })
        ));
    }

    #[test]
    fn parse_verifier_key_rejects_every_truncation_and_changed_character() {
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let part = &PETER_VKEY[i..j];
                    assert!(parse_verifier_key(part).is_err(), "{part:?}");
                }
            }
        }
        for i in 0..b.len() {
            let mut changed = b.to_vec();
            changed[i] += 1;
            let changed = String::from_utf8(changed).unwrap();
            assert!(parse_verifier_key(&changed).is_err(), "{changed:?}");
        }
        let err = parse_verifier_key("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .unwrap_err();
        assert!(err.to_string().contains("key hash does not match"), "{err}");
    }

    #[test]
    fn verifier_key_round_trips_for_a_bizra_origin() {
        let vk = key(5).verifying_key();
        let name = origin("decisions.example.org", 12);
        let vkey = verifier_key(&name, &vk);
        assert!(
            vkey.starts_with("decisions.example.org/bizra/shard/12+"),
            "{vkey}"
        );
        assert_eq!(parse_verifier_key(&vkey), Ok((name, vk)));
    }

    #[test]
    fn deployment_names_exclude_spaces_plus_and_control_characters() {
        assert_eq!(
            origin("decisions.example.org", 7),
            "decisions.example.org/bizra/shard/7"
        );
        for good in ["prod", "decisions.example.org", "eu-west/1", "ünïcode"] {
            assert!(valid_deployment_name(good), "{good:?}");
            assert!(valid_key_name(&origin(good, 0)));
        }
        for bad in [
            "",
            "a b",
            "a+b",
            "a\tb",
            "a\nb",
            "a\u{2003}b",
            "a\u{7f}b",
            "a\u{0}b",
        ] {
            assert!(!valid_deployment_name(bad), "{bad:?}");
        }
    }
}
