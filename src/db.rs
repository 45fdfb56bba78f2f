//! The database: SQLite (the default, one file next to the data) or
//! PostgreSQL (several nodes on one queue), chosen by the URL's scheme.
//!
//! Both sit behind sqlx's `Any` driver, so that every store function takes
//! one pool type and runs the same SQL on either: `$1..$N` placeholders,
//! `BIGINT`/`INTEGER` columns decoded as `i64`, `TEXT` for JSON. What
//! differs per backend is kept small and named by [`Backend`]: the
//! migrations (`migrations/sqlite`, `migrations/postgres`), SQLite's
//! per-connection settings, the claim of a job (`store::jobs::claim_next`)
//! and the wake-ups of workers (`jobs::wake`).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::Connection;

/// The pool every store function takes.
pub type Db = sqlx::AnyPool;

/// The SQLite migrations (`migrations/sqlite`), compiled into the binary.
/// Their files are those of the SQLite-only releases byte for byte: sqlx
/// records each migration's version and checksum, so older databases
/// upgrade in place.
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The PostgreSQL migrations (`migrations/postgres`): the same schema, with
/// `BIGINT` for every integer and `DOUBLE PRECISION` for reals, plus the
/// triggers that `NOTIFY` workers.
pub static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long opening the database may take (each connection of the pool,
/// and the first connection at start) before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per process.
const MAX_CONNECTIONS: u32 = 8;

/// The database engines vitrine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The URL forms accepted, for error messages.
    pub const SUPPORTED: &'static str = "sqlite://PATH, postgres://USER@HOST:PORT/DB";

    /// The backend a database URL names, by its scheme (`sqlite:`,
    /// `postgres:` or `postgresql:`).
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let Some((scheme, _)) = url.split_once(':') else {
            anyhow::bail!(
                "the database URL `{url}` has no scheme (--database-url, VITRINE_DATABASE_URL); \
                 supported: {}",
                Self::SUPPORTED
            );
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => anyhow::bail!(
                "unsupported database URL scheme `{scheme}` (--database-url, VITRINE_DATABASE_URL); \
                 supported: {}",
                Self::SUPPORTED
            ),
        }
    }

    /// The backend of an open pool (read from its connect options: cheap).
    pub fn of(db: &Db) -> Self {
        match db.connect_options().database_url.scheme() {
            "postgres" | "postgresql" => Self::Postgres,
            _ => Self::Sqlite,
        }
    }

    /// The embedded migrations of this backend.
    pub fn migrator(self) -> &'static Migrator {
        match self {
            Self::Sqlite => &SQLITE_MIGRATOR,
            Self::Postgres => &POSTGRES_MIGRATOR,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// Opens the database (creating a SQLite file if needed) and applies
/// pending migrations. Fails at once, naming the problem, on an unknown
/// scheme, a malformed URL or a server that refuses; within
/// [`CONNECT_TIMEOUT`] on a server that does not answer.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let backend = Backend::from_url(url)?;
    sqlx::any::install_default_drivers();
    let db = match backend {
        Backend::Sqlite => connect_sqlite(url).await?,
        Backend::Postgres => connect_postgres(url).await?,
    };
    backend
        .migrator()
        .run(&db)
        .await
        .with_context(|| format!("applying the {} migrations", backend.name()))?;
    Ok(db)
}

/// WAL (readers never wait for the writer), synchronous NORMAL (safe with
/// WAL), a busy timeout (writers queue instead of failing) and foreign
/// keys, on every connection the pool opens.
async fn connect_sqlite(url: &str) -> anyhow::Result<Db> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    // Create the file if it is missing, unless the URL chose a mode.
    let url = if in_memory || url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    let options = AnyConnectOptions::from_str(&url)
        .with_context(|| format!("invalid database URL `{url}`"))?;
    AnyPoolOptions::new()
        // Each connection to `:memory:` is a database of its own.
        .max_connections(if in_memory { 1 } else { MAX_CONNECTIONS })
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(|conn, _| {
            Box::pin(async move {
                for pragma in [
                    "PRAGMA busy_timeout = 10000",
                    "PRAGMA foreign_keys = ON",
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = NORMAL",
                ] {
                    sqlx::query(pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("opening database `{url}`"))
}

/// One connection is tried first, so that a refusal (no server, wrong
/// password, no such database) is reported as the server put it rather
/// than as the pool's timeout.
async fn connect_postgres(url: &str) -> anyhow::Result<Db> {
    let options = AnyConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("invalid PostgreSQL URL: {e}"))?;
    let place = describe(&options);
    match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect_with(&options)).await {
        Err(_) => anyhow::bail!(
            "could not connect to PostgreSQL at {place}: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => {
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("could not connect to PostgreSQL at {place}"))
        }
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .with_context(|| format!("opening the PostgreSQL pool at {place}"))
}

/// `host:port/database` of a PostgreSQL URL, without its credentials.
fn describe(options: &AnyConnectOptions) -> String {
    let url = &options.database_url;
    format!(
        "{}:{}{}",
        url.host_str().unwrap_or("localhost"),
        url.port().unwrap_or(5432),
        url.path()
    )
}

/// True when the database answers and every embedded migration is applied.
pub async fn is_ready(pool: &Db) -> anyhow::Result<bool> {
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(applied as usize >= Backend::of(pool).migrator().iter().count())
}

/// A named lock held across processes: on PostgreSQL a session advisory
/// lock on a pooled connection of its own, held until [`release`] or until
/// the process dies (its session ends with it, so a dead node never holds a
/// lock); on SQLite one process owns the file and the lock is always
/// granted. Used so that one node at a time validates a dataset.
///
/// [`release`]: SessionLock::release
pub struct SessionLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    name: String,
}

impl SessionLock {
    /// Takes the lock `name`, or `None` when another session holds it.
    pub async fn try_acquire(db: &Db, name: &str) -> sqlx::Result<Option<Self>> {
        if Backend::of(db) != Backend::Postgres {
            return Ok(Some(Self {
                conn: None,
                name: name.into(),
            }));
        }
        let mut conn = db.acquire().await?;
        let (taken,): (bool,) =
            sqlx::query_as("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(name)
                .fetch_one(&mut *conn)
                .await?;
        Ok(taken.then(|| Self {
            conn: Some(conn),
            name: name.into(),
        }))
    }

    /// Whether another session holds `name` now (a look, not a hold).
    pub async fn is_held_elsewhere(db: &Db, name: &str) -> sqlx::Result<bool> {
        match Self::try_acquire(db, name).await? {
            Some(lock) => {
                lock.release().await;
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Gives the lock back (its connection returns to the pool).
    pub async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(&self.name)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Closing the session releases it.
            drop(conn.detach());
        }
    }
}

impl Drop for SessionLock {
    /// Not released: the connection is closed rather than pooled, which
    /// ends the session and its lock.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// Milliseconds since the Unix epoch: the unit of every timestamp column.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_names_the_backend() {
        assert_eq!(Backend::from_url("sqlite://a.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("sqlite::memory:").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://u@h:5432/d").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("PostgreSQL://h/d").unwrap(),
            Backend::Postgres
        );
        let e = Backend::from_url("./data/vitrine.db")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no scheme") && e.contains("sqlite://"), "{e}");
        let e = Backend::from_url("mysql://h/d").unwrap_err().to_string();
        assert!(
            e.contains("`mysql`") && e.contains("sqlite://") && e.contains("postgres://"),
            "{e}"
        );
    }
}
