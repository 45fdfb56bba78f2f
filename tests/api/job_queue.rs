//! The job queue's guarantees on a real SQLite file and a real PostgreSQL
//! server, each test once per database: atomic claims (many concurrent
//! claimers, a sweep's `max_parallel`), leases that guard every write,
//! expired leases requeued, idempotent submission; and the wake-ups of idle
//! workers (NOTIFY on PostgreSQL, polling on SQLite).

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vitrine::db::{Backend, Db};
use vitrine::jobs::wake::{Wake, Woken};
use vitrine::store::jobs::{self as store, JobStatus, NewJob};

use crate::common::postgres::{both_databases, database_url};

async fn db(backend: Backend) -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pool = vitrine::db::connect(&database_url(backend, dir.path()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO datasets (id, sha256, format, size_bytes, path, task, summary, created_at) VALUES ('d', 'h', 'zip', 1, 'p', 'multi_class', '{}', 0)")
        .execute(&pool).await.unwrap();
    (pool, dir)
}

both_databases!(
    concurrent_claims_hand_each_job_to_exactly_one_worker,
    claims_go_oldest_first_and_respect_the_device,
    only_the_lease_holder_can_write,
    expired_leases_are_requeued_then_failed_after_max_attempts,
    graceful_requeue_refunds_the_attempt,
    cancelling_a_queued_job_is_immediate_and_a_running_one_is_flagged,
    an_idempotency_key_creates_one_job,
    many_claimers_take_each_job_once_and_never_exceed_max_parallel,
    a_queued_job_wakes_a_waiting_worker,
);

fn job<'a>(key: Option<&'a str>, device: Option<&'a str>) -> NewJob<'a> {
    NewJob {
        dataset_id: "d",
        config_json: "{}",
        idempotency_key: key,
        device,
        max_attempts: 2,
    }
}

async fn concurrent_claims_hand_each_job_to_exactly_one_worker(backend: Backend) {
    let (db, _dir) = db(backend).await;
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

async fn claims_go_oldest_first_and_respect_the_device(backend: Backend) {
    let (db, _dir) = db(backend).await;
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

async fn only_the_lease_holder_can_write(backend: Backend) {
    let (db, _dir) = db(backend).await;
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

async fn expired_leases_are_requeued_then_failed_after_max_attempts(backend: Backend) {
    let (db, _dir) = db(backend).await;
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

async fn graceful_requeue_refunds_the_attempt(backend: Backend) {
    let (db, _dir) = db(backend).await;
    let (j, _) = store::insert(&db, job(None, None)).await.unwrap();
    store::claim_next(&db, "cpu", "w", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(store::requeue(&db, &j.id, "w", true, None).await.unwrap());
    let row = store::get(&db, &j.id).await.unwrap().unwrap();
    assert_eq!((row.status(), row.attempts), (JobStatus::Queued, 0));
}

async fn cancelling_a_queued_job_is_immediate_and_a_running_one_is_flagged(backend: Backend) {
    let (db, _dir) = db(backend).await;
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

async fn an_idempotency_key_creates_one_job(backend: Backend) {
    let (db, _dir) = db(backend).await;
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

/// 8 claimers race over 40 jobs (20 plain, 20 candidates of a sweep that
/// runs at most 3 at once), finishing each job soon after claiming it:
/// every job is claimed exactly once, and at no claim does the sweep run
/// more than 3 (counted in the database right after each claim, and by the
/// claimers themselves).
async fn many_claimers_take_each_job_once_and_never_exceed_max_parallel(backend: Backend) {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    use vitrine::store::sweeps::{self, NewCandidate, NewSweep};

    let (db, _dir) = db(backend).await;
    let mut expected = Vec::new();
    for _ in 0..20 {
        expected.push(store::insert(&db, job(None, None)).await.unwrap().0.id);
    }
    let candidates: Vec<NewCandidate> = (0..20)
        .map(|_| NewCandidate {
            config_json: "{}".into(),
            device: None,
        })
        .collect();
    let (sweep, sweep_jobs) = sweeps::insert(
        &db,
        NewSweep {
            dataset_id: "d",
            spec_json: "{}",
            metric: "accuracy",
            max_parallel: 3,
            promote_alias: None,
            rungs_json: None,
            reduction_factor: 3,
            max_seconds: None,
        },
        &candidates,
        2,
    )
    .await
    .unwrap();
    expected.extend(sweep_jobs.into_iter().map(|j| j.id));

    let held = Arc::new(AtomicI64::new(0));
    let most_held = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (db, sweep_id) = (db.clone(), sweep.id.clone());
        let (held, most_held) = (held.clone(), most_held.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut got = Vec::new();
            let mut most_running = 0;
            loop {
                let Some(j) = store::claim_next(&db, "cpu", &owner, 60_000).await.unwrap() else {
                    let queued: i64 =
                        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")
                            .fetch_one(&db)
                            .await
                            .unwrap();
                    if queued == 0 {
                        return (got, most_running);
                    }
                    // The sweep's candidates wait for a free slot.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                let in_sweep = j.sweep_id.as_deref() == Some(sweep_id.as_str());
                if in_sweep {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most_held.fetch_max(now, Ordering::SeqCst);
                    let running: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM jobs WHERE sweep_id = $1 AND status = 'running'",
                    )
                    .bind(&sweep_id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
                    most_running = most_running.max(running);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
                if in_sweep {
                    held.fetch_sub(1, Ordering::SeqCst);
                }
                assert!(
                    store::finish(&db, &j.id, &owner, JobStatus::Succeeded, None, None)
                        .await
                        .unwrap()
                );
                got.push(j.id);
            }
        }));
    }
    let mut claimed = Vec::new();
    let mut most_running = 0;
    for t in tasks {
        let (got, most) = t.await.unwrap();
        claimed.extend(got);
        most_running = most_running.max(most);
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in &claimed {
        *counts.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(claimed.len(), 40, "40 claims for 40 jobs");
    assert!(
        counts.values().all(|&n| n == 1),
        "a job claimed twice: {counts:?}"
    );
    expected.sort();
    claimed.sort();
    assert_eq!(claimed, expected, "every job claimed");
    assert!(
        most_running <= 3,
        "{most_running} of the sweep's jobs ran at once"
    );
    assert!(most_held.load(Ordering::SeqCst) <= 3);
    for id in &expected {
        let row = store::get(&db, id).await.unwrap().unwrap();
        assert_eq!(
            (row.status(), row.attempts),
            (JobStatus::Succeeded, 1),
            "{id}"
        );
    }
}

/// An idle worker's wait ends when a job is queued. On PostgreSQL the poll
/// fallback is set to an hour, so only the NOTIFY of the `jobs` trigger,
/// counted by the listener, can end it (and a dataset turning `ready` does
/// too); on SQLite there is no listener and the wait ends by polling, or at
/// once on a submission in this process.
async fn a_queued_job_wakes_a_waiting_worker(backend: Backend) {
    let (db, _dir) = db(backend).await;
    let shutdown = CancellationToken::new();
    let within = |secs| Duration::from_secs(secs);
    if backend == Backend::Sqlite {
        let wake = Wake::with_poll(Duration::from_millis(20));
        assert_eq!(wake.wait(&db, &shutdown).await, Woken::Poll);
        assert!(!wake.is_listening());
        let waiting = wake.wait(&db, &shutdown);
        wake.notify_waiters();
        assert_eq!(waiting.await, Woken::Signal);
        shutdown.cancel();
        assert_eq!(wake.wait(&db, &shutdown).await, Woken::Shutdown);
        return;
    }
    let wake = Wake::with_poll(Duration::from_secs(3600));
    // The first wait starts the listener.
    drop(wake.wait(&db, &shutdown));
    let deadline = std::time::Instant::now() + within(30);
    while !wake.is_listening() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = wake.notifications();
    // Armed, then the job is queued (as another node would: no local signal).
    let waiting = wake.wait(&db, &shutdown);
    store::insert(&db, job(None, None)).await.unwrap();
    let woken = tokio::time::timeout(within(30), waiting)
        .await
        .expect("no notification within 30 s");
    assert_eq!(woken, Woken::Signal);
    assert!(
        wake.notifications() > before,
        "woken, but not by a notification"
    );

    // A dataset turning ready (its queued jobs become claimable) notifies.
    let before = wake.notifications();
    let dataset = vitrine::store::datasets::insert_validating::<
        vitrine::datasets::record::DatasetRecord,
    >(&db, "h2", 1, "p2")
    .await
    .unwrap()
    .unwrap();
    let waiting = wake.wait(&db, &shutdown);
    vitrine::store::datasets::mark_ready::<vitrine::datasets::record::DatasetRecord>(
        &db,
        dataset.id,
        &vitrine::store::datasets::Validated {
            format: "zip",
            task: vitrine::task::Task::MultiClass,
            summary_json: "{}",
            counts_json: "{}",
        },
        "{}",
    )
    .await
    .unwrap()
    .unwrap();
    let woken = tokio::time::timeout(within(30), waiting)
        .await
        .expect("no notification within 30 s");
    assert_eq!(woken, Woken::Signal);
    assert!(wake.notifications() > before);
    shutdown.cancel();
}
