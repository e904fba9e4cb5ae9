//! A Kafka proxy for the tests, in front of the test broker, for faults tansu cannot make:
//!
//! - **Refusing records.** Every Produce request whose records contain a marker is answered
//!   with `INVALID_RECORD`, as a Kafka broker does for a record its validation rejects.
//!   (tansu 0.6 can validate records against a schema, but its sqlite storage stops working
//!   after the first refusal.) To keep responses in order on the connection, a refused request
//!   is replaced upstream by an ApiVersions request with the same correlation id, whose
//!   response is then replaced by the refusal. Records must not be compressed for the marker
//!   to be seen (`compression.type = none`).
//! - **Adding partitions.** tansu 0.6 has no CreatePartitions, so a topic's partitions from
//!   `visible` on are hidden from the Metadata answers to one client id until the test raises
//!   `visible`: to that client, partitions are added.
//!
//! The proxy caps the Produce version it advertises at 7 and the Metadata version at 8, the
//! last ones before flexible encodings, so that requests and responses have one simple layout.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy does besides forwarding.
#[derive(Clone)]
pub enum Fault {
    /// Refuse Produce requests that contain this marker.
    Refuse(&'static [u8]),
    /// Show `client_id` only the partitions of `topic` below `visible`.
    HidePartitions {
        topic: &'static str,
        client_id: &'static str,
        visible: Arc<AtomicI32>,
    },
}

/// What to do with the answer to a request, by correlation id.
enum Answer {
    /// The request was replaced upstream: answer with a refusal for these (topic, partitions).
    Refuse(Vec<(String, Vec<i32>)>),
    /// An ApiVersions answer of this version: cap the versions.
    Versions(i16),
    /// A Metadata answer of this version: hide partitions.
    Metadata(i16),
}

type Answers = Arc<Mutex<HashMap<i32, Answer>>>;

const PRODUCE: i16 = 0;
const METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;
const INVALID_RECORD: i16 = 87;

/// Proxies `port` to `upstream` (host:port) with `fault`, for the life of the test process.
pub fn start(port: u16, upstream: &str, fault: Fault) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let upstream = upstream.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let answers: Answers = Arc::default();
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (a2, f1, f2) = (answers.clone(), fault.clone(), fault.clone());
            std::thread::spawn(move || requests(client, server, &f1, a2));
            std::thread::spawn(move || responses(s2, c2, &f2, answers));
        }
    });
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn write_frame(s: &mut TcpStream, body: &[u8]) -> Option<()> {
    s.write_all(&(body.len() as i32).to_be_bytes()).ok()?;
    s.write_all(body).ok()
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Client → broker: forwards requests, replacing the ones to refuse.
fn requests(mut client: TcpStream, mut server: TcpStream, fault: &Fault, answers: Answers) {
    while let Some(mut body) = read_frame(&mut client) {
        let (key, version, corr) = (i16_at(&body, 0), i16_at(&body, 2), i32_at(&body, 4));
        let client_id_len = i16_at(&body, 8).max(0) as usize;
        let client_id = &body[10..10 + client_id_len];
        let answer = match fault {
            _ if key == API_VERSIONS => Some(Answer::Versions(version)),
            Fault::Refuse(marker)
                if key == PRODUCE && version <= 7 && body.windows(marker.len()).any(|w| w == *marker) =>
            {
                let targets = produce_targets(&body);
                // ApiVersions v0, same correlation id and client id.
                let mut substitute = Vec::new();
                substitute.extend_from_slice(&API_VERSIONS.to_be_bytes());
                substitute.extend_from_slice(&0i16.to_be_bytes());
                substitute.extend_from_slice(&body[4..10 + client_id_len]);
                body = substitute;
                Some(Answer::Refuse(targets))
            }
            Fault::HidePartitions { client_id: id, .. }
                if key == METADATA && version <= 8 && client_id == id.as_bytes() =>
            {
                Some(Answer::Metadata(version))
            }
            _ => None,
        };
        if let Some(a) = answer {
            answers.lock().unwrap().insert(corr, a);
        }
        if write_frame(&mut server, &body).is_none() {
            return;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
}

/// The (topic, partitions) of a Produce request v3–v7.
fn produce_targets(b: &[u8]) -> Vec<(String, Vec<i32>)> {
    let mut at = 8;
    let client_id = i16_at(b, at).max(0) as usize;
    at += 2 + client_id;
    let txn = i16_at(b, at);
    at += 2 + txn.max(0) as usize;
    at += 2 + 4; // acks, timeout
    let topics = i32_at(b, at);
    at += 4;
    let mut out = Vec::new();
    for _ in 0..topics {
        let n = i16_at(b, at) as usize;
        let name = String::from_utf8_lossy(&b[at + 2..at + 2 + n]).into_owned();
        at += 2 + n;
        let parts = i32_at(b, at);
        at += 4;
        let mut ids = Vec::new();
        for _ in 0..parts {
            ids.push(i32_at(b, at));
            let records = i32_at(b, at + 4).max(0) as usize;
            at += 8 + records;
        }
        out.push((name, ids));
    }
    out
}

/// Broker → client: replaces the answers to replaced requests with refusals, caps the
/// advertised versions and hides partitions.
fn responses(mut server: TcpStream, mut client: TcpStream, fault: &Fault, answers: Answers) {
    while let Some(mut body) = read_frame(&mut server) {
        let corr = i32_at(&body, 0);
        let answer = answers.lock().unwrap().remove(&corr);
        match (answer, fault) {
            (Some(Answer::Refuse(targets)), _) => body = refusal(corr, &targets),
            (Some(Answer::Versions(version)), _) => cap_versions(&mut body, version),
            (Some(Answer::Metadata(version)), Fault::HidePartitions { topic, visible, .. }) => {
                body = hide_partitions(&body, version, topic, visible.load(Ordering::Relaxed));
            }
            _ => {}
        }
        if write_frame(&mut client, &body).is_none() {
            return;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// A Produce response v7 refusing every partition of the request with INVALID_RECORD.
fn refusal(corr: i32, targets: &[(String, Vec<i32>)]) -> Vec<u8> {
    let mut r = corr.to_be_bytes().to_vec();
    r.extend_from_slice(&(targets.len() as i32).to_be_bytes());
    for (topic, parts) in targets {
        r.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        r.extend_from_slice(topic.as_bytes());
        r.extend_from_slice(&(parts.len() as i32).to_be_bytes());
        for p in parts {
            r.extend_from_slice(&p.to_be_bytes());
            r.extend_from_slice(&INVALID_RECORD.to_be_bytes());
            for _ in 0..3 {
                r.extend_from_slice(&(-1i64).to_be_bytes()); // base offset, append time, log start
            }
        }
    }
    r.extend_from_slice(&0i32.to_be_bytes()); // throttle time
    r
}

/// Caps the Produce entry's max version at 7 and Metadata's at 8 in an ApiVersions response
/// of `version` (v0–v2: int32 count, 6-byte entries; v3+: varint count + 1, 7-byte entries
/// with an empty tag buffer).
fn cap_versions(body: &mut [u8], version: i16) {
    let (mut at, n, entry) = if version >= 3 {
        let (count, used) = uvarint(&body[6..]);
        (6 + used, count.saturating_sub(1), 7)
    } else {
        (10, i32_at(body, 6) as u64, 6)
    };
    for _ in 0..n {
        if at + 6 > body.len() {
            return;
        }
        let cap = match i16_at(body, at) {
            PRODUCE => 7i16,
            METADATA => 8,
            _ => i16::MAX,
        };
        if i16_at(body, at + 4) > cap {
            body[at + 4..at + 6].copy_from_slice(&cap.to_be_bytes());
        }
        at += entry;
    }
}

fn uvarint(b: &[u8]) -> (u64, usize) {
    let (mut v, mut shift) = (0u64, 0);
    for (i, byte) in b.iter().enumerate() {
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
        shift += 7;
    }
    (v, b.len())
}

/// A Metadata response v1–v8 (non-flexible) without the partitions of `topic` from
/// `visible` on.
fn hide_partitions(b: &[u8], version: i16, topic: &str, visible: i32) -> Vec<u8> {
    let mut out = b[..4].to_vec(); // correlation id
    let mut at = 4;
    let copy = |out: &mut Vec<u8>, at: &mut usize, n: usize| {
        out.extend_from_slice(&b[*at..*at + n]);
        *at += n;
    };
    let string = |at: usize| 2 + i16_at(b, at).max(0) as usize;
    if version >= 3 {
        copy(&mut out, &mut at, 4); // throttle time
    }
    let brokers = i32_at(b, at);
    copy(&mut out, &mut at, 4);
    for _ in 0..brokers {
        copy(&mut out, &mut at, 4); // node id
        let n = string(at);
        copy(&mut out, &mut at, n); // host
        copy(&mut out, &mut at, 4); // port
        let n = string(at);
        copy(&mut out, &mut at, n); // rack
    }
    if version >= 2 {
        let n = string(at);
        copy(&mut out, &mut at, n); // cluster id
    }
    copy(&mut out, &mut at, 4); // controller id
    let topics = i32_at(b, at);
    copy(&mut out, &mut at, 4);
    for _ in 0..topics {
        copy(&mut out, &mut at, 2); // error code
        let n = string(at);
        let name = String::from_utf8_lossy(&b[at + 2..at + n]).into_owned();
        copy(&mut out, &mut at, n);
        copy(&mut out, &mut at, 1); // is internal
        let parts = i32_at(b, at);
        at += 4;
        let mut kept = Vec::new();
        let mut count = 0i32;
        for _ in 0..parts {
            let start = at;
            let index = i32_at(b, at + 2);
            at += 2 + 4 + 4 + if version >= 7 { 4 } else { 0 };
            for _ in 0..if version >= 5 { 3 } else { 2 } {
                at += 4 + 4 * i32_at(b, at).max(0) as usize; // replicas, isr, offline
            }
            if name != topic || index < visible {
                kept.extend_from_slice(&b[start..at]);
                count += 1;
            }
        }
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&kept);
        if version >= 8 {
            copy(&mut out, &mut at, 4); // topic authorized operations
        }
    }
    out.extend_from_slice(&b[at..]); // cluster authorized operations
    out
}
