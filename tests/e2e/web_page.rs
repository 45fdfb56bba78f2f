//! The web page at `/`, driven in headless chromium over WebDriver
//! (`tests/common/webdriver.rs`) against the real `vitrine` binary: upload
//! a dataset and see its class chart and thumbnails, start a job from the
//! form and watch the curves gain a point per epoch, read the confusion
//! matrix and check it against the API, promote the model, predict an
//! image, read a multi-label job's thresholds and a sweep's leaderboard;
//! with `--api-token`, the page asks for the token, refuses a wrong one and
//! works with the right one; refusals show beside the file or field they
//! name; a dropped connection shows "Reconnecting" and recovers.
//! Screenshots of each page land in `target/test-output/screenshots/` (the
//! path is printed).
//!
//! Without chromium and chromedriver the tests print `SKIPPED` and pass,
//! except under `CI`, where they fail.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::e2e::fixtures;
use crate::common::process::{free_port, ServerProcess};
use crate::common::webdriver::Browser;

const WAIT: Duration = Duration::from_secs(30);
const JOB_TIMEOUT: Duration = Duration::from_secs(240);
const EPOCHS: u64 = 4;

/// One browser at a time: the machine running the suite may have 2 cores.
pub(crate) static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn get_json(url: &str, path: &str) -> Value {
    let resp = reqwest::get(format!("{url}{path}")).await.unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().await.unwrap()
}

