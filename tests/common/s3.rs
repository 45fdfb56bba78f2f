//! A real S3-compatible server for the tests: moto's server
//! (`tests/python/s3_server.py`, from PyPI, pinned in
//! requirements/test.txt), speaking the S3 REST protocol over HTTP with
//! IAM authentication on, so the production `object_store` client signs
//! every request and wrong credentials are refused as S3 refuses them.
//!
//! One server per test process ([`S3Server::shared`]); each test takes a
//! bucket of its own ([`S3Server::fresh_bucket`]). Without moto installed
//! the tests that need it skip with a message, except under `CI`, where
//! that is a failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    control: Mutex<(Child, ChildStdin, BufReader<ChildStdout>)>,
    buckets: AtomicUsize,
}

static SHARED: OnceLock<Option<S3Server>> = OnceLock::new();

impl S3Server {
    /// The server of this test process, started on first use; `None` (the
    /// caller skips) when moto is not installed and `CI` is unset. The
    /// process environment is left alone: in-process stores get
    /// [`Self::env`] through `ArtifactOptions::s3_env`
    /// (`ServeConfig::artifacts_env`), child processes as their environment.
    pub fn shared() -> Option<&'static S3Server> {
        SHARED.get_or_init(Self::start).as_ref()
    }

    /// A server of its own (for a test that must not share one).
    pub fn start() -> Option<S3Server> {
        let python = super::python();
        let has_moto = Command::new(&python)
            .args(["-c", "import moto.server, boto3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_moto {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed in {} (make test installs requirements/test.txt)",
                python.display()
            );
            eprintln!("skipped: moto is not installed (pip install -r requirements/test.txt)");
            return None;
        }
        let mut child = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/s3_server.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tests/python/s3_server.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("reading the S3 server's address");
        let info: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the S3 server did not start ({e}): {line:?}"));
        let field = |k: &str| info[k].as_str().unwrap().to_string();
        Some(S3Server {
            endpoint: field("endpoint"),
            access_key: field("access_key"),
            secret_key: field("secret_key"),
            region: field("region"),
            control: Mutex::new((child, stdin, stdout)),
            buckets: AtomicUsize::new(0),
        })
    }

    /// Creates a new bucket and returns `s3://<bucket>/<prefix>` for it.
    pub fn fresh_bucket(&self) -> String {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        let bucket = format!("vitrine-{}-{n}", std::process::id());
        self.command(&format!("bucket {bucket}"));
        format!("s3://{bucket}/prefix-{n}")
    }

    /// A bucket name nobody created.
    pub fn missing_bucket(&self) -> String {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        format!("s3://vitrine-missing-{}-{n}/p", std::process::id())
    }

    /// [`Self::env`] with the endpoint replaced (a proxy in front of it, a
    /// dead port).
    pub fn env_via(&self, endpoint: &str) -> Vec<(String, String)> {
        let mut env = self.env();
        for (k, v) in &mut env {
            if k == "AWS_ENDPOINT_URL" {
                *v = endpoint.to_string();
            }
        }
        env
    }

    /// The `AWS_*` variables a child process needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_REGION", self.region.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn command(&self, line: &str) {
        let mut control = self.control.lock().unwrap();
        let (_, stdin, stdout) = &mut *control;
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        stdout.read_line(&mut answer).unwrap();
        assert_eq!(answer.trim(), "ok", "S3 server command `{line}`");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Ok(control) = self.control.get_mut() {
            let _ = control.0.kill();
            let _ = control.0.wait();
        }
    }
}

/// A TCP forwarder in front of a server that a test can cut (every
/// connection dropped, new ones refused) and restore: a network outage
/// between a node and its store, with both ends real.
pub struct CutProxy {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio_util::sync::CancellationToken,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl CutProxy {
    /// Forwards a local port to `target` (`http://host:port`).
    pub async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = std::sync::Arc::new(generation);
        let cut = tokio_util::sync::CancellationToken::new();
        {
            let (up, generation, cut) = (up.clone(), generation.clone(), cut.clone());
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = cut.cancelled() => return,
                    };
                    let Ok((mut inbound, _)) = accepted else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let mut cut_now = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_now.changed() => {}
                        }
                    });
                }
            });
        }
        Self {
            endpoint,
            up,
            cut,
            generation,
        }
    }

    /// The outage starts: open connections close, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The outage ends.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}
