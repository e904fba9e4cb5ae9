//! The test broker for the Kafka tests and the Kafka bench (which includes this file by
//! path): a tansu process on a free port, with its storage in a temporary directory, killed
//! when dropped.
//!
//! The binary comes from `scripts/tansu` (run by `scripts/test`), found through
//! `BIZRA_TANSU` or `~/.cache/bizra/tansu/bin/tansu`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tansu_bin() -> PathBuf {
    let p = std::env::var_os("BIZRA_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/bizra/tansu/bin/tansu")
        });
    assert!(
        p.exists(),
        "tansu not found at {}: run scripts/tansu (scripts/test does)",
        p.display()
    );
    p
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running tansu broker.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    storage: &'static str,
    dir: tempfile::TempDir,
    /// The port clients are told to use, when it is not `port` (a proxy in front).
    advertised: Option<u16>,
}

impl Broker {
    /// With sqlite storage: correct fetches and watermarks, data kept across a restart.
    /// Every test uses this one.
    #[allow(dead_code)] // the bench uses only `memory`
    pub fn start() -> Broker {
        Broker::with_storage("sqlite://tansu.db")
    }

    /// With memory storage: several times faster, but a fetch that starts inside a record
    /// batch returns nothing. Only for benches that read every topic from the start.
    #[allow(dead_code)] // the tests use only `start`
    pub fn memory() -> Broker {
        Broker::with_storage("memory://tansu/")
    }

    fn with_storage(storage: &'static str) -> Broker {
        let mut b = Broker {
            child: None,
            port: free_port(),
            storage,
            dir: tempfile::tempdir().unwrap(),
            advertised: None,
        };
        b.spawn();
        b
    }

    /// With sqlite storage, behind a proxy that makes `fault` (see `proxy.rs`); clients reach
    /// the broker through the proxy only (it is the advertised listener).
    #[allow(dead_code)] // the bench does not use it
    pub fn proxied(fault: crate::proxy::Fault) -> Broker {
        let proxy = free_port();
        let mut b = Broker {
            child: None,
            port: free_port(),
            storage: "sqlite://tansu.db",
            dir: tempfile::tempdir().unwrap(),
            advertised: Some(proxy),
        };
        crate::proxy::start(proxy, &format!("127.0.0.1:{}", b.port), fault);
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let listen = format!("tcp://127.0.0.1:{}", self.port);
        let url = self.url();
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", self.storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port))
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.advertised.unwrap_or(self.port))
    }

    fn topic_command(&self, args: &[&str]) {
        let out = Command::new(tansu_bin())
            .arg("topic")
            .args(args)
            .args(["--broker", &self.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.topic_command(&["create", name, "--partitions", &partitions.to_string()]);
    }

    #[allow(dead_code)] // only the bench deletes topics
    pub fn delete_topic(&self, name: &str) {
        self.topic_command(&["delete", name]);
    }

    /// Kills the broker (sqlite data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the broker process.
    #[allow(dead_code)] // the bench does not pause
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    #[allow(dead_code)] // only the outage tests restart
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