/// Upload, train, watch, check the confusion matrix, promote, predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uploads_trains_live_and_predicts() {
    let _one = ONE_BROWSER.lock().await;
    let test = "the_page_uploads_trains_live_and_predicts";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let fx = fixtures();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--cpu-threads", "2"]).await;
    let url = &server.url;

    // The page is served, with its assets, and needs no token here.
    browser.goto(&format!("{url}/")).await;
    browser.wait_for("#upload-form", WAIT).await;
    browser.screenshot("01-datasets-empty").await;

    // Upload: the class chart shows the API's counts per class and split.
    let file = browser.wait_for("#dataset-file", WAIT).await;
    browser
        .type_text(&file, fx.tints_zip.to_str().unwrap())
        .await;
    // Record the progress bar as the upload reports it (the hash routes
    // keep the document, so the record outlives the navigation).
    browser
        .js(
            "window.__upload = [];
             const bar = document.querySelector('#upload-progress');
             new MutationObserver(() => window.__upload.push([bar.value, bar.max, bar.hidden]))
               .observe(bar, {attributes: true});
             return true;",
            json!([]),
        )
        .await;
    browser
        .click(&browser.wait_for("#upload-button", WAIT).await)
        .await;
    browser.wait_for("#class-chart rect.bar", WAIT).await;
    let progress: Vec<(f64, f64, bool)> =
        serde_json::from_value(browser.js("return window.__upload", json!([])).await).unwrap();
    let archive = std::fs::metadata(&fx.tints_zip).unwrap().len() as f64;
    let (sent, total, _) = *progress
        .iter()
        .rfind(|p| !p.2 && p.1 > 1.0)
        .unwrap_or_else(|| panic!("the progress bar never showed bytes: {progress:?}"));
    assert!(
        sent == total && total > archive,
        "the bar ends full at the body's size (archive {archive} bytes): {progress:?}"
    );
    let hash = browser.url().await;
    let dataset_id = hash.rsplit('/').next().unwrap().to_string();
    let record = get_json(url, &format!("/datasets/{dataset_id}")).await;
    let bars = browser
        .js(
            "return [...document.querySelectorAll('#class-chart rect.bar')]
               .map(r => [r.dataset.label, r.dataset.split, Number(r.dataset.count)]);",
            json!([]),
        )
        .await;
    let mut expected = Vec::new();
    for (split, s) in record["summary"]["splits"].as_object().unwrap() {
        for (label, n) in s["per_label"].as_object().unwrap() {
            expected.push(json!([label, split, n]));
        }
    }
    let mut got = bars.as_array().unwrap().clone();
    let key = |v: &Value| format!("{}", v);
    got.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(got, expected, "the bars are the API's per-class counts");
    assert_eq!(got.len(), 8, "4 classes x (train, validation)");
    // Thumbnails: fetched with the API (as blob: URLs), some per class.
    let thumbs = browser
        .wait_js(
            "thumbnails loaded",
            "const imgs = [...document.querySelectorAll('#thumbnails img')];
             const ok = imgs.filter(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0);
             return imgs.length && ok.length === imgs.length ? ok.length : null;",
            WAIT,
        )
        .await;
    assert_eq!(thumbs, 16, "4 thumbnails for each of the 4 classes");
    browser.full_screenshot("02-dataset").await;

    // A job from the form, on this dataset.
    browser
        .click(&browser.wait_for("#train-this", WAIT).await)
        .await;
    browser.wait_for("#job-form", WAIT).await;
    let chosen = browser
        .js(
            "return document.querySelector('#f-dataset_id').value",
            json!([]),
        )
        .await;
    assert_eq!(chosen, dataset_id.as_str(), "the form names the dataset");
    browser
        .fill("#f-base_model", fx.base_model.to_str().unwrap())
        .await;
    browser.select("#f-mode", "full").await;
    browser.fill("#f-epochs", &EPOCHS.to_string()).await;
    browser.fill("#f-learning_rate", "0.002").await;
    browser.screenshot("03-job-form").await;
    browser
        .click(&browser.wait_for("#start-job", WAIT).await)
        .await;
    browser.wait_for("#job-curves", WAIT).await;
    let job_id = browser.url().await.rsplit('/').next().unwrap().to_string();
    // Record the loss curve's point count at each re-render while it trains.
    browser
        .js(
            "window.__counts = [];
             const note = () => {
               const c = document.querySelector('#loss-chart');
               if (c) window.__counts.push(Number(c.dataset.points));
             };
             note();
             new MutationObserver(note).observe(document.querySelector('#job-curves'), {childList: true, subtree: true});
             return true;",
            json!([]),
        )
        .await;
    let mut shot_while_running = false;
    let started = std::time::Instant::now();
    loop {
        let status = browser
            .js(
                "const b = document.querySelector('#job-head .badge'); return b && b.dataset.status;",
                json!([]),
            )
            .await;
        if status == "succeeded" {
            break;
        }
        assert!(
            status != "failed" && status != "cancelled",
            "job {job_id} ended {status}"
        );
        if !shot_while_running && status == "running" {
            let points = browser
                .js(
                    "return Number(document.querySelector('#loss-chart').dataset.points)",
                    json!([]),
                )
                .await;
            if points.as_u64() >= Some(2) {
                browser.full_screenshot("04-job-running").await;
                shot_while_running = true;
            }
        }
        if started.elapsed() > JOB_TIMEOUT {
            browser.fail("the job did not succeed in time").await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let counts: Vec<u64> =
        serde_json::from_value(browser.js("return window.__counts", json!([])).await).unwrap();
    // Each epoch adds a train and a validation point to the loss chart.
    let mut seen: Vec<u64> = counts.clone();
    seen.dedup();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "the curve only grows: {counts:?}"
    );
    assert_eq!(*counts.last().unwrap(), 2 * EPOCHS, "{counts:?}");
    // Seen part-drawn, then growing: the page followed the stream. (The
    // recorder starts when the job's page is up, so under load it may miss
    // the first epoch; one intermediate state and a later one suffice.)
    let partial = seen.iter().filter(|&&n| n > 0 && n < 2 * EPOCHS).count();
    assert!(
        partial >= 1 && seen.len() >= 2,
        "the curve gained points while the job ran, not only at its end: {counts:?}"
    );
    println!("loss chart point counts as rendered: {seen:?}");
    let step_points = browser
        .js(
            "return Number(document.querySelector('#step-chart').dataset.points)",
            json!([]),
        )
        .await;
    // The trainer reads the loss back every 10 steps and this tiny job has
    // a few tens of steps, so the stream carries few distinct readings and
    // a loaded box may coalesce them: at least one must reach the chart.
    assert!(
        step_points.as_u64() >= Some(1),
        "per-step loss points from the stream: {step_points}"
    );

    // Where the time went: one stacked bar, its compute segment the share
    // the API's epochs add up to.
    let bar = browser
        .js(
            "const b = document.querySelector('#time-shares');
             return b ? Object.fromEntries([...b.querySelectorAll('.share')]
               .map(s => [s.dataset.phase, parseFloat(s.style.width)])) : null;",
            json!([]),
        )
        .await;
    let job = get_json(url, &format!("/jobs/{job_id}")).await;
    let sum = |k: &str| -> f64 {
        job["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["time_shares"][k].as_f64().unwrap())
            .sum()
    };
    let expected = 100.0 * sum("compute") / sum("wall");
    let shown = bar["compute"].as_f64().unwrap_or(-1.0);
    assert!(
        (shown - expected).abs() < 0.11,
        "compute {shown}% on the page, {expected}% from the API"
    );
    let total: f64 = bar
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_f64)
        .sum();
    assert!(
        (total - 100.0).abs() < 0.5,
        "the segments fill the bar: {bar}"
    );
    // On the CPU the phases account for each epoch's wall time.
    for m in job["metrics"].as_array().unwrap() {
        let s = &m["time_shares"];
        let phases: f64 = ["input_wait", "compute", "optimizer", "eval", "checkpoint"]
            .iter()
            .map(|k| s[k].as_f64().unwrap())
            .sum();
        let wall = s["wall"].as_f64().unwrap();
        assert!(
            (phases - wall).abs() <= 0.05 * wall,
            "epoch shares {s} miss the wall time"
        );
    }
    // And /metrics has them, with the input cache that later epochs read.
    let value = |name: &'static str| crate::common::e2e::metric(url, name);
    let compute = value("vitrine_train_phase_seconds_total{phase=\"compute\"}").await;
    assert!(compute > Some(0.0), "{compute:?}");
    assert!(value("vitrine_input_cache_builds_total").await >= Some(1.0));
    let hits = value("vitrine_input_cache_hits_total").await;
    assert!(hits > Some(0.0), "later epochs read the cache: {hits:?}");
    assert!(value("vitrine_input_cache_bytes").await > Some(0.0));

    // The confusion matrix is the API's, for the epoch the page names.
    let shown = browser.wait_for("#confusion td", WAIT).await;
    let _ = shown;
    let page = browser
        .js(
            "const t = document.querySelector('#confusion');
             const rows = [...t.querySelectorAll('tbody tr')].map(r =>
               [...r.querySelectorAll('td')].map(td => Number(td.textContent)));
             return {epoch: Number(t.dataset.epoch), rows};",
            json!([]),
        )
        .await;
    let job = get_json(url, &format!("/jobs/{job_id}")).await;
    assert_eq!(job["status"], "succeeded");
    let epoch = page["epoch"].as_u64().unwrap();
    let metrics = job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["epoch"] == epoch)
        .unwrap_or_else(|| panic!("no epoch {epoch} in {}", job["metrics"]));
    assert_eq!(
        page["rows"], metrics["validation"]["confusion_matrix"],
        "the heat map shows the API's confusion matrix of epoch {epoch}"
    );
    let total: u64 = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 80, "every validation image is counted once");
    // The best epoch by accuracy is the one shown by default.
    let best = job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["validation"]["accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(metrics["validation"]["accuracy"].as_f64(), Some(best));
    let per_class = browser
        .js(
            "return document.querySelectorAll('#per-class tbody tr').length",
            json!([]),
        )
        .await;
    assert_eq!(per_class, 4);
    browser.full_screenshot("05-job").await;

    // Models: promote this one to production.
    let model_id = job["model_id"].as_str().unwrap().to_string();
    browser.goto(&format!("{url}/#/models")).await;
    browser
        .click(
            &browser
                .wait_for(&format!("button.promote[data-model='{model_id}']"), WAIT)
                .await,
        )
        .await;
    browser
        .wait_js(
            "the production chip",
            &format!(
                "return document.querySelector(\"tr[data-model='{model_id}'] .chip.prod\") !== null"
            ),
            WAIT,
        )
        .await;
    let production = get_json(url, "/models/production").await;
    assert_eq!(production["id"], model_id.as_str());
    browser.screenshot("06-models").await;

    // Predict: the page's top label is the API's, and it is right.
    browser.goto(&format!("{url}/#/predict")).await;
    let file = browser.wait_for("#predict-file", WAIT).await;
    browser.type_text(&file, fx.red_png.to_str().unwrap()).await;
    let top = browser
        .wait_js(
            "a prediction",
            "const li = document.querySelector('#predictions li'); return li && li.dataset.label;",
            WAIT,
        )
        .await;
    let api_answer: Value = client(None)
        .post(format!("{url}/predict?top_k=5"))
        .header("content-type", "image/png")
        .body(std::fs::read(&fx.red_png).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(top, api_answer["predictions"][0]["label"]);
    assert_eq!(top, "red", "{api_answer}");
    let bars = browser
        .js(
            "return document.querySelectorAll('#predictions .scorebar').length",
            json!([]),
        )
        .await;
    assert_eq!(bars, 4, "one score bar per label");
    // Explain: one overlay per top label, by the ViT's default method.
    let explain = browser.wait_for("#explain-button", WAIT).await;
    browser.click(&explain).await;
    let overlays = browser
        .wait_js(
            "explanation overlays",
            "const f = document.querySelectorAll('#explain-overlays figure img');
             return f.length && [...f].every(i => i.complete && i.naturalWidth > 0) ? f.length : null;",
            WAIT,
        )
        .await;
    assert_eq!(overlays, 3, "one overlay for each of the three best labels");
    browser.screenshot("07-predict").await;

    // The model page's calibration card: the API's temperature, and a
    // reliability diagram with the raw and calibrated bins.
    let view = get_json(url, &format!("/models/{model_id}")).await;
    let temperature = view["metrics"]["calibration"]["temperatures"][0]
        .as_f64()
        .unwrap_or_else(|| panic!("a trained model is calibrated: {view}"));
    browser.goto(&format!("{url}/#/models/{model_id}")).await;
    let points = browser
        .wait_js(
            "the reliability diagram",
            "const s = document.querySelector('#calibration svg#reliability');
             return s ? Number(s.dataset.points) : null;",
            WAIT,
        )
        .await;
    assert!(
        points.as_u64() > Some(2),
        "the diagonal and some bins: {points}"
    );
    let text = browser
        .js(
            "return document.querySelector('#calibration').textContent",
            json!([]),
        )
        .await;
    let shown = format!("{temperature:.3}");
    assert!(
        text.as_str()
            .unwrap()
            .contains(shown.trim_end_matches('0').trim_end_matches('.')),
        "temperature {temperature} on the page: {text}"
    );
    browser.screenshot("08-calibration").await;

    // A multi-label job (submitted through the API): its page shows mAP
    // and each label's threshold, as the API has them.
    let form = reqwest::multipart::Form::new()
        .part(
            "dataset",
            reqwest::multipart::Part::bytes(std::fs::read(&fx.mosaic_zip).unwrap())
                .file_name("mosaic.zip"),
        )
        .text(
            "config",
            json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 2,
                   "learning_rate": 0.01})
            .to_string(),
        );
    let resp = client(None)
        .post(format!("{url}/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ml_id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    browser.goto(&format!("{url}/#/jobs/{ml_id}")).await;
    browser
        .wait_js(
            "the multi-label job to end",
            "const b = document.querySelector('#job-head .badge');
             return b && ['succeeded', 'failed', 'cancelled'].includes(b.dataset.status) && b.dataset.status;",
            JOB_TIMEOUT,
        )
        .await;
    let ml_page = browser
        .wait_js(
            "the per-label thresholds",
            "const cells = [...document.querySelectorAll('#per-class td.threshold')];
             const title = document.querySelector('#metric-chart')?.getAttribute('aria-label');
             return cells.length && {epoch: Number(document.querySelector('#epoch-select').value),
               thresholds: cells.map(c => Number(c.dataset.threshold)), title};",
            WAIT,
        )
        .await;
    let ml_job = get_json(url, &format!("/jobs/{ml_id}")).await;
    assert_eq!(ml_job["status"], "succeeded", "{ml_job}");
    let ml_epoch = ml_job["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["epoch"] == ml_page["epoch"])
        .unwrap();
    let api_thresholds: Vec<f64> = ml_epoch["validation"]["per_label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["threshold"].as_f64().unwrap())
        .collect();
    let page_thresholds: Vec<f64> = serde_json::from_value(ml_page["thresholds"].clone()).unwrap();
    assert_eq!(page_thresholds, api_thresholds, "each label's threshold");
    assert_eq!(ml_page["title"], "Validation mAP per epoch");
    browser.full_screenshot("08-job-multi-label").await;

    // The lists, and the dataset page at phone width with nothing wider
    // than the screen.
    browser.goto(&format!("{url}/#/jobs")).await;
    browser
        .wait_for(&format!("tr[data-job='{job_id}']"), WAIT)
        .await;
    browser.screenshot("09-jobs").await;

    // A sweep of two linear probes: the leaderboard in the API's order.
    let spec = json!({
        "base": {"base_model": fx.base_model, "mode": "linear_probe", "epochs": 2},
        "candidates": [{"learning_rate": 0.01}, {"learning_rate": 0.0001}],
        "metric": "accuracy",
    });
    let resp = client(None)
        .post(format!("{url}/sweeps"))
        .json(&json!({"dataset_id": dataset_id, "spec": spec}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let sweep_id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    browser.goto(&format!("{url}/#/sweeps/{sweep_id}")).await;
    let rows = browser
        .wait_js(
            "the finished leaderboard",
            "const b = document.querySelector('main h1 .badge');
             if (!b || b.dataset.status !== 'succeeded') return null;
             return [...document.querySelectorAll('#leaderboard tbody tr')]
               .map(r => r.querySelector('a').getAttribute('href').split('/').pop());",
            JOB_TIMEOUT,
        )
        .await;
    let sweep = get_json(url, &format!("/sweeps/{sweep_id}")).await;
    let ranked: Vec<Value> = sweep["leaderboard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job_id"].clone())
        .collect();
    assert_eq!(ranked.len(), 2);
    assert_eq!(rows, json!(ranked), "the API's ranking");
    browser.screenshot("16-sweep").await;
    browser.goto(&format!("{url}/#/sweeps")).await;
    browser
        .wait_for(
            &format!("#sweeps-table a[href='#/sweeps/{sweep_id}']"),
            WAIT,
        )
        .await;
    browser.set_window_size(390, 844).await;
    browser
        .goto(&format!("{url}/#/datasets/{dataset_id}"))
        .await;
    browser.wait_for("#class-chart", WAIT).await;
    let overflow = browser
        .js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_i64() <= Some(0),
        "the page is wider than a phone by {overflow} px"
    );
    browser.full_screenshot("10-dataset-phone").await;
    browser.goto(&format!("{url}/#/jobs/{job_id}")).await;
    browser.wait_for("#confusion", WAIT).await;
    browser.full_screenshot("11-job-phone").await;
    browser.quit().await;
}

/// With `--api-token`: the page asks, refuses a wrong token with a message,
/// works with the right one and sends it in a header, never in a URL. A
/// job page whose server goes away says it is reconnecting, and comes back
/// live when the server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_and_survives_a_restart() {
    let _one = ONE_BROWSER.lock().await;
    let test = "with_a_token_the_page_asks_for_it_and_survives_a_restart";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let fx = fixtures();
    let data = tempfile::tempdir().unwrap();
    let token = "s3cret-token";
    let args = ["--api-token", token, "--no-workers"];
    let port = free_port();
    let mut server = ServerProcess::start_on(data.path(), port, &args).await;
    let url = server.url.clone();

    // A queued job (no workers) for the reconnect check below.
    let api = client(Some(token));
    let form = reqwest::multipart::Form::new()
        .part(
            "dataset",
            reqwest::multipart::Part::bytes(std::fs::read(&fx.tints_zip).unwrap())
                .file_name("tints.zip"),
        )
        .text(
            "config",
            json!({"base_model": fx.base_model, "epochs": 1}).to_string(),
        );
    let resp = api
        .post(format!("{url}/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();

    // The page loads without a token, then asks for one.
    browser.goto(&format!("{url}/")).await;
    browser.wait_for("#token-form", WAIT).await;
    browser.screenshot("12-token").await;
    browser.fill("#token", "not-the-token").await;
    browser
        .click(
            &browser
                .wait_for("#token-form button[type=submit]", WAIT)
                .await,
        )
        .await;
    let error = browser
        .wait_js(
            "the wrong-token error",
            "const e = document.querySelector('#token-error'); return e && !e.hidden && e.textContent;",
            WAIT,
        )
        .await;
    assert!(error.as_str().unwrap().contains("not accepted"), "{error}");
    assert!(browser.find("#token-form").await.is_some(), "asks again");
    browser.screenshot("13-token-wrong").await;
    browser.fill("#token", token).await;
    browser
        .click(
            &browser
                .wait_for("#token-form button[type=submit]", WAIT)
                .await,
        )
        .await;
    browser
        .wait_for(
            &format!(
                "#datasets-table a[href='#/datasets/{}']",
                job["dataset_id"].as_str().unwrap()
            ),
            WAIT,
        )
        .await;
    assert!(!browser.url().await.contains(token), "never in the URL");
    let kept = browser
        .js("return sessionStorage.getItem('vitrine.token')", json!([]))
        .await;
    assert_eq!(kept, token);

    // Refusals are shown beside what they name: an upload that is not an
    // archive beside the file, a config out of range beside its field.
    browser.goto(&format!("{url}/#/datasets")).await;
    let file = browser.wait_for("#dataset-file", WAIT).await;
    browser.type_text(&file, fx.red_png.to_str().unwrap()).await;
    browser
        .click(&browser.wait_for("#upload-button", WAIT).await)
        .await;
    let refusal = browser
        .wait_js(
            "the upload's refusal",
            "const e = document.querySelector('#dataset-error'); return e && !e.hidden && e.textContent;",
            WAIT,
        )
        .await;
    let refusal = refusal.as_str().unwrap();
    assert!(
        refusal.starts_with("red.png: ") && refusal.contains("(not_an_archive)"),
        "{refusal}"
    );
    browser.goto(&format!("{url}/#/jobs/new")).await;
    browser
        .select("#f-dataset_id", job["dataset_id"].as_str().unwrap())
        .await;
    browser
        .fill("#f-base_model", fx.base_model.to_str().unwrap())
        .await;
    browser.fill("#f-epochs", "0").await;
    browser
        .click(&browser.wait_for("#start-job", WAIT).await)
        .await;
    let refusal = browser
        .wait_js(
            "the config's refusal",
            "const e = document.querySelector('#f-epochs-error'); return e && !e.hidden && e.textContent;",
            WAIT,
        )
        .await;
    assert!(
        refusal
            .as_str()
            .unwrap()
            .contains("`epochs` must be 1..=1000 (invalid_config)"),
        "{refusal}"
    );
    let invalid = browser
        .js(
            "return document.querySelector('#f-epochs').getAttribute('aria-invalid')",
            json!([]),
        )
        .await;
    assert_eq!(invalid, "true");
    browser.screenshot("14-job-form-refused").await;

    // The page's event-stream parser, on chunks cut mid-line and mid-CRLF.
    let events = browser
        .js_async(
            r#"const done = arguments[arguments.length - 1];
             import('/ui/sse.js').then(m => {
               const out = [];
               const p = new m.EventParser(e => out.push(e));
               for (const c of ['event: a\r\ndata: {"x"', ':1}\r', '\n\r\n: keep-alive\n\n',
                                'event: b\ndata: one\ndata: two\n\n']) p.push(c);
               done(out);
             }, e => done(String(e)));"#,
            json!([]),
        )
        .await;
    assert_eq!(
        events,
        json!([{"event": "a", "data": "{\"x\":1}"}, {"event": "b", "data": "one\ntwo"}])
    );

    // Live, then the server dies: "Reconnecting", then live again.
    browser.goto(&format!("{url}/#/jobs/{job_id}")).await;
    browser
        .wait_js(
            "the live stream",
            "return document.querySelector('#conn-state.conn-live') !== null",
            WAIT,
        )
        .await;
    server.kill();
    browser
        .wait_js(
            "the reconnecting state",
            "const c = document.querySelector('#conn-state'); return c && c.textContent.includes('Reconnecting');",
            WAIT,
        )
        .await;
    browser.screenshot("15-reconnecting").await;
    let server = ServerProcess::start_on(data.path(), port, &args).await;
    browser
        .wait_js(
            "live again",
            "return document.querySelector('#conn-state.conn-live') !== null",
            WAIT,
        )
        .await;
    drop(server);
    browser.quit().await;
}
