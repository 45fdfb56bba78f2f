//! The sweep as the API shows it, with its leaderboard. The same ranking
//! picks the winner when the sweep ends (`supervisor`).

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::db::Db;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::spec::SweepMetric;
use crate::jobs::view::rfc3339;
use crate::store::jobs::{JobRow, JobStatus};
use crate::store::sweeps::SweepRow;

/// One candidate of a sweep.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaderboardRow {
    /// 1 is the best.
    pub rank: usize,
    pub job_id: String,
    pub status: JobStatus,
    #[schema(value_type = Object)]
    pub config: Value,
    /// The sweep's metric on validation at `best_epoch`: the epoch kept as
    /// the model once there is one (the trainer keeps its best epoch by
    /// accuracy, or mAP for multi-label), else the best epoch so far.
    pub best_metric: Option<f64>,
    pub best_epoch: Option<u32>,
    /// Epochs completed.
    pub epochs_done: usize,
    /// The sweep's metric on the dataset's test split (the kept model,
    /// evaluated once), when the dataset has one.
    pub test_metric: Option<f64>,
    /// Parameters the candidate's mode trains.
    pub trainable_parameters: Option<u64>,
    /// Seconds from the job's first start to its end (or now).
    pub wall_seconds: Option<f64>,
    /// Mean training throughput over its epochs.
    pub images_per_sec: Option<f64>,
    /// The rung (an epoch number) at which successive halving stopped it.
    pub stopped_rung: Option<i64>,
    pub model_id: Option<String>,
}

/// A hyper-parameter sweep.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SweepView {
    pub id: String,
    pub status: JobStatus,
    pub dataset_id: String,
    pub metric: SweepMetric,
    pub max_parallel: i64,
    pub promote_alias: Option<String>,
    /// Halving rungs (epochs); empty without early stopping.
    pub rungs: Vec<u32>,
    pub reduction_factor: i64,
    /// Rungs decided so far.
    pub rungs_done: i64,
    pub max_seconds: Option<f64>,
    /// Why it stopped before its candidates finished: `cancelled` or `budget`.
    pub stop_reason: Option<String>,
    pub cancel_requested: bool,
    /// The spec as accepted.
    #[schema(value_type = Object)]
    pub spec: Value,
    pub winner_job_id: Option<String>,
    /// The winner's model (promoted to `promote_alias` when set).
    pub winner_model_id: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// Every candidate, best first (see [`rank`]).
    pub leaderboard: Vec<LeaderboardRow>,
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The value of `metric` at `epoch` in a job's per-epoch metrics.
pub fn metric_at(job: &JobRow, metric: SweepMetric, epoch: u32) -> Option<f64> {
    epochs(job)
        .iter()
        .find(|m| m["epoch"].as_u64() == Some(epoch as u64))
        .and_then(|m| metric.read(&m["validation"]))
}

fn epochs(job: &JobRow) -> Vec<Value> {
    match json(&job.metrics) {
        Value::Array(list) => list,
        _ => vec![],
    }
}

/// A candidate's row, before ranking. `card` is its model's card (JSON).
pub fn row_of(
    job: &JobRow,
    metric: SweepMetric,
    card: Option<&Value>,
    now_ms: i64,
) -> LeaderboardRow {
    let history = epochs(job);
    let kept = card
        .and_then(|c| c["best_epoch"].as_u64())
        .map(|e| e as u32);
    let (best_metric, best_epoch) = match kept {
        Some(epoch) => (
            card.and_then(|c| metric.read(&c["validation"]["validation"]))
                .or_else(|| metric_at(job, metric, epoch)),
            Some(epoch),
        ),
        None => history
            .iter()
            .filter_map(|m| Some((metric.read(&m["validation"])?, m["epoch"].as_u64()? as u32)))
            // First best epoch on ties.
            .fold(None, |best: Option<(f64, u32)>, (v, e)| match best {
                Some((b, _)) if b >= v => best,
                _ => Some((v, e)),
            })
            .map_or((None, None), |(v, e)| (Some(v), Some(e))),
    };
    let rates: Vec<f64> = history
        .iter()
        .filter_map(|m| m["train_images_per_sec"].as_f64())
        .collect();
    let progress = job.progress.as_deref().map(json).unwrap_or(Value::Null);
    let images_per_sec = if rates.is_empty() {
        progress["images_per_sec"].as_f64()
    } else {
        Some(rates.iter().sum::<f64>() / rates.len() as f64)
    };
    LeaderboardRow {
        rank: 0,
        job_id: job.id.clone(),
        status: job.status(),
        config: json(&job.config),
        best_metric,
        best_epoch,
        epochs_done: history.len(),
        test_metric: card.and_then(|c| metric.read(&c["test"]["metrics"])),
        trainable_parameters: progress["trainable_parameters"].as_u64(),
        wall_seconds: job
            .started_at
            .map(|s| (job.finished_at.unwrap_or(now_ms) - s).max(0) as f64 / 1000.0),
        images_per_sec,
        stopped_rung: job.stopped_rung,
        model_id: job.model_id.clone(),
    }
}

