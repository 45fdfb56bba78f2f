//! The AugReg recipes through the HTTP API with the fixtures' tiny ViT: a
//! full fine-tune with every recipe a ViT takes (RandAugment, MixUp and
//! CutMix, dropout, label smoothing, a weight-decay preset) and a
//! multi-label one with MixUp and CutMix succeed with finite losses; a
//! recipe the family lacks (`drop_path_rate` on a ViT) is a 422 naming the
//! field and the family.

use std::time::Duration;

use crate::common::e2e::{fixtures, TestServer};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(300);

fn losses_are_finite(job: &Value) -> bool {
    job["metrics"].as_array().unwrap().iter().all(|m| {
        m["train_loss"].as_f64().is_some_and(f64::is_finite)
            && m["validation_loss"].as_f64().is_some_and(f64::is_finite)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_with_every_recipe_train_and_missing_ones_are_refused() {
    let fx = fixtures();
    let server = TestServer::start(|_| {}).await;
    let base = fx.base_model.to_str().unwrap();

    let resp = server
        .submit(
            &fx.tints_zip,
            json!({"base_model": base, "mode": "full", "drop_path_rate": 0.1}),
        )
        .await;
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("`drop_path_rate`") && detail.contains("vit"),
        "{detail}"
    );

    let recipes = json!({"base_model": base, "mode": "full", "epochs": 2, "batch_size": 16,
        "learning_rate": 0.001, "randaugment": {"n": 2, "m": 9}, "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0, "dropout": 0.1, "label_smoothing": 0.1, "weight_decay": "heavy"});
    let job = server.run_job(&fx.tints_zip, recipes, TIMEOUT).await;
    assert!(losses_are_finite(&job), "{}", job["metrics"]);
    assert_eq!(job["metrics"].as_array().unwrap().len(), 2);

    let multi_label = json!({"base_model": base, "mode": "partial", "epochs": 1, "batch_size": 16,
        "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "randaugment": {"n": 1, "m": 5}});
    let job = server.run_job(&fx.mosaic_zip, multi_label, TIMEOUT).await;
    assert!(losses_are_finite(&job), "{}", job["metrics"]);
    assert!(job["metrics"][0]["validation"]["map"].as_f64().is_some());
    server.stop().await;
}
