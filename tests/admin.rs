//! The admin port against a running proxy and real servers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfailover::config::{PromoteMode, Secret};

const LIMIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-admin-token";

async fn healthy(p: &pgfailover::server::Proxy) {
    wait_status(p, LIMIT, "healthy", |s| s.state == pgfailover::monitor::machine::State::Healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_get_endpoint_answers_with_seed_fields_and_no_secrets() {
    let c = cluster(1).await;
    let p = start_proxy(proxy_config(&c, |cfg| cfg.admin_token = Some(Secret::new(TOKEN)))).await;
    healthy(&p).await;
    let a = p.admin_addr;
    let s = get(a, "/failover/status").await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("application/json"));
    let v = s.json();
    assert_eq!(v["state"], "healthy");
    assert_eq!(v["stateCode"], 1);
    assert_eq!(v["currentPrimary"], "pg-a");
    for field in
        ["healthy", "lastHealthCheck", "failureCount", "responseTime", "downSince", "promotionEligible", "role", "timeline", "lsn", "lagBytes", "fenced"]
    {
        assert!(v["primary"].get(field).is_some(), "primary.{field} missing");
        assert!(v["standbys"][0].get(field).is_some(), "standbys[0].{field} missing");
    }
    assert_eq!(v["primary"]["role"], "primary");
    assert_eq!(v["standbys"][0]["promotionEligible"], true);
    for field in ["failoverCount", "lastFailoverTime", "recoveryCount"] {
        assert!(v.get(field).is_some(), "{field} missing");
    }
    let m = get(a, "/failover/metrics").await.json();
    assert_eq!(m["failoverCount"], 0);
    assert!(m["connections"]["active"].is_u64() && m["bytes"]["clientToServer"].is_u64() && m["uptimeSeconds"].is_f64());
    let h = get(a, "/failover/health").await.json();
    assert_eq!(h["backends"].as_array().unwrap().len(), 2);
    assert_eq!(h["backends"][1]["name"], "pg-b");
    let hist = get(a, "/failover/history?limit=5").await;
    assert_eq!(hist.status, 200);
    assert!(hist.json()["events"].is_array());
    assert_eq!(get(a, "/health").await.status, 200);
    let r = get(a, "/ready").await;
    assert_eq!((r.status, r.json()["primary"].as_str()), (200, Some("pg-a")));
    let prom = get(a, "/metrics").await;
    assert!(prom.header("content-type").unwrap().starts_with("text/plain"));
    for body in [&s.body, &prom.body, &get(a, "/failover/health").await.body] {
        assert!(!body.contains(&c.options.password), "a password leaked");
        assert!(!body.contains(TOKEN), "the token leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_auth_and_error_statuses() {
    let c = cluster(1).await;
    let open = start_proxy(proxy_config(&c, |_| {})).await;
    let r = post(open.admin_addr, "/failover/trigger", None, "").await;
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("PGFAILOVER_ADMIN_TOKEN"));
    drop(open);

    let p = start_proxy(proxy_config(&c, |cfg| cfg.admin_token = Some(Secret::new(TOKEN)))).await;
    healthy(&p).await;
    let a = p.admin_addr;
    let r = post(a, "/failover/check-health", None, "").await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(post(a, "/failover/check-health", Some("wrong"), "").await.status, 401);
    let r = post(a, "/failover/check-health", Some(TOKEN), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backends"][0]["healthy"], true);

    let r = get(a, "/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = http(a, "DELETE", "/failover/status", &[], b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = get(a, "/failover/trigger").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let big = format!("{{\"target\": \"{}\"}}", "x".repeat(70 * 1024));
    assert_eq!(post(a, "/failover/trigger", Some(TOKEN), &big).await.status, 413);
    assert_eq!(post(a, "/failover/trigger", Some(TOKEN), "{not json").await.status, 400);
    assert_eq!(post(a, "/failover/trigger", Some(TOKEN), "{\"target\": 5}").await.status, 400);
    assert_eq!(post(a, "/failover/trigger", Some(TOKEN), "{\"tagret\": \"pg-b\"}").await.status, 400);
    assert_eq!(post(a, "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-zz\"}").await.status, 400);
    assert_eq!(get(a, "/failover/history?limit=abc").await.status, 400);
    let r = post(a, "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-a\"}").await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("already the primary"));

    // Standby down: nothing eligible → 409 with the reason, and nothing changed.
    c.stop(1).unwrap();
    wait_status(&p, LIMIT, "standby unhealthy", |s| !backend(s, "pg-b").healthy).await;
    let r = post(a, "/failover/trigger", Some(TOKEN), "").await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("pg-b: unhealthy"), "{}", r.body);
    assert_eq!(p.monitor.status().current_primary.as_deref(), Some("pg-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_trigger_moves_new_sessions_and_writes_succeed() {
    let c = cluster(1).await;
    let p = start_proxy(proxy_config(&c, |cfg| cfg.admin_token = Some(Secret::new(TOKEN)))).await;
    healthy(&p).await;
    let pw = &c.options.password;
    let before = connect(p.client_addr, pw).await;
    before.batch_execute("create table m(id int)").await.unwrap();
    eventually(LIMIT, "table replicated", || async { c.psql(1, "select count(*) from m").ok().map(|_| ()) }).await;

    let r = post(p.admin_addr, "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-b\"}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!((v["result"].as_str(), v["currentPrimary"].as_str()), (Some("completed"), Some("pg-b")));
    eventually(LIMIT, "old session cut", || async { before.is_closed().then_some(()) }).await;
    let after = connect(p.client_addr, pw).await;
    after.batch_execute("insert into m values (1)").await.unwrap();
    assert_eq!(server_port(&after).await, c.nodes[1].port as i32);
    let hist = get(p.admin_addr, "/failover/history").await.json();
    let ev = &hist["events"][0];
    assert_eq!(ev["kind"], "failover");
    assert_eq!(ev["trigger"], "manual:tester@127.0.0.1", "history names who asked");
    let s = get(p.admin_addr, "/failover/status").await.json();
    assert_eq!(s["failoverCount"], 1);
    assert_eq!(s["standbys"][0]["name"], "pg-a");
    assert_eq!(s["standbys"][0]["fenced"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_no_primary_is_routable() {
    let c = Arc::new(cluster(1).await);
    let p = start_proxy(proxy_config(&c, |cfg| cfg.failover.promote = PromoteMode::Never)).await;
    healthy(&p).await;
    assert_eq!(get(p.admin_addr, "/ready").await.status, 200);
    let c2 = c.clone();
    blocking(move || c2.kill(0).unwrap()).await;
    let r = eventually(LIMIT, "ready 503", || async {
        let r = get(p.admin_addr, "/ready").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(r.json()["ready"], false);
    assert!(r.json()["reason"].as_str().unwrap().contains("pg-a"), "{}", r.body);
    assert_eq!(get(p.admin_addr, "/health").await.status, 200, "liveness is unaffected");
    let c3 = c.clone();
    blocking(move || c3.promote(1).unwrap()).await;
    eventually(LIMIT, "ready 200 again", || async { (get(p.admin_addr, "/ready").await.status == 200).then_some(()) }).await;
}

/// `name{labels}` → value, from a real Prometheus text parser.
fn scrape(text: &str) -> (HashMap<String, f64>, prometheus_parse::Scrape) {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut map = HashMap::new();
    for s in &scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        labels.sort();
        let key = if labels.is_empty() { s.metric.clone() } else { format!("{}{{{}}}", s.metric, labels.join(",")) };
        if let prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) = s.value {
            map.insert(key, v);
        }
    }
    (map, scrape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_after_a_scripted_failover() {
    let c = Arc::new(cluster(1).await);
    let p = start_proxy(proxy_config(&c, |_| {})).await;
    healthy(&p).await;
    let pw = c.options.password.clone();
    for _ in 0..3 {
        let client = connect(p.client_addr, &pw).await;
        client.batch_execute("select 1").await.unwrap();
    }
    let c2 = c.clone();
    blocking(move || c2.kill(0).unwrap()).await;
    wait_status(&p, LIMIT, "failover complete", |s| s.current_primary.as_deref() == Some("pg-b")).await;
    let client = connect(p.client_addr, &pw).await;
    client.batch_execute("create table x(i int)").await.unwrap();
    drop(client);
    eventually(LIMIT, "sessions closed", || async { (p.metrics.stats.active.load(std::sync::atomic::Ordering::Relaxed) == 0).then_some(()) }).await;

    let (m, scrape) = scrape(&get(p.admin_addr, "/metrics").await.body);
    assert_eq!(m["failover_total"], 1.0);
    assert_eq!(m["failover_state"], 4.0, "failover_complete");
    assert_eq!(m["failover_primary_healthy"], 1.0);
    assert_eq!(m["failover_standby_healthy{standby=\"0\"}"], 1.0, "configured standby 0 (pg-b) is up");
    assert_eq!(m["pgfailover_backend_healthy{backend=\"pg-a\"}"], 0.0);
    assert_eq!(m["pgfailover_client_connections_accepted_total"], 4.0);
    assert_eq!(m["pgfailover_client_connections_active"], 0.0);
    assert_eq!(m["pgfailover_client_connections_refused_total"], 0.0);
    assert_eq!(m["pgfailover_fenced_backends"], 1.0);
    assert!(m["failover_health_check_failures_total"] >= 3.0);
    assert!(m["pgfailover_client_to_server_bytes_total"] > 0.0);
    assert!(m.contains_key("pgfailover_no_primary_seconds_total"));
    assert!(scrape.samples.iter().any(|s| s.metric == "pgfailover_failover_duration_seconds_count"));
    for s in &scrape.samples {
        let family = s.metric.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(scrape.docs.get(family).is_some_and(|d| !d.is_empty()), "{family} has no HELP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_cannot_exhaust_the_port() {
    let c = cluster(0).await;
    let p = start_proxy(proxy_config(&c, |_| {})).await;
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(tokio::net::TcpStream::connect(p.admin_addr).await.unwrap());
    }
    // More idle connections than slots: they time out and a real request gets through.
    let r = tokio::time::timeout(Duration::from_secs(20), get(p.admin_addr, "/health")).await.expect("served");
    assert_eq!(r.status, 200);
}

/// Bytes that are no HTTP request get a JSON 400 like every other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_to_the_admin_port_gets_a_json_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = cluster(0).await;
    let p = start_proxy(proxy_config(&c, |_| {})).await;
    for junk in [&b"hello\n"[..], b"\x16\x03\x01\x00\x05hello", b"get / HTTP/1.1\r\n\r\n"] {
        let mut s = tokio::net::TcpStream::connect(p.admin_addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(LIMIT, s.read_to_end(&mut raw)).await.expect("answered").unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(v["error"].as_str().unwrap().contains("not an HTTP request"), "{body}");
    }
    assert_eq!(get(p.admin_addr, "/health").await.status, 200, "the port still serves HTTP");
}
