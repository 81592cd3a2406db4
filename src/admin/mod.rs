//! The admin HTTP port (hyper 1.x). Endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /failover/status | state, current primary, per-backend health, counters |
//! | GET | /failover/metrics | the same figures as JSON, plus data-path counters |
//! | GET | /failover/health | detailed health per backend incl. last error |
//! | GET | /failover/history | events newest first, `?limit=N` (default 50, max 1000) |
//! | GET | /failover/candidates | what if the primary died now: every standby's eligibility and reasons, rank, positions, lag, synchronous state, zone, priority; the would-be promotion and the most that could be lost (coordinated: the leader's view) |
//! | POST | /failover/trigger | manual failover, body `{"target": "name"}` optional |
//! | POST | /failover/check-health | run every check now and return the results |
//! | POST | /failover/unfence | clear a fence, body `{"target": "name"}` |
//! | POST | /failover/pause | hold new sessions and quiet sessions' next statements; answers once every session is quiet or `{"timeout": "10s"}` ran out |
//! | POST | /failover/resume | let everything held go on, on the same server |
//! | POST | /failover/maintenance | `{"enabled": true, "reason": "...", "duration": "30m"}`: no automatic failover or switchover while on |
//! | GET | /metrics | Prometheus text format |
//! | GET | /health | liveness: 200 while the process serves |
//! | GET | /ready | readiness: 200 while a primary is routable, else 503 |
//! | GET | /ready/ro | the read-only port's readiness: 200 while a read target exists |
//!
//! POSTs need `Authorization: Bearer <admin_token>`. With `admin_read_token` set, every GET
//! but `/health`, `/ready`, `/ready/ro` (and `/metrics` with `admin_metrics_open`) needs it
//! or the admin token (`auth.rs`). Errors are JSON `{"error": "…"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Secret;
use crate::metrics::Metrics;
use crate::monitor::MonitorHandle;

mod auth;
mod handlers;
mod pause;

pub use auth::unprotected_reads;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;
/// Concurrent admin connections; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 64;
/// A connection (however busy) is closed after this, so slow clients cannot pin it.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handlers read.
pub struct AdminContext {
    pub monitor: MonitorHandle,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// The read-only port's route, when `listen_ro` is set (for `/ready/ro`).
    pub reads: Option<tokio::sync::watch::Receiver<crate::route::ReadRoute>>,
    /// Coordination: a follower hands triggers, unfences and the candidates question to the
    /// leader.
    pub coord: Option<crate::coord::Coordinator>,
    /// The configuration in force (a reload replaces it).
    pub config: crate::live::LiveConfig,
    /// The data path's pause switch and session census (`/failover/pause` counts with it;
    /// only the monitor sets it).
    pub gate: Arc<crate::proxy::gate::Gate>,
    /// Set on SIGTERM: `/ready` and `/ready/ro` answer 503 from then on.
    pub stopping: std::sync::atomic::AtomicBool,
}

/// The admin port's settings, derived from the configuration in force when a request
/// needs them.
#[derive(Clone, Debug)]
pub struct AdminLive {
    /// `None` disables the POST endpoints (403).
    pub token: Option<Secret>,
    /// `None` leaves the read endpoints open; otherwise they need it (or `token`).
    pub read_token: Option<Secret>,
    /// `/metrics` needs no token even with `read_token`.
    pub metrics_open: bool,
    /// How long a trigger waits for the failover to finish before answering 202.
    pub trigger_wait: Duration,
    /// Bound on `/failover/check-health`.
    pub check_wait: Duration,
    /// How long a follower waits for the leader's answer to a handed-over request.
    pub forward_wait: Duration,
    pub read_fallback: crate::config::Fallback,
    /// When the configuration in force was loaded, and its digest.
    pub config: crate::live::LoadInfo,
}

impl AdminLive {
    pub fn new(loaded: &crate::live::Loaded) -> AdminLive {
        let cfg = &loaded.config;
        AdminLive {
            token: cfg.admin_token.clone(),
            read_token: cfg.admin_read_token.clone(),
            metrics_open: cfg.admin_metrics_open,
            trigger_wait: cfg.failover.trigger_wait,
            check_wait: cfg.health.timeout * 2,
            forward_wait: cfg.failover.trigger_wait * 2 + cfg.failover.promote_timeout + Duration::from_secs(5),
            read_fallback: cfg.read.fallback,
            config: loaded.info.clone(),
        }
    }
}

