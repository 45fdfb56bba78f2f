//! Prometheus metrics. Each application owns its registry (no global state),
//! so tests can build several apps in one process.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    /// Refreshed from the database at each scrape.
    pub jobs_by_status: IntGaugeVec,
    /// Connections being served now.
    pub http_connections: IntGauge,
    /// Event streams (SSE) open now.
    pub http_event_streams: IntGauge,
    /// Connections and event streams refused over their caps, by `limit`
    /// (`connections`, `event_streams`).
    pub http_refused: IntCounterVec,
}

/// The values of the `method` label: the standard methods; any other is
/// `other`, so that made-up methods cannot grow the label set.
pub const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The `method` label of a request's method: its name when standard, else
/// `other`.
pub fn method_label(method: &str) -> &'static str {
    HTTP_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "vitrine_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        // Buckets from 1 ms (health checks) to 30 s (large uploads).
        let http_latency = HistogramVec::new(
            HistogramOpts::new("vitrine_http_request_duration_seconds", "HTTP latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ],
            ),
            &["method", "route"],
        )
        .expect("valid metric");
        let jobs_by_status =
            IntGaugeVec::new(Opts::new("vitrine_jobs", "Jobs by status"), &["status"])
                .expect("valid metric");
        let http_connections =
            IntGauge::new("vitrine_http_connections", "Connections being served now")
                .expect("valid metric");
        let http_event_streams =
            IntGauge::new("vitrine_http_event_streams", "Event streams (SSE) open now")
                .expect("valid metric");
        let http_refused = IntCounterVec::new(
            Opts::new(
                "vitrine_http_refused_total",
                "Connections and event streams refused (503) over their caps",
            ),
            &["limit"],
        )
        .expect("valid metric");
        for limit in ["connections", "event_streams"] {
            http_refused.with_label_values(&[limit]);
        }
        for metric in [
            Box::new(jobs_by_status.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_connections.clone()),
            Box::new(http_event_streams.clone()),
            Box::new(http_refused.clone()),
        ] {
            registry.register(metric).expect("register");
        }
        registry
            .register(Box::new(http_requests.clone()))
            .expect("register");
        registry
            .register(Box::new(http_latency.clone()))
            .expect("register");
        Self {
            registry,
            http_requests,
            http_latency,
            jobs_by_status,
            http_connections,
            http_event_streams,
            http_refused,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
