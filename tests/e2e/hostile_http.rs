//! Hostile HTTP (issue 26, findings 5-7): what a client can make the server
//! keep (event channels, metric series, connections, event streams) is
//! bounded, and a crowd of silent connections starves no one.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use futures::StreamExt;
use vitrine::store::jobs::{self as job_store, NewJob};

use crate::common::e2e::TestServer;
use crate::common::process::ServerProcess;

/// Sends `n` requests built by `make` (about 16 at a time); returns how
/// many got each status.
async fn flood(
    n: usize,
    make: impl Fn(usize) -> reqwest::RequestBuilder,
) -> std::collections::BTreeMap<u16, usize> {
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|i| {
            let req = make(i);
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_insert(0) += 1;
    }
    counts
}

/// A job that stays queued.
async fn queued_job(server: &TestServer) -> String {
    use vitrine::datasets::record::DatasetRecord;
    use vitrine::store::datasets as dataset_store;
    let db = &server.state.db;
    let sha = uuid::Uuid::now_v7().simple().to_string();
    let dataset = dataset_store::insert_validating::<DatasetRecord>(db, &sha, 1, "none")
        .await
        .unwrap()
        .unwrap();
    // Settled at once (failed: it has no summary to show), else it may be
    // taken for a row a previous life left `validating`, and resumed.
    let failure = dataset_store::Refusal {
        kind: "unprocessable",
        code: "test",
        detail: "a test dataset",
    };
    let marked = dataset_store::mark_failed::<DatasetRecord>(db, dataset.id, &failure, "test")
        .await
        .unwrap();
    if marked.is_none() {
        // The server's takeover, which looks for rows left `validating`,
        // took it first; its validation finds no upload and fails it.
        let started = std::time::Instant::now();
        loop {
            let row = vitrine::datasets::record::get(db, dataset.id)
                .await
                .unwrap();
            if row.is_some_and(|d| d.status == dataset_store::DatasetStatus::Failed) {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the dataset never failed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Queued after its dataset failed, past the submission checks: no
    // worker will ever take it.
    let (row, _) = job_store::insert(
        &server.state.db,
        NewJob {
            dataset_id: &dataset.id.to_string(),
            config_json: "{}",
            idempotency_key: None,
            device: None,
            max_attempts: 1,
        },
    )
    .await
    .unwrap();
    row.id
}

/// Waits up to `within` for `cond`.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// Opens an event stream and reads its first event (the snapshot).
async fn follow(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let mut resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("snapshot"),
        "{first:?}"
    );
    resp
}

/// Finding 5: `GET /jobs/<unknown>/events` used to keep a channel (about
/// 20 KB) for good. Now 20,000 of them leave the hub empty, and a followed
/// job's channel goes away with its last follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_requests_for_unknown_jobs_leave_nothing_behind() {
    let server = TestServer::start(|c| c.no_workers = true).await;
    let hub = server.state.jobs.hub.clone();
    let client = reqwest::Client::new();
    let counts = flood(20_000, |_| {
        client.get(format!(
            "{}/jobs/{}/events",
            server.url,
            uuid::Uuid::now_v7()
        ))
    })
    .await;
    assert_eq!(counts.get(&404), Some(&20_000), "{counts:?}");
    assert_eq!(hub.len(), 0, "channels left behind by 404s");

    let job = queued_job(&server).await;
    let url = format!("{}/jobs/{job}/events", server.url);
    let a = follow(&client, &url).await;
    let b = follow(&client, &url).await;
    assert!(hub.is_followed(&job));
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hub.is_followed(&job), "one follower is left");
    drop(b);
    assert!(
        eventually(Duration::from_secs(5), || hub.is_empty()).await,
        "the channel outlived its last follower"
    );
    server.stop().await;
}

