//! Issue 19's pause and maintenance mode across processes, against a real primary and
//! standby, a real etcd and the real binary: with `[coordination]` a pause sent to one proxy
//! holds a quiet session's next statement on another until a resume sent to a third lets it
//! run on the same server session; maintenance mode turned on through one proxy shows on
//! every proxy and is ended through another; and maintenance mode kept in `state_dir`
//! outlives a restart of a lone proxy.

mod common;

use std::time::{Duration, SystemTime};

use common::binary::{Process, Signal, Site};
use common::etcd;
use common::proxies::*;
use common::*;
use serde_json::Value;

/// The `pgfailover_held_sessions` gauge of the proxy at `admin`: statements and new
/// sessions its gate holds now.
async fn held_sessions(admin: std::net::SocketAddr) -> Option<u64> {
    let body = get(admin, "/metrics").await.body;
    let v = body.lines().find_map(|l| l.strip_prefix("pgfailover_held_sessions "))?;
    v.trim().parse::<f64>().ok().map(|f| f as u64)
}

/// When maintenance mode ends by itself, as `/failover/status` shows it.
fn ends_at(m: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(m["until"].as_str()?.trim_end_matches('Z')).ok()
}

/// `until` is `duration` from now (within a minute either way: the test's clock and the
/// proxy's are the same machine's).
fn assert_until_about(m: &Value, duration: Duration) {
    let until = ends_at(m).unwrap_or_else(|| panic!("maintenance without a readable `until`: {m}"));
    let now = SystemTime::now();
    let (lo, hi) = (now + duration - Duration::from_secs(60), now + duration + Duration::from_secs(60));
    assert!(until > lo && until < hi, "maintenance should end about {duration:?} from now: {m}");
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[]).await.expect("select pg_backend_pid()").get(0)
}

