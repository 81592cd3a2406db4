//! `pgfailover status [--admin URL]`: the admin API's status as a table for a terminal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

pub fn main(admin: &str) -> ExitCode {
    match fetch(admin, "/failover/status") {
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
    match fetch(admin, "/health") {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgfailover health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A plain HTTP/1.1 GET against our own admin port (http only).
fn fetch(admin: &str, path: &str) -> Result<Value, String> {
    let hostport = admin.trim_start_matches("http://").trim_end_matches('/');
    if hostport.contains("://") {
        return Err(format!("{admin}: only http:// admin URLs are supported"));
    }
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .map_err(|e| format!("{admin}: {e}"))?
        .next()
        .ok_or_else(|| format!("{admin}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("cannot reach {admin}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nAccept: application/json\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    let code = head.split_whitespace().nth(1).unwrap_or("?");
    if code != "200" {
        return Err(format!("{admin}{path} answered {code}: {body}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{admin}{path}: not JSON: {e}"))
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