impl AdminContext {
    /// The settings in force now.
    pub fn live(&self) -> AdminLive {
        AdminLive::new(&self.config.borrow())
    }
}

/// Carries out the requests other proxies handed to this one (it leads) and answers them
/// with the status and body its own port would give.
pub async fn serve_forwarded(
    mut requests: tokio::sync::mpsc::Receiver<crate::cluster::Request>,
    coord: crate::coord::Coordinator,
    ctx: Arc<AdminContext>,
    shutdown: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => match r { Some(r) => r, None => return },
        };
        let (ctx, coord) = (ctx.clone(), coord.clone());
        tokio::spawn(async move {
            tracing::info!(id = %req.id, op = %req.op, via = %req.via, who = %req.who, "carrying out a request handed over by another proxy");
            let reply = handlers::execute(&ctx, &req).await;
            let status = reply.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(reply.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            coord.respond(req.id.clone(), crate::cluster::Response { status, body });
        });
    }
}

pub type Reply = Response<Full<Bytes>>;

/// Serves the admin port until `shutdown`.
pub async fn run(listener: TcpListener, ctx: Arc<AdminContext>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let conns = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            // Bytes that are no HTTP request line get a JSON error like every other one
            // (hyper would answer them with an empty 400).
            let mut stream = stream;
            if let Some(why) = not_http(&stream).await {
                reject_raw(&mut stream, &why).await;
                return;
            }
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(req, &ctx, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(%peer, error = %e, "admin connection error");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

/// One `match` on (method, path).
async fn route(req: Request<Incoming>, ctx: &AdminContext, peer: SocketAddr) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let allowed: &str = match path.as_str() {
        "/failover/trigger" | "/failover/check-health" | "/failover/unfence" | "/failover/pause" | "/failover/resume" | "/failover/maintenance" => "POST",
        "/failover/status"
        | "/failover/metrics"
        | "/failover/health"
        | "/failover/history"
        | "/failover/candidates"
        | "/metrics"
        | "/health"
        | "/ready"
        | "/ready/ro" => "GET",
        _ => return error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    };
    if method.as_str() != allowed {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path} accepts {allowed} only"));
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(if allowed == "GET" { "GET" } else { "POST" }));
        return r;
    }
    if method == Method::GET {
        let live = ctx.live();
        if !auth::open_to_all(&path, live.metrics_open) {
            if let Err(r) = auth::check_read(&req, &live) {
                return r;
            }
        }
    }
    match (method, path.as_str()) {
        (Method::GET, "/failover/status") => handlers::status(ctx),
        (Method::GET, "/failover/metrics") => handlers::metrics_json(ctx),
        (Method::GET, "/failover/health") => handlers::health(ctx),
        (Method::GET, "/failover/history") => handlers::history(ctx, req.uri().query()),
        (Method::GET, "/failover/candidates") => handlers::candidates(ctx, &auth::caller(&req, peer)).await,
        (Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        (Method::GET, "/health") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (Method::GET, "/ready") => handlers::ready(ctx),
        (Method::GET, "/ready/ro") => handlers::ready_ro(ctx),
        (Method::POST, p) => handlers::post(req, p, ctx, peer).await,
        _ => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    }
}

/// Looks at (without consuming) the start of a connection: `Some(why)` when it cannot be an
/// HTTP/1 request line. Waits at most `HEADER_TIMEOUT` for enough bytes to tell.
async fn not_http(stream: &tokio::net::TcpStream) -> Option<String> {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return None,
        };
        if n == 0 {
            return None;
        }
        let seen = &buf[..n];
        // METHOD SP: an uppercase token, then a space.
        let method_len = seen.iter().take_while(|b| b.is_ascii_uppercase()).count();
        if method_len < n {
            return if method_len > 0 && seen[method_len] == b' ' {
                None
            } else {
                Some(format!("not an HTTP request (it starts with {:?})", String::from_utf8_lossy(&seen[..n.min(16)])))
            };
        }
        if n == buf.len() {
            return Some("not an HTTP request (no method)".into());
        }
        // Only part of a method so far: wait for more.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A JSON 400 written by hand to a client that does not speak HTTP, then the close.
async fn reject_raw(stream: &mut tokio::net::TcpStream, why: &str) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::json!({ "error": why }).to_string();
    let reply = format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = tokio::time::timeout(HEADER_TIMEOUT, stream.write_all(reply.as_bytes())).await;
    let _ = stream.shutdown().await;
}

pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

pub fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}
