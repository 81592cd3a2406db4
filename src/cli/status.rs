//! `pgfailover status [--admin URL]`: the admin API's status as a table for a terminal.

use std::process::ExitCode;
use std::time::Duration;

use pgfailover::config::Secret;
use serde_json::Value;

/// The table; `token` (the read token, or the admin token) when the admin port asks for one.
pub fn main(admin: &str, token: Option<&Secret>) -> ExitCode {
    match fetch(admin, "/failover/status", token) {
        Ok(v) => {
            print!("{}", render(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgfailover status: {e}");
            ExitCode::FAILURE
        }
    }
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
    let headers = ["NAME", "ADDRESS", "ROLE", "HEALTHY", "FENCED", "ELIGIBLE", "TIMELINE", "LSN", "LAG", "RESPONSE", "LAST CHECK"];
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
            b["responseTime"].as_f64().map(|ms| format!("{ms:.1} ms")).unwrap_or_else(|| "-".into()),
            cell(&b["lastHealthCheck"]),
        ]);
    }
    let widths: Vec<usize> = (0..headers.len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for b in std::iter::once(&v["primary"]).chain(v["standbys"].as_array().into_iter().flatten()) {
        if let Some(e) = b["lastError"].as_str() {
            out.push_str(&format!("{}: last error: {e}\n", cell(&b["name"])));
        }
    }
    out
}
