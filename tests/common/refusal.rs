//! Table-driven refusals of `POST /datasets`: each case is an archive, the
//! limits it is uploaded under, and the status, code and detail fragments
//! of the problem it must get. An upload over the size limit is refused
//! at once; every other refusal comes through the asynchronous path: the
//! upload is accepted (202), its validation ends `failed`, and the
//! dataset's `error` is that problem. Nothing may be left on disk but the
//! record.
#![allow(dead_code)]

use axum::http::StatusCode;
use serde_json::Value;
use vitrine::config::ServeConfig;

use super::{settle, upload, TestApp};

/// One archive `POST /datasets` must refuse.
pub struct Refusal {
    /// What is wrong with the archive; names the case when it fails.
    pub case: &'static str,
    /// The limits it is uploaded under ([`defaults`] for most).
    pub limits: fn(&mut ServeConfig),
    pub archive: fn() -> Vec<u8>,
    pub status: StatusCode,
    pub code: &'static str,
    /// Every one of these appears in the problem's `detail`.
    pub detail: &'static [&'static str],
}

/// The default limits.
pub fn defaults(_: &mut ServeConfig) {}

impl Refusal {
    /// Uploads the archive to a fresh app; the problem document when the
    /// answer is as stated and nothing is left behind, else what differs.
    pub async fn check(&self) -> Result<Value, String> {
        let app = TestApp::with_config(self.limits).await;
        let body = refused(&app, &(self.archive)(), self.status, self.code).await?;
        let detail = body["detail"].as_str().unwrap_or_default();
        match self.detail.iter().find(|f| !detail.contains(*f)) {
            Some(missing) => Err(format!("the detail lacks `{missing}`: {detail}")),
            None => Ok(body),
        }
    }
}

/// Checks every case (each on its own fresh app), then fails once, naming
/// every case that went wrong and how.
pub async fn assert_refused(cases: &[Refusal]) {
    let mut failures = Vec::new();
    for case in cases {
        // Printed first, so that a panic in a builder names its case too.
        println!("refusal: {}", case.case);
        if let Err(why) = case.check().await {
            failures.push(format!("- {}: {why}", case.case));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} refusals went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Uploads `bytes` to `app`: the problem document when it is refused with
/// `status` and `code` and leaves nothing behind but the failed record,
/// else what differs. The upload is refused at once only when over the
/// size limit (`payload_too_large`, and then no record is left either);
/// otherwise it must be accepted, and its validation must end `failed`
/// with the problem as the dataset's `error`.
pub async fn refused(
    app: &TestApp,
    bytes: &[u8],
    status: StatusCode,
    code: &str,
) -> Result<Value, String> {
    let (got, body) = upload(app, bytes).await;
    if code == "payload_too_large" {
        if (got, body["code"].as_str()) != (status, Some(code)) {
            return Err(format!("expected {status} `{code}`, got {got}: {body}"));
        }
        return leftovers(app, 0).await.map(|()| body);
    }
    if got != StatusCode::ACCEPTED || body["status"] != "validating" {
        return Err(format!("expected 202 `validating`, got {got}: {body}"));
    }
    let dataset = settle(app, body["id"].as_str().unwrap_or_default()).await;
    let error = &dataset["error"];
    if dataset["status"] != "failed"
        || error["code"].as_str() != Some(code)
        || error["status"].as_u64() != Some(u64::from(status.as_u16()))
    {
        return Err(format!(
            "expected `failed` with {status} `{code}`, got {dataset}"
        ));
    }
    if !dataset["summary"].is_null() {
        return Err(format!("a failed dataset has a summary: {dataset}"));
    }
    leftovers(app, 1).await.map(|()| error.clone())
}

/// Nothing under `tmp/`, `uploads/` or `datasets/`, `rows` dataset rows
/// (the refused one's record, if any, `failed`), and no file written
/// outside the data directory by a path that escaped it.
pub async fn leftovers(app: &TestApp, rows: i64) -> Result<(), String> {
    for sub in ["tmp", "uploads", "datasets"] {
        let dir = app.dir.path().join(sub);
        if dir.exists() {
            let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
            if !left.is_empty() {
                return Err(format!("{sub}/ not empty: {left:?}"));
            }
        }
    }
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM datasets WHERE status = 'failed'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let all: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM datasets")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    if (failed, all) != (rows, rows) {
        return Err(format!(
            "{all} dataset row(s) left ({failed} failed), expected {rows} failed"
        ));
    }
    for escaped in [app.dir.path(), app.dir.path().parent().unwrap()] {
        if escaped.join("evil.png").exists() {
            return Err(format!(
                "{} was written",
                escaped.join("evil.png").display()
            ));
        }
    }
    Ok(())
}
