//! Memory of streamed artefact transfers: uploads a file of SIZE_MB
//! (default 512) to an S3-compatible server (moto, started from
//! tests/python/s3_server.py) as an upload, as a dataset tar, and fetches
//! both back, printing the process's peak RSS growth beside the file size.
//!
//! `cargo run --release --example bench_artifacts -- [SIZE_MB]`

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use vitrine::artifacts::{ArtifactOptions, Artifacts, Backoff};

/// Peak resident set of this process, in MiB (VmHWM).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let size_mb: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(512);
    let python = std::env::var("VITRINE_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let mut server = Command::new(python)
        .arg("tests/python/s3_server.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = server.stdin.take().unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let info: serde_json::Value = serde_json::from_str(&line)?;
    writeln!(stdin, "bucket vitrine-bench")?;
    line.clear();
    stdout.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ok", "creating the bucket: {line}");
    let field = |k: &str| info[k].as_str().unwrap().to_string();
    let env = vec![
        ("AWS_ENDPOINT_URL".into(), field("endpoint")),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_ACCESS_KEY_ID".into(), field("access_key")),
        ("AWS_SECRET_ACCESS_KEY".into(), field("secret_key")),
        ("AWS_REGION".into(), field("region")),
    ];
    let dir = tempfile::tempdir()?;
    let opts = ArtifactOptions {
        url: Some("s3://vitrine-bench/p".into()),
        model_cache_bytes: 1 << 40,
        backoff: Backoff::default(),
        s3_env: env,
    };
    let store =
        Artifacts::open(&opts, &dir.path().join("one"), &prometheus::Registry::new()).await?;
    let reader =
        Artifacts::open(&opts, &dir.path().join("two"), &prometheus::Registry::new()).await?;

    // The file, written in 1 MiB chunks (never whole in memory).
    let file = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
        for _ in 0..size_mb {
            f.write_all(&chunk)?;
        }
    }
    let dataset = dir.path().join("one/datasets/big");
    std::fs::create_dir_all(&dataset)?;
    std::fs::hard_link(&file, dataset.join("data.bin"))?;
    std::fs::write(dataset.join("manifest.json"), b"{}")?;

    let base = peak_rss_mib();
    println!("file: {size_mb} MiB; peak RSS before transfers: {base:.0} MiB");
    let step = |name: &str, started: Instant| {
        let peak = peak_rss_mib();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:<28} {secs:6.1} s  {:7.1} MiB/s  peak RSS {peak:6.0} MiB (+{:.0} MiB, {:.3}x the file)",
            size_mb as f64 / secs,
            peak - base,
            (peak - base) / size_mb as f64
        );
    };
    let t = Instant::now();
    store.put_upload("big", &file).await?;
    step("upload (multipart)", t);
    let t = Instant::now();
    anyhow::ensure!(
        reader
            .fetch_upload("big", &dir.path().join("two/uploads/big"))
            .await?
    );
    step("fetch upload", t);
    let t = Instant::now();
    store.put_dataset("datasets/big", &dataset).await?;
    step("dataset tar (streamed)", t);
    let t = Instant::now();
    reader.dataset_dir("datasets/big").await?;
    step("fetch + unpack dataset tar", t);
    drop(stdin);
    let _ = server.wait();
    Ok(())
}
