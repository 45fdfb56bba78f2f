//! Connections: the accept loop of both HTTP listeners (the API and a
//! worker's probes) and the caps on what a client can hold open.
//!
//! `axum::serve` sets no header-read timeout (hyper's needs a timer, which
//! it does not give) and accepts until the process runs out of file
//! descriptors, after which nobody is served: a few hundred silent
//! connections starved `/healthz`. Here:
//! - a connection must send a request's headers within
//!   `--header-read-timeout-secs` of opening or of finishing its previous
//!   request, else it is closed (silent and idle keep-alive ones alike);
//! - at most `--max-connections` are served at once (by default a share of
//!   the open-file limit, which [`raise_open_file_limit`] lifts to the hard
//!   limit at start); one more is answered 503 and closed at once, so a
//!   flood costs its sender, not the clients already served;
//! - event streams (SSE), which hold a connection for as long as a job, a
//!   sweep or a validation runs, are capped per client address and in
//!   total ([`EventStreamSlot`]): 503 `too_many_streams` beyond.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::problem::problem_response;
use crate::config::ServeConfig;
use crate::metrics::Metrics;

/// Connections at most by default, whatever the open-file limit.
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Open files kept for everything but connections (database, models,
/// datasets being read, libtorch) when the cap comes from the limit.
const FILES_KEPT: u64 = 256;
/// Connections over the cap answered 503 at once; more are closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;
/// How long a refused connection may take to send its request head and
/// read the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// The limits of one listener, from the configuration.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_event_streams: usize,
    pub max_event_streams_per_client: usize,
}

