//! The endpoint bodies; `mod.rs` routes to them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{auth, error, json, AdminContext, Reply, MAX_BODY};
use crate::monitor::history::{EventKind, MEMORY_CAP};
use crate::monitor::machine::{Outcome, Refusal, TriggerRequest};
use crate::monitor::Triggered;

pub fn metrics_json(ctx: &AdminContext) -> Reply {
    let s = ctx.monitor.status();
    let st = &ctx.metrics.stats;
    let (up, down) = st.bytes.totals();
    let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    json(
        StatusCode::OK,
        &json!({
            "state": s.state,
            "failoverCount": s.failover_count,
            "lastFailoverTime": s.last_failover_time,
            "recoveryCount": s.recovery_count,
            "healthCheckFailures": s.health_check_failures,
            "splitBrainCount": s.split_brain_count,
            "connections": {
                "active": get(&st.active),
                "total": get(&st.accepted),
                "held": get(&st.held),
                "refused": get(&st.refused),
                "overLimit": get(&st.over_limit),
                "readRefused": get(&st.read_refused),
                "readFallback": get(&st.read_fallback),
            },
            "bytes": {
                "clientToServer": up,
                "serverToClient": down,
            },
            "backendConnectErrors": get(&st.connect_errors),
            "noPrimarySeconds": ctx.metrics.no_primary_seconds(),
            "uptimeSeconds": ctx.started.elapsed().as_secs_f64(),
        }),
    )
}

/// The monitor's status, with the configuration in force.
pub fn status(ctx: &AdminContext) -> Reply {
    let mut v = serde_json::to_value(&*ctx.monitor.status()).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("config".into(), serde_json::to_value(ctx.live().config).unwrap_or_default());
    }
    json(StatusCode::OK, &v)
}

pub fn health(ctx: &AdminContext) -> Reply {
    let s = ctx.monitor.status();
    json(
        StatusCode::OK,
        &json!({
            "state": s.state,
            "currentPrimary": s.current_primary,
            "updatedAt": s.updated_at,
            "backends": s.backends,
        }),
    )
}

pub fn history(ctx: &AdminContext, query: Option<&str>) -> Reply {
    let mut limit = 50usize;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if let Some(v) = pair.strip_prefix("limit=") {
            match v.parse::<usize>() {
                Ok(n) if (1..=MEMORY_CAP).contains(&n) => limit = n,
                _ => return error(StatusCode::BAD_REQUEST, &format!("limit must be an integer from 1 to {MEMORY_CAP}, not {v:?}")),
            }
        }
    }
    let events = ctx.monitor.history(limit);
    json(StatusCode::OK, &json!({ "count": events.len(), "events": events }))
}

/// How long a follower waits for the leader's answer to `/failover/candidates` before it
/// answers with its own view.
const CANDIDATES_WAIT: Duration = Duration::from_secs(5);

/// "What if the primary died now?" Coordinated, the leader's view: a follower asks it, and
/// answers with its own view (saying so) when the leader cannot be asked.
pub async fn candidates(ctx: &AdminContext, caller: &str) -> Reply {
    let Some(coord) = ctx.coord.as_ref().filter(|_| follower(ctx)) else { return json(StatusCode::OK, &own_candidates(ctx)) };
    let request =
        crate::cluster::Request { id: random_id(), op: "candidates".into(), target: None, force: false, who: caller.to_string(), via: coord.name.clone() };
    let why = match coord.forward(request, CANDIDATES_WAIT).await {
        Ok(resp) if resp.status == 200 => return json(StatusCode::OK, &resp.body),
        Ok(resp) => format!("the leader answered {}: {}", resp.status, resp.body),
        Err(why) => format!("the leader could not be asked: {why}"),
    };
    let mut own = own_candidates(ctx);
    own.note = Some(format!("{why}; this is this proxy's own view"));
    json(StatusCode::OK, &own)
}

fn own_candidates(ctx: &AdminContext) -> crate::monitor::candidates::CandidatesView {
    let mut v = ctx.monitor.status().candidates.clone();
    v.answered_by = ctx.coord.as_ref().map(|c| c.name.clone());
    v
}

/// While the process stops, neither port should get new clients from a load balancer.
fn stopping(ctx: &AdminContext) -> Option<Reply> {
    let reason = "shutting down: stop sending new clients here";
    ctx.stopping
        .load(std::sync::atomic::Ordering::Relaxed)
        .then(|| json(StatusCode::SERVICE_UNAVAILABLE, &json!({ "ready": false, "reason": reason, "error": reason })))
}

pub fn ready(ctx: &AdminContext) -> Reply {
    if let Some(r) = stopping(ctx) {
        return r;
    }
    let s = ctx.monitor.status();
    match &s.current_primary {
        Some(p) => json(StatusCode::OK, &json!({ "ready": true, "primary": p })),
        None => {
            let reason = s.route_reason.clone().unwrap_or_default();
            json(StatusCode::SERVICE_UNAVAILABLE, &json!({ "ready": false, "reason": reason, "error": format!("no primary is routable: {reason}") }))
        }
    }
}

