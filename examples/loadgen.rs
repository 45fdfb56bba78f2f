//! A closed-loop HTTP load generator for image-classification endpoints.
//!
//! `C` workers each send one request, wait for the whole answer, and send the
//! next, rotating through the given image files. Every request is
//! `multipart/form-data` with one part named `image` (the shape both
//! vitrine's `/predict` and `scripts/bench/hf_pipeline_server.py` take), over one
//! keep-alive connection per worker.
//!
//! ```text
//! loadgen URL [--concurrency C] [--duration SECS] [--requests N]
//!             [--warmup SECS] [--label NAME] IMAGE...
//! ```
//!
//! The load runs from the start; what is measured are the answers that
//! arrive in the window after the warmup: `--duration` seconds, or until
//! `--requests` answers, whichever comes first. Answers still in flight when
//! the window closes are dropped. Throughput is the successful answers in
//! the window over its length; latency is from sending a request to having
//! read its whole answer. A non-2xx answer or a transport failure is an
//! error (listed by status) and its latency is not counted.
//!
//! Prints one human line and one JSON line (prefixed `LOADGEN_JSON `).
//! Runs on a single-threaded runtime so it takes little CPU from the server
//! it measures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};

struct Args {
    url: String,
    concurrency: usize,
    duration: Option<Duration>,
    requests: Option<u64>,
    warmup: Duration,
    label: String,
    images: Vec<String>,
}

const USAGE: &str = "usage: loadgen URL [--concurrency C] [--duration SECS] [--requests N] \
                     [--warmup SECS] [--label NAME] IMAGE...";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut url = None;
    let mut concurrency = 1usize;
    let mut duration = None;
    let mut requests = None;
    let mut warmup = Duration::ZERO;
    let mut label = String::new();
    let mut images = Vec::new();
    let secs = |v: String, flag: &str| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{flag} takes seconds, got `{v}`"))
    };
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--concurrency" | "-c" => {
                concurrency = value(&a)?
                    .parse()
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or("--concurrency takes a positive integer")?;
            }
            "--duration" | "-d" => duration = Some(secs(value(&a)?, &a)?),
            "--requests" | "-n" => {
                requests = Some(
                    value(&a)?
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or("--requests takes a positive integer")?,
                );
            }
            "--warmup" | "-w" => warmup = secs(value(&a)?, &a)?,
            "--label" => label = value(&a)?,
            "--help" | "-h" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown flag `{s}`\n{USAGE}")),
            _ if url.is_none() => url = Some(a),
            _ => images.push(a),
        }
    }
    let url = url.ok_or(USAGE)?;
    if images.is_empty() {
        return Err(format!("no image files given\n{USAGE}"));
    }
    if duration.is_none() && requests.is_none() {
        duration = Some(Duration::from_secs(10));
    }
    Ok(Args {
        url,
        concurrency,
        duration,
        requests,
        warmup,
        label,
        images,
    })
}

/// An image to send: its file name, MIME type and bytes (leaked once so
/// each request borrows them instead of copying).
struct Image {
    name: String,
    mime: &'static str,
    bytes: &'static [u8],
}

fn mime_of(path: &str) -> &'static str {
    match path
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        Some("gif") => "image/gif",
        _ => "application/octet-stream",
    }
}

/// What the workers record.
#[derive(Default)]
struct Record {
    /// Seconds, counted requests that succeeded.
    latencies: Vec<f64>,
    /// By HTTP status, or `transport` for a failed exchange.
    errors: BTreeMap<String, u64>,
    /// When the last counted answer arrived (ends a `--requests` run).
    last_done: Option<Instant>,
    /// One example body per error status, to say what went wrong.
    error_example: BTreeMap<String, String>,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let images: Vec<Image> = args
        .images
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap_or_else(|e| {
                eprintln!("reading {p}: {e}");
                std::process::exit(2);
            });
            Image {
                name: std::path::Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into()),
                mime: mime_of(p),
                bytes: Box::leak(bytes.into_boxed_slice()),
            }
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args, Arc::new(images)));
}

