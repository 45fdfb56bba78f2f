//! Table-driven refusals of `POST /datasets`: each case is an archive, the
//! limits it is uploaded under, and the status, code and detail fragments
//! of the problem it must get; nothing may be left on disk or in the
//! database afterwards.
#![allow(dead_code)]

use axum::http::StatusCode;
use serde_json::Value;
use vitrine::config::ServeConfig;

use super::{upload, TestApp};

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
/// `status` and `code` and leaves nothing behind, else what differs.
pub async fn refused(
    app: &TestApp,
    bytes: &[u8],
    status: StatusCode,
    code: &str,
) -> Result<Value, String> {
    let (got, body) = upload(app, bytes).await;
    if (got, body["code"].as_str()) != (status, Some(code)) {
        return Err(format!("expected {status} `{code}`, got {got}: {body}"));
    }
    leftovers(app).await.map(|()| body)
}

/// Nothing under `tmp/` or `datasets/`, no dataset row, and no file written
/// outside the data directory by a path that escaped it.
pub async fn leftovers(app: &TestApp) -> Result<(), String> {
    for sub in ["tmp", "datasets"] {
        let dir = app.dir.path().join(sub);
        if dir.exists() {
            let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
            if !left.is_empty() {
                return Err(format!("{sub}/ not empty: {left:?}"));
            }
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM datasets")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    if rows != 0 {
        return Err(format!("{rows} dataset row(s) left"));
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