impl ConnectionLimits {
    /// The limits `config` asks for; `--max-connections 0` becomes a share
    /// of the open-file limit in effect now.
    pub fn of(config: &ServeConfig) -> Self {
        let files = open_file_limit();
        let auto = files
            .saturating_sub(FILES_KEPT)
            .clamp(32, DEFAULT_MAX_CONNECTIONS as u64) as usize;
        let max_connections = match config.max_connections {
            0 => auto,
            n => {
                if n as u64 + FILES_KEPT / 4 > files {
                    tracing::warn!(
                        max_connections = n,
                        open_file_limit = files,
                        "--max-connections is close to the open-file limit: \
                         new connections may fail before the cap answers 503"
                    );
                }
                n
            }
        };
        Self {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
            max_connections,
            max_event_streams: config.max_event_streams,
            max_event_streams_per_client: config.max_event_streams_per_client,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` fires; then
/// stops accepting, lets every connection finish its request in flight,
/// and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let streams = StreamLimiter::new(&limits, metrics);
    let refused = metrics.http_refused.with_label_values(&["connections"]);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let conn = Connection {
                    peer,
                    app: app.clone(),
                    streams: streams.clone(),
                    timeout: limits.header_read_timeout,
                    _open: OpenGauge::new(metrics.http_connections.clone()),
                    _slot: slot,
                };
                connections.spawn(conn.serve(stream, shutdown.clone()));
            }
            Err(_) => {
                refused.inc();
                refuse(stream, &refusals);
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// An accept that failed: a connection reset before it was taken is
/// nothing; anything else (out of file descriptors) is logged and waited
/// out briefly instead of spinning.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One accepted connection and what it holds while it is served.
struct Connection {
    peer: SocketAddr,
    app: Router,
    streams: StreamLimiter,
    timeout: Duration,
    _open: OpenGauge,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// HTTP/1.1 on `stream` until the client leaves, a timeout closes it,
    /// or `shutdown` (then the request in flight finishes first).
    async fn serve(self, stream: TcpStream, shutdown: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let client = ClientAddr(self.peer);
        let streams = self.streams.clone();
        let service = self.app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(client);
            req.extensions_mut().insert(streams.clone());
            req
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.timeout);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.peer, error = %e, "connection closed");
        }
    }
}

/// Answers a connection over the cap with a 503 and closes it, or, when
/// too many are being refused already, closes it unanswered.
fn refuse(stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_TIME, answer_busy(stream)).await;
    });
}

/// Reads the request head (closing a socket with unread bytes resets it,
/// and the client would never see the answer), writes the 503, and waits
/// for the client to close.
async fn answer_busy(mut stream: TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    stream.write_all(&busy_response()).await?;
    stream.shutdown().await?;
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// The bytes of a `503 too_many_connections` problem document.
fn busy_response() -> Vec<u8> {
    let problem = super::problem::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "the server is serving as many connections as it may; retry shortly".into(),
    );
    let body = serde_json::to_string(&problem).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A gauge raised while its guard lives.
struct OpenGauge(IntGauge);

impl OpenGauge {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The address of the client of a request served by [`serve`] (absent on
/// a router driven in-process).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The event streams open now: in total and per client.
#[derive(Clone)]
pub struct StreamLimiter {
    open: Arc<Mutex<StreamCounts>>,
    total: usize,
    per_client: usize,
    gauge: IntGauge,
    refused: IntCounter,
}

#[derive(Default)]
struct StreamCounts {
    total: usize,
    /// Only clients with a stream open: the map is as small as the streams.
    by_client: HashMap<IpAddr, usize>,
}

impl StreamLimiter {
    fn new(limits: &ConnectionLimits, metrics: &Metrics) -> Self {
        Self {
            open: Default::default(),
            total: limits.max_event_streams,
            per_client: limits.max_event_streams_per_client,
            gauge: metrics.http_event_streams.clone(),
            refused: metrics.http_refused.with_label_values(&["event_streams"]),
        }
    }

    /// A slot for one more stream of `client`, or why not.
    fn try_open(&self, client: IpAddr) -> Result<StreamPermit, String> {
        let client = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        let refusal = if open.total >= self.total {
            Some(format!(
                "the server has {} event streams open, its most (--max-event-streams); retry later",
                open.total
            ))
        } else if mine >= self.per_client {
            Some(format!(
                "this client has {mine} event streams open, its most \
                 (--max-event-streams-per-client); close one first"
            ))
        } else {
            None
        };
        if let Some(detail) = refusal {
            self.refused.inc();
            return Err(detail);
        }
        open.total += 1;
        *open.by_client.entry(client).or_insert(0) += 1;
        self.gauge.inc();
        Ok(StreamPermit {
            limiter: self.clone(),
            client,
        })
    }

    fn close(&self, client: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&client);
            }
        }
        self.gauge.dec();
    }
}

/// Who a client is, for the per-client cap: its IPv4 address, or the /64
/// of its IPv6 address (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One open event stream; dropping it (the stream ended or its client
/// left) frees its slot.
pub struct StreamPermit {
    limiter: StreamLimiter,
    client: IpAddr,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limiter.close(self.client);
    }
}

/// The extractor of an event-stream handler: a slot under the caps, held
/// by the stream for as long as it runs (move it into the stream), or a
/// 503 `too_many_streams`. Unlimited on a router driven in-process.
pub struct EventStreamSlot(pub Option<StreamPermit>);

impl<S: Send + Sync> FromRequestParts<S> for EventStreamSlot {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let limiter = parts.extensions.get::<StreamLimiter>();
        let client = parts.extensions.get::<ClientAddr>();
        match (limiter, client) {
            (Some(limiter), Some(ClientAddr(addr))) => match limiter.try_open(addr.ip()) {
                Ok(permit) => Ok(Self(Some(permit))),
                Err(detail) => Err(problem_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_streams",
                    detail,
                    Some(5),
                )),
            },
            _ => Ok(Self(None)),
        }
    }
}

/// Connections the kernel may hold, handshake done, until the server
/// accepts them. The usual 128 overflows when a burst of clients meets a
/// busy server for a few milliseconds: the overflow's SYNs are dropped and
/// their clients wait a second to retry.
const ACCEPT_BACKLOG: u32 = 1024;

/// Binds a listener on `addr` with a deep accept queue ([`ACCEPT_BACKLOG`]).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind: a restarted server may rebind while old connections
    // linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The soft limit of open files of this process.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not u64 everywhere
pub fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur as u64
}

/// Raises the soft limit of open files to the hard limit (the default soft
/// limit, often 1,024, is far below what a server's connections need);
/// returns the soft limit in effect.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not u64 everywhere
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let mut raised = limit;
            raised.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                // An unlimited hard limit may still refuse an unlimited soft
                // one (macOS): ask for a large finite one.
                raised.rlim_cur = limit.rlim_max.min(65_536);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                    return limit.rlim_cur as u64;
                }
            }
            return raised.rlim_cur as u64;
        }
    }
    limit.rlim_cur as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(total: usize, per_client: usize) -> StreamLimiter {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            max_connections: 10,
            max_event_streams: total,
            max_event_streams_per_client: per_client,
        };
        StreamLimiter::new(&limits, &Metrics::new())
    }

    /// A client gets its share, the server its total; a slot comes back
    /// when its stream ends, and no client is remembered once it has none.
    #[test]
    fn event_streams_are_capped_per_client_and_in_total() {
        let streams = limiter(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = streams.try_open(a).unwrap();
        let _a2 = streams.try_open(a).unwrap();
        let refused = streams.try_open(a).err().unwrap();
        assert!(
            refused.contains("--max-event-streams-per-client"),
            "{refused}"
        );
        let b1 = streams.try_open(b).unwrap();
        assert!(streams.try_open(b).is_err(), "the total is 3");
        drop(a1);
        let _b2 = streams.try_open(b).unwrap();
        drop(b1);
        assert_eq!(streams.open.lock().unwrap().by_client.len(), 2);
    }

    /// The addresses of one IPv6 /64 are one client; IPv4-mapped addresses
    /// are their IPv4 one.
    #[test]
    fn an_ipv6_client_is_its_64_prefix() {
        let one = client_key("2001:db8::1".parse().unwrap());
        let other = client_key("2001:db8::ffff:1234".parse().unwrap());
        assert_eq!(one, other);
        assert_ne!(one, client_key("2001:db8:0:1::1".parse().unwrap()));
        assert_eq!(
            client_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
