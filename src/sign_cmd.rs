//! `bizra sign`: signs observations as a producer would — reads JSONL line by line and writes
//! each record back with its `digest` and SPEC §3.2 `signature` set under one key. It does not
//! check signatures (`bizra run` does) nor apply a deployment's size limits, and it never skips
//! a record: the first line it cannot sign stops it with an error naming that line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bizra_dataflows::decode::{decode, Limits};
use bizra_dataflows::verification::sha256_ref;
use bizra_dataflows::verification::signature::{key_id, observation_message};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde_json::{Map, Value};

use crate::io::InputSpec;

/// Why `bizra sign` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The input file could not be opened or the output file created.
    #[error("{}: cannot open", path.display())]
    Open { path: PathBuf, source: io::Error },
    /// Reading the input failed.
    #[error("{input}: read error")]
    Read { input: String, source: io::Error },
    /// Writing the output failed (a full disk, a closed pipe).
    #[error("{output}: write error")]
    Write { output: String, source: io::Error },
    /// The output is the input file: creating it would empty the input before it is read.
    #[error("{}: is both --input and --output; write the signed records to another file", path.display())]
    SameFile { path: PathBuf },
    /// A line that is not an observation bizra would accept; the lines before it were written.
    #[error("{input}, line {line}: {problem} (stopped here; the lines before it were written)")]
    Record {
        input: String,
        line: u64,
        problem: String,
    },
}

/// A producer's key and its keyring name.
pub struct Signer {
    key: SigningKey,
    /// [`key_id`] of the public key: what `signature.key_id` names, and the keyring entry's
    /// name that bizra looks it up by.
    key_id: String,
}

/// The keyring line that trusts `key` under `name`: `<name> = "<standard base64 of the
/// 32-byte public key>"`, one entry of a keyring's `[keys]` table.
pub fn keyring_entry(name: &str, key: &VerifyingKey) -> String {
    format!("{name} = \"{}\"", STANDARD.encode(key.as_bytes()))
}

impl Signer {
    pub fn new(key: SigningKey) -> Signer {
        let key_id = key_id(&key.verifying_key());
        Signer { key, key_id }
    }

    /// The name signatures carry in `signature.key_id`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The keyring line an operator adds so that bizra checks this signer's records.
    pub fn keyring_line(&self) -> String {
        keyring_entry(&self.key_id, &self.key.verifying_key())
    }

    /// One record (a JSON object) with `digest` and `signature` set, replacing any it had;
    /// every other field is kept (in serde_json's key order). The record must otherwise be an
    /// observation bizra accepts (SPEC §1.1, the same decoder), except that sizes are not
    /// capped: `[limits]` belong to the deployment and apply when bizra reads it. The error
    /// says what is wrong with the record.
    pub fn sign_record(&self, line: &[u8]) -> Result<Vec<u8>, String> {
        let mut record: Map<String, Value> = serde_json::from_slice(line).map_err(|e| {
            if e.is_data() {
                format!("expected a JSON object, found another JSON value ({e})")
            } else {
                format!("not valid JSON ({e})")
            }
        })?;
        // The old digest and signature are replaced, so they need not be valid.
        record.remove("digest");
        record.remove("signature");
        let bare = serde_json::to_vec(&record).expect("a JSON object serializes");
        let obs = decode(&bare, &uncapped()).map_err(|e| e.to_string())?;
        let sig = self.key.sign(&observation_message(&obs.id, &obs.payload_sha256));
        record.insert("digest".into(), sha256_ref(&obs.payload_sha256).into());
        record.insert(
            "signature".into(),
            serde_json::json!({ "key_id": self.key_id, "sig": STANDARD.encode(sig.to_bytes()) }),
        );
        Ok(serde_json::to_vec(&record).expect("a JSON object serializes"))
    }
}

/// Decoding limits with no caps (a quarter of the address space, so that the decoder's size
/// arithmetic cannot overflow).
fn uncapped() -> Limits {
    Limits {
        max_payload_bytes: usize::MAX / 4,
        max_context_items: usize::MAX / 4,
        max_text_bytes: usize::MAX / 4,
    }
}

/// True when `a` and `b` name one existing file (the same path, a link, `./x` and `x`).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Signs `input` (a path, or `-` for stdin) into `output` (a path, or `-` for stdout), one
/// record at a time. Returns how many records were signed.
pub fn sign(signer: &Signer, input: &str, output: &str) -> Result<u64, SignError> {
    let spec = InputSpec::parse(input);
    let reader: Box<dyn BufRead> = match &spec {
        InputSpec::Stdin => Box::new(io::stdin().lock()),
        InputSpec::File(path) => Box::new(BufReader::new(File::open(path).map_err(|source| {
            SignError::Open {
                path: path.clone(),
                source,
            }
        })?)),
    };
    let (writer, output_name): (Box<dyn Write>, String) = if output == "-" {
        (Box::new(io::stdout().lock()), "stdout".into())
    } else {
        if let InputSpec::File(path) = &spec {
            if same_file(path, Path::new(output)) {
                return Err(SignError::SameFile { path: path.clone() });
            }
        }
        let file = File::create(output).map_err(|source| SignError::Open {
            path: output.into(),
            source,
        })?;
        (Box::new(file), output.into())
    };
    sign_lines(
        signer,
        reader,
        BufWriter::new(writer),
        &spec.topic(),
        &output_name,
    )
}

