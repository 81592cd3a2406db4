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
use crate::monitor::machine::Refusal;

pub fn metrics_json(ctx: &AdminContext) -> Reply {
    let s = ctx.monitor.status();
    let st = &ctx.metrics.stats;
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
            },
            "bytes": {
                "clientToServer": get(&st.bytes_client_to_server),
                "serverToClient": get(&st.bytes_server_to_client),
            },
            "backendConnectErrors": get(&st.connect_errors),
            "noPrimarySeconds": ctx.metrics.no_primary_seconds(),
            "uptimeSeconds": ctx.started.elapsed().as_secs_f64(),
        }),
    )
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

pub fn ready(ctx: &AdminContext) -> Reply {
    let s = ctx.monitor.status();
    match &s.current_primary {
        Some(p) => json(StatusCode::OK, &json!({ "ready": true, "primary": p })),
        None => {
            let reason = s.route_reason.clone().unwrap_or_default();
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "ready": false, "reason": reason, "error": format!("no primary is routable: {reason}") }),
            )
        }
    }
}

/// Authenticated POSTs, logged with time, caller and outcome.
pub async fn post(req: Request<Incoming>, path: &str, ctx: &AdminContext, peer: SocketAddr) -> Reply {
    let caller = auth::caller(&req, peer);
    let reply = match auth::check(&req, ctx.token.as_ref()) {
        Err(r) => r,
        Ok(()) => match read_target(req).await {
            Err(r) => r,
            Ok(target) => match path {
                "/failover/trigger" => trigger(ctx, target, &caller).await,
                "/failover/check-health" => {
                    let s = ctx.monitor.check_now(ctx.check_wait).await;
                    json(StatusCode::OK, &json!({ "state": s.state, "currentPrimary": s.current_primary, "backends": s.backends }))
                }
                "/failover/unfence" => unfence(ctx, target, &caller).await,
                _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    target: Option<String>,
}

/// Reads an optional `{"target": "name"}` body: 413 when too large, 400 when malformed.
async fn read_target(req: Request<Incoming>) -> Result<Option<String>, Reply> {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body over {MAX_BODY} bytes"));
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(Duration::from_secs(10), Limited::new(req.into_body(), MAX_BODY).collect()).await;
    let bytes = match collected {
        Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(e)) => return Err(error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}"))),
        Ok(Ok(b)) => b.to_bytes(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: TargetBody = serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body must be JSON like {{\"target\": \"pg-b\"}}: {e}")))?;
    Ok(body.target)
}

fn refusal(r: Refusal) -> Reply {
    match r {
        Refusal::Conflict(m) => error(StatusCode::CONFLICT, &m),
        Refusal::UnknownBackend(m) => error(StatusCode::BAD_REQUEST, &m),
    }
}

/// Starts a failover and waits (bounded) for it to finish: 200 done, 202 still running,
/// 502 promotion failed, 409 not possible.
async fn trigger(ctx: &AdminContext, target: Option<String>, caller: &str) -> Reply {
    let to = match ctx.monitor.trigger(target, caller.to_string()).await {
        Ok(to) => to,
        Err(r) => return refusal(r),
    };
    let mut rx = ctx.monitor.subscribe();
    let outcome = tokio::time::timeout(ctx.trigger_wait, async {
        loop {
            let s = rx.borrow_and_update().clone();
            if s.current_primary.as_deref() == Some(to.as_str()) {
                return Ok(s);
            }
            let promoting = s.failover_in_progress.as_ref().is_some_and(|f| f.to.as_deref() == Some(to.as_str()));
            if !promoting {
                return Err(s);
            }
            if rx.changed().await.is_err() {
                return Err(s);
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(s)) => json(
            StatusCode::OK,
            &json!({ "result": "completed", "to": to, "currentPrimary": s.current_primary, "failoverCount": s.failover_count, "event": ctx.monitor.history(1).first() }),
        ),
        Ok(Err(_)) => {
            let why = ctx
                .monitor
                .history(20)
                .into_iter()
                .find(|e| e.kind == EventKind::FailoverFailed)
                .map(|e| e.reason)
                .unwrap_or_else(|| "the failover did not complete".into());
            error(StatusCode::BAD_GATEWAY, &why)
        }
        Err(_) => json(StatusCode::ACCEPTED, &json!({ "result": "in_progress", "to": to })),
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
