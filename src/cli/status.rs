//! `pgfailover status [--admin URL] [--candidates]`: the admin API's status (or its answer to
//! "what if the primary died now?") as a table for a terminal.

use std::process::ExitCode;
use std::time::Duration;

use pgfailover::config::{Config, Secret};
use serde_json::Value;

/// The table; `token` (the read token, or the admin token) when the admin port asks for one.
pub fn main(admin: &str, token: Option<&Secret>, candidates: bool) -> ExitCode {
    let path = if candidates { "/failover/candidates" } else { "/failover/status" };
    match fetch(admin, path, token) {
        Ok(v) => {
            print!("{}", if candidates { render_candidates(&v) } else { render(&v) });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgfailover status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The token `pgfailover status` reads with: the read token, else the admin token.
pub fn reading_token(cfg: Config) -> Option<Secret> {
    cfg.admin_read_token.or(cfg.admin_token)
}

/// `pgfailover health`: exit 0 when `/health` answers 200 (a container HEALTHCHECK).
pub fn health(admin: &str) -> ExitCode {
    match fetch(admin, "/health", None) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgfailover health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A GET against the admin port (http only) with hyper's client, with `token` as bearer.
fn fetch(admin: &str, path: &str, token: Option<&Secret>) -> Result<Value, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let base = if admin.contains("://") { admin.to_string() } else { format!("http://{admin}") };
    let url: hyper::Uri = format!("{}{path}", base.trim_end_matches('/')).parse().map_err(|e| format!("{admin}: not a URL: {e}"))?;
    if url.scheme_str() != Some("http") {
        return Err(format!("{admin}: only http:// admin URLs are supported"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let mut req = hyper::Request::get(url).header(hyper::header::ACCEPT, "application/json");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {}", t.expose()));
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let limit = Duration::from_secs(10);
        let resp = tokio::time::timeout(limit, client.request(req))
            .await
            .map_err(|_| format!("{admin} did not answer within 10s"))?
            .map_err(|e| format!("cannot reach {admin}: {e}"))?;
        let code = resp.status();
        let body = tokio::time::timeout(limit, resp.into_body().collect())
            .await
            .map_err(|_| format!("{admin}{path}: the body did not arrive within 10s"))?
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        if code != hyper::StatusCode::OK {
            return Err(format!("{admin}{path} answered {}: {text}", code.as_u16()));
        }
        serde_json::from_str(&text).map_err(|e| format!("{admin}{path}: not JSON: {e}"))
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows of cells, left-aligned in columns.
fn columns(rows: Vec<Vec<String>>) -> String {
    let n = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..n).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `/failover/candidates` as a summary, one row per standby, then every reason.
pub fn render_candidates(v: &Value) -> String {
    let mut out = format!(
        "if {} died now: {}\n",
        v["primary"].as_str().unwrap_or("the primary"),
        match v["wouldPromote"].as_str() {
            Some(c) => format!("{c} would be promoted"),
            None => format!("nothing would be promoted: {}", cell(&v["whyNone"])),
        }
    );
    if let Some(e) = v["maxLoss"]["explanation"].as_str() {
        out.push_str(&format!("most that could be lost: {e}\n"));
    }
    out.push_str(&format!("synchronous: {}   zone policy: {}", cell(&v["synchronous"]), cell(&v["zonePolicy"])));
    if let Some(by) = v["answeredBy"].as_str() {
        out.push_str(&format!("   answered by: {by}"));
    }
    out.push('\n');
    if let Some(n) = v["note"].as_str() {
        out.push_str(&format!("note: {n}\n"));
    }
    let headers = ["RANK", "NAME", "ELIGIBLE", "RECEIVED", "REPLAYED", "LAG", "LAG TIME", "SYNC", "ZONE", "PRIORITY", "NOFAILOVER"];
    let mut rows = vec![headers.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let list = v["candidates"].as_array().cloned().unwrap_or_default();
    for c in &list {
        let sync = match (c["syncState"].as_str(), c["synchronous"].as_bool()) {
            (Some(s), _) => s.to_string(),
            (None, Some(true)) => "listed".into(),
            _ => "-".into(),
        };
        rows.push(vec![
            cell(&c["rank"]),
            cell(&c["name"]),
            cell(&c["eligible"]),
            cell(&c["receiveLsn"]),
            cell(&c["replayLsn"]),
            c["lagBytes"].as_u64().map(|n| format!("{n} B")).unwrap_or_else(|| "-".into()),
            c["lagMs"].as_f64().map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "-".into()),
            sync,
            cell(&c["zone"]),
            cell(&c["priority"]),
            cell(&c["nofailover"]),
        ]);
    }
    out.push_str(&columns(rows));
    for c in &list {
        for r in c["reasons"].as_array().into_iter().flatten() {
            out.push_str(&format!("{}: [{}] {}\n", cell(&c["name"]), cell(&r["code"]), cell(&r["message"])));
        }
    }
    out
}

/// The table: a summary line, then one row per backend.
pub fn render(v: &Value) -> String {
    let mut out = format!(
        "state: {} ({})   primary: {}   failovers: {}   recoveries: {}   split brains: {}\n",
        cell(&v["state"]),
        cell(&v["stateCode"]),
        cell(&v["currentPrimary"]),
        cell(&v["failoverCount"]),
        cell(&v["recoveryCount"]),
        cell(&v["splitBrainCount"]),
    );
    if let Some(r) = v["routeReason"].as_str() {
        out.push_str(&format!("no primary: {r}\n"));
    }
    match v["synchronous"]["state"].as_str() {
        None | Some("off") => {}
        Some(state) => {
            out.push_str(&format!("synchronous ({}): {state}, list {}", cell(&v["synchronous"]["mode"]), cell(&v["synchronous"]["list"])));
            if let Some(r) = v["synchronous"]["reason"].as_str() {
                out.push_str(&format!(": {r}"));
            }
            out.push('\n');
        }
    }
    let headers = ["NAME", "ADDRESS", "ROLE", "HEALTHY", "FENCED", "ELIGIBLE", "TIMELINE", "LSN", "LAG", "SYNC", "RESPONSE", "LAST CHECK"];
    let mut rows = vec![headers.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let backends = std::iter::once(&v["primary"]).chain(v["standbys"].as_array().into_iter().flatten());
    for b in backends {
        rows.push(vec![
            cell(&b["name"]),
            cell(&b["address"]),
            cell(&b["role"]),
            cell(&b["healthy"]),
            cell(&b["fenced"]),
            cell(&b["promotionEligible"]),
            cell(&b["timeline"]),
            cell(&b["lsn"]),
            b["lagBytes"].as_u64().map(|n| format!("{n} B")).unwrap_or_else(|| "-".into()),
            cell(&b["syncState"]),
            b["responseTime"].as_f64().map(|ms| format!("{ms:.1} ms")).unwrap_or_else(|| "-".into()),
            cell(&b["lastHealthCheck"]),
        ]);
    }
    out.push_str(&columns(rows));
    for b in std::iter::once(&v["primary"]).chain(v["standbys"].as_array().into_iter().flatten()) {
        if let Some(e) = b["lastError"].as_str() {
            out.push_str(&format!("{}: last error: {e}\n", cell(&b["name"])));
        }
    }
    out
}
