//! Audits as a service: start one in the background (answered at once),
//! follow it (a watch channel per running audit, as dataset validations
//! have), read the newest with its findings.
//!
//! An audit runs on a blocking thread at a lower CPU priority on the CPU
//! device: training owns the accelerators. Its features are cached under
//! `audits/<dataset>/<base model hash>/`, so a second audit with the same
//! base model costs only the probes. One audit per dataset runs at a time
//! (on this node); a dataset is audited once it is `ready`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use utoipa::ToSchema;
use uuid::Uuid;

use super::probe::ProbeConfig;
use super::report::AuditFindings;
use super::run::{run_audit, AuditInput, AuditProgress};
use crate::datasets::record::{self, DatasetRecord};
use crate::db::Db;
use crate::error::AppError;
use crate::store::audits as store;

/// What `POST /datasets/{id}/audit` takes.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// The backbone whose features the audit uses: a Hub id or a local
    /// directory, as a job's `base_model`.
    pub base_model: String,
    /// Folds of the out-of-sample linear probes (2 to 20, default 5).
    #[serde(default)]
    pub folds: Option<usize>,
    /// Cosine similarity of centred embeddings from which two images are
    /// near duplicates (0.5 to 1, default 0.95).
    #[serde(default)]
    pub near_duplicate_threshold: Option<f64>,
}

/// `running`, `succeeded` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    Running,
    Succeeded,
    Failed,
}

/// An audit, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditView {
    pub id: Uuid,
    pub dataset_id: Uuid,
    pub status: AuditStatus,
    pub base_model: String,
    /// While running: the phase and its counts.
    pub progress: Option<AuditProgress>,
    /// Once succeeded.
    pub findings: Option<AuditFindings>,
    /// Once failed: why.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl AuditView {
    pub fn is_settled(&self) -> bool {
        self.status != AuditStatus::Running
    }

    fn of_row(row: store::AuditRow) -> Self {
        let status = match row.status.as_str() {
            "succeeded" => AuditStatus::Succeeded,
            "failed" => AuditStatus::Failed,
            _ => AuditStatus::Running,
        };
        let time = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
        Self {
            id: row.id,
            dataset_id: row.dataset_id,
            status,
            base_model: row.base_model,
            progress: parse(row.progress),
            findings: parse(row.findings),
            error: row.error,
            created_at: time(row.created_at),
            finished_at: row.finished_at.map(time),
        }
    }
}

/// The audit service. Cheap to clone.
#[derive(Clone)]
pub struct Audits {
    db: Db,
    data_dir: PathBuf,
    live: Arc<Mutex<HashMap<Uuid, watch::Sender<AuditView>>>>,
}