async fn run(args: Args, images: Arc<Vec<Image>>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(300))
        .build()
        .expect("HTTP client");
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let stop_at = args.duration.map(|d| measure_from + d);
    let next_image = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(AtomicU64::new(0));
    let record = Arc::new(Mutex::new(Record::default()));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, images, url) = (client.clone(), images.clone(), args.url.clone());
        let (next_image, counted, record) = (next_image.clone(), counted.clone(), record.clone());
        let max_requests = args.requests;
        workers.push(tokio::spawn(async move {
            loop {
                let sent_at = Instant::now();
                if stop_at.is_some_and(|s| sent_at >= s)
                    || max_requests.is_some_and(|m| counted.load(Ordering::Relaxed) >= m)
                {
                    break;
                }
                let i = next_image.fetch_add(1, Ordering::Relaxed) as usize % images.len();
                let outcome = exchange(&client, &url, &images[i]).await;
                let done = Instant::now();
                if done < measure_from || stop_at.is_some_and(|s| done > s) {
                    continue;
                }
                // Claims a slot among the `--requests` counted ones.
                if counted.fetch_add(1, Ordering::Relaxed) >= max_requests.unwrap_or(u64::MAX) {
                    break;
                }
                let mut r = record.lock().unwrap();
                r.last_done = Some(r.last_done.map_or(done, |d| d.max(done)));
                match outcome {
                    Ok(()) => r.latencies.push((done - sent_at).as_secs_f64()),
                    Err((kind, example)) => {
                        *r.errors.entry(kind.clone()).or_default() += 1;
                        r.error_example.entry(kind).or_insert(example);
                    }
                }
            }
        }));
    }
    let deadline = async {
        match stop_at {
            Some(s) => tokio::time::sleep_until(s.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = futures::future::join_all(workers.iter_mut()) => {}
        _ = deadline => {}
    }
    // Answers still in flight at the end of the window do not count.
    for w in &workers {
        w.abort();
    }
    let r = std::mem::take(&mut *record.lock().unwrap());
    let reached = args
        .requests
        .is_some_and(|m| counted.load(Ordering::Relaxed) >= m);
    let end = match (stop_at, r.last_done) {
        (Some(s), _) if !reached => s,
        (_, Some(last)) => last,
        (_, None) => Instant::now(),
    };
    report(&args, r, end.saturating_duration_since(measure_from));
}

/// One request with `img` as its multipart `image` part; the whole answer
/// is read. Errors are (HTTP status or `transport`, what was said).
async fn exchange(
    client: &reqwest::Client,
    url: &str,
    img: &Image,
) -> Result<(), (String, String)> {
    let part = Part::bytes(img.bytes)
        .file_name(img.name.clone())
        .mime_str(img.mime)
        .expect("valid MIME type");
    let transport = |e: reqwest::Error| ("transport".to_string(), e.to_string());
    let resp = client
        .post(url)
        .multipart(Form::new().part("image", part))
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(transport)?;
    if status.is_success() {
        Ok(())
    } else {
        Err((
            status.as_u16().to_string(),
            String::from_utf8_lossy(&body).chars().take(300).collect(),
        ))
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(args: &Args, mut r: Record, window: Duration) {
    r.latencies.sort_by(f64::total_cmp);
    let ok = r.latencies.len() as u64;
    let errors: u64 = r.errors.values().sum();
    let elapsed = window.as_secs_f64();
    let rps = if elapsed > 0.0 {
        ok as f64 / elapsed
    } else {
        0.0
    };
    let ms = |p: f64| percentile(&r.latencies, p) * 1e3;
    let (p50, p90, p99) = (ms(50.0), ms(90.0), ms(99.0));
    let max = r.latencies.last().copied().unwrap_or(f64::NAN) * 1e3;
    let label = if args.label.is_empty() {
        args.url.clone()
    } else {
        args.label.clone()
    };
    let error_list = if r.errors.is_empty() {
        "none".to_string()
    } else {
        r.errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{label} c={} : {rps:.1} req/s, p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, \
         max {max:.1} ms, {ok} ok in {elapsed:.1} s, errors {error_list}",
        args.concurrency
    );
    for (kind, example) in &r.error_example {
        eprintln!("  first {kind} answer: {example}");
    }
    let num = |v: f64| {
        if v.is_finite() {
            serde_json::json!((v * 100.0).round() / 100.0)
        } else {
            serde_json::Value::Null
        }
    };
    let json = serde_json::json!({
        "label": label,
        "url": args.url,
        "concurrency": args.concurrency,
        "ok": ok,
        "errors": errors,
        "errors_by_status": r.errors,
        "seconds": num(elapsed),
        "rps": num(rps),
        "p50_ms": num(p50),
        "p90_ms": num(p90),
        "p99_ms": num(p99),
        "max_ms": num(max),
    });
    println!("LOADGEN_JSON {json}");
    if ok == 0 {
        std::process::exit(1);
    }
}
