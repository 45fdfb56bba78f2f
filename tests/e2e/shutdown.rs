//! SIGTERM under prediction load: the process stops cleanly (exit status 0)
//! even while batches whose clients already gave up are still running, and
//! no client that waited gets anything but an answer or a clean refusal.

use std::sync::Arc;
use std::time::Duration;

use crate::common::e2e::{fixtures, submit_and_wait};
use crate::common::process::ServerProcess;
use base64::Engine as _;
use serde_json::json;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly() {
    let fx = fixtures();
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(data.path(), &["--shutdown-grace-secs", "20"]).await;
    let url = server.url.clone();
    let cfg = json!({"base_model": fx.base_model, "mode": "linear_probe", "epochs": 1, "image_size": 224});
    let job = submit_and_wait(&url, &fx.tints_zip, cfg, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // Requests of 16 images keep the engine busy; half the clients give up
    // after a few milliseconds, leaving batches nobody waits for.
    let image =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&fx.red_png).unwrap());
    let body = Arc::new(json!({ "images": vec![image; 16] }));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for i in 0..24u64 {
        let (url, body, statuses, stop) =
            (url.clone(), body.clone(), statuses.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let patient = i % 2 == 0;
            let client = reqwest::Client::builder()
                .timeout(if patient {
                    Duration::from_secs(60)
                } else {
                    Duration::from_millis(50 + 20 * i)
                })
                .build()
                .unwrap();
            while !stop.is_cancelled() {
                match client
                    .post(format!("{url}/predict"))
                    .json(&*body)
                    .send()
                    .await
                {
                    Ok(resp) if patient => statuses.lock().await.push(resp.status().as_u16()),
                    Ok(_) => {}
                    // Refused connections once the listener closed, or an
                    // impatient client's timeout.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    // Let load build up until answers are flowing.
    let started = std::time::Instant::now();
    while !statuses.lock().await.contains(&200) {
        assert!(started.elapsed() < Duration::from_secs(60), "no answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.terminate();
    let status = server.wait_exit(Duration::from_secs(40)).await;
    stop.cancel();
    for c in clients {
        c.await.unwrap();
    }
    let status = status.expect("the server did not stop within 40 s of SIGTERM");
    assert!(status.success(), "the server ended with {status:?}");
    let statuses = statuses.lock().await;
    assert!(
        statuses.iter().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
}
