//! The embedded migrations, on a real SQLite file and a real PostgreSQL
//! server; SQLite's per-connection settings; databases of older releases
//! upgraded in place; clear errors at start for a bad database URL.

use std::time::{Duration, Instant};

use sqlx::Row;
use vitrine::db::Backend;

use crate::common::postgres::{both_databases, database_url};

both_databases!(
    migrations_apply_to_a_fresh_database_and_are_idempotent,
    job_status_is_constrained,
);

async fn migrations_apply_to_a_fresh_database_and_are_idempotent(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, dir.path());
    let pool = vitrine::db::connect(&url).await.unwrap();
    assert_eq!(Backend::of(&pool), backend);
    assert!(vitrine::db::is_ready(&pool).await.unwrap());
    for t in ["datasets", "jobs", "model_aliases", "models", "sweeps"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t}"))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(n, 0);
    }
    pool.close().await;

    // Opening again applies nothing twice and keeps the data.
    let pool = vitrine::db::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, backend.migrator().iter().count());
}

/// The SQLite migrations are the files of the SQLite-only releases, byte
/// for byte (sqlx compares the checksum it recorded with the file's at
/// every start): these are the SHA-384s of the files as released.
#[test]
fn the_sqlite_migrations_are_those_of_earlier_releases() {
    let released = [
        (1, "ad8a346e608b30f68e439865075b6fee93004d4b98ebfdbac10b9ebc48402375db709a303c946baaac5e6ebbb5a941f8"),
        (2, "2fc4adf69e80eb9cc262fc2ca43a1736aeb68f47389032c2061b8773499c6e95a174d05adf7c8017eb1269bf14f3118f"),
        (3, "ffcb4d3111cdd534b9f5aa95e085b9f8693eb0827a26067ef91eddd5558017ee14c4b84c024062cceb9e4a0956e50b3c"),
    ];
    for (version, sha384) in released {
        let m = vitrine::db::SQLITE_MIGRATOR
            .iter()
            .find(|m| m.version == version)
            .unwrap_or_else(|| panic!("migration {version} missing"));
        let hex: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, sha384, "migration {version} changed");
    }
}

#[test]
fn an_unknown_scheme_is_refused_naming_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for url in ["mysql://u@h/db", "foo://x"] {
        let e = rt.block_on(vitrine::db::connect(url)).unwrap_err();
        let msg = format!("{e:#}");
        let scheme = url.split(':').next().unwrap();
        assert!(
            msg.contains(&format!("`{scheme}`"))
                && msg.contains("sqlite://")
                && msg.contains("postgres://"),
            "{msg}"
        );
    }
}

/// No server on the port: the error names PostgreSQL, the address and the
/// refusal, well within the connect timeout.
#[tokio::test]
async fn an_unreachable_postgres_is_an_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let e = vitrine::db::connect(&format!("postgres://vitrine@127.0.0.1:{port}/x"))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("PostgreSQL") && msg.contains(&format!("127.0.0.1:{port}/x")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(
        started.elapsed() < vitrine::db::CONNECT_TIMEOUT + Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// A server that answers but has no such database: the server's words.
#[tokio::test]
async fn a_missing_postgres_database_is_an_error_at_start() {
    let Some(pg) = crate::common::postgres::PgServer::shared() else {
        crate::common::postgres::skip("a_missing_postgres_database_is_an_error_at_start");
        return;
    };
    let e = vitrine::db::connect(&pg.url("no_such_db"))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("no_such_db") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[tokio::test]
async fn every_pooled_sqlite_connection_has_wal_a_busy_timeout_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    let pool = vitrine::db::connect(&url).await.unwrap();
    // Hold several connections at once so that more than one is opened.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(pool.acquire().await.unwrap());
    }
    for conn in conns.iter_mut() {
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(mode, "wal");
        let timeout: i64 = sqlx::query("PRAGMA busy_timeout")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert!(timeout >= 5000, "busy_timeout {timeout}");
        let fk: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(fk, 1);
        let synchronous: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(synchronous, 1, "synchronous NORMAL");
    }
}

async fn job_status_is_constrained(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let pool = vitrine::db::connect(&database_url(backend, dir.path()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO datasets (id, sha256, format, size_bytes, path, task, summary, created_at) VALUES ('d', 'h', 'zip', 1, 'p', 'multi_class', '{}', 0)")
        .execute(&pool).await.unwrap();
    let bad = sqlx::query("INSERT INTO jobs (id, status, dataset_id, config, created_at, updated_at) VALUES ('j', 'exploded', 'd', '{}', 0, 0)")
        .execute(&pool).await;
    assert!(bad.is_err(), "an unknown status must be refused");
    let dangling = sqlx::query("INSERT INTO jobs (id, dataset_id, config, created_at, updated_at) VALUES ('j', 'nope', '{}', 0, 0)")
        .execute(&pool).await;
    assert!(dangling.is_err(), "a job must name an existing dataset");
    let bad = sqlx::query("UPDATE datasets SET status = 'exploded' WHERE id = 'd'")
        .execute(&pool)
        .await;
    assert!(bad.is_err(), "an unknown dataset status must be refused");
}

/// Datasets stored before validation was asynchronous (migration 0003)
/// become `ready`, and the jobs pointing at them still do. The database is
/// made as a 0002-era release made it (sqlx's SQLite driver, the first two
/// migrations) and opened through today's `Any` pool.
#[tokio::test]
async fn datasets_from_before_0003_are_ready_and_keep_their_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    {
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(
                vitrine::db::SQLITE_MIGRATOR
                    .iter()
                    .filter(|m| m.version < 3)
                    .cloned()
                    .collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        sqlx::query("INSERT INTO datasets (id, sha256, format, size_bytes, path, task, summary, created_at) VALUES ('d', 'h', 'zip', 1, 'p', 'multi_class', '{\"images\": 3}', 7)")
            .execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO jobs (id, dataset_id, config, created_at, updated_at) VALUES ('j', 'd', '{}', 0, 0)")
            .execute(&pool).await.unwrap();
        pool.close().await;
    }
    let pool = vitrine::db::connect(&url).await.unwrap();
    let (status, format, summary, created, finished): (String, String, String, i64, i64) =
        sqlx::query_as(
            "SELECT status, format, summary, created_at, finished_at FROM datasets WHERE id = 'd'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "ready");
    assert_eq!(format, "zip");
    assert_eq!(summary, "{\"images\": 3}");
    assert_eq!((created, finished), (7, 7));
    let job_dataset: String = sqlx::query_scalar("SELECT dataset_id FROM jobs WHERE id = 'j'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(job_dataset, "d");
    // The foreign key still holds against the rebuilt table.
    let dangling = sqlx::query("INSERT INTO jobs (id, dataset_id, config, created_at, updated_at) VALUES ('k', 'nope', '{}', 0, 0)")
        .execute(&pool).await;
    assert!(dangling.is_err(), "a job must name an existing dataset");
    let bad = sqlx::query("UPDATE datasets SET status = 'exploded' WHERE id = 'd'")
        .execute(&pool)
        .await;
    assert!(bad.is_err(), "an unknown dataset status must be refused");
}
