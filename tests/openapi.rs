//! Keeps docs/openapi.yaml true: every documented (path, method, status) is produced by the
//! running server, and no documented operation answers with an undocumented status.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfailover::config::Secret;

const LIMIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "openapi-token";

type Seen = BTreeSet<(String, String, u16)>;

fn documented() -> Seen {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut set = Seen::new();
    for (path, ops) in doc["paths"].as_mapping().unwrap() {
        for (method, op) in ops.as_mapping().unwrap() {
            for (code, _) in op["responses"].as_mapping().unwrap() {
                let code: u16 = code.as_str().unwrap().parse().unwrap();
                set.insert((path.as_str().unwrap().to_string(), method.as_str().unwrap().to_uppercase(), code));
            }
        }
    }
    set
}

/// Sends one request and records what it got.
async fn call(seen: &mut Seen, addr: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> HttpReply {
    let r = if method == "GET" { get(addr, path).await } else { post(addr, path, token, body).await };
    let bare = path.split('?').next().unwrap().to_string();
    seen.insert((bare, method.to_string(), r.status));
    if r.status >= 400 {
        assert!(r.json()["error"].is_string(), "errors are JSON {{\"error\": …}}: {}", r.body);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_status_is_real() {
    let mut seen = Seen::new();
    let c = Arc::new(cluster(2).await);
    let with_token = |cfg: &mut pgfailover::config::Config| {
        cfg.admin_token = Some(Secret::new(TOKEN));
        cfg.failover.promote_timeout = Duration::from_secs(1);
    };

    // No token configured: POSTs are 403. No read-only port: /ready/ro is 404.
    let open = start_proxy(proxy_config(&c, |_| {})).await;
    assert_eq!(call(&mut seen, open.admin_addr, "GET", "/ready/ro", None, "").await.status, 404);
    for path in ["/failover/trigger", "/failover/check-health", "/failover/unfence", "/failover/pause", "/failover/resume", "/failover/maintenance"] {
        call(&mut seen, open.admin_addr, "POST", path, Some(TOKEN), "").await;
    }
    drop(open);

    // Coordinated with an etcd nobody runs: what goes through etcd is refused with 503.
    let lonely = start_proxy(proxy_config(&c, |cfg| {
        with_token(cfg);
        let endpoint = format!("http://127.0.0.1:{}", pgfailover::localpg::free_port().unwrap());
        cfg.coordination =
            Some(pgfailover::config::CoordinationConfig { etcd_endpoints: vec![endpoint], ..pgfailover::config::CoordinationConfig::with_defaults() });
    }))
    .await;
    for (path, body) in [("/failover/pause", "{\"timeout\": \"1s\"}"), ("/failover/resume", ""), ("/failover/maintenance", "{\"enabled\": true}")] {
        let r = call(&mut seen, lonely.admin_addr, "POST", path, Some(TOKEN), body).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
    }
    drop(lonely);

    // A read token configured: the read endpoints answer 401 without it.
    let locked = start_proxy(proxy_config(&c, |cfg| cfg.admin_read_token = Some(Secret::new("read-token")))).await;
    for path in ["/failover/status", "/failover/metrics", "/failover/health", "/failover/history", "/failover/candidates", "/metrics"] {
        assert_eq!(call(&mut seen, locked.admin_addr, "GET", path, None, "").await.status, 401, "{path}");
    }
    drop(locked);

    // trigger_wait of 1ms: a trigger answers 202 while the promotion runs.
    let quick = start_proxy(proxy_config(&c, |cfg| {
        with_token(cfg);
        cfg.failover.trigger_wait = Duration::from_millis(1);
    }))
    .await;
    wait_status(&quick, LIMIT, "healthy", |s| s.current_primary.as_deref() == Some("pg-a") && backend(s, "pg-b").promotion_eligible).await;
    let r = call(&mut seen, quick.admin_addr, "POST", "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-b\"}").await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&quick, LIMIT, "pg-b primary", |s| s.current_primary.as_deref() == Some("pg-b")).await;
    quick.shutdown();
    quick.stopped().await;

    let p = start_proxy(proxy_config(&c, |cfg| {
        with_token(cfg);
        cfg.listen_ro = Some("127.0.0.1:0".parse().unwrap());
    }))
    .await;
    let a = p.admin_addr;
    wait_status(&p, LIMIT, "pg-b routed, pg-c eligible", |s| s.current_primary.as_deref() == Some("pg-b") && backend(s, "pg-c").promotion_eligible).await;
    wait_status(&p, LIMIT, "pg-c serves reads", |s| backend(s, "pg-c").serves_reads).await;
    for path in [
        "/failover/status",
        "/failover/metrics",
        "/failover/health",
        "/failover/history?limit=3",
        "/failover/candidates",
        "/metrics",
        "/health",
        "/ready",
        "/ready/ro",
    ] {
        assert_eq!(call(&mut seen, a, "GET", path, None, "").await.status, 200, "{path}");
    }
    assert_eq!(call(&mut seen, a, "GET", "/failover/history?limit=0", None, "").await.status, 400);
    for path in ["/failover/trigger", "/failover/check-health", "/failover/unfence", "/failover/pause", "/failover/resume", "/failover/maintenance"] {
        assert_eq!(call(&mut seen, a, "POST", path, Some("wrong"), "").await.status, 401);
    }
    // Pause, resume, maintenance: their answers and their bad bodies.
    let r = call(&mut seen, a, "POST", "/failover/pause", Some(TOKEN), "{\"timeout\": \"2s\"}").await;
    assert_eq!((r.status, r.json()["paused"].as_bool()), (200, Some(true)), "{}", r.body);
    assert_eq!(call(&mut seen, a, "POST", "/failover/pause", Some(TOKEN), "{\"timeout\": 3}").await.status, 400);
    assert_eq!(call(&mut seen, a, "POST", "/failover/resume", Some(TOKEN), "").await.status, 200);
    assert_eq!(call(&mut seen, a, "POST", "/failover/resume", Some(TOKEN), "{\"now\": true}").await.status, 400);
    assert_eq!(call(&mut seen, a, "POST", "/failover/maintenance", Some(TOKEN), "{\"enabled\": true, \"reason\": \"openapi\"}").await.status, 200);
    assert_eq!(call(&mut seen, a, "POST", "/failover/maintenance", Some(TOKEN), "{\"enabled\": false}").await.status, 200);
    assert_eq!(call(&mut seen, a, "POST", "/failover/maintenance", Some(TOKEN), "{}").await.status, 400);
    assert_eq!(call(&mut seen, a, "POST", "/failover/check-health", Some(TOKEN), "").await.status, 200);
    assert_eq!(call(&mut seen, a, "POST", "/failover/trigger", Some(TOKEN), "{oops").await.status, 400);
    let big = " ".repeat(65 * 1024 + 1);
    assert_eq!(call(&mut seen, a, "POST", "/failover/trigger", Some(TOKEN), &big).await.status, 413);
    assert_eq!(call(&mut seen, a, "POST", "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-b\"}").await.status, 409);
    assert_eq!(call(&mut seen, a, "POST", "/failover/unfence", Some(TOKEN), "").await.status, 400);
    assert_eq!(call(&mut seen, a, "POST", "/failover/unfence", Some(TOKEN), "{\"target\": \"pg-c\"}").await.status, 409);
    // pg-a was superseded by the first trigger: an operator may unfence it (the split-brain
    // guard fences it again at once, since it is still writable).
    let r = call(&mut seen, a, "POST", "/failover/unfence", Some(TOKEN), "{\"target\": \"pg-a\"}").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A forced promotion that cannot reach its target (it hangs): 502, nothing was promoted
    // and pg-b keeps the route.
    c.hang(2).unwrap();
    let r = call(&mut seen, a, "POST", "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-c\", \"force\": true}").await;
    c.resume(2);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("nothing was promoted"), "{}", r.body);
    assert_eq!(p.monitor.status().current_primary.as_deref(), Some("pg-b"));
    assert_eq!(call(&mut seen, a, "GET", "/ready", None, "").await.status, 200);

    // Once pg-c answers again, the same trigger completes: 200.
    wait_status(&p, LIMIT, "pg-c eligible again", |s| backend(s, "pg-c").promotion_eligible).await;
    let r = call(&mut seen, a, "POST", "/failover/trigger", Some(TOKEN), "{\"target\": \"pg-c\"}").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The primary dies and nothing can be promoted (pg-a and pg-b are fenced): 503.
    let c2 = c.clone();
    blocking(move || c2.kill(2).unwrap()).await;
    wait_status(&p, LIMIT, "no route", |s| s.current_primary.is_none()).await;
    assert_eq!(call(&mut seen, a, "GET", "/ready", None, "").await.status, 503);
    eventually(LIMIT, "no read target either", || async { (call(&mut seen.clone(), a, "GET", "/ready/ro", None, "").await.status == 503).then_some(()) }).await;
    assert_eq!(call(&mut seen, a, "GET", "/ready/ro", None, "").await.status, 503);

    let spec = documented();
    let missing: Vec<_> = spec.difference(&seen).collect();
    assert!(missing.is_empty(), "documented but never produced: {missing:?}");
    let undocumented: Vec<_> = seen.difference(&spec).collect();
    assert!(undocumented.is_empty(), "produced but not documented: {undocumented:?}");
}
