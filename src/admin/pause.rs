//! `POST /failover/pause`, `/failover/resume` and `/failover/maintenance`.
//!
//! Alone, a proxy hands the change to its monitor. Coordinated, the proxy that takes the
//! request writes it to etcd (any proxy may), every proxy's monitor applies it from there,
//! and a pause is answered with every live proxy's count of its sessions.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{error, json, AdminContext, Reply};
use crate::cluster::{Census, Maintenance, PauseRecord, Scope};
use crate::coord::SharedWrite;

pub const PAUSE_EXAMPLE: &str = "{\"timeout\": \"10s\"}";
pub const MAINTENANCE_EXAMPLE: &str = "{\"enabled\": true, \"reason\": \"minor upgrade\", \"duration\": \"30m\"}";

/// How long a pause waits for the sessions to be quiet when the body does not say.
const DEFAULT_PAUSE_WAIT: Duration = Duration::from_secs(30);
/// The longest a pause's answer may be waited for.
const MAX_PAUSE_WAIT: Duration = Duration::from_secs(3600);
/// Maintenance mode's length when the body does not say.
const DEFAULT_MAINTENANCE: Duration = Duration::from_secs(3600);
/// The longest maintenance mode may be asked for at once.
const MAX_MAINTENANCE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// How long to wait for every session to be quiet before answering.
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    enabled: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, with = "humantime_serde")]
    duration: Option<Duration>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Writes a shared key, answering 503 when etcd does not take it (nothing changed then).
async fn share(ctx: &AdminContext, what: SharedWrite) -> Result<(), Reply> {
    let Some(c) = &ctx.coord else { return Ok(()) };
    c.share(what).await.map_err(|e| {
        error(StatusCode::SERVICE_UNAVAILABLE, &format!("not applied: the coordinated proxies share it through etcd, and etcd did not take it: {e}"))
    })
}

/// Pauses (this proxy, or every coordinated one) and answers once every readable session is
/// quiet, or when the timeout runs out, with the counts.
pub async fn pause(ctx: &AdminContext, body: Option<PauseBody>, caller: &str) -> Reply {
    let wait = body.and_then(|b| b.timeout).unwrap_or(DEFAULT_PAUSE_WAIT);
    if wait > MAX_PAUSE_WAIT {
        return error(StatusCode::BAD_REQUEST, &format!("timeout must be at most {}", humantime::format_duration(MAX_PAUSE_WAIT)));
    }
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    let record = PauseRecord { id: super::handlers::random_id(), by: caller.to_string(), since: now_rfc3339(), timeout_ms: wait.as_millis() as u64 };
    let id = record.id.clone();
    let applied = match &ctx.coord {
        None => ctx.monitor.pause(Some(record)).await,
        Some(_) => {
            if let Err(r) = share(ctx, SharedWrite::Pause(Some(record))).await {
                return r;
            }
            ctx.monitor.status_until(|s| s.paused).await
        }
    };
    if !applied {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the health monitor did not apply the pause");
    }
    let local = ctx.gate.settle(Scope::Everything, deadline).await;
    let mut proxies = BTreeMap::new();
    let mut total = local;
    if let Some(c) = &ctx.coord {
        proxies.insert(c.name.clone(), local);
        // The others answer in their views once their sessions are quiet (or their own wait
        // ran out); a proxy that has not answered by then is listed as such.
        let mut status = ctx.monitor.subscribe();
        let answered = |s: &crate::monitor::status::Status| -> Vec<(String, Option<Census>)> {
            let members = s.coordination.as_ref().map(|c| c.members.clone()).unwrap_or_default();
            members.into_iter().filter(|m| m.name != c.name).map(|m| (m.name, m.paused.filter(|a| a.id == id).map(|a| a.census))).collect()
        };
        let grace = deadline + Duration::from_secs(1);
        loop {
            let now = answered(&status.borrow_and_update());
            if now.iter().all(|(_, a)| a.is_some()) || tokio::time::Instant::now() >= grace {
                for (name, a) in now {
                    if let Some(a) = a {
                        total = total.plus(a);
                    }
                    proxies.insert(name, a.unwrap_or_default());
                }
                break;
            }
            let _ = tokio::time::timeout_at(grace, status.changed()).await;
        }
    }
    let status = ctx.monitor.status();
    json(
        StatusCode::OK,
        &json!({
            "paused": status.paused,
            "quiet": total.settled(),
            "inTransaction": total.in_transaction,
            "running": total.running,
            "held": total.held + total.held_new,
            "opaque": total.opaque,
            "sessions": total.sessions,
            "waitedMs": started.elapsed().as_millis() as u64,
            "proxies": proxies,
        }),
    )
}

/// Ends the pause: everything held goes on, on the same server.
pub async fn resume(ctx: &AdminContext, _caller: &str) -> Reply {
    let was = ctx.monitor.status().paused;
    let released = ctx.gate.held();
    let applied = match &ctx.coord {
        None => ctx.monitor.pause(None).await,
        Some(_) => {
            if let Err(r) = share(ctx, SharedWrite::Pause(None)).await {
                return r;
            }
            ctx.monitor.status_until(|s| !s.paused).await
        }
    };
    if !applied {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the health monitor did not apply the resume");
    }
    json(StatusCode::OK, &json!({ "paused": false, "wasPaused": was, "released": released }))
}

/// Turns maintenance mode on (for `duration`, 1 h by default) or off.
pub async fn maintenance(ctx: &AdminContext, body: MaintenanceBody, caller: &str) -> Reply {
    let m = if body.enabled {
        let duration = body.duration.unwrap_or(DEFAULT_MAINTENANCE);
        if duration.is_zero() || duration > MAX_MAINTENANCE {
            return error(StatusCode::BAD_REQUEST, &format!("duration must be more than 0 and at most {}", humantime::format_duration(MAX_MAINTENANCE)));
        }
        let reason = body.reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "no reason given".into());
        let until = humantime::format_rfc3339(SystemTime::now() + duration).to_string();
        Some(Maintenance { reason, until, by: caller.to_string(), since: now_rfc3339() })
    } else {
        if body.reason.is_some() || body.duration.is_some() {
            return error(StatusCode::BAD_REQUEST, "reason and duration go with {\"enabled\": true}");
        }
        None
    };
    let want = m.is_some();
    let applied = match &ctx.coord {
        None => ctx.monitor.maintenance(m).await,
        Some(_) => {
            if let Err(r) = share(ctx, SharedWrite::Maintenance(m)).await {
                return r;
            }
            ctx.monitor.status_until(|s| s.maintenance.enabled == want).await
        }
    };
    if !applied {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the health monitor did not apply the change");
    }
    json(StatusCode::OK, &json!({ "maintenance": ctx.monitor.status().maintenance }))
}
