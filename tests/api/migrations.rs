//! The embedded migrations on a real SQLite file.

use sqlx::Row;

#[tokio::test]
async fn migrations_apply_to_a_fresh_file_and_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    let pool = vitrine::db::connect(&url).await.unwrap();
    assert!(vitrine::db::is_ready(&pool).await.unwrap());

    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    for t in ["datasets", "jobs", "model_aliases", "models"] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    pool.close().await;

    // Opening again applies nothing twice and keeps the data.
    let pool = vitrine::db::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, vitrine::db::MIGRATOR.iter().count());
}

#[tokio::test]
async fn every_pooled_connection_has_wal_and_a_busy_timeout() {
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
    }
}

#[tokio::test]
async fn job_status_is_constrained() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    let pool = vitrine::db::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO datasets (id, sha256, format, size_bytes, path, task, summary, created_at) VALUES ('d', 'h', 'zip', 1, 'p', 'multi_class', '{}', 0)")
        .execute(&pool).await.unwrap();
    let bad = sqlx::query("INSERT INTO jobs (id, status, dataset_id, config, created_at, updated_at) VALUES ('j', 'exploded', 'd', '{}', 0, 0)")
        .execute(&pool).await;
    assert!(bad.is_err(), "an unknown status must be refused");
    let dangling = sqlx::query("INSERT INTO jobs (id, dataset_id, config, created_at, updated_at) VALUES ('j', 'nope', '{}', 0, 0)")
        .execute(&pool).await;
    assert!(dangling.is_err(), "a job must name an existing dataset");
}

/// Datasets stored before validation was asynchronous (migration 0003)
/// become `ready`, and the jobs pointing at them still do.
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
                vitrine::db::MIGRATOR
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