/// Signs each line of `input` into `output`: blank lines are copied unchanged, every other
/// line must be an observation ([`Signer::sign_record`]). Stops at the first line that is not,
/// after writing out the lines before it. Returns how many records were signed. The names say
/// which input and output an error is about.
pub fn sign_lines(
    signer: &Signer,
    mut input: impl BufRead,
    mut output: impl Write,
    input_name: &str,
    output_name: &str,
) -> Result<u64, SignError> {
    let mut line = Vec::new();
    let (mut line_no, mut signed) = (0, 0);
    let write_error = |source| SignError::Write {
        output: output_name.to_owned(),
        source,
    };
    let result = loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break Ok(signed),
            Ok(_) => line_no += 1,
            Err(source) => {
                let input = input_name.to_owned();
                break Err(SignError::Read { input, source });
            }
        }
        let written = if line.iter().all(u8::is_ascii_whitespace) {
            output.write_all(&line)
        } else {
            let record = match signer.sign_record(&line) {
                Ok(record) => record,
                Err(problem) => {
                    let input = input_name.to_owned();
                    break Err(SignError::Record {
                        input,
                        line: line_no,
                        problem,
                    });
                }
            };
            signed += 1;
            output.write_all(&record).and_then(|()| output.write_all(b"\n"))
        };
        if let Err(e) = written {
            break Err(write_error(e));
        }
    };
    let flushed = output.flush().map_err(write_error);
    result.and_then(|signed| flushed.map(|()| signed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizra_dataflows::observation::SignatureRef;
    use ed25519_dalek::Verifier as _;
    use sha2::{Digest, Sha256};

    fn signer() -> Signer {
        Signer::new(SigningKey::from_bytes(&[3; 32]))
    }

    #[test]
    fn the_input_file_as_output_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obs.jsonl");
        let text = "{\"id\":\"a\",\"data_b64\":\"AA==\"}\n";
        std::fs::write(&path, text).unwrap();
        let same = dir.path().join(".").join("obs.jsonl");
        let err = sign(&signer(), path.to_str().unwrap(), same.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, SignError::SameFile { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "the input is untouched"
        );
    }

    #[test]
    fn a_signed_record_decodes_with_its_digest_and_a_signature_that_verifies() {
        let s = signer();
        let line = br#"{"id":"caf\u00e9-1","data_b64":"AAEC/w==","urgency":"batch","digest":"junk","signature":{"key_id":"x","sig":"!"},"extra":[1,2]}"#;
        let out = s.sign_record(line).unwrap();
        let obs = decode(&out, &Limits::default()).unwrap();
        let payload_sha: [u8; 32] = Sha256::digest([0u8, 1, 2, 255]).into();
        assert_eq!(obs.payload_sha256, payload_sha);
        assert_eq!(obs.digest, Some(payload_sha));
        let SignatureRef { key_id, sig } = obs.signature.unwrap();
        assert_eq!(key_id, s.key_id());
        let msg = observation_message("café-1", &payload_sha);
        let vk = s.key.verifying_key();
        assert!(vk
            .verify(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["extra"], serde_json::json!([1, 2]));
        assert_eq!(v["urgency"], "batch");
    }

    #[test]
    fn blank_lines_pass_through_and_a_bad_line_stops_with_its_number() {
        let s = signer();
        let input = "{\"id\":\"a\",\"data\":\"x\"}\n\n  \n{\"id\":\"b\",\"data\":\"y\"}\n";
        let mut out = Vec::new();
        assert_eq!(
            sign_lines(&s, input.as_bytes(), &mut out, "in.jsonl", "out.jsonl").unwrap(),
            2
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(&lines[1..3], ["", "  "]);
        assert!(lines[3].contains("\"id\":\"b\"") && lines[3].contains("\"signature\""));

        let input = "{\"id\":\"a\",\"data\":\"x\"}\n\n{\"id\":\"b\"}\n{\"id\":\"c\",\"data\":\"z\"}\n";
        let mut out = Vec::new();
        let err = sign_lines(&s, input.as_bytes(), &mut out, "in.jsonl", "out.jsonl").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("in.jsonl, line 3: missing_field"), "{msg}");
        assert!(msg.contains("`data`"), "{msg}");
        let written = String::from_utf8(out).unwrap();
        assert_eq!(written.lines().count(), 2, "the lines before it: {written}");
        assert!(!written.contains("\"c\""));
    }

    #[test]
    fn records_that_are_not_observations_are_refused_with_the_problem() {
        let s = signer();
        for (line, expected) in [
            (&b"not json"[..], "not valid JSON"),
            (b"[1,2]", "expected a JSON object"),
            (br#"{"id":"","data":"x"}"#, "field `id`"),
            (br#"{"id":"a","data":"x","data_b64":"eA=="}"#, "found both"),
            (br#"{"id":"a","data_b64":"%%%"}"#, "field `data_b64`"),
        ] {
            let err = s.sign_record(line).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
