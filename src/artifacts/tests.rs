//! The module over a real `file://` store (`object_store`'s local file
//! system, as a shared mount would be). The same operations against an
//! S3 server are in `tests/api/artifacts.rs`.

use std::path::Path;
use std::time::Duration;

use super::*;

struct Fixture {
    _root: tempfile::TempDir,
    store_dir: PathBuf,
    url: String,
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let url = format!("file://{}", store_dir.display());
    Fixture {
        _root: root,
        store_dir,
        url,
    }
}

fn options(url: &str, cache: u64) -> ArtifactOptions {
    ArtifactOptions {
        url: Some(url.to_string()),
        model_cache_bytes: cache,
        backoff: Backoff {
            attempts: 2,
            initial: Duration::from_millis(10),
        },
        s3_env: vec![],
    }
}

async fn node(url: &str, data_dir: &Path, cache: u64) -> Artifacts {
    Artifacts::open(&options(url, cache), data_dir, &prometheus::Registry::new())
        .await
        .unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn without_a_url_nothing_is_copied() {
    let data = tempfile::tempdir().unwrap();
    let a = Artifacts::open(
        &ArtifactOptions {
            url: None,
            model_cache_bytes: 1,
            backoff: Backoff::default(),
            s3_env: vec![],
        },
        data.path(),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    assert!(!a.is_shared());
    assert_eq!(
        a.model_dir("models/x").await.unwrap(),
        data.path().join("models/x")
    );
    assert!(a.job_sync("j", data.path()).is_none());
    assert!(!a.fetch_upload("k", &data.path().join("k")).await.unwrap());
}

#[tokio::test]
async fn a_dataset_goes_as_one_tar_and_comes_back_once() {
    let f = fixture();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&f.url, one.path(), 1 << 30).await;
    let dir = one.path().join("datasets/abc");
    write(&dir.join("manifest.json"), b"{}");
    write(&dir.join("cats/1.png"), &[7u8; 5000]);
    a.put_dataset("datasets/abc", &dir).await.unwrap();
    assert!(f.store_dir.join("datasets/abc.tar").is_file());

    let b = node(&f.url, two.path(), 1 << 30).await;
    let fetched = futures::future::join_all((0..4).map(|_| b.dataset_dir("datasets/abc"))).await;
    for got in fetched {
        assert_eq!(got.unwrap(), two.path().join("datasets/abc"));
    }
    assert_eq!(
        std::fs::read(two.path().join("datasets/abc/cats/1.png")).unwrap(),
        vec![7u8; 5000]
    );
    assert_eq!(b.downloads("dataset"), 1, "four concurrent asks, one fetch");
    let e = b.dataset_dir("datasets/nope").await.unwrap_err();
    assert!(format!("{e:#}").contains("neither in the data dir nor in the artifact store"));
}

/// Epoch 1 and 2 stored; epoch 2 did not improve, so its pointer keeps
/// epoch 1's best; epochs no pointer names are gone; another node pulls
/// the newest checkpoint, a node with a newer local one pulls nothing.
#[tokio::test]
async fn checkpoints_move_the_pointer_last_and_resume_elsewhere() {
    let f = fixture();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&f.url, one.path(), 1 << 30).await;
    let work = one.path().join("jobs/j1");
    let sync = a.job_sync("j1", &work).unwrap();
    for (epoch, improved) in [(1, true), (2, false), (3, false)] {
        write(
            &work.join("checkpoint/state.json"),
            format!(r#"{{"epochs_done":{epoch}}}"#).as_bytes(),
        );
        write(
            &work.join("checkpoint/weights.safetensors"),
            &[epoch as u8; 10],
        );
        if improved {
            write(&work.join("best/model.safetensors"), &[epoch as u8; 10]);
        }
        sync.push_epoch(epoch, improved).await.unwrap();
    }
    let p = a.job_pointer("j1").await.unwrap().unwrap();
    assert_eq!(p.epoch, 3);
    assert_eq!(p.checkpoint, "jobs/j1/epoch-3/checkpoint");
    assert_eq!(p.best.as_deref(), Some("jobs/j1/epoch-1/best"));
    let mut epochs: Vec<_> = std::fs::read_dir(f.store_dir.join("jobs/j1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    epochs.sort();
    assert_eq!(
        epochs,
        vec!["epoch-1", "epoch-3"],
        "epoch 2 is named by nothing"
    );

    let b = node(&f.url, two.path(), 1 << 30).await;
    let work2 = two.path().join("jobs/j1");
    assert_eq!(b.pull_job("j1", &work2).await.unwrap(), Some(3));
    assert_eq!(
        std::fs::read(work2.join("checkpoint/weights.safetensors")).unwrap(),
        vec![3u8; 10]
    );
    assert_eq!(
        std::fs::read(work2.join("best/model.safetensors")).unwrap(),
        vec![1u8; 10]
    );
    assert_eq!(
        b.pull_job("j1", &work2).await.unwrap(),
        None,
        "local is as new"
    );
    b.delete_job("j1").await;
    assert!(b.job_pointer("j1").await.unwrap().is_none());
}

#[tokio::test]
async fn models_are_fetched_once_and_evicted_least_recently_used() {
    let f = fixture();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let worker = node(&f.url, one.path(), 1 << 30).await;
    for id in ["m1", "m2", "m3"] {
        let dir = one.path().join("models").join(id);
        write(&dir.join("model.safetensors"), &[1u8; 4000]);
        write(&dir.join("config.json"), b"{}");
        worker
            .put_model(&format!("models/{id}"), &dir)
            .await
            .unwrap();
    }
    // Room for two models of 4,002 bytes.
    let api = node(&f.url, two.path(), 9000).await;
    let firsts = futures::future::join_all((0..8).map(|_| api.model_dir("models/m1"))).await;
    assert!(firsts.iter().all(|r| r.is_ok()));
    assert_eq!(
        api.downloads("model"),
        1,
        "eight concurrent first loads, one download"
    );
    api.model_dir("models/m2").await.unwrap();
    api.model_dir("models/m1").await.unwrap(); // m1 is now the most recent
    api.model_dir("models/m3").await.unwrap();
    let (cached, bytes) = api.cached_models();
    assert_eq!(cached, vec!["models/m3", "models/m1"]);
    assert!(bytes <= 9000, "{bytes}");
    assert!(
        !two.path().join("models/m2").exists(),
        "m2 evicted from disk"
    );
    assert_eq!(api.downloads("model"), 3);
    api.model_dir("models/m2").await.unwrap();
    assert_eq!(
        api.downloads("model"),
        4,
        "an evicted model is fetched again"
    );

    // Cached now: m2, m3. A model served from memory (the registry's
    // hit: `touch_model`, no `model_dir`) stays the most recent, so the
    // next fetch evicts the other one.
    api.touch_model("models/m3");
    api.model_dir("models/m1").await.unwrap();
    assert_eq!(api.cached_models().0, vec!["models/m1", "models/m3"]);

    api.delete_model("models/m2").await.unwrap();
    assert!(!f.store_dir.join("models/m2").exists());
}

#[tokio::test]
async fn uploads_round_trip_and_go() {
    let f = fixture();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&f.url, one.path(), 1).await;
    let src = one.path().join("up");
    write(&src, &[3u8; 100_000]);
    a.put_upload("k1", &src).await.unwrap();
    let b = node(&f.url, two.path(), 1).await;
    let dest = two.path().join("uploads/k1");
    assert!(b.fetch_upload("k1", &dest).await.unwrap());
    assert_eq!(std::fs::read(&dest).unwrap(), vec![3u8; 100_000]);
    b.delete_upload("k1").await;
    assert!(!b
        .fetch_upload("k1", &two.path().join("again"))
        .await
        .unwrap());
}