/// The read-only port can place a new client now: a standby qualifies, or the primary
/// serves reads (`include_primary`) or is the configured fallback.
pub fn ready_ro(ctx: &AdminContext) -> Reply {
    if let Some(r) = stopping(ctx) {
        return r;
    }
    let Some(route) = &ctx.reads else {
        return error(StatusCode::NOT_FOUND, "the read-only port is off (set listen_ro)");
    };
    let r = route.borrow().clone();
    if !r.targets.is_empty() {
        let names: Vec<String> =
            r.targets.iter().map(|t| ctx.monitor.status().backends.get(t.backend.index()).map(|b| b.name.clone()).unwrap_or_default()).collect();
        return json(StatusCode::OK, &json!({ "ready": true, "targets": names }));
    }
    match (ctx.live().read_fallback, r.primary) {
        (crate::config::Fallback::Primary, Some(p)) => {
            let name = ctx.monitor.status().backends.get(p.index()).map(|b| b.name.clone()).unwrap_or_default();
            json(StatusCode::OK, &json!({ "ready": true, "targets": [], "fallback": name, "reason": r.reason.to_string() }))
        }
        _ => {
            json(StatusCode::SERVICE_UNAVAILABLE, &json!({ "ready": false, "reason": r.reason.to_string(), "error": format!("no read target: {}", r.reason) }))
        }
    }
}

/// Authenticated POSTs, logged with time, caller and outcome.
pub async fn post(req: Request<Incoming>, path: &str, ctx: &AdminContext, peer: SocketAddr) -> Reply {
    let caller = auth::caller(&req, peer);
    let live = ctx.live();
    let reply = match auth::check(&req, live.token.as_ref()) {
        Err(r) => r,
        Ok(()) => match read_body(req).await {
            Err(r) => r,
            Ok(bytes) => match path {
                "/failover/pause" => match parse(&bytes, super::pause::PAUSE_EXAMPLE) {
                    Ok(body) => super::pause::pause(ctx, body, &caller).await,
                    Err(r) => r,
                },
                "/failover/resume" => match parse::<Empty>(&bytes, "{}") {
                    Ok(_) => super::pause::resume(ctx, &caller).await,
                    Err(r) => r,
                },
                "/failover/maintenance" => match parse(&bytes, super::pause::MAINTENANCE_EXAMPLE) {
                    Ok(Some(body)) => super::pause::maintenance(ctx, body, &caller).await,
                    Ok(None) => error(StatusCode::BAD_REQUEST, &format!("body required, like {}", super::pause::MAINTENANCE_EXAMPLE)),
                    Err(r) => r,
                },
                _ => match parse::<TargetBody>(&bytes, "{\"target\": \"pg-b\"} or {\"force\": true}") {
                    Err(r) => r,
                    Ok(body) => {
                        let body = body.unwrap_or_default();
                        match path {
                            "/failover/trigger" | "/failover/unfence" if follower(ctx) => forward(ctx, path, body, &caller).await,
                            "/failover/trigger" => trigger(ctx, body, &caller).await,
                            "/failover/check-health" => {
                                let s = ctx.monitor.check_now(live.check_wait).await;
                                json(StatusCode::OK, &json!({ "state": s.state, "currentPrimary": s.current_primary, "backends": s.backends }))
                            }
                            "/failover/unfence" => unfence(ctx, body.target, &caller).await,
                            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
                        }
                    }
                },
            },
        },
    };
    tracing::info!(
        time = %humantime::format_rfc3339_millis(SystemTime::now()),
        %caller,
        path,
        status = reply.status().as_u16(),
        "admin POST"
    );
    reply
}

/// A body that must be empty or `{}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Coordinated, and another proxy leads (as the monitor's view of etcd has it): triggers and
/// unfences are the leader's.
fn follower(ctx: &AdminContext) -> bool {
    ctx.coord.is_some() && !ctx.monitor.status().coordination.as_ref().is_some_and(|c| c.is_leader)
}

/// Hands a trigger or an unfence to the leading proxy and answers with its answer.
async fn forward(ctx: &AdminContext, path: &str, body: TargetBody, caller: &str) -> Reply {
    let Some(coord) = &ctx.coord else { return error(StatusCode::CONFLICT, "not coordinated") };
    let request = crate::cluster::Request {
        id: random_id(),
        op: if path == "/failover/trigger" { "trigger" } else { "unfence" }.into(),
        target: body.target,
        force: body.force,
        who: caller.to_string(),
        via: coord.name.clone(),
    };
    match coord.forward(request, ctx.live().forward_wait).await {
        Ok(resp) => {
            let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
            json(status, &resp.body)
        }
        Err(why) => error(StatusCode::CONFLICT, &format!("this proxy does not lead, and the request could not be handed to the leader: {why}")),
    }
}