/// Best first. A candidate halving stopped ranks below every one that went
/// further (a later rung above an earlier one), as successive halving
/// judged; then the higher metric; ties go to the cheaper candidate: fewer
/// trainable parameters (deterministic), then less wall time; then the
/// older job.
pub fn rank(rows: &mut [LeaderboardRow]) {
    fn desc(a: Option<f64>, b: Option<f64>) -> Ordering {
        // None last.
        match (a, b) {
            (Some(a), Some(b)) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    fn asc_none_last<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    let reach = |r: &LeaderboardRow| r.stopped_rung.unwrap_or(i64::MAX);
    rows.sort_by(|a, b| {
        reach(b)
            .cmp(&reach(a))
            .then_with(|| desc(a.best_metric, b.best_metric))
            .then_with(|| asc_none_last(a.trainable_parameters, b.trainable_parameters))
            .then_with(|| asc_none_last(a.wall_seconds, b.wall_seconds))
            .then_with(|| a.job_id.cmp(&b.job_id))
    });
    for (i, r) in rows.iter_mut().enumerate() {
        r.rank = i + 1;
    }
}

/// The winner: the best-ranked candidate with a model.
pub fn winner(rows: &[LeaderboardRow]) -> Option<&LeaderboardRow> {
    rows.iter().find(|r| r.model_id.is_some())
}

/// The ranked leaderboard of a sweep's jobs (reads their models' cards).
pub async fn leaderboard(
    db: &Db,
    sweep: &SweepRow,
    jobs: &[JobRow],
) -> sqlx::Result<Vec<LeaderboardRow>> {
    let mut cards = Vec::with_capacity(jobs.len());
    for job in jobs {
        cards.push(match &job.model_id {
            Some(id) => crate::store::models::get(db, id)
                .await?
                .map(|m| json(&m.metrics)),
            None => None,
        });
    }
    let candidates = jobs.iter().zip(cards.iter().map(Option::as_ref));
    Ok(ranked(sweep, candidates, crate::db::now_ms()))
}

/// The leaderboard of candidates and their models' cards, ranked.
fn ranked<'a>(
    sweep: &SweepRow,
    candidates: impl Iterator<Item = (&'a JobRow, Option<&'a Value>)>,
    now_ms: i64,
) -> Vec<LeaderboardRow> {
    let metric = SweepMetric::parse(&sweep.metric).unwrap_or(SweepMetric::Accuracy);
    let mut rows: Vec<LeaderboardRow> = candidates
        .map(|(job, card)| row_of(job, metric, card, now_ms))
        .collect();
    rank(&mut rows);
    rows
}

/// The whole view of a stored sweep.
pub async fn view(db: &Db, sweep: &SweepRow) -> sqlx::Result<SweepView> {
    let mut views = views(db, std::slice::from_ref(sweep)).await?;
    Ok(views.remove(0))
}

/// The views of stored sweeps, in their order: their candidates and the
/// candidates' models are read in one query for them all.
pub async fn views(db: &Db, sweeps: &[SweepRow]) -> sqlx::Result<Vec<SweepView>> {
    let ids: Vec<&str> = sweeps.iter().map(|s| s.id.as_str()).collect();
    let mut by_sweep: HashMap<String, Vec<(JobRow, Option<Value>)>> = HashMap::new();
    for c in crate::store::sweeps::candidates_of(db, &ids).await? {
        let card = c.model_card.as_deref().map(json);
        let sweep_id = c.job.sweep_id.clone().unwrap_or_default();
        by_sweep.entry(sweep_id).or_default().push((c.job, card));
    }
    let now = crate::db::now_ms();
    Ok(sweeps
        .iter()
        .map(|sweep| {
            let candidates = by_sweep.remove(&sweep.id).unwrap_or_default();
            let board = candidates.iter().map(|(job, card)| (job, card.as_ref()));
            view_of(sweep, ranked(sweep, board, now))
        })
        .collect())
}

/// A sweep's view around its leaderboard.
fn view_of(sweep: &SweepRow, leaderboard: Vec<LeaderboardRow>) -> SweepView {
    let winner_model_id = sweep.winner_job_id.as_ref().and_then(|w| {
        leaderboard
            .iter()
            .find(|r| &r.job_id == w)
            .and_then(|r| r.model_id.clone())
    });
    SweepView {
        id: sweep.id.clone(),
        status: sweep.status(),
        dataset_id: sweep.dataset_id.clone(),
        metric: SweepMetric::parse(&sweep.metric).unwrap_or(SweepMetric::Accuracy),
        max_parallel: sweep.max_parallel,
        promote_alias: sweep.promote_alias.clone(),
        rungs: sweep.rung_epochs(),
        reduction_factor: sweep.reduction_factor,
        rungs_done: sweep.rungs_done,
        max_seconds: sweep.max_seconds,
        stop_reason: sweep.stop_reason.clone(),
        cancel_requested: sweep.cancel_requested != 0,
        spec: json(&sweep.spec_json),
        winner_job_id: sweep.winner_job_id.clone(),
        winner_model_id,
        error: sweep.error.clone(),
        created_at: rfc3339(sweep.created_at),
        finished_at: sweep.finished_at.map(rfc3339),
        leaderboard,
    }
}

/// The view as JSON without the fields that move with the clock (running
/// candidates' wall time changes every tick; it alone is no news).
pub fn without_clock(view: &Value) -> Value {
    let mut v = view.clone();
    if let Some(rows) = v["leaderboard"].as_array_mut() {
        for r in rows {
            if let Some(o) = r.as_object_mut() {
                o.remove("wall_seconds");
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        id: &str,
        metric: Option<f64>,
        params: Option<u64>,
        secs: Option<f64>,
    ) -> LeaderboardRow {
        LeaderboardRow {
            rank: 0,
            job_id: id.into(),
            status: JobStatus::Succeeded,
            config: Value::Null,
            best_metric: metric,
            best_epoch: metric.map(|_| 1),
            epochs_done: 1,
            test_metric: None,
            trainable_parameters: params,
            wall_seconds: secs,
            images_per_sec: None,
            stopped_rung: None,
            model_id: Some(format!("m-{id}")),
        }
    }

    fn order(rows: &mut [LeaderboardRow]) -> Vec<String> {
        rank(rows);
        rows.iter().map(|r| r.job_id.clone()).collect()
    }

    #[test]
    fn best_first_and_ties_go_to_the_cheaper_candidate() {
        let mut rows = vec![
            row("a", Some(0.8), Some(1000), Some(5.0)),
            row("b", Some(0.9), Some(9000), Some(9.0)),
            row("c", Some(0.8), Some(100), Some(50.0)), // fewer parameters beats a
            row("d", Some(0.8), Some(100), Some(10.0)), // and less time beats c
            row("e", None, None, None),                 // nothing measured: last
        ];
        assert_eq!(order(&mut rows), ["b", "d", "c", "a", "e"]);
        assert_eq!(rows[0].rank, 1);
        assert_eq!(winner(&rows).unwrap().job_id, "b");
    }

    #[test]
    fn candidates_halving_stopped_rank_below_those_that_went_further() {
        let mut rows = vec![
            row("early", Some(0.99), Some(1), Some(1.0)),
            row("late", Some(0.5), Some(1), Some(1.0)),
            row("survivor", Some(0.4), Some(1), Some(1.0)),
        ];
        rows[0].stopped_rung = Some(1);
        rows[1].stopped_rung = Some(3);
        assert_eq!(order(&mut rows), ["survivor", "late", "early"]);
        // Without a model the survivor cannot win: the next row with one does.
        rows[0].model_id = None;
        assert_eq!(winner(&rows).unwrap().job_id, "late");
    }

    #[test]
    fn the_kept_epoch_is_the_models_and_before_it_the_best_so_far() {
        let job = |metrics: Value| JobRow {
            id: "j".into(),
            status: "running".into(),
            dataset_id: "d".into(),
            config: "{}".into(),
            idempotency_key: None,
            attempts: 1,
            max_attempts: 3,
            device: None,
            lease_owner: None,
            lease_expires_at: None,
            cancel_requested: 0,
            progress: Some(r#"{"trainable_parameters": 42}"#.into()),
            metrics: metrics.to_string(),
            error: None,
            model_id: None,
            created_at: 0,
            started_at: Some(1_000),
            finished_at: None,
            updated_at: 0,
            sweep_id: Some("s".into()),
            stopped_rung: None,
            error_code: None,
        };
        let e = |n: u32, acc: f64, f1: f64| {
            serde_json::json!({"epoch": n, "train_images_per_sec": 10.0 * n as f64,
                               "validation": {"accuracy": acc, "macro_f1": f1}})
        };
        let j = job(serde_json::json!([
            e(1, 0.5, 0.4),
            e(2, 0.7, 0.3),
            e(3, 0.7, 0.6)
        ]));
        let r = row_of(&j, SweepMetric::Accuracy, None, 3_500);
        assert_eq!(
            (r.best_metric, r.best_epoch),
            (Some(0.7), Some(2)),
            "first best epoch"
        );
        assert_eq!(r.trainable_parameters, Some(42));
        assert_eq!(r.wall_seconds, Some(2.5));
        assert_eq!(r.images_per_sec, Some(20.0));
        let r = row_of(&j, SweepMetric::MacroF1, None, 3_500);
        assert_eq!((r.best_metric, r.best_epoch), (Some(0.6), Some(3)));
        // With a model: its epoch and its card's metrics (test split too).
        let card = serde_json::json!({"best_epoch": 2, "validation": e(2, 0.7, 0.3),
                                      "test": {"loss": 1.0, "metrics": {"accuracy": 0.65}}});
        let r = row_of(&j, SweepMetric::Accuracy, Some(&card), 3_500);
        assert_eq!(
            (r.best_metric, r.best_epoch, r.test_metric),
            (Some(0.7), Some(2), Some(0.65))
        );
        assert_eq!(metric_at(&j, SweepMetric::Accuracy, 3), Some(0.7));
        assert_eq!(metric_at(&j, SweepMetric::Accuracy, 4), None);
    }
}
