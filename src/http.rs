//! The ops endpoints on `--http ADDR`: `/metrics` (Prometheus text format), `/healthz`
//! (health JSON; 503 when critical), `/readyz` (200 once sources are assigned and the broker
//! is reachable), `/pubkey` (SPEC §3.3), `/checkpoint` (each shard's latest signed
//! checkpoint, SPEC §3.4) and `/episodes/{id}` (the newest archived episode
//! holding that observation id, from the in-memory recall cache). A tokio runtime on its own thread serves them;
//! handlers read shared state only (atomics, a short mutex, the registry), so a scrape never
//! waits on, or blocks, a timely worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};

/// What the endpoints serve; written by the runtime, read by the handlers.
pub struct Ops {
    pub registry: Registry,
    /// Ready for traffic: sources assigned and (in Kafka mode) the broker reachable.
    pub ready: AtomicBool,
    /// The health JSON and its HTTP status, as last computed by the runtime.
    pub health: Mutex<(u16, String)>,
    /// Standard base64 of the node's Ed25519 public key.
    pub pubkey: String,
    /// Recently archived episodes, when the archive is on (`--data-dir`).
    pub recent: Option<Arc<crate::recall::RecentEpisodes>>,
    /// The breaker's state gauge, read live by `/readyz` (2 = open: not ready), so that it
    /// agrees with `bizra_kafka_circuit_breaker_state` at every moment.
    pub circuit: std::sync::OnceLock<prometheus::IntGauge>,
    /// The latest checkpoint of each shard of this process (`/checkpoint`).
    pub checkpoints: crate::decision_log::Latest,
}

impl Ops {
    pub fn new(
        registry: Registry,
        pubkey: String,
        recent: Option<Arc<crate::recall::RecentEpisodes>>,
        checkpoints: crate::decision_log::Latest,
    ) -> Arc<Ops> {
        Arc::new(Ops {
            registry,
            ready: AtomicBool::new(false),
            health: Mutex::new((200, r#"{"status":"healthy","reasons":[]}"#.into())),
            pubkey,
            recent,
            circuit: std::sync::OnceLock::new(),
            checkpoints,
        })
    }

    pub fn set_health(&self, status: u16, json: String) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = (status, json);
    }
}

/// Binds `addr` now (so a bad address or a port in use fails start-up with a clear error)
/// and serves on a background thread until the process exits. Returns the bound address.
pub fn serve(addr: &str, ops: Arc<Ops>) -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("--http {addr}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the HTTP runtime")?;
    std::thread::Builder::new()
        .name("bizra-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "http listener");
                        return;
                    }
                };
                if let Err(e) = axum::serve(listener, router(ops)).await {
                    tracing::error!(error = %e, "http server stopped");
                }
            })
        })?;
    tracing::info!(addr = %bound, "serving /metrics /healthz /readyz /pubkey");
    Ok(bound)
}

fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/pubkey", get(pubkey))
        .route("/checkpoint", get(checkpoint))
        .route("/episodes/{id}", get(episode))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(ops)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let mut buf = Vec::with_capacity(64 * 1024);
    match TextEncoder::new().encode(&ops.registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(ops): State<Arc<Ops>>) -> Response {
    let (status, body) = ops.health.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let open = ops.circuit.get().is_some_and(|g| g.get() == 2);
    if ops.ready.load(Ordering::Relaxed) && !open {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn pubkey(State(ops): State<Arc<Ops>>) -> Response {
    (StatusCode::OK, format!("{}\n", ops.pubkey)).into_response()
}

/// The latest checkpoint of each shard of this process, a JSON array of `{"shard",
/// "tree_size", "note"}` in shard order (empty before the first one).
async fn checkpoint(State(ops): State<Arc<Ops>>) -> Response {
    let all: Vec<crate::decision_log::CheckpointRecord> = ops
        .checkpoints
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let body = serde_json::to_string(&all).expect("checkpoints serialize");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The newest recent episode holding observation `id` (JSON); 404 when it is not in the
/// recall cache (older episodes: `bizra audit get`) or the archive is off.
async fn episode(State(ops): State<Arc<Ops>>, Path(id): Path<String>) -> Response {
    let found = ops.recent.as_ref().and_then(|r| r.get(&id));
    match found {
        Some(e) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&*e).expect("episodes serialize"),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no recent episode holds this id\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (code, body)
    }

    #[test]
    fn endpoints_answer_and_unknown_paths_are_404() {
        let r = Registry::new();
        let c = prometheus::IntCounter::new("bizra_test_total", "t").unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.inc_by(7);
        let ops = Ops::new(r, "cHVia2V5".into(), None, Default::default());
        let addr = serve("127.0.0.1:0", ops.clone()).unwrap();
        let (code, body) = get(addr, "/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("bizra_test_total 7"), "{body}");
        assert_eq!(get(addr, "/readyz").0, 503);
        ops.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").0, 200);
        let circuit = prometheus::IntGauge::new("bizra_test_circuit", "t").unwrap();
        ops.circuit.set(circuit.clone()).unwrap();
        circuit.set(2);
        assert_eq!(
            get(addr, "/readyz").0,
            503,
            "an open breaker is not ready at once"
        );
        circuit.set(0);
        assert_eq!(get(addr, "/readyz").0, 200);
        assert_eq!(get(addr, "/pubkey"), (200, "cHVia2V5\n".into()));
        ops.set_health(503, r#"{"status":"critical"}"#.into());
        assert_eq!(get(addr, "/healthz"), (503, r#"{"status":"critical"}"#.into()));
        assert_eq!(get(addr, "/nope").0, 404);
    }

    #[test]
    fn episodes_are_served_from_the_recall_cache_by_observation_id() {
        use bizra_dataflows::episode::Episode;
        let recent = Arc::new(crate::recall::RecentEpisodes::new(8, 1 << 20));
        let episode: Episode = serde_json::from_value(serde_json::json!({
            "shard": 1, "seq": 7, "run": "00", "tree_size": 1, "root": "ab",
            "conditions": ["Note: 1 minor concerns identified"],
            "records": [[
                "obs-42", ["in", 3, 99], "sha256:00", 2, true, 1, true, 0.5, 0.25, 0.75, 0, [0], 0, null
            ]]
        }))
        .unwrap();
        recent.insert(Arc::new(episode.clone()));
        let ops = Ops::new(Registry::new(), String::new(), Some(recent), Default::default());
        let addr = serve("127.0.0.1:0", ops).unwrap();
        let (code, body) = get(addr, "/episodes/obs-42");
        assert_eq!(code, 200);
        assert_eq!(serde_json::from_str::<Episode>(&body).unwrap(), episode);
        assert_eq!(get(addr, "/episodes/obs-43").0, 404);
    }

    #[test]
    fn checkpoint_serves_the_latest_of_each_shard() {
        let latest: crate::decision_log::Latest = Default::default();
        let ops = Ops::new(Registry::new(), String::new(), None, latest.clone());
        let addr = serve("127.0.0.1:0", ops).unwrap();
        assert_eq!(get(addr, "/checkpoint"), (200, "[]".into()));
        let key = Arc::new(ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        let mut cp = crate::decision_log::Checkpointer::new("d", key, 1, Some(latest));
        let mut chain = bizra_dataflows::verification::commitment::Chain::new([0; 8], 4);
        let leaf = [bizra_dataflows::verification::merkle::leaf_hash(b"x")];
        for seq in 0..3 {
            cp.durable(&chain.seal(seq, &leaf, &ed25519_dalek::SigningKey::from_bytes(&[3; 32])));
            cp.due(seq * 10, false);
        }
        let (code, body) = get(addr, "/checkpoint");
        assert_eq!(code, 200);
        let served: Vec<crate::decision_log::CheckpointRecord> = serde_json::from_str(&body).unwrap();
        assert_eq!(served.len(), 1);
        assert_eq!((served[0].shard, served[0].tree_size), (4, 3));
        assert!(served[0].note.starts_with("d/bizra/shard/4\n3\n"), "{body}");
    }

    #[test]
    fn a_port_in_use_or_a_bad_address_fails_clearly() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = serve(
            &addr,
            Ops::new(Registry::new(), String::new(), None, Default::default()),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("cannot listen"), "{e:#}");
        let e = serve(
            "not-an-address",
            Ops::new(Registry::new(), String::new(), None, Default::default()),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--http not-an-address"), "{e:#}");
    }
}