/// 16 random hex digits: names a request or a pause.
pub(super) fn random_id() -> String {
    let mut id = [0u8; 8];
    let _ = openssl::rand::rand_bytes(&mut id);
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Carries out a request another proxy handed to this one (the leader).
pub async fn execute(ctx: &AdminContext, req: &crate::cluster::Request) -> Reply {
    let who = format!("{} via {}", req.who, req.via);
    let body = TargetBody { target: req.target.clone(), force: req.force };
    match req.op.as_str() {
        "trigger" => trigger(ctx, body, &who).await,
        "unfence" => unfence(ctx, body.target, &who).await,
        "candidates" => json(StatusCode::OK, &own_candidates(ctx)),
        other => error(StatusCode::BAD_REQUEST, &format!("unknown request {other:?}")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    target: Option<String>,
    /// Trigger only: promote at once, without a switchover's stop-and-catch-up.
    #[serde(default)]
    force: bool,
}

/// Reads a request's body: 413 when too large, 408 when it does not come in time.
async fn read_body(req: Request<Incoming>) -> Result<bytes::Bytes, Reply> {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body over {MAX_BODY} bytes"));
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(Duration::from_secs(10), Limited::new(req.into_body(), MAX_BODY).collect()).await;
    match collected {
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}"))),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

/// An optional JSON body (`None` when empty); 400, naming `example`, when malformed.
// The error is the reply itself, built once per request: boxing it would gain nothing.
#[allow(clippy::result_large_err)]
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], example: &str) -> Result<Option<T>, Reply> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(bytes).map(Some).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body must be JSON like {example}: {e}")))
}

fn refusal(r: Refusal) -> Reply {
    match r {
        Refusal::Conflict(m) => error(StatusCode::CONFLICT, &m),
        Refusal::UnknownBackend(m) => error(StatusCode::BAD_REQUEST, &m),
    }
}

/// Starts a failover or switchover and waits for its outcome: 200 done, 409 not possible
/// (nothing changed, or a switchover undone because the standby could not catch up), 502 a
/// server refused a step (undone where possible), 202 still promoting after
/// `trigger_wait`. A switchover's own waits (writes stopping, the standby catching up) are
/// bounded by `trigger_wait` each and always answered with their outcome.
async fn trigger(ctx: &AdminContext, body: TargetBody, caller: &str) -> Reply {
    let req = TriggerRequest { target: body.target, force: body.force, who: caller.to_string() };
    let Triggered { started, mut outcome } = match ctx.monitor.trigger(req).await {
        Ok(t) => t,
        Err(r) => return refusal(r),
    };
    let mut status = ctx.monitor.subscribe();
    let deadline = tokio::time::Instant::now() + ctx.live().trigger_wait;
    let result = loop {
        // A switchover's own steps are bounded and always answered: no deadline then. An
        // attempt that just ended sends its outcome next: a short grace.
        let wait_until = match status.borrow_and_update().failover_in_progress.as_ref().map(|f| f.phase) {
            Some("draining" | "cutting" | "stopping_writes" | "catching_up" | "cascading" | "undoing") => None,
            Some(_) => Some(deadline),
            None => Some(deadline.max(tokio::time::Instant::now() + Duration::from_secs(5))),
        };
        tokio::select! {
            biased;
            o = &mut outcome => break o.ok(),
            _ = status.changed() => {}
            _ = async { match wait_until { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                return json(StatusCode::ACCEPTED, &json!({ "result": "in_progress", "to": started.to, "switchover": started.switchover }));
            }
        }
    };
    match result {
        Some(Outcome::Completed { to }) => {
            let s = ctx.monitor.status();
            let event = ctx.monitor.history(20).into_iter().find(|e| e.kind == EventKind::Failover);
            json(
                StatusCode::OK,
                &json!({ "result": "completed", "to": to, "switchover": started.switchover, "currentPrimary": s.current_primary, "failoverCount": s.failover_count, "event": event }),
            )
        }
        Some(Outcome::Aborted(why)) => error(StatusCode::CONFLICT, &why),
        Some(Outcome::Failed(why)) => error(StatusCode::BAD_GATEWAY, &why),
        None => error(StatusCode::CONFLICT, crate::monitor::handle::STOPPED),
    }
}

async fn unfence(ctx: &AdminContext, target: Option<String>, caller: &str) -> Reply {
    let Some(name) = target else {
        return error(StatusCode::BAD_REQUEST, "body must name the backend: {\"target\": \"pg-a\"}");
    };
    match ctx.monitor.unfence(name.clone(), caller.to_string()).await {
        Ok(()) => {
            let s = ctx.monitor.status();
            let fenced = s.backends.iter().find(|b| b.name == name).is_some_and(|b| b.fenced);
            json(StatusCode::OK, &json!({ "result": "unfenced", "target": name, "fencedAgain": fenced }))
        }
        Err(r) => refusal(r),
    }
}
