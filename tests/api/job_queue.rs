//! The job queue's guarantees on a real SQLite file: atomic claims, leases
//! that guard every write, expired leases requeued, idempotent submission.

use sqlx::SqlitePool;
use vitrine::store::jobs::{self as store, JobStatus, NewJob};

async fn db() -> (SqlitePool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let pool = vitrine::db::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO datasets (id, sha256, format, size_bytes, path, task, summary, created_at) VALUES ('d', 'h', 'zip', 1, 'p', 'multi_class', '{}', 0)")
        .execute(&pool).await.unwrap();
    (pool, dir)
}

fn job<'a>(key: Option<&'a str>, device: Option<&'a str>) -> NewJob<'a> {
    NewJob {
        dataset_id: "d",
        config_json: "{}",
        idempotency_key: key,
        device,
        max_attempts: 2,
    }
}

#[tokio::test]
async fn concurrent_claims_hand_each_job_to_exactly_one_worker() {
    let (db, _dir) = db().await;
    for _ in 0..5 {
        store::insert(&db, job(None, None)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(j) = store::claim_next(&db, "cpu", &format!("w{w}"), 60_000)
                .await
                .unwrap()
            {
                got.push(j.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, 5, "every job claimed once");
    assert_eq!(all.len(), 5, "no job claimed twice");
}

#[tokio::test]
async fn claims_go_oldest_first_and_respect_the_device() {
    let (db, _dir) = db().await;
    let (gpu, _) = store::insert(&db, job(None, Some("cuda"))).await.unwrap();
    let (any, _) = store::insert(&db, job(None, None)).await.unwrap();
    let c = store::claim_next(&db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        c.id, any.id,
        "the cpu worker skips the job that wants a GPU"
    );
    assert!(store::claim_next(&db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .is_none());
    let g = store::claim_next(&db, "cuda:1", "g", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.id, gpu.id);
    assert_eq!(g.status(), JobStatus::Running);
    assert_eq!(g.attempts, 1);
    assert_eq!(g.lease_owner.as_deref(), Some("g"));
}

#[tokio::test]
async fn only_the_lease_holder_can_write() {
    let (db, _dir) = db().await;
    let (j, _) = store::insert(&db, job(None, None)).await.unwrap();
    store::claim_next(&db, "cpu", "owner", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(!store::set_progress(&db, &j.id, "intruder", "{}")
        .await
        .unwrap());
    assert!(store::renew_lease(&db, &j.id, "intruder", 1000)
        .await
        .unwrap()
        .is_none());
    assert!(
        !store::finish(&db, &j.id, "intruder", JobStatus::Succeeded, None, None)
            .await
            .unwrap()
    );
    assert!(store::set_progress(&db, &j.id, "owner", r#"{"step":1}"#)
        .await
        .unwrap());
    assert_eq!(
        store::renew_lease(&db, &j.id, "owner", 1000).await.unwrap(),
        Some(false)
    );
    assert!(
        store::finish(&db, &j.id, "owner", JobStatus::Succeeded, None, None)
            .await
            .unwrap()
    );
    let done = store::get(&db, &j.id).await.unwrap().unwrap();
    assert_eq!(done.status(), JobStatus::Succeeded);
    assert!(done.finished_at.is_some());
    assert!(done.lease_owner.is_none());
}

#[tokio::test]
async fn expired_leases_are_requeued_then_failed_after_max_attempts() {
    let (db, _dir) = db().await;
    let (j, _) = store::insert(&db, job(None, None)).await.unwrap();
    // A worker claims with a lease that is already over (it "crashed").
    store::claim_next(&db, "cpu", "dead", -1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store::reap_expired(&db).await.unwrap(), (1, 0));
    let row = store::get(&db, &j.id).await.unwrap().unwrap();
    assert_eq!(row.status(), JobStatus::Queued);
    assert_eq!(row.attempts, 1);
    // The dead worker can no longer write.
    assert!(!store::set_metrics(&db, &j.id, "dead", "[]").await.unwrap());
    // Second crash reaches max_attempts (2): failed for good.
    store::claim_next(&db, "cpu", "dead2", -1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store::reap_expired(&db).await.unwrap(), (0, 1));
    let row = store::get(&db, &j.id).await.unwrap().unwrap();
    assert_eq!(row.status(), JobStatus::Failed);
    assert!(row.error.unwrap().contains("stopped responding"));
}

#[tokio::test]
async fn graceful_requeue_refunds_the_attempt() {
    let (db, _dir) = db().await;
    let (j, _) = store::insert(&db, job(None, None)).await.unwrap();
    store::claim_next(&db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(store::requeue(&db, &j.id, "w", true, None).await.unwrap());
    let row = store::get(&db, &j.id).await.unwrap().unwrap();
    assert_eq!((row.status(), row.attempts), (JobStatus::Queued, 0));
}

#[tokio::test]
async fn cancelling_a_queued_job_is_immediate_and_a_running_one_is_flagged() {
    let (db, _dir) = db().await;
    let (a, _) = store::insert(&db, job(None, None)).await.unwrap();
    let (b, _) = store::insert(&db, job(None, None)).await.unwrap();
    let running = store::claim_next(&db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.id, a.id);
    let b_after = store::request_cancel(&db, &b.id).await.unwrap().unwrap();
    assert_eq!(b_after.status(), JobStatus::Cancelled);
    let a_after = store::request_cancel(&db, &a.id).await.unwrap().unwrap();
    assert_eq!(a_after.status(), JobStatus::Running);
    assert_eq!(
        store::renew_lease(&db, &a.id, "w", 1000).await.unwrap(),
        Some(true)
    );
}

#[tokio::test]
async fn an_idempotency_key_creates_one_job() {
    let (db, _dir) = db().await;
    let (first, created) = store::insert(&db, job(Some("k1"), None)).await.unwrap();
    assert!(created);
    let (again, created) = store::insert(&db, job(Some("k1"), None)).await.unwrap();
    assert!(!created);
    assert_eq!(first.id, again.id);
    let (other, created) = store::insert(&db, job(Some("k2"), None)).await.unwrap();
    assert!(created);
    assert_ne!(other.id, first.id);
    let all = store::list(&db, None, None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    let queued = store::list(&db, Some(JobStatus::Queued), None, 1)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id, other.id, "newest first");
}
