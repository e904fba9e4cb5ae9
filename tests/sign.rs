//! `bizra sign` and the README's Python signer: what they sign, `bizra run` verifies (`ok`
//! on the tiers that check every signature); a bad line stops the signer with its number.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use bizra_dataflows::verification::signature;
use serde_json::{json, Value};

use crate::cli::{bizra, keygen, ok, read_jsonl};

/// Runs `cmd` with `input` on its stdin.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The keyring name bizra gives a public key (standard base64).
fn key_id(public_key: &str) -> String {
    signature::key_id(&signature::parse_public_key(public_key).unwrap())
}

/// Runs `bizra run` on `signed` with a keyring trusting `public_key`; the verdicts by id.
fn verdicts(dir: &Path, signed: &Path, public_key: &str) -> HashMap<String, Value> {
    let ring = dir.join("ring.toml");
    let entry = format!("{} = \"{public_key}\"", key_id(public_key));
    std::fs::write(&ring, format!("[keys]\n{entry}\n")).unwrap();
    let out = dir.join("verdicts.jsonl");
    ok(bizra()
        .args(["run", "-q", "--input"])
        .arg(signed)
        .arg("--output")
        .arg(&out)
        .arg("--keyring")
        .arg(&ring)
        .output()
        .unwrap());
    read_jsonl(&out)
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// Asserts the verdict's digest and signature checks, on a tier that checks every signature.
fn assert_checks(v: &Value, digest: &str, sig: &str) {
    let ver = &v["verification"];
    assert!(
        ver["tier"] == "full" || ver["tier"] == "incremental",
        "a tier that samples: {v}"
    );
    assert_eq!(ver["checks"]["digest"], digest, "{v}");
    assert_eq!(ver["checks"]["signature"], sig, "{v}");
}

/// Observations of both payload kinds, non-ASCII ids and text, on the two urgencies whose
/// tiers verify every signature.
fn observations() -> Vec<Value> {
    vec![
        json!({"id": "s-1", "data": "hello ☕ world", "urgency": "batch"}),
        json!({"id": "s-2", "data_b64": "AAEC/w==", "urgency": "near_real_time"}),
        json!({"id": "café-3", "data": "naïve", "urgency": "near_real_time",
               "source": "edge-9", "context": {"domain": "finance"}}),
        json!({"id": "s-4", "data_b64": "", "urgency": "batch"}),
    ]
}

fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

#[test]
fn signed_observations_verify_ok_and_a_tampered_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public_key) = keygen(dir.path());
    let kid = key_id(&public_key);
    let mut records = observations();
    // Already carries a digest and a signature under the right key id, both wrong: replaced.
    records.push(json!({
        "id": "s-5", "data": "re-signed", "urgency": "batch",
        "digest": format!("sha256:{}", "0".repeat(64)),
        "signature": {"key_id": kid, "sig": base64_zeros()},
    }));
    records.push(json!({"id": "s-6", "data": "to be tampered with", "urgency": "batch"}));
    let mut input = jsonl(&records);
    input.insert(0, '\n'); // a blank line passes through
    let unsigned = dir.path().join("in.jsonl");
    std::fs::write(&unsigned, &input).unwrap();
    let signed = dir.path().join("signed.jsonl");
    let out = ok(bizra()
        .args(["sign", "--key"])
        .arg(&key)
        .arg("--input")
        .arg(&unsigned)
        .arg("--output")
        .arg(&signed)
        .output()
        .unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("key_id: {kid} (keyring line: {kid} = \"{public_key}\")")),
        "{stderr}"
    );

    let text = std::fs::read_to_string(&signed).unwrap();
    assert!(text.starts_with('\n'), "the blank line is kept: {text:?}");
    let mut out: Vec<Value> = read_jsonl(&signed);
    assert_eq!(out.len(), records.len());
    for (o, r) in out.iter().zip(&records) {
        for (k, v) in r.as_object().unwrap() {
            if k != "digest" && k != "signature" {
                assert_eq!(&o[k], v, "field {k} kept");
            }
        }
        assert_eq!(o["signature"]["key_id"], kid.as_str());
    }
    assert_ne!(out[4]["signature"]["sig"], records[4]["signature"]["sig"]);
    out[5]["data"] = json!("tampered with");
    std::fs::write(&signed, jsonl(&out)).unwrap();

    let by_id = verdicts(dir.path(), &signed, &public_key);
    assert_eq!(by_id.len(), records.len());
    for r in &records[..5] {
        assert_checks(&by_id[r["id"].as_str().unwrap()], "ok", "ok");
    }
    assert_checks(&by_id["s-6"], "mismatch", "bad");
}

fn base64_zeros() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([0u8; 64])
}

/// The README's Python signer, between its `<!-- sign-python -->` markers.
fn readme_snippet() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- sign-python -->\n```python\n")
        .expect("README.md has a <!-- sign-python --> block");
    let rest = &readme[start..];
    let body = &rest[rest.find('\n').unwrap() + 1..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body
        .find("```\n<!-- /sign-python -->")
        .expect("the block ends with ``` and <!-- /sign-python -->");
    body[..end].to_owned()
}

/// Fails, not skips, without python3 and its `cryptography` package.
fn require_python_cryptography() {
    let out = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3 to run the README's signer: {e}"));
    assert!(
        out.status.success(),
        "this test needs the Python package `cryptography` (scripts/test installs it; by hand: \
         python3 -m pip install --user cryptography): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_readme_python_signer_signs_what_bizra_verifies_byte_for_byte_as_bizra_sign() {
    require_python_cryptography();
    let dir = tempfile::tempdir().unwrap();
    let (key, public_key) = keygen(dir.path());
    let script = dir.path().join("sign.py");
    std::fs::write(&script, readme_snippet()).unwrap();
    let input = jsonl(&observations());

    let py = with_stdin(Command::new("python3").arg(&script).arg(&key), &input);
    assert!(
        py.status.success(),
        "the README's signer failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let signed = dir.path().join("signed.jsonl");
    std::fs::write(&signed, &py.stdout).unwrap();

    // Ed25519 signatures are deterministic: the same key and message give the same bytes.
    let ours = ok(with_stdin(bizra().args(["sign", "--key"]).arg(&key), &input));
    let theirs = read_jsonl(&signed);
    let ours: Vec<Value> = String::from_utf8(ours.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(theirs.len(), observations().len());
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o["digest"], t["digest"], "{t}");
        assert_eq!(o["signature"], t["signature"], "{t}");
    }

    let by_id = verdicts(dir.path(), &signed, &public_key);
    assert_eq!(by_id.len(), theirs.len());
    for v in by_id.values() {
        assert_checks(v, "ok", "ok");
    }
}

#[test]
fn a_line_that_is_not_json_exits_1_naming_its_line_after_writing_the_lines_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path());
    let input = "{\"id\":\"a\",\"data\":\"x\"}\n\nnot json {\n{\"id\":\"b\",\"data\":\"y\"}\n";
    let out = with_stdin(bizra().args(["sign", "--key"]).arg(&key), input);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stdin, line 3: not valid JSON"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains("\"signature\"") && lines[1].is_empty(),
        "{stdout}"
    );
}
