//! A real PostgreSQL server for the tests: Debian's `postgresql` binaries
//! (`initdb`, `pg_ctl`, `createdb`), found on `PATH` or under
//! `/usr/lib/postgresql/*/bin` (or in `VITRINE_PG_BIN`), run in a temporary
//! directory on a free port, one server per test binary. Each test takes a
//! database of its own with [`PgServer::fresh_database`].
//!
//! Without the binaries the PostgreSQL tests skip (saying so), unless `CI`
//! is set: there a missing server is a failure. `scripts/setup.sh` installs
//! the package.
//!
//! As root (containers), the server runs as the `postgres` user, since
//! `initdb` refuses root. The server stops when the test binary exits
//! (`atexit`), and a watchdog process stops it if the binary is killed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// uid and gid the server's programs run as (as root: `postgres`'s).
type RunAs = Option<(u32, u32)>;

/// The test binary's PostgreSQL server.
pub struct PgServer {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    /// Holds the data directory, the log and the unix socket.
    dir: PathBuf,
    /// The user the server runs as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    next_db: AtomicUsize,
}

static SHARED: OnceLock<Option<PgServer>> = OnceLock::new();

impl PgServer {
    /// The server of this test binary, started on first use. `None` when
    /// PostgreSQL is not installed and `CI` is unset (the caller skips);
    /// panics when it cannot start, or is missing under `CI`.
    pub fn shared() -> Option<&'static PgServer> {
        SHARED.get_or_init(start).as_ref()
    }

    /// A new, empty database on the server: its URL,
    /// `postgres://postgres@127.0.0.1:PORT/db_N`.
    pub fn fresh_database(&self) -> String {
        let name = format!("db_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let out = self
            .command("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ])
            .output()
            .expect("running createdb");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// One of the server's programs, as the server's user.
    fn command(&self, program: &str) -> Command {
        command(&self.bin.join(program), self.run_as)
    }
}

/// Prints that a PostgreSQL test skipped; for `let Some(pg) = … else`.
pub fn skip(test: &str) {
    eprintln!(
        "SKIPPED {test}: PostgreSQL is not installed (apt-get install postgresql, or make setup)"
    );
}

fn command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    // The server's user may not be able to enter the current directory.
    cmd.current_dir("/");
    cmd
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VITRINE_PG_BIN") {
        return Some(dir.into());
    }
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    // Debian keeps them off PATH, one directory per major version: newest first.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| has_both(d))
        .collect();
    versions.sort_by_key(|d| {
        let v = d
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str());
        std::cmp::Reverse(v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0))
    });
    if let Some(d) = versions.into_iter().next() {
        return Some(d);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| has_both(d))
        // A symlink on PATH (e.g. /usr/local/bin/initdb): its real directory holds `postgres`.
        .map(|d| {
            std::fs::canonicalize(d.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(d)
        })
}

/// uid and gid of the `postgres` user, when the tests run as root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; getpwnam's result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "the tests run as root and there is no `postgres` user to run PostgreSQL as"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

fn start() -> Option<PgServer> {
    let Some(bin) = find_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL (initdb, pg_ctl) is not installed, and CI is set: install Debian's postgresql"
        );
        return None;
    };
    let run_as = server_user();
    let dir = tempfile::Builder::new()
        .prefix("vitrine-pg-")
        .tempdir()
        .expect("creating the PostgreSQL directory")
        .keep();
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown of the PostgreSQL dir");
    }
    let data = dir.join("data");
    let out = command(&bin.join("initdb"), run_as)
        .arg("-D")
        .arg(&data)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ])
        .output()
        .expect("running initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.join("server.log");
    // A port found free may be taken before the server binds it: retry.
    for _ in 0..5 {
        let port = free_port();
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300 -c shared_buffers=32MB",
            dir.display()
        );
        let status = command(&bin.join("pg_ctl"), run_as)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .status()
            .expect("running pg_ctl start");
        if status.success() {
            let server = PgServer {
                port,
                bin,
                dir,
                run_as,
                next_db: AtomicUsize::new(0),
            };
            server.stop_with_the_tests();
            return Some(server);
        }
    }
    panic!(
        "PostgreSQL did not start; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// What stops the server: [`stop_at_exit`] when the test binary exits,
/// and a watchdog when it is killed instead.
static STOP: OnceLock<(PathBuf, PathBuf, RunAs)> = OnceLock::new();

impl PgServer {
    fn stop_with_the_tests(&self) {
        let _ = STOP.set((self.bin.join("pg_ctl"), self.dir.clone(), self.run_as));
        // SAFETY: registers a plain `extern "C" fn`.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        // The watchdog outlives a SIGKILLed test binary: it polls its
        // parent (through /proc: it may run as another user).
        let script = format!(
            "while [ -e /proc/{pid} ]; do sleep 1; done; \
             '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
        );
        let _ = command(Path::new("/bin/sh"), self.run_as)
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

extern "C" fn stop_at_exit() {
    if let Some((pg_ctl, dir, run_as)) = STOP.get() {
        let _ = command(pg_ctl, *run_as)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The URL of a new, empty database on `backend`: a SQLite file in `dir`,
/// or a database of its own on the shared server (which must exist: the
/// tests of [`both_databases!`] skip before).
pub fn database_url(backend: vitrine::db::Backend, dir: &Path) -> String {
    match backend {
        vitrine::db::Backend::Sqlite => format!("sqlite://{}", dir.join("vitrine.db").display()),
        vitrine::db::Backend::Postgres => PgServer::shared()
            .expect("PostgreSQL is installed")
            .fresh_database(),
    }
}

/// Runs each `async fn name(backend: Backend)` of the list once per
/// database, as the tests `name::sqlite` and `name::postgres` (which skips,
/// saying so, when PostgreSQL is not installed and `CI` is unset).
#[allow(unused_macros)]
macro_rules! both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                super::$test(vitrine::db::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::common::postgres::PgServer::shared().is_none() {
                    $crate::common::postgres::skip(concat!(module_path!(), "::postgres"));
                    return;
                }
                super::$test(vitrine::db::Backend::Postgres).await
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use both_databases;