/// How often a running audit writes its progress to the database.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// A stored JSON document, `None` when absent or unreadable (written by
/// another version).
fn parse<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl Audits {
    pub fn new(db: Db, data_dir: PathBuf) -> Self {
        Self {
            db,
            data_dir,
            live: Default::default(),
        }
    }

    /// Starts an audit of dataset `id`: 404 for no such dataset, 409 while
    /// it validates (or failed) or is audited already, 422 for a bad
    /// request or a base model that cannot be loaded.
    pub async fn start(&self, id: &str, req: AuditRequest) -> Result<AuditView, AppError> {
        let dataset = self.dataset(id).await?;
        if !dataset.is_ready() {
            return Err(AppError::conflict(
                "dataset_not_ready",
                format!(
                    "dataset `{id}` is {}: only a ready dataset can be audited",
                    dataset.status.as_str()
                ),
            ));
        }
        let input = self.input_of(&dataset, &req).await?;
        let audit_id = Uuid::now_v7();
        let view = AuditView {
            id: audit_id,
            dataset_id: dataset.id,
            status: AuditStatus::Running,
            base_model: req.base_model.clone(),
            progress: None,
            findings: None,
            error: None,
            created_at: Utc::now(),
            finished_at: None,
        };
        {
            let mut live = self.live.lock().unwrap();
            if live.contains_key(&dataset.id) {
                return Err(AppError::conflict(
                    "audit_running",
                    format!("dataset `{id}` is being audited; follow GET /datasets/{id}/audit"),
                ));
            }
            live.insert(dataset.id, watch::channel(view.clone()).0);
        }
        if let Err(e) = store::insert(&self.db, audit_id, dataset.id, &req.base_model).await {
            self.live.lock().unwrap().remove(&dataset.id);
            return Err(e.into());
        }
        let service = self.clone();
        tokio::spawn(service.run(view.clone(), input));
        Ok(view)
    }

    async fn dataset(&self, id: &str) -> Result<DatasetRecord, AppError> {
        let not_found = || AppError::not_found(format!("no dataset `{id}`"));
        let uuid: Uuid = id.parse().map_err(|_| not_found())?;
        record::get(&self.db, uuid).await?.ok_or_else(not_found)
    }

    /// The audit's input: the request checked, the base model resolved.
    async fn input_of(
        &self,
        dataset: &DatasetRecord,
        req: &AuditRequest,
    ) -> Result<AuditInput, AppError> {
        let folds = req.folds.unwrap_or(5);
        if !(2..=20).contains(&folds) {
            return Err(AppError::unprocessable(
                "invalid_audit",
                "`folds` must be 2 to 20",
            ));
        }
        let threshold = req.near_duplicate_threshold.unwrap_or(0.95);
        if !(0.5..=1.0).contains(&threshold) {
            return Err(AppError::unprocessable(
                "invalid_audit",
                "`near_duplicate_threshold` must be 0.5 to 1",
            ));
        }
        let source = req.base_model.clone();
        let resolved = tokio::task::spawn_blocking(move || -> anyhow::Result<PathBuf> {
            let dir =
                crate::model::resolve_model_source(&source, &crate::model::HubOptions::from_env())?;
            crate::model::preflight::check_base_model(&dir, None)?;
            Ok(dir)
        })
        .await
        .map_err(anyhow::Error::from)?;
        let base_model_dir = resolved
            .map_err(|e| AppError::unprocessable("unknown_base_model", format!("{e:#}")))?;
        let model_key =
            hex::encode(&Sha256::digest(base_model_dir.to_string_lossy().as_bytes())[..8]);
        Ok(AuditInput {
            dataset_dir: dataset.dir(&self.data_dir),
            base_model_dir,
            work_dir: self
                .data_dir
                .join("audits")
                .join(dataset.id.to_string())
                .join(model_key),
            device: tch::Device::Cpu,
            probe: ProbeConfig {
                folds,
                ..Default::default()
            },
            near_duplicate_threshold: threshold,
        })
    }

    /// The newest audit of dataset `id` (live while it runs here).
    pub async fn latest(&self, id: &str) -> Result<AuditView, AppError> {
        let dataset = self.dataset(id).await?;
        if let Some(rx) = self.subscribe(dataset.id) {
            return Ok(rx.borrow().clone());
        }
        let row = store::latest(&self.db, dataset.id).await?;
        row.map(AuditView::of_row)
            .ok_or_else(|| AppError::not_found(format!("dataset `{id}` has not been audited")))
    }

    /// The newest audit's CSV, once it succeeded.
    pub async fn latest_csv(&self, id: &str) -> Result<String, AppError> {
        let view = self.latest(id).await?;
        if view.status != AuditStatus::Succeeded {
            return Err(AppError::conflict(
                "audit_not_finished",
                format!("the audit of dataset `{id}` is {:?}: no CSV", view.status).to_lowercase(),
            ));
        }
        store::csv(&self.db, view.id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("dataset `{id}` has no audit CSV")))
    }

    /// The live view of dataset `id`'s running audit, if it runs here.
    pub fn subscribe(&self, dataset_id: Uuid) -> Option<watch::Receiver<AuditView>> {
        self.live
            .lock()
            .unwrap()
            .get(&dataset_id)
            .map(|tx| tx.subscribe())
    }

    fn publish(&self, view: &AuditView) {
        if let Some(tx) = self.live.lock().unwrap().get(&view.dataset_id) {
            tx.send_replace(view.clone());
        }
    }
}

impl Audits {
    /// Runs the audit on a blocking thread, publishing progress, and
    /// records its end.
    async fn run(self, mut view: AuditView, input: AuditInput) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A thread of its own, at a lower priority: requests come first.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("vitrine-audit".into())
            .spawn(move || {
                crate::torch_info::threads::lower_thread_priority();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_audit(&input, &mut |p| drop(tx.send(p)), &stop)
                }));
                let _ = done_tx.send(result);
            });
        if let Err(e) = spawned {
            self.record_end(view, Err(format!("starting the audit's thread: {e}")))
                .await;
            return;
        }
        let mut last_write = Instant::now();
        while let Some(p) = rx.recv().await {
            view.progress = Some(p);
            self.publish(&view);
            if last_write.elapsed() >= WRITE_EVERY {
                last_write = Instant::now();
                let json = serde_json::to_string(&view.progress).unwrap_or_default();
                if let Err(e) = store::set_progress(&self.db, view.id, &json).await {
                    tracing::warn!(audit = %view.id, error = ?e, "recording audit progress failed");
                }
            }
        }
        let outcome = match done_rx.await {
            Ok(Ok(Ok(Some(out)))) => Ok(out),
            Ok(Ok(Ok(None))) => Err("the audit was stopped".to_string()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            _ => {
                tracing::error!(audit = %view.id, "the audit panicked");
                Err("the audit crashed (a fault of this service, logged)".to_string())
            }
        };
        self.record_end(view, outcome).await;
    }

    async fn record_end(
        &self,
        mut view: AuditView,
        outcome: Result<super::run::AuditOutput, String>,
    ) {
        let written = match &outcome {
            Ok(out) => {
                let json = serde_json::to_string(&out.findings).unwrap_or_default();
                store::succeed(&self.db, view.id, &json, &out.csv).await
            }
            Err(e) => store::fail(&self.db, view.id, e).await,
        };
        if let Err(e) = written {
            tracing::error!(audit = %view.id, error = ?e, "recording the audit's end failed");
        }
        view.finished_at = Some(Utc::now());
        match outcome {
            Ok(out) => {
                view.status = AuditStatus::Succeeded;
                view.findings = Some(out.findings);
            }
            Err(e) => {
                tracing::warn!(audit = %view.id, error = %e, "the audit failed");
                view.status = AuditStatus::Failed;
                view.error = Some(e);
            }
        }
        if let Some(tx) = self.live.lock().unwrap().remove(&view.dataset_id) {
            tx.send_replace(view);
        }
    }
}
