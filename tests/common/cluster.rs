//! Several real `vitrine` processes over one database: API nodes (`serve
//! --no-workers`) and `vitrine worker` nodes, each logging JSON to a file
//! the test reads back (which worker claimed which job, when).
//!
//! The backend is a parameter ([`Backend`]): SQLite (one database file and
//! one data directory shared by every process, as there is no artefact
//! store there) or an external database and artefact store (PostgreSQL +
//! S3), where each node gets a data directory of its own and everything it
//! shares goes through the database and the store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the nodes of one cluster keep their state.
pub struct Backend {
    /// For the test's report: `sqlite`, `postgres+s3`.
    pub name: &'static str,
    root: PathBuf,
    database_url: Option<String>,
    artifacts: Option<String>,
    env: Vec<(String, String)>,
}

impl Backend {
    /// One SQLite file and one data directory under `root`, shared by every
    /// node (datasets, checkpoints and models travel through the directory).
    pub fn sqlite(root: &Path) -> Self {
        Self {
            name: "sqlite",
            root: root.to_path_buf(),
            database_url: Some(format!(
                "sqlite://{}",
                root.join("shared/vitrine.db").display()
            )),
            artifacts: None,
            env: vec![],
        }
    }

    /// PostgreSQL at `database_url` and an S3 store at `artifacts`
    /// (`s3://bucket/prefix`), with `env` (the `AWS_*` variables) set for
    /// every node; each node has a data directory of its own under `root`,
    /// so all they share goes through the database and the store. With
    /// `tests/common/postgres.rs` and `s3.rs`:
    /// `Backend::postgres_s3(dir, &pg.fresh_database(), &s3.fresh_bucket(), s3.env())`.
    pub fn postgres_s3(
        root: &Path,
        database_url: &str,
        artifacts: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            name: "postgres+s3",
            root: root.to_path_buf(),
            database_url: Some(database_url.into()),
            artifacts: Some(artifacts.into()),
            env,
        }
    }

    /// Whether live job events cross nodes (PostgreSQL: `jobs::relay`).
    pub fn relays_events(&self) -> bool {
        self.database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres"))
    }

    /// The data directory of the node `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        let dir = match self.artifacts {
            None => self.root.join("shared"),
            Some(_) => self.root.join(name),
        };
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The flags every node of this backend gets.
    fn args(&self, name: &str) -> Vec<String> {
        let mut args = vec![
            "--data-dir".into(),
            self.data_dir(name).display().to_string(),
        ];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".into(), url.clone()]);
        }
        if let Some(store) = &self.artifacts {
            args.extend(["--artifacts".into(), store.clone()]);
        }
        args
    }
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
}

/// One `vitrine` child process; SIGKILLed when dropped.
pub struct Node {
    child: Child,
    pub name: String,
    pub role: Role,
    /// The API (API nodes) or the probes (worker nodes).
    pub url: String,
    /// Its JSON log lines (stdout) and anything on stderr.
    pub log: PathBuf,
    pub stderr: PathBuf,
}

impl Node {
    /// `vitrine serve --no-workers` on a free port; returns once `/readyz`
    /// answers 200.
    pub async fn api(backend: &Backend, name: &str, extra: &[&str]) -> Self {
        let port = super::process::free_port();
        let mut args: Vec<String> = vec!["serve".into(), "--no-workers".into()];
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        Self::start(backend, name, Role::Api, port, args, extra).await
    }

    /// `vitrine worker` with its probes on a free port; returns once its
    /// `/readyz` answers 200.
    pub async fn worker(backend: &Backend, name: &str, extra: &[&str]) -> Self {
        let port = super::process::free_port();
        let mut args: Vec<String> = vec!["worker".into()];
        args.extend(["--health-listen".into(), format!("127.0.0.1:{port}")]);
        Self::start(backend, name, Role::Worker, port, args, extra).await
    }

    async fn start(
        backend: &Backend,
        name: &str,
        role: Role,
        port: u16,
        mut args: Vec<String>,
        extra: &[&str],
    ) -> Self {
        args.extend(
            ["--devices", "cpu", "--log-format", "json"]
                .iter()
                .map(|s| s.to_string()),
        );
        args.extend(backend.args(name));
        args.extend(extra.iter().map(|s| s.to_string()));
        let logs = backend.root.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("{name}.jsonl"));
        let stderr = logs.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(&args)
            .envs(backend.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,tower_http=warn,sqlx=warn")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting vitrine");
        let mut node = Node {
            child,
            name: name.into(),
            role,
            url: format!("http://127.0.0.1:{port}"),
            log,
            stderr,
        };
        node.wait_ready().await;
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        while !reqwest::get(format!("{}/readyz", self.url))
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
        {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before it was ready: {}",
                    self.name,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not become ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        super::process::kill(&mut self.child);
    }

    /// SIGTERM: what Kubernetes and `docker stop` send.
    pub fn terminate(&self) {
        super::process::terminate(&self.child);
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        super::process::wait_exit(&mut self.child, timeout).await
    }

    /// The JSON lines of its log so far (a line being written is skipped).
    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One run of a job by one worker, from its log: claimed (`job started`)
/// until it ended, was put back, or the process was killed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: String,
    pub owner: String,
    pub node: String,
    pub attempt: i64,
    pub from: chrono::DateTime<chrono::Utc>,
    /// `None` while running, or when the process died with it.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// `succeeded`, `failed`, `cancelled`, `requeued`, `retry`, `lease lost`.
    pub outcome: Option<String>,
}

/// Every claim in a worker node's log, in order.
pub fn claims(node: &Node) -> Vec<Claim> {
    let mut out: Vec<Claim> = Vec::new();
    for line in node.log_lines() {
        let message = line["message"].as_str().unwrap_or_default();
        let (Some(job), Some(owner)) = (line["job"].as_str(), line["owner"].as_str()) else {
            continue;
        };
        let at = line["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|| panic!("no timestamp in {line}"));
        if message == "job started" {
            out.push(Claim {
                job: job.into(),
                owner: owner.into(),
                node: node.name.clone(),
                attempt: line["attempt"].as_i64().unwrap_or(0),
                from: at,
                until: None,
                outcome: None,
            });
            continue;
        }
        let outcome = match message {
            "job ended" => line["status"].as_str().unwrap_or("?").to_string(),
            "job requeued for the next start" => "requeued".into(),
            "job failed; will retry" => "retry".into(),
            "lease lost; stopping" => "lease lost".into(),
            _ => continue,
        };
        let open = out
            .iter_mut()
            .rev()
            .find(|c| c.job == job && c.owner == owner && c.until.is_none())
            .unwrap_or_else(|| panic!("{}: `{message}` for {job} without a claim", node.name));
        open.until = Some(at);
        open.outcome = Some(outcome);
    }
    out
}

/// Pairs of claims of one job by different owners whose times overlap; a
/// claim still open counts until `killed_at` (its process's death) or for
/// ever.
pub fn overlapping_claims(
    claims: &[Claim],
    killed_at: &dyn Fn(&str) -> Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<(Claim, Claim)> {
    let end = |c: &Claim| {
        c.until
            .or_else(|| killed_at(&c.node))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    };
    let mut out = Vec::new();
    for (i, a) in claims.iter().enumerate() {
        for b in &claims[i + 1..] {
            if a.job == b.job && a.owner != b.owner && a.from < end(b) && b.from < end(a) {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    out
}
