//! Starting and stopping the service.

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, WorkerNode};
use crate::config::{ServeConfig, WorkerConfig};

/// Runs `vitrine serve` until SIGTERM or Ctrl-C.
pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    runtime(&config)?.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        serve(config, shutdown).await
    })
}

/// Runs `vitrine worker` until SIGTERM or Ctrl-C.
pub fn run_worker(config: WorkerConfig) -> anyhow::Result<()> {
    runtime(&config.node)?.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        work(config, shutdown).await
    })
}

/// Logging, the open-file limit, the CPU thread budget and the tokio
/// runtime of either role.
fn runtime(config: &ServeConfig) -> anyhow::Result<tokio::runtime::Runtime> {
    crate::telemetry::init(config.log_format);
    // Before any thread starts: every connection is a file descriptor, and
    // the usual soft limit (1,024) is far below what the caps allow.
    let open_files = crate::http::connections::raise_open_file_limit();
    tracing::info!(open_files, "open-file limit");
    let threads = crate::torch_info::ThreadBudget::new(config.cpu_threads, config.torch_threads);
    threads.apply();
    tracing::info!(
        cpus = threads.cpus,
        torch = threads.torch,
        rayon = threads.rayon,
        tokio = threads.tokio,
        "thread budget"
    );
    if let Some(warning) = crate::torch_info::gpu_warning() {
        tracing::warn!("{warning}");
    }
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.tokio)
        .on_thread_start(crate::torch_info::threads::keep_torch_single_threaded)
        .enable_all()
        .build()?)
}

/// Prepares the data directory and database, then serves until `shutdown`.
pub async fn serve(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::build(config).await?;
    let listener = crate::http::connections::bind(state.config.listen)
        .with_context(|| format!("binding {}", state.config.listen))?;
    serve_on(listener, state, shutdown).await
}

/// Starts one training worker per configured device.
pub fn start_workers(
    state: &AppState,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    crate::jobs::worker::spawn_workers(&state.jobs, shutdown.clone())
}

/// Serves on an already bound listener (tests bind port 0).
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    tracing::info!(addr = %listener.local_addr()?, "vitrine listening");
    // Datasets a previous life left `validating` are validated again.
    match state.datasets.resume().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(datasets = n, "validations resumed"),
        Err(e) => tracing::error!(error = ?e, "resuming validations failed"),
    }
    let mut workers = start_workers(&state, &shutdown);
    if crate::db::Backend::of(&state.db) == crate::db::Backend::Postgres {
        workers.push(tokio::spawn(take_over_stale_validations(
            state.datasets.clone(),
            shutdown.clone(),
        )));
    }
    crate::jobs::relay::start(&state.jobs.db, &state.jobs.hub, shutdown.clone());
    workers.push(tokio::spawn(crate::jobs::reaper::run(
        state.jobs.clone(),
        shutdown.clone(),
    )));
    // The sweep supervisor reads and writes only the database: it runs
    // with or without workers here (another node may train). It runs on
    // API nodes only: its writes are compare-and-set, so several API nodes
    // decide nothing twice, and the cancellations it publishes reach the
    // event streams that clients follow on API nodes.
    workers.push(tokio::spawn(crate::sweeps::supervisor::run(
        state.jobs.clone(),
        shutdown.clone(),
    )));
    let server = tokio::spawn(crate::http::serve(
        listener,
        state.clone(),
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    // Validations stop at their next image and run again at the next start.
    state.datasets.validations.stop();
    let started = tokio::time::Instant::now();
    let drained = async {
        // Workers stop their job at the next step and put it back in the queue.
        for w in workers {
            let _ = w.await;
        }
        // Interrupted validations remove their work before the exit.
        state.datasets.validations.stopped().await;
        server.await
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("shutdown did not finish within the grace period"),
    }
    // Batches of requests whose clients left still run: exiting under them
    // would tear libtorch down mid-forward (SIGSEGV).
    if !state
        .inference
        .drain(grace.saturating_sub(started.elapsed()))
        .await
    {
        tracing::warn!("inference still running at the end of the grace period");
    }
    state.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// How long a validation's progress may stand still before another API node
/// takes it over (a running one writes its progress every second), and how
/// often API nodes look.
const STALE_VALIDATION: Duration = Duration::from_secs(30);
const TAKE_OVER_EVERY: Duration = Duration::from_secs(15);

/// On PostgreSQL, several API nodes: a dataset whose node died while
/// validating it is validated by another (`DatasetStore::take_over_stale`).
async fn take_over_stale_validations(
    datasets: crate::datasets::DatasetStore,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TAKE_OVER_EVERY) => {}
        }
        match datasets.take_over_stale(STALE_VALIDATION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(datasets = n, "validations taken over from a silent node"),
            Err(e) => tracing::warn!(error = ?e, "looking for silent validations failed"),
        }
    }
}

/// Prepares the data directory and database of a worker node, binds its
/// probes' address, then trains until `shutdown`.
pub async fn work(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node = WorkerNode::build(config.node).await?;
    let listener = crate::http::connections::bind(config.health_listen)
        .with_context(|| format!("binding {} (--health-listen)", config.health_listen))?;
    work_on(listener, node, shutdown).await
}

/// Runs a worker node: one training worker per device, the lease reaper,
/// and the probes on `listener`, until `shutdown`; then the running jobs
/// stop at their next step and go back to the queue (attempt refunded), as
/// on `serve`. No API, no inference, no dataset validation, no sweep
/// supervisor: API nodes run those.
pub async fn work_on(
    listener: TcpListener,
    node: WorkerNode,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(node.config.shutdown_grace_secs);
    tracing::info!(
        addr = %listener.local_addr()?,
        devices = ?node.jobs.device_names(),
        "vitrine worker started; probes listening"
    );
    let mut tasks = crate::jobs::worker::spawn_workers(&node.jobs, shutdown.clone());
    crate::jobs::relay::start(&node.jobs.db, &node.jobs.hub, shutdown.clone());
    tasks.push(tokio::spawn(crate::jobs::reaper::run(
        node.jobs.clone(),
        shutdown.clone(),
    )));
    let probes = tokio::spawn(crate::http::worker_health::serve(
        listener,
        node.clone(),
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    let drained = async {
        for t in tasks {
            let _ = t.await;
        }
        probes.await
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("shutdown did not finish within the grace period"),
    }
    node.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    token.cancel();
}
