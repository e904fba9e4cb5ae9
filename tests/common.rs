//! Helpers shared by the test modules.

use serde_json::Value;

/// The fields of a verdict (or dead letter) that must be identical however often and on
/// whatever layout it is computed (SPEC §1.2). Removed: `batch`, `proof`, `latency_ms`, a dead
/// letter's `at`, and for the statistical tier what follows from which items share a batch
/// (the sampled signature outcome, `valid`, `confidence`, `reason`, and through `verified` the
/// value and everything computed from it).
pub fn stable(v: &Value) -> Value {
    let mut v = v.clone();
    let o = v.as_object_mut().expect("a JSON object");
    for k in ["batch", "proof", "latency_ms", "at"] {
        o.remove(k);
    }
    if o.get("verification").is_some_and(|x| x["tier"] == "statistical") {
        for k in ["value", "permitted", "decision", "snr", "consistency"] {
            o.remove(k);
        }
        let ver = o["verification"].as_object_mut().expect("verification object");
        for k in ["valid", "confidence", "reason"] {
            ver.remove(k);
        }
        ver["checks"]
            .as_object_mut()
            .expect("checks object")
            .remove("signature");
    }
    v
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
