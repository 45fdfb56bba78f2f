//! The real `vitrine` binary as a child process, for the tests that kill or
//! signal it. Killed (SIGKILL) when dropped, so a failing test leaves no
//! server behind.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    child: Child,
    pub url: String,
}

impl ServerProcess {
    /// `vitrine serve` on a free local port over `data`, with `args` added;
    /// returns once `/readyz` answers 200.
    pub async fn start(data: &Path, args: &[&str]) -> Self {
        let port = free_port();
        Self::start_with(data, port, args, &[]).await
    }

    /// As `start`, on a given port (a restarted server keeps its address).
    pub async fn start_on(data: &Path, port: u16, args: &[&str]) -> Self {
        Self::start_with(data, port, args, &[]).await
    }

    /// As `start_on`, with environment variables set for the server.
    pub async fn start_with(data: &Path, port: u16, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["serve", "--devices", "cpu"])
            .args(args)
            .envs(envs.iter().copied())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting vitrine");
        let server = ServerProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        server.wait_ready().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_bytes(self.pid(), "VmHWM:")
    }

    /// The server's resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_bytes(self.pid(), "VmRSS:")
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        while !reqwest::get(format!("{}/readyz", self.url))
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// SIGTERM: what `docker stop` and systemd send.
    pub fn terminate(&self) {
        terminate(&self.child);
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout).await
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A local port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGKILL, and reap it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM: what Kubernetes, `docker stop` and systemd send.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
}

/// Waits up to `timeout` for the process to exit; `None` if it is still
/// running then.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