/// A pause sent to p1 pauses p1, p2 and p3: the answer sums every proxy's sessions and lists
/// each, every status shows `paused`, and a quiet session on p2 has its next statement held
/// (never sent to the server). A resume sent to p3 releases it on its own server session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_sent_to_one_proxy_holds_sessions_on_another_until_a_resume_sent_to_a_third() {
    let c = cluster(1).await;
    let etcd = etcd::start(1).await;
    let o = Opts::new(&etcd);
    let pw = c.options.password.clone();
    let (p1, p2, p3) = (ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await, ProxyProc::start(&c, "p3", &o, &[]).await);
    let ps = [&p1, &p2, &p3];
    agreed(&ps, "pg-a").await;
    // The pause's answer lists the proxies whose views are published: wait for all three.
    all(&ps, "every proxy's view is published", |_, s| s["coordination"]["members"].as_array().is_some_and(|m| m.len() == 3)).await;

    // One session, on p2, quiet when the pause comes.
    let client = connect(p2.listen, &pw).await;
    client.batch_execute("create table held_by_peer(id int)").await.unwrap();
    let pid = backend_pid(&client).await;

    let r = post(p1.admin, "/failover/pause", Some(TOKEN), r#"{"timeout": "10s"}"#).await;
    assert_eq!(r.status, 200, "the pause through p1: {}", r.body);
    let v = r.json();
    assert_eq!(v["paused"], true, "the answer says paused: {v}");
    assert_eq!(v["quiet"], true, "the only session (on p2) is quiet: {v}");
    assert_eq!((v["inTransaction"].as_u64(), v["held"].as_u64(), v["opaque"].as_u64()), (Some(0), Some(0), Some(0)), "{v}");
    assert_eq!(v["sessions"], 1, "the answer sums every proxy's sessions: {v}");
    let proxies = v["proxies"].as_object().unwrap_or_else(|| panic!("a coordinated pause lists the proxies: {v}"));
    assert_eq!(proxies.keys().map(String::as_str).collect::<Vec<_>>(), ["p1", "p2", "p3"], "every proxy answered: {v}");
    assert_eq!((proxies["p2"]["sessions"].as_u64(), proxies["p2"]["quiet"].as_u64()), (Some(1), Some(1)), "p2 counted its quiet session: {v}");
    assert_eq!((proxies["p1"]["sessions"].as_u64(), proxies["p3"]["sessions"].as_u64()), (Some(0), Some(0)), "{v}");
    all(&ps, "every proxy shows the pause, by the caller of p1", |_, s| {
        s["paused"] == true && s["pausedBy"].as_str().is_some_and(|b| b.starts_with("tester@"))
    })
    .await;

    // The quiet session's next statement, sent on p2, is held there.
    let insert = tokio::spawn(async move { client.execute("insert into held_by_peer values (1)", &[]).await.map(|_| client) });
    eventually(LIMIT, "p2 holds the statement", || async { (held_sessions(p2.admin).await? == 1).then_some(()) }).await;
    all(&ps, "still paused everywhere", |_, s| s["paused"] == true).await;
    assert!(!insert.is_finished(), "the statement completed while every proxy was paused");
    assert_eq!(c.psql(0, "select count(*) from held_by_peer").unwrap(), "0", "a held statement never reaches the server");

    let r = post(p3.admin, "/failover/resume", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "the resume through p3: {}", r.body);
    let v = r.json();
    assert_eq!((v["paused"].as_bool(), v["wasPaused"].as_bool()), (Some(false), Some(true)), "p3 was paused by p1's pause: {v}");
    let client = tokio::time::timeout(LIMIT, insert)
        .await
        .expect("the held statement completes after the resume")
        .unwrap()
        .expect("the held insert succeeds after the resume");
    assert_eq!(backend_pid(&client).await, pid, "the held statement ran on its own server session");
    assert_eq!(server_port(&client).await, c.nodes[0].port as i32, "on the same server");
    assert_eq!(c.psql(0, "select count(*) from held_by_peer").unwrap(), "1", "the held insert ran once");
    all(&ps, "every proxy shows the resume", |_, s| s["paused"] == false && s["pausedBy"].is_null()).await;
    eventually(LIMIT, "p2 holds nothing", || async { (held_sessions(p2.admin).await? == 0).then_some(()) }).await;
    for p in ps {
        let (pauses, resumes) = (p.events("pause").await.len(), p.events("resume").await.len());
        assert_eq!((pauses, resumes), (1, 1), "{}: one pause and one resume in the history", p.name);
    }
}

/// Maintenance mode turned on through p1 shows on p1 and p2 as the same record (reason, by,
/// until); turned off through p2 it ends on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_turned_on_through_one_proxy_shows_on_all_and_ends_through_another() {
    let c = cluster(1).await;
    let etcd = etcd::start(1).await;
    let o = Opts::new(&etcd);
    let (p1, p2) = (ProxyProc::start(&c, "p1", &o, &[]).await, ProxyProc::start(&c, "p2", &o, &[]).await);
    let ps = [&p1, &p2];
    agreed(&ps, "pg-a").await;

    let body = r#"{"enabled": true, "reason": "coordinated minor upgrade", "duration": "30m"}"#;
    let r = post(p1.admin, "/failover/maintenance", Some(TOKEN), body).await;
    assert_eq!(r.status, 200, "maintenance on through p1: {}", r.body);
    let m = r.json()["maintenance"].clone();
    assert_eq!((m["enabled"].as_bool(), m["reason"].as_str()), (Some(true), Some("coordinated minor upgrade")), "{m}");
    assert!(m["by"].as_str().is_some_and(|b| b.starts_with("tester@")), "by the caller: {m}");
    assert_until_about(&m, Duration::from_secs(30 * 60));
    // Every proxy shows the very record p1 wrote.
    all(&ps, "every proxy shows the maintenance", |_, s| s["maintenance"] == m).await;
    for p in ps {
        assert!(get(p.admin, "/metrics").await.body.contains("pgfailover_maintenance 1"), "{}: the maintenance gauge is 1", p.name);
        assert_eq!(routed(&p.status().await), Some("pg-a"), "{}: maintenance keeps routing to the primary", p.name);
    }

    let r = post(p2.admin, "/failover/maintenance", Some(TOKEN), r#"{"enabled": false}"#).await;
    assert_eq!(r.status, 200, "maintenance off through p2: {}", r.body);
    assert_eq!(r.json()["maintenance"]["enabled"], false, "{}", r.body);
    all(&ps, "every proxy shows the maintenance ended", |_, s| s["maintenance"]["enabled"] == false && s["maintenance"]["reason"].is_null()).await;
    for p in ps {
        assert!(get(p.admin, "/metrics").await.body.contains("pgfailover_maintenance 0"), "{}: the maintenance gauge is 0", p.name);
        let (on, off) = (p.events("maintenance_on").await.len(), p.events("maintenance_off").await.len());
        assert_eq!((on, off), (1, 1), "{}: maintenance on and off once each in the history", p.name);
    }
}