/// Finding 6: every made-up method used to add series to `/metrics` (99 MB
/// after 20,000). Methods outside the standard set are `other`, unknown
/// routes `unmatched`: the output stays a few kilobytes. Together with
/// finding 5 on the real binary: resident memory barely moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_unknown_jobs_grow_neither_metrics_nor_memory() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--no-workers"]).await;
    let client = reqwest::Client::new();
    let metrics = || async {
        let text = client
            .get(format!("{}/metrics", server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        (text, series)
    };
    // Warm up every code path once, then measure.
    flood(200, |i| {
        let method = reqwest::Method::from_bytes(format!("WARM{i}").as_bytes()).unwrap();
        client.request(method, format!("{}/healthz", server.url))
    })
    .await;
    flood(200, |_| {
        client.get(format!(
            "{}/jobs/{}/events",
            server.url,
            uuid::Uuid::now_v7()
        ))
    })
    .await;
    let (_, series_before) = metrics().await;
    let rss_before = server.rss();

    let counts = flood(20_000, |i| {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        let path = if i % 2 == 0 { "/healthz" } else { "/nowhere" };
        client.request(method, format!("{}{path}", server.url))
    })
    .await;
    assert_eq!(counts.values().sum::<usize>(), 20_000);
    assert!(!counts.contains_key(&0), "{counts:?}");
    let counts = flood(20_000, |_| {
        client.get(format!(
            "{}/jobs/{}/events",
            server.url,
            uuid::Uuid::now_v7()
        ))
    })
    .await;
    assert_eq!(counts.get(&404), Some(&20_000), "{counts:?}");

    let (text, series_after) = metrics().await;
    let grown = server.rss().saturating_sub(rss_before);
    eprintln!(
        "/metrics: {} bytes, {series_before} -> {series_after} series; RSS +{} KiB",
        text.len(),
        grown >> 10
    );
    assert!(
        text.contains(r#"method="other",route="/healthz",status="405""#),
        "{text}"
    );
    assert!(
        text.contains(r#"method="other",route="unmatched",status="404""#),
        "{text}"
    );
    assert!(!text.contains("M1X"), "a made-up method became a label");
    assert!(text.len() < 64 * 1024, "/metrics is {} bytes", text.len());
    assert!(
        series_after <= series_before + 40,
        "{series_before} -> {series_after} series"
    );
    // Before: +396 MiB (channels) and +70 MiB (series).
    assert!(grown < 32 << 20, "resident memory grew {} MiB", grown >> 20);
}

/// Raises this process's soft open-file limit to its hard limit; returns it.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not u64 everywhere
fn raise_own_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct of our own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur as u64
}

/// Opens `n` TCP connections to `addr` that never send a byte.
fn silent_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connecting"))
        .collect()
}

/// The first line of the answer to a raw `GET path`, within `within`.
fn raw_get(addr: SocketAddr, path: &str, within: Duration) -> String {
    let mut s = TcpStream::connect_timeout(&addr, within).expect("connecting");
    s.set_read_timeout(Some(within)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Finding 7: 2,000 silent connections used to stay open for good and, at
/// the usual 1,024 open files, starved `/healthz` and `/predict`. Now
/// both answer at once beside them (all 2,000 open), and the server closes
/// every one of them after the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_connections_starve_nobody_and_are_closed() {
    const SILENT: usize = 2_000;
    let files = raise_own_file_limit();
    assert!(
        files > SILENT as u64 + 200,
        "this test needs an open-file hard limit above {} (it is {files})",
        SILENT + 200
    );
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &["--no-workers", "--header-read-timeout-secs", "5"],
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let started = Instant::now();
    let mut silent = tokio::task::spawn_blocking(move || silent_connections(addr, SILENT))
        .await
        .unwrap();
    eprintln!("{SILENT} silent connections in {:?}", started.elapsed());

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let metrics = client.get(format!("{}/metrics", server.url)).send().await;
    let metrics = metrics.unwrap().text().await.unwrap();
    let open = gauge(&metrics, "vitrine_http_connections ");
    assert!(open > SILENT as u64, "only {open} connections open at once");
    for path in ["/healthz", "/readyz"] {
        let asked = Instant::now();
        let resp = client.get(format!("{}{path}", server.url)).send().await;
        let status = resp.map(|r| r.status().as_u16());
        assert_eq!(
            status.ok(),
            Some(200),
            "{path} beside {SILENT} silent connections"
        );
        eprintln!("{path}: {:?}", asked.elapsed());
    }
    // No model yet: a prompt problem document, not a timeout.
    let asked = Instant::now();
    let predict = client
        .post(format!("{}/predict", server.url))
        .body(vec![0u8; 16])
        .send()
        .await
        .expect("/predict answers beside the silent connections");
    eprintln!("/predict: {} in {:?}", predict.status(), asked.elapsed());
    assert!(predict.status().is_client_error() || predict.status().is_server_error());

    // Every silent connection is closed by the server soon after 5 s.
    let closed = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        silent
            .iter_mut()
            .map(|s| {
                let left = deadline.saturating_duration_since(Instant::now());
                closed_by_server(s, left.max(Duration::from_millis(1)))
            })
            .filter(|closed| *closed)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, SILENT, "silent connections left open");
    let metrics = client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = gauge(&metrics, "vitrine_http_connections ");
    assert!(open <= 3, "{open} connections open: {metrics}");
}

/// The value of the metric line starting with `prefix`.
fn gauge(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// Beyond `--max-connections`, a new connection gets a prompt 503 (a
/// problem document) instead of waiting behind the others; once they go,
/// it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_prompt_503() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--no-workers",
            "--max-connections",
            "40",
            "--header-read-timeout-secs",
            "30",
        ],
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    // The connections of `start`'s readiness checks close first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let silent = silent_connections(addr, 40);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let answer = raw_get(addr, "/healthz", Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    drop(silent);
    let mut answer = String::new();
    let served = eventually(Duration::from_secs(5), || {
        answer = raw_get(addr, "/healthz", Duration::from_secs(3));
        answer.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served, "{answer}");
    let metrics = raw_get(addr, "/metrics", Duration::from_secs(3));
    let body = &metrics[metrics.find("\r\n\r\n").unwrap_or(0)..];
    assert!(
        gauge(body, "vitrine_http_refused_total{limit=\"connections\"} ") >= 1,
        "{metrics}"
    );
}

/// A client from `ip` (any 127.x address is this machine).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Event streams beyond the per-client cap, or the total, get 503
/// `too_many_streams`; a slot comes back when its stream's client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_over_their_caps_get_503() {
    let server = TestServer::start(|c| {
        c.no_workers = true;
        c.max_event_streams = 5;
        c.max_event_streams_per_client = 3;
    })
    .await;
    let job = queued_job(&server).await;
    let url = format!("{}/jobs/{job}/events", server.url);
    let a = client_from("127.0.0.1");
    let b = client_from("127.0.0.2");

    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(follow(&a, &url).await);
    }
    let refused = a.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_streams", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--max-event-streams-per-client"),
        "{problem}"
    );

    // Another client has its own share, up to the total of 5.
    let theirs = [follow(&b, &url).await, follow(&b, &url).await];
    let over_total = b.get(&url).send().await.unwrap();
    assert_eq!(over_total.status(), 503);
    let problem: serde_json::Value = over_total.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--max-event-streams)"),
        "{problem}"
    );
    // Sweeps' streams count too (an unknown sweep: its slot is taken, then
    // the 404 gives it back).
    let sweep = b
        .get(format!("{}/sweeps/nope/events", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sweep.status(), 503);

    // A client that leaves gives its slot back.
    mine.pop();
    let started = Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(5) {
        status = a.get(&url).send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "no slot came back after a stream closed");
    drop(theirs);
    drop(mine);
    server.stop().await;
}
