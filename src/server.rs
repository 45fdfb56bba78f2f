//! Starting and stopping the service.

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::config::ServeConfig;

/// Runs `vitrine serve` until SIGTERM or Ctrl-C.
pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    crate::telemetry::init(config.log_format);
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
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.tokio)
        .on_thread_start(crate::torch_info::threads::keep_torch_single_threaded)
        .enable_all()
        .build()?
        .block_on(async move {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            serve(config, shutdown).await
        })
}

/// Prepares the data directory and database, then serves until `shutdown`.
pub async fn serve(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::build(config).await?;
    let listener = TcpListener::bind(state.config.listen)
        .await
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
    // The sweep supervisor reads and writes only the database: it runs
    // with or without workers here (another node may train).
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