/// Stops the process on the site with SIGTERM, waits for a clean exit, and starts the next
/// one on the same configuration and state directory.
async fn restart(mut p: Process, s: &Site, name: &str) -> Process {
    p.signal(Signal::Term);
    assert!(p.exit(LIMIT).await.success(), "the proxy exits successfully on SIGTERM");
    let mut next = s.start(name);
    next.ready(LIMIT).await;
    next
}

/// Maintenance mode is kept in `state_dir`: a restarted proxy still has it (same reason, by,
/// until), and it can then be turned off, which a further restart keeps too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_outlives_a_restart() {
    let c = cluster(1).await;
    let pw = c.options.password.clone();
    let mut s = Site::new();
    let cfg = operated(&c, &s).hold_timeout(Duration::from_secs(10));
    s.write(&cfg);
    let mut p = s.start("first");
    p.ready(LIMIT).await;

    let body = r#"{"enabled": true, "reason": "kernel update on the primary's host", "duration": "30m"}"#;
    let r = post(s.admin(), "/failover/maintenance", Some(TOKEN), body).await;
    assert_eq!(r.status, 200, "maintenance on: {}", r.body);
    let m = r.json()["maintenance"].clone();
    assert_eq!((m["enabled"].as_bool(), m["reason"].as_str()), (Some(true), Some("kernel update on the primary's host")), "{m}");
    assert_until_about(&m, Duration::from_secs(30 * 60));

    let p = restart(p, &s, "second").await;
    let st = get(s.admin(), "/failover/status").await.json();
    assert_eq!(st["config"]["pid"], p.pid(), "the restarted process serves the admin port");
    assert_eq!(st["maintenance"], m, "the restarted proxy is still in the same maintenance mode");
    assert!(get(s.admin(), "/metrics").await.body.contains("pgfailover_maintenance 1"), "the maintenance gauge is 1 after the restart");
    // Routing is not affected by maintenance mode.
    assert_eq!(server_port(&connect(s.listen(), &pw).await).await, c.nodes[0].port as i32, "sessions go to the primary after the restart");

    let r = post(s.admin(), "/failover/maintenance", Some(TOKEN), r#"{"enabled": false}"#).await;
    assert_eq!(r.status, 200, "maintenance off after the restart: {}", r.body);
    assert_eq!(r.json()["maintenance"]["enabled"], false, "{}", r.body);
    assert_eq!(get(s.admin(), "/failover/status").await.json()["maintenance"]["enabled"], false);

    // Off is kept too: the next restart does not bring the old maintenance back.
    let p = restart(p, &s, "third").await;
    let st = get(s.admin(), "/failover/status").await.json();
    assert_eq!(st["config"]["pid"], p.pid(), "the restarted process serves the admin port");
    assert_eq!(st["maintenance"]["enabled"], false, "maintenance mode stays off after a restart: {}", st["maintenance"]);
}
